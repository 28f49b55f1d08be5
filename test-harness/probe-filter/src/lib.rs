//! Probe filter (in progress).
