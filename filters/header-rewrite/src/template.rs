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

use gatewasm::{HeaderSnapshot, Request};

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

/// What templates and header conditions read: values read from the host once, before the
/// filter changes anything.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    /// The request as it reached the filter (holding at least every header the rules read).
    pub request: &'a Request,
    /// The plugin's table of request header names: a [`Part::RequestHeader`] slot indexes it.
    pub names: &'a [String],
    /// The response headers `%RESP(...)%` reads, as they came from upstream; `None` on the
    /// request side.
    pub response: Option<&'a HeaderSnapshot>,
}

impl<'a> Values<'a> {
    /// The first value of the request header in `slot`.
    pub fn request_header(&self, slot: usize) -> Option<&'a str> {
        self.request.header(self.names.get(slot)?)
    }

    /// The first value of response header `name`.
    pub fn response_header(&self, name: &str) -> Option<&'a str> {
        self.response?.get(name)
    }
}

/// Rules match on what was read of the request: the configuration puts every header a
/// condition names in the plugin's table, so it is among what was read.
impl gatewasm::matcher::MatchRequest for Values<'_> {
    fn method(&self) -> &str {
        self.request.method()
    }
    fn host(&self) -> Option<Cow<'_, str>> {
        self.request.host()
    }
    fn path(&self) -> &str {
        self.request.path()
    }
    fn query(&self) -> Option<&str> {
        self.request.query()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.request.header(name)
    }
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

    /// The response headers the template reads (lower-cased names).
    pub fn response_headers(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::ResponseHeader(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Renders the value into `out` (cleared first). Absent headers render as empty.
    pub fn render(&self, values: &Values<'_>, out: &mut String) {
        out.clear();
        let request = values.request;
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::RequestHeader(slot) => out.push_str(values.request_header(*slot).unwrap_or_default()),
                Part::ResponseHeader(name) => out.push_str(values.response_header(name).unwrap_or_default()),
                Part::Host => out.push_str(request.host().as_deref().unwrap_or_default()),
                Part::Authority => out.push_str(request.authority()),
                Part::Path => out.push_str(request.path()),
                Part::Method => out.push_str(request.method()),
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

    /// A request to `API.example.com:8443/v1/users?page=2`, with `headers`.
    fn request(headers: &[(&str, &str)]) -> Request {
        let mut all =
            vec![(":method", "GET"), (":authority", "API.example.com:8443"), (":path", "/v1/users?page=2")];
        all.extend_from_slice(headers);
        Request::from_headers(HeaderSnapshot::from_strs(&all))
    }

    fn render(
        t: &Template,
        request: &Request,
        names: &[String],
        response: Option<&HeaderSnapshot>,
    ) -> String {
        let mut out = String::from("garbage");
        t.render(&Values { request, names, response }, &mut out);
        out
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
        let req = request(&[("x-request-id", "r-1"), ("x-user", "alice"), ("x-user", "bob")]);
        assert_eq!(
            render(&t, &req, &names, None),
            "GET api.example.com API.example.com:8443 /v1/users id=r-1 u=alice !"
        );
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
        let (t, names) = parse("via %RESP(x-up)% %RESP(x-none)%", true).unwrap();
        assert_eq!(t.response_headers().collect::<Vec<_>>(), ["x-up", "x-none"]);
        let response = HeaderSnapshot::from_strs(&[(":status", "200"), ("x-up", "up")]);
        assert_eq!(render(&t, &request(&[]), &names, Some(&response)), "via up ");
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
