//! The answers' header fields: `Retry-After` (RFC 9110) and the `RateLimit-Policy` and
//! `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers-11, both Structured Field lists
//! whose items are the policy's name as a String with parameters:
//!
//! ```text
//! RateLimit-Policy: "api.per-key";q=100;w=60, "login.per-ip";q=10;w=1
//! RateLimit: "api.per-key";r=99;t=1
//! ```
//!
//! `q` is the quota per window `w` (seconds); a concurrency limit has no window and says its unit,
//! `qu="concurrent-requests"`. A token bucket's burst, when it differs from its rate, is the
//! vendor parameter `gatewasm-burst`. `r` is what is left for this client and `t` the seconds
//! within which it can use no more than that: until the bucket is full or the window ends on an
//! allowed response (a client that spends `r` and waits `t` never goes over), until the request
//! would fit on a refused one (so `t` is never after `Retry-After`, as the draft asks). No
//! partition key (`pk`) is sent: the keys are client values (addresses, API keys) the draft
//! says not to echo.

use crate::algorithm::{Algorithm, Decision, MICROS};

/// The `RateLimit-Policy` header.
pub const POLICY: &str = "ratelimit-policy";
/// The `RateLimit` header.
pub const RATELIMIT: &str = "ratelimit";
/// The `Retry-After` header.
pub const RETRY_AFTER: &str = "retry-after";

/// A Structured Field String: quotes and backslashes escaped (policy names are printable ASCII,
/// which is every other character a String may hold).
fn sf_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The `RateLimit-Policy` item of a limit.
pub fn policy_item(policy: &str, algorithm: &Algorithm, hits: u64) -> String {
    let name = sf_string(policy);
    let item = match algorithm {
        Algorithm::TokenBucket { rate, per, burst } if burst != rate => {
            format!("{name};q={rate};w={};gatewasm-burst={burst}", per.seconds())
        }
        Algorithm::TokenBucket { rate, per, .. } => format!("{name};q={rate};w={}", per.seconds()),
        Algorithm::FixedWindow { requests, per } => format!("{name};q={requests};w={}", per.seconds()),
        Algorithm::Concurrency { max, .. } => format!("{name};q={max};qu=\"concurrent-requests\""),
    };
    with_hits(item, hits)
}

/// A policy item with the request's hits when it costs several, so that `q` and `r` can be
/// read as requests.
fn with_hits(item: String, hits: u64) -> String {
    if hits > 1 {
        format!("{item};gatewasm-hits={hits}")
    } else {
        item
    }
}

/// The `RateLimit-Policy` item of a limit another party holds (global mode's service): `q`
/// hits per `w` seconds, and the request's hits when more than one.
pub fn quota_item(policy: &str, q: u64, w: u64, hits: u64) -> String {
    with_hits(format!("{};q={q};w={w}", sf_string(policy)), hits)
}

/// Whole seconds, rounded up.
pub fn seconds(micros: u64) -> u64 {
    micros.div_ceil(MICROS)
}

/// The `RateLimit` item of a limit's decision.
pub fn limit_item(policy: &str, decision: &Decision) -> String {
    let name = sf_string(policy);
    match decision.reset_after {
        Some(after) => format!("{name};r={};t={}", decision.remaining, seconds(after)),
        None => format!("{name};r={}", decision.remaining),
    }
}

/// The `Retry-After` of a refused decision: when the request would fit (at least a second), or
/// `fallback` for a limit that frees by requests ending rather than by time.
pub fn retry_after(decision: &Decision, fallback: u64) -> u64 {
    decision.reset_after.map_or(fallback, |after| seconds(after).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Unit;

    #[test]
    fn policy_items() {
        let bucket = Algorithm::TokenBucket { rate: 100, per: Unit::Minute, burst: 100 };
        assert_eq!(policy_item("api.per-key", &bucket, 1), r#""api.per-key";q=100;w=60"#);
        let bursty = Algorithm::TokenBucket { rate: 10, per: Unit::Second, burst: 50 };
        assert_eq!(policy_item("a", &bursty, 1), r#""a";q=10;w=1;gatewasm-burst=50"#);
        let window = Algorithm::FixedWindow { requests: 1000, per: Unit::Hour };
        assert_eq!(policy_item("t.1", &window, 5), r#""t.1";q=1000;w=3600;gatewasm-hits=5"#);
        let flight = Algorithm::Concurrency { max: 4, retry_after: 1 };
        assert_eq!(policy_item("c", &flight, 1), r#""c";q=4;qu="concurrent-requests""#);
        assert_eq!(policy_item(r#"a"b\c"#, &flight, 1), r#""a\"b\\c";q=4;qu="concurrent-requests""#);
    }

    #[test]
    fn limit_items_and_retry_after() {
        let allowed = Decision { allowed: true, write: None, remaining: 99, reset_after: Some(600_001) };
        assert_eq!(limit_item("api.per-key", &allowed), r#""api.per-key";r=99;t=1"#);
        let refused = Decision { allowed: false, write: None, remaining: 0, reset_after: Some(100) };
        assert_eq!(limit_item("p", &refused), r#""p";r=0;t=1"#);
        assert_eq!(retry_after(&refused, 9), 1, "at least a second");
        let flight = Decision { allowed: false, write: None, remaining: 0, reset_after: None };
        assert_eq!(limit_item("c", &flight), r#""c";r=0"#);
        assert_eq!(retry_after(&flight, 3), 3);
        assert_eq!(seconds(0), 0);
        assert_eq!(seconds(2 * MICROS), 2);
    }
}
