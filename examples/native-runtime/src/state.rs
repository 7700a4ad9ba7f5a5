//! What the runtime keeps on disk so a berthd that starts again finds its tasks: one JSON file per task,
//! `<state>/bundles/<namespace>/<id>/task.json`, beside the task's bundle, rewritten (to a temporary file,
//! then renamed) whenever a process of the task is made, starts, ends or is removed.
//!
//! ```text
//! <state dir>/
//!   runc/                     the OCI runtime's own state (--root)
//!   bundles/<ns>/<id>/
//!     config.json             the bundle's spec
//!     rootfs/                 the snapshotter's mounts
//!     task.json               TaskRecord
//!     init.pid, init.exit     the container's pid (from the runtime), its exit status (from the waiter)
//!     exec-<id>.json/.pid/.exit   the same for each exec'd process, and its process spec
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::waiter::WaiterId;

/// A task, as saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRecord {
    /// The namespace.
    pub namespace: String,
    /// The task id.
    pub id: String,
    /// The name the OCI runtime knows the container by.
    pub container: String,
    /// How many mounts make up the rootfs.
    pub mounts: usize,
    /// Its init process.
    pub init: ProcRecord,
    /// Its exec'd processes, by exec id.
    #[serde(default)]
    pub execs: BTreeMap<String, ProcRecord>,
}

/// A process, as saved.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcRecord {
    /// The client's FIFOs.
    pub stdin: String,
    /// The client's FIFOs.
    pub stdout: String,
    /// The client's FIFOs.
    pub stderr: String,
    /// Whether it runs on a terminal.
    #[serde(default)]
    pub terminal: bool,
    /// The process spec of an exec'd process (JSON).
    #[serde(default)]
    pub spec: Option<String>,
    /// `created`, `running` or `stopped` (a paused task is `running`: the OCI runtime knows it is paused).
    pub status: String,
    /// Its host pid, 0 before it starts.
    #[serde(default)]
    pub pid: u32,
    /// The waiter of a started process.
    #[serde(default)]
    pub waiter: Option<WaiterId>,
    /// How it ended: status, and when (seconds and nanoseconds since the epoch).
    #[serde(default)]
    pub exit: Option<(u32, i64, i32)>,
}

/// The task's state file in `bundle`.
pub fn path(bundle: &Path) -> std::path::PathBuf {
    bundle.join("task.json")
}

/// Writes `record` into `bundle` atomically.
pub fn save(bundle: &Path, record: &TaskRecord) -> io::Result<()> {
    let tmp = bundle.join("task.json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(record).expect("a record serializes"))?;
    fs::rename(&tmp, path(bundle))
}

/// Reads the record in `bundle`: None when there is none, an error naming the file when it is unreadable.
pub fn load(bundle: &Path) -> Result<Option<TaskRecord>, String> {
    let file = path(bundle);
    match fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("{}: {e}", file.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", file.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("oci-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(load(&dir), Ok(None));
        let record = TaskRecord {
            namespace: "default".into(),
            id: "t".into(),
            container: "berth-3-t".into(),
            mounts: 2,
            init: ProcRecord {
                stdout: "/fifo/out".into(),
                status: "running".into(),
                pid: 42,
                waiter: Some(WaiterId { pid: 41, start: 1000 }),
                ..Default::default()
            },
            execs: [(
                "e".to_string(),
                ProcRecord { status: "stopped".into(), exit: Some((3, 1, 2)), ..Default::default() },
            )]
            .into(),
        };
        save(&dir, &record).unwrap();
        assert_eq!(load(&dir), Ok(Some(record)));
        fs::write(path(&dir), "{\"namespace\": 1}").unwrap();
        let e = load(&dir).unwrap_err();
        assert!(e.contains("task.json") && e.contains("invalid type"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
