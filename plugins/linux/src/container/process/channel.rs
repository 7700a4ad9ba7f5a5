//! Sync messages between the runtime and its children over a SOCK_SEQPACKET socketpair.
//!
//! Seqpacket keeps message boundaries, and a closed peer reads as EOF: a child that dies, or that execs (the fds
//! are close-on-exec), ends the conversation without a message. Each side closes the other side's end right
//! after fork, so EOF is reliable.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use serde::{Deserialize, Serialize};

use super::sys;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub enum Msg {
    /// Parent → child: carry on (the child is in the cgroup, the maps are written, ...).
    Go,
    /// Intermediate → parent: I unshared the user namespace, write my uid_map/gid_map.
    MapIds,
    /// Init or exec'd process → parent: my pid as the runtime sees it.
    Pid(i32),
    /// Init → parent: namespaces exist and mounts are done; run prestart and createRuntime hooks now.
    RunHooks,
    /// Init → parent: set up and waiting on exec.fifo.
    Ready,
    /// Child → parent: a step failed; the message names it.
    Error(String),
}

pub struct Channel(OwnedFd);

pub fn pair() -> io::Result<(Channel, Channel)> {
    let (a, b) = sys::socketpair_seqpacket()?;
    Ok((Channel(a), Channel(b)))
}

impl Channel {
    pub fn send(&self, msg: &Msg) -> io::Result<()> {
        let buf = serde_json::to_vec(msg).map_err(io::Error::other)?;
        loop {
            // SAFETY: buf is valid for its length.
            let r = unsafe {
                libc::send(self.0.as_raw_fd(), buf.as_ptr() as *const libc::c_void, buf.len(), libc::MSG_NOSIGNAL)
            };
            if r >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(err);
            }
        }
    }

    /// The next message; `Ok(None)` when the peer is gone.
    pub fn recv(&self) -> io::Result<Option<Msg>> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: buf is valid for its length.
            let r = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if r < 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(err);
            }
            if r == 0 {
                return Ok(None);
            }
            let msg = serde_json::from_slice(&buf[..r as usize]).map_err(io::Error::other)?;
            return Ok(Some(msg));
        }
    }

    /// Waits for [`Msg::Go`]; anything else (or EOF) is an error.
    pub fn wait_go(&self) -> io::Result<()> {
        match self.recv()? {
            Some(Msg::Go) => Ok(()),
            Some(other) => Err(io::Error::other(format!("unexpected message {other:?}"))),
            None => Err(io::Error::other("runtime went away")),
        }
    }
}

impl std::os::fd::FromRawFd for Channel {
    unsafe fn from_raw_fd(fd: std::os::fd::RawFd) -> Self {
        // SAFETY: forwarded to the caller.
        Channel(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}
