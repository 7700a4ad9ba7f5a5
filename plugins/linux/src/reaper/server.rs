//! The reaper process: one per task, single-threaded, driven by one poll loop.
//!
//! It creates the container through the runtime library in-process (forking is sound here: no other thread
//! exists), stays the parent of init and of every exec'd process (child subreaper, so nothing is re-parented
//! away and no exit status is lost, youki#1601), pumps the streams that need it, and answers berthd on
//! `reaper.sock`. It outlives berthd: after a berthd crash the new berthd finds it by its socket and the exit
//! statuses it kept.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{LinuxResources, Process};

use super::protocol::*;
use super::rootfs;
use super::stdio::{self, Opened, Pump};
use crate::cgroups::{self, OomWatcher};
use crate::container::{self, CreateOptions, ExecOptions, Runtime};

type Outcome = std::result::Result<serde_json::Value, ReaperError>;

fn err(kind: ErrorKind, message: impl Into<String>) -> ReaperError {
    ReaperError::new(kind, message)
}

fn lib_err(e: container::Error) -> ReaperError {
    let kind = match &e {
        container::Error::NotExist => ErrorKind::NotFound,
        container::Error::Status(_) => ErrorKind::FailedPrecondition,
        container::Error::Config(_) => ErrorKind::InvalidArgument,
        _ => ErrorKind::Internal,
    };
    err(kind, e.to_string())
}

/// One process of the task: init (`exec_id` None) or an exec'd one.
struct Proc {
    exec_id: Option<String>,
    pid: i32,
    started: bool,
    exit: Option<ExitInfo>,
    stdio: Stdio,
    /// An exec'd process between Exec and Start: its spec and already opened streams.
    pending: Option<(Process, Opened)>,
    stdin: Option<Pump>,
    stdout: Option<Pump>,
    /// The pty master, for resize.
    master: Option<OwnedFd>,
}

impl Proc {
    fn status(&self, paused: bool) -> ProcStatus {
        if self.exit.is_some() {
            ProcStatus::Stopped
        } else if !self.started {
            ProcStatus::Created
        } else if paused {
            ProcStatus::Paused
        } else {
            ProcStatus::Running
        }
    }

    fn state(&self, paused: bool) -> ProcState {
        ProcState { status: self.status(paused), pid: self.pid, exit: self.exit, stdio: self.stdio.clone() }
    }

    /// Starts pumping the streams of a created process; with a terminal, takes the master from the console
    /// socket (the container sent it before create or exec returned).
    fn attach_streams(&mut self, mut opened: Opened) -> io::Result<()> {
        if let Some((ours, _theirs)) = opened.console.take() {
            let master = container::recv_console(ours.as_raw_fd())?;
            if let Some(fifo) = opened.stdin_fifo.take() {
                self.stdin = Some(Pump::new(fifo, dup(&master)?)?);
            }
            if let Some(fifo) = opened.stdout_fifo.take() {
                self.stdout = Some(Pump::new(dup(&master)?, fifo)?);
            }
            self.master = Some(master);
        } else if let (Some(fifo), Some(pipe)) = (opened.stdin_fifo.take(), opened.stdin_pipe.take()) {
            self.stdin = Some(Pump::new(fifo, pipe)?);
        }
        Ok(())
    }
}

fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    fd.try_clone()
}

struct Reaper {
    cfg: TaskConfig,
    dir: PathBuf,
    runtime: Runtime,
    cgroup_path: String,
    procs: Vec<Proc>,
    paused: bool,
    listener: UnixListener,
    waiters: Vec<(Option<String>, UnixStream)>,
    subscribers: Vec<UnixStream>,
    oom: Option<OomWatcher>,
    signals: OwnedFd,
    /// Set by Delete: answer this connection once everything is gone, then exit.
    deleting: Option<UnixStream>,
    /// Whether init's exit ends the container (its own PID namespace), so the root filesystem can go then.
    own_pid_namespace: bool,
    /// The unmount of the root filesystem started when init exited; see `unmount_after_exit`.
    unmounting: Option<std::thread::JoinHandle<io::Result<()>>>,
    /// The container's mount namespace, held so that init's exit does not tear it down: see `hold_mount_ns`.
    mount_ns: Option<OwnedFd>,
}

/// Entry point of `berth-reaper`: `berth-reaper create DIR` or `berth-reaper cleanup DIR`.
pub fn main(args: &[String]) -> i32 {
    match args {
        [cmd, dir] if cmd == "create" => {
            // Only stdio: the reaper daemon lives as long as the container, and must not keep berthd's files open.
            super::spawner::close_fds_from(3, None);
            create(Path::new(dir))
        }
        [cmd, fd] if cmd == "spawner" => match fd.parse() {
            Ok(fd) => super::spawner::main(fd),
            Err(_) => {
                eprintln!("berth-reaper: spawner: {fd:?} is not a file descriptor number");
                2
            }
        },
        [cmd, dir] if cmd == "cleanup" => match cleanup(Path::new(dir)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("berth-reaper: cleanup {dir}: {e}");
                1
            }
        },
        _ => {
            eprintln!(
                "usage: berth-reaper create|cleanup TASK_DIR, or berth-reaper spawner FD (started by berthd's runtime.linux plugin)"
            );
            2
        }
    }
}

fn load_config(dir: &Path) -> io::Result<TaskConfig> {
    let path = dir.join(TASK_FILE);
    let data = fs::read(&path).map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))?;
    serde_json::from_slice(&data)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))
}

/// Removes what a task whose reaper is gone left behind: the container (killed if anything still runs), its
/// cgroup, its root filesystem mounts and the task directory.
pub fn cleanup(dir: &Path) -> io::Result<()> {
    kill_stale_reaper(dir);
    if let Ok(cfg) = load_config(dir) {
        let runtime = Runtime::new(&cfg.oci_root);
        match runtime.delete(&cfg.id, true) {
            Ok(()) | Err(container::Error::NotExist) => {}
            Err(e) => return Err(io::Error::other(format!("deleting container {}: {e}", cfg.id))),
        }
    }
    rootfs::unmount(&dir.join(ROOTFS_DIR))?;
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A reaper that stopped answering (wedged, or SIGSTOPped) still holds the task: kill it first, once its pid is
/// checked to still be that reaper, so a reused pid is left alone. A reaper works in its task directory (its
/// cwd); one that `berth-reaper create` forked also names the directory in its command line (one forked by the
/// spawner shows the spawner's).
fn kill_stale_reaper(dir: &Path) {
    let Some(pid) = fs::read_to_string(dir.join(PID_FILE)).ok().and_then(|p| p.trim().parse::<i32>().ok()) else {
        return;
    };
    let is_ours = |pid: i32| {
        fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir)
            || fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*dir.to_string_lossy()))
    };
    if pid <= 1 || pid == std::process::id() as i32 || !is_ours(pid) {
        return;
    }
    // SAFETY: plain syscall on a pid just checked.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // Gone, or a zombie (its command line is then empty), within a second.
    for _ in 0..100 {
        if !is_ours(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Forks the reaper daemon, waits until it has created the container (or failed) and prints the outcome as one
/// JSON reply on stdout for berthd.
fn create(dir: &Path) -> i32 {
    let (read_end, write_end) = match pipe() {
        Ok(p) => p,
        Err(e) => return report(&Reply::Error(err(ErrorKind::Internal, format!("pipe: {e}")))),
    };
    // FORK: the daemon half. This process is single-threaded (nothing has started a thread), so the child may
    // run ordinary code; the parent only relays the outcome and exits, so the daemon is not berthd's child and
    // berthd dying or restarting does not touch it.
    // SAFETY: see above.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return report(&Reply::Error(err(ErrorKind::Internal, format!("fork: {}", io::Error::last_os_error()))));
    }
    if pid == 0 {
        drop(read_end);
        let code = daemon(dir, write_end);
        // SAFETY: leave without running the parent's atexit handlers twice.
        unsafe { libc::_exit(code) };
    }
    drop(write_end);
    let mut file = fs::File::from(read_end);
    let reply = match read_frame::<Reply>(&mut file) {
        Ok(Some(reply)) => reply,
        Ok(None) => Reply::Error(err(ErrorKind::Internal, "the reaper exited before creating the container")),
        Err(e) => Reply::Error(err(ErrorKind::Internal, format!("reading the reaper's reply: {e}"))),
    };
    // Reap the daemon if it already failed (it exits right after reporting an error).
    if matches!(reply, Reply::Error(_)) {
        // SAFETY: plain syscall on our child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
    report(&reply)
}

fn report(reply: &Reply) -> i32 {
    let mut out = io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, reply);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
    if matches!(reply, Reply::Ok(_)) { 0 } else { 1 }
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

/// The reaper daemon of the task in `dir`: creates the container, writes the outcome as one reply frame to
/// `ready`, then serves the task. Forked by `create` or by the spawner ([`super::spawner`]).
pub(super) fn daemon(dir: &Path, ready: OwnedFd) -> i32 {
    let mut ready = fs::File::from(ready);
    // Its own session: a signal to berthd's process group (Ctrl-C on a foreground berthd) does not reach it.
    // SAFETY: plain syscalls.
    unsafe {
        libc::setsid();
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let _ = std::env::set_current_dir(dir);
    redirect_stdio(&dir.join(LOG_FILE));
    match Reaper::launch(dir) {
        Ok(mut reaper) => {
            let pid = reaper.procs[0].pid;
            if write_frame(&mut ready, &Reply::Ok(serde_json::json!({ "pid": pid }))).is_err() {
                // berthd gave up waiting: undo, nobody will ever talk to us.
                reaper.destroy();
                return 1;
            }
            drop(ready);
            // Creating parsed the spec and forked: give the freed heap back, the reaper lives as long as the
            // container and its resident memory is the per-container cost.
            #[cfg(target_env = "gnu")]
            // SAFETY: plain glibc call.
            unsafe {
                libc::malloc_trim(0);
            }
            reaper.run();
            0
        }
        Err(e) => {
            eprintln!("create failed: {e}");
            let _ = write_frame(&mut ready, &Reply::Error(e));
            1
        }
    }
}

/// Opens the mount namespace of the container whose init is `pid`. While this is open, init's exit does not
/// unmount the container's mounts: the kernel does that in the exiting process, before its parent hears of the
/// exit (an RCU grace period and the end of each of a dozen filesystems, on the path of every Wait), and with
/// the namespace held it happens when `unmount_after_exit` lets go, after the exit has been announced.
fn hold_mount_ns(pid: i32) -> Option<OwnedFd> {
    match fs::File::open(format!("/proc/{pid}/ns/mnt")) {
        Ok(file) => Some(OwnedFd::from(file)),
        Err(e) => {
            eprintln!("berth-reaper: opening the container's mount namespace: {e}");
            None
        }
    }
}

/// stdin from /dev/null, stdout and stderr to the task's log (what the runtime library or hooks print).
fn redirect_stdio(log: &Path) {
    let null = fs::File::open("/dev/null");
    let log = fs::OpenOptions::new().create(true).append(true).open(log);
    // SAFETY: replacing our own stdio fds.
    unsafe {
        if let Ok(null) = &null {
            libc::dup2(null.as_raw_fd(), 0);
        }
        if let Ok(log) = &log {
            libc::dup2(log.as_raw_fd(), 1);
            libc::dup2(log.as_raw_fd(), 2);
        }
    }
}

fn block_sigchld() -> io::Result<OwnedFd> {
    // SAFETY: sigset operations on a local set, then signalfd on it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

impl Reaper {
    fn launch(dir: &Path) -> std::result::Result<Reaper, ReaperError> {
        let internal = |what: &str| {
            let what = what.to_string();
            move |e: io::Error| err(ErrorKind::Internal, format!("{what}: {e}"))
        };
        let cfg = load_config(dir).map_err(|e| err(ErrorKind::InvalidArgument, e.to_string()))?;
        let signals = block_sigchld().map_err(internal("signalfd"))?;
        let rootfs_dir = dir.join(ROOTFS_DIR);
        if !cfg.rootfs.is_empty() {
            rootfs::mount_all(&cfg.rootfs, &rootfs_dir).map_err(|e| err(ErrorKind::InvalidArgument, e))?;
        }
        let undo_mounts = |e: ReaperError| {
            let _ = rootfs::unmount(&rootfs_dir);
            e
        };
        let opened =
            stdio::open_all(&cfg.stdio).map_err(|e| undo_mounts(err(ErrorKind::InvalidArgument, e.to_string())))?;
        let runtime = Runtime::new(&cfg.oci_root);
        let opts = CreateOptions {
            id: cfg.id.clone(),
            bundle: dir.to_path_buf(),
            pid_file: None,
            console_socket: None,
            console_fd: opened.console.as_ref().map(|(_, theirs)| theirs.as_raw_fd()),
            stdio: Some(opened.child_fds()),
        };
        let container::Created { pid, cgroup_path, own_pid_namespace } =
            runtime.create_container(&opts).map_err(|e| undo_mounts(lib_err(e)))?;
        let mut init = Proc {
            exec_id: None,
            pid,
            started: false,
            exit: None,
            stdio: cfg.stdio.clone(),
            pending: None,
            stdin: None,
            stdout: None,
            master: None,
        };
        let fail = |e: ReaperError, runtime: &Runtime| {
            let _ = runtime.delete(&cfg.id, true);
            undo_mounts(e)
        };
        if let Err(e) = init.attach_streams(opened) {
            return Err(fail(err(ErrorKind::Internal, format!("terminal: {e}")), &runtime));
        }
        // Without a memory controller there is nothing to watch; OOM events are then simply not reported.
        let oom = cgroups::Cgroup::open(&cgroup_path).ok().and_then(|cg| cg.oom_watcher().ok());
        let mount_ns = if own_pid_namespace { hold_mount_ns(pid) } else { None };
        let sock = dir.join(SOCKET_FILE);
        let _ = fs::remove_file(&sock);
        let listener = match UnixListener::bind(&sock) {
            Ok(l) => l,
            Err(e) => return Err(fail(err(ErrorKind::Internal, format!("binding {}: {e}", sock.display())), &runtime)),
        };
        let _ = listener.set_nonblocking(true);
        let _ = fs::write(dir.join(PID_FILE), std::process::id().to_string());
        Ok(Reaper {
            cfg: cfg.clone(),
            dir: dir.to_path_buf(),
            runtime,
            cgroup_path,
            procs: vec![init],
            paused: false,
            listener,
            waiters: Vec::new(),
            subscribers: Vec::new(),
            oom,
            signals,
            deleting: None,
            own_pid_namespace,
            unmounting: None,
            mount_ns,
        })
    }

    /// Kills and removes everything (used when nobody can take over the task).
    fn destroy(&mut self) {
        self.settle_unmount();
        let _ = self.runtime.delete(&self.cfg.id, true);
        self.reap();
        let _ = rootfs::unmount(&self.dir.join(ROOTFS_DIR));
        let _ = fs::remove_dir_all(&self.dir);
    }

    fn run(&mut self) {
        loop {
            self.poll_once();
            if let Some(mut conn) = self.deleting.take() {
                let outcome = self.finish_delete();
                let _ = write_frame(&mut conn, &to_reply(outcome));
                return;
            }
        }
    }

    fn poll_once(&mut self) {
        #[derive(Clone, Copy)]
        enum Slot {
            Signals,
            Listener,
            Oom,
            Stdin(usize),
            Stdout(usize),
            Waiter(usize),
            Subscriber(usize),
        }
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut slots = Vec::new();
        let mut add = |fds: &mut Vec<libc::pollfd>, fd: RawFd, events: i16, slot: Slot| {
            fds.push(libc::pollfd { fd, events, revents: 0 });
            slots.push(slot);
        };
        add(&mut fds, self.signals.as_raw_fd(), libc::POLLIN, Slot::Signals);
        add(&mut fds, self.listener.as_raw_fd(), libc::POLLIN, Slot::Listener);
        if let Some(oom) = &self.oom {
            add(&mut fds, std::os::fd::AsFd::as_fd(&oom.fd()).as_raw_fd(), libc::POLLIN, Slot::Oom);
        }
        for (i, p) in self.procs.iter().enumerate() {
            if let Some((fd, ev)) = p.stdin.as_ref().and_then(Pump::interest) {
                add(&mut fds, fd, ev, Slot::Stdin(i));
            }
            if let Some((fd, ev)) = p.stdout.as_ref().and_then(Pump::interest) {
                add(&mut fds, fd, ev, Slot::Stdout(i));
            }
        }
        // Held connections are polled only to notice that the peer went away.
        for (i, (_, c)) in self.waiters.iter().enumerate() {
            add(&mut fds, c.as_raw_fd(), 0, Slot::Waiter(i));
        }
        for (i, c) in self.subscribers.iter().enumerate() {
            add(&mut fds, c.as_raw_fd(), 0, Slot::Subscriber(i));
        }
        // The timeout is a safety net: a SIGCHLD that arrived while it was unblocked is still noticed. An OOM
        // condition whose kill the kernel has not counted yet is looked at again soon.
        let timeout = if self.oom.as_ref().is_some_and(OomWatcher::pending) { 10 } else { 1000 };
        // SAFETY: fds is a valid array of fds.len() pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            return;
        }
        let mut dead_waiters = Vec::new();
        let mut dead_subscribers = Vec::new();
        let mut accept = false;
        for (pfd, slot) in fds.iter().zip(slots) {
            if pfd.revents == 0 {
                continue;
            }
            match slot {
                Slot::Signals => self.drain_signals(),
                Slot::Listener => accept = true,
                Slot::Oom => self.check_oom(),
                Slot::Stdin(i) => {
                    if let Some(p) = self.procs[i].stdin.as_mut() {
                        p.run()
                    }
                }
                Slot::Stdout(i) => {
                    if let Some(p) = self.procs[i].stdout.as_mut() {
                        p.run()
                    }
                }
                Slot::Waiter(i) => dead_waiters.push(i),
                Slot::Subscriber(i) => dead_subscribers.push(i),
            }
        }
        for i in dead_waiters.into_iter().rev() {
            self.waiters.remove(i);
        }
        for i in dead_subscribers.into_iter().rev() {
            self.subscribers.remove(i);
        }
        for p in &mut self.procs {
            // A finished pump closes its destination: EOF for the process (stdin) or the client (stdout).
            if p.stdin.as_ref().is_some_and(Pump::finished) {
                p.stdin = None;
            }
            if p.stdout.as_ref().is_some_and(Pump::finished) {
                p.stdout = None;
            }
        }
        if self.oom.as_ref().is_some_and(OomWatcher::pending) {
            self.recount_oom();
        }
        self.reap();
        if accept {
            self.accept();
        }
    }

    fn drain_signals(&mut self) {
        let mut buf = [0u8; std::mem::size_of::<libc::signalfd_siginfo>() * 8];
        // SAFETY: reading into a local buffer from our nonblocking signalfd.
        while unsafe { libc::read(self.signals.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) } > 0 {}
    }

    fn check_oom(&mut self) {
        let kills = self.oom.as_mut().map(|w| w.check());
        self.announce_kills(kills);
    }

    fn recount_oom(&mut self) {
        let kills = self.oom.as_mut().map(|w| w.recount());
        self.announce_kills(kills);
    }

    /// One OOM event per kill.
    fn announce_kills(&mut self, kills: Option<cgroups::Result<u64>>) {
        match kills {
            Some(Ok(n)) => {
                for _ in 0..n {
                    self.broadcast(&Event::Oom);
                }
            }
            None => {}
            // The cgroup is gone (the task is being deleted): stop watching.
            Some(Err(_)) => self.oom = None,
        }
    }

    /// Collects every exited child: our processes get their exit recorded and announced, other children
    /// (orphans re-parented to us as subreaper) are just reaped.
    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: plain syscall.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status) as u32
            } else if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status) as u32
            } else {
                continue;
            };
            let Some(idx) = self.procs.iter().position(|p| p.pid == pid && p.exit.is_none()) else { continue };
            let exit = ExitInfo { pid, status: code, at_ns: now_ns() };
            self.procs[idx].exit = Some(exit);
            let exec_id = self.procs[idx].exec_id.clone();
            if exec_id.is_none() {
                write_exit_file(&self.dir, &exit);
            }
            self.broadcast(&Event::Exit { exec_id: exec_id.clone(), exit });
            let reply = Reply::Ok(serde_json::to_value(exit).unwrap_or_default());
            self.waiters.retain_mut(|(id, conn)| {
                if *id == exec_id {
                    let _ = write_frame(conn, &reply);
                    false
                } else {
                    true
                }
            });
            if exec_id.is_none() {
                self.unmount_after_exit();
            }
        }
    }

    /// Starts unmounting the root filesystem once init has exited and the exit has been announced, after
    /// letting go of the container's mount namespace (`hold_mount_ns`), whose mounts go then.
    ///
    /// Unmounting an overlay syncs its upper filesystem (~1 ms on ext4), and done in Delete that sits on
    /// the client's path; started here it overlaps the client's reaction to the exit (containerd's
    /// client asks for the state and drains the output first). Only with a PID namespace of its own:
    /// then init's exit has ended every process of the container, so nothing can use the mount any
    /// more. In a thread, so the output still being drained is not held up; joined by
    /// `settle_unmount` before anything that forks or needs the mount gone, and Delete unmounts again
    /// (a no-op then) so a failure here is still reported there.
    fn unmount_after_exit(&mut self) {
        if !self.own_pid_namespace || self.unmounting.is_some() {
            return;
        }
        let mount_ns = self.mount_ns.take();
        let root = (!self.cfg.rootfs.is_empty()).then(|| self.dir.join(ROOTFS_DIR));
        if mount_ns.is_none() && root.is_none() {
            return;
        }
        let unmount = move || {
            // The container's mounts go first (they hold the root filesystem's mount too).
            drop(mount_ns);
            root.map_or(Ok(()), |root| rootfs::unmount(&root))
        };
        match std::thread::Builder::new().name("unmount".into()).spawn(unmount) {
            Ok(handle) => self.unmounting = Some(handle),
            // Delete unmounts anyway.
            Err(e) => eprintln!("berth-reaper: starting the unmount after init exited: {e}"),
        }
    }

    /// Waits for the unmount begun by `unmount_after_exit`, if any.
    fn settle_unmount(&mut self) {
        if let Some(handle) = self.unmounting.take()
            && let Ok(Err(e)) = handle.join()
        {
            eprintln!("berth-reaper: unmounting the root filesystem after init exited: {e}");
        }
    }

    fn broadcast(&mut self, event: &Event) {
        self.subscribers.retain_mut(|conn| write_frame(conn, event).is_ok());
    }

    fn accept(&mut self) {
        while let Ok((conn, _)) = self.listener.accept() {
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
            let mut conn = conn;
            let request = match read_frame::<Request>(&mut conn) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    let _ = write_frame(
                        &mut conn,
                        &Reply::Error(err(ErrorKind::InvalidArgument, format!("bad request: {e}"))),
                    );
                    continue;
                }
            };
            self.handle(request, conn);
            if self.deleting.is_some() {
                return;
            }
        }
    }

    fn proc_index(&self, exec_id: &Option<String>) -> std::result::Result<usize, ReaperError> {
        self.procs.iter().position(|p| &p.exec_id == exec_id).ok_or_else(|| {
            err(
                ErrorKind::NotFound,
                format!("process {:?} of task {:?}", exec_id.as_deref().unwrap_or(""), self.cfg.id),
            )
        })
    }

    fn handle(&mut self, request: Request, mut conn: UnixStream) {
        let outcome = match request {
            Request::Wait { exec_id } => match self.proc_index(&exec_id) {
                Ok(i) => match self.procs[i].exit {
                    Some(exit) => Ok(serde_json::to_value(exit).unwrap_or_default()),
                    None => {
                        self.waiters.push((exec_id, conn));
                        return;
                    }
                },
                Err(e) => Err(e),
            },
            Request::Subscribe => {
                let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
                let past: Vec<Event> = self
                    .procs
                    .iter()
                    .filter_map(|p| p.exit.map(|exit| Event::Exit { exec_id: p.exec_id.clone(), exit }))
                    .collect();
                if write_frame(&mut conn, &Reply::Ok(serde_json::Value::Null)).is_ok()
                    && past.iter().all(|e| write_frame(&mut conn, e).is_ok())
                {
                    self.subscribers.push(conn);
                }
                return;
            }
            Request::Delete { force } => match self.begin_delete(force) {
                Ok(()) => {
                    self.deleting = Some(conn);
                    return;
                }
                Err(e) => Err(e),
            },
            other => self.answer(other),
        };
        let _ = write_frame(&mut conn, &to_reply(outcome));
    }

    fn answer(&mut self, request: Request) -> Outcome {
        let json = |v: &dyn erased::Ser| Ok(v.to_json());
        match request {
            Request::State { exec_id } => {
                let i = self.proc_index(&exec_id)?;
                json(&self.procs[i].state(self.paused))
            }
            // Both may fork: not while the unmount thread runs (a child of a threaded process may inherit a
            // held allocator lock).
            Request::Start { exec_id } => {
                self.settle_unmount();
                self.start(exec_id)
            }
            Request::Kill { exec_id, signal, all } => self.kill(exec_id, signal, all),
            Request::Exec { exec_id, spec, stdio } => {
                self.settle_unmount();
                self.exec(exec_id, spec, stdio)
            }
            Request::Resize { exec_id, width, height } => {
                let i = self.proc_index(&exec_id)?;
                let p = &self.procs[i];
                if p.exit.is_some() {
                    return Err(err(
                        ErrorKind::Exited,
                        format!("process {:?}", p.exec_id.as_deref().unwrap_or(&self.cfg.id)),
                    ));
                }
                let master = p.master.as_ref().ok_or_else(|| {
                    err(ErrorKind::FailedPrecondition, "the process has no terminal: it was not created with one")
                })?;
                stdio::resize(master.as_raw_fd(), width, height)
                    .map_err(|e| err(ErrorKind::Internal, format!("resizing the terminal: {e}")))?;
                Ok(serde_json::Value::Null)
            }
            Request::CloseIo { exec_id } => {
                let i = self.proc_index(&exec_id)?;
                let p = &mut self.procs[i];
                // What the client wrote must still arrive: stop being a writer of the FIFO ourselves (we held it
                // read-write so the client could come and go), keep reading until it is drained and every writer
                // is gone, then the pump ends and closes the pipe, and the process reads EOF. containerd's shim
                // does the same by closing its own write end.
                // A regular file ends by itself.
                use std::os::unix::fs::FileTypeExt;
                let is_fifo = fs::metadata(&p.stdio.stdin).is_ok_and(|m| m.file_type().is_fifo());
                if is_fifo {
                    let reader = p.stdin.as_ref().map(|_| stdio::open_fifo_reader(&p.stdio.stdin));
                    match (p.stdin.as_mut(), reader) {
                        (Some(pump), Some(Ok(fd))) => pump.src = fd,
                        _ => p.stdin = None,
                    }
                }
                Ok(serde_json::Value::Null)
            }
            Request::Pause => {
                if self.procs[0].exit.is_some() {
                    return Err(err(ErrorKind::FailedPrecondition, "cannot pause a task that has stopped"));
                }
                self.runtime.pause(&self.cfg.id).map_err(lib_err)?;
                self.paused = true;
                Ok(serde_json::Value::Null)
            }
            Request::Resume => {
                self.runtime.resume(&self.cfg.id).map_err(lib_err)?;
                self.paused = false;
                Ok(serde_json::Value::Null)
            }
            Request::Pids => {
                let pids = self.runtime.ps(&self.cfg.id).map_err(lib_err)?;
                let info: Vec<PidInfo> = pids
                    .into_iter()
                    .map(|pid| PidInfo {
                        pid,
                        exec_id: self
                            .procs
                            .iter()
                            .find(|p| p.pid == pid && p.exit.is_none())
                            .and_then(|p| p.exec_id.clone()),
                    })
                    .collect();
                json(&info)
            }
            Request::Update { resources } => {
                let resources: LinuxResources = serde_json::from_value(resources)
                    .map_err(|e| err(ErrorKind::InvalidArgument, format!("resources: {e}")))?;
                let cg = cgroups::Cgroup::open(&self.cgroup_path)
                    .map_err(|e| err(ErrorKind::FailedPrecondition, format!("the task's cgroup: {e}")))?;
                cg.apply(&resources)
                    .map_err(|e| err(ErrorKind::InvalidArgument, format!("updating resources: {e}")))?;
                Ok(serde_json::Value::Null)
            }
            Request::Stats => {
                let cg = cgroups::Cgroup::open(&self.cgroup_path)
                    .map_err(|e| err(ErrorKind::FailedPrecondition, format!("the task's cgroup: {e}")))?;
                let stats = cg.stats().map_err(|e| err(ErrorKind::Internal, format!("reading cgroup stats: {e}")))?;
                json(&stats)
            }
            Request::DeleteProcess { exec_id } => {
                let key = Some(exec_id.clone());
                let i = self.proc_index(&key)?;
                let p = &self.procs[i];
                let exit = match p.exit {
                    Some(exit) => exit,
                    None if !p.started => ExitInfo { pid: 0, status: 0, at_ns: now_ns() },
                    None => {
                        return Err(err(
                            ErrorKind::FailedPrecondition,
                            format!("process {exec_id:?} is still running: kill it first"),
                        ));
                    }
                };
                self.procs.remove(i);
                json(&exit)
            }
            Request::Wait { .. } | Request::Subscribe | Request::Delete { .. } => {
                Err(err(ErrorKind::Internal, "request handled elsewhere"))
            }
        }
    }

    fn start(&mut self, exec_id: Option<String>) -> Outcome {
        let i = self.proc_index(&exec_id)?;
        if self.procs[i].exit.is_some() || self.procs[i].started {
            return Err(err(ErrorKind::FailedPrecondition, "process already started"));
        }
        if exec_id.is_none() {
            self.runtime.start(&self.cfg.id).map_err(lib_err)?;
            self.procs[0].started = true;
            return Ok(serde_json::to_value(Started { pid: self.procs[0].pid }).unwrap_or_default());
        }
        if self.procs[0].exit.is_some() {
            return Err(err(ErrorKind::FailedPrecondition, "cannot exec in a stopped task"));
        }
        let (spec, opened) = self.procs[i].pending.take().expect("a created exec'd process has its spec");
        let opts = ExecOptions {
            spec: Some(spec),
            detach: true,
            console_fd: opened.console.as_ref().map(|(_, theirs)| theirs.as_raw_fd()),
            stdio: Some(opened.child_fds()),
            ..Default::default()
        };
        // Exec'd processes are our children; SIGCHLD stays blocked (it only queues for the signalfd), and the
        // library resets the mask in the new process before it execs.
        let pid = self.runtime.spawn_exec(&self.cfg.id, &opts).map_err(lib_err)?;
        let p = &mut self.procs[i];
        p.pid = pid;
        p.started = true;
        if let Err(e) = p.attach_streams(opened) {
            eprintln!("exec {:?}: terminal: {e}", p.exec_id);
        }
        Ok(serde_json::to_value(Started { pid }).unwrap_or_default())
    }

    fn kill(&mut self, exec_id: Option<String>, signal: i32, all: bool) -> Outcome {
        let i = self.proc_index(&exec_id)?;
        let p = &self.procs[i];
        if exec_id.is_none() {
            if p.exit.is_some() && !all {
                return Err(err(ErrorKind::Exited, format!("task {:?}", self.cfg.id)));
            }
            self.runtime.kill(&self.cfg.id, signal, all).map_err(lib_err)?;
            if signal == libc::SIGKILL {
                self.paused = false;
            }
            return Ok(serde_json::Value::Null);
        }
        if p.exit.is_some() || !p.started {
            return Err(err(ErrorKind::Exited, format!("process {:?}", exec_id.as_deref().unwrap_or(""))));
        }
        // Safe from pid reuse: the process is our child and not reaped yet.
        // SAFETY: plain syscall.
        if unsafe { libc::kill(p.pid, signal) } < 0 {
            return Err(err(ErrorKind::Internal, format!("signalling pid {}: {}", p.pid, io::Error::last_os_error())));
        }
        Ok(serde_json::Value::Null)
    }

    fn exec(&mut self, exec_id: String, spec: serde_json::Value, stdio: Stdio) -> Outcome {
        if self.procs.iter().any(|p| p.exec_id.as_deref() == Some(&exec_id)) {
            return Err(err(ErrorKind::AlreadyExists, format!("process {exec_id:?}")));
        }
        if self.procs[0].exit.is_some() {
            return Err(err(
                ErrorKind::FailedPrecondition,
                format!("cannot exec in task {:?}: it has stopped", self.cfg.id),
            ));
        }
        let mut process: Process =
            serde_json::from_value(spec).map_err(|e| err(ErrorKind::InvalidArgument, format!("process spec: {e}")))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(err(ErrorKind::InvalidArgument, "process spec: args are empty"));
        }
        process.set_terminal(Some(stdio.terminal));
        let opened = stdio::open_all(&stdio).map_err(|e| err(ErrorKind::InvalidArgument, e.to_string()))?;
        self.procs.push(Proc {
            exec_id: Some(exec_id),
            pid: 0,
            started: false,
            exit: None,
            stdio,
            pending: Some((process, opened)),
            stdin: None,
            stdout: None,
            master: None,
        });
        Ok(serde_json::Value::Null)
    }

    fn begin_delete(&mut self, force: bool) -> std::result::Result<(), ReaperError> {
        let init = &self.procs[0];
        if init.exit.is_none() && init.started && !force {
            return Err(err(
                ErrorKind::FailedPrecondition,
                format!("task {:?} is running: kill it first, or delete with force", self.cfg.id),
            ));
        }
        Ok(())
    }

    /// Kills what still runs, waits for init, removes the container, its cgroup, mounts and directory.
    fn finish_delete(&mut self) -> Outcome {
        if self.procs[0].exit.is_none() {
            let _ = self.runtime.kill(&self.cfg.id, libc::SIGKILL, true);
            let pid = self.procs[0].pid;
            // SAFETY: waiting for our child, init, which was just killed.
            let mut status = 0;
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            let code = if r == pid && libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status) as u32
            } else if r == pid {
                libc::WEXITSTATUS(status) as u32
            } else {
                128 + libc::SIGKILL as u32
            };
            self.procs[0].exit = Some(ExitInfo { pid, status: code, at_ns: now_ns() });
        }
        let exit = self.procs[0].exit.expect("set above");
        self.settle_unmount();
        let result = self.runtime.delete(&self.cfg.id, true);
        self.reap();
        let unmounted = rootfs::unmount(&self.dir.join(ROOTFS_DIR));
        let removed = fs::remove_dir_all(&self.dir);
        match (result, unmounted, removed) {
            (Err(e), _, _) if !matches!(e, container::Error::NotExist) => Err(lib_err(e)),
            (_, Err(e), _) => Err(err(ErrorKind::Internal, format!("unmounting the root filesystem: {e}"))),
            (_, _, Err(e)) => Err(err(ErrorKind::Internal, format!("removing {}: {e}", self.dir.display()))),
            _ => Ok(serde_json::to_value(exit).unwrap_or_default()),
        }
    }
}

fn to_reply(outcome: Outcome) -> Reply {
    match outcome {
        Ok(v) => Reply::Ok(v),
        Err(e) => Reply::Error(e),
    }
}

/// Written with a rename, so a reader never sees half of it.
fn write_exit_file(dir: &Path, exit: &ExitInfo) {
    let tmp = dir.join(".exit.json.tmp");
    let data = serde_json::to_vec(exit).unwrap_or_default();
    if fs::write(&tmp, data).is_ok() {
        let _ = fs::rename(&tmp, dir.join(EXIT_FILE));
    }
}

/// Serialising any reply value without naming its type at each call site.
mod erased {
    pub trait Ser {
        fn to_json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_default()
        }
    }
}
