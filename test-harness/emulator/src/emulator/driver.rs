//! The driver: instantiates the module, calls into it, runs what Envoy defers to after a call,
//! and delivers ticks, callout answers and queue notifications on the emulated clock.

use super::modules::engine;
use crate::abi::{Action, LogLevel};
use crate::grpc::Outcome;
use crate::host::{self, AfterCall, Dir, HeaderMap, HostState, LocalReply, Phase, StreamState};
use crate::Error;
use std::time::Duration;
use wasmtime::{ExternType, Linker, Module, Store, TypedFunc};

type Result<T> = std::result::Result<T, Error>;

/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
type CallResponseFn = TypedFunc<(u32, u32, u32, u32, u32), ()>;

/// The module's callbacks, looked up once at instantiation (a module may lack any of them).
#[derive(Clone)]
struct Exports {
    initialize: Option<TypedFunc<(), ()>>,
    start: Option<TypedFunc<(), ()>>,
    context_create: Option<TypedFunc<(u32, u32), ()>>,
    vm_start: Option<TypedFunc<(u32, u32), u32>>,
    configure: Option<TypedFunc<(u32, u32), u32>>,
    request_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    request_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    request_trailers: Option<TypedFunc<(u32, u32), u32>>,
    response_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    response_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    response_trailers: Option<TypedFunc<(u32, u32), u32>>,
    log: Option<TypedFunc<u32, ()>>,
    done: Option<TypedFunc<u32, u32>>,
    delete: Option<TypedFunc<u32, ()>>,
    tick: Option<TypedFunc<u32, ()>>,
    http_call_response: Option<CallResponseFn>,
    /// `proxy_on_grpc_receive(context, token, size)` and `proxy_on_grpc_close(context, token,
    /// code)`.
    grpc_receive: Option<TypedFunc<(u32, u32, u32), ()>>,
    grpc_close: Option<TypedFunc<(u32, u32, u32), ()>>,
    queue_ready: Option<TypedFunc<(u32, u32), ()>>,
}

/// One started VM: its store (the host state), its callbacks, and whether it failed.
pub(super) struct Inner {
    pub(super) store: Store<HostState>,
    exports: Exports,
    pub(super) failed: Option<String>,
    pub(super) configured: bool,
    pub(super) next_context_id: u32,
}

/// Which direction of a stream.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Request,
    Response,
}

impl Inner {
    /// Instantiates `module` on `state` and starts it as Envoy does: `_initialize` (or
    /// `_start`), `proxy_on_context_create` for the root context, `proxy_on_vm_start`,
    /// `proxy_on_configure`. Imports the host does not define are linked to stubs that trap
    /// naming the call.
    pub(super) fn start(module: Module, state: HostState) -> Result<Inner> {
        let engine = engine();
        let mut store = Store::new(engine, state);
        let mut linker: Linker<HostState> = Linker::new(engine);
        crate::wasi::add_to_linker(&mut linker).map_err(|e| Error::Load(format!("{e:#}")))?;
        host::add_to_linker(&mut linker).map_err(|e| Error::Load(format!("{e:#}")))?;
        for import in module.imports() {
            if linker.get_by_import(&mut store, &import).is_some() {
                continue;
            }
            if let ExternType::Func(ty) = import.ty() {
                let (m, n) = (import.module().to_string(), import.name().to_string());
                linker
                    .func_new(import.module(), import.name(), ty, move |_, _, _| {
                        Err(host::unimplemented_import(&m, &n))
                    })
                    .map_err(|e| Error::Load(format!("{e:#}")))?;
            }
        }
        let instance = linker.instantiate(&mut store, &module).map_err(|e| Error::Load(format!("{e:#}")))?;
        if instance.get_func(&mut store, "proxy_abi_version_0_2_1").is_none() {
            return Err(Error::Load(
                "the module does not export proxy_abi_version_0_2_1 (only Proxy-Wasm ABI 0.2.1 is emulated)"
                    .to_string(),
            ));
        }
        let malloc = instance
            .get_typed_func::<u32, u32>(&mut store, "malloc")
            .or_else(|_| instance.get_typed_func::<u32, u32>(&mut store, "proxy_on_memory_allocate"))
            .map_err(|_| {
                Error::Load("the module exports neither malloc nor proxy_on_memory_allocate".to_string())
            })?;
        store.data_mut().malloc = Some(malloc);
        macro_rules! get {
            ($name:expr) => {
                instance.get_typed_func(&mut store, $name).ok()
            };
        }
        let exports = Exports {
            initialize: get!("_initialize"),
            start: get!("_start"),
            context_create: get!("proxy_on_context_create"),
            vm_start: get!("proxy_on_vm_start"),
            configure: get!("proxy_on_configure"),
            request_headers: get!("proxy_on_request_headers"),
            request_body: get!("proxy_on_request_body"),
            request_trailers: get!("proxy_on_request_trailers"),
            response_headers: get!("proxy_on_response_headers"),
            response_body: get!("proxy_on_response_body"),
            response_trailers: get!("proxy_on_response_trailers"),
            log: get!("proxy_on_log"),
            done: get!("proxy_on_done"),
            delete: get!("proxy_on_delete"),
            tick: get!("proxy_on_tick"),
            http_call_response: get!("proxy_on_http_call_response"),
            grpc_receive: get!("proxy_on_grpc_receive"),
            grpc_close: get!("proxy_on_grpc_close"),
            queue_ready: get!("proxy_on_queue_ready"),
        };
        let mut inner = Inner { store, exports, failed: None, configured: false, next_context_id: 2 };
        let e = &inner.exports;
        let (init, start, create, vm_start, configure) = (
            e.initialize.clone(),
            e.start.clone(),
            e.context_create.clone(),
            e.vm_start.clone(),
            e.configure.clone(),
        );
        if let Some(f) = init {
            inner.call("_initialize", 0, |s| f.call(s, ()))?;
        } else if let Some(f) = start {
            inner.call("_start", 0, |s| f.call(s, ()))?;
        }
        let root = inner.store.data().root_id;
        if let Some(f) = create {
            inner.call("proxy_on_context_create", root, |s| f.call(s, (root, 0)))?;
        }
        let vm_len = inner.store.data().vm_config.len() as u32;
        let started = match vm_start {
            Some(f) => inner.call("proxy_on_vm_start", root, |s| f.call(s, (root, vm_len)))? != 0,
            None => true,
        };
        let mut configured = started;
        if started {
            if let Some(f) = configure {
                let len = inner.store.data().plugin_config.len() as u32;
                inner.store.data_mut().in_configure = true;
                let r = inner.call("proxy_on_configure", root, |s| f.call(s, (root, len)));
                inner.store.data_mut().in_configure = false;
                configured = r? != 0;
            }
        }
        inner.configured = configured;
        inner.pump()?;
        Ok(inner)
    }

    /// Calls into the module for context `ctx`. A trap kills the VM (as in Envoy) and is
    /// reported with the module's panic message, if it logged one.
    fn call<R>(
        &mut self,
        name: &str,
        ctx: u32,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R> {
        if let Some(reason) = &self.failed {
            return Err(Error::VmFailed(reason.clone()));
        }
        let st = self.store.data_mut();
        st.current = ctx;
        st.effective = None;
        st.stop_iteration = false;
        let log_mark = st.logs.len();
        let result = f(&mut self.store);
        self.drain_wasi_writes();
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                let st = self.store.data();
                let mut panic: Vec<String> = st
                    .logs
                    .iter()
                    .skip(log_mark)
                    .filter(|l| l.level == LogLevel::Critical)
                    .map(|l| l.message.clone())
                    .collect();
                if panic.is_empty() {
                    panic = st
                        .logs
                        .iter()
                        .skip(log_mark)
                        .filter(|l| l.message.contains("panicked at"))
                        .map(|l| l.message.clone())
                        .collect();
                }
                let panic = if panic.is_empty() { None } else { Some(panic.join("\n")) };
                let trap = format!("{e:#}");
                let reason = match &panic {
                    Some(p) => format!("{name} trapped: {p}"),
                    None => format!("{name} trapped: {trap}"),
                };
                self.failed = Some(reason);
                Err(Error::Trap { call: name.to_string(), trap, panic })
            }
        }
    }

    /// Envoy logs WASI stdout at info and stderr at error (proxy-wasm-cpp-host `writevImpl`).
    fn drain_wasi_writes(&mut self) {
        let st = self.store.data_mut();
        let writes = std::mem::take(&mut st.wasi.writes);
        for (fd, data) in writes {
            let mut text = String::from_utf8_lossy(&data).into_owned();
            if text.ends_with('\n') {
                text.pop();
            }
            st.log(if fd == 1 { LogLevel::Info } else { LogLevel::Error }, text);
        }
    }

    /// The state of stream `id`; a usage error when there is none.
    pub(super) fn stream(&mut self, id: u32) -> Result<&mut StreamState> {
        self.store
            .data_mut()
            .streams
            .get_mut(&id)
            .ok_or_else(|| Error::Usage(format!("no stream with context id {id}")))
    }

    fn dir(&mut self, id: u32, side: Side) -> Result<&mut Dir> {
        let s = self.stream(id)?;
        Ok(if side == Side::Request { &mut s.req } else { &mut s.resp })
    }

    /// Whether Envoy calls the filter no more for stream `id` (reset, answered locally, logged).
    pub(super) fn ended(&self, id: u32) -> bool {
        self.store
            .data()
            .streams
            .get(&id)
            .map(|s| s.reset || s.local_reply.is_some() || s.phase != Phase::Open)
            .unwrap_or(true)
    }

    fn action(&self, raw: u32) -> Action {
        // A local reply makes Envoy ignore the returned value and stop (exports.cc).
        if raw == 0 && !self.store.data().stop_iteration {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    /// Envoy calls `proxy_on_context_create` for a stream when its headers arrive.
    pub(super) fn ensure_created(&mut self, id: u32) -> Result<()> {
        if self.store.data().streams.contains_key(&id) {
            return Ok(());
        }
        let (start_realtime_ns, start_monotonic_ns) = {
            let st = self.store.data();
            (st.realtime_ns, st.monotonic_ns)
        };
        self.store.data_mut().streams.insert(
            id,
            StreamState {
                req: Dir { headers: HeaderMap::new(true), ..Dir::default() },
                start_realtime_ns,
                start_monotonic_ns,
                ..StreamState::default()
            },
        );
        let root = self.store.data().root_id;
        if let Some(f) = self.exports.context_create.clone() {
            self.call("proxy_on_context_create", id, |s| f.call(s, (id, root)))?;
        }
        Ok(())
    }

    /// Headers arrive on one side of stream `id`: their callback runs, and a Pause holds them
    /// (or, with `allow_on_headers_stop_iteration`, only them).
    pub(super) fn headers(&mut self, id: u32, side: Side, headers: HeaderMap, eos: bool) -> Result<Action> {
        let d = self.dir(id, side)?;
        d.headers = headers;
        d.headers_live = true;
        d.headers_seen = true;
        d.complete = eos;
        let n = d.headers.entries.len() as u32;
        let f = if side == Side::Request {
            self.exports.request_headers.clone()
        } else {
            self.exports.response_headers.clone()
        };
        let name =
            if side == Side::Request { "proxy_on_request_headers" } else { "proxy_on_response_headers" };
        let action = match f {
            Some(f) => {
                let raw = self.call(name, id, |s| f.call(s, (id, n, u32::from(eos))))?;
                self.action(raw)
            }
            None => Action::Continue,
        };
        let hold = self.store.data().hold_headers;
        let d = self.dir(id, side)?;
        if action == Action::Continue {
            d.headers_live = false;
        } else if hold {
            // Envoy with allow_on_headers_stop_iteration: the headers wait, data still comes.
            d.held = true;
        } else {
            d.stopped = true;
        }
        Ok(action)
    }

    /// A body chunk arrives: it waits while the side is stopped, else its callback sees the
    /// buffered data plus the chunk.
    pub(super) fn body(&mut self, id: u32, side: Side, chunk: &[u8], eos: bool) -> Result<Action> {
        let d = self.dir(id, side)?;
        if d.stopped {
            // Headers (or trailers) stopped all iteration: Envoy buffers the data and gives it
            // to this filter when it continues.
            let q = d.queued_body.get_or_insert_with(|| (Vec::new(), false));
            q.0.extend_from_slice(chunk);
            q.1 |= eos;
            return Ok(Action::Pause);
        }
        if !d.buffering {
            d.body.clear();
        }
        d.body.extend_from_slice(chunk);
        d.body_live = true;
        d.complete |= eos;
        let n = d.body.len() as u32;
        let f = if side == Side::Request {
            self.exports.request_body.clone()
        } else {
            self.exports.response_body.clone()
        };
        let name = if side == Side::Request { "proxy_on_request_body" } else { "proxy_on_response_body" };
        let action = match f {
            Some(f) => {
                let raw = self.call(name, id, |s| f.call(s, (id, n, u32::from(eos))))?;
                self.action(raw)
            }
            None => Action::Continue,
        };
        let d = self.dir(id, side)?;
        if action == Action::Continue {
            let body = std::mem::take(&mut d.body);
            d.forwarded.extend_from_slice(&body);
            d.body_live = false;
            d.buffering = false;
            // Data that continues takes held headers along (Envoy's filter manager).
            d.held = false;
        } else {
            d.buffering = true;
        }
        Ok(action)
    }

    /// Trailers arrive: they wait while the side is stopped, else their callback runs.
    pub(super) fn trailers(&mut self, id: u32, side: Side, trailers: HeaderMap) -> Result<Action> {
        let d = self.dir(id, side)?;
        if d.stopped {
            d.queued_trailers = Some(trailers);
            return Ok(Action::Pause);
        }
        d.trailers = Some(trailers);
        d.trailers_live = true;
        d.complete = true;
        let n = d.trailers.as_ref().map(|t| t.entries.len()).unwrap_or(0) as u32;
        let f = if side == Side::Request {
            self.exports.request_trailers.clone()
        } else {
            self.exports.response_trailers.clone()
        };
        let name =
            if side == Side::Request { "proxy_on_request_trailers" } else { "proxy_on_response_trailers" };
        let action = match f {
            Some(f) => {
                let raw = self.call(name, id, |s| f.call(s, (id, n)))?;
                self.action(raw)
            }
            None => Action::Continue,
        };
        let d = self.dir(id, side)?;
        if action == Action::Continue {
            d.trailers_live = false;
            let body = std::mem::take(&mut d.body);
            d.forwarded.extend_from_slice(&body);
            d.body_live = false;
            d.buffering = false;
            d.held = false;
        } else {
            d.stopped = true;
        }
        Ok(action)
    }

    /// `continueDecoding`/`continueEncoding`: buffered body goes on, data that waited while the
    /// filter was stopped is given to it now.
    fn resume(&mut self, id: u32, side: Side) -> Result<()> {
        if self.ended(id) {
            return Ok(());
        }
        let d = self.dir(id, side)?;
        d.stopped = false;
        d.held = false;
        let body = std::mem::take(&mut d.body);
        d.forwarded.extend_from_slice(&body);
        d.buffering = false;
        d.body_live = false;
        let queued_body = d.queued_body.take();
        let queued_trailers = d.queued_trailers.take();
        if let Some((chunk, eos)) = queued_body {
            self.body(id, side, &chunk, eos)?;
        }
        if let Some(t) = queued_trailers {
            if self.ended(id) {
                return Ok(());
            }
            let d = self.dir(id, side)?;
            if d.stopped {
                d.queued_trailers = Some(t);
            } else {
                self.trailers(id, side, t)?;
            }
        }
        Ok(())
    }

    fn local_reply(&mut self, id: u32, mut reply: LocalReply) -> Result<()> {
        if self.ended(id) {
            return Ok(());
        }
        let mut headers = HeaderMap::new(false);
        headers.add(b":status", reply.status.to_string().as_bytes());
        for (k, v) in &reply.headers {
            headers.add(k.as_bytes(), v.as_bytes());
        }
        // The probe: with a body the filter sees content-length and content-type: text/plain;
        // without one (403 or 204, empty body), neither. A content-type the module gave is kept
        // and no second one added (ext-auth's Envoy tests: one `application/json`).
        if !reply.body.is_empty() {
            headers.add(b"content-length", reply.body.len().to_string().as_bytes());
            if !reply.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
                headers.add(b"content-type", b"text/plain");
            }
        }
        let request_phase = !self.stream(id)?.resp.headers_seen;
        {
            let s = self.stream(id)?;
            s.code_details = Some(reply.details.clone());
            s.req.stopped = true;
            s.req.headers_live = s.req.headers_live || s.req.stopped;
        }
        if request_phase {
            // Envoy sends a local reply from the request path through the encoder filters,
            // this one included: the probe saw its own reply in on_response_headers (with
            // :status, its extra headers, content-length and content-type).
            let body = std::mem::take(&mut reply.body);
            self.stream(id)?.local_reply_pending = true;
            let r = self.headers(id, Side::Response, headers, body.is_empty());
            if r.is_ok() && !body.is_empty() && !self.stream(id)?.reset {
                let d = self.dir(id, Side::Response)?;
                d.stopped = false;
                self.body(id, Side::Response, &body, true)?;
            }
            r?;
            let s = self.stream(id)?;
            s.local_reply_pending = false;
            let mut out = std::mem::take(&mut s.resp.forwarded);
            out.extend_from_slice(&s.resp.body);
            if body.is_empty() {
                out.clear();
            }
            reply.body = if body.is_empty() { Vec::new() } else { out };
            reply.headers = s.resp.headers.to_strings();
            s.resp.forwarded = reply.body.clone();
        } else {
            // From the response path the reply replaces the response without running this
            // filter again (the probe: its on_response_headers did not see its own 418).
            reply.headers = headers.to_strings();
            let s = self.stream(id)?;
            s.resp.headers = headers;
            s.resp.forwarded = reply.body.clone();
        }
        let s = self.stream(id)?;
        s.resp.complete = true;
        s.local_reply = Some(reply);
        Ok(())
    }

    /// Runs what Envoy defers to after a VM call (continue, close, local reply) and delivers
    /// queue notifications, until nothing is left.
    pub(super) fn pump(&mut self) -> Result<()> {
        loop {
            let actions = std::mem::take(&mut self.store.data_mut().after);
            let ready: Vec<(u32, u32)> = {
                let member = self.store.data().member;
                let mut g = self.store.data().group.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let (mine, rest): (Vec<_>, Vec<_>) = g.ready.drain(..).partition(|(m, _, _)| *m == member);
                g.ready = rest;
                mine.into_iter().map(|(_, root, id)| (root, id)).collect()
            };
            if actions.is_empty() && ready.is_empty() {
                return Ok(());
            }
            for a in actions {
                match a {
                    AfterCall::Continue(id, t) => {
                        // Envoy's continueStream forgets the request headers, body and trailers
                        // pointers whichever direction continues.
                        if let Ok(s) = self.stream(id) {
                            s.req.headers_live = false;
                            s.req.body_live = false;
                            s.req.trailers_live = false;
                        }
                        let side = if t == 0 { Side::Request } else { Side::Response };
                        let stopped =
                            self.dir(id, side).map(|d| d.stopped || d.buffering || d.held).unwrap_or(false);
                        if stopped {
                            self.resume(id, side)?;
                        }
                    }
                    AfterCall::Close(id) => {
                        if let Ok(s) = self.stream(id) {
                            s.reset = true;
                        }
                    }
                    AfterCall::LocalReply(id, reply) => self.local_reply(id, reply)?,
                    AfterCall::DeleteRoot => self.delete_root()?,
                    AfterCall::GrpcClose(token, code, message) => {
                        let root = self.store.data().root_id;
                        self.grpc_answer(root, token, Outcome::Close(code, message))?;
                    }
                }
            }
            for (root, qid) in ready {
                if let Some(f) = self.exports.queue_ready.clone() {
                    self.call("proxy_on_queue_ready", root, |s| f.call(s, (root, qid)))?;
                }
            }
        }
    }

    /// Deletes the root context as Envoy does when a removed plugin is done: `proxy_on_delete`,
    /// its timer stopped and its pending callouts cancelled (their answers never arrive).
    fn delete_root(&mut self) -> Result<()> {
        let st = self.store.data_mut();
        let root = st.root_id;
        st.root_deleted = true;
        st.tick_period_ms = 0;
        st.next_tick = None;
        st.http_calls.retain(|_, call| call.context_id != root);
        st.grpc_calls.retain(|_, call| call.context_id != root);
        if let Some(f) = self.exports.delete.clone() {
            self.call("proxy_on_delete", root, |s| f.call(s, root))?;
        }
        Ok(())
    }

    /// Answers callout `token` (`None`: a reset) through `proxy_on_http_call_response`, then runs
    /// what the answer resumed.
    pub(super) fn deliver_call_response(
        &mut self,
        token: u32,
        response: Option<(HeaderMap, Vec<u8>, Option<HeaderMap>)>,
    ) -> Result<()> {
        let call = self
            .store
            .data_mut()
            .http_calls
            .remove(&token)
            .ok_or_else(|| Error::Usage(format!("no pending http call with token {token}")))?;
        let (nh, nb, nt) = match &response {
            Some((h, b, t)) => (
                h.entries.len() as u32,
                b.len() as u32,
                t.as_ref().map(|t| t.entries.len()).unwrap_or(0) as u32,
            ),
            None => (0, 0, 0),
        };
        self.store.data_mut().call_response = response;
        let ctx = call.context_id;
        let r = match self.exports.http_call_response.clone() {
            Some(f) => self.call("proxy_on_http_call_response", ctx, |s| f.call(s, (ctx, token, nh, nb, nt))),
            None => Ok(()),
        };
        self.store.data_mut().call_response = None;
        r?;
        self.pump()
    }

    /// Answers gRPC call `token` with `outcome` (a pending call, removed), then runs what the
    /// answer resumed.
    pub(super) fn deliver_grpc(&mut self, token: u32, outcome: Outcome) -> Result<()> {
        let call = self
            .store
            .data_mut()
            .grpc_calls
            .remove(&token)
            .ok_or_else(|| Error::Usage(format!("no pending gRPC call with token {token}")))?;
        self.grpc_answer(call.context_id, token, outcome)?;
        self.pump()
    }

    /// Calls `proxy_on_grpc_receive` or `proxy_on_grpc_close` on context `ctx`, with the
    /// message or status where the module's reads find them while it runs.
    fn grpc_answer(&mut self, ctx: u32, token: u32, outcome: Outcome) -> Result<()> {
        match outcome {
            Outcome::Message(message) => {
                let size = message.len() as u32;
                self.store.data_mut().grpc_receive = Some(message);
                let r = match self.exports.grpc_receive.clone() {
                    Some(f) => self.call("proxy_on_grpc_receive", ctx, |s| f.call(s, (ctx, token, size))),
                    None => Ok(()),
                };
                self.store.data_mut().grpc_receive = None;
                r
            }
            Outcome::Close(code, message) => {
                self.store.data_mut().grpc_status = (code, Some(message));
                let r = match self.exports.grpc_close.clone() {
                    Some(f) => self.call("proxy_on_grpc_close", ctx, |s| f.call(s, (ctx, token, code))),
                    None => Ok(()),
                };
                self.store.data_mut().grpc_status.1 = None;
                r
            }
        }
    }

    fn set_clock(&mut self, monotonic: u64) {
        let st = self.store.data_mut();
        let delta = monotonic.saturating_sub(st.monotonic_ns);
        st.monotonic_ns = monotonic;
        st.realtime_ns = st.realtime_ns.saturating_add(delta);
        st.sync_clock();
    }

    /// Advances the emulated clock by `by`, firing each tick and callout timeout in time order;
    /// a timed-out HTTP call gets Envoy's 504 (`upstream request timeout`), a gRPC call its
    /// `UNAVAILABLE` close with that message.
    pub(super) fn advance_clock(&mut self, by: Duration) -> Result<()> {
        self.pump()?;
        let target = self.store.data().monotonic_ns.saturating_add(by.as_nanos() as u64);
        loop {
            let st = self.store.data();
            let tick = st.next_tick.filter(|t| *t <= target);
            let http = st.http_calls.values().filter_map(|c| c.deadline.map(|d| (d, c.token, false)));
            let grpc = st.grpc_calls.values().filter_map(|c| c.deadline.map(|d| (d, c.token, true)));
            let timeout = http.chain(grpc).filter(|(d, _, _)| *d <= target).min();
            match (tick, timeout) {
                (Some(t), to) if to.map(|(d, _, _)| t <= d).unwrap_or(true) => {
                    self.set_clock(t);
                    let st = self.store.data_mut();
                    st.next_tick = if st.tick_period_ms > 0 {
                        Some(t + u64::from(st.tick_period_ms) * 1_000_000)
                    } else {
                        None
                    };
                    let root = st.root_id;
                    if let Some(f) = self.exports.tick.clone() {
                        self.call("proxy_on_tick", root, |s| f.call(s, root))?;
                    }
                    self.pump()?;
                }
                (_, Some((d, token, true))) => {
                    // Envoy's router answers the call's stream with its timeout reply.
                    self.set_clock(d);
                    self.deliver_grpc(token, crate::grpc::router_close(crate::grpc::router::TIMEOUT))?;
                }
                (_, Some((d, token, false))) => {
                    self.set_clock(d);
                    let h = HeaderMap::from_pairs(
                        &[(":status", "504"), ("content-length", "24"), ("content-type", "text/plain")],
                        false,
                    );
                    self.deliver_call_response(token, Some((h, b"upstream request timeout".to_vec(), None)))?;
                }
                _ => break,
            }
        }
        self.set_clock(target);
        Ok(())
    }

    /// `proxy_on_done` on the root context, as Envoy 1.40 calls it for a removed plugin.
    /// True when the module let it go at once (the root context is deleted); false when it
    /// asked to finish first (`proxy_done` then deletes it).
    pub(super) fn remove_plugin(&mut self) -> Result<bool> {
        self.pump()?;
        let root = self.store.data().root_id;
        let now = match self.exports.done.clone() {
            Some(f) => self.call("proxy_on_done", root, |s| f.call(s, root))? != 0,
            None => true,
        };
        if now {
            self.delete_root()?;
        } else {
            self.store.data_mut().root_pending_done = true;
        }
        self.pump()?;
        Ok(now)
    }

    /// Runs stream `id`'s callback `f` as Envoy would: deferred actions first, the context
    /// created on first use, nothing once the stream ended (or, on the response side, while its
    /// local reply is being encoded), and what `f` deferred afterwards.
    pub(super) fn drive(
        &mut self,
        id: u32,
        side: Side,
        f: impl FnOnce(&mut Inner, u32) -> Result<Action>,
    ) -> Result<Action> {
        self.pump()?;
        self.ensure_created(id)?;
        if self.ended(id) {
            // Envoy calls the filter no more once the stream was reset or answered locally
            // (a response after a local reply never comes).
            return Ok(Action::Pause);
        }
        if side == Side::Response && self.stream(id)?.local_reply_pending {
            return Ok(Action::Pause);
        }
        let a = f(self, id)?;
        self.pump()?;
        Ok(a)
    }

    /// Ends stream `id`: `proxy_on_log` (with the access-log view of the headers), then
    /// `proxy_on_done` and `proxy_on_delete`.
    pub(super) fn log_stream(&mut self, id: u32) -> Result<()> {
        self.pump()?;
        if !self.store.data().streams.contains_key(&id) {
            // Envoy creates the context for logging a stream it never saw (Context::log).
            self.ensure_created(id)?;
        }
        let ex = self.exports.clone();
        let now = self.store.data().monotonic_ns;
        let s = self.stream(id)?;
        s.phase = Phase::Log;
        // Envoy's requestComplete: request.duration is known from here on.
        s.end_monotonic_ns = Some(now);
        if let Some(f) = ex.log {
            self.call("proxy_on_log", id, |s| f.call(s, id))?;
        }
        self.stream(id)?.phase = Phase::Done;
        if let Some(f) = ex.done {
            self.call("proxy_on_done", id, |s| f.call(s, id))?;
        }
        if let Some(f) = ex.delete {
            self.call("proxy_on_delete", id, |s| f.call(s, id))?;
        }
        self.pump()
    }
}
