//! Local replies, in one place and one shape.
//!
//! Every reply a filter built with this SDK sends has `content-type: application/json` and a body
//! of this shape (and only this shape, so clients and log pipelines can rely on it):
//!
//! ```json
//! {"status": 401, "code": "invalid_token", "message": "Jwt is expired"}
//! ```
//!
//! `code` is a stable machine-readable reason in snake case; `message` is for people and never
//! echoes credentials. The same `code` goes to Envoy as the response code details
//! (`%RESPONSE_CODE_DETAILS%` in access logs), prefixed with the filter's name.

use proxy_wasm::types::Status;

use crate::host::Host;

/// A reply the filter sends instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status code.
    pub status: u16,
    /// Stable reason, snake case (`invalid_token`, `forbidden`).
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Extra response headers (`www-authenticate`, `location`, ...).
    pub headers: Vec<(String, String)>,
    /// When set, sent as is instead of the JSON body (with its own content type in `headers`):
    /// for passing on a body another service produced, as external auth does.
    pub raw_body: Option<Vec<u8>>,
}

impl LocalReply {
    /// A reply with a status, a reason code and a message.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), headers: Vec::new(), raw_body: None }
    }

    /// The answer to a request whose host [`crate::http::normalize_host`] cannot read, from a
    /// filter whose rules look at the host: `400 invalid_host`. One reply for every filter, so
    /// clients and logs see one shape whichever filter refused.
    pub fn invalid_host() -> Self {
        Self::new(400, "invalid_host", "the Host header is not a host name with an optional port")
    }

    /// A redirect as Envoy's route `redirect` answers one: `status` (a 3xx), `location`, no body
    /// (so no JSON and no `content-type`); `code` `redirect`.
    pub fn redirect(status: u16, location: impl Into<String>) -> Self {
        Self::new(status, "redirect", String::new()).header("location", location).raw_body(Vec::new())
    }

    /// Adds a response header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the JSON body with `body` (the caller sets `content-type` itself).
    pub fn raw_body(mut self, body: Vec<u8>) -> Self {
        self.raw_body = Some(body);
        self
    }

    /// The JSON body this reply sends.
    pub fn json_body(&self) -> Vec<u8> {
        let body = serde_json::json!({
            "status": self.status,
            "code": self.code,
            "message": self.message,
        });
        // Serializing a `Value` built from strings and integers cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// Sends the reply on the current stream of `host`. `filter` names the sender in response
    /// details.
    pub(crate) fn send(&self, host: &dyn Host, filter: &str) -> Result<(), Status> {
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(self.headers.len() + 1);
        let body = match &self.raw_body {
            Some(raw) => raw.clone(),
            None => {
                headers.push(("content-type", "application/json"));
                self.json_body()
            }
        };
        headers.extend(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        // Response code details are single tokens by Envoy's convention (no spaces); `code` is
        // snake case by contract.
        let details = format!("{filter}_{}", self.code);
        host.send_local_response(u32::from(self.status), &details, &body, &headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_has_a_location_and_no_body() {
        let r = LocalReply::redirect(308, "https://example.com/a?b=1");
        assert_eq!((r.status, r.code), (308, "redirect"));
        assert_eq!(r.headers, [("location".to_string(), "https://example.com/a?b=1".to_string())]);
        assert_eq!(r.raw_body.as_deref(), Some(&[][..]));
    }

    #[test]
    fn body_shape_and_escaping() {
        let r = LocalReply::new(401, "invalid_token", "bad \"quote\"\n");
        let v: serde_json::Value = serde_json::from_slice(&r.json_body()).unwrap();
        assert_eq!(v["status"], 401);
        assert_eq!(v["code"], "invalid_token");
        assert_eq!(v["message"], "bad \"quote\"\n");
        assert_eq!(v.as_object().unwrap().len(), 3);
    }
}
