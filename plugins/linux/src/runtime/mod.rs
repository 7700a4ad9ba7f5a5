//! The `runtime.linux` plugin: berth's Runtime trait over one reaper per task (see [`crate::reaper`]).
//!
//! berthd never forks a container: `create` writes the bundle and hands it to the reaper spawner
//! (module `spawner`; `berth-reaper create` when there is none), and every other call is a request on the task's
//! `reaper.sock`. Tasks outlive berthd; at start-up the plugin finds
//! them again by scanning its task directories, in parallel and with a deadline per task, so one dead or
//! wedged reaper cannot stall start-up (containerd#11409). A task whose reaper is gone is reported stopped,
//! with the exit status the reaper wrote (or 255 when it died first), until it is deleted.

mod client;
pub(crate) mod metrics;
mod spawner;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_core::Error;
use berth_core::plugin::{InitError, Instance, PluginKind, Registration};
use berth_core::runtime::{
    ConsoleSize, CreateOptions, ExecOptions, Exit, Io, Process, ProcessInfo, Result, Runtime, RuntimeError,
    RuntimeEvent, RuntimeEvents, SharedRuntime, State, Status, Task,
};
use prost_types::Any;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::reaper::protocol::{
    self as proto, EXIT_FILE, ExitInfo, PidInfo, ProcState, ProcStatus, ROOTFS_DIR, Request, RootfsMount, SOCKET_FILE,
    Started, TASK_FILE, TaskConfig,
};
use client::ReaperClient;

/// `[plugins."runtime.linux"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinuxConfig {
    /// The reaper binary; empty: `berth-reaper` next to berthd's own binary.
    pub reaper_path: String,
    /// How long start-up waits for one task's reaper to answer before it reports the task unknown.
    pub recovery_timeout_ms: u64,
    /// How long a create may take (mounts, hooks, a slow disk) before it fails.
    pub create_timeout_secs: u64,
}

impl Default for LinuxConfig {
    fn default() -> Self {
        LinuxConfig { reaper_path: String::new(), recovery_timeout_ms: 2000, create_timeout_secs: 60 }
    }
}

/// The plugin's registration.
pub fn registration() -> Registration {
    Registration::new::<LinuxConfig, _, _>(PluginKind::Runtime, "linux", |ctx| {
        let config = ctx.config::<LinuxConfig>();
        let state = ctx.dirs().state.clone();
        async move {
            // SAFETY: plain syscall.
            if unsafe { libc::geteuid() } != 0 {
                return Err(InitError::Skip("the Linux runtime needs root (namespaces, mounts, cgroups)".into()));
            }
            let reaper = if config.reaper_path.is_empty() {
                std::env::current_exe()
                    .map_err(|e| InitError::Failed(format!("finding berthd's own path: {e}")))?
                    .with_file_name("berth-reaper")
            } else {
                PathBuf::from(&config.reaper_path)
            };
            if !reaper.is_file() {
                return Err(InitError::Failed(format!(
                    "reaper binary {} not found: install berth-reaper next to berthd or set reaper_path",
                    reaper.display()
                )));
            }
            let runtime = LinuxRuntime::new(state, reaper, &config);
            runtime.inner.spawner.start();
            let (live, stopped) = runtime.recover(Duration::from_millis(config.recovery_timeout_ms)).await;
            tracing::info!(live, stopped, "runtime.linux: tasks recovered");
            Ok(Instance::new(Arc::new(runtime) as SharedRuntime))
        }
    })
    .describe("built-in Linux OCI runtime: namespaces, cgroups, seccomp; one small reaper process per task")
}

type TaskKey = (String, String);

struct Inner {
    tasks_dir: PathBuf,
    oci_dir: PathBuf,
    reaper: PathBuf,
    spawner: spawner::Spawner,
    create_timeout: Duration,
    tasks: Mutex<HashMap<TaskKey, Arc<LinuxTask>>>,
    events: mpsc::UnboundedSender<RuntimeEvent>,
    events_rx: Mutex<Option<RuntimeEvents>>,
}

/// The Linux runtime.
#[derive(Clone)]
pub struct LinuxRuntime {
    inner: Arc<Inner>,
}

fn internal(what: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Other(Error::Internal(what.to_string()))
}

fn invalid(what: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Other(Error::InvalidArgument(what.to_string()))
}

fn to_exit(e: ExitInfo) -> Exit {
    Exit { pid: e.pid.max(0) as u32, status: e.status, timestamp: UNIX_EPOCH + Duration::from_nanos(e.at_ns) }
}

fn to_io(s: &proto::Stdio) -> Io {
    Io { stdin: s.stdin.clone(), stdout: s.stdout.clone(), stderr: s.stderr.clone(), terminal: s.terminal }
}

fn from_io(io: &Io) -> proto::Stdio {
    proto::Stdio {
        stdin: io.stdin.clone(),
        stdout: io.stdout.clone(),
        stderr: io.stderr.clone(),
        terminal: io.terminal,
    }
}

fn to_state(s: ProcState) -> State {
    State {
        status: match s.status {
            ProcStatus::Created => Status::Created,
            ProcStatus::Running => Status::Running,
            ProcStatus::Paused => Status::Paused,
            ProcStatus::Stopped => Status::Stopped,
        },
        pid: s.pid.max(0) as u32,
        exit_status: s.exit.map_or(0, |e| e.status),
        exited_at: s.exit.map(|e| to_exit(e).timestamp),
        io: to_io(&s.stdio),
    }
}

/// A JSON document carried in an Any, as containerd clients send specs and resources.
fn json_of(any: &Any, what: &str) -> Result<serde_json::Value> {
    serde_json::from_slice(&any.value).map_err(|e| invalid(format!("{what} ({}): not JSON: {e}", any.type_url)))
}

impl LinuxRuntime {
    /// A runtime keeping its tasks under `state`, starting `reaper` for each (the plugin's init also recovers
    /// the tasks an earlier berthd left: see [`LinuxRuntime::recover`]).
    pub fn new(state: PathBuf, reaper: PathBuf, config: &LinuxConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        LinuxRuntime {
            inner: Arc::new(Inner {
                tasks_dir: state.join("tasks"),
                oci_dir: oci_dir(&state),
                spawner: spawner::Spawner::new(reaper.clone()),
                reaper,
                create_timeout: Duration::from_secs(config.create_timeout_secs.max(1)),
                tasks: Mutex::new(HashMap::new()),
                events: tx,
                events_rx: Mutex::new(Some(rx)),
            }),
        }
    }

    fn task_dir(&self, ns: &str, id: &str) -> PathBuf {
        self.inner.tasks_dir.join(ns).join(id)
    }

    fn lookup(&self, ns: &str, id: &str) -> Option<Arc<LinuxTask>> {
        self.inner.tasks.lock().expect("tasks lock").get(&(ns.to_string(), id.to_string())).cloned()
    }

    fn new_task(&self, ns: &str, id: &str, pid: u32, io: Io, dead: Option<Exit>) -> Arc<LinuxTask> {
        let dir = self.task_dir(ns, id);
        Arc::new(LinuxTask {
            ns: ns.to_string(),
            id: id.to_string(),
            client: ReaperClient { socket: dir.join(SOCKET_FILE), what: format!("task {id:?}") },
            dir,
            pid,
            io,
            dead,
            exited: std::sync::OnceLock::new(),
            deleting: tokio::sync::Mutex::new(()),
        })
    }

    /// Relays the reaper's events until it goes away (the task was deleted, or the reaper died).
    fn watch(&self, task: &Arc<LinuxTask>) {
        let client = task.client.clone();
        let (ns, id) = (task.ns.clone(), task.id.clone());
        let events = self.inner.events.clone();
        let task = Arc::downgrade(task);
        tokio::spawn(async move {
            let Ok(mut conn) = client.subscribe().await else { return };
            while let Some(event) = client::next_event(&mut conn).await {
                let event = match event {
                    proto::Event::Exit { exec_id, exit } => {
                        let exit = to_exit(exit);
                        if exec_id.is_none()
                            && let Some(task) = task.upgrade()
                        {
                            let _ = task.exited.set(exit);
                        }
                        RuntimeEvent::Exit { namespace: ns.clone(), container_id: id.clone(), exec_id, exit }
                    }
                    proto::Event::Oom => RuntimeEvent::Oom { namespace: ns.clone(), container_id: id.clone() },
                };
                if events.send(event).is_err() {
                    return;
                }
            }
        });
    }

    /// Finds the tasks left by an earlier berthd; returns (live, stopped) counts.
    pub async fn recover(&self, timeout: Duration) -> (usize, usize) {
        let mut found = Vec::new();
        for ns in read_dirs(&self.inner.tasks_dir) {
            for id in read_dirs(&ns) {
                found.push(id);
            }
        }
        let checks = found.into_iter().map(|dir| {
            let runtime = self.clone();
            async move {
                let ns = dir.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
                let id = dir.file_name().map(|n| n.to_string_lossy().into_owned());
                let (Some(ns), Some(id)) = (ns, id) else { return None };
                let client = ReaperClient { socket: dir.join(SOCKET_FILE), what: format!("task {id:?}") };
                let state = tokio::time::timeout(timeout, client.call::<ProcState>(Request::State { exec_id: None })).await;
                let task = match state {
                    Ok(Ok(s)) => {
                        let task = runtime.new_task(&ns, &id, s.pid.max(0) as u32, to_io(&s.stdio), None);
                        runtime.watch(&task);
                        task
                    }
                    other => {
                        let exit = read_exit_file(&dir);
                        let why = match other {
                            Ok(Err(e)) => e.to_string(),
                            Err(_) => format!("no answer within {} ms", timeout.as_millis()),
                            Ok(Ok(_)) => unreachable!(),
                        };
                        tracing::warn!(namespace = %ns, task = %id, reason = %why, "task's reaper is gone: reported stopped");
                        let exit = exit.unwrap_or(Exit { pid: 0, status: 255, timestamp: SystemTime::now() });
                        let io = read_task_config(&dir).map(|c| to_io(&c.stdio)).unwrap_or_default();
                        runtime.new_task(&ns, &id, exit.pid, io, Some(exit))
                    }
                };
                Some(task)
            }
        });
        let tasks: Vec<Arc<LinuxTask>> = futures::future::join_all(checks).await.into_iter().flatten().collect();
        let stopped = tasks.iter().filter(|t| t.dead.is_some()).count();
        let live = tasks.len() - stopped;
        let mut map = self.inner.tasks.lock().expect("tasks lock");
        for t in tasks {
            if let Some(exit) = t.dead {
                // Nobody will send this exit: announce it once now.
                let _ = self.inner.events.send(RuntimeEvent::Exit {
                    namespace: t.ns.clone(),
                    container_id: t.id.clone(),
                    exec_id: None,
                    exit,
                });
            }
            map.insert((t.ns.clone(), t.id.clone()), t);
        }
        (live, stopped)
    }

    /// Writes the bundle and the task file, starts the reaper and waits for its verdict.
    async fn create_task(&self, ns: &str, id: &str, options: CreateOptions) -> Result<Arc<LinuxTask>> {
        berth_core::ident::validate(id).map_err(|e| RuntimeError::Other(e.context("task id")))?;
        if options.checkpoint.as_deref().is_some_and(|c| !c.is_empty()) {
            return Err(RuntimeError::Other(Error::FailedPrecondition(
                "restoring from a checkpoint needs CRIU support, which berth does not have yet".into(),
            )));
        }
        let spec_any = options.spec.as_ref().ok_or_else(|| invalid("the container has no OCI spec"))?;
        let mut spec = json_of(spec_any, "spec")?;
        let dir = self.task_dir(ns, id);
        if !options.rootfs.is_empty() {
            spec["root"]["path"] = serde_json::Value::String(dir.join(ROOTFS_DIR).display().to_string());
        } else {
            let root = spec["root"]["path"].as_str().unwrap_or_default();
            if root.is_empty() {
                return Err(invalid(
                    "the task has no root filesystem: send rootfs mounts or set root.path in the spec",
                ));
            }
            if !Path::new(root).is_absolute() {
                return Err(invalid(format!("spec root.path {root:?} must be absolute")));
            }
        }
        std::fs::create_dir_all(self.inner.tasks_dir.join(ns))
            .map_err(|e| internal(format!("creating task directory: {e}")))?;
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::AlreadyExists(format!("task {id:?}")));
            }
            Err(e) => return Err(internal(format!("creating {}: {e}", dir.display()))),
        }
        let result = self.launch(ns, id, &dir, &spec, &options).await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let pid = result?;
        let task = self.new_task(ns, id, pid, options.io.clone(), None);
        self.watch(&task);
        Ok(task)
    }

    async fn launch(
        &self,
        ns: &str,
        id: &str,
        dir: &Path,
        spec: &serde_json::Value,
        options: &CreateOptions,
    ) -> Result<u32> {
        let config = TaskConfig {
            namespace: ns.to_string(),
            id: id.to_string(),
            oci_root: self.inner.oci_dir.join(ns),
            stdio: from_io(&options.io),
            rootfs: options
                .rootfs
                .iter()
                .map(|m| RootfsMount {
                    kind: m.kind.clone(),
                    source: m.source.clone(),
                    target: m.target.clone(),
                    options: m.options.clone(),
                })
                .collect(),
        };
        let write = |name: &str, data: Vec<u8>| {
            std::fs::write(dir.join(name), data).map_err(|e| internal(format!("writing {name}: {e}")))
        };
        write("config.json", serde_json::to_vec(spec).map_err(internal)?)?;
        write(TASK_FILE, serde_json::to_vec(&config).map_err(internal)?)?;
        let read_end = match self.inner.spawner.request(dir) {
            Ok(read_end) => read_end,
            Err(e) => {
                if matches!(e, spawner::SpawnError::BackingOff) {
                    tracing::debug!("runtime.linux: task {id:?}: {e}; creating it with berth-reaper create");
                } else {
                    tracing::warn!("runtime.linux: task {id:?}: {e}; creating it with berth-reaper create");
                }
                return self.launch_by_exec(id, dir).await;
            }
        };
        let timeout = self.inner.create_timeout;
        let outcome = tokio::time::timeout(timeout, spawner::read_reply(read_end))
            .await
            .map_err(|_| internal(format!("task {id:?}: create took longer than {} s", timeout.as_secs())))?
            .map_err(|e| internal(format!("task {id:?}: reading the reaper's reply: {e}")))?;
        match outcome {
            spawner::Outcome::Reply(proto::Reply::Ok(v)) => Ok(v["pid"].as_u64().unwrap_or(0) as u32),
            spawner::Outcome::Reply(proto::Reply::Error(e)) => {
                Err(client::map_error(&format!("creating task {id:?}"), e))
            }
            spawner::Outcome::Closed => {
                let log = std::fs::read_to_string(dir.join(proto::LOG_FILE)).unwrap_or_default();
                Err(internal(format!("task {id:?}: the reaper exited before creating the container: {}", log.trim())))
            }
        }
    }

    /// Creates the task with a `berth-reaper create` of its own, for when the spawner cannot take it.
    async fn launch_by_exec(&self, id: &str, dir: &Path) -> Result<u32> {
        let child = tokio::process::Command::new(&self.inner.reaper)
            .arg("create")
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| internal(format!("starting {}: {e}", self.inner.reaper.display())))?;
        let out = tokio::time::timeout(self.inner.create_timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                internal(format!("task {id:?}: create took longer than {} s", self.inner.create_timeout.as_secs()))
            })?
            .map_err(|e| internal(format!("waiting for the reaper: {e}")))?;
        let line = String::from_utf8_lossy(&out.stdout);
        match serde_json::from_str::<proto::Reply>(line.trim()) {
            Ok(proto::Reply::Ok(v)) => Ok(v["pid"].as_u64().unwrap_or(0) as u32),
            Ok(proto::Reply::Error(e)) => Err(client::map_error(&format!("creating task {id:?}"), e)),
            Err(_) => Err(internal(format!(
                "the reaper failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))),
        }
    }
}

/// Where the runtime whose state directory is `state` keeps its containers' runtime state (one directory per
/// namespace); `monitor.cgroups` finds tasks' cgroups there.
pub(crate) fn oci_dir(state: &Path) -> PathBuf {
    state.join("oci")
}

fn read_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect()
}

fn read_exit_file(dir: &Path) -> Option<Exit> {
    let data = std::fs::read(dir.join(EXIT_FILE)).ok()?;
    serde_json::from_slice::<ExitInfo>(&data).ok().map(to_exit)
}

fn read_task_config(dir: &Path) -> Option<TaskConfig> {
    serde_json::from_slice(&std::fs::read(dir.join(TASK_FILE)).ok()?).ok()
}

#[async_trait::async_trait]
impl Runtime for LinuxRuntime {
    fn id(&self) -> &str {
        "linux"
    }

    fn take_events(&self) -> Option<RuntimeEvents> {
        self.inner.events_rx.lock().expect("events lock").take()
    }

    async fn create(&self, ns: &str, id: &str, options: CreateOptions) -> Result<Arc<dyn Task>> {
        if self.lookup(ns, id).is_some() {
            return Err(RuntimeError::AlreadyExists(format!("task {id:?}")));
        }
        let task = self.create_task(ns, id, options).await?;
        self.inner.tasks.lock().expect("tasks lock").insert((ns.to_string(), id.to_string()), task.clone());
        Ok(task)
    }

    async fn get(&self, ns: &str, id: &str) -> Result<Arc<dyn Task>> {
        self.lookup(ns, id)
            .map(|t| t as Arc<dyn Task>)
            .ok_or_else(|| RuntimeError::DoesNotExist(format!("task {id:?}")))
    }

    async fn tasks(&self, ns: Option<&str>) -> Result<Vec<Arc<dyn Task>>> {
        let map = self.inner.tasks.lock().expect("tasks lock");
        let mut tasks: Vec<Arc<LinuxTask>> = map.values().filter(|t| ns.is_none_or(|n| n == t.ns)).cloned().collect();
        tasks.sort_by(|a, b| (&a.ns, &a.id).cmp(&(&b.ns, &b.id)));
        Ok(tasks.into_iter().map(|t| t as Arc<dyn Task>).collect())
    }

    async fn delete(&self, ns: &str, id: &str) -> Result<Exit> {
        let task = self.lookup(ns, id).ok_or_else(|| RuntimeError::DoesNotExist(format!("task {id:?}")))?;
        // Two deletes of one task at once (a client's and the restart monitor's): the second waits for the
        // first and finds the task gone, rather than asking a reaper that is exiting.
        let _deleting = task.deleting.lock().await;
        if !self.lookup(ns, id).is_some_and(|t| Arc::ptr_eq(&t, &task)) {
            return Err(RuntimeError::DoesNotExist(format!("task {id:?}")));
        }
        let exit = match task.dead {
            Some(exit) => {
                // The reaper is gone: clean up what it left with a one-shot reaper process.
                let out = tokio::process::Command::new(&self.inner.reaper)
                    .arg("cleanup")
                    .arg(&task.dir)
                    .stdin(std::process::Stdio::null())
                    .output()
                    .await
                    .map_err(|e| internal(format!("starting the reaper for cleanup: {e}")))?;
                if !out.status.success() {
                    return Err(internal(String::from_utf8_lossy(&out.stderr).trim().to_string()));
                }
                exit
            }
            None => to_exit(task.client.call::<ExitInfo>(Request::Delete { force: false }).await?),
        };
        self.inner.tasks.lock().expect("tasks lock").remove(&(ns.to_string(), id.to_string()));
        // The namespace's directories go with its last task.
        let _ = std::fs::remove_dir(self.inner.tasks_dir.join(ns));
        let _ = std::fs::remove_dir(self.inner.oci_dir.join(ns));
        Ok(exit)
    }
}

/// A task: its init process and the requests that act on the whole container.
pub struct LinuxTask {
    ns: String,
    id: String,
    dir: PathBuf,
    client: ReaperClient,
    pid: u32,
    io: Io,
    /// Set when the reaper was gone at recovery: the task only reports this exit, then is deleted.
    dead: Option<Exit>,
    /// Init's exit, once the reaper has announced it: a stopped init's state cannot change, so
    /// `state` and `wait` answer from here instead of asking the reaper (clients ask right after the exit).
    exited: std::sync::OnceLock<Exit>,
    /// Held while the task is being deleted.
    deleting: tokio::sync::Mutex<()>,
}

impl LinuxTask {
    /// Init's exit when berthd knows it without asking the reaper: found at recovery, or announced.
    fn known_exit(&self) -> Option<Exit> {
        self.dead.or_else(|| self.exited.get().copied())
    }

    fn alive(&self) -> Result<()> {
        match self.dead {
            Some(_) => Err(RuntimeError::ProcessAlreadyExited(format!("task {:?}", self.id))),
            None => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl Process for LinuxTask {
    fn id(&self) -> &str {
        &self.id
    }

    async fn state(&self) -> Result<State> {
        if let Some(exit) = self.known_exit() {
            return Ok(State {
                status: if exit.status == 255 && exit.pid == 0 { Status::Unknown } else { Status::Stopped },
                pid: self.pid,
                exit_status: exit.status,
                exited_at: Some(exit.timestamp),
                io: self.io.clone(),
            });
        }
        Ok(to_state(self.client.call(Request::State { exec_id: None }).await?))
    }

    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    async fn start(&self) -> Result<u32> {
        self.alive()?;
        self.client.call::<Started>(Request::Start { exec_id: None }).await.map(|s| s.pid as u32)
    }

    async fn kill(&self, signal: u32, all: bool) -> Result<()> {
        self.alive()?;
        self.client
            .call::<serde_json::Value>(Request::Kill { exec_id: None, signal: signal as i32, all })
            .await
            .map(|_| ())
    }

    async fn resize_pty(&self, size: ConsoleSize) -> Result<()> {
        self.alive()?;
        let (width, height) = (size.width.min(u16::MAX as u32) as u16, size.height.min(u16::MAX as u32) as u16);
        self.client.call::<serde_json::Value>(Request::Resize { exec_id: None, width, height }).await.map(|_| ())
    }

    async fn close_io(&self) -> Result<()> {
        self.alive()?;
        self.client.call::<serde_json::Value>(Request::CloseIo { exec_id: None }).await.map(|_| ())
    }

    async fn wait(&self) -> Result<Exit> {
        if let Some(exit) = self.known_exit() {
            return Ok(exit);
        }
        Ok(to_exit(self.client.call_unbounded(Request::Wait { exec_id: None }).await?))
    }
}

#[async_trait::async_trait]
impl Task for LinuxTask {
    fn namespace(&self) -> &str {
        &self.ns
    }

    async fn pause(&self) -> Result<()> {
        self.alive()?;
        self.client.call::<serde_json::Value>(Request::Pause).await.map(|_| ())
    }

    async fn resume(&self) -> Result<()> {
        self.alive()?;
        self.client.call::<serde_json::Value>(Request::Resume).await.map(|_| ())
    }

    async fn exec(&self, id: &str, options: ExecOptions) -> Result<Arc<dyn Process>> {
        self.alive()?;
        berth_core::ident::validate(id).map_err(|e| RuntimeError::Other(e.context("exec id")))?;
        let spec = options.spec.as_ref().ok_or_else(|| invalid("exec: the process spec is missing"))?;
        let spec = json_of(spec, "exec process spec")?;
        self.client
            .call::<serde_json::Value>(Request::Exec { exec_id: id.to_string(), spec, stdio: from_io(&options.io) })
            .await?;
        Ok(Arc::new(LinuxProcess { exec_id: id.to_string(), client: self.client.clone() }))
    }

    async fn pids(&self) -> Result<Vec<ProcessInfo>> {
        if self.dead.is_some() {
            return Ok(Vec::new());
        }
        let pids: Vec<PidInfo> = self.client.call(Request::Pids).await?;
        Ok(pids.into_iter().map(|p| ProcessInfo { pid: p.pid.max(0) as u32, exec_id: p.exec_id }).collect())
    }

    async fn checkpoint(&self, _path: &str, _options: Option<Any>) -> Result<()> {
        Err(RuntimeError::Other(Error::FailedPrecondition(
            "checkpoint needs CRIU support, which berth does not have yet".into(),
        )))
    }

    async fn update(&self, resources: Any, _annotations: BTreeMap<String, String>) -> Result<()> {
        self.alive()?;
        let resources = json_of(&resources, "resources")?;
        self.client.call::<serde_json::Value>(Request::Update { resources }).await.map(|_| ())
    }

    async fn process(&self, id: &str) -> Result<Arc<dyn Process>> {
        self.alive()?;
        self.client.call::<ProcState>(Request::State { exec_id: Some(id.to_string()) }).await?;
        Ok(Arc::new(LinuxProcess { exec_id: id.to_string(), client: self.client.clone() }))
    }

    async fn delete_process(&self, id: &str) -> Result<Exit> {
        self.alive()?;
        Ok(to_exit(self.client.call(Request::DeleteProcess { exec_id: id.to_string() }).await?))
    }

    async fn stats(&self) -> Result<Any> {
        self.alive()?;
        let stats: crate::cgroups::Stats = self.client.call(Request::Stats).await?;
        let mode = crate::cgroups::mode().map_err(|e| internal(format!("detecting the cgroup mode: {e}")))?;
        Ok(metrics::to_any(&stats, mode))
    }
}

/// A process exec'd into a task.
struct LinuxProcess {
    exec_id: String,
    client: ReaperClient,
}

impl LinuxProcess {
    fn key(&self) -> Option<String> {
        Some(self.exec_id.clone())
    }
}

#[async_trait::async_trait]
impl Process for LinuxProcess {
    fn id(&self) -> &str {
        &self.exec_id
    }

    async fn state(&self) -> Result<State> {
        Ok(to_state(self.client.call(Request::State { exec_id: self.key() }).await?))
    }

    async fn start(&self) -> Result<u32> {
        self.client.call::<Started>(Request::Start { exec_id: self.key() }).await.map(|s| s.pid as u32)
    }

    async fn kill(&self, signal: u32, _all: bool) -> Result<()> {
        let request = Request::Kill { exec_id: self.key(), signal: signal as i32, all: false };
        self.client.call::<serde_json::Value>(request).await.map(|_| ())
    }

    async fn resize_pty(&self, size: ConsoleSize) -> Result<()> {
        let (width, height) = (size.width.min(u16::MAX as u32) as u16, size.height.min(u16::MAX as u32) as u16);
        self.client.call::<serde_json::Value>(Request::Resize { exec_id: self.key(), width, height }).await.map(|_| ())
    }

    async fn close_io(&self) -> Result<()> {
        self.client.call::<serde_json::Value>(Request::CloseIo { exec_id: self.key() }).await.map(|_| ())
    }

    async fn wait(&self) -> Result<Exit> {
        Ok(to_exit(self.client.call_unbounded(Request::Wait { exec_id: self.key() }).await?))
    }
}
