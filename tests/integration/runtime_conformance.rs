//! The runtime kind's conformance suite (`berth_core::testsuite::runtime`) against the built-in Linux runtime,
//! with real busybox containers and the real reaper binary.

use std::time::Duration;

use berth_core::runtime::{CreateOptions, ExecOptions};
use berth_core::testsuite::runtime::{Fixture, NAMESPACE, run_all};
use berth_plugin_linux::runtime::{LinuxConfig, LinuxRuntime};

use crate::harness::*;

/// The spec ctr 1.6 generates for `ctr run --rootfs`, pointed at a busybox rootfs.
struct Busybox {
    rootfs: std::path::PathBuf,
}

impl Busybox {
    fn spec(&self, id: &str, args: &[&str]) -> serde_json::Value {
        let mut spec: serde_json::Value = serde_json::from_str(include_str!("../../bench/src/spec.json")).unwrap();
        spec["root"] = serde_json::json!({ "path": self.rootfs });
        spec["process"]["args"] = serde_json::json!(args);
        spec["process"]["env"] = serde_json::json!(["PATH=/bin"]);
        spec["linux"]["cgroupsPath"] = format!("/{NAMESPACE}/{id}").into();
        spec
    }
}

fn create(spec: serde_json::Value) -> CreateOptions {
    CreateOptions { spec: Some(spec_any(&spec.to_string())), ..Default::default() }
}

impl Fixture for Busybox {
    fn exits(&self, id: &str, code: u32) -> CreateOptions {
        create(self.spec(id, &["sh", "-c", &format!("exit {code}")]))
    }
    fn runs_until_killed(&self, id: &str) -> CreateOptions {
        create(self.spec(id, &["sleep", "1000"]))
    }
    fn exec_exits(&self, code: u32) -> Option<ExecOptions> {
        let process = serde_json::json!({ "args": ["sh", "-c", format!("exit {code}")], "cwd": "/", "env": ["PATH=/bin"],
            "user": { "uid": 0, "gid": 0 } });
        Some(ExecOptions {
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: process.to_string().into_bytes(),
            }),
            ..Default::default()
        })
    }
    fn can_pause(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn linux_runtime_passes_the_runtime_suite() {
    if !requires_root() {
        return;
    }
    // Only for its temporary directories and busybox rootfs: the suite drives the runtime directly.
    let daemon = Daemon::configure("");
    let state = daemon.dir.path().join("state/runtime.linux");
    let runtime = LinuxRuntime::new(state.clone(), BERTH_REAPER.into(), &LinuxConfig::default());
    assert_eq!(runtime.recover(Duration::from_millis(500)).await, (0, 0));
    let fixture = Busybox { rootfs: daemon.busybox_rootfs() };
    run_all(&runtime, &fixture, "linux").await;
    let left: Vec<_> = daemon.task_dirs();
    assert!(left.is_empty(), "task directories left: {left:?}");
    for ctl in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(ctl.path().join(NAMESPACE));
    }
}
