//! berth's gRPC API.
//!
//! The `containerd` packages are wire-compatible with containerd's v1 API (same packages, services,
//! messages and field numbers), so containerd clients such as `ctr` and the `containerd-client`
//! crate talk to berthd unchanged. The .proto files live in this crate's folder and are compiled
//! with protox at build time: no `protoc` is needed.
//!
//! ```
//! use berth_proto::containerd::services::namespaces::v1::Namespace;
//!
//! let ns = Namespace { name: "default".into(), labels: Default::default() };
//! assert_eq!(ns.name, "default");
//! ```
#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation, missing_docs)]
// The generated docs are the .proto files' comments, containerd's own among them, which write `<key>` and
// `[name]` as plain text.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links, rustdoc::bare_urls)]

include!(concat!(env!("OUT_DIR"), "/berth_api.rs"));

pub use prost_types;

/// The `type_url` prefix containerd uses for types it registers (OCI spec, runtime options).
pub const TYPE_URL_PREFIX: &str = "types.containerd.io";
