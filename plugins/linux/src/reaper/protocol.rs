//! What berthd and a reaper say to each other over `reaper.sock`: one request per connection, answered by one
//! frame; `Wait` answers when the process exits and `Subscribe` turns the connection into a stream of events.
//! A frame is a 4-byte big-endian length and that many bytes of JSON.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Largest frame either side accepts: specs and stats are a few KiB; this only stops a runaway peer.
pub const MAX_FRAME: usize = 4 << 20;

/// File names inside a task directory.
pub const TASK_FILE: &str = "task.json";
pub const SOCKET_FILE: &str = "reaper.sock";
pub const EXIT_FILE: &str = "exit.json";
pub const PID_FILE: &str = "reaper.pid";
pub const LOG_FILE: &str = "reaper.log";
pub const ROOTFS_DIR: &str = "rootfs";

/// A process's standard streams as the client gave them: FIFO paths, empty for none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// A mount making up the root filesystem (containerd's types.Mount).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsMount {
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub options: Vec<String>,
}

/// `task.json`: what berthd asks the reaper to create. The bundle (with config.json) is the task directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskConfig {
    pub namespace: String,
    pub id: String,
    /// The OCI runtime's state root for this namespace (shared by the namespace's reapers).
    pub oci_root: PathBuf,
    pub stdio: Stdio,
    /// Mounted onto `<task dir>/rootfs` before create when not empty; config.json's root then points there.
    #[serde(default)]
    pub rootfs: Vec<RootfsMount>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub pid: i32,
    /// Exit code, or 128 + signal.
    pub status: u32,
    /// Unix time in nanoseconds.
    pub at_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

/// A process as `State` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcState {
    pub status: ProcStatus,
    pub pid: i32,
    pub exit: Option<ExitInfo>,
    pub stdio: Stdio,
}

/// The answer to `Start`: the started process's pid (berthd's Tasks.Start returns it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub pid: i32,
}

/// One process of the task as `Pids` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidInfo {
    pub pid: i32,
    pub exec_id: Option<String>,
}

/// `exec_id: None` means the task's init process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    State {
        exec_id: Option<String>,
    },
    Start {
        exec_id: Option<String>,
    },
    Kill {
        exec_id: Option<String>,
        signal: i32,
        all: bool,
    },
    /// Registers a process (created, started by `Start`); its streams are opened now so a bad path fails here.
    Exec {
        exec_id: String,
        spec: serde_json::Value,
        stdio: Stdio,
    },
    Resize {
        exec_id: Option<String>,
        width: u16,
        height: u16,
    },
    CloseIo {
        exec_id: Option<String>,
    },
    Pause,
    Resume,
    Pids,
    /// `linux.resources` of the OCI spec, as JSON.
    Update {
        resources: serde_json::Value,
    },
    /// The cgroup's statistics (`cgroups::Stats` as JSON).
    Stats,
    Wait {
        exec_id: Option<String>,
    },
    DeleteProcess {
        exec_id: String,
    },
    /// Removes the task: init must have stopped unless `force` (then everything is killed first). The reaper
    /// answers once the container, its cgroup, its mounts and the task directory are gone, then exits.
    Delete {
        force: bool,
    },
    Subscribe,
}

/// Why a request failed, in the categories the runtime trait reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    /// The process has exited.
    Exited,
    /// The task is not in a state that allows the request.
    FailedPrecondition,
    InvalidArgument,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaperError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ReaperError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ReaperError { kind, message: message.into() }
    }
}

impl std::fmt::Display for ReaperError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The answer to a request: `{"ok": value}` or `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(serde_json::Value),
    Error(ReaperError),
}

/// What a `Subscribe` stream carries. On subscribing, the exits that already happened come first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Exit { exec_id: Option<String>, exit: ExitInfo },
    Oom,
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)
}

/// Reads one frame; None on a clean end of stream before its first byte.
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes is too large")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bound_their_size() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Kill { exec_id: None, signal: 9, all: true }).unwrap();
        let back: Request = read_frame(&mut buf.as_slice()).unwrap().unwrap();
        assert!(matches!(back, Request::Kill { exec_id: None, signal: 9, all: true }));
        assert!(read_frame::<Request>(&mut [].as_slice()).unwrap().is_none());
        let mut huge = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        let err = read_frame::<Request>(&mut huge.as_slice()).unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
    }
}
