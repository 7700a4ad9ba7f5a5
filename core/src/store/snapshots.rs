//! Snapshot records: `snapshots/<namespace>/<snapshotter>/<key>` → Snapshot, what makes a backend
//! snapshot visible in a namespace under the name the client gave it (containerd's metadata
//! snapshotter, `v1/<namespace>/snapshots/<snapshotter>/<key>`).
//!
//! The backend knows the snapshot by `backend_key` only; names, parents and labels as the client
//! sees them live here, so two namespaces can each have a `k1` and neither sees the other's.
//! `crate::snapshot::namespaced` pairs these records with the backend calls.

use std::collections::BTreeMap;

use heed::RwTxn;

use super::content::hold;
use super::paths::{cannot_update, copy_key, drop_empty_labels, map_key};
use super::records::{LeaseResource, Snapshot};
use super::tables::{MAX_KEY_SIZE, Tables, snapshot_key, snapshots_prefix};
use super::{MetadataStore, internal, namespaces, now, validate_namespace};
use crate::error::{Error, Result};
use crate::ident;

/// `Snapshot::kind` of a view (containerd's `snapshots.v1.Kind` numbers).
pub const KIND_VIEW: i32 = 1;
/// `Snapshot::kind` of an active snapshot.
pub const KIND_ACTIVE: i32 = 2;
/// `Snapshot::kind` of a committed snapshot.
pub const KIND_COMMITTED: i32 = 3;

/// Labels of a snapshot record.
pub type SnapshotLabels = BTreeMap<String, String>;

/// The lease resource type of a snapshot of `snapshotter`, as containerd names it.
pub fn snapshot_resource(snapshotter: &str) -> String {
    format!("snapshots/{snapshotter}")
}

fn describe(ns: &str, key: &str) -> String {
    format!("snapshot \"{key}\" in namespace \"{ns}\"")
}

fn not_found(ns: &str, key: &str) -> Error {
    Error::NotFound(describe(ns, key))
}

/// Checks a snapshot key or name from a client: not empty, no NUL (it separates lease resource
/// types from ids), and short enough for LMDB with its prefix.
fn validate_key(ns: &str, snapshotter: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("snapshot key must not be empty".into()));
    }
    if key.contains('\0') {
        return Err(Error::InvalidArgument(format!("snapshot key {key:?} must not contain NUL")));
    }
    if snapshot_key(ns, snapshotter, key).len() > MAX_KEY_SIZE {
        return Err(Error::InvalidArgument(format!(
            "snapshot key {key:?} is too long: with namespace and snapshotter it exceeds {MAX_KEY_SIZE} bytes"
        )));
    }
    Ok(())
}

fn validate_scope(ns: &str, snapshotter: &str) -> Result<()> {
    validate_namespace(ns)?;
    ident::validate(snapshotter).map_err(|e| e.context("snapshotter"))
}

fn load(txn: &RwTxn<'_>, tables: &Tables<'static>, ns: &str, snapshotter: &str, key: &str) -> Result<Option<Snapshot>> {
    let found = tables.snapshots.get(txn, &snapshot_key(ns, snapshotter, key));
    let mut record = found.map_err(internal(format_args!("reading {}", describe(ns, key))))?;
    if let Some(record) = &mut record {
        key.clone_into(&mut record.name);
    }
    Ok(record)
}

fn put(txn: &mut RwTxn<'_>, tables: &Tables<'static>, ns: &str, snapshotter: &str, record: &Snapshot) -> Result<()> {
    let key = snapshot_key(ns, snapshotter, &record.name);
    tables.snapshots.put(txn, &key, record).map_err(internal(format_args!("writing {}", describe(ns, &record.name))))
}

fn has_children(txn: &RwTxn<'_>, tables: &Tables<'static>, ns: &str, snapshotter: &str, key: &str) -> Result<bool> {
    let listing = || internal(format!("listing the children of {}", describe(ns, key)));
    for entry in tables.snapshots.prefix_iter(txn, &snapshots_prefix(ns, snapshotter)).map_err(listing())? {
        if entry.map_err(listing())?.1.parent == key {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Makes `lease` (if any) hold snapshot `key` of `snapshotter`.
fn lease_it(
    txn: &mut RwTxn<'_>,
    tables: &Tables<'static>,
    ns: &str,
    snapshotter: &str,
    key: &str,
    lease: &Option<String>,
) -> Result<()> {
    match lease {
        Some(lease) => {
            let resource = LeaseResource { id: key.to_owned(), kind: snapshot_resource(snapshotter) };
            hold(txn, tables, ns, lease, &resource)
        }
        None => Ok(()),
    }
}

impl MetadataStore {
    /// Snapshot `key` of `snapshotter` as namespace `ns` sees it; NotFound unless it made it.
    pub fn get_snapshot(&self, ns: &str, snapshotter: &str, key: &str) -> Result<Snapshot> {
        validate_scope(ns, snapshotter)?;
        validate_key(ns, snapshotter, key).map_err(|_| not_found(ns, key))?;
        let rtxn = self.read_txn()?;
        let found = self.tables().snapshots.get(&rtxn, &snapshot_key(ns, snapshotter, key));
        let mut record = found
            .map_err(internal(format_args!("reading {}", describe(ns, key))))?
            .ok_or_else(|| not_found(ns, key))?;
        key.clone_into(&mut record.name);
        Ok(record)
    }

    /// Every snapshot of `snapshotter` namespace `ns` sees, sorted by key.
    pub fn list_snapshots(&self, ns: &str, snapshotter: &str) -> Result<Vec<Snapshot>> {
        validate_scope(ns, snapshotter)?;
        let rtxn = self.read_txn()?;
        let prefix = snapshots_prefix(ns, snapshotter);
        let listing = || internal(format!("listing snapshots in namespace \"{ns}\""));
        let mut records = Vec::new();
        for entry in self.tables().snapshots.prefix_iter(&rtxn, &prefix).map_err(listing())? {
            let (key, mut record) = entry.map_err(listing())?;
            record.name = key[prefix.len()..].to_owned();
            records.push(record);
        }
        Ok(records)
    }

    /// Records snapshot `record.name` (view or active, on `record.parent` if not empty), stamped now,
    /// creating the namespace if needed; `lease` takes it. AlreadyExists if the key is taken,
    /// NotFound if the parent is missing, InvalidArgument if it is not committed.
    pub async fn create_snapshot(
        &self,
        ns: &str,
        snapshotter: &str,
        mut record: Snapshot,
        lease: Option<String>,
    ) -> Result<Snapshot> {
        validate_scope(ns, snapshotter)?;
        validate_key(ns, snapshotter, &record.name)?;
        ident::validate_labels(&record.labels).map_err(|e| e.context(format!("snapshot \"{}\"", record.name)))?;
        drop_empty_labels(&mut record.labels);
        let (ns, snapshotter) = (ns.to_owned(), snapshotter.to_owned());
        self.write(move |txn, tables| {
            if load(txn, tables, &ns, &snapshotter, &record.name)?.is_some() {
                return Err(Error::AlreadyExists(describe(&ns, &record.name)));
            }
            if !record.parent.is_empty() {
                check_parent(txn, tables, &ns, &snapshotter, &record.parent)?;
            }
            lease_it(txn, tables, &ns, &snapshotter, &record.name, &lease)?;
            namespaces::ensure(txn, tables, &ns)?;
            let stamp = now();
            record.created_at = Some(stamp);
            record.updated_at = Some(stamp);
            put(txn, tables, &ns, &snapshotter, &record)?;
            Ok(record)
        })
        .await
    }

    /// Replaces active snapshot `key` with committed snapshot `name` (backend key `backend_key`, on the
    /// same parent, with `labels`); `lease` takes it. NotFound if `key` is missing, FailedPrecondition
    /// if it is not active, AlreadyExists if `name` is taken.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit_snapshot(
        &self,
        ns: &str,
        snapshotter: &str,
        key: &str,
        name: &str,
        backend_key: String,
        mut labels: SnapshotLabels,
        lease: Option<String>,
    ) -> Result<Snapshot> {
        validate_scope(ns, snapshotter)?;
        validate_key(ns, snapshotter, name)?;
        ident::validate_labels(&labels).map_err(|e| e.context(format!("snapshot \"{name}\"")))?;
        drop_empty_labels(&mut labels);
        let (ns, snapshotter, key, name) = (ns.to_owned(), snapshotter.to_owned(), key.to_owned(), name.to_owned());
        self.write(move |txn, tables| {
            let active = load(txn, tables, &ns, &snapshotter, &key)?.ok_or_else(|| not_found(&ns, &key))?;
            check_committable(&ns, &active)?;
            if load(txn, tables, &ns, &snapshotter, &name)?.is_some() {
                return Err(Error::AlreadyExists(describe(&ns, &name)));
            }
            tables
                .snapshots
                .delete(txn, &snapshot_key(&ns, &snapshotter, &key))
                .map_err(internal(format_args!("deleting {}", describe(&ns, &key))))?;
            lease_it(txn, tables, &ns, &snapshotter, &name, &lease)?;
            let stamp = now();
            let record = Snapshot {
                name,
                backend_key,
                parent: active.parent,
                kind: KIND_COMMITTED,
                created_at: Some(stamp),
                updated_at: Some(stamp),
                labels,
            };
            put(txn, tables, &ns, &snapshotter, &record)?;
            Ok(record)
        })
        .await
    }

    /// Changes the labels of snapshot `key`: all of them with no `paths` or with `labels`, one per
    /// `labels.<key>` path (removed if `labels` lacks it). Any other path is InvalidArgument.
    pub async fn update_snapshot(
        &self,
        ns: &str,
        snapshotter: &str,
        key: &str,
        labels: SnapshotLabels,
        paths: Vec<String>,
    ) -> Result<Snapshot> {
        validate_scope(ns, snapshotter)?;
        for path in &paths {
            if path != "labels" && map_key(path, "labels").is_none() {
                return Err(cannot_update(path, "snapshot", key));
            }
        }
        let (ns, snapshotter, key) = (ns.to_owned(), snapshotter.to_owned(), key.to_owned());
        self.write(move |txn, tables| {
            let mut record = load(txn, tables, &ns, &snapshotter, &key)?.ok_or_else(|| not_found(&ns, &key))?;
            if paths.is_empty() {
                record.labels = labels.clone();
            }
            for path in &paths {
                match map_key(path, "labels") {
                    Some(label) => copy_key(&mut record.labels, &labels, label),
                    None => record.labels = labels.clone(),
                }
            }
            drop_empty_labels(&mut record.labels);
            ident::validate_labels(&record.labels).map_err(|e| e.context(format!("snapshot \"{key}\"")))?;
            record.updated_at = Some(now());
            put(txn, tables, &ns, &snapshotter, &record)?;
            Ok(record)
        })
        .await
    }

    /// Forgets snapshot `key` and returns its record; NotFound if missing, FailedPrecondition while
    /// another snapshot of the namespace has it as parent.
    pub async fn delete_snapshot(&self, ns: &str, snapshotter: &str, key: &str) -> Result<Snapshot> {
        validate_scope(ns, snapshotter)?;
        let (ns, snapshotter, key) = (ns.to_owned(), snapshotter.to_owned(), key.to_owned());
        self.write_deletion(move |txn, tables| {
            let record = load(txn, tables, &ns, &snapshotter, &key)?.ok_or_else(|| not_found(&ns, &key))?;
            if has_children(txn, tables, &ns, &snapshotter, &key)? {
                return Err(has_children_error(&ns, &key));
            }
            tables
                .snapshots
                .delete(txn, &snapshot_key(&ns, &snapshotter, &key))
                .map_err(internal(format_args!("deleting {}", describe(&ns, &key))))?;
            Ok(record)
        })
        .await
    }

    /// FailedPrecondition if snapshot `key` has children in namespace `ns`: checked before the
    /// backend is asked to remove it.
    pub fn check_no_children(&self, ns: &str, snapshotter: &str, key: &str) -> Result<()> {
        validate_scope(ns, snapshotter)?;
        let rtxn = self.read_txn()?;
        let listing = || internal(format!("listing the children of {}", describe(ns, key)));
        for entry in self.tables().snapshots.prefix_iter(&rtxn, &snapshots_prefix(ns, snapshotter)).map_err(listing())?
        {
            if entry.map_err(listing())?.1.parent == key {
                return Err(has_children_error(ns, key));
            }
        }
        Ok(())
    }
}

fn has_children_error(ns: &str, key: &str) -> Error {
    Error::FailedPrecondition(format!("cannot remove {}: it is the parent of other snapshots", describe(ns, key)))
}

/// The parent of a new snapshot must exist in the namespace and be committed.
fn check_parent(txn: &RwTxn<'_>, tables: &Tables<'static>, ns: &str, snapshotter: &str, parent: &str) -> Result<()> {
    let record = load(txn, tables, ns, snapshotter, parent)?
        .ok_or_else(|| Error::NotFound(format!("parent {}", describe(ns, parent))))?;
    if record.kind != KIND_COMMITTED {
        return Err(Error::InvalidArgument(format!("parent {} is not committed", describe(ns, parent))));
    }
    Ok(())
}

fn check_committable(ns: &str, record: &Snapshot) -> Result<()> {
    if record.kind != KIND_ACTIVE {
        return Err(Error::FailedPrecondition(format!(
            "{} is not active: only active snapshots commit",
            describe(ns, &record.name)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Lease;
    use crate::store::testutil::*;

    fn record(name: &str, parent: &str, kind: i32) -> Snapshot {
        Snapshot {
            name: name.into(),
            backend_key: format!("ns/1/{name}"),
            parent: parent.into(),
            kind,
            ..Default::default()
        }
    }

    fn names(store: &MetadataStore, ns: &str, snapshotter: &str) -> Vec<String> {
        store.list_snapshots(ns, snapshotter).unwrap().into_iter().map(|s| s.name).collect()
    }

    #[tokio::test]
    async fn namespaces_and_snapshotters_are_separate() {
        let (_dir, store) = open_temp();
        store.create_snapshot("a", "overlayfs", record("k/1", "", KIND_ACTIVE), None).await.unwrap();
        store.create_snapshot("b", "overlayfs", record("k/1", "", KIND_ACTIVE), None).await.unwrap();
        store.create_snapshot("a", "native", record("n", "", KIND_VIEW), None).await.unwrap();
        // A namespace whose name extends another's sees nothing of it.
        assert!(names(&store, "a-2", "overlayfs").is_empty());
        assert_eq!(names(&store, "a", "overlayfs"), ["k/1"]);
        assert_eq!(names(&store, "a", "native"), ["n"]);
        assert!(matches!(store.get_snapshot("b", "native", "n"), Err(Error::NotFound(_))));
        let err = store.create_snapshot("a", "overlayfs", record("k/1", "", KIND_ACTIVE), None).await.unwrap_err();
        assert_eq!(err, Error::AlreadyExists("snapshot \"k/1\" in namespace \"a\"".into()));
        // Namespaces holding snapshots cannot be deleted.
        let err = store.delete_namespace("b").await.unwrap_err();
        assert!(err.to_string().ends_with("still has snapshots"), "{err}");
    }

    #[tokio::test]
    async fn parents_commit_and_remove() {
        let (_dir, store) = open_temp();
        store.create_snapshot("ns", "native", record("k1", "", KIND_ACTIVE), None).await.unwrap();
        let err = store.create_snapshot("ns", "native", record("k2", "k1", KIND_ACTIVE), None).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(m) if m.contains("not committed")));
        let err = store.create_snapshot("ns", "native", record("k2", "nope", KIND_ACTIVE), None).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        let c1 = store
            .commit_snapshot("ns", "native", "k1", "c1", "ns/2/c1".into(), labels(&[("a", "1")]), None)
            .await
            .unwrap();
        assert_eq!((c1.kind, c1.backend_key.as_str()), (KIND_COMMITTED, "ns/2/c1"));
        assert!(matches!(store.get_snapshot("ns", "native", "k1"), Err(Error::NotFound(_))));
        store.create_snapshot("ns", "native", record("k2", "c1", KIND_ACTIVE), None).await.unwrap();
        let err = store.commit_snapshot("ns", "native", "k2", "c1", "x".into(), labels(&[]), None).await.unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err:?}");
        store.create_snapshot("ns", "native", record("v", "c1", KIND_VIEW), None).await.unwrap();
        let err = store.commit_snapshot("ns", "native", "v", "c2", "x".into(), labels(&[]), None).await.unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");

        let err = store.delete_snapshot("ns", "native", "c1").await.unwrap_err();
        assert!(matches!(&err, Error::FailedPrecondition(m) if m.contains("parent of other snapshots")), "{err:?}");
        assert!(store.check_no_children("ns", "native", "c1").is_err());
        store.delete_snapshot("ns", "native", "k2").await.unwrap();
        store.delete_snapshot("ns", "native", "v").await.unwrap();
        store.check_no_children("ns", "native", "c1").unwrap();
        store.delete_snapshot("ns", "native", "c1").await.unwrap();
        assert!(names(&store, "ns", "native").is_empty());
        assert!(matches!(store.delete_snapshot("ns", "native", "c1").await, Err(Error::NotFound(_))));
    }

    #[tokio::test]
    async fn labels_by_path() {
        let (_dir, store) = open_temp();
        let mut r = record("k", "", KIND_ACTIVE);
        r.labels = labels(&[("a", "1"), ("b", "2")]);
        store.create_snapshot("ns", "native", r, None).await.unwrap();
        let got = store
            .update_snapshot("ns", "native", "k", labels(&[("a", "9")]), vec!["labels.a".into(), "labels.b".into()])
            .await
            .unwrap();
        assert_eq!(got.labels, labels(&[("a", "9")]));
        let got = store.update_snapshot("ns", "native", "k", labels(&[("c", "3")]), vec![]).await.unwrap();
        assert_eq!(got.labels, labels(&[("c", "3")]));
        let err = store.update_snapshot("ns", "native", "k", labels(&[]), vec!["parent".into()]).await.unwrap_err();
        assert_eq!(err, Error::InvalidArgument("cannot update \"parent\" field on snapshot \"k\"".into()));
        assert_eq!(store.get_snapshot("ns", "native", "k").unwrap().labels, labels(&[("c", "3")]));
    }

    #[tokio::test]
    async fn leases_take_created_and_committed_snapshots() {
        let (_dir, store) = open_temp();
        store.create_lease("ns", Lease { id: "l".into(), ..Default::default() }).await.unwrap();
        store.create_snapshot("ns", "overlayfs", record("k", "", KIND_ACTIVE), Some("l".into())).await.unwrap();
        store.commit_snapshot("ns", "overlayfs", "k", "c", "b".into(), labels(&[]), Some("l".into())).await.unwrap();
        let held = store.list_lease_resources("ns", "l").unwrap();
        let resource = |id: &str| LeaseResource { id: id.into(), kind: "snapshots/overlayfs".into() };
        assert_eq!(held, [resource("c"), resource("k")]);
        // A missing lease fails the create, and nothing is recorded.
        let err = store
            .create_snapshot("ns", "overlayfs", record("k2", "", KIND_ACTIVE), Some("gone".into()))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        assert!(store.get_snapshot("ns", "overlayfs", "k2").is_err());
    }

    #[tokio::test]
    async fn bad_keys_are_refused() {
        let (_dir, store) = open_temp();
        for key in ["", "a\0b"] {
            let err = store.create_snapshot("ns", "native", record(key, "", KIND_ACTIVE), None).await.unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        }
        let long = "k".repeat(600);
        let err = store.create_snapshot("ns", "native", record(&long, "", KIND_ACTIVE), None).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(matches!(store.get_snapshot("ns", "native", &long), Err(Error::NotFound(_))));
        let err = store.create_snapshot("ns", "a/b", record("k", "", KIND_ACTIVE), None).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(store.list_namespaces().unwrap().is_empty());
    }
}
