//! The container's terminal, as runc's docs/terminals.md describes: the pty comes from the container's own devpts
//! (opened after pivot_root, through /dev/ptmx → pts/ptmx), the slave becomes stdio and /dev/console, and the
//! master goes to whoever listens on --console-socket, passed with SCM_RIGHTS.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use oci_spec::runtime::Process;

use super::sys;

/// Sends `fd` over the connected unix socket `sock` with SCM_RIGHTS, with `name` as payload (runc sends the
/// terminal's name the same way).
pub fn send_fd(sock: RawFd, fd: RawFd, name: &str) -> io::Result<()> {
    let mut payload = name.as_bytes().to_vec();
    if payload.is_empty() {
        payload.push(0);
    }
    let mut iov = libc::iovec { iov_base: payload.as_mut_ptr() as *mut libc::c_void, iov_len: payload.len() };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: msghdr is plain data; zeroed is a valid starting value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at a buffer of CMSG_SPACE(sizeof fd) bytes, so the first header fits.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
    }
    // SAFETY: msg is fully initialised above.
    let r = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Receives one fd sent by `send_fd` (used by `run` and `exec` when they hold the console themselves, and by
/// tests).
pub fn recv_fd(sock: RawFd) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut payload = [0u8; 4096];
    let mut iov = libc::iovec { iov_base: payload.as_mut_ptr() as *mut libc::c_void, iov_len: payload.len() };
    // SAFETY: pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: plain data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: msg points at valid buffers.
    let r = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled msg_control; CMSG_FIRSTHDR checks the length.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Err(io::Error::other("no file descriptor received"));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const RawFd);
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Creates the pty in the container, makes the slave our controlling terminal and stdio, binds it onto
/// /dev/console (when `console` is set, i.e. for init) and sends the master over `socket`.
pub fn setup(socket: &OwnedFd, process: &Process, console: bool) -> io::Result<()> {
    let master = sys::open(Path::new("/dev/ptmx"), libc::O_RDWR | libc::O_NOCTTY, 0)
        .map_err(|e| io::Error::new(e.kind(), format!("opening /dev/ptmx: {e}")))?;
    let mut unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK takes a pointer to int.
    sys::cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock) })?;
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes an unsigned int.
    sys::cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) })?;
    let slave_path = format!("/dev/pts/{n}");
    let slave = sys::open(Path::new(&slave_path), libc::O_RDWR | libc::O_NOCTTY, 0)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {slave_path}: {e}")))?;
    if let Some(size) = process.console_size() {
        let ws =
            libc::winsize { ws_row: size.height() as u16, ws_col: size.width() as u16, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a winsize.
        sys::cvt(unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws) })?;
    }
    if console {
        let dev_console = Path::new("/dev/console");
        if !dev_console.exists() {
            std::fs::File::create(dev_console)?;
        }
        sys::mount(Some(Path::new(&slave_path)), dev_console, None, libc::MS_BIND, None)
            .map_err(|e| io::Error::new(e.kind(), format!("bind-mounting {slave_path} onto /dev/console: {e}")))?;
    }
    send_fd(socket.as_raw_fd(), master.as_raw_fd(), &slave_path)
        .map_err(|e| io::Error::new(e.kind(), format!("sending the pty master to the console socket: {e}")))?;
    drop(master);
    // SAFETY: we are a session leader (setsid earlier); TIOCSCTTY takes an int.
    sys::cvt(unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) })?;
    for fd in 0..3 {
        sys::dup2(slave.as_raw_fd(), fd)?;
    }
    Ok(())
}

/// Connects to the console socket (in the runtime's mount namespace, before the child leaves it).
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| io::Error::new(e.kind(), format!("connecting to console socket {}: {e}", path.display())))?;
    Ok(OwnedFd::from(stream))
}
