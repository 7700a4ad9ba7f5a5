//! The real `ctr` (containerd 1.6, Debian's package) against berthd.

use crate::harness::*;

#[test]
fn ctr_version_and_plugins() {
    let daemon = Daemon::start();
    let out = daemon.ctr_ok(&["version"]);
    assert!(out.contains("Server:"), "{out}");
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    let plugins = daemon.ctr_ok(&["plugins", "ls"]);
    let store = plugins.lines().find(|l| l.contains("io.containerd.metadata.v1")).expect(&plugins);
    assert!(store.contains("lmdb") && store.trim_end().ends_with("ok"), "{store}");
}

#[test]
fn ctr_namespaces() {
    let daemon = Daemon::start();
    daemon.ctr_ok(&["namespaces", "create", "team-a", "owner=alice"]);
    let ls = daemon.ctr_ok(&["namespaces", "ls"]);
    assert!(ls.lines().any(|l| l.starts_with("team-a") && l.contains("owner=alice")), "{ls}");
    daemon.ctr_ok(&["namespaces", "label", "team-a", "tier=gold"]);
    let ls = daemon.ctr_ok(&["namespaces", "ls"]);
    assert!(
        ls.lines().any(|l| l.starts_with("team-a") && l.contains("owner=alice") && l.contains("tier=gold")),
        "{ls}"
    );
    let dup = fails(daemon.ctr(&["namespaces", "create", "team-a"]), "duplicate namespace");
    assert!(dup.contains("already exists"), "{dup}");
    daemon.ctr_ok(&["namespaces", "rm", "team-a"]);
    let ls = daemon.ctr_ok(&["namespaces", "ls", "-q"]);
    assert!(!ls.lines().any(|l| l == "team-a"), "{ls}");
}

#[test]
fn ctr_containers_create_ls_info_label_rm() {
    let daemon = Daemon::start();
    let rootfs = rootfs(&daemon);
    let rootfs = rootfs.to_str().unwrap();
    daemon.ctr_ok(&["containers", "create", "--rootfs", "--label", "app=web", rootfs, "c1", "/bin/sh"]);
    daemon.ctr_ok(&["-n", "other", "containers", "create", "--rootfs", rootfs, "c2", "/bin/true"]);

    let ls = daemon.ctr_ok(&["containers", "ls"]);
    let row = ls.lines().find(|l| l.starts_with("c1")).unwrap_or_else(|| panic!("c1 not listed:\n{ls}"));
    assert!(row.contains("io.containerd.runc.v2"), "{row}");
    assert!(!ls.contains("c2"), "namespace other leaked into default:\n{ls}");
    let filtered = daemon.ctr_ok(&["containers", "ls", "labels.app==web"]);
    assert!(filtered.contains("c1"), "{filtered}");
    let none = daemon.ctr_ok(&["containers", "ls", "labels.app==db"]);
    assert!(!none.contains("c1"), "{none}");

    let info = daemon.ctr_ok(&["containers", "info", "c1"]);
    let json: serde_json::Value = serde_json::from_str(&info).unwrap_or_else(|e| panic!("{e}: {info}"));
    assert_eq!(json["ID"], "c1");
    assert_eq!(json["Runtime"]["Name"], "io.containerd.runc.v2");
    assert_eq!(json["Labels"]["app"], "web");
    assert_eq!(json["Spec"]["root"]["path"], rootfs, "{info}");
    assert_eq!(json["Spec"]["process"]["args"][0], "/bin/sh");

    let labels = daemon.ctr_ok(&["containers", "label", "c1", "tier=front"]);
    assert!(labels.contains("tier=front") && labels.contains("app=web"), "{labels}");
    // `key=` removes a label, as in containerd.
    daemon.ctr_ok(&["containers", "label", "c1", "tier="]);
    let info: serde_json::Value = serde_json::from_str(&daemon.ctr_ok(&["containers", "info", "c1"])).unwrap();
    assert_eq!(info["Labels"], serde_json::json!({"app": "web"}));

    let dup = fails(daemon.ctr(&["containers", "create", "--rootfs", rootfs, "c1", "/bin/sh"]), "duplicate container");
    assert!(dup.contains("already exists"), "{dup}");

    daemon.ctr_ok(&["containers", "rm", "c1"]);
    let ls = daemon.ctr_ok(&["containers", "ls", "-q"]);
    assert!(!ls.contains("c1"), "{ls}");
    let missing = fails(daemon.ctr(&["containers", "info", "c1"]), "info of a removed container");
    assert!(missing.contains("not found"), "{missing}");
    // The namespace still holds c2: ctr cannot delete it.
    let busy = fails(daemon.ctr(&["namespaces", "rm", "other"]), "removing a non-empty namespace");
    assert!(busy.contains("must be empty"), "{busy}");
}
