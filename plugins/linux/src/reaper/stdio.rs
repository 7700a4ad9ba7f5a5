//! A process's standard streams, from the FIFO paths the client made (as `ctr` does with `--fifo-dir`).
//!
//! - stdout and stderr without a terminal: the FIFO is opened read-write and handed to the process as is. Opening
//!   read-write never blocks waiting for the client (containerd PR#2551), and the process's own fd keeps a read
//!   end open, so it never dies of SIGPIPE when the client goes away (rust-extensions#154); the client sees EOF
//!   when the last process holding it exits, because the reaper keeps no copy.
//! - stdin without a terminal: a pipe the reaper feeds from the FIFO, so that CloseIO can close it and the
//!   process reads EOF while the client's FIFO stays open.
//! - with a terminal: the pty master comes back from the container (created from its own devpts); the reaper
//!   copies stdin FIFO → master and master → stdout FIFO, and closes the stdout FIFO when the master reports
//!   that every slave holder is gone.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::protocol::Stdio;

fn open(path: &Path, flags: i32) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: valid C string; the fd is owned by the result.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd < 0 { Err(io::Error::last_os_error()) } else { Ok(unsafe { OwnedFd::from_raw_fd(fd) }) }
}

fn open_stream(path: &str, flags: i32, which: &str) -> io::Result<OwnedFd> {
    if path.is_empty() {
        return open(Path::new("/dev/null"), libc::O_RDWR);
    }
    let p = Path::new(path);
    let meta = std::fs::metadata(p).map_err(|e| io::Error::new(e.kind(), format!("{which} {path}: {e}")))?;
    use std::os::unix::fs::FileTypeExt;
    // A regular file is fine too (a log file); anything else (a directory, a device) is refused.
    if !meta.file_type().is_fifo() && !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{which} {path}: not a fifo or a file")));
    }
    let flags = if meta.is_file() { (flags & !libc::O_RDWR) | libc::O_WRONLY | libc::O_APPEND } else { flags };
    let flags = if which == "stdin" && meta.is_file() { libc::O_RDONLY } else { flags };
    open(p, flags).map_err(|e| io::Error::new(e.kind(), format!("{which} {path}: {e}")))
}

/// A read-only, non-blocking end of the FIFO at `path` (opening it never waits for a writer).
pub fn open_fifo_reader(path: &str) -> io::Result<OwnedFd> {
    open(Path::new(path), libc::O_RDONLY | libc::O_NONBLOCK)
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The streams of one process before it is created: what the child gets and what the reaper keeps.
pub struct Opened {
    /// Handed to the process as 0, 1 and 2 (closed here after create).
    pub child: [OwnedFd; 3],
    /// With a terminal: the reaper's end of the console socketpair, and the container's end.
    pub console: Option<(OwnedFd, OwnedFd)>,
    /// Kept by the reaper: the stdin FIFO and, without a terminal, the pipe's write end.
    pub stdin_fifo: Option<OwnedFd>,
    pub stdin_pipe: Option<OwnedFd>,
    /// With a terminal: the stdout FIFO the reaper copies the master into.
    pub stdout_fifo: Option<OwnedFd>,
}

impl Opened {
    pub fn child_fds(&self) -> [RawFd; 3] {
        [self.child[0].as_raw_fd(), self.child[1].as_raw_fd(), self.child[2].as_raw_fd()]
    }
}

/// Opens the streams `stdio` names. Errors name the stream and path.
pub fn open_all(stdio: &Stdio) -> io::Result<Opened> {
    let null = || open(Path::new("/dev/null"), libc::O_RDWR);
    let stdin_fifo = if stdio.stdin.is_empty() {
        None
    } else {
        Some(open_stream(&stdio.stdin, libc::O_RDWR | libc::O_NONBLOCK, "stdin")?)
    };
    if stdio.terminal {
        let stdout_fifo = if stdio.stdout.is_empty() {
            None
        } else {
            Some(open_stream(&stdio.stdout, libc::O_RDWR | libc::O_NONBLOCK, "stdout")?)
        };
        let console = socketpair()?;
        return Ok(Opened {
            child: [null()?, null()?, null()?],
            console: Some(console),
            stdin_fifo,
            stdin_pipe: None,
            stdout_fifo,
        });
    }
    let (child_in, stdin_pipe) = match &stdin_fifo {
        Some(_) => {
            let (r, w) = pipe()?;
            set_nonblocking(w.as_raw_fd())?;
            (r, Some(w))
        }
        None => (null()?, None),
    };
    let out = open_stream(&stdio.stdout, libc::O_RDWR, "stdout")?;
    let err = open_stream(&stdio.stderr, libc::O_RDWR, "stderr")?;
    Ok(Opened { child: [child_in, out, err], console: None, stdin_fifo, stdin_pipe, stdout_fifo: None })
}

/// Copies bytes from one fd to another without blocking, a buffer at a time.
pub struct Pump {
    pub src: OwnedFd,
    pub dst: OwnedFd,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The source reported end of stream (or EIO from a pty master whose slaves are all closed).
    pub src_done: bool,
    /// The destination cannot take more (the reader went away for good).
    pub dst_broken: bool,
}

const PUMP_BUF: usize = 32 * 1024;

impl Pump {
    pub fn new(src: OwnedFd, dst: OwnedFd) -> io::Result<Pump> {
        set_nonblocking(src.as_raw_fd())?;
        set_nonblocking(dst.as_raw_fd())?;
        Ok(Pump { src, dst, buf: Vec::new(), start: 0, end: 0, src_done: false, dst_broken: false })
    }

    /// Whether there are bytes waiting for the destination.
    pub fn pending(&self) -> bool {
        self.start < self.end
    }

    /// Finished: nothing more will come and nothing is waiting (or can be delivered).
    pub fn finished(&self) -> bool {
        self.dst_broken || (self.src_done && !self.pending())
    }

    /// The poll entry this pump needs now: the source for reading or, with bytes waiting, the destination.
    pub fn interest(&self) -> Option<(RawFd, i16)> {
        if self.finished() {
            None
        } else if self.pending() {
            Some((self.dst.as_raw_fd(), libc::POLLOUT))
        } else {
            Some((self.src.as_raw_fd(), libc::POLLIN))
        }
    }

    /// Moves what it can; call when its fd polled ready.
    pub fn run(&mut self) {
        loop {
            if self.pending() {
                // SAFETY: the range is inside buf.
                let n = unsafe {
                    libc::write(
                        self.dst.as_raw_fd(),
                        self.buf[self.start..].as_ptr() as *const libc::c_void,
                        self.end - self.start,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                        return;
                    }
                    self.dst_broken = true;
                    return;
                }
                self.start += n as usize;
                continue;
            }
            if self.src_done {
                return;
            }
            if self.buf.is_empty() {
                self.buf = vec![0u8; PUMP_BUF];
            }
            // SAFETY: buf has PUMP_BUF bytes.
            let n = unsafe { libc::read(self.src.as_raw_fd(), self.buf.as_mut_ptr() as *mut libc::c_void, PUMP_BUF) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => return,
                    // EIO: a pty master whose slave side is closed everywhere.
                    _ => {
                        self.src_done = true;
                        return;
                    }
                }
            }
            if n == 0 {
                self.src_done = true;
                return;
            }
            self.start = 0;
            self.end = n as usize;
        }
    }
}

/// Sets a terminal's window size.
pub fn resize(master: RawFd, width: u16, height: u16) -> io::Result<()> {
    let ws = libc::winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize.
    if unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
