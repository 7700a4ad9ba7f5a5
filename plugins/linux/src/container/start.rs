//! `start` (release init through exec.fifo) and `run` (create + start + wait, forwarding signals).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use super::error::Step;
use super::process::sys;
use super::state::{self, StateDir, Status};
use super::{CreateOptions, Error, Result, Runtime, hooks};

impl Runtime {
    /// `start`: the container must be created; unblocks init, runs poststart hooks.
    pub fn start(&self, id: &str) -> Result<()> {
        let sd = StateDir::new(&self.root, id);
        let mut rec = sd.load()?;
        match rec.state.status {
            Status::Created => {}
            Status::Stopped => return Err(Error::Status("cannot start a container that has stopped".into())),
            Status::Creating => {
                return Err(Error::Status("cannot start a container that is still being created".into()));
            }
            Status::Running | Status::Paused => {
                return Err(Error::Status("cannot start an already running container".into()));
            }
        }
        release_init(&sd.fifo(), rec.state.pid, rec.init_start_time)?;
        let _ = std::fs::remove_file(sd.fifo());
        rec.state.status = Status::Running;
        sd.save(&rec)?;
        // The spec says a failing poststart hook is only a warning.
        if let Err(e) = hooks::run(&rec.config, hooks::Kind::Poststart, &rec.state.hook_json()) {
            tracing::warn!("{e}");
        }
        Ok(())
    }

    pub(super) fn run_container(&self, opts: &CreateOptions, detach: bool) -> Result<i32> {
        // The forwarded signals are blocked only in wait_forwarding, after create: init must not inherit a
        // blocked signal mask.
        let created = self.create_container(opts)?;
        if let Err(e) = self.start(&opts.id) {
            let _ = self.delete(&opts.id, true);
            return Err(e);
        }
        if detach {
            return Ok(0);
        }
        let code = wait_forwarding(created.pid)?;
        self.delete(&opts.id, true)?;
        Ok(code)
    }
}

/// Opens the fifo for reading (which unblocks init's open for writing) and reads the byte init writes.
/// Non-blocking with a poll loop, so a dead init is noticed instead of hanging forever.
fn release_init(fifo: &Path, pid: i32, start_time: u64) -> Result<()> {
    let fd = sys::open(fifo, libc::O_RDONLY | libc::O_NONBLOCK, 0).step(|| "opening exec fifo")?;
    let mut file = std::fs::File::from(fd);
    let mut buf = [0u8; 1];
    loop {
        let mut pfd = libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 50) };
        if pfd.revents & libc::POLLIN != 0 {
            match file.read(&mut buf) {
                Ok(1) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(Error::io("reading exec fifo", e)),
            }
        }
        if !state::init_alive(pid, start_time) {
            return Err(Error::Status("container init exited before start".into()));
        }
        if pfd.revents & libc::POLLHUP != 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

const FORWARDED: [libc::c_int; 8] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGPIPE,
];

/// Waits for our child `pid`, forwarding the usual signals to it (like runc run without -d); returns its exit
/// status as a shell reports it.
pub(super) fn wait_forwarding(pid: i32) -> Result<i32> {
    // SAFETY: sigset operations on a local set; signalfd on it. We are single-threaded, so sigprocmask is the
    // process' mask.
    let sfd = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        sys::cvt(libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)).step(|| "signalfd")?
    };
    let result = (|| loop {
        if let Some(status) = sys::waitpid(pid, libc::WNOHANG).step(|| "waiting for the container")? {
            return Ok(sys::exit_code(status));
        }
        // Poll with a timeout rather than trusting SIGCHLD alone: the mask is per thread, and in a process with
        // other threads (tests) the signal may go to a thread that discards it.
        let mut pfd = libc::pollfd { fd: sfd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        // SAFETY: plain data out-parameter of the right size.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: info is valid for `size` bytes.
        let n = unsafe { libc::read(sfd, &mut info as *mut _ as *mut libc::c_void, size) };
        if n == size as isize && info.ssi_signo as i32 != libc::SIGCHLD {
            let _ = sys::kill(pid, info.ssi_signo as i32);
        }
    })();
    // SAFETY: closing our signalfd.
    unsafe { libc::close(sfd) };
    result
}
