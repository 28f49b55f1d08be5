//! Typed plugin configuration.
//!
//! Istio hands a `WasmPlugin`'s `pluginConfig` to the filter as a JSON string, and Envoy hands the
//! `configuration` of a Wasm filter as bytes. Either way the filter parses it once, in the root
//! context, into a typed value that every request then shares through an `Rc`.
//!
//! [`parse`] rejects unknown fields (a typo such as `"heders"` must not silently disable a rule) and
//! reports every one it finds, each with its JSON path; then [`Validate`] lets the filter check what
//! serde cannot (header names, regexes, ranges) and record every problem, not only the first.
//!
//! ```
//! use gatewasm::config::{self, ConfigErrors, Validate};
//!
//! // No `deny_unknown_fields`: `parse` finds every unknown field, serde would stop at the first.
//! #[derive(Debug, serde::Deserialize)]
//! struct Config {
//!     /// Header to add to every request.
//!     header: String,
//! }
//!
//! impl Validate for Config {
//!     fn validate(&self, errors: &mut ConfigErrors) {
//!         config::check_header_name(errors, "header", &self.header);
//!     }
//! }
//!
//! let err = config::parse::<Config>(br#"{"header": "bad name", "extra": 1}"#).unwrap_err();
//! assert!(err.to_string().contains("`extra`"));
//! let err = config::parse::<Config>(br#"{"header": "bad name"}"#).unwrap_err();
//! assert!(err.to_string().contains("`header`"));
//! ```

use std::fmt;

use serde::de::DeserializeOwned;

/// Longest value quoted back in an error message: enough to recognise it, bounded so that a huge
/// config does not produce a huge log line.
const MAX_QUOTED_VALUE: usize = 80;

/// One problem in a plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON path of the offending field, such as `rules[2].match.path_regex`; empty for the root.
    pub field: String,
    /// The offending value as written in the config (quoted and shortened), when there is one.
    pub value: Option<String>,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = if self.field.is_empty() { "<root>" } else { &self.field };
        match &self.value {
            Some(value) => write!(f, "`{field}` = {value}: {}", self.message),
            None => write!(f, "`{field}`: {}", self.message),
        }
    }
}

/// Every problem found in a plugin configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors {
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem with `field`, quoting `value` (shortened if long).
    pub fn add(&mut self, field: impl Into<String>, value: impl fmt::Debug, message: impl Into<String>) {
        self.errors.push(ConfigError {
            field: field.into(),
            value: Some(quote(&value)),
            message: message.into(),
        });
    }

    /// Records a problem with `field` that has no single value to quote (a missing field, say).
    pub fn add_field(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError { field: field.into(), value: None, message: message.into() });
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The problems, in the order they were found.
    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }

    /// `Ok(value)` when nothing was recorded, else these errors.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errors.len() {
            0 => f.write_str("invalid plugin configuration"),
            1 => write!(f, "invalid plugin configuration: {}", DisplayList(&self.errors)),
            n => write!(f, "invalid plugin configuration ({n} errors): {}", DisplayList(&self.errors)),
        }
    }
}

impl std::error::Error for ConfigErrors {}

struct DisplayList<'a>(&'a [ConfigError]);

impl fmt::Display for DisplayList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

fn quote(value: &dyn fmt::Debug) -> String {
    let mut s = format!("{value:?}");
    if s.len() > MAX_QUOTED_VALUE {
        let mut cut = MAX_QUOTED_VALUE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Checks a configuration for what serde's types cannot express.
pub trait Validate {
    /// Records every problem in `errors`, naming each field by its JSON path.
    fn validate(&self, errors: &mut ConfigErrors) {
        let _ = errors;
    }
}

/// Parses a JSON plugin configuration into `T`, then validates it.
///
/// An empty configuration (Envoy's default when `configuration` is unset) is read as `{}`, so a
/// filter whose fields all have defaults works without one. Unknown fields are all reported, with
/// their paths; a type error stops the parse (serde cannot go on past it) and is reported with its
/// path and the value serde saw.
pub fn parse<T: DeserializeOwned + Validate>(bytes: &[u8]) -> Result<T, ConfigErrors> {
    parse_with(bytes, |value: T, errors| {
        value.validate(errors);
        value
    })
}

/// Parses a raw configuration `R` as [`parse`] does, then builds the filter's typed form from it
/// with `build`, which records every further problem in the same [`ConfigErrors`] (so unknown
/// fields and semantic errors are reported together) and returns the built value.
///
/// This is "parse, don't validate": `R` mirrors the JSON, `T` holds compiled regexes, parsed
/// templates and lower-cased names, and the request path only ever sees `T`.
pub fn parse_with<R, T>(
    bytes: &[u8],
    build: impl FnOnce(R, &mut ConfigErrors) -> T,
) -> Result<T, ConfigErrors>
where
    R: DeserializeOwned,
{
    let mut errors = ConfigErrors::new();
    let raw: R = deserialize(bytes, &mut errors)?;
    let built = build(raw, &mut errors);
    errors.into_result(built)
}

/// Deserializes, recording every unknown field in `errors`; a type error ends the parse.
fn deserialize<R: DeserializeOwned>(bytes: &[u8], errors: &mut ConfigErrors) -> Result<R, ConfigErrors> {
    let bytes = trim_ascii(bytes);
    let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { bytes };
    let mut unknown = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<R, _> = serde_ignored::deserialize(&mut de, |path| unknown.push(path.to_string()));
    let parsed = parsed.and_then(|v| de.end().map(|()| v));
    for path in unknown {
        errors.add_field(tidy_path(&path), "unknown field");
    }
    parsed.map_err(|e| {
        let mut all = std::mem::take(errors);
        all.errors.push(serde_error(&e));
        all
    })
}

/// serde_ignored writes `rules.0.name`, and `?` for an `Option` it went through; users read
/// JSON paths as `rules[0].name`.
fn tidy_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for (i, seg) in path.split('.').filter(|seg| *seg != "?").enumerate() {
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(seg);
            out.push(']');
        } else {
            if i > 0 {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

fn serde_error(e: &serde_json::Error) -> ConfigError {
    // serde_json's message names the field for unknown/missing fields and quotes the bad value
    // ("invalid type: string \"x\", expected u32"); the line/column locate it in the document.
    let message = e.to_string();
    let field = message
        .split('`')
        .nth(1)
        .filter(|_| message.starts_with("unknown field") || message.starts_with("missing field"))
        .unwrap_or("")
        .to_string();
    ConfigError { field, value: None, message }
}

fn trim_ascii(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if first.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = b {
        if last.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    b
}

/// Deserializes a map whose values are all read by `field`, which says whether it knew the key;
/// the values of keys it did not know are ignored, which [`parse`] reports as unknown fields.
/// For a `Deserialize` written by hand (a visitor's `visit_map`): the derived form costs a
/// module several kilobytes more per struct (a sequence form and a field enum no configuration
/// uses), which a filter with many configuration structs notices.
pub fn read_map<'de, A, T>(
    mut map: A,
    mut value: T,
    mut field: impl FnMut(&mut T, &str, &mut A) -> Result<bool, A::Error>,
) -> Result<T, A::Error>
where
    A: serde::de::MapAccess<'de>,
{
    while let Some(key) = map.next_key::<String>()? {
        if !field(&mut value, &key, &mut map)? {
            map.next_value::<serde::de::IgnoredAny>()?;
        }
    }
    Ok(value)
}

/// True for an HTTP field name (RFC 9110 `token`) that Envoy accepts: lower case is not required
/// here because Envoy lower-cases names itself, but CR, LF, NUL, spaces and separators are refused.
pub fn is_header_name(name: &str) -> bool {
    let body = name.strip_prefix(':').unwrap_or(name);
    !body.is_empty() && body.bytes().all(is_tchar)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// True for a header value Envoy forwards unchanged: no CR, LF or NUL (response splitting), and no
/// other control character except horizontal tab.
pub fn is_header_value(value: &str) -> bool {
    value.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Records an error unless `name` is a valid header name.
pub fn check_header_name(errors: &mut ConfigErrors, field: impl Into<String>, name: &str) {
    if !is_header_name(name) {
        errors.add(field, name, "not a valid HTTP header name (RFC 9110 token)");
    } else if name.starts_with(':') {
        errors.add(field, name, "pseudo-headers cannot be set this way");
    }
}

/// Records an error unless `value` is a valid header value.
pub fn check_header_value(errors: &mut ConfigErrors, field: impl Into<String>, value: &str) {
    if !is_header_value(value) {
        errors.add(field, value, "header values may not contain CR, LF, NUL or other control characters");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        name: String,
    }

    #[derive(Debug, Deserialize)]
    struct Outer {
        #[serde(default)]
        items: Vec<Inner>,
        #[serde(default)]
        count: u32,
    }

    impl Validate for Outer {
        fn validate(&self, errors: &mut ConfigErrors) {
            for (i, item) in self.items.iter().enumerate() {
                check_header_name(errors, format!("items[{i}].name"), &item.name);
            }
        }
    }

    #[test]
    fn empty_config_is_an_empty_object() {
        let c: Outer = parse(b"  ").unwrap();
        assert_eq!(c.count, 0);
    }

    #[test]
    fn reports_every_unknown_field_with_its_path() {
        let err = parse::<Outer>(br#"{"itemz": [], "cuont": 1}"#).unwrap_err();
        let fields: Vec<_> = err.errors().iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["itemz", "cuont"]);
    }

    #[test]
    fn reports_every_semantic_error() {
        let err =
            parse::<Outer>(br#"{"items": [{"name": "ok"}, {"name": "b d"}, {"name": "x\ny"}]}"#).unwrap_err();
        assert_eq!(err.errors().len(), 2);
        assert_eq!(err.errors()[0].field, "items[1].name");
        assert_eq!(err.errors()[0].value.as_deref(), Some("\"b d\""));
        assert!(err.to_string().contains("2 errors"), "{err}");
    }

    #[test]
    fn type_error_quotes_the_value() {
        let err = parse::<Outer>(br#"{"count": "many"}"#).unwrap_err();
        assert!(err.to_string().contains("\"many\""), "{err}");
    }

    #[test]
    fn nested_unknown_field_from_deny_unknown_fields_names_it() {
        let err = parse::<Outer>(br#"{"items": [{"nam": "x"}]}"#).unwrap_err();
        assert!(err.to_string().contains("`nam`"), "{err}");
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(parse::<Outer>(br#"{} {}"#).is_err());
    }

    #[test]
    fn parse_with_builds_and_reports_together() {
        #[derive(Deserialize)]
        struct Raw {
            pattern: String,
        }
        let build = |raw: Raw, errors: &mut ConfigErrors| {
            if raw.pattern.is_empty() {
                errors.add("pattern", &raw.pattern, "must not be empty");
            }
            raw.pattern.len()
        };
        assert_eq!(parse_with(br#"{"pattern": "abc"}"#, build), Ok(3));
        let err = parse_with(br#"{"pattern": "", "x": 1}"#, build).unwrap_err();
        let fields: Vec<_> = err.errors().iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["x", "pattern"]);
    }

    #[test]
    fn header_checks() {
        assert!(is_header_name("x-admin-id"));
        assert!(is_header_name(":path"));
        assert!(!is_header_name(""));
        assert!(!is_header_name("a b"));
        assert!(!is_header_name("a\r\nb"));
        assert!(is_header_value("Bearer abc\tdef"));
        assert!(!is_header_value("a\r\nSet-Cookie: x"));
        assert!(!is_header_value("a\0b"));
    }

    #[test]
    fn long_values_are_shortened() {
        let mut e = ConfigErrors::new();
        e.add("f", "é".repeat(200), "bad");
        let v = e.errors()[0].value.clone().unwrap();
        assert!(v.len() <= MAX_QUOTED_VALUE + 3);
    }
}
