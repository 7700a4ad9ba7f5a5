//! A function task's standard streams, from the FIFOs the client made (`ctr` makes one per stream and reads
//! or writes its other end), as the WASI stdin, stdout and stderr of the task's instance.
//!
//! stdout and stderr are written in place by the invocation's thread. The host keeps the only descriptor of
//! each, so a kill closes them at once: the client sees end-of-file and finishes, even while the abandoned
//! invocation is still inside a host call. stdin is filled by a thread of its own from the FIFO (bounded), so
//! the guest's reads can wait without holding a thread in `read(2)`: its waits end at end-of-file, at CloseIO
//! (after what the FIFO still holds) and at a kill, which traps the read.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdinStream, StdoutStream};
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};

/// How much of stdin is read ahead of the guest.
const READ_AHEAD: usize = 1 << 20;

/// Opens a FIFO (or file) for the task to write to. Without a reader yet, a FIFO is opened read-write, which
/// never blocks; the client's reader joins later.
pub fn open_output(path: &str) -> io::Result<File> {
    let file = match OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK).open(path)?
        }
        Err(e) => return Err(e),
    };
    set_nonblocking(&file, false)?;
    Ok(file)
}

/// How long a closed output opened read-write waits for the client's reader to take what it holds.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Drops `file`, but not while it is a FIFO opened read-write (no reader had joined) that still holds
/// bytes: its descriptor may be the pipe's last, and closing it would discard what the task wrote before
/// the client's reader joined (a short exec's whole output). A thread keeps it until the bytes are read or
/// [`LINGER`] passes.
fn linger_until_read(file: File) {
    let unread = |file: &File| {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD into a c_int, on a descriptor we own.
        let ok = unsafe { libc::ioctl(file.as_raw_fd(), libc::FIONREAD, &mut n) } == 0;
        ok && n > 0
    };
    // SAFETY: fcntl on a descriptor we own.
    let read_write = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) } & libc::O_ACCMODE == libc::O_RDWR;
    if !read_write || !unread(&file) {
        return;
    }
    let spawned = std::thread::Builder::new().name("berth-wasm-linger".into()).spawn(move || {
        let deadline = std::time::Instant::now() + LINGER;
        while unread(&file) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    });
    // Without a thread the file is dropped here, as before.
    drop(spawned);
}

fn set_nonblocking(file: &File, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        let flags = if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
        if flags < 0 || libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A task's stdout or stderr.
#[derive(Clone)]
pub struct Output {
    file: Arc<Mutex<Option<File>>>,
}

impl Output {
    /// Writing to `file`.
    pub fn new(file: File) -> Self {
        Self { file: Arc::new(Mutex::new(Some(file))) }
    }

    /// Closes the stream: later writes fail, the client reads end-of-file. A write in progress (a full FIFO
    /// nobody reads) keeps it until it returns.
    pub fn close(&self) {
        if let Ok(mut file) = self.file.try_lock()
            && let Some(file) = file.take()
        {
            linger_until_read(file);
        }
    }

    /// Writes `text` unless the stream is closed (a line of the host's, like why the task ended).
    pub fn write_line(&self, text: &str) {
        if let Some(file) = self.file.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            let _ = file.write_all(format!("{text}\n").as_bytes());
        }
    }

    fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        match file.as_mut() {
            Some(f) => f.write_all(bytes),
            None => Err(io::Error::new(io::ErrorKind::BrokenPipe, "the task's stream is closed")),
        }
    }
}

impl IsTerminal for Output {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Output {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Output {
    async fn ready(&mut self) {}
}

impl OutputStream for Output {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_all(&bytes).map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => StreamError::Closed,
            _ => StreamError::LastOperationFailed(wasmtime::format_err!(e)),
        })
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for Output {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(self.write_all(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A task's stdin: what its thread read from the FIFO, ahead of the guest.
#[derive(Clone)]
pub struct Input {
    shared: Arc<InputShared>,
}

struct InputShared {
    state: Mutex<InputState>,
    /// Signalled when the guest took bytes (the reader waits for room) or the stream ends.
    room: Condvar,
    path: String,
}

#[derive(Default)]
struct InputState {
    buffer: VecDeque<u8>,
    /// The client closed its end, or CloseIO came and the FIFO is drained.
    eof: bool,
    /// CloseIO: read what the FIFO holds, then end.
    closing: bool,
    /// The task was killed or its invocation ended: reads trap, the reader stops.
    ended: bool,
    wakers: Vec<Waker>,
}

impl InputState {
    fn ready(&self) -> bool {
        !self.buffer.is_empty() || self.eof || self.ended
    }

    fn wake(&mut self) {
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
    }
}

impl Input {
    /// Reads the FIFO at `path` (an empty path: end-of-file at once) on a thread of its own.
    pub fn open(path: &str) -> io::Result<Self> {
        let shared = Arc::new(InputShared {
            state: Mutex::new(InputState { eof: path.is_empty(), ..Default::default() }),
            room: Condvar::new(),
            path: path.to_string(),
        });
        if !path.is_empty() {
            let reader = Arc::clone(&shared);
            std::thread::Builder::new().name("wasm-task-stdin".into()).spawn(move || {
                reader.copy();
                let mut state = reader.lock();
                state.eof = true;
                state.wake();
            })?;
        }
        Ok(Self { shared })
    }

    /// CloseIO: the guest reads what the client already wrote, then end-of-file.
    pub fn close(&self) {
        self.shared.lock().closing = true;
    }

    /// The task ended: a read in progress or to come traps, and the reader thread stops.
    pub fn end(&self) {
        let mut state = self.shared.lock();
        state.ended = true;
        state.wake();
        drop(state);
        self.shared.room.notify_all();
    }
}

impl InputShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, InputState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Copies the FIFO into the buffer until end-of-file, the task's end, or CloseIO and then only what the
    /// FIFO still holds. The FIFO is opened without waiting for the client's end: until a writer came and went,
    /// poll(2) reports nothing, so end-of-file is only seen once the client closed its end.
    fn copy(&self) {
        let Ok(mut fifo) = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&self.path) else {
            return;
        };
        let mut chunk = vec![0u8; 32 << 10];
        loop {
            let closing = {
                let mut state = self.lock();
                while state.buffer.len() >= READ_AHEAD && !state.ended {
                    state = self
                        .room
                        .wait_timeout(state, Duration::from_millis(100))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                if state.ended {
                    return;
                }
                state.closing
            };
            if !closing {
                // Waits for data a tenth of a second at a time, to notice CloseIO and the task's end.
                let mut fd = libc::pollfd { fd: fifo.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: poll on one valid descriptor.
                let n = unsafe { libc::poll(&mut fd, 1, 100) };
                if n == 0 || (n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted) {
                    continue;
                }
                if n < 0 {
                    return;
                }
            }
            match fifo.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    let mut state = self.lock();
                    state.buffer.extend(&chunk[..n]);
                    state.wake();
                }
                // Nothing more in the FIFO: after CloseIO that is the end.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && closing => return,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(_) => return,
            }
        }
    }
}

impl IsTerminal for Input {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdinStream for Input {
    fn p2_stream(&self) -> Box<dyn InputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncRead + Send + Sync> {
        Box::new(self.clone())
    }
}

impl Input {
    fn take(&self, size: usize) -> Result<Option<Vec<u8>>, StreamError> {
        let mut state = self.shared.lock();
        if state.ended {
            return Err(StreamError::trap("the task was killed"));
        }
        if !state.buffer.is_empty() {
            let n = size.min(state.buffer.len());
            let bytes: Vec<u8> = state.buffer.drain(..n).collect();
            drop(state);
            self.shared.room.notify_all();
            return Ok(Some(bytes));
        }
        if state.eof {
            return Ok(None);
        }
        Ok(Some(Vec::new()))
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.shared.lock();
        if state.ready() {
            return Poll::Ready(());
        }
        state.wakers.push(cx.waker().clone());
        Poll::Pending
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Input {
    async fn ready(&mut self) {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
    }
}

impl InputStream for Input {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        match self.take(size)? {
            Some(bytes) => Ok(Bytes::from(bytes)),
            None => Err(StreamError::Closed),
        }
    }
}

impl tokio::io::AsyncRead for Input {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.poll_ready(cx).is_pending() {
            return Poll::Pending;
        }
        match self.take(buf.remaining()) {
            Ok(Some(bytes)) => {
                buf.put_slice(&bytes);
                Poll::Ready(Ok(()))
            }
            Ok(None) => Poll::Ready(Ok(())),
            Err(_) => Poll::Ready(Err(io::Error::other("the task was killed"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo(dir: &std::path::Path, name: &str) -> String {
        let path = dir.join(name);
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        path.to_str().unwrap().to_string()
    }

    fn read_all(input: &mut Input) -> StreamResult<Vec<u8>> {
        let mut all = Vec::new();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        loop {
            runtime.block_on(input.ready());
            match input.read(1024) {
                Ok(bytes) => all.extend_from_slice(&bytes),
                Err(StreamError::Closed) => return Ok(all),
                Err(e) => return Err(e),
            }
        }
    }

    #[test]
    fn stdin_reads_to_the_clients_end_of_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path(), "in");
        let mut input = Input::open(&path).unwrap();
        let mut writer = OpenOptions::new().write(true).open(&path).unwrap();
        writer.write_all(b"hello ").unwrap();
        writer.write_all(b"world").unwrap();
        drop(writer);
        assert_eq!(read_all(&mut input).unwrap(), b"hello world");
    }

    #[test]
    fn close_io_forwards_what_the_fifo_holds_then_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path(), "in");
        let mut input = Input::open(&path).unwrap();
        // The client keeps its end open: only CloseIO ends the stream.
        let mut writer = OpenOptions::new().write(true).open(&path).unwrap();
        writer.write_all(b"last bytes").unwrap();
        input.close();
        assert_eq!(read_all(&mut input).unwrap(), b"last bytes");
        drop(writer);
    }

    #[test]
    fn close_io_without_a_client_ends_at_once_and_the_end_traps_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path(), "in");
        let mut input = Input::open(&path).unwrap();
        input.close();
        assert_eq!(read_all(&mut input).unwrap(), b"");
        let mut input = Input::open(&fifo(dir.path(), "in2")).unwrap();
        input.end();
        assert!(matches!(read_all(&mut input), Err(StreamError::Trap(_))));
    }

    #[test]
    fn outputs_write_until_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path(), "out");
        // No reader yet: opened read-write, so neither side blocks.
        let output = Output::new(open_output(&path).unwrap());
        let mut reader = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path).unwrap();
        let mut stream = output.clone();
        stream.write(Bytes::from_static(b"out\n")).unwrap();
        output.close();
        assert!(matches!(stream.write(Bytes::from_static(b"more")), Err(StreamError::Closed)));
        // The closed output lingers until its bytes are read, then ends: end-of-file within the linger.
        let (mut text, deadline) = (Vec::new(), std::time::Instant::now() + LINGER * 2);
        loop {
            let mut chunk = [0u8; 64];
            match reader.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => text.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(2))
                }
                Err(e) => panic!("reading the closed output: {e}"),
            }
        }
        assert_eq!(text, b"out\n");
    }

    #[test]
    fn a_closed_output_keeps_what_it_holds_until_a_late_reader_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path(), "late");
        let output = Output::new(open_output(&path).unwrap());
        output.clone().write(Bytes::from_static(b"early\n")).unwrap();
        output.close();
        // The reader joins after the only writer closed: the bytes are still there.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut reader = OpenOptions::new().read(true).open(&path).unwrap();
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "early\n");
    }
}
