//! Applying a rule's header operations to a header map, behind a [`Sink`] so the order and the
//! safety checks are tested natively.

use crate::config::Ops;
use crate::template::Source;

/// A header map the operations write to.
pub trait Sink {
    /// Replaces every value of `name` with `value`.
    fn set(&mut self, name: &str, value: &str);
    /// Appends a value.
    fn add(&mut self, name: &str, value: &str);
    /// Removes every value.
    fn remove(&mut self, name: &str);
    /// Every value of `name`, in order.
    fn values(&mut self, name: &str) -> Vec<String>;
}

/// What applying operations did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Operations skipped because a substituted value contained a control character.
    pub unsafe_dropped: u32,
}

/// Applies `ops` in order (`remove`, `rename`, `set`, `add`), rendering values from `src`.
///
/// A value with substitutions is checked after rendering: if it contains CR, LF, NUL or another
/// control character (other than tab) the operation is dropped (not sanitized: a value that
/// needed cleaning is not one the upstream should act on); if it renders empty the operation is
/// skipped, as Envoy skips a header whose `%REQ(...)%` is empty. Literal values were checked
/// when the configuration was loaded.
pub fn apply(ops: &Ops, src: &dyn Source, sink: &mut dyn Sink, buf: &mut String) -> Applied {
    let mut applied = Applied::default();
    for name in &ops.remove {
        sink.remove(name);
    }
    for (from, to) in &ops.rename {
        let values = sink.values(from);
        let mut values = values.iter();
        let Some(first) = values.next() else { continue };
        sink.remove(from);
        sink.set(to, first);
        for v in values {
            sink.add(to, v);
        }
    }
    for (ops, set) in [(&ops.set, true), (&ops.add, false)] {
        for op in ops {
            let value = match op.value.as_literal() {
                Some(v) => v,
                None => {
                    op.value.render(src, buf);
                    if buf.is_empty() {
                        continue;
                    }
                    if !gatewasm::config::is_header_value(buf) {
                        applied.unsafe_dropped += 1;
                        log::debug!("header_rewrite: value for {} has control characters; dropped", op.name);
                        continue;
                    }
                    buf.as_str()
                }
            };
            if set {
                sink.set(&op.name, value);
            } else {
                sink.add(&op.name, value);
            }
        }
    }
    applied
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::config::parse;

    /// A header map as a list, recording the calls made.
    #[derive(Default)]
    struct Map {
        headers: Vec<(String, String)>,
        calls: Vec<String>,
    }

    impl Sink for Map {
        fn set(&mut self, name: &str, value: &str) {
            self.calls.push(format!("set {name}"));
            self.headers.retain(|(n, _)| n != name);
            self.headers.push((name.into(), value.into()));
        }
        fn add(&mut self, name: &str, value: &str) {
            self.calls.push(format!("add {name}"));
            self.headers.push((name.into(), value.into()));
        }
        fn remove(&mut self, name: &str) {
            self.calls.push(format!("remove {name}"));
            self.headers.retain(|(n, _)| n != name);
        }
        fn values(&mut self, name: &str) -> Vec<String> {
            self.calls.push(format!("values {name}"));
            self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect()
        }
    }

    struct Src(Vec<Option<&'static str>>);

    impl Source for Src {
        fn method(&self) -> &str {
            "GET"
        }
        fn host(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed("api.example.com"))
        }
        fn authority(&self) -> &str {
            "api.example.com"
        }
        fn path(&self) -> &str {
            "/p"
        }
        fn request_header(&self, slot: usize) -> Option<&str> {
            self.0.get(slot).copied().flatten()
        }
        fn response_header(&self, _: &str) -> Option<String> {
            None
        }
    }

    fn ops(json: &str) -> Ops {
        parse(json.as_bytes()).unwrap().rules.remove(0).request
    }

    fn map(pairs: &[(&str, &str)]) -> Map {
        Map { headers: pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(), calls: vec![] }
    }

    #[test]
    fn order_is_remove_rename_set_add() {
        let ops = ops(r#"{"rules": [{"request": {
                "add": [{"name": "x-a", "value": "2"}],
                "set": [{"name": "x-a", "value": "1"}],
                "rename": [{"from": "x-old", "to": "x-new"}],
                "remove": ["x-gone"]
            }}]}"#);
        let mut m =
            map(&[("x-gone", "g"), ("x-old", "o1"), ("x-old", "o2"), ("x-new", "stale"), ("x-a", "0")]);
        let out = apply(&ops, &Src(vec![]), &mut m, &mut String::new());
        assert_eq!(out, Applied::default());
        assert_eq!(
            m.calls,
            ["remove x-gone", "values x-old", "remove x-old", "set x-new", "add x-new", "set x-a", "add x-a"]
        );
        assert_eq!(
            m.headers,
            [
                ("x-new".into(), "o1".into()),
                ("x-new".into(), "o2".into()),
                ("x-a".into(), "1".into()),
                ("x-a".into(), "2".into())
            ]
        );
    }

    #[test]
    fn rename_of_absent_header_leaves_target_alone() {
        let ops = ops(r#"{"rules": [{"request": {"rename": [{"from": "x-old", "to": "x-new"}]}}]}"#);
        let mut m = map(&[("x-new", "keep")]);
        apply(&ops, &Src(vec![]), &mut m, &mut String::new());
        assert_eq!(m.headers, [("x-new".to_string(), "keep".to_string())]);
    }

    #[test]
    fn substituted_control_characters_are_dropped_and_empty_values_skipped() {
        let ops = ops(r#"{"rules": [{"request": {"set": [
                {"name": "x-copy", "value": "u=%REQ(x-user)%"},
                {"name": "x-empty", "value": "%REQ(x-missing)%"},
                {"name": "x-literal-empty", "value": ""},
                {"name": "x-fine", "value": "%REQ(x-fine)%"}
            ]}}]}"#);
        let mut m = map(&[]);
        let out = apply(
            &ops,
            &Src(vec![Some("alice\r\nx-admin: 1"), None, Some("ok\tok")]),
            &mut m,
            &mut String::new(),
        );
        assert_eq!(out.unsafe_dropped, 1);
        assert_eq!(
            m.headers,
            [("x-literal-empty".into(), String::new()), ("x-fine".into(), "ok\tok".into())]
        );
        for bad in ["a\nb", "a\rb", "a\0b", "a\u{7f}b", "a\u{1b}b"] {
            let leaked: &'static str = Box::leak(bad.to_string().into_boxed_str());
            let mut m = map(&[]);
            let out = apply(&ops, &Src(vec![Some(leaked), None, None]), &mut m, &mut String::new());
            assert_eq!(out.unsafe_dropped, 1, "{bad:?}");
            assert!(m.headers.iter().all(|(n, _)| n != "x-copy"), "{bad:?}");
        }
    }
}
