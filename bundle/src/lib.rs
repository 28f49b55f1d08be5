//! `gatewasm.wasm`: jwt-auth, ext-auth, header-rewrite, http-metrics and kafka-log in one module.
//!
//! Each filter configuration picks its filter with Envoy's `root_id` (Istio: `pluginName`):
//! `jwt-auth`, `ext-auth`, `header-rewrite`, `http-metrics` or `kafka-log`, the names the
//! single-filter manifests already use. Filter configurations with the same module, `vm_id` and
//! VM configuration share one VM per worker; see README.md.

#[cfg(target_arch = "wasm32")]
sdk::export_bundle!(
    "jwt-auth" => jwt_auth::JwtAuth,
    "ext-auth" => ext_auth::ExtAuth,
    "header-rewrite" => header_rewrite::HeaderRewrite,
    "http-metrics" => http_metrics::HttpMetrics,
    "kafka-log" => kafka_log::KafkaLog,
);
