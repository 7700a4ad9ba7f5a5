//! Start-up, the socket, plugin status, and clean shutdown on SIGTERM and SIGINT.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::harness::*;

#[test]
fn socket_is_0660_and_removed_on_sigint() {
    let mut daemon = Daemon::start();
    let mode = std::fs::metadata(&daemon.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660, "socket mode {:o}", mode & 0o777);
    let dir_mode = std::fs::metadata(daemon.socket.parent().unwrap()).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o002, 0, "socket directory is world-writable");
    let status = daemon.signal_and_wait(SIGINT);
    assert!(status.success(), "{status}");
    assert!(!daemon.socket.exists());
    let log = daemon.log_text();
    assert!(log.contains("SIGINT received") && log.contains("berthd stopped"), "{log}");
}

#[test]
fn startup_logs_loaded_and_skipped_plugins() {
    let daemon = Daemon::start_with("disabled_plugins = [\"service.sandboxes\"]");
    let log = daemon.log_text();
    assert!(log.contains("loaded plugin") && log.contains("store.lmdb"), "{log}");
    assert!(log.contains("skipped plugin") && log.contains("service.sandboxes") && log.contains("disabled"), "{log}");
    let plugins = daemon.ctr_ok(&["plugins", "ls"]);
    let row = plugins.lines().find(|l| l.contains("sandboxes")).expect(&plugins);
    assert!(row.trim_end().ends_with("skip"), "{row}");
    // The disabled service is not served.
    let berth = daemon.berth_ok(&["plugins", "ls"]);
    assert!(berth.contains("sandboxes") && berth.contains("skip"), "{berth}");
}

#[test]
fn required_plugin_that_cannot_load_stops_startup() {
    let mut daemon = Daemon::configure("disabled_plugins = [\"store.lmdb\"]");
    let out = Command::new(BERTHD).arg("--config").arg(&daemon.config).output().unwrap();
    let stderr = fails(out, "berthd with its required store disabled");
    assert!(stderr.contains("required plugin store.lmdb did not load"), "{stderr}");
    assert!(!daemon.socket.exists(), "socket left behind");
    // And the same config without the requirement starts, with the store-backed services failed.
    let text = std::fs::read_to_string(&daemon.config).unwrap().replace("required_plugins = [\"store.lmdb\"]", "");
    std::fs::write(&daemon.config, text).unwrap();
    daemon.spawn();
    let plugins = daemon.berth_ok(&["plugins", "ls"]);
    let row = plugins.lines().find(|l| l.contains("containers")).expect(&plugins);
    assert!(row.contains("error") && row.contains("requires plugin store.lmdb"), "{row}");
}

#[test]
fn second_daemon_on_the_same_socket_is_refused() {
    let daemon = Daemon::start();
    let out = Command::new(BERTHD).arg("--config").arg(&daemon.config).output().unwrap();
    let stderr = fails(out, "a second berthd");
    assert!(stderr.contains("already serving"), "{stderr}");
    // The first one still answers.
    daemon.ctr_ok(&["version"]);
}

#[test]
fn stale_socket_from_a_killed_daemon_is_replaced() {
    let mut daemon = Daemon::start();
    daemon.kill9();
    assert!(daemon.socket.exists(), "kill -9 cannot remove the socket");
    daemon.spawn();
    daemon.ctr_ok(&["version"]);
}

#[test]
fn world_writable_socket_directory_is_refused() {
    let daemon = Daemon::configure("");
    let dir = daemon.socket.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new(BERTHD).arg("--config").arg(&daemon.config).output().unwrap();
    let stderr = fails(out, "berthd with a world-writable socket directory");
    assert!(stderr.contains("writable by others"), "{stderr}");
}

#[test]
fn socket_owner_comes_from_grpc_uid_and_gid() {
    if !requires_root() {
        return;
    }
    let mut daemon = Daemon::configure("");
    let text =
        std::fs::read_to_string(&daemon.config).unwrap().replace("[grpc]\n", "[grpc]\nuid = 65534\ngid = 65533\n");
    std::fs::write(&daemon.config, text).unwrap();
    daemon.spawn();
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65533));
    assert_eq!(meta.mode() & 0o777, 0o660);
}
