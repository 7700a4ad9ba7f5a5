//! berthd's side of the reaper spawner ([`crate::reaper::spawner`]): one `berth-reaper spawner` process kept
//! ready, which forks each task's reaper daemon on request, instead of a fork and exec of `berth-reaper create`
//! per task.
//!
//! A create sends the task directory with the write end of a fresh pipe, and reads the daemon's reply frame
//! from the read end; dropping the read end (a timeout) makes the daemon's reply fail, and the daemon undoes
//! the container, as with `berth-reaper create`. A spawner that died is started again on the next create; one
//! that cannot be started is reported, and the caller falls back to `berth-reaper create`.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::socket::{AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair};
use tokio::io::AsyncReadExt;

use crate::reaper::protocol::{MAX_FRAME, Reply};
use crate::reaper::spawner::{MAX_REQUEST, READY};

/// The fd number the spawner gets its socket on.
const SPAWNER_FD: i32 = 3;

/// The running spawner, if any.
pub(super) struct Spawner {
    reaper: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    running: Option<Running>,
    /// After a failed start: no new one before this, so that a reaper that cannot be a spawner (an older
    /// binary at reaper_path) costs one try a minute, not one per create.
    no_start_before: Option<Instant>,
}

/// How long creates go to `berth-reaper create` after the spawner failed to start.
const START_BACKOFF: Duration = Duration::from_secs(60);

struct Running {
    sock: OwnedFd,
    /// Kept so the spawner is reaped when it exits (tokio waits for dropped children in the background).
    _child: tokio::process::Child,
}

/// Why the spawner could not take a create; the caller falls back to `berth-reaper create`.
#[derive(Debug, thiserror::Error)]
pub(super) enum SpawnError {
    #[error("starting {path} spawner: {err}")]
    Start { path: String, err: io::Error },
    #[error("sending the request to the spawner: {0}")]
    Send(io::Error),
    #[error("task directory {0} is too long for a spawner request")]
    TooLong(String),
    #[error("the reaper spawner failed to start less than {} s ago", START_BACKOFF.as_secs())]
    BackingOff,
}

/// What came back on the reply pipe.
pub(super) enum Outcome {
    Reply(Reply),
    /// The daemon closed the pipe without replying (it crashed or was killed).
    Closed,
}

impl Spawner {
    pub(super) fn new(reaper: PathBuf) -> Spawner {
        Spawner { reaper, state: Mutex::new(State::default()) }
    }

    /// Starts the spawner now, so the first create does not wait for it. A failure is only logged: creates
    /// fall back to `berth-reaper create`, and try to start it again after [`START_BACKOFF`].
    pub(super) fn start(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = state.ensure_running(self) {
            tracing::warn!("runtime.linux: {e}; tasks are created by berth-reaper create");
        }
    }

    /// Hands the task in `dir` to the spawner; returns the pipe its daemon replies on.
    pub(super) fn request(&self, dir: &Path) -> Result<OwnedFd, SpawnError> {
        let path = dir.as_os_str().as_bytes();
        if path.len() > MAX_REQUEST {
            return Err(SpawnError::TooLong(dir.display().to_string()));
        }
        let (read_end, write_end) = pipe().map_err(SpawnError::Send)?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Once more with a fresh spawner when the one we had is gone.
        for attempt in 0..2 {
            let sock = &state.ensure_running(self)?.sock;
            let fds = [write_end.as_raw_fd()];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            match sendmsg::<()>(sock.as_raw_fd(), &[IoSlice::new(path)], &cmsg, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(_) => return Ok(read_end),
                Err(e)
                    if attempt == 0
                        && matches!(e, nix::Error::EPIPE | nix::Error::ECONNRESET | nix::Error::ENOTCONN) =>
                {
                    tracing::warn!("runtime.linux: the reaper spawner is gone ({e}); starting another");
                    state.running = None;
                }
                Err(e) => return Err(SpawnError::Send(e.into())),
            }
        }
        unreachable!("the second attempt returns")
    }

    fn spawn(&self) -> Result<Running, SpawnError> {
        let start = |err| SpawnError::Start { path: self.reaper.display().to_string(), err };
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| start(e.into()))?;
        let fd = theirs.as_raw_fd();
        let mut command = tokio::process::Command::new(&self.reaper);
        command.arg("spawner").arg(SPAWNER_FD.to_string()).stdin(std::process::Stdio::null()).kill_on_drop(true);
        // SAFETY: only dup2 between fork and exec (async-signal-safe); it also clears close-on-exec on the copy.
        unsafe {
            command.as_std_mut().pre_exec(move || {
                if libc::dup2(fd, SPAWNER_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(start)?;
        drop(theirs);
        // Handed no task before it says it is ready: a reaper binary without the spawner (an older one at
        // reaper_path) exits instead, and creates fall back to `berth-reaper create` rather than fail.
        if let Err(err) = wait_ready(&ours) {
            let _ = child.start_kill();
            return Err(start(err));
        }
        Ok(Running { sock: ours, _child: child })
    }
}

impl State {
    /// The running spawner, started if there is none (and no recent start failed).
    fn ensure_running(&mut self, spawner: &Spawner) -> Result<&Running, SpawnError> {
        if self.running.is_none() {
            if self.no_start_before.is_some_and(|t| Instant::now() < t) {
                return Err(SpawnError::BackingOff);
            }
            match spawner.spawn() {
                Ok(r) => {
                    self.running = Some(r);
                    self.no_start_before = None;
                }
                Err(e) => {
                    self.no_start_before = Some(Instant::now() + START_BACKOFF);
                    return Err(e);
                }
            }
        }
        Ok(self.running.as_ref().expect("set above"))
    }
}

/// How long a starting spawner may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

fn wait_ready(sock: &OwnedFd) -> io::Result<()> {
    let timeout = libc::timeval { tv_sec: READY_TIMEOUT.as_secs() as libc::time_t, tv_usec: 0 };
    // SAFETY: setsockopt with a timeval of the right size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    let mut buf = [0u8; 16];
    // SAFETY: a receive into a local buffer.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    match n {
        n if n < 0 => {
            let e = io::Error::last_os_error();
            Err(if e.kind() == io::ErrorKind::WouldBlock {
                io::Error::new(io::ErrorKind::TimedOut, format!("not ready within {} s", READY_TIMEOUT.as_secs()))
            } else {
                e
            })
        }
        0 => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "it exited before it was ready (not a spawner?)")),
        n if &buf[..n as usize] == READY => Ok(()),
        n => Err(io::Error::new(io::ErrorKind::InvalidData, format!("it said {:?}, not ready", &buf[..n as usize]))),
    }
}

/// Reads the daemon's reply frame from `read_end` (its length, then the JSON body, as
/// [`crate::reaper::protocol::read_frame`]). The write end stays open in the container's init until it execs, so
/// the frame is read by its length, not to the end of the stream.
pub(super) async fn read_reply(read_end: OwnedFd) -> io::Result<Outcome> {
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(read_end)?;
    let mut len = [0u8; 4];
    match pipe.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Outcome::Closed),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a reply of {len} bytes is too large")));
    }
    let mut body = vec![0u8; len];
    pipe.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map(Outcome::Reply).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: room for two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: new fds, ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
