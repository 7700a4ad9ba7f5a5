//! Garbage collection end to end: a real berthd whose scheduler starts nothing by itself (only
//! start-up and sync requests collect, so every test says when), driven by the real `ctr` and the
//! `containerd-client` crate. What is checked is what containerd's collector does: images,
//! containers, leases and gc labels hold content and snapshots, per namespace; the rest goes,
//! records, blob files and backend snapshots alike.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use berth_core::content::Digest;
use berth_core::snapshot::Snapshotter;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::tonic::codegen::tokio_stream::StreamExt;
use containerd_client::types::Descriptor;

use crate::harness::*;
use crate::images_fixture::{self, BUSYBOX};

/// Collections only at start-up and on request; ingests expire at once when `stale_ingests`.
fn config(stale_ingests: bool) -> String {
    let expiry = if stale_ingests { "0s" } else { "24h" };
    format!(
        "[plugins.\"gc.scheduler\"]\nmutation_threshold = 0\nperiodic_interval = \"0s\"\ningest_expiry = \"{expiry}\"\n"
    )
}

fn start() -> Daemon {
    Daemon::start_with(&config(false))
}

/// A request under lease `lease`, as containerd clients send it.
fn leased<T>(ns: &str, lease: Option<&str>, message: T) -> Request<T> {
    let mut request = ns_request(ns, message);
    if let Some(lease) = lease {
        request.metadata_mut().insert("containerd-lease", lease.parse().unwrap());
    }
    request
}

/// Runs one collection and waits for it: a throwaway lease deleted with `sync`.
async fn collect(daemon: &Daemon) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let id = format!("gc-trigger-{}", N.fetch_add(1, Ordering::Relaxed));
    let mut leases = daemon.client().await.leases();
    let create = api::CreateRequest { id: id.clone(), ..Default::default() };
    leases.create(ns_request("gc-trigger", create)).await.unwrap();
    leases.delete(ns_request("gc-trigger", api::DeleteRequest { id, sync: true })).await.unwrap();
}

async fn create_lease(daemon: &Daemon, ns: &str, id: &str, labels: &[(&str, &str)]) {
    let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let request = api::CreateRequest { id: id.into(), labels };
    daemon.client().await.leases().create(ns_request(ns, request)).await.unwrap();
}

/// Writes `data` into namespace `ns` with one Write stream, committed with `labels`.
async fn write_blob(daemon: &Daemon, ns: &str, lease: Option<&str>, data: &[u8], labels: &[(&str, &str)]) -> Digest {
    let digest = Digest::sha256_of(data);
    let requests = vec![
        api::WriteContentRequest {
            action: api::WriteAction::Stat as i32,
            r#ref: format!("write-{digest}"),
            total: data.len() as i64,
            expected: digest.to_string(),
            ..Default::default()
        },
        api::WriteContentRequest { action: api::WriteAction::Write as i32, data: data.to_vec(), ..Default::default() },
        api::WriteContentRequest {
            action: api::WriteAction::Commit as i32,
            offset: data.len() as i64,
            total: data.len() as i64,
            expected: digest.to_string(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        },
    ];
    let stream = containerd_client::tonic::codegen::tokio_stream::iter(requests);
    let mut content = daemon.client().await.content();
    let mut answers = content.write(leased(ns, lease, stream)).await.expect("content write").into_inner();
    while let Some(answer) = answers.next().await {
        answer.expect("content write answer");
    }
    digest
}

/// Whether namespace `ns` has a record of `digest`.
async fn has_content(daemon: &Daemon, ns: &str, digest: &Digest) -> bool {
    let request = ns_request(ns, api::InfoRequest { digest: digest.to_string() });
    match daemon.client().await.content().info(request).await {
        Ok(_) => true,
        Err(e) if e.code() == Code::NotFound => false,
        Err(e) => panic!("content info {digest}: {e:?}"),
    }
}

fn blob_file(daemon: &Daemon, digest: &Digest) -> PathBuf {
    daemon.root().join("content/blobs/sha256").join(digest.encoded())
}

fn blob_files(daemon: &Daemon) -> usize {
    std::fs::read_dir(daemon.root().join("content/blobs/sha256")).unwrap().count()
}

/// How many snapshots `snapshotter`'s backend keeps on disk, whatever the records say.
fn backend_snapshots(daemon: &Daemon, snapshotter: &str) -> usize {
    let dir = daemon.root().join(format!("snapshot.{snapshotter}/metadata"));
    std::fs::read_dir(dir)
        .map_or(0, |entries| entries.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".json")).count())
}

/// The snapshot keys `ctr snapshots ls` shows in `ns` for `snapshotter`.
fn snapshot_keys(daemon: &Daemon, ns: &str, snapshotter: &str) -> BTreeSet<String> {
    let out = daemon.ctr_ok(&["-n", ns, "snapshots", "--snapshotter", snapshotter, "ls"]);
    out.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

fn keys(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// `ctr content ingest REF` of `data` in `ns`: no lease, nothing holds it.
fn ctr_ingest(daemon: &Daemon, ns: &str, reference: &str, data: &[u8]) -> Digest {
    let path = daemon.dir.path().join(format!("ingest-{reference}"));
    std::fs::write(&path, data).unwrap();
    let out = Command::new(ctr_path())
        .arg("-a")
        .arg(&daemon.socket)
        .args(["-n", ns, "content", "ingest", reference])
        .stdin(Stdio::from(std::fs::File::open(&path).unwrap()))
        .output()
        .unwrap();
    ok(out, "ctr content ingest");
    Digest::sha256_of(data)
}

/// Prepares snapshot `key` (on `parent`) with the client, which, unlike `ctr snapshots prepare`,
/// labels nothing `containerd.io/gc.root`.
async fn prepare(daemon: &Daemon, snapshotter: &str, key: &str, parent: &str) {
    let request = snap::PrepareSnapshotRequest {
        snapshotter: snapshotter.into(),
        key: key.into(),
        parent: parent.into(),
        ..Default::default()
    };
    daemon.client().await.snapshots().prepare(ns_request("default", request)).await.unwrap();
}

/// Commits active snapshot `key` as `name` with the client.
async fn commit(daemon: &Daemon, snapshotter: &str, name: &str, key: &str) {
    let request = snap::CommitSnapshotRequest {
        snapshotter: snapshotter.into(),
        name: name.into(),
        key: key.into(),
        ..Default::default()
    };
    daemon.client().await.snapshots().commit(ns_request("default", request)).await.unwrap();
}

fn manifest_image(name: &str, target: &Digest) -> api::Image {
    api::Image {
        name: name.into(),
        labels: Default::default(),
        target: Some(Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: target.to_string(),
            size: 1,
            annotations: Default::default(),
        }),
        created_at: None,
        updated_at: None,
    }
}

async fn create_image(daemon: &Daemon, ns: &str, name: &str, target: &Digest) {
    let request = api::CreateImageRequest { image: Some(manifest_image(name, target)), source_date_epoch: None };
    daemon.client().await.images().create(ns_request(ns, request)).await.unwrap();
}

#[tokio::test]
async fn an_image_holds_its_manifest_and_what_its_labels_reference_and_sync_delete_removes_them() {
    let daemon = start();
    let layer = write_blob(&daemon, "default", None, b"layer bytes", &[]).await;
    let config = write_blob(&daemon, "default", None, b"{\"config\":1}", &[]).await;
    let refs = [
        ("containerd.io/gc.ref.content.config", config.as_str()),
        ("containerd.io/gc.ref.content.l.0", layer.as_str()),
    ];
    let manifest = write_blob(&daemon, "default", None, b"{\"manifest\":1}", &refs).await;
    let stray = write_blob(&daemon, "default", None, b"nobody's", &[]).await;
    create_image(&daemon, "default", "example.com/app:1", &manifest).await;

    collect(&daemon).await;
    for held in [&manifest, &config, &layer] {
        assert!(has_content(&daemon, "default", held).await && blob_file(&daemon, held).exists(), "{held}");
    }
    assert!(!has_content(&daemon, "default", &stray).await);
    assert!(!blob_file(&daemon, &stray).exists(), "the blob file goes with the last record");

    // Delete with sync: when it returns, the image's content is gone, files included.
    let request = api::DeleteImageRequest { name: "example.com/app:1".into(), sync: true, target: None };
    daemon.client().await.images().delete(ns_request("default", request)).await.unwrap();
    for gone in [&manifest, &config, &layer] {
        assert!(!has_content(&daemon, "default", gone).await && !blob_file(&daemon, gone).exists(), "{gone}");
    }
    assert_eq!(blob_files(&daemon), 0);
    let log = daemon.log_text();
    assert!(log.contains("garbage collected") && log.contains("blobs=3"), "counts logged at info:\n{log}");
}

#[test]
fn ctr_import_keeps_the_whole_image_and_ctr_images_rm_sync_removes_it() {
    if !requires_root() {
        return;
    }
    let daemon = start();
    let busybox = images_fixture::busybox();
    daemon.ctr_ok(&["images", "import", images_fixture::busybox_archive().to_str().unwrap()]);
    // Things nothing holds: a blob ingested without a lease, a snapshot prepared without one.
    let stray = ctr_ingest(&daemon, "default", "stray", b"stray blob");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(prepare(&daemon, "overlayfs", "stray-snapshot", ""));
    // `ctr snapshots prepare` labels what it makes containerd.io/gc.root: that one stays.
    daemon.ctr_ok(&["snapshots", "prepare", "ctr-made"]);
    let chain: BTreeSet<String> = busybox.chain_ids().into_iter().collect();
    let manifest = busybox.manifest();
    let mut needed = vec![Digest::parse(&busybox.manifest_digest()).unwrap()];
    needed.push(Digest::parse(manifest["config"]["digest"].as_str().unwrap()).unwrap());
    for layer in manifest["layers"].as_array().unwrap() {
        needed.push(Digest::parse(layer["digest"].as_str().unwrap()).unwrap());
    }

    rt.block_on(collect(&daemon));
    let mut kept = chain.clone();
    kept.insert("ctr-made".into());
    assert_eq!(snapshot_keys(&daemon, "default", "overlayfs"), kept, "the unpacked chain stays");
    assert_eq!(backend_snapshots(&daemon, "overlayfs"), kept.len());
    daemon.ctr_ok(&["snapshots", "rm", "ctr-made"]);
    for digest in &needed {
        assert!(blob_file(&daemon, digest).exists(), "{digest} of the image was collected");
    }
    assert!(!blob_file(&daemon, &stray).exists());
    let listed = daemon.ctr_ok(&["content", "ls", "-q"]);
    assert!(listed.contains(&busybox.manifest_digest()) && !listed.contains(stray.as_str()), "{listed}");
    // Everything the image needs is still there: it runs.
    let fifo = daemon.fifo_dir();
    let out = daemon.ctr_ok(&[
        "run",
        "--rm",
        "--fifo-dir",
        fifo.to_str().unwrap(),
        BUSYBOX,
        "gc-run",
        "sh",
        "-c",
        "echo still whole",
    ]);
    assert_eq!(out, "still whole\n");

    daemon.ctr_ok(&["images", "rm", "--sync", BUSYBOX]);
    assert!(snapshot_keys(&daemon, "default", "overlayfs").is_empty());
    assert_eq!(backend_snapshots(&daemon, "overlayfs"), 0, "backend snapshots removed with their records");
    assert!(daemon.ctr_ok(&["content", "ls", "-q"]).trim().is_empty());
    assert_eq!(blob_files(&daemon), 0);
}

#[tokio::test]
async fn a_lease_keeps_content_and_snapshots_until_it_is_deleted_with_sync() {
    if !requires_root() {
        return;
    }
    let daemon = start();
    create_lease(&daemon, "default", "work", &[]).await;
    let blob = write_blob(&daemon, "default", Some("work"), b"leased blob", &[]).await;
    let mut snapshots = daemon.client().await.snapshots();
    let prepare =
        snap::PrepareSnapshotRequest { snapshotter: "native".into(), key: "leased".into(), ..Default::default() };
    snapshots.prepare(leased("default", Some("work"), prepare)).await.unwrap();

    collect(&daemon).await;
    assert!(has_content(&daemon, "default", &blob).await && blob_file(&daemon, &blob).exists());
    assert_eq!(snapshot_keys(&daemon, "default", "native"), keys(&["leased"]));
    assert_eq!(backend_snapshots(&daemon, "native"), 1);

    let delete = api::DeleteRequest { id: "work".into(), sync: true };
    daemon.client().await.leases().delete(ns_request("default", delete)).await.unwrap();
    assert!(!has_content(&daemon, "default", &blob).await && !blob_file(&daemon, &blob).exists());
    assert!(snapshot_keys(&daemon, "default", "native").is_empty());
    assert_eq!(backend_snapshots(&daemon, "native"), 0);
}

#[tokio::test]
async fn an_expired_lease_releases_what_it_held_and_goes() {
    let daemon = start();
    create_lease(&daemon, "default", "old", &[("containerd.io/gc.expire", "2020-01-01T00:00:00Z")]).await;
    create_lease(&daemon, "default", "current", &[("containerd.io/gc.expire", "2999-01-01T00:00:00Z")]).await;
    let by_old = write_blob(&daemon, "default", Some("old"), b"held by an expired lease", &[]).await;
    let by_current = write_blob(&daemon, "default", Some("current"), b"held by a current lease", &[]).await;

    collect(&daemon).await;
    assert!(!has_content(&daemon, "default", &by_old).await && !blob_file(&daemon, &by_old).exists());
    assert!(has_content(&daemon, "default", &by_current).await);
    let out = daemon.ctr_ok(&["leases", "ls", "-q"]);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["current"], "the expired lease is removed");
}

#[tokio::test]
async fn a_container_keeps_its_snapshot_and_the_snapshots_parents() {
    if !requires_root() {
        return;
    }
    let daemon = start();
    prepare(&daemon, "native", "base-active", "").await;
    commit(&daemon, "native", "base", "base-active").await;
    prepare(&daemon, "native", "top-active", "base").await;
    commit(&daemon, "native", "top", "top-active").await;
    prepare(&daemon, "native", "rootfs", "top").await;
    prepare(&daemon, "native", "loose", "").await;
    let container = api::Container {
        id: "c1".into(),
        runtime: Some(Runtime { name: "io.containerd.runc.v2".into(), options: None }),
        spec: Some(spec_any(r#"{"ociVersion":"1.1.0"}"#)),
        snapshotter: "native".into(),
        snapshot_key: "rootfs".into(),
        ..Default::default()
    };
    let mut containers = daemon.client().await.containers();
    containers.create(ns_request("default", api::CreateContainerRequest { container: Some(container) })).await.unwrap();
    assert_eq!(backend_snapshots(&daemon, "native"), 4);

    collect(&daemon).await;
    assert_eq!(snapshot_keys(&daemon, "default", "native"), keys(&["base", "rootfs", "top"]));
    assert_eq!(backend_snapshots(&daemon, "native"), 3);

    daemon.ctr_ok(&["containers", "rm", "c1"]);
    collect(&daemon).await;
    assert!(snapshot_keys(&daemon, "default", "native").is_empty());
    assert_eq!(backend_snapshots(&daemon, "native"), 0, "children removed before parents, all of them");
}

#[tokio::test]
async fn snapshot_labels_hold_content_and_other_snapshots() {
    if !requires_root() {
        return;
    }
    let daemon = start();
    let s = |args: &[&str]| {
        let mut all = vec!["snapshots", "--snapshotter", "native"];
        all.extend_from_slice(args);
        daemon.ctr_ok(&all)
    };
    let blob = ctr_ingest(&daemon, "default", "labelled", b"referenced by a snapshot label");
    prepare(&daemon, "native", "extra-active", "").await;
    commit(&daemon, "native", "extra", "extra-active").await;
    prepare(&daemon, "native", "holder", "").await;
    prepare(&daemon, "native", "unheld", "").await;
    let content_ref = format!("containerd.io/gc.ref.content.blob={blob}");
    s(&[
        "label",
        "holder",
        "containerd.io/gc.root=yes",
        &content_ref,
        "containerd.io/gc.ref.snapshot.native/more=extra",
    ]);

    collect(&daemon).await;
    assert!(has_content(&daemon, "default", &blob).await);
    assert_eq!(snapshot_keys(&daemon, "default", "native"), keys(&["extra", "holder"]));

    // Without its root label the holder holds nothing, itself included.
    s(&["label", "holder", "containerd.io/gc.root="]);
    collect(&daemon).await;
    assert!(!has_content(&daemon, "default", &blob).await && !blob_file(&daemon, &blob).exists());
    assert!(snapshot_keys(&daemon, "default", "native").is_empty());
    assert_eq!(backend_snapshots(&daemon, "native"), 0);
}

#[tokio::test]
async fn namespaces_are_collected_apart() {
    let daemon = start();
    let data = b"one blob, two namespaces";
    let digest = ctr_ingest(&daemon, "a", "shared", data);
    assert_eq!(ctr_ingest(&daemon, "b", "shared", data), digest);
    create_image(&daemon, "a", "held-in-a", &digest).await;

    collect(&daemon).await;
    assert!(has_content(&daemon, "a", &digest).await);
    assert!(!has_content(&daemon, "b", &digest).await, "namespace b's record goes: nothing of b holds it");
    assert!(blob_file(&daemon, &digest).exists(), "the file stays: namespace a still has it");
    assert!(daemon.ctr_ok(&["-n", "b", "content", "ls", "-q"]).trim().is_empty());

    let request = api::DeleteImageRequest { name: "held-in-a".into(), sync: true, target: None };
    daemon.client().await.images().delete(ns_request("a", request)).await.unwrap();
    assert!(!has_content(&daemon, "a", &digest).await && !blob_file(&daemon, &digest).exists());
}

#[tokio::test]
async fn stale_ingests_go_leased_ones_stay() {
    let daemon = Daemon::start_with(&config(true));
    create_lease(&daemon, "default", "slow-pull", &[]).await;
    // Two writes broken off half-way: one under a lease, one not.
    for (reference, lease) in [("abandoned", None), ("resumable", Some("slow-pull"))] {
        let requests = vec![
            api::WriteContentRequest {
                action: api::WriteAction::Stat as i32,
                r#ref: reference.into(),
                ..Default::default()
            },
            api::WriteContentRequest {
                action: api::WriteAction::Write as i32,
                data: b"half of it".to_vec(),
                ..Default::default()
            },
        ];
        let stream = containerd_client::tonic::codegen::tokio_stream::iter(requests);
        let mut content = daemon.client().await.content();
        let mut answers = content.write(leased("default", lease, stream)).await.unwrap().into_inner();
        while let Some(answer) = answers.next().await {
            answer.unwrap();
        }
    }
    let active = || {
        daemon
            .ctr_ok(&["content", "active"])
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(active(), keys(&["abandoned", "resumable"]));
    collect(&daemon).await;
    assert_eq!(active(), keys(&["resumable"]));
}

#[test]
fn a_backend_snapshot_a_crash_left_without_a_record_is_removed_at_start_up() {
    if !requires_root() {
        return;
    }
    let mut daemon = start();
    daemon.ctr_ok(&["snapshots", "--snapshotter", "native", "prepare", "kept"]);
    daemon.ctr_ok(&["snapshots", "--snapshotter", "native", "label", "kept", "containerd.io/gc.root=1"]);
    daemon.stop();

    // What a crash between the backend's prepare and the record leaves: snapshots in the backend
    // under keys no record names, one on top of the other.
    let root = daemon.root().join("snapshot.native");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let native = berth_plugin_snapshot_native::NativeSnapshotter::open(&root).unwrap();
        native.prepare("default/00c0ffee00c0ffee/lost", None, Default::default()).await.unwrap();
        native
            .commit("default/00c0ffee00c0ffee/lost-base", "default/00c0ffee00c0ffee/lost", Default::default())
            .await
            .unwrap();
        native
            .prepare(
                "default/00c0ffee00c0ffee/lost-top",
                Some("default/00c0ffee00c0ffee/lost-base"),
                Default::default(),
            )
            .await
            .unwrap();
    });
    assert_eq!(backend_snapshots(&daemon, "native"), 3);

    daemon.spawn();
    // The start-up collection ran before berthd served.
    assert_eq!(backend_snapshots(&daemon, "native"), 1);
    assert_eq!(snapshot_keys(&daemon, "default", "native"), keys(&["kept"]));
    daemon.stop();
    let left = rt.block_on(async {
        let native = berth_plugin_snapshot_native::NativeSnapshotter::open(&root).unwrap();
        native.walk(&|_| true).await.unwrap().into_iter().map(|i| i.name).collect::<Vec<_>>()
    });
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with("default/") && left[0].ends_with("/kept"), "{left:?}");
    let snapshots_dir = root.join("snapshots");
    assert_eq!(
        std::fs::read_dir(&snapshots_dir).unwrap().count(),
        1,
        "no directory left in {}",
        snapshots_dir.display()
    );
}

#[test]
fn the_scheduler_is_listed_as_containerds_gc_plugin() {
    let daemon = Daemon::start();
    let plugins = daemon.ctr_ok(&["plugins", "ls"]);
    let row = plugins.lines().find(|l| l.contains("io.containerd.gc.v1")).unwrap_or_else(|| panic!("{plugins}"));
    assert!(row.contains("scheduler") && row.trim_end().ends_with("ok"), "{row}");
}
