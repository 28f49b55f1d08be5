//! Test upstreams: HTTP/1.1 servers on 127.0.0.1, each on its own tokio runtime in background
//! threads, so tests stay plain synchronous `#[test]`s. Dropping an upstream stops it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};

type Handler = Arc<dyn Fn(Received) -> Reply + Send + Sync>;

/// A request as an upstream received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers in received order, lower-case names, repeated names kept.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Received {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The request as the echo upstream reports it:
    /// `{"method","path","headers":{name: value | [values]},"body"}`.
    pub fn to_echo_json(&self) -> Value {
        let mut headers = Map::new();
        for (name, value) in &self.headers {
            match headers.get_mut(name) {
                None => {
                    headers.insert(name.clone(), Value::String(value.clone()));
                }
                Some(Value::Array(values)) => values.push(Value::String(value.clone())),
                Some(existing) => {
                    let first = existing.take();
                    *existing = Value::Array(vec![first, Value::String(value.clone())]);
                }
            }
        }
        serde_json::json!({
            "method": self.method,
            "path": self.path,
            "headers": headers,
            "body": String::from_utf8_lossy(&self.body),
        })
    }
}

/// A scripted response.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Response headers (repeat a name for several values).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Wait this long before answering (to test timeouts).
    pub delay: Duration,
}

impl Reply {
    /// A reply with a status, no headers, empty body, no delay.
    pub fn status(status: u16) -> Self {
        Reply { status, headers: Vec::new(), body: Vec::new(), delay: Duration::ZERO }
    }

    /// A 200 reply with a JSON body and `content-type: application/json`.
    pub fn json(value: &Value) -> Self {
        Reply::status(200).header("content-type", "application/json").body(value.to_string())
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the delay before answering.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A running server on 127.0.0.1 with an ephemeral port. Stops on drop.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    /// An HTTP/1.1 server answering with `handler`.
    fn start(handler: Handler) -> anyhow::Result<Server> {
        Server::listen("gatewasm-upstream", move |stream| {
            let handler = handler.clone();
            async move {
                let service = service_fn(move |req| serve(handler.clone(), req));
                // Connection errors (client went away) are not the upstream's business.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        })
    }

    /// Accepts connections on 127.0.0.1 (an ephemeral port), each served by `connection` on a
    /// runtime of the server's own (its threads named `name`).
    pub(crate) fn listen<F, Fut>(name: &str, connection: F) -> anyhow::Result<Server>
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
            .context("building the upstream's tokio runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .context("binding an upstream on 127.0.0.1:0")?;
        let addr = listener.local_addr().context("upstream local address")?;
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(connection(stream));
            }
        });
        Ok(Server { addr, runtime: Some(runtime) })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

async fn serve(
    handler: Handler,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let method = req.method().as_str().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let reply = handler(Received { method, path, headers, body });
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = hyper::Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() =
        hyper::StatusCode::from_u16(reply.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(&value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    Ok(response)
}

/// What the [`EchoUpstream`] answers to `received`: 200, `content-type: application/json`,
/// `x-echo-upstream: 1` and [`Received::to_echo_json`] as the body. Public so an emulated
/// upstream can answer as this one does.
pub fn echo_reply(received: &Received) -> Reply {
    Reply::json(&received.to_echo_json()).header("x-echo-upstream", "1")
}

/// Answers every request with 200 and a JSON description of what it received:
/// `{"method":..,"path":..,"headers":{name: value or [values]},"body":..}`.
/// Parse it on the client side with [`crate::Response::echo`].
pub struct EchoUpstream {
    server: Server,
}

impl EchoUpstream {
    /// Starts the echo upstream on 127.0.0.1 with an ephemeral port.
    pub fn start() -> anyhow::Result<EchoUpstream> {
        let handler: Handler = Arc::new(|received: Received| echo_reply(&received));
        Ok(EchoUpstream { server: Server::start(handler)? })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }
}

/// Answers every request, whatever its path, with the same [`Reply`]: a stand-in for an auth
/// service or any other callout target in benchmarks. Requests are not recorded (no lock on
/// the request path).
pub struct FixedUpstream {
    server: Server,
}

impl FixedUpstream {
    /// Starts it on 127.0.0.1 with an ephemeral port.
    pub fn start(reply: Reply) -> anyhow::Result<FixedUpstream> {
        let handler: Handler = Arc::new(move |_: Received| reply.clone());
        Ok(FixedUpstream { server: Server::start(handler)? })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }
}

/// Replies by path, and every request received.
struct Script<R> {
    replies: HashMap<String, R>,
    received: Vec<Received>,
}

/// A [`Script`] shared by a scripted upstream and its server.
pub(crate) struct Scripts<R>(Arc<Mutex<Script<R>>>);

impl<R> Clone for Scripts<R> {
    fn clone(&self) -> Self {
        Scripts(Arc::clone(&self.0))
    }
}

impl<R: Clone> Scripts<R> {
    pub(crate) fn new() -> Self {
        Scripts(Arc::new(Mutex::new(Script { replies: HashMap::new(), received: Vec::new() })))
    }

    /// Sets (or replaces) the reply for `path`.
    pub(crate) fn set(&self, path: &str, reply: R) {
        self.lock().replies.insert(path.to_string(), reply);
    }

    /// Every request received so far, in order.
    pub(crate) fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// Records `received` and returns the reply for `path`, if one is set.
    pub(crate) fn answer(&self, path: &str, received: Received) -> Option<R> {
        let mut script = self.lock();
        script.received.push(received);
        script.replies.get(path).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Script<R>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An upstream whose reply per path is set by the test (JWKS server, auth service, …). Paths
/// match exactly on the path without query; unknown paths get 404. Every request is recorded.
pub struct ScriptedUpstream {
    server: Server,
    script: Scripts<Reply>,
}

impl ScriptedUpstream {
    /// Starts the scripted upstream on 127.0.0.1 with an ephemeral port and no scripted paths.
    pub fn start() -> anyhow::Result<ScriptedUpstream> {
        let script = Scripts::new();
        let shared = script.clone();
        let handler: Handler = Arc::new(move |received: Received| {
            let key = received.path.split('?').next().unwrap_or_default().to_string();
            shared
                .answer(&key, received)
                .unwrap_or_else(|| Reply::status(404).body(format!("no script for {key}")))
        });
        Ok(ScriptedUpstream { server: Server::start(handler)?, script })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Sets (or replaces) the reply for a path (without query).
    pub fn set(&self, path: &str, reply: Reply) {
        self.script.set(path, reply);
    }

    /// All requests received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.script.received()
    }
}

/// A loopback port kept bound while nothing listens on it, so connections to it are refused
/// (what a service that is down looks like) and no other test can take the port in the
/// meantime: a port merely found free and released can be bound again by a parallel test's
/// Envoy or server, which would then answer in its place.
#[derive(Debug)]
pub struct ClosedPort {
    fd: libc::c_int,
    addr: std::net::SocketAddr,
}

impl ClosedPort {
    /// Binds 127.0.0.1 on a free port, without `listen` and without `SO_REUSEADDR` (so no other
    /// socket can bind it, listening or not).
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: plain socket calls on a descriptor this function owns; the address structures
        // are zero-initialised and of the sizes passed.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            sa.sin_port = 0;
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::bind(fd, std::ptr::addr_of!(sa).cast(), len) != 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
            let mut bound: libc::sockaddr_in = std::mem::zeroed();
            let mut bound_len = len;
            if libc::getsockname(fd, std::ptr::addr_of_mut!(bound).cast(), &mut bound_len) != 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
            let port = u16::from_be(bound.sin_port);
            Ok(Self { fd, addr: std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)) })
        }
    }

    /// The address; connections to it are refused while `self` lives.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

impl Drop for ClosedPort {
    fn drop(&mut self) {
        // SAFETY: `fd` is owned by `self` and closed once.
        unsafe {
            libc::close(self.fd);
        }
    }
}
