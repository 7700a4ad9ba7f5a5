//! The snapshot kind's conformance suite (`berth_core::testsuite::snapshot`) against the native backend. The
//! checks that mount snapshots need root and are skipped without it.

use berth_plugin_snapshot_native::NativeSnapshotter;

#[tokio::test]
async fn native_passes_the_snapshot_suite() {
    let dir = tempfile::tempdir().unwrap();
    let native = NativeSnapshotter::open(&dir.path().join("root")).unwrap();
    berth_core::testsuite::snapshot::run_all(&native, dir.path()).await;
    let left: Vec<_> = std::fs::read_dir(dir.path().join("root/snapshots")).unwrap().collect();
    assert!(left.is_empty(), "snapshot directories left: {left:?}");
}
