//! Authorization by claims: what a requirement demands of a verified token beyond its validity
//! (`claims` and `scopes` next to `provider_name`). A token that verifies and lacks them is
//! answered 403 `insufficient_scope` (RFC 6750 section 3.1).
//!
//! Comparisons are by JSON type and value: the string `"5"` is not the number `5`, an object
//! or a list is never equal to a scalar, and scopes are whole space-separated words, so
//! `readwrite` never satisfies `read`.

use serde_json::Value;

use crate::jwt::Claims;

/// A test on one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimTest {
    /// The claim equals this string, boolean or integer (same JSON type).
    Equals(Value),
    /// A scalar claim equals one of these; a list claim holds at least one of them.
    AnyOf(Vec<Value>),
    /// A list claim holds every one of these (a scalar claim counts as a list of itself).
    AllOf(Vec<Value>),
}

/// A claim path (dotted, as `claim_to_headers` reads it) and its test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimCheck {
    /// The claim, dots reaching into objects (`realm_access.roles`).
    pub path: String,
    /// What it must satisfy.
    pub test: ClaimTest,
}

/// Everything a requirement demands of its provider's verified tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimRules {
    /// Claim tests, all of which must hold.
    pub claims: Vec<ClaimCheck>,
    /// OAuth scopes, every one of which the token must grant.
    pub scopes: Vec<String>,
}

impl ClaimRules {
    /// Whether `claims` satisfy every test and grant every scope.
    pub fn satisfied_by(&self, claims: &Claims) -> bool {
        self.claims.iter().all(|c| claims.get(&c.path).is_some_and(|v| c.test.holds(v)))
            && (self.scopes.is_empty() || {
                let granted = granted_scopes(claims);
                self.scopes.iter().all(|s| granted.contains(&s.as_str()))
            })
    }
}

impl ClaimTest {
    /// Whether the claim value `v` passes.
    pub fn holds(&self, v: &Value) -> bool {
        match (self, v) {
            (ClaimTest::Equals(want), v) => want == v,
            (ClaimTest::AnyOf(wanted), Value::Array(items)) => items.iter().any(|i| wanted.contains(i)),
            (ClaimTest::AnyOf(wanted), v) => wanted.contains(v),
            (ClaimTest::AllOf(wanted), Value::Array(items)) => wanted.iter().all(|w| items.contains(w)),
            (ClaimTest::AllOf(wanted), v) => wanted.iter().all(|w| w == v),
        }
    }
}

/// The scopes a token grants: `scope`, a space-separated string (RFC 8693 section 4.2,
/// RFC 9068 section 2.2.3); without it, `scp`, a list of strings or a space-separated string
/// (as Okta and Microsoft Entra write it). A claim of another type grants nothing.
pub fn granted_scopes(claims: &Claims) -> Vec<&str> {
    fn words(s: &str) -> Vec<&str> {
        s.split(' ').filter(|w| !w.is_empty()).collect()
    }
    match (claims.all.get("scope"), claims.all.get("scp")) {
        (Some(Value::String(s)), _) => words(s),
        (Some(_), _) => Vec::new(),
        (None, Some(Value::String(s))) => words(s),
        (None, Some(Value::Array(items))) => items.iter().filter_map(Value::as_str).collect(),
        (None, _) => Vec::new(),
    }
}

/// Whether `s` is a scope token (RFC 6749 section 3.3: printable ASCII other than space, `"`
/// and `\`).
pub fn is_scope_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// Whether `v` may be compared with a claim: a string, a boolean or an integer.
pub fn is_comparable(v: &Value) -> bool {
    match v {
        Value::String(_) | Value::Bool(_) => true,
        Value::Number(n) => n.is_i64() || n.is_u64(),
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Claims {
        Claims { all: v.as_object().unwrap().clone(), ..Claims::default() }
    }

    #[test]
    fn tests_compare_type_and_value() {
        let c = claims(json!({
            "tenant": "acme", "n": 5, "s": "5", "admin": true, "obj": {"tenant": "acme"},
            "groups": ["dev", "ops", 7], "org": {"unit": "eu"}
        }));
        let eq = |p: &str, v: Value| ClaimCheck { path: p.into(), test: ClaimTest::Equals(v) };
        let check = |c1: ClaimCheck| ClaimRules { claims: vec![c1], scopes: vec![] }.satisfied_by(&c);
        assert!(check(eq("tenant", json!("acme"))));
        assert!(!check(eq("tenant", json!("Acme"))));
        assert!(!check(eq("tenant", json!("acm"))));
        assert!(check(eq("n", json!(5))));
        assert!(!check(eq("n", json!("5"))), "a number is not its digits");
        assert!(!check(eq("s", json!(5))), "a string is not a number");
        assert!(!check(eq("obj", json!("acme"))), "an object is not a string");
        assert!(!check(eq("groups", json!("dev"))), "a list is not one of its items");
        assert!(check(eq("admin", json!(true))));
        assert!(!check(eq("missing", json!("x"))));
        assert!(check(eq("org.unit", json!("eu"))));
        let any = |p: &str, v: Vec<Value>| ClaimCheck { path: p.into(), test: ClaimTest::AnyOf(v) };
        let all = |p: &str, v: Vec<Value>| ClaimCheck { path: p.into(), test: ClaimTest::AllOf(v) };
        assert!(check(any("tenant", vec![json!("x"), json!("acme")])));
        assert!(!check(any("tenant", vec![json!("x")])));
        assert!(check(any("groups", vec![json!("x"), json!("ops")])));
        assert!(check(any("groups", vec![json!(7)])));
        assert!(!check(any("groups", vec![json!("7")])));
        assert!(!check(any("obj", vec![json!("acme")])));
        assert!(check(all("groups", vec![json!("dev"), json!("ops")])));
        assert!(!check(all("groups", vec![json!("dev"), json!("admin")])));
        assert!(check(all("tenant", vec![json!("acme")])), "a scalar is a list of itself");
        assert!(!check(all("tenant", vec![json!("acme"), json!("x")])));
        assert!(!check(all("obj", vec![json!("acme")])));
    }

    #[test]
    fn scopes_are_whole_words() {
        let need = |scopes: &[&str], c: Value| {
            ClaimRules { claims: vec![], scopes: scopes.iter().map(|s| s.to_string()).collect() }
                .satisfied_by(&claims(c))
        };
        assert!(need(&["read"], json!({"scope": "openid read write"})));
        assert!(need(&["read", "write"], json!({"scope": "write  read"})));
        assert!(!need(&["read"], json!({"scope": "readwrite"})), "no substring");
        assert!(!need(&["read"], json!({"scope": "read:all"})));
        assert!(!need(&["read"], json!({"scope": "xread"})));
        assert!(!need(&["read"], json!({"scope": ["read"]})), "`scope` is a string");
        assert!(!need(&["read"], json!({"scope": "other", "scp": ["read"]})), "`scope` decides");
        assert!(need(&["read"], json!({"scp": ["read", "write"]})));
        assert!(!need(&["read"], json!({"scp": ["read write"]})), "a list item is one scope");
        assert!(need(&["read"], json!({"scp": "read write"})));
        assert!(!need(&["read"], json!({"scp": {"read": true}})));
        assert!(!need(&["read"], json!({})));
        assert!(need(&[], json!({})));
    }

    #[test]
    fn scope_tokens() {
        assert!(is_scope_token("orders:read"));
        assert!(is_scope_token("https://api.example.com/orders.read"));
        for bad in ["", "a b", "a\"b", "a\\b", "é", "a\tb"] {
            assert!(!is_scope_token(bad), "{bad}");
        }
    }
}
