//! The snapshot kind: implement [`Snapshotter`] and export it with [`crate::export_snapshot!`].
//!
//! The rules are containerd's (and berth's conformance suite checks them through the native loader): keys are
//! the backend's own (berthd maps namespaces onto them); active snapshots are writable and can be committed,
//! views are read-only, committed snapshots are immutable and the only possible parents; the backend never
//! mounts anything itself, it returns the mounts that show a snapshot's tree.

use crate::error::{Error, Result};
use crate::export;
use crate::host::Init;
use crate::proto::Mount;
use crate::proto::snapshots::*;

pub use crate::proto::snapshots::Labels;

/// A snapshot backend, on the model of berth's (and containerd's) `Snapshotter`. Every call is a whole
/// operation and may block: berthd calls from a blocking thread, several at once.
///
/// Errors: [`Error::not_found`] and [`Error::already_exists`] with the key as message; FailedPrecondition
/// for a snapshot in the wrong state (has children, not active, committed has no mounts); InvalidArgument for
/// a wrong request (empty key, parent not committed, unknown update path).
pub trait Snapshotter: Sized + Send + Sync + 'static {
    /// The plugin's name: its table is `[plugins."snapshot.NAME"]` and clients pick it by this name.
    const NAME: &'static str;

    /// Makes the backend from its config and directories.
    fn new(init: Init) -> Result<Self>;

    /// What is known of snapshot `key`.
    fn stat(&self, key: &str) -> Result<Info>;

    /// The revision of snapshot `key`: a value that names its current state, as an HTTP ETag does, so berthd
    /// can answer a repeated [`stat`](Self::stat) from the copy it kept and fetch the whole answer (every
    /// label) only when the revision moved. `None` (the default) keeps no revisions: every stat is fetched.
    /// Not found is [`Error::not_found`], as for `stat`.
    ///
    /// The promise: one value never names two different states of `key`, across every instance of the
    /// plugin and for as long as berthd runs. A counter kept with the records and moved by every change
    /// (update, commit, a remove and a new snapshot of the same key) keeps it; a counter per process or
    /// per instance does not when several instances share the records. Must be cheap: it is called on
    /// every stat, and after every update.
    ///
    /// Only berthd's calls may move it: berthd keeps an [`update`](Self::update)'s answer under the revision
    /// it reads right after that update (it runs one update of a plugin at a time), so the answer must be
    /// what a stat at that revision would give. A backend whose snapshots can change without a call from
    /// berthd (another program editing its records) keeps no revisions.
    fn revision(&self, key: &str) -> Result<Option<u64>> {
        let _ = key;
        Ok(None)
    }

    /// Changes the labels of `info.name` as containerd does: no `fieldpaths` or `labels` replaces them all,
    /// `labels.KEY` sets or removes one; any other path is InvalidArgument. Returns the new info.
    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info>;

    /// Disk space of the snapshot's own files.
    fn usage(&self, key: &str) -> Result<UsageResponse>;

    /// The mounts of an active snapshot or a view.
    fn mounts(&self, key: &str) -> Result<Vec<Mount>>;

    /// A new active snapshot `key` on committed `parent` (empty: none); returns its mounts.
    fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>>;

    /// A new read-only snapshot `key` on committed `parent` (empty: none); returns its mounts.
    fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>>;

    /// Turns active snapshot `key` into committed snapshot `name`.
    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()>;

    /// Removes snapshot `key`; FailedPrecondition while it has children.
    fn remove(&self, key: &str) -> Result<()>;

    /// Every snapshot (berthd filters them).
    fn list(&self) -> Result<Vec<Info>>;

    /// Removes files no snapshot owns (left by a crash).
    fn cleanup(&self) -> Result<()> {
        Ok(())
    }
}

fn required(info: Option<Info>) -> Result<Info> {
    info.ok_or_else(|| Error::invalid_argument("the request has no snapshot info"))
}

export::methods! { Snapshotter, snapshot_methods;
    STAT => stat(StatSnapshotRequest) |t, r| Ok(StatSnapshotResponse { info: Some(t.stat(&r.key)?) }),
    // The requests with labels are decoded through their `wire` forms (see there why).
    UPDATE => update(wire::UpdateSnapshotRequest) |t, r| {
        let r = UpdateSnapshotRequest::from(r);
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        Ok(UpdateSnapshotResponse { info: Some(t.update(required(r.info)?, &paths)?) })
    },
    USAGE => usage(UsageRequest) |t, r| t.usage(&r.key),
    MOUNTS => mounts(MountsRequest) |t, r| Ok(MountsResponse { mounts: t.mounts(&r.key)? }),
    PREPARE => prepare(wire::PrepareSnapshotRequest) |t, r| {
        Ok(PrepareSnapshotResponse { mounts: t.prepare(&r.key, &r.parent, wire::labels(r.labels))? })
    },
    VIEW => view(wire::ViewSnapshotRequest) |t, r| {
        Ok(ViewSnapshotResponse { mounts: t.view(&r.key, &r.parent, wire::labels(r.labels))? })
    },
    COMMIT => commit(wire::CommitSnapshotRequest) |t, r| t.commit(&r.name, &r.key, wire::labels(r.labels)),
    REMOVE => remove(RemoveSnapshotRequest) |t, r| t.remove(&r.key),
    LIST => list(ListSnapshotsRequest) |t, _r| Ok(ListSnapshotsResponse { info: t.list()? }),
    CLEANUP => cleanup(CleanupRequest) |t, _r| t.cleanup(),
    REVISION => revision(RevisionRequest) |t, r| Ok(RevisionResponse { revision: t.revision(&r.key)? }),
}

/// Exports a [`Snapshotter`] from a `cdylib`: defines the entry symbol `berth_plugin_entry`, the header
/// (kind `snapshot`, the type's [`Snapshotter::NAME`], the crate's version) and the function table. Use it
/// once per library, at the crate root.
#[cfg(not(target_family = "wasm"))]
#[macro_export]
macro_rules! export_snapshot {
    ($ty:ty) => {
        $crate::__export_native!($ty, snapshot, Snapshotter, snapshot_methods);
    };
}
