//! A task's standard streams, client side, as containerd's `cio` does them: the client makes
//! FIFOs, passes their paths in Tasks.Create / Tasks.Exec, and copies between them and its own
//! stdin/stdout/stderr; with a terminal, the local one is put in raw mode and its size follows
//! SIGWINCH into Tasks.ResizePty.

use std::io::Read as _;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use berth_proto::containerd::services::tasks::v1::tasks_client::TasksClient;
use berth_proto::containerd::services::tasks::v1::{CloseIoRequest, KillRequest, ResizePtyRequest, WaitResponse};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::unix::pipe;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;

use crate::{Service, rpc_error};

/// Where FIFOs go without `--fifo-dir` (containerd's is /run/containerd/fifo).
pub const DEFAULT_FIFO_ROOT: &str = "/run/berth/fifo";

/// How long output may keep coming after the process exited. The server closes its ends of the
/// FIFOs once the process's output is drained, so this only bounds a server that never does.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Paths of a process's FIFOs; None for a stream the process does not get.
#[derive(Clone, Debug, Default)]
pub struct Fifos {
    /// The directory made for them, removed with them.
    pub dir: Option<PathBuf>,
    pub stdin: Option<PathBuf>,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
}

impl Fifos {
    /// Makes `<root>/<random>/<id>-stdin|stdout|stderr` like containerd's NewFIFOSetInDir: a fresh
    /// 0700 directory per process, so concurrent runs never share a FIFO. With a terminal, stderr
    /// is merged into the pty and gets no FIFO.
    pub fn create(root: Option<&Path>, id: &str, terminal: bool) -> anyhow::Result<Fifos> {
        let root = root.unwrap_or(Path::new(DEFAULT_FIFO_ROOT));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .with_context(|| format!("creating FIFO directory {}", root.display()))?;
        let mut attempts = 0;
        let dir = loop {
            let dir = root.join(random_u32().to_string());
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 100 => attempts += 1,
                Err(e) => return Err(e).with_context(|| format!("creating FIFO directory {}", dir.display())),
            }
        };
        let mut fifos = Fifos { dir: Some(dir.clone()), ..Default::default() };
        let streams: &[&str] = if terminal { &["stdin", "stdout"] } else { &["stdin", "stdout", "stderr"] };
        for stream in streams {
            let path = dir.join(format!("{id}-{stream}"));
            if let Err(e) = mkfifo(&path) {
                fifos.remove();
                return Err(e);
            }
            match *stream {
                "stdin" => fifos.stdin = Some(path),
                "stdout" => fifos.stdout = Some(path),
                _ => fifos.stderr = Some(path),
            }
        }
        Ok(fifos)
    }

    /// The FIFOs a server reports for a process (Tasks.Get), to re-open them.
    pub fn reported(stdin: &str, stdout: &str, stderr: &str) -> Fifos {
        let path = |p: &str| (!p.is_empty()).then(|| PathBuf::from(p));
        Fifos { dir: None, stdin: path(stdin), stdout: path(stdout), stderr: path(stderr) }
    }

    pub fn path_str(path: &Option<PathBuf>) -> String {
        path.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
    }

    /// Removes the FIFOs and their directory. For FIFOs a server reported, only what is a FIFO
    /// is removed, and the directory only once empty: the paths came over the wire.
    pub fn remove(&self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
            return;
        }
        let mut parents = Vec::new();
        for path in [&self.stdin, &self.stdout, &self.stderr].into_iter().flatten() {
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo())
                && std::fs::remove_file(path).is_ok()
            {
                parents.extend(path.parent().map(Path::to_path_buf));
            }
        }
        parents.dedup();
        for dir in parents {
            // Fails, as wanted, while the directory holds anything else.
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// Opens the read ends of stdout and stderr without blocking. They must be open before the
    /// server opens the write ends, which it does (blocking) in Tasks.Create / Tasks.Exec.
    pub fn open_output(&self) -> anyhow::Result<Output> {
        let open = |path: &Option<PathBuf>| -> anyhow::Result<Option<pipe::Receiver>> {
            path.as_ref()
                .map(|p| {
                    pipe::OpenOptions::new().open_receiver(p).with_context(|| format!("opening FIFO {}", p.display()))
                })
                .transpose()
        };
        Ok(Output { stdout: open(&self.stdout)?, stderr: open(&self.stderr)? })
    }

    /// Opens stdin's write end. Read-write, because a FIFO opened so never blocks nor fails for
    /// want of a reader; closing it is still the EOF the server's reader sees.
    pub fn open_stdin(&self) -> anyhow::Result<Option<pipe::Sender>> {
        self.stdin
            .as_ref()
            .map(|p| {
                pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(p)
                    .with_context(|| format!("opening FIFO {}", p.display()))
            })
            .transpose()
    }
}

/// The read ends of a process's output FIFOs.
pub struct Output {
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

fn mkfifo(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).context("FIFO path contains a NUL byte")?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o700) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("creating FIFO {}", path.display()));
    }
    Ok(())
}

/// A random number from the kernel, for directory names and exec ids.
pub fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: the buffer is valid for its length. On failure the bytes stay zero, and creation
    // retries on a name that exists.
    unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    u32::from_ne_bytes(bytes)
}

/// Random hex, valid as a containerd identifier (used for exec ids).
pub fn random_id() -> String {
    format!("{:08x}{:08x}", random_u32(), random_u32())
}

/// The local terminal in raw mode for the time of a tty session; the old mode comes back on drop.
pub struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    /// Raw mode on stdin when it is a terminal; None when it is not.
    pub fn enable() -> anyhow::Result<Option<RawMode>> {
        if !is_terminal(libc::STDIN_FILENO) {
            return Ok(None);
        }
        // SAFETY: termios is plain data, filled by tcgetattr before use.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error()).context("reading the terminal's mode");
        }
        let mut raw = saved;
        // SAFETY: raw is a valid termios.
        unsafe { libc::cfmakeraw(&mut raw) };
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setting the terminal to raw mode");
        }
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: saved came from tcgetattr on the same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}

pub fn is_terminal(fd: libc::c_int) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// The local terminal's size (columns, rows), from whichever standard stream is a terminal.
fn terminal_size() -> Option<(u16, u16)> {
    for fd in [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: winsize is plain data that TIOCGWINSZ fills.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_col > 0 {
            return Some((ws.ws_col, ws.ws_row));
        }
    }
    None
}

/// The process a session talks to.
#[derive(Clone)]
pub struct Target {
    pub tasks: TasksClient<Service>,
    pub container_id: String,
    /// Empty for the task's init process.
    pub exec_id: String,
}

impl Target {
    fn name(&self) -> String {
        if self.exec_id.is_empty() {
            format!("task {}", self.container_id)
        } else {
            format!("process {} of task {}", self.exec_id, self.container_id)
        }
    }

    /// Starts Tasks.Wait in the background; it answers when the process exits.
    pub async fn spawn_wait(&self) -> JoinHandle<anyhow::Result<WaitResponse>> {
        let mut target = self.clone();
        let handle = tokio::spawn(async move {
            let request = berth_proto::containerd::services::tasks::v1::WaitRequest {
                container_id: target.container_id.clone(),
                exec_id: target.exec_id.clone(),
            };
            let what = format!("wait for {}", target.name());
            Ok(target.tasks.wait(request).await.map_err(rpc_error(what))?.into_inner())
        });
        // Let the request go out before the caller's next call (Start), as ctr orders them.
        tokio::task::yield_now().await;
        handle
    }

    pub async fn kill(&mut self, signal: i32, all: bool) -> anyhow::Result<()> {
        let request = KillRequest {
            container_id: self.container_id.clone(),
            exec_id: self.exec_id.clone(),
            signal: signal as u32,
            all,
        };
        let what = format!("send signal {signal} to {}", self.name());
        self.tasks.kill(request).await.map_err(rpc_error(what))?;
        Ok(())
    }

    async fn resize(&mut self) -> anyhow::Result<()> {
        let Some((width, height)) = terminal_size() else { return Ok(()) };
        let request = ResizePtyRequest {
            container_id: self.container_id.clone(),
            exec_id: self.exec_id.clone(),
            width: width.into(),
            height: height.into(),
        };
        let what = format!("resize the terminal of {}", self.name());
        self.tasks.resize_pty(request).await.map_err(rpc_error(what))?;
        Ok(())
    }

    async fn close_stdin(&mut self) -> anyhow::Result<()> {
        let request =
            CloseIoRequest { container_id: self.container_id.clone(), exec_id: self.exec_id.clone(), stdin: true };
        let what = format!("close the stdin of {}", self.name());
        self.tasks.close_io(request).await.map_err(rpc_error(what))?;
        Ok(())
    }
}

/// The streams a session copies: the write end of the process's stdin and the read ends of
/// its output.
pub struct Streams {
    pub stdin: Option<pipe::Sender>,
    pub output: Output,
    pub terminal: bool,
    /// Whether the end of local input also closes the process's stdin (Tasks.CloseIO), as for
    /// the process berth started; an `attach` only closes its own end, as ctr's does.
    pub close_stdin: bool,
}

/// Copies the streams between the local terminal and the process until it exits, forwarding
/// signals (without a tty) or the window size (with one); returns the exit status from `wait`.
pub async fn session(
    target: &Target,
    streams: Streams,
    wait: JoinHandle<anyhow::Result<WaitResponse>>,
) -> anyhow::Result<WaitResponse> {
    let raw = if streams.terminal { RawMode::enable()? } else { None };
    let mut helpers: Vec<JoinHandle<()>> = Vec::new();
    if streams.terminal {
        if raw.is_some() {
            let mut t = target.clone();
            if let Err(err) = t.resize().await {
                crate::report(&err);
            }
            let mut winch = signal(SignalKind::window_change()).context("watching SIGWINCH")?;
            helpers.push(tokio::spawn(async move {
                while winch.recv().await.is_some() {
                    let _ = t.resize().await;
                }
            }));
        }
    } else {
        helpers.push(forward_signals(target.clone())?);
    }
    if let Some(stdin) = streams.stdin {
        let close = streams.close_stdin.then(|| target.clone());
        helpers.push(tokio::spawn(copy_stdin(stdin, close, streams.terminal)));
    }
    let mut outputs = Vec::new();
    if let Some(r) = streams.output.stdout {
        outputs.push(tokio::spawn(copy_out(r, tokio::io::stdout())));
    }
    if let Some(r) = streams.output.stderr {
        outputs.push(tokio::spawn(copy_out(r, tokio::io::stderr())));
    }

    let status = wait.await.context("waiting for the process")?;
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        for out in outputs {
            let _ = out.await;
        }
    })
    .await;
    for helper in helpers {
        helper.abort();
    }
    drop(raw);
    if drained.is_err() {
        eprintln!("berth: the output of {} did not end within {DRAIN_TIMEOUT:?} of its exit", target.name());
    }
    status
}

/// Until EOF, which comes when the server closes its write end after the process's output ended.
/// Once the local side is gone (`berth run ... | head`), output is still read and dropped: the
/// process would otherwise block on a full FIFO and never exit.
async fn copy_out(mut from: pipe::Receiver, mut to: impl tokio::io::AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut open = true;
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) if open => {
                open = to.write_all(&buf[..n]).await.is_ok() && to.flush().await.is_ok();
            }
            Ok(_) => {}
        }
    }
}

/// Local stdin to the process. The read happens on a plain thread: a blocked read of a terminal
/// cannot be cancelled, and a tokio blocking task would hold up the runtime's shutdown.
async fn copy_stdin(mut to: pipe::Sender, close: Option<Target>, terminal: bool) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    while let Some(chunk) = rx.recv().await {
        if to.write_all(&chunk).await.is_err() {
            return;
        }
    }
    if terminal {
        // A pty has no stdin to close: containerd's shim tears the console down when its stdin
        // FIFO ends. End of input on a terminal is VEOF (^D), so send that and keep the FIFO.
        let _ = to.write_all(&[4]).await;
        std::future::pending::<()>().await;
    }
    drop(to);
    if let Some(mut target) = close
        && let Err(err) = target.close_stdin().await
    {
        crate::report(&err);
    }
}

/// Signals berth receives go to the process instead, as ctr's ForwardAllSignals does, so
/// Ctrl-C or a `kill` of berth reach what runs in the container.
fn forward_signals(mut target: Target) -> anyhow::Result<JoinHandle<()>> {
    let listen = |kind: SignalKind, name: &str| signal(kind).with_context(|| format!("handling {name}"));
    let mut int = listen(SignalKind::interrupt(), "SIGINT")?;
    let mut term = listen(SignalKind::terminate(), "SIGTERM")?;
    let mut hup = listen(SignalKind::hangup(), "SIGHUP")?;
    let mut quit = listen(SignalKind::quit(), "SIGQUIT")?;
    let mut usr1 = listen(SignalKind::user_defined1(), "SIGUSR1")?;
    let mut usr2 = listen(SignalKind::user_defined2(), "SIGUSR2")?;
    Ok(tokio::spawn(async move {
        loop {
            let number = tokio::select! {
                _ = int.recv() => libc::SIGINT,
                _ = term.recv() => libc::SIGTERM,
                _ = hup.recv() => libc::SIGHUP,
                _ = quit.recv() => libc::SIGQUIT,
                _ = usr1.recv() => libc::SIGUSR1,
                _ = usr2.recv() => libc::SIGUSR2,
            };
            if let Err(err) = target.kill(number, false).await {
                crate::report(&err);
            }
        }
    }))
}

/// Ends berth with a process's exit status, as ctr does. Output is flushed first: `exit` skips
/// destructors.
pub fn exit_with(status: u32) -> anyhow::Result<()> {
    if status == 0 {
        return Ok(());
    }
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(status as i32)
}
