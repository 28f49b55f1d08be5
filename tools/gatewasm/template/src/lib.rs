//! {{name}}: a tenant allow-list. The tenant is read from a request header; a request without
//! it, or from a tenant not on the list, is answered 403 before it reaches the upstream. Every
//! decision is counted by tenant and decision. Config: `{"allowed": ["acme", "globex"]}`.
use gatewasm::config::{self, ConfigErrors, Validate};
use gatewasm::metrics::{Counter, Family};
use gatewasm::{Flow, HttpFilter, LocalReply, Plugin, Root, Stream};
use std::rc::Rc;

/// The label a tenant not on the list is counted under: client-chosen values never become
/// labels, so the series stay bounded.
const OTHER: &str = "other";

/// The configuration, parsed once and shared by every request.
#[derive(serde::Deserialize)]
pub struct {{Type}} {
    /// The request header naming the tenant (default `x-tenant`).
    #[serde(default = "default_header")]
    pub header: String,
    /// The tenants let through (at least one; matched exactly).
    pub allowed: Vec<String>,
    #[serde(skip)]
    decisions: Option<Family<Counter>>,
}

fn default_header() -> String {
    "x-tenant".to_string()
}

impl Validate for {{Type}} {
    fn validate(&self, errors: &mut ConfigErrors) {
        config::check_header_name(errors, "header", &self.header);
        if self.allowed.is_empty() {
            errors.add("allowed", "[]", "name at least one tenant");
        }
        for (i, tenant) in self.allowed.iter().enumerate() {
            if tenant.is_empty() || !config::is_header_value(tenant) {
                errors.add(format!("allowed[{i}]"), tenant, "must be a non-empty header value");
            }
        }
    }
}

impl Plugin for {{Type}} {
    const NAME: &'static str = "{{lib}}";
    type Filter = Guard;
    fn configure(raw: &[u8], root: &Root) -> Result<Self, ConfigErrors> {
        let mut guard: {{Type}} = config::parse(raw)?;
        // One series per allowed tenant and decision, plus `other`: the cap is never reached.
        let series = 2 * (guard.allowed.len() + 1);
        guard.decisions =
            Some(root.metrics().family("{{lib}}_requests_total", &["tenant", "decision"], series));
        Ok(guard)
    }
    fn new_filter(self: &Rc<Self>) -> Guard {
        Guard(Rc::clone(self))
    }
}

/// Per-request state: the shared configuration.
pub struct Guard(Rc<{{Type}}>);

impl HttpFilter for Guard {
    fn on_request_headers(&mut self, stream: &mut Stream, _end_of_stream: bool) -> Flow {
        let tenant = stream.request().header(&self.0.header).map(|t| t.to_string());
        let allowed = tenant.as_deref().and_then(|t| self.0.allowed.iter().find(|a| *a == t));
        if let Some(decisions) = &self.0.decisions {
            let label = allowed.map_or(OTHER, String::as_str);
            decisions.get(&[label, if allowed.is_some() { "allowed" } else { "denied" }]).0.inc();
        }
        match allowed {
            Some(_) => Flow::Continue,
            None => Flow::Reply(LocalReply::new(403, "tenant_denied", "this tenant is not allowed")),
        }
    }
}

gatewasm::export!({{Type}});

#[cfg(test)]
mod tests {
    use gatewasm::testing::{Action, Harness};

    use super::{{Type}};

    const CONFIG: &str = r#"{"allowed": ["acme", "globex"]}"#;

    #[test]
    fn lets_allowed_tenants_through_and_counts_them() {
        let Ok(gateway) = Harness::<{{Type}}>::new(CONFIG) else {
            panic!("configuration refused");
        };
        let mut s = gateway.stream();
        let request = [(":method", "GET"), (":path", "/x"), ("x-tenant", "acme")];
        assert_eq!(s.request_headers(&request, true), Action::Continue);
        assert_eq!(gateway.host().counter("{{lib}}_requests_total;tenant=acme;decision=allowed"), Some(1));
    }

    #[test]
    fn refuses_other_tenants_without_labelling_them() {
        let Ok(gateway) = Harness::<{{Type}}>::new(CONFIG) else {
            panic!("configuration refused");
        };
        for tenant in [Some("initech"), None] {
            let mut s = gateway.stream();
            let mut request = vec![(":method", "GET"), (":path", "/x")];
            request.extend(tenant.map(|t| ("x-tenant", t)));
            assert_eq!(s.request_headers(&request, true), Action::Pause);
            assert_eq!(s.reply().map(|r| r.status), Some(403));
        }
        assert_eq!(gateway.host().counter("{{lib}}_requests_total;tenant=other;decision=denied"), Some(2));
    }

    #[test]
    fn bad_config_is_refused() {
        assert!(Harness::<{{Type}}>::new(r#"{"allowed": []}"#).is_err());
        assert!(Harness::<{{Type}}>::new(r#"{"allowed": ["a"], "header": "bad header"}"#).is_err());
        assert!(Harness::<{{Type}}>::new(r#"{"allowed": ["a"], "colour": 1}"#).is_err());
    }
}
