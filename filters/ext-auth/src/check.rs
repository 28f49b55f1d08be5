//! The check itself, as pure functions: the request sent to the auth service, and what its
//! answer means for the client request.

use std::borrow::Cow;

use gatewasm::{Callout, CalloutError, CalloutResponse, CalloutResult, LocalReply};

use crate::config::{is_reserved, Settings, HEADERS_TO_REMOVE, PARTIAL_BODY};

/// The parts of the client request the check request is built from.
pub struct ClientRequest<'a, I> {
    /// `:method`.
    pub method: &'a str,
    /// `:path`, query included.
    pub path: &'a str,
    /// `:authority`.
    pub authority: &'a str,
    /// Every request header, in order, lower-case names (pseudo-headers are skipped).
    pub headers: I,
}

/// The check request for a client request: its method, its path behind `path_prefix`, the
/// allowed headers it carries, the configured extra headers, and no body (`content-length: 0`).
/// It borrows from the settings and the client's headers: only the joined Cookie and the
/// prefixed path are new text.
pub fn request<'a, I>(settings: &'a Settings, client: ClientRequest<'a, I>) -> Callout<'a>
where
    I: Iterator<Item = (&'a str, &'a str)>,
{
    let mut headers: Vec<(Cow<'a, str>, Cow<'a, str>)> = Vec::with_capacity(8);
    let mut cookie: Option<String> = None;
    for (name, value) in client.headers {
        if !forwarded(settings, name) {
            continue;
        }
        if name == "cookie" {
            // Several Cookie headers (HTTP/2 sends one per cookie) become one, as RFC 6265 wants
            // for HTTP/1.1, which is how the auth service is called.
            match &mut cookie {
                Some(c) => {
                    c.push_str("; ");
                    c.push_str(value);
                }
                None => cookie = Some(value.to_string()),
            }
            continue;
        }
        headers.push((Cow::Borrowed(name), Cow::Borrowed(value)));
    }
    if let Some(c) = cookie {
        headers.push((Cow::Borrowed("cookie"), Cow::Owned(c)));
    }
    headers.extend(
        settings.headers_to_add.iter().map(|(n, v)| (Cow::Borrowed(n.as_str()), Cow::Borrowed(v.as_str()))),
    );
    headers.push((Cow::Borrowed("content-length"), Cow::Borrowed("0")));
    Callout {
        cluster: Cow::Borrowed(&settings.cluster),
        method: Cow::Borrowed(client.method),
        path: prefixed(&settings.path_prefix, client.path),
        // Envoy refuses a callout without an authority; a request without one (HTTP/1.0) gets
        // the cluster's name.
        authority: Cow::Borrowed(match (&settings.authority, client.authority) {
            (Some(fixed), _) => fixed.as_str(),
            (None, "") => settings.cluster.as_str(),
            (None, a) => a,
        }),
        headers,
        body: Vec::new(),
        timeout: settings.timeout,
        // The answer's body stays in Envoy: only a denial passes it on, and the filter reads it
        // then (`max_denied_body_bytes` of it), so an allowing answer's body costs nothing.
        max_response_bytes: 0,
        // The clock is read around the callout only for the latency histogram.
        timed: settings.duration_histogram,
    }
}

/// Whether the client's header `name` goes to the auth service.
fn forwarded(settings: &Settings, name: &str) -> bool {
    !(name.starts_with(':')
        || name == PARTIAL_BODY
        || is_reserved(name)
        || !settings.request_headers.contains(name)
        || settings.headers_to_add.iter().any(|(n, _)| n == name))
}

/// Whether the check would carry a client value that is not UTF-8 (a header sent to the auth
/// service, the path, or the authority when it is the client's). A callout carries text, so
/// such a value could only reach the auth service altered (U+FFFD), and two credentials could
/// then read alike: the request is refused instead. Only worth asking when the snapshot
/// [`has_binary`](gatewasm::HeaderSnapshot::has_binary).
pub fn carries_non_text<'a>(
    settings: &Settings,
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> bool {
    headers.filter(|(_, value)| std::str::from_utf8(value).is_err()).any(|(name, _)| {
        match std::str::from_utf8(name) {
            Ok(":path") => true,
            Ok(":authority") => settings.authority.is_none(),
            Ok(name) if settings.grpc.is_some() => crate::grpc::forwarded(settings, name),
            Ok(name) => forwarded(settings, name),
            // Envoy's codec refuses such names; the check would never carry one.
            Err(_) => false,
        }
    })
}

/// The reply when [`carries_non_text`].
pub fn not_text_reply() -> LocalReply {
    LocalReply::new(400, "header_not_text", "a header for the auth service is not UTF-8 text")
}

/// `prefix` + `path`, built without the formatting machinery (about 900 fewer instructions per
/// check, counted under callgrind in the emulator); no copy without a prefix.
fn prefixed<'a>(prefix: &str, path: &'a str) -> Cow<'a, str> {
    if prefix.is_empty() {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(prefix.len() + path.len());
    out.push_str(prefix);
    out.push_str(path);
    Cow::Owned(out)
}

/// Puts the buffered request body into a check request; `partial` says whether it was cut
/// (sent as `x-envoy-auth-partial-body`). Envoy sets `content-length` from the body.
pub fn attach_body(call: &mut Callout<'_>, body: Vec<u8>, partial: bool) {
    call.headers.retain(|(n, _)| n != "content-length");
    if body.is_empty() {
        call.headers.push((Cow::Borrowed("content-length"), Cow::Borrowed("0")));
    }
    call.headers.push((Cow::Borrowed(PARTIAL_BODY), Cow::Borrowed(if partial { "true" } else { "false" })));
    call.body = body;
}

/// What the auth service's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'r> {
    /// Let the request through, with these changes.
    Allow(Allow<'r>),
    /// Answer the client with the auth service's answer.
    Deny(LocalReply),
    /// The auth service failed: timed out (`timeout`), unreachable, answered 5xx, or denied with
    /// a header for the client that cannot be passed on unaltered.
    Error {
        /// True for a timeout.
        timeout: bool,
    },
}

/// Changes an allowing answer makes, borrowing the answer's headers (nothing is copied to be
/// written straight back to Envoy). Values are the answer's bytes, unchanged: an identity that
/// is not UTF-8 reaches the upstream as the auth service wrote it, as with Envoy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow<'r> {
    /// Headers set on the upstream request, one value per name: the answer's last, as Envoy's
    /// `ext_authz` sets (replaces) each in turn, in the order of those last values.
    pub upstream: Vec<(&'r str, &'r [u8])>,
    /// Request headers the answer asked to remove (`x-envoy-auth-headers-to-remove`).
    pub remove: Vec<String>,
    /// Headers added to the client's response, every value in answer order.
    pub client: Vec<(&'r str, &'r [u8])>,
}

/// Judges the auth service's answer.
pub fn decide<'r>(settings: &Settings, result: &'r CalloutResult) -> Decision<'r> {
    let resp = match result {
        Ok(resp) => resp,
        Err(CalloutError::Timeout) => return Decision::Error { timeout: true },
        Err(CalloutError::Failed | CalloutError::Dispatch(_)) => return Decision::Error { timeout: false },
    };
    if !(200..500).contains(&resp.status) {
        // 5xx (Envoy's own 503 for a refused connection included), no status, or 1xx.
        return Decision::Error { timeout: false };
    }
    if settings.allowed_statuses.contains(&resp.status) {
        Decision::Allow(allow(settings, resp))
    } else {
        match deny(settings, resp) {
            Some(reply) => Decision::Deny(reply),
            None => Decision::Error { timeout: false },
        }
    }
}

/// Whether an answer with `status` is a denial: the only answer whose body reaches the client.
pub fn is_denial(settings: &Settings, status: u16) -> bool {
    (200..500).contains(&status) && !settings.allowed_statuses.contains(&status)
}

fn allow<'r>(settings: &Settings, resp: &'r CalloutResponse) -> Allow<'r> {
    let mut out = Allow::default();
    for (name, value) in resp.headers.iter_bytes() {
        // Envoy's header names are tokens (ASCII); a name that is not text matches nothing.
        let Ok(name) = std::str::from_utf8(name) else { continue };
        if name.starts_with(':') {
            continue;
        }
        if settings.upstream_headers.iter().any(|n| n == name) {
            // Envoy's `setCopy` removes the earlier value and appends this one.
            out.upstream.retain(|(n, _)| *n != name);
            out.upstream.push((name, value));
        }
        if settings.client_headers_on_success.contains(name) {
            out.client.push((name, value));
        }
        if name == HEADERS_TO_REMOVE {
            // Names to remove are tokens: bytes that are not UTF-8 cannot name a header.
            out.remove.extend(
                String::from_utf8_lossy(value)
                    .split(',')
                    .map(|n| n.trim().to_ascii_lowercase())
                    .filter(|n| !n.is_empty() && !n.starts_with(':') && n != "host"),
            );
        }
    }
    out
}

/// The client's answer for a denial, or `None` when a header it must carry is not UTF-8: a local
/// reply carries text only, and a value passed on altered (U+FFFD) is never sent, so such an
/// answer is an auth service failure.
fn deny(settings: &Settings, resp: &CalloutResponse) -> Option<LocalReply> {
    let mut reply =
        LocalReply::new(resp.status, "denied", "denied by the auth service").raw_body(resp.body.clone());
    for (name, value) in resp.headers.iter_bytes() {
        let Ok(name) = std::str::from_utf8(name) else { continue };
        if name.starts_with(':') {
            continue;
        }
        let pass =
            settings.client_headers.contains(name) || (name == "content-type" && !resp.body.is_empty());
        if pass {
            reply.headers.push((name.to_string(), std::str::from_utf8(value).ok()?.to_string()));
        }
    }
    Some(reply)
}

/// The request headers' entry count and size (names and values, in bytes, as Envoy counts them
/// against its limits) once an allowing answer's changes are made to `request` (the headers as
/// they arrived): the client's copies of `strip` are gone (removed on arrival), each answer
/// header replaces the request's of that name, and the names the answer listed for removal are
/// gone. Names are compared as Envoy stores them, lower-case.
pub fn size_after<'a>(
    request: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    strip: &[String],
    allow: &Allow<'_>,
) -> (usize, usize) {
    let (mut count, mut bytes) = (0usize, 0usize);
    for (name, value) in request {
        let gone = strip.iter().any(|n| n.as_bytes() == name)
            || allow.upstream.iter().any(|(n, _)| n.as_bytes() == name)
            || allow.remove.iter().any(|n| n.as_bytes() == name);
        if !gone {
            count += 1;
            bytes += name.len() + value.len();
        }
    }
    for (name, value) in &allow.upstream {
        if !allow.remove.iter().any(|n| n == name) {
            count += 1;
            bytes += name.len() + value.len();
        }
    }
    (count, bytes)
}

/// The reply when an allowing answer's headers would take the request over the header limits
/// (Envoy's `ext_authz` answers 500 there too).
pub fn too_many_headers_reply(settings: &Settings) -> LocalReply {
    LocalReply::new(
        500,
        "request_headers_too_large",
        format!(
            "the request headers with the auth service's are over {} headers or {} KiB",
            settings.max_request_headers_count, settings.max_request_headers_kb
        ),
    )
}

/// The reply when the auth service failed and the filter fails closed.
pub fn error_reply(settings: &Settings, timeout: bool) -> LocalReply {
    if timeout {
        LocalReply::new(settings.status_on_error, "auth_timeout", "the auth service did not answer in time")
    } else {
        LocalReply::new(settings.status_on_error, "auth_error", "the auth service failed")
    }
}

/// The reply when the body is over `with_request_body.max_bytes` and partial bodies are not
/// allowed.
pub fn too_large_reply(max_bytes: usize) -> LocalReply {
    LocalReply::new(413, "body_too_large", format!("the request body is over {max_bytes} bytes"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::config::parse;
    use gatewasm::proxy_wasm::types::Status;
    use gatewasm::HeaderSnapshot;

    fn settings(json: &str) -> Settings {
        parse(json.as_bytes()).unwrap()
    }

    fn client<'a>(
        headers: &'a [(&'a str, &'a str)],
    ) -> ClientRequest<'a, impl Iterator<Item = (&'a str, &'a str)> + 'a> {
        ClientRequest {
            method: "POST",
            path: "/api/orders?x=1",
            authority: "shop.example.com",
            headers: headers.iter().copied(),
        }
    }

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> CalloutResult {
        let status_text = status.to_string();
        let mut all = vec![(":status", status_text.as_str())];
        all.extend_from_slice(headers);
        Ok(CalloutResponse {
            status,
            headers: HeaderSnapshot::from_strs(&all),
            body: body.as_bytes().to_vec(),
            truncated: false,
        })
    }

    const CLIENT: &[(&str, &str)] = &[
        (":method", "POST"),
        (":path", "/api/orders?x=1"),
        ("authorization", "Basic YWRtaW46MTIz"),
        ("cookie", "a=1"),
        ("cookie", "id_token=t"),
        ("user-agent", "curl"),
        ("x-forwarded-proto", "https"),
        ("content-type", "application/json"),
        ("content-length", "17"),
        ("x-qotm-session", "s1"),
        ("x-secret", "nope"),
        ("x-envoy-auth-partial-body", "true"),
        ("x-gateway", "client"),
    ];

    #[test]
    fn check_request_carries_method_prefixed_path_and_allowed_headers_only() {
        let s = settings(
            r#"{"cluster": "auth", "path_prefix": "/extauth", "timeout_ms": 300,
                "allowed_request_headers": ["x-qotm-session", "x-envoy-auth-*"],
                "headers_to_add": [{"name": "X-Gateway", "value": "edge"}]}"#,
        );
        let call = request(&s, client(CLIENT));
        assert_eq!(call.cluster, "auth");
        assert_eq!(call.method, "POST");
        assert_eq!(call.path, "/extauth/api/orders?x=1");
        assert_eq!(call.authority, "shop.example.com", "the client's authority, as Envoy sends it");
        assert_eq!(call.timeout, std::time::Duration::from_millis(300));
        assert_eq!(call.max_response_bytes, 0, "the body is read only for a denial");
        assert!(call.body.is_empty());
        let h: Vec<(&str, &str)> = call.headers.iter().map(|(n, v)| (n.as_ref(), v.as_ref())).collect();
        assert_eq!(
            h,
            [
                ("authorization", "Basic YWRtaW46MTIz"),
                ("user-agent", "curl"),
                ("x-forwarded-proto", "https"),
                ("x-qotm-session", "s1"),
                ("cookie", "a=1; id_token=t"),
                ("x-gateway", "edge"),
                ("content-length", "0"),
            ]
        );
    }

    #[test]
    fn fixed_authority_and_body() {
        let s = settings(r#"{"cluster": "auth", "authority": "auth.internal:8080"}"#);
        let mut call = request(&s, client(CLIENT));
        assert_eq!(call.authority, "auth.internal:8080");
        attach_body(&mut call, b"{\"user\":\"admin\"}".to_vec(), false);
        assert_eq!(call.body, b"{\"user\":\"admin\"}");
        assert!(!call.headers.iter().any(|(n, _)| n == "content-length"), "Envoy sets it from the body");
        assert!(call.headers.contains(&(PARTIAL_BODY.into(), "false".into())));
        let mut call = request(&s, client(CLIENT));
        attach_body(&mut call, Vec::new(), true);
        assert!(call.headers.contains(&("content-length".into(), "0".into())));
        assert!(call.headers.contains(&(PARTIAL_BODY.into(), "true".into())));
        let s = settings(r#"{"cluster": "auth"}"#);
        let no_host = ClientRequest { method: "GET", path: "/", authority: "", headers: std::iter::empty() };
        assert_eq!(request(&s, no_host).authority, "auth");
    }

    #[test]
    fn allowed_statuses_allow_and_copy_configured_headers() {
        let s = settings(
            r#"{"cluster": "auth", "allowed_statuses": [200, 202],
                "allowed_upstream_headers": ["x-admin-id", "x-admin-email", "x-groups"],
                "allowed_client_headers_on_success": ["set-cookie"]}"#,
        );
        let ans = answer(
            202,
            &[
                ("x-admin-id", "1"),
                ("x-admin-email", "admin@qq.com"),
                ("x-groups", "a"),
                ("x-groups", "b"),
                ("x-other", "no"),
                ("set-cookie", "sid=1"),
                ("x-envoy-auth-headers-to-remove", "authorization, :path,host,Cookie"),
            ],
            "ignored",
        );
        let Decision::Allow(a) = decide(&s, &ans) else { panic!("not allowed") };
        assert_eq!(
            a.upstream,
            [("x-admin-id", &b"1"[..]), ("x-admin-email", &b"admin@qq.com"[..]), ("x-groups", &b"b"[..])],
            "a repeated header goes up once, with its last value, as Envoy sets it"
        );
        assert_eq!(a.remove, ["authorization", "cookie"], "pseudo-headers and host are never removed");
        assert_eq!(a.client, [("set-cookie", &b"sid=1"[..])]);
        // 201 is not in the set: the answer goes to the client.
        assert!(matches!(decide(&s, &answer(201, &[], "")), Decision::Deny(_)));
    }

    #[test]
    fn any_other_answer_reaches_the_client_as_given() {
        let s = settings(r#"{"cluster": "auth", "allowed_client_headers": ["x-login-*"]}"#);
        let body = r#"{"admin":{"id":1},"id_token":"tok"}"#;
        let ans = answer(
            201,
            &[
                ("content-type", "application/json"),
                ("set-cookie", "id_token=tok; HttpOnly"),
                ("set-cookie", "other=1"),
                ("x-login-id", "7"),
                ("authorization", "Bearer leaked"),
                ("x-powered-by", "Express"),
            ],
            body,
        );
        let Decision::Deny(reply) = decide(&s, &ans) else { panic!("not denied") };
        assert_eq!(reply.status, 201);
        assert_eq!(reply.raw_body.as_deref(), Some(body.as_bytes()));
        assert_eq!(
            reply.headers,
            [
                ("content-type".to_string(), "application/json".to_string()),
                ("set-cookie".to_string(), "id_token=tok; HttpOnly".to_string()),
                ("set-cookie".to_string(), "other=1".to_string()),
                ("x-login-id".to_string(), "7".to_string()),
            ]
        );
        // No body: no content type.
        let Decision::Deny(reply) =
            decide(&s, &answer(302, &[("location", "/login"), ("content-type", "text/html")], ""))
        else {
            panic!("not denied")
        };
        assert_eq!(reply.headers, [("location".to_string(), "/login".to_string())]);
        assert_eq!(reply.raw_body.as_deref(), Some(&b""[..]));
    }

    /// Random client requests and auth answers: nothing panics, and what crosses over is only
    /// what the configuration lets through.
    #[test]
    fn random_requests_and_answers_keep_the_invariants() {
        let s = settings(
            r#"{"cluster": "auth", "allowed_request_headers": ["x-a*"], "allowed_statuses": [200, 202],
                "allowed_upstream_headers": ["x-admin-id"], "allowed_client_headers_on_success": ["set-cookie"]}"#,
        );
        let names = [
            ":path",
            ":status",
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "cookie",
            "authorization",
            "x-admin-id",
            "x-a",
            "x-abc",
            "set-cookie",
            "location",
            "content-type",
            "x-envoy-auth-partial-body",
            "x-envoy-auth-headers-to-remove",
            "X-Admin-Id",
            "",
        ];
        let values = ["", "1", " , ,", ":path, host", "a\u{0}b", "é", ",,,x-admin-id,,", "Bearer t"];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            usize::try_from(seed % n as u64).unwrap()
        };
        for _ in 0..5000 {
            let pairs: Vec<(&str, &str)> =
                (0..next(8)).map(|_| (names[next(names.len())], values[next(values.len())])).collect();
            let call = request(
                &s,
                ClientRequest { method: "GET", path: "/p", authority: "h", headers: pairs.iter().copied() },
            );
            for (n, _) in &call.headers {
                assert!(
                    n == "content-length" || n == "cookie" || n == "authorization" || n.starts_with("x-a"),
                    "{n} sent"
                );
                assert!(n != "x-envoy-auth-partial-body" && !n.starts_with(':'));
            }
            assert!(call.headers.iter().filter(|(n, _)| n == "cookie").count() <= 1);
            let status = [0u16, 100, 200, 201, 202, 302, 401, 500, 503, 599, 700][next(11)];
            let headers: Vec<(&str, &str)> =
                pairs.iter().copied().filter(|(n, _)| !n.starts_with(':')).collect();
            let ans = answer(status, &headers, values[next(values.len())]);
            let decision = decide(&s, &ans);
            assert_eq!(is_denial(&s, status), matches!(decision, Decision::Deny(_)), "{status}");
            match decision {
                Decision::Allow(a) => {
                    assert!([200, 202].contains(&status));
                    assert!(a.upstream.iter().all(|(n, _)| *n == "x-admin-id"));
                    assert!(a.client.iter().all(|(n, _)| *n == "set-cookie"));
                    assert!(a.remove.iter().all(|n| !n.is_empty() && !n.starts_with(':') && n != "host"));
                }
                Decision::Deny(r) => {
                    assert!((200..500).contains(&r.status));
                    assert!(r.headers.iter().all(|(n, _)| n != "authorization" && n != "content-length"));
                }
                Decision::Error { timeout } => assert!(!timeout && !(200..500).contains(&status)),
            }
        }
    }

    /// An answer as Envoy serializes it, with values that are bytes.
    fn answer_bytes(status: u16, headers: &[(&str, &[u8])]) -> CalloutResult {
        let status_text = status.to_string();
        let mut all: Vec<(Vec<u8>, Vec<u8>)> = vec![(b":status".to_vec(), status_text.into_bytes())];
        all.extend(headers.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec())));
        Ok(CalloutResponse {
            status,
            headers: HeaderSnapshot::from_pairs(all),
            body: Vec::new(),
            truncated: false,
        })
    }

    /// Identities that differ only in bytes that are not UTF-8 stay different: they go upstream
    /// as the auth service wrote them, never as U+FFFD.
    #[test]
    fn identity_bytes_go_upstream_unchanged() {
        let s = settings(
            r#"{"cluster": "auth", "allowed_upstream_headers": ["x-admin-email"],
                "allowed_client_headers_on_success": ["x-session"]}"#,
        );
        let one = answer_bytes(
            200,
            &[("x-admin-email", b"adm\xffin@qq.com"), ("x-session", b"s\xfe"), ("x-other", b"\xff")],
        );
        let two = answer_bytes(200, &[("x-admin-email", "adm\u{fffd}in@qq.com".as_bytes())]);
        let Decision::Allow(a) = decide(&s, &one) else { panic!("not allowed") };
        assert_eq!(a.upstream, [("x-admin-email", &b"adm\xffin@qq.com"[..])]);
        assert_eq!(a.client, [("x-session", &b"s\xfe"[..])]);
        let Decision::Allow(b) = decide(&s, &two) else { panic!("not allowed") };
        assert_ne!(a.upstream, b.upstream, "two identities must not arrive as one value");
        assert_eq!(b.upstream, [("x-admin-email", "adm\u{fffd}in@qq.com".as_bytes())]);
    }

    /// Envoy sets each allowed header of the answer in turn, so the last value is the one the
    /// upstream gets; an upstream reading the first line must not see another identity.
    #[test]
    fn a_repeated_identity_header_goes_up_once_with_its_last_value() {
        let s =
            settings(r#"{"cluster": "auth", "allowed_upstream_headers": ["x-admin-id", "x-admin-email"]}"#);
        let ans = answer_bytes(
            200,
            &[
                ("x-admin-id", b"1"),
                ("x-admin-email", b"a@qq.com"),
                ("x-admin-id", b"2"),
                ("x-admin-id", b"\xff3"),
            ],
        );
        let Decision::Allow(a) = decide(&s, &ans) else { panic!("not allowed") };
        assert_eq!(a.upstream, [("x-admin-email", &b"a@qq.com"[..]), ("x-admin-id", &b"\xff3"[..])]);
    }

    /// A denial passes its headers to the client as text only: one that is not UTF-8 would be
    /// altered, so the answer is an auth service failure instead (refused, never altered).
    #[test]
    fn a_denial_with_a_header_that_cannot_pass_unaltered_is_an_error() {
        let s = settings(r#"{"cluster": "auth"}"#);
        let cookie = answer_bytes(401, &[("set-cookie", b"sid=\xff"), ("www-authenticate", b"Bearer")]);
        assert_eq!(decide(&s, &cookie), Decision::Error { timeout: false });
        // Headers the client never gets do not matter.
        let other = answer_bytes(401, &[("x-debug", b"\xff"), ("www-authenticate", b"Bearer")]);
        let Decision::Deny(reply) = decide(&s, &other) else { panic!("not denied") };
        assert_eq!(reply.headers, [("www-authenticate".to_string(), "Bearer".to_string())]);
    }

    /// The request as Envoy's map counts it after an allowing answer: the client's copies of
    /// stripped headers gone, each identity replacing its name once, removed names gone.
    #[test]
    fn size_after_counts_the_request_as_it_goes_upstream() {
        let s =
            settings(r#"{"cluster": "auth", "allowed_upstream_headers": ["x-admin-id", "x-admin-email"]}"#);
        let request: &[(&[u8], &[u8])] = &[
            (b":method", b"GET"),
            (b":path", b"/a"),
            (b"x-admin-id", b"999"),
            (b"x-envoy-auth-failure-mode-allowed", b"true"),
            (b"authorization", b"Bearer t"),
            (b"x-other", b"12345"),
        ];
        let none = Allow::default();
        // Stripped on arrival: the forged identity and the failure marker.
        assert_eq!(size_after(request.iter().copied(), &s.strip, &none), (4, 7 + 3 + 5 + 2 + 13 + 8 + 7 + 5));
        let allow = Allow {
            upstream: vec![("x-admin-id", b"1"), ("x-admin-email", b"a@b")],
            remove: vec!["authorization".into(), "absent".into()],
            client: Vec::new(),
        };
        assert_eq!(
            size_after(request.iter().copied(), &s.strip, &allow),
            (5, 7 + 3 + 5 + 2 + 7 + 5 + 10 + 1 + 13 + 3)
        );
        // An identity the answer also lists for removal is not counted twice, nor at all.
        let removed = Allow {
            upstream: vec![("x-admin-id", b"1")],
            remove: vec!["x-admin-id".into()],
            client: Vec::new(),
        };
        assert_eq!(size_after(request.iter().copied(), &s.strip, &removed).0, 4);
        let r = too_many_headers_reply(&s);
        assert_eq!((r.status, r.code), (500, "request_headers_too_large"));
        assert_eq!((s.max_request_headers_count, s.max_request_headers_kb), (100, 60), "Envoy's defaults");
    }

    /// A client value the check would carry, if it is not UTF-8, refuses the request (it could
    /// reach the auth service only altered); values that are not sent do not matter.
    #[test]
    fn client_values_that_are_not_text_in_the_check_are_refused() {
        let s = settings(r#"{"cluster": "auth", "allowed_request_headers": ["x-tenant"]}"#);
        let with = |name: &'static str, value: &'static [u8]| -> Vec<(&'static [u8], &'static [u8])> {
            vec![(b":method", b"GET"), (b":path", b"/a"), (name.as_bytes(), value)]
        };
        for sent in ["cookie", "authorization", "x-tenant", ":path", ":authority"] {
            assert!(carries_non_text(&s, with(sent, b"sid=\xff").into_iter()), "{sent}");
            assert!(!carries_non_text(&s, with(sent, "sid=\u{e9}".as_bytes()).into_iter()), "{sent}: text");
        }
        for not_sent in ["x-other", "content-length", "x-envoy-auth-partial-body"] {
            assert!(!carries_non_text(&s, with(not_sent, b"\xff").into_iter()), "{not_sent}");
        }
        let fixed = settings(r#"{"cluster": "auth", "authority": "auth.internal"}"#);
        assert!(!carries_non_text(&fixed, with(":authority", b"h\xff").into_iter()));
        assert_eq!(not_text_reply().status, 400);
    }

    #[test]
    fn failures_are_errors() {
        let s = settings(r#"{"cluster": "auth"}"#);
        assert_eq!(decide(&s, &Err(CalloutError::Timeout)), Decision::Error { timeout: true });
        assert_eq!(decide(&s, &Err(CalloutError::Failed)), Decision::Error { timeout: false });
        assert_eq!(
            decide(&s, &Err(CalloutError::Dispatch(Status::BadArgument))),
            Decision::Error { timeout: false }
        );
        for status in [500, 503, 504, 0, 100] {
            assert_eq!(decide(&s, &answer(status, &[], "x")), Decision::Error { timeout: false }, "{status}");
        }
        let r = error_reply(&s, true);
        assert_eq!((r.status, r.code), (403, "auth_timeout"));
        let s = settings(r#"{"cluster": "auth", "status_on_error": 503}"#);
        assert_eq!(error_reply(&s, false).status, 503);
        assert_eq!(too_large_reply(10).status, 413);
    }
}
