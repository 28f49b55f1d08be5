//! Query parameter operations on the request: `remove`, `keep` (only these), `set`, `add`, by
//! name, on the query as the client wrote it.
//!
//! Names are compared percent-decoded (`%XX`, `+` as a space), as the SDK reads query
//! parameters and as `match.query_params` compares them. Parameters no operation touches keep
//! their text byte for byte and their order; only what the filter writes is encoded. Empty
//! pieces (`a=1&&b=2`) carry nothing and are dropped when the query is rewritten.

use std::borrow::Cow;

use gatewasm::http::query_component_eq;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

use crate::template::{Template, Values};

/// Bytes encoded in a written name or value: controls, space, everything outside ASCII (the
/// crate encodes it always), what would split or end a parameter (`&`, `=`, `#`), `%` and `+`
/// (which read back as an escape and a space), and what RFC 3986 does not allow in a query.
/// `/`, `?`, `:`, `@` and the other sub-delimiters stay as they are.
const QUERY_VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'=')
    .add(b'<')
    .add(b'>')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// `text` encoded for a query name or value.
pub fn encode(text: &str) -> Cow<'_, str> {
    utf8_percent_encode(text, QUERY_VALUE).into()
}

/// A parameter to write: its name (decoded, as configured, and encoded once at load) and value.
#[derive(Debug, Clone)]
pub struct QueryOp {
    /// The name as configured (decoded), compared with the request's decoded names.
    pub name: String,
    /// The name as written into the query.
    pub encoded_name: String,
    /// The value, rendered then encoded per request.
    pub value: Template,
}

/// Compiled query parameter operations, applied in this order.
#[derive(Debug, Clone, Default)]
pub struct QueryOps {
    /// Names whose every occurrence is removed.
    pub remove: Vec<String>,
    /// When given, every parameter whose name is not listed is removed (`[]` removes them all).
    pub keep: Option<Vec<String>>,
    /// Parameters whose first occurrence gets this value in place, later ones removed; appended
    /// when absent.
    pub set: Vec<QueryOp>,
    /// Parameters appended, keeping those already there.
    pub add: Vec<QueryOp>,
}

/// The raw name of one `name[=value]` piece.
fn name_of(piece: &str) -> &str {
    piece.split_once('=').map_or(piece, |(name, _)| name)
}

impl QueryOps {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.keep.is_none() && self.set.is_empty() && self.add.is_empty()
    }

    /// Every value template.
    pub fn templates(&self) -> impl Iterator<Item = &Template> {
        self.set.iter().chain(&self.add).map(|op| &op.value)
    }

    /// The query (raw, without `?`) after the operations, or `None` when they change nothing.
    /// An empty result means no query at all. A value with substitutions that renders empty is
    /// not written, as with header operations.
    pub fn apply(&self, query: &str, values: &Values<'_>, buf: &mut String) -> Option<String> {
        let mut pieces: Vec<Cow<'_, str>> =
            query.split('&').filter(|p| !p.is_empty()).map(Cow::Borrowed).collect();
        let before = pieces.len();
        let named =
            |piece: &str, names: &[String]| names.iter().any(|n| query_component_eq(name_of(piece), n));
        pieces.retain(|p| !named(p, &self.remove));
        if let Some(keep) = &self.keep {
            pieces.retain(|p| named(p, keep));
        }
        let mut changed = pieces.len() != before;
        for (op, replace) in self.set.iter().map(|op| (op, true)).chain(self.add.iter().map(|op| (op, false)))
        {
            let Some(value) = render(&op.value, values, buf) else { continue };
            changed |= if replace { set(&mut pieces, op, value) } else { add(&mut pieces, op, value) };
        }
        changed.then(|| pieces.join("&"))
    }
}

/// The value to write, or `None` when it has substitutions and renders empty.
fn render<'b>(template: &'b Template, values: &Values<'_>, buf: &'b mut String) -> Option<&'b str> {
    if let Some(literal) = template.as_literal() {
        return Some(literal);
    }
    template.render(values, buf);
    (!buf.is_empty()).then_some(buf.as_str())
}

/// Gives the first parameter named `op.name` the value `value` and removes the others, or
/// appends it; whether the query changed. A first occurrence that already reads as `value`
/// keeps its text (`a+b` stays, though `a%20b` would be written).
fn set(pieces: &mut Vec<Cow<'_, str>>, op: &QueryOp, value: &str) -> bool {
    let mut first = None;
    let mut removed = false;
    let mut at = 0;
    pieces.retain(|p| {
        at += 1;
        if !query_component_eq(name_of(p), &op.name) {
            return true;
        }
        if first.is_none() {
            first = Some(at - 1);
            return true;
        }
        removed = true;
        false
    });
    match first.and_then(|i| pieces.get_mut(i)) {
        Some(existing) if query_component_eq(existing.split_once('=').map_or("", |(_, v)| v), value) => {
            removed
        }
        Some(existing) => {
            *existing = Cow::Owned(piece(op, value));
            true
        }
        None => add(pieces, op, value),
    }
}

fn add(pieces: &mut Vec<Cow<'_, str>>, op: &QueryOp, value: &str) -> bool {
    pieces.push(Cow::Owned(piece(op, value)));
    true
}

/// `name=value`, encoded.
fn piece(op: &QueryOp, value: &str) -> String {
    format!("{}={}", op.encoded_name, encode(value))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use gatewasm::{HeaderSnapshot, Request};

    use super::*;

    /// The request header table of these tests.
    const TABLE: [&str; 2] = ["x-user", "x-none"];

    fn op(name: &str, value: &str) -> QueryOp {
        let slot = |n: &str| TABLE.iter().position(|t| *t == n).unwrap();
        let value = Template::parse(value, false, &mut |n| slot(n)).unwrap();
        QueryOp { name: name.into(), encoded_name: encode(name).into_owned(), value }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn run(ops: &QueryOps, query: &str) -> Option<String> {
        let request =
            Request::from_headers(HeaderSnapshot::from_strs(&[(":path", "/p"), ("x-user", "a&b=c d")]));
        let table = TABLE.map(String::from);
        let values = Values { request: &request, names: &table, response: None };
        ops.apply(query, &values, &mut String::new())
    }

    #[test]
    fn remove_and_keep_by_decoded_name_keep_the_rest_byte_for_byte() {
        let remove = QueryOps { remove: names(&["utm_source", "a b"]), ..QueryOps::default() };
        assert_eq!(
            run(&remove, "id=7&utm_source=x&a+b=1&q=%7e%20&a%20b=2&utm_source=y&&z"),
            Some("id=7&q=%7e%20&z".into())
        );
        assert_eq!(run(&remove, "id=7&utm_sourc=x"), None, "nothing removed, nothing changed");
        assert_eq!(run(&remove, "utm_source=1"), Some(String::new()), "empty: no query");
        let keep = QueryOps { keep: Some(names(&["id", "page"])), ..QueryOps::default() };
        assert_eq!(run(&keep, "page=2&x=1&id=7&id=8&y"), Some("page=2&id=7&id=8".into()), "order kept");
        assert_eq!(run(&keep, "page=2&id=7"), None);
        let none = QueryOps { keep: Some(Vec::new()), ..QueryOps::default() };
        assert_eq!(run(&none, "a=1"), Some(String::new()));
        assert_eq!(run(&none, ""), None);
    }

    #[test]
    fn set_replaces_the_first_in_place_and_drops_the_rest() {
        let set = QueryOps { set: vec![op("v", "2")], ..QueryOps::default() };
        assert_eq!(run(&set, "a=1&v=1&b=2&v=3"), Some("a=1&v=2&b=2".into()));
        assert_eq!(run(&set, "a=1&v=2"), None, "already so");
        assert_eq!(run(&set, "a=1&v=%32"), None, "already so, decoded");
        let spaced = QueryOps { set: vec![op("v", "a b")], ..QueryOps::default() };
        assert_eq!(run(&spaced, "v=a+b"), None, "its text kept");
        assert_eq!(run(&spaced, "v=a"), Some("v=a%20b".into()));
        assert_eq!(run(&set, "a=1&v=2&v=2"), Some("a=1&v=2".into()), "a repeat removed is a change");
        assert_eq!(run(&set, "a=1"), Some("a=1&v=2".into()), "appended when absent");
        assert_eq!(run(&set, ""), Some("v=2".into()));
        assert_eq!(run(&set, "%76=1"), Some("v=2".into()), "names compared decoded");
    }

    #[test]
    fn add_appends_and_written_text_is_encoded() {
        let ops = QueryOps {
            set: vec![
                op("q s", "a&b=c #%%+é/?:@!$'()*,;"),
                op("who", "%REQ(x-user)%"),
                op("gone", "%REQ(x-none)%"),
            ],
            add: vec![op("tag", "x"), op("tag", "")],
            ..QueryOps::default()
        };
        assert_eq!(
            run(&ops, "tag=old").as_deref(),
            Some("tag=old&q%20s=a%26b%3Dc%20%23%25%2B%C3%A9/?:@!$'()*,;&who=a%26b%3Dc%20d&tag=x&tag="),
            "a substituted value that renders empty is not written; a literal empty one is"
        );
        // What is written reads back as the value given.
        let written = run(&ops, "").unwrap();
        let back: Vec<(String, String)> =
            gatewasm::http::query_params(&written).map(|(n, v)| (n.into_owned(), v.into_owned())).collect();
        assert_eq!(back[0], ("q s".into(), "a&b=c #%+é/?:@!$'()*,;".into()));
        assert_eq!(back[1], ("who".into(), "a&b=c d".into()));
    }

    #[test]
    fn operations_run_in_order() {
        let ops = QueryOps {
            remove: names(&["a"]),
            keep: Some(names(&["a", "b", "c"])),
            set: vec![op("a", "set")],
            add: vec![op("b", "added")],
        };
        assert_eq!(run(&ops, "a=1&b=1&x=1&c=1"), Some("b=1&c=1&a=set&b=added".into()));
        assert!(!ops.is_empty());
        assert!(QueryOps::default().is_empty());
    }
}
