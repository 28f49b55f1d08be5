//! A minimal SDK filter: greets the upstream with a header naming the host, refuses paths under a
//! blocked prefix, counts requests by method. Config: `{"greeting": "hi", "blocked_prefix": "/x"}`.
use gatewasm::config::{self, ConfigErrors, Validate};
use gatewasm::metrics::{Counter, Family};
use gatewasm::{Flow, HttpFilter, LocalReply, Plugin, Root, Stream};
use std::rc::Rc;

/// The configuration, parsed once and shared by every request.
#[derive(serde::Deserialize)]
pub struct Hello {
    /// Text put in the `x-greeting` request header, before the host (default `hello`).
    pub greeting: Option<String>,
    /// Requests whose path starts with this are answered 403.
    pub blocked_prefix: Option<String>,
    #[serde(skip)]
    requests: Option<Family<Counter>>,
}

impl Validate for Hello {
    fn validate(&self, errors: &mut ConfigErrors) {
        config::check_header_value(errors, "greeting", self.greeting.as_deref().unwrap_or_default());
        if let Some(p) = self.blocked_prefix.as_deref().filter(|p| !p.starts_with('/')) {
            errors.add("blocked_prefix", p, "must start with '/'");
        }
    }
}

impl Plugin for Hello {
    const NAME: &'static str = "hello";
    type Filter = Greeter;
    fn configure(raw: &[u8], root: &Root) -> Result<Self, ConfigErrors> {
        let mut hello: Hello = config::parse(raw)?;
        hello.requests = Some(root.metrics().family("hello_requests_total", &["method"], 16));
        Ok(hello)
    }
    fn new_filter(self: &Rc<Self>) -> Greeter {
        Greeter(Rc::clone(self))
    }
}

/// Per-request state: the shared configuration.
pub struct Greeter(Rc<Hello>);
impl HttpFilter for Greeter {
    fn on_request_headers(&mut self, stream: &mut Stream, _end_of_stream: bool) -> Flow {
        let req = stream.request();
        if let Some(requests) = &self.0.requests {
            requests.get(&[req.method()]).0.inc();
        }
        if self.0.blocked_prefix.as_deref().is_some_and(|p| req.path().starts_with(p)) {
            return Flow::Reply(LocalReply::new(403, "blocked_path", "this path is blocked"));
        }
        let greeting = self.0.greeting.as_deref().unwrap_or("hello");
        // `host()` is None for an authority that is not a host name (`a:1:2`, `user@h`).
        let host = req.host();
        let _ = stream
            .request_headers()
            .set("x-greeting", &format!("{greeting} {}", host.as_deref().unwrap_or("stranger")));
        Flow::Continue
    }
}

gatewasm::export!(Hello);

#[cfg(test)]
mod tests {
    use gatewasm::testing::{Action, Harness};

    use super::Hello;

    #[test]
    fn greets_counts_and_blocks_on_the_fake_host() {
        let Ok(gateway) = Harness::<Hello>::new(r#"{"greeting": "hi", "blocked_prefix": "/admin"}"#) else {
            panic!("configuration refused");
        };
        let mut s = gateway.stream();
        let request = [(":method", "GET"), (":path", "/x"), (":authority", "Shop.Example.com:8080")];
        assert_eq!(s.request_headers(&request, true), Action::Continue);
        assert_eq!(s.request_header("x-greeting").as_deref(), Some("hi shop.example.com"));
        assert_eq!(gateway.host().counter("hello_requests_total;method=GET"), Some(1));

        let mut s = gateway.stream();
        assert_eq!(s.request_headers(&[(":method", "GET"), (":path", "/admin/x")], true), Action::Pause);
        assert_eq!(s.reply().map(|r| r.status), Some(403));
        assert!(Harness::<Hello>::new(r#"{"blocked_prefix": "admin"}"#).is_err());
    }
}
