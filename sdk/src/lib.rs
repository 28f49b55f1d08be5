//! SDK (in progress).
