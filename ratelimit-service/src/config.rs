//! The limits file: Envoy's reference rate limit service format (one domain per file, nested
//! descriptors with `key`, optional `value`, `rate_limit`, `shadow_mode`), read once into typed,
//! validated rules. YAML, so a JSON file is read too.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

/// A time unit of a limit, as in Envoy's `RateLimitResponse.RateLimit.Unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// One second.
    Second,
    /// 60 seconds.
    Minute,
    /// 3,600 seconds.
    Hour,
    /// 86,400 seconds.
    Day,
    /// 7 days.
    Week,
    /// 30 days, as Envoy's reference service counts a month.
    Month,
    /// 365 days.
    Year,
}

impl Unit {
    /// The window a counter of this unit lasts.
    pub fn window(self) -> Duration {
        const DAY: u64 = 86_400;
        Duration::from_secs(match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => DAY,
            Unit::Week => 7 * DAY,
            Unit::Month => 30 * DAY,
            Unit::Year => 365 * DAY,
        })
    }

    /// The protocol's number for this unit (`RateLimitResponse.RateLimit.Unit`, which
    /// `envoy.type.v3.RateLimitUnit` numbers the same way).
    pub fn proto(self) -> i32 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 2,
            Unit::Hour => 3,
            Unit::Day => 4,
            Unit::Month => 5,
            Unit::Year => 6,
            Unit::Week => 7,
        }
    }

    /// The unit the protocol numbers `n`; `None` for `UNKNOWN` and numbers it does not define.
    pub fn from_proto(n: i32) -> Option<Unit> {
        [Unit::Second, Unit::Minute, Unit::Hour, Unit::Day, Unit::Month, Unit::Year, Unit::Week]
            .into_iter()
            .find(|u| u.proto() == n)
    }
}

/// One domain's limits file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainFile {
    domain: String,
    #[serde(default)]
    descriptors: Vec<DescriptorFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DescriptorFile {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    rate_limit: Option<RateLimitFile>,
    #[serde(default)]
    shadow_mode: bool,
    /// Per-value statistics in the reference service; accepted so its files load, no effect here.
    #[serde(default, rename = "detailed_metric")]
    _detailed_metric: bool,
    #[serde(default)]
    descriptors: Vec<DescriptorFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitFile {
    #[serde(default)]
    unit: Option<Unit>,
    #[serde(default)]
    requests_per_unit: Option<u32>,
    #[serde(default)]
    unlimited: bool,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    replaces: Vec<ReplacesFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplacesFile {
    name: String,
}

/// A refused limits file: which file, which field, which value, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// What reading it said.
        source: std::io::Error,
    },
    /// Not YAML/JSON of the expected shape (the parser names the field and position).
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// The parser's message, with the field path and line.
        message: String,
    },
    /// A field with a value the service refuses.
    #[error("{file}: {field} = {value:?}: {reason}")]
    Invalid {
        /// The file.
        file: String,
        /// The field's path, as `descriptors[0].rate_limit.unit`.
        field: String,
        /// The refused value.
        value: String,
        /// Why.
        reason: &'static str,
    },
}

/// What a matched descriptor does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Count against `requests_per_unit` per `unit`.
    Limit(Limit),
    /// Never limited, never counted (`unlimited: true`).
    Unlimited,
}

/// A limit of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Requests allowed per window.
    pub requests_per_unit: u32,
    /// The window.
    pub unit: Unit,
    /// The name reported in `current_limit.name`.
    pub name: Option<String>,
    /// Counted and reported, never enforced.
    pub shadow_mode: bool,
    /// Names of limits this one replaces when both match one request (`replaces`).
    pub replaces: Vec<String>,
    /// Stable identity of the rule (domain and the path of keys and values that lead to it),
    /// shared by every service instance reading the same file, so their counters meet in Redis.
    pub id: String,
}

/// One level of the descriptor tree.
#[derive(Debug, Default, Clone)]
pub struct Node {
    /// Exact `key` + `value` entries, by key then value (looked up without allocating).
    exact: HashMap<String, HashMap<String, Rule>>,
    /// `value: prefix*` entries, by key, in file order.
    prefixes: HashMap<String, Vec<(String, Rule)>>,
    /// `key` without `value`: any value, each value counted apart.
    any: HashMap<String, Rule>,
}

/// A descriptor entry of the file and what is below it.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The limit when the request's descriptor ends here.
    pub action: Option<Action>,
    /// Deeper entries.
    pub children: Node,
}

impl Node {
    /// The rule for `key` = `value` at this level: the exact value first, then a `prefix*`
    /// value (first in file order), then the key alone, as Envoy's reference service looks.
    pub fn find(&self, key: &str, value: &str) -> Option<&Rule> {
        if let Some(rule) = self.exact.get(key).and_then(|values| values.get(value)) {
            return Some(rule);
        }
        if let Some(rule) = self
            .prefixes
            .get(key)
            .and_then(|list| list.iter().find(|(prefix, _)| value.starts_with(prefix.as_str())))
        {
            return Some(&rule.1);
        }
        self.any.get(key)
    }
}

/// Every domain's limits.
#[derive(Debug, Default, Clone)]
pub struct Limits {
    domains: HashMap<String, Node>,
}

impl Limits {
    /// Reads and validates each file (one domain each); a domain in two files is refused.
    pub fn from_files(files: &[std::path::PathBuf]) -> Result<Limits, ConfigError> {
        let mut limits = Limits::default();
        for path in files {
            let file = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { file: file.clone(), source })?;
            limits.add(&file, &text)?;
        }
        Ok(limits)
    }

    /// Parses one domain's file (`file` names it in errors) and adds it.
    pub fn add(&mut self, file: &str, text: &str) -> Result<(), ConfigError> {
        let parsed: DomainFile = serde_yaml_ng::from_str(text)
            .map_err(|e| ConfigError::Parse { file: file.to_string(), message: e.to_string() })?;
        let invalid = |field: &str, value: &str, reason| ConfigError::Invalid {
            file: file.to_string(),
            field: field.to_string(),
            value: value.to_string(),
            reason,
        };
        if parsed.domain.is_empty() {
            return Err(invalid("domain", "", "must not be empty"));
        }
        if self.domains.contains_key(&parsed.domain) {
            return Err(invalid("domain", &parsed.domain, "already defined by another limits file"));
        }
        let id = escape(&parsed.domain);
        let node = build(&parsed.descriptors, "descriptors", &id, &invalid)?;
        self.domains.insert(parsed.domain, node);
        Ok(())
    }

    /// The tree of `domain`, if a file defines it.
    pub fn domain(&self, domain: &str) -> Option<&Node> {
        self.domains.get(domain)
    }

    /// How many domains are defined.
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }
}

/// Escapes `/`, `=` and `%` so ids built from keys and values cannot collide.
pub(crate) fn escape(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F").replace('=', "%3D")
}

fn build(
    list: &[DescriptorFile],
    path: &str,
    parent_id: &str,
    invalid: &dyn Fn(&str, &str, &'static str) -> ConfigError,
) -> Result<Node, ConfigError> {
    let mut node = Node::default();
    for (i, d) in list.iter().enumerate() {
        let here = format!("{path}[{i}]");
        if d.key.is_empty() {
            return Err(invalid(&format!("{here}.key"), "", "must not be empty"));
        }
        // An empty value is no value, as in the reference service.
        let value = d.value.as_deref().filter(|v| !v.is_empty());
        let id = match value {
            Some(v) => format!("{parent_id}/{}={}", escape(&d.key), escape(v)),
            None => format!("{parent_id}/{}", escape(&d.key)),
        };
        let action = match &d.rate_limit {
            None => {
                if d.shadow_mode {
                    return Err(invalid(&format!("{here}.shadow_mode"), "true", "needs a rate_limit"));
                }
                None
            }
            Some(r) => Some(action(r, d.shadow_mode, &id, &format!("{here}.rate_limit"), invalid)?),
        };
        let children = build(&d.descriptors, &format!("{here}.descriptors"), &id, invalid)?;
        let rule = Rule { action, children };
        let duplicate = match value {
            Some(v) if v.ends_with('*') => {
                let prefix = v.trim_end_matches('*');
                if prefix.contains('*') {
                    return Err(invalid(&format!("{here}.value"), v, "a `*` may only end the value"));
                }
                let list = node.prefixes.entry(d.key.clone()).or_default();
                let seen = list.iter().any(|(p, _)| p == prefix);
                list.push((prefix.to_string(), rule));
                seen
            }
            Some(v) => {
                if v.contains('*') {
                    return Err(invalid(&format!("{here}.value"), v, "a `*` may only end the value"));
                }
                node.exact.entry(d.key.clone()).or_default().insert(v.to_string(), rule).is_some()
            }
            None => node.any.insert(d.key.clone(), rule).is_some(),
        };
        if duplicate {
            let shown = match value {
                Some(v) => format!("{}={v}", d.key),
                None => d.key.clone(),
            };
            return Err(invalid(&here, &shown, "the same key and value twice at one level"));
        }
    }
    Ok(node)
}

fn action(
    r: &RateLimitFile,
    shadow_mode: bool,
    id: &str,
    here: &str,
    invalid: &dyn Fn(&str, &str, &'static str) -> ConfigError,
) -> Result<Action, ConfigError> {
    if r.unlimited {
        if let Some(unit) = r.unit {
            return Err(invalid(
                &format!("{here}.unit"),
                &format!("{unit:?}").to_lowercase(),
                "an unlimited rate_limit has no unit",
            ));
        }
        if let Some(n) = r.requests_per_unit {
            return Err(invalid(
                &format!("{here}.requests_per_unit"),
                &n.to_string(),
                "an unlimited rate_limit has no requests_per_unit",
            ));
        }
        if shadow_mode {
            return Err(invalid(&format!("{here}.unlimited"), "true", "shadow_mode needs a limit"));
        }
        return Ok(Action::Unlimited);
    }
    let Some(unit) = r.unit else {
        return Err(invalid(&format!("{here}.unit"), "", "required unless unlimited is true"));
    };
    let Some(requests_per_unit) = r.requests_per_unit else {
        return Err(invalid(&format!("{here}.requests_per_unit"), "", "required unless unlimited is true"));
    };
    let name = r.name.clone().filter(|n| !n.is_empty());
    let mut replaces = Vec::with_capacity(r.replaces.len());
    for (i, replaced) in r.replaces.iter().enumerate() {
        let field = format!("{here}.replaces[{i}].name");
        if replaced.name.is_empty() {
            return Err(invalid(&field, "", "must not be empty"));
        }
        if name.as_deref() == Some(replaced.name.as_str()) {
            return Err(invalid(&field, &replaced.name, "a limit cannot replace itself"));
        }
        replaces.push(replaced.name.clone());
    }
    let window = unit.window().as_secs();
    Ok(Action::Limit(Limit {
        requests_per_unit,
        unit,
        name,
        shadow_mode,
        replaces,
        id: format!("{id}/{window}s"),
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    const FILE: &str = r#"
domain: gateway
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: generic_key
    value: login
    descriptors:
      - key: remote_address
        rate_limit: {unit: minute, requests_per_unit: 5, name: login-per-client}
        shadow_mode: true
  - key: path
    value: /api/*
    rate_limit: {unit: hour, requests_per_unit: 1000}
  - key: path
    value: /api/free
    rate_limit: {unlimited: true}
"#;

    fn limits(text: &str) -> Result<Limits, ConfigError> {
        let mut limits = Limits::default();
        limits.add("limits.yaml", text)?;
        Ok(limits)
    }

    fn limit_of(rule: &Rule) -> &Limit {
        match &rule.action {
            Some(Action::Limit(l)) => l,
            other => panic!("not a limit: {other:?}"),
        }
    }

    #[test]
    fn the_reference_format_is_read_into_rules() {
        let limits = limits(FILE).unwrap();
        let root = limits.domain("gateway").unwrap();
        assert!(limits.domain("other").is_none());

        let per_client = root.find("remote_address", "10.0.0.1").unwrap();
        let l = limit_of(per_client);
        assert_eq!((l.requests_per_unit, l.unit, l.shadow_mode), (10, Unit::Second, false));
        assert_eq!(l.id, "gateway/remote_address/1s");
        // Any value of a key without `value` finds the same rule (counted per value later).
        assert_eq!(root.find("remote_address", "10.0.0.2").unwrap().action, per_client.action);

        let login = root.find("generic_key", "login").unwrap();
        assert!(login.action.is_none(), "no limit of its own: only the nested one");
        assert!(root.find("generic_key", "logout").is_none());
        let nested = limit_of(login.children.find("remote_address", "1.2.3.4").unwrap());
        assert_eq!(nested.name.as_deref(), Some("login-per-client"));
        assert!(nested.shadow_mode);
        assert_eq!(nested.id, "gateway/generic_key=login/remote_address/60s");

        // Exact values win over a prefix, a prefix over nothing.
        assert_eq!(root.find("path", "/api/free").unwrap().action, Some(Action::Unlimited));
        assert_eq!(limit_of(root.find("path", "/api/users").unwrap()).unit, Unit::Hour);
        assert!(root.find("path", "/other").is_none());
    }

    #[test]
    fn json_is_read_too() {
        let json = r#"{"domain": "d", "descriptors": [{"key": "k", "rate_limit": {"unit": "day", "requests_per_unit": 3}}]}"#;
        let limits = limits(json).unwrap();
        assert_eq!(limit_of(limits.domain("d").unwrap().find("k", "v").unwrap()).requests_per_unit, 3);
    }

    fn refused(text: &str) -> String {
        limits(text).unwrap_err().to_string()
    }

    #[test]
    fn bad_files_are_refused_naming_the_field_and_value() {
        let e = refused(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
        );
        assert!(e.contains("descriptors[0].rate_limit.unit") && e.contains("fortnight"), "{e}");
        let e = refused("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second}\n");
        assert!(e.contains("descriptors[0].rate_limit.requests_per_unit"), "{e}");
        let e = refused(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: -1}\n",
        );
        assert!(e.contains("descriptors[0].rate_limit.requests_per_unit") && e.contains("-1"), "{e}");
        let e = refused("domain: d\ndescriptors:\n  - key: k\n    colour: blue\n");
        assert!(e.contains("descriptors[0]") && e.contains("colour"), "{e}");
        let e = refused("domain: ''\n");
        assert!(e.contains("domain = \"\""), "{e}");
        let e = refused("domain: d\ndescriptors:\n  - key: k\n    value: a*b\n");
        assert!(e.contains("descriptors[0].value = \"a*b\""), "{e}");
        let e = refused(
            "domain: d\ndescriptors:\n  - key: k\n    descriptors:\n      - {key: x, value: '1'}\n      - {key: x, value: '1'}\n",
        );
        assert!(e.contains("descriptors[0].descriptors[1] = \"x=1\""), "{e}");
        let e = refused(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, requests_per_unit: 4}\n",
        );
        assert!(e.contains("descriptors[0].rate_limit.requests_per_unit = \"4\""), "{e}");
        let e =
            refused("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, unit: second}\n");
        assert!(e.contains("descriptors[0].rate_limit.unit = \"second\""), "{e}");
        let e = refused(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1, name: a, replaces: [{name: a}]}\n",
        );
        assert!(e.contains("descriptors[0].rate_limit.replaces[0].name = \"a\""), "{e}");
        let e = refused("domain: d\ndescriptors:\n  - key: k\n    shadow_mode: true\n");
        assert!(e.contains("descriptors[0].shadow_mode"), "{e}");
        let e = refused("domain: d\ndescriptors:\n  - key: ''\n");
        assert!(e.contains("descriptors[0].key"), "{e}");
        assert!(e.starts_with("limits.yaml: "), "{e}");
    }

    #[test]
    fn reference_fields_load() {
        let limits = limits(
            "domain: d\ndescriptors:\n  - key: k\n    value: ''\n    detailed_metric: true\n    rate_limit: {unit: second, requests_per_unit: 1, name: b, replaces: [{name: a}]}\n",
        )
        .unwrap();
        let limit = limit_of(limits.domain("d").unwrap().find("k", "any").unwrap());
        assert_eq!(limit.replaces, ["a"]);
        assert_eq!(limit.id, "d/k/1s", "an empty value is no value");
    }

    #[test]
    fn a_domain_in_two_files_is_refused() {
        let mut limits = Limits::default();
        limits.add("a.yaml", "domain: d\n").unwrap();
        let e = limits.add("b.yaml", "domain: d\n").unwrap_err().to_string();
        assert!(e.contains("b.yaml: domain = \"d\""), "{e}");
        assert_eq!(limits.domain_count(), 1);
    }

    #[test]
    fn ids_do_not_collide_on_separators() {
        let limits = limits(
            "domain: d\ndescriptors:\n  - {key: a/b, rate_limit: {unit: second, requests_per_unit: 1}}\n  - {key: a, descriptors: [{key: b, rate_limit: {unit: second, requests_per_unit: 1}}]}\n",
        )
        .unwrap();
        let root = limits.domain("d").unwrap();
        let one = &limit_of(root.find("a/b", "x").unwrap()).id;
        let two = &limit_of(root.find("a", "x").unwrap().children.find("b", "y").unwrap()).id;
        assert_ne!(one, two);
    }

    #[test]
    fn units_match_the_protocol() {
        for u in [Unit::Second, Unit::Minute, Unit::Hour, Unit::Day, Unit::Week, Unit::Month, Unit::Year] {
            assert_eq!(Unit::from_proto(u.proto()), Some(u));
        }
        assert_eq!(Unit::from_proto(0), None);
        assert_eq!(Unit::Month.window(), Duration::from_secs(30 * 86_400));
    }
}
