//! Thousands of corrupted tokens and request parts through the verifier and the extractor:
//! nothing panics (a panic would abort the VM and fail every later request on its worker), and
//! no altered token verifies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{now, Signer};
use gatewasm::{HeaderSnapshot, Request};
use jwt_auth::config;
use jwt_auth::extractor::{self, Location};
use serde_json::json;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const ALPHABET: &[u8] = b"AZaz09-_.=+/%\" \0\xff{}";

fn mutate(rng: &mut Rng, token: &str) -> Vec<u8> {
    let mut t = token.as_bytes().to_vec();
    for _ in 0..=rng.below(3) {
        match rng.below(5) {
            0 if !t.is_empty() => {
                let i = rng.below(t.len());
                t[i] = ALPHABET[rng.below(ALPHABET.len())];
            }
            1 if !t.is_empty() => {
                let i = rng.below(t.len());
                t.truncate(i);
            }
            2 => {
                let i = rng.below(t.len() + 1);
                t.insert(i, ALPHABET[rng.below(ALPHABET.len())]);
            }
            3 if !t.is_empty() => {
                let i = rng.below(t.len());
                t.remove(i);
            }
            _ => {
                let i = rng.below(t.len() + 1);
                t.splice(i..i, b".eyJ".iter().copied());
            }
        }
    }
    t
}

#[test]
fn corrupted_tokens_never_verify_and_never_panic() {
    let signers = [Signer::hmac(), Signer::rsa(), Signer::p256(), Signer::ed25519()];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for s in &signers {
        let cfg = json!({"providers": {"p": {"local_jwks": s.jwks("k"), "cache_size": 0}}, "rules": [{"requires": {"provider_name": "p"}}]});
        let c = config::parse(cfg.to_string().as_bytes()).unwrap();
        let p = &c.providers[0];
        let token = s.token("k", &json!({"sub": "u", "exp": now() + 600, "n": [1, {"a": null}]}));
        assert!(p.verify(&token, now(), None, None).is_ok());
        for _ in 0..(if matches!(s, Signer::Rsa(_)) { 400 } else { 1500 }) {
            let bytes = mutate(&mut rng, &token);
            let text = String::from_utf8_lossy(&bytes);
            if text == token {
                continue;
            }
            if let Ok(v) = p.verify(&text, now(), None, None) {
                // Only a change that decodes to the same bytes could pass: never the case with
                // canonical base64url, so any success is a failure of the verifier.
                panic!("altered token verified: {text} -> {v:?}");
            }
        }
    }
}

#[test]
fn corrupted_request_parts_never_panic() {
    let locations = vec![
        Location::Header { name: "authorization".into(), prefix: Some("Bearer ".into()) },
        Location::Header { name: "x-jwt".into(), prefix: None },
        Location::Cookie("id_token".into()),
        Location::Param("token".into()),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let seeds = ["Bearer a.b.c", "id_token=a.b.c; x=1", "token=a%2Eb.c&x=%zz&&=", "é bearer  , ,"];
    for _ in 0..5000 {
        let pick = |rng: &mut Rng| {
            let seed = seeds[rng.below(seeds.len())];
            String::from_utf8_lossy(&mutate(rng, seed)).into_owned()
        };
        let (authorization, cookie) = (pick(&mut rng), pick(&mut rng));
        let path = format!("/p?{}", pick(&mut rng));
        let req = Request::from_headers(HeaderSnapshot::from_strs(&[
            (":path", &path),
            ("authorization", &authorization),
            ("x-jwt", &pick(&mut rng)),
            ("cookie", &cookie),
        ]));
        for f in extractor::extract(&locations, &req) {
            assert!(!f.token.is_empty());
        }
        let _ = extractor::without_cookie(&cookie, "id_token");
        let _ = extractor::without_param(&path, "token");
        let _ = extractor::after_prefix(&authorization, Some("Bearer "));
    }
}
