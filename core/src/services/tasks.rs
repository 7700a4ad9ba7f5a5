//! `containerd.services.tasks.v1.Tasks`: runs containers' tasks (a container's init process and
//! the processes exec'd into it) on the runtime plugins, as containerd 1.6's tasks service does.
//!
//! Every call on a container loads its record from the store and hands the work to the runtime
//! plugin its `runtime.name` resolves to (see [`TasksConfig`]). The service publishes the
//! `/tasks/*` events for what it changed, and relays the exits runtimes notice on their own as
//! `/tasks/exit`.
//!
//! It feeds the configured task monitors (`monitors`, see [`crate::monitor`]) with every task's
//! lifecycle: created (or found alive at start-up), started, exited, OOM-killed, paused, resumed and
//! deleted. OOM kills reach clients only through a monitor (`monitor.cgroups` publishes
//! `/tasks/oom`), and Tasks.Metrics takes a task's figures from the first monitor that has them,
//! falling back to the runtime's own. Monitors never hold up or fail a task call.
//!
//! Every task call needs its container's record, so a task whose container is deleted could never be
//! reached again: the service kills and removes it (on `/containers/delete`, when a create finds its
//! container gone, and at start-up).
//!
//! Checkpoint and restore need CRIU, which berth does not support yet: both are refused with
//! FailedPrecondition before anything is created.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth_proto::containerd::events::{
    ContainerDelete, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIo, TaskPaused, TaskResumed,
    TaskStart,
};
use berth_proto::containerd::services::tasks::v1::tasks_server::{Tasks, TasksServer};
use berth_proto::containerd::services::tasks::v1::*;
use berth_proto::containerd::types::{Descriptor, Metric};
use berth_proto::containerd::v1::types as task;
use serde::Deserialize;
use tonic::{Request, Response, Status};

use super::{GrpcService, exchange_id, namespace, publish, store_id};
use crate::events::{Exchange, Subscription};
use crate::filters::{Adaptor, FilterSet};
use crate::monitor::{Monitor, MultiMonitor, SharedMonitor, TaskEvent, TaskInfo};
use crate::plugin::{InitError, Instance, PluginId, PluginKind, Registration, Requirement};
use crate::runtime::{
    ConsoleSize, CreateOptions, ExecOptions, Io, Process, RuntimeError, RuntimeEvent, RuntimeEvents, SharedRuntime,
    State, Status as TaskStatus, Task,
};
use crate::store::MetadataStore;
use crate::store::records::Container;
use crate::{Error, Result, ident};

/// The gRPC service name.
const SERVICE: &str = "containerd.services.tasks.v1.Tasks";

/// How long a process's state may take before it is reported as unknown (containerd's 2 s), so
/// one stuck task does not hold up `List`.
const STATE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long removing a task whose container is gone waits for it to die after SIGKILL.
const ORPHAN_KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// SIGKILL, for tasks whose container is gone.
const SIGKILL: u32 = 9;

/// The type URL containerd's runc shim gives the `ListPids` details of an exec'd process; `ctr
/// tasks ps` decodes it by this name.
const PROCESS_DETAILS_TYPE: &str = "containerd.runc.v1.ProcessDetails";

/// `containerd.runc.v1.ProcessDetails` (from the runc shim's options.proto): the exec a listed pid
/// belongs to.
#[derive(Clone, PartialEq, prost::Message)]
struct ProcessDetails {
    #[prost(string, tag = "1")]
    exec_id: String,
}

/// `[plugins."service.tasks"]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TasksConfig {
    /// The runtime of a container record that names none, resolved like a container's runtime name
    /// (containers made through the Containers service always name one).
    pub default_runtime: String,
    /// containerd runtime names as containers carry them (`io.containerd.runc.v2`), mapped to the
    /// berth runtime plugins that run them (`linux`). A name not listed here may still be a
    /// runtime plugin's own name (`linux` or `runtime.linux`).
    pub runtime_names: BTreeMap<String, String>,
    /// The monitor plugins fed with every task's lifecycle, by name (`cgroups` or
    /// `monitor.cgroups`); Tasks.Metrics asks them in this order.
    pub monitors: Vec<String>,
}

impl Default for TasksConfig {
    fn default() -> Self {
        let linux = ["io.containerd.runc.v2", "io.containerd.runc.v1", "io.containerd.runtime.v1.linux"];
        Self {
            default_runtime: "linux".into(),
            runtime_names: linux.into_iter().map(|name| (name.to_string(), "linux".to_string())).collect(),
            monitors: vec!["cgroups".into(), "restart".into()],
        }
    }
}

/// The loaded monitors `wanted` names, in its order, and what is wrong with the list (names of
/// monitors that are not loaded, names given twice).
fn select_monitors<M: Clone>(wanted: &[String], loaded: &[(PluginId, M)]) -> (Vec<(String, M)>, Vec<String>) {
    let mut chosen: Vec<(String, M)> = Vec::new();
    let mut problems = Vec::new();
    for name in wanted {
        let short = name.strip_prefix("monitor.").unwrap_or(name);
        if chosen.iter().any(|(n, _)| n == short) {
            problems.push(format!("monitor {name:?} is listed twice; it is fed once"));
            continue;
        }
        match loaded.iter().find(|(id, _)| id.name == short) {
            Some((_, monitor)) => chosen.push((short.to_string(), monitor.clone())),
            None => {
                let names: Vec<&str> = loaded.iter().map(|(id, _)| id.name.as_str()).collect();
                let names = if names.is_empty() { "none".to_string() } else { names.join(", ") };
                problems.push(format!(
                    "monitor {name:?} is not loaded (disabled, skipped or failed: see its plugin status; loaded \
                     monitors: {names})"
                ))
            }
        }
    }
    (chosen, problems)
}

/// The loaded runtime plugins by name, and how containers' runtime names map onto them. Generic
/// so resolution can be checked without a runtime.
struct Runtimes<R> {
    config: TasksConfig,
    loaded: BTreeMap<String, R>,
}

impl<R> Runtimes<R> {
    /// The runtime plugin (name and value) that runs containers whose runtime is `name`.
    fn resolve(&self, name: &str) -> Result<(&str, &R)> {
        let requested = if name.is_empty() { self.config.default_runtime.as_str() } else { name };
        let mapped = self.config.runtime_names.get(requested);
        let plugin = mapped.map_or(requested, String::as_str);
        let found = self
            .loaded
            .get_key_value(plugin)
            .or_else(|| plugin.strip_prefix("runtime.").and_then(|short| self.loaded.get_key_value(short)));
        if let Some((name, runtime)) = found {
            return Ok((name, runtime));
        }
        let why = match mapped {
            Some(plugin) => format!("runtime_names maps it to runtime plugin {plugin:?}, which is not loaded"),
            None => "it is neither a key of runtime_names nor the name of a runtime plugin".into(),
        };
        let which = if name.is_empty() { "default runtime" } else { "runtime" };
        Err(Error::NotFound(format!("{which} {requested:?} ({why}; loaded runtime plugins: {})", self.names())))
    }

    /// The runtime plugin (name and value) of `container`.
    fn for_container(&self, container: &Container) -> Result<(&str, &R)> {
        let name = container.runtime.as_ref().map_or("", |r| r.name.as_str());
        self.resolve(name).map_err(|e| e.context(format!("container {:?}", container.id)))
    }

    fn names(&self) -> String {
        if self.loaded.is_empty() {
            return "none".into();
        }
        self.loaded.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
    }
}

#[derive(Clone)]
struct TasksService {
    store: MetadataStore,
    events: Exchange,
    runtimes: Arc<Runtimes<SharedRuntime>>,
    monitors: Arc<MultiMonitor>,
    /// Init pids of the tasks handed to the monitors, for the events that do not carry one.
    pids: Arc<Mutex<HashMap<(String, String), u32>>>,
}

/// The `service.tasks` plugin: the Tasks service over every loaded runtime plugin, feeding the
/// configured monitors. It starts after all runtimes and monitors and relays the runtimes' events;
/// with no runtime loaded it still serves, and every call on a container answers NotFound naming
/// the runtime that is missing.
pub fn registration() -> Registration {
    Registration::new::<TasksConfig, _, _>(PluginKind::Service, "tasks", |ctx| {
        let config = ctx.config::<TasksConfig>();
        let store = ctx.get::<MetadataStore>(&store_id());
        let events = ctx.get::<Exchange>(&exchange_id());
        let runtimes = ctx.get_all::<SharedRuntime>(PluginKind::Runtime);
        let monitors = ctx.get_all::<SharedMonitor>(PluginKind::Monitor);
        let grpc = ctx.daemon_config().grpc.clone();
        async move {
            let missing = |what: &str| InitError::Failed(format!("{what} not loaded"));
            let store = (*store.ok_or_else(|| missing("metadata store"))?).clone();
            let events = (*events.ok_or_else(|| missing("event exchange"))?).clone();
            let loaded = runtimes.into_iter().map(|(id, runtime)| (id.name, Arc::clone(&*runtime))).collect();
            let runtimes = Runtimes { config: (*config).clone(), loaded };
            if let Err(e) = runtimes.resolve("") {
                tracing::warn!(error = %e, "containers that name no runtime cannot run tasks");
            }
            let monitors: Vec<(PluginId, SharedMonitor)> =
                monitors.into_iter().map(|(id, m)| (id, Arc::clone(&*m))).collect();
            let (chosen, problems) = select_monitors(&config.monitors, &monitors);
            for problem in problems {
                tracing::warn!(%problem, "monitors of service.tasks");
            }
            let service = TasksService::new(store, events, runtimes, MultiMonitor::new(chosen));
            tracing::info!(monitors = ?service.monitors.names(), "task monitors");
            service.begin().await;
            let server = TasksServer::new(service)
                .max_decoding_message_size(grpc.max_recv_message_size)
                .max_encoding_message_size(grpc.max_send_message_size);
            Ok(Instance::new(GrpcService::new(SERVICE, server)))
        }
    })
    .requires(Requirement::Plugin(store_id()))
    .requires(Requirement::Plugin(exchange_id()))
    .requires(Requirement::Kind(PluginKind::Runtime))
    .requires(Requirement::Kind(PluginKind::Monitor))
    .describe(SERVICE)
}

/// Hands a runtime's own events on until the runtime drops its end of the stream.
async fn relay(service: TasksService, runtime: String, mut stream: RuntimeEvents) {
    while let Some(event) = stream.recv().await {
        service.runtime_event(&runtime, event).await;
    }
    tracing::debug!(%runtime, "runtime event stream ended");
}

/// Removes the task of every container deleted while it still had one.
async fn remove_tasks_of_deleted_containers(service: TasksService, mut deletes: Subscription) {
    while let Some(envelope) = deletes.next().await {
        let Some(event) = envelope.event else { continue };
        let Ok(ContainerDelete { id }) = <ContainerDelete as prost::Message>::decode(event.value.as_slice()) else {
            continue;
        };
        for (name, runtime) in &service.runtimes.loaded {
            service.remove_orphan(name, runtime, &envelope.namespace, &id, "its container was deleted").await;
        }
    }
}

fn required(value: &str, field: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::InvalidArgument(format!("{field} must be set in the request")));
    }
    Ok(())
}

/// A runtime error, with DoesNotExist reworded as NotFound naming `what` in containerd's form.
fn missing(e: RuntimeError, what: impl FnOnce() -> String) -> Error {
    match e {
        RuntimeError::DoesNotExist(_) => Error::NotFound(what()),
        e => e.into(),
    }
}

/// Why a checkpoint or restore is refused.
fn needs_criu(what: &str) -> Error {
    Error::FailedPrecondition(format!("{what} needs CRIU (checkpoint/restore), which berth does not support yet"))
}

/// Whether a create request asks to restore from a checkpoint.
fn restores(checkpoint: Option<&Descriptor>) -> bool {
    checkpoint.is_some_and(|d| *d != Descriptor::default())
}

/// A process's state as Get and List report it. A process that is gone stays an error; any other
/// failure, or a state that takes too long, is logged and reported as unknown, as containerd does.
async fn state(p: &dyn Process) -> std::result::Result<State, RuntimeError> {
    let unknown =
        State { status: crate::runtime::Status::Unknown, pid: 0, exit_status: 0, exited_at: None, io: Io::default() };
    match tokio::time::timeout(STATE_TIMEOUT, p.state()).await {
        Ok(Ok(state)) => Ok(state),
        Ok(Err(e @ RuntimeError::DoesNotExist(_))) => Err(e),
        Ok(Err(error)) => {
            tracing::warn!(process = p.id(), %error, "process state unavailable");
            Ok(unknown)
        }
        Err(_) => {
            tracing::warn!(process = p.id(), timeout = ?STATE_TIMEOUT, "process state timed out");
            Ok(unknown)
        }
    }
}

/// The wire form of process `id` of task `container_id`.
fn process_message(container_id: &str, id: &str, state: &State) -> task::Process {
    task::Process {
        container_id: container_id.into(),
        id: id.into(),
        pid: state.pid,
        status: task::Status::from(state.status) as i32,
        stdin: state.io.stdin.clone(),
        stdout: state.io.stdout.clone(),
        stderr: state.io.stderr.clone(),
        terminal: state.io.terminal,
        exit_status: state.exit_status,
        exited_at: state.exited_at.map(Into::into),
    }
}

/// A task as the filters of List and Metrics see it: `id` (or `container_id`), `namespace`,
/// `runtime` (the runtime plugin's name), `pid`, and `status` in lowercase as containerd's Go
/// client spells it (`created`, `running`, `stopped`, `paused`, `pausing`, `unknown`).
struct TaskRow<'a> {
    namespace: &'a str,
    runtime: &'a str,
    process: &'a task::Process,
}

impl Adaptor for TaskRow<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let [field] = path else { return None };
        let p = self.process;
        match field.as_str() {
            "id" | "container_id" => Some(p.container_id.clone()),
            "namespace" => Some(self.namespace.into()),
            "runtime" => Some(self.runtime.into()),
            "pid" => (p.pid != 0).then(|| p.pid.to_string()),
            "status" => {
                let status = task::Status::try_from(p.status).unwrap_or(task::Status::Unknown);
                Some(status.as_str_name().to_ascii_lowercase())
            }
            _ => None,
        }
    }
}

fn io(stdin: String, stdout: String, stderr: String, terminal: bool) -> Io {
    Io { stdin, stdout, stderr, terminal }
}

impl TasksService {
    fn new(store: MetadataStore, events: Exchange, runtimes: Runtimes<SharedRuntime>, monitors: MultiMonitor) -> Self {
        Self {
            store,
            events,
            runtimes: Arc::new(runtimes),
            monitors: Arc::new(monitors),
            pids: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The task of container `id`: NotFound if the container, its runtime or its task is missing.
    async fn task(&self, ns: &str, id: &str) -> Result<Arc<dyn Task>> {
        let (_, runtime) = self.runtime(ns, id)?;
        runtime.get(ns, id).await.map_err(|e| missing(e, || format!("task {id:?}")))
    }

    /// Container `id` and the runtime that runs its task.
    fn runtime(&self, ns: &str, id: &str) -> Result<(Container, &SharedRuntime)> {
        let (container, _, runtime) = self.runtime_named(ns, id)?;
        Ok((container, runtime))
    }

    /// Container `id`, the name of the runtime plugin that runs its task, and that runtime.
    fn runtime_named(&self, ns: &str, id: &str) -> Result<(Container, &str, &SharedRuntime)> {
        required(id, "container_id")?;
        let container = self.store.get_container(ns, id)?;
        let (name, runtime) = self.runtimes.for_container(&container)?;
        Ok((container, name, runtime))
    }

    /// Recovers the runtimes' tasks, starts relaying their events and removing the tasks of deleted
    /// containers, then activates the monitors.
    async fn begin(&self) {
        // Subscribed before recovery looks for orphans, so a deletion in between is not missed.
        let deletes =
            self.events.subscribe(FilterSet::parse_all(&["topic==/containers/delete"]).expect("a valid filter"));
        self.recover().await;
        for (name, runtime) in &self.runtimes.loaded {
            match runtime.take_events() {
                Some(stream) => {
                    tokio::spawn(relay(self.clone(), name.clone(), stream));
                }
                None => tracing::warn!(
                    runtime = %name,
                    "the runtime's events were taken already: its task exits and OOM kills will not be relayed"
                ),
            }
        }
        tokio::spawn(remove_tasks_of_deleted_containers(self.clone(), deletes));
        // The multi-monitor queues the call and cannot fail.
        let _ = self.monitors.activate().await;
    }

    /// Task `id` of namespace `ns` as the monitors see it: its container's labels as they are now,
    /// and its init pid when known (`pid`, else the one recorded at create or recovery).
    fn info(&self, ns: &str, id: &str, runtime: &str, pid: Option<u32>) -> TaskInfo {
        let labels = self.store.get_container(ns, id).map(|c| c.labels).unwrap_or_default();
        let key = (ns.to_string(), id.to_string());
        let pid = pid.or_else(|| self.pids.lock().expect("pids lock").get(&key).copied()).unwrap_or(0);
        TaskInfo { namespace: ns.into(), id: id.into(), runtime: runtime.into(), pid, labels }
    }

    /// Hands `event` of the task of container `id` to the monitors.
    async fn lifecycle(&self, ns: &str, id: &str, event: TaskEvent) {
        if let Ok((_, runtime, _)) = self.runtime_named(ns, id) {
            let _ = self.monitors.event(&self.info(ns, id, runtime, None), &event).await;
        }
    }

    fn remember_pid(&self, ns: &str, id: &str, pid: u32) {
        self.pids.lock().expect("pids lock").insert((ns.to_string(), id.to_string()), pid);
    }

    /// Tells the monitors task `id` was deleted, then stops them watching it.
    async fn deleted(&self, ns: &str, id: &str, runtime: &str, exit: crate::runtime::Exit) {
        let info = self.info(ns, id, runtime, None);
        self.pids.lock().expect("pids lock").remove(&(ns.to_string(), id.to_string()));
        let _ = self.monitors.event(&info, &TaskEvent::Deleted { exit }).await;
        let _ = self.monitors.stop(&info).await;
    }

    /// Publishes what a runtime noticed by itself and hands it to the monitors. OOM kills are only
    /// handed on: publishing `/tasks/oom` is a monitor's job (`monitor.cgroups`).
    async fn runtime_event(&self, runtime: &str, event: RuntimeEvent) {
        match event {
            RuntimeEvent::Exit { namespace, container_id, exec_id, exit } => {
                // containerd names the init process by the container id.
                let id = exec_id.clone().unwrap_or_else(|| container_id.clone());
                let message = TaskExit {
                    container_id: container_id.clone(),
                    id,
                    pid: exit.pid,
                    exit_status: exit.status,
                    exited_at: Some(exit.timestamp.into()),
                };
                publish(&self.events, &namespace, "/tasks/exit", "TaskExit", &message);
                let pid = exec_id.is_none().then_some(exit.pid);
                let info = self.info(&namespace, &container_id, runtime, pid);
                let _ = self.monitors.event(&info, &TaskEvent::Exited { exec_id, exit }).await;
            }
            RuntimeEvent::Oom { namespace, container_id } => {
                let info = self.info(&namespace, &container_id, runtime, None);
                let _ = self.monitors.event(&info, &TaskEvent::Oom).await;
            }
        }
    }

    /// At start-up: hands every task found alive to the monitors, and removes the tasks whose
    /// container was deleted while berthd was away.
    async fn recover(&self) {
        for (name, runtime) in &self.runtimes.loaded {
            let tasks = match runtime.tasks(None).await {
                Ok(tasks) => tasks,
                Err(error) => {
                    tracing::warn!(runtime = %name, %error, "listing tasks at start-up: they are not monitored");
                    continue;
                }
            };
            for t in tasks {
                let (ns, id) = (t.namespace().to_string(), t.id().to_string());
                if matches!(self.store.get_container(&ns, &id), Err(Error::NotFound(_))) {
                    self.remove_orphan(name, runtime, &ns, &id, "its container was deleted while berthd was down")
                        .await;
                    continue;
                }
                let Ok(state) = state(t.as_ref()).await else { continue };
                if matches!(
                    state.status,
                    TaskStatus::Created | TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing
                ) {
                    self.remember_pid(&ns, &id, state.pid);
                    let _ = self.monitors.monitor(&self.info(&ns, &id, name, Some(state.pid))).await;
                }
            }
        }
    }

    /// Kills and removes task `id` of `runtime` if there is one, for `why` (its container is gone,
    /// so no call could reach it any more).
    async fn remove_orphan(&self, name: &str, runtime: &SharedRuntime, ns: &str, id: &str, why: &str) {
        let Ok(task) = runtime.get(ns, id).await else { return };
        tracing::info!(namespace = %ns, task = %id, reason = why, "removing a task whose container is gone");
        let status = state(task.as_ref()).await.map(|s| s.status).unwrap_or(TaskStatus::Unknown);
        if matches!(status, TaskStatus::Paused | TaskStatus::Pausing) {
            // A frozen process does not die of SIGKILL until it is thawed.
            let _ = task.resume().await;
        }
        if matches!(status, TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing) {
            match task.kill(SIGKILL, true).await {
                Ok(()) | Err(RuntimeError::ProcessAlreadyExited(_) | RuntimeError::DoesNotExist(_)) => {}
                Err(error) => tracing::warn!(namespace = %ns, task = %id, %error, "killing an orphaned task"),
            }
            if tokio::time::timeout(ORPHAN_KILL_TIMEOUT, task.wait()).await.is_err() {
                tracing::warn!(namespace = %ns, task = %id, "orphaned task still running after SIGKILL");
            }
        }
        match runtime.delete(ns, id).await {
            Ok(exit) => {
                let exited_at = Some(exit.timestamp.into());
                let event = TaskDelete {
                    container_id: id.into(),
                    pid: exit.pid,
                    exit_status: exit.status,
                    exited_at,
                    id: id.into(),
                };
                publish(&self.events, ns, "/tasks/delete", "TaskDelete", &event);
                self.deleted(ns, id, name, exit).await;
            }
            // Deleted meanwhile by whoever else noticed.
            Err(RuntimeError::DoesNotExist(_)) => {}
            Err(error) => tracing::warn!(namespace = %ns, task = %id, %error, "removing an orphaned task"),
        }
    }

    /// Process `exec_id` of task `id`, or its init process when `exec_id` is empty.
    async fn process(&self, ns: &str, id: &str, exec_id: &str) -> Result<Arc<dyn Process>> {
        let task = self.task(ns, id).await?;
        if exec_id.is_empty() {
            return Ok(task);
        }
        task.process(exec_id).await.map_err(|e| missing(e, || format!("process {exec_id:?} of task {id:?}")))
    }

    /// The tasks of namespace `ns` across runtimes that `filters` match, sorted by id, with their
    /// wire form. Tasks deleted while being listed are left out.
    async fn matching(&self, ns: &str, filters: &FilterSet) -> Result<Vec<(Arc<dyn Task>, &str, task::Process)>> {
        let mut rows = Vec::new();
        for (runtime, backend) in &self.runtimes.loaded {
            let tasks = backend
                .tasks(Some(ns))
                .await
                .map_err(|e| Error::from(e).context(format!("listing the tasks of runtime {runtime:?}")))?;
            for t in tasks {
                let Ok(state) = state(t.as_ref()).await else { continue };
                let process = process_message(t.id(), t.id(), &state);
                if filters.matches(&TaskRow { namespace: ns, runtime, process: &process }) {
                    rows.push((t, runtime.as_str(), process));
                }
            }
        }
        rows.sort_by(|a, b| a.2.container_id.cmp(&b.2.container_id));
        Ok(rows)
    }

    async fn create(&self, ns: &str, r: CreateTaskRequest) -> Result<CreateTaskResponse> {
        // Refused before anything is looked up or made.
        if restores(r.checkpoint.as_ref()) {
            return Err(needs_criu("restoring a task from a checkpoint"));
        }
        if !r.runtime_path.is_empty() {
            return Err(Error::Unimplemented(format!(
                "runtime_path {:?}: berth runs tasks with its runtime plugins, not shim binaries",
                r.runtime_path
            )));
        }
        let id = r.container_id.as_str();
        let (container, runtime_name, runtime) = self.runtime_named(ns, id)?;
        match runtime.get(ns, id).await {
            Ok(_) => return Err(Error::AlreadyExists(format!("task {id:?}"))),
            Err(RuntimeError::DoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let spec = container
            .spec
            .clone()
            .ok_or_else(|| Error::FailedPrecondition(format!("container {id:?} has no spec to run")))?;
        let options = CreateOptions {
            spec: Some(spec),
            rootfs: r.rootfs.iter().cloned().map(Into::into).collect(),
            io: io(r.stdin.clone(), r.stdout.clone(), r.stderr.clone(), r.terminal),
            checkpoint: None,
            runtime_options: container.runtime.and_then(|rt| rt.options),
            task_options: r.options,
        };
        let created = runtime.create(ns, id, options).await?;
        let pid = match created.pid() {
            Some(pid) => pid,
            None => {
                created
                    .state()
                    .await
                    .map_err(|e| {
                        Error::from(e).context(format!("task {id:?} was created but its state cannot be read"))
                    })?
                    .pid
            }
        };
        // A container deleted while its task was being made: nothing could reach that task.
        // Deleted after this check, it is removed on the deletion's event instead.
        if let Err(e) = self.store.get_container(ns, id) {
            self.remove_orphan(runtime_name, runtime, ns, id, "its container was deleted while it was created").await;
            return Err(e.context("the container was deleted while its task was created"));
        }
        let event = TaskCreate {
            container_id: r.container_id.clone(),
            bundle: String::new(),
            rootfs: r.rootfs,
            io: Some(TaskIo { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, terminal: r.terminal }),
            checkpoint: String::new(),
            pid,
        };
        publish(&self.events, ns, "/tasks/create", "TaskCreate", &event);
        self.remember_pid(ns, id, pid);
        let info = self.info(ns, id, runtime_name, Some(pid));
        let _ = self.monitors.monitor(&info).await;
        let _ = self.monitors.event(&info, &TaskEvent::Created { pid }).await;
        Ok(CreateTaskResponse { container_id: r.container_id, pid })
    }

    async fn start(&self, ns: &str, r: StartRequest) -> Result<StartResponse> {
        let p = self.process(ns, &r.container_id, &r.exec_id).await?;
        let pid = p.start().await?;
        if r.exec_id.is_empty() {
            publish(
                &self.events,
                ns,
                "/tasks/start",
                "TaskStart",
                &TaskStart { container_id: r.container_id.clone(), pid },
            );
            if let Ok((_, runtime, _)) = self.runtime_named(ns, &r.container_id) {
                self.remember_pid(ns, &r.container_id, pid);
                let info = self.info(ns, &r.container_id, runtime, Some(pid));
                let _ = self.monitors.event(&info, &TaskEvent::Started { pid }).await;
            }
        } else {
            let event = TaskExecStarted { container_id: r.container_id, exec_id: r.exec_id, pid };
            publish(&self.events, ns, "/tasks/exec-started", "TaskExecStarted", &event);
        }
        Ok(StartResponse { pid })
    }

    async fn delete(&self, ns: &str, r: DeleteTaskRequest) -> Result<DeleteResponse> {
        let id = r.container_id;
        let (_, runtime_name, runtime) = self.runtime_named(ns, &id)?;
        let exit = runtime.delete(ns, &id).await.map_err(|e| missing(e, || format!("task {id:?}")))?;
        let exited_at = Some(exit.timestamp.into());
        let event =
            TaskDelete { container_id: id.clone(), pid: exit.pid, exit_status: exit.status, exited_at, id: id.clone() };
        publish(&self.events, ns, "/tasks/delete", "TaskDelete", &event);
        self.deleted(ns, &id, runtime_name, exit).await;
        Ok(DeleteResponse { id, pid: exit.pid, exit_status: exit.status, exited_at })
    }

    async fn delete_process(&self, ns: &str, r: DeleteProcessRequest) -> Result<DeleteResponse> {
        if r.exec_id.is_empty() {
            return Err(Error::InvalidArgument(
                "exec_id must be set in the request: Delete removes a task's init".into(),
            ));
        }
        let (id, exec_id) = (r.container_id, r.exec_id);
        let task = self.task(ns, &id).await?;
        let exit = task
            .delete_process(&exec_id)
            .await
            .map_err(|e| missing(e, || format!("process {exec_id:?} of task {id:?}")))?;
        let exited_at = Some(exit.timestamp.into());
        let event =
            TaskDelete { container_id: id, pid: exit.pid, exit_status: exit.status, exited_at, id: exec_id.clone() };
        publish(&self.events, ns, "/tasks/delete", "TaskDelete", &event);
        Ok(DeleteResponse { id: exec_id, pid: exit.pid, exit_status: exit.status, exited_at })
    }

    async fn get(&self, ns: &str, r: GetRequest) -> Result<GetResponse> {
        let p = self.process(ns, &r.container_id, &r.exec_id).await?;
        let state = state(p.as_ref()).await.map_err(|e| {
            missing(e, || match r.exec_id.as_str() {
                "" => format!("task {:?}", r.container_id),
                exec => format!("process {exec:?} of task {:?}", r.container_id),
            })
        })?;
        Ok(GetResponse { process: Some(process_message(&r.container_id, p.id(), &state)) })
    }

    async fn list(&self, ns: &str, r: ListTasksRequest) -> Result<ListTasksResponse> {
        let filters = FilterSet::parse_all(&[r.filter])?;
        let tasks = self.matching(ns, &filters).await?.into_iter().map(|(_, _, process)| process).collect();
        Ok(ListTasksResponse { tasks })
    }

    async fn exec(&self, ns: &str, r: ExecProcessRequest) -> Result<()> {
        // Checked before the task is looked up, as containerd does.
        required(&r.exec_id, "exec_id")?;
        ident::validate(&r.exec_id).map_err(|e| e.context("exec_id"))?;
        let spec = r
            .spec
            .ok_or_else(|| Error::InvalidArgument("spec (the exec'd process) must be set in the request".into()))?;
        let task = self.task(ns, &r.container_id).await?;
        let options = ExecOptions { spec: Some(spec), io: io(r.stdin, r.stdout, r.stderr, r.terminal) };
        task.exec(&r.exec_id, options).await?;
        let event = TaskExecAdded { container_id: r.container_id, exec_id: r.exec_id };
        publish(&self.events, ns, "/tasks/exec-added", "TaskExecAdded", &event);
        Ok(())
    }

    async fn list_pids(&self, ns: &str, r: ListPidsRequest) -> Result<ListPidsResponse> {
        let task = self.task(ns, &r.container_id).await?;
        let processes = task
            .pids()
            .await?
            .into_iter()
            .map(|p| task::ProcessInfo {
                pid: p.pid,
                info: p.exec_id.map(|exec_id| crate::events::pack(PROCESS_DETAILS_TYPE, &ProcessDetails { exec_id })),
            })
            .collect();
        Ok(ListPidsResponse { processes })
    }

    async fn update(&self, ns: &str, r: UpdateTaskRequest) -> Result<()> {
        let resources =
            r.resources.ok_or_else(|| Error::InvalidArgument("resources must be set in the request".into()))?;
        let task = self.task(ns, &r.container_id).await?;
        task.update(resources, r.annotations.into_iter().collect()).await?;
        Ok(())
    }

    async fn metrics(&self, ns: &str, r: MetricsRequest) -> Result<MetricsResponse> {
        let filters = FilterSet::parse_all(&r.filters)?;
        let mut metrics = Vec::new();
        for (t, runtime, process) in self.matching(ns, &filters).await? {
            let collected = SystemTime::now();
            // The first monitor with figures for the task answers (monitor.cgroups reads its cgroup);
            // a task no monitor covers is asked itself.
            let info = self.info(ns, &process.container_id, runtime, Some(process.pid));
            let stats = match self.monitors.stats(&info).await {
                Ok(Some(data)) => Ok(data),
                _ => t.stats().await,
            };
            match stats {
                Ok(data) => metrics.push(Metric {
                    timestamp: Some(collected.into()),
                    id: process.container_id,
                    data: Some(data),
                }),
                // Deleted since it was listed.
                Err(RuntimeError::DoesNotExist(_)) => {}
                // One task's failure does not hide the others' figures.
                Err(error) => tracing::warn!(task = %process.container_id, %error, "collecting task metrics"),
            }
        }
        Ok(MetricsResponse { metrics })
    }
}

#[tonic::async_trait]
impl Tasks for TasksService {
    async fn create(&self, request: Request<CreateTaskRequest>) -> Result<Response<CreateTaskResponse>, Status> {
        let ns = namespace(&request)?;
        Ok(Response::new(TasksService::create(self, &ns, request.into_inner()).await?))
    }

    async fn start(&self, request: Request<StartRequest>) -> Result<Response<StartResponse>, Status> {
        let ns = namespace(&request)?;
        Ok(Response::new(TasksService::start(self, &ns, request.into_inner()).await?))
    }

    async fn delete(&self, request: Request<DeleteTaskRequest>) -> Result<Response<DeleteResponse>, Status> {
        let ns = namespace(&request)?;
        Ok(Response::new(TasksService::delete(self, &ns, request.into_inner()).await?))
    }

    async fn delete_process(&self, request: Request<DeleteProcessRequest>) -> Result<Response<DeleteResponse>, Status> {
        let ns = namespace(&request)?;
        Ok(Response::new(TasksService::delete_process(self, &ns, request.into_inner()).await?))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let ns = namespace(&request)?;
        Ok(Response::new(TasksService::get(self, &ns, request.into_inner()).await?))
    }

    async fn list(&self, request: Request<ListTasksRequest>) -> Result<Response<ListTasksResponse>, Status> {
        let ns = namespace(&request)?;
        Ok(Response::new(TasksService::list(self, &ns, request.into_inner()).await?))
    }

    async fn kill(&self, request: Request<KillRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        let p = self.process(&ns, &r.container_id, &r.exec_id).await?;
        p.kill(r.signal, r.all).await.map_err(Error::from)?;
        Ok(Response::new(()))
    }

    async fn exec(&self, request: Request<ExecProcessRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        TasksService::exec(self, &ns, request.into_inner()).await?;
        Ok(Response::new(()))
    }

    async fn resize_pty(&self, request: Request<ResizePtyRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        let p = self.process(&ns, &r.container_id, &r.exec_id).await?;
        p.resize_pty(ConsoleSize { width: r.width, height: r.height }).await.map_err(Error::from)?;
        Ok(Response::new(()))
    }

    async fn close_io(&self, request: Request<CloseIoRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        let p = self.process(&ns, &r.container_id, &r.exec_id).await?;
        // stdin is the only stream a client can close, as in containerd.
        if r.stdin {
            p.close_io().await.map_err(Error::from)?;
        }
        Ok(Response::new(()))
    }

    async fn pause(&self, request: Request<PauseTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let container_id = request.into_inner().container_id;
        self.task(&ns, &container_id).await?.pause().await.map_err(Error::from)?;
        publish(&self.events, &ns, "/tasks/paused", "TaskPaused", &TaskPaused { container_id: container_id.clone() });
        self.lifecycle(&ns, &container_id, TaskEvent::Paused).await;
        Ok(Response::new(()))
    }

    async fn resume(&self, request: Request<ResumeTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let container_id = request.into_inner().container_id;
        self.task(&ns, &container_id).await?.resume().await.map_err(Error::from)?;
        publish(
            &self.events,
            &ns,
            "/tasks/resumed",
            "TaskResumed",
            &TaskResumed { container_id: container_id.clone() },
        );
        self.lifecycle(&ns, &container_id, TaskEvent::Resumed).await;
        Ok(Response::new(()))
    }

    async fn list_pids(&self, request: Request<ListPidsRequest>) -> Result<Response<ListPidsResponse>, Status> {
        let ns = namespace(&request)?;
        Ok(Response::new(TasksService::list_pids(self, &ns, request.into_inner()).await?))
    }

    async fn checkpoint(
        &self,
        request: Request<CheckpointTaskRequest>,
    ) -> Result<Response<CheckpointTaskResponse>, Status> {
        namespace(&request)?;
        Err(needs_criu("checkpointing a task").into())
    }

    async fn update(&self, request: Request<UpdateTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        TasksService::update(self, &ns, request.into_inner()).await?;
        Ok(Response::new(()))
    }

    async fn metrics(&self, request: Request<MetricsRequest>) -> Result<Response<MetricsResponse>, Status> {
        let ns = namespace(&request)?;
        Ok(Response::new(TasksService::metrics(self, &ns, request.into_inner()).await?))
    }

    async fn wait(&self, request: Request<WaitRequest>) -> Result<Response<WaitResponse>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        let p = self.process(&ns, &r.container_id, &r.exec_id).await?;
        // Works on a created process too: ctr waits before it starts the task.
        let exit = p.wait().await.map_err(Error::from)?;
        Ok(Response::new(WaitResponse { exit_status: exit.status, exited_at: Some(exit.timestamp.into()) }))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_types::Any;
    use tonic::Code;

    use super::*;
    use crate::runtime::Exit;
    use crate::services::NAMESPACE_HEADER;
    use crate::store::testutil::{any, open_temp, runtime};

    fn req<T>(message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(NAMESPACE_HEADER, "default".parse().unwrap());
        request
    }

    fn runtimes(config: TasksConfig, names: &[&str]) -> Runtimes<()> {
        Runtimes { config, loaded: names.iter().map(|n| (n.to_string(), ())).collect() }
    }

    fn resolved(r: &Runtimes<()>, name: &str) -> Result<String> {
        r.resolve(name).map(|(plugin, ())| plugin.to_string())
    }

    /// A service with no runtime plugin loaded, and a container `c1` that wants runc.
    async fn service() -> (tempfile::TempDir, TasksService) {
        let (dir, store) = open_temp();
        let container = Container {
            id: "c1".into(),
            runtime: runtime("io.containerd.runc.v2"),
            spec: Some(any("types.containerd.io/opencontainers/runtime-spec/1/Spec", b"{}")),
            ..Default::default()
        };
        store.create_container("default", container).await.unwrap();
        let runtimes = Runtimes { config: TasksConfig::default(), loaded: BTreeMap::new() };
        (dir, TasksService::new(store, Exchange::new(), runtimes, MultiMonitor::new(Vec::new())))
    }

    #[test]
    fn runtime_names_resolve_through_the_table_then_plugin_names() {
        let r = runtimes(TasksConfig::default(), &["linux", "wasm"]);
        for name in ["io.containerd.runc.v2", "io.containerd.runc.v1", "io.containerd.runtime.v1.linux"] {
            assert_eq!(resolved(&r, name).unwrap(), "linux", "{name}");
        }
        assert_eq!(resolved(&r, "linux").unwrap(), "linux");
        assert_eq!(resolved(&r, "runtime.wasm").unwrap(), "wasm");
        // No name: the default runtime.
        assert_eq!(resolved(&r, "").unwrap(), "linux");

        let e = resolved(&r, "io.containerd.kata.v2").unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "runtime \"io.containerd.kata.v2\" (it is neither a key of runtime_names nor the name of a runtime \
             plugin; loaded runtime plugins: linux, wasm): not found"
        );
    }

    #[test]
    fn configured_names_and_default_resolve_and_missing_plugins_are_named() {
        let mut config = TasksConfig::default();
        config.runtime_names.insert("io.containerd.wasmtime.v1".into(), "runtime.wasm".into());
        config.default_runtime = "io.containerd.runc.v2".into();
        let r = runtimes(config.clone(), &["wasm"]);
        assert_eq!(resolved(&r, "io.containerd.wasmtime.v1").unwrap(), "wasm");
        let e = resolved(&r, "").unwrap_err().to_string();
        assert!(e.starts_with("default runtime \"io.containerd.runc.v2\" (runtime_names maps it to runtime plugin \"linux\", which is not loaded"), "{e}");

        // No runtime at all: still an answer, naming what is missing.
        let r = runtimes(config, &[]);
        let e = resolved(&r, "io.containerd.runc.v2").unwrap_err().to_string();
        assert!(e.contains("\"linux\"") && e.contains("loaded runtime plugins: none"), "{e}");
    }

    #[test]
    fn embedded_config_holds_the_defaults_and_checks_keys() {
        let config = crate::config::tests::core_default_config();
        let table = config.plugins.get("service.tasks").expect("config.toml has a [plugins.\"service.tasks\"] table");
        let parsed: TasksConfig = table.clone().try_into().unwrap();
        assert_eq!(parsed, TasksConfig::default());

        let empty: TasksConfig = toml::from_str("").unwrap();
        assert_eq!(empty, TasksConfig::default());
        let e = toml::from_str::<TasksConfig>("default_runtim = \"linux\"").unwrap_err();
        assert!(e.message().contains("unknown field `default_runtim`"), "{e}");
    }

    #[tokio::test]
    async fn checkpoint_and_restore_are_refused_naming_criu() {
        let (_dir, svc) = service().await;
        let checkpoint = Descriptor {
            media_type: "application/vnd.containerd.container.criu.checkpoint.criu.tar".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 1,
            ..Default::default()
        };
        // Refused before the (missing) container or runtime is looked at.
        let request =
            CreateTaskRequest { container_id: "nope".into(), checkpoint: Some(checkpoint), ..Default::default() };
        let e = Tasks::create(&svc, req(request)).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("CRIU") && e.message().contains("restoring"), "{}", e.message());

        let e = Tasks::checkpoint(&svc, req(CheckpointTaskRequest { container_id: "c1".into(), ..Default::default() }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("CRIU"), "{}", e.message());

        // An empty descriptor is no checkpoint.
        assert!(!restores(Some(&Descriptor::default())));
        assert!(!restores(None));
    }

    #[tokio::test]
    async fn calls_on_containers_name_what_is_missing() {
        let (_dir, svc) = service().await;
        // No container: NotFound from the store.
        let e = Tasks::create(&svc, req(CreateTaskRequest { container_id: "nope".into(), ..Default::default() }))
            .await
            .unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::NotFound, "container \"nope\" in namespace \"default\": not found"));

        // A container whose runtime is not loaded: NotFound naming it, so `ctr containers rm` goes on.
        let e =
            Tasks::get(&svc, req(GetRequest { container_id: "c1".into(), ..Default::default() })).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().starts_with("container \"c1\": runtime \"io.containerd.runc.v2\""), "{}", e.message());
        assert!(e.message().contains("loaded runtime plugins: none"), "{}", e.message());
        let e = Tasks::delete(&svc, req(DeleteTaskRequest { container_id: "c1".into() })).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);

        let e = Tasks::kill(&svc, req(KillRequest::default())).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "container_id must be set in the request"));
        let e = Tasks::start(&svc, Request::new(StartRequest::default())).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "namespace is required");

        let request =
            CreateTaskRequest { container_id: "c1".into(), runtime_path: "/usr/bin/shim".into(), ..Default::default() };
        let e = Tasks::create(&svc, req(request)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
        assert!(e.message().contains("runtime_path \"/usr/bin/shim\""), "{}", e.message());
    }

    #[tokio::test]
    async fn bad_arguments_are_named() {
        let (_dir, svc) = service().await;
        let spec = Some(any("types.containerd.io/opencontainers/runtime-spec/1/Process", b"{}"));
        let exec = |exec_id: &str| ExecProcessRequest {
            container_id: "c1".into(),
            exec_id: exec_id.into(),
            spec: spec.clone(),
            ..Default::default()
        };
        let e = Tasks::exec(&svc, req(exec(""))).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "exec_id must be set in the request"));
        let e = Tasks::exec(&svc, req(exec("../x"))).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("exec_id: identifier \"../x\""), "{}", e.message());
        let e = Tasks::exec(&svc, req(ExecProcessRequest { spec: None, ..exec("e1") })).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("spec"), "{}", e.message());

        let e =
            Tasks::delete_process(&svc, req(DeleteProcessRequest { container_id: "c1".into(), exec_id: "".into() }))
                .await
                .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = Tasks::update(&svc, req(UpdateTaskRequest { container_id: "c1".into(), ..Default::default() }))
            .await
            .unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "resources must be set in the request"));
    }

    #[tokio::test]
    async fn list_and_metrics_parse_filters_and_answer_with_no_runtime() {
        let (_dir, svc) = service().await;
        let list = |filter: &str| Tasks::list(&svc, req(ListTasksRequest { filter: filter.into() }));
        assert!(list("").await.unwrap().into_inner().tasks.is_empty());
        assert!(list("status==running,id~=^c").await.unwrap().into_inner().tasks.is_empty());
        let e = list("id==").await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("invalid filter \"id==\""), "{}", e.message());

        let metrics = |filters: &[&str]| {
            let filters = filters.iter().map(|f| f.to_string()).collect();
            Tasks::metrics(&svc, req(MetricsRequest { filters }))
        };
        assert!(metrics(&["id==c1", "runtime==linux"]).await.unwrap().into_inner().metrics.is_empty());
        assert_eq!(metrics(&["id==c1", "status~=(("]).await.unwrap_err().code(), Code::InvalidArgument);
    }

    #[test]
    fn filters_see_id_status_pid_runtime_and_namespace() {
        let state = State {
            status: crate::runtime::Status::Running,
            pid: 42,
            exit_status: 0,
            exited_at: None,
            io: io("/f/in".into(), "/f/out".into(), "/f/err".into(), false),
        };
        let running = process_message("web", "web", &state);
        let created = process_message("db", "db", &State { status: crate::runtime::Status::Created, pid: 0, ..state });
        let matching = |filter: &str| {
            let filters = FilterSet::parse_all(&[filter]).unwrap();
            [&running, &created]
                .into_iter()
                .filter(|p| filters.matches(&TaskRow { namespace: "default", runtime: "linux", process: p }))
                .map(|p| p.container_id.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(matching(""), ["web", "db"]);
        assert_eq!(matching("id==web"), ["web"]);
        assert_eq!(matching("container_id==db"), ["db"]);
        assert_eq!(matching("status==running"), ["web"]);
        assert_eq!(matching("status!=running"), ["db"]);
        assert_eq!(matching("pid==42"), ["web"]);
        // A created task has no pid yet.
        assert_eq!(matching("pid"), ["web"]);
        assert_eq!(matching("runtime==linux,namespace==default,status~=^(created|running)$"), ["web", "db"]);
        assert!(matching("namespace==other").is_empty());
        assert!(matching("image==x").is_empty());
    }

    #[test]
    fn process_messages_carry_the_state() {
        let exited = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let state = State {
            status: crate::runtime::Status::Stopped,
            pid: 7,
            exit_status: 137,
            exited_at: Some(exited),
            io: io("".into(), "/f/out".into(), "".into(), true),
        };
        let p = process_message("c1", "e1", &state);
        assert_eq!((p.container_id.as_str(), p.id.as_str(), p.pid), ("c1", "e1", 7));
        assert_eq!(p.status, task::Status::Stopped as i32);
        assert_eq!((p.stdout.as_str(), p.terminal, p.exit_status), ("/f/out", true, 137));
        assert_eq!(p.exited_at.unwrap().seconds, 1_700_000_000);
    }

    #[test]
    fn process_details_are_the_runc_shims_message() {
        let any = crate::events::pack(PROCESS_DETAILS_TYPE, &ProcessDetails { exec_id: "e1".into() });
        assert_eq!(any.type_url, "containerd.runc.v1.ProcessDetails");
        // Field 1, length-delimited: what containerd's options.ProcessDetails encodes.
        assert_eq!(any.value, b"\x0a\x02e1");
    }

    /// A runtime that keeps tasks in memory: created, started, killed (exiting at once with
    /// 128 + signal), paused and resumed on request, reporting exits on its event stream.
    #[derive(Default)]
    struct FakeRuntime {
        tasks: std::sync::Mutex<BTreeMap<(String, String), Arc<FakeTask>>>,
        events: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<RuntimeEvent>>>,
        stream: std::sync::Mutex<Option<RuntimeEvents>>,
        /// Run in the middle of create, after the task is made (to race a container deletion).
        during_create: std::sync::Mutex<Option<futures::future::BoxFuture<'static, ()>>>,
    }

    struct FakeTask {
        ns: String,
        id: String,
        state: std::sync::Mutex<State>,
        exited: tokio::sync::Notify,
        events: tokio::sync::mpsc::UnboundedSender<RuntimeEvent>,
    }

    impl FakeRuntime {
        fn new() -> Arc<FakeRuntime> {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let runtime = FakeRuntime::default();
            *runtime.events.lock().unwrap() = Some(tx);
            *runtime.stream.lock().unwrap() = Some(rx);
            Arc::new(runtime)
        }

        fn add(&self, ns: &str, id: &str, status: crate::runtime::Status) -> Arc<FakeTask> {
            let task = Arc::new(FakeTask {
                ns: ns.into(),
                id: id.into(),
                state: std::sync::Mutex::new(State {
                    status,
                    pid: 100,
                    exit_status: 0,
                    exited_at: None,
                    io: Io::default(),
                }),
                exited: tokio::sync::Notify::new(),
                events: self.events.lock().unwrap().clone().unwrap(),
            });
            self.tasks.lock().unwrap().insert((ns.into(), id.into()), task.clone());
            task
        }

        fn has(&self, ns: &str, id: &str) -> bool {
            self.tasks.lock().unwrap().contains_key(&(ns.to_string(), id.to_string()))
        }

        fn send(&self, event: RuntimeEvent) {
            self.events.lock().unwrap().as_ref().unwrap().send(event).unwrap();
        }
    }

    impl FakeTask {
        fn exit(&self) -> Exit {
            let s = self.state.lock().unwrap();
            Exit { pid: s.pid, status: s.exit_status, timestamp: s.exited_at.unwrap_or(SystemTime::UNIX_EPOCH) }
        }
    }

    #[async_trait::async_trait]
    impl Process for FakeTask {
        fn id(&self) -> &str {
            &self.id
        }
        async fn state(&self) -> std::result::Result<State, RuntimeError> {
            Ok(self.state.lock().unwrap().clone())
        }
        async fn start(&self) -> std::result::Result<u32, RuntimeError> {
            let mut s = self.state.lock().unwrap();
            s.status = crate::runtime::Status::Running;
            Ok(s.pid)
        }
        async fn kill(&self, signal: u32, _all: bool) -> std::result::Result<(), RuntimeError> {
            {
                let mut s = self.state.lock().unwrap();
                if s.status == crate::runtime::Status::Stopped {
                    return Err(RuntimeError::ProcessAlreadyExited(self.id.clone()));
                }
                s.status = crate::runtime::Status::Stopped;
                s.exit_status = 128 + signal;
                s.exited_at = Some(SystemTime::now());
            }
            self.exited.notify_waiters();
            let exit = self.exit();
            let _ = self.events.send(RuntimeEvent::Exit {
                namespace: self.ns.clone(),
                container_id: self.id.clone(),
                exec_id: None,
                exit,
            });
            Ok(())
        }
        async fn resize_pty(&self, _size: ConsoleSize) -> std::result::Result<(), RuntimeError> {
            Ok(())
        }
        async fn close_io(&self) -> std::result::Result<(), RuntimeError> {
            Ok(())
        }
        async fn wait(&self) -> std::result::Result<Exit, RuntimeError> {
            loop {
                let notified = self.exited.notified();
                if self.state.lock().unwrap().status == crate::runtime::Status::Stopped {
                    return Ok(self.exit());
                }
                notified.await;
            }
        }
    }

    #[async_trait::async_trait]
    impl Task for FakeTask {
        fn namespace(&self) -> &str {
            &self.ns
        }
        async fn pause(&self) -> std::result::Result<(), RuntimeError> {
            self.state.lock().unwrap().status = crate::runtime::Status::Paused;
            Ok(())
        }
        async fn resume(&self) -> std::result::Result<(), RuntimeError> {
            self.state.lock().unwrap().status = crate::runtime::Status::Running;
            Ok(())
        }
        async fn exec(&self, id: &str, _options: ExecOptions) -> std::result::Result<Arc<dyn Process>, RuntimeError> {
            Err(RuntimeError::DoesNotExist(id.into()))
        }
        async fn pids(&self) -> std::result::Result<Vec<crate::runtime::ProcessInfo>, RuntimeError> {
            Ok(Vec::new())
        }
        async fn checkpoint(&self, _path: &str, _options: Option<Any>) -> std::result::Result<(), RuntimeError> {
            Ok(())
        }
        async fn update(
            &self,
            _resources: Any,
            _annotations: BTreeMap<String, String>,
        ) -> std::result::Result<(), RuntimeError> {
            Ok(())
        }
        async fn process(&self, id: &str) -> std::result::Result<Arc<dyn Process>, RuntimeError> {
            Err(RuntimeError::DoesNotExist(id.into()))
        }
        async fn delete_process(&self, id: &str) -> std::result::Result<Exit, RuntimeError> {
            Err(RuntimeError::DoesNotExist(id.into()))
        }
        async fn stats(&self) -> std::result::Result<Any, RuntimeError> {
            Ok(any("from.the.task", b""))
        }
    }

    #[async_trait::async_trait]
    impl crate::runtime::Runtime for FakeRuntime {
        fn id(&self) -> &str {
            "linux"
        }
        fn take_events(&self) -> Option<RuntimeEvents> {
            self.stream.lock().unwrap().take()
        }
        async fn create(
            &self,
            ns: &str,
            id: &str,
            _options: CreateOptions,
        ) -> std::result::Result<Arc<dyn Task>, RuntimeError> {
            let task = self.add(ns, id, crate::runtime::Status::Created);
            let hook = self.during_create.lock().unwrap().take();
            if let Some(hook) = hook {
                hook.await;
            }
            Ok(task)
        }
        async fn get(&self, ns: &str, id: &str) -> std::result::Result<Arc<dyn Task>, RuntimeError> {
            let tasks = self.tasks.lock().unwrap();
            let task = tasks.get(&(ns.to_string(), id.to_string())).cloned();
            task.map(|t| t as Arc<dyn Task>).ok_or_else(|| RuntimeError::DoesNotExist(format!("task {id:?}")))
        }
        async fn tasks(&self, ns: Option<&str>) -> std::result::Result<Vec<Arc<dyn Task>>, RuntimeError> {
            let tasks = self.tasks.lock().unwrap();
            Ok(tasks.values().filter(|t| ns.is_none_or(|n| n == t.ns)).map(|t| t.clone() as Arc<dyn Task>).collect())
        }
        async fn delete(&self, ns: &str, id: &str) -> std::result::Result<Exit, RuntimeError> {
            let task = self.tasks.lock().unwrap().get(&(ns.to_string(), id.to_string())).cloned();
            let task = task.ok_or_else(|| RuntimeError::DoesNotExist(format!("task {id:?}")))?;
            if task.state.lock().unwrap().status == crate::runtime::Status::Running {
                return Err(RuntimeError::Other(Error::FailedPrecondition("running".into())));
            }
            self.tasks.lock().unwrap().remove(&(ns.to_string(), id.to_string()));
            Ok(task.exit())
        }
    }

    /// Records the calls it gets as `call id`, with the labels it saw; optionally has stats.
    #[derive(Default)]
    struct Recorder {
        calls: std::sync::Mutex<Vec<String>>,
        labels: std::sync::Mutex<Vec<BTreeMap<String, String>>>,
        stats: bool,
    }

    impl Recorder {
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        fn record(&self, call: &str, task: &TaskInfo) {
            self.calls.lock().unwrap().push(format!("{call} {}", task.id));
            self.labels.lock().unwrap().push(task.labels.clone());
        }
        /// Waits until `call` was recorded.
        async fn saw(&self, call: &str) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while !self.calls().iter().any(|c| c == call) {
                assert!(tokio::time::Instant::now() < deadline, "no {call:?} in {:?}", self.calls());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    #[async_trait::async_trait]
    impl Monitor for Recorder {
        async fn monitor(&self, task: &TaskInfo) -> crate::monitor::Result<()> {
            self.record("monitor", task);
            Ok(())
        }
        async fn stop(&self, task: &TaskInfo) -> crate::monitor::Result<()> {
            self.record("stop", task);
            Ok(())
        }
        async fn event(&self, task: &TaskInfo, event: &TaskEvent) -> crate::monitor::Result<()> {
            self.record(event.name(), task);
            Ok(())
        }
        async fn stats(&self, _task: &TaskInfo) -> crate::monitor::Result<Option<Any>> {
            Ok(self.stats.then(|| any("from.the.monitor", b"")))
        }
    }

    /// Fails every call.
    struct Failing;

    #[async_trait::async_trait]
    impl Monitor for Failing {
        async fn activate(&self) -> crate::monitor::Result<()> {
            Err(crate::monitor::MonitorError::new("cannot activate"))
        }
        async fn monitor(&self, _task: &TaskInfo) -> crate::monitor::Result<()> {
            Err(crate::monitor::MonitorError::new("cannot monitor"))
        }
        async fn stop(&self, _task: &TaskInfo) -> crate::monitor::Result<()> {
            Err(crate::monitor::MonitorError::new("cannot stop"))
        }
        async fn event(&self, _task: &TaskInfo, _event: &TaskEvent) -> crate::monitor::Result<()> {
            Err(crate::monitor::MonitorError::new("cannot take events"))
        }
        async fn stats(&self, _task: &TaskInfo) -> crate::monitor::Result<Option<Any>> {
            Err(crate::monitor::MonitorError::new("cannot count"))
        }
    }

    /// A started service over `runtime`, fed to a failing monitor and `recorder`, with container
    /// `c1` labelled `role=web`.
    async fn monitored(runtime: Arc<FakeRuntime>, recorder: Arc<Recorder>) -> (tempfile::TempDir, TasksService) {
        let (dir, store) = open_temp();
        add_container(&store, "c1").await;
        let loaded = BTreeMap::from([("linux".to_string(), runtime as SharedRuntime)]);
        let runtimes = Runtimes { config: TasksConfig::default(), loaded };
        let monitors = MultiMonitor::new(vec![
            ("failing".into(), Arc::new(Failing) as SharedMonitor),
            ("recorder".into(), recorder as SharedMonitor),
        ]);
        let svc = TasksService::new(store, Exchange::new(), runtimes, monitors);
        svc.begin().await;
        (dir, svc)
    }

    async fn add_container(store: &MetadataStore, id: &str) {
        let container = Container {
            id: id.into(),
            runtime: runtime("io.containerd.runc.v2"),
            spec: Some(any("types.containerd.io/opencontainers/runtime-spec/1/Spec", b"{}")),
            labels: crate::store::testutil::labels(&[("role", "web")]),
            ..Default::default()
        };
        store.create_container("default", container).await.unwrap();
    }

    /// Waits for an event on `topic`.
    async fn next_on(subscription: &mut Subscription, topic: &str) -> berth_proto::containerd::types::Envelope {
        loop {
            let envelope = tokio::time::timeout(Duration::from_secs(5), subscription.next())
                .await
                .unwrap_or_else(|_| panic!("no {topic} event"))
                .unwrap();
            if envelope.topic == topic {
                return envelope;
            }
        }
    }

    #[tokio::test]
    async fn monitors_see_the_whole_lifecycle_and_a_failing_one_breaks_nothing() {
        let runtime = FakeRuntime::new();
        let recorder = Arc::new(Recorder::default());
        let (_dir, svc) = monitored(runtime.clone(), recorder.clone()).await;
        let mut events = svc.events.subscribe(FilterSet::default());
        let c1 = || "c1".to_string();

        let created = Tasks::create(&svc, req(CreateTaskRequest { container_id: c1(), ..Default::default() })).await;
        assert_eq!(created.unwrap().into_inner().pid, 100);
        Tasks::start(&svc, req(StartRequest { container_id: c1(), exec_id: String::new() })).await.unwrap();
        Tasks::pause(&svc, req(PauseTaskRequest { container_id: c1() })).await.unwrap();
        Tasks::resume(&svc, req(ResumeTaskRequest { container_id: c1() })).await.unwrap();
        runtime.send(RuntimeEvent::Oom { namespace: "default".into(), container_id: c1() });
        recorder.saw("oom c1").await;
        Tasks::kill(&svc, req(KillRequest { container_id: c1(), signal: 9, ..Default::default() })).await.unwrap();
        next_on(&mut events, "/tasks/exit").await;
        recorder.saw("exited c1").await;
        Tasks::delete(&svc, req(DeleteTaskRequest { container_id: c1() })).await.unwrap();
        svc.monitors.flush().await;

        assert_eq!(
            recorder.calls(),
            [
                "monitor c1",
                "created c1",
                "started c1",
                "paused c1",
                "resumed c1",
                "oom c1",
                "exited c1",
                "deleted c1",
                "stop c1"
            ]
        );
        // Monitors see the container's labels and the runtime plugin's name.
        assert!(recorder.labels.lock().unwrap().iter().all(|l| l.get("role").map(String::as_str) == Some("web")));

        // The service published the task events, and left /tasks/oom to a monitor (none here does).
        let mut topics = Vec::new();
        while let Ok(Some(envelope)) = tokio::time::timeout(Duration::from_millis(50), events.next()).await {
            topics.push(envelope.topic);
        }
        assert!(topics.contains(&"/tasks/delete".to_string()), "{topics:?}");
        assert!(!topics.iter().any(|t| t == "/tasks/oom"), "{topics:?}");
    }

    #[tokio::test]
    async fn metrics_come_from_the_first_monitor_with_figures_then_the_task() {
        let runtime = FakeRuntime::new();
        runtime.add("default", "c1", crate::runtime::Status::Running);
        for (stats, want) in [(true, "from.the.monitor"), (false, "from.the.task")] {
            let recorder = Arc::new(Recorder { stats, ..Default::default() });
            let (_dir, svc) = monitored(runtime.clone(), recorder).await;
            let metrics = Tasks::metrics(&svc, req(MetricsRequest::default())).await.unwrap().into_inner().metrics;
            assert_eq!(metrics.len(), 1);
            assert_eq!((metrics[0].id.as_str(), metrics[0].data.as_ref().unwrap().type_url.as_str()), ("c1", want));
        }
    }

    #[tokio::test]
    async fn recovery_monitors_live_tasks_and_removes_those_of_deleted_containers() {
        let runtime = FakeRuntime::new();
        runtime.add("default", "c1", crate::runtime::Status::Running);
        runtime.add("default", "gone", crate::runtime::Status::Running);
        let recorder = Arc::new(Recorder::default());
        let (_dir, svc) = monitored(runtime.clone(), recorder.clone()).await;
        svc.monitors.flush().await;
        assert!(runtime.has("default", "c1"));
        assert!(!runtime.has("default", "gone"), "the task of a deleted container is removed at start-up");
        // A task removed before it was monitored is still announced as deleted.
        let calls = recorder.calls();
        assert!(calls.contains(&"monitor c1".to_string()) && !calls.contains(&"monitor gone".to_string()), "{calls:?}");
        assert!(calls.contains(&"deleted gone".to_string()), "{calls:?}");
    }

    #[tokio::test]
    async fn deleting_a_container_removes_its_task() {
        let runtime = FakeRuntime::new();
        let recorder = Arc::new(Recorder::default());
        let (_dir, svc) = monitored(runtime.clone(), recorder.clone()).await;
        let mut events = svc.events.subscribe(FilterSet::default());
        Tasks::create(&svc, req(CreateTaskRequest { container_id: "c1".into(), ..Default::default() })).await.unwrap();
        Tasks::start(&svc, req(StartRequest { container_id: "c1".into(), exec_id: String::new() })).await.unwrap();
        Tasks::pause(&svc, req(PauseTaskRequest { container_id: "c1".into() })).await.unwrap();

        // What the Containers service does on Delete.
        svc.store.delete_container("default", "c1").await.unwrap();
        publish(&svc.events, "default", "/containers/delete", "ContainerDelete", &ContainerDelete { id: "c1".into() });
        let deleted = next_on(&mut events, "/tasks/delete").await;
        let deleted = TaskDelete::decode(deleted.event.unwrap().value.as_slice()).unwrap();
        // Thawed, then killed.
        assert_eq!((deleted.container_id.as_str(), deleted.exit_status), ("c1", 137));
        assert!(!runtime.has("default", "c1"));
        recorder.saw("stop c1").await;
    }

    #[tokio::test]
    async fn a_create_that_loses_its_container_leaves_no_task() {
        let runtime = FakeRuntime::new();
        let recorder = Arc::new(Recorder::default());
        let (_dir, svc) = monitored(runtime.clone(), recorder.clone()).await;
        let store = svc.store.clone();
        // The container goes while the runtime makes the task, before its event could find one.
        *runtime.during_create.lock().unwrap() =
            Some(Box::pin(async move { store.delete_container("default", "c1").await.unwrap() }));
        let e = Tasks::create(&svc, req(CreateTaskRequest { container_id: "c1".into(), ..Default::default() }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().contains("deleted while its task was created"), "{}", e.message());
        assert!(!runtime.has("default", "c1"));
        svc.monitors.flush().await;
        assert!(!recorder.calls().contains(&"monitor c1".to_string()), "{:?}", recorder.calls());
    }

    #[test]
    fn monitors_are_chosen_by_name_in_order_once() {
        let loaded =
            [(PluginId::new(PluginKind::Monitor, "cgroups"), 1), (PluginId::new(PluginKind::Monitor, "restart"), 2)];
        let names = |wanted: &[&str]| {
            let wanted: Vec<String> = wanted.iter().map(|w| w.to_string()).collect();
            let (chosen, problems) = select_monitors(&wanted, &loaded);
            (chosen.into_iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>(), problems)
        };
        assert_eq!(names(&["cgroups", "restart"]), (vec!["cgroups=1".into(), "restart=2".into()], vec![]));
        assert_eq!(names(&["monitor.restart", "cgroups"]).0, ["restart=2", "cgroups=1"]);
        assert_eq!(names(&[]), (vec![], vec![]));
        let (chosen, problems) = names(&["restart", "monitor.restart", "alert"]);
        assert_eq!(chosen, ["restart=2"]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("listed twice"), "{problems:?}");
        assert!(problems[1].starts_with("monitor \"alert\" is not loaded") && problems[1].contains("cgroups, restart"));
    }

    #[tokio::test]
    async fn runtime_events_become_task_events() {
        let runtime = FakeRuntime::new();
        let recorder = Arc::new(Recorder::default());
        let (_dir, svc) = monitored(runtime.clone(), recorder.clone()).await;
        let mut subscription = svc.events.subscribe(FilterSet::default());
        let exit = Exit { pid: 9, status: 143, timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(5) };
        let exit_of = |exec_id: Option<&str>| RuntimeEvent::Exit {
            namespace: "ns1".into(),
            container_id: "c1".into(),
            exec_id: exec_id.map(Into::into),
            exit,
        };
        runtime.send(exit_of(None));
        runtime.send(exit_of(Some("e1")));

        for want_id in ["c1", "e1"] {
            let envelope = subscription.next().await.unwrap();
            assert_eq!((envelope.namespace.as_str(), envelope.topic.as_str()), ("ns1", "/tasks/exit"));
            let event = envelope.event.unwrap();
            assert_eq!(event.type_url, "containerd.events.TaskExit");
            let exit = TaskExit::decode(event.value.as_slice()).unwrap();
            assert_eq!((exit.container_id.as_str(), exit.id.as_str()), ("c1", want_id));
            assert_eq!((exit.pid, exit.exit_status, exit.exited_at.unwrap().seconds), (9, 143, 5));
        }
        recorder.saw("exited c1").await;
        svc.monitors.flush().await;
        assert_eq!(recorder.calls().iter().filter(|c| *c == "exited c1").count(), 2);
    }

    #[test]
    fn the_service_waits_for_every_runtime() {
        let r = registration();
        assert_eq!(r.id.to_string(), "service.tasks");
        assert!(r.requires.contains(&Requirement::Kind(PluginKind::Runtime)));
        assert!(r.requires.contains(&Requirement::Kind(PluginKind::Monitor)));
        assert!(r.requires.contains(&Requirement::Plugin(store_id())));
        assert!(r.requires.contains(&Requirement::Plugin(exchange_id())));
    }
}
