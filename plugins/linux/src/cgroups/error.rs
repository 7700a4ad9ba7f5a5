//! The module's error type: one enum, every variant naming the file, controller or value involved.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::Mode;

/// Errors from cgroup setup, control and accounting.
///
/// Messages are lowercase, start with `cgroups:` and name what failed, e.g.
/// `cgroups: writing "max" to /sys/fs/cgroup/pids/berth/x/pids.max: Invalid argument`.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `statfs` on the cgroup mount point failed, so the layout cannot be detected.
    #[error("cgroups: detecting the cgroup mode: statfs {}: {}", path.display(), os_msg(err))]
    Detect { path: PathBuf, err: io::Error },

    /// Neither cgroup2 at /sys/fs/cgroup nor any cgroup v1 hierarchy is mounted.
    #[error("cgroups: no cgroup hierarchy is mounted (checked /sys/fs/cgroup and /proc/self/mountinfo)")]
    NoHierarchies,

    /// Reading a cgroup file failed.
    #[error("cgroups: reading {}: {}", path.display(), os_msg(err))]
    Read { path: PathBuf, err: io::Error },

    /// Writing a value to a cgroup file failed; this is how the kernel rejects invalid limits.
    #[error("cgroups: writing {value:?} to {}: {}", path.display(), os_msg(err))]
    Write { path: PathBuf, value: String, err: io::Error },

    /// Creating a cgroup directory failed.
    #[error("cgroups: creating {}: {}", path.display(), os_msg(err))]
    Create { path: PathBuf, err: io::Error },

    /// Removing a cgroup directory failed (EBUSY: processes or child cgroups are still there).
    #[error("cgroups: removing {}: {}", path.display(), os_msg(err))]
    Remove { path: PathBuf, err: io::Error },

    /// [`Cgroup::create`](super::Cgroup::create) found the cgroup already there.
    #[error("cgroups: {} already exists", path.display())]
    AlreadyExists { path: PathBuf },

    /// [`Cgroup::open`](super::Cgroup::open) found the cgroup in no hierarchy.
    #[error("cgroups: cgroup {path} does not exist in any hierarchy")]
    NotFound { path: String },

    /// The cgroups path is empty, the root, contains `..`, or is a systemd `slice:prefix:name` path.
    #[error("cgroups: invalid cgroup path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },

    /// A resource value is rejected before it reaches the kernel.
    #[error("cgroups: invalid {what} {value:?}: {reason}")]
    InvalidValue { what: String, value: String, reason: String },

    /// A resource was requested but its controller is mounted nowhere (v1) or not available (v2).
    #[error("cgroups: controller {controller} is not available on this host (needed for {what})")]
    ControllerUnavailable { controller: &'static str, what: &'static str },

    /// The resource or operation cannot be done in this cgroup mode.
    #[error("cgroups: {what} is not supported with cgroup {mode}")]
    Unsupported { what: String, mode: Mode },

    /// `linux.resources.unified` was given but the host is not pure cgroup v2.
    #[error("cgroups: unified resource {key:?} needs cgroup v2, but this host is {mode}")]
    UnifiedNeedsV2 { key: String, mode: Mode },

    /// A cgroup file did not have the expected format.
    #[error("cgroups: parsing {}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },

    /// Waiting for a state change (frozen, thawed, empty) took too long.
    #[error("cgroups: timed out after {timeout:?} waiting for {} to become {what}", path.display())]
    Timeout { what: &'static str, path: PathBuf, timeout: Duration },

    /// Sending a signal to a member process failed (other than it having exited already).
    #[error("cgroups: sending signal {signal} to pid {pid}: {}", os_msg(err))]
    Kill { pid: i32, signal: i32, err: io::Error },

    /// Any other system call (eventfd, inotify, ...) failed.
    #[error("cgroups: {op}: {}", os_msg(err))]
    Sys { op: String, err: io::Error },
}

impl CgroupError {
    /// The errno behind this error, if one system call failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Detect { err, .. }
            | Self::Read { err, .. }
            | Self::Write { err, .. }
            | Self::Create { err, .. }
            | Self::Remove { err, .. }
            | Self::Kill { err, .. }
            | Self::Sys { err, .. } => err.raw_os_error(),
            _ => None,
        }
    }

    /// True when the error means a file or directory does not exist (ENOENT).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. }) || self.errno() == Some(libc::ENOENT)
    }
}

/// `Invalid argument` rather than std's `Invalid argument (os error 22)`.
pub(crate) fn os_msg(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
        None => err.to_string(),
    }
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, CgroupError>;
