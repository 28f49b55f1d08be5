//! A JWS compact token taken apart: header, payload claims and signature, each checked for the
//! shape RFC 7515/7519 require before any key is touched.
//!
//! Parsing never trusts the header beyond `alg`, `kid` and `crit`: `jku`, `x5u`, `jwk` and `x5c`
//! are ignored (keys come only from the configuration), `alg: none` in any letter case is not an
//! algorithm here, and a `crit` header naming anything is refused because this verifier
//! understands no extension (RFC 7515 section 4.1.11).

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::status::Status;

/// A signature algorithm this filter verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// HMAC with SHA-256.
    HS256,
    /// HMAC with SHA-384.
    HS384,
    /// HMAC with SHA-512.
    HS512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519 (RFC 8037).
    EdDSA,
}

/// Every algorithm, in the order they are listed in docs and errors.
pub const ALL_ALGS: [Alg; 12] = [
    Alg::HS256,
    Alg::HS384,
    Alg::HS512,
    Alg::RS256,
    Alg::RS384,
    Alg::RS512,
    Alg::PS256,
    Alg::PS384,
    Alg::PS512,
    Alg::ES256,
    Alg::ES384,
    Alg::EdDSA,
];

/// The kind of key an algorithm needs: a key of another kind is never used for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A shared HMAC secret.
    Hmac,
    /// An RSA public key.
    Rsa,
    /// A P-256 public key.
    P256,
    /// A P-384 public key.
    P384,
    /// An Ed25519 public key.
    Ed25519,
}

impl Alg {
    /// The algorithm named exactly `name` (JWS names are case-sensitive, so `none`, `None` and
    /// `NONE` are all unknown, as is every other spelling).
    pub fn parse(name: &str) -> Option<Alg> {
        ALL_ALGS.iter().copied().find(|a| a.name() == name)
    }

    /// The JWS name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    /// The key kind this algorithm verifies with.
    pub fn key_kind(self) -> KeyKind {
        match self {
            Alg::HS256 | Alg::HS384 | Alg::HS512 => KeyKind::Hmac,
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => KeyKind::Rsa,
            Alg::ES256 => KeyKind::P256,
            Alg::ES384 => KeyKind::P384,
            Alg::EdDSA => KeyKind::Ed25519,
        }
    }
}

/// A token split and decoded, not yet verified.
#[derive(Debug, Clone)]
pub struct Jwt<'t> {
    /// The algorithm from the header.
    pub alg: Alg,
    /// The `kid` header, when present.
    pub kid: Option<String>,
    /// `header.payload` as sent: the bytes the signature covers.
    pub signed: &'t str,
    /// The payload segment as sent (base64url), for `forward_payload_header`.
    pub payload_b64: &'t str,
    /// The decoded signature.
    pub signature: Vec<u8>,
    /// The payload's claims.
    pub claims: Claims,
}

/// The registered claims this filter checks, and every claim for outputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims {
    /// `iss`.
    pub iss: Option<String>,
    /// `aud`, a string or a list of strings.
    pub aud: Vec<String>,
    /// `exp`, seconds since the epoch.
    pub exp: Option<u64>,
    /// `nbf`, seconds since the epoch.
    pub nbf: Option<u64>,
    /// `iat`, seconds since the epoch.
    pub iat: Option<u64>,
    /// Every claim, for `claim_to_headers`.
    pub all: Map<String, Value>,
}

impl Claims {
    /// The claim at a dotted path (`realm_access.role`): the whole name first (claim names may
    /// contain dots), then nested objects.
    pub fn get(&self, path: &str) -> Option<&Value> {
        if let Some(v) = self.all.get(path) {
            return Some(v);
        }
        let mut parts = path.split('.');
        let mut cur = self.all.get(parts.next()?)?;
        for part in parts {
            cur = cur.as_object()?.get(part)?;
        }
        Some(cur)
    }
}

/// Splits and decodes a compact JWS, checking the header and the types of registered claims.
/// Errors name what is wrong in Envoy's words (see [`Status`]).
pub fn parse(token: &str) -> Result<Jwt<'_>, Status> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Status::BadFormat);
    };
    // Envoy splits skipping empty sections, so a token with one is not "three sections" there.
    if header_b64.is_empty() || payload_b64.is_empty() || sig_b64.is_empty() {
        return Err(Status::BadFormat);
    }
    let signed_len = header_b64.len() + 1 + payload_b64.len();
    let signed = token.get(..signed_len).ok_or(Status::BadFormat)?;

    let header = URL_SAFE_NO_PAD.decode(header_b64).map_err(|_| Status::HeaderBadBase64)?;
    let header = strict_object(&header).ok_or(Status::HeaderBadJson)?;
    let alg = match header.get("alg") {
        Some(Value::String(name)) => Alg::parse(name).ok_or(Status::HeaderNotImplementedAlg)?,
        _ => return Err(Status::HeaderBadAlg),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Status::HeaderBadKid),
    };
    if header.contains_key("crit") {
        // No extension is understood, so any `crit` (even an empty or malformed one, which RFC
        // 7515 forbids) makes the token unverifiable.
        return Err(Status::HeaderUnknownCrit);
    }

    let payload = URL_SAFE_NO_PAD.decode(payload_b64).map_err(|_| Status::PayloadBadBase64)?;
    let all = strict_object(&payload).ok_or(Status::PayloadBadJson)?;
    let claims = claims(all)?;
    let signature = URL_SAFE_NO_PAD.decode(sig_b64).map_err(|_| Status::SignatureBadBase64)?;
    Ok(Jwt { alg, kid, signed, payload_b64, signature, claims })
}

/// Deepest nesting of JSON objects and lists accepted in a header or payload, the top-level
/// object counting as one: Envoy 1.40's parser accepts 100 levels and refuses 101.
pub const MAX_JSON_DEPTH: usize = 100;

/// A JSON object parsed strictly: `None` when the text is not one object, when any object in it
/// names a member twice (RFC 8725 section 3.10 leaves the choice; another parser upstream could
/// read the other duplicate, and Envoy refuses such a token), or when it nests deeper than
/// [`MAX_JSON_DEPTH`].
pub fn strict_object(json: &[u8]) -> Option<Map<String, Value>> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let value = Strict { depth: 1 }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    match value {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Builds a [`Value`] like serde_json's own, refusing duplicate member names and deep nesting.
struct Strict {
    /// The nesting level of the value being read (the top level is 1).
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("not a finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.depth > MAX_JSON_DEPTH {
            return Err(de::Error::custom("nested too deep"));
        }
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Strict { depth: self.depth + 1 })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if self.depth > MAX_JSON_DEPTH {
            return Err(de::Error::custom("nested too deep"));
        }
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let value = map.next_value_seed(Strict { depth: self.depth + 1 })?;
            if members.insert(name, value).is_some() {
                return Err(de::Error::custom("duplicate member name"));
            }
        }
        Ok(Value::Object(members))
    }
}

fn claims(all: Map<String, Value>) -> Result<Claims, Status> {
    let iss = match all.get("iss") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(Status::PayloadIssNotString),
    };
    let aud = match all.get("aud") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or(Status::PayloadAudNotString))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(Status::PayloadAudNotString),
    };
    let exp = numeric_date(&all, "exp", Status::PayloadExpNotNumber)?;
    let nbf = numeric_date(&all, "nbf", Status::PayloadNbfNotNumber)?;
    let iat = numeric_date(&all, "iat", Status::PayloadIatNotNumber)?;
    Ok(Claims { iss, aud, exp, nbf, iat, all })
}

/// A NumericDate (RFC 7519 section 2): a JSON number of seconds, fractions truncated. Strings,
/// negative numbers and anything else are refused.
fn numeric_date(all: &Map<String, Value>, name: &str, err: Status) -> Result<Option<u64>, Status> {
    match all.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                return Ok(Some(u));
            }
            match n.as_f64() {
                // Truncation towards zero of a finite, non-negative value below 2^64 is exact
                // enough for seconds.
                Some(f) if (0.0..1.8e19).contains(&f) => Ok(Some(f as u64)),
                _ => Err(err),
            }
        }
        Some(_) => Err(err),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.{}", b64(header), b64(payload), b64("sig"))
    }

    #[test]
    fn algorithm_names_are_exact() {
        for alg in ALL_ALGS {
            assert_eq!(Alg::parse(alg.name()), Some(alg));
        }
        for bad in ["none", "None", "NONE", "nOnE", "hs256", "Rs256", "ES512", "", "RS256 "] {
            assert_eq!(Alg::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn none_in_any_case_is_refused() {
        for none in ["none", "None", "NONE", "nONE"] {
            let t = format!("{}.{}.c2ln", b64(&format!(r#"{{"alg":"{none}"}}"#)), b64("{}"));
            assert_eq!(parse(&t).unwrap_err(), Status::HeaderNotImplementedAlg, "{none}");
            // Unsigned, as `none` tokens are sent: an empty section is no JWS at all, as in Envoy.
            let unsigned = format!("{}.{}.", b64(&format!(r#"{{"alg":"{none}"}}"#)), b64("{}"));
            assert_eq!(parse(&unsigned).unwrap_err(), Status::BadFormat, "{none}");
        }
    }

    #[test]
    fn shape_errors() {
        assert_eq!(parse("abc").unwrap_err(), Status::BadFormat);
        assert_eq!(parse("a.b").unwrap_err(), Status::BadFormat);
        assert_eq!(parse("a.b.c.d").unwrap_err(), Status::BadFormat);
        assert_eq!(parse("!!.b.c").unwrap_err(), Status::HeaderBadBase64);
        assert_eq!(parse(&format!("{}.b.c", b64("not json"))).unwrap_err(), Status::HeaderBadJson);
        assert_eq!(parse(&token(r#"{"typ":"JWT"}"#, "{}")).unwrap_err(), Status::HeaderBadAlg);
        assert_eq!(parse(&token(r#"{"alg":256}"#, "{}")).unwrap_err(), Status::HeaderBadAlg);
        assert_eq!(parse(&token(r#"{"alg":"HS256","kid":1}"#, "{}")).unwrap_err(), Status::HeaderBadKid);
        let t = format!("{}.{}.%%", b64(r#"{"alg":"HS256"}"#), b64("{}"));
        assert_eq!(parse(&t).unwrap_err(), Status::SignatureBadBase64);
        let t = format!("{}.***.{}", b64(r#"{"alg":"HS256"}"#), b64("s"));
        assert_eq!(parse(&t).unwrap_err(), Status::PayloadBadBase64);
        assert_eq!(parse(&token(r#"{"alg":"HS256"}"#, "[1]")).unwrap_err(), Status::PayloadBadJson);
        // Padding is not base64url as JWS uses it.
        let t = format!("{}=.{}.{}", b64(r#"{"alg":"HS256"}"#), b64("{}"), b64("s"));
        assert!(parse(&t).is_err());
    }

    #[test]
    fn duplicate_member_names_are_refused_anywhere() {
        let h = r#"{"alg":"HS256"}"#;
        for payload in [
            r#"{"sub":"alice","sub":"admin"}"#,
            r#"{"sub":"alice","org":{"role":"user","role":"admin"}}"#,
            r#"{"sub":"alice","l":[{"a":1,"a":1}]}"#,
        ] {
            assert_eq!(parse(&token(h, payload)).unwrap_err(), Status::PayloadBadJson, "{payload}");
        }
        // The header too: another parser could read the first `alg`.
        for header in [r#"{"alg":"none","alg":"HS256"}"#, r#"{"alg":"HS256","kid":"a","kid":"a"}"#] {
            assert_eq!(parse(&token(header, "{}")).unwrap_err(), Status::HeaderBadJson, "{header}");
        }
        // Equal names in different objects are not duplicates.
        assert!(parse(&token(h, r#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}"#)).is_ok());
    }

    #[test]
    fn nesting_is_bounded_as_envoy_bounds_it() {
        let h = r#"{"alg":"HS256"}"#;
        // `{"d":` then `levels - 1` lists: Envoy 1.40 accepts 100 levels and refuses 101.
        let nested =
            |levels: usize| format!(r#"{{"d":{}1{}}}"#, "[".repeat(levels - 1), "]".repeat(levels - 1));
        assert!(parse(&token(h, &nested(MAX_JSON_DEPTH))).is_ok());
        assert_eq!(parse(&token(h, &nested(MAX_JSON_DEPTH + 1))).unwrap_err(), Status::PayloadBadJson);
        assert_eq!(parse(&token(h, &nested(5000))).unwrap_err(), Status::PayloadBadJson);
        let objects = |levels: usize| format!("{}1{}", r#"{"a":"#.repeat(levels), "}".repeat(levels));
        assert!(parse(&token(h, &objects(MAX_JSON_DEPTH))).is_ok());
        assert_eq!(parse(&token(h, &objects(MAX_JSON_DEPTH + 1))).unwrap_err(), Status::PayloadBadJson);
        let deep_header = format!(r#"{{"alg":"HS256","x":{}1{}}}"#, "[".repeat(100), "]".repeat(100));
        assert_eq!(parse(&token(&deep_header, "{}")).unwrap_err(), Status::HeaderBadJson);
    }

    #[test]
    fn strict_json_is_still_json() {
        let m = strict_object(
            br#" {"s":"x\u00e9","n":-0,"f":1.5,"u":18446744073709551615,"i":-3,"b":true,"z":null} "#,
        )
        .unwrap();
        let plain: Map<String, Value> = serde_json::from_slice(
            br#"{"s":"x\u00e9","n":-0,"f":1.5,"u":18446744073709551615,"i":-3,"b":true,"z":null}"#,
        )
        .unwrap();
        assert_eq!(m, plain);
        for bad in [&b"[1]"[..], b"{} x", b"{\"a\":1e999}", b"", b"{\"a\":}"] {
            assert!(strict_object(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn empty_sections_and_padding_are_not_a_jws() {
        // Lengths that base64 would pad: 22, 2 and 5 bytes.
        let (h, p, s) = (b64(r#"{"alg":"HS256","ab":1}"#), b64("{}"), b64("sigs!"));
        assert!(parse(&format!("{h}.{p}.{s}")).is_ok());
        // Envoy skips empty sections and reads these as `h.p.s`; here a token has one text.
        for odd in [
            format!("{h}..{p}.{s}"),
            format!("{h}.{p}..{s}"),
            format!("{h}.{p}.{s}."),
            format!(".{h}.{p}.{s}"),
        ] {
            assert_eq!(parse(&odd).unwrap_err(), Status::BadFormat, "{odd}");
        }
        // Padding is not base64url as JWS uses it (RFC 7515 section 2).
        let pad = |x: &str| {
            assert_ne!(x.len() % 4, 0);
            format!("{x}{}", "=".repeat((4 - x.len() % 4) % 4))
        };
        assert_eq!(parse(&format!("{}.{p}.{s}", pad(&h))).unwrap_err(), Status::HeaderBadBase64);
        assert_eq!(parse(&format!("{h}.{}.{s}", pad(&p))).unwrap_err(), Status::PayloadBadBase64);
        assert_eq!(parse(&format!("{h}.{p}.{}", pad(&s))).unwrap_err(), Status::SignatureBadBase64);
    }

    #[test]
    fn crit_is_refused_whatever_it_names() {
        for crit in [r#"["exp"]"#, r#"["b64"]"#, "[]", r#""x""#] {
            let t = token(&format!(r#"{{"alg":"HS256","crit":{crit}}}"#), "{}");
            assert_eq!(parse(&t).unwrap_err(), Status::HeaderUnknownCrit, "{crit}");
        }
    }

    #[test]
    fn registered_claims_must_have_their_types() {
        let h = r#"{"alg":"HS256","kid":"k1","jku":"https://evil.example/jwks","jwk":{"kty":"oct"}}"#;
        let t = token(h, r#"{"iss":"i","aud":["a","b"],"exp":10,"nbf":5.9,"iat":1}"#);
        let jwt = parse(&t).unwrap();
        assert_eq!(jwt.alg, Alg::HS256);
        assert_eq!(jwt.kid.as_deref(), Some("k1"));
        assert_eq!(jwt.claims.iss.as_deref(), Some("i"));
        assert_eq!(jwt.claims.aud, ["a", "b"]);
        assert_eq!((jwt.claims.exp, jwt.claims.nbf, jwt.claims.iat), (Some(10), Some(5), Some(1)));
        assert_eq!(jwt.signature, b"sig");
        let h = r#"{"alg":"HS256"}"#;
        assert_eq!(parse(&token(h, r#"{"exp":"10"}"#)).unwrap_err(), Status::PayloadExpNotNumber);
        assert_eq!(parse(&token(h, r#"{"exp":-1}"#)).unwrap_err(), Status::PayloadExpNotNumber);
        assert_eq!(parse(&token(h, r#"{"nbf":true}"#)).unwrap_err(), Status::PayloadNbfNotNumber);
        assert_eq!(parse(&token(h, r#"{"iat":null}"#)).unwrap_err(), Status::PayloadIatNotNumber);
        assert_eq!(parse(&token(h, r#"{"iss":1}"#)).unwrap_err(), Status::PayloadIssNotString);
        assert_eq!(parse(&token(h, r#"{"aud":[1]}"#)).unwrap_err(), Status::PayloadAudNotString);
        assert_eq!(parse(&token(h, r#"{"aud":5}"#)).unwrap_err(), Status::PayloadAudNotString);
    }

    #[test]
    fn dotted_claim_paths() {
        let t = token(
            r#"{"alg":"HS256"}"#,
            r#"{"id":1,"a.b":"flat","a":{"b":"nested","c":{"d":true}},"email":"x@y"}"#,
        );
        let jwt = parse(&t).unwrap();
        let c = &jwt.claims;
        assert_eq!(c.get("id"), Some(&Value::from(1)));
        assert_eq!(c.get("a.b"), Some(&Value::from("flat")), "an exact claim name wins");
        assert_eq!(c.get("a.c.d"), Some(&Value::from(true)));
        assert_eq!(c.get("a.x"), None);
        assert_eq!(c.get("id.x"), None);
        assert_eq!(c.get(""), None);
    }
}
