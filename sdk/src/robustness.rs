//! Robustness: every parser that sees client or host bytes, fed many random inputs, must return
//! (never panic) and keep its invariants. Deterministic (fixed seeds), so a failure reproduces;
//! runs natively and compiled to wasm32.

use crate::{config, host, http, matcher, metrics};

/// xorshift64*: small, deterministic, good enough to spray inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Bytes biased toward the characters parsers split on.
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        const SPECIAL: &[u8] = b"%?#&=;:[]. \t\"+/\r\n\0\xff\xc3\xa9";
        let len = self.below(max + 1);
        (0..len)
            .map(|_| {
                if self.below(3) == 0 {
                    SPECIAL[self.below(SPECIAL.len())]
                } else {
                    (self.next() & 0xff) as u8
                }
            })
            .collect()
    }

    fn text(&mut self, max: usize) -> String {
        String::from_utf8_lossy(&self.bytes(max)).into_owned()
    }
}

const ROUNDS: usize = 3000;

#[test]
fn request_parsers_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..ROUNDS {
        let s = rng.text(64);
        let (path, query) = http::split_path(&s);
        assert!(path.len() <= s.len());
        if let Some(q) = query {
            let _ = http::query_params(q).count();
            let _ = http::query_param(q, "token");
            // The in-place lookup finds what the decoding one finds.
            for (name, value) in http::query_params(q) {
                let raw = http::raw_query_param(q, &name);
                assert!(raw.is_some(), "{q:?} {name:?}");
                let first = http::query_param(q, &name);
                assert_eq!(raw.map(http::decode_query_component), first, "{q:?} {name:?}");
                if !value.contains('\u{fffd}') {
                    let raw = raw.unwrap_or_default();
                    assert_eq!(http::query_component_eq(raw, &value), first.as_deref() == Some(&*value));
                }
            }
        }
        let decoded = http::decode_query_component(&s);
        if !decoded.contains('\u{fffd}') {
            assert!(http::query_component_eq(&s, &decoded), "{s:?}");
            assert!(http::query_component_starts_with(&s, &decoded), "{s:?}");
        }
        let _ = http::cookies(&s).count();
        let _ = http::cookie(&s, "id_token");
        if let Some(host) = http::normalize_host(&s) {
            assert!(!host.bytes().any(|b| b.is_ascii_uppercase()));
        }
        let _ = http::decode_query_component(&s);
    }
}

#[test]
fn label_values_are_always_safe_and_bounded() {
    let mut rng = Rng(42);
    for _ in 0..ROUNDS {
        let s = rng.text(300);
        let v = metrics::sanitize_label_value(&s);
        assert!(!v.is_empty() && v.len() <= metrics::MAX_LABEL_VALUE, "{v:?}");
        assert!(!v.contains(';') && !v.contains('=') && !v.contains(':'), "{v:?}");
        assert!(v.is_ascii());
    }
}

#[test]
fn host_maps_never_panic_on_malformed_bytes() {
    let mut rng = Rng(7);
    for _ in 0..ROUNDS {
        let mut bytes = rng.bytes(48);
        // Half the time, start from a well-formed map and corrupt it.
        if rng.below(2) == 0 {
            let pairs = [("a", "b"), (":path", "/x")];
            bytes = host::serialize_pairs(&pairs);
            let at = rng.below(bytes.len());
            if let Some(b) = bytes.get_mut(at) {
                *b = (rng.next() & 0xff) as u8;
            }
        }
        if let Some(pairs) = host::deserialize_pairs(&bytes) {
            let total: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
            assert!(total <= bytes.len());
            assert_eq!(host::PairsIter::new(&bytes).count(), pairs.len());
            assert!(host::is_well_formed(&bytes));
        }
        let snapshot = crate::HeaderSnapshot::from_serialized(bytes.clone());
        let _ = snapshot.get(":path");
        assert!(snapshot.len() <= bytes.len());
    }
}

#[test]
fn config_parser_never_panics() {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Conf {
        #[serde(default)]
        name: String,
        #[serde(default)]
        items: Vec<u32>,
    }
    impl config::Validate for Conf {}
    let mut rng = Rng(11);
    let seeds: [&[u8]; 4] = [br#"{"name": "x", "items": [1, 2]}"#, b"{}", b"[]", br#"{"items": [{"a": 1}]}"#];
    for i in 0..ROUNDS {
        let mut bytes = seeds[i % seeds.len()].to_vec();
        let cuts = rng.below(4);
        for _ in 0..cuts {
            if bytes.is_empty() {
                break;
            }
            let at = rng.below(bytes.len());
            bytes[at] = rng.bytes(1).first().copied().unwrap_or(b'"');
        }
        match config::parse::<Conf>(&bytes) {
            Ok(_) => {}
            Err(e) => assert!(!e.errors().is_empty()),
        }
    }
}

#[test]
fn matcher_parsers_never_panic_and_agree_with_matching() {
    let mut rng = Rng(23);
    for _ in 0..ROUNDS {
        let s = rng.text(40);
        if let Ok(p) = matcher::HostPattern::parse(&s) {
            // Stored lower-case, as the request's host is normalized.
            if let matcher::HostPattern::Exact(h) | matcher::HostPattern::Subdomain(h) = &p {
                assert!(!h.bytes().any(|b| b.is_ascii_uppercase()) && !h.is_empty(), "{s:?}");
                assert_eq!(p.matches(h), matches!(p, matcher::HostPattern::Exact(_)), "{s:?}");
            }
        }
        let t = rng.text(40);
        let (exact, prefix, regex) = match rng.below(4) {
            0 => (Some(s.as_str()), None, None),
            1 => (None, Some(s.as_str()), None),
            2 => (None, None, Some(s.as_str())),
            _ => (Some(s.as_str()), Some(t.as_str()), None),
        };
        match matcher::PathMatch::parse(exact, prefix, regex) {
            Ok(m) => {
                let _ = m.matches(&t);
                if exact.is_some() {
                    assert!(m.matches(&s));
                }
            }
            Err(matcher::PathError::Regex(msg)) => assert!(!msg.contains('\n')),
            Err(_) => {}
        }
        if let Some(m) = matcher::parse_method(&s) {
            assert!(!m.bytes().any(|b| b.is_ascii_lowercase()));
        }
        let template = format!("/{}", s.replace(['?', '#'], "/"));
        if let Ok(p) = matcher::PathTemplate::parse(&template) {
            let _ = p.matches(&t);
            if !template.contains(['*', '{']) {
                assert!(p.matches(&template), "a template without operators matches itself: {template:?}");
            }
        }
    }
}
