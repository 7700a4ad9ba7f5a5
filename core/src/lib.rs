//! berth's core: configuration, the plugin registry, the LMDB metadata store and the gRPC
//! services that make berthd speak containerd's v1 API.
//!
//! ```
//! // Every built-in plugin, ordered by what each requires.
//! let registry = berth_core::builtin::registry().unwrap();
//! let order = registry.init_order().unwrap();
//! assert_eq!(order[0].to_string(), "store.lmdb");
//! ```
#![warn(missing_docs)]

pub mod builtin;
pub mod client;
pub mod config;
pub mod content;
pub mod daemon;
pub mod diff;
pub mod error;
pub mod events;
pub mod external;
pub mod filters;
pub mod gc;
pub mod ident;
pub mod monitor;
pub mod mount;
pub mod plugin;
pub mod registry;
pub mod runtime;
pub mod server;
pub mod services;
pub mod snapshot;
pub mod store;
#[cfg(feature = "testsuite")]
pub mod testsuite;

pub use error::{Error, Result};
