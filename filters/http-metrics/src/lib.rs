//! Per-host/per-route metrics filter (being built).
