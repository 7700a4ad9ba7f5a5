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
//!   on its `rootfs/` and points the spec's root there. Nothing runs yet: the task is Created, pid 0.
//! * **start** runs `runc run --pid-file ... ID` in the foreground, as a child of berthd, with the client's
//!   FIFOs as its stdout and stderr and a pipe fed from the stdin FIFO as its stdin (runc hands its stdio to
//!   the container). It returns once the pid file names the container's init. A thread waits for runc, whose
//!   exit status is the container's (128 + signal when it was killed), and reports the exit to berthd. That is
//!   why runc runs in the foreground: no subreaper, no shim, and the exit status comes from `waitpid`.
//! * **exec** + start is the same with `runc exec --process ... ID`.
//! * **kill** is `runc kill [--all] ID SIGNAL` for init, kill(2) for an exec'd process.
//! * **pause**, **resume**, **pids** are `runc pause`, `runc resume`, `runc ps --format json`.
//! * **delete** (after the exit) unmounts the rootfs and removes the bundle; runc removed its own state when
//!   `run` ended.
//!
//! What it does not do: terminals (`ctr run -t` is refused), checkpoints, resource updates, metrics, and
//! surviving a berthd restart: its tasks are berthd's children and its state is in memory. At start it
//! removes what a previous berthd's instance left (containers under its runc root, mounted bundles).

mod rootfs;
mod stdio;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use berth_plugin_sdk::proto::Timestamp;
use berth_plugin_sdk::proto::runtime::{
    CreateRequest, ExecRequest, Exit, Io, ProcessInfo, ProcessRequest, StateResponse, Status, TaskRef, TaskRequest,
};
use berth_plugin_sdk::runtime::Runtime;
use berth_plugin_sdk::{Error, Host, Init, Result};
use serde::Deserialize;

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
    spec: Option<Vec<u8>>,
    status: Status,
    pid: u32,
    exit: Option<Exit>,
    stdin: stdio::StdinCloser,
}

impl Proc {
    fn new(io: Io, spec: Option<Vec<u8>>) -> Self {
        Self { io, spec, status: Status::Created, pid: 0, exit: None, stdin: Default::default() }
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
}

/// The runtime.
pub struct OciRuntime {
    host: Host,
    config: Config,
    root: PathBuf,
    bundles: PathBuf,
    tasks: Mutex<HashMap<(String, String), Arc<Task>>>,
    counter: AtomicU64,
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

impl OciRuntime {
    fn command(&self, log: Option<&Path>) -> Command {
        let mut command = Command::new(&self.config.binary);
        command.args(&self.config.args).arg("--root").arg(&self.root);
        if let Some(log) = log {
            command.arg("--log").arg(log).arg("--log-format").arg("json");
        }
        command
    }

    /// Runs a short runtime command (kill, pause, ps, delete) to completion.
    fn run(&self, args: &[&str]) -> Result<Vec<u8>> {
        let output = self
            .command(None)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io(format!("running {} {}", self.config.binary, args.join(" ")), e))?;
        if !output.status.success() {
            return Err(Error::internal(format!(
                "{} {} failed: {}",
                self.config.binary,
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(output.stdout)
    }

    fn task(&self, namespace: &str, id: &str) -> Result<Arc<Task>> {
        lock(&self.tasks).get(&(namespace.into(), id.into())).cloned().ok_or_else(|| task_not_found(id))
    }

    /// Removes what an earlier instance left: containers under the runtime root, mounted bundles.
    fn clean_leftovers(&self) {
        if let Ok(out) = self.run(&["list", "-q"]) {
            for container in String::from_utf8_lossy(&out).lines().filter(|l| !l.is_empty()) {
                self.host.info(&format!("removing container {container} left by an earlier berthd"));
                let _ = self.run(&["delete", "--force", container]);
            }
        }
        for ns in fs::read_dir(&self.bundles).into_iter().flatten().flatten() {
            for bundle in fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                rootfs::unmount(&bundle.path().join("rootfs"), 8);
                let _ = fs::remove_dir_all(bundle.path());
            }
        }
    }

    /// Starts `process` of `task` with the runtime command `args` (which must take `--pid-file`), waits for
    /// its pid, and leaves a thread waiting for the command, which reports the exit.
    fn spawn(&self, task: &Arc<Task>, exec_id: &str, process: &Arc<Mutex<Proc>>, args: Vec<String>) -> Result<u32> {
        let tag = if exec_id.is_empty() { "init".to_string() } else { format!("exec-{exec_id}") };
        let pid_file = task.bundle.join(format!("{tag}.pid"));
        let log = task.bundle.join(format!("{tag}.log"));
        let _ = fs::remove_file(&pid_file);
        let mut command = self.command(Some(&log));
        command.args(&args).arg("--pid-file").arg(&pid_file).arg(&task.container);
        {
            let mut p = lock(process);
            let io = p.io.clone();
            command.stdin(stdio::input(&io.stdin, &mut p.stdin).map_err(|e| Error::io("opening stdin", e))?);
            command.stdout(stdio::output(&io.stdout).map_err(|e| Error::io(format!("opening {}", io.stdout), e))?);
            command.stderr(stdio::output(&io.stderr).map_err(|e| Error::io(format!("opening {}", io.stderr), e))?);
        }
        let mut child = command.spawn().map_err(|e| Error::io(format!("running {}", self.config.binary), e))?;
        // The runtime writes the pid file (atomically) once the process runs; until then it may fail.
        let deadline = Instant::now() + Duration::from_secs(self.config.start_timeout_secs);
        let pid = loop {
            if let Some(pid) = fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse::<u32>().ok()) {
                break pid;
            }
            match child.try_wait() {
                Ok(Some(status)) => {
                    lock(process).stdin.close();
                    return Err(Error::failed_precondition(format!(
                        "{} {} exited with {status} before the process ran: {}",
                        self.config.binary,
                        args[0],
                        runtime_error(&log, b"")
                    )));
                }
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::unavailable(format!(
                        "{} {} gave no pid within {}s",
                        self.config.binary, args[0], self.config.start_timeout_secs
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => return Err(Error::io("waiting for the runtime", e)),
            }
        };
        {
            let mut p = lock(process);
            p.pid = pid;
            p.status = Status::Running;
        }
        let (host, task, process, exec_id) = (self.host, Arc::clone(task), Arc::clone(process), exec_id.to_string());
        std::thread::Builder::new()
            .name(format!("wait-{}", task.id))
            .spawn(move || wait(host, child, &task, &exec_id, &process, pid))
            .map_err(|e| Error::io("starting the waiting thread", e))?;
        Ok(pid)
    }
}

/// Waits for the runtime command of a process: its exit status is the process's.
fn wait(host: Host, mut child: Child, task: &Task, exec_id: &str, process: &Mutex<Proc>, pid: u32) {
    use std::os::unix::process::ExitStatusExt;
    let status = match child.wait() {
        Ok(s) => s.code().map(|c| c as u32).or_else(|| s.signal().map(|s| 128 + s as u32)).unwrap_or(255),
        Err(_) => 255,
    };
    let exit = Exit { pid, status, exited_at: Some(now()) };
    {
        let mut p = lock(process);
        p.status = Status::Stopped;
        p.exit = Some(exit.clone());
        p.stdin.close();
    }
    // After the state says Stopped, as berthd's waits expect.
    host.exit(&task.namespace, &task.id, exec_id, exit);
}

fn spec_json(spec: Option<&berth_plugin_sdk::proto::Any>, what: &str) -> Result<serde_json::Value> {
    let spec = spec.ok_or_else(|| Error::invalid_argument(format!("{what} has no spec")))?;
    serde_json::from_slice(&spec.value)
        .map_err(|e| Error::invalid_argument(format!("{what}: the spec is not JSON: {e}")))
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
        };
        let version = runtime.run(&["--version"]).map_err(|e| e.context("the OCI runtime binary does not run"))?;
        let first = String::from_utf8_lossy(&version).lines().next().unwrap_or_default().to_string();
        runtime.host.info(&format!("driving {} ({first})", runtime.config.binary));
        runtime.clean_leftovers();
        Ok(runtime)
    }

    fn create(&self, request: CreateRequest) -> Result<u32> {
        let (namespace, id) = (request.namespace.clone(), request.id.clone());
        let io = request.io.clone().unwrap_or_default();
        if io.terminal {
            return Err(Error::unimplemented("the oci example runtime has no terminal support (ctr run -t)"));
        }
        if !request.checkpoint.is_empty() {
            return Err(Error::unimplemented("the oci example runtime cannot restore checkpoints"));
        }
        let mut spec = spec_json(request.spec.as_ref(), &format!("task {id:?}"))?;
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
        let task = Task {
            namespace: namespace.clone(),
            id: id.clone(),
            container: format!("berth-{n}-{}", id.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>()),
            bundle,
            mounts,
            processes: Mutex::new([(String::new(), Arc::new(Mutex::new(Proc::new(io, None))))].into()),
        };
        tasks.insert((namespace, id), Arc::new(task));
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
                    vec!["exec".to_string(), "--process".into(), file.display().to_string()]
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
        rootfs::unmount(&task.bundle.join("rootfs"), task.mounts);
        let _ = fs::remove_dir_all(&task.bundle);
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
        if lock(&*task.process("")?).status != Status::Running {
            return Err(Error::failed_precondition(format!("task {:?} is not running", request.id)));
        }
        let spec = spec_json(request.spec.as_ref(), &format!("exec {:?}", request.exec_id))?;
        let io = request.io.unwrap_or_default();
        if io.terminal {
            return Err(Error::unimplemented("the oci example runtime has no terminal support"));
        }
        let mut processes = lock(&task.processes);
        if processes.contains_key(&request.exec_id) {
            return Err(Error::already_exists(format!("process {:?}", request.exec_id)));
        }
        let spec = serde_json::to_vec(&spec).expect("a JSON value serializes");
        processes.insert(request.exec_id, Arc::new(Mutex::new(Proc::new(io, Some(spec)))));
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
        let _ = fs::remove_file(task.bundle.join(format!("exec-{}.json", process.exec_id)));
        Ok(exit)
    }

    fn close_io(&self, process: &ProcessRequest) -> Result<()> {
        let proc = self.task(&process.namespace, &process.id)?.process(&process.exec_id)?;
        lock(&proc).stdin.close();
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
}

impl OciRuntime {
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
}
