//! A gRPC auth service (`envoy.service.auth.v3.Authorization`, tonic with `envoy-types`' server
//! trait) answering by the request's path, as the emulator and Envoy tests ask it: served on
//! loopback for Envoy, or called in-process for the emulator. It records every `CheckRequest`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

/// `PERMISSION_DENIED`.
pub const PERMISSION_DENIED: i32 = 7;

/// How long `/slow` takes.
pub const SLOW: Duration = Duration::from_millis(1500);

/// A header option: `append` (the deprecated field) when given, else `action`.
#[allow(deprecated)] // `append` is what Envoy 1.40 reads.
pub fn option(key: &str, value: &str, append: Option<bool>, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.into(), value: value.into(), ..Default::default() }),
        append: append.map(|value| BoolValue { value }),
        append_action: action as i32,
        ..Default::default()
    }
}

/// A header option with nothing but the header (Envoy's default action).
pub fn plain(key: &str, value: &str) -> HeaderValueOption {
    option(key, value, None, HeaderAppendAction::AppendIfExistsOrAdd)
}

fn ok(ok: OkHttpResponse) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status { code: 0, ..Default::default() }),
        http_response: Some(HttpResponse::OkResponse(ok)),
        ..Default::default()
    }
}

/// The answer for a check, by the client's path (query removed).
pub fn answer(request: &CheckRequest) -> Result<CheckResponse, Status> {
    let path = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .map(|h| h.path.split('?').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    use HeaderAppendAction::*;
    Ok(match path.as_str() {
        "/allow" => ok(OkHttpResponse {
            headers: vec![plain("x-admin-id", "1"), plain("x-admin-email", "admin@qq.com")],
            ..Default::default()
        }),
        // Each way a header can be written, each name twice or on its own.
        "/ops" => ok(OkHttpResponse {
            headers: vec![
                plain("x-add", "1"),
                plain("x-add", "2"),
                option("x-set", "1", Some(false), AppendIfExistsOrAdd),
                option("x-set", "2", Some(false), AppendIfExistsOrAdd),
                option("x-set", "3", Some(true), AppendIfExistsOrAdd),
                option("x-append", "1", Some(true), AppendIfExistsOrAdd),
                option("x-if-absent", "1", None, AddIfAbsent),
                option("x-if-absent", "2", None, AddIfAbsent),
                option("x-overwrite", "1", None, OverwriteIfExistsOrAdd),
                option("x-overwrite", "2", None, OverwriteIfExistsOrAdd),
                option("x-if-exists", "1", None, OverwriteIfExists),
                option("x-existing", "1", None, OverwriteIfExistsOrAdd),
                option("x-existing", "2", None, OverwriteIfExists),
            ],
            headers_to_remove: vec!["x-remove-me".into(), ":path".into(), "host".into()],
            response_headers_to_add: vec![
                plain("x-resp", "r1"),
                plain("x-resp", "r2"),
                option("x-resp-set", "s1", Some(false), AppendIfExistsOrAdd),
                option("x-resp-set", "s2", Some(false), AppendIfExistsOrAdd),
            ],
            ..Default::default()
        }),
        // An identity header the filter is not configured to pass on.
        "/unlisted" => ok(OkHttpResponse {
            headers: vec![plain("x-admin-id", "1"), plain("x-unlisted", "u")],
            ..Default::default()
        }),
        "/deny" => CheckResponse {
            status: Some(rpc::Status { code: PERMISSION_DENIED, message: "no".into(), ..Default::default() }),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus { code: 401 }),
                headers: vec![
                    plain("www-authenticate", "Bearer"),
                    plain("content-type", "application/json"),
                    plain("set-cookie", "a=1"),
                    plain("set-cookie", "b=2"),
                ],
                body: r#"{"error":"no token"}"#.into(),
            })),
            ..Default::default()
        },
        "/deny-default" => CheckResponse {
            status: Some(rpc::Status { code: PERMISSION_DENIED, ..Default::default() }),
            ..Default::default()
        },
        "/error" => return Err(Status::internal("boom")),
        "/unavailable" => return Err(Status::unavailable("down")),
        _ => ok(OkHttpResponse::default()),
    })
}

/// The service: the answers above, every check recorded.
#[derive(Clone, Default)]
pub struct Scripted {
    seen: Arc<Mutex<Vec<CheckRequest>>>,
}

impl Scripted {
    /// Every check so far.
    pub fn seen(&self) -> Vec<CheckRequest> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[tonic::async_trait]
impl Authorization for Scripted {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).push(request.clone());
        let slow = path_of(&request) == "/slow";
        if slow {
            tokio::time::sleep(SLOW).await;
        }
        answer(&request).map(Response::new)
    }
}

/// The client's path of a check.
pub fn path_of(request: &CheckRequest) -> String {
    request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .map(|h| h.path.clone())
        .unwrap_or_default()
}

/// The service on 127.0.0.1 (ephemeral port), on a runtime and thread of its own; stops on drop.
pub struct AuthzServer {
    addr: SocketAddr,
    service: Scripted,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AuthzServer {
    /// Starts it.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let service = Scripted::default();
        let served = service.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                let _ = tonic::transport::Server::builder()
                    .add_service(AuthorizationServer::new(served))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        AuthzServer { addr, service, stop: Some(stop), thread: Some(thread) }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every check so far.
    pub fn seen(&self) -> Vec<CheckRequest> {
        self.service.seen()
    }

    /// The last check for `path`.
    pub fn last(&self, path: &str) -> Option<CheckRequest> {
        self.seen().into_iter().rev().find(|c| path_of(c) == path)
    }
}

impl Drop for AuthzServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
