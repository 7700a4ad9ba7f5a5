//! The snapshot backend kind: what a `snapshot.*` plugin provides, modelled on containerd's
//! `snapshots.Snapshotter`.
//!
//! A snapshotter keeps filesystem trees, each named by a key and each either
//!
//! * **active**: writable, made by [`Snapshotter::prepare`] on top of an optional committed parent;
//! * **view**: read-only, made by [`Snapshotter::view`] on top of an optional committed parent;
//! * **committed**: immutable, made by [`Snapshotter::commit`] from an active snapshot, and the only
//!   kind that can be a parent.
//!
//! The snapshotter never mounts anything itself: prepare, view and mounts return the [`Mount`]s
//! that, mounted in order onto an empty directory, show the snapshot's tree (the parent chain's
//! files with the snapshot's own changes on top). Keys are the backend's own: berth's metadata maps
//! namespaced keys onto them, so a backend knows nothing of namespaces.
//!
//! Backends run the conformance suite `berth_core::testsuite::snapshot` (feature `testsuite`), and
//! can keep their metadata with [`storage::MetaStore`], which enforces the rules above (parents must
//! be committed, a snapshot with children cannot be removed, only active snapshots commit).

pub mod namespaced;
pub mod stat_cache;
pub mod storage;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::filters::{Adaptor, map_field};
use crate::mount::Mount;

/// Labels of a snapshot.
pub type Labels = BTreeMap<String, String>;

/// A snapshot's labels as [`Info`] holds them: shared, so handing out an `Info` (a stat, a walk, a kept
/// answer of [`stat_cache::StatCache`]) bumps a count instead of copying every label; a snapshot can carry
/// 64 KiB of them. Change them copy-on-write with [`Arc::make_mut`], or replace them whole.
pub type SharedLabels = Arc<Labels>;

/// The kind of a snapshot (containerd's `snapshots.Kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only, made by `view`; cannot be committed.
    View,
    /// Writable, made by `prepare`; becomes committed by `commit`.
    Active,
    /// Immutable; the only kind that can be a parent.
    Committed,
}

impl Kind {
    /// The kind as containerd spells it in filters and `ctr snapshots` output (`view`, `active`, `committed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is known of one snapshot (containerd's `snapshots.Info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Its kind.
    pub kind: Kind,
    /// Its key (active and view snapshots) or name (committed ones).
    pub name: String,
    /// The committed snapshot it was made on, if any.
    pub parent: Option<String>,
    /// Labels; only these can be changed after creation. Shared: cloning an `Info` does not copy them.
    pub labels: SharedLabels,
    /// When it was made (for a committed snapshot: when it was committed).
    pub created: SystemTime,
    /// When it last changed.
    pub updated: SystemTime,
}

impl Adaptor for Info {
    /// `kind`, `name`, `parent` and `labels.<key>`, as containerd's snapshot filters take them.
    fn field(&self, path: &[String]) -> Option<String> {
        let (first, rest) = path.split_first()?;
        match (first.as_str(), rest) {
            ("kind", []) => Some(self.kind.as_str().to_owned()),
            ("name", []) => (!self.name.is_empty()).then(|| self.name.clone()),
            ("parent", []) => self.parent.clone().filter(|p| !p.is_empty()),
            ("labels", key) if !key.is_empty() => map_field(key, &self.labels),
            _ => None,
        }
    }
}

/// Disk space a snapshot's own directory uses (containerd's `snapshots.Usage`): for a layered backend its
/// own changes, for a copying one the whole tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes allocated to its files, as `du` counts them; hard links count once.
    pub size: u64,
    /// Distinct inodes, the snapshot's root directory included.
    pub inodes: u64,
}

/// Why a snapshot call failed, in containerd's error kinds.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// No snapshot with that key or name.
    #[error("snapshot {0}: not found")]
    NotFound(String),
    /// A snapshot with that key or name exists already.
    #[error("snapshot {0}: already exists")]
    AlreadyExists(String),
    /// The snapshot is not in a state for the call: it has children, or it is not active.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is wrong: empty key, parent not committed, unknown field path.
    #[error("{0}")]
    InvalidArgument(String),
    /// Anything else, already categorised (I/O failures are `Internal`).
    #[error(transparent)]
    Other(#[from] crate::Error),
}

impl SnapshotError {
    /// An I/O failure while `doing` something: Internal, naming what.
    pub fn io(doing: impl fmt::Display, e: std::io::Error) -> Self {
        SnapshotError::Other(crate::Error::Internal(format!("{doing}: {e}")))
    }
}

impl From<SnapshotError> for crate::Error {
    fn from(e: SnapshotError) -> Self {
        use crate::Error;
        match e {
            SnapshotError::NotFound(what) => Error::NotFound(format!("snapshot {what}")),
            SnapshotError::AlreadyExists(what) => Error::AlreadyExists(format!("snapshot {what}")),
            SnapshotError::FailedPrecondition(m) => Error::FailedPrecondition(m),
            SnapshotError::InvalidArgument(m) => Error::InvalidArgument(m),
            SnapshotError::Other(e) => e,
        }
    }
}

/// Result of snapshot calls.
pub type Result<T> = std::result::Result<T, SnapshotError>;

/// A predicate [`Snapshotter::walk`] selects snapshots with; `|_| true` for all of them, or a request's
/// filters through [`Info`]'s [`Adaptor`]: `&|info| filters.matches(info)`.
pub type WalkFilter<'a> = &'a (dyn Fn(&Info) -> bool + Send + Sync);

/// A snapshot backend.
///
/// Every call is a whole operation: a backend that fails part way leaves no half-made snapshot behind
/// (at worst files that [`Snapshotter::cleanup`] removes).
#[async_trait::async_trait]
pub trait Snapshotter: Send + Sync {
    /// The backend's name, as clients pick it (`overlayfs`, `native`).
    fn name(&self) -> &str;

    /// What is known of the snapshot `key`.
    async fn stat(&self, key: &str) -> Result<Info>;

    /// Changes the labels of snapshot `info.name` and returns the result; the other fields of `info`
    /// are ignored. With no `fieldpaths`, the labels are replaced by `info.labels`; `labels` does the
    /// same, and `labels.KEY` sets that one label from `info.labels` (or removes it when absent there).
    /// Any other path is InvalidArgument: nothing else can change.
    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info>;

    /// The disk space the snapshot's own files use.
    async fn usage(&self, key: &str) -> Result<Usage>;

    /// The mounts of an active or view snapshot, as prepare or view returned them; FailedPrecondition for a
    /// committed snapshot, which is never mounted.
    async fn mounts(&self, key: &str) -> Result<Vec<Mount>>;

    /// Makes active snapshot `key` on top of committed snapshot `parent` (empty without one) and returns
    /// its mounts. AlreadyExists if `key` is taken, NotFound if `parent` is missing, InvalidArgument if
    /// it is not committed.
    async fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>>;

    /// Like [`Snapshotter::prepare`], but the snapshot is read-only and cannot be committed.
    async fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>>;

    /// Turns active snapshot `key` into committed snapshot `name` with `labels`; `key` is gone afterwards.
    /// FailedPrecondition if `key` is not active, AlreadyExists if `name` is taken.
    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()>;

    /// Removes snapshot `key` and its files. FailedPrecondition while other snapshots have it as parent.
    async fn remove(&self, key: &str) -> Result<()>;

    /// Every snapshot `filter` selects, in no particular order.
    async fn walk(&self, filter: WalkFilter<'_>) -> Result<Vec<Info>>;

    /// Removes files no snapshot owns any more (left by a crash part way through a call).
    async fn cleanup(&self) -> Result<()>;
}

/// A loaded snapshot backend, as the `snapshot.*` plugins export it.
pub type SharedSnapshotter = Arc<dyn Snapshotter>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::FilterSet;

    fn info() -> Info {
        Info {
            kind: Kind::Committed,
            name: "layer-1".into(),
            parent: Some("layer-0".into()),
            labels: Arc::new([("containerd.io/gc.root".to_string(), "x".to_string())].into()),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn filters_see_kind_name_parent_and_labels() {
        let matches = |f: &str| FilterSet::parse_all(&[f]).unwrap().matches(&info());
        assert!(matches("kind==committed"));
        assert!(!matches("kind==active"));
        assert!(matches("name==layer-1,parent==layer-0"));
        assert!(matches(r#"labels."containerd.io/gc.root""#));
        assert!(!matches("labels.other"));
        let root = Info { parent: None, ..info() };
        assert!(!FilterSet::parse_all(&["parent"]).unwrap().matches(&root));
    }

    #[test]
    fn errors_keep_their_category() {
        use crate::Error;
        assert_eq!(Error::from(SnapshotError::NotFound("k".into())), Error::NotFound("snapshot k".into()));
        assert!(matches!(Error::from(SnapshotError::AlreadyExists("k".into())), Error::AlreadyExists(_)));
        assert!(matches!(Error::from(SnapshotError::FailedPrecondition("x".into())), Error::FailedPrecondition(_)));
        assert!(matches!(Error::from(SnapshotError::InvalidArgument("x".into())), Error::InvalidArgument(_)));
        let io = SnapshotError::io("reading x", std::io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(Error::from(io), Error::Internal(m) if m.starts_with("reading x: ")));
    }
}
