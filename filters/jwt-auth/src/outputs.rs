//! Claims as request header values (`claim_to_headers`).
//!
//! Value forms follow Envoy 1.40's `claim_to_headers` where its form keeps the claim's meaning,
//! and keep the claim's digits where Envoy's do not (see the README's differences):
//! - a string as it is; an empty string sets no header (as in Envoy);
//! - `true`/`false`;
//! - an integer as its decimal digits, exactly as written, negative and above 2^53 included
//!   (Envoy reads every number as a double: `-5.000000`, and 2^53 + 1 becomes 2^53);
//! - another number: a whole value below 2^53 as an integer (`1.0` gives `1`, `1e3` gives
//!   `1000`, `-0` gives `0`, as in Envoy), anything else in its shortest exact form (`1.5`,
//!   `1e-7`, `1e+20`; Envoy prints six decimals: `1.500000`, `0.000000`);
//! - a list or an object: the base64 (standard alphabet, padded) of its compact JSON text, as
//!   in Envoy (`["a","b"]` gives `WyJhIiwiYiJd`);
//! - null: no header.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{Number, Value};

/// Numbers below this magnitude are exact in a double.
const EXACT_IN_DOUBLE: f64 = 9_007_199_254_740_992.0;

/// A claim as a request header value, or `None` when no header is set for it.
pub fn claim_header_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(number(n)),
        Value::Array(_) | Value::Object(_) => Some(STANDARD.encode(v.to_string())),
        Value::Null => None,
    }
}

fn number(n: &Number) -> String {
    if n.is_u64() || n.is_i64() {
        return n.to_string();
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < EXACT_IN_DOUBLE => {
            // ok: whole and below 2^53 in magnitude, so the conversion is exact; `-0` gives 0.
            #[allow(clippy::cast_possible_truncation)]
            let whole = f as i64;
            whole.to_string()
        }
        _ => n.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn form(json: &str) -> Option<String> {
        let v: Value = serde_json::from_str(&format!("[{json}]")).unwrap();
        claim_header_value(&v[0])
    }

    /// Every form, with Envoy 1.40's answer for the same claim where it differs.
    #[test]
    fn value_forms() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#""alice""#, Some("alice")),
            (r#""""#, None),
            ("true", Some("true")),
            ("false", Some("false")),
            ("null", None),
            ("1", Some("1")),
            ("0", Some("0")),
            ("1.0", Some("1")),
            ("1e3", Some("1000")),
            ("-0", Some("0")),
            ("-0.0", Some("0")),
            // Envoy: -5.000000
            ("-5", Some("-5")),
            ("-5.0", Some("-5")),
            // Envoy: 9007199254740992 (a double)
            ("9007199254740993", Some("9007199254740993")),
            ("18446744073709551615", Some("18446744073709551615")),
            ("-9007199254740993", Some("-9007199254740993")),
            // Envoy: 1.500000, 3.141593, 0.000000, 100000000000000000000.000000
            ("1.5", Some("1.5")),
            ("3.14159265", Some("3.14159265")),
            ("1e-7", Some("1e-7")),
            ("1e20", Some("1e+20")),
            (r#"["a","b"]"#, Some("WyJhIiwiYiJd")),
            ("[]", Some("W10=")),
            (r#"{"a":1}"#, Some("eyJhIjoxfQ==")),
            (r#"["a",1,true,null,{"x":1}]"#, Some("WyJhIiwxLHRydWUsbnVsbCx7IngiOjF9XQ==")),
        ];
        for (json, want) in cases {
            assert_eq!(form(json).as_deref(), *want, "{json}");
        }
    }
}
