//! The SDK for berth plugins in native dynamic libraries: one trait per backend kind, the messages that
//! cross the ABI, and an export macro per kind that turns a type into a plugin library.
//!
//! A plugin is a `cdylib` crate that depends on this one (not on berthd: no tokio, no berth-core):
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! berth-plugin-sdk = "0.1"
//! ```
//!
//! It implements [`snapshot::Snapshotter`], [`runtime::Runtime`] or [`monitor::Monitor`] and exports it
//! once, and berthd loads it from a table of its config:
//!
//! ```toml
//! [plugins."snapshot.memo"]
//! source = "native"
//! path = "/usr/lib/berth/libmemo.so"
//! [plugins."snapshot.memo".config]
//! greeting = "hello"
//! ```
//!
//! A snapshotter that only knows an empty list, exported, then looked at through the ABI as berthd does:
//!
//! ```
//! use berth_plugin_sdk::proto::{Mount, snapshots::{Info, UsageResponse}};
//! use berth_plugin_sdk::snapshot::{Labels, Snapshotter};
//! use berth_plugin_sdk::{Error, Init, Result};
//!
//! #[derive(serde::Deserialize, Default)]
//! #[serde(default, deny_unknown_fields)]
//! struct Config { greeting: String }
//!
//! struct Memo;
//!
//! impl Snapshotter for Memo {
//!     const NAME: &'static str = "memo";
//!     fn new(init: Init) -> Result<Self> {
//!         let config: Config = init.config()?;
//!         init.host.info(&config.greeting);
//!         Ok(Memo)
//!     }
//!     fn stat(&self, key: &str) -> Result<Info> { Err(Error::not_found(key)) }
//!     fn update(&self, info: Info, _: &[String]) -> Result<Info> { Err(Error::not_found(info.name)) }
//!     fn usage(&self, key: &str) -> Result<UsageResponse> { Err(Error::not_found(key)) }
//!     fn mounts(&self, key: &str) -> Result<Vec<Mount>> { Err(Error::not_found(key)) }
//!     fn prepare(&self, _: &str, _: &str, _: Labels) -> Result<Vec<Mount>> { Err(Error::unimplemented("read-only")) }
//!     fn view(&self, _: &str, _: &str, _: Labels) -> Result<Vec<Mount>> { Err(Error::unimplemented("read-only")) }
//!     fn commit(&self, _: &str, key: &str, _: Labels) -> Result<()> { Err(Error::not_found(key)) }
//!     fn remove(&self, key: &str) -> Result<()> { Err(Error::not_found(key)) }
//!     fn list(&self) -> Result<Vec<Info>> { Ok(vec![]) }
//! }
//!
//! berth_plugin_sdk::export_snapshot!(Memo);
//!
//! // What berthd checks before any other call:
//! let header = unsafe { &*berth_plugin_entry() };
//! assert_eq!(header.magic, berth_plugin_sdk::abi::MAGIC);
//! assert_eq!(header.abi_major, berth_plugin_sdk::abi::ABI_MAJOR);
//! assert_eq!(unsafe { header.kind.as_str() }, Some("snapshot"));
//! assert_eq!(unsafe { header.name.as_str() }, Some("memo"));
//! ```
//!
//! What crosses the boundary, and the rules both sides keep, are in [`abi`]; berth's `docs/plugins.md` is the
//! plugin author's guide (build, configure, debug, version). Task monitors are the third kind
//! ([`monitor`], ABI 1.1). Built for `wasm32-wasip2`, the same crate and the same `export_snapshot!` or
//! `export_monitor!` make a wasm component instead of a library (the module `wasm`, compiled only for wasm
//! targets, is that glue).
#![deny(missing_docs)]

pub mod abi;
mod error;
mod export;
mod host;
pub mod monitor;
pub mod proto;
pub mod runtime;
pub mod snapshot;
#[cfg(target_family = "wasm")]
pub mod wasm;

pub use error::{Error, Result, parse_config};
pub use host::{Host, Init, Level};

#[doc(hidden)]
pub mod __private {
    pub use crate::export::destroy;
}
