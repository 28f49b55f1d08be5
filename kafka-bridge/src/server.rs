//! The HTTP side: one hyper HTTP/1.1 connection per task, a bounded count of records in
//! flight, and a graceful stop on SIGTERM/SIGINT.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::api::{self, ApiError};
use crate::sink::Sink;

struct State {
    sink: Sink,
    /// Records accepted and not yet answered.
    queued: AtomicUsize,
    max_queued: usize,
    max_body: usize,
    /// Produce requests being handled.
    in_flight: AtomicUsize,
    stopping: AtomicBool,
}

/// Decrements the in-flight counters when a request ends, also when hyper drops it because the
/// client went away.
struct InFlight<'a> {
    state: &'a State,
    records: usize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.state.queued.fetch_sub(self.records, Ordering::SeqCst);
        self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves until SIGTERM or SIGINT, then finishes the requests in flight (waiting at most
/// `grace`) and flushes the sink.
pub async fn serve(
    addr: SocketAddr,
    sink: Sink,
    max_queued: usize,
    max_body: usize,
    grace: Duration,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr().context("reading the listening address")?;
    eprintln!("gatewasm-kafka-bridge: listening on {local} ({})", sink.mode());
    let state = Arc::new(State {
        sink,
        queued: AtomicUsize::new(0),
        max_queued,
        max_body,
        in_flight: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
    });
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    eprintln!("gatewasm-kafka-bridge: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }

    state.stopping.store(true, Ordering::SeqCst);
    drop(listener);
    eprintln!(
        "gatewasm-kafka-bridge: stopping; {} request(s) in flight",
        state.in_flight.load(Ordering::SeqCst)
    );
    let deadline = Instant::now() + grace;
    while state.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let flushed = tokio::task::block_in_place(|| state.sink.flush(grace));
    eprintln!("gatewasm-kafka-bridge: stopped");
    flushed
}

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(api::RESPONSE_TYPE));
    response
}

fn error(err: &ApiError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = reply(status, err.body());
    if err.status == 503 {
        response.headers_mut().insert(RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
    }
    response
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        if req.method() != Method::GET {
            return error(&ApiError::new(405, 40501, "use GET"));
        }
        let (status, text) = if state.stopping.load(Ordering::SeqCst) {
            (StatusCode::SERVICE_UNAVAILABLE, "stopping")
        } else {
            (StatusCode::OK, "ok")
        };
        let body = serde_json::json!({
            "status": text,
            "mode": state.sink.mode(),
            "queued_records": state.queued.load(Ordering::SeqCst),
        });
        return reply(status, body.to_string().into_bytes());
    }
    let topic = match api::topic_of(&path) {
        None => return error(&ApiError::new(404, 40401, format!("no such endpoint: {path}"))),
        Some(Err(err)) => return error(&err),
        Some(Ok(topic)) => topic.to_string(),
    };
    if req.method() != Method::POST {
        return error(&ApiError::new(405, 40501, "use POST to produce"));
    }
    if state.stopping.load(Ordering::SeqCst) {
        return error(&ApiError::new(503, 50302, "the bridge is stopping"));
    }
    let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if !api::acceptable_content_type(content_type) {
        return error(&ApiError::new(
            415,
            41501,
            format!("content type must be {} (got {content_type:?})", api::JSON_V2),
        ));
    }
    let body = match Limited::new(req.into_body(), state.max_body).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            let too_large = err.downcast_ref::<http_body_util::LengthLimitError>().is_some();
            return if too_large {
                error(&ApiError::new(413, 41301, format!("body larger than {} bytes", state.max_body)))
            } else {
                error(&ApiError::new(400, 40001, format!("reading the body failed: {err}")))
            };
        }
    };
    let records = match api::parse_records(&body) {
        Ok(records) => records,
        Err(err) => return error(&err),
    };
    let n = records.len();
    let before = state.queued.fetch_add(n, Ordering::SeqCst);
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    let _guard = InFlight { state, records: n };
    if before.saturating_add(n) > state.max_queued {
        return error(&ApiError::new(
            503,
            50301,
            format!("queue full: {before} record(s) waiting for Kafka, limit {}", state.max_queued),
        ));
    }
    let outcomes = state.sink.produce(&topic, &records).await;
    reply(StatusCode::OK, api::response_body(&outcomes))
}
