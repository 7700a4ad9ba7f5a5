//! The config file: the embedded default, `--config`, `config default` and `config check`, and
//! located errors for bad files.

use std::process::Command;

use crate::harness::*;

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BERTHD).args(["config", "check"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE");
    (out.status.success(), stderr)
}

#[test]
fn default_config_is_the_repository_file_and_checks_clean() {
    let out = Command::new(BERTHD).args(["config", "default"]).output().unwrap();
    let text = ok(out, "berthd config default");
    assert_eq!(text, include_str!("../../config.toml"));
    let (passed, stderr) = check(&text);
    assert!(passed, "{stderr}");
}

#[test]
fn bad_configs_name_file_line_column_and_key() {
    let default = include_str!("../../config.toml");
    let cases: &[(&str, String, &str)] = &[
        ("malformed TOML", "version = 1\nroot = \"/x\nstate = 2\n".into(), "FILE:2:"),
        (
            "unknown top-level key",
            default.replace("log_level = \"info\"", "log_level = \"info\"\nlog_levle = \"debug\""),
            "key log_levle: unknown field",
        ),
        (
            "wrong type",
            default.replace("shutdown_timeout_secs = 10", "shutdown_timeout_secs = \"ten\""),
            "key shutdown_timeout_secs: invalid type",
        ),
        (
            "bad value",
            default.replace("log_level = \"info\"", "log_level = \"loud\""),
            "key log_level: \"loud\" is not a log level",
        ),
        (
            "relative socket",
            default.replace("address = \"/run/berth/berth.sock\"", "address = \"berth.sock\""),
            "key grpc.address: must be the absolute path",
        ),
        ("unknown grpc key", default.replace("[grpc]", "[grpc]\nport = 1"), "key grpc.port: unknown field"),
        (
            "unknown plugin",
            format!("{default}\n[plugins.\"snapshot.nosuch\"]\n"),
            "key plugins.\"snapshot.nosuch\": no plugin snapshot.nosuch is registered",
        ),
        (
            "unknown plugin key",
            default.replace("max_batch = 256", "max_batch = 256\nmax_bathc = 1"),
            "key plugins.\"store.lmdb\".max_bathc: unknown field",
        ),
        (
            "plugin value wrong type",
            default.replace("max_batch = 256", "max_batch = \"many\""),
            "key plugins.\"store.lmdb\".max_batch: invalid type",
        ),
        (
            "plugin bad value",
            default.replace("max_batch = 256", "max_batch = 0"),
            "key plugins.\"store.lmdb\".max_batch",
        ),
        (
            "bad plugin id in list",
            default.replace("disabled_plugins = []", "disabled_plugins = [\"nodots\"]"),
            "key disabled_plugins",
        ),
        (
            "unknown required plugin",
            default.replace("required_plugins = [\"store.lmdb\"]", "required_plugins = [\"runtime.nosuch\"]"),
            "no plugin runtime.nosuch is registered",
        ),
        (
            "unsupported version",
            default.replace("version = 1", "version = 7"),
            "key version: unsupported config version 7",
        ),
    ];
    for (what, text, expected) in cases {
        let (passed, stderr) = check(text);
        assert!(!passed, "{what}: accepted");
        assert!(stderr.contains(expected), "{what}: expected {expected:?} in:\n{stderr}");
        if *what != "unknown required plugin" {
            assert!(stderr.contains("FILE:"), "{what}: no location in {stderr}");
        }
    }
    // Line and column point at the offending key.
    let (_, stderr) = check(&default.replace("[grpc]", "[grpc]\nport = 1"));
    let line = default.lines().position(|l| l == "[grpc]").unwrap() + 2;
    assert!(stderr.contains(&format!("FILE:{line}:1: key grpc.port")), "{stderr}");
}

#[test]
fn berthd_refuses_to_start_on_a_bad_config_and_leaves_nothing() {
    let daemon = Daemon::configure("bogus = true");
    let out = Command::new(BERTHD).arg("--config").arg(&daemon.config).output().unwrap();
    let stderr = fails(out, "berthd with an unknown key");
    assert!(stderr.contains("key bogus: unknown field"), "{stderr}");
    assert!(!daemon.root().exists(), "root created for a config that was refused");
    assert!(!daemon.socket.exists());
    let missing = Command::new(BERTHD).args(["--config", "/nonexistent/berth.toml"]).output().unwrap();
    let stderr = fails(missing, "berthd with a missing config");
    assert!(stderr.contains("/nonexistent/berth.toml") && stderr.contains("cannot read"), "{stderr}");
}
