//! The proxy-wasm contexts the SDK registers for a [`Plugin`]: they turn the crate's callbacks
//! into the plugin's and the filter's, with the handles those take. The fake host of
//! [`crate::testing`] drives these same contexts.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext as ProxyRootContext};
use proxy_wasm::types::{Action, BufferType, ContextType};

use crate::host::{Abi, Half, Host};
use crate::metrics::FLUSH_PERIOD;
use crate::{Flow, HttpFilter, LocalReply, Plugin, Root, Stream, MAX_CONFIG_BYTES};

/// The root context of a [`Plugin`]: configures it and runs its ticks, callouts and shutdown.
pub struct RootContext<P: Plugin> {
    host: Rc<dyn Host>,
    configured: Option<(Rc<P>, Root)>,
    ticks: Ticks,
}

/// How the host's one tick serves both the plugin's period and the SDK's flush.
#[derive(Debug, Default, Clone, Copy)]
struct Ticks {
    /// Host ticks per plugin tick; 0 when the plugin has no tick.
    plugin_every: u32,
    /// Host ticks per flush of local counters; 0 when there is nothing to flush.
    flush_every: u32,
    count: u32,
}

impl Ticks {
    /// The host period and the schedule for a plugin period and whether counters need flushing.
    fn plan(plugin: Option<Duration>, flush: bool) -> (Option<Duration>, Self) {
        let plugin = plugin.filter(|p| !p.is_zero());
        let flush_period = flush.then_some(FLUSH_PERIOD);
        let Some(period) = [plugin, flush_period].into_iter().flatten().min() else {
            return (None, Self::default());
        };
        let every = |p: Option<Duration>| {
            p.map_or(0, |p| {
                u32::try_from(p.as_millis().div_ceil(period.as_millis().max(1))).unwrap_or(u32::MAX)
            })
        };
        (Some(period), Self { plugin_every: every(plugin), flush_every: every(flush_period), count: 0 })
    }

    /// Advances one host tick: whether the plugin ticks, and whether counters flush.
    fn advance(&mut self) -> (bool, bool) {
        self.count = self.count.wrapping_add(1);
        let due = |every: u32| every != 0 && self.count % every == 0;
        (due(self.plugin_every), due(self.flush_every))
    }
}

impl<P: Plugin> RootContext<P> {
    /// An unconfigured root on the proxy-wasm ABI; `on_configure` fills it.
    pub fn new() -> Self {
        Self::with_host(Rc::new(Abi))
    }

    /// An unconfigured root on `host`.
    pub(crate) fn with_host(host: Rc<dyn Host>) -> Self {
        Self { host, configured: None, ticks: Ticks::default() }
    }

    /// Reads the plugin configuration, configures the plugin and schedules its ticks; the
    /// message says why not, naming the plugin.
    pub(crate) fn configure(&mut self) -> Result<(), String> {
        let raw = self
            .host
            .buffer(BufferType::PluginConfiguration, 0, MAX_CONFIG_BYTES)
            .map_err(|status| format!("{}: cannot read plugin configuration: {status:?}", P::NAME))?;
        let root = Root::new(P::NAME, Rc::clone(&self.host));
        let plugin = Rc::new(P::configure(&raw, &root).map_err(|errors| format!("{}: {errors}", P::NAME))?);
        let (period, ticks) = Ticks::plan(plugin.tick_period(), root.metrics().has_local());
        if let Some(period) = period {
            self.host
                .set_tick_period(period)
                .map_err(|status| format!("{}: cannot set tick period: {status:?}", P::NAME))?;
        }
        self.ticks = ticks;
        self.configured = Some((plugin, root));
        Ok(())
    }

    /// The plugin and its handle, once configured.
    pub(crate) fn configured(&self) -> Option<&(Rc<P>, Root)> {
        self.configured.as_ref()
    }

    /// A stream context for a new request, its host calls going to `host`. A concrete type, not
    /// a boxed `HttpContext`: the fake host drives it natively, where the proxy-wasm traits'
    /// default methods (which call the ABI) must not be linked.
    pub(crate) fn stream(&self, host: Rc<dyn Host>) -> StreamContext<P> {
        let configured = self.configured.as_ref();
        // Without a plugin the stream is refused (see `StreamContext::run`).
        let root = configured.map_or_else(|| Root::new(P::NAME, Rc::clone(&host)), |(_, root)| root.clone());
        StreamContext {
            filter: configured.map(|(plugin, _)| plugin.new_filter()),
            stream: Stream::new(host, root),
        }
    }
}

impl<P: Plugin> Default for RootContext<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Plugin> Context for RootContext<P> {
    fn on_done(&mut self) -> bool {
        match &self.configured {
            Some((plugin, root)) => {
                root.metrics().flush();
                plugin.on_done(root)
            }
            None => true,
        }
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some((plugin, root)) = &self.configured else { return };
        let Some(pending) = root.take_callout(token_id) else {
            log::warn!("{}: answer for unknown callout {token_id} ignored", P::NAME);
            return;
        };
        let result = pending.read(&*self.host, num_headers, body_size);
        plugin.on_callout(root, crate::CalloutId(token_id), result);
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some((plugin, root)) = &self.configured else { return };
        let Some(pending) = root.take_grpc(token_id) else {
            log::warn!("{}: answer for unknown gRPC call {token_id} ignored", P::NAME);
            return;
        };
        let result = pending.read(&*self.host, status_code, response_size);
        plugin.on_grpc_result(root, crate::CalloutId(token_id), result);
    }
}

impl<P: Plugin> ProxyRootContext for RootContext<P> {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        match self.configure() {
            Ok(()) => true,
            Err(message) => {
                log::error!("{message}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some((plugin, root)) = &self.configured else { return };
        let (tick, flush) = self.ticks.advance();
        if flush {
            root.metrics().flush();
        }
        if tick {
            plugin.on_tick(root);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(self.stream(Rc::clone(&self.host))))
    }
}

/// The stream context of a [`Plugin`]'s filter.
pub(crate) struct StreamContext<P: Plugin> {
    /// `None` when the plugin is not configured: Envoy does not create streams for a plugin
    /// whose configure failed, but if a host ever does, the request is refused rather than let
    /// through unfiltered.
    filter: Option<P::Filter>,
    stream: Stream,
}

impl<P: Plugin> StreamContext<P> {
    fn run(&mut self, half: Half, callback: impl FnOnce(&mut P::Filter, &mut Stream) -> Flow) -> Action {
        self.stream.enter(half);
        let flow = match &mut self.filter {
            Some(filter) => callback(filter, &mut self.stream),
            None if half == Half::Request && !self.stream.replied => Flow::Reply(LocalReply::new(
                500,
                "filter_not_configured",
                "the filter has no valid configuration",
            )),
            None => Flow::Continue,
        };
        match flow {
            Flow::Continue => Action::Continue,
            Flow::Pause => Action::Pause,
            Flow::Reply(reply) => {
                send_reply(&*self.stream.host, P::NAME, &reply);
                self.stream.replied = true;
                Action::Pause
            }
        }
    }
}

fn send_reply(host: &dyn Host, name: &str, reply: &LocalReply) {
    if let Err(status) = reply.send(host, name) {
        // Without a reply the stream would hang: reset it instead.
        log::warn!("{name}: local reply {} failed ({status:?}); resetting the stream", reply.status);
        let _ = host.reset();
    }
}

impl<P: Plugin> Context for StreamContext<P> {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(pending) = take_if(&mut self.stream.pending, |p| p.token == token_id) else {
            log::warn!("{}: answer for unknown callout {token_id} ignored", P::NAME);
            return;
        };
        let half = self.stream.half;
        self.stream.enter(half);
        let result = pending.read(&*self.stream.host, num_headers, body_size);
        self.stream.callout_elapsed = pending.elapsed.get();
        // ok to skip: only a configured filter can have sent a callout.
        let Some(filter) = &mut self.filter else { return };
        let flow = filter.on_callout(&mut self.stream, result);
        self.after_answer(half, flow);
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some(pending) = take_if(&mut self.stream.pending_grpc, |p| p.token == token_id) else {
            log::warn!("{}: answer for unknown gRPC call {token_id} ignored", P::NAME);
            return;
        };
        let half = self.stream.half;
        self.stream.enter(half);
        let result = pending.read(&*self.stream.host, status_code, response_size);
        // ok to skip: only a configured filter can have sent a call.
        let Some(filter) = &mut self.filter else { return };
        let flow = filter.on_grpc_result(&mut self.stream, result);
        self.after_answer(half, flow);
    }
}

/// What `slot` holds when it is the one `wanted` (taken out), else `None` (left in place).
fn take_if<T>(slot: &mut Option<T>, wanted: impl FnOnce(&T) -> bool) -> Option<T> {
    if slot.as_ref().is_some_and(wanted) {
        slot.take()
    } else {
        None
    }
}

impl<P: Plugin> StreamContext<P> {
    /// Does what the filter decided when a callout or gRPC call answered: resume the half that
    /// waited, keep it paused, or reply.
    fn after_answer(&mut self, half: Half, flow: Flow) {
        match flow {
            Flow::Continue => {
                if let Err(status) = self.stream.host.resume(half) {
                    log::warn!("{}: resuming the stream failed: {status:?}", P::NAME);
                }
            }
            Flow::Pause => {}
            Flow::Reply(reply) => {
                send_reply(&*self.stream.host, P::NAME, &reply);
                self.stream.replied = true;
            }
        }
    }
}

impl<P: Plugin> HttpContext for StreamContext<P> {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.run(Half::Request, |f, s| f.on_request_headers(s, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.run(Half::Request, |f, s| f.on_request_body(s, body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.run(Half::Request, |f, s| f.on_request_trailers(s))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.run(Half::Response, |f, s| f.on_response_headers(s, end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.run(Half::Response, |f, s| f.on_response_body(s, body_size, end_of_stream))
    }

    fn on_log(&mut self) {
        let half = self.stream.half;
        self.stream.enter(half);
        if let Some(filter) = &mut self.filter {
            filter.on_log(&mut self.stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_host_tick_serves_the_plugin_and_the_flush() {
        let ms = Duration::from_millis;
        assert_eq!(Ticks::plan(None, false).0, None);
        let (period, mut t) = Ticks::plan(Some(ms(200)), true);
        assert_eq!(period, Some(ms(200)));
        let ticks: Vec<_> = (0..10).map(|_| t.advance()).collect();
        assert!(ticks.iter().all(|(plugin, _)| *plugin));
        assert_eq!(ticks.iter().filter(|(_, flush)| *flush).count(), 2, "one flush per second");
        let (period, mut t) = Ticks::plan(Some(Duration::from_secs(5)), true);
        assert_eq!(period, Some(FLUSH_PERIOD));
        let ticks: Vec<_> = (0..10).map(|_| t.advance()).collect();
        assert_eq!(ticks.iter().filter(|(plugin, _)| *plugin).count(), 2, "the plugin's 5 s kept");
        assert!(ticks.iter().all(|(_, flush)| *flush));
        let (period, mut t) = Ticks::plan(None, true);
        assert_eq!(period, Some(FLUSH_PERIOD));
        assert_eq!(t.advance(), (false, true));
        let (period, mut t) = Ticks::plan(Some(ms(300)), false);
        assert_eq!(period, Some(ms(300)));
        assert_eq!(t.advance(), (true, false));
    }
}
