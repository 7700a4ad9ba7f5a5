//! The Snapshots and Images services end to end: `ctr snapshots ...` against both backends (with a
//! real mount of a prepared snapshot), namespace isolation, and image records made with the
//! `containerd-client` crate then listed, labelled and removed by `ctr images` and `berth images`.

use std::path::Path;
use std::process::Command;

use containerd_client::services::v1 as api;
use containerd_client::types::Descriptor;

use crate::harness::*;

/// The keys `ctr snapshots ls` shows, with their parent and kind.
fn ls(daemon: &Daemon, ns: &str, snapshotter: &str) -> Vec<(String, String, String)> {
    let out = daemon.ctr_ok(&["-n", ns, "snapshots", "--snapshotter", snapshotter, "ls"]);
    out.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<_> = line.split_whitespace().collect();
            match f.as_slice() {
                [key, kind] => (key.to_string(), String::new(), kind.to_string()),
                [key, parent, kind] => (key.to_string(), parent.to_string(), kind.to_string()),
                _ => panic!("unexpected ctr snapshots ls line {line:?}"),
            }
        })
        .collect()
}

/// Mounts snapshot `key` at `target` by running the command `ctr snapshots mounts` prints.
fn mount(daemon: &Daemon, snapshotter: &str, target: &Path, key: &str) {
    std::fs::create_dir_all(target).unwrap();
    let target_str = target.to_str().unwrap();
    let out = daemon.ctr_ok(&["snapshots", "--snapshotter", snapshotter, "mounts", target_str, key]);
    let command = out.trim();
    assert!(command.starts_with("mount -t ") && command.contains(target_str), "{command}");
    let status = Command::new("sh").arg("-c").arg(command).status().unwrap();
    assert!(status.success(), "{command}");
}

fn umount(target: &Path) {
    let status = Command::new("umount").arg(target).status().unwrap();
    assert!(status.success(), "umount {}", target.display());
}

fn flow(snapshotter: &str) {
    let daemon = Daemon::start();
    let s = |args: &[&str]| {
        let mut all = vec!["snapshots", "--snapshotter", snapshotter];
        all.extend_from_slice(args);
        daemon.ctr_ok(&all)
    };
    s(&["prepare", "k1"]);
    let target = daemon.dir.path().join("mnt");
    mount(&daemon, snapshotter, &target, "k1");
    std::fs::write(target.join("hello"), "from k1\n").unwrap();
    umount(&target);
    s(&["commit", "c1", "k1"]);
    s(&["prepare", "k2", "c1"]);
    s(&["view", "v1", "c1"]);
    let want = |k: &str, p: &str, kind: &str| (k.to_string(), p.to_string(), kind.to_string());
    assert_eq!(
        ls(&daemon, "default", snapshotter),
        [want("c1", "", "Committed"), want("k2", "c1", "Active"), want("v1", "c1", "View")]
    );
    // k2 sees what k1 wrote.
    mount(&daemon, snapshotter, &target, "k2");
    let read = std::fs::read_to_string(target.join("hello"));
    umount(&target);
    assert_eq!(read.unwrap(), "from k1\n");

    let tree = s(&["tree"]);
    assert!(tree.contains("c1") && tree.contains("k2"), "{tree}");
    let info = s(&["info", "k2"]);
    let json: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!((json["Name"].as_str(), json["Parent"].as_str()), (Some("k2"), Some("c1")), "{info}");
    s(&["label", "k2", "team=a"]);
    let info: serde_json::Value = serde_json::from_str(&s(&["info", "k2"])).unwrap();
    assert_eq!(info["Labels"]["team"], "a");
    let usage = s(&["usage", "c1"]);
    assert!(usage.lines().nth(1).is_some_and(|l| l.starts_with("c1")), "{usage}");

    // A parent with children is refused; the snapshot stays.
    let mut all = vec!["snapshots", "--snapshotter", snapshotter, "rm", "c1"];
    let err = fails(daemon.ctr(&all), "ctr snapshots rm c1");
    assert!(err.contains("parent of other snapshots"), "{err}");
    assert_eq!(ls(&daemon, "default", snapshotter).len(), 3);

    // Another namespace sees none of them, and may use the same keys.
    assert!(ls(&daemon, "other", snapshotter).is_empty());
    daemon.ctr_ok(&["-n", "other", "snapshots", "--snapshotter", snapshotter, "prepare", "k1"]);
    let err = fails(daemon.ctr(&["-n", "other", "snapshots", "--snapshotter", snapshotter, "info", "c1"]), "info");
    assert!(err.contains("not found"), "{err}");

    // Bad input: a duplicate key, an unknown key, an unknown snapshotter; nothing is written.
    let err = fails(daemon.ctr(&["snapshots", "--snapshotter", snapshotter, "prepare", "k2"]), "duplicate");
    assert!(err.contains("already exists"), "{err}");
    let err = fails(daemon.ctr(&["snapshots", "--snapshotter", snapshotter, "mounts", "/tmp/x", "nope"]), "nope");
    assert!(
        err.contains("snapshot \\\"nope\\\" in namespace \\\"default\\\": not found") || err.contains("not found"),
        "{err}"
    );
    let err = fails(daemon.ctr(&["snapshots", "--snapshotter", "zfs", "prepare", "k9"]), "zfs");
    assert!(err.contains("snapshotter \\\"zfs\\\"") || err.contains("zfs"), "{err}");
    assert!(err.contains("native"), "names the loaded ones: {err}");
    assert_eq!(ls(&daemon, "default", snapshotter).len(), 3);

    for key in ["k2", "v1", "c1"] {
        all = vec!["snapshots", "--snapshotter", snapshotter, "rm", key];
        daemon.ctr_ok(&all);
    }
    daemon.ctr_ok(&["-n", "other", "snapshots", "--snapshotter", snapshotter, "rm", "k1"]);
    assert!(ls(&daemon, "default", snapshotter).is_empty());
}

#[test]
fn ctr_snapshots_native() {
    if !requires_root() {
        return;
    }
    flow("native");
}

#[test]
fn ctr_snapshots_overlayfs() {
    if !requires_root() {
        return;
    }
    flow("overlayfs");
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn image(name: &str) -> api::Image {
    api::Image {
        name: name.into(),
        labels: [("team".to_string(), "a".to_string())].into(),
        target: Some(Descriptor {
            media_type: MANIFEST.into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 528,
            annotations: Default::default(),
        }),
        created_at: None,
        updated_at: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_created_by_the_client_are_listed_labelled_and_removed() {
    let daemon = Daemon::start();
    let client = daemon.client().await;
    let mut images = client.images();
    let name = "docker.io/library/busybox:latest";
    let request = api::CreateImageRequest { image: Some(image(name)), source_date_epoch: None };
    images.create(ns_request("default", request)).await.unwrap();
    let request = api::CreateImageRequest { image: Some(image(name)), source_date_epoch: None };
    let err = images.create(ns_request("default", request)).await.unwrap_err();
    assert_eq!(err.code(), containerd_client::tonic::Code::AlreadyExists);
    let bad = api::UpdateImageRequest {
        image: Some(image(name)),
        update_mask: Some(prost_types::FieldMask { paths: vec!["name".into()] }),
        source_date_epoch: None,
    };
    let err = images.update(ns_request("default", bad)).await.unwrap_err();
    assert_eq!(err.code(), containerd_client::tonic::Code::InvalidArgument);
    assert!(err.message().contains("cannot update \"name\""), "{}", err.message());

    let out = daemon.ctr_ok(&["images", "ls"]);
    let row = out.lines().nth(1).unwrap_or_default();
    assert!(row.starts_with(name) && row.contains(MANIFEST) && row.contains("team=a"), "{out}");
    assert!(daemon.ctr_ok(&["-n", "other", "images", "ls", "-q"]).trim().is_empty());
    daemon.ctr_ok(&["images", "label", name, "team=b", "extra=1"]);
    let got = images.get(ns_request("default", api::GetImageRequest { name: name.into() })).await.unwrap();
    let labels = got.into_inner().image.unwrap().labels;
    assert_eq!((labels["team"].as_str(), labels["extra"].as_str()), ("b", "1"));
    assert_eq!(daemon.ctr_ok(&["images", "ls", "-q"]).trim(), name);

    let out = daemon.berth_ok(&["images", "ls"]);
    assert!(out.contains(name) && out.contains(MANIFEST), "{out}");
    let out = daemon.berth_ok(&["images", "inspect", name]);
    assert!(out.contains(&format!("sha256:{}", "a".repeat(64))) && out.contains("\"team\""), "{out}");
    let err = fails(daemon.berth(&["images", "inspect", "nope"]), "berth images inspect nope");
    assert!(err.contains("not found"), "{err}");

    // The namespace cannot go while it holds the image.
    let err = fails(daemon.ctr(&["namespaces", "rm", "default"]), "ctr namespaces rm default");
    assert!(err.contains("images"), "{err}");
    daemon.ctr_ok(&["images", "rm", name]);
    assert!(daemon.ctr_ok(&["images", "ls", "-q"]).trim().is_empty());
    // ctr only warns of a missing image (its exit status stays 0), as against containerd.
    let again = daemon.ctr(&["images", "rm", name]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("not found"), "{err}");
    let err = fails(daemon.berth(&["images", "rm", name]), "berth images rm again");
    assert!(err.contains("not found"), "{err}");

    let request = api::CreateImageRequest { image: Some(image("second")), source_date_epoch: None };
    images.create(ns_request("default", request)).await.unwrap();
    daemon.berth_ok(&["images", "rm", "second"]);
    assert!(daemon.berth_ok(&["images", "ls", "-q"]).trim().is_empty());
}

#[test]
fn berth_snapshots_cli() {
    if !requires_root() {
        return;
    }
    let daemon = Daemon::start();
    let b = |args: &[&str]| {
        let mut all = vec!["snapshots", "--snapshotter", "native"];
        all.extend_from_slice(args);
        daemon.berth_ok(&all)
    };
    b(&["prepare", "k1"]);
    let mounts = b(&["mounts", "/tmp/x", "k1"]);
    assert!(mounts.starts_with("mount -t "), "{mounts}");
    b(&["commit", "c1", "k1"]);
    b(&["prepare", "k2", "c1"]);
    b(&["view", "v1", "c1"]);
    b(&["label", "k2", "team=a"]);
    let info = b(&["info", "k2"]);
    assert!(info.contains("c1") && info.contains("team"), "{info}");
    let out = b(&["ls"]);
    assert!(out.contains("k2") && out.contains("c1") && out.contains("v1"), "{out}");
    let usage = b(&["usage", "c1"]);
    assert!(usage.contains("c1"), "{usage}");
    let err = fails(daemon.berth(&["snapshots", "--snapshotter", "native", "rm", "c1"]), "berth snapshots rm c1");
    assert!(err.contains("parent of other snapshots"), "{err}");
    let err = fails(daemon.berth(&["snapshots", "--snapshotter", "zfs", "ls"]), "zfs");
    assert!(err.contains("zfs"), "{err}");
    b(&["rm", "k2", "v1", "c1"]);
    assert!(!b(&["ls"]).contains("c1"));
    let _ = daemon.ctr_ok(&["snapshots", "--snapshotter", "native", "ls"]);
}
