//! The emulator: [`EmulatorBuilder`] configures it, the driver runs the module, and
//! [`Emulator`] and [`Stream`] are what a test holds.

mod api;
mod builder;
mod driver;
mod modules;

pub(crate) use api::ClientResponse;
pub use api::{Emulator, PropertyPath, Stream};
pub use builder::EmulatorBuilder;
pub use modules::{engine, load_module, load_module_bytes, load_modules};
