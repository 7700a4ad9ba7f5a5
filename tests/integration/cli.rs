//! The `berth` command line against berthd.

use crate::harness::*;

#[test]
fn berth_version_namespaces_and_plugins() {
    let daemon = Daemon::start();
    let version = daemon.berth_ok(&["version"]);
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");

    daemon.berth_ok(&["namespaces", "create", "dev", "owner=bob"]);
    daemon.berth_ok(&["namespaces", "label", "dev", "tier=gold"]);
    let ls = daemon.berth_ok(&["namespaces", "ls"]);
    let row = ls.lines().find(|l| l.starts_with("dev")).unwrap_or_else(|| panic!("{ls}"));
    assert!(row.contains("owner=bob") && row.contains("tier=gold"), "{row}");
    daemon.berth_ok(&["namespaces", "label", "dev", "tier="]);
    let json: serde_json::Value =
        serde_json::from_str(&daemon.berth_ok(&["--format", "json", "namespaces", "ls"])).unwrap();
    let dev = json.as_array().unwrap().iter().find(|n| n["name"] == "dev").unwrap();
    assert_eq!(dev["labels"], serde_json::json!({"owner": "bob"}));

    let err = fails(daemon.berth(&["namespaces", "create", "dev"]), "duplicate namespace");
    assert!(err.contains("already exists"), "{err}");
    let err = fails(daemon.berth(&["namespaces", "label", "dev", "novalue"]), "label without =");
    assert!(err.contains("novalue"), "{err}");
    daemon.berth_ok(&["namespaces", "rm", "dev"]);
    assert!(!daemon.berth_ok(&["namespaces", "ls", "-q"]).lines().any(|l| l == "dev"));

    let plugins = daemon.berth_ok(&["plugins", "ls"]);
    assert!(plugins.lines().any(|l| l.contains("lmdb") && l.contains("ok")), "{plugins}");
}

#[test]
fn berth_containers_made_by_ctr() {
    let daemon = Daemon::start();
    let rootfs = rootfs(&daemon);
    daemon.ctr_ok(&[
        "-n",
        "ns1",
        "containers",
        "create",
        "--rootfs",
        "--label",
        "app=web",
        rootfs.to_str().unwrap(),
        "web",
        "/bin/sh",
    ]);
    let ls = daemon.berth_ok(&["-n", "ns1", "containers", "ls"]);
    assert!(ls.lines().any(|l| l.starts_with("web") && l.contains("io.containerd.runc.v2")), "{ls}");
    assert!(
        daemon.berth_ok(&["-n", "ns1", "containers", "ls", "labels.app==db"]).lines().all(|l| !l.starts_with("web"))
    );

    let info: serde_json::Value =
        serde_json::from_str(&daemon.berth_ok(&["-n", "ns1", "containers", "info", "web"])).unwrap();
    assert_eq!(info["id"], "web");
    assert_eq!(info["labels"]["app"], "web");

    daemon.berth_ok(&["-n", "ns1", "containers", "label", "web", "tier=front"]);
    let info: serde_json::Value =
        serde_json::from_str(&daemon.ctr_ok(&["-n", "ns1", "containers", "info", "web"])).unwrap();
    assert_eq!(info["Labels"]["tier"], "front");

    // BERTH_NAMESPACE picks the namespace when -n is not given.
    let out = std::process::Command::new(BERTH)
        .args(["--address", daemon.socket.to_str().unwrap(), "--format", "json", "containers", "ls"])
        .env("BERTH_NAMESPACE", "ns1")
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&ok(out, "berth containers ls with BERTH_NAMESPACE")).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);

    daemon.berth_ok(&["-n", "ns1", "containers", "rm", "web"]);
    let err = fails(daemon.berth(&["-n", "ns1", "containers", "info", "web"]), "info of a removed container");
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn berth_reports_an_unreachable_daemon() {
    let out =
        std::process::Command::new(BERTH).args(["--address", "/nonexistent/berth.sock", "version"]).output().unwrap();
    let err = fails(out, "berth against no daemon");
    assert!(err.contains("/nonexistent/berth.sock"), "{err}");
}
