//! The container process and the OCI verbs: a runc-compatible runtime.
//!
//! Split by role, as youki is:
//! - one file per verb: [`create`](Runtime::create), [`start`](Runtime::start), [`state`](Runtime::state),
//!   [`kill`](Runtime::kill), [`delete`](Runtime::delete), [`exec`](Runtime::exec), [`ps`](Runtime::ps),
//!   [`pause`](Runtime::pause)/[`resume`](Runtime::resume), `run` (create + start + wait) and [`features`];
//! - [`state`]: the state directory `<root>/<id>/` with `state.json` and `exec.fifo`;
//! - `process/`: what runs in the forked children: `fork` (the clone calls), `channel` (sync messages over a
//!   socketpair), `namespaces`, `init` (the container init), `rootfs` (mounts, devices, pivot_root, masked and
//!   readonly paths), `capabilities`, `console`.
//!
//! # Process model
//!
//! ```text
//! berth oci create ──fork──▶ intermediate ──clone(CLONE_PARENT)──▶ init (pid 1 in the container)
//!   (runtime ns)             setns(paths), unshare(user)          mounts, pivot_root, process attributes,
//!                            ◀─ parent writes uid/gid maps ─▶      waits on exec.fifo, execve
//!                            unshare(other namespaces)
//! ```
//! The runtime waits for the intermediate only when it must add it to the cgroup2 cgroup itself (it was not
//! forked into it), and init never waits for the runtime to start: it sends nothing before the intermediate
//! has sent init's pid (it reads a pipe the intermediate closes then), and asks the runtime to run hooks only
//! when the spec has prestart or createRuntime ones. Each round trip skipped is a wake-up on the path of every
//! create.
//!
//! The intermediate exists because a new PID namespace (and joined ones) only applies to children, and because
//! joined namespaces must be entered before the user namespace is created. `CLONE_PARENT` makes init a direct
//! child of the runtime process, so `run` and `exec` can wait for it (a grandchild would be re-parented to host
//! PID 1 and its exit status lost, youki#1601).
//!
//! # Fork safety
//!
//! Between fork and execve the children run ordinary Rust (allocation, std::fs). That is only sound because the
//! forking process is single-threaded: `berth oci` (no tokio runtime) and, later, the per-container reaper. Never
//! call these functions from the multi-threaded daemon: a lock (malloc's, stdout's) held by another thread at fork
//! time stays locked forever in the child (runwasi#357, youki#3027). As a belt-and-braces measure the first fork
//! goes through glibc's `fork()`, whose atfork handlers reset malloc's locks in the child.

mod cgroup;
mod config;
mod create;
mod delete;
mod error;
mod exec;
mod features;
mod hooks;
mod kill;
mod process;
mod ps;
mod start;
pub mod state;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use create::Created;
pub use error::{Error, Result};
pub use exec::ExecOptions;
pub use features::features;
pub use kill::parse_signal;
pub(crate) use process::capabilities::last_cap;
pub use process::console::recv_fd as recv_console;
pub use state::{State, Status};

/// The default state root, like runc's `/run/runc`.
pub const DEFAULT_ROOT: &str = "/run/berth-oci";

/// Options of `create` and `run`.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master when `process.terminal` is true.
    pub console_socket: Option<PathBuf>,
    /// An already connected socket to send the pty master on, instead of `console_socket` (the reaper's
    /// end of a socketpair). Borrowed: the caller keeps and closes it.
    pub console_fd: Option<std::os::fd::RawFd>,
    /// The container's stdin, stdout and stderr; None: inherit the caller's 0, 1 and 2 (as runc does).
    /// Borrowed: the caller closes its copies after create.
    pub stdio: Option<[std::os::fd::RawFd; 3]>,
}

/// The runtime: every verb works on containers under one state root (`--root`).
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Runtime { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Ids of the containers under the root, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(Error::io(format!("reading {}", self.root.display()), e)),
        };
        for entry in entries.flatten() {
            if entry.path().join(state::STATE_FILE).exists() {
                ids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// `run`: create, start and (unless `detach`) wait; returns the container's exit status (code, or 128+signal).
    pub fn run(&self, opts: &CreateOptions, detach: bool) -> Result<i32> {
        self.run_container(opts, detach)
    }
}
