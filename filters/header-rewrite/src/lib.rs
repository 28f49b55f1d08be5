//! Header rewrite filter (in progress).
