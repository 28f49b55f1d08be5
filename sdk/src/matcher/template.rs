//! Path templates in the syntax of Envoy's `uri_template` matcher: `/users/{id}/orders/*`,
//! `/files/{rest=**}`.

/// A path template: literal segments, one-segment wildcards and an optional final rest.
///
/// | segment | matches |
/// |---|---|
/// | `users` | exactly that segment |
/// | `*`, `{name}`, `{name=*}` | any one non-empty segment |
/// | `**`, `{name=**}` (last only) | the rest of the path: zero or more segments |
///
/// A template names variables only for the reader: nothing is captured. Unlike Envoy's, `**`
/// also matches no segment at all, slash included: `/files/**` matches `/files` as well as
/// `/files/` and `/files/a/b` (so a rule on `/admin/**` cannot be stepped around with `/admin`).
/// `/` alone matches only `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
    rest: bool,
}

/// One segment of a template before its rest.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Must be equal.
    Literal(String),
    /// Any one non-empty segment.
    Any,
}

impl PathTemplate {
    /// Parses a template; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let body = text.strip_prefix('/').ok_or("must start with `/`")?;
        if !super::is_path_text(text) {
            return Err("must contain no whitespace, control characters, `?` or `#`".into());
        }
        let parts: Vec<&str> = if body.is_empty() { Vec::new() } else { body.split('/').collect() };
        let mut segments = Vec::with_capacity(parts.len());
        let mut rest = false;
        for (i, part) in parts.iter().enumerate() {
            match operator(part)? {
                Some(Operator::Rest) if i + 1 == parts.len() => rest = true,
                Some(Operator::Rest) => return Err(format!("`{part}` may only be the last segment")),
                Some(Operator::One) => segments.push(Segment::Any),
                None => segments.push(Segment::Literal((*part).to_string())),
            }
        }
        Ok(PathTemplate { segments, rest })
    }

    /// Whether `path` (without query) matches.
    pub fn matches(&self, path: &str) -> bool {
        let Some(body) = path.strip_prefix('/') else { return false };
        // `/` has no segments (not one empty segment).
        let mut parts = (!body.is_empty()).then(|| body.split('/')).into_iter().flatten();
        for segment in &self.segments {
            let Some(part) = parts.next() else { return false };
            let ok = match segment {
                Segment::Literal(l) => part == l,
                Segment::Any => !part.is_empty(),
            };
            if !ok {
                return false;
            }
        }
        self.rest || parts.next().is_none()
    }
}

enum Operator {
    /// One non-empty segment.
    One,
    /// The rest of the path.
    Rest,
}

/// What a segment is: an operator, a literal (`None`), or an error.
fn operator(part: &str) -> Result<Option<Operator>, String> {
    match part {
        "*" => return Ok(Some(Operator::One)),
        "**" => return Ok(Some(Operator::Rest)),
        _ => {}
    }
    let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) else {
        if part.contains(['{', '}', '*']) {
            return Err(format!(
                "segment `{part}`: `*`, `**` and `{{name}}` are whole segments (a variable over several segments, `{{name=a/*}}`, is not supported)"
            ));
        }
        return Ok(None);
    };
    let (name, pattern) = match inner.split_once('=') {
        Some((name, pattern)) => (name, Some(pattern)),
        None => (inner, None),
    };
    if name.is_empty() || name.contains(['{', '}', '*', '=']) {
        return Err(format!("bad variable `{part}`: write `{{name}}`, `{{name=*}}` or `{{name=**}}`"));
    }
    match pattern {
        None | Some("*") => Ok(Some(Operator::One)),
        Some("**") => Ok(Some(Operator::Rest)),
        Some(_) => Err(format!("bad variable `{part}`: write `{{name}}`, `{{name=*}}` or `{{name=**}}`")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn segments_variables_and_rest() {
        let t = PathTemplate::parse("/users/{id}/orders/*").unwrap();
        assert!(t.matches("/users/7/orders/9"));
        assert!(!t.matches("/users/7/orders/9/x"));
        assert!(!t.matches("/users/7/orders/"), "a variable needs a non-empty segment");
        assert!(!t.matches("/users/7/orders"));
        assert!(!t.matches("/Users/7/orders/9"), "literals are case-sensitive");
        assert!(!t.matches("users/7/orders/9"));
        let r = PathTemplate::parse("/files/{bucket=*}/{rest=**}").unwrap();
        assert_eq!(r, PathTemplate::parse("/files/*/**").unwrap(), "names are for the reader");
        assert!(r.matches("/files/b"), "`**` matches no segment too");
        assert!(r.matches("/files/b/"));
        assert!(r.matches("/files/b/x/y/z"));
        assert!(!r.matches("/files"));
        assert!(!r.matches("/filesb/x"));
        let root = PathTemplate::parse("/").unwrap();
        assert!(root.matches("/"));
        assert!(!root.matches("/a"));
        let all = PathTemplate::parse("/**").unwrap();
        assert!(all.matches("/") && all.matches("/a/b"));
        let slash = PathTemplate::parse("/a/").unwrap();
        assert!(slash.matches("/a/") && !slash.matches("/a"));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = |t: &str| PathTemplate::parse(t).unwrap_err();
        assert_eq!(err("users"), "must start with `/`");
        assert!(err("/a b").contains("whitespace"));
        assert!(err("/a?b").contains("`?`"));
        assert_eq!(err("/a/**/b"), "`**` may only be the last segment");
        assert_eq!(err("/{r=**}/b"), "`{r=**}` may only be the last segment");
        for bad in ["/a/{}", "/a/{=*}", "/a/{x=y}", "/a/{x=*}{y}", "/a/{x=a=b}"] {
            assert!(err(bad).starts_with("bad variable"), "{bad}: {}", err(bad));
        }
        for bad in ["/a/x{id}", "/a/**.mpd", "/a/*x", "/{x=videos/*}", "/a/}"] {
            assert!(err(bad).starts_with("segment `"), "{bad}: {}", err(bad));
        }
    }

    /// The template against a regex that spells out the same rules, over a corpus of random
    /// templates and paths built from a few segments.
    #[test]
    fn agrees_with_its_regex_on_a_random_corpus() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut below = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            usize::try_from(state % n).unwrap()
        };
        let template_parts = ["a", "b", "", "*", "{x}", "{y=*}", "**", "{z=**}"];
        let path_parts = ["a", "b", "", "ab", "*"];
        let mut matched = 0;
        for _ in 0..4000 {
            let n = below(4);
            let mut template = String::new();
            let mut pattern = String::from("^");
            let mut valid = true;
            let mut parts = Vec::new();
            for i in 0..n {
                let part = template_parts[below(template_parts.len() as u64)];
                parts.push(part);
                template.push('/');
                template.push_str(part);
                match part {
                    "**" | "{z=**}" => {
                        valid &= i + 1 == n;
                        pattern.push_str("(/.*)?");
                    }
                    "*" | "{x}" | "{y=*}" => pattern.push_str("/[^/]+"),
                    lit => pattern.push_str(&format!("/{lit}")),
                }
            }
            if n == 0 {
                template.push('/');
                pattern.push('/');
            }
            pattern.push('$');
            let parsed = PathTemplate::parse(&template);
            assert_eq!(parsed.is_ok(), valid, "{template}");
            let Ok(t) = parsed else { continue };
            let re = regex_lite::Regex::new(&pattern).unwrap();
            for _ in 0..8 {
                let mut path = String::new();
                for _ in 0..below(5) {
                    path.push('/');
                    path.push_str(path_parts[below(path_parts.len() as u64)]);
                }
                if path.is_empty() {
                    path.push('/');
                }
                // `/` has no segment, where the regex sees one empty segment: it matches a
                // template without segments before its rest.
                let expected = if path == "/" {
                    template == "/" || (parts.len() == 1 && matches!(parts[0], "**" | "{z=**}"))
                } else {
                    re.is_match(&path)
                };
                assert_eq!(t.matches(&path), expected, "{template} on {path} ({pattern})");
                matched += usize::from(t.matches(&path));
            }
        }
        assert!(matched > 500, "the corpus exercises matches too: {matched}");
    }
}
