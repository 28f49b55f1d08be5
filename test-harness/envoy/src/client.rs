//! A tiny blocking HTTP/1.1 client for tests, built on hyper's connection-level client.
//!
//! Every request opens a fresh connection, so no state leaks between requests, and only loopback
//! addresses are accepted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// An HTTP request to send with [`send`] or [`crate::Envoy::send`].
#[derive(Debug, Clone)]
pub struct Request {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path with query, e.g. `/a?b=c`.
    pub path: String,
    /// Headers in order; repeated names are sent as repeated header lines.
    pub headers: Vec<(String, String)>,
    /// Body; empty for none.
    pub body: Vec<u8>,
    /// How long to wait for the whole response.
    pub timeout: Duration,
}

impl Request {
    /// A request with the given method and path, no headers and no body.
    pub fn new(method: &str, path: &str) -> Self {
        Request {
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: Duration::from_secs(10),
        }
    }

    /// A `GET` request.
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// A `POST` request with a body.
    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", path).body(body)
    }

    /// Adds a header (repeat the call to send a name twice).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the response timeout (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// A received HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in received order, lower-case names, repeated names kept.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header (name is case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// All values of a header in received order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().filter(|(n, _)| *n == name).map(|(_, v)| v.as_str()).collect()
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not JSON: {}", self.text()))
    }

    /// The body parsed as the [`crate::EchoUpstream`]'s description of the request it received.
    pub fn echo(&self) -> anyhow::Result<Echo> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response (status {}) is not an echo: {}", self.status, self.text()))
    }
}

/// What the [`crate::EchoUpstream`] received, as it reports it in its JSON response body.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Echo {
    /// Request method.
    pub method: String,
    /// Request path with query.
    pub path: String,
    /// Headers by lower-case name: a string, or an array when the name was repeated.
    pub headers: BTreeMap<String, serde_json::Value>,
    /// Request body (invalid UTF-8 replaced).
    pub body: String,
}

impl Echo {
    /// The first value of a header the upstream received.
    pub fn header(&self, name: &str) -> Option<&str> {
        match self.headers.get(&name.to_ascii_lowercase())? {
            serde_json::Value::String(s) => Some(s),
            serde_json::Value::Array(values) => values.first().and_then(|v| v.as_str()),
            _ => None,
        }
    }

    /// All values of a header the upstream received, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        match self.headers.get(&name.to_ascii_lowercase()) {
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            Some(serde_json::Value::Array(values)) => values.iter().filter_map(|v| v.as_str()).collect(),
            _ => Vec::new(),
        }
    }
}

/// Sends one request to `addr` (which must be a loopback address) on a new HTTP/1.1 connection
/// and waits for the full response. Adds `host: localhost` unless the request sets a host.
pub fn send(addr: SocketAddr, request: &Request) -> anyhow::Result<Response> {
    if !addr.ip().is_loopback() {
        bail!("refusing to send a request to non-loopback address {addr}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio runtime for the test client")?;
    let timeout = request.timeout;
    runtime.block_on(async { tokio::time::timeout(timeout, send_async(addr, request)).await }).map_err(
        |_| anyhow::anyhow!("{} {} to {addr}: no response within {timeout:?}", request.method, request.path),
    )?
}

async fn send_async(addr: SocketAddr, request: &Request) -> anyhow::Result<Response> {
    let stream =
        tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("HTTP/1.1 handshake")?;
    let conn_task = tokio::spawn(conn);

    let mut builder = hyper::Request::builder().method(request.method.as_str()).uri(request.path.as_str());
    if !request.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        builder = builder.header("host", "localhost");
    }
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let req = builder
        .body(Full::new(Bytes::from(request.body.clone())))
        .with_context(|| format!("building request {} {}", request.method, request.path))?;

    let response = sender
        .send_request(req)
        .await
        .with_context(|| format!("{} {} to {addr}", request.method, request.path))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = response.into_body().collect().await.context("reading response body")?.to_bytes().to_vec();
    drop(sender);
    conn_task.abort();
    Ok(Response { status, headers, body })
}
