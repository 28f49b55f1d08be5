//! Global mode's protocol: Envoy's rate limit service, `envoy.service.ratelimit.v3`
//! `RateLimitService/ShouldRateLimit`, the request encoded and the answer read with `prost` over
//! the few messages and fields the filter uses (unknown fields in an answer are skipped, as
//! protobuf wants).
//!
//! One request per HTTP request: the plugin's `domain`, one descriptor per applied limit (its
//! entries' keys and values in order), and the limit's `hits_addend` on its descriptor when it is
//! not 1 (the request's own `hits_addend` stays unset, which the protocol reads as 1). The
//! service answers one status per descriptor, in order: [`Answer::statuses`] says for each
//! limit whether it is over, with the limit and what is left when the service says.

use gatewasm::config;
use prost::Message;

/// The service's gRPC name.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// Its one method.
pub const METHOD: &str = "ShouldRateLimit";
/// Most headers taken from an answer (each list); the rest are dropped and logged.
pub const MAX_HEADERS: usize = 32;

/// The messages, as `envoy/service/ratelimit/v3/rls.proto` and
/// `envoy/extensions/common/ratelimit/v3/ratelimit.proto` number their fields.
pub(crate) mod proto {
    /// `envoy.service.ratelimit.v3.RateLimitRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitRequest {
        #[prost(string, tag = "1")]
        pub domain: String,
        #[prost(message, repeated, tag = "2")]
        pub descriptors: Vec<RateLimitDescriptor>,
        #[prost(uint32, tag = "3")]
        pub hits_addend: u32,
    }

    /// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitDescriptor {
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<Entry>,
        #[prost(message, optional, tag = "3")]
        pub hits_addend: Option<UInt64Value>,
    }

    /// `RateLimitDescriptor.Entry`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `google.protobuf.UInt64Value`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct UInt64Value {
        #[prost(uint64, tag = "1")]
        pub value: u64,
    }

    /// `envoy.service.ratelimit.v3.RateLimitResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitResponse {
        /// `Code`: 0 unknown, 1 OK, 2 over limit.
        #[prost(int32, tag = "1")]
        pub overall_code: i32,
        #[prost(message, repeated, tag = "2")]
        pub statuses: Vec<DescriptorStatus>,
        #[prost(message, repeated, tag = "3")]
        pub response_headers_to_add: Vec<HeaderValue>,
        #[prost(message, repeated, tag = "4")]
        pub request_headers_to_add: Vec<HeaderValue>,
    }

    /// `RateLimitResponse.DescriptorStatus`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DescriptorStatus {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(message, optional, tag = "2")]
        pub current_limit: Option<RateLimit>,
        #[prost(uint32, tag = "3")]
        pub limit_remaining: u32,
        #[prost(message, optional, tag = "4")]
        pub duration_until_reset: Option<Duration>,
    }

    /// `RateLimitResponse.RateLimit`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimit {
        #[prost(uint32, tag = "1")]
        pub requests_per_unit: u32,
        /// `Unit`: 0 unknown, 1 second, 2 minute, 3 hour, 4 day, 5 month, 6 year, 7 week.
        #[prost(int32, tag = "2")]
        pub unit: i32,
    }

    /// `google.protobuf.Duration`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Duration {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }

    /// `envoy.config.core.v3.HeaderValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HeaderValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
        #[prost(bytes = "vec", tag = "3")]
        pub raw_value: Vec<u8>,
    }
}

/// The protocol's `OVER_LIMIT` code.
const OVER_LIMIT: i32 = 2;

/// Builds the request message, one descriptor at a time.
#[derive(Debug)]
pub struct RequestBuilder(proto::RateLimitRequest);

impl RequestBuilder {
    /// A request for `domain`.
    pub fn new(domain: &str) -> Self {
        Self(proto::RateLimitRequest { domain: domain.to_string(), descriptors: Vec::new(), hits_addend: 0 })
    }

    /// Adds a limit's descriptor: its entries (key, value) in order, and its hits. A value that
    /// is not UTF-8 (protobuf strings must be) is sent with each bad sequence as U+FFFD: values
    /// differing only there share a counter, which can only limit more, never less.
    pub fn descriptor<'v>(&mut self, entries: impl Iterator<Item = (&'v str, &'v [u8])>, hits: u64) {
        let entries = entries
            .map(|(key, value)| proto::Entry {
                key: key.to_string(),
                value: String::from_utf8_lossy(value).into_owned(),
            })
            .collect();
        let hits_addend = (hits != 1).then_some(proto::UInt64Value { value: hits });
        self.0.descriptors.push(proto::RateLimitDescriptor { entries, hits_addend });
    }

    /// The descriptors added so far.
    pub fn len(&self) -> usize {
        self.0.descriptors.len()
    }

    /// Whether no descriptor was added.
    pub fn is_empty(&self) -> bool {
        self.0.descriptors.is_empty()
    }

    /// The serialized message.
    pub fn encode(&self) -> Vec<u8> {
        self.0.encode_to_vec()
    }
}

/// A limit as the service reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceLimit {
    /// Hits allowed per window.
    pub requests_per_unit: u32,
    /// The window in seconds (a month is 30 days, a year 365, as the reference service counts);
    /// `None` for a unit this build does not know.
    pub window: Option<u64>,
}

/// One descriptor's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The descriptor is over its limit.
    pub over: bool,
    /// Its limit, when the service names one (a descriptor no limit matched has none).
    pub limit: Option<ServiceLimit>,
    /// Hits left in the window.
    pub remaining: u32,
    /// Microseconds until the window resets, when the service says.
    pub reset_after: Option<u64>,
}

/// The service's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The request as a whole is over a limit.
    pub over: bool,
    /// One status per descriptor sent, in order, when the service sent exactly that many;
    /// otherwise empty, and only [`Answer::over`] counts.
    pub statuses: Vec<Status>,
    /// Headers for the client's response (allowed or refused).
    pub response_headers: Vec<(String, String)>,
    /// Headers for the upstream request (allowed only).
    pub request_headers: Vec<(String, String)>,
}

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

/// Reads the answer to a request of `sent` descriptors.
pub fn decode(bytes: &[u8], sent: usize) -> Result<Answer, Malformed> {
    let response = proto::RateLimitResponse::decode(bytes).map_err(|e| Malformed(e.to_string()))?;
    let statuses = if response.statuses.len() == sent {
        response.statuses.iter().map(status).collect()
    } else {
        if !response.statuses.is_empty() {
            log::debug!(
                "rate_limit: the service answered {} statuses for {sent} descriptors: only its overall code counts",
                response.statuses.len()
            );
        }
        Vec::new()
    };
    Ok(Answer {
        // UNKNOWN reads as OK, as Envoy's own client reads it.
        over: response.overall_code == OVER_LIMIT,
        statuses,
        response_headers: headers(response.response_headers_to_add),
        request_headers: headers(response.request_headers_to_add),
    })
}

fn status(s: &proto::DescriptorStatus) -> Status {
    let reset_after = s.duration_until_reset.as_ref().and_then(|d| {
        let seconds = u64::try_from(d.seconds).ok()?;
        let nanos = u64::try_from(d.nanos).ok()?;
        seconds.checked_mul(1_000_000)?.checked_add(nanos / 1_000)
    });
    Status {
        over: s.code == OVER_LIMIT,
        limit: s.current_limit.as_ref().map(|l| ServiceLimit {
            requests_per_unit: l.requests_per_unit,
            window: match l.unit {
                1 => Some(1),
                2 => Some(60),
                3 => Some(3_600),
                4 => Some(86_400),
                5 => Some(30 * 86_400),
                6 => Some(365 * 86_400),
                7 => Some(7 * 86_400),
                _ => None,
            },
        }),
        remaining: s.limit_remaining,
        reset_after,
    }
}

/// A header list from the service: names lower-cased, `raw_value` when `value` is empty (as
/// Envoy reads `HeaderValue`), at most [`MAX_HEADERS`]. A pseudo-header, a name that is not a
/// token or a value with CR, LF or NUL is dropped: the service's text never splits a header.
fn headers(list: Vec<proto::HeaderValue>) -> Vec<(String, String)> {
    if list.len() > MAX_HEADERS {
        log::warn!("rate_limit: the service sent {} headers: the first {MAX_HEADERS} are used", list.len());
    }
    list.into_iter()
        .take(MAX_HEADERS)
        .filter_map(|h| {
            let value =
                if h.value.is_empty() { String::from_utf8_lossy(&h.raw_value).into_owned() } else { h.value };
            let ok =
                !h.key.starts_with(':') && config::is_header_name(&h.key) && config::is_header_value(&value);
            if !ok {
                log::debug!("rate_limit: a header from the service is not a valid header: dropped");
            }
            ok.then(|| (h.key.to_ascii_lowercase(), value))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn a_request_holds_the_domain_and_one_descriptor_per_limit() {
        let mut r = RequestBuilder::new("edge");
        assert!(r.is_empty());
        r.descriptor([("remote_address", &b"10.0.0.1"[..])].into_iter(), 1);
        r.descriptor([("generic_key", &b"login"[..]), ("api_key", &b"k\xff1"[..])].into_iter(), 3);
        assert_eq!(r.len(), 2);
        let back = proto::RateLimitRequest::decode(r.encode().as_slice()).unwrap();
        assert_eq!(back.domain, "edge");
        assert_eq!(back.hits_addend, 0, "unset: one hit, unless a descriptor says");
        assert_eq!(back.descriptors[0].entries[0].value, "10.0.0.1");
        assert_eq!(back.descriptors[0].hits_addend, None);
        assert_eq!(back.descriptors[1].entries[1].value, "k\u{fffd}1");
        assert_eq!(back.descriptors[1].hits_addend, Some(proto::UInt64Value { value: 3 }));
    }

    #[test]
    fn answers_are_read_per_descriptor() {
        let answer = proto::RateLimitResponse {
            overall_code: OVER_LIMIT,
            statuses: vec![
                proto::DescriptorStatus {
                    code: 1,
                    current_limit: Some(proto::RateLimit { requests_per_unit: 10, unit: 2 }),
                    limit_remaining: 4,
                    duration_until_reset: Some(proto::Duration { seconds: 12, nanos: 500_000_000 }),
                },
                proto::DescriptorStatus {
                    code: OVER_LIMIT,
                    current_limit: Some(proto::RateLimit { requests_per_unit: 5, unit: 9 }),
                    limit_remaining: 0,
                    duration_until_reset: Some(proto::Duration { seconds: -1, nanos: 0 }),
                },
            ],
            response_headers_to_add: vec![
                proto::HeaderValue {
                    key: "X-Quota".into(),
                    value: String::new(),
                    raw_value: b"raw".to_vec(),
                },
                proto::HeaderValue { key: ":status".into(), value: "200".into(), raw_value: Vec::new() },
                proto::HeaderValue {
                    key: "x-split".into(),
                    value: "a\r\nset-cookie: x".into(),
                    raw_value: Vec::new(),
                },
                proto::HeaderValue { key: "bad name".into(), value: "v".into(), raw_value: Vec::new() },
            ],
            request_headers_to_add: Vec::new(),
        };
        let read = decode(&answer.encode_to_vec(), 2).unwrap();
        assert!(read.over);
        assert_eq!(
            read.statuses[0],
            Status {
                over: false,
                limit: Some(ServiceLimit { requests_per_unit: 10, window: Some(60) }),
                remaining: 4,
                reset_after: Some(12_500_000)
            }
        );
        assert!(read.statuses[1].over);
        assert_eq!(read.statuses[1].limit.unwrap().window, None, "an unknown unit");
        assert_eq!(read.statuses[1].reset_after, None, "a negative duration");
        assert_eq!(read.response_headers, vec![("x-quota".to_string(), "raw".to_string())]);
        // Statuses that do not match the descriptors sent are not read one by one.
        assert!(decode(&answer.encode_to_vec(), 3).unwrap().statuses.is_empty());
        // An empty answer is UNKNOWN: OK, as Envoy reads it.
        assert!(!decode(&[], 1).unwrap().over);
        assert!(decode(b"\x0a\x05ab", 1).is_err(), "a truncated field");
    }
}

/// The encoding checked against Envoy's own generated types (`envoy-types`), field by field.
#[cfg(all(test, not(target_arch = "wasm32")))]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod envoy_types_tests {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
        rate_limit::Unit, Code, DescriptorStatus, RateLimit,
    };
    use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
    use envoy_types::pb::google::protobuf::{Duration, UInt64Value};
    use prost::Message;

    use super::*;

    #[test]
    fn the_request_is_envoys_rate_limit_request() {
        let mut r = RequestBuilder::new("gateway");
        r.descriptor([("remote_address", &b"::1"[..]), ("path", &b"/api/"[..])].into_iter(), 1);
        r.descriptor([("generic_key", &b"x"[..])].into_iter(), 7);
        let theirs = RateLimitRequest::decode(r.encode().as_slice()).unwrap();
        let entry = |key: &str, value: &str| Entry { key: key.into(), value: value.into() };
        assert_eq!(
            theirs,
            RateLimitRequest {
                domain: "gateway".into(),
                descriptors: vec![
                    RateLimitDescriptor {
                        entries: vec![entry("remote_address", "::1"), entry("path", "/api/")],
                        hits_addend: None,
                        ..Default::default()
                    },
                    RateLimitDescriptor {
                        entries: vec![entry("generic_key", "x")],
                        hits_addend: Some(UInt64Value { value: 7 }),
                        ..Default::default()
                    },
                ],
                hits_addend: 0,
            }
        );
    }

    #[test]
    fn envoys_answer_is_read() {
        let theirs = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![DescriptorStatus {
                code: Code::OverLimit as i32,
                current_limit: Some(RateLimit {
                    name: "login".into(),
                    requests_per_unit: 5,
                    unit: Unit::Week as i32,
                }),
                limit_remaining: 0,
                duration_until_reset: Some(Duration { seconds: 30, nanos: 1_000 }),
                ..Default::default()
            }],
            response_headers_to_add: vec![envoy_types::pb::envoy::config::core::v3::HeaderValue {
                key: "x-a".into(),
                value: "1".into(),
                raw_value: Vec::new(),
            }],
            request_headers_to_add: vec![envoy_types::pb::envoy::config::core::v3::HeaderValue {
                key: "x-b".into(),
                value: "2".into(),
                raw_value: Vec::new(),
            }],
            raw_body: b"ignored".to_vec(),
            ..Default::default()
        };
        let read = decode(&theirs.encode_to_vec(), 1).unwrap();
        assert_eq!(
            read,
            Answer {
                over: true,
                statuses: vec![Status {
                    over: true,
                    limit: Some(ServiceLimit { requests_per_unit: 5, window: Some(7 * 86_400) }),
                    remaining: 0,
                    reset_after: Some(30_000_001),
                }],
                response_headers: vec![("x-a".into(), "1".into())],
                request_headers: vec![("x-b".into(), "2".into())],
            }
        );
        assert_eq!(Unit::Month as i32, 5);
        assert_eq!(Unit::Year as i32, 6);
    }
}
