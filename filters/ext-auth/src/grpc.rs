//! The gRPC mode: Envoy's `envoy.service.auth.v3.Authorization/Check`, as the auth services
//! written for Envoy's `ext_authz` (OPA's Envoy plugin, Authorino, custom servers) expect it.
//!
//! The messages are declared here with `prost`, holding only the fields the filter sends or
//! reads (unknown fields are skipped when decoding, so a service may send more). Field numbers
//! are those of `envoy/service/auth/v3/*.proto`; the tests encode and decode against
//! `envoy-types`' generated types to prove them. A protobuf `string` the filter writes raw
//! (the body) is declared `bytes`: the same wire format, without re-checking UTF-8.

use std::collections::BTreeMap;
use std::time::SystemTime;

use gatewasm::{GrpcError, GrpcResult, LocalReply};
use prost::Message;

use crate::config::{Settings, PARTIAL_BODY};

/// The service the check calls.
pub const SERVICE: &str = "envoy.service.auth.v3.Authorization";
/// The method the check calls.
pub const METHOD: &str = "Check";

/// `envoy.service.auth.v3.CheckRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct CheckRequest {
    /// The request's attributes.
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

/// `envoy.service.auth.v3.AttributeContext` (source, destination, request).
#[derive(Clone, PartialEq, Message)]
pub struct AttributeContext {
    /// The client (`source.address`).
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    /// The listener the client reached (`destination.address`).
    #[prost(message, optional, tag = "2")]
    pub destination: Option<Peer>,
    /// The request.
    #[prost(message, optional, tag = "4")]
    pub request: Option<AttributeRequest>,
}

/// `AttributeContext.Peer`, its address only.
#[derive(Clone, PartialEq, Message)]
pub struct Peer {
    /// `envoy.config.core.v3.Address`.
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
}

/// `envoy.config.core.v3.Address`, its `socket_address` (the first of its oneof).
#[derive(Clone, PartialEq, Message)]
pub struct Address {
    /// The IP address and port.
    #[prost(message, optional, tag = "1")]
    pub socket_address: Option<SocketAddress>,
}

/// `envoy.config.core.v3.SocketAddress` (TCP, the default protocol, is field 1's zero).
#[derive(Clone, PartialEq, Message)]
pub struct SocketAddress {
    /// The IP address, without brackets.
    #[prost(string, tag = "2")]
    pub address: String,
    /// The port.
    #[prost(uint32, tag = "3")]
    pub port_value: u32,
}

/// `AttributeContext.Request`.
#[derive(Clone, PartialEq, Message)]
pub struct AttributeRequest {
    /// When the check was made (`google.protobuf.Timestamp`).
    #[prost(message, optional, tag = "1")]
    pub time: Option<Timestamp>,
    /// The HTTP request.
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, Message)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds within the second.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `AttributeContext.HttpRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct HttpRequest {
    /// Envoy sends its stream id, which a filter cannot read: `x-request-id` instead.
    #[prost(string, tag = "1")]
    pub id: String,
    /// `:method`.
    #[prost(string, tag = "2")]
    pub method: String,
    /// The request headers, pseudo-headers included, names lower-case; a repeated header's
    /// values joined with `,` (as Envoy fills the map).
    #[prost(btree_map = "string, string", tag = "3")]
    pub headers: BTreeMap<String, String>,
    /// `:path`, query included.
    #[prost(string, tag = "4")]
    pub path: String,
    /// `:authority`.
    #[prost(string, tag = "5")]
    pub host: String,
    /// `:scheme`.
    #[prost(string, tag = "6")]
    pub scheme: String,
    /// `HTTP/1.0`, `HTTP/1.1`, `HTTP/2`, `HTTP/3`.
    #[prost(string, tag = "10")]
    pub protocol: String,
    /// The body (a protobuf `string`, sent as the client's bytes, as Envoy sends it).
    #[prost(bytes = "vec", tag = "11")]
    pub body: Vec<u8>,
    /// The body, with `with_request_body.pack_as_bytes`.
    #[prost(bytes = "vec", tag = "12")]
    pub raw_body: Vec<u8>,
}

/// `envoy.service.auth.v3.CheckResponse` (its `http_response` oneof as optional fields).
#[derive(Clone, PartialEq, Message)]
pub struct CheckResponse {
    /// `google.rpc.Status`: `OK` allows, anything else denies.
    #[prost(message, optional, tag = "1")]
    pub status: Option<RpcStatus>,
    /// What the client gets on denial.
    #[prost(message, optional, tag = "2")]
    pub denied_response: Option<DeniedHttpResponse>,
    /// Changes to the request on allow.
    #[prost(message, optional, tag = "3")]
    pub ok_response: Option<OkHttpResponse>,
    /// The service's own failure (newer Envoys): an error, not a denial.
    #[prost(message, optional, tag = "5")]
    pub error_response: Option<DeniedHttpResponse>,
}

/// `google.rpc.Status`, without details.
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    /// The `google.rpc.Code`.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// A message for developers.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// `envoy.service.auth.v3.DeniedHttpResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct DeniedHttpResponse {
    /// `envoy.type.v3.HttpStatus`; unset or 0: 403.
    #[prost(message, optional, tag = "1")]
    pub status: Option<HttpStatus>,
    /// Headers for the client.
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    /// The body for the client.
    #[prost(string, tag = "3")]
    pub body: String,
}

/// `envoy.type.v3.HttpStatus`.
#[derive(Clone, PartialEq, Message)]
pub struct HttpStatus {
    /// The status code.
    #[prost(int32, tag = "1")]
    pub code: i32,
}

/// `envoy.service.auth.v3.OkHttpResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct OkHttpResponse {
    /// Headers to set, add or append upstream.
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    /// Request headers to remove.
    #[prost(string, repeated, tag = "5")]
    pub headers_to_remove: Vec<String>,
    /// Headers for the client's response.
    #[prost(message, repeated, tag = "6")]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// Query parameters to set (`QueryParameter` messages, not read: not supported).
    #[prost(bytes = "vec", repeated, tag = "7")]
    pub query_parameters_to_set: Vec<Vec<u8>>,
    /// Query parameters to remove (not supported).
    #[prost(string, repeated, tag = "8")]
    pub query_parameters_to_remove: Vec<String>,
}

/// `envoy.config.core.v3.HeaderValueOption`.
#[derive(Clone, PartialEq, Message)]
pub struct HeaderValueOption {
    /// The header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<HeaderValue>,
    /// Deprecated `append` (`google.protobuf.BoolValue`): when present, it decides.
    #[prost(message, optional, tag = "2")]
    pub append: Option<BoolValue>,
    /// `HeaderAppendAction`.
    #[prost(int32, tag = "3")]
    pub append_action: i32,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, Message)]
pub struct HeaderValue {
    /// Name.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `google.protobuf.BoolValue`.
#[derive(Clone, PartialEq, Message)]
pub struct BoolValue {
    /// The value.
    #[prost(bool, tag = "1")]
    pub value: bool,
}

/// What one header of an answer does, as Envoy 1.40's `ext_authz` applies a
/// `HeaderValueOption` (its `append_action` is not read: `tests/envoy_grpc.rs` writes each
/// action side by side with native `ext_authz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderOp {
    /// Replace every value of the name with this one (or add it).
    Set,
    /// Add a line, keeping the name's other values.
    Add,
    /// Join with `,` to the name's value when it has one; nothing when it has none.
    AppendIfExists,
}

impl HeaderOp {
    /// The operation of a request header option: `append: true` appends to an existing value,
    /// anything else sets.
    pub fn upstream(option: &HeaderValueOption) -> Self {
        match option.append {
            Some(BoolValue { value: true }) => HeaderOp::AppendIfExists,
            _ => HeaderOp::Set,
        }
    }

    /// The operation of a response header option: `append: false` sets, anything else adds a
    /// line.
    pub fn response(option: &HeaderValueOption) -> Self {
        match option.append {
            Some(BoolValue { value: false }) => HeaderOp::Set,
            _ => HeaderOp::Add,
        }
    }
}

/// One header change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderChange {
    /// Lower-case name.
    pub name: String,
    /// Value.
    pub value: String,
    /// How it applies.
    pub op: HeaderOp,
}

/// What an allowing answer changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Request header changes, in answer order (only `allowed_upstream_headers`).
    pub upstream: Vec<HeaderChange>,
    /// Request headers to remove (never pseudo-headers or `host`).
    pub remove: Vec<String>,
    /// Response header changes (only `allowed_client_headers_on_success`).
    pub client: Vec<HeaderChange>,
}

/// What the auth service's `CheckResponse` (or the call's failure) means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcDecision {
    /// `OK`: let the request through with these changes.
    Allow(Changes),
    /// Any other status: answer the client.
    Deny(LocalReply),
    /// The call failed, timed out, or its answer could not be read.
    Error {
        /// True for a timeout.
        timeout: bool,
    },
}

/// The parts of the stream the check describes besides its headers.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// `source.address` (`ip:port`).
    pub source: Option<String>,
    /// `destination.address`.
    pub destination: Option<String>,
    /// `request.protocol`.
    pub protocol: Option<String>,
    /// The host's clock.
    pub now: Option<SystemTime>,
}

/// Whether the client's header `name` goes into the check's header map: every header Envoy
/// holds (pseudo-headers too), or only the listed ones with `default_request_headers: false`;
/// never a client's `x-envoy-auth-partial-body`, nor a header the filter removed on arrival.
pub fn forwarded(settings: &Settings, name: &str) -> bool {
    name != PARTIAL_BODY
        && !settings.strip.iter().any(|s| s == name)
        && (name.starts_with(':') || settings.all_request_headers || settings.request_headers.contains(name))
}

/// The `CheckRequest` for a client request, without its body (see [`attach_body`]).
pub fn check_request<'a>(
    settings: &Settings,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
    connection: Connection,
) -> CheckRequest {
    let mut http = HttpRequest::default();
    for (name, value) in headers {
        match name {
            ":method" => http.method = value.to_string(),
            ":path" => http.path = value.to_string(),
            ":authority" => http.host = value.to_string(),
            ":scheme" => http.scheme = value.to_string(),
            "x-request-id" => http.id = value.to_string(),
            _ => {}
        }
        if !forwarded(settings, name) {
            continue;
        }
        http.headers
            .entry(name.to_string())
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(value);
            })
            .or_insert_with(|| value.to_string());
    }
    http.protocol = connection.protocol.unwrap_or_default();
    let time = connection.now.and_then(|now| now.duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| {
        Timestamp {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            // Below one billion: fits.
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        }
    });
    CheckRequest {
        attributes: Some(AttributeContext {
            source: connection.source.as_deref().and_then(peer),
            destination: connection.destination.as_deref().and_then(peer),
            request: Some(AttributeRequest { time, http: Some(http) }),
        }),
    }
}

/// A peer from `ip:port` or `[ip]:port`; `None` when the text is not that.
fn peer(text: &str) -> Option<Peer> {
    let (ip, port) = text.rsplit_once(':')?;
    let ip = ip.strip_prefix('[').and_then(|ip| ip.strip_suffix(']')).unwrap_or(ip);
    let port_value = port.parse().ok()?;
    Some(Peer {
        address: Some(Address {
            socket_address: Some(SocketAddress { address: ip.to_string(), port_value }),
        }),
    })
}

/// Puts the buffered body into a check, and `x-envoy-auth-partial-body` into its header map,
/// as Envoy does.
pub fn attach_body(check: &mut CheckRequest, body: Vec<u8>, partial: bool, pack_as_bytes: bool) {
    let Some(http) = check.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut())
    else {
        return;
    };
    http.headers.insert(PARTIAL_BODY.to_string(), if partial { "true" } else { "false" }.to_string());
    if pack_as_bytes {
        http.raw_body = body;
    } else {
        http.body = body;
    }
}

/// Judges the result of the `Check` call.
pub fn decide(settings: &Settings, result: &GrpcResult) -> GrpcDecision {
    let message = match result {
        Ok(message) => message,
        Err(GrpcError::Timeout) => return GrpcDecision::Error { timeout: true },
        Err(_) => return GrpcDecision::Error { timeout: false },
    };
    let Ok(response) = CheckResponse::decode(message.as_slice()) else {
        log::warn!("ext_auth: the auth service's CheckResponse cannot be decoded");
        return GrpcDecision::Error { timeout: false };
    };
    if response.status.as_ref().map_or(0, |s| s.code) == 0 {
        return GrpcDecision::Allow(allow(settings, response.ok_response.unwrap_or_default()));
    }
    if response.error_response.is_some() {
        return GrpcDecision::Error { timeout: false };
    }
    GrpcDecision::Deny(deny(settings, response.denied_response.unwrap_or_default()))
}

fn allow(settings: &Settings, ok: OkHttpResponse) -> Changes {
    let mut changes = Changes::default();
    for option in &ok.headers {
        let Some(header) = &option.header else { continue };
        let name = header.key.to_ascii_lowercase();
        if settings.upstream_headers.contains(&name) {
            changes.upstream.push(HeaderChange {
                name,
                value: header.value.clone(),
                op: HeaderOp::upstream(option),
            });
        } else {
            log::debug!("ext_auth: the answer's {name} is not in allowed_upstream_headers: ignored");
        }
    }
    for option in &ok.response_headers_to_add {
        let Some(header) = &option.header else { continue };
        let name = header.key.to_ascii_lowercase();
        if settings.client_headers_on_success.contains(&name) {
            changes.client.push(HeaderChange {
                name,
                value: header.value.clone(),
                op: HeaderOp::response(option),
            });
        }
    }
    changes.remove = ok
        .headers_to_remove
        .iter()
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty() && !n.starts_with(':') && n != "host")
        .collect();
    if !ok.query_parameters_to_set.is_empty() || !ok.query_parameters_to_remove.is_empty() {
        log::warn!("ext_auth: the answer's query parameter changes are not supported: ignored");
    }
    changes
}

fn deny(settings: &Settings, denied: DeniedHttpResponse) -> LocalReply {
    let status = denied
        .status
        .and_then(|s| u16::try_from(s.code).ok())
        .filter(|code| (200..600).contains(code))
        .unwrap_or(403);
    let mut body = denied.body.into_bytes();
    body.truncate(settings.max_denied_body_bytes);
    let mut reply = LocalReply::new(status, "denied", "denied by the auth service");
    for option in denied.headers {
        let Some(header) = option.header else { continue };
        let name = header.key.to_ascii_lowercase();
        if settings.client_headers.contains(&name) || (name == "content-type" && !body.is_empty()) {
            reply.headers.push((name, header.value));
        }
    }
    reply.raw_body(body)
}

/// The request headers' entry count and size once `changes` are made to `request` (the
/// headers as they arrived, the client's copies of `strip` gone), as Envoy counts them
/// against its limits.
pub fn size_after<'a>(
    request: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    strip: &[String],
    changes: &Changes,
) -> (usize, usize) {
    let mut lines: Vec<(&[u8], usize)> = request
        .filter(|(name, _)| !strip.iter().any(|s| s.as_bytes() == *name))
        .map(|(name, value)| (name, value.len()))
        .collect();
    for change in &changes.upstream {
        let name = change.name.as_bytes();
        let exists = lines.iter().any(|(n, _)| *n == name);
        let len = change.value.len();
        match change.op {
            HeaderOp::Set => {
                lines.retain(|(n, _)| *n != name);
                lines.push((name, len));
            }
            HeaderOp::AppendIfExists if exists => {
                if let Some(line) = lines.iter_mut().find(|(n, _)| *n == name) {
                    line.1 += 1 + len;
                }
            }
            HeaderOp::AppendIfExists => {}
            HeaderOp::Add => lines.push((name, len)),
        }
    }
    lines.retain(|(n, _)| !changes.remove.iter().any(|r| r.as_bytes() == *n));
    (lines.len(), lines.iter().map(|(n, len)| n.len() + len).sum())
}

/// The check's encoded message.
pub fn encode(check: &CheckRequest) -> Vec<u8> {
    check.encode_to_vec()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use std::time::Duration;

    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::service::auth::v3 as auth;
    use gatewasm::GrpcStatus;

    use super::*;
    use crate::config::parse;

    fn settings() -> Settings {
        parse(
            br#"{"grpc_service": {"cluster": "authz"}, "allowed_upstream_headers": ["x-admin-id", "x-admin-email"],
                "allowed_client_headers_on_success": ["x-session"]}"#,
        )
        .unwrap()
    }

    /// The filter's encoding, read back with Envoy's own generated types: every field where
    /// Envoy's `ext_authz` puts it.
    #[test]
    fn the_check_request_is_envoys_attribute_context() {
        let s = settings();
        let headers = [
            (":method", "POST"),
            (":path", "/a?b=1"),
            (":authority", "shop.example.com"),
            (":scheme", "https"),
            ("x-request-id", "r1"),
            ("x-tenant", "a"),
            ("x-tenant", "b"),
            ("x-admin-id", "forged"),
            ("x-envoy-auth-partial-body", "forged"),
        ];
        let connection = Connection {
            source: Some("[::1]:40000".into()),
            destination: Some("10.0.0.1:10000".into()),
            protocol: Some("HTTP/2".into()),
            now: Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5)),
        };
        let mut check = check_request(&s, headers.iter().copied(), connection);
        attach_body(&mut check, b"body".to_vec(), true, false);
        let decoded = auth::CheckRequest::decode(encode(&check).as_slice()).unwrap();
        let attributes = decoded.attributes.unwrap();
        let address =
            |peer: Option<auth::attribute_context::Peer>| match peer.unwrap().address.unwrap().address {
                Some(core::address::Address::SocketAddress(a)) => (a.address, a.port_specifier),
                other => panic!("{other:?}"),
            };
        use core::socket_address::PortSpecifier::PortValue;
        assert_eq!(address(attributes.source), ("::1".to_string(), Some(PortValue(40000))));
        assert_eq!(address(attributes.destination), ("10.0.0.1".to_string(), Some(PortValue(10000))));
        let request = attributes.request.unwrap();
        let time = request.time.unwrap();
        assert_eq!((time.seconds, time.nanos), (1_700_000_000, 5));
        let http = request.http.unwrap();
        assert_eq!(
            (&*http.id, &*http.method, &*http.path, &*http.host, &*http.scheme, &*http.protocol),
            ("r1", "POST", "/a?b=1", "shop.example.com", "https", "HTTP/2")
        );
        assert_eq!(http.body, "body");
        assert!(http.raw_body.is_empty());
        let mut names: Vec<&str> = http.headers.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                ":authority",
                ":method",
                ":path",
                ":scheme",
                "x-envoy-auth-partial-body",
                "x-request-id",
                "x-tenant"
            ],
            "the client's copies of identity headers and of the partial-body mark are gone"
        );
        assert_eq!(http.headers["x-tenant"], "a,b");
        assert_eq!(http.headers["x-envoy-auth-partial-body"], "true");

        let mut packed = check_request(&s, headers.iter().copied(), Connection::default());
        attach_body(&mut packed, b"\xffraw".to_vec(), false, true);
        let http = auth::CheckRequest::decode(encode(&packed).as_slice())
            .unwrap()
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .unwrap();
        assert_eq!(http.raw_body, b"\xffraw");
        assert_eq!(http.headers["x-envoy-auth-partial-body"], "false");
    }

    /// Only the listed headers with `default_request_headers: false` (pseudo-headers always).
    #[test]
    fn a_header_list_limits_the_map() {
        let s = parse(
            br#"{"grpc_service": {"cluster": "authz"}, "default_request_headers": false,
                "allowed_request_headers": ["authorization"]}"#,
        )
        .unwrap();
        let headers = [(":path", "/"), ("authorization", "t"), ("cookie", "c")];
        let check = check_request(&s, headers.iter().copied(), Connection::default());
        let http = check.attributes.unwrap().request.unwrap().http.unwrap();
        assert_eq!(http.headers.keys().collect::<Vec<_>>(), [":path", "authorization"]);
    }

    #[allow(deprecated)] // `append` is what Envoy 1.40 reads.
    fn option(key: &str, value: &str, append: Option<bool>) -> core::HeaderValueOption {
        core::HeaderValueOption {
            header: Some(core::HeaderValue { key: key.into(), value: value.into(), ..Default::default() }),
            append: append.map(|value| envoy_types::pb::google::protobuf::BoolValue { value }),
            ..Default::default()
        }
    }

    fn answer(response: &auth::CheckResponse) -> GrpcResult {
        Ok(response.encode_to_vec())
    }

    fn status(code: i32) -> Option<envoy_types::pb::google::rpc::Status> {
        Some(envoy_types::pb::google::rpc::Status { code, ..Default::default() })
    }

    /// An OK answer's changes, from a `CheckResponse` Envoy's types encode.
    #[test]
    fn an_ok_answer_changes_only_what_is_allowed() {
        let s = settings();
        let ok = auth::OkHttpResponse {
            headers: vec![
                option("X-Admin-Id", "1", None),
                option("x-admin-email", "a@b", Some(false)),
                option("x-admin-email", "c@d", Some(true)),
                option("x-other", "o", None),
            ],
            headers_to_remove: vec!["x-debug".into(), ":path".into(), "Host".into()],
            response_headers_to_add: vec![
                option("x-session", "s1", None),
                option("x-session", "s2", Some(false)),
                option("set-cookie", "no", None),
            ],
            query_parameters_to_remove: vec!["q".into()],
            ..Default::default()
        };
        let response = auth::CheckResponse {
            status: status(0),
            http_response: Some(auth::check_response::HttpResponse::OkResponse(ok)),
            ..Default::default()
        };
        let GrpcDecision::Allow(changes) = decide(&s, &answer(&response)) else { panic!("not allowed") };
        let change =
            |name: &str, value: &str, op| HeaderChange { name: name.into(), value: value.into(), op };
        assert_eq!(
            changes.upstream,
            [
                change("x-admin-id", "1", HeaderOp::Set),
                change("x-admin-email", "a@b", HeaderOp::Set),
                change("x-admin-email", "c@d", HeaderOp::AppendIfExists),
            ]
        );
        assert_eq!(changes.remove, ["x-debug"]);
        assert_eq!(
            changes.client,
            [change("x-session", "s1", HeaderOp::Add), change("x-session", "s2", HeaderOp::Set)]
        );
        // No status at all is OK too.
        let bare = auth::CheckResponse::default();
        assert_eq!(decide(&s, &answer(&bare)), GrpcDecision::Allow(Changes::default()));
    }

    #[test]
    fn a_denial_carries_its_status_allowed_headers_and_body() {
        let s = parse(br#"{"grpc_service": {"cluster": "authz"}, "max_denied_body_bytes": 4}"#).unwrap();
        let denied = auth::DeniedHttpResponse {
            status: Some(envoy_types::pb::envoy::r#type::v3::HttpStatus { code: 401 }),
            headers: vec![
                option("WWW-Authenticate", "Bearer", None),
                option("content-type", "text/plain", None),
                option("x-internal", "secret", None),
            ],
            body: "no token".into(),
        };
        let response = auth::CheckResponse {
            status: status(7),
            http_response: Some(auth::check_response::HttpResponse::DeniedResponse(denied)),
            ..Default::default()
        };
        let GrpcDecision::Deny(reply) = decide(&s, &answer(&response)) else { panic!("not denied") };
        assert_eq!((reply.status, reply.code), (401, "denied"));
        assert_eq!(reply.raw_body.as_deref(), Some(&b"no t"[..]), "cut at max_denied_body_bytes");
        assert_eq!(
            reply.headers,
            [("www-authenticate".into(), "Bearer".into()), ("content-type".into(), "text/plain".into())]
        );
        // A denial without a DeniedHttpResponse: 403, nothing else.
        let bare = auth::CheckResponse { status: status(16), ..Default::default() };
        let GrpcDecision::Deny(reply) = decide(&s, &answer(&bare)) else { panic!("not denied") };
        assert_eq!((reply.status, reply.raw_body.as_deref()), (403, Some(&b""[..])));
    }

    #[test]
    fn failures_and_unreadable_answers_are_errors() {
        let s = settings();
        assert_eq!(decide(&s, &Err(GrpcError::Timeout)), GrpcDecision::Error { timeout: true });
        for e in [
            GrpcError::UnknownCluster,
            GrpcError::Unavailable("down".into()),
            GrpcError::Status(GrpcStatus { code: 13, message: "boom".into() }),
            GrpcError::Malformed,
            GrpcError::TooLarge { size: 1 << 30 },
        ] {
            assert_eq!(decide(&s, &Err(e.clone())), GrpcDecision::Error { timeout: false }, "{e:?}");
        }
        assert_eq!(decide(&s, &Ok(vec![0xff, 0xff])), GrpcDecision::Error { timeout: false });
        let error = CheckResponse {
            status: Some(RpcStatus { code: 13, message: String::new() }),
            error_response: Some(DeniedHttpResponse::default()),
            ..Default::default()
        };
        assert_eq!(decide(&s, &Ok(error.encode_to_vec())), GrpcDecision::Error { timeout: false });
    }

    /// The request as Envoy counts it after the changes: set replaces, append grows a line (or
    /// does nothing), add adds, removed names are gone.
    #[test]
    fn size_after_applies_each_operation() {
        let request: &[(&[u8], &[u8])] = &[(b":path", b"/"), (b"x-admin-id", b"999"), (b"x-debug", b"1")];
        let change =
            |name: &str, value: &str, op| HeaderChange { name: name.into(), value: value.into(), op };
        let changes = Changes {
            upstream: vec![
                change("x-a", "1", HeaderOp::Set),
                change("x-a", "22", HeaderOp::AppendIfExists),
                change("x-b", "1", HeaderOp::AppendIfExists),
                change("x-c", "1", HeaderOp::Add),
                change("x-c", "2", HeaderOp::Add),
            ],
            remove: vec!["x-debug".into()],
            client: Vec::new(),
        };
        let strip = vec!["x-admin-id".to_string()];
        assert_eq!(size_after(request.iter().copied(), &strip, &changes), (4, 6 + (3 + 4) + (3 + 1) * 2));
    }
}
