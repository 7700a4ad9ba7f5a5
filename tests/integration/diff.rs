//! The Diff service end to end with the `containerd-client` crate: a layer written to the
//! content store with Content.Write, applied with Diff.Apply onto a bind mount of a directory;
//! and Diff.Diff of two directories into a layer in the content store.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use berth_core::content::Digest;
use containerd_client::services::v1 as api;
use containerd_client::tonic::codegen::tokio_stream::StreamExt;
use containerd_client::types::{Descriptor, Mount};

use crate::harness::*;

const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A gzip layer of the tree under `dir`, made by GNU tar, and its uncompressed tar.
fn tar_gz(dir: &Path, out: &Path) -> (Vec<u8>, Vec<u8>) {
    let tar_path = out.with_extension("tar");
    let status = Command::new("tar")
        .args(["--numeric-owner", "--sort=name", "-C"])
        .arg(dir)
        .arg("-cf")
        .arg(&tar_path)
        .arg(".")
        .status()
        .expect("running tar");
    assert!(status.success());
    let status = Command::new("gzip").arg("-kf").arg(&tar_path).status().expect("running gzip");
    assert!(status.success());
    let tar = std::fs::read(&tar_path).unwrap();
    let gz = std::fs::read(tar_path.with_extension("tar.gz")).unwrap();
    (gz, tar)
}

/// Writes `data` into the content store of namespace `default` with one Write stream.
async fn write_blob(daemon: &Daemon, reference: &str, data: &[u8]) -> Digest {
    let digest = Digest::sha256_of(data);
    let mut requests = vec![api::WriteContentRequest {
        action: api::WriteAction::Stat as i32,
        r#ref: reference.into(),
        total: data.len() as i64,
        expected: digest.to_string(),
        ..Default::default()
    }];
    let mut offset = 0;
    for piece in data.chunks(1 << 20) {
        requests.push(api::WriteContentRequest {
            action: api::WriteAction::Write as i32,
            offset,
            data: piece.to_vec(),
            ..Default::default()
        });
        offset += piece.len() as i64;
    }
    requests.push(api::WriteContentRequest {
        action: api::WriteAction::Commit as i32,
        offset,
        total: data.len() as i64,
        expected: digest.to_string(),
        ..Default::default()
    });
    let stream = containerd_client::tonic::codegen::tokio_stream::iter(requests);
    let mut client = daemon.client().await.content();
    let mut responses = client.write(ns_request("default", stream)).await.expect("content write").into_inner();
    while let Some(answer) = responses.next().await {
        answer.expect("content write answer");
    }
    digest
}

/// A layer's blob as the content store keeps it on disk, and its content info.
async fn stored_layer(daemon: &Daemon, client: &containerd_client::Client, layer: &Descriptor) -> (Vec<u8>, api::Info) {
    let path = daemon.root().join("content/blobs/sha256").join(layer.digest.trim_start_matches("sha256:"));
    let request = ns_request("default", api::InfoRequest { digest: layer.digest.clone() });
    let info = client.content().info(request).await.expect("content info").into_inner().info.unwrap();
    (std::fs::read(path).unwrap(), info)
}

fn bind(dir: &Path) -> Mount {
    Mount {
        r#type: "bind".into(),
        source: dir.to_str().unwrap().into(),
        target: String::new(),
        options: vec!["rbind".into(), "rw".into()],
    }
}

#[tokio::test]
async fn apply_a_layer_from_the_content_store_onto_a_bind_mount() {
    let daemon = Daemon::start();
    let work = daemon.dir.path();
    let src = work.join("layer-src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hostname"), b"berth\n").unwrap();
    std::os::unix::fs::symlink("hostname", src.join("etc/name")).unwrap();
    std::fs::hard_link(src.join("etc/hostname"), src.join("etc/hostname2")).unwrap();
    let (gz, tar) = tar_gz(&src, &work.join("layer"));
    let blob = write_blob(&daemon, "layer-1", &gz).await;

    let target = work.join("target");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("old"), b"from below").unwrap();
    let request = api::ApplyRequest {
        diff: Some(Descriptor {
            media_type: GZIP_LAYER.into(),
            digest: blob.to_string(),
            size: gz.len() as i64,
            ..Default::default()
        }),
        mounts: vec![bind(&target)],
        ..Default::default()
    };
    let mut diff = daemon.client().await.diff();
    let applied =
        diff.apply(ns_request("default", request.clone())).await.expect("apply").into_inner().applied.unwrap();
    assert_eq!(applied.digest, Digest::sha256_of(&tar).to_string(), "the diff ID: sha256 of the uncompressed tar");
    assert_eq!(applied.size, tar.len() as i64);
    assert_eq!(applied.media_type, "application/vnd.oci.image.layer.v1.tar");
    assert_eq!(std::fs::read(target.join("etc/hostname")).unwrap(), b"berth\n");
    assert_eq!(std::fs::read_link(target.join("etc/name")).unwrap(), Path::new("hostname"));
    let (a, b) = (
        std::fs::metadata(target.join("etc/hostname")).unwrap(),
        std::fs::metadata(target.join("etc/hostname2")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
    assert!(target.join("old").exists(), "the layer adds to what is there");

    // A blob the namespace does not have.
    let mut missing = request.clone();
    missing.diff.as_mut().unwrap().digest = Digest::sha256_of(b"nothing").to_string();
    let err = diff.apply(ns_request("default", missing)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("sha256:"), "{}", err.message());
    let err = diff.apply(ns_request("other", request.clone())).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "another namespace's blob: {err:?}");

    // A layer that tries to write outside is refused, and says which entry.
    let evil = work.join("evil-src");
    std::fs::create_dir(&evil).unwrap();
    std::fs::write(evil.join("x"), b"x").unwrap();
    let out = Command::new("tar")
        .args(["-C"])
        .arg(&evil)
        .args(["-cf", "-", "--transform=s,^x,../escaped,", "--show-transformed-names", "x"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let blob = write_blob(&daemon, "evil", &out.stdout).await;
    let mut request = request;
    request.diff = Some(Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        digest: blob.to_string(),
        size: out.stdout.len() as i64,
        ..Default::default()
    });
    let err = diff.apply(ns_request("default", request)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("../escaped"), "{}", err.message());
    assert!(!work.join("escaped").exists());
}

#[tokio::test]
async fn diff_two_directories_into_a_layer() {
    let daemon = Daemon::start();
    let work = daemon.dir.path();
    let (left, right) = (work.join("left"), work.join("right"));
    std::fs::create_dir_all(left.join("etc")).unwrap();
    std::fs::write(left.join("etc/motd"), b"hi").unwrap();
    std::fs::write(left.join("etc/keep"), b"same").unwrap();
    let status = Command::new("cp").arg("-a").arg(&left).arg(&right).status().unwrap();
    assert!(status.success());
    std::fs::remove_file(right.join("etc/motd")).unwrap();
    std::fs::write(right.join("etc/new"), b"new").unwrap();

    let request = api::DiffRequest {
        left: vec![bind(&left)],
        right: vec![bind(&right)],
        r#ref: "diff-test".into(),
        labels: [("origin".to_string(), "test".to_string())].into(),
        ..Default::default()
    };
    let client = daemon.client().await;
    let layer = client.diff().diff(ns_request("default", request)).await.expect("diff").into_inner().diff.unwrap();
    assert_eq!(layer.media_type, GZIP_LAYER);

    // The layer is in the content store, with containerd's uncompressed label.
    let (blob, info) = stored_layer(&daemon, &client, &layer).await;
    assert_eq!(info.size, layer.size);
    assert_eq!(info.labels.get("origin").map(String::as_str), Some("test"));
    assert_eq!(Digest::sha256_of(&blob).to_string(), layer.digest);
    let listing = work.join("layer.tar.gz");
    std::fs::write(&listing, &blob).unwrap();
    let out = Command::new("tar").arg("-tzf").arg(&listing).output().unwrap();
    assert!(out.status.success());
    let names = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = names.lines().collect();
    assert!(names.contains(&"etc/.wh.motd"), "{names:?}");
    assert!(names.contains(&"etc/new"), "{names:?}");
    assert!(!names.contains(&"etc/keep"), "{names:?}");
    let uncompressed = Command::new("gzip").arg("-dc").arg(&listing).output().unwrap().stdout;
    assert_eq!(info.labels.get("containerd.io/uncompressed"), Some(&Digest::sha256_of(&uncompressed).to_string()));

    // Applied onto a copy of left, it gives right.
    let copy = work.join("copy");
    let status = Command::new("cp").arg("-a").arg(&left).arg(&copy).status().unwrap();
    assert!(status.success());
    let request = api::ApplyRequest { diff: Some(layer), mounts: vec![bind(&copy)], ..Default::default() };
    client.diff().apply(ns_request("default", request)).await.expect("apply");
    assert!(!copy.join("etc/motd").exists());
    assert_eq!(std::fs::read(copy.join("etc/new")).unwrap(), b"new");
    assert_eq!(std::fs::read(copy.join("etc/keep")).unwrap(), b"same");

    // The same diff as a zstd layer: a zstd frame, labelled with its tar's digest, applying the same way.
    const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    let request = api::DiffRequest {
        left: vec![bind(&left)],
        right: vec![bind(&right)],
        media_type: ZSTD_LAYER.into(),
        r#ref: "diff-test-zstd".into(),
        ..Default::default()
    };
    let layer = client.diff().diff(ns_request("default", request)).await.expect("zstd diff").into_inner().diff.unwrap();
    assert_eq!(layer.media_type, ZSTD_LAYER);
    let (blob, info) = stored_layer(&daemon, &client, &layer).await;
    assert_eq!(&blob[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
    let copy = work.join("copy-zstd");
    let status = Command::new("cp").arg("-a").arg(&left).arg(&copy).status().unwrap();
    assert!(status.success());
    let request = api::ApplyRequest { diff: Some(layer), mounts: vec![bind(&copy)], ..Default::default() };
    let applied = client.diff().apply(ns_request("default", request)).await.expect("apply zstd").into_inner();
    assert_eq!(info.labels.get("containerd.io/uncompressed"), Some(&applied.applied.unwrap().digest));
    assert!(!copy.join("etc/motd").exists());
    assert_eq!(std::fs::read(copy.join("etc/new")).unwrap(), b"new");
}
