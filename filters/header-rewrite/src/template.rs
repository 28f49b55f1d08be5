//! Header value templates: a literal with `%NAME%` substitutions, parsed once at configuration
//! time into a list of parts and rendered per request without re-parsing.
//!
//! | substitution | value |
//! |---|---|
//! | `%REQ(name)%` | first value of request header `name` (pseudo-headers allowed) |
//! | `%RESP(name)%` | first value of response header `name` (response operations only) |
//! | `%HOST%` | request host: lower-cased, port and trailing dot removed |
//! | `%AUTHORITY%` | `:authority` as the client sent it (port included) |
//! | `%PATH%` | request path without the query string |
//! | `%METHOD%` | request method |
//! | `%REQUEST_ID%` | the `x-request-id` request header |
//! | `%%` | a literal `%` |
//!
//! Request values are those the request had when it reached this filter, even on the response
//! side (the filter keeps them; Envoy no longer exposes request headers then).

use std::borrow::Cow;
use std::fmt;

/// Where a substitution takes its value from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text copied as is.
    Literal(String),
    /// A request header, by slot in the plugin's table of request header names.
    RequestHeader(usize),
    /// A response header (lower-cased name).
    ResponseHeader(String),
    /// Normalized host.
    Host,
    /// Raw `:authority`.
    Authority,
    /// Path without query.
    Path,
    /// Method.
    Method,
}

/// A parsed value template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The substitutions a template may use, for error messages.
pub const KNOWN: &str = "%REQ(name)%, %RESP(name)%, %HOST%, %AUTHORITY%, %PATH%, %METHOD%, %REQUEST_ID%, %%";

/// Values a template reads. Request values are cached by the implementation.
pub trait Source {
    /// The method.
    fn method(&self) -> &str;
    /// Host without port, lower-cased; `None` when the authority is not a host (see
    /// `gatewasm::http::normalize_host`).
    fn host(&self) -> Option<Cow<'_, str>>;
    /// Raw `:authority`.
    fn authority(&self) -> &str;
    /// Path without query.
    fn path(&self) -> &str;
    /// Request header in `slot` (first value).
    fn request_header(&self, slot: usize) -> Option<&str>;
    /// Response header `name` (first value); `None` on the request side.
    fn response_header(&self, name: &str) -> Option<String>;
}

impl Template {
    /// Parses `text`. `slot` maps a (lower-cased) request header name to its slot, adding it to
    /// the plugin's table when new. `response_side` allows `%RESP(...)%`.
    pub fn parse(
        text: &str,
        response_side: bool,
        slot: &mut dyn FnMut(&str) -> usize,
    ) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(start) = rest.find('%') {
            literal.push_str(rest.get(..start).unwrap_or_default());
            let after = rest.get(start + 1..).unwrap_or_default();
            if let Some(tail) = after.strip_prefix('%') {
                literal.push('%');
                rest = tail;
                continue;
            }
            let Some(end) = after.find('%') else {
                return Err(TemplateError(format!(
                    "unterminated substitution at `{}` (write `%%` for a literal `%`; known: {KNOWN})",
                    shorten(rest.get(start..).unwrap_or_default())
                )));
            };
            let name = after.get(..end).unwrap_or_default();
            let part = parse_substitution(name, response_side, slot)?;
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(part);
            rest = after.get(end + 1..).unwrap_or_default();
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template { parts })
    }

    /// A template of one literal (tests, host rewrite).
    pub fn literal(text: &str) -> Template {
        Template { parts: if text.is_empty() { Vec::new() } else { vec![Part::Literal(text.to_string())] } }
    }

    /// The parts, in order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The value when the template has no substitution.
    pub fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// True when the template has a substitution (its value depends on the request).
    pub fn is_dynamic(&self) -> bool {
        self.as_literal().is_none()
    }

    /// Reads every value the template uses, so that a caching [`Source`] holds them before the
    /// headers are modified (or, for request values, stop being readable).
    pub fn prefetch(&self, src: &dyn Source) {
        for part in &self.parts {
            match part {
                Part::RequestHeader(slot) => {
                    let _ = src.request_header(*slot);
                }
                Part::Host => {
                    let _ = src.host();
                }
                Part::Authority => {
                    let _ = src.authority();
                }
                Part::Path => {
                    let _ = src.path();
                }
                Part::Method => {
                    let _ = src.method();
                }
                Part::ResponseHeader(name) => {
                    let _ = src.response_header(name);
                }
                Part::Literal(_) => {}
            }
        }
    }

    /// Renders the value into `out` (cleared first). Absent headers render as empty.
    pub fn render(&self, src: &dyn Source, out: &mut String) {
        out.clear();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::RequestHeader(slot) => out.push_str(src.request_header(*slot).unwrap_or_default()),
                Part::ResponseHeader(name) => {
                    if let Some(v) = src.response_header(name) {
                        out.push_str(&v);
                    }
                }
                Part::Host => out.push_str(src.host().as_deref().unwrap_or_default()),
                Part::Authority => out.push_str(src.authority()),
                Part::Path => out.push_str(src.path()),
                Part::Method => out.push_str(src.method()),
            }
        }
    }
}

fn parse_substitution(
    name: &str,
    response_side: bool,
    slot: &mut dyn FnMut(&str) -> usize,
) -> Result<Part, TemplateError> {
    match name {
        "HOST" => return Ok(Part::Host),
        "AUTHORITY" => return Ok(Part::Authority),
        "PATH" => return Ok(Part::Path),
        "METHOD" => return Ok(Part::Method),
        "REQUEST_ID" => return Ok(Part::RequestHeader(slot("x-request-id"))),
        _ => {}
    }
    let header = |prefix: &str| name.strip_prefix(prefix).and_then(|r| r.strip_suffix(')'));
    if let Some(h) = header("REQ(") {
        let h = check_name(name, h)?;
        return Ok(Part::RequestHeader(slot(&h)));
    }
    if let Some(h) = header("RESP(") {
        if !response_side {
            return Err(TemplateError(format!(
                "`%{name}%` reads a response header: only response operations may use it"
            )));
        }
        let h = check_name(name, h)?;
        return Ok(Part::ResponseHeader(h));
    }
    Err(TemplateError(format!("unknown substitution `%{}%` (known: {KNOWN})", shorten(name))))
}

fn check_name(whole: &str, header: &str) -> Result<String, TemplateError> {
    if gatewasm::config::is_header_name(header) {
        Ok(header.to_ascii_lowercase())
    } else {
        Err(TemplateError(format!(
            "`%{}%`: `{}` is not a valid header name",
            shorten(whole),
            shorten(header)
        )))
    }
}

fn shorten(s: &str) -> &str {
    let mut end = s.len().min(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    struct Fake {
        headers: Vec<Option<String>>,
    }

    impl Source for Fake {
        fn method(&self) -> &str {
            "GET"
        }
        fn host(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed("api.example.com"))
        }
        fn authority(&self) -> &str {
            "API.example.com:8443"
        }
        fn path(&self) -> &str {
            "/v1/users"
        }
        fn request_header(&self, slot: usize) -> Option<&str> {
            self.headers.get(slot)?.as_deref()
        }
        fn response_header(&self, name: &str) -> Option<String> {
            (name == "x-up").then(|| "up".to_string())
        }
    }

    fn parse(text: &str, response: bool) -> Result<(Template, Vec<String>), TemplateError> {
        let mut names: Vec<String> = Vec::new();
        let t = Template::parse(text, response, &mut |n| match names.iter().position(|x| x == n) {
            Some(i) => i,
            None => {
                names.push(n.to_string());
                names.len() - 1
            }
        })?;
        Ok((t, names))
    }

    #[test]
    fn literal_and_percent() {
        let (t, names) = parse("100%% sure", false).unwrap();
        assert_eq!(t.as_literal(), Some("100% sure"));
        assert!(names.is_empty());
        assert!(!t.is_dynamic());
        assert_eq!(parse("", false).unwrap().0.as_literal(), Some(""));
    }

    #[test]
    fn substitutions_render() {
        let (t, names) =
            parse("%METHOD% %HOST% %AUTHORITY% %PATH% id=%REQUEST_ID% u=%REQ(X-User)% %REQ(x-none)%!", false)
                .unwrap();
        assert_eq!(names, ["x-request-id", "x-user", "x-none"]);
        assert!(t.is_dynamic());
        let src = Fake { headers: vec![Some("r-1".into()), Some("alice".into()), None] };
        let mut out = String::from("garbage");
        t.render(&src, &mut out);
        assert_eq!(out, "GET api.example.com API.example.com:8443 /v1/users id=r-1 u=alice !");
    }

    #[test]
    fn same_header_shares_a_slot() {
        let (t, names) = parse("%REQ(x-a)%-%REQ(X-A)%", false).unwrap();
        assert_eq!(names, ["x-a"]);
        assert_eq!(t.parts()[0], Part::RequestHeader(0));
        assert_eq!(t.parts()[2], Part::RequestHeader(0));
    }

    #[test]
    fn response_headers_only_on_the_response_side() {
        let (t, _) = parse("via %RESP(x-up)%", true).unwrap();
        let mut out = String::new();
        t.render(&Fake { headers: vec![] }, &mut out);
        assert_eq!(out, "via up");
        let err = parse("%RESP(x-up)%", false).unwrap_err();
        assert!(err.0.contains("only response operations"), "{err}");
    }

    #[test]
    fn errors() {
        let err = parse("%FOO%", false).unwrap_err();
        assert!(err.0.contains("unknown substitution `%FOO%`"), "{err}");
        assert!(err.0.contains("%REQ(name)%"), "{err}");
        let err = parse("50% off", false).unwrap_err();
        assert!(err.0.contains("unterminated"), "{err}");
        let err = parse("%REQ(x y)%", false).unwrap_err();
        assert!(err.0.contains("not a valid header name"), "{err}");
        assert!(parse("%REQ()%", false).is_err());
        assert!(parse("%req(x)%", false).is_err());
        // Pseudo-headers may be read.
        let (_, names) = parse("%REQ(:scheme)%", false).unwrap();
        assert_eq!(names, [":scheme"]);
    }
}
