//! Example filter (in progress).
