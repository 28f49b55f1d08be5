//! Typed plugin configuration.
//!
//! Istio hands a `WasmPlugin`'s `pluginConfig` to the filter as a JSON string, and Envoy hands the
//! `configuration` of a Wasm filter as bytes. Either way the filter parses it once, in the root
//! context, into a typed value that every request then shares through an `Rc`.
//!
//! [`parse`] rejects unknown fields (a typo such as `"heders"` must not silently disable a rule) and
//! reports every one it finds, each with its JSON path; a value of the wrong type ends the parse
//! (serde cannot go on past it) and is reported with its path and the value serde saw. Then
//! [`Validate`] lets the filter check what serde cannot (header names, regexes, ranges) and record
//! every problem, not only the first. Paths are written `rules[2].match.path_regex`.
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
//! let err = config::parse::<Config>(br#"{"header": ["x-a"]}"#).unwrap_err();
//! assert_eq!(err.to_string(), "invalid plugin configuration: `header`: invalid type: sequence, expected a string");
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
        all.errors.push(serde_error(bytes, &e));
        all
    })
}

/// serde_ignored writes `rules.0.name`, and `?` for an `Option` it went through; users read
/// JSON paths as `rules[0].name`.
fn tidy_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for seg in path.split('.').filter(|seg| *seg != "?") {
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            push_index(&mut out, seg);
        } else {
            push_key(&mut out, seg);
        }
    }
    out
}

fn push_index(out: &mut String, index: &str) {
    out.push('[');
    out.push_str(index);
    out.push(']');
}

fn push_key(out: &mut String, key: &str) {
    if !out.is_empty() {
        out.push('.');
    }
    out.push_str(key);
}

fn serde_error(json: &[u8], e: &serde_json::Error) -> ConfigError {
    let mut message = e.to_string();
    let mut field = json_path_at(json, byte_offset(json, e.line(), e.column()), &message);
    // A missing field is reported at the object that lacks it; name the field itself. (An
    // unknown field refused by `deny_unknown_fields` is reported at its key, so its path ends
    // with it already.)
    if let Some(name) = message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next()) {
        push_key(&mut field, name);
    }
    // serde_json's message quotes the bad value ("invalid type: string \"x\", expected u32") and
    // ends with its line and column. A data error's path locates it better than a column of the
    // one-line JSON Istio makes of a `pluginConfig`, so the location is dropped there; a syntax
    // error keeps it.
    if e.is_data() && !field.is_empty() {
        let location = format!(" at line {} column {}", e.line(), e.column());
        let kept = message.strip_suffix(&location).map(str::len);
        if let Some(len) = kept {
            message.truncate(len);
        }
    }
    ConfigError { field, value: None, message }
}

/// The byte offset serde_json's `line` (from 1) and `column` (bytes into the line) point at.
fn byte_offset(json: &[u8], line: usize, column: usize) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        json.iter().enumerate().filter(|(_, b)| **b == b'\n').nth(line - 2).map_or(json.len(), |(i, _)| i + 1)
    };
    line_start.saturating_add(column)
}

/// One level of the JSON document around the error.
enum Level {
    /// An object, with the key whose value comes next or is being read (none before a key).
    Object(Option<String>),
    /// An array, with the index of the element being read.
    Array(usize),
}

/// The JSON path (`rules[1].limits[0].rate`) of the value serde_json refused with `message` at
/// byte `offset`, found by reading the document again up to there.
///
/// Where serde_json places an error depends on what raised it:
/// - a scalar refused by its type: just past the scalar;
/// - a container of the wrong type: at its opening bracket, or, when a hand-written visitor was
///   handed it (`deserialize_any` without `visit_seq`), just inside it (past it when empty);
/// - an unknown key refused by `deny_unknown_fields`: just past the key;
/// - an error raised once a container was read (a missing field, a wrong length): past its
///   closing bracket;
/// - an error a type raised after serde_json had read its value (an `untagged` value that fits no
///   form): where its parent stopped, past the parent's closing bracket when the value was the
///   last member, past the comma that follows it in an array.
///
/// This costs a module nothing until a configuration is wrong; tracking the path through serde
/// (`serde_path_to_error`) added 20 KB to header-rewrite's module and 37 KB to jwt-auth's.
fn json_path_at(json: &[u8], offset: usize, message: &str) -> String {
    let prefix = json.get(..offset).unwrap_or(json);
    let mut levels: Vec<Level> = Vec::new();
    // Where the string being read began, whether the last byte was a backslash, and whether the
    // string is an object's key.
    let mut string: Option<(usize, bool, bool)> = None;
    // The last byte outside strings and whitespace (`"` for a string), and the level it closed.
    let mut last = None;
    let mut closed = None;
    for (i, &b) in prefix.iter().enumerate() {
        if let Some((start, escaped, is_key)) = string {
            if escaped {
                string = Some((start, false, is_key));
            } else if b == b'\\' {
                string = Some((start, true, is_key));
            } else if b == b'"' {
                string = None;
                if let (true, Some(Level::Object(key))) = (is_key, levels.last_mut()) {
                    *key = Some(json_key(prefix.get(start..=i).unwrap_or_default()));
                }
            }
            continue;
        }
        if b.is_ascii_whitespace() {
            continue;
        }
        last = Some(b);
        closed = None;
        match b {
            b'"' => {
                let is_key = matches!(levels.last(), Some(Level::Object(None)));
                string = Some((i, false, is_key));
            }
            b'{' => levels.push(Level::Object(None)),
            b'[' => levels.push(Level::Array(0)),
            b'}' | b']' => closed = levels.pop(),
            b',' => match levels.last_mut() {
                Some(Level::Object(key)) => *key = None,
                Some(Level::Array(index)) => *index += 1,
                None => {}
            },
            _ => {}
        }
    }
    let lacks = message.starts_with("missing field `") || message.starts_with("invalid length ");
    let wrong_container = match message {
        m if m.starts_with("invalid type: map,") => Some(b'{'),
        m if m.starts_with("invalid type: sequence,") => Some(b'['),
        _ => None,
    };
    let at_opener = wrong_container.is_some() && json.get(offset) == wrong_container.as_ref();
    match last {
        Some(b'}' | b']') if !lacks && wrong_container.is_none() => levels.extend(closed),
        Some(b'{' | b'[') if wrong_container.is_some() && !at_opener => {
            levels.pop();
        }
        Some(b',') if !at_opener => {
            if let Some(Level::Array(index)) = levels.last_mut() {
                *index = index.saturating_sub(1);
            }
        }
        _ => {}
    }
    let mut path = String::new();
    for level in &levels {
        match level {
            Level::Object(Some(key)) => push_key(&mut path, key),
            Level::Object(None) => {}
            Level::Array(index) => push_index(&mut path, &index.to_string()),
        }
    }
    path
}

/// A key as the configuration writes it, escapes included (`a\"b`): decoding the rare key with
/// an escape is not worth a second JSON string reader in every module.
fn json_key(quoted: &[u8]) -> String {
    let raw = quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or_default();
    String::from_utf8_lossy(raw).into_owned()
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
    fn type_error_names_the_field_and_quotes_the_value() {
        let err = parse::<Outer>(br#"{"count": "many"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid plugin configuration: `count`: invalid type: string \"many\", expected u32"
        );
    }

    #[test]
    fn nested_unknown_field_from_deny_unknown_fields_names_its_path() {
        let err = parse::<Outer>(br#"{"items": [{"name": "a"}, {"nam": "x"}]}"#).unwrap_err();
        assert_eq!(err.errors().len(), 1, "{err}");
        assert_eq!(err.errors()[0].field, "items[1].nam");
        assert!(err.errors()[0].message.starts_with("unknown field `nam`, expected `name`"), "{err}");
    }

    /// A configuration with every shape a type error can hide in.
    #[derive(Debug, Deserialize)]
    struct Nested {
        #[serde(default)]
        rules: Vec<Rule>,
        #[serde(default)]
        allowed: Vec<String>,
        #[serde(default)]
        timeout_ms: Option<u32>,
    }

    #[derive(Debug, Deserialize)]
    struct Rule {
        #[serde(default)]
        limits: Vec<Limit>,
        #[serde(default)]
        target: Option<Target>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Limit {
        TokenBucket { rate: u32 },
        Fixed(u32),
    }

    #[derive(Debug, Deserialize)]
    struct Target {
        cluster: String,
        port: Option<u16>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    enum Port {
        Number(u16),
        Name(String),
    }

    #[derive(Debug, Deserialize)]
    struct WithUntagged {
        #[serde(default)]
        ports: Vec<Port>,
    }

    impl Validate for Nested {}
    impl Validate for WithUntagged {}

    /// Asserts that `json` yields one error, at `field`, whose message starts with `message`
    /// (serde's own words, the value quoted, without a line and column).
    fn assert_error<T: DeserializeOwned + Validate + fmt::Debug>(json: &str, field: &str, message: &str) {
        let err = parse::<T>(json.as_bytes()).unwrap_err();
        assert_eq!(err.errors().len(), 1, "{json}: {err}");
        let e = &err.errors()[0];
        assert_eq!((e.field.as_str(), e.value.as_deref()), (field, None), "{json}: {err}");
        assert!(e.message.starts_with(message) && !e.message.contains(" at line "), "{json}: {err}");
    }

    #[test]
    fn well_formed_nested_config_parses() {
        let json = br#"{"rules": [{"limits": [{"fixed": 1}, {"token_bucket": {"rate": 5}}],
            "target": {"cluster": "c", "port": 80}}], "allowed": ["a"], "timeout_ms": 9}"#;
        let c = parse::<Nested>(json).unwrap();
        assert_eq!((c.allowed, c.timeout_ms), (vec!["a".to_string()], Some(9)));
        let [rule] = &c.rules[..] else { panic!("{:?}", c.rules) };
        assert!(matches!(rule.limits[..], [Limit::Fixed(1), Limit::TokenBucket { rate: 5 }]), "{rule:?}");
        let target = rule.target.as_ref().unwrap();
        assert_eq!((target.cluster.as_str(), target.port), ("c", Some(80)));
        let c = parse::<WithUntagged>(br#"{"ports": [80, "http"]}"#).unwrap();
        assert!(matches!(&c.ports[..], [Port::Number(80), Port::Name(n)] if n == "http"), "{c:?}");
    }

    #[test]
    fn type_error_at_the_top_level_names_the_field() {
        assert_error::<Nested>(
            r#"{"allowed": "a"}"#,
            "allowed",
            "invalid type: string \"a\", expected a sequence",
        );
        let err = parse::<Nested>(br#"{"allowed": "a"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid plugin configuration: `allowed`: invalid type: string \"a\", expected a sequence"
        );
    }

    #[test]
    fn type_error_in_an_array_names_the_index() {
        assert_error::<Nested>(
            r#"{"allowed": ["a", 7]}"#,
            "allowed[1]",
            "invalid type: integer `7`, expected a string",
        );
    }

    #[test]
    fn type_error_in_an_enum_in_nested_arrays_names_the_whole_path() {
        let json = r#"{"rules": [{}, {"limits": [{"fixed": 1}, {"token_bucket": {"rate": "fast"}}]}]}"#;
        let path = "rules[1].limits[1].token_bucket.rate";
        assert_error::<Nested>(json, path, "invalid type: string \"fast\", expected u32");
        let json = r#"{"rules": [{"limits": [{"fixd": 1}]}]}"#;
        assert_error::<Nested>(json, "rules[0].limits[0].fixd", "unknown variant `fixd`, expected");
        let json = r#"{"rules": [{"limits": [{"fixed": -1}]}]}"#;
        assert_error::<Nested>(json, "rules[0].limits[0].fixed", "invalid value: integer `-1`, expected u32");
    }

    #[test]
    fn type_error_in_an_option_names_the_field() {
        assert_error::<Nested>(
            r#"{"timeout_ms": true}"#,
            "timeout_ms",
            "invalid type: boolean `true`, expected u32",
        );
        // Through an `Option` of a nested object, too.
        let json = r#"{"rules": [{"target": {"cluster": "c", "port": 70000}}]}"#;
        assert_error::<Nested>(json, "rules[0].target.port", "invalid value: integer `70000`, expected u16");
        // `null` is `None`: no error.
        let c = parse::<Nested>(br#"{"timeout_ms": null, "rules": [{"target": null}]}"#).unwrap();
        assert_eq!(c.timeout_ms, None);
        assert!(c.rules[0].target.is_none());
    }

    #[test]
    fn missing_field_names_its_path() {
        let json = r#"{"rules": [{"target": {"port": 80}}]}"#;
        assert_error::<Nested>(json, "rules[0].target.cluster", "missing field `cluster`");
    }

    #[test]
    fn untagged_value_that_fits_no_form_names_the_field() {
        let json = r#"{"ports": [80, true]}"#;
        assert_error::<WithUntagged>(
            json,
            "ports[1]",
            "data did not match any variant of untagged enum Port",
        );
    }

    /// Where serde_json places an error depends on what raised it; every placement is named.
    #[test]
    fn every_placement_of_an_error_names_its_field() {
        #[derive(Debug, Deserialize)]
        struct Deep {
            #[serde(default)]
            ports: Vec<Port>,
            #[serde(default)]
            port: Option<Port>,
            #[serde(default)]
            nested: Option<Box<Deep>>,
            #[serde(default, rename = "odd \"key\"")]
            odd: Vec<u8>,
            #[serde(default)]
            target: Option<Target>,
            #[serde(default)]
            word: Vec<Word>,
        }
        impl Validate for Deep {}

        /// Read as filters read a value by hand: `deserialize_any`, with only `visit_str`.
        #[derive(Debug)]
        struct Word;
        impl<'de> Deserialize<'de> for Word {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Word, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = Word;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a word")
                    }
                    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Word, E> {
                        Ok(Word)
                    }
                }
                d.deserialize_any(V)
            }
        }
        for (json, want) in [
            // Refused by serde_json at the value.
            (r#"{"ports": {"a": 1}}"#, "ports"),
            (r#"{"nested": {"ports": [[1]]}}"#, "nested.ports[0]"),
            (r#"{"nested": {"nested": {"odd \"key\"": [1, "x"]}}}"#, r#"nested.nested.odd \"key\"[1]"#),
            ("{\n  \"nested\": {\n    \"ports\": [\n      80,\n      {}\n    ]\n  }\n}", "nested.ports[1]"),
            // Raised by the type once serde_json had read the value: an `untagged` value, first,
            // middle or last of its array or object, scalar or object.
            (r#"{"ports": [true]}"#, "ports[0]"),
            (r#"{"ports": [80, {"x": 1}, 81]}"#, "ports[1]"),
            (r#"{"ports": [80, {"x": [1]}]}"#, "ports[1]"),
            (r#"{"nested": {"port": false}, "ports": []}"#, "nested.port"),
            (r#"{"nested": {"ports": [], "port": {"x": {}}}}"#, "nested.port"),
            // A container handed to a visitor that takes none: entered, then refused.
            (r#"{"word": ["a", [1, 2]]}"#, "word[1]"),
            (r#"{"word": [{"a": 1}, "b"]}"#, "word[0]"),
            (r#"{"word": ["a", []]}"#, "word[1]"),
            (r#"{"word": [{ }]}"#, "word[0]"),
            (r#"{"word": [1]}"#, "word[0]"),
            // About a whole object.
            (r#"{"target": {}}"#, "target.cluster"),
            (r#"{"nested": {"target": {"port": 1}}}"#, "nested.target.cluster"),
        ] {
            let err = parse::<Deep>(json.as_bytes()).unwrap_err();
            assert_eq!(err.errors().len(), 1, "{json}: {err}");
            assert_eq!(err.errors()[0].field, want, "{json}: {err}");
        }
        let ok = parse::<Deep>(
            br#"{"nested": {"odd \"key\"": [1], "port": "http", "ports": [80],
            "target": {"cluster": "c"}, "word": ["w"]}}"#,
        )
        .unwrap();
        let nested = ok.nested.unwrap();
        assert!(ok.ports.is_empty() && ok.port.is_none() && ok.odd.is_empty() && ok.target.is_none());
        assert_eq!((nested.odd, nested.target.map(|t| t.cluster)), (vec![1], Some("c".to_string())));
        assert_eq!(nested.word.len(), 1);
        assert!(matches!((&nested.port, &nested.ports[..]), (Some(Port::Name(_)), [Port::Number(80)])));
    }

    #[test]
    fn unknown_fields_keep_their_paths_beside_a_type_error() {
        let err = parse::<Nested>(
            br#"{"colour": 1, "rules": [{"target": {"cluster": "c", "weight": 2}}], "allowed": 3}"#,
        )
        .unwrap_err();
        let fields: Vec<_> = err.errors().iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["colour", "rules[0].target.weight", "allowed"], "{err}");
    }

    #[test]
    fn syntax_errors_keep_their_location() {
        let err = parse::<Nested>(b"{\"allowed\": [\"a\",\n ]}").unwrap_err();
        assert_eq!(err.errors().len(), 1, "{err}");
        assert!(err.errors()[0].message.contains("at line 2 column 2"), "{err}");
        let err = parse::<Nested>(br#"{} {}"#).unwrap_err();
        assert_eq!(err.errors()[0].field, "");
        assert!(
            err.to_string()
                .starts_with("invalid plugin configuration: `<root>`: trailing characters at line 1"),
            "{err}"
        );
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
