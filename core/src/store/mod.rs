//! The metadata store: namespaces, containers, sandboxes, leases and the content each namespace
//! sees, in one LMDB environment (through heed), with containerd's metadata semantics.
//!
//! Key schema, one LMDB sub-database per table; values are the protobuf encoding of the records in
//! [`records`] (or empty):
//!
//! ```text
//! <dir>/data.mdb, <dir>/lock.mdb
//! ├── meta
//! │   └── schema_version            → u32, big-endian (absent: version 0)
//! ├── namespaces
//! │   └── <namespace>               → Namespace
//! ├── containers
//! │   └── <namespace>/<id>          → Container
//! ├── sandboxes
//! │   └── <namespace>/<id>          → Sandbox
//! ├── leases                                            (since version 2)
//! │   └── <namespace>/<lease>       → Lease
//! ├── lease_resources                                   (since version 2)
//! │   └── <namespace>/<lease>\0<type>\0<resource id>      (the lease id ended by `/` before 5)
//! │                                 → empty: the key is the record
//! ├── content                                           (since version 3)
//! │   └── <namespace>/<digest>      → ContentInfo: the blob is visible in the namespace
//! ├── snapshots                                         (since version 4)
//! │   └── <namespace>/<snapshotter>/<key>
//! │                                 → Snapshot{backend_key, parent, kind, labels, times}: the
//! │                                   client's key in that namespace, and the backend's key
//! │                                   (`<namespace>/<id>/<key>`) it stands for
//! └── images                                            (since version 4)
//!     └── <namespace>/<name>        → Image{labels, target Descriptor, times}
//! ```
//!
//! The blobs themselves and the ingests being written are files of the content store
//! (`crate::content`, under `<root>/content`), not records: a blob file is shared by every
//! namespace that has a `content` record for its digest. Likewise snapshots live in their backend
//! (`snapshot.*` plugins) under backend keys; a namespace sees only the ones it has a `snapshots`
//! record for, by the name it gave them, so namespaces cannot see each other's snapshots.
//!
//! Identifiers and digests cannot contain `/`, so the prefix `<namespace>/` selects exactly one
//! namespace's objects, and LMDB's byte order lists them sorted by id. Lease ids may contain `/`
//! (containerd's may) but never NUL, so `<namespace>/<lease>\0` selects exactly one lease's
//! resources; a resource type (which may contain `/`, as in `snapshots/overlayfs`) and a resource
//! id never contain NUL either, so the next NUL ends the type. Snapshot keys and image names may contain `/`, but the namespace and snapshotter
//! before them cannot, so `<namespace>/<snapshotter>/` and `<namespace>/` prefixes stay exact. The `name`/`id` field of a record is stored too, but reads always take it from
//! the key.
//!
//! Reads open a read transaction on the calling thread: they are cheap and never wait for writes.
//! Writes go to one writer thread that commits them in groups (see `writer.rs`), so they are
//! durable when the call returns yet concurrent writers share an fsync. Schema versions and their
//! upgrades live in `upgrade.rs`.
//!
//! The garbage collector (`crate::gc`) reads these tables and adds none: its record pass
//! (`gc.rs`) marks what the roots reach and removes unreachable `content` and `snapshots` records
//! and expired `leases` (with their `lease_resources`) in one write transaction. The store counts
//! writes and deletions for its scheduler ([`MetadataStore::activity`]) and keeps the lock that
//! orders writes putting files or backend snapshots in place against the collector's sweep of them
//! ([`MetadataStore::guard_against_sweep`]).

pub mod records;

mod codec;
mod containers;
mod content;
mod gc;
mod images;
mod leases;
mod namespaces;
mod objects;
mod paths;
mod runnable;
mod sandboxes;
mod snapshots;
mod tables;
mod upgrade;
mod writer;

use std::fmt::Display;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use heed::{Env, EnvOpenOptions, RoTxn, WithoutTls};
use prost_types::Timestamp;
use tokio::sync::watch;

pub use self::content::{CONTENT_RESOURCE, Committed, ContentLease, INGEST_RESOURCE};
pub use self::gc::{
    IngestRef, LABEL_EXPIRE, LABEL_FLAT, LABEL_REF_CONTENT, LABEL_REF_SNAPSHOT, LABEL_ROOT, Swept, parse_rfc3339,
};
pub use self::records::{
    Container, ContentInfo, Descriptor, Image, Lease, LeaseResource, Namespace, Runtime, Sandbox, Snapshot,
};
pub use self::snapshots::{KIND_ACTIVE, KIND_COMMITTED, KIND_VIEW, SnapshotLabels, snapshot_resource};
use self::tables::{Tables, db_name, meta_key};
pub use self::upgrade::CURRENT_VERSION as SCHEMA_VERSION;
use self::writer::Writer;
use crate::error::{Error, Result};
use crate::ident;

/// How the store's LMDB environment is opened and written.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Size of the memory map, in bytes: the most the store can ever hold. A multiple of the page
    /// size. Default 1 GiB (address space only; the file grows as data is written).
    pub map_size: usize,
    /// Most write operations committed together in one transaction. Default 256.
    pub max_batch: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { map_size: 1 << 30, max_batch: 256 }
    }
}

/// Handle to the metadata store. Clones share one environment and one writer thread; when the
/// last clone is dropped, queued writes are committed, the writer thread exits and the
/// environment is closed.
#[derive(Clone)]
pub struct MetadataStore {
    inner: Arc<Inner>,
}

struct Inner {
    // Declared first so it is dropped (and joined) before the environment handle.
    writer: Writer,
    env: Env<WithoutTls>,
    tables: Tables<'static>,
    /// Writes and deletions so far, for the garbage collector's scheduler.
    activity: watch::Sender<Activity>,
    /// Shared by a write between putting a file or backend snapshot in place and committing its
    /// record; the garbage collector's sweep of files and backend snapshots takes it exclusively.
    sweep: Arc<tokio::sync::RwLock<()>>,
}

/// How much the store has changed since it was opened: what the garbage collector's scheduler
/// counts (containerd's mutation callbacks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Write operations that succeeded (the collector's own excepted).
    pub mutations: u64,
    /// Deletions among them: images, containers, sandboxes, leases, lease resources, content
    /// and snapshots, each of which may leave something for the collector.
    pub deletions: u64,
}

/// Held by a write between putting a blob file or a backend snapshot in place and committing the
/// record that names it (see [`MetadataStore::guard_against_sweep`]).
pub type SweepGuard = tokio::sync::OwnedRwLockReadGuard<()>;

/// Held by the garbage collector while it decides which files and backend snapshots no record
/// names, and removes the blob files among them.
pub type SweepLock = tokio::sync::OwnedRwLockWriteGuard<()>;

impl std::fmt::Debug for MetadataStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataStore").field("path", &self.inner.env.path()).finish_non_exhaustive()
    }
}

impl MetadataStore {
    /// Opens (creating) the LMDB environment in directory `dir` (created 0700 if missing) and
    /// upgrades its schema to the current version.
    ///
    /// Fails with FailedPrecondition if the store was written by a newer berth, and with Internal
    /// if it is open already in this process or cannot be opened.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<MetadataStore> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::Internal(format!("metadata store: creating directory {}: {e}", dir.display())))?;
        let mut env_options = EnvOpenOptions::new().read_txn_without_tls();
        env_options.map_size(options.map_size).max_dbs(db_name::ALL.len() as u32);
        // SAFETY: LMDB maps the files in `dir`; modifying them other than through LMDB while they
        // are mapped is undefined behaviour. They are berth's private files (the directory is
        // 0700), LMDB's lock file serialises other processes, and heed refuses to open the same
        // environment twice in one process. Default flags: commits are durable.
        let env = unsafe { env_options.open(dir) }.map_err(internal(format_args!("opening {}", dir.display())))?;
        let tables = upgrade::open_and_upgrade(&env)?;
        let writer = Writer::spawn(env.clone(), tables, options.max_batch)?;
        let (activity, _) = watch::channel(Activity::default());
        let sweep = Arc::new(tokio::sync::RwLock::new(()));
        Ok(MetadataStore { inner: Arc::new(Inner { writer, env, tables, activity, sweep }) })
    }

    /// Waits for queued writes to commit and stops the writer thread; the environment closes
    /// once no clone is left. Writes through other clones fail with Unavailable afterwards.
    pub fn close(self) {
        self.inner.writer.shutdown();
    }

    /// The schema version recorded in the store.
    pub fn schema_version(&self) -> Result<u32> {
        let rtxn = self.read_txn()?;
        let version = self.inner.tables.meta.get(&rtxn, meta_key::SCHEMA_VERSION);
        Ok(version.map_err(internal("reading the schema version"))?.unwrap_or(0))
    }

    fn read_txn(&self) -> Result<RoTxn<'_, WithoutTls>> {
        self.inner.env.read_txn().map_err(internal("opening a read transaction"))
    }

    fn tables(&self) -> &Tables<'static> {
        &self.inner.tables
    }

    /// Runs `op` on the writer thread in its own nested transaction; returns once it is durable.
    /// A success counts as a mutation.
    async fn write<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut heed::RwTxn<'_>, &Tables<'static>) -> Result<T> + Send + 'static,
    {
        let result = self.inner.writer.write(op).await;
        if result.is_ok() {
            self.inner.activity.send_modify(|a| a.mutations += 1);
        }
        result
    }

    /// [`Self::write`] for an operation that deletes something: a success counts as a deletion too.
    async fn write_deletion<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut heed::RwTxn<'_>, &Tables<'static>) -> Result<T> + Send + 'static,
    {
        let result = self.write(op).await;
        if result.is_ok() {
            self.inner.activity.send_modify(|a| a.deletions += 1);
        }
        result
    }

    /// Watches the store's [`Activity`]; the garbage collector's scheduler wakes on it.
    pub fn activity(&self) -> watch::Receiver<Activity> {
        self.inner.activity.subscribe()
    }

    /// Taken by a write that puts a blob file or a backend snapshot in place before committing
    /// the record that names it, and held until that record is committed (or the write gave
    /// up): the garbage collector never sees the file or snapshot without its record and takes
    /// it for a leftover. Do not take it twice in one task: a waiting collector is served first.
    pub async fn guard_against_sweep(&self) -> SweepGuard {
        self.inner.sweep.clone().read_owned().await
    }

    /// Taken by the garbage collector to see the files and backend snapshots and the records
    /// naming them with no write half-way between the two.
    pub async fn lock_for_sweep(&self) -> SweepLock {
        self.inner.sweep.clone().write_owned().await
    }
}

/// Maps a heed error to Internal, saying what the store was doing.
fn internal(doing: impl Display) -> impl FnOnce(heed::Error) -> Error {
    move |e| Error::Internal(format!("metadata store: {doing}: {e}"))
}

/// Checks the namespace a container or sandbox operation is in.
fn validate_namespace(namespace: &str) -> Result<()> {
    ident::validate(namespace).map_err(|e| e.context("namespace"))
}

fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

#[cfg(test)]
pub(crate) mod testutil {
    use prost_types::Any;

    use super::*;

    pub fn open_temp() -> (tempfile::TempDir, MetadataStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = MetadataStore::open(&dir.path().join("meta"), StoreOptions::default()).unwrap();
        (dir, store)
    }

    pub fn any(type_url: &str, value: &[u8]) -> Any {
        Any { type_url: type_url.into(), value: value.to_vec() }
    }

    pub fn runtime(name: &str) -> Option<Runtime> {
        Some(Runtime { name: name.into(), options: None })
    }

    pub fn labels(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::testutil::*;
    use super::*;

    #[test]
    fn fresh_store_is_current_version_in_a_private_directory() {
        let (dir, store) = open_temp();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(SCHEMA_VERSION, 5);
        let mode = std::fs::metadata(dir.path().join("meta")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn max_key_size_is_lmdbs() {
        let (_dir, store) = open_temp();
        assert_eq!(store.inner.env.max_key_size(), tables::MAX_KEY_SIZE);
    }

    #[test]
    fn open_twice_in_one_process_is_refused() {
        let (dir, _store) = open_temp();
        let err = MetadataStore::open(&dir.path().join("meta"), StoreOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Internal(_)), "{err:?}");
    }

    #[test]
    fn newer_schema_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetadataStore::open(dir.path(), StoreOptions::default()).unwrap();
        let tables = *store.tables();
        let env = store.inner.env.clone();
        store.close();
        let mut wtxn = env.write_txn().unwrap();
        tables.meta.put(&mut wtxn, meta_key::SCHEMA_VERSION, &99).unwrap();
        wtxn.commit().unwrap();
        drop(env);

        let err = MetadataStore::open(dir.path(), StoreOptions::default()).unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("99") && msg.contains("version 5,"), "{msg}");
    }

    #[tokio::test]
    async fn reopen_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        {
            let store = MetadataStore::open(&path, StoreOptions::default()).unwrap();
            let ns = Namespace { name: "kept".into(), labels: labels(&[("a", "1")]) };
            store.create_namespace(ns).await.unwrap();
            let c = Container {
                id: "c1".into(),
                runtime: runtime("io.containerd.runc.v2"),
                spec: Some(any("types.containerd.io/opencontainers/runtime-spec/1/Spec", b"{}")),
                ..Default::default()
            };
            store.create_container("kept", c).await.unwrap();
            let sb = Sandbox { id: "s1".into(), runtime: runtime("rt"), ..Default::default() };
            store.create_sandbox("kept", sb).await.unwrap();
            let lease = Lease { id: "l1".into(), labels: labels(&[("b", "2")]), ..Default::default() };
            store.create_lease("kept", lease).await.unwrap();
            let r = LeaseResource { id: "k".into(), kind: "snapshots/overlayfs".into() };
            store.add_lease_resource("kept", "l1", r).await.unwrap();
            // Dropping the last handle (no close) must flush and close the environment too.
            let clone = store.clone();
            drop(store);
            drop(clone);
        }
        let store = MetadataStore::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(store.get_namespace("kept").unwrap().labels, labels(&[("a", "1")]));
        assert_eq!(store.get_container("kept", "c1").unwrap().runtime, runtime("io.containerd.runc.v2"));
        assert_eq!(store.get_sandbox("kept", "s1").unwrap().runtime, runtime("rt"));
        assert_eq!(store.get_lease("kept", "l1").unwrap().labels, labels(&[("b", "2")]));
        let r = LeaseResource { id: "k".into(), kind: "snapshots/overlayfs".into() };
        assert_eq!(store.list_lease_resources("kept", "l1").unwrap(), [r]);
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        store.close();
        // close() also leaves the environment closed: it opens again at once.
        MetadataStore::open(&path, StoreOptions::default()).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_creates_are_group_committed() {
        let (_dir, store) = open_temp();
        let container = |id: &str| Container {
            id: id.into(),
            runtime: runtime("rt"),
            spec: Some(any("spec", b"")),
            ..Default::default()
        };
        store.create_container("default", container("dup")).await.unwrap();
        // A second bad op, failing inside the writer rather than before it.
        let dup = tokio::spawn({
            let store = store.clone();
            let c = container("dup");
            async move { store.create_container("default", c).await }
        });
        let mut tasks = Vec::new();
        for i in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                // One bad op among them: no runtime. It fails alone.
                let runtime = if i == 17 { None } else { runtime("rt") };
                let c =
                    Container { id: format!("c{i:02}"), runtime, spec: Some(any("spec", b"")), ..Default::default() };
                store.create_container("default", c).await
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let result = task.await.unwrap();
            assert_eq!(result.is_ok(), i != 17, "c{i:02}: {result:?}");
        }
        let ids: Vec<_> = store.list_containers("default", &|_| true).unwrap().into_iter().map(|c| c.id).collect();
        assert_eq!(ids.len(), 64, "63 new ones and dup");
        assert!(!ids.contains(&"c17".to_string()));
        assert!(ids.is_sorted());
        let err = dup.await.unwrap().unwrap_err();
        assert_eq!(err, Error::AlreadyExists("container \"dup\" in namespace \"default\"".into()));
    }

    /// Prints how long 1000 durable creates take from 1 and from 16 concurrent clients.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "timing only; run with --ignored --nocapture"]
    async fn create_throughput() {
        const TOTAL: usize = 1000;
        for clients in [1, 16] {
            let (_dir, store) = open_temp();
            let start = std::time::Instant::now();
            let tasks: Vec<_> = (0..clients)
                .map(|client| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        for i in 0..TOTAL / clients {
                            let c = Container {
                                id: format!("c-{client}-{i}"),
                                runtime: runtime("io.containerd.runc.v2"),
                                spec: Some(any("spec", &[0; 2048])),
                                ..Default::default()
                            };
                            store.create_container("default", c).await.unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            let elapsed = start.elapsed();
            let batches = store.inner.writer.batches();
            println!(
                "{clients:>2} client(s): {TOTAL} creates in {elapsed:?}, {:.0}/s, {batches} commits",
                TOTAL as f64 / elapsed.as_secs_f64()
            );
        }
    }
}
