//! A provider's keys (inline, or fetched from a JWKS endpoint and refreshed) and its cache of
//! verified tokens.
//!
//! Remote keys are fetched from the root context only, on the plugin's tick: when there are
//! none yet (retrying every `retry_interval` after a failure), when `cache_duration` has passed,
//! and when a token named a `kid` the current set lacks (at most once per
//! `refetch_unknown_kid_interval`). Until the first set arrives, tokens of the provider fail
//! (fail closed); a failed or unusable answer keeps the last good set.
//!
//! With OpenID Connect discovery the JWKS location is not configured: a fetch first reads the
//! issuer's discovery document (same cluster, same schedule and size bound), and the JWKS it
//! names is fetched at the next tick. The location is kept until a JWKS fetch fails; the retry
//! then reads the document again.
//!
//! A native module ticks on the main thread's plugin instance only; the workers' instances
//! serve the requests. The fetching instance publishes each new JWKS document in shared data
//! ([`RemoteJwks::shared_key`]); a worker adopts it from there ([`RemoteJwks::adopt`]), and
//! tells the fetching instance of an unknown `kid` through a second key
//! ([`RemoteJwks::unknown_kid_key`]). Every Wasm VM ticks and fetches for itself, as before.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use crate::jwt::Claims;
use crate::keys::{self, KeySet};

/// Where a remote JWKS lives and how often to fetch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    /// Envoy cluster the fetch goes through.
    pub cluster: String,
    /// `:authority` of the fetch.
    pub authority: String,
    /// Path (and query) of the fetch.
    pub path: String,
    /// Fetch timeout, ms.
    pub timeout_ms: u64,
    /// Refresh period of a good set, ms.
    pub cache_duration_ms: u64,
    /// Wait after a failed fetch, ms.
    pub retry_interval_ms: u64,
    /// Least time between two fetches caused by unknown `kid`s, ms.
    pub refetch_unknown_kid_ms: u64,
    /// Largest JWKS (and discovery) document read, bytes.
    pub max_bytes: usize,
    /// With OIDC discovery: the issuer whose document names the JWKS (`authority` and `path`
    /// are then the document's).
    pub discovery: Option<String>,
}

/// The path of OpenID Connect discovery documents under an issuer (OIDC Discovery 1.0,
/// section 4).
pub const WELL_KNOWN: &str = "/.well-known/openid-configuration";

/// Splits an `http(s)://host/path` URL into `:authority` and path (with query), refusing what
/// cannot be sent as a request.
pub fn split_url(uri: &str) -> Result<(String, String), &'static str> {
    let rest = uri.strip_prefix("https://").or_else(|| uri.strip_prefix("http://"));
    let rest = rest.ok_or("must be an http:// or https:// URL")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest.get(..i).unwrap_or_default(), rest.get(i..).unwrap_or("/")),
        None => (rest, "/"),
    };
    if authority.is_empty() || !gatewasm::config::is_header_value(authority) || authority.contains(['@', ' '])
    {
        return Err("has no valid host");
    }
    if !gatewasm::config::is_header_value(path) || path.contains(' ') {
        return Err("has an invalid path");
    }
    Ok((authority.to_string(), path.to_string()))
}

/// Where an issuer's discovery document is: its host, and its path with
/// [`WELL_KNOWN`] appended (a trailing `/` of the issuer dropped).
pub fn discovery_url(issuer: &str) -> Result<(String, String), &'static str> {
    let (authority, path) = split_url(issuer)?;
    if path.contains(['?', '#']) {
        return Err("an issuer has no query or fragment");
    }
    Ok((authority, format!("{}{WELL_KNOWN}", path.trim_end_matches('/'))))
}

/// The fields of a discovery document this filter reads.
#[derive(serde::Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

/// The JWKS location named by a discovery document for `issuer`: its `issuer` must be the
/// configured one byte for byte (OIDC Discovery 1.0, section 4.3), its `jwks_uri` an
/// `http(s)` URL.
pub fn parse_discovery(issuer: &str, body: &[u8]) -> Result<(String, String), String> {
    let doc: DiscoveryDocument =
        serde_json::from_slice(body).map_err(|e| format!("discovery document does not parse: {e}"))?;
    if doc.issuer != issuer {
        return Err("discovery document names another issuer".to_string());
    }
    split_url(&doc.jwks_uri).map_err(|e| format!("discovery document's jwks_uri {e}"))
}

/// What happened to a fetch, for logs and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// A new key set is in use.
    Updated {
        /// Keys in the new set.
        keys: usize,
        /// Whether it differs from the previous one.
        changed: bool,
        /// Weak keys in the document, skipped (RSA under 2048 bits, short `oct` secrets).
        weak: usize,
    },
    /// The fetch failed; the previous set (if any) stays.
    Failed(String),
    /// The discovery document named the JWKS; its fetch is due at once.
    Discovered,
    /// The discovery document could not be read or was refused; the previous set (if any)
    /// stays.
    DiscoveryFailed(String),
}

/// The state of a remote key set.
#[derive(Debug, Default)]
pub struct RemoteState {
    /// The current set, once one arrived.
    pub keys: Option<Rc<KeySet>>,
    /// The JWKS document the current set came from (to tell whether a refresh changed it).
    pub document: Vec<u8>,
    /// When the current set arrived, ms.
    pub fetched_at: Option<u64>,
    /// When the last fetch was sent, ms.
    pub attempted_at: Option<u64>,
    /// Whether a fetch is in flight.
    pub in_flight: bool,
    /// A token named a `kid` the set lacks.
    pub unknown_kid_seen: bool,
    /// When the last fetch for an unknown `kid` was sent, ms.
    pub unknown_kid_fetched_at: Option<u64>,
    /// Whether the last fetch failed.
    pub last_failed: bool,
    /// With discovery: the JWKS `:authority` and path the document named, until a JWKS fetch
    /// fails (the next attempt reads the document again).
    pub discovered: Option<(String, String)>,
    /// Whether the fetch in flight is of the discovery document.
    pub discovering: bool,
    /// A discovery document just arrived: the JWKS fetch goes out at the next tick.
    pub jwks_due: bool,
    /// The shared-data version of the document adopted last (instances that do not fetch).
    pub shared_version: Option<u32>,
}

/// What a fetch asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `:authority`.
    pub authority: String,
    /// Path and query.
    pub path: String,
    /// Whether it is the discovery document.
    pub discovery: bool,
}

/// A remote JWKS and its state.
#[derive(Debug)]
pub struct RemoteJwks {
    /// Where and how often.
    pub config: RemoteConfig,
    /// What is known.
    pub state: RefCell<RemoteState>,
    /// The shared-data key of its document: named by where it is fetched from, so every
    /// configuration fetching the same document shares it.
    shared_key: String,
    /// The shared-data key where a worker notes that a token named an unknown `kid`.
    unknown_kid_key: String,
}

impl RemoteJwks {
    /// A key set not fetched yet.
    pub fn new(config: RemoteConfig) -> Self {
        let shared_key = format!("jwt_auth.jwks {} {} {}", config.cluster, config.authority, config.path);
        let unknown_kid_key = format!("{shared_key} unknown_kid");
        Self { config, state: RefCell::new(RemoteState::default()), shared_key, unknown_kid_key }
    }

    /// The shared-data key the fetching instance publishes the current document under.
    pub fn shared_key(&self) -> &str {
        &self.shared_key
    }

    /// The shared-data key a worker sets (non-empty) when a token named a `kid` its set lacks.
    pub fn unknown_kid_key(&self) -> &str {
        &self.unknown_kid_key
    }

    /// Adopts the document another instance published (`version` its shared-data version),
    /// unless this version was adopted already: `None` then, else what parsing it gave.
    pub fn adopt(&self, now: u64, document: &[u8], version: Option<u32>) -> Option<FetchOutcome> {
        if version.is_some() && self.state.borrow().shared_version == version {
            return None;
        }
        let outcome = self.answered(now, Some(200), document, false);
        self.state.borrow_mut().shared_version = version;
        Some(outcome)
    }

    /// Takes the note that a token named an unknown `kid` (a worker's, noted for the fetching
    /// instance): whether there was one.
    pub fn take_unknown_kid(&self) -> bool {
        std::mem::take(&mut self.state.borrow_mut().unknown_kid_seen)
    }

    /// Whether the set has arrived.
    pub fn has_keys(&self) -> bool {
        self.state.borrow().keys.is_some()
    }

    /// Whether a fetch should be sent now (`now` in ms), and whether it is for an unknown kid.
    pub fn due(&self, now: u64) -> Option<bool> {
        let s = self.state.borrow();
        if s.in_flight {
            return None;
        }
        if s.jwks_due {
            return Some(false);
        }
        let since = |t: Option<u64>| t.map_or(u64::MAX, |t| now.saturating_sub(t));
        let c = &self.config;
        if s.keys.is_none() || s.last_failed {
            return (since(s.attempted_at) >= c.retry_interval_ms).then_some(false);
        }
        if s.unknown_kid_seen && since(s.unknown_kid_fetched_at) >= c.refetch_unknown_kid_ms {
            return Some(true);
        }
        (since(s.fetched_at) >= c.cache_duration_ms).then_some(false)
    }

    /// What the next fetch asks for: the discovery document while no JWKS location is known
    /// (with discovery), the JWKS otherwise.
    pub fn target(&self) -> Target {
        let c = &self.config;
        match (&c.discovery, &self.state.borrow().discovered) {
            (Some(issuer), None) => {
                // ok to fall back: the configuration checked the issuer's URL.
                let (authority, path) = discovery_url(issuer).unwrap_or_default();
                Target { authority, path, discovery: true }
            }
            (Some(_), Some((authority, path))) => {
                Target { authority: authority.clone(), path: path.clone(), discovery: false }
            }
            (None, _) => Target { authority: c.authority.clone(), path: c.path.clone(), discovery: false },
        }
    }

    /// Records that a fetch of `target` ([`RemoteJwks::target`]) was sent.
    pub fn sent(&self, now: u64, for_unknown_kid: bool, target: &Target) {
        let mut s = self.state.borrow_mut();
        s.in_flight = true;
        s.discovering = target.discovery;
        s.jwks_due = false;
        s.attempted_at = Some(now);
        if for_unknown_kid {
            s.unknown_kid_seen = false;
            s.unknown_kid_fetched_at = Some(now);
        }
    }

    /// Records that a fetch could not be sent.
    pub fn send_failed(&self, now: u64) {
        let mut s = self.state.borrow_mut();
        s.attempted_at = Some(now);
        s.last_failed = true;
        s.jwks_due = false;
    }

    fn discovery_answered(&self, status: Option<u16>, body: &[u8], truncated: bool) -> FetchOutcome {
        let mut s = self.state.borrow_mut();
        let issuer = self.config.discovery.as_deref().unwrap_or_default();
        let found = match status {
            None => Err("no answer (timeout or connection failure)".to_string()),
            Some(200) if truncated => Err(format!("document larger than {} bytes", self.config.max_bytes)),
            Some(200) => parse_discovery(issuer, body),
            Some(code) => Err(format!("status {code}")),
        };
        match found {
            Ok(at) => {
                s.discovered = Some(at);
                s.jwks_due = true;
                FetchOutcome::Discovered
            }
            Err(why) => {
                s.last_failed = true;
                FetchOutcome::DiscoveryFailed(why)
            }
        }
    }

    /// Takes the answer to a fetch: a good document replaces the set, anything else keeps it.
    pub fn answered(&self, now: u64, status: Option<u16>, body: &[u8], truncated: bool) -> FetchOutcome {
        let discovering = {
            let mut s = self.state.borrow_mut();
            s.in_flight = false;
            std::mem::take(&mut s.discovering)
        };
        if discovering {
            return self.discovery_answered(status, body, truncated);
        }
        let mut s = self.state.borrow_mut();
        let parsed = match status {
            None => Err("no answer (timeout or connection failure)".to_string()),
            Some(200) if truncated => Err(format!("document larger than {} bytes", self.config.max_bytes)),
            Some(200) => std::str::from_utf8(body)
                .map_err(|_| "document is not UTF-8".to_string())
                .and_then(|text| keys::parse_jwks(text, keys::WeakKeys::Skip)),
            Some(code) => Err(format!("status {code}")),
        };
        match parsed {
            Ok(jwks) => {
                let changed = s.document != body;
                let keys = jwks.set.keys.len();
                if changed || s.keys.is_none() {
                    s.keys = Some(Rc::new(jwks.set));
                    s.document = body.to_vec();
                }
                s.fetched_at = Some(now);
                s.last_failed = false;
                FetchOutcome::Updated { keys, changed, weak: jwks.weak }
            }
            Err(why) => {
                s.last_failed = true;
                // The provider may have moved its keys: read the document again first.
                s.discovered = None;
                FetchOutcome::Failed(why)
            }
        }
    }

    /// Notes that a token named `kid` and the current set has no such key.
    pub fn unknown_kid(&self) {
        let mut s = self.state.borrow_mut();
        if s.keys.is_some() {
            s.unknown_kid_seen = true;
        }
    }
}

/// A provider's keys.
#[derive(Debug)]
pub enum KeySource {
    /// From the configuration.
    Local(Rc<KeySet>),
    /// From a JWKS endpoint (boxed: its schedule and shared-data keys are most of the size).
    Remote(Box<RemoteJwks>),
}

impl KeySource {
    /// The keys to verify with now; `None` while a remote set has not arrived.
    pub fn current(&self) -> Option<Rc<KeySet>> {
        match self {
            KeySource::Local(k) => Some(Rc::clone(k)),
            KeySource::Remote(r) => r.state.borrow().keys.clone(),
        }
    }
}

/// A token that verified, kept so it need not be verified again.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// Its claims.
    pub claims: Claims,
    /// Its payload segment as sent (base64url).
    pub payload_b64: String,
}

/// Hashes a token by its last [`TAIL`] bytes (the signature, which no one can choose for a
/// token that verified) and its length, with FNV-1a: a lookup hashes 32 bytes instead of the
/// whole token. The map still compares whole tokens, so two tokens are never confused; only
/// verified tokens are inserted, so colliding entries cannot be planted.
#[derive(Debug, Default, Clone, Copy)]
pub struct TailHasher(u64);

/// Bytes of a token that [`TailHasher`] hashes.
pub const TAIL: usize = 32;

impl std::hash::Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        let tail = bytes.get(bytes.len().saturating_sub(TAIL)..).unwrap_or(bytes);
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in tail.iter().copied().chain((bytes.len() as u64).to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Verified tokens by token text: bounded in entries, oldest out first, entries dropped once
/// `exp` (with the clock skew) has passed.
#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<Rc<str>, Rc<Verified>, std::hash::BuildHasherDefault<TailHasher>>,
    order: VecDeque<Rc<str>>,
    hits: Cell<u64>,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self { capacity, entries: HashMap::default(), order: VecDeque::new(), hits: Cell::new(0) }
    }

    /// The entry for `token`.
    pub fn get(&self, token: &str) -> Option<Rc<Verified>> {
        let hit = self.entries.get(token).cloned();
        if hit.is_some() {
            self.hits.set(self.hits.get() + 1);
        }
        hit
    }

    /// Lookups that found their token.
    pub fn hits(&self) -> u64 {
        self.hits.get()
    }

    /// Forgets `token`.
    pub fn remove(&mut self, token: &str) {
        self.entries.remove(token);
    }

    /// Keeps `verified` for `token`, evicting the oldest entries beyond the capacity.
    pub fn insert(&mut self, token: &str, verified: Rc<Verified>) {
        if self.capacity == 0 {
            return;
        }
        // `order` may hold keys already removed (expired); it is bounded all the same.
        while self.entries.len() >= self.capacity || self.order.len() >= self.capacity.saturating_mul(2) {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        let key: Rc<str> = Rc::from(token);
        self.order.push_back(Rc::clone(&key));
        self.entries.insert(key, verified);
    }

    /// Forgets everything (the keys changed).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    /// Number of tokens kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn remote() -> RemoteJwks {
        RemoteJwks::new(RemoteConfig {
            cluster: "idp".into(),
            authority: "idp".into(),
            path: "/jwks".into(),
            timeout_ms: 1000,
            cache_duration_ms: 600_000,
            retry_interval_ms: 1000,
            refetch_unknown_kid_ms: 30_000,
            max_bytes: 65536,
            discovery: None,
        })
    }

    fn discovering() -> RemoteJwks {
        let mut r = remote();
        r.config.discovery = Some("https://idp.test/realms/a".into());
        r
    }

    /// Sends the fetch that is due at `now` and answers it.
    fn fetch(r: &RemoteJwks, now: u64, status: Option<u16>, body: &[u8]) -> (Target, FetchOutcome) {
        let target = r.target();
        let for_kid = r.due(now).unwrap();
        r.sent(now, for_kid, &target);
        let outcome = r.answered(now + 1, status, body, false);
        (target, outcome)
    }

    const JWKS: &[u8] =
        br#"{"keys":[{"kty":"oct","kid":"a","k":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#;

    #[test]
    fn fetch_schedule() {
        let r = remote();
        assert_eq!(r.due(0), Some(false), "nothing yet: fetch at once");
        r.sent(0, false, &r.target());
        assert_eq!(r.due(10), None, "one fetch at a time");
        assert!(matches!(r.answered(20, None, b"", false), FetchOutcome::Failed(_)));
        assert!(r.state.borrow().keys.is_none());
        assert_eq!(r.due(500), None, "retry waits");
        assert_eq!(r.due(1020), Some(false));
        r.sent(1020, false, &r.target());
        assert_eq!(
            r.answered(1030, Some(200), JWKS, false),
            FetchOutcome::Updated { keys: 1, changed: true, weak: 0 }
        );
        assert_eq!(r.due(2000), None, "fresh");
        r.unknown_kid();
        assert_eq!(r.due(2000), Some(true), "unknown kid: refetch now");
        r.sent(2000, true, &r.target());
        assert_eq!(
            r.answered(2010, Some(200), JWKS, false),
            FetchOutcome::Updated { keys: 1, changed: false, weak: 0 }
        );
        r.unknown_kid();
        assert_eq!(r.due(3000), None, "rate-limited");
        assert_eq!(r.due(32_000), Some(true));
        assert_eq!(r.due(601_030), Some(true));
    }

    #[test]
    fn failures_keep_the_last_good_set() {
        let r = remote();
        r.sent(0, false, &r.target());
        r.answered(1, Some(200), JWKS, false);
        for (status, body, truncated) in [
            (Some(503), &b"down"[..], false),
            (Some(200), b"{}", false),
            (Some(200), JWKS, true),
            (None, b"", false),
        ] {
            r.sent(2, false, &r.target());
            assert!(matches!(r.answered(3, status, body, truncated), FetchOutcome::Failed(_)));
            assert!(r.state.borrow().keys.as_ref().unwrap().has_kid("a"));
        }
        assert_eq!(r.due(500), None);
        assert_eq!(r.due(1003), Some(false), "a failure is retried after retry_interval");
    }

    #[test]
    fn discovery_names_the_jwks_and_is_read_again_after_a_failure() {
        let r = discovering();
        let doc = |iss: &str, uri: &str| serde_json::json!({"issuer": iss, "jwks_uri": uri}).to_string();
        let good = doc("https://idp.test/realms/a", "https://keys.idp.test/realms/a/certs");
        let (t, o) = fetch(&r, 0, Some(200), good.as_bytes());
        assert_eq!(
            (t.authority.as_str(), t.path.as_str(), t.discovery),
            ("idp.test", "/realms/a/.well-known/openid-configuration", true)
        );
        assert_eq!(o, FetchOutcome::Discovered);
        assert_eq!(r.due(2), Some(false), "the JWKS fetch follows at once");
        let (t, o) = fetch(&r, 2, Some(200), JWKS);
        assert_eq!(
            (t.authority.as_str(), t.path.as_str(), t.discovery),
            ("keys.idp.test", "/realms/a/certs", false)
        );
        assert!(matches!(o, FetchOutcome::Updated { keys: 1, .. }));
        assert_eq!(r.due(10), None, "fresh");
        // A refresh goes to the known JWKS; a failed one sends the next attempt to the document.
        assert!(r.target().path.ends_with("/certs"));
        let (_, o) = fetch(&r, 600_010, Some(500), b"");
        assert!(matches!(o, FetchOutcome::Failed(_)));
        assert!(r.target().discovery);
        // Refused documents keep the keys: another issuer, a trailing slash, a huge one, junk.
        for (status, body, truncated) in [
            (Some(200), doc("https://evil.test/realms/a", "https://evil.test/certs"), false),
            (Some(200), doc("https://idp.test/realms/a/", "https://idp.test/certs"), false),
            (Some(200), doc("https://idp.test/realms/a", "ftp://idp.test/certs"), false),
            (Some(200), r#"{"issuer": "https://idp.test/realms/a"}"#.to_string(), false),
            (Some(200), r#"{"issuer": 1, "jwks_uri": "https://idp.test/certs"}"#.to_string(), false),
            (Some(200), good.clone(), true),
            (Some(404), good.clone(), false),
            (None, String::new(), false),
        ] {
            let t = r.target();
            assert!(t.discovery);
            r.sent(700_000, false, &t);
            assert!(
                matches!(
                    r.answered(700_001, status, body.as_bytes(), truncated),
                    FetchOutcome::DiscoveryFailed(_)
                ),
                "{body}"
            );
            assert!(r.state.borrow().keys.as_ref().unwrap().has_kid("a"), "keys kept");
            assert_eq!(r.due(700_002), None, "retried after retry_interval");
        }
        // Recovery.
        let (_, o) = fetch(&r, 800_000, Some(200), good.as_bytes());
        assert_eq!(o, FetchOutcome::Discovered);
        let (t, o) = fetch(&r, 800_002, Some(200), JWKS);
        assert!(!t.discovery);
        assert!(matches!(o, FetchOutcome::Updated { .. }));
    }

    #[test]
    fn discovery_urls() {
        assert_eq!(discovery_url("https://idp.test").unwrap(), ("idp.test".into(), WELL_KNOWN.to_string()));
        assert_eq!(discovery_url("https://idp.test/").unwrap().1, WELL_KNOWN);
        assert_eq!(
            discovery_url("http://idp.test:8080/t/x/").unwrap(),
            ("idp.test:8080".into(), format!("/t/x{WELL_KNOWN}"))
        );
        assert!(discovery_url("https://idp.test/?a=1").is_err());
        assert!(discovery_url("https://idp.test/#a").is_err());
        assert!(discovery_url("idp.test").is_err());
        assert!(discovery_url("https://user@idp.test").is_err());
    }

    #[test]
    fn a_published_document_is_adopted_once_per_version() {
        let r = remote();
        assert!(!r.has_keys());
        assert!(matches!(r.adopt(5, JWKS, Some(1)), Some(FetchOutcome::Updated { changed: true, .. })));
        assert!(r.has_keys());
        assert_eq!(r.adopt(6, JWKS, Some(1)), None, "the same version is not parsed again");
        assert_eq!(
            r.adopt(7, JWKS, Some(2)),
            Some(FetchOutcome::Updated { keys: 1, changed: false, weak: 0 })
        );
        assert!(matches!(r.adopt(8, b"{}", Some(3)), Some(FetchOutcome::Failed(_))));
        assert!(r.has_keys(), "an unusable document keeps the set");
        r.unknown_kid();
        assert!(r.take_unknown_kid());
        assert!(!r.take_unknown_kid(), "taken once");
        assert_ne!(r.shared_key(), r.unknown_kid_key());
    }

    fn v() -> Rc<Verified> {
        Rc::new(Verified { claims: Claims::default(), payload_b64: String::new() })
    }

    #[test]
    fn tail_hash_tells_tokens_apart_by_their_ends_and_lengths() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let h = |s: &str| BuildHasherDefault::<TailHasher>::default().hash_one(s);
        let a = format!("{}{}", "x".repeat(100), "signature-a-0123456789abcdef0123");
        let b = format!("{}{}", "y".repeat(100), "signature-a-0123456789abcdef0123");
        assert_eq!(h(&a), h(&b), "only the tail and the length count");
        assert_ne!(h(&a), h(&a.replace("sig", "SIG")));
        assert_ne!(h("ab"), h("abc"));
        let mut c = TokenCache::new(4);
        c.insert(&a, v());
        assert!(c.get(&a).is_some());
        assert!(c.get(&b).is_none(), "same hash, different token: no hit");
    }

    #[test]
    fn token_cache_is_bounded() {
        let mut c = TokenCache::new(2);
        c.insert("a", v());
        c.insert("b", v());
        c.insert("c", v());
        assert_eq!(c.len(), 2);
        assert!(c.get("a").is_none());
        assert!(c.get("b").is_some() && c.get("c").is_some());
        for i in 0..100 {
            c.insert(&i.to_string(), v());
            c.remove(&i.to_string());
        }
        assert!(c.order.len() <= 4);
        c.clear();
        assert!(c.is_empty());
        let mut off = TokenCache::new(0);
        off.insert("a", v());
        assert!(off.get("a").is_none());
    }
}
