//! A process on a terminal (`ctr run -t`). `runc run` (and `exec --tty`) in the foreground makes the
//! container's pty itself and copies between its master and runc's own stdio, which it puts in raw mode when
//! it is a terminal. (`--console-socket`, which would hand us the master, needs a detached runc, whose exit
//! status nobody could wait for.) So runc's stdio is the slave of a pty of ours: two threads copy between
//! our master and the client's FIFOs (stdin in, stdout out; a terminal has no separate stderr). resize_pty
//! sets our pty's window size (TIOCSWINSZ) and sends runc SIGWINCH, on which runc copies the size of its stdin
//! to the container's pty, and the kernel tells the process.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use berth_plugin_sdk::proto::runtime::Io;

/// A new pty pair: (master, slave).
pub fn openpty() -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty(3) into two ints, without a name, termios or size.
    if unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and ours.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: fcntl on a descriptor we own: close-on-exec, so only the runtime command gets the slave
        // (as its stdio, which the spawn dups).
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((master, slave))
}

/// A pty master and the threads copying it.
pub struct Console {
    master: OwnedFd,
    /// Ends when the output copy has written the process's last output.
    output_done: Mutex<Option<mpsc::Receiver<()>>>,
}

fn dup(fd: &OwnedFd) -> io::Result<File> {
    Ok(File::from(fd.try_clone()?))
}

impl Console {
    /// Starts copying between `master` and the client's FIFOs in `io`.
    pub fn start(master: OwnedFd, io: &Io) -> io::Result<Arc<Self>> {
        let out = crate::stdio::open_output(&io.stdout)?;
        let (done, output_done) = mpsc::channel();
        let mut source = dup(&master)?;
        std::thread::Builder::new().name("pty-out".into()).spawn(move || {
            let mut buffer = [0u8; 32 * 1024];
            let mut out = out;
            // EIO once the process's side is closed everywhere: the process ended.
            while let Ok(n @ 1..) = source.read(&mut buffer) {
                if let Some(o) = out.as_mut()
                    && o.write_all(&buffer[..n]).is_err()
                {
                    out = None;
                }
            }
            let _ = done.send(());
        })?;
        if !io.stdin.is_empty() {
            let mut sink = dup(&master)?;
            let fifo = io.stdin.clone();
            std::thread::Builder::new().name("pty-in".into()).spawn(move || {
                // Blocks until the client opens its end.
                let Ok(mut input) = File::open(&fifo) else { return };
                let _ = std::io::copy(&mut input, &mut sink);
            })?;
        }
        Ok(Arc::new(Self { master, output_done: Mutex::new(Some(output_done)) }))
    }

    /// Sets the terminal's size.
    pub fn resize(&self, width: u32, height: u32) -> io::Result<()> {
        let size = libc::winsize { ws_row: height as u16, ws_col: width as u16, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ on our pty master with a winsize.
        if unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// CloseIO on a terminal: the client's end-of-file reaches the process as the terminal's EOF character.
    pub fn close_stdin(&self) {
        if let Ok(mut master) = dup(&self.master) {
            let _ = master.write_all(&[0x04]);
        }
    }

    /// Waits (a little) for the output copy to take the process's last output.
    pub fn finish(&self) {
        if let Some(done) = self.output_done.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = done.recv_timeout(Duration::from_secs(2));
        }
    }
}
