//! The chain: the order Envoy's filter manager runs the filters in, what a local reply, a
//! pause and a failed VM do to the others, the route and the clusters on one virtual clock.
//! Each rule says how it was seen in Envoy 1.40 (the probe filter tagged `a`, `b`, `c`, in
//! that order, in front of the runner's echo upstream; `tests/gateway.rs`).

use super::model::{
    hcm_request_headers, hcm_response_headers, http_date, router_request_headers, with_content_length, Reply,
    Request, RequestIds, Response, Source, UpstreamRequest,
};
use crate::{Emulator, EmulatorBuilder, Error, Group, GrpcCall, GrpcResponse, Stream};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type Result<T> = std::result::Result<T, Error>;

/// A response after the encoder filters: headers (`:status` among them), body, who made it.
type Encoded = (Vec<(String, String)>, Vec<u8>, Source);

/// Answers the requests a route's upstream or a cluster receives.
pub type HttpHandler = Box<dyn FnMut(&UpstreamRequest) -> Reply>;

/// Answers a cluster's unary gRPC calls: the service's answer (see [`GrpcResponse`]) and how
/// long it takes on the virtual clock.
pub type GrpcHandler = Box<dyn FnMut(&GrpcCall) -> (GrpcResponse, Duration)>;

/// The runner's route timeout (`gatewasm_envoy::BootstrapSpec::route_timeout`).
const ROUTE_TIMEOUT: Duration = Duration::from_secs(30);

/// Envoy's `UpstreamRequestTimeout` response flag.
const UPSTREAM_REQUEST_TIMEOUT: u64 = 0x4;

/// The route's cluster, as the runner names it.
const UPSTREAM_CLUSTER: &str = "upstream";

enum Handler {
    Http(HttpHandler),
    Grpc(GrpcHandler),
}

/// Configures a [`Gateway`].
pub struct GatewayBuilder {
    filters: Vec<(String, EmulatorBuilder)>,
    route: Option<HttpHandler>,
    route_timeout: Duration,
    upstream_address: String,
    clusters: BTreeMap<String, Handler>,
    group: Group,
    time: SystemTime,
    source: String,
    destination: String,
    seed: u64,
}

impl GatewayBuilder {
    /// Appends a filter to the chain: `name` is its plugin name (the `plugin_name` property,
    /// unless the builder sets one) and how [`Source`] and [`Gateway::emulator`] name it.
    /// The gateway sets on `module` its group, the clusters, the route's upstream, the clock
    /// and the connection's addresses, replacing what the builder had for them.
    pub fn filter(mut self, name: &str, module: EmulatorBuilder) -> Self {
        self.filters.push((name.to_string(), module));
        self
    }

    /// The route's upstream: sees the request as the upstream receives it (after every filter
    /// and the router) and answers it. Default: 200 with no body.
    pub fn route(mut self, upstream: impl FnMut(&UpstreamRequest) -> Reply + 'static) -> Self {
        self.route = Some(Box::new(upstream));
        self
    }

    /// The route timeout (default 30 s, the runner's): an upstream slower than this gets
    /// Envoy's 504.
    pub fn route_timeout(mut self, timeout: Duration) -> Self {
        self.route_timeout = timeout;
        self
    }

    /// The route's upstream endpoint (`upstream.address` once it answered; default
    /// `127.0.0.1:8080`).
    pub fn upstream_address(mut self, address: &str) -> Self {
        self.upstream_address = address.to_string();
        self
    }

    /// A cluster whose HTTP callouts `handler` answers (after the reply's latency). Calls to a
    /// cluster not declared here fail at once as in Envoy (BadArgument).
    pub fn cluster(mut self, name: &str, handler: impl FnMut(&UpstreamRequest) -> Reply + 'static) -> Self {
        self.clusters.insert(name.to_string(), Handler::Http(Box::new(handler)));
        self
    }

    /// A cluster whose unary gRPC calls `handler` answers.
    pub fn grpc_cluster(
        mut self,
        name: &str,
        handler: impl FnMut(&GrpcCall) -> (GrpcResponse, Duration) + 'static,
    ) -> Self {
        self.clusters.insert(name.to_string(), Handler::Grpc(Box::new(handler)));
        self
    }

    /// Start of the virtual clock (default 2024-01-01T00:00:00Z, the emulator's).
    pub fn time(mut self, time: SystemTime) -> Self {
        self.time = time;
        self
    }

    /// The client's address (default `127.0.0.1:40000`).
    pub fn source_address(mut self, address: &str) -> Self {
        self.source = address.to_string();
        self
    }

    /// The listener's address (default `127.0.0.1:10000`).
    pub fn destination_address(mut self, address: &str) -> Self {
        self.destination = address.to_string();
        self
    }

    /// Seed of the generated `x-request-id`s (default 0): runs with the same seed repeat.
    pub fn request_id_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Starts every module (in chain order) in one [`Group`].
    pub fn build(self) -> Result<Gateway> {
        let mut filters = Vec::with_capacity(self.filters.len());
        for (name, mut module) in self.filters {
            if !module.has_property("plugin_name") {
                module = module.property("plugin_name", name.as_str());
            }
            // The probe: `xds.virtual_host_name` is the runner's virtual host, `all`.
            if !module.has_property("xds.virtual_host_name") {
                module = module.property("xds.virtual_host_name", "all");
            }
            module = module
                .group(&self.group)
                .time(self.time)
                .source_address(&self.source)
                .destination_address(&self.destination)
                .upstream(UPSTREAM_CLUSTER, &self.upstream_address)
                .cluster(UPSTREAM_CLUSTER);
            for cluster in self.clusters.keys() {
                module = module.cluster(cluster);
            }
            filters.push(Filter { name, emu: module.build()? });
        }
        Ok(Gateway {
            filters,
            route: self.route.unwrap_or_else(|| Box::new(|_: &UpstreamRequest| Reply::status(200))),
            route_timeout: self.route_timeout,
            clusters: self.clusters,
            scheduled: Vec::new(),
            handled: HashSet::new(),
            elapsed: Duration::ZERO,
            start: self.time,
            ids: RequestIds::new(self.seed),
            group: self.group,
        })
    }
}

struct Filter {
    name: String,
    emu: Emulator,
}

/// An answer to a callout, due at `at` on the virtual clock.
struct Scheduled {
    at: Duration,
    filter: usize,
    token: u32,
    answer: Answer,
}

enum Answer {
    Http(Reply),
    Grpc(GrpcResponse),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

/// How the request path ended before the router.
enum Stop {
    LocalReply(usize),
    Failed(usize, String),
    Reset(usize),
}

/// A gateway: the chain of filters, the route and the clusters, on one virtual clock. See the
/// module documentation.
pub struct Gateway {
    filters: Vec<Filter>,
    route: HttpHandler,
    route_timeout: Duration,
    clusters: BTreeMap<String, Handler>,
    scheduled: Vec<Scheduled>,
    /// Callouts already handed to their cluster: (filter, token, gRPC).
    handled: HashSet<(usize, u32, bool)>,
    elapsed: Duration,
    start: SystemTime,
    ids: RequestIds,
    group: Group,
}

/// A trapped module kills only its VM; the gateway goes on (Envoy answers that filter's later
/// requests with 503). Usage errors are the test's and are returned.
fn tolerate(r: Result<()>) -> Result<()> {
    match r {
        Err(Error::Trap { .. } | Error::VmFailed(_)) | Ok(()) => Ok(()),
        Err(e) => Err(e),
    }
}

fn refs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
}

impl Gateway {
    /// Starts configuring a gateway.
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder {
            filters: Vec::new(),
            route: None,
            route_timeout: ROUTE_TIMEOUT,
            upstream_address: "127.0.0.1:8080".to_string(),
            clusters: BTreeMap::new(),
            group: Group::new(),
            // The emulator's default start: 2024-01-01T00:00:00Z.
            time: UNIX_EPOCH + Duration::from_secs(1_704_067_200),
            source: "127.0.0.1:40000".to_string(),
            destination: "127.0.0.1:10000".to_string(),
            seed: 0,
        }
    }

    /// The emulator running filter `name`.
    pub fn emulator(&self, name: &str) -> Option<&Emulator> {
        self.filters.iter().find(|f| f.name == name).map(|f| &f.emu)
    }

    /// The filters' names in chain order.
    pub fn filter_names(&self) -> Vec<String> {
        self.filters.iter().map(|f| f.name.clone()).collect()
    }

    /// The group (the Envoy process) the filters share data and queues in.
    pub fn group(&self) -> &Group {
        &self.group
    }

    /// The virtual clock's wall-clock time now.
    pub fn now(&self) -> SystemTime {
        self.start + self.elapsed
    }

    /// Every metric of every filter, by the full name the module defined (`name;tag=value;...`
    /// for the SDK's labelled series), the filters' values added up.
    pub fn metrics(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for f in &self.filters {
            for m in f.emu.metrics() {
                *out.entry(m.name).or_default() += m.value;
            }
        }
        out
    }

    /// The value of metric `name` (its full name) summed over the filters that define it.
    pub fn metric(&self, name: &str) -> Option<u64> {
        let values: Vec<u64> = self.filters.iter().filter_map(|f| f.emu.metric(name)).collect();
        if values.is_empty() {
            None
        } else {
            Some(values.iter().sum())
        }
    }

    /// Advances the virtual clock for the whole gateway: every module's ticks and callout
    /// timeouts, and the clusters' delayed answers, run in time order (modules in chain order
    /// at the same instant).
    pub fn advance(&mut self, by: Duration) -> Result<()> {
        let target = self.elapsed + by;
        loop {
            self.answer_callouts()?;
            match self.next_event() {
                Some(at) if at <= target => self.step_to(at)?,
                _ => {
                    self.step_to(target)?;
                    return self.answer_callouts();
                }
            }
        }
    }

    /// The next moment something is due: a module's tick or callout timeout, or a cluster's
    /// answer.
    fn next_event(&self) -> Option<Duration> {
        let internal = self
            .filters
            .iter()
            .filter(|f| f.emu.failure().is_none())
            .filter_map(|f| f.emu.next_event())
            .min()
            .map(|d| self.elapsed + d);
        let answers = self.scheduled.iter().map(|s| s.at).min();
        internal.into_iter().chain(answers).min()
    }

    fn step_to(&mut self, at: Duration) -> Result<()> {
        let step = at.saturating_sub(self.elapsed);
        for f in self.filters.iter().filter(|f| f.emu.failure().is_none()) {
            tolerate(f.emu.advance_clock(step))?;
        }
        self.elapsed = self.elapsed.max(at);
        Ok(())
    }

    /// Hands new callouts to their clusters and delivers the answers that are due, until none
    /// is left (an answer may make another call).
    fn answer_callouts(&mut self) -> Result<()> {
        loop {
            for i in 0..self.filters.len() {
                self.take_calls(i);
            }
            let now = self.elapsed;
            let mut due: Vec<Scheduled> = Vec::new();
            let mut later = Vec::new();
            for s in self.scheduled.drain(..) {
                if s.at <= now {
                    due.push(s);
                } else {
                    later.push(s);
                }
            }
            self.scheduled = later;
            if due.is_empty() {
                return Ok(());
            }
            due.sort_by_key(|s| s.at);
            for s in due {
                let emu = match self.filters.get(s.filter) {
                    Some(f) if f.emu.failure().is_none() => &f.emu,
                    _ => continue,
                };
                // A call that timed out (Envoy's 504) or was cancelled gets no second answer.
                match s.answer {
                    Answer::Http(reply) => {
                        if emu.http_calls().iter().any(|c| c.token == s.token) {
                            let headers = reply.router_headers();
                            tolerate(emu.respond_http_call(s.token, &refs(&headers), &reply.body, &[]))?;
                        }
                    }
                    Answer::Grpc(response) => {
                        if emu.grpc_calls().iter().any(|c| c.token == s.token) {
                            tolerate(emu.respond_grpc_call(s.token, &response))?;
                        }
                    }
                }
            }
        }
    }

    /// Schedules the answers to filter `i`'s new callouts (the route's upstream answers calls to
    /// its cluster, `upstream`). A call to a cluster whose handler speaks the other protocol
    /// stays unanswered (its timeout, if any, answers it).
    fn take_calls(&mut self, i: usize) {
        let Some(f) = self.filters.get(i) else { return };
        if f.emu.failure().is_some() {
            return;
        }
        let (http, grpc) = (f.emu.http_calls(), f.emu.grpc_calls());
        for call in http {
            if !self.handled.insert((i, call.token, false)) {
                continue;
            }
            let request = UpstreamRequest::from_map(&call.headers, call.body.clone());
            let reply = match self.clusters.get_mut(&call.cluster) {
                Some(Handler::Http(handler)) => handler(&request),
                Some(Handler::Grpc(_)) => continue,
                // The route's cluster: its upstream answers callouts too.
                None if call.cluster == UPSTREAM_CLUSTER => (self.route)(&request),
                None => continue,
            };
            let at = self.elapsed + reply.latency;
            self.scheduled.push(Scheduled { at, filter: i, token: call.token, answer: Answer::Http(reply) });
        }
        for call in grpc {
            if !self.handled.insert((i, call.token, true)) {
                continue;
            }
            if let Some(Handler::Grpc(handler)) = self.clusters.get_mut(&call.cluster) {
                let (response, latency) = handler(&call);
                let at = self.elapsed + latency;
                self.scheduled.push(Scheduled {
                    at,
                    filter: i,
                    token: call.token,
                    answer: Answer::Grpc(response),
                });
            }
        }
    }

    /// Runs the clock until filter `i` lets `side` of `stream` go, answers locally, resets it or
    /// its VM fails. Envoy (the probe, `http_call` from `b`'s request headers): the paused
    /// filter's callout answer resumes the chain at the next filter (`c` saw the request, the
    /// upstream got `x-chain: a, b, c`).
    fn settle(&mut self, i: usize, stream: &Stream, side: Side) -> Result<()> {
        loop {
            self.answer_callouts()?;
            let held = match side {
                Side::Request => stream.request_paused(),
                Side::Response => stream.response_paused(),
            };
            let failed = self.filters.get(i).is_none_or(|f| f.emu.failure().is_some());
            if !held || stream.ended() || failed {
                return Ok(());
            }
            let Some(at) = self.next_event() else {
                let name = self.filters.get(i).map(|f| f.name.as_str()).unwrap_or_default();
                return Err(Error::Usage(format!(
                    "filter {name} holds the stream (it returned Pause) with no callout, tick or timeout pending that could resume it"
                )));
            };
            let by = at.saturating_sub(self.elapsed);
            self.advance(by)?;
        }
    }

    /// Filter `i`'s request path: headers (end of stream when there is no body), then the body,
    /// then the clock until it lets them go. Envoy's HTTP/1.1 codec hands a body over as its
    /// data without end of stream, then an empty end of stream (the probe, with
    /// `content-length: 3` and chunked alike: `body_cb=3,false | body_cb=0,true` in every
    /// filter).
    fn decode(
        &mut self,
        i: usize,
        stream: &mut Stream,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<()> {
        stream.request_headers(&refs(headers), body.is_empty())?;
        if !body.is_empty() {
            stream.request_body(body, false)?;
            stream.request_body(&[], true)?;
        }
        self.settle(i, stream, Side::Request)
    }

    /// Sends a client request through the gateway and returns what the client receives.
    ///
    /// Decoding runs the filters first to last, each on the headers (and body) the one before
    /// let go; encoding runs the filters that decoded, last to first (the probe: the upstream
    /// got `x-chain: a, b, c`; the client got `x-chain-resp: c, b, a`). Then every filter's
    /// `on_log`, in chain order.
    pub fn send(&mut self, request: &Request) -> Result<Response> {
        self.answer_callouts()?;
        let id = self.ids.next_id();
        let mut client = request.clone();
        let framed = client.headers.iter().any(|(n, _)| {
            n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
        });
        if !client.body.is_empty() && !framed {
            // A client sends a body with its length.
            client.headers.push(("content-length".to_string(), client.body.len().to_string()));
        }
        let mut headers = hcm_request_headers(&client, &id);
        let mut body = client.body.clone();
        let mut streams: Vec<Stream> = self.filters.iter().map(|f| f.emu.stream()).collect();
        if is_upgrade(&client) {
            // The probe (`connection: upgrade`, `upgrade: websocket`; the runner's route allows
            // no upgrade): 403 with no body before any filter ran; every filter logs.
            let details = "upgrade_failed".to_string();
            let (status, client_headers) =
                hcm_response_headers(&[(":status".to_string(), "403".to_string())], &http_date(self.now()));
            let client_headers = with_content_length(client_headers, status, &[]);
            let mut logged = vec![(":status".to_string(), status.to_string())];
            logged.extend(client_headers.iter().cloned());
            self.log_all(&mut streams, &headers, Some((&logged, &[])), Some(details.clone()), false)?;
            return Ok(Response {
                status,
                headers: client_headers,
                body: Vec::new(),
                source: Source::Envoy { details },
            });
        }
        let mut stop = None;
        for (i, stream) in streams.iter_mut().enumerate() {
            let failed = |g: &Gateway| g.filters.get(i).and_then(|f| f.emu.failure());
            if let Some(reason) = failed(self) {
                stop = Some(Stop::Failed(i, reason));
                break;
            }
            tolerate(self.decode(i, stream, &headers, &body))?;
            // Envoy's filters share one header map: what this filter changed stays, also when
            // it answers, resets or traps (the probe: `a,b` in `x-chain` in the log phase after
            // `b` answered).
            let now = stream.request_headers_now();
            if !now.is_empty() {
                headers = now;
            }
            if let Some(reason) = failed(self) {
                stop = Some(Stop::Failed(i, reason));
                break;
            }
            if stream.was_reset() {
                stop = Some(Stop::Reset(i));
                break;
            }
            if stream.local_reply().is_some() {
                stop = Some(Stop::LocalReply(i));
                break;
            }
            body = stream.request_body_now();
        }
        let name = |g: &Gateway, i: usize| g.filters.get(i).map(|f| f.name.clone()).unwrap_or_default();
        // What goes into the encoder filters before `from` (exclusive), and who made it.
        // The probe: once the router sent the request, `upstream.address` answers in every
        // filter's log phase, even when the route timed out or a filter replaced the answer.
        let upstream_answered = stop.is_none();
        let (response, response_body, source, from) = match stop {
            None => {
                let upstream = UpstreamRequest::from_map(
                    &router_request_headers(headers.clone(), self.route_timeout),
                    body.clone(),
                );
                let reply = (self.route)(&upstream);
                if reply.latency > self.route_timeout {
                    // The probe (a 1 s route, an upstream answering after 1.5 s): 504 `upstream
                    // request timeout` with content-length and content-type, through every
                    // filter's response path (`a` saw it after `c` and `b`), details
                    // `response_timeout`.
                    self.advance(self.route_timeout)?;
                    let body = b"upstream request timeout".to_vec();
                    let h = vec![
                        (":status".to_string(), "504".to_string()),
                        ("content-length".to_string(), body.len().to_string()),
                        ("content-type".to_string(), "text/plain".to_string()),
                    ];
                    let source = Source::Envoy { details: "response_timeout".to_string() };
                    (h, body, source, self.filters.len())
                } else {
                    self.advance(reply.latency)?;
                    (reply.router_headers(), reply.body, Source::Upstream, self.filters.len())
                }
            }
            Some(Stop::LocalReply(i)) => {
                let reply = streams.get(i).and_then(Stream::local_reply);
                let (h, b, details) = reply.map(|r| (r.headers, r.body, r.details)).unwrap_or_default();
                // The probe (`reply:403` from `b`'s request headers): `b` sees its own reply
                // (the emulator runs it), then `a`; `c` never does.
                (h, b, Source::LocalReply { filter: name(self, i), details }, i)
            }
            Some(Stop::Failed(i, reason)) => {
                // The probe (`panic` in `b`'s request headers, and every later request): 503,
                // no body, `wasm_fail_stream`, seen by `a`'s response path only.
                let h = vec![(":status".to_string(), "503".to_string())];
                (h, Vec::new(), Source::FailedVm { filter: name(self, i), reason }, i)
            }
            Some(Stop::Reset(i)) => {
                // The probe (`close:0` from `b`'s request headers): no answer at all; every
                // filter logs, `response.code_details` `wasm_close_stream`, no response code.
                let source = Source::Reset { filter: name(self, i) };
                self.log_all(&mut streams, &headers, None, details(&source), false)?;
                return Ok(Response { status: 0, headers: Vec::new(), body: Vec::new(), source });
            }
        };
        let (response, response_body, source) =
            self.encode(&mut streams, from, response, response_body, source)?;
        let (status, client_headers) = hcm_response_headers(&response, &http_date(self.now()));
        let client_headers = with_content_length(client_headers, status, &response_body);
        let mut logged = vec![(":status".to_string(), status.to_string())];
        logged.extend(client_headers.iter().cloned());
        self.log_all(
            &mut streams,
            &headers,
            Some((&logged, &response_body)),
            details(&source),
            upstream_answered,
        )?;
        Ok(Response { status, headers: client_headers, body: response_body, source })
    }

    /// The response path through filters `from - 1` down to 0. A local reply sent here goes to
    /// the client as it is (the probe: `reply:418` from `b`'s response headers reached the
    /// client with none of `a`'s or `c`'s additions).
    fn encode(
        &mut self,
        streams: &mut [Stream],
        from: usize,
        mut headers: Vec<(String, String)>,
        mut body: Vec<u8>,
        mut source: Source,
    ) -> Result<Encoded> {
        for j in (0..from).rev() {
            let Some(stream) = streams.get_mut(j) else { continue };
            if self.filters.get(j).is_none_or(|f| f.emu.failure().is_some()) {
                continue;
            }
            if let Some(d) = details(&source) {
                stream.set_code_details(&d);
            }
            let eos = body.is_empty();
            // An upstream's body comes as the request's does from the HTTP/1.1 codec: its data,
            // then an empty end of stream (the probe: `body=2,false`, then `body=0,true`); a
            // local reply's in one piece with the end of stream.
            let from_codec = source == Source::Upstream;
            let r = stream.response_headers(&refs(&headers), eos).and_then(|_| match (eos, from_codec) {
                (true, _) => Ok(crate::Action::Continue),
                (false, true) => {
                    stream.response_body(&body, false).and_then(|_| stream.response_body(&[], true))
                }
                (false, false) => stream.response_body(&body, true),
            });
            tolerate(r.map(|_| ()))?;
            self.settle(j, stream, Side::Response)?;
            let name = self.filters.get(j).map(|f| f.name.clone()).unwrap_or_default();
            if let Some(reason) = self.filters.get(j).and_then(|f| f.emu.failure()) {
                // The probe (`panic` in `b`'s response headers): 503, no body, straight to the
                // client (`a` added nothing), `wasm_fail_stream`.
                headers = vec![(":status".to_string(), "503".to_string())];
                body = Vec::new();
                source = Source::FailedVm { filter: name, reason };
                break;
            }
            if let Some(reply) = stream.local_reply() {
                headers = reply.headers;
                body = reply.body;
                source = Source::LocalReply { filter: name, details: reply.details };
                break;
            }
            headers = stream.response_headers_now();
            body = stream.response_body_now();
        }
        Ok((headers, body, source))
    }

    /// Every filter's `on_log`, in chain order, each with Envoy's access-log view. The probe:
    /// `a`, `b`, `c` logged in that order for every request, `c` too when `b` answered locally
    /// and `c` never saw the request; a failed VM logs nothing.
    fn log_all(
        &mut self,
        streams: &mut [Stream],
        request: &[(String, String)],
        response: Option<crate::emulator::ClientResponse<'_>>,
        details: Option<String>,
        upstream_answered: bool,
    ) -> Result<()> {
        for (f, stream) in self.filters.iter().zip(streams.iter_mut()) {
            if f.emu.failure().is_some() {
                continue;
            }
            stream.set_log_view(request, response, upstream_answered);
            if let Some(d) = &details {
                stream.set_code_details(d);
                // The probe: `response.flags` 4 (UpstreamRequestTimeout) after the route timed
                // out; 0 for local replies and a failed VM's 503.
                if d == "response_timeout" {
                    stream.set_response_flags(UPSTREAM_REQUEST_TIMEOUT);
                }
            }
            tolerate(stream.log())?;
        }
        self.answer_callouts()
    }
}

/// An HTTP/1.1 upgrade: an `upgrade` header that `connection` names.
fn is_upgrade(request: &Request) -> bool {
    let has = |name: &str| request.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    has("upgrade")
        && request.headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("connection")
                && v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
}

/// `response.code_details` for what the filters encode: none to set for an upstream's answer
/// (each filter's stream says `via_upstream` itself).
fn details(source: &Source) -> Option<String> {
    match source {
        Source::Upstream => None,
        Source::LocalReply { details, .. } | Source::Envoy { details } => Some(details.clone()),
        Source::FailedVm { .. } => Some("wasm_fail_stream".to_string()),
        Source::Reset { .. } => Some("wasm_close_stream".to_string()),
    }
}
