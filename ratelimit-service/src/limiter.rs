//! One `ShouldRateLimit` decision: each descriptor matched against its domain's rules, the
//! matched limits counted in the store, and the answer in the protocol's terms.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};

use crate::config::{escape, Action, Limit, Limits, Node, Unit};
use crate::store::{Count, Store, StoreError};

/// Header names the reference service adds when asked (`LIMIT_RESPONSE_HEADERS_ENABLED`), for
/// the descriptor with the fewest hits left.
pub const LIMIT_HEADER: &str = "ratelimit-limit";
/// See [`LIMIT_HEADER`].
pub const REMAINING_HEADER: &str = "ratelimit-remaining";
/// See [`LIMIT_HEADER`].
pub const RESET_HEADER: &str = "ratelimit-reset";

/// Why a request got a gRPC error instead of a decision.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    /// The request breaks the protocol's rules.
    #[error("{0}")]
    Invalid(String),
    /// The counter store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The service's state: the limits, the counters, and what answers carry.
pub struct Limiter {
    limits: Limits,
    store: Store,
    response_headers: bool,
    shadow: Throttled,
    store_errors: Throttled,
}

/// A limit matched by one descriptor, with what this request adds to it.
#[derive(Debug, Clone)]
struct Matched {
    limit: Limit,
    key: String,
    delta: u64,
}

impl Limiter {
    /// A limiter for `limits`, counting in `store`; with `response_headers`, answers carry the
    /// `ratelimit-limit`/`-remaining`/`-reset` headers of the tightest limit.
    pub fn new(limits: Limits, store: Store, response_headers: bool) -> Limiter {
        Limiter {
            limits,
            store,
            response_headers,
            shadow: Throttled::new("shadow-mode limits over their limit (answered OK)"),
            store_errors: Throttled::new("decisions failed on the counter store"),
        }
    }

    /// The counter store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Decides one request.
    pub async fn decide(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, DecisionError> {
        if request.domain.is_empty() {
            return Err(DecisionError::Invalid("rate limit domain must not be empty".into()));
        }
        if request.descriptors.is_empty() {
            return Err(DecisionError::Invalid("rate limit descriptor list must not be empty".into()));
        }
        // hits_addend 0 is the protocol's "not set".
        let request_hits = u64::from(request.hits_addend.max(1));
        let mut matched: Vec<Option<Matched>> = Vec::with_capacity(request.descriptors.len());
        if let Some(root) = self.limits.domain(&request.domain) {
            for descriptor in &request.descriptors {
                matched.push(match_descriptor(&request.domain, root, descriptor, request_hits)?);
            }
        } else {
            matched.resize(request.descriptors.len(), None);
        }
        // A matched limit that another matched limit `replaces` does not apply to this request.
        let replaced: Vec<String> =
            matched.iter().flatten().flat_map(|m| m.limit.replaces.iter().cloned()).collect();
        if !replaced.is_empty() {
            for m in &mut matched {
                if m.as_ref().and_then(|m| m.limit.name.as_ref()).is_some_and(|n| replaced.contains(n)) {
                    *m = None;
                }
            }
        }

        let counts: Vec<Count> = matched
            .iter()
            .flatten()
            .map(|m| Count {
                key: m.key.clone(),
                max: u64::from(m.limit.requests_per_unit),
                window: m.limit.unit.window(),
                delta: m.delta,
                enforced: !m.limit.shadow_mode,
            })
            .collect();
        let counted = match self.store.count(&counts).await {
            Ok(counted) => counted,
            Err(e) => {
                self.store_errors.note(&e.to_string());
                return Err(e.into());
            }
        };

        let mut seen = counted.seen.iter();
        let mut statuses = Vec::with_capacity(matched.len());
        let mut over = false;
        for m in &matched {
            // Only a matched descriptor has a counter: take the next one for it alone.
            let Some((m, s)) = m.as_ref().and_then(|m| seen.next().map(|s| (m, *s))) else {
                statuses.push(DescriptorStatus { code: Code::Ok.into(), ..Default::default() });
                continue;
            };
            let over_here = s.remaining < m.delta;
            if m.limit.shadow_mode && over_here {
                self.shadow.note(&m.limit.id);
            }
            let limited = over_here && !m.limit.shadow_mode;
            over |= limited;
            let remaining = if counted.allowed { s.remaining.saturating_sub(m.delta) } else { s.remaining };
            let remaining = if limited { 0 } else { remaining };
            statuses.push(DescriptorStatus {
                code: if limited { Code::OverLimit } else { Code::Ok }.into(),
                current_limit: Some(RateLimit {
                    name: m.limit.name.clone().unwrap_or_default(),
                    requests_per_unit: m.limit.requests_per_unit,
                    unit: m.limit.unit.proto(),
                }),
                limit_remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                duration_until_reset: Some(proto_duration(s.reset)),
                ..Default::default()
            });
        }
        let response_headers_to_add = if self.response_headers { headers(&statuses) } else { Vec::new() };
        Ok(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok }.into(),
            statuses,
            response_headers_to_add,
            ..Default::default()
        })
    }
}

/// Walks the rule tree along the descriptor's entries, as Envoy's reference service does: every
/// entry must find a rule, and the rule of the last entry holds the limit. A descriptor's own
/// `limit` (Envoy's rate limit override) replaces the file's, for a domain the file defines.
fn match_descriptor(
    domain: &str,
    root: &Node,
    descriptor: &RateLimitDescriptor,
    request_hits: u64,
) -> Result<Option<Matched>, DecisionError> {
    let delta = descriptor.hits_addend.map(|h| h.value).unwrap_or(request_hits);
    let values = descriptor_key(descriptor);
    if let Some(limit) = &descriptor.limit {
        let unit = Unit::from_proto(limit.unit).ok_or_else(|| {
            DecisionError::Invalid(format!("descriptor limit override: unknown unit {}", limit.unit))
        })?;
        let limit = Limit {
            requests_per_unit: limit.requests_per_unit,
            unit,
            name: None,
            shadow_mode: false,
            replaces: Vec::new(),
            // `%` is escaped in the file's ids, so no file rule has this one.
            id: format!("{}/%override/{}s", escape(domain), unit.window().as_secs()),
        };
        let key = format!("{}|{values}", limit.id);
        return Ok(Some(Matched { limit, key, delta }));
    }
    let mut node = root;
    let mut action = None;
    for entry in &descriptor.entries {
        let Some(rule) = node.find(&entry.key, &entry.value) else {
            return Ok(None);
        };
        action = rule.action.as_ref();
        node = &rule.children;
    }
    Ok(match action {
        Some(Action::Limit(limit)) => {
            Some(Matched { limit: limit.clone(), key: format!("{}|{values}", limit.id), delta })
        }
        Some(Action::Unlimited) | None => None,
    })
}

/// The descriptor's entries as one string (lengths first, so no value can forge another's key).
fn descriptor_key(descriptor: &RateLimitDescriptor) -> String {
    let mut key = String::new();
    for entry in &descriptor.entries {
        key.push_str(&format!("{}:{}={}:{};", entry.key.len(), entry.key, entry.value.len(), entry.value));
    }
    key
}

fn proto_duration(d: Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// The reference service's headers for the status with the fewest hits left.
fn headers(statuses: &[DescriptorStatus]) -> Vec<HeaderValue> {
    let tightest = statuses.iter().filter(|s| s.current_limit.is_some()).min_by_key(|s| s.limit_remaining);
    let Some(status) = tightest else {
        return Vec::new();
    };
    let limit = status.current_limit.as_ref().map(|l| l.requests_per_unit).unwrap_or(0);
    // Whole seconds, rounded up: "0" would tell a client to retry while still limited.
    let reset = status.duration_until_reset.as_ref().map_or(0, |d| d.seconds + i64::from(d.nanos > 0));
    let header = |key: &str, value: String| HeaderValue { key: key.into(), value, ..Default::default() };
    vec![
        header(LIMIT_HEADER, limit.to_string()),
        header(REMAINING_HEADER, status.limit_remaining.to_string()),
        header(RESET_HEADER, reset.to_string()),
    ]
}

/// A log line at most once a second, with how many times it happened since the last one.
struct Throttled {
    what: &'static str,
    count: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl Throttled {
    fn new(what: &'static str) -> Throttled {
        Throttled { what, count: AtomicU64::new(0), last: Mutex::new(None) }
    }

    fn note(&self, detail: &str) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let Ok(mut last) = self.last.try_lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(Instant::now());
        let n = self.count.swap(0, Ordering::Relaxed);
        eprintln!("gatewasm-ratelimit: {n} {} (last: {detail})", self.what);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
        Entry, RateLimitOverride,
    };

    use super::*;

    const FILE: &str = r#"
domain: gw
descriptors:
  - key: tenant
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: generic_key
    value: login
    descriptors:
      - key: remote_address
        rate_limit: {unit: second, requests_per_unit: 1, name: login}
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: path
    value: /free/*
    rate_limit: {unlimited: true}
  - key: plan
    value: gold
    rate_limit: {unit: minute, requests_per_unit: 100, name: gold, replaces: [{name: login}]}
"#;

    fn limiter(headers: bool) -> Limiter {
        let mut limits = Limits::default();
        limits.add("limits.yaml", FILE).unwrap();
        Limiter::new(limits, Store::memory(10_000).unwrap(), headers)
    }

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() })
                .collect(),
            ..Default::default()
        }
    }

    fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest { domain: domain.into(), descriptors, hits_addend: 0 }
    }

    fn codes(r: &RateLimitResponse) -> (i32, Vec<i32>) {
        (r.overall_code, r.statuses.iter().map(|s| s.code).collect())
    }

    const OK: i32 = Code::Ok as i32;
    const OVER: i32 = Code::OverLimit as i32;

    #[tokio::test]
    async fn each_value_of_a_wildcard_key_has_its_own_counter() {
        let l = limiter(false);
        let a = request("gw", vec![descriptor(&[("remote_address", "10.0.0.1")])]);
        let b = request("gw", vec![descriptor(&[("remote_address", "10.0.0.2")])]);
        let first = l.decide(&a).await.unwrap();
        assert_eq!(codes(&first), (OK, vec![OK]));
        let status = &first.statuses[0];
        assert_eq!(status.limit_remaining, 1);
        assert_eq!(
            status.current_limit,
            Some(RateLimit { name: String::new(), requests_per_unit: 2, unit: 2 })
        );
        let reset = status.duration_until_reset.unwrap();
        assert!(reset.seconds <= 60 && reset.seconds >= 55, "{reset:?}");
        assert_eq!(codes(&l.decide(&a).await.unwrap()), (OK, vec![OK]));
        let third = l.decide(&a).await.unwrap();
        assert_eq!(codes(&third), (OVER, vec![OVER]));
        assert_eq!(third.statuses[0].limit_remaining, 0);
        assert_eq!(codes(&l.decide(&b).await.unwrap()), (OK, vec![OK]), "another address, another counter");
    }

    #[tokio::test]
    async fn nested_descriptors_unknown_domains_and_unmatched_descriptors() {
        let l = limiter(false);
        let login = descriptor(&[("generic_key", "login"), ("remote_address", "1.1.1.1")]);
        let r = l.decide(&request("gw", vec![login.clone()])).await.unwrap();
        assert_eq!(r.statuses[0].current_limit.as_ref().unwrap().name, "login");
        assert_eq!(codes(&l.decide(&request("gw", vec![login])).await.unwrap()), (OVER, vec![OVER]));

        // Only part of a nested path, a value no rule has, an unknown key or domain: no limit.
        for d in [
            descriptor(&[("generic_key", "login")]),
            descriptor(&[("generic_key", "other"), ("remote_address", "1.1.1.1")]),
            descriptor(&[("remote_address", "1.1.1.1"), ("extra", "x")]),
            descriptor(&[("unknown", "x")]),
            descriptor(&[("path", "/free/a")]),
        ] {
            for _ in 0..3 {
                let r = l.decide(&request("gw", vec![d.clone()])).await.unwrap();
                assert_eq!(codes(&r), (OK, vec![OK]), "{d:?}");
                assert_eq!(r.statuses[0].current_limit, None);
            }
        }
        let r = l.decide(&request("nowhere", vec![descriptor(&[("remote_address", "1")])])).await.unwrap();
        assert_eq!(codes(&r), (OK, vec![OK]));
    }

    #[tokio::test]
    async fn overall_over_limit_if_any_and_hits_addend() {
        let l = limiter(false);
        let ip = descriptor(&[("remote_address", "9.9.9.9")]);
        let other = descriptor(&[("remote_address", "8.8.8.8")]);
        let mut r = request("gw", vec![ip.clone()]);
        r.hits_addend = 2;
        assert_eq!(l.decide(&r).await.unwrap().statuses[0].limit_remaining, 0);
        let r = l.decide(&request("gw", vec![other.clone(), ip.clone()])).await.unwrap();
        assert_eq!(codes(&r), (OVER, vec![OK, OVER]));
        assert_eq!(r.statuses[0].limit_remaining, 2, "the refused request used nothing of the other");
        // Unmatched descriptors around matched ones: each status is its own descriptor's.
        let nothing = descriptor(&[("unknown", "x")]);
        let r = l
            .decide(&request("gw", vec![nothing.clone(), ip.clone(), nothing, other.clone()]))
            .await
            .unwrap();
        assert_eq!(codes(&r), (OVER, vec![OK, OVER, OK, OK]));
        assert_eq!(r.statuses[0].current_limit, None);
        assert_eq!(r.statuses[1].current_limit.as_ref().unwrap().requests_per_unit, 2);
        assert_eq!(r.statuses[2].current_limit, None);
        assert_eq!(r.statuses[3].limit_remaining, 2);
        // A descriptor's own hits_addend overrides the request's; 0 only looks.
        let mut look = other.clone();
        look.hits_addend = Some(envoy_types::pb::google::protobuf::UInt64Value { value: 0 });
        for _ in 0..3 {
            let r = l.decide(&request("gw", vec![look.clone()])).await.unwrap();
            assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 2));
        }
        let mut big = other;
        big.hits_addend = Some(envoy_types::pb::google::protobuf::UInt64Value { value: 3 });
        assert_eq!(codes(&l.decide(&request("gw", vec![big])).await.unwrap()), (OVER, vec![OVER]));
    }

    #[tokio::test]
    async fn a_limit_replaces_another_by_name() {
        let l = limiter(false);
        let login = descriptor(&[("generic_key", "login"), ("remote_address", "3.3.3.3")]);
        let gold = descriptor(&[("plan", "gold")]);
        for _ in 0..3 {
            let r = l.decide(&request("gw", vec![login.clone(), gold.clone()])).await.unwrap();
            assert_eq!(codes(&r), (OK, vec![OK, OK]));
            assert_eq!(r.statuses[0].current_limit, None, "replaced by gold: no limit");
        }
        // Without gold, the login limit (1 a second) applies and was not counted above.
        assert_eq!(codes(&l.decide(&request("gw", vec![login.clone()])).await.unwrap()), (OK, vec![OK]));
        assert_eq!(codes(&l.decide(&request("gw", vec![login])).await.unwrap()), (OVER, vec![OVER]));
    }

    #[tokio::test]
    async fn shadow_mode_counts_and_answers_ok() {
        let l = limiter(false);
        let tenant = descriptor(&[("tenant", "acme")]);
        let first = l.decide(&request("gw", vec![tenant.clone()])).await.unwrap();
        assert_eq!(first.statuses[0].limit_remaining, 0);
        for _ in 0..3 {
            let r = l.decide(&request("gw", vec![tenant.clone()])).await.unwrap();
            assert_eq!(codes(&r), (OK, vec![OK]));
            assert_eq!(r.statuses[0].limit_remaining, 0);
        }
    }

    #[tokio::test]
    async fn overrides_replace_the_file_limit() {
        let l = limiter(false);
        let mut d = descriptor(&[("remote_address", "7.7.7.7")]);
        d.limit = Some(RateLimitOverride { requests_per_unit: 1, unit: Unit::Day.proto() });
        let first = l.decide(&request("gw", vec![d.clone()])).await.unwrap();
        assert_eq!(first.statuses[0].current_limit.as_ref().unwrap().unit, Unit::Day.proto());
        assert_eq!(codes(&l.decide(&request("gw", vec![d.clone()])).await.unwrap()), (OVER, vec![OVER]));
        d.limit = Some(RateLimitOverride { requests_per_unit: 1, unit: 0 });
        assert!(matches!(l.decide(&request("gw", vec![d])).await, Err(DecisionError::Invalid(_))));
    }

    #[tokio::test]
    async fn bad_requests_are_errors() {
        let l = limiter(false);
        assert!(matches!(
            l.decide(&request("", vec![descriptor(&[])])).await,
            Err(DecisionError::Invalid(_))
        ));
        assert!(matches!(l.decide(&request("gw", vec![])).await, Err(DecisionError::Invalid(_))));
    }

    #[tokio::test]
    async fn headers_name_the_tightest_limit_when_asked() {
        let quiet = limiter(false);
        let d = vec![descriptor(&[("remote_address", "5.5.5.5")])];
        assert!(quiet.decide(&request("gw", d.clone())).await.unwrap().response_headers_to_add.is_empty());
        let l = limiter(true);
        let both = vec![
            descriptor(&[("remote_address", "5.5.5.5")]),
            descriptor(&[("generic_key", "login"), ("remote_address", "5.5.5.5")]),
        ];
        let r = l.decide(&request("gw", both)).await.unwrap();
        let headers: Vec<(String, String)> =
            r.response_headers_to_add.iter().map(|h| (h.key.clone(), h.value.clone())).collect();
        assert_eq!(headers[0], (LIMIT_HEADER.to_string(), "1".to_string()));
        assert_eq!(headers[1], (REMAINING_HEADER.to_string(), "0".to_string()));
        assert_eq!(headers[2], (RESET_HEADER.to_string(), "1".to_string()));
        let none = l.decide(&request("gw", vec![descriptor(&[("unknown", "x")])])).await.unwrap();
        assert!(none.response_headers_to_add.is_empty());
    }

    #[test]
    fn descriptor_keys_cannot_be_forged() {
        let a = descriptor_key(&descriptor(&[("a", "b;1:c=1:d")]));
        let b = descriptor_key(&descriptor(&[("a", "b"), ("c", "d")]));
        assert_ne!(a, b);
    }
}
