//! The HTTP side: one hyper HTTP/1.1 connection per task, a bounded count of records in
//! flight, and a graceful stop on SIGTERM/SIGINT.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
use tokio::sync::watch;

use crate::api::{self, ApiError, Outcome};
use crate::remember::{self, Lookup, Memory};
use crate::sink::Sink;

/// A produce's answer, once it has one; requests with the same idempotency key wait on it.
type Waiter = watch::Receiver<Option<Arc<Vec<Outcome>>>>;

/// The header a client names a produce request with, the same on every retry of it.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Shortest period between two log lines about records that failed.
const LOG_FAILURES_EVERY: Duration = Duration::from_secs(1);

/// What the bridge counts since it started (`GET /healthz`).
#[derive(Default)]
struct Counts {
    stored: AtomicU64,
    failed_retriable: AtomicU64,
    failed: AtomicU64,
    possibly_stored: AtomicU64,
    answered_again: AtomicU64,
    joined: AtomicU64,
}

/// Limits and sizes the server is started with.
pub struct Limits {
    /// Records accepted and not yet acknowledged; beyond, `503`.
    pub max_queued: usize,
    /// Largest request body.
    pub max_body: usize,
    /// Records whose answers are kept for retried requests.
    pub remember_records: usize,
    /// How long a stop waits for the produce requests in flight, then for the flush.
    pub grace: Duration,
}

struct State {
    sink: Sink,
    /// Records accepted and not yet answered by Kafka.
    queued: AtomicUsize,
    max_queued: usize,
    max_body: usize,
    /// Produces under way (they outlive a client that went away).
    in_flight: AtomicUsize,
    stopping: AtomicBool,
    memory: Mutex<Memory<Waiter>>,
    counts: Counts,
    /// When failures were last logged, and the failing produces not logged since.
    failures_logged: Mutex<(Option<Instant>, u64)>,
}

/// Decrements the in-flight counters when a produce ends.
struct InFlight {
    state: Arc<State>,
    records: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.queued.fetch_sub(self.records, Ordering::SeqCst);
        self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves until SIGTERM or SIGINT, then finishes the produces in flight (waiting at most
/// `limits.grace`) and flushes the sink.
pub async fn serve(addr: SocketAddr, sink: Sink, limits: Limits) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr().context("reading the listening address")?;
    eprintln!("gatewasm-kafka-bridge: listening on {local} ({})", sink.mode());
    let grace = limits.grace;
    let state = Arc::new(State {
        sink,
        queued: AtomicUsize::new(0),
        max_queued: limits.max_queued,
        max_body: limits.max_body,
        in_flight: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        memory: Mutex::new(Memory::new(limits.remember_records)),
        counts: Counts::default(),
        failures_logged: Mutex::new((None, 0)),
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
        "gatewasm-kafka-bridge: stopping; {} produce request(s) in flight",
        state.in_flight.load(Ordering::SeqCst)
    );
    let deadline = Instant::now() + grace;
    while state.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = state.in_flight.load(Ordering::SeqCst);
    if left > 0 {
        // Their clients get no answer and send them again: records librdkafka already sent
        // may be stored twice (README: "Delivery guarantee").
        eprintln!("gatewasm-kafka-bridge: {left} produce request(s) still unanswered after {grace:?}");
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn handle(state: &Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
        let c = &state.counts;
        let n = |a: &AtomicU64| a.load(Ordering::SeqCst);
        let body = serde_json::json!({
            "status": text,
            "mode": state.sink.mode(),
            "queued_records": state.queued.load(Ordering::SeqCst),
            "records": {
                "stored": n(&c.stored),
                "failed_retriable": n(&c.failed_retriable),
                "failed": n(&c.failed),
                "possibly_stored": n(&c.possibly_stored),
            },
            "requests": {
                "answered_again": n(&c.answered_again),
                "joined": n(&c.joined),
                "remembered_keys": lock(&state.memory).len(),
            },
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
    let key = match req.headers().get(IDEMPOTENCY_KEY) {
        None => None,
        Some(v) if remember::valid_key(v.as_bytes()) => {
            Some(String::from_utf8_lossy(v.as_bytes()).into_owned())
        }
        Some(_) => {
            return error(&ApiError::new(
                400,
                40002,
                format!("idempotency-key must be 1 to {} visible ASCII characters", remember::MAX_KEY_BYTES),
            ))
        }
    };
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
    let digest = remember::digest(&topic, &body);
    let n = records.len();
    let (tx, waiter, guard) = match start(state, key.as_deref(), digest, n) {
        Next::Reply(response) => return response,
        Next::Join(waiter) => return answer(waiter).await,
        Next::Produce(tx, waiter, guard) => (tx, waiter, guard),
    };
    // The produce runs on its own: a client that times out or goes away leaves it running, and
    // its retry (same key) joins it instead of producing again.
    let task_state = Arc::clone(state);
    tokio::spawn(async move {
        let _guard = guard;
        let outcomes = Arc::new(task_state.sink.produce(&topic, &records).await);
        task_state.account(&topic, &outcomes);
        if let Some(key) = &key {
            lock(&task_state.memory).finish(key, Arc::clone(&outcomes));
        }
        let _ = tx.send(Some(outcomes));
    });
    answer(waiter).await
}

/// What a produce request leads to.
enum Next {
    /// An answer at once: a remembered one, or a refusal.
    Reply(Response<Full<Bytes>>),
    /// Wait for the produce of the same key under way.
    Join(Waiter),
    /// Produce: send the outcomes on the sender; the guard counts the records queued.
    Produce(watch::Sender<Option<Arc<Vec<Outcome>>>>, Waiter, InFlight),
}

/// Looks `key` up and, when it is new, takes the records into the queue and remembers the key
/// as in flight; under one lock, so two requests with one key never both produce.
fn start(state: &Arc<State>, key: Option<&str>, digest: u64, n: usize) -> Next {
    let mut memory = lock(&state.memory);
    if let Some(key) = key {
        match memory.lookup(key, digest) {
            Lookup::Unknown => {}
            Lookup::Answer(outcomes) => {
                state.counts.answered_again.fetch_add(1, Ordering::SeqCst);
                return Next::Reply(reply(StatusCode::OK, api::response_body(&outcomes)));
            }
            Lookup::Join(waiter) => {
                state.counts.joined.fetch_add(1, Ordering::SeqCst);
                return Next::Join(waiter);
            }
            Lookup::Conflict => {
                return Next::Reply(error(&ApiError::new(
                    409,
                    40901,
                    format!(
                        "idempotency-key {key:?} was used for another topic or body; nothing was produced"
                    ),
                )))
            }
        }
    }
    let before = state.queued.fetch_add(n, Ordering::SeqCst);
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    let guard = InFlight { state: Arc::clone(state), records: n };
    if before.saturating_add(n) > state.max_queued {
        return Next::Reply(error(&ApiError::new(
            503,
            50301,
            format!("queue full: {before} record(s) waiting for Kafka, limit {}", state.max_queued),
        )));
    }
    let (tx, waiter) = watch::channel(None);
    if let Some(key) = key {
        memory.start(key.to_string(), digest, waiter.clone());
    }
    Next::Produce(tx, waiter, guard)
}

/// Waits for a produce's outcomes and answers them.
async fn answer(mut waiter: Waiter) -> Response<Full<Bytes>> {
    let outcomes = match waiter.wait_for(Option::is_some).await {
        Ok(done) => done.clone(),
        Err(_) => None,
    };
    match outcomes {
        Some(outcomes) => reply(StatusCode::OK, api::response_body(&outcomes)),
        // The produce task ended without an answer (the runtime is stopping).
        None => error(&ApiError::new(503, 50302, "the bridge is stopping")),
    }
}

impl State {
    /// Counts a produce's outcomes and logs its failures (at most one line a second; record
    /// contents never appear).
    fn account(&self, topic: &str, outcomes: &[Outcome]) {
        let (mut stored, mut retriable, mut failed, mut possibly) = (0u64, 0u64, 0u64, 0u64);
        let mut first_error: Option<&str> = None;
        for o in outcomes {
            match o {
                Outcome::Stored { .. } => stored += 1,
                Outcome::Failed { retriable: r, possibly_stored, message } => {
                    if *r {
                        retriable += 1;
                    } else {
                        failed += 1;
                    }
                    if *possibly_stored {
                        possibly += 1;
                    }
                    first_error.get_or_insert(message);
                }
            }
        }
        let c = &self.counts;
        c.stored.fetch_add(stored, Ordering::SeqCst);
        c.failed_retriable.fetch_add(retriable, Ordering::SeqCst);
        c.failed.fetch_add(failed, Ordering::SeqCst);
        c.possibly_stored.fetch_add(possibly, Ordering::SeqCst);
        let Some(first_error) = first_error else { return };
        let mut logged = lock(&self.failures_logged);
        let now = Instant::now();
        if logged.0.is_some_and(|at| now.duration_since(at) < LOG_FAILURES_EVERY) {
            logged.1 += 1;
            return;
        }
        let quiet = std::mem::replace(&mut *logged, (Some(now), 0)).1;
        drop(logged);
        eprintln!(
            "gatewasm-kafka-bridge: topic {topic}: {} of {} record(s) not stored ({retriable} retriable, \
             {failed} not, {possibly} possibly stored after all): {first_error}{}",
            retriable + failed,
            outcomes.len(),
            if quiet > 0 {
                format!(" ({quiet} more failing request(s) since the last line)")
            } else {
                String::new()
            }
        );
    }
}
