//! Applying a rule's header operations to one of the stream's header maps.

use gatewasm::HeaderMap;

use crate::config::Ops;
use crate::template::Values;

/// What applying operations did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Operations skipped because a substituted value contained a control character.
    pub unsafe_dropped: u32,
}

/// Applies `ops` to `headers` in order (`remove`, `rename`, `set`, `add`), rendering values
/// from `values`. A write the host refuses is logged and the request or response goes on as it
/// is rather than failing.
///
/// A value with substitutions is checked after rendering: if it contains CR, LF, NUL or another
/// control character (other than tab) the operation is dropped (not sanitized: a value that
/// needed cleaning is not one the upstream should act on); if it renders empty the operation is
/// skipped, as Envoy skips a header whose `%REQ(...)%` is empty. Literal values were checked
/// when the configuration was loaded.
pub fn apply(ops: &Ops, values: &Values<'_>, headers: HeaderMap<'_>, buf: &mut String) -> Applied {
    let mut applied = Applied::default();
    for name in &ops.remove {
        remove(headers, name);
    }
    for (from, to) in &ops.rename {
        // Every value, as the map is now (after this rule's removes and earlier renames).
        let snapshot = headers.snapshot();
        let mut moved = snapshot.get_all(from);
        let Some(first) = moved.next() else { continue };
        remove(headers, from);
        set(headers, to, first);
        for v in moved {
            add(headers, to, v);
        }
    }
    for (ops, replace) in [(&ops.set, true), (&ops.add, false)] {
        for op in ops {
            let value = match op.value.as_literal() {
                Some(v) => v,
                None => {
                    op.value.render(values, buf);
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
            if replace {
                set(headers, &op.name, value);
            } else {
                add(headers, &op.name, value);
            }
        }
    }
    applied
}

/// Replaces every value of `name`, logging a refusal.
pub fn set(headers: HeaderMap<'_>, name: &str, value: &str) {
    if let Err(status) = headers.set(name, value) {
        log::warn!("header_rewrite: setting {name} failed: {status:?}");
    }
}

fn add(headers: HeaderMap<'_>, name: &str, value: &str) {
    if let Err(status) = headers.add(name, value) {
        log::warn!("header_rewrite: adding {name} failed: {status:?}");
    }
}

/// Removes every value of `name`, logging a refusal.
pub fn remove(headers: HeaderMap<'_>, name: &str) {
    if let Err(status) = headers.remove(name) {
        log::warn!("header_rewrite: removing {name} failed: {status:?}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use gatewasm::testing::{Action, Harness};

    use crate::HeaderRewrite;

    /// The request headers (pseudo-headers left out) after a request with `headers` went
    /// through one rule with `ops`, and the host calls the stream made.
    fn after(ops: &str, headers: &[(&str, &str)]) -> (Vec<(String, String)>, u64, Harness<HeaderRewrite>) {
        let gw = Harness::<HeaderRewrite>::new(&format!(r#"{{"rules": [{{"request": {ops}}}]}}"#)).unwrap();
        let mut request = vec![(":method", "GET"), (":path", "/p"), (":authority", "api.example.com")];
        request.extend_from_slice(headers);
        let mut s = gw.stream();
        assert_eq!(s.request_headers(&request, true), Action::Continue);
        let now = s.request_headers_now().into_iter().filter(|(n, _)| !n.starts_with(':')).collect();
        (now, s.calls(), gw)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn order_is_remove_rename_set_add() {
        let (headers, calls, _) = after(
            r#"{"add": [{"name": "x-a", "value": "2"}],
                "set": [{"name": "x-a", "value": "1"}],
                "rename": [{"from": "x-old", "to": "x-new"}],
                "remove": ["x-gone"]}"#,
            &[("x-gone", "g"), ("x-old", "o1"), ("x-old", "o2"), ("x-new", "stale"), ("x-a", "0")],
        );
        // x-new's stale value is replaced in place (Envoy keeps the first position).
        assert_eq!(headers, pairs(&[("x-new", "o1"), ("x-a", "1"), ("x-new", "o2"), ("x-a", "2")]));
        // remove x-gone; read for the rename, remove x-old, set and add x-new; set and add x-a.
        // No request value is read: the rule has no condition and literal values only.
        assert_eq!(calls, 7);
    }

    #[test]
    fn rename_of_absent_header_leaves_target_alone() {
        let (headers, _, _) =
            after(r#"{"rename": [{"from": "x-old", "to": "x-new"}]}"#, &[("x-new", "keep")]);
        assert_eq!(headers, pairs(&[("x-new", "keep")]));
    }

    #[test]
    fn substituted_control_characters_are_dropped_and_empty_values_skipped() {
        let ops = r#"{"set": [
                {"name": "x-copy", "value": "u=%REQ(x-user)%"},
                {"name": "x-empty", "value": "%REQ(x-missing)%"},
                {"name": "x-literal-empty", "value": ""},
                {"name": "x-fine", "value": "%REQ(x-fine)%"}
            ]}"#;
        let (headers, _, gw) = after(ops, &[("x-user", "alice\r\nx-admin: 1"), ("x-fine", "ok\tok")]);
        let set: Vec<_> = headers.into_iter().filter(|(n, _)| n != "x-user").collect();
        assert_eq!(set, pairs(&[("x-fine", "ok\tok"), ("x-literal-empty", "")]));
        assert_eq!(gw.host().counter(crate::UNSAFE_DROPPED), Some(1));
        for bad in ["a\nb", "a\rb", "a\0b", "a\u{7f}b", "a\u{1b}b"] {
            let (headers, _, gw) = after(ops, &[("x-user", bad)]);
            assert!(headers.iter().all(|(n, _)| n != "x-copy"), "{bad:?}");
            assert_eq!(gw.host().counter(crate::UNSAFE_DROPPED), Some(1), "{bad:?}");
        }
    }
}
