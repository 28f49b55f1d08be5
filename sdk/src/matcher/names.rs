//! The one check of rule names, for every filter whose rules are named.

use crate::config::ConfigErrors;

/// Longest rule name.
pub const MAX_RULE_NAME: usize = 64;

/// Checks the names of the rules listed under `at` (`rules`), `None` for a rule without one,
/// and returns each rule's name: its own, or its index. A name is 1 to 64 printable ASCII
/// characters without spaces (it goes into logs and metric labels), and no two rules share one,
/// an index included (a rule named `"0"` beside an unnamed first rule would share its counts).
pub fn rule_names<'a>(
    errors: &mut ConfigErrors,
    at: &str,
    names: impl IntoIterator<Item = Option<&'a str>>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, name) in names.into_iter().enumerate() {
        let named = name.is_some();
        let name = match name {
            Some(n) => {
                if n.is_empty() || n.len() > MAX_RULE_NAME || !n.bytes().all(|b| b.is_ascii_graphic()) {
                    errors.add(
                        format!("{at}[{i}].name"),
                        n,
                        format!("must be 1 to {MAX_RULE_NAME} printable ASCII characters, without spaces"),
                    );
                }
                n.to_string()
            }
            None => i.to_string(),
        };
        if let Some(first) = out.iter().position(|n| *n == name) {
            let field = if named { format!("{at}[{i}].name") } else { format!("{at}[{i}]") };
            errors.add(
                field,
                &name,
                format!("`{at}[{first}]` has this name too: rule names are unique (a rule without one is named by its index)"),
            );
        }
        out.push(name);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn check(names: &[Option<&str>]) -> (Vec<String>, Vec<String>) {
        let mut errors = ConfigErrors::new();
        let out = rule_names(&mut errors, "rules", names.iter().copied());
        (out, errors.errors().iter().map(ToString::to_string).collect())
    }

    #[test]
    fn names_or_indexes() {
        let (names, errors) = check(&[Some("health"), None, Some("api-v2.read")]);
        assert_eq!(names, ["health", "1", "api-v2.read"]);
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn every_error_names_the_rule_and_the_value() {
        let long = "x".repeat(65);
        let (_, errors) = check(&[Some(""), Some("a b"), Some(&long), Some("caf\u{e9}")]);
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert_eq!(
            errors[0],
            "`rules[0].name` = \"\": must be 1 to 64 printable ASCII characters, without spaces"
        );
        assert!(errors[1].starts_with("`rules[1].name` = \"a b\": must be 1 to 64"));
        assert!(errors[2].starts_with("`rules[2].name` = \"xxxx"));
        assert!(errors[3].starts_with("`rules[3].name` = \"caf\u{e9}\""));
        assert!(check(&[Some(&"x".repeat(64))]).1.is_empty());
    }

    #[test]
    fn duplicates_are_refused_indexes_included() {
        let (_, errors) = check(&[Some("a"), Some("a")]);
        assert_eq!(
            errors,
            ["`rules[1].name` = \"a\": `rules[0]` has this name too: rule names are unique (a rule without one is named by its index)"]
        );
        let (_, errors) = check(&[Some("1"), None]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("`rules[1]` = \"1\": `rules[0]` has this name too"), "{errors:?}");
        let (_, errors) = check(&[None, Some("0")]);
        assert!(errors[0].starts_with("`rules[1].name` = \"0\": `rules[0]`"), "{errors:?}");
    }
}
