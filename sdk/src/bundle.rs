//! Several plugins in one module: the plugin a root context runs is chosen by its root id.
//!
//! Envoy runs one Wasm VM per distinct module (and VM configuration) per worker. Five filters
//! shipped as five modules cost five VMs per worker; the same five linked into one module and
//! configured with the same code and `vm_config` share one. Each filter configuration names the
//! plugin it wants with Envoy's `root_id` (Istio: the WasmPlugin's `pluginName`), which the module
//! reads as the `plugin_root_id` property of its root context.
//!
//! ```ignore
//! gatewasm::export_bundle!("jwt-auth" => jwt_auth::JwtAuth, "ext-auth" => ext_auth::ExtAuth);
//! ```
//!
//! registers both; a root id of `jwt-auth` runs `JwtAuth`. Listed without a root id, a plugin is
//! chosen by its [`Plugin::NAME`](crate::Plugin::NAME). A root id that names no plugin of the
//! module is refused in `on_configure`, with a log line naming the root id and the plugins the
//! module has, so Envoy rejects the filter configuration; no request reaches an unresolved root.
//!
//! The root id is read on the root context's first callback (`on_vm_start`, else `on_configure`):
//! Envoy 1.40 answers `plugin_root_id` from the root context's creation on, but reading it there
//! would make a failed read impossible to report, and both later callbacks can refuse.

use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType};

use crate::host::{Abi, Host};
use crate::reply::LocalReply;

/// One plugin of a bundle: the root id that selects it and how its root context is built.
#[derive(Clone, Copy)]
pub struct BundleEntry {
    /// The root id (`root_id` in Envoy's Wasm filter configuration) that selects this plugin.
    pub root_id: &'static str,
    /// Builds the plugin's root context, the one a single-plugin module would register.
    pub new_root: fn() -> Box<dyn RootContext>,
}

impl std::fmt::Debug for BundleEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleEntry").field("root_id", &self.root_id).finish_non_exhaustive()
    }
}

/// The plugin whose root id is `root_id`, or an error listing the plugins the bundle has.
pub fn select(entries: &'static [BundleEntry], root_id: &str) -> Result<&'static BundleEntry, String> {
    entries.iter().find(|e| e.root_id == root_id).ok_or_else(|| unknown_message(entries, root_id))
}

fn unknown_message(entries: &[BundleEntry], root_id: &str) -> String {
    let names: Vec<&str> = entries.iter().map(|e| e.root_id).collect();
    format!(
        "root_id {root_id:?} names no plugin of this module; set root_id (Istio: pluginName) to one of: {}",
        names.join(", ")
    )
}

/// The name logs and replies use before a plugin is chosen.
const BUNDLE: &str = "gatewasm_bundle";

enum State {
    /// Created; the root id is read on the first root callback.
    Unresolved,
    /// The chosen plugin's own root context, to which every callback goes.
    Chosen(Box<dyn RootContext>),
    /// The root id selects no plugin: configure fails with this message, streams are refused.
    Refused(String),
}

/// The root context a bundle registers for every root id: it reads the root id, builds the
/// chosen plugin's root context and hands it every callback from then on.
pub struct BundleRoot {
    entries: &'static [BundleEntry],
    state: State,
}

impl BundleRoot {
    /// An unresolved root for a bundle of `entries`.
    pub fn new(entries: &'static [BundleEntry]) -> Self {
        Self { entries, state: State::Unresolved }
    }

    /// Reads the root id and builds the chosen plugin's root, once.
    fn resolve(&mut self) -> Option<&mut Box<dyn RootContext>> {
        if matches!(self.state, State::Unresolved) {
            self.state = match read_root_id().and_then(|id| select(self.entries, &id)) {
                Ok(entry) => State::Chosen((entry.new_root)()),
                Err(message) => State::Refused(message),
            };
        }
        match &mut self.state {
            State::Chosen(root) => Some(root),
            State::Unresolved | State::Refused(_) => None,
        }
    }

    fn chosen(&self) -> Option<&dyn RootContext> {
        match &self.state {
            State::Chosen(root) => Some(root.as_ref()),
            State::Unresolved | State::Refused(_) => None,
        }
    }

    fn chosen_mut(&mut self) -> Option<&mut Box<dyn RootContext>> {
        match &mut self.state {
            State::Chosen(root) => Some(root),
            State::Unresolved | State::Refused(_) => None,
        }
    }
}

fn read_root_id() -> Result<String, String> {
    match Abi.property(&["plugin_root_id"]) {
        Ok(Some(bytes)) => String::from_utf8(bytes)
            .map_err(|_| "root_id is not UTF-8: no plugin of this module has it".to_string()),
        // Envoy answers an unset root_id with an empty value; some hosts with none at all.
        Ok(None) => Ok(String::new()),
        Err(status) => Err(format!("cannot read the plugin_root_id property: {status:?}")),
    }
}

impl Context for BundleRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    ) {
        if let Some(root) = self.chosen_mut() {
            root.on_http_call_response(token_id, num_headers, body_size, num_trailers);
        }
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if let Some(root) = self.chosen_mut() {
            root.on_grpc_call_response(token_id, status_code, response_size);
        }
    }

    fn on_grpc_stream_initial_metadata(&mut self, token_id: u32, num_elements: u32) {
        if let Some(root) = self.chosen_mut() {
            root.on_grpc_stream_initial_metadata(token_id, num_elements);
        }
    }

    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        if let Some(root) = self.chosen_mut() {
            root.on_grpc_stream_message(token_id, message_size);
        }
    }

    fn on_grpc_stream_trailing_metadata(&mut self, token_id: u32, num_elements: u32) {
        if let Some(root) = self.chosen_mut() {
            root.on_grpc_stream_trailing_metadata(token_id, num_elements);
        }
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        if let Some(root) = self.chosen_mut() {
            root.on_grpc_stream_close(token_id, status_code);
        }
    }

    fn on_foreign_function(&mut self, function_id: u32, arguments_size: usize) {
        if let Some(root) = self.chosen_mut() {
            root.on_foreign_function(function_id, arguments_size);
        }
    }

    fn on_done(&mut self) -> bool {
        match self.chosen_mut() {
            Some(root) => root.on_done(),
            None => true,
        }
    }
}

impl RootContext for BundleRoot {
    fn on_vm_start(&mut self, vm_configuration_size: usize) -> bool {
        match self.resolve() {
            Some(root) => root.on_vm_start(vm_configuration_size),
            // Refused at configure, where Envoy reports the failure next to its own rejection.
            None => true,
        }
    }

    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        match self.resolve() {
            Some(root) => root.on_configure(plugin_configuration_size),
            None => {
                if let State::Refused(message) = &self.state {
                    log::error!("{BUNDLE}: {message}");
                }
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(root) = self.chosen_mut() {
            root.on_tick();
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Some(root) = self.chosen_mut() {
            root.on_queue_ready(queue_id);
        }
    }

    fn on_log(&mut self) {
        if let Some(root) = self.chosen_mut() {
            root.on_log();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        match self.chosen() {
            Some(root) => root.create_http_context(context_id),
            // Envoy creates no stream for a root whose configure failed; a host that does gets
            // every request refused, never passed on unfiltered.
            None => Some(Box::new(Refuse)),
        }
    }

    fn create_stream_context(&self, context_id: u32) -> Option<Box<dyn StreamContext>> {
        self.chosen().and_then(|root| root.create_stream_context(context_id))
    }

    fn get_type(&self) -> Option<ContextType> {
        match self.chosen() {
            Some(root) => root.get_type(),
            // Every gatewasm plugin is an HTTP filter; an unresolved root refuses its streams.
            None => Some(ContextType::HttpContext),
        }
    }
}

/// The stream of a root that selected no plugin: refused with the SDK's JSON reply.
struct Refuse;

impl Context for Refuse {}

impl HttpContext for Refuse {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let reply = LocalReply::new(500, "filter_not_configured", "the filter has no valid configuration");
        if reply.send(&Abi, BUNDLE).is_err() {
            let _ = Abi.reset();
        }
        Action::Pause
    }
}

/// Registers several [`Plugin`](crate::Plugin)s in one module; each root context runs the plugin
/// its root id names (see the [`bundle`](crate::bundle) module). Each plugin is listed with its
/// root id, or alone to use its [`NAME`](crate::Plugin::NAME). Logging is at `info`, or at the
/// level given after `;`. The plugins' crates must not register an entry of their own
/// (`gatewasm::export!`) in the same module.
///
/// ```ignore
/// gatewasm::export_bundle!("jwt-auth" => jwt_auth::JwtAuth, "ext-auth" => ext_auth::ExtAuth);
/// gatewasm::export_bundle!(jwt_auth::JwtAuth, ext_auth::ExtAuth; gatewasm::proxy_wasm::types::LogLevel::Debug);
/// ```
#[macro_export]
macro_rules! export_bundle {
    (@entries [$(($root_id:expr, $plugin:ty)),+] $level:expr) => {
        #[doc(hidden)]
        #[allow(missing_docs)]
        mod __gatewasm_bundle_entry {
            #[allow(unused_imports)]
            use super::*;
            static ENTRIES: &[$crate::bundle::BundleEntry] = &[$(
                $crate::bundle::BundleEntry { root_id: $root_id, new_root: $crate::bundle::root_of::<$plugin> },
            )+];
            $crate::proxy_wasm::main! {{
                $crate::init_logging($level);
                $crate::proxy_wasm::set_root_context(
                    |_| -> ::std::boxed::Box<dyn $crate::proxy_wasm::traits::RootContext> {
                        ::std::boxed::Box::new($crate::bundle::BundleRoot::new(ENTRIES))
                    },
                );
            }}
        }
    };
    // Literal root ids first: a type never parses as a literal, so these arms cannot swallow the
    // name-only form.
    ($($root_id:literal => $plugin:ty),+ $(,)?) => {
        $crate::export_bundle!(@entries [$(($root_id, $plugin)),+] $crate::proxy_wasm::types::LogLevel::Info);
    };
    ($($root_id:literal => $plugin:ty),+ ; $level:expr) => {
        $crate::export_bundle!(@entries [$(($root_id, $plugin)),+] $level);
    };
    ($($plugin:ty),+ $(,)?) => {
        $crate::export_bundle!(@entries [$((<$plugin as $crate::Plugin>::NAME, $plugin)),+] $crate::proxy_wasm::types::LogLevel::Info);
    };
    ($($plugin:ty),+ ; $level:expr) => {
        $crate::export_bundle!(@entries [$((<$plugin as $crate::Plugin>::NAME, $plugin)),+] $level);
    };
}

/// The root context a single-plugin module registers for `P`: the one place the bundle names
/// the SDK's root context type.
pub fn root_of<P: crate::Plugin>() -> Box<dyn RootContext> {
    Box::new(crate::RootContext::<P>::new())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;

    // Never called: selection only reads root ids. (Building a real root natively would link
    // the proxy-wasm crate's host calls, which have no native stand-ins.)
    fn never() -> Box<dyn RootContext> {
        panic!("select builds no root")
    }

    static ENTRIES: &[BundleEntry] = &[
        BundleEntry { root_id: "jwt_auth", new_root: never },
        BundleEntry { root_id: "ext_auth", new_root: never },
    ];

    #[test]
    fn a_root_id_selects_its_plugin() {
        assert_eq!(select(ENTRIES, "ext_auth").map(|e| e.root_id), Ok("ext_auth"));
        assert_eq!(select(ENTRIES, "jwt_auth").map(|e| e.root_id), Ok("jwt_auth"));
    }

    #[test]
    fn an_unknown_root_id_names_itself_and_the_plugins() {
        let err = select(ENTRIES, "jwt-auth").map(|e| e.root_id).unwrap_err();
        assert!(err.contains("root_id \"jwt-auth\""), "{err}");
        assert!(err.contains("jwt_auth, ext_auth"), "{err}");
        let empty = select(ENTRIES, "").map(|e| e.root_id).unwrap_err();
        assert!(empty.contains("root_id \"\""), "{empty}");
    }
}
