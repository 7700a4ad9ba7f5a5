//! The records kept in the metadata store.
//!
//! They are prost messages: the on-disk encoding is protobuf, so a field added later reads as its
//! default from older records, and an upgrade step is needed only when meaning changes.

#![allow(missing_docs)] // fields mirror containerd's messages, documented in proto/

use std::collections::BTreeMap;

use prost_types::{Any, Timestamp};

/// A namespace and its labels.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Namespace {
    /// Not stored in the value (it is the key); filled in on read.
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(btree_map = "string, string", tag = "2")]
    pub labels: BTreeMap<String, String>,
}

/// The runtime that runs a container or sandbox, with its options.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Runtime {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub options: Option<Any>,
}

/// A container record: containerd's `Container`, field for field.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Container {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(btree_map = "string, string", tag = "2")]
    pub labels: BTreeMap<String, String>,
    #[prost(string, tag = "3")]
    pub image: String,
    #[prost(message, optional, tag = "4")]
    pub runtime: Option<Runtime>,
    #[prost(message, optional, tag = "5")]
    pub spec: Option<Any>,
    #[prost(string, tag = "6")]
    pub snapshotter: String,
    #[prost(string, tag = "7")]
    pub snapshot_key: String,
    #[prost(message, optional, tag = "8")]
    pub created_at: Option<Timestamp>,
    #[prost(message, optional, tag = "9")]
    pub updated_at: Option<Timestamp>,
    #[prost(btree_map = "string, message", tag = "10")]
    pub extensions: BTreeMap<String, Any>,
    #[prost(string, tag = "11")]
    pub sandbox: String,
}

/// A sandbox record: containerd's `types.Sandbox`, field for field.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sandbox {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "2")]
    pub runtime: Option<Runtime>,
    #[prost(message, optional, tag = "3")]
    pub spec: Option<Any>,
    #[prost(btree_map = "string, string", tag = "4")]
    pub labels: BTreeMap<String, String>,
    #[prost(message, optional, tag = "5")]
    pub created_at: Option<Timestamp>,
    #[prost(message, optional, tag = "6")]
    pub updated_at: Option<Timestamp>,
    #[prost(btree_map = "string, message", tag = "7")]
    pub extensions: BTreeMap<String, Any>,
    #[prost(string, tag = "10")]
    pub sandboxer: String,
}

/// A lease: containerd's `leases.Lease`. The resources it holds are not part of the record; each
/// is a key of the `lease_resources` table.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Lease {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "2")]
    pub created_at: Option<Timestamp>,
    #[prost(btree_map = "string, string", tag = "3")]
    pub labels: BTreeMap<String, String>,
}

/// A resource held by a lease: containerd's `leases.Resource`. `kind` is containerd's `type`:
/// `content`, `ingests` or `snapshots/<snapshotter>`. Not a stored message: it is stored as (part
/// of) a key of the `lease_resources` table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LeaseResource {
    pub id: String,
    pub kind: String,
}

/// A blob as one namespace sees it: containerd's `content.Info`. The blob itself is a file of the
/// content store, shared by every namespace; this record is what makes it visible in one.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContentInfo {
    /// Not stored in the value (it is the key); filled in on read.
    #[prost(string, tag = "1")]
    pub digest: String,
    #[prost(int64, tag = "2")]
    pub size: i64,
    /// When the blob was committed (or imported) in this namespace.
    #[prost(message, optional, tag = "3")]
    pub created_at: Option<Timestamp>,
    #[prost(message, optional, tag = "4")]
    pub updated_at: Option<Timestamp>,
    #[prost(btree_map = "string, string", tag = "5")]
    pub labels: BTreeMap<String, String>,
}

/// A snapshot as one namespace sees it under one snapshotter (containerd's metadata snapshotter
/// bucket `v1/<namespace>/snapshots/<snapshotter>/<key>`). The backend knows it by `backend_key`;
/// the client only ever sees `name`, `parent` (a client name too) and the labels kept here.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Snapshot {
    /// The client's key or name. Not stored in the value (it is the key); filled in on read.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The snapshot's key in the backend: `<namespace>/<id>/<name>`.
    #[prost(string, tag = "2")]
    pub backend_key: String,
    /// The client name of the committed parent; empty for none.
    #[prost(string, tag = "3")]
    pub parent: String,
    /// containerd's `snapshots.v1.Kind` numbers: 1 view, 2 active, 3 committed.
    #[prost(int32, tag = "4")]
    pub kind: i32,
    #[prost(message, optional, tag = "5")]
    pub created_at: Option<Timestamp>,
    #[prost(message, optional, tag = "6")]
    pub updated_at: Option<Timestamp>,
    #[prost(btree_map = "string, string", tag = "7")]
    pub labels: BTreeMap<String, String>,
}

/// containerd's `types.Descriptor`: what an image points at.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Descriptor {
    #[prost(string, tag = "1")]
    pub media_type: String,
    #[prost(string, tag = "2")]
    pub digest: String,
    #[prost(int64, tag = "3")]
    pub size: i64,
    #[prost(btree_map = "string, string", tag = "5")]
    pub annotations: BTreeMap<String, String>,
}

/// An image record: containerd's `images.v1.Image`, field for field.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    /// Not stored in the value (it is the key); filled in on read.
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(btree_map = "string, string", tag = "2")]
    pub labels: BTreeMap<String, String>,
    #[prost(message, optional, tag = "3")]
    pub target: Option<Descriptor>,
    #[prost(message, optional, tag = "7")]
    pub created_at: Option<Timestamp>,
    #[prost(message, optional, tag = "8")]
    pub updated_at: Option<Timestamp>,
}
