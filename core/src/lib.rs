//! berth's core: configuration, the plugin registry, the LMDB metadata store and the gRPC
//! services that make berthd speak containerd's v1 API.
pub mod client;
pub mod error;
pub mod filters;
pub mod ident;
pub mod store;

pub use error::{Error, Result};
