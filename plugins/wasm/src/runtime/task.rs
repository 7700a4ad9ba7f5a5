//! One function task: its init process and the processes exec'd into it, each an invocation of a fresh
//! instance on a thread of its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use berth_core::diff::mounts::{Mounted, mount_all};
use berth_core::mount::Mount;
use berth_core::plugin::PluginId;
use berth_core::runtime::{
    ConsoleSize, ExecOptions, Exit, Io, Process, ProcessInfo, Result, RuntimeError, RuntimeEvent, State, Status, Task,
};
use prost_types::Any;
use tokio::sync::{oneshot, watch};
use wasmtime::UpdateDeadline;

use super::Shared;
use super::bindings::berth::runtime::types as wit;
use super::stdio::{Input, Output, open_output};
use crate::ctx::Ctx;
use crate::options::WasmOptions;

/// The exit status of a trapped invocation: 128 + SIGABRT, as a process that aborts.
pub const TRAPPED: u32 = 128 + 6;
/// The exit status of an invocation that grew past its memory limit: 128 + SIGKILL, as an OOM-killed process.
pub const OUT_OF_MEMORY: u32 = 128 + 9;
/// The exit status of a process whose instance could not be made.
pub const NOT_STARTED: u32 = 127;

fn unimplemented(plugin: &PluginId, what: &str) -> RuntimeError {
    berth_core::Error::Unimplemented(format!("plugin {plugin}: a function task cannot {what}")).into()
}

fn invalid(message: String) -> RuntimeError {
    berth_core::Error::InvalidArgument(message).into()
}

fn failed(message: String) -> RuntimeError {
    berth_core::Error::FailedPrecondition(message).into()
}

/// The JSON inside a spec Any.
pub fn spec_json(spec: Option<&Any>, what: &str) -> Result<serde_json::Value> {
    let spec = spec.ok_or_else(|| invalid(format!("{what} has no spec")))?;
    serde_json::from_slice(&spec.value).map_err(|e| invalid(format!("{what}: the spec is not JSON: {e}")))
}

/// What a process runs: the OCI process spec's args, env and cwd.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: String,
}

impl ProcessSpec {
    /// Reads an OCI `process` object; refuses a terminal and empty args.
    pub fn of(process: &serde_json::Value, what: &str, io: &Io, plugin: &PluginId) -> Result<Self> {
        if io.terminal || process["terminal"].as_bool() == Some(true) {
            return Err(invalid(format!(
                "{what}: plugin {plugin} has no terminal support: a function's stdio are streams"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            match &process[key] {
                serde_json::Value::Null => Ok(Vec::new()),
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| invalid(format!("{what}: process.{key} must be a list of strings"))),
                _ => Err(invalid(format!("{what}: process.{key} must be a list of strings"))),
            }
        };
        let args = strings("args")?;
        if args.is_empty() {
            return Err(invalid(format!("{what}: process.args is empty: give the function's arguments")));
        }
        let env = strings("env")?
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv, String::new()),
            })
            .collect();
        let cwd = process["cwd"].as_str().filter(|c| !c.is_empty()).unwrap_or("/").to_string();
        Ok(Self { args, env, cwd })
    }
}

/// A task's root filesystem, which its processes see as `/`: the task's rootfs mounts (an image's snapshot),
/// mounted by berthd under the plugin's state directory, or the spec's absolute `root.path` (`ctr run
/// --rootfs DIR`) as it is. The mounts are berthd's: they go at delete, whatever still runs.
pub struct TaskRoot {
    host: PathBuf,
    readonly: bool,
    mounted: Mutex<Option<Mounted>>,
}

impl TaskRoot {
    /// The root of task `id`: `rootfs` mounted on a new directory under `mount_dir`, or else the spec's
    /// `root.path` when it is absolute; none for a spec without a root. A relative `root.path` without mounts is
    /// refused: a function task has no bundle to find it in.
    pub fn of(spec: &serde_json::Value, rootfs: &[Mount], mount_dir: &Path, what: &str) -> Result<Option<Self>> {
        let root = &spec["root"];
        let readonly = root["readonly"].as_bool().unwrap_or(false);
        if !rootfs.is_empty() {
            let mounted = mount_all(rootfs, mount_dir, readonly)
                .map_err(|e| RuntimeError::from(berth_core::Error::Internal(format!("{what}: its rootfs: {e}"))))?;
            return Ok(Some(Self { host: mounted.dir.clone(), readonly, mounted: Mutex::new(Some(mounted)) }));
        }
        let path = match &root["path"] {
            serde_json::Value::Null => return Ok(None),
            serde_json::Value::String(path) if path.is_empty() => return Ok(None),
            serde_json::Value::String(path) => Path::new(path),
            _ => return Err(invalid(format!("{what}: root.path must be a string"))),
        };
        if !path.is_absolute() {
            return Err(invalid(format!(
                "{what}: root.path {path:?} is relative and the task has no rootfs mounts: a function task has no \
                 bundle to find it in (give an absolute path, or the rootfs mounts of a snapshot)"
            )));
        }
        if !path.is_dir() {
            return Err(invalid(format!("{what}: root.path {path:?} is not a directory")));
        }
        Ok(Some(Self { host: path.to_owned(), readonly, mounted: Mutex::new(None) }))
    }

    /// Unmounts what berthd mounted (detached: an invocation still inside keeps its view until it ends).
    pub fn release(&self) {
        drop(self.mounted.lock().unwrap_or_else(PoisonError::into_inner).take());
    }

    /// Grants the root as `/` unless the plugin's table grants `/` itself, which then wins.
    fn grant(
        &self,
        wasi: &mut wasmtime_wasi::WasiCtxBuilder,
        options: &WasmOptions,
    ) -> std::result::Result<(), String> {
        if options.preopens.iter().any(|p| p.guest == "/") {
            return Ok(());
        }
        let perms = if self.readonly { wasmtime_wasi::FsPerms::ReadOnly } else { wasmtime_wasi::FsPerms::ReadWrite };
        wasi.preopened_dir(&self.host, "/", perms)
            .map(|_| ())
            .map_err(|e| format!("granting the root filesystem {} as /: {e:#}", self.host.display()))
    }
}

/// Unmounts and removes what a berthd that ended without deleting its tasks left under `mount_dir`.
pub fn clean_mount_dir(mount_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(mount_dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
            // A detached unmount takes the mounts below it too; loop for mounts stacked on the same point.
            while unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {}
        }
        match std::fs::remove_dir(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed a function task's leftover rootfs mount"),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "removing a leftover rootfs mount point"),
        }
    }
}

/// Where a process stands.
struct ProcState {
    status: Status,
    exit: Option<Exit>,
    /// The running invocation's handles, to end it.
    running: Option<Running>,
}

/// What ends a running invocation from outside.
#[derive(Clone)]
struct Running {
    /// The signal that killed it, 0 while it runs.
    killed: Arc<AtomicU32>,
    stdin: Input,
    outputs: Vec<Output>,
}

impl Running {
    /// Ends the invocation for `signal`: its instance is interrupted at its next tick, its stdin reads trap,
    /// its streams are closed so the client sees their end now.
    fn end(&self, signal: u32) {
        let _ = self.killed.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
        self.stdin.end();
        for output in &self.outputs {
            output.close();
        }
    }
}

/// A process: a task's init or one exec'd into it.
pub struct Proc {
    shared: Arc<Shared>,
    namespace: String,
    task_id: String,
    exec_id: Option<String>,
    spec: ProcessSpec,
    /// The task's root filesystem, shared by its processes.
    root: Option<Arc<TaskRoot>>,
    io: Io,
    state: Mutex<ProcState>,
    exited: watch::Sender<Option<Exit>>,
}

impl Proc {
    fn new(
        shared: Arc<Shared>,
        namespace: &str,
        task_id: &str,
        exec_id: Option<&str>,
        spec: ProcessSpec,
        root: Option<Arc<TaskRoot>>,
        io: Io,
    ) -> Self {
        Self {
            shared,
            namespace: namespace.into(),
            task_id: task_id.into(),
            exec_id: exec_id.map(str::to_owned),
            spec,
            root,
            io,
            state: Mutex::new(ProcState { status: Status::Created, exit: None, running: None }),
            exited: watch::channel(None).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, ProcState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn what(&self) -> String {
        match &self.exec_id {
            Some(exec) => format!("process {exec:?}"),
            None => format!("task {:?}", self.task_id),
        }
    }

    fn status(&self) -> Status {
        self.lock().status
    }

    /// Records the exit (once: the first of the invocation's end, a kill and a failed start wins), wakes the
    /// waiters and reports it.
    fn finish(&self, status: u32) {
        let exit = Exit { pid: 0, status, timestamp: SystemTime::now() };
        {
            let mut state = self.lock();
            if state.exit.is_some() {
                return;
            }
            state.status = Status::Stopped;
            state.exit = Some(exit);
            if let Some(running) = state.running.take() {
                running.end(0);
            }
        }
        self.exited.send_replace(Some(exit));
        self.shared.emit(RuntimeEvent::Exit {
            namespace: self.namespace.clone(),
            container_id: self.task_id.clone(),
            exec_id: self.exec_id.clone(),
            exit,
        });
    }

    /// Ends the process for `signal`, as a kill does; false if it had exited already.
    fn signal(&self, signal: u32) -> bool {
        let running = {
            let state = self.lock();
            if state.exit.is_some() {
                return false;
            }
            state.running.clone()
        };
        if let Some(running) = running {
            running.end(signal);
        }
        self.finish(128 + signal);
        true
    }

    /// Opens the streams, makes the instance on a thread of its own and starts the invocation there.
    async fn launch(self: &Arc<Self>) -> Result<()> {
        {
            let mut state = self.lock();
            match state.status {
                Status::Created => state.status = Status::Running,
                _ if state.exit.is_some() => return Err(RuntimeError::ProcessAlreadyExited(self.what())),
                _ => return Err(failed(format!("{} is already started", self.what()))),
            }
        }
        let plugin = &self.shared.plugin;
        let opened = (|| -> std::io::Result<(Input, Option<Output>, Option<Output>)> {
            let out = |path: &str| -> std::io::Result<Option<Output>> {
                if path.is_empty() {
                    return Ok(None);
                }
                open_output(path)
                    .map(|f| Some(Output::new(f)))
                    .map_err(|e| std::io::Error::new(e.kind(), format!("opening {path}: {e}")))
            };
            Ok((Input::open(&self.io.stdin)?, out(&self.io.stdout)?, out(&self.io.stderr)?))
        })();
        let (stdin, stdout, stderr) = match opened {
            Ok(streams) => streams,
            Err(e) => {
                self.finish(NOT_STARTED);
                return Err(berth_core::Error::Internal(format!(
                    "plugin {}: starting {}: {e}",
                    plugin.id,
                    self.what()
                ))
                .into());
            }
        };
        let running = Running {
            killed: Arc::new(AtomicU32::new(0)),
            stdin: stdin.clone(),
            outputs: stdout.iter().chain(stderr.iter()).cloned().collect(),
        };
        {
            // A kill that came while the streams were opened has ended the process already.
            let mut state = self.lock();
            if state.exit.is_some() {
                running.end(0);
                return Err(RuntimeError::ProcessAlreadyExited(self.what()));
            }
            state.running = Some(running.clone());
        }
        let (started_tx, started) = oneshot::channel();
        let this = Arc::clone(self);
        let thread = std::thread::Builder::new().name("wasm-task".into()).spawn(move || {
            this.run(running, stdin, stdout, stderr, started_tx);
        });
        if let Err(e) = thread {
            self.finish(NOT_STARTED);
            return Err(berth_core::Error::Internal(format!("plugin {}: starting a thread: {e}", plugin.id)).into());
        }
        match started.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(berth_core::Error::Internal(message).into()),
            Err(_) => {
                Err(berth_core::Error::Internal(format!("plugin {}: the task's thread went away", plugin.id)).into())
            }
        }
    }

    /// The invocation, on its own thread: instance, init, `invoke`, then the exit.
    fn run(
        &self,
        running: Running,
        stdin: Input,
        stdout: Option<Output>,
        stderr: Option<Output>,
        started: oneshot::Sender<std::result::Result<(), String>>,
    ) {
        let plugin = &self.shared.plugin;
        let options = plugin.options();
        // The table's variables first: a spec variable of the same name does not replace a granted one.
        let env: Vec<(String, String)> =
            self.spec.env.iter().filter(|(k, _)| !options.env.contains_key(k)).cloned().collect();
        let mut granting = Ok(());
        let ctx = Ctx::with(Arc::from(plugin.id.to_string()), options, |wasi| {
            if let Some(root) = &self.root {
                granting = root.grant(wasi, options);
            }
            wasi.args(&self.spec.args).envs(&env).initial_cwd(&self.spec.cwd).stdin(stdin.clone());
            if let Some(out) = &stdout {
                wasi.stdout(out.clone());
            }
            if let Some(err) = &stderr {
                wasi.stderr(err.clone());
            }
        });
        let made = ctx
            .map_err(|e| e.to_string())
            .and_then(|ctx| granting.map(|()| ctx))
            .map_err(|e| format!("plugin {}: starting {}: {e}", plugin.id, self.what()))
            .and_then(|ctx| plugin.dedicated(ctx, "invoke").map_err(|e| e.to_string()));
        let (mut store, bindings) = match made {
            Ok(made) => made,
            Err(message) => {
                self.finish(NOT_STARTED);
                let _ = started.send(Err(message));
                return;
            }
        };
        let _ = started.send(Ok(()));
        // No time limit: the epoch only checks, every tick, whether the task was killed.
        let killed = Arc::clone(&running.killed);
        store.epoch_deadline_callback(move |_| {
            if killed.load(Ordering::SeqCst) != 0 {
                return Err(wasmtime::format_err!("the task was killed"));
            }
            Ok(UpdateDeadline::Continue(1))
        });
        store.set_epoch_deadline(1);
        let invocation = wit::Invocation {
            namespace: self.namespace.clone(),
            id: self.task_id.clone(),
            exec_id: self.exec_id.clone().unwrap_or_default(),
            args: self.spec.args.clone(),
            env: self.spec.env.clone(),
            cwd: self.spec.cwd.clone(),
        };
        let outcome = bindings.berth_runtime_function().call_invoke(&mut store, &invocation);
        let status = match outcome {
            Ok(code) => u32::from(code),
            // Killed: the exit is recorded already.
            Err(_) if running.killed.load(Ordering::SeqCst) != 0 => 0,
            Err(e) => {
                let oom = store.data().limits.hit;
                let error = plugin.classify("invoke", &store, e);
                plugin.record(&error);
                if let Some(err) = &stderr {
                    err.write_line(&format!("{}: {error}", self.what()));
                }
                if oom {
                    self.shared.emit(RuntimeEvent::Oom {
                        namespace: self.namespace.clone(),
                        container_id: self.task_id.clone(),
                    });
                    OUT_OF_MEMORY
                } else {
                    TRAPPED
                }
            }
        };
        // The instance and its streams go before the exit is told, so the client finds the streams ended.
        drop(store);
        running.end(0);
        self.finish(status);
    }

    fn state_now(&self) -> State {
        let state = self.lock();
        State {
            status: state.status,
            pid: 0,
            exit_status: state.exit.map(|e| e.status).unwrap_or(0),
            exited_at: state.exit.map(|e| e.timestamp),
            io: self.io.clone(),
        }
    }

    async fn wait_exit(&self) -> Result<Exit> {
        let mut exited = self.exited.subscribe();
        let exit = exited.wait_for(Option::is_some).await.map_err(|_| {
            RuntimeError::Other(berth_core::Error::Internal(format!("{}: its exit was lost", self.what())))
        })?;
        Ok(exit.expect("waited for an exit"))
    }

    fn kill_now(&self, signal: u32) -> Result<()> {
        if self.lock().exit.is_some() {
            return Err(RuntimeError::ProcessAlreadyExited(self.what()));
        }
        // A process without handlers ignores these, or stops (which a function cannot): nothing happens.
        const HARMLESS: [u32; 9] = [0, 17, 18, 19, 20, 21, 22, 23, 28];
        if HARMLESS.contains(&signal) {
            return Ok(());
        }
        if signal > 64 {
            return Err(invalid(format!("{signal} is not a signal")));
        }
        if !self.signal(signal) {
            return Err(RuntimeError::ProcessAlreadyExited(self.what()));
        }
        Ok(())
    }

    fn close_stdin(&self) {
        if let Some(running) = &self.lock().running {
            running.stdin.close();
        }
    }
}

/// An exec'd process, as the Tasks service holds it.
struct ExecHandle(Arc<Proc>);

#[async_trait::async_trait]
impl Process for ExecHandle {
    fn id(&self) -> &str {
        self.0.exec_id.as_deref().unwrap_or(&self.0.task_id)
    }

    async fn state(&self) -> Result<State> {
        Ok(self.0.state_now())
    }

    async fn start(&self) -> Result<u32> {
        self.0.launch().await?;
        Ok(self.0.state_now().pid)
    }

    async fn kill(&self, signal: u32, _all: bool) -> Result<()> {
        self.0.kill_now(signal)
    }

    async fn resize_pty(&self, _: ConsoleSize) -> Result<()> {
        Err(unimplemented(&self.0.shared.plugin.id, "have a terminal"))
    }

    async fn close_io(&self) -> Result<()> {
        self.0.close_stdin();
        Ok(())
    }

    async fn wait(&self) -> Result<Exit> {
        self.0.wait_exit().await
    }
}

/// A task: its init and its exec'd processes.
pub struct WasmTask {
    init: Arc<Proc>,
    execs: Arc<Mutex<BTreeMap<String, Arc<Proc>>>>,
}

impl WasmTask {
    /// A created task.
    pub fn new(
        shared: Arc<Shared>,
        namespace: &str,
        id: &str,
        spec: ProcessSpec,
        root: Option<TaskRoot>,
        io: Io,
    ) -> Self {
        let root = root.map(Arc::new);
        Self { init: Arc::new(Proc::new(shared, namespace, id, None, spec, root, io)), execs: Default::default() }
    }

    /// Unmounts the task's rootfs, if berthd mounted one: the task is being deleted.
    pub fn release_root(&self) {
        if let Some(root) = &self.init.root {
            root.release();
        }
    }

    fn execs(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Proc>>> {
        self.execs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The exit to answer a delete with, or why the task cannot be deleted now.
    pub fn deletable(&self) -> Result<Exit> {
        let state = self.init.lock();
        match (state.status, state.exit) {
            (_, Some(exit)) => Ok(exit),
            (Status::Created, None) => Ok(Exit { pid: 0, status: 0, timestamp: SystemTime::now() }),
            _ => Err(failed(format!("task {:?} is running: kill it first", self.init.task_id))),
        }
    }

    /// Ends what still runs of the exec'd processes (137), as a container's end ends them.
    pub fn end_execs(&self) {
        let execs: Vec<Arc<Proc>> = self.execs().values().cloned().collect();
        for exec in execs {
            exec.signal(9);
        }
    }
}

#[async_trait::async_trait]
impl Process for WasmTask {
    fn id(&self) -> &str {
        &self.init.task_id
    }

    async fn state(&self) -> Result<State> {
        Ok(self.init.state_now())
    }

    async fn start(&self) -> Result<u32> {
        self.init.launch().await?;
        // When the init ends, so do the exec'd processes, as in a container.
        let (init, execs) = (Arc::clone(&self.init), Arc::clone(&self.execs));
        tokio::spawn(async move {
            let _ = init.wait_exit().await;
            let running: Vec<Arc<Proc>> =
                execs.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
            for exec in running {
                exec.signal(9);
            }
        });
        Ok(self.init.state_now().pid)
    }

    async fn kill(&self, signal: u32, all: bool) -> Result<()> {
        if all {
            for exec in self.execs().values() {
                let _ = exec.kill_now(signal);
            }
        }
        self.init.kill_now(signal)
    }

    async fn resize_pty(&self, _: ConsoleSize) -> Result<()> {
        Err(unimplemented(&self.init.shared.plugin.id, "have a terminal"))
    }

    async fn close_io(&self) -> Result<()> {
        self.init.close_stdin();
        Ok(())
    }

    async fn wait(&self) -> Result<Exit> {
        self.init.wait_exit().await
    }
}

#[async_trait::async_trait]
impl Task for WasmTask {
    fn namespace(&self) -> &str {
        &self.init.namespace
    }

    async fn pause(&self) -> Result<()> {
        Err(unimplemented(&self.init.shared.plugin.id, "be paused"))
    }

    async fn resume(&self) -> Result<()> {
        Err(unimplemented(&self.init.shared.plugin.id, "be resumed"))
    }

    async fn exec(&self, id: &str, options: ExecOptions) -> Result<Arc<dyn Process>> {
        let what = format!("exec {id:?}");
        let process = spec_json(options.spec.as_ref(), &what)?;
        let spec = ProcessSpec::of(&process, &what, &options.io, &self.init.shared.plugin.id)?;
        if self.init.status() != Status::Running {
            return Err(failed(format!("task {:?} is not running: cannot exec into it", self.init.task_id)));
        }
        let mut execs = self.execs();
        if execs.contains_key(id) {
            return Err(RuntimeError::AlreadyExists(format!("process {id:?}")));
        }
        let init = &self.init;
        let root = init.root.clone();
        let proc = Arc::new(Proc::new(
            Arc::clone(&init.shared),
            &init.namespace,
            &init.task_id,
            Some(id),
            spec,
            root,
            options.io,
        ));
        execs.insert(id.to_string(), Arc::clone(&proc));
        Ok(Arc::new(ExecHandle(proc)))
    }

    async fn pids(&self) -> Result<Vec<ProcessInfo>> {
        let mut pids = Vec::new();
        if self.init.status() == Status::Running {
            pids.push(ProcessInfo { pid: 0, exec_id: None });
        }
        for (id, exec) in self.execs().iter() {
            if exec.status() == Status::Running {
                pids.push(ProcessInfo { pid: 0, exec_id: Some(id.clone()) });
            }
        }
        Ok(pids)
    }

    async fn checkpoint(&self, _: &str, _: Option<Any>) -> Result<()> {
        Err(unimplemented(&self.init.shared.plugin.id, "be checkpointed"))
    }

    async fn update(&self, _: Any, _: BTreeMap<String, String>) -> Result<()> {
        Err(unimplemented(&self.init.shared.plugin.id, "have its resources updated"))
    }

    async fn process(&self, id: &str) -> Result<Arc<dyn Process>> {
        match self.execs().get(id) {
            Some(proc) => Ok(Arc::new(ExecHandle(Arc::clone(proc)))),
            None => Err(RuntimeError::DoesNotExist(format!("process {id:?}"))),
        }
    }

    async fn delete_process(&self, id: &str) -> Result<Exit> {
        let mut execs = self.execs();
        let proc = execs.get(id).ok_or_else(|| RuntimeError::DoesNotExist(format!("process {id:?}")))?;
        let exit = {
            let state = proc.lock();
            match (state.status, state.exit) {
                (_, Some(exit)) => exit,
                (Status::Created, None) => Exit { pid: 0, status: 0, timestamp: SystemTime::now() },
                _ => return Err(failed(format!("process {id:?} is running: kill it first"))),
            }
        };
        execs.remove(id);
        Ok(exit)
    }

    async fn stats(&self) -> Result<Any> {
        Err(unimplemented(&self.init.shared.plugin.id, "report cgroup statistics"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(process: serde_json::Value, io: &Io) -> Result<ProcessSpec> {
        ProcessSpec::of(&process, "task \"t\"", io, &"runtime.fn".parse().unwrap())
    }

    #[test]
    fn process_specs_are_read_and_checked() {
        let io = Io::default();
        let p = spec(serde_json::json!({ "args": ["echo", "a"], "env": ["A=1=2", "B"] }), &io).unwrap();
        assert_eq!(p.args, ["echo", "a"]);
        assert_eq!(p.env, [("A".to_string(), "1=2".to_string()), ("B".to_string(), String::new())]);
        assert_eq!(p.cwd, "/", "no cwd is the root");
        let e = spec(serde_json::json!({ "args": [] }), &io).unwrap_err().to_string();
        assert_eq!(e, "task \"t\": process.args is empty: give the function's arguments");
        let e = spec(serde_json::json!({ "args": ["echo", 1] }), &io).unwrap_err().to_string();
        assert_eq!(e, "task \"t\": process.args must be a list of strings");
        let e = spec(serde_json::json!({ "args": ["echo"], "terminal": true }), &io).unwrap_err().to_string();
        assert!(e.contains("plugin runtime.fn has no terminal support"), "{e}");
        let tty = Io { terminal: true, ..Default::default() };
        assert!(spec(serde_json::json!({ "args": ["echo"] }), &tty).is_err());
        let e = spec_json(None, "exec \"e\"").unwrap_err().to_string();
        assert_eq!(e, "exec \"e\" has no spec");
    }

    #[test]
    fn a_task_root_is_its_absolute_root_path_or_none_and_a_relative_one_is_refused() {
        let mounts = Path::new("/nonexistent-never-mounted");
        let root = |spec: serde_json::Value| TaskRoot::of(&spec, &[], mounts, "task \"t\"");
        assert!(root(serde_json::json!({})).unwrap().is_none());
        assert!(root(serde_json::json!({ "root": { "path": "" } })).unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let given = root(serde_json::json!({ "root": { "path": dir.path(), "readonly": true } })).unwrap().unwrap();
        assert_eq!((given.host.as_path(), given.readonly), (dir.path(), true));
        assert!(given.mounted.lock().unwrap().is_none(), "a directory as it is: nothing mounted");
        let e = root(serde_json::json!({ "root": { "path": "rootfs" } })).err().unwrap().to_string();
        assert!(e.contains("root.path \"rootfs\" is relative and the task has no rootfs mounts"), "{e}");
        let missing = dir.path().join("missing");
        let e = root(serde_json::json!({ "root": { "path": missing } })).err().unwrap().to_string();
        assert!(e.contains("is not a directory"), "{e}");
        let e = root(serde_json::json!({ "root": { "path": 7 } })).err().unwrap().to_string();
        assert!(e.contains("root.path must be a string"), "{e}");
    }
}
