//! Envoy runner (in progress).
