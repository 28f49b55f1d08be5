//! The configuration as written (JSON, [`RawConfig`]) and as used on the request path
//! ([`Compiled`]: host patterns lower-cased, templates parsed, regexes compiled, label names
//! fixed). [`parse`] reports every problem at once, each with its JSON path and value.

use serde::Deserialize;

use gatewasm::config::{self, ConfigErrors};

use crate::labels::{
    self, is_plain_value, HostLabel, HostPattern, Normalize, Route, OTHER_VALUE, OVERFLOW_VALUE,
};

/// Default cap on distinct label sets.
pub const DEFAULT_MAX_SERIES: usize = 1000;
/// Largest `max_series` accepted: each series is four Envoy stats (a counter and up to three
/// histograms, each with its buckets), so this is already about a hundred thousand stats.
pub const MAX_MAX_SERIES: usize = 20_000;
/// Default metric name prefix.
pub const DEFAULT_PREFIX: &str = "gatewasm_http";

/// The plugin configuration.
#[derive(Debug, Deserialize, Default)]
pub struct RawConfig {
    /// Start of every metric name (`<prefix>_requests_total`, ...): `[a-z_][a-z0-9_]*`, at most
    /// 64 bytes. Default `gatewasm_http`.
    pub metric_prefix: Option<String>,
    /// Hosts kept as the `host` label: `api.example.com` (exact) or `*.example.com` (any
    /// subdomain, labelled `*.example.com`). Compared case-insensitively, port and trailing dot
    /// removed. Every other host is `other_host`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The `host` label of hosts not in `hosts` (default `other`).
    pub other_host: Option<String>,
    /// Route patterns, tried in order; the first that matches gives the `path` label.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// What paths no route matches become: `normalize` (default) or `fixed` (`other_path`).
    #[serde(default)]
    pub unmatched_paths: Unmatched,
    /// The `path` label of unmatched paths with `unmatched_paths: fixed`, and of requests without
    /// an origin-form path (default `other`).
    pub other_path: Option<String>,
    /// Normalisation keeps this many segments; deeper paths end in `/*` (default 3, 1 to 16).
    pub max_path_depth: Option<usize>,
    /// Normalisation turns hex segments at least this long into `{id}` (default 16, at least 8).
    pub min_hex_length: Option<usize>,
    /// The `code` label: `code` (default, `200`) or `class` (`2xx`).
    #[serde(default)]
    pub status: StatusMode,
    /// Adds a `cluster` label: the upstream cluster Envoy routed to (`none` without one).
    #[serde(default)]
    pub upstream_cluster: bool,
    /// Adds one label from a request header.
    pub request_header: Option<RawHeaderLabel>,
    /// Hard cap on distinct label sets across all of Envoy's workers (default 1000, 1 to
    /// 20000). Beyond it, requests are counted under one set whose every label is `overflow`.
    pub max_series: Option<usize>,
    /// Which histograms are recorded: any of `duration`, `request_bytes`, `response_bytes`
    /// (default all three). Each costs one host call per request.
    pub histograms: Option<Vec<String>>,
    /// How labels are written into stat names: `envoy` (default; a standalone Envoy's
    /// `stats_tags` from `envoy-stats.json`) or `istio` (Istio's `extraStatTags`).
    #[serde(default)]
    pub stat_names: StatNames,
}

/// The stat-name form.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StatNames {
    /// `family;label=value`.
    #[default]
    Envoy,
    /// `familylabel=.=value;.;`.
    Istio,
}

/// What unmatched paths become.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// Identifiers become `{id}`, depth limited.
    #[default]
    Normalize,
    /// One fixed value, `other_path`.
    Fixed,
}

/// The status label's form.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StatusMode {
    /// `200`.
    #[default]
    Code,
    /// `2xx`.
    Class,
}

/// One route: exactly one of `template`, `prefix`, `regex`.
#[derive(Debug, Deserialize, Default)]
pub struct RawRoute {
    /// `/users/{id}/orders/{order}`: `{name}` is one segment, a final `**` the rest. The
    /// template is the label.
    pub template: Option<String>,
    /// A string prefix of the path; label `label`, default the prefix followed by `*`.
    pub prefix: Option<String>,
    /// A regex (regex-lite) matching the whole path; `label` is required.
    pub regex: Option<String>,
    /// The label for `prefix` and `regex` routes.
    pub label: Option<String>,
}

/// A label taken from a request header.
#[derive(Debug, Deserialize, Default)]
pub struct RawHeaderLabel {
    /// The header (case-insensitive); required.
    #[serde(default)]
    pub name: String,
    /// The label name (`[a-z_][a-z0-9_]*`); default the header name with `-` as `_`.
    pub label: Option<String>,
    /// Values kept; any other value is `other`. Without a list every value is kept (escaped,
    /// bounded by `max_series`). An absent header is `none`.
    pub values: Option<Vec<String>>,
}

/// Which histograms are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Histograms {
    /// Request duration in milliseconds.
    pub duration: bool,
    /// Request body bytes.
    pub request_bytes: bool,
    /// Response body bytes.
    pub response_bytes: bool,
}

/// A header label, compiled.
#[derive(Debug, Clone)]
pub struct HeaderLabel {
    /// Lower-case header name.
    pub name: String,
    /// Label name.
    pub label: String,
    /// Allowed values, each with its label value; `None` keeps every value.
    pub values: Option<Vec<(String, String)>>,
}

/// The configuration the request path uses.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Metric name prefix.
    pub prefix: String,
    /// Configured hosts.
    pub hosts: Vec<HostLabel>,
    /// Label of other hosts.
    pub other_host: String,
    /// Routes in order.
    pub routes: Vec<Route>,
    /// Unmatched paths: normalised (`Some`) or fixed (`None`).
    pub normalize: Option<Normalize>,
    /// Label of unmatched paths when fixed, and of paths that are not origin-form.
    pub other_path: String,
    /// Status as a class.
    pub status_class: bool,
    /// `cluster` label.
    pub upstream_cluster: bool,
    /// Request header label.
    pub header: Option<HeaderLabel>,
    /// Series cap.
    pub max_series: usize,
    /// Histograms recorded.
    pub histograms: Histograms,
    /// Stat-name form.
    pub stat_names: StatNames,
}

impl Compiled {
    /// Label names in stat-name order. `code` comes last so that a stat name always ends in
    /// `;code=<value>`, which none of Envoy's built-in tag extractors matches.
    pub fn label_names(&self) -> Vec<String> {
        let mut names: Vec<String> = ["host", "path", "method"].iter().map(|s| (*s).to_string()).collect();
        if self.upstream_cluster {
            names.push("cluster".into());
        }
        if let Some(h) = &self.header {
            names.push(h.label.clone());
        }
        names.push("code".into());
        names
    }
}

/// Parses and compiles a configuration, reporting every problem.
pub fn parse(raw: &[u8]) -> Result<Compiled, ConfigErrors> {
    config::parse_with(raw, compile)
}

fn is_name(s: &str, max: usize) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && s.len() <= max
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// A fixed label value given in the configuration.
fn fixed_value(errors: &mut ConfigErrors, field: &str, value: Option<&String>) -> String {
    let Some(v) = value else { return OTHER_VALUE.to_string() };
    if !is_plain_value(v) || v.starts_with('/') || v == OVERFLOW_VALUE {
        errors.add(
            field,
            v,
            "must be 1-128 of letters, digits and `._-~+@{}*`, not start with `/` and not be `overflow`",
        );
    }
    v.clone()
}

fn compile(raw: RawConfig, errors: &mut ConfigErrors) -> Compiled {
    let prefix = raw.metric_prefix.clone().unwrap_or_else(|| DEFAULT_PREFIX.to_string());
    if !is_name(&prefix, 64) {
        errors.add("metric_prefix", &prefix, "must match [a-z_][a-z0-9_]* and be at most 64 bytes");
    }

    let other_host = fixed_value(errors, "other_host", raw.other_host.as_ref());
    let mut hosts = Vec::new();
    for (i, h) in raw.hosts.iter().enumerate() {
        let at = format!("hosts[{i}]");
        let lower = h.to_ascii_lowercase();
        let bare = lower.strip_prefix("*.").unwrap_or(&lower);
        // Stricter than the shared parser: dot-separated non-empty labels, as a label value
        // should be a real host name.
        let valid = !bare.is_empty()
            && bare
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        let pattern = match HostPattern::parse(&lower) {
            Ok(p) if valid => p,
            _ => {
                errors.add(
                    at,
                    h,
                    "must be a host name (`api.example.com`) or `*.` and a domain (`*.example.com`), without port",
                );
                continue;
            }
        };
        if lower == other_host || lower == OVERFLOW_VALUE {
            errors.add(at, h, "is the value other hosts get (`other_host`) or `overflow`");
            continue;
        }
        hosts.push(HostLabel { pattern, label: lower });
    }

    let mut routes = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        let given = usize::from(r.template.is_some())
            + usize::from(r.prefix.is_some())
            + usize::from(r.regex.is_some());
        if given != 1 {
            errors.add_field(at, "give exactly one of `template`, `prefix`, `regex`");
            continue;
        }
        let label = r.label.as_ref().map(|l| {
            if !is_plain_value(l) || !l.starts_with('/') {
                errors.add(
                    format!("{at}.label"),
                    l,
                    "must start with `/` and be at most 128 of letters, digits and `._-~+@/{}*`",
                );
            }
            l.clone()
        });
        if let Some(t) = &r.template {
            if label.is_some() {
                errors.add_field(format!("{at}.label"), "a template is its own label");
            }
            match labels::parse_template(t) {
                Ok(route) => routes.push(route),
                Err(e) => errors.add(format!("{at}.template"), t, e),
            }
        } else if let Some(p) = &r.prefix {
            if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#') {
                errors.add(format!("{at}.prefix"), p, "must start with `/`, without whitespace, `?` or `#`");
                continue;
            }
            let label = label.unwrap_or_else(|| format!("{p}*"));
            if label.len() > labels::MAX_LABEL_VALUE || !is_plain_value(&label) {
                errors.add(format!("{at}.prefix"), p, "not usable as a label as it is: give `label`");
                continue;
            }
            routes.push(Route::Prefix { prefix: p.clone(), label });
        } else if let Some(rx) = &r.regex {
            let Some(label) = label else {
                errors.add_field(format!("{at}.label"), "required with `regex`");
                continue;
            };
            let compiled =
                regex_lite::Regex::new(rx).and_then(|_| regex_lite::Regex::new(&format!("^(?:{rx})$")));
            match compiled {
                Ok(regex) => routes.push(Route::Regex { regex, label }),
                Err(e) => {
                    let message = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
                    errors.add(format!("{at}.regex"), rx, format!("invalid regex: {message}"));
                }
            }
        }
    }

    let max_depth = raw.max_path_depth.unwrap_or(3);
    if !(1..=16).contains(&max_depth) {
        errors.add("max_path_depth", max_depth, "must be 1 to 16");
    }
    let min_hex_len = raw.min_hex_length.unwrap_or(16);
    if !(8..=128).contains(&min_hex_len) {
        errors.add("min_hex_length", min_hex_len, "must be 8 to 128");
    }
    let normalize =
        (raw.unmatched_paths == Unmatched::Normalize).then_some(Normalize { max_depth, min_hex_len });
    let other_path = fixed_value(errors, "other_path", raw.other_path.as_ref());

    let header = raw.request_header.as_ref().and_then(|h| {
        let before = errors.errors().len();
        config::check_header_name(errors, "request_header.name", &h.name);
        let label = h.label.clone().unwrap_or_else(|| h.name.to_ascii_lowercase().replace('-', "_"));
        if !is_name(&label, 64) || ["host", "path", "method", "code", "cluster", "le"].contains(&label.as_str()) {
            errors.add(
                "request_header.label",
                &label,
                "must match [a-z_][a-z0-9_]* (at most 64 bytes) and not be host, path, method, code, cluster or le",
            );
        }
        let values = h.values.as_ref().map(|vs| {
            vs.iter()
                .enumerate()
                .map(|(i, v)| {
                    if v == OTHER_VALUE || v == OVERFLOW_VALUE || v == labels::NONE_VALUE {
                        errors.add(format!("request_header.values[{i}]"), v, "is one of the fixed values");
                    }
                    (v.clone(), labels::value(v))
                })
                .collect()
        });
        (errors.errors().len() == before).then(|| HeaderLabel { name: h.name.to_ascii_lowercase(), label, values })
    });

    let max_series = raw.max_series.unwrap_or(DEFAULT_MAX_SERIES);
    if !(1..=MAX_MAX_SERIES).contains(&max_series) {
        errors.add("max_series", max_series, format!("must be 1 to {MAX_MAX_SERIES}"));
    }

    let mut histograms = Histograms { duration: true, request_bytes: true, response_bytes: true };
    if let Some(list) = &raw.histograms {
        histograms = Histograms { duration: false, request_bytes: false, response_bytes: false };
        for (i, h) in list.iter().enumerate() {
            match h.as_str() {
                "duration" => histograms.duration = true,
                "request_bytes" => histograms.request_bytes = true,
                "response_bytes" => histograms.response_bytes = true,
                _ => errors.add(
                    format!("histograms[{i}]"),
                    h,
                    "must be one of `duration`, `request_bytes`, `response_bytes`",
                ),
            }
        }
    }

    if raw.stat_names == StatNames::Istio {
        // Istio's tag regex for `code` is `(code=\.=(.*?);\.;)`, unanchored: it would also match
        // inside a label named `xcode`.
        if let Some(h) = &header {
            if ["host", "path", "method", "cluster", "code"]
                .iter()
                .any(|n| h.label.ends_with(n) || n.ends_with(h.label.as_str()))
            {
                errors.add(
                    "request_header.label",
                    &h.label,
                    "with `stat_names: istio` it may not end with, or be the end of, another label name (host, path, method, cluster, code)",
                );
            }
        }
    }

    Compiled {
        prefix,
        hosts,
        other_host,
        routes,
        normalize,
        other_path,
        status_class: raw.status == StatusMode::Class,
        upstream_cluster: raw.upstream_cluster,
        header,
        max_series,
        histograms,
        stat_names: raw.stat_names,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Vec<String> {
        match parse(json.as_bytes()) {
            Ok(_) => panic!("accepted: {json}"),
            Err(e) => e.errors().iter().map(|e| e.field.clone()).collect(),
        }
    }

    #[test]
    fn defaults() {
        let c = parse(b"").unwrap();
        assert_eq!(c.prefix, "gatewasm_http");
        assert!(c.hosts.is_empty());
        assert_eq!(c.other_host, "other");
        assert_eq!(c.normalize, Some(Normalize { max_depth: 3, min_hex_len: 16 }));
        assert_eq!(c.max_series, 1000);
        assert!(!c.status_class);
        assert_eq!(c.histograms, Histograms { duration: true, request_bytes: true, response_bytes: true });
        assert_eq!(c.label_names(), ["host", "path", "method", "code"]);
        assert_eq!(c.stat_names, StatNames::Envoy);
    }

    #[test]
    fn istio_names_need_unambiguous_label_names() {
        assert_eq!(
            fields(r#"{"stat_names": "istio", "request_header": {"name": "x-vhost"}}"#),
            ["request_header.label"]
        );
        assert_eq!(
            fields(r#"{"stat_names": "istio", "request_header": {"name": "x", "label": "de"}}"#),
            ["request_header.label"]
        );
        let c = parse(br#"{"stat_names": "istio", "request_header": {"name": "x-tenant"}}"#).unwrap();
        assert_eq!(c.stat_names, StatNames::Istio);
    }

    #[test]
    fn full_config() {
        let c = parse(
            br#"{
            "metric_prefix": "edge",
            "hosts": ["API.example.com", "*.example.org"],
            "other_host": "unlisted",
            "routes": [
                {"template": "/users/{id}/orders/{order}"},
                {"prefix": "/static/"},
                {"prefix": "/img/", "label": "/img"},
                {"regex": "/v[0-9]+/health", "label": "/vN/health"}
            ],
            "unmatched_paths": "fixed",
            "other_path": "unmatched",
            "status": "class",
            "upstream_cluster": true,
            "request_header": {"name": "X-Tenant", "values": ["gold", "silver"]},
            "max_series": 50,
            "histograms": ["duration"]
        }"#,
        )
        .unwrap();
        assert_eq!(c.prefix, "edge");
        assert_eq!(c.hosts[0].pattern, HostPattern::Exact("api.example.com".into()));
        assert_eq!(c.hosts[0].label, "api.example.com");
        assert_eq!(c.hosts[1].pattern, HostPattern::Subdomain(".example.org".into()));
        assert_eq!(c.hosts[1].label, "*.example.org");
        assert_eq!(c.routes.len(), 4);
        assert_eq!(c.routes[1].label(), "/static/*");
        assert_eq!(c.routes[2].label(), "/img");
        assert_eq!(c.routes[3].matches("/v2/health"), Some("/vN/health"));
        assert_eq!(c.routes[3].matches("/v2/health/x"), None);
        assert_eq!(c.normalize, None);
        assert_eq!(c.other_path, "unmatched");
        assert!(c.status_class);
        let h = c.header.as_ref().unwrap();
        assert_eq!((h.name.as_str(), h.label.as_str()), ("x-tenant", "x_tenant"));
        assert_eq!(c.label_names(), ["host", "path", "method", "cluster", "x_tenant", "code"]);
        assert_eq!(c.max_series, 50);
        assert_eq!(c.histograms, Histograms { duration: true, request_bytes: false, response_bytes: false });
    }

    #[test]
    fn every_error_is_reported() {
        assert_eq!(
            fields(
                r#"{
                "metric_prefix": "Bad-Prefix",
                "hosts": ["ok.example.com", "a.example.com:80", "x.*.com", "other"],
                "routes": [
                    {"template": "/a/{}"},
                    {"prefix": "/a", "regex": "/b"},
                    {"regex": "("},
                    {"regex": "(", "label": "/x"},
                    {"prefix": "nope"},
                    {"template": "/t", "label": "/t"}
                ],
                "other_path": "/x",
                "max_path_depth": 0,
                "min_hex_length": 4,
                "request_header": {"name": "x y", "label": "code", "values": ["other"]},
                "max_series": 0,
                "histograms": ["latency"],
                "colour": 1
            }"#
            ),
            [
                "colour",
                "metric_prefix",
                "hosts[1]",
                "hosts[2]",
                "hosts[3]",
                "routes[0].template",
                "routes[1]",
                "routes[2].label",
                "routes[3].regex",
                "routes[4].prefix",
                "routes[5].label",
                "max_path_depth",
                "min_hex_length",
                "other_path",
                "request_header.name",
                "request_header.label",
                "request_header.values[0]",
                "max_series",
                "histograms[0]",
            ]
        );
    }

    #[test]
    fn error_text_names_field_and_value() {
        let e = parse(br#"{"routes": [{"regex": "(", "label": "/x"}]}"#).unwrap_err().to_string();
        assert!(e.contains("`routes[0].regex` = \"(\": invalid regex"), "{e}");
    }
}
