//! Authorization by claims and scopes through the filter's real callbacks on the SDK's fake
//! host: 403 `insufficient_scope` for a valid token without what the rule demands, its own
//! counter, nothing upstream; scope and type tricks that must not pass.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, UNIX_EPOCH};

use common::{now, Signer};
use gatewasm::testing::{Action, FakeHost, FakeStream, Harness};
use jwt_auth::JwtAuth;
use serde_json::{json, Value};

/// Provider `idp` (issuer `https://idp`, the user in `x-user`, the tenant in `x-tenant`) and
/// provider `partner` (issuer `https://partner`); rules by path:
/// `/orders/` needs scope `orders:read` and tenant `acme`, `/admin/` every group of
/// `["admin", "ops"]`, `/eu/` a region in `["eu-west", "eu-north"]`, `/level/` `level: 3`,
/// `/either/` the `idp` tenant `acme` or any `partner` token, `/open/` a token only.
fn gateway() -> Harness<JwtAuth> {
    let host = FakeHost::new();
    host.set_now(UNIX_EPOCH + Duration::from_secs(now()));
    let key = Signer::hmac();
    let cfg = json!({
        "providers": {
            "idp": {"issuer": "https://idp", "local_jwks": key.jwks("k"), "claim_to_headers": [
                {"header_name": "x-user", "claim_name": "sub"}, {"header_name": "x-tenant", "claim_name": "tenant"}]},
            "partner": {"issuer": "https://partner", "local_jwks": key.jwks("k"),
                "claim_to_headers": [{"header_name": "x-partner", "claim_name": "sub"}]}
        },
        "rules": [
            {"match": {"prefix": "/orders/"}, "requires": {"provider_name": "idp", "scopes": ["orders:read"], "claims": {"tenant": "acme"}}},
            {"match": {"prefix": "/admin/"}, "requires": {"provider_name": "idp", "claims": {"groups": {"all_of": ["admin", "ops"]}}}},
            {"match": {"prefix": "/eu/"}, "requires": {"provider_name": "idp", "claims": {"org.region": {"any_of": ["eu-west", "eu-north"]}}}},
            {"match": {"prefix": "/level/"}, "requires": {"provider_name": "idp", "claims": {"level": 3, "active": true}}},
            {"match": {"prefix": "/either/"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "idp", "claims": {"tenant": "acme"}}, {"provider_name": "partner"}]}}},
            {"match": {"prefix": "/open/"}, "requires": {"provider_name": "idp"}}
        ]
    });
    Harness::with_host(host, &cfg.to_string()).unwrap_or_else(|e| panic!("{e}"))
}

fn token(iss: &str, claims: Value) -> String {
    let mut c = claims;
    c["iss"] = json!(iss);
    c["exp"] = json!(now() + 600);
    Signer::hmac().token("k", &c)
}

fn send(g: &Harness<JwtAuth>, path: &str, headers: &[(&str, &str)]) -> FakeStream<JwtAuth> {
    let mut all = vec![(":method", "GET"), (":path", path), (":authority", "gw.test"), (":scheme", "https")];
    all.extend_from_slice(headers);
    let mut s = g.stream();
    let action = s.request_headers(&all, true);
    assert_eq!(action == Action::Continue, s.reply().is_none(), "goes upstream or is answered");
    s
}

fn bearer(g: &Harness<JwtAuth>, path: &str, token: &str) -> FakeStream<JwtAuth> {
    send(g, path, &[("authorization", &format!("Bearer {token}"))])
}

fn status(s: &FakeStream<JwtAuth>) -> u32 {
    s.reply().map_or(200, |r| r.status)
}

#[test]
fn a_valid_token_without_the_claims_is_forbidden_with_insufficient_scope() {
    let mut g = gateway();
    let good = token("https://idp", json!({"sub": "alice", "tenant": "acme", "scope": "openid orders:read"}));
    let s = bearer(&g, "/orders/1", &good);
    assert_eq!(status(&s), 200);
    assert_eq!(s.request_header("x-user").as_deref(), Some("alice"));
    assert_eq!(s.request_header("authorization"), None, "the token is removed as always");

    let other_tenant =
        token("https://idp", json!({"sub": "mallory", "tenant": "evil", "scope": "orders:read"}));
    // A client's own identity headers are stripped before the answer, and none go anywhere.
    let s = send(
        &g,
        "/orders/1?x=1",
        &[("authorization", &format!("Bearer {other_tenant}")), ("x-user", "alice"), ("x-tenant", "acme")],
    );
    let reply = s.reply().expect("answered");
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"http://gw.test/orders/1\", error=\"insufficient_scope\"")
    );
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["code"], "insufficient_scope");
    assert_eq!(body["message"], "Jwt lacks the claims or scopes the route requires");
    assert_eq!(reply.details, "jwt_auth_insufficient_scope");
    assert_eq!(s.request_header("x-user"), None);
    assert_eq!(s.request_header("x-tenant"), None);

    // The same token where only validity is needed passes.
    assert_eq!(status(&bearer(&g, "/open/", &other_tenant)), 200);
    // A bad token is still a 401, whatever the rule demands besides.
    let forged = format!("{}x", &good[..good.len() - 1]);
    assert_eq!(status(&bearer(&g, "/orders/1", &forged)), 401);
    // No token: 401, not 403.
    assert_eq!(status(&send(&g, "/orders/1", &[])), 401);

    g.tick();
    let host = g.host();
    assert_eq!(host.counter("jwt_auth_denied_total;reason=insufficient_scope"), Some(1));
    assert_eq!(host.counter("jwt_auth_allowed_total"), Some(2));
}

#[test]
fn scopes_are_whole_words_in_scope_or_scp() {
    let g = gateway();
    let with = |scope: Value| {
        let mut c = json!({"sub": "a", "tenant": "acme"});
        if let Some(o) = scope.as_object() {
            for (k, v) in o {
                c[k] = v.clone();
            }
        }
        status(&bearer(&g, "/orders/", &token("https://idp", c)))
    };
    assert_eq!(with(json!({"scope": "orders:read"})), 200);
    assert_eq!(with(json!({"scp": ["profile", "orders:read"]})), 200);
    assert_eq!(with(json!({"scp": "profile orders:read"})), 200);
    for trick in [
        json!({"scope": "orders:readwrite"}),
        json!({"scope": "orders:rea"}),
        json!({"scope": "xorders:read"}),
        json!({"scope": "orders:read,profile"}),
        json!({"scope": "ORDERS:READ"}),
        json!({"scope": ["orders:read"]}),
        json!({"scope": {"orders:read": true}}),
        json!({"scp": ["orders:read profile"]}),
        json!({"scope": "profile", "scp": ["orders:read"]}),
        json!({}),
    ] {
        assert_eq!(with(trick.clone()), 403, "{trick}");
    }
}

#[test]
fn claims_compare_type_and_value_and_reach_into_objects() {
    let g = gateway();
    let at = |path: &str, c: Value| status(&bearer(&g, path, &token("https://idp", c)));
    assert_eq!(at("/admin/", json!({"groups": ["dev", "ops", "admin"]})), 200);
    assert_eq!(at("/admin/", json!({"groups": ["admin"]})), 403, "every group is needed");
    assert_eq!(at("/admin/", json!({"groups": "admin ops"})), 403, "a string is not split");
    assert_eq!(at("/admin/", json!({"groups": {"admin": 1, "ops": 1}})), 403);
    assert_eq!(at("/eu/", json!({"org": {"region": "eu-north"}})), 200);
    assert_eq!(at("/eu/", json!({"org": {"region": ["us", "eu-west"]}})), 200, "a list holding one");
    assert_eq!(at("/eu/", json!({"org": {"region": "us"}})), 403);
    assert_eq!(at("/eu/", json!({"org": "eu-west"})), 403);
    assert_eq!(at("/eu/", json!({"org.region": "eu-west"})), 200, "a dotted name is found first");
    assert_eq!(at("/level/", json!({"level": 3, "active": true})), 200);
    assert_eq!(at("/level/", json!({"level": "3", "active": true})), 403, "a string is not a number");
    assert_eq!(at("/level/", json!({"level": 3, "active": "true"})), 403);
    assert_eq!(at("/level/", json!({"level": [3], "active": true})), 403);
    assert_eq!(at("/level/", json!({"level": 3.5, "active": true})), 403);
    assert_eq!(at("/level/", json!({"active": true})), 403);
}

#[test]
fn an_alternative_without_the_claims_falls_to_the_next() {
    let g = gateway();
    let acme = token("https://idp", json!({"sub": "alice", "tenant": "acme"}));
    let evil = token("https://idp", json!({"sub": "mallory", "tenant": "evil"}));
    let partner = token("https://partner", json!({"sub": "p1"}));
    assert_eq!(status(&bearer(&g, "/either/", &acme)), 200);
    let s = bearer(&g, "/either/", &evil);
    assert_eq!(status(&s), 403, "the most telling failure");
    assert_eq!(s.request_header("x-user"), None);
    let s = bearer(&g, "/either/", &partner);
    assert_eq!(status(&s), 200);
    assert_eq!(s.request_header("x-partner").as_deref(), Some("p1"));
    assert_eq!(s.request_header("x-user"), None);
}
