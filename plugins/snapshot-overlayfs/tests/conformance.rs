//! The snapshot kind's conformance suite (`berth_core::testsuite::snapshot`) against the overlayfs backend,
//! where overlayfs works (it needs root and a kernel with overlayfs; otherwise the test says why it skipped).

use berth_plugin_snapshot_overlayfs::OverlaySnapshotter;

#[tokio::test]
async fn overlayfs_passes_the_snapshot_suite() {
    let dir = tempfile::tempdir().unwrap();
    let overlay = match OverlaySnapshotter::open(&dir.path().join("root")) {
        Ok(overlay) => overlay,
        Err(e) => return eprintln!("skipping: overlayfs does not work here: {e}"),
    };
    berth_core::testsuite::snapshot::run_all(&overlay, dir.path()).await;
    let left: Vec<_> = std::fs::read_dir(dir.path().join("root/snapshots")).unwrap().collect();
    assert!(left.is_empty(), "snapshot directories left: {left:?}");
    let root: Vec<_> = std::fs::read_dir(dir.path().join("root")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(root.len(), 3, "only lock, metadata and snapshots in the root: {root:?}");
}
