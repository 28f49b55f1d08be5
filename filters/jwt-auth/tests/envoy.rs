//! End to end through a real Envoy (V8): the seed's scenario (login token in a cookie, a bearer
//! header or a query parameter; `x-admin-id` from the token, a client's copy removed), the same
//! answers as Envoy's own `jwt_authn` for the same cases, and a remote JWKS served by a test
//! server: fail closed before the first fetch, key rotation, the server failing and going away;
//! claims and scopes per rule (403 `insufficient_scope`); OpenID Connect discovery from a
//! scripted identity provider serving the document and the JWKS. Every test runs once with the
//! Wasm module and once with the native dynamic module, one set of expectations for both.
//! Build the modules first: cargo build --release --target wasm32-wasip1 -p jwt-auth, and
//! cargo build --release -p jwt-auth

#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::{now, remote_config, seed_config, Signer};
use gatewasm_envoy::{
    for_each_target, Cluster, EchoUpstream, Envoy, EnvoyBuilder, HttpFilter, Reply, Request, Response,
    ScriptedUpstream, Target,
};
use serde_json::{json, Value};

for_each_target!(
    the_seeds_scenario_through_envoy,
    same_answers_as_envoys_jwt_authn,
    refused_configuration_names_the_field,
    remote_jwks_fail_closed_rotation_and_outage,
    remote_keys_and_their_refresh_reach_every_worker,
    signatures_checked_by_the_host_or_the_module_answer_as_jwt_authn,
    a_second_credential_is_refused_as_native_jwt_authn_refuses_it_even_with_forward,
    two_identities_native_sends_both_this_filter_refuses,
    documented_differences_hold_in_envoy,
    claims_and_scopes_are_enforced_per_rule_in_envoy,
    oidc_discovery_through_envoy,
);

fn filter(target: Target, config: &Value) -> HttpFilter {
    target.filter("jwt-auth", "jwt_auth", config).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Envoy's `stats_tags` for these labels of the filter's metrics: the Wasm target's series carry
/// them in their names; the native target's have them as real labels already.
fn stats_tags(labels: &[&str]) -> Value {
    let tags: Vec<Value> =
        labels.iter().map(|l| json!({"tag_name": l, "regex": gatewasm::metrics::tag_regex(l)})).collect();
    json!({"stats_config": {"stats_tags": tags}})
}

/// The value of the Prometheus series `name` whose labels include every one of `labels`
/// (`reason="x"`), in any order.
fn series<'a>(scrape: &'a str, name: &str, labels: &[&str]) -> Option<&'a str> {
    scrape.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?.strip_prefix('{')?;
        labels.iter().all(|l| rest.contains(l)).then_some(value)
    })
}

fn login_token() -> String {
    let iat = now();
    Signer::hmac().token_with_header(
        json!({"typ": "JWT"}),
        &json!({"name": "Admin", "email": "admin@qq.com", "id": 1, "iat": iat, "exp": iat + 86_400}),
    )
}

fn the_seeds_scenario_through_envoy(target: Target) {
    let upstream = EchoUpstream::start().unwrap();
    let envoy =
        EnvoyBuilder::new().filter(filter(target, &seed_config())).upstream(upstream.addr()).start().unwrap();
    let token = login_token();

    let requests = [
        Request::get("/extauth/nodebackend/").header("cookie", &format!("lang=zh; id_token={token}")),
        Request::get("/extauth/nodebackend/").header("authorization", &format!("Bearer {token}")),
        Request::get(&format!("/extauth/nodebackend/?token={token}&page=2")),
    ];
    for req in requests {
        let req = req.header("x-admin-id", "42").header("x-admin-email", "mallory@example.com");
        let response = envoy.send(&req).unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        let echo = response.echo().unwrap();
        assert_eq!(echo.header_all("x-admin-id"), ["1"], "the token's id, never the client's");
        assert_eq!(echo.header_all("x-admin-email"), ["admin@qq.com"]);
        assert_eq!(echo.header("authorization"), None);
        assert!(!echo.path.contains("token="), "{}", echo.path);
        assert!(!echo.header("cookie").unwrap_or_default().contains("id_token"));
    }

    // The login endpoint needs no token; a spoofed x-admin-id still never reaches upstream.
    let echo = envoy
        .send(&Request::post("/extauth/login", "u=a").header("x-admin-id", "1"))
        .unwrap()
        .echo()
        .unwrap();
    assert_eq!(echo.header("x-admin-id"), None);

    // No token: 401, the JSON reply, WWW-Authenticate without error.
    let response = envoy.send(&Request::get("/extauth/nodebackend/").header("x-admin-id", "1")).unwrap();
    assert_eq!(response.status, 401);
    assert_eq!(
        response.header("www-authenticate"),
        Some("Bearer realm=\"http://localhost/extauth/nodebackend/\"")
    );
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(
        response.json().unwrap(),
        json!({"status": 401, "code": "missing_token", "message": "Jwt is missing"})
    );

    // A token signed with another secret.
    let forged = Signer::Hmac(b"another-secret-another-secret-32".to_vec())
        .token("k", &json!({"id": 1, "exp": now() + 60}));
    let response = envoy
        .send(&Request::get("/extauth/nodebackend/").header("cookie", &format!("id_token={forged}")))
        .unwrap();
    assert_eq!(response.status, 401);
    assert_eq!(
        response.header("www-authenticate"),
        Some("Bearer realm=\"http://localhost/extauth/nodebackend/\", error=\"invalid_token\"")
    );
    assert_eq!(response.json().unwrap()["message"], "Jwt verification fails");
}

/// Envoy with native `jwt_authn`: provider `p` and these rules.
fn native_envoy(provider: Value, rules: &Value) -> Envoy {
    EnvoyBuilder::new()
        .raw_filter(json!({
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {"p": provider},
                "rules": rules
            }
        }))
        .start()
        .unwrap()
}

/// The same provider and rules, as Envoy's `jwt_authn` and as this filter.
fn parity_envoys(target: Target) -> (Envoy, Envoy) {
    let jwks = Signer::hmac().jwks("k").to_string();
    let provider = |native: bool| {
        let keys = if native { json!({"inline_string": jwks}) } else { serde_json::from_str(&jwks).unwrap() };
        json!({
            "issuer": "https://issuer.test",
            "audiences": ["api"],
            "local_jwks": keys,
            "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
            "from_params": ["token"],
            "from_cookies": ["id_token"]
        })
    };
    let rules = json!([
        {"match": {"prefix": "/optional"}, "requires": {"allow_missing": {}}},
        {"match": {"prefix": "/either"}, "requires": {"requires_any": {"requirements": [{"provider_name": "p"}, {"allow_missing": {}}]}}},
        {"match": {"prefix": "/public"}},
        {"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}
    ]);
    let native = native_envoy(provider(true), &rules);
    let ours = EnvoyBuilder::new()
        .filter(filter(target, &json!({"providers": {"p": provider(false)}, "rules": rules})))
        .start()
        .unwrap();
    (native, ours)
}

/// Status, WWW-Authenticate with the realm's query removed (Envoy puts the whole URL there,
/// token included; this filter never does), and the message.
fn answer(r: &Response, native: bool) -> (u16, Option<String>, String) {
    let www = r.header("www-authenticate").map(|w| {
        let Some(start) = w.find("realm=\"") else { return w.to_string() };
        let rest = &w[start + 7..];
        let end = rest.find('"').unwrap();
        let realm = rest[..end].split('?').next().unwrap().to_string();
        format!("{}realm=\"{realm}\"{}", &w[..start], &rest[end + 1..])
    });
    let message = if r.status == 200 {
        String::new()
    } else if native {
        r.text()
    } else {
        r.json().unwrap()["message"].as_str().unwrap().to_string()
    };
    (r.status, www, message)
}

fn same_answers_as_envoys_jwt_authn(target: Target) {
    let (native, ours) = parity_envoys(target);
    let s = Signer::hmac();
    let n = now();
    let tok = |c: Value| s.token("k", &c);
    let good = tok(json!({"iss": "https://issuer.test", "aud": "api", "exp": n + 600}));
    let bad_aud = tok(json!({"iss": "https://issuer.test", "aud": "other", "exp": n + 600}));
    let other_iss = tok(json!({"iss": "https://elsewhere", "aud": "api", "exp": n + 600}));
    let expired = tok(json!({"iss": "https://issuer.test", "aud": "api", "exp": n - 600}));
    let not_yet = tok(json!({"iss": "https://issuer.test", "aud": "api", "exp": n + 600, "nbf": n + 600}));
    let forged = Signer::Hmac(vec![3; 32])
        .token("k", &json!({"iss": "https://issuer.test", "aud": "api", "exp": n + 600}));
    let bearer = |t: &str| format!("Bearer {t}");
    // Raw JSON texts, signed: what a JSON library could not produce.
    let raw = |header: &str, payload: &str| {
        let input = format!("{}.{}", common::b64(header), common::b64(payload));
        format!("{input}.{}", common::b64(s.sign_raw(input.as_bytes())))
    };
    let claims = format!(r#""iss":"https://issuer.test","aud":"api","exp":{}"#, n + 600);
    let h = r#"{"alg":"HS256","kid":"k"}"#;
    let dup_payload = raw(h, &format!(r#"{{"sub":"alice","sub":"admin",{claims}}}"#));
    let dup_nested = raw(h, &format!(r#"{{"org":{{"role":"user","role":"admin"}},{claims}}}"#));
    let dup_header = raw(r#"{"alg":"HS256","kid":"k","kid":"k"}"#, &format!("{{{claims}}}"));
    let deep = |levels: usize| {
        raw(h, &format!(r#"{{"d":{}1{},{claims}}}"#, "[".repeat(levels - 1), "]".repeat(levels - 1)))
    };

    let cases: Vec<(&str, Request)> = vec![
        ("missing", Request::get("/a?x=1")),
        ("good bearer", Request::get("/a").header("authorization", &bearer(&good))),
        ("good cookie", Request::get("/a").header("cookie", &format!("id_token={good}"))),
        ("good query", Request::get(&format!("/a?token={good}"))),
        ("audience not allowed", Request::get("/a").header("authorization", &bearer(&bad_aud))),
        ("other issuer", Request::get("/a").header("authorization", &bearer(&other_iss))),
        ("expired", Request::get("/a").header("authorization", &bearer(&expired))),
        ("not yet valid", Request::get("/a").header("authorization", &bearer(&not_yet))),
        ("bad signature", Request::get("/a").header("authorization", &bearer(&forged))),
        ("garbage", Request::get("/a").header("authorization", "Bearer garbage")),
        (
            "good and bad token",
            Request::get(&format!("/a?token={forged}")).header("authorization", &bearer(&good)),
        ),
        (
            "two good tokens",
            Request::get(&format!("/a?token={good}")).header("cookie", &format!("id_token={good}")),
        ),
        ("allow_missing, none", Request::get("/optional")),
        ("allow_missing, good", Request::get("/optional").header("authorization", &bearer(&good))),
        ("allow_missing, bad", Request::get("/optional").header("authorization", &bearer(&forged))),
        (
            "allow_missing, other issuer",
            Request::get("/optional").header("authorization", &bearer(&other_iss)),
        ),
        ("any, none", Request::get("/either")),
        ("any, audience", Request::get("/either").header("authorization", &bearer(&bad_aud))),
        ("any, other issuer", Request::get("/either").header("authorization", &bearer(&other_iss))),
        ("no requirement", Request::get("/public").header("authorization", "Bearer garbage")),
        // A second credential in the header value: the whole value is the token.
        ("good,forged", Request::get("/a").header("authorization", &format!("Bearer {good},{forged}"))),
        ("good, forged", Request::get("/a").header("authorization", &format!("Bearer {good}, {forged}"))),
        ("good,", Request::get("/a").header("authorization", &format!("Bearer {good},"))),
        (
            "two Authorization headers",
            Request::get("/a")
                .header("authorization", &bearer(&good))
                .header("authorization", &bearer(&forged)),
        ),
        (
            "two good Authorization headers",
            Request::get("/a")
                .header("authorization", &bearer(&good))
                .header("authorization", &bearer(&good)),
        ),
        (
            "good then Basic",
            Request::get("/a")
                .header("authorization", &bearer(&good))
                .header("authorization", "Basic dXNlcg=="),
        ),
        (
            "allow_missing, good,forged",
            Request::get("/optional").header("authorization", &format!("Bearer {good},{forged}")),
        ),
        ("spaces before the token", Request::get("/a").header("authorization", &format!("Bearer   {good}"))),
        // JSON that another parser could read otherwise.
        ("duplicate claim", Request::get("/a").header("authorization", &bearer(&dup_payload))),
        ("duplicate nested member", Request::get("/a").header("authorization", &bearer(&dup_nested))),
        ("duplicate header member", Request::get("/a").header("authorization", &bearer(&dup_header))),
        ("100 levels", Request::get("/a").header("authorization", &bearer(&deep(100)))),
        ("101 levels", Request::get("/a").header("authorization", &bearer(&deep(101)))),
    ];
    for (name, req) in cases {
        let a = answer(&native.send(&req).unwrap(), true);
        let b = answer(&ours.send(&req).unwrap(), false);
        assert_eq!(a, b, "{name}: native {a:?}, jwt-auth {b:?}");
    }
}

fn refused_configuration_names_the_field(target: Target) {
    let bad = json!({"providers": {"p": {"keys": [{"secret": "too-short"}]}}, "rules": [{"requires": {"provider_name": "nope"}}]});
    let log = EnvoyBuilder::new().filter(filter(target, &bad)).start_expecting_failure().unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("jwt_auth: invalid plugin configuration"))
        .unwrap_or_else(|| panic!("no configuration error in Envoy's log:\n{log}"));
    assert!(line.contains("`providers.p.keys[0].secret`"), "{line}");
    assert!(line.contains("`rules[0].requires.provider_name` = \"nope\""), "{line}");
    assert!(!line.contains("too-short"), "secrets are never logged: {line}");
}

fn bearer_for(signer: &Signer, kid: &str, sub: &str) -> Request {
    let t = signer.token(kid, &json!({"iss": "https://idp.test", "sub": sub, "exp": now() + 600}));
    Request::get("/api").header("authorization", &format!("Bearer {t}"))
}

/// Sends `req` until the status is `want` (keys are fetched on the filter's tick).
fn eventually(envoy: &Envoy, req: &Request, want: u16) -> Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = envoy.send(req).unwrap();
        if r.status == want || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn remote_jwks_fail_closed_rotation_and_outage(target: Target) {
    let idp = ScriptedUpstream::start().unwrap();
    idp.set("/jwks", Reply::status(503).body("starting"));
    let upstream = EchoUpstream::start().unwrap();
    let envoy = EnvoyBuilder::new()
        .filter(filter(target, &remote_config("http://idp.test/jwks", 1000, [1, 1, 0])))
        .bootstrap_patch(stats_tags(&["provider", "result"]))
        .cluster(Cluster::new("idp", idp.addr()))
        .upstream(upstream.addr())
        .start()
        .unwrap();
    let k1 = Signer::rsa();
    let k2 = Signer::p256();

    // No keys yet (the JWKS server answers 503): refused, never let through.
    std::thread::sleep(Duration::from_millis(600));
    let r = envoy.send(&bearer_for(&k1, "k1", "alice")).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.json().unwrap()["message"], "Jwks remote fetch is failed");
    let fetches = idp.received();
    assert!(!fetches.is_empty(), "the filter fetched");
    assert_eq!(fetches[0].header("host"), Some("idp.test"));

    // The server comes up: the keys arrive on the next retry.
    idp.set("/jwks", Reply::json(&k1.jwks("k1")));
    let r = eventually(&envoy, &bearer_for(&k1, "k1", "alice"), 200);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().unwrap().header("x-user"), Some("alice"));

    // Rotation: the issuer adds k2; a k2 token triggers a refetch and then passes.
    idp.set("/jwks", Reply::json(&json!({"keys": [k1.jwk("k1"), k2.jwk("k2")]})));
    let r = eventually(&envoy, &bearer_for(&k2, "k2", "bob"), 200);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().unwrap().header("x-user"), Some("bob"));

    // The issuer retires k1: once refreshed (every second here), k1 tokens fail.
    idp.set("/jwks", Reply::json(&k2.jwks("k2")));
    let r = eventually(&envoy, &bearer_for(&k1, "k1", "alice"), 401);
    assert_eq!(r.status, 401);

    // The JWKS server fails, then goes away: the last good set stays in use.
    idp.set("/jwks", Reply::status(500));
    let before = idp.received().len();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(idp.received().len() > before, "refreshes went on and failed");
    assert_eq!(envoy.send(&bearer_for(&k2, "k2", "carol")).unwrap().status, 200);
    drop(idp);
    std::thread::sleep(Duration::from_millis(2500));
    let r = envoy.send(&bearer_for(&k2, "k2", "dave")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().unwrap().header("x-user"), Some("dave"));
    let log = envoy.log();
    assert!(log.contains("JWKS fetch failed"), "{log}");

    let stats = envoy.admin_get("/stats/prometheus").unwrap();
    for result in ["failed", "ok"] {
        let labels = [r#"provider="idp""#, &format!(r#"result="{result}""#)];
        assert!(series(&stats, "jwt_auth_jwks_fetches_total", &labels).is_some(), "{stats}");
    }
}

/// With two workers every one of them verifies with the fetched keys and with their refresh: on
/// Wasm each worker's VM fetches for itself; natively the main thread's instance fetches and the
/// workers' instances take the set from shared data.
fn remote_keys_and_their_refresh_reach_every_worker(target: Target) {
    let idp = ScriptedUpstream::start().unwrap();
    let k1 = Signer::rsa();
    let k2 = Signer::p256();
    idp.set("/jwks", Reply::json(&k1.jwks("k1")));
    let upstream = EchoUpstream::start().unwrap();
    let envoy = EnvoyBuilder::new()
        .filter(filter(target, &remote_config("http://idp.test/jwks", 1000, [1, 1, 600])))
        .cluster(Cluster::new("idp", idp.addr()))
        .upstream(upstream.addr())
        .concurrency(2)
        .start()
        .unwrap();
    assert_eq!(eventually(&envoy, &bearer_for(&k1, "k1", "alice"), 200).status, 200);
    // Every worker has had time to fetch (Wasm) or to adopt the published set (native).
    std::thread::sleep(Duration::from_millis(1500));
    // Each request is a connection of its own, so the kernel spreads them over both workers.
    for i in 0..30 {
        let r = envoy.send(&bearer_for(&k1, "k1", &format!("u{i}"))).unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.echo().unwrap().header("x-user"), Some(format!("u{i}").as_str()));
    }
    // The issuer rotates to k2; the set is refreshed every second, unknown kids never refetch.
    idp.set("/jwks", Reply::json(&k2.jwks("k2")));
    std::thread::sleep(Duration::from_millis(2500));
    for i in 0..30 {
        assert_eq!(envoy.send(&bearer_for(&k2, "k2", "bob")).unwrap().status, 200, "request {i}");
        assert_eq!(envoy.send(&bearer_for(&k1, "k1", "alice")).unwrap().status, 401, "request {i}");
    }
    let per_worker = envoy.admin_get("/stats?filter=worker_.*downstream_cx_total").unwrap();
    let busy = per_worker.lines().filter(|l| !l.trim_end().ends_with(": 0")).count();
    assert_eq!(busy, 2, "both workers served: {per_worker}");
}

/// RS256 and ES256 signatures are checked by Envoy's `verify_signature` (BoringSSL) by default;
/// EdDSA and HS256 by the module. Every algorithm, valid and altered, gets the answer native
/// `jwt_authn` gives, with `host_crypto` on and off.
fn signatures_checked_by_the_host_or_the_module_answer_as_jwt_authn(target: Target) {
    let signers =
        [("rs", Signer::rsa()), ("es", Signer::p256()), ("ed", Signer::ed25519()), ("hs", Signer::hmac())];
    let jwks = json!({"keys": signers.iter().map(|(kid, s)| s.jwk(kid)).collect::<Vec<_>>()});
    let provider = |native: bool| {
        let keys = if native { json!({"inline_string": jwks.to_string()}) } else { jwks.clone() };
        json!({"issuer": "https://issuer.test", "local_jwks": keys})
    };
    let rules = json!([{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}]);
    let native = native_envoy(provider(true), &rules);
    let ours = |host: bool| {
        EnvoyBuilder::new()
            .filter(filter(
                target,
                &json!({"providers": {"p": provider(false)}, "rules": rules, "host_crypto": host}),
            ))
            .start()
            .unwrap()
    };
    let (host, module) = (ours(true), ours(false));

    let claims = json!({"iss": "https://issuer.test", "sub": "u", "exp": now() + 600});
    let mut cases = Vec::new();
    for (kid, signer) in &signers {
        let good = signer.token(kid, &claims);
        let (input, sig) = good.rsplit_once('.').unwrap();
        let (header, _) = input.split_once('.').unwrap();
        let other_claims = common::b64(
            json!({"iss": "https://issuer.test", "sub": "admin", "exp": now() + 600}).to_string(),
        );
        let mut flipped = sig.as_bytes().to_vec();
        flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
        cases.push((format!("{kid} valid"), good.clone()));
        cases.push((format!("{kid} payload swapped"), format!("{header}.{other_claims}.{sig}")));
        cases.push((
            format!("{kid} signature altered"),
            format!("{input}.{}", String::from_utf8(flipped).unwrap()),
        ));
        // Whole 4-character groups off: still canonical base64url, fewer bytes.
        cases.push((
            format!("{kid} signature cut"),
            format!("{input}.{}", &sig[..sig.len() - sig.len() % 4 - 4]),
        ));
        cases.push((format!("{kid} no signature"), format!("{input}.")));
    }
    // Four characters off leave a last character carrying four bits below the last byte; `B`
    // (value 1) makes them non-zero whatever the signature was.
    let rs = signers[0].1.token("rs", &claims);
    let not_canonical = format!("{}B", &rs[..rs.len() - 5]);
    cases.push(("rs signature not canonical".into(), not_canonical));
    // Another RSA key under the same kid.
    let impostor = Signer::Rsa(common::rsa_key_2()).token("rs", &claims);
    cases.push(("rs other key".into(), impostor));
    for (name, token) in cases {
        let req = Request::get("/a").header("authorization", &format!("Bearer {token}"));
        let want = answer(&native.send(&req).unwrap(), true);
        let by_host = answer(&host.send(&req).unwrap(), false);
        let by_module = answer(&module.send(&req).unwrap(), false);
        if name.ends_with("not canonical") {
            // The cut leaves non-zero bits below the last byte: Envoy's decoder ignores them and
            // fails the signature, this filter refuses non-canonical base64url (no two texts for
            // one token). Same status and WWW-Authenticate, another message.
            assert_eq!(want.0, by_host.0, "{name}");
            assert_eq!(want.1, by_host.1, "{name}");
            assert_eq!(by_host.2, "Jwt signature is an invalid Base64url encoded", "{name}");
        } else {
            assert_eq!(want, by_host, "{name}: native {want:?}, host_crypto {by_host:?}");
        }
        assert_eq!(by_host, by_module, "{name}: host_crypto {by_host:?}, module {by_module:?}");
    }
}

/// Native `jwt_authn` and this filter, each with one provider `p` (`provider(true)` in Envoy's
/// form, `provider(false)` in the filter's) required on every path, in front of `upstream`.
fn native_and_ours(
    target: Target,
    provider: &dyn Fn(bool) -> Value,
    upstream: &EchoUpstream,
) -> (Envoy, Envoy) {
    let rules = json!([{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}]);
    let native = EnvoyBuilder::new()
        .raw_filter(json!({
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {"p": provider(true)},
                "rules": rules
            }
        }))
        .upstream(upstream.addr())
        .start()
        .unwrap();
    let ours = EnvoyBuilder::new()
        .filter(filter(target, &json!({"providers": {"p": provider(false)}, "rules": rules})))
        .bootstrap_patch(stats_tags(&["reason"]))
        .upstream(upstream.addr())
        .start()
        .unwrap();
    (native, ours)
}

/// Both filters with `forward: true`, `sub` to `x-user`, in front of an echo upstream.
fn forwarding_envoys(target: Target, upstream: &EchoUpstream) -> (Envoy, Envoy) {
    let jwks = Signer::hmac().jwks("k").to_string();
    let provider = |native: bool| {
        let keys = if native { json!({"inline_string": jwks}) } else { serde_json::from_str(&jwks).unwrap() };
        json!({
            "local_jwks": keys,
            "forward": true,
            "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
            "from_params": ["token"],
            "from_cookies": ["id_token"],
            "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}]
        })
    };
    native_and_ours(target, &provider, upstream)
}

/// Security: a good token followed by another credential in the same header value (or in a
/// second `Authorization` header, which Envoy joins with a comma) is refused by native
/// `jwt_authn`, and by this filter with `forward: true`; nothing unverified reaches the upstream.
fn a_second_credential_is_refused_as_native_jwt_authn_refuses_it_even_with_forward(target: Target) {
    let upstream = EchoUpstream::start().unwrap();
    let (native, ours) = forwarding_envoys(target, &upstream);
    let n = now();
    let good = Signer::hmac().token("k", &json!({"sub": "alice", "exp": n + 600}));
    let forged = Signer::Hmac(vec![3; 32]).token("k", &json!({"sub": "admin", "exp": n + 600}));

    let ok = Request::get("/a").header("authorization", &format!("Bearer {good}"));
    for envoy in [&native, &ours] {
        let echo = envoy.send(&ok).unwrap().echo().unwrap();
        assert_eq!(echo.header_all("authorization"), [format!("Bearer {good}")], "forwarded");
        assert_eq!(echo.header_all("x-user"), ["alice"]);
    }
    let cases = [
        ("good,forged", Request::get("/a").header("authorization", &format!("Bearer {good},{forged}"))),
        (
            "two headers",
            Request::get("/a")
                .header("authorization", &format!("Bearer {good}"))
                .header("authorization", &format!("Bearer {forged}")),
        ),
        ("good,", Request::get("/a").header("authorization", &format!("Bearer {good},"))),
        ("good junk", Request::get("/a").header("authorization", &format!("Bearer {good} junk"))),
    ];
    for (name, req) in cases {
        let want = answer(&native.send(&req).unwrap(), true);
        let got = answer(&ours.send(&req).unwrap(), false);
        assert_eq!(want.0, 401, "{name}: native {want:?}");
        if name == "good junk" {
            // Envoy's base64 decoder skips the space and fails the signature; here a space is not
            // base64url. Same status and WWW-Authenticate, another message (README).
            assert_eq!((want.0, &want.1), (got.0, &got.1), "{name}");
            assert_eq!(want.2, "Jwt verification fails");
            assert_eq!(got.2, "Jwt signature is an invalid Base64url encoded");
        } else {
            assert_eq!(want, got, "{name}: native {want:?}, jwt-auth {got:?}");
        }
    }
}

/// Security: a bearer token and a query or cookie token naming different users. Native
/// `jwt_authn` lets the request through with both identities as repeated headers; this filter
/// refuses it (README, differences). One user in two places passes both, once here.
fn two_identities_native_sends_both_this_filter_refuses(target: Target) {
    let upstream = EchoUpstream::start().unwrap();
    let (native, ours) = forwarding_envoys(target, &upstream);
    let n = now();
    let s = Signer::hmac();
    let alice = s.token("k", &json!({"sub": "alice", "exp": n + 600}));
    let alice_later = s.token("k", &json!({"sub": "alice", "exp": n + 900}));
    let mallory = s.token("k", &json!({"sub": "mallory", "exp": n + 600}));
    let bearer = format!("Bearer {alice}");
    for req in [
        Request::get(&format!("/a?token={mallory}")).header("authorization", &bearer),
        Request::get("/a").header("authorization", &bearer).header("cookie", &format!("id_token={mallory}")),
    ] {
        let r = native.send(&req).unwrap();
        assert_eq!(r.status, 200);
        let mut users =
            r.echo().unwrap().header_all("x-user").into_iter().map(str::to_string).collect::<Vec<_>>();
        users.sort();
        assert_eq!(users, ["alice", "mallory"], "native sends both identities");
        let r = ours.send(&req).unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(r.json().unwrap()["message"], "Jwts in the request name different identities");
        assert!(r.header("www-authenticate").unwrap().ends_with("error=\"invalid_token\""));
    }
    let same = Request::get(&format!("/a?token={alice_later}")).header("authorization", &bearer);
    assert_eq!(native.send(&same).unwrap().echo().unwrap().header_all("x-user"), ["alice", "alice"]);
    assert_eq!(ours.send(&same).unwrap().echo().unwrap().header_all("x-user"), ["alice"]);
    // Counters are flushed on the filter's one-second tick.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = ours.admin_get("/stats/prometheus").unwrap();
        if series(&stats, "jwt_auth_denied_total", &[r#"reason="identity_conflict""#]) == Some("2") {
            break;
        }
        assert!(Instant::now() < deadline, "{stats}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The README's differences from Envoy, each run through native `jwt_authn` and this filter
/// side by side: Envoy's answer first, then this filter's.
fn documented_differences_hold_in_envoy(target: Target) {
    let upstream = EchoUpstream::start().unwrap();
    let s = Signer::hmac();
    let enc_key = Signer::Hmac(b"an-encryption-key-of-32-bytes!!!".to_vec());
    let mut enc_jwk = enc_key.jwk("enc");
    enc_jwk["use"] = json!("enc");
    let jwks = json!({"keys": [s.jwk("k"), enc_jwk]}).to_string();
    let forms = ["neg", "big", "f15", "tiny", "f10", "e3", "m0", "empty", "list", "obj"];
    let provider = |native: bool| {
        let keys = if native { json!({"inline_string": jwks}) } else { serde_json::from_str(&jwks).unwrap() };
        json!({
            "local_jwks": keys,
            "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
            "from_params": ["token"],
            "from_cookies": ["id_token"],
            "claim_to_headers": forms.iter().map(|f| json!({"header_name": format!("x-{f}"), "claim_name": f})).collect::<Vec<_>>()
        })
    };
    let (native, ours) = native_and_ours(target, &provider, &upstream);
    let n = now();
    let good = s.token("k", &json!({"sub": "alice", "exp": n + 600}));
    let bearer = |t: &str| Request::get("/a").header("authorization", &format!("Bearer {t}"));
    let both =
        |req: &Request| (answer(&native.send(req).unwrap(), true), answer(&ours.send(req).unwrap(), false));
    let ok = (200, None, String::new());
    let refused = |message: &str| {
        (
            401,
            Some("Bearer realm=\"http://localhost/a\", error=\"invalid_token\"".to_string()),
            message.to_string(),
        )
    };

    // Claim value forms: the digits of an integer and a non-whole number are kept here.
    let payload = format!(
        r#"{{"sub":"alice","neg":-5,"big":9007199254740993,"f15":1.5,"tiny":1e-7,"f10":1.0,"e3":1e3,"m0":-0,"empty":"","list":["a","b"],"obj":{{"a":1}},"exp":{}}}"#,
        n + 600
    );
    let input = format!("{}.{}", common::b64(r#"{"alg":"HS256","kid":"k"}"#), common::b64(&payload));
    let forms_token = format!("{input}.{}", common::b64(s.sign_raw(input.as_bytes())));
    let native_echo = native.send(&bearer(&forms_token)).unwrap().echo().unwrap();
    let our_echo = ours.send(&bearer(&forms_token)).unwrap().echo().unwrap();
    let value = |echo: &gatewasm_envoy::Echo, f: &str| echo.header(&format!("x-{f}")).map(str::to_string);
    let want: [(&str, Option<&str>, Option<&str>); 10] = [
        ("neg", Some("-5.000000"), Some("-5")),
        ("big", Some("9007199254740992"), Some("9007199254740993")),
        ("f15", Some("1.500000"), Some("1.5")),
        ("tiny", Some("0.000000"), Some("1e-7")),
        ("f10", Some("1"), Some("1")),
        ("e3", Some("1000"), Some("1000")),
        ("m0", Some("0"), Some("0")),
        ("empty", None, None),
        ("list", Some("WyJhIiwiYiJd"), Some("WyJhIiwiYiJd")),
        ("obj", Some("eyJhIjoxfQ=="), Some("eyJhIjoxfQ==")),
    ];
    for (f, native_value, our_value) in want {
        assert_eq!(value(&native_echo, f).as_deref(), native_value, "native {f}");
        assert_eq!(value(&our_echo, f).as_deref(), our_value, "jwt-auth {f}");
    }

    // A padded signature: Envoy decodes it; here it is not base64url.
    let padded = format!("{good}{}", "=".repeat((4 - good.rsplit('.').next().unwrap().len() % 4) % 4));
    assert_ne!(padded, good);
    assert_eq!(
        both(&bearer(&padded)),
        (ok.clone(), refused("Jwt signature is an invalid Base64url encoded"))
    );
    // An empty section: Envoy skips it.
    let (h, rest) = good.split_once('.').unwrap();
    assert_eq!(
        both(&bearer(&format!("{h}..{rest}"))),
        (
            ok.clone(),
            refused("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")
        )
    );
    // The scheme inside another value: Envoy finds it.
    let basic_then_bearer =
        Request::get("/a").header("authorization", &format!("Basic dXNlcg==, Bearer {good}"));
    let (n_answer, o_answer) = both(&basic_then_bearer);
    assert_eq!(n_answer, ok);
    assert_eq!((o_answer.0, o_answer.2.as_str()), (401, "Jwt is missing"));
    // A space before the cookie value: Envoy keeps it in the token.
    let spaced = Request::get("/a").header("cookie", &format!("id_token= {good}"));
    assert_eq!(both(&spaced), (refused("Jwt verification fails"), ok.clone()));
    // A key marked `use: enc`: Envoy verifies with it, this filter does not.
    let with_enc = enc_key.token("enc", &json!({"sub": "alice", "exp": n + 600}));
    assert_eq!(
        both(&bearer(&with_enc)),
        (ok.clone(), refused("Jwks doesn't have key to match kid or alg from Jwt"))
    );
    // Removal with `forward: false`: both take `?token=` out; only this filter takes the cookie.
    let q = native.send(&Request::get(&format!("/a?token={good}&x=1"))).unwrap().echo().unwrap();
    assert_eq!(q.path, "/a?x=1");
    let q = ours.send(&Request::get(&format!("/a?token={good}&x=1"))).unwrap().echo().unwrap();
    assert_eq!(q.path, "/a?x=1");
    let cookie = Request::get("/a").header("cookie", &format!("id_token={good}; theme=dark"));
    let kept = native.send(&cookie).unwrap().echo().unwrap();
    assert!(kept.header("cookie").unwrap().contains(&good), "Envoy leaves the cookie token");
    let taken = ours.send(&cookie).unwrap().echo().unwrap();
    assert_eq!(taken.header("cookie"), Some("theme=dark"));
}

/// Claims and scopes per rule through Envoy: 403 with `error="insufficient_scope"`, no identity
/// upstream, the denied counter by its reason.
fn claims_and_scopes_are_enforced_per_rule_in_envoy(target: Target) {
    let upstream = EchoUpstream::start().unwrap();
    let key = Signer::hmac();
    let config = json!({
        "providers": {"idp": {"issuer": "https://idp.test", "local_jwks": key.jwks("k"),
            "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}]}},
        "rules": [
            {"match": {"prefix": "/orders"}, "requires": {"provider_name": "idp", "scopes": ["orders:read"],
                "claims": {"tenant": "acme", "realm_access.roles": {"all_of": ["buyer"]}}}},
            {"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}
        ]
    });
    let envoy = EnvoyBuilder::new()
        .filter(filter(target, &config))
        .bootstrap_patch(stats_tags(&["reason"]))
        .upstream(upstream.addr())
        .start()
        .unwrap();
    let send = |path: &str, claims: Value| {
        let mut c = claims;
        c["iss"] = json!("https://idp.test");
        c["exp"] = json!(now() + 600);
        let t = key.token("k", &c);
        envoy
            .send(
                &Request::get(path)
                    .header("authorization", &format!("Bearer {t}"))
                    .header("x-user", "spoofed"),
            )
            .unwrap()
    };
    let good = json!({"sub": "alice", "tenant": "acme", "realm_access": {"roles": ["buyer"]}, "scope": "orders:read"});
    let r = send("/orders/1", good);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().unwrap().header_all("x-user"), ["alice"]);

    for claims in [
        json!({"sub": "bob", "tenant": "acme", "realm_access": {"roles": ["buyer"]}, "scope": "orders:readwrite"}),
        json!({"sub": "bob", "tenant": "acme", "realm_access": {"roles": "buyers"}, "scope": "orders:read"}),
        json!({"sub": "bob", "tenant": 1, "realm_access": {"roles": ["buyer"]}, "scope": "orders:read"}),
    ] {
        let r = send("/orders/1", claims.clone());
        assert_eq!(r.status, 403, "{claims}: {}", r.text());
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"http://localhost/orders/1\", error=\"insufficient_scope\""),
            "{claims}"
        );
        assert_eq!(r.json().unwrap()["code"], "insufficient_scope");
        // Valid tokens all the same.
        assert_eq!(send("/other", claims).status, 200);
    }
    let want = [r#"reason="insufficient_scope""#];
    let stats =
        eventually_stats(&envoy, |scrape| series(scrape, "jwt_auth_denied_total", &want) == Some("3"));
    assert_eq!(series(&stats, "jwt_auth_denied_total", &want), Some("3"), "{stats}");
}

/// Polls Envoy's Prometheus stats until `done` holds (counters reach Envoy from a periodic
/// flush on both targets).
fn eventually_stats(envoy: &Envoy, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = envoy.admin_get("/stats/prometheus").unwrap();
        if done(&stats) || Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// OpenID Connect discovery through Envoy: the document (another issuer's and a too large one
/// refused first), the JWKS it names, both through one cluster; failures keep the keys, and a
/// document served again after an outage brings a rotated key set.
fn oidc_discovery_through_envoy(target: Target) {
    let issuer = "http://idp.test/realms/shop";
    let idp = ScriptedUpstream::start().unwrap();
    let well_known = "/realms/shop/.well-known/openid-configuration";
    let doc = |iss: &str, jwks: &str| json!({"issuer": iss, "jwks_uri": format!("http://idp.test{jwks}")});
    idp.set(well_known, Reply::json(&doc("http://idp.test/realms/other", "/evil")));
    let upstream = EchoUpstream::start().unwrap();
    let config = json!({
        "providers": {"idp": {
            "issuer": issuer,
            "remote_jwks": {"discovery": {"cluster": "idp", "timeout_ms": 1000}, "cache_duration_seconds": 1,
                            "retry_interval_seconds": 1, "max_bytes": 2048},
            "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}]
        }},
        "rules": [{"requires": {"provider_name": "idp"}}]
    });
    let envoy = EnvoyBuilder::new()
        .filter(filter(target, &config))
        .bootstrap_patch(stats_tags(&["provider", "result"]))
        .cluster(Cluster::new("idp", idp.addr()))
        .upstream(upstream.addr())
        .start()
        .unwrap();
    let k1 = Signer::rsa();
    let k2 = Signer::p256();
    let bearer = |signer: &Signer, kid: &str, sub: &str| {
        let t = signer.token(kid, &json!({"iss": issuer, "sub": sub, "exp": now() + 600}));
        Request::get("/api").header("authorization", &format!("Bearer {t}"))
    };
    idp.set("/evil", Reply::json(&k1.jwks("k1")));
    idp.set("/realms/shop/certs", Reply::json(&k1.jwks("k1")));

    // Another issuer's document: never followed, requests refused.
    std::thread::sleep(Duration::from_millis(1500));
    let r = envoy.send(&bearer(&k1, "k1", "alice")).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.json().unwrap()["message"], "Jwks remote fetch is failed");
    let got = idp.received();
    assert!(got.iter().any(|g| g.path == well_known && g.header("host") == Some("idp.test")), "{got:?}");
    assert!(got.iter().all(|g| g.path != "/evil"), "another issuer's jwks_uri is never fetched");
    // A document larger than max_bytes: refused too.
    let mut huge = doc(issuer, "/realms/shop/certs");
    huge["padding"] = json!("x".repeat(4096));
    idp.set(well_known, Reply::json(&huge));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(envoy.send(&bearer(&k1, "k1", "alice")).unwrap().status, 401);
    assert!(idp.received().iter().all(|g| g.path != "/realms/shop/certs"));

    // The right document: its JWKS is fetched and used.
    idp.set(well_known, Reply::json(&doc(issuer, "/realms/shop/certs")));
    let r = eventually(&envoy, &bearer(&k1, "k1", "alice"), 200);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().unwrap().header("x-user"), Some("alice"));

    // Discovery and the JWKS fail: the keys stay.
    idp.set(well_known, Reply::status(500));
    idp.set("/realms/shop/certs", Reply::status(503));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(envoy.send(&bearer(&k1, "k1", "bob")).unwrap().status, 200);

    // Recovery, with the keys moved and rotated: the document is read again and followed.
    idp.set(well_known, Reply::json(&doc(issuer, "/realms/shop/certs-v2")));
    idp.set("/realms/shop/certs-v2", Reply::json(&k2.jwks("k2")));
    let r = eventually(&envoy, &bearer(&k2, "k2", "carol"), 200);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().unwrap().header("x-user"), Some("carol"));

    let wanted = [
        ("jwt_auth_discovery_fetches_total", "ok"),
        ("jwt_auth_discovery_fetches_total", "failed"),
        ("jwt_auth_jwks_fetches_total", "failed"),
    ];
    let counted = |stats: &str, name: &str, result: &str| {
        let labels = [r#"provider="idp""#.to_string(), format!("result=\"{result}\"")];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        series(stats, name, &labels).is_some_and(|v| v != "0")
    };
    let stats = eventually_stats(&envoy, |stats| wanted.iter().all(|(n, r)| counted(stats, n, r)));
    for (name, result) in wanted {
        assert!(counted(&stats, name, result), "{name} {result}: {stats}");
    }
    assert!(envoy.log().contains("discovery document names another issuer"), "{}", envoy.log());
}
