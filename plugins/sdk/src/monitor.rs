//! The monitor kind: implement [`Monitor`] and export it with [`crate::export_monitor!`] (ABI 1.1).
//!
//! A task monitor watches tasks for berthd, as the built-in `monitor.cgroups` and `monitor.restart` do: the
//! Tasks service hands it every task's lifecycle (created, started, exited, OOM-killed, paused, resumed,
//! deleted) and asks it for the figures of Tasks.Metrics. It is fed only when it is named in `monitors` of
//! `[plugins."service.tasks"]`.
//!
//! Everything crosses as plain data ([`Task`], [`TaskEvent`], [`Any`]): no handle of the host, so the same
//! implementation can be exported from a native library or another kind of plugin artifact.
//!
//! `activate`, `monitor`, `stop` and `event` come one at a time and in order per monitor, from a blocking
//! thread; berthd does not wait for them (a call that takes longer than 10 s is abandoned and logged, a
//! failed one is logged), so a monitor never holds up a task. `stats` is asked when a client asks for
//! Tasks.Metrics, alongside the others: the type must be `Sync` for that. A monitor acts through its
//! host: [`crate::Host::publish`] puts an event into berthd's event stream.
//!
//! A monitor that counts non-zero exits per task and reports each as an event, exported, then called through
//! the ABI as berthd calls it:
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//! use berth_plugin_sdk::monitor::{Monitor, Task, TaskEvent};
//! use berth_plugin_sdk::proto::Any;
//! use berth_plugin_sdk::{Host, Init, Result};
//!
//! struct Failures { host: Host, counts: Mutex<HashMap<String, u32>> }
//!
//! impl Monitor for Failures {
//!     const NAME: &'static str = "failures";        // [plugins."monitor.failures"]
//!     fn new(init: Init) -> Result<Self> {
//!         Ok(Failures { host: init.host, counts: Mutex::new(HashMap::new()) })
//!     }
//!     fn monitor(&self, _task: &Task) -> Result<()> { Ok(()) }
//!     fn stop(&self, task: &Task) -> Result<()> {
//!         self.counts.lock().unwrap().remove(&task.id);
//!         Ok(())
//!     }
//!     fn event(&self, task: &Task, event: &TaskEvent) -> Result<()> {
//!         if let TaskEvent::Exited { exit, .. } = event && exit.status != 0 {
//!             *self.counts.lock().unwrap().entry(task.id.clone()).or_default() += 1;
//!             let note = Any { type_url: "example.Failure".into(), value: task.id.clone().into_bytes() };
//!             // Into berthd's event stream; a detached host (unit tests) has none.
//!             let _ = self.host.publish(&task.namespace, "/example/failure", note);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! berth_plugin_sdk::export_monitor!(Failures);
//!
//! let header = unsafe { &*berth_plugin_entry() };
//! assert_eq!(unsafe { header.kind.as_str() }, Some("monitor"));
//! assert_eq!(unsafe { header.name.as_str() }, Some("failures"));
//! assert_eq!((header.abi_major, header.abi_minor), (1, 2));
//!
//! // Called directly, as a plugin's own tests do.
//! let dir = std::env::temp_dir();
//! let failures = Failures::new(Init::for_tests("monitor.failures", "{}", dir)).unwrap();
//! let task = Task { namespace: "default".into(), id: "web".into(), ..Default::default() };
//! let exit = berth_plugin_sdk::monitor::Exit { pid: 1, status: 3, exited_at: std::time::SystemTime::now() };
//! failures.event(&task, &TaskEvent::Exited { exec_id: None, exit }).unwrap();
//! assert_eq!(failures.counts.lock().unwrap()["web"], 1);
//! ```

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::export;
use crate::host::Init;
use crate::proto::monitor as pb;
use crate::proto::{Any, Timestamp};

/// A task as a monitor sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Task {
    /// Its namespace.
    pub namespace: String,
    /// Its id, which is its container's.
    pub id: String,
    /// The runtime plugin that runs it, by name (`linux`).
    pub runtime: String,
    /// Its init pid on the host; 0 when not known.
    pub pid: u32,
    /// Its container's labels at the call (empty once the container is gone).
    pub labels: BTreeMap<String, String>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Its pid.
    pub pid: u32,
    /// Exit code, or 128 + signal (137: killed, as by the OOM killer).
    pub status: u32,
    /// When.
    pub exited_at: SystemTime,
}

/// What happened to a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    /// Created; its init waits to be started.
    Created {
        /// The init pid.
        pid: u32,
    },
    /// Its init was started.
    Started {
        /// The init pid.
        pid: u32,
    },
    /// A process exited: init when `exec_id` is None.
    Exited {
        /// The exec id of an exec'd process.
        exec_id: Option<String>,
        /// How it ended.
        exit: Exit,
    },
    /// A process was killed for going over the task's memory limit.
    Oom,
    /// Frozen.
    Paused,
    /// Thawed.
    Resumed,
    /// Removed; [`Monitor::stop`] follows.
    Deleted {
        /// How its init ended.
        exit: Exit,
    },
}

/// A task monitor backend. Calls may block, but a monitor should not wait long inside one: berthd gives
/// up on a call after 10 s. Calls about tasks it does not know (berthd restarted, it was loaded later) are
/// normal and should succeed.
pub trait Monitor: Sized + Send + Sync + 'static {
    /// The plugin's name: its table is `[plugins."monitor.NAME"]`, and `monitors` of
    /// `[plugins."service.tasks"]` names it `NAME`.
    const NAME: &'static str;

    /// Makes the monitor from its config and directories.
    fn new(init: Init) -> Result<Self>;

    /// The Tasks service starts feeding this monitor (the tasks alive at start-up were handed to
    /// [`Monitor::monitor`] first). Start periodic work here, not in `new`: a monitor loaded but not listed
    /// in `monitors` stays idle.
    fn activate(&self) -> Result<()> {
        Ok(())
    }

    /// Starts watching a task: just created, or found alive at berthd's start.
    fn monitor(&self, task: &Task) -> Result<()>;

    /// Stops watching a task: it was deleted.
    fn stop(&self, task: &Task) -> Result<()>;

    /// Something happened to a task.
    fn event(&self, task: &Task, event: &TaskEvent) -> Result<()>;

    /// Figures for Tasks.Metrics (a `containerd.cgroups` metrics message), or None to let the next monitor
    /// or the runtime answer.
    fn stats(&self, _task: &Task) -> Result<Option<Any>> {
        Ok(None)
    }
}

fn time_from(t: Option<Timestamp>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(t).ok()).unwrap_or(SystemTime::UNIX_EPOCH)
}

fn exit_from(exit: Option<pb::Exit>) -> Exit {
    let exit = exit.unwrap_or_default();
    Exit { pid: exit.pid, status: exit.status, exited_at: time_from(exit.exited_at) }
}

/// The message of `exit`.
pub fn exit_to(exit: &Exit) -> pb::Exit {
    pb::Exit { pid: exit.pid, status: exit.status, exited_at: Some(exit.exited_at.into()) }
}

/// A task from its message.
pub fn task_from(task: Option<pb::Task>) -> Result<Task> {
    let task = task.ok_or_else(|| Error::invalid_argument("the request names no task"))?;
    Ok(Task {
        namespace: task.namespace,
        id: task.id,
        runtime: task.runtime,
        pid: task.pid,
        labels: task.labels.into_iter().collect(),
    })
}

/// The message of `task`.
pub fn task_to(task: &Task) -> pb::Task {
    pb::Task {
        namespace: task.namespace.clone(),
        id: task.id.clone(),
        runtime: task.runtime.clone(),
        pid: task.pid,
        labels: task.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// An event from its message.
pub fn event_from(event: Option<pb::TaskEvent>) -> Result<TaskEvent> {
    use pb::task_event::Kind;
    let kind = event.and_then(|e| e.kind).ok_or_else(|| Error::invalid_argument("the request carries no event"))?;
    Ok(match kind {
        Kind::Created(c) => TaskEvent::Created { pid: c.pid },
        Kind::Started(s) => TaskEvent::Started { pid: s.pid },
        Kind::Exited(e) => {
            TaskEvent::Exited { exec_id: (!e.exec_id.is_empty()).then_some(e.exec_id), exit: exit_from(e.exit) }
        }
        Kind::Oom(_) => TaskEvent::Oom,
        Kind::Paused(_) => TaskEvent::Paused,
        Kind::Resumed(_) => TaskEvent::Resumed,
        Kind::Deleted(d) => TaskEvent::Deleted { exit: exit_from(d.exit) },
    })
}

/// The message of `event`.
pub fn event_to(event: &TaskEvent) -> pb::TaskEvent {
    use pb::task_event::Kind;
    let kind = match event {
        TaskEvent::Created { pid } => Kind::Created(pb::Created { pid: *pid }),
        TaskEvent::Started { pid } => Kind::Started(pb::Started { pid: *pid }),
        TaskEvent::Exited { exec_id, exit } => {
            Kind::Exited(pb::Exited { exec_id: exec_id.clone().unwrap_or_default(), exit: Some(exit_to(exit)) })
        }
        TaskEvent::Oom => Kind::Oom(pb::Nothing {}),
        TaskEvent::Paused => Kind::Paused(pb::Nothing {}),
        TaskEvent::Resumed => Kind::Resumed(pb::Nothing {}),
        TaskEvent::Deleted { exit } => Kind::Deleted(pb::Deleted { exit: Some(exit_to(exit)) }),
    };
    pb::TaskEvent { kind: Some(kind) }
}

export::methods! { Monitor, monitor_methods;
    ACTIVATE => activate(()) |t, _r| t.activate(),
    MONITOR => monitor(pb::TaskRequest) |t, r| t.monitor(&task_from(r.task)?),
    STOP => stop(pb::TaskRequest) |t, r| t.stop(&task_from(r.task)?),
    EVENT => event(pb::EventRequest) |t, r| {
        let task = task_from(r.task)?;
        t.event(&task, &event_from(r.event)?)
    },
    STATS => stats(pb::TaskRequest) |t, r| Ok(pb::StatsResponse { stats: t.stats(&task_from(r.task)?)? }),
}

/// Exports a [`Monitor`] from a `cdylib`: the entry symbol `berth_plugin_entry`, the header (kind `monitor`,
/// the type's [`Monitor::NAME`], the crate's version) and the function table. Once per library.
#[cfg(not(target_family = "wasm"))]
#[macro_export]
macro_rules! export_monitor {
    ($ty:ty) => {
        $crate::__export_native!($ty, monitor, Monitor, monitor_methods);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_their_messages() {
        let exit = Exit { pid: 7, status: 137, exited_at: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(9) };
        for event in [
            TaskEvent::Created { pid: 7 },
            TaskEvent::Started { pid: 7 },
            TaskEvent::Exited { exec_id: None, exit },
            TaskEvent::Exited { exec_id: Some("e1".into()), exit },
            TaskEvent::Oom,
            TaskEvent::Paused,
            TaskEvent::Resumed,
            TaskEvent::Deleted { exit },
        ] {
            assert_eq!(event_from(Some(event_to(&event))).unwrap(), event);
        }
        let task = Task {
            namespace: "ns".into(),
            id: "t".into(),
            runtime: "linux".into(),
            pid: 3,
            labels: [("a".to_string(), "b".to_string())].into(),
        };
        assert_eq!(task_from(Some(task_to(&task))).unwrap(), task);
        assert_eq!(task_from(None).unwrap_err().code, crate::abi::code::INVALID_ARGUMENT);
        assert_eq!(
            event_from(Some(pb::TaskEvent { kind: None })).unwrap_err().code,
            crate::abi::code::INVALID_ARGUMENT
        );
    }
}
