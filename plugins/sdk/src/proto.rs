//! The messages that cross the ABI, as prost structs written out here so the SDK needs neither protoc nor
//! berth's generated API. Each is wire-identical to its .proto definition in berth's `proto/` folder (field
//! numbers and types), which berth's tests check:
//!
//! * [`InitRequest`] and [`PluginError`] as in `proto/berth/plugin/v1/plugin.proto`;
//! * [`snapshots`] as containerd's `proto/containerd/services/snapshots/v1/snapshots.proto` (but for
//!   [`snapshots::RevisionRequest`] and [`snapshots::RevisionResponse`], berth's own, as
//!   `proto/berth/plugin/snapshot/v1/snapshot.proto`), and [`Mount`] as `proto/containerd/types/mount.proto`;
//! * [`runtime`] as `proto/berth/plugin/runtime/v1/runtime.proto`;
//! * [`monitor`] as `proto/berth/plugin/monitor/v1/monitor.proto`, and [`PublishRequest`] as
//!   `proto/berth/plugin/v1/plugin.proto`.

use std::collections::{BTreeMap, HashMap};

pub use prost::Message;
pub use prost_types::{Any, FieldMask, Timestamp};

/// Messages that begin with the same fields: `{ the common fields }`, then each message with its doc and its
/// own fields, tagged after the common ones. prost cannot share fields between messages (the .proto files
/// repeat them too); this keeps one copy here. Each message derives what a prost message needs.
macro_rules! with_common_fields {
    ($common:tt $($(#[$doc:meta])* pub struct $name:ident { $($own:tt)* })+) => {
        $(with_common_fields!(@message $common $(#[$doc])* $name { $($own)* });)+
    };
    (@message { $($common:tt)* } $(#[$doc:meta])* $name:ident { $($own:tt)* }) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct $name {
            $($common)*
            $($own)*
        }
    };
}

/// What the host hands [`crate::abi::CreateFn`] (`berth.plugin.v1.InitRequest`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct InitRequest {
    /// The plugin id, `kind.name`.
    #[prost(string, tag = "1")]
    pub id: String,
    /// The plugin's `config` table from berthd's config file, as JSON (an object, `{}` without one).
    #[prost(bytes = "vec", tag = "2")]
    pub config_json: Vec<u8>,
    /// A persistent directory for the plugin (`<root>/<kind>.<name>`), not created.
    #[prost(string, tag = "3")]
    pub root_dir: String,
    /// A directory for runtime state, gone after a reboot (`<state>/<kind>.<name>`), not created.
    #[prost(string, tag = "4")]
    pub state_dir: String,
    /// The host's ABI minor version.
    #[prost(uint32, tag = "5")]
    pub host_abi_minor: u32,
}

/// Why a call failed (`berth.plugin.v1.PluginError`), in the buffer of a call that returned an error code.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginError {
    /// The code the call returned.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// What went wrong, lowercase, without a trailing period. For NotFound and AlreadyExists: what is missing
    /// or taken (`snapshot key`: a key for snapshots, `task "id"` for runtimes).
    #[prost(string, tag = "2")]
    pub message: String,
    /// For a config error at init: the path of the offending key inside the plugin's `config` table, which
    /// berthd turns into a file, line and column.
    #[prost(string, repeated, tag = "3")]
    pub config_path: Vec<String>,
}

/// An event for berthd's event stream, handed to [`crate::abi::HostApi::publish`] (`berth.plugin.v1.PublishRequest`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishRequest {
    /// The namespace the event belongs to.
    #[prost(string, tag = "1")]
    pub namespace: String,
    /// Its topic: `/`-separated identifiers starting with `/`.
    #[prost(string, tag = "2")]
    pub topic: String,
    /// The event.
    #[prost(message, optional, tag = "3")]
    pub event: Option<Any>,
}

/// A filesystem mount (`containerd.types.Mount`).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Mount {
    /// Filesystem type: `bind`, `overlay`...
    #[prost(string, tag = "1")]
    pub r#type: String,
    /// What is mounted.
    #[prost(string, tag = "2")]
    pub source: String,
    /// Where, relative to the root it goes into; empty for the root itself.
    #[prost(string, tag = "3")]
    pub target: String,
    /// `mount -o` options.
    #[prost(string, repeated, tag = "4")]
    pub options: Vec<String>,
}

/// containerd's snapshots service messages (`containerd.services.snapshots.v1`); the `snapshotter` field of
/// each request holds the plugin's name.
pub mod snapshots {
    use super::*;

    /// A snapshot's labels. Sorted by key, as berthd's own labels are: berthd and the plugin hand the map
    /// over without rebuilding it and decode it without hashing (on the wire a protobuf map, whatever the
    /// Rust type on either side).
    pub type Labels = BTreeMap<String, String>;

    /// Snapshot kinds.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum Kind {
        /// Not set.
        Unknown = 0,
        /// Read-only, made by view.
        View = 1,
        /// Writable, made by prepare.
        Active = 2,
        /// Immutable, made by commit.
        Committed = 3,
    }

    /// What is known of one snapshot.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Info {
        /// Key (active, view) or name (committed).
        #[prost(string, tag = "1")]
        pub name: String,
        /// The committed parent, empty without one.
        #[prost(string, tag = "2")]
        pub parent: String,
        /// Its [`Kind`].
        #[prost(enumeration = "Kind", tag = "3")]
        pub kind: i32,
        /// When it was made (committed: when committed).
        #[prost(message, optional, tag = "4")]
        pub created_at: Option<Timestamp>,
        /// When it last changed.
        #[prost(message, optional, tag = "5")]
        pub updated_at: Option<Timestamp>,
        /// Labels.
        #[prost(btree_map = "string, string", tag = "6")]
        pub labels: Labels,
    }

    with_common_fields! {
        {
            /// The plugin's name.
            #[prost(string, tag = "1")]
            pub snapshotter: String,
            /// The new key.
            #[prost(string, tag = "2")]
            pub key: String,
            /// Its committed parent, empty for none.
            #[prost(string, tag = "3")]
            pub parent: String,
            /// Its labels.
            #[prost(btree_map = "string, string", tag = "4")]
            pub labels: Labels,
        }
        /// Prepare: a new active snapshot.
        pub struct PrepareSnapshotRequest {}
        /// View: a new read-only snapshot.
        pub struct ViewSnapshotRequest {}
    }

    with_common_fields! {
        {
            /// Mounts, in order.
            #[prost(message, repeated, tag = "1")]
            pub mounts: Vec<Mount>,
        }
        /// Its mounts.
        pub struct PrepareSnapshotResponse {}
        /// Its mounts.
        pub struct ViewSnapshotResponse {}
        /// The mounts.
        pub struct MountsResponse {}
    }

    with_common_fields! {
        {
            /// The plugin's name.
            #[prost(string, tag = "1")]
            pub snapshotter: String,
            /// The key.
            #[prost(string, tag = "2")]
            pub key: String,
        }
        /// The mounts of an active snapshot or view.
        pub struct MountsRequest {}
        /// Remove a snapshot.
        pub struct RemoveSnapshotRequest {}
        /// Stat a snapshot.
        pub struct StatSnapshotRequest {}
        /// Disk usage of a snapshot.
        pub struct UsageRequest {}
    }

    /// Commit an active snapshot under a name.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CommitSnapshotRequest {
        /// The plugin's name.
        #[prost(string, tag = "1")]
        pub snapshotter: String,
        /// The committed name.
        #[prost(string, tag = "2")]
        pub name: String,
        /// The active key.
        #[prost(string, tag = "3")]
        pub key: String,
        /// The committed snapshot's labels.
        #[prost(btree_map = "string, string", tag = "4")]
        pub labels: Labels,
    }

    with_common_fields! {
        {
            /// Info.
            #[prost(message, optional, tag = "1")]
            pub info: Option<Info>,
        }
        /// Its info.
        pub struct StatSnapshotResponse {}
        /// The info after the change.
        pub struct UpdateSnapshotResponse {}
    }

    /// Change labels: `info.name` names the snapshot; `update_mask` paths as containerd's
    /// (`labels`, `labels.KEY`; none: replace the labels).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct UpdateSnapshotRequest {
        /// The plugin's name.
        #[prost(string, tag = "1")]
        pub snapshotter: String,
        /// The snapshot and its new labels.
        #[prost(message, optional, tag = "2")]
        pub info: Option<Info>,
        /// What to change.
        #[prost(message, optional, tag = "3")]
        pub update_mask: Option<FieldMask>,
    }

    /// List snapshots. berthd sends no filters and applies its own to what comes back.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListSnapshotsRequest {
        /// The plugin's name.
        #[prost(string, tag = "1")]
        pub snapshotter: String,
        /// containerd filters; berthd sends none.
        #[prost(string, repeated, tag = "2")]
        pub filters: Vec<String>,
    }

    /// Every snapshot, in one message.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListSnapshotsResponse {
        /// Infos.
        #[prost(message, repeated, tag = "1")]
        pub info: Vec<Info>,
    }

    /// Bytes and inodes.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct UsageResponse {
        /// Bytes allocated.
        #[prost(int64, tag = "1")]
        pub size: i64,
        /// Inodes, the root included.
        #[prost(int64, tag = "2")]
        pub inodes: i64,
    }

    /// Remove what no snapshot owns.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CleanupRequest {
        /// The plugin's name.
        #[prost(string, tag = "1")]
        pub snapshotter: String,
    }

    /// The plugin's revision of a snapshot (ABI 1.2, `berth.plugin.snapshot.v1.RevisionRequest`): no
    /// `snapshotter` field, as in containerd's requests, to keep the call that precedes every stat small.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RevisionRequest {
        /// The key.
        #[prost(string, tag = "1")]
        pub key: String,
    }

    /// The revision, absent when the plugin keeps none (every stat is then fetched whole).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RevisionResponse {
        /// A value that names the snapshot's current state (see `Snapshotter::revision`).
        #[prost(uint64, optional, tag = "1")]
        pub revision: Option<u64>,
    }

    /// The snapshot messages that carry labels, in the form they are decoded in: wire-identical to the
    /// messages above, with the labels as what a protobuf map is on the wire, a list of entries, made into
    /// the sorted map in one pass. Decoding into a map directly costs a search per entry (a `BTreeMap`
    /// insert compares the key with a node's keys one by one) or a hash per entry and the table's regrowth
    /// (a `HashMap`); a 64 KiB answer of 512 labels took 2.5x as long to decode that way. The SDK's glue
    /// decodes requests with these and berthd its answers; plugins never see them.
    #[doc(hidden)]
    pub mod wire {
        use super::super::*;
        use super::Labels;

        /// One map entry (`map<string, string>` is `repeated` of this on the wire).
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Label {
            /// Key.
            #[prost(string, tag = "1")]
            pub key: String,
            /// Value.
            #[prost(string, tag = "2")]
            pub value: String,
        }

        /// The entries as a map, in one pass when they come sorted (as the SDK and berthd encode them,
        /// from a `BTreeMap`); of a repeated key the last entry wins, as protobuf says of maps.
        pub fn labels(entries: Vec<Label>) -> Labels {
            // `collect` sorts stably (linear on a sorted list), keeps the last of equal keys and builds
            // the tree bottom-up.
            entries.into_iter().map(|l| (l.key, l.value)).collect()
        }

        /// [`super::Info`].
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Info {
            /// Name.
            #[prost(string, tag = "1")]
            pub name: String,
            /// Parent.
            #[prost(string, tag = "2")]
            pub parent: String,
            /// Kind.
            #[prost(enumeration = "super::Kind", tag = "3")]
            pub kind: i32,
            /// Created.
            #[prost(message, optional, tag = "4")]
            pub created_at: Option<Timestamp>,
            /// Updated.
            #[prost(message, optional, tag = "5")]
            pub updated_at: Option<Timestamp>,
            /// Labels.
            #[prost(message, repeated, tag = "6")]
            pub labels: Vec<Label>,
        }

        impl From<Info> for super::Info {
            fn from(i: Info) -> Self {
                Self {
                    name: i.name,
                    parent: i.parent,
                    kind: i.kind,
                    created_at: i.created_at,
                    updated_at: i.updated_at,
                    labels: labels(i.labels),
                }
            }
        }

        with_common_fields! {
            {
                /// Plugin name.
                #[prost(string, tag = "1")]
                pub snapshotter: String,
                /// Key.
                #[prost(string, tag = "2")]
                pub key: String,
                /// Parent.
                #[prost(string, tag = "3")]
                pub parent: String,
                /// Labels.
                #[prost(message, repeated, tag = "4")]
                pub labels: Vec<Label>,
            }
            /// [`super::PrepareSnapshotRequest`].
            pub struct PrepareSnapshotRequest {}
            /// [`super::ViewSnapshotRequest`].
            pub struct ViewSnapshotRequest {}
        }

        impl From<PrepareSnapshotRequest> for super::PrepareSnapshotRequest {
            fn from(r: PrepareSnapshotRequest) -> Self {
                Self { snapshotter: r.snapshotter, key: r.key, parent: r.parent, labels: labels(r.labels) }
            }
        }

        impl From<ViewSnapshotRequest> for super::ViewSnapshotRequest {
            fn from(r: ViewSnapshotRequest) -> Self {
                Self { snapshotter: r.snapshotter, key: r.key, parent: r.parent, labels: labels(r.labels) }
            }
        }

        /// [`super::CommitSnapshotRequest`].
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct CommitSnapshotRequest {
            /// Plugin name.
            #[prost(string, tag = "1")]
            pub snapshotter: String,
            /// Name.
            #[prost(string, tag = "2")]
            pub name: String,
            /// Key.
            #[prost(string, tag = "3")]
            pub key: String,
            /// Labels.
            #[prost(message, repeated, tag = "4")]
            pub labels: Vec<Label>,
        }

        impl From<CommitSnapshotRequest> for super::CommitSnapshotRequest {
            fn from(r: CommitSnapshotRequest) -> Self {
                Self { snapshotter: r.snapshotter, name: r.name, key: r.key, labels: labels(r.labels) }
            }
        }

        /// [`super::UpdateSnapshotRequest`].
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct UpdateSnapshotRequest {
            /// Plugin name.
            #[prost(string, tag = "1")]
            pub snapshotter: String,
            /// Info.
            #[prost(message, optional, tag = "2")]
            pub info: Option<Info>,
            /// Mask.
            #[prost(message, optional, tag = "3")]
            pub update_mask: Option<FieldMask>,
        }

        impl From<UpdateSnapshotRequest> for super::UpdateSnapshotRequest {
            fn from(r: UpdateSnapshotRequest) -> Self {
                Self { snapshotter: r.snapshotter, info: r.info.map(Into::into), update_mask: r.update_mask }
            }
        }

        /// [`super::StatSnapshotResponse`] and [`super::UpdateSnapshotResponse`] (the same fields).
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct InfoResponse {
            /// Info.
            #[prost(message, optional, tag = "1")]
            pub info: Option<Info>,
        }

        /// [`super::ListSnapshotsResponse`].
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct ListSnapshotsResponse {
            /// Infos.
            #[prost(message, repeated, tag = "1")]
            pub info: Vec<Info>,
        }
    }
}

/// The runtime kind's messages (`berth.plugin.runtime.v1`). Every request names the namespace and the task
/// (container) id; `exec_id` is empty for the task's init process.
pub mod runtime {
    use super::*;

    /// A process's standard streams: FIFO paths the client made, empty when not connected.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Io {
        /// Read by the process.
        #[prost(string, tag = "1")]
        pub stdin: String,
        /// Written by the process.
        #[prost(string, tag = "2")]
        pub stdout: String,
        /// Written by the process (unused with a terminal).
        #[prost(string, tag = "3")]
        pub stderr: String,
        /// Run on a pseudo-terminal.
        #[prost(bool, tag = "4")]
        pub terminal: bool,
    }

    /// Process states (the numbers of containerd's `containerd.v1.types.Status`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum Status {
        /// Not known.
        Unknown = 0,
        /// Created, not started.
        Created = 1,
        /// Running.
        Running = 2,
        /// Exited.
        Stopped = 3,
        /// Frozen.
        Paused = 4,
        /// Being frozen.
        Pausing = 5,
    }

    /// Create a task; its init process is created, not started.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CreateRequest {
        /// Namespace.
        #[prost(string, tag = "1")]
        pub namespace: String,
        /// Task id.
        #[prost(string, tag = "2")]
        pub id: String,
        /// The OCI runtime spec (JSON in `value`).
        #[prost(message, optional, tag = "3")]
        pub spec: Option<Any>,
        /// Mounts making up the root filesystem, in order; empty when the spec's root path is used as it is.
        #[prost(message, repeated, tag = "4")]
        pub rootfs: Vec<Mount>,
        /// The init's streams.
        #[prost(message, optional, tag = "5")]
        pub io: Option<Io>,
        /// Restore from this checkpoint directory; empty: start fresh.
        #[prost(string, tag = "6")]
        pub checkpoint: String,
        /// Runtime options of the container record.
        #[prost(message, optional, tag = "7")]
        pub runtime_options: Option<Any>,
        /// Options of the create request.
        #[prost(message, optional, tag = "8")]
        pub task_options: Option<Any>,
    }

    /// The created init.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CreateResponse {
        /// Its host pid, 0 while it has none.
        #[prost(uint32, tag = "1")]
        pub pid: u32,
    }

    with_common_fields! {
        {
            /// Namespace.
            #[prost(string, tag = "1")]
            pub namespace: String,
            /// Task id.
            #[prost(string, tag = "2")]
            pub id: String,
            /// Exec id, empty for init.
            #[prost(string, tag = "3")]
            pub exec_id: String,
        }
        /// Names a process: init with an empty `exec_id`.
        pub struct ProcessRequest {}
        /// Signal a process.
        pub struct KillRequest {
            /// The signal number.
            #[prost(uint32, tag = "4")]
            pub signal: u32,
            /// Every process of the task (init only).
            #[prost(bool, tag = "5")]
            pub all: bool,
        }
        /// Resize a process's terminal.
        pub struct ResizePtyRequest {
            /// Columns.
            #[prost(uint32, tag = "4")]
            pub width: u32,
            /// Rows.
            #[prost(uint32, tag = "5")]
            pub height: u32,
        }
        /// A process exited.
        pub struct ExitEvent {
            /// How.
            #[prost(message, optional, tag = "4")]
            pub exit: Option<Exit>,
        }
    }

    with_common_fields! {
        {
            /// Namespace.
            #[prost(string, tag = "1")]
            pub namespace: String,
            /// Task id.
            #[prost(string, tag = "2")]
            pub id: String,
        }
        /// Names a task.
        pub struct TaskRequest {}
        /// A task's namespace and id.
        pub struct TaskRef {}
        /// A process of a task was killed for going over its memory limit.
        pub struct OomEvent {}
        /// Checkpoint a task.
        pub struct CheckpointRequest {
            /// Directory to write to.
            #[prost(string, tag = "3")]
            pub path: String,
            /// Options.
            #[prost(message, optional, tag = "4")]
            pub options: Option<Any>,
        }
        /// Change a running task's resources.
        pub struct UpdateRequest {
            /// The resources.
            #[prost(message, optional, tag = "3")]
            pub resources: Option<Any>,
            /// Annotations.
            #[prost(map = "string, string", tag = "4")]
            pub annotations: HashMap<String, String>,
        }
    }

    /// The started process.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StartResponse {
        /// Its host pid.
        #[prost(uint32, tag = "1")]
        pub pid: u32,
    }

    /// How a process ended.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Exit {
        /// Its pid.
        #[prost(uint32, tag = "1")]
        pub pid: u32,
        /// Exit code, or 128 + signal.
        #[prost(uint32, tag = "2")]
        pub status: u32,
        /// When.
        #[prost(message, optional, tag = "3")]
        pub exited_at: Option<Timestamp>,
    }

    /// A process's state.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StateResponse {
        /// Its [`Status`].
        #[prost(enumeration = "Status", tag = "1")]
        pub status: i32,
        /// Host pid, 0 while it has none.
        #[prost(uint32, tag = "2")]
        pub pid: u32,
        /// Exit status once stopped.
        #[prost(uint32, tag = "3")]
        pub exit_status: u32,
        /// Exit time once stopped.
        #[prost(message, optional, tag = "4")]
        pub exited_at: Option<Timestamp>,
        /// Its streams.
        #[prost(message, optional, tag = "5")]
        pub io: Option<Io>,
    }

    /// Start a new process in a task (created, not started).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExecRequest {
        /// Namespace.
        #[prost(string, tag = "1")]
        pub namespace: String,
        /// Task id.
        #[prost(string, tag = "2")]
        pub id: String,
        /// The new exec id.
        #[prost(string, tag = "3")]
        pub exec_id: String,
        /// The OCI process spec (JSON in `value`).
        #[prost(message, optional, tag = "4")]
        pub spec: Option<Any>,
        /// Its streams.
        #[prost(message, optional, tag = "5")]
        pub io: Option<Io>,
    }

    /// One process of a task.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ProcessInfo {
        /// Host pid.
        #[prost(uint32, tag = "1")]
        pub pid: u32,
        /// Its exec id when the runtime exec'd it.
        #[prost(string, tag = "2")]
        pub exec_id: String,
    }

    /// Every process of a task.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PidsResponse {
        /// Processes.
        #[prost(message, repeated, tag = "1")]
        pub processes: Vec<ProcessInfo>,
    }

    /// Resource usage.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatsResponse {
        /// A `containerd.cgroups` metrics message.
        #[prost(message, optional, tag = "1")]
        pub stats: Option<Any>,
    }

    /// List tasks.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListRequest {
        /// The namespace; ignored when `all_namespaces` is set.
        #[prost(string, tag = "1")]
        pub namespace: String,
        /// Tasks of every namespace.
        #[prost(bool, tag = "2")]
        pub all_namespaces: bool,
    }

    /// The tasks.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListResponse {
        /// Tasks.
        #[prost(message, repeated, tag = "1")]
        pub tasks: Vec<TaskRef>,
    }

    /// Something the runtime noticed by itself, sent through [`crate::abi::HostApi::event`].
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        /// What.
        #[prost(oneof = "event::Kind", tags = "1, 2")]
        pub kind: Option<event::Kind>,
    }

    /// The kinds of [`Event`].
    pub mod event {
        /// What happened.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Kind {
            /// An exit.
            #[prost(message, tag = "1")]
            Exit(super::ExitEvent),
            /// An OOM kill.
            #[prost(message, tag = "2")]
            Oom(super::OomEvent),
        }
    }
}

/// The monitor kind's messages (`berth.plugin.monitor.v1`, ABI 1.1).
pub mod monitor {
    use super::*;

    /// A task as monitors see it.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Task {
        /// Namespace.
        #[prost(string, tag = "1")]
        pub namespace: String,
        /// Task id.
        #[prost(string, tag = "2")]
        pub id: String,
        /// The runtime plugin that runs it, by name.
        #[prost(string, tag = "3")]
        pub runtime: String,
        /// Init pid, 0 when not known.
        #[prost(uint32, tag = "4")]
        pub pid: u32,
        /// Its container's labels at the call.
        #[prost(map = "string, string", tag = "5")]
        pub labels: HashMap<String, String>,
    }

    /// How a process ended.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Exit {
        /// Its pid.
        #[prost(uint32, tag = "1")]
        pub pid: u32,
        /// Exit code, or 128 + signal.
        #[prost(uint32, tag = "2")]
        pub status: u32,
        /// When.
        #[prost(message, optional, tag = "3")]
        pub exited_at: Option<Timestamp>,
    }

    with_common_fields! {
        {
            /// Init pid.
            #[prost(uint32, tag = "1")]
            pub pid: u32,
        }
        /// Created, with the init pid.
        pub struct Created {}
        /// Started, with the init pid.
        pub struct Started {}
    }

    /// A process exited.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Exited {
        /// Exec id, empty for init.
        #[prost(string, tag = "1")]
        pub exec_id: String,
        /// How.
        #[prost(message, optional, tag = "2")]
        pub exit: Option<Exit>,
    }

    /// An OOM kill, paused or resumed: nothing more to say.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Nothing {}

    /// Deleted, with how its init ended.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Deleted {
        /// How.
        #[prost(message, optional, tag = "1")]
        pub exit: Option<Exit>,
    }

    /// What happened to a task.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TaskEvent {
        /// What.
        #[prost(oneof = "task_event::Kind", tags = "1, 2, 3, 4, 5, 6, 7")]
        pub kind: Option<task_event::Kind>,
    }

    /// The kinds of [`TaskEvent`].
    pub mod task_event {
        /// What happened.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Kind {
            /// Created.
            #[prost(message, tag = "1")]
            Created(super::Created),
            /// Started.
            #[prost(message, tag = "2")]
            Started(super::Started),
            /// A process exited.
            #[prost(message, tag = "3")]
            Exited(super::Exited),
            /// An OOM kill.
            #[prost(message, tag = "4")]
            Oom(super::Nothing),
            /// Frozen.
            #[prost(message, tag = "5")]
            Paused(super::Nothing),
            /// Thawed.
            #[prost(message, tag = "6")]
            Resumed(super::Nothing),
            /// Removed.
            #[prost(message, tag = "7")]
            Deleted(super::Deleted),
        }
    }

    /// Names the task of `monitor`, `stop` and `stats`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TaskRequest {
        /// The task.
        #[prost(message, optional, tag = "1")]
        pub task: Option<Task>,
    }

    /// An event about a task.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EventRequest {
        /// The task.
        #[prost(message, optional, tag = "1")]
        pub task: Option<Task>,
        /// What happened.
        #[prost(message, optional, tag = "2")]
        pub event: Option<TaskEvent>,
    }

    /// A task's figures; no `stats` when the monitor has none for it.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatsResponse {
        /// A `containerd.cgroups` metrics message, or another `Any` Tasks.Metrics hands on.
        #[prost(message, optional, tag = "1")]
        pub stats: Option<Any>,
    }
}

#[cfg(test)]
mod tests {
    use super::snapshots::{self, wire};
    use super::*;

    fn info(labels: &[(&str, &str)]) -> snapshots::Info {
        snapshots::Info {
            name: "n".into(),
            parent: "p".into(),
            kind: snapshots::Kind::Committed as i32,
            created_at: Some(Timestamp { seconds: 1, nanos: 2 }),
            updated_at: None,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    /// A wire form decodes what its message encodes into the same message.
    #[test]
    fn wire_forms_decode_their_messages() {
        let labels = [("b", "2"), ("a", "1"), ("c", "")];
        let response = snapshots::StatSnapshotResponse { info: Some(info(&labels)) };
        let decoded = wire::InfoResponse::decode(response.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.info.map(snapshots::Info::from), response.info);

        let list = snapshots::ListSnapshotsResponse { info: vec![info(&labels), info(&[])] };
        let decoded = wire::ListSnapshotsResponse::decode(list.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.info.into_iter().map(snapshots::Info::from).collect::<Vec<_>>(), list.info);

        let map: snapshots::Labels = [("k".to_string(), "v".to_string())].into();
        let prepare = snapshots::PrepareSnapshotRequest {
            snapshotter: "s".into(),
            key: "k".into(),
            parent: "p".into(),
            labels: map.clone(),
        };
        let decoded = wire::PrepareSnapshotRequest::decode(prepare.encode_to_vec().as_slice()).unwrap();
        assert_eq!(snapshots::PrepareSnapshotRequest::from(decoded), prepare);
        let view = snapshots::ViewSnapshotRequest {
            snapshotter: "s".into(),
            key: "k".into(),
            parent: String::new(),
            labels: map.clone(),
        };
        let decoded = wire::ViewSnapshotRequest::decode(view.encode_to_vec().as_slice()).unwrap();
        assert_eq!(snapshots::ViewSnapshotRequest::from(decoded), view);
        let commit = snapshots::CommitSnapshotRequest {
            snapshotter: "s".into(),
            name: "n".into(),
            key: "k".into(),
            labels: map,
        };
        let decoded = wire::CommitSnapshotRequest::decode(commit.encode_to_vec().as_slice()).unwrap();
        assert_eq!(snapshots::CommitSnapshotRequest::from(decoded), commit);
        let update = snapshots::UpdateSnapshotRequest {
            snapshotter: "s".into(),
            info: Some(info(&labels)),
            update_mask: Some(FieldMask { paths: vec!["labels.a".into()] }),
        };
        let decoded = wire::UpdateSnapshotRequest::decode(update.encode_to_vec().as_slice()).unwrap();
        assert_eq!(snapshots::UpdateSnapshotRequest::from(decoded), update);
    }

    /// Entries in any order make the same map, and of a repeated key the last one wins, as protobuf
    /// decodes a map field.
    #[test]
    fn wire_labels_are_a_protobuf_map() {
        let entries = wire::Info {
            labels: [("z", "1"), ("a", "2"), ("m", "3"), ("a", "4"), ("", "empty key")]
                .iter()
                .map(|(k, v)| wire::Label { key: k.to_string(), value: v.to_string() })
                .collect(),
            ..Default::default()
        };
        let bytes = entries.encode_to_vec();
        let as_map = snapshots::Info::decode(bytes.as_slice()).unwrap();
        let as_list = snapshots::Info::from(wire::Info::decode(bytes.as_slice()).unwrap());
        assert_eq!(as_list, as_map);
        assert_eq!(as_list.labels.get("a").map(String::as_str), Some("4"));
        assert_eq!(as_list.labels.len(), 4);
    }
}
