//! The state directory `<root>/<id>/`: `state.json` (what `state` prints plus what later verbs need) and, while
//! the container is created but not started, `exec.fifo`.
//!
//! The status is not trusted from the file: it is derived from the init pid each time (a recorded pid whose
//! /proc start time differs is a reused pid, i.e. the container stopped), from exec.fifo and from the freezer.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use super::error::Step;
use super::{Error, Result, cgroup};

pub const STATE_FILE: &str = "state.json";
pub const EXEC_FIFO: &str = "exec.fifo";
/// The OCI runtime-spec version this runtime implements.
pub const OCI_VERSION: &str = "1.2.1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Stopped,
    Paused,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Paused => "paused",
        })
    }
}

/// runc's state JSON, field for field (`runc state` output).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: Status,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub owner: String,
}

impl State {
    /// The OCI state passed to hooks on stdin (no runc extras).
    pub fn hook_json(&self) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Hook<'a> {
            oci_version: &'a str,
            id: &'a str,
            status: Status,
            pid: i32,
            bundle: &'a Path,
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            annotations: &'a BTreeMap<String, String>,
        }
        serde_json::to_string(&Hook {
            oci_version: &self.oci_version,
            id: &self.id,
            status: self.status,
            pid: self.pid,
            bundle: &self.bundle,
            annotations: &self.annotations,
        })
        .unwrap_or_default()
    }
}

/// What state.json holds: the public state plus what later verbs need.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    #[serde(flatten)]
    pub state: State,
    /// Field 22 of `/proc/<pid>/stat` when init was created: tells a reused pid from init.
    pub init_start_time: u64,
    /// The cgroup path as given to the cgroup manager.
    pub cgroup_path: String,
    /// The config the container was created with (hooks, process defaults for exec).
    pub config: Spec,
}

pub struct StateDir {
    pub dir: PathBuf,
}

impl StateDir {
    pub fn new(root: &Path, id: &str) -> Self {
        StateDir { dir: root.join(id) }
    }

    /// Creates the directory; an existing one means the id is taken.
    pub fn create(root: &Path, id: &str) -> Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(root)
            .step(|| format!("creating state root {}", root.display()))?;
        let sd = StateDir::new(root, id);
        match fs::DirBuilder::new().mode(0o711).create(&sd.dir) {
            Ok(()) => Ok(sd),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Error::Exists(id.to_string())),
            Err(e) => Err(Error::io(format!("creating state directory {}", sd.dir.display()), e)),
        }
    }

    pub fn fifo(&self) -> PathBuf {
        self.dir.join(EXEC_FIFO)
    }

    pub fn load(&self) -> Result<Record> {
        let path = self.dir.join(STATE_FILE);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::NotExist),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        let mut rec: Record = serde_json::from_slice(&data)
            .map_err(|e| Error::Other(format!("corrupt state file {}: {e}", path.display())))?;
        rec.state.status = self.status(&rec);
        Ok(rec)
    }

    /// Writes state.json atomically (temp file + rename): a crash of any process leaves the old or the new
    /// file, never half. Not fsync'd, as runc does not: the state lives in a runtime directory (`/run`), whose
    /// containers a machine crash ends anyway, and an fsync cost 0.5-5 ms per write on a busy disk, twice per
    /// create.
    pub fn save(&self, rec: &Record) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(".state.json.tmp");
        let data = serde_json::to_vec(rec).map_err(|e| Error::Other(format!("encoding state: {e}")))?;
        let write = || -> io::Result<()> {
            let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(&data)?;
            fs::rename(&tmp, &path)
        };
        write().step(|| format!("writing {}", path.display()))
    }

    /// The live status: stopped if init is gone (or its pid was reused), created while exec.fifo exists,
    /// paused when the freezer says so, else running.
    pub fn status(&self, rec: &Record) -> Status {
        if rec.state.status == Status::Creating {
            return Status::Creating;
        }
        if !init_alive(rec.state.pid, rec.init_start_time) {
            return Status::Stopped;
        }
        if self.fifo().exists() {
            return Status::Created;
        }
        if cgroup::is_frozen(&rec.cgroup_path) {
            return Status::Paused;
        }
        Status::Running
    }

    pub fn remove(&self) -> Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", self.dir.display()), e)),
        }
    }
}

/// True while `pid` is the process recorded (same start time) and not a zombie.
pub fn init_alive(pid: i32, start_time: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    match proc_stat(pid) {
        Some((state, start)) => !matches!(state, 'Z' | 'X' | 'x') && (start_time == 0 || start == start_time),
        None => false,
    }
}

/// (state letter, start time) from `/proc/<pid>/stat`.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 overall is index 19 after pid and comm.
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// RFC 3339 with nanoseconds in UTC, like Go's time.RFC3339Nano that runc prints.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format_rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

pub fn format_rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    let mut s = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Writes a pid file the way runc does (no newline), atomically.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("berth-tmp");
    fs::write(&tmp, pid.to_string())
        .and_then(|()| fs::rename(&tmp, path))
        .step(|| format!("writing pid file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(format_rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_700_000_000, 123_000_000), "2023-11-14T22:13:20.123Z");
        assert_eq!(format_rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
    }

    #[test]
    fn own_stat() {
        let (state, start) = proc_stat(std::process::id() as i32).unwrap();
        assert!(state == 'R' || state == 'S');
        assert!(init_alive(std::process::id() as i32, start));
        assert!(!init_alive(std::process::id() as i32, start + 1));
    }
}
