//! The runtime backend kind: what a `runtime.*` plugin provides, modelled on containerd's
//! `runtime` package (PlatformRuntime, Task, Process).
//!
//! A runtime creates tasks: a container's init process plus the processes exec'd into it. The
//! Tasks service drives a runtime only through these traits, so a built-in runtime, one loaded
//! from a native library and one from a wasm component are interchangeable. Every call names the
//! namespace it works in; ids are unique per namespace.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use prost_types::Any;

use crate::mount::Mount;

/// Why a runtime call failed, in containerd's runtime error kinds.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RuntimeError {
    /// A task or process with that id exists already.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// No task or process with that id.
    #[error("{0}: does not exist")]
    DoesNotExist(String),
    /// The runtime named by the container is not loaded.
    #[error("runtime {0:?} does not exist")]
    RuntimeDoesNotExist(String),
    /// The process has exited already, so it cannot be signalled, resized or written to.
    #[error("{0}: process already finished")]
    ProcessAlreadyExited(String),
    /// Anything else, already categorised.
    #[error(transparent)]
    Other(#[from] crate::Error),
}

impl From<RuntimeError> for crate::Error {
    fn from(e: RuntimeError) -> Self {
        use crate::Error;
        match e {
            RuntimeError::AlreadyExists(what) => Error::AlreadyExists(what),
            RuntimeError::DoesNotExist(what) => Error::NotFound(what),
            RuntimeError::RuntimeDoesNotExist(name) => Error::NotFound(format!("runtime {name:?}")),
            // containerd answers NotFound with "process already finished"; ctr relies on it.
            RuntimeError::ProcessAlreadyExited(what) => Error::NotFound(format!("{what}: process already finished")),
            RuntimeError::Other(e) => e,
        }
    }
}

/// Result of runtime calls.
pub type Result<T> = std::result::Result<T, RuntimeError>;

/// A process's standard streams: FIFO paths or other URIs the client made, as containerd passes
/// them. Empty means not connected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Io {
    /// Where the process reads stdin from.
    pub stdin: String,
    /// Where its stdout goes.
    pub stdout: String,
    /// Where its stderr goes (unused with a terminal).
    pub stderr: String,
    /// Run the process on a pseudo-terminal.
    pub terminal: bool,
}

/// Everything needed to create a task.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// The OCI runtime spec, as the container record holds it.
    pub spec: Option<Any>,
    /// Mounts that make up the root filesystem; empty when the spec's root path is used.
    pub rootfs: Vec<Mount>,
    /// Standard streams of the init process.
    pub io: Io,
    /// Restore from this checkpoint directory instead of starting fresh.
    pub checkpoint: Option<String>,
    /// Runtime-specific options from the container record.
    pub runtime_options: Option<Any>,
    /// Task-specific options from the create request.
    pub task_options: Option<Any>,
}

/// Options for a process exec'd into a task.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// The OCI process spec.
    pub spec: Option<Any>,
    /// Its standard streams.
    pub io: Io,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Its pid.
    pub pid: u32,
    /// Exit code, or 128 + signal for a process killed by a signal.
    pub status: u32,
    /// When it exited.
    pub timestamp: SystemTime,
}

/// Where a process stands (containerd's `task.Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited.
    Stopped,
    /// Frozen.
    Paused,
    /// Being frozen.
    Pausing,
    /// Not known (e.g. its supervisor died).
    Unknown,
}

/// A snapshot of a process's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// Status.
    pub status: Status,
    /// Pid on the host, 0 before creation finished.
    pub pid: u32,
    /// Exit status once stopped.
    pub exit_status: u32,
    /// Exit time once stopped.
    pub exited_at: Option<SystemTime>,
    /// The streams it was created with.
    pub io: Io,
}

/// A process in a task, as `ListPids` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Host pid.
    pub pid: u32,
    /// The exec id when the process was exec'd by the runtime.
    pub exec_id: Option<String>,
}

/// A terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleSize {
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
}

/// A process: a task's init or one exec'd into it.
#[async_trait::async_trait]
pub trait Process: Send + Sync {
    /// Its id: the task id for init, the exec id otherwise.
    fn id(&self) -> &str;
    /// Its current state.
    async fn state(&self) -> Result<State>;
    /// Its pid, when the backend holds it without asking anyone (it learnt it creating the
    /// process): the Tasks service then answers Create without a `state` call. `None`, the
    /// default, sends callers to `state`.
    fn pid(&self) -> Option<u32> {
        None
    }
    /// Starts it (a created process waits for this); returns its pid, as the shim API's Start does.
    async fn start(&self) -> Result<u32>;
    /// Sends `signal`; with `all`, to every process of the task (init only).
    async fn kill(&self, signal: u32, all: bool) -> Result<()>;
    /// Resizes its terminal.
    async fn resize_pty(&self, size: ConsoleSize) -> Result<()>;
    /// Closes its stdin, so it reads end-of-file.
    async fn close_io(&self) -> Result<()>;
    /// Waits until it exits; returns at once for an exited process.
    async fn wait(&self) -> Result<Exit>;
}

/// A task: a container's init process with what acts on the whole container.
#[async_trait::async_trait]
pub trait Task: Process {
    /// The namespace the task lives in.
    fn namespace(&self) -> &str;
    /// Freezes every process of the task.
    async fn pause(&self) -> Result<()>;
    /// Thaws it.
    async fn resume(&self) -> Result<()>;
    /// Starts a new process `id` in the task's namespaces and cgroup (created, not started).
    async fn exec(&self, id: &str, options: ExecOptions) -> Result<Arc<dyn Process>>;
    /// Every process of the task.
    async fn pids(&self) -> Result<Vec<ProcessInfo>>;
    /// Checkpoints the task into `path`.
    async fn checkpoint(&self, path: &str, options: Option<Any>) -> Result<()>;
    /// Changes the resource limits of the running task.
    async fn update(&self, resources: Any, annotations: BTreeMap<String, String>) -> Result<()>;
    /// An exec'd process by id.
    async fn process(&self, id: &str) -> Result<Arc<dyn Process>>;
    /// Removes an exited exec'd process, returning how it ended.
    async fn delete_process(&self, id: &str) -> Result<Exit>;
    /// Resource usage, as a `containerd.cgroups` stats message in an Any.
    async fn stats(&self) -> Result<Any>;
}

/// Something a runtime noticed by itself rather than in answer to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// A process of a task exited.
    Exit {
        /// The task's namespace.
        namespace: String,
        /// The task (container) id.
        container_id: String,
        /// The exec id, or None for the task's init process.
        exec_id: Option<String>,
        /// How it ended.
        exit: Exit,
    },
    /// A process of the task was killed for going over the task's memory limit.
    Oom {
        /// The task's namespace.
        namespace: String,
        /// The task (container) id.
        container_id: String,
    },
}

/// The stream of a runtime's own events.
pub type RuntimeEvents = tokio::sync::mpsc::UnboundedReceiver<RuntimeEvent>;

/// A runtime backend: what a `runtime.*` plugin exports.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// The runtime's name, e.g. `linux`.
    fn id(&self) -> &str;
    /// The events this runtime notices on its own (exits, OOM kills). The first caller takes the
    /// stream (the Tasks service, which publishes them); events that happen before are kept for
    /// it, so exits found while recovering tasks after a restart are not lost. Later calls get None.
    fn take_events(&self) -> Option<RuntimeEvents>;
    /// Creates task `id` in namespace `ns`; the init process is created but not started.
    async fn create(&self, ns: &str, id: &str, options: CreateOptions) -> Result<Arc<dyn Task>>;
    /// Task `id` in namespace `ns`.
    async fn get(&self, ns: &str, id: &str) -> Result<Arc<dyn Task>>;
    /// The tasks of namespace `ns`, or of every namespace when `ns` is None.
    async fn tasks(&self, ns: Option<&str>) -> Result<Vec<Arc<dyn Task>>>;
    /// Removes task `id` (it must have exited unless the runtime is told to force it) and
    /// returns how its init process ended.
    async fn delete(&self, ns: &str, id: &str) -> Result<Exit>;
}

/// What a `runtime.*` plugin exports into the registry.
pub type SharedRuntime = Arc<dyn Runtime>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_errors_map_to_categories_clients_expect() {
        let e: crate::Error = RuntimeError::ProcessAlreadyExited("task \"a\"".into()).into();
        assert!(matches!(e, crate::Error::NotFound(ref m) if m.contains("process already finished")), "{e}");
        let e: crate::Error = RuntimeError::AlreadyExists("task \"a\"".into()).into();
        assert!(matches!(e, crate::Error::AlreadyExists(_)));
        let e: crate::Error = RuntimeError::RuntimeDoesNotExist("io.containerd.nope.v1".into()).into();
        assert_eq!(e.to_string(), "runtime \"io.containerd.nope.v1\": not found");
    }
}
