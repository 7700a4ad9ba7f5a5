//! A runtime backend as a native berth plugin: `runtime.oci`, which runs containers with any OCI runtime
//! binary that has runc's command line (runc, crun, `berth oci`).
//!
//! ```toml
//! [plugins."runtime.oci"]
//! source = "native"
//! path = "/usr/lib/berth/libberth_example_native_runtime.so"
//! [plugins."runtime.oci".config]
//! binary = "runc"            # or "crun", or "/usr/bin/berth" with args = ["oci"]
//! args = []                  # put before runc's global flags
//!
//! # and, for `ctr run --runtime io.containerd.oci.v1 ...`, in the Tasks service's table:
//! # [plugins."service.tasks".runtime_names]
//! # "io.containerd.oci.v1" = "oci"
//! ```
//!
//! How a task runs:
//!
//! * **create** writes the bundle (`<state>/bundles/<ns>/<id>/config.json`), mounts the snapshotter's mounts
//!   on its `rootfs/` and points the spec's root there, and saves the task's record (`task.json`, see
//!   [`state`]). Nothing runs yet: the task is Created, pid 0.
//! * **start** runs `runc run --pid-file ... ID` in the foreground under a waiter ([`waiter`]: a `/bin/sh` in
//!   a session of its own that writes the command's exit status into the bundle), with the client's FIFOs as
//!   its stdout and stderr and a pipe fed from the stdin FIFO as its stdin (runc copies between them and
//!   pipes of the container's). It returns once the pid file names the container's init. `runc run` exits with the
//!   container's status (128 + signal when it was killed); a thread waits for the waiter and reports the exit
//!   to berthd. With `terminal`, runc makes the container's pty and copies it to its own stdio, a pty of ours
//!   that threads copy to and from the client's FIFOs (module `console`); resize_pty resizes it and tells runc.
//! * **exec** + start is the same with `runc exec --process ... ID`.
//! * **kill** is `runc kill [--all] ID SIGNAL` for init, kill(2) for an exec'd process.
//! * **pause**, **resume**, **pids** are `runc pause`, `runc resume`, `runc ps --format json`.
//! * **stats** is `runc events --stats ID`, turned into containerd's cgroups metrics ([`metrics`]); **update**
//!   is `runc update --resources - ID` with the request's LinuxResources JSON.
//! * **delete** (after the exit) unmounts the rootfs and removes the bundle and the record; runc removed its
//!   own state when `run` ended.
//!
//! A berthd restart (a stop, or a crash): the containers and their waiters do not depend on berthd, so they
//! keep running. The next instance reads every `task.json`, finds each running process's waiter by pid and
//! start time and watches it (a pidfd), asks runc whether the container is paused, and reports the exits that
//! happened meanwhile with the status the waiter wrote, timed by when it wrote it. Output goes on into the
//! client's FIFOs (runc holds them, read-write as containerd's shim does, so it waits there for a reader).
//! What is lost: the stdin of a running process (berthd fed it: the process reads end-of-file); the copy of a
//! terminal (berthd held the pty runc copies to: the process runs on, but its terminal output goes nowhere and
//! it blocks once the terminal's buffer is full); and the exit status of a process whose waiter was killed
//! too (reported as 255, with a warning in berthd's log). Bundles without a readable record and containers
//! under the runc root that no record names are removed.
//!
//! What it does not do: checkpoints and restores.

mod console;
pub mod metrics;
mod rootfs;
pub mod state;
mod stdio;
pub mod waiter;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use berth_plugin_sdk::proto::Timestamp;
use berth_plugin_sdk::proto::runtime::{
    CreateRequest, ExecRequest, Exit, Io, ProcessInfo, ProcessRequest, StateResponse, Status, TaskRef, TaskRequest,
    UpdateRequest,
};
use berth_plugin_sdk::runtime::Runtime;
use berth_plugin_sdk::{Error, Host, Init, Result};
use serde::Deserialize;

use state::{ProcRecord, TaskRecord};
use waiter::WaiterId;

/// `[plugins."runtime.oci".config]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The OCI runtime binary: a path, or a name looked up in PATH.
    pub binary: String,
    /// Arguments put before the global flags (`["oci"]` for `berth oci`).
    pub args: Vec<String>,
    /// The runtime's state directory (`--root`); empty: `<state>/runc`.
    pub root: String,
    /// How long start waits for the container's pid, in seconds.
    pub start_timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self { binary: "runc".into(), args: Vec::new(), root: String::new(), start_timeout_secs: 60 }
    }
}

/// One process: a task's init or an exec'd one.
struct Proc {
    io: Io,
    /// The exec'd process's OCI process spec (JSON); None for init.
    spec: Option<String>,
    status: Status,
    pid: u32,
    exit: Option<Exit>,
    /// The waiter of a started process.
    waiter: Option<WaiterId>,
    stdin: stdio::StdinCloser,
    /// The pty master of a process on a terminal, while berthd holds it.
    console: Option<Arc<console::Console>>,
}

impl Proc {
    fn new(io: Io, spec: Option<String>) -> Self {
        Self {
            io,
            spec,
            status: Status::Created,
            pid: 0,
            exit: None,
            waiter: None,
            stdin: Default::default(),
            console: None,
        }
    }

    fn record(&self) -> ProcRecord {
        ProcRecord {
            stdin: self.io.stdin.clone(),
            stdout: self.io.stdout.clone(),
            stderr: self.io.stderr.clone(),
            terminal: self.io.terminal,
            spec: self.spec.clone(),
            status: match self.status {
                Status::Created => "created",
                Status::Stopped => "stopped",
                _ => "running",
            }
            .into(),
            pid: self.pid,
            waiter: self.waiter,
            exit: self.exit.as_ref().map(|e| {
                let at = e.exited_at.unwrap_or_default();
                (e.status, at.seconds, at.nanos)
            }),
        }
    }
}

struct Task {
    namespace: String,
    id: String,
    /// The id the OCI runtime knows the container by (unique across namespaces).
    container: String,
    bundle: PathBuf,
    mounts: usize,
    processes: Mutex<HashMap<String, Arc<Mutex<Proc>>>>,
    /// Held while the record is written, and while the bundle is removed: a record is always written from the
    /// state it describes, and never into a deleted bundle. Taken before `processes`.
    saving: Mutex<()>,
}

impl Task {
    fn process(&self, exec_id: &str) -> Result<Arc<Mutex<Proc>>> {
        lock(&self.processes).get(exec_id).cloned().ok_or_else(|| {
            if exec_id.is_empty() {
                Error::not_found(format!("task {:?}", self.id))
            } else {
                Error::not_found(format!("process {exec_id:?} of task {:?}", self.id))
            }
        })
    }

    fn record(&self) -> TaskRecord {
        let processes = lock(&self.processes);
        TaskRecord {
            namespace: self.namespace.clone(),
            id: self.id.clone(),
            container: self.container.clone(),
            mounts: self.mounts,
            init: processes.get("").map(|p| lock(p).record()).unwrap_or_default(),
            execs: processes
                .iter()
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, p)| (k.clone(), lock(p).record()))
                .collect(),
        }
    }

    /// Writes the record; `saving` must be held.
    fn save_locked(&self, host: &Host) {
        if !self.bundle.exists() {
            return;
        }
        if let Err(e) = state::save(&self.bundle, &self.record()) {
            host.warn(&format!("saving the state of task {:?} in {}: {e}", self.id, self.bundle.display()));
        }
    }

    fn save(&self, host: &Host) {
        let _saving = lock(&self.saving);
        self.save_locked(host);
    }
}

/// The file name stem of a process's files in the bundle.
fn tag(exec_id: &str) -> String {
    if exec_id.is_empty() { "init".to_string() } else { format!("exec-{exec_id}") }
}

/// The runtime.
pub struct OciRuntime {
    host: Host,
    config: Config,
    root: PathBuf,
    bundles: PathBuf,
    tasks: Mutex<HashMap<(String, String), Arc<Task>>>,
    counter: AtomicU64,
    cgroup_v2: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now() -> Timestamp {
    SystemTime::now().into()
}

fn task_not_found(id: &str) -> Error {
    Error::not_found(format!("task {id:?}"))
}

/// The error message of a failed runtime command: its JSON log's last error, else its stderr.
fn runtime_error(log: &Path, stderr: &[u8]) -> String {
    let from_log = fs::read_to_string(log).ok().and_then(|text| {
        text.lines().rev().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v["level"] == "error").then(|| v["msg"].as_str().unwrap_or_default().to_string())
        })
    });
    from_log.filter(|m| !m.is_empty()).unwrap_or_else(|| String::from_utf8_lossy(stderr).trim().to_string())
}

/// The status of the OCI runtime's container `state` JSON: `running`, `paused`, `stopped`, `created`.
fn container_status(state: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(state).ok()?;
    v["status"].as_str().map(str::to_string)
}

impl OciRuntime {
    /// The runtime binary with its own arguments and global flags.
    fn argv(&self, log: Option<&Path>) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec![self.config.binary.clone().into()];
        argv.extend(self.config.args.iter().map(OsString::from));
        argv.extend(["--root".into(), self.root.clone().into_os_string()]);
        if let Some(log) = log {
            argv.extend(["--log".into(), log.as_os_str().to_owned(), "--log-format".into(), "json".into()]);
        }
        argv
    }

    fn command(&self, log: Option<&Path>) -> Command {
        let argv = self.argv(log);
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        command
    }

    /// Runs a short runtime command (kill, pause, ps, delete) to completion, with `input` as its stdin.
    fn run_with(&self, args: &[&str], input: Option<&[u8]>) -> Result<Vec<u8>> {
        let what = || format!("{} {}", self.config.binary, args.join(" "));
        let mut child = self
            .command(None)
            .args(args)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(format!("running {}", what()), e))?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            let _ = stdin.write_all(input);
        }
        let output = child.wait_with_output().map_err(|e| Error::io(format!("running {}", what()), e))?;
        if !output.status.success() {
            return Err(Error::internal(format!(
                "{} failed: {}",
                what(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(output.stdout)
    }

    fn run(&self, args: &[&str]) -> Result<Vec<u8>> {
        self.run_with(args, None)
    }

    fn task(&self, namespace: &str, id: &str) -> Result<Arc<Task>> {
        lock(&self.tasks).get(&(namespace.into(), id.into())).cloned().ok_or_else(|| task_not_found(id))
    }

    /// Finds the tasks an earlier instance left (see the crate doc), and removes what belongs to none.
    fn recover(&self) {
        let mut exits = Vec::new();
        let mut watches = Vec::new();
        let mut known = Vec::new();
        for ns in fs::read_dir(&self.bundles).into_iter().flatten().flatten() {
            for bundle in fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                let bundle = bundle.path();
                let record = match state::load(&bundle) {
                    Ok(Some(record)) => record,
                    Ok(None) => {
                        self.host.info(&format!("removing {}: a bundle without a task record", bundle.display()));
                        rootfs::unmount(&bundle.join("rootfs"), 8);
                        let _ = fs::remove_dir_all(&bundle);
                        continue;
                    }
                    Err(e) => {
                        self.host.warn(&format!("cannot recover the task in {}: {e}; removing it", bundle.display()));
                        rootfs::unmount(&bundle.join("rootfs"), 8);
                        let _ = fs::remove_dir_all(&bundle);
                        continue;
                    }
                };
                known.push(record.container.clone());
                let (task, found_exits, found_watches) = self.recover_task(record, bundle);
                exits.extend(found_exits.into_iter().map(|(exec, exit)| (Arc::clone(&task), exec, exit)));
                watches.extend(found_watches.into_iter().map(|w| (Arc::clone(&task), w)));
                task.save(&self.host);
                lock(&self.tasks).insert((task.namespace.clone(), task.id.clone()), task);
            }
        }
        if let Ok(out) = self.run(&["list", "-q"]) {
            for container in String::from_utf8_lossy(&out).lines().filter(|l| !l.is_empty()) {
                if !known.iter().any(|k| k == container) {
                    self.host.info(&format!("removing container {container}: no task record names it"));
                    let _ = self.run(&["delete", "--force", container]);
                }
            }
        }
        let n = known.iter().filter_map(|c| c.strip_prefix("berth-")?.split('-').next()?.parse::<u64>().ok()).max();
        self.counter.store(n.map_or(0, |n| n + 1), Ordering::Relaxed);
        for (task, (exec_id, process, target)) in watches {
            let host = self.host;
            let name = format!("rewait-{}", task.id);
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                let still_it = || match &target {
                    Watch::Waiter(w) => waiter::alive(w),
                    // SAFETY: kill(2) with signal 0 only checks that the pid exists.
                    Watch::Process(pid) => unsafe { libc::kill(*pid as i32, 0) == 0 },
                };
                let pid = match &target {
                    Watch::Waiter(w) => w.pid,
                    Watch::Process(pid) => *pid,
                };
                waiter::wait_gone(pid, still_it);
                let exit_file = task.bundle.join(format!("{}.exit", tag(&exec_id)));
                let (status, at) = waiter::read_exit(&exit_file).unwrap_or_else(|| {
                    host.warn(&format!("process {exec_id:?} of task {:?} ended without a recorded status", task.id));
                    (255, SystemTime::now())
                });
                finish(host, &task, &exec_id, &process, status, at);
            });
            if let Err(e) = spawned {
                self.host.warn(&format!("cannot watch a recovered process: {e}"));
            }
        }
        for (task, exec_id, exit) in exits {
            self.host.exit(&task.namespace, &task.id, &exec_id, exit);
        }
    }

    /// A task from its record: the exits found (to report) and the processes to watch.
    #[allow(clippy::type_complexity)]
    fn recover_task(
        &self,
        record: TaskRecord,
        bundle: PathBuf,
    ) -> (Arc<Task>, Vec<(String, Exit)>, Vec<(String, Arc<Mutex<Proc>>, Watch)>) {
        let mut exits = Vec::new();
        let mut watches = Vec::new();
        let mut processes = HashMap::new();
        let records = std::iter::once((String::new(), record.init)).chain(record.execs);
        for (exec_id, r) in records {
            let io = Io { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, terminal: r.terminal };
            let mut p = Proc::new(io, r.spec);
            p.pid = r.pid;
            p.waiter = r.waiter;
            p.exit = r.exit.map(|(status, seconds, nanos)| Exit {
                pid: r.pid,
                status,
                exited_at: Some(Timestamp { seconds, nanos }),
            });
            p.status = match r.status.as_str() {
                "created" => Status::Created,
                "stopped" => Status::Stopped,
                _ => Status::Running,
            };
            if p.status == Status::Running {
                let exit_file = bundle.join(format!("{}.exit", tag(&exec_id)));
                let container_alive = || {
                    if exec_id.is_empty() {
                        let state = self.run(&["state", &record.container]).ok();
                        state.and_then(|s| container_status(&s)).is_some_and(|s| s == "running" || s == "paused")
                    } else {
                        // SAFETY: kill(2) with signal 0 only checks that the pid exists.
                        p.pid != 0 && unsafe { libc::kill(p.pid as i32, 0) == 0 }
                    }
                };
                let watch = match p.waiter {
                    Some(w) if waiter::alive(&w) => Some(Watch::Waiter(w)),
                    _ if waiter::read_exit(&exit_file).is_none() && container_alive() => {
                        self.host.warn(&format!(
                            "the waiter of process {exec_id:?} of task {:?} is gone: its exit status will be unknown",
                            record.id
                        ));
                        Some(Watch::Process(p.pid))
                    }
                    _ => None,
                };
                match watch {
                    Some(watch) => watches.push((exec_id.clone(), watch)),
                    None => {
                        let (status, at) = waiter::read_exit(&exit_file).unwrap_or((255, SystemTime::now()));
                        let exit = Exit { pid: p.pid, status, exited_at: Some(at.into()) };
                        p.status = Status::Stopped;
                        p.exit = Some(exit.clone());
                        p.waiter = None;
                        exits.push((exec_id.clone(), exit));
                    }
                }
                if exec_id.is_empty() && p.status == Status::Running {
                    let state = self.run(&["state", &record.container]).ok();
                    if state.and_then(|s| container_status(&s)).as_deref() == Some("paused") {
                        p.status = Status::Paused;
                    }
                }
            }
            processes.insert(exec_id, Arc::new(Mutex::new(p)));
        }
        let watches = watches
            .into_iter()
            .map(|(exec_id, watch)| {
                let p = Arc::clone(&processes[&exec_id]);
                (exec_id, p, watch)
            })
            .collect();
        let task = Task {
            namespace: record.namespace,
            id: record.id,
            container: record.container,
            bundle,
            mounts: record.mounts,
            processes: Mutex::new(processes),
            saving: Mutex::new(()),
        };
        (Arc::new(task), exits, watches)
    }

    /// Starts `process` of `task` with the runtime command `args` (which must take `--pid-file`) under a
    /// waiter, waits for its pid, and leaves a thread waiting for the waiter, which reports the exit.
    fn spawn(&self, task: &Arc<Task>, exec_id: &str, process: &Arc<Mutex<Proc>>, args: Vec<String>) -> Result<u32> {
        let tag = tag(exec_id);
        let pid_file = task.bundle.join(format!("{tag}.pid"));
        let log = task.bundle.join(format!("{tag}.log"));
        let exit_file = task.bundle.join(format!("{tag}.exit"));
        let _ = fs::remove_file(&pid_file);
        let io = lock(process).io.clone();
        let mut argv = self.argv(Some(&log));
        argv.extend(args.iter().map(OsString::from));
        argv.extend(["--pid-file".into(), pid_file.clone().into_os_string(), task.container.clone().into()]);
        let mut pty = None;
        let stdio = if io.terminal {
            // runc copies between its stdio and the container's pty: its stdio is a pty of ours (see console).
            let (master, slave) = console::openpty().map_err(|e| Error::io("making a pty", e))?;
            pty = Some(master);
            let dup = |fd: &std::os::fd::OwnedFd| fd.try_clone().map_err(|e| Error::io("duplicating the pty", e));
            [Stdio::from(dup(&slave)?), Stdio::from(dup(&slave)?), Stdio::from(slave)]
        } else {
            let mut p = lock(process);
            [
                stdio::input(&io.stdin, &mut p.stdin).map_err(|e| Error::io("opening stdin", e))?,
                stdio::output(&io.stdout).map_err(|e| Error::io(format!("opening {}", io.stdout), e))?,
                stdio::output(&io.stderr).map_err(|e| Error::io(format!("opening {}", io.stderr), e))?,
            ]
        };
        let (mut child, waiter) = waiter::spawn(&argv, &exit_file, stdio)
            .map_err(|e| Error::io(format!("running {} under /bin/sh", self.config.binary), e))?;
        let deadline = Instant::now() + Duration::from_secs(self.config.start_timeout_secs);
        let kill_all = |child: &mut Child| {
            // The waiter leads its own process group: the runtime command under it goes too.
            // SAFETY: kill(2) of the waiter's process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        };
        let fail = |e: Error| {
            lock(process).stdin.close();
            e
        };
        // The runtime writes the pid file (atomically) once the process runs; until then it may fail.
        let pid = loop {
            if let Some(pid) = fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse::<u32>().ok()) {
                break pid;
            }
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(fail(Error::failed_precondition(format!(
                        "{} {} exited with {status} before the process ran: {}",
                        self.config.binary,
                        args[0],
                        runtime_error(&log, b"")
                    ))));
                }
                Ok(None) if Instant::now() > deadline => {
                    kill_all(&mut child);
                    return Err(fail(Error::unavailable(format!(
                        "{} {} gave no pid within {}s",
                        self.config.binary, args[0], self.config.start_timeout_secs
                    ))));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => return Err(fail(Error::io("waiting for the runtime", e))),
            }
        };
        {
            let mut p = lock(process);
            p.pid = pid;
            p.status = Status::Running;
            p.waiter = Some(waiter);
            if let Some(master) = pty {
                let console = console::Console::start(master, &io).map_err(|e| Error::io("copying the terminal", e))?;
                p.console = Some(console);
            }
        }
        let (host, t, process, exec_id) = (self.host, Arc::clone(task), Arc::clone(process), exec_id.to_string());
        std::thread::Builder::new()
            .name(format!("wait-{}", task.id))
            .spawn(move || wait(host, child, &t, &exec_id, &process, &exit_file))
            .map_err(|e| Error::io("starting the waiting thread", e))?;
        task.save(&self.host);
        Ok(pid)
    }
}

/// What a recovered process is watched by.
enum Watch {
    /// Its waiter, which records its exit status.
    Waiter(WaiterId),
    /// The process itself, whose waiter is gone.
    Process(u32),
}

/// Waits for the waiter of a process: the status it wrote is the process's.
fn wait(host: Host, mut child: Child, task: &Task, exec_id: &str, process: &Mutex<Proc>, exit_file: &Path) {
    use std::os::unix::process::ExitStatusExt;
    let waited = match child.wait() {
        Ok(s) => s.code().map(|c| c as u32).or_else(|| s.signal().map(|s| 128 + s as u32)).unwrap_or(255),
        Err(_) => 255,
    };
    let (status, at) = waiter::read_exit(exit_file).unwrap_or((waited, SystemTime::now()));
    finish(host, task, exec_id, process, status, at);
}

/// Records that a process ended, saves it, then reports it.
fn finish(host: Host, task: &Task, exec_id: &str, process: &Mutex<Proc>, status: u32, at: SystemTime) {
    let exit = {
        let _saving = lock(&task.saving);
        let console = {
            let mut p = lock(process);
            let exit = Exit { pid: p.pid, status, exited_at: Some(at.into()) };
            p.status = Status::Stopped;
            p.exit = Some(exit.clone());
            p.stdin.close();
            p.console.take()
        };
        // The terminal's last output reaches the client before the exit does.
        if let Some(console) = console {
            console.finish();
        }
        task.save_locked(&host);
        lock(process).exit.clone().unwrap_or_default()
    };
    // After the state says Stopped, as berthd's waits expect.
    host.exit(&task.namespace, &task.id, exec_id, exit);
}

fn spec_json(spec: Option<&berth_plugin_sdk::proto::Any>, what: &str) -> Result<serde_json::Value> {
    let spec = spec.ok_or_else(|| Error::invalid_argument(format!("{what} has no spec")))?;
    serde_json::from_slice(&spec.value)
        .map_err(|e| Error::invalid_argument(format!("{what}: the spec is not JSON: {e}")))
}

/// The part of an OCI `LinuxResources` that is checked before it goes to the runtime: wrong types are the
/// client's error, told with the field, rather than the runtime's.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Resources {
    memory: Option<MemoryResources>,
    cpu: Option<CpuResources>,
    pids: Option<PidsResources>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct MemoryResources {
    limit: Option<i64>,
    reservation: Option<i64>,
    swap: Option<i64>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct CpuResources {
    shares: Option<u64>,
    quota: Option<i64>,
    period: Option<u64>,
    cpus: Option<String>,
    mems: Option<String>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct PidsResources {
    limit: Option<i64>,
}

impl Runtime for OciRuntime {
    const NAME: &'static str = "oci";

    fn new(init: Init) -> Result<Self> {
        let config: Config = init.config()?;
        let root = if config.root.is_empty() { init.state_dir.join("runc") } else { PathBuf::from(&config.root) };
        let bundles = init.state_dir.join("bundles");
        for dir in [&root, &bundles] {
            fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let runtime = Self {
            host: init.host,
            config,
            root,
            bundles,
            tasks: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
            cgroup_v2: metrics::host_is_v2(),
        };
        let version = runtime.run(&["--version"]).map_err(|e| e.context("the OCI runtime binary does not run"))?;
        let first = String::from_utf8_lossy(&version).lines().next().unwrap_or_default().to_string();
        runtime.host.info(&format!("driving {} ({first})", runtime.config.binary));
        runtime.recover();
        Ok(runtime)
    }

    fn create(&self, request: CreateRequest) -> Result<u32> {
        let (namespace, id) = (request.namespace.clone(), request.id.clone());
        let io = request.io.clone().unwrap_or_default();
        if !request.checkpoint.is_empty() {
            return Err(Error::unimplemented("the oci example runtime cannot restore checkpoints"));
        }
        let mut spec = spec_json(request.spec.as_ref(), &format!("task {id:?}"))?;
        if io.terminal != spec["process"]["terminal"].as_bool().unwrap_or(false) {
            // runc follows the spec: a mismatch would leave the client without its terminal or its streams.
            spec["process"]["terminal"] = io.terminal.into();
        }
        let mut tasks = lock(&self.tasks);
        if tasks.contains_key(&(namespace.clone(), id.clone())) {
            return Err(Error::already_exists(format!("task {id:?}")));
        }
        let bundle = self.bundles.join(&namespace).join(&id);
        let rootfs_dir = bundle.join("rootfs");
        fs::create_dir_all(&rootfs_dir).map_err(|e| Error::io(format!("creating {}", rootfs_dir.display()), e))?;
        let made = (|| -> Result<usize> {
            if !request.rootfs.is_empty() {
                rootfs::mount_all(&request.rootfs, &rootfs_dir).map_err(|e| Error::io("mounting the rootfs", e))?;
                spec["root"]["path"] = rootfs_dir.display().to_string().into();
            } else if let Some(path) = spec["root"]["path"].as_str().filter(|p| !Path::new(p).is_absolute()) {
                spec["root"]["path"] = bundle.join(path).display().to_string().into();
            }
            let json = serde_json::to_vec_pretty(&spec).expect("a JSON value serializes");
            fs::write(bundle.join("config.json"), json).map_err(|e| Error::io("writing config.json", e))?;
            Ok(request.rootfs.len())
        })();
        let mounts = match made {
            Ok(n) => n,
            Err(e) => {
                rootfs::unmount(&rootfs_dir, request.rootfs.len());
                let _ = fs::remove_dir_all(&bundle);
                return Err(e);
            }
        };
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let task = Arc::new(Task {
            namespace: namespace.clone(),
            id: id.clone(),
            container: format!("berth-{n}-{}", id.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>()),
            bundle,
            mounts,
            processes: Mutex::new([(String::new(), Arc::new(Mutex::new(Proc::new(io, None))))].into()),
            saving: Mutex::new(()),
        });
        task.save(&self.host);
        tasks.insert((namespace, id), task);
        Ok(0)
    }

    fn start(&self, process: &ProcessRequest) -> Result<u32> {
        let task = self.task(&process.namespace, &process.id)?;
        let proc = task.process(&process.exec_id)?;
        let args = {
            let p = lock(&proc);
            if p.status != Status::Created {
                return Err(Error::failed_precondition(format!("process {:?} was started already", process.id)));
            }
            match &p.spec {
                None => vec!["run".to_string(), "--bundle".into(), task.bundle.display().to_string()],
                Some(spec) => {
                    let file = task.bundle.join(format!("exec-{}.json", process.exec_id));
                    fs::write(&file, spec).map_err(|e| Error::io("writing the process spec", e))?;
                    let mut args = vec!["exec".to_string(), "--process".into(), file.display().to_string()];
                    if p.io.terminal {
                        args.push("--tty".into());
                    }
                    args
                }
            }
        };
        self.spawn(&task, &process.exec_id, &proc, args)
    }

    fn state(&self, process: &ProcessRequest) -> Result<StateResponse> {
        let proc = self.task(&process.namespace, &process.id)?.process(&process.exec_id)?;
        let p = lock(&proc);
        Ok(StateResponse {
            status: p.status as i32,
            pid: p.pid,
            exit_status: p.exit.as_ref().map_or(0, |e| e.status),
            exited_at: p.exit.as_ref().and_then(|e| e.exited_at),
            io: Some(p.io.clone()),
        })
    }

    fn kill(&self, process: &ProcessRequest, signal: u32, all: bool) -> Result<()> {
        let task = self.task(&process.namespace, &process.id)?;
        let proc = task.process(&process.exec_id)?;
        let (status, pid) = {
            let p = lock(&proc);
            (p.status, p.pid)
        };
        match status {
            Status::Stopped => Err(Error::process_finished(format!("process {:?}", process.id))),
            Status::Created => {
                // Nothing runs yet: the process ends as if the signal had killed it.
                let exit = Exit { pid: 0, status: 128 + signal, exited_at: Some(now()) };
                {
                    let mut p = lock(&proc);
                    p.status = Status::Stopped;
                    p.exit = Some(exit.clone());
                }
                task.save(&self.host);
                self.host.exit(&task.namespace, &task.id, &process.exec_id, exit);
                Ok(())
            }
            _ if process.exec_id.is_empty() => {
                let signal = signal.to_string();
                let mut args = vec!["kill"];
                if all {
                    args.push("--all");
                }
                args.extend([task.container.as_str(), signal.as_str()]);
                self.run(&args).map(|_| ()).map_err(|e| {
                    if lock(&proc).status == Status::Stopped {
                        Error::process_finished(format!("process {:?}", process.id))
                    } else {
                        e
                    }
                })
            }
            _ => {
                // SAFETY: kill(2); the pid is the exec'd process's, alive while its runtime command waits.
                if unsafe { libc::kill(pid as i32, signal as i32) } != 0 {
                    return Err(Error::process_finished(format!("process {:?}", process.exec_id)));
                }
                Ok(())
            }
        }
    }

    fn delete(&self, request: &TaskRequest) -> Result<Exit> {
        let task = self.task(&request.namespace, &request.id)?;
        let init = task.process("")?;
        let exit = {
            let p = lock(&init);
            match p.status {
                Status::Created => Exit { pid: 0, status: 0, exited_at: Some(now()) },
                Status::Stopped => p.exit.clone().unwrap_or_default(),
                _ => {
                    return Err(Error::failed_precondition(format!(
                        "task {:?} is still running: kill it before deleting it",
                        request.id
                    )));
                }
            }
        };
        lock(&init).stdin.close();
        // `run` removed the container's state when it ended; one that never started has none either.
        let _ = self.run(&["delete", "--force", &task.container]);
        {
            let _saving = lock(&task.saving);
            rootfs::unmount(&task.bundle.join("rootfs"), task.mounts);
            let _ = fs::remove_dir_all(&task.bundle);
        }
        lock(&self.tasks).remove(&(request.namespace.clone(), request.id.clone()));
        Ok(exit)
    }

    fn list(&self, namespace: Option<&str>) -> Result<Vec<TaskRef>> {
        Ok(lock(&self.tasks)
            .values()
            .filter(|t| namespace.is_none_or(|n| n == t.namespace))
            .map(|t| TaskRef { namespace: t.namespace.clone(), id: t.id.clone() })
            .collect())
    }

    fn exec(&self, request: ExecRequest) -> Result<()> {
        let task = self.task(&request.namespace, &request.id)?;
        if !matches!(lock(&*task.process("")?).status, Status::Running) {
            return Err(Error::failed_precondition(format!("task {:?} is not running", request.id)));
        }
        let mut spec = spec_json(request.spec.as_ref(), &format!("exec {:?}", request.exec_id))?;
        let io = request.io.unwrap_or_default();
        spec["terminal"] = io.terminal.into();
        {
            let mut processes = lock(&task.processes);
            if processes.contains_key(&request.exec_id) {
                return Err(Error::already_exists(format!("process {:?}", request.exec_id)));
            }
            let spec = serde_json::to_string(&spec).expect("a JSON value serializes");
            processes.insert(request.exec_id, Arc::new(Mutex::new(Proc::new(io, Some(spec)))));
        }
        task.save(&self.host);
        Ok(())
    }

    fn delete_process(&self, process: &ProcessRequest) -> Result<Exit> {
        let task = self.task(&process.namespace, &process.id)?;
        let proc = task.process(&process.exec_id)?;
        let exit = {
            let p = lock(&proc);
            match p.status {
                Status::Created => Exit { pid: 0, status: 0, exited_at: Some(now()) },
                Status::Stopped => p.exit.clone().unwrap_or_default(),
                _ => {
                    return Err(Error::failed_precondition(format!("process {:?} is still running", process.exec_id)));
                }
            }
        };
        lock(&task.processes).remove(&process.exec_id);
        let tag = tag(&process.exec_id);
        for ext in ["json", "pid", "log", "exit", "console"] {
            let _ = fs::remove_file(task.bundle.join(format!("{tag}.{ext}")));
        }
        task.save(&self.host);
        Ok(exit)
    }

    fn resize_pty(&self, process: &ProcessRequest, width: u32, height: u32) -> Result<()> {
        let proc = self.task(&process.namespace, &process.id)?.process(&process.exec_id)?;
        let p = lock(&proc);
        if p.status == Status::Stopped {
            return Err(Error::process_finished(format!("process {:?}", process.id)));
        }
        let Some(console) = &p.console else {
            let what = if process.exec_id.is_empty() {
                format!("task {:?}", process.id)
            } else {
                format!("process {:?} of task {:?}", process.exec_id, process.id)
            };
            return Err(Error::failed_precondition(format!("{what} has no terminal to resize")));
        };
        console.resize(width, height).map_err(|e| Error::io("resizing the terminal", e))?;
        if let Some(waiter) = p.waiter {
            // The waiter's process group: runc takes SIGWINCH as "copy the new size", the shell ignores it.
            // SAFETY: kill(2) of the process group the waiter leads.
            unsafe { libc::kill(-(waiter.pid as i32), libc::SIGWINCH) };
        }
        Ok(())
    }

    fn close_io(&self, process: &ProcessRequest) -> Result<()> {
        let proc = self.task(&process.namespace, &process.id)?.process(&process.exec_id)?;
        let p = lock(&proc);
        p.stdin.close();
        if let Some(console) = &p.console {
            console.close_stdin();
        }
        Ok(())
    }

    fn pause(&self, request: &TaskRequest) -> Result<()> {
        self.freeze(request, true)
    }

    fn resume(&self, request: &TaskRequest) -> Result<()> {
        self.freeze(request, false)
    }

    fn pids(&self, request: &TaskRequest) -> Result<Vec<ProcessInfo>> {
        let task = self.task(&request.namespace, &request.id)?;
        let out = self.run(&["ps", "--format", "json", &task.container])?;
        let pids: Vec<u32> = serde_json::from_slice(&out)
            .map_err(|e| Error::internal(format!("{} ps printed no JSON list of pids: {e}", self.config.binary)))?;
        let execs: HashMap<u32, String> = lock(&task.processes)
            .iter()
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, p)| (lock(p).pid, k.clone()))
            .collect();
        Ok(pids
            .into_iter()
            .map(|pid| ProcessInfo { pid, exec_id: execs.get(&pid).cloned().unwrap_or_default() })
            .collect())
    }

    fn update(&self, request: UpdateRequest) -> Result<()> {
        let task = self.task(&request.namespace, &request.id)?;
        self.running(&task)?;
        let what = format!("the resources of the update of task {:?}", request.id);
        let resources = request.resources.ok_or_else(|| Error::invalid_argument(format!("{what} are missing")))?;
        let value: serde_json::Value = serde_json::from_slice(&resources.value)
            .map_err(|e| Error::invalid_argument(format!("{what} are not JSON: {e}")))?;
        if !value.is_object() {
            return Err(Error::invalid_argument(format!("{what} are not a JSON object of LinuxResources")));
        }
        serde_json::from_value::<Resources>(value.clone())
            .map_err(|e| Error::invalid_argument(format!("{what} are not LinuxResources: {e}")))?;
        let json = serde_json::to_vec(&value).expect("a JSON value serializes");
        self.run_with(&["update", "--resources", "-", &task.container], Some(&json))?;
        Ok(())
    }

    fn stats(&self, request: &TaskRequest) -> Result<berth_plugin_sdk::proto::Any> {
        let task = self.task(&request.namespace, &request.id)?;
        self.running(&task)?;
        let out = self.run(&["events", "--stats", &task.container])?;
        metrics::from_runc_events(&out, self.cgroup_v2)
            .map_err(|e| Error::internal(format!("{} events --stats printed no stats: {e}", self.config.binary)))
    }
}

impl OciRuntime {
    /// Fails unless the init of `task` runs (or is paused).
    fn running(&self, task: &Task) -> Result<()> {
        match lock(&*task.process("")?).status {
            Status::Running | Status::Paused | Status::Pausing => Ok(()),
            Status::Stopped => Err(Error::process_finished(format!("task {:?}", task.id))),
            _ => Err(Error::failed_precondition(format!("task {:?} is not running", task.id))),
        }
    }

    fn freeze(&self, request: &TaskRequest, pause: bool) -> Result<()> {
        let task = self.task(&request.namespace, &request.id)?;
        let init = task.process("")?;
        let (want, verb) = if pause { (Status::Paused, "pause") } else { (Status::Running, "resume") };
        if lock(&init).status == Status::Stopped {
            return Err(Error::process_finished(format!("task {:?}", request.id)));
        }
        self.run(&[verb, &task.container])?;
        lock(&init).status = want;
        Ok(())
    }
}

berth_plugin_sdk::export_runtime!(OciRuntime);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_errors() {
        let config: Config = berth_plugin_sdk::parse_config(b"{}").unwrap();
        assert_eq!((config.binary.as_str(), config.start_timeout_secs), ("runc", 60));
        let e = berth_plugin_sdk::parse_config::<Config>(br#"{"binary": 5}"#).unwrap_err();
        assert_eq!(e.config_path, ["binary"]);
    }

    #[test]
    fn runtime_errors_come_from_the_json_log() {
        let dir = std::env::temp_dir().join(format!("oci-example-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        fs::write(
            &log,
            "{\"level\":\"info\",\"msg\":\"x\"}\n{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": not found\"}\n",
        )
        .unwrap();
        assert_eq!(runtime_error(&log, b"stderr"), "exec: \"nope\": not found");
        assert_eq!(runtime_error(&dir.join("none"), b" stderr \n"), "stderr");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_resources_name_the_field() {
        let e = serde_json::from_str::<Resources>(r#"{"memory": {"limit": "lots"}}"#).err().unwrap();
        assert!(e.to_string().contains("invalid type: string \"lots\""), "{e}");
        assert_eq!(container_status(br#"{"status": "paused", "pid": 3}"#).as_deref(), Some("paused"));
    }
}
