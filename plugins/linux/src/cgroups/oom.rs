//! OOM notification ([`Cgroup::oom_watcher`]).
//!
//! - v1 (and hybrid, where memory is a v1 controller): an eventfd registered on `memory.oom_control`
//!   through `cgroup.event_control`. The kernel signals it on every OOM condition of the cgroup, and
//!   also once when the cgroup is removed; that last one is not counted. A condition is signalled before
//!   the OOM killer acts, and one kill may follow several conditions, so where `memory.oom_control`
//!   counts kills (`oom_kill`, Linux 4.13 and later) the watcher reports increases of that count: a
//!   signal with no new kill yet leaves the watcher [pending](OomWatcher::pending) until the kill is
//!   counted. Older kernels: each wake-up is reported.
//! - v2: inotify on `memory.events`, counting increases of its `oom_kill` field (containerd does the same).
//!
//! Poll [`OomWatcher::fd`] for readability, then call [`OomWatcher::check`]; while
//! [`OomWatcher::pending`], call [`OomWatcher::recount`] every few milliseconds.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::error::{CgroupError, Result};
use super::files::{self, flat_keyed_get, read_opt};
use super::{Cgroup, Loc};

/// Watches one cgroup for OOM kills. The fd is non-blocking and close-on-exec.
#[derive(Debug)]
pub struct OomWatcher {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    V1 {
        eventfd: OwnedFd,
        /// Kept open for as long as the registration lives.
        _oom_control: File,
        /// Gone once the cgroup is removed, which is how a removal wake-up is told from an OOM.
        event_control: PathBuf,
        /// `memory.oom_control`, and the kills it counted when last read; None where the kernel does not count.
        oom_control: PathBuf,
        kills: Option<u64>,
        /// Since when an OOM condition waits for its kill to be counted.
        pending: Option<Instant>,
    },
    V2 {
        inotify: OwnedFd,
        events: PathBuf,
        last: u64,
    },
}

fn sys(op: impl Into<String>) -> CgroupError {
    CgroupError::Sys { op: op.into(), err: io::Error::last_os_error() }
}

impl Cgroup {
    /// Starts watching the cgroup for OOM kills (needs the memory controller).
    pub fn oom_watcher(&self) -> Result<OomWatcher> {
        match self.require("memory", "OOM notification")? {
            Loc::V1(dir) => {
                let control_path = dir.join("memory.oom_control");
                let oom_control =
                    File::open(&control_path).map_err(|err| CgroupError::Read { path: control_path.clone(), err })?;
                // SAFETY: eventfd has no memory-safety preconditions; the result is checked before use.
                let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
                if fd < 0 {
                    return Err(sys("eventfd"));
                }
                // SAFETY: fd is a freshly created descriptor owned by nobody else.
                let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
                let event_control = dir.join("cgroup.event_control");
                files::write(&event_control, &format!("{} {}", eventfd.as_raw_fd(), oom_control.as_raw_fd()))?;
                let kills = read_v1_kills(&control_path)?;
                Ok(OomWatcher {
                    inner: Inner::V1 {
                        eventfd,
                        _oom_control: oom_control,
                        event_control,
                        oom_control: control_path,
                        kills,
                        pending: None,
                    },
                })
            }
            Loc::V2(dir) => {
                let events = dir.join("memory.events");
                // SAFETY: inotify_init1 has no memory-safety preconditions; the result is checked.
                let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
                if fd < 0 {
                    return Err(sys("inotify_init1"));
                }
                // SAFETY: fd is a freshly created descriptor owned by nobody else.
                let inotify = unsafe { OwnedFd::from_raw_fd(fd) };
                let c_path = std::ffi::CString::new(events.as_os_str().as_encoded_bytes()).map_err(|_| {
                    CgroupError::InvalidPath { path: events.display().to_string(), reason: "contains NUL" }
                })?;
                // SAFETY: c_path is a valid NUL-terminated string, inotify a valid descriptor.
                if unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), c_path.as_ptr(), libc::IN_MODIFY) } < 0 {
                    return Err(sys(format!("inotify_add_watch {}", events.display())));
                }
                let last = read_oom_kill(&events)?.unwrap_or(0);
                Ok(OomWatcher { inner: Inner::V2 { inotify, events, last } })
            }
        }
    }
}

/// How long a v1 OOM condition waits for a kill to be counted before it is taken for one that ended
/// without a kill (or for a second signal of a kill reported already).
const PENDING_LIMIT: Duration = Duration::from_secs(1);

/// The `oom_kill` count of a v1 `memory.oom_control`; None when the kernel does not count kills.
fn read_v1_kills(oom_control: &std::path::Path) -> Result<Option<u64>> {
    Ok(read_opt(oom_control)?.and_then(|t| flat_keyed_get(&t, "oom_kill")))
}

fn read_oom_kill(events: &std::path::Path) -> Result<Option<u64>> {
    Ok(read_opt(events)?.map(|t| flat_keyed_get(&t, "oom_kill").unwrap_or(0)))
}

/// Reads from a non-blocking fd; `Ok(None)` when nothing is pending.
fn read_nonblocking(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Option<usize>> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(CgroupError::Sys { op: "reading the oom watcher fd".into(), err });
    }
    Ok(Some(n as usize))
}

impl OomWatcher {
    /// The descriptor to poll for readability.
    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.inner {
            Inner::V1 { eventfd, .. } => eventfd.as_fd(),
            Inner::V2 { inotify, .. } => inotify.as_fd(),
        }
    }

    /// The number of new OOM kills since the last call, and drains the fd.
    ///
    /// v1: the increase of `oom_kill` in `memory.oom_control` (the watcher stays pending while a signalled
    /// condition has no kill counted yet), or on kernels without that count 1 for each wake-up; 0 once the
    /// cgroup has been removed. v2: the increase of `oom_kill` in `memory.events`, 0
    /// once it is gone.
    pub fn check(&mut self) -> Result<u64> {
        match &mut self.inner {
            Inner::V1 { eventfd, event_control, kills, pending, .. } => {
                let mut buf = [0u8; 8];
                let Some(n) = read_nonblocking(eventfd.as_fd(), &mut buf)? else { return Ok(0) };
                if n != 8 {
                    return Ok(0);
                }
                if !event_control.exists() {
                    // The cgroup was removed: the kernel signals the eventfd on removal too.
                    *pending = None;
                    return Ok(0);
                }
                if kills.is_none() {
                    return Ok(u64::from(u64::from_ne_bytes(buf) > 0));
                }
                if pending.is_none() {
                    *pending = Some(Instant::now());
                }
                self.recount()
            }
            Inner::V2 { inotify, events, last } => {
                let mut buf = [0u8; 4096];
                while read_nonblocking(inotify.as_fd(), &mut buf)?.is_some_and(|n| n > 0) {}
                let Some(now) = read_oom_kill(events)? else { return Ok(0) };
                let new = now.saturating_sub(*last);
                *last = now;
                Ok(new)
            }
        }
    }

    /// Whether a v1 OOM condition waits for its kill to be counted: call [`OomWatcher::recount`] soon.
    pub fn pending(&self) -> bool {
        matches!(self.inner, Inner::V1 { pending: Some(_), .. })
    }

    /// The kills counted since the last call, without waiting on the fd (v1 with a kill count; 0 otherwise).
    /// Ends the pending state once a kill is counted, or after a second without one.
    pub fn recount(&mut self) -> Result<u64> {
        let Inner::V1 { oom_control, kills: Some(last), pending, .. } = &mut self.inner else { return Ok(0) };
        let Some(now) = read_v1_kills(oom_control)? else {
            // The cgroup is gone.
            *pending = None;
            return Ok(0);
        };
        let new = now.saturating_sub(*last);
        *last = now;
        if new > 0 || pending.is_some_and(|since| since.elapsed() >= PENDING_LIMIT) {
            *pending = None;
        }
        Ok(new)
    }
}

impl AsFd for OomWatcher {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}

impl AsRawFd for OomWatcher {
    fn as_raw_fd(&self) -> RawFd {
        self.fd().as_raw_fd()
    }
}
