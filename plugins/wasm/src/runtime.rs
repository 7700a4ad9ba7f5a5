//! A wasm runtime plugin as a core [`Runtime`]: a function runtime. berthd's side keeps the task table and the
//! containerd lifecycle, as the built-in runtime does (create, start, kill, wait, delete, exec, state, pids,
//! events); the component, of world `berth:runtime/function-runtime`, runs each process as one `invoke` of a
//! fresh instance of its own (module `task`).
//!
//! - create: the OCI spec's `process` (`args`, `env`, `cwd`) is read and checked; nothing runs, the task is
//!   Created with pid 0 (a task has no host process: pids stay 0). The task's root filesystem is the
//!   function's `/` (read-only if the spec's `root.readonly`), beside the directories its table grants: the
//!   rootfs mounts of an image's snapshot, mounted by berthd under `<state>/runtime.NAME/rootfs/` and
//!   unmounted at delete, or an absolute `root.path` (`ctr run --rootfs DIR`) as it is; a table that grants
//!   `/` itself keeps it. A terminal or a checkpoint is refused.
//! - start: a fresh instance is made and initialised (within `call_timeout`; a failure fails start and the
//!   process exits 127), then `invoke` runs on a thread of its own, under the table's memory limit and with no
//!   time limit: a task runs until it returns or is killed, as a container does.
//! - exec: another process of the task, another invocation with the exec's process spec; exec'd processes end
//!   (137) when the task's init ends, as in a container.
//! - kill: a signal whose default action ends a process ends the invocation, with 128 + the signal: the exit
//!   is recorded and the streams closed at once, and the guest is interrupted at its next epoch tick (10 ms)
//!   or stdin read; one inside another host call (a sleep) is abandoned and stops when that call returns.
//!   Signals that a process ignores or that stop it by default (SIGCHLD, SIGCONT, SIGSTOP, SIGTSTP, SIGTTIN,
//!   SIGTTOU, SIGURG, SIGWINCH) and signal 0 change nothing.
//! - a trap ends the process with 134 (128 + SIGABRT, as an aborting process), growing past `memory_limit`
//!   with 137 and an OOM event; either writes the reason as a last line to the task's stderr and keeps it as
//!   the plugin's last error, and nothing else is affected.
//! - pause, resume, checkpoint, update, stats and terminals are not supported (Unimplemented).

mod stdio;
mod task;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use berth_core::runtime::{
    CreateOptions, Exit, Result, Runtime, RuntimeError, RuntimeEvent, RuntimeEvents, Task as CoreTask,
};
use tokio::sync::mpsc;

use crate::ctx::Ctx;
use crate::plugin::WasmPlugin;

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../proto/wit/runtime",
        world: "berth:runtime/function-runtime",
    });
}

use bindings::berth::runtime::host;
use bindings::berth::runtime::types as wit;
use bindings::{FunctionRuntime, FunctionRuntimePre};

impl host::Host for Ctx {
    fn log(&mut self, level: host::Level, message: String) {
        let plugin = &*self.plugin;
        match level {
            host::Level::Error => tracing::error!(target: "berth_plugin", %plugin, "{message}"),
            host::Level::Warn => tracing::warn!(target: "berth_plugin", %plugin, "{message}"),
            host::Level::Info => tracing::info!(target: "berth_plugin", %plugin, "{message}"),
            host::Level::Debug => tracing::debug!(target: "berth_plugin", %plugin, "{message}"),
            host::Level::Trace => tracing::trace!(target: "berth_plugin", %plugin, "{message}"),
        }
    }
}

impl wit::Host for Ctx {}

/// The runtime kind's world.
pub struct FunctionWorld;

crate::plugin::wasm_kind!(FunctionWorld, FunctionRuntime, FunctionRuntimePre, berth_runtime_function, package: "berth:runtime", export: "berth:runtime/function@1.0.0", world: "berth:runtime/function-runtime@1.0.0");

/// What every task of the runtime shares: the plugin and the event stream.
pub(crate) struct Shared {
    pub plugin: Arc<WasmPlugin<FunctionWorld>>,
    events: mpsc::UnboundedSender<RuntimeEvent>,
}

impl Shared {
    /// Reports an event; nobody listening is fine.
    pub fn emit(&self, event: RuntimeEvent) {
        let _ = self.events.send(event);
    }
}

/// The adapter.
pub struct WasmRuntime {
    shared: Arc<Shared>,
    receiver: Mutex<Option<RuntimeEvents>>,
    tasks: Mutex<BTreeMap<(String, String), Arc<task::WasmTask>>>,
    /// Where the tasks' rootfs mounts go.
    mount_dir: PathBuf,
}

impl WasmRuntime {
    /// Wraps a loaded plugin whose tasks' rootfs mounts go under `mount_dir`. Tasks end with berthd, so what
    /// a berthd that stopped without deleting them left there is unmounted first.
    pub fn new(plugin: Arc<WasmPlugin<FunctionWorld>>, mount_dir: PathBuf) -> Self {
        task::clean_mount_dir(&mount_dir);
        let (events, receiver) = mpsc::unbounded_channel();
        Self {
            shared: Arc::new(Shared { plugin, events }),
            receiver: Mutex::new(Some(receiver)),
            tasks: Mutex::new(BTreeMap::new()),
            mount_dir,
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Arc<task::WasmTask>>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl Runtime for WasmRuntime {
    fn id(&self) -> &str {
        &self.shared.plugin.id.name
    }

    fn take_events(&self) -> Option<RuntimeEvents> {
        self.receiver.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    async fn create(&self, ns: &str, id: &str, options: CreateOptions) -> Result<Arc<dyn CoreTask>> {
        let plugin = &self.shared.plugin.id;
        if options.checkpoint.is_some() {
            return Err(berth_core::Error::Unimplemented(format!(
                "plugin {plugin}: a function task cannot be restored from a checkpoint"
            ))
            .into());
        }
        let what = format!("task {id:?}");
        let spec = task::spec_json(options.spec.as_ref(), &what)?;
        let process = task::ProcessSpec::of(&spec["process"], &what, &options.io, plugin)?;
        let mut tasks = self.tasks();
        let key = (ns.to_string(), id.to_string());
        if tasks.contains_key(&key) {
            return Err(RuntimeError::AlreadyExists(what));
        }
        // Mounted under the lock, so a second create of the id cannot mount too; a failure unmounts it.
        let root = task::TaskRoot::of(&spec, &options.rootfs, &self.mount_dir, &what)?;
        let task = Arc::new(task::WasmTask::new(Arc::clone(&self.shared), ns, id, process, root, options.io));
        tasks.insert(key, Arc::clone(&task));
        Ok(task)
    }

    async fn get(&self, ns: &str, id: &str) -> Result<Arc<dyn CoreTask>> {
        match self.tasks().get(&(ns.to_string(), id.to_string())) {
            Some(task) => Ok(Arc::clone(task) as Arc<dyn CoreTask>),
            None => Err(RuntimeError::DoesNotExist(format!("task {id:?}"))),
        }
    }

    async fn tasks(&self, ns: Option<&str>) -> Result<Vec<Arc<dyn CoreTask>>> {
        Ok(self
            .tasks()
            .iter()
            .filter(|((n, _), _)| ns.is_none_or(|ns| ns == n))
            .map(|(_, task)| Arc::clone(task) as Arc<dyn CoreTask>)
            .collect())
    }

    async fn delete(&self, ns: &str, id: &str) -> Result<Exit> {
        let mut tasks = self.tasks();
        let key = (ns.to_string(), id.to_string());
        let task = tasks.get(&key).ok_or_else(|| RuntimeError::DoesNotExist(format!("task {id:?}")))?;
        let exit = task.deletable()?;
        if let Some(task) = tasks.remove(&key) {
            task.end_execs();
            task.release_root();
        }
        Ok(exit)
    }
}
