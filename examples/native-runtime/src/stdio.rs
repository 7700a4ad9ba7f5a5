//! A process's standard streams from the FIFOs the client made (`ctr` makes one per stream and reads or
//! writes its other end).
//!
//! stdout and stderr are opened (read-write) and handed to the OCI runtime, which copies the container's
//! output into them (`runc run` in the foreground gives the container pipes of its own). stdin goes through a pipe that a thread fills from the FIFO: the container then sees end-of-file
//! when the client closes its end (or CloseIO comes), which a FIFO handed over directly would not give it
//! while anyone, the runtime included, still held it open for writing.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

/// Opens a FIFO (or file) for the process to write to, read-write as containerd's shim does: opening never
/// blocks for a reader, and a client that goes away (a `ctr run -d`, a berthd restart) does not turn the
/// process's writes into EPIPE; what it writes meanwhile waits in the FIFO for the next reader.
pub fn output(path: &str) -> io::Result<Stdio> {
    Ok(match open_output(path)? {
        Some(file) => Stdio::from(file),
        None => Stdio::null(),
    })
}

/// [`output`] as a file; None for an empty path.
pub fn open_output(path: &str) -> io::Result<Option<File>> {
    if path.is_empty() {
        return Ok(None);
    }
    let file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    blocking(&file)?;
    Ok(Some(file))
}

fn blocking(file: &File) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The writing end of a process's stdin pipe, shared with CloseIO.
#[derive(Default, Clone)]
pub struct StdinCloser {
    writer: Arc<Mutex<Option<File>>>,
    path: String,
    closed: Arc<Mutex<bool>>,
    /// An eventfd the copier polls beside the FIFO: written by [`StdinCloser::close`].
    wake: Option<Arc<OwnedFd>>,
}

impl StdinCloser {
    /// Closes stdin: the copier forwards what the client already wrote into the FIFO, then the process reads
    /// end-of-file. (A client closes its end and then sends CloseIO: the last bytes may still be in the FIFO.)
    /// A copier still waiting for the client to open the FIFO is released by opening it ourselves.
    pub fn close(&self) {
        *self.closed.lock().unwrap_or_else(|p| p.into_inner()) = true;
        match &self.wake {
            // SAFETY: an 8-byte write of a counter increment to our eventfd.
            Some(wake) => unsafe {
                libc::write(wake.as_raw_fd(), 1u64.to_ne_bytes().as_ptr().cast(), 8);
            },
            None => drop(self.writer.lock().unwrap_or_else(|p| p.into_inner()).take()),
        }
        if !self.path.is_empty() {
            // Unblocks an open(O_RDONLY) still waiting for a writer; fails harmlessly when nobody reads.
            let _ = OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&self.path);
        }
    }

    fn is_closed(&self) -> bool {
        *self.closed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The process's stdin, and the handle that closes it.
pub fn input(path: &str, closer: &mut StdinCloser) -> io::Result<Stdio> {
    closer.path = path.to_string();
    if path.is_empty() || closer.is_closed() {
        return Ok(Stdio::null());
    }
    let mut fds = [0; 2];
    // SAFETY: pipe2 into an array of two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and ours.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: eventfd returns a new descriptor or -1.
    let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if wake < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is new and ours.
    let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(wake) });
    closer.wake = Some(Arc::clone(&wake));
    *closer.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(write);
    let writer = Arc::clone(&closer.writer);
    let fifo = path.to_string();
    std::thread::Builder::new().name("stdin-copy".into()).spawn(move || {
        copy_stdin(&fifo, &writer, &wake);
        writer.lock().unwrap_or_else(|p| p.into_inner()).take();
    })?;
    Ok(Stdio::from(read))
}

/// Copies the FIFO into the pipe until the client's end-of-file, or until CloseIO (`wake`) and then only
/// what the FIFO still holds.
fn copy_stdin(fifo: &str, writer: &Mutex<Option<File>>, wake: &OwnedFd) {
    // Blocks until the client opens its writing end (or CloseIO opens it for us).
    let Ok(mut source) = File::open(Path::new(fifo)) else { return };
    let mut buffer = [0u8; 32 * 1024];
    let mut draining = false;
    loop {
        if !draining {
            let mut fds = [
                libc::pollfd { fd: source.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: poll on two valid descriptors.
            if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            if fds[1].revents != 0 {
                // CloseIO: take what is buffered without waiting for more.
                // SAFETY: fcntl on the FIFO we opened.
                unsafe {
                    let flags = libc::fcntl(source.as_raw_fd(), libc::F_GETFL);
                    libc::fcntl(source.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
                }
                draining = true;
            }
        }
        let n = match source.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut guard = writer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = guard.as_mut() else { return };
        if w.write_all(&buffer[..n]).is_err() {
            return;
        }
    }
}
