//! Collections over a real LMDB store and real content store directories in a temporary
//! directory, with snapshots made through the namespaced view of an in-memory backend that
//! keeps parents and refuses to remove a parent before its children, as real backends do.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use prost_types::Any;

use super::*;
use crate::content::{ContentStore, Digest};
use crate::mount::Mount;
use crate::snapshot::namespaced::Namespaced;
use crate::snapshot::{Kind, Labels, Result as SnapResult, Snapshotter, Usage, WalkFilter};
use crate::store::{Container, Descriptor, Image, Lease, LeaseResource, Sandbox, StoreOptions, parse_rfc3339};

/// An in-memory backend: key → (kind, parent, labels).
#[derive(Default)]
pub(crate) struct MemoryBackend {
    snapshots: Mutex<BTreeMap<String, (Kind, Option<String>)>>,
    cleanups: Mutex<usize>,
}

impl MemoryBackend {
    pub(crate) fn keys(&self) -> Vec<String> {
        self.snapshots.lock().unwrap().keys().cloned().collect()
    }

    fn add(&self, key: &str, parent: Option<&str>, kind: Kind) -> SnapResult<Vec<Mount>> {
        let mut map = self.snapshots.lock().unwrap();
        if map.contains_key(key) {
            return Err(SnapshotError::AlreadyExists(key.into()));
        }
        if let Some(p) = parent {
            match map.get(p) {
                None => return Err(SnapshotError::NotFound(p.into())),
                Some((Kind::Committed, _)) => {}
                Some(_) => return Err(SnapshotError::InvalidArgument(format!("parent {p} is not committed"))),
            }
        }
        map.insert(key.into(), (kind, parent.map(String::from)));
        Ok(vec![Mount { kind: "bind".into(), source: key.into(), target: String::new(), options: vec![] }])
    }
}

#[async_trait::async_trait]
impl Snapshotter for MemoryBackend {
    fn name(&self) -> &str {
        "mem"
    }
    async fn stat(&self, key: &str) -> SnapResult<Info> {
        let map = self.snapshots.lock().unwrap();
        let (kind, parent) = map.get(key).cloned().ok_or_else(|| SnapshotError::NotFound(key.into()))?;
        let t = SystemTime::UNIX_EPOCH;
        Ok(Info { kind, name: key.into(), parent, labels: Default::default(), created: t, updated: t })
    }
    async fn update(&self, info: Info, _: &[String]) -> SnapResult<Info> {
        Ok(info)
    }
    async fn usage(&self, _: &str) -> SnapResult<Usage> {
        Ok(Usage::default())
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
        if map.contains_key(name) {
            return Err(SnapshotError::AlreadyExists(name.into()));
        }
        let (_, parent) = map.remove(key).ok_or_else(|| SnapshotError::NotFound(key.into()))?;
        map.insert(name.into(), (Kind::Committed, parent));
        Ok(())
    }
    async fn remove(&self, key: &str) -> SnapResult<()> {
        let mut map = self.snapshots.lock().unwrap();
        if map.values().any(|(_, p)| p.as_deref() == Some(key)) {
            return Err(SnapshotError::FailedPrecondition(format!("{key} has children")));
        }
        map.remove(key).map(drop).ok_or_else(|| SnapshotError::NotFound(key.into()))
    }
    async fn walk(&self, filter: WalkFilter<'_>) -> SnapResult<Vec<Info>> {
        let keys = self.keys();
        let mut infos = Vec::new();
        for key in keys {
            let info = self.stat(&key).await?;
            if filter(&info) {
                infos.push(info);
            }
        }
        Ok(infos)
    }
    async fn cleanup(&self) -> SnapResult<()> {
        *self.cleanups.lock().unwrap() += 1;
        Ok(())
    }
}

/// A store, a content store and a snapshotter on a temporary directory, and a collector over them.
pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) store: MetadataStore,
    pub(crate) content: ContentStore,
    pub(crate) backend: Arc<MemoryBackend>,
    pub(crate) snapshots: Namespaced,
    pub(crate) collector: Collector,
}

pub(crate) fn fixture_with_expiry(ingest_expiry: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = MetadataStore::open(&dir.path().join("meta"), StoreOptions::default()).unwrap();
    let content_root = dir.path().join("content");
    let content = ContentStore::new(BlobStore::open(&content_root).unwrap(), store.clone());
    let backend = Arc::new(MemoryBackend::default());
    let shared: SharedSnapshotter = backend.clone();
    let snapshots = Namespaced::new(store.clone(), shared.clone());
    // Its own handle on the files, as the gc plugin opens them next to the content service.
    let collector = Collector::new(store.clone(), BlobStore::open(&content_root).unwrap(), vec![shared], ingest_expiry);
    Fixture { dir, store, content, backend, snapshots, collector }
}

pub(crate) fn fixture() -> Fixture {
    fixture_with_expiry(Duration::from_secs(3600))
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Fixture {
    pub(crate) fn blob_file(&self, digest: &Digest) -> PathBuf {
        self.dir.path().join("content/blobs/sha256").join(digest.encoded())
    }

    /// Writes `data` into namespace `ns` with `labels`, under `lease` if given.
    pub(crate) async fn put(&self, ns: &str, data: &[u8], pairs: &[(&str, &str)], lease: Option<&str>) -> Digest {
        let digest = Digest::sha256_of(data);
        let reference = format!("put-{digest}");
        let mut w = self.content.writer(ns, &reference, 0, None, lease.map(String::from)).await.unwrap();
        w.write(0, data.to_vec()).await.unwrap();
        w.commit(data.len() as u64, Some(digest.clone()), labels(pairs)).await.unwrap();
        digest
    }

    pub(crate) fn has(&self, ns: &str, digest: &Digest) -> bool {
        match self.content.info(ns, digest) {
            Ok(_) => true,
            Err(Error::NotFound(_)) => false,
            Err(e) => panic!("{e}"),
        }
    }

    fn snapshot_names(&self, ns: &str) -> Vec<String> {
        self.store.list_snapshots(ns, "mem").unwrap().into_iter().map(|s| s.name).collect()
    }

    /// Commits a chain `names[0] ← names[1] ← ...` in `ns` (each through an active `<name>-a`).
    async fn chain(&self, ns: &str, names: &[&str], lease: Option<&str>) {
        let mut parent: Option<&str> = None;
        for name in names {
            let key = format!("{name}-a");
            self.snapshots.prepare(ns, &key, parent, Labels::new(), lease.map(String::from)).await.unwrap();
            self.snapshots.commit(ns, name, &key, Labels::new(), lease.map(String::from)).await.unwrap();
            parent = Some(name);
        }
    }

    async fn image(&self, ns: &str, name: &str, target: &Digest) {
        let image = Image {
            name: name.into(),
            target: Some(Descriptor {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: target.to_string(),
                size: 1,
                annotations: Default::default(),
            }),
            ..Default::default()
        };
        self.store.create_image(ns, image).await.unwrap();
    }

    async fn lease(&self, ns: &str, id: &str, pairs: &[(&str, &str)]) {
        let lease = Lease { id: id.into(), labels: labels(pairs), created_at: None };
        self.store.create_lease(ns, lease).await.unwrap();
    }

    async fn collect(&self) -> Stats {
        self.collector.collect().await.unwrap()
    }
}

fn container(id: &str, snapshot_key: &str, pairs: &[(&str, &str)]) -> Container {
    Container {
        id: id.into(),
        runtime: Some(crate::store::Runtime { name: "io.containerd.runc.v2".into(), options: None }),
        spec: Some(Any { type_url: "spec".into(), value: vec![] }),
        snapshotter: if snapshot_key.is_empty() { String::new() } else { "mem".into() },
        snapshot_key: snapshot_key.into(),
        labels: labels(pairs),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_image_holds_its_manifest_and_what_the_manifest_labels_reference() {
    let f = fixture();
    let layer = f.put("default", b"layer", &[], None).await;
    let config = f.put("default", b"config", &[], None).await;
    let refs = [
        ("containerd.io/gc.ref.content.config", config.as_str()),
        ("containerd.io/gc.ref.content.l.0", layer.as_str()),
    ];
    let manifest = f.put("default", b"manifest", &refs, None).await;
    let stray = f.put("default", b"stray", &[], None).await;
    f.image("default", "docker.io/library/x:1", &manifest).await;

    let stats = f.collect().await;
    assert_eq!((stats.content, stats.blobs), (1, 1), "{stats:?}");
    for kept in [&manifest, &config, &layer] {
        assert!(f.has("default", kept) && f.blob_file(kept).exists(), "{kept}");
    }
    assert!(!f.has("default", &stray) && !f.blob_file(&stray).exists());

    // Nothing more goes while the image stands; then all of it goes.
    assert_eq!(f.collect().await.content, 0);
    f.store.delete_image("default", "docker.io/library/x:1").await.unwrap();
    let stats = f.collect().await;
    assert_eq!((stats.content, stats.blobs), (3, 3), "{stats:?}");
    assert!(!f.blob_file(&layer).exists());
    assert!(std::fs::read_dir(f.dir.path().join("content/blobs/sha256")).unwrap().next().is_none());
}

#[tokio::test]
async fn content_reference_labels_are_containerds() {
    let f = fixture();
    let named_dot = f.put("default", b"a", &[], None).await;
    let named_slash = f.put("default", b"b", &[], None).await;
    let plain = f.put("default", b"c", &[], None).await;
    let not_a_ref = f.put("default", b"d", &[], None).await;
    let refs = [
        ("containerd.io/gc.ref.content.x", named_dot.as_str()),
        ("containerd.io/gc.ref.content/y", named_slash.as_str()),
        ("containerd.io/gc.ref.content", plain.as_str()),
        // Only `.` and `/` separate a name.
        ("containerd.io/gc.ref.contentx", not_a_ref.as_str()),
        // Dead ends are no error.
        (
            "containerd.io/gc.ref.content.gone",
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ),
    ];
    let root = f.put("default", b"root", &[&[("containerd.io/gc.root", "x")], &refs[..]].concat(), None).await;
    f.collect().await;
    for kept in [&root, &named_dot, &named_slash, &plain] {
        assert!(f.has("default", kept), "{kept}");
    }
    assert!(!f.has("default", &not_a_ref));
}

#[tokio::test]
async fn a_lease_holds_content_and_snapshots_until_it_is_deleted() {
    let f = fixture();
    f.lease("default", "pull", &[]).await;
    let blob = f.put("default", b"leased", &[], Some("pull")).await;
    f.chain("default", &["base", "top"], Some("pull")).await;
    f.snapshots.prepare("default", "work", Some("top"), Labels::new(), Some("pull".into())).await.unwrap();
    assert_eq!(f.backend.keys().len(), 3);

    let stats = f.collect().await;
    assert_eq!((stats.content, stats.snapshots, stats.backend_snapshots), (0, 0, 0), "{stats:?}");
    assert!(f.has("default", &blob));
    assert_eq!(f.snapshot_names("default"), ["base", "top", "work"]);

    f.store.delete_lease("default", "pull").await.unwrap();
    let stats = f.collect().await;
    assert_eq!((stats.content, stats.blobs, stats.snapshots, stats.backend_snapshots), (1, 1, 3, 3), "{stats:?}");
    assert!(!f.has("default", &blob) && !f.blob_file(&blob).exists());
    assert!(f.snapshot_names("default").is_empty());
    assert!(f.backend.keys().is_empty(), "backend snapshots removed, children first");
}

#[tokio::test]
async fn expired_leases_release_and_go() {
    let f = fixture();
    f.lease("default", "old", &[("containerd.io/gc.expire", "2001-02-03T04:05:06Z")]).await;
    f.lease("default", "offset", &[("containerd.io/gc.expire", "2001-02-03T04:05:06.5+02:00")]).await;
    f.lease("default", "future", &[("containerd.io/gc.expire", "2999-01-01T00:00:00Z")]).await;
    f.lease("default", "garbled", &[("containerd.io/gc.expire", "next tuesday")]).await;
    let by_old = f.put("default", b"old", &[], Some("old")).await;
    let by_offset = f.put("default", b"offset", &[], Some("offset")).await;
    let by_future = f.put("default", b"future", &[], Some("future")).await;
    let by_garbled = f.put("default", b"garbled", &[], Some("garbled")).await;

    let stats = f.collect().await;
    assert_eq!((stats.leases, stats.content), (2, 2), "{stats:?}");
    assert!(!f.has("default", &by_old) && !f.has("default", &by_offset));
    assert!(f.has("default", &by_future) && f.has("default", &by_garbled), "an unparsable time is ignored");
    let left: Vec<_> = f.store.list_leases("default", &|_| true).unwrap().into_iter().map(|l| l.id).collect();
    assert_eq!(left, ["future", "garbled"]);
    // The expired lease's resources went with it: a lease made again under its id starts empty.
    f.lease("default", "old", &[]).await;
    assert!(f.store.list_lease_resources("default", "old").unwrap().is_empty());
}

#[test]
fn rfc3339_as_go_parses_it() {
    let at = |s: &str| parse_rfc3339(s).map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    assert_eq!(at("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(at("2001-02-03T04:05:06Z"), Some(981_173_106_000_000_000));
    assert_eq!(at("2001-02-03T06:05:06+02:00"), Some(981_173_106_000_000_000));
    assert_eq!(at("2001-02-03T03:35:06-00:30"), Some(981_173_106_000_000_000));
    assert_eq!(at("2001-02-03T04:05:06.25Z"), Some(981_173_106_250_000_000));
    assert_eq!(at("2000-02-29T00:00:00Z"), Some(951_782_400_000_000_000));
    for bad in [
        "",
        "2001-02-03",
        "2001-02-03 04:05:06Z",
        "2001-02-03T04:05:06",
        "2001-02-30T00:00:00Z",
        "2001-13-01T00:00:00Z",
        "2001-02-03T04:05:06.Z",
        "2001-02-03T04:05:06+0200",
    ] {
        assert_eq!(parse_rfc3339(bad), None, "{bad}");
    }
}

#[tokio::test]
async fn a_container_holds_its_snapshot_and_the_snapshots_parents() {
    let f = fixture();
    f.chain("default", &["l0", "l1"], None).await;
    f.snapshots.prepare("default", "rootfs", Some("l1"), Labels::new(), None).await.unwrap();
    f.chain("default", &["other"], None).await;
    f.store.create_container("default", container("c1", "rootfs", &[])).await.unwrap();
    // A container without a snapshot holds none.
    f.store.create_container("default", container("c2", "", &[])).await.unwrap();

    let stats = f.collect().await;
    assert_eq!((stats.snapshots, stats.backend_snapshots), (1, 1), "{stats:?}");
    assert_eq!(f.snapshot_names("default"), ["l0", "l1", "rootfs"]);
    assert_eq!(f.backend.keys().len(), 3);

    f.store.delete_container("default", "c1").await.unwrap();
    let stats = f.collect().await;
    assert_eq!((stats.snapshots, stats.backend_snapshots), (3, 3), "{stats:?}");
    assert!(f.backend.keys().is_empty());
}

#[tokio::test]
async fn snapshot_and_content_labels_reference_each_other() {
    let f = fixture();
    f.chain("default", &["base", "layer"], None).await;
    f.chain("default", &["named"], None).await;
    f.chain("default", &["unheld"], None).await;
    let blob = f.put("default", b"held by a snapshot", &[], None).await;
    // A snapshot referencing content; the snapshot is a root.
    let snap_labels = labels(&[("containerd.io/gc.root", "1"), ("containerd.io/gc.ref.content.x", blob.as_str())]);
    f.snapshots.prepare("default", "root", None, snap_labels, None).await.unwrap();
    // Content referencing snapshots, plain and named; the content is held by an image.
    let refs = [("containerd.io/gc.ref.snapshot.mem", "layer"), ("containerd.io/gc.ref.snapshot.mem/second", "named")];
    let config = f.put("default", b"config", &refs, None).await;
    f.image("default", "img", &config).await;
    // A container label referencing a snapshot of another snapshotter holds nothing here.
    let c = container("c", "", &[("containerd.io/gc.ref.snapshot.other", "unheld")]);
    f.store.create_container("default", c).await.unwrap();

    let stats = f.collect().await;
    assert_eq!(stats.snapshots, 1, "{stats:?}");
    assert_eq!(f.snapshot_names("default"), ["base", "layer", "named", "root"]);
    assert!(f.has("default", &blob) && f.has("default", &config));
}

#[tokio::test]
async fn namespaces_are_collected_apart() {
    let f = fixture();
    let manifest = f.put("a", b"shared blob", &[], None).await;
    f.image("a", "img", &manifest).await;
    // Namespace b has the same blob (imported: the file is shared) and nothing holds it there.
    let again = f.put("b", b"shared blob", &[], None).await;
    assert_eq!(again, manifest);
    f.chain("b", &["img"], None).await;
    f.chain("a", &["img"], None).await;
    f.store.create_container("a", container("c", "img", &[])).await.unwrap();

    let stats = f.collect().await;
    assert_eq!((stats.content, stats.blobs, stats.snapshots), (1, 0, 1), "{stats:?}");
    assert!(f.has("a", &manifest) && !f.has("b", &manifest));
    assert!(f.blob_file(&manifest).exists(), "namespace a still has the blob");
    assert_eq!(f.snapshot_names("a"), ["img"]);
    assert!(f.snapshot_names("b").is_empty());
    assert_eq!(f.backend.keys().len(), 1);

    f.store.delete_image("a", "img").await.unwrap();
    let stats = f.collect().await;
    assert_eq!((stats.content, stats.blobs), (1, 1), "{stats:?}");
    assert!(!f.blob_file(&manifest).exists());
}

#[tokio::test]
async fn sandbox_labels_hold_what_they_reference() {
    let f = fixture();
    let blob = f.put("default", b"sandbox blob", &[], None).await;
    let sb = Sandbox {
        id: "s".into(),
        runtime: Some(crate::store::Runtime { name: "rt".into(), options: None }),
        labels: labels(&[("containerd.io/gc.ref.content", blob.as_str())]),
        ..Default::default()
    };
    f.store.create_sandbox("default", sb).await.unwrap();
    assert_eq!(f.collect().await.content, 0);
    assert!(f.has("default", &blob));
}

#[tokio::test]
async fn a_flat_lease_does_not_follow_labels() {
    let f = fixture();
    f.lease("default", "flat", &[("containerd.io/gc.flat", "true")]).await;
    let referenced = f.put("default", b"referenced", &[], None).await;
    let refs = [("containerd.io/gc.ref.content", referenced.as_str())];
    let held = f.put("default", b"held flat", &refs, Some("flat")).await;
    f.chain("default", &["p"], None).await;
    f.snapshots.prepare("default", "child", Some("p"), Labels::new(), Some("flat".into())).await.unwrap();
    f.collect().await;
    assert!(f.has("default", &held) && !f.has("default", &referenced));
    assert_eq!(f.snapshot_names("default"), ["child", "p"], "parents are still followed");
}

#[tokio::test]
async fn backend_snapshots_no_record_names_are_removed_children_first() {
    let f = fixture();
    f.chain("default", &["kept"], None).await;
    f.store.create_container("default", container("c", "kept", &[])).await.unwrap();
    // What a crash between a backend call and its record leaves: a chain of three, and a child
    // left on a snapshot that has a record.
    let kept_key = f.store.get_snapshot("default", "mem", "kept").unwrap().backend_key;
    f.backend.add("crash/1", None, Kind::Committed).unwrap();
    f.backend.add("crash/2", Some("crash/1"), Kind::Committed).unwrap();
    f.backend.add("crash/3", Some("crash/2"), Kind::Active).unwrap();
    f.backend.add("crash/child", Some(&kept_key), Kind::Active).unwrap();

    let stats = f.collect().await;
    assert_eq!((stats.snapshots, stats.backend_snapshots), (0, 4), "{stats:?}");
    assert_eq!(f.backend.keys(), [kept_key]);
    assert_eq!(*f.backend.cleanups.lock().unwrap(), 1, "the backend's cleanup ran after removing");
}

#[test]
fn removal_order_keeps_named_chains_and_removes_leaves_first() {
    let info = |name: &str, parent: Option<&str>| Info {
        kind: Kind::Committed,
        name: name.into(),
        parent: parent.map(String::from),
        labels: Default::default(),
        created: SystemTime::UNIX_EPOCH,
        updated: SystemTime::UNIX_EPOCH,
    };
    let infos = [
        info("d", Some("c")),
        info("a", None),
        info("c", Some("b")),
        info("b", Some("a")),
        info("x", Some("b")),
        info("y", None),
        info("z", Some("missing")),
    ];
    let named: HashSet<String> = ["x".to_string(), "not-in-backend".to_string()].into();
    assert_eq!(removal_order(&infos, &named), ["d", "c", "y", "z"]);
    assert_eq!(removal_order(&infos, &HashSet::new()), ["d", "c", "x", "b", "a", "y", "z"]);
}

#[tokio::test]
async fn ingests_are_kept_while_leased_held_or_fresh_and_stale_ones_aborted() {
    // Every ingest is stale at once.
    let f = fixture_with_expiry(Duration::ZERO);
    f.lease("default", "l", &[]).await;
    let mut leased = f.content.writer("default", "leased", 0, None, Some("l".into())).await.unwrap();
    leased.write(0, b"part".to_vec()).await.unwrap();
    drop(leased);
    let mut held = f.content.writer("default", "held", 0, None, None).await.unwrap();
    held.write(0, b"being written".to_vec()).await.unwrap();
    let mut stale = f.content.writer("other", "stale", 0, None, None).await.unwrap();
    stale.write(0, b"abandoned".to_vec()).await.unwrap();
    drop(stale);

    let stats = f.collect().await;
    assert_eq!(stats.ingests, 1, "{stats:?}");
    let refs = |statuses: Vec<crate::content::IngestStatus>| -> Vec<String> {
        statuses.into_iter().map(|s| s.reference).collect()
    };
    let left = refs(f.content.list_statuses("default").await.unwrap());
    assert_eq!(left, ["held", "leased"], "leased, and locked by its writer");
    assert!(f.content.list_statuses("other").await.unwrap().is_empty());
    // The held one commits fine afterwards.
    held.commit(0, None, BTreeMap::new()).await.unwrap();
}

#[tokio::test]
async fn a_live_ingest_keeps_the_blob_it_is_expected_to_become() {
    let f = fixture();
    let data = b"written twice";
    let digest = Digest::sha256_of(data);
    // A slow writer starts the blob (fresh: the expiry is an hour), a fast one commits it first.
    let mut slow = f.content.writer("default", "slow", 0, Some(digest.clone()), None).await.unwrap();
    slow.write(0, data[..4].to_vec()).await.unwrap();
    drop(slow);
    let mut fast = f.content.writer("default", "fast", 0, None, None).await.unwrap();
    fast.write(0, data.to_vec()).await.unwrap();
    fast.commit(0, Some(digest.clone()), BTreeMap::new()).await.unwrap();
    let unexpected = f.put("default", b"nobody expects this", &[], None).await;

    f.collect().await;
    assert!(f.has("default", &digest), "the slow writer's ingest expects it");
    assert!(!f.has("default", &unexpected));
    f.content.abort("default", "slow", None).await.unwrap();
    f.collect().await;
    assert!(!f.has("default", &digest) && !f.blob_file(&digest).exists());
}

#[tokio::test]
async fn a_commit_holding_the_sweep_guard_is_never_swept_half_way() {
    let f = fixture();
    f.lease("default", "l", &[]).await;
    // What a content commit does, step by step: the guard, the blob file in place, the record.
    let data = b"racing the collector";
    let digest = Digest::sha256_of(data);
    let guard = f.store.guard_against_sweep().await;
    let mut w = f.content.writer("default", "race", 0, None, Some("l".into())).await.unwrap();
    w.write(0, data.to_vec()).await.unwrap();
    let blobs = BlobStore::open(&f.dir.path().join("content")).unwrap();
    std::fs::write(blobs.blob_path(&digest).unwrap(), data).unwrap();

    // The collection runs its record pass, then waits for the guard before looking at files.
    let Fixture { dir, content, collector, .. } = f;
    let collecting = tokio::spawn(async move { collector.collect().await.unwrap() });
    let blob_file = dir.path().join("content/blobs/sha256").join(digest.encoded());
    for _ in 0..50 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(!collecting.is_finished(), "the sweep must wait for the guard");
    }
    assert!(blob_file.exists());
    // The record commits (the commit finds the file there and only records it), then the guard goes.
    let record = content.metadata().clone();
    let info = crate::store::ContentInfo { digest: digest.to_string(), size: data.len() as i64, ..Default::default() };
    let lease = crate::store::ContentLease { id: "l".into(), ingest: None };
    assert!(record.commit_content("default", info, Some(lease)).await.unwrap().created);
    drop(guard);
    let stats = collecting.await.unwrap();
    assert_eq!(stats.blobs, 0, "{stats:?}");
    assert!(blob_file.exists() && content.info("default", &digest).is_ok());
    // The writer's own commit would have waited for the guard like the collector: it finds the
    // blob there and the record made.
    let committed = w.commit(data.len() as u64, Some(digest.clone()), BTreeMap::new()).await.unwrap();
    assert!(!committed.created);
}

#[tokio::test]
async fn an_import_whose_blob_was_collected_fails_instead_of_recording_nothing() {
    let f = fixture();
    let digest = f.put("a", b"imported", &[], None).await;
    // Namespace b starts importing a's blob ...
    let mut w = f.content.writer("b", "imp", 0, Some(digest.clone()), None).await.unwrap();
    // ... and a lets go of it before b commits.
    f.store.delete_content("a", digest.as_str(), None).await.unwrap();
    assert_eq!(f.collector.collect().await.unwrap().blobs, 1);
    let err = w.commit(0, Some(digest.clone()), BTreeMap::new()).await.unwrap_err();
    assert!(matches!(&err, Error::FailedPrecondition(m) if m.contains("garbage collected")), "{err:?}");
    assert!(!f.has("b", &digest));
}

#[tokio::test]
async fn records_of_a_snapshotter_that_is_not_loaded_are_still_collected() {
    let f = fixture();
    let record = crate::store::Snapshot {
        name: "k".into(),
        backend_key: "default/1/k".into(),
        kind: crate::store::KIND_ACTIVE,
        ..Default::default()
    };
    f.store.create_snapshot("default", "absent", record, None).await.unwrap();
    let stats = f.collect().await;
    assert_eq!((stats.snapshots, stats.backend_snapshots), (1, 0), "{stats:?}");
    // And a lease resource naming it holds it.
    f.lease("default", "l", &[]).await;
    let record = crate::store::Snapshot { name: "k2".into(), backend_key: "x".into(), kind: 2, ..Default::default() };
    f.store.create_snapshot("default", "absent", record, Some("l".into())).await.unwrap();
    let r = LeaseResource { id: "k2".into(), kind: "snapshots/absent".into() };
    assert_eq!(f.store.list_lease_resources("default", "l").unwrap(), [r]);
    assert_eq!(f.collect().await.snapshots, 0);
}
