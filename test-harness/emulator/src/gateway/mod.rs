//! A whole gateway: an ordered chain of modules (one [`crate::Emulator`] each, all in one
//! [`crate::Group`], as the plugins of one Envoy process), driven as Envoy's HTTP connection
//! manager drives its filters, in front of a route whose upstream the test scripts and clusters
//! whose handlers answer the modules' callouts, on one virtual clock.
//!
//! ```no_run
//! use gatewasm_emulator::gateway::{Gateway, Reply, Request, Source};
//! use gatewasm_emulator::{for_module, Error};
//!
//! # fn main() -> Result<(), Error> {
//! let mut gw = Gateway::builder()
//!     .filter("hello", for_module("hello", r#"{"greeting": "hi"}"#)?)
//!     .filter("header_rewrite", for_module("header-rewrite", r#"{"rules": []}"#)?)
//!     .route(|req| Reply::status(200).body(format!("upstream saw {}", req.path)))
//!     .cluster("auth", |_| Reply::status(200))
//!     .build()?;
//! let r = gw.send(&Request::get("/a").header("host", "example.com"))?;
//! assert_eq!(r.source, Source::Upstream);
//! # Ok(()) }
//! ```
//!
//! The rules (each observed in Envoy 1.40 with the probe filter, see `tests/gateway.rs`) are
//! written next to the code that follows them: `model.rs` for what the connection manager and
//! the router add and remove, `chain.rs` for the order filters run in and what a local reply,
//! a pause or a failed VM does to the others.

mod chain;
mod model;

pub use chain::{Gateway, GatewayBuilder, GrpcHandler, HttpHandler};
pub use model::{Reply, Request, Response, Source, UpstreamRequest};
