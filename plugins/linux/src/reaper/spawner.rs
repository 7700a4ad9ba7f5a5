//! `berth-reaper spawner FD`: a reaper process kept ready, so that creating a task is one fork instead of a
//! fork and exec of `berth-reaper create` (exec, dynamic linking and start-up of the binary took about 6 ms of
//! every `ctr run` here).
//!
//! berthd starts one spawner and keeps the other end of its socket (`FD`, an `AF_UNIX` `SOCK_SEQPACKET`
//! socket). The spawner first sends [`READY`]; a request is then one message: the task directory as its bytes, with the write end of a pipe in
//! `SCM_RIGHTS`. For each, the spawner forks the reaper daemon of the task, which creates the container and
//! writes its reply frame to that pipe, exactly as it writes it to `berth-reaper create` otherwise
//! ([`super::server`]). The spawner itself stays single-threaded and does nothing else, so forking it is as
//! sound as forking a fresh `berth-reaper create`.
//!
//! The fork itself is made ahead of time: the spawner keeps one reaper forked and waiting (`Warm`), hands
//! it the next request, and forks the one after while that reaper creates its container (a fork took 0.1–0.3
//! ms of every create here).
//!
//! The daemons do not depend on the spawner: when berthd closes its end (it stopped, or died), the spawner
//! exits, its waiting reaper with it, and the daemons are re-parented like those of `berth-reaper create`.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};

use super::protocol::{ErrorKind, ReaperError, Reply, write_frame};

/// The longest task directory a request may name.
pub const MAX_REQUEST: usize = 4096;
/// What the spawner sends once, when it is ready for requests.
pub const READY: &[u8] = b"ready";

/// Serves requests on `fd` until berthd closes its end; returns the exit code.
pub fn main(fd: RawFd) -> i32 {
    // Nothing else berthd had open stays open here, or in every reaper forked from here for the life of its
    // container (berthd's files are not all close-on-exec: its LMDB file is not).
    close_fds_from(3, Some(fd));
    // SAFETY: the fd berthd handed us on the command line; nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // Not inherited by the daemons, their containers or anything they exec.
    // SAFETY: plain fcntl on our own fd.
    unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    // Daemons that exit while we live leave no zombie (each sets SIGCHLD back to default for its own children).
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    // What every create looks up on the host and cannot change while it runs, found once here so that the
    // reapers forked from us inherit it: the cgroup layout (mountinfo, /proc/cgroups) and the capability range.
    // A failed detection is retried by each create, which then reports it.
    let _ = crate::cgroups::mode();
    crate::container::last_cap();
    // Ready: berthd waits for this before it hands us tasks (a binary that is not a spawner never says it).
    // SAFETY: a one-byte send on our socket.
    if unsafe { libc::send(sock.as_raw_fd(), READY.as_ptr().cast(), READY.len(), libc::MSG_NOSIGNAL) } < 0 {
        eprintln!("berth-reaper spawner: telling berthd it is ready: {}", io::Error::last_os_error());
        return 1;
    }
    let mut warm = fork_ahead(&sock);
    loop {
        match receive(&sock) {
            Ok(Some((dir, reply))) => {
                spawn(&sock, warm.take(), &dir, reply);
                warm = fork_ahead(&sock);
            }
            // berthd closed its end: it stopped, or died.
            Ok(None) => return 0,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => {
                eprintln!("berth-reaper spawner: receiving a request: {e}");
                return 1;
            }
        }
    }
}

/// One request: the task directory and the reply pipe. Ok(None) at the end of the stream. A malformed request
/// (no fd, or an empty or truncated path) is reported on its pipe when it has one, and skipped.
fn receive(sock: &OwnedFd) -> io::Result<Option<(PathBuf, OwnedFd)>> {
    loop {
        let mut buf = [0u8; MAX_REQUEST];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(io::Error::from)?;
        let (len, truncated) = (msg.bytes, msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC));
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(received) = c {
                // SAFETY: fds the kernel just installed for us.
                fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        if len == 0 && fds.is_empty() {
            return Ok(None);
        }
        let Some(reply) = fds.into_iter().next() else {
            eprintln!("berth-reaper spawner: a request without its reply pipe, skipped");
            continue;
        };
        if len == 0 || truncated {
            let why = if truncated { "longer than the spawner accepts" } else { "empty" };
            let error =
                ReaperError::new(ErrorKind::InvalidArgument, format!("the task directory of the request is {why}"));
            let _ = write_frame(&mut std::fs::File::from(reply), &Reply::Error(error));
            continue;
        }
        return Ok(Some((PathBuf::from(std::ffi::OsStr::from_bytes(&buf[..len])), reply)));
    }
}

/// A reaper daemon forked before its task exists, waiting on its socket for one request of the same form as
/// berthd's. When the spawner ends, the socket reads as end-of-stream and the reaper exits.
struct Warm {
    sock: OwnedFd,
}

/// The reaper for the next task; None if it could not be forked (the next task's is then forked when it comes).
fn fork_ahead(berthd: &OwnedFd) -> Option<Warm> {
    Warm::fork(berthd).inspect_err(|e| eprintln!("berth-reaper spawner: forking a reaper ahead: {e}")).ok()
}

impl Warm {
    fn fork(berthd: &OwnedFd) -> io::Result<Warm> {
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
        // FORK: the task's reaper daemon, which waits for its task. We are single-threaded, so the child may run
        // ordinary code.
        // SAFETY: see above.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: the child's copies of berthd's socket (closing it keeps berthd's end-of-stream ours alone)
            // and of our end; and back to the default SIGCHLD, which the daemon's signalfd needs for its
            // container's exits.
            unsafe {
                libc::close(berthd.as_raw_fd());
                libc::close(ours.as_raw_fd());
                libc::signal(libc::SIGCHLD, libc::SIG_DFL);
            }
            let code = match receive(&theirs) {
                Ok(Some((dir, reply))) => {
                    drop(theirs);
                    super::server::daemon(&dir, reply)
                }
                // The spawner ended before there was a task for us.
                _ => 0,
            };
            // SAFETY: leave without running atexit handlers that belong to the spawner.
            unsafe { libc::_exit(code) };
        }
        if pid < 0 {
            return Err(io::Error::other(format!("fork: {}", io::Error::last_os_error())));
        }
        Ok(Warm { sock: ours })
    }

    /// Gives the request to the waiting reaper. The reply pipe comes back if it could not take it (it died).
    fn hand_over(self, dir: &Path, reply: OwnedFd) -> Option<OwnedFd> {
        let fds = [reply.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let path = [IoSlice::new(dir.as_os_str().as_bytes())];
        match sendmsg::<()>(self.sock.as_raw_fd(), &path, &cmsg, MsgFlags::MSG_NOSIGNAL, None) {
            // The reaper has its own copy of the pipe now.
            Ok(_) => None,
            Err(e) => {
                eprintln!("berth-reaper spawner: handing a task to its reaper: {e}");
                Some(reply)
            }
        }
    }
}

/// Starts the task in `dir`: the reaper forked ahead takes it, or, when there is none or it died, one forked now.
fn spawn(berthd: &OwnedFd, warm: Option<Warm>, dir: &Path, reply: OwnedFd) {
    let reply = match warm {
        Some(w) => w.hand_over(dir, reply),
        None => Some(reply),
    };
    let Some(reply) = reply else { return };
    let (reply, message) = match Warm::fork(berthd) {
        Ok(w) => match w.hand_over(dir, reply) {
            None => return,
            Some(reply) => (reply, "the task's reaper exited before it took the task".to_string()),
        },
        Err(e) => (reply, format!("starting the task's reaper: {e}")),
    };
    let _ = write_frame(&mut std::fs::File::from(reply), &Reply::Error(ReaperError::new(ErrorKind::Internal, message)));
}

/// Closes every fd from `first` up, but `keep`.
pub(super) fn close_fds_from(first: RawFd, keep: Option<RawFd>) {
    let close = |from: RawFd, to: RawFd| {
        if from <= to {
            // SAFETY: closing fd numbers; nothing in this process uses them (see the callers).
            unsafe {
                libc::syscall(libc::SYS_close_range, from as libc::c_uint, to as libc::c_uint, 0 as libc::c_uint)
            };
        }
    };
    match keep {
        Some(k) if k >= first => {
            close(first, k - 1);
            close(k + 1, RawFd::MAX);
        }
        _ => close(first, RawFd::MAX),
    }
}
