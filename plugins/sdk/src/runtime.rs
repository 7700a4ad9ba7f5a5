//! The runtime kind: implement [`Runtime`] and export it with [`crate::export_runtime!`].
//!
//! A runtime runs tasks: a container's init process plus processes exec'd into it, each named by namespace,
//! task id and exec id (empty for init). berthd drives it only through these calls, so the Tasks service, `ctr`
//! and every containerd client use a native runtime as they use the built-in one.
//!
//! Exits: a runtime reports every exit itself, with [`crate::Host::exit`], once [`Runtime::state`] already
//! answers Stopped for that process. berthd publishes the event (`/tasks/exit`) and ends the waits on it; there
//! is no blocking wait call.

use crate::error::{Error, Result};
use crate::export;
use crate::host::Init;
use crate::proto::Any;
use crate::proto::runtime::*;

/// A runtime backend. Every call may block (berthd calls from blocking threads, several at once), but
/// should not wait for a process to exit.
///
/// Errors: [`Error::not_found`] with `task "id"` or `process "exec" of task "id"` for unknown ids,
/// [`Error::already_exists`] for a taken id, [`Error::process_finished`] for a signal, resize or stdin close
/// of an exited process, FailedPrecondition for deleting a task that still runs.
pub trait Runtime: Sized + Send + Sync + 'static {
    /// The plugin's name: its table is `[plugins."runtime.NAME"]`; containers pick it through the Tasks
    /// service's `runtime_names` or by this name.
    const NAME: &'static str;

    /// Makes the runtime from its config and directories.
    fn new(init: Init) -> Result<Self>;

    /// Creates a task; its init is created, not started. Returns its pid (0 while it has none).
    fn create(&self, request: CreateRequest) -> Result<u32>;

    /// Starts a created process; returns its pid.
    fn start(&self, process: &ProcessRequest) -> Result<u32>;

    /// A process's state.
    fn state(&self, process: &ProcessRequest) -> Result<StateResponse>;

    /// Sends `signal` to a process (with `all`, to every process of the task).
    fn kill(&self, process: &ProcessRequest, signal: u32, all: bool) -> Result<()>;

    /// Removes a task whose init exited (or was never started) and returns how it ended.
    fn delete(&self, task: &TaskRequest) -> Result<Exit>;

    /// The tasks of `namespace`, or of every namespace when None.
    fn list(&self, namespace: Option<&str>) -> Result<Vec<TaskRef>>;

    /// Makes a process in a running task (created, not started).
    fn exec(&self, request: ExecRequest) -> Result<()> {
        Err(Error::unimplemented(format!("runtime {} cannot exec into tasks (exec {})", Self::NAME, request.exec_id)))
    }

    /// Removes an exited exec'd process and returns how it ended.
    fn delete_process(&self, process: &ProcessRequest) -> Result<Exit> {
        Err(Error::not_found(format!("process {:?} of task {:?}", process.exec_id, process.id)))
    }

    /// Resizes a process's terminal.
    fn resize_pty(&self, _process: &ProcessRequest, _width: u32, _height: u32) -> Result<()> {
        Err(Error::unimplemented(format!("runtime {} cannot resize terminals", Self::NAME)))
    }

    /// Closes a process's stdin.
    fn close_io(&self, _process: &ProcessRequest) -> Result<()> {
        Ok(())
    }

    /// Freezes a task.
    fn pause(&self, _task: &TaskRequest) -> Result<()> {
        Err(Error::unimplemented(format!("runtime {} cannot pause tasks", Self::NAME)))
    }

    /// Thaws a task.
    fn resume(&self, _task: &TaskRequest) -> Result<()> {
        Err(Error::unimplemented(format!("runtime {} cannot resume tasks", Self::NAME)))
    }

    /// Every process of a task.
    fn pids(&self, task: &TaskRequest) -> Result<Vec<ProcessInfo>> {
        let state = self.state(&ProcessRequest {
            namespace: task.namespace.clone(),
            id: task.id.clone(),
            exec_id: String::new(),
        })?;
        Ok(vec![ProcessInfo { pid: state.pid, exec_id: String::new() }])
    }

    /// Checkpoints a task.
    fn checkpoint(&self, _request: CheckpointRequest) -> Result<()> {
        Err(Error::unimplemented(format!("runtime {} cannot checkpoint tasks", Self::NAME)))
    }

    /// Changes a running task's resources.
    fn update(&self, _request: UpdateRequest) -> Result<()> {
        Err(Error::unimplemented(format!("runtime {} cannot update tasks", Self::NAME)))
    }

    /// Resource usage, as a `containerd.cgroups` metrics message.
    fn stats(&self, _task: &TaskRequest) -> Result<Any> {
        Err(Error::unimplemented(format!("runtime {} has no task metrics", Self::NAME)))
    }
}

export::methods! { Runtime, runtime_methods;
    CREATE => create(CreateRequest) |t, r| Ok(CreateResponse { pid: t.create(r)? }),
    START => start(ProcessRequest) |t, r| Ok(StartResponse { pid: t.start(&r)? }),
    STATE => state(ProcessRequest) |t, r| t.state(&r),
    KILL => kill(KillRequest) |t, r| {
        let process = ProcessRequest { namespace: r.namespace, id: r.id, exec_id: r.exec_id };
        t.kill(&process, r.signal, r.all)
    },
    DELETE => delete(TaskRequest) |t, r| t.delete(&r),
    EXEC => exec(ExecRequest) |t, r| t.exec(r),
    DELETE_PROCESS => delete_process(ProcessRequest) |t, r| t.delete_process(&r),
    RESIZE_PTY => resize_pty(ResizePtyRequest) |t, r| {
        let process = ProcessRequest { namespace: r.namespace, id: r.id, exec_id: r.exec_id };
        t.resize_pty(&process, r.width, r.height)
    },
    CLOSE_IO => close_io(ProcessRequest) |t, r| t.close_io(&r),
    PAUSE => pause(TaskRequest) |t, r| t.pause(&r),
    RESUME => resume(TaskRequest) |t, r| t.resume(&r),
    PIDS => pids(TaskRequest) |t, r| Ok(PidsResponse { processes: t.pids(&r)? }),
    CHECKPOINT => checkpoint(CheckpointRequest) |t, r| t.checkpoint(r),
    UPDATE => update(UpdateRequest) |t, r| t.update(r),
    STATS => stats(TaskRequest) |t, r| Ok(StatsResponse { stats: Some(t.stats(&r)?) }),
    LIST => list(ListRequest) |t, r| {
        let namespace = (!r.all_namespaces).then_some(r.namespace.as_str());
        Ok(ListResponse { tasks: t.list(namespace)? })
    },
}

/// Exports a [`Runtime`] from a `cdylib`: the entry symbol `berth_plugin_entry`, the header (kind `runtime`,
/// the type's [`Runtime::NAME`], the crate's version) and the function table. Once per library.
#[macro_export]
macro_rules! export_runtime {
    ($ty:ty) => {
        $crate::__export_native!($ty, runtime, Runtime, runtime_methods);
    };
}
