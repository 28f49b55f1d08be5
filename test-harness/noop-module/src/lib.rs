//! An SDK plugin whose filter does nothing: built natively (`libnoop_module.so`) it is the
//! benchmarks' native floor, the cost of a dynamic module that Envoy calls on every request and
//! that makes no host call, next to the Wasm floor (`noop-filter`). Any configuration is taken.

use std::rc::Rc;

use gatewasm::config::ConfigErrors;
use gatewasm::{HttpFilter, Plugin, Root};

/// The plugin: nothing to configure.
pub struct Noop;

impl Plugin for Noop {
    const NAME: &'static str = "noop";
    type Filter = Pass;

    fn configure(_raw: &[u8], _root: &Root) -> Result<Self, ConfigErrors> {
        Ok(Noop)
    }

    fn new_filter(self: &Rc<Self>) -> Pass {
        Pass
    }
}

/// Per-request state: none; every hook keeps its default (continue).
pub struct Pass;

impl HttpFilter for Pass {}

gatewasm::export!(Noop);
