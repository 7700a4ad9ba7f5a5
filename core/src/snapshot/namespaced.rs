//! A namespace-scoped view of a snapshot backend, as containerd's metadata snapshotter gives one.
//!
//! Clients name snapshots with keys of their own, per namespace; the backend stores each under a
//! key of its own, `<namespace>/<id>/<key>` with a random `id`, so a key used again after a remove
//! (or by another namespace) never meets the old snapshot. The metadata store's `snapshots` table
//! maps one to the other and keeps the names, parents and labels as the client sees them: a
//! namespace sees only the snapshots it made.
//!
//! Every call that makes or changes a snapshot goes to the backend first and records the result
//! after, so a failure in the middle leaves at worst a backend snapshot no record names (which the
//! garbage collector, `crate::gc`, removes), never a record without its snapshot. Calls that make a
//! backend snapshot hold [`MetadataStore::guard_against_sweep`] until its record is committed, so
//! the collector never takes a snapshot half-way through for such a leftover.
//!
//! A remove is the other way round: the record goes (which is what the client sees), then the
//! backend's snapshot, after the answer, on a queue of removals per backend, as containerd's
//! metadata snapshotter leaves a removed snapshot's files to its collector. The queue keeps the
//! order of the removes, so a child's files go before its parent's; a removal that fails, or that a
//! berthd stopping leaves queued, is a backend snapshot no record names, which the collector
//! removes (the start-up collection at the latest).

use std::io::Read;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use prost_types::Timestamp;

use super::{Info, Kind, Labels, SharedSnapshotter, Usage};
use crate::error::{Error, Result};
use crate::mount::Mount;
use crate::store::{KIND_ACTIVE, KIND_COMMITTED, KIND_VIEW, MetadataStore, Snapshot};

/// One backend, seen through the namespaces of the metadata store.
#[derive(Clone)]
pub struct Namespaced {
    store: MetadataStore,
    backend: SharedSnapshotter,
    /// The backend's removal queue, started by the first remove.
    removals: Arc<OnceLock<tokio::sync::mpsc::UnboundedSender<Removal>>>,
}

/// What the removal queue is asked.
enum Removal {
    /// Remove this backend key.
    Key(String),
    /// Answer once every removal queued before is done.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Works through one backend's removal queue, in order, until the last [`Namespaced`] of it is gone.
async fn remove_queued(backend: SharedSnapshotter, mut queue: tokio::sync::mpsc::UnboundedReceiver<Removal>) {
    while let Some(removal) = queue.recv().await {
        match removal {
            Removal::Key(key) => match backend.remove(&key).await {
                // The collector may have been first.
                Ok(()) | Err(super::SnapshotError::NotFound(_)) => {}
                Err(e) => tracing::warn!(
                    snapshotter = backend.name(),
                    %key,
                    error = %e,
                    "removing a removed snapshot's files failed: the garbage collector will retry"
                ),
            },
            Removal::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

fn kind_of(record: &Snapshot) -> Kind {
    match record.kind {
        KIND_VIEW => Kind::View,
        KIND_COMMITTED => Kind::Committed,
        _ => Kind::Active,
    }
}

fn time(t: Option<Timestamp>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(t).ok()).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The client's view of a record.
fn info(record: Snapshot) -> Info {
    Info {
        kind: kind_of(&record),
        parent: (!record.parent.is_empty()).then_some(record.parent),
        name: record.name,
        labels: Arc::new(record.labels),
        created: time(record.created_at),
        updated: time(record.updated_at),
    }
}

/// A fresh backend key for client key `key` in `ns`.
fn backend_key(ns: &str, key: &str) -> Result<String> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::Internal(format!("generating a snapshot id from /dev/urandom: {e}")))?;
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{ns}/{id}/{key}"))
}

impl Namespaced {
    /// `backend` seen through the records of `store`.
    pub fn new(store: MetadataStore, backend: SharedSnapshotter) -> Self {
        Namespaced { store, backend, removals: Arc::new(OnceLock::new()) }
    }

    /// The backend's name (`overlayfs`, `native`).
    pub fn name(&self) -> &str {
        self.backend.name()
    }

    fn record(&self, ns: &str, key: &str) -> Result<Snapshot> {
        self.store.get_snapshot(ns, self.name(), key)
    }

    async fn create(
        &self,
        ns: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
        lease: Option<String>,
        kind: i32,
    ) -> Result<Vec<Mount>> {
        let name = self.name().to_owned();
        // Checked before the backend is asked, so a bad request makes nothing there.
        match self.store.get_snapshot(ns, &name, key) {
            Ok(_) => return Err(Error::AlreadyExists(format!("snapshot \"{key}\" in namespace \"{ns}\""))),
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let parent_record = match parent.filter(|p| !p.is_empty()) {
            Some(parent) => {
                let record = self.record(ns, parent).map_err(|e| e.context("parent"))?;
                if record.kind != KIND_COMMITTED {
                    return Err(Error::InvalidArgument(format!(
                        "parent snapshot \"{parent}\" in namespace \"{ns}\" is not committed"
                    )));
                }
                Some(record)
            }
            None => None,
        };
        if let Some(lease) = &lease {
            self.store.get_lease(ns, lease)?;
        }
        let bkey = backend_key(ns, key)?;
        let _guard = self.store.guard_against_sweep().await;
        let bparent = parent_record.as_ref().map(|r| r.backend_key.as_str());
        let mounts = if kind == KIND_VIEW {
            self.backend.view(&bkey, bparent, Labels::new()).await?
        } else {
            self.backend.prepare(&bkey, bparent, Labels::new()).await?
        };
        let record = Snapshot {
            name: key.to_owned(),
            backend_key: bkey.clone(),
            parent: parent_record.map(|r| r.name).unwrap_or_default(),
            kind,
            labels,
            ..Default::default()
        };
        if let Err(e) = self.store.create_snapshot(ns, &name, record, lease).await {
            // Lost a race for the key, or the lease went: undo the backend's part.
            if let Err(undo) = self.backend.remove(&bkey).await {
                tracing::warn!(key = %bkey, error = %undo, "snapshot left in the backend after a failed create");
            }
            return Err(e);
        }
        Ok(mounts)
    }

    /// Makes active snapshot `key` in `ns` on committed snapshot `parent`; `lease` takes it.
    pub async fn prepare(
        &self,
        ns: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
        lease: Option<String>,
    ) -> Result<Vec<Mount>> {
        self.create(ns, key, parent, labels, lease, KIND_ACTIVE).await
    }

    /// Makes read-only snapshot `key` in `ns` on committed snapshot `parent`; `lease` takes it.
    pub async fn view(
        &self,
        ns: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
        lease: Option<String>,
    ) -> Result<Vec<Mount>> {
        self.create(ns, key, parent, labels, lease, KIND_VIEW).await
    }

    /// The mounts of active or view snapshot `key`.
    pub async fn mounts(&self, ns: &str, key: &str) -> Result<Vec<Mount>> {
        let record = self.record(ns, key)?;
        Ok(self.backend.mounts(&record.backend_key).await?)
    }

    /// Commits active snapshot `key` as `name`; `lease` takes the committed snapshot.
    pub async fn commit(&self, ns: &str, name: &str, key: &str, labels: Labels, lease: Option<String>) -> Result<()> {
        let record = self.record(ns, key)?;
        if record.kind != KIND_ACTIVE {
            return Err(Error::FailedPrecondition(format!(
                "snapshot \"{key}\" in namespace \"{ns}\" is not active: only active snapshots commit"
            )));
        }
        match self.record(ns, name) {
            Ok(_) => return Err(Error::AlreadyExists(format!("snapshot \"{name}\" in namespace \"{ns}\""))),
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        if name.is_empty() {
            return Err(Error::InvalidArgument("snapshot name must not be empty".into()));
        }
        if let Some(lease) = &lease {
            self.store.get_lease(ns, lease)?;
        }
        let bname = backend_key(ns, name)?;
        let _guard = self.store.guard_against_sweep().await;
        self.backend.commit(&bname, &record.backend_key, Labels::new()).await?;
        self.store.commit_snapshot(ns, self.name(), key, name, bname, labels, lease).await?;
        Ok(())
    }

    /// Removes snapshot `key`; FailedPrecondition while others have it as parent.
    pub async fn remove(&self, ns: &str, key: &str) -> Result<()> {
        // The record's delete checks for children in the same transaction.
        let record = self.store.delete_snapshot(ns, self.name(), key).await?;
        self.queue(Removal::Key(record.backend_key));
        Ok(())
    }

    fn queue(&self, removal: Removal) {
        let queue = self.removals.get_or_init(|| {
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(remove_queued(self.backend.clone(), receiver));
            sender
        });
        // The worker ends only when every sender is gone, and this is one.
        let _ = queue.send(removal);
    }

    /// Waits until the backend removals of every remove that returned before this call are done.
    pub async fn removals_done(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.queue(Removal::Flush(done));
        let _ = wait.await;
    }

    /// Snapshot `key` as the client sees it.
    pub async fn stat(&self, ns: &str, key: &str) -> Result<Info> {
        Ok(info(self.record(ns, key)?))
    }

    /// Changes the labels of snapshot `update.name` (see [`super::Snapshotter::update`]).
    pub async fn update(&self, ns: &str, update: Info, paths: Vec<String>) -> Result<Info> {
        let labels = Arc::unwrap_or_clone(update.labels);
        let record = self.store.update_snapshot(ns, self.name(), &update.name, labels, paths).await?;
        Ok(info(record))
    }

    /// The disk space snapshot `key`'s own files use.
    pub async fn usage(&self, ns: &str, key: &str) -> Result<Usage> {
        let record = self.record(ns, key)?;
        Ok(self.backend.usage(&record.backend_key).await?)
    }

    /// Every snapshot of `ns` that `filter` selects, sorted by key.
    pub async fn walk(&self, ns: &str, filter: super::WalkFilter<'_>) -> Result<Vec<Info>> {
        let records = self.store.list_snapshots(ns, self.name())?;
        Ok(records.into_iter().map(info).filter(|i| filter(i)).collect())
    }

    /// The backend's cleanup. Backend snapshots no record names stay until garbage collection.
    pub async fn cleanup(&self) -> Result<()> {
        Ok(self.backend.cleanup().await?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::filters::FilterSet;
    use crate::snapshot::{Result as SnapResult, SnapshotError, Snapshotter, WalkFilter};
    use crate::store::testutil::*;
    use crate::store::{Lease, LeaseResource};

    /// Keeps kinds and parents in memory; mounts name the backend key.
    #[derive(Default)]
    struct Fake {
        snapshots: Mutex<BTreeMap<String, (Kind, Option<String>)>>,
    }

    impl Fake {
        fn keys(&self) -> Vec<String> {
            self.snapshots.lock().unwrap().keys().cloned().collect()
        }
        fn add(&self, key: &str, parent: Option<&str>, kind: Kind) -> SnapResult<Vec<Mount>> {
            let mut map = self.snapshots.lock().unwrap();
            if map.contains_key(key) {
                return Err(SnapshotError::AlreadyExists(key.into()));
            }
            if let Some(p) = parent
                && !map.contains_key(p)
            {
                return Err(SnapshotError::NotFound(p.into()));
            }
            map.insert(key.into(), (kind, parent.map(String::from)));
            Ok(vec![Mount { kind: "bind".into(), source: key.into(), target: String::new(), options: vec![] }])
        }
    }

    #[async_trait::async_trait]
    impl Snapshotter for Fake {
        fn name(&self) -> &str {
            "fake"
        }
        async fn stat(&self, key: &str) -> SnapResult<Info> {
            Err(SnapshotError::NotFound(key.into()))
        }
        async fn update(&self, info: Info, _: &[String]) -> SnapResult<Info> {
            Ok(info)
        }
        async fn usage(&self, key: &str) -> SnapResult<Usage> {
            let known = self.snapshots.lock().unwrap().contains_key(key);
            if known {
                Ok(Usage { size: key.len() as u64, inodes: 1 })
            } else {
                Err(SnapshotError::NotFound(key.into()))
            }
        }
        async fn mounts(&self, key: &str) -> SnapResult<Vec<Mount>> {
            Ok(vec![Mount { kind: "bind".into(), source: key.into(), target: String::new(), options: vec![] }])
        }
        async fn prepare(&self, key: &str, parent: Option<&str>, _: Labels) -> SnapResult<Vec<Mount>> {
            self.add(key, parent, Kind::Active)
        }
        async fn view(&self, key: &str, parent: Option<&str>, _: Labels) -> SnapResult<Vec<Mount>> {
            self.add(key, parent, Kind::View)
        }
        async fn commit(&self, name: &str, key: &str, _: Labels) -> SnapResult<()> {
            let mut map = self.snapshots.lock().unwrap();
            let (_, parent) = map.remove(key).ok_or_else(|| SnapshotError::NotFound(key.into()))?;
            map.insert(name.into(), (Kind::Committed, parent));
            Ok(())
        }
        async fn remove(&self, key: &str) -> SnapResult<()> {
            let mut map = self.snapshots.lock().unwrap();
            if map.values().any(|(_, p)| p.as_deref() == Some(key)) {
                return Err(SnapshotError::FailedPrecondition("has children".into()));
            }
            map.remove(key).map(drop).ok_or_else(|| SnapshotError::NotFound(key.into()))
        }
        async fn walk(&self, _: WalkFilter<'_>) -> SnapResult<Vec<Info>> {
            Ok(vec![])
        }
        async fn cleanup(&self) -> SnapResult<()> {
            Ok(())
        }
    }

    fn setup() -> (tempfile::TempDir, Arc<Fake>, Namespaced) {
        let (dir, store) = open_temp();
        let fake = Arc::new(Fake::default());
        let view = Namespaced::new(store, fake.clone() as SharedSnapshotter);
        (dir, fake, view)
    }

    async fn names(view: &Namespaced, ns: &str) -> Vec<String> {
        view.walk(ns, &|_| true).await.unwrap().into_iter().map(|i| i.name).collect()
    }

    #[tokio::test]
    async fn namespaces_are_isolated_and_keys_translated() {
        let (_dir, fake, view) = setup();
        let mounts = view.prepare("a", "k1", None, Labels::new(), None).await.unwrap();
        let backend = &mounts[0].source;
        assert!(backend.starts_with("a/") && backend.ends_with("/k1") && backend.len() > 20, "{backend}");
        view.prepare("b", "k1", None, Labels::new(), None).await.unwrap();
        assert_eq!(fake.keys().len(), 2, "two backend snapshots for the two namespaces' k1");
        assert_eq!(names(&view, "a").await, ["k1"]);
        assert!(names(&view, "c").await.is_empty());
        assert_eq!(view.mounts("a", "k1").await.unwrap()[0].source, *backend);
        assert_ne!(view.mounts("b", "k1").await.unwrap()[0].source, *backend);
        assert!(matches!(view.stat("c", "k1").await, Err(Error::NotFound(_))));
        view.remove("a", "k1").await.unwrap();
        assert!(matches!(view.stat("a", "k1").await, Err(Error::NotFound(_))), "the record goes with the answer");
        assert!(view.stat("b", "k1").await.is_ok());
        view.removals_done().await;
        assert_eq!(fake.keys().len(), 1, "the backend's snapshot goes after it");
        // Duplicate keys are refused before the backend is asked.
        let err = view.prepare("b", "k1", None, Labels::new(), None).await.unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err:?}");
        assert_eq!(fake.keys().len(), 1);
    }

    #[tokio::test]
    async fn parents_are_client_names() {
        let (_dir, fake, view) = setup();
        let labels: Labels = [("x".to_string(), "1".to_string())].into();
        view.prepare("ns", "k1", None, Labels::new(), None).await.unwrap();
        let err = view.prepare("ns", "k2", Some("k1"), Labels::new(), None).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        view.commit("ns", "c1", "k1", labels.clone(), None).await.unwrap();
        view.prepare("ns", "k2", Some("c1"), Labels::new(), None).await.unwrap();
        view.view("ns", "v", Some("c1"), Labels::new(), None).await.unwrap();
        let c1 = view.stat("ns", "c1").await.unwrap();
        assert_eq!((c1.kind, c1.parent, c1.labels), (Kind::Committed, None, Arc::new(labels)));
        let k2 = view.stat("ns", "k2").await.unwrap();
        assert_eq!((k2.kind, k2.parent.as_deref()), (Kind::Active, Some("c1")));
        assert_eq!(view.stat("ns", "v").await.unwrap().kind, Kind::View);
        // Another namespace cannot use c1 as a parent.
        let err = view.prepare("other", "k", Some("c1"), Labels::new(), None).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        let filters = FilterSet::parse_all(&["parent==c1"]).unwrap();
        let children: Vec<_> =
            view.walk("ns", &|i| filters.matches(i)).await.unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(children, ["k2", "v"]);

        let err = view.remove("ns", "c1").await.unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
        let err = view.commit("ns", "c2", "v", Labels::new(), None).await.unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
        let err = view.commit("ns", "c1", "k2", Labels::new(), None).await.unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err:?}");
        assert_eq!(fake.keys().len(), 3);
        view.remove("ns", "k2").await.unwrap();
        view.remove("ns", "v").await.unwrap();
        // Queued in order: the parent's backend removal comes after its children's, so it does not fail.
        view.remove("ns", "c1").await.unwrap();
        view.removals_done().await;
        assert!(fake.keys().is_empty());

        let usage = view.prepare("ns", "u", None, Labels::new(), None).await.map(drop);
        usage.unwrap();
        assert!(view.usage("ns", "u").await.unwrap().size > 0);
        assert!(matches!(view.usage("ns", "nope").await, Err(Error::NotFound(_))));
    }

    #[tokio::test]
    async fn leases_get_snapshot_resources() {
        let (_dir, fake, view) = setup();
        view.store.create_lease("ns", Lease { id: "l".into(), ..Default::default() }).await.unwrap();
        view.prepare("ns", "k", None, Labels::new(), Some("l".into())).await.unwrap();
        view.commit("ns", "c", "k", Labels::new(), Some("l".into())).await.unwrap();
        let held = view.store.list_lease_resources("ns", "l").unwrap();
        let r = |id: &str| LeaseResource { id: id.into(), kind: "snapshots/fake".into() };
        assert_eq!(held, [r("c"), r("k")]);
        // A missing lease: refused, and nothing made in the backend.
        let err = view.prepare("ns", "k2", None, Labels::new(), Some("gone".into())).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        assert_eq!(fake.keys().len(), 1);
    }

    #[tokio::test]
    async fn update_changes_labels_only() {
        let (_dir, _fake, view) = setup();
        view.prepare("ns", "k", None, Labels::new(), None).await.unwrap();
        let mut request = view.stat("ns", "k").await.unwrap();
        request.labels = Arc::new([("a".to_string(), "1".to_string())].into());
        let got = view.update("ns", request.clone(), vec!["labels.a".into()]).await.unwrap();
        assert_eq!(got.labels["a"], "1");
        let err = view.update("ns", request, vec!["kind".into()]).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    }
}
