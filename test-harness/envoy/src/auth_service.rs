//! An auth service in the shape of the one in the project's user story (an Ambassador
//! `AuthService` backend), for the ext-auth filter's tests and the demo gateway: a login that answers 201 with a token and a
//! cookie, a protected path that accepts that token (cookie, bearer or `?token=`) and answers
//! with the caller's identity in `x-admin-id` / `x-admin-email`, and paths that are slow, fail
//! or judge the request body. Loopback only, its own tokio runtime, stops on drop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::Reply;

/// `Basic` credentials of the seed's one user (`admin@qq.com:123`).
pub const ADMIN_BASIC: &str = "Basic YWRtaW5AcXEuY29tOjEyMw==";
/// The token its login hands out.
pub const ADMIN_TOKEN: &str = "tok-admin-1";
/// How long `/extauth/slow` takes.
pub const SLOW: Duration = Duration::from_secs(2);

/// A request the auth service received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers, lower-case names, in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Seen {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// The running service.
pub struct AuthService {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl AuthService {
    /// Starts it on 127.0.0.1 with a free port.
    pub fn start() -> anyhow::Result<AuthService> {
        Self::start_on(0)
    }

    /// Starts it on 127.0.0.1:`port` (0 for a free one).
    pub fn start_on(port: u16) -> anyhow::Result<AuthService> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let service = service_fn(move |req| serve(Arc::clone(&log), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(AuthService { addr, seen, runtime: Some(runtime) })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request it got, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

fn answer(status: u16, body: impl Into<String>) -> Reply {
    Reply::status(status).body(body.into())
}

fn json(status: u16, body: &str) -> Reply {
    answer(status, body).header("content-type", "application/json; charset=utf-8")
}

/// The token a request carries: cookie `id_token`, bearer, or `?token=` (the seed's order).
fn token(seen: &Seen) -> Option<String> {
    let cookie = seen.header("cookie").and_then(|c| {
        c.split(';').map(str::trim).find_map(|kv| kv.strip_prefix("id_token=")).map(str::to_string)
    });
    let bearer = || seen.header("authorization").and_then(|a| a.strip_prefix("Bearer ")).map(str::to_string);
    let query = || {
        let q = seen.path.split_once('?')?.1;
        q.split('&').find_map(|kv| kv.strip_prefix("token=")).map(str::to_string)
    };
    cookie.or_else(bearer).or_else(query)
}

/// What the service answers to `seen` (its delay included: `/extauth/slow` answers after
/// [`SLOW`]). Public so an emulated cluster can answer as the service does.
pub fn judge(seen: &Seen) -> Reply {
    let path = seen.path.split('?').next().unwrap_or_default();
    match path {
        "/extauth/login" => {
            if seen.header("authorization") != Some(ADMIN_BASIC) {
                return json(400, r#"{"message":"Username or password is incorrect"}"#);
            }
            json(
                201,
                &format!(
                    r#"{{"admin":{{"name":"Admin","email":"admin@qq.com","id":1}},"id_token":"{ADMIN_TOKEN}"}}"#
                ),
            )
            .header("set-cookie", &format!("id_token={ADMIN_TOKEN}; Max-Age=86400; Path=/; HttpOnly"))
            .header("x-powered-by", "Express")
        }
        p if p.starts_with("/extauth/nodebackend") => match token(seen) {
            Some(t) if t == ADMIN_TOKEN => answer(200, "OK (authenticated)")
                .header("x-admin-id", "1")
                .header("x-admin-email", "admin@qq.com")
                .header("x-powered-by", "Express"),
            Some(_) => json(401, r#"{"error":{"msg":"Failed to authenticate token!"}}"#),
            None => json(401, r#"{"error":{"msg":"No token!"}}"#).header("www-authenticate", "Bearer"),
        },
        p if p.starts_with("/extauth/slow") => answer(200, "late").delay(SLOW),
        p if p.starts_with("/extauth/boom") => answer(500, "boom: stack trace"),
        p if p.starts_with("/extauth/upload") => {
            if String::from_utf8_lossy(&seen.body).contains("allow") {
                answer(200, "").header("x-admin-id", "1")
            } else {
                answer(403, "forbidden body")
            }
        }
        _ => answer(200, "OK (not /qotm/quote)"),
    }
}

async fn serve(
    log: Arc<Mutex<Vec<Seen>>>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = req.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    let seen = Seen { method, path, headers, body };
    log.lock().unwrap_or_else(PoisonError::into_inner).push(seen.clone());
    let a = judge(&seen);
    if !a.delay.is_zero() {
        tokio::time::sleep(a.delay).await;
    }
    let mut resp = hyper::Response::new(Full::new(Bytes::from(a.body)));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(a.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in a.headers {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(&value),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    Ok(resp)
}
