//! The monitor backend kind: what a `monitor.*` plugin provides, modelled on containerd's
//! `runtime.TaskMonitor` (`Monitor(task, labels)`, `Stop(task)`).
//!
//! The Tasks service feeds the monitors named by `monitors` in `[plugins."service.tasks"]` with
//! what happens to every task: [`Monitor::monitor`] when a task is created or found alive at
//! start-up, [`Monitor::event`] for each lifecycle event (created, started, exited, OOM, paused,
//! resumed, deleted), [`Monitor::stop`] once it is deleted, and asks [`Monitor::stats`] for the
//! figures of Tasks.Metrics. Built-in monitors are `monitor.cgroups` (OOM events and cgroup
//! statistics) and `monitor.restart` (keeps labelled containers running).
//!
//! Everything crosses the trait as plain data (ids, labels, exit statuses, protobuf `Any`s, error
//! strings), never runtime handles or async primitives, so a monitor loaded from a native library
//! or a wasm component implements it the same way a built-in one does.
//!
//! The Tasks service does not call monitors directly: it hands every call to a [`MultiMonitor`],
//! which gives each monitor a queue of its own. A slow, hung or failing monitor delays and
//! affects only itself; its errors are logged and the task call it was told about goes on.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use berth_core::monitor::{Monitor, MonitorError, MultiMonitor, TaskEvent, TaskInfo};
//!
//! /// Counts OOM kills per task.
//! #[derive(Default)]
//! struct OomCounter(Mutex<Vec<String>>);
//!
//! #[async_trait::async_trait]
//! impl Monitor for OomCounter {
//!     async fn monitor(&self, _task: &TaskInfo) -> Result<(), MonitorError> { Ok(()) }
//!     async fn stop(&self, _task: &TaskInfo) -> Result<(), MonitorError> { Ok(()) }
//!     async fn event(&self, task: &TaskInfo, event: &TaskEvent) -> Result<(), MonitorError> {
//!         if let TaskEvent::Oom = event {
//!             self.0.lock().unwrap().push(task.id.clone());
//!         }
//!         Ok(())
//!     }
//! }
//!
//! /// Fails every call: the other monitors do not notice.
//! struct Broken;
//!
//! #[async_trait::async_trait]
//! impl Monitor for Broken {
//!     async fn monitor(&self, _task: &TaskInfo) -> Result<(), MonitorError> { Err(MonitorError::new("broken")) }
//!     async fn stop(&self, _task: &TaskInfo) -> Result<(), MonitorError> { Err(MonitorError::new("broken")) }
//!     async fn event(&self, _: &TaskInfo, _: &TaskEvent) -> Result<(), MonitorError> { Err(MonitorError::new("broken")) }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let counter = Arc::new(OomCounter::default());
//! let monitors = MultiMonitor::new(vec![
//!     ("broken".to_string(), Arc::new(Broken) as Arc<dyn Monitor>),
//!     ("oom".to_string(), counter.clone() as Arc<dyn Monitor>),
//! ]);
//! let task = TaskInfo { namespace: "default".into(), id: "web".into(), ..Default::default() };
//! monitors.monitor(&task).await.unwrap();
//! monitors.event(&task, &TaskEvent::Oom).await.unwrap();
//! monitors.flush().await;
//! assert_eq!(*counter.0.lock().unwrap(), ["web"]);
//! # });
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prost_types::Any;
use tokio::sync::{mpsc, oneshot};

use crate::runtime::Exit;

/// A task as monitors see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskInfo {
    /// The task's namespace.
    pub namespace: String,
    /// The task's id, which is its container's id.
    pub id: String,
    /// The runtime plugin that runs it, by name (`linux`).
    pub runtime: String,
    /// Its init process's pid on the host; 0 when not known.
    pub pid: u32,
    /// Its container's labels when the call was made (empty when the container record is gone).
    pub labels: BTreeMap<String, String>,
}

/// What happened to a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    /// The task was created; its init process waits to be started.
    Created {
        /// The init pid.
        pid: u32,
    },
    /// Its init process was started.
    Started {
        /// The init pid.
        pid: u32,
    },
    /// A process of the task exited: init when `exec_id` is None.
    Exited {
        /// The exec id of an exec'd process, None for init.
        exec_id: Option<String>,
        /// How it ended.
        exit: Exit,
    },
    /// A process of the task was killed for going over the task's memory limit.
    Oom,
    /// The task was frozen.
    Paused,
    /// The task was thawed.
    Resumed,
    /// The task was removed; [`Monitor::stop`] follows.
    Deleted {
        /// How its init process ended.
        exit: Exit,
    },
}

impl TaskEvent {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Created { .. } => "created",
            Self::Started { .. } => "started",
            Self::Exited { .. } => "exited",
            Self::Oom => "oom",
            Self::Paused => "paused",
            Self::Resumed => "resumed",
            Self::Deleted { .. } => "deleted",
        }
    }
}

/// Why a monitor call failed: a message, logged by the caller with the monitor and task it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MonitorError(pub String);

impl MonitorError {
    /// An error with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl From<crate::Error> for MonitorError {
    fn from(e: crate::Error) -> Self {
        Self(e.to_string())
    }
}

/// Result of monitor calls.
pub type Result<T> = std::result::Result<T, MonitorError>;

/// A task monitor: what a `monitor.*` plugin exports (as a [`SharedMonitor`]).
///
/// Calls about one task arrive in the order the Tasks service saw them happen, except that the exit
/// of a process that ends at once may come before the `Started` of its start.
#[async_trait::async_trait]
pub trait Monitor: Send + Sync {
    /// The Tasks service starts using this monitor: it has handed over the tasks it found alive at
    /// start-up (each through [`Monitor::monitor`]). A monitor with work of its own (a periodic
    /// check, a timer) begins it here, so one loaded but not configured stays idle.
    async fn activate(&self) -> Result<()> {
        Ok(())
    }

    /// Starts watching `task`: it was just created, or was found alive at start-up.
    async fn monitor(&self, task: &TaskInfo) -> Result<()>;

    /// Stops watching `task`: it was deleted.
    async fn stop(&self, task: &TaskInfo) -> Result<()>;

    /// Something happened to `task`.
    async fn event(&self, task: &TaskInfo, event: &TaskEvent) -> Result<()>;

    /// Resource usage of `task` as a `containerd.types.Metric`'s data (e.g.
    /// `io.containerd.cgroups.v1.Metrics`), or None when this monitor has no figures for it.
    async fn stats(&self, _task: &TaskInfo) -> Result<Option<Any>> {
        Ok(None)
    }
}

/// What a `monitor.*` plugin exports into the registry.
pub type SharedMonitor = Arc<dyn Monitor>;

/// A monitor that does nothing: what the Tasks service uses when no monitor is configured.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopMonitor;

#[async_trait::async_trait]
impl Monitor for NoopMonitor {
    async fn monitor(&self, _task: &TaskInfo) -> Result<()> {
        Ok(())
    }

    async fn stop(&self, _task: &TaskInfo) -> Result<()> {
        Ok(())
    }

    async fn event(&self, _task: &TaskInfo, _event: &TaskEvent) -> Result<()> {
        Ok(())
    }
}

/// How long one monitor call may take before it is abandoned and logged.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// One call queued for a monitor.
enum Call {
    Activate,
    Monitor(TaskInfo),
    Stop(TaskInfo),
    Event(TaskInfo, TaskEvent),
    /// Answered once every call queued before it was made.
    Flush(oneshot::Sender<()>),
}

impl Call {
    fn describe(&self) -> (&'static str, String) {
        match self {
            Call::Activate => ("activate", String::new()),
            Call::Monitor(t) => ("monitor", t.id.clone()),
            Call::Stop(t) => ("stop", t.id.clone()),
            Call::Event(t, e) => (e.name(), t.id.clone()),
            Call::Flush(_) => ("flush", String::new()),
        }
    }
}

/// A monitor with its queue.
struct Lane {
    name: String,
    monitor: SharedMonitor,
    queue: mpsc::UnboundedSender<Call>,
}

/// Fans every call out to several monitors, each through a queue of its own worked in order: one
/// monitor failing (logged with its name), being slow or hanging (abandoned after a timeout and
/// logged) never holds up the others or the caller. `monitor`, `stop`, `event` and `activate`
/// return once the call is queued and always succeed; `stats` asks the monitors in order and
/// answers with the first figures one has.
pub struct MultiMonitor {
    lanes: Vec<Lane>,
    timeout: Duration,
}

impl MultiMonitor {
    /// Monitors by name, in the order `stats` asks them. Needs a tokio runtime: each gets a worker.
    pub fn new(monitors: Vec<(String, SharedMonitor)>) -> Self {
        Self::with_timeout(monitors, CALL_TIMEOUT)
    }

    /// [`MultiMonitor::new`] with another time limit per call.
    pub fn with_timeout(monitors: Vec<(String, SharedMonitor)>, timeout: Duration) -> Self {
        let lanes = monitors
            .into_iter()
            .map(|(name, monitor)| {
                let (queue, calls) = mpsc::unbounded_channel();
                tokio::spawn(work(name.clone(), Arc::clone(&monitor), calls, timeout));
                Lane { name, monitor, queue }
            })
            .collect();
        Self { lanes, timeout }
    }

    /// The monitors' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.lanes.iter().map(|l| l.name.as_str()).collect()
    }

    /// Whether there is no monitor at all.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Waits until every monitor has worked through the calls queued so far.
    pub async fn flush(&self) {
        let mut done = Vec::new();
        for lane in &self.lanes {
            let (tx, rx) = oneshot::channel();
            if lane.queue.send(Call::Flush(tx)).is_ok() {
                done.push(rx);
            }
        }
        for rx in done {
            let _ = rx.await;
        }
    }

    fn queue(&self, call: impl Fn() -> Call) {
        for lane in &self.lanes {
            // The worker only stops when the MultiMonitor is dropped.
            let _ = lane.queue.send(call());
        }
    }
}

/// Works through one monitor's calls in order.
async fn work(name: String, monitor: SharedMonitor, mut calls: mpsc::UnboundedReceiver<Call>, timeout: Duration) {
    while let Some(call) = calls.recv().await {
        let (what, task) = call.describe();
        let result = match call {
            Call::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Call::Activate => tokio::time::timeout(timeout, monitor.activate()).await,
            Call::Monitor(t) => tokio::time::timeout(timeout, monitor.monitor(&t)).await,
            Call::Stop(t) => tokio::time::timeout(timeout, monitor.stop(&t)).await,
            Call::Event(t, e) => tokio::time::timeout(timeout, monitor.event(&t, &e)).await,
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(monitor = %name, call = what, %task, %error, "monitor call failed"),
            Err(_) => tracing::warn!(monitor = %name, call = what, %task, ?timeout, "monitor call timed out"),
        }
    }
}

#[async_trait::async_trait]
impl Monitor for MultiMonitor {
    async fn activate(&self) -> Result<()> {
        self.queue(|| Call::Activate);
        Ok(())
    }

    async fn monitor(&self, task: &TaskInfo) -> Result<()> {
        self.queue(|| Call::Monitor(task.clone()));
        Ok(())
    }

    async fn stop(&self, task: &TaskInfo) -> Result<()> {
        self.queue(|| Call::Stop(task.clone()));
        Ok(())
    }

    async fn event(&self, task: &TaskInfo, event: &TaskEvent) -> Result<()> {
        self.queue(|| Call::Event(task.clone(), event.clone()));
        Ok(())
    }

    async fn stats(&self, task: &TaskInfo) -> Result<Option<Any>> {
        for lane in &self.lanes {
            match tokio::time::timeout(self.timeout, lane.monitor.stats(task)).await {
                Ok(Ok(Some(stats))) => return Ok(Some(stats)),
                Ok(Ok(None)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(monitor = %lane.name, task = %task.id, %error, "monitor has no stats")
                }
                Err(_) => tracing::warn!(monitor = %lane.name, task = %task.id, "monitor stats timed out"),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::SystemTime;

    use super::*;

    /// Records every call as text.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        stats: Option<&'static str>,
    }

    impl Recorder {
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        fn push(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
    }

    #[async_trait::async_trait]
    impl Monitor for Recorder {
        async fn activate(&self) -> Result<()> {
            self.push("activate".into());
            Ok(())
        }
        async fn monitor(&self, task: &TaskInfo) -> Result<()> {
            self.push(format!("monitor {}", task.id));
            Ok(())
        }
        async fn stop(&self, task: &TaskInfo) -> Result<()> {
            self.push(format!("stop {}", task.id));
            Ok(())
        }
        async fn event(&self, task: &TaskInfo, event: &TaskEvent) -> Result<()> {
            self.push(format!("{} {}", event.name(), task.id));
            Ok(())
        }
        async fn stats(&self, _task: &TaskInfo) -> Result<Option<Any>> {
            Ok(self.stats.map(|t| Any { type_url: t.into(), value: vec![] }))
        }
    }

    /// Fails or hangs on every call.
    enum Bad {
        Fails,
        Hangs,
    }

    #[async_trait::async_trait]
    impl Monitor for Bad {
        async fn activate(&self) -> Result<()> {
            self.misbehave().await
        }
        async fn monitor(&self, _task: &TaskInfo) -> Result<()> {
            self.misbehave().await
        }
        async fn stop(&self, _task: &TaskInfo) -> Result<()> {
            self.misbehave().await
        }
        async fn event(&self, _task: &TaskInfo, _event: &TaskEvent) -> Result<()> {
            self.misbehave().await
        }
        async fn stats(&self, _task: &TaskInfo) -> Result<Option<Any>> {
            self.misbehave().await?;
            Ok(Some(Any { type_url: "bad".into(), value: vec![] }))
        }
    }

    impl Bad {
        async fn misbehave(&self) -> Result<()> {
            match self {
                Bad::Fails => Err(MonitorError::new("no good")),
                Bad::Hangs => std::future::pending().await,
            }
        }
    }

    fn task(id: &str) -> TaskInfo {
        TaskInfo { namespace: "default".into(), id: id.into(), runtime: "linux".into(), pid: 1, ..Default::default() }
    }

    fn exit() -> Exit {
        Exit { pid: 1, status: 137, timestamp: SystemTime::UNIX_EPOCH }
    }

    async fn drive(monitors: &MultiMonitor) {
        monitors.activate().await.unwrap();
        let t = task("a");
        monitors.monitor(&t).await.unwrap();
        monitors.event(&t, &TaskEvent::Created { pid: 1 }).await.unwrap();
        monitors.event(&t, &TaskEvent::Started { pid: 1 }).await.unwrap();
        monitors.event(&t, &TaskEvent::Oom).await.unwrap();
        monitors.event(&t, &TaskEvent::Exited { exec_id: None, exit: exit() }).await.unwrap();
        monitors.event(&t, &TaskEvent::Deleted { exit: exit() }).await.unwrap();
        monitors.stop(&t).await.unwrap();
    }

    const ALL_CALLS: [&str; 8] =
        ["activate", "monitor a", "created a", "started a", "oom a", "exited a", "deleted a", "stop a"];

    #[tokio::test]
    async fn every_monitor_gets_every_call_in_order() {
        let (one, two) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        let monitors =
            MultiMonitor::new(vec![("one".into(), one.clone() as SharedMonitor), ("two".into(), two.clone() as _)]);
        assert_eq!(monitors.names(), ["one", "two"]);
        drive(&monitors).await;
        monitors.flush().await;
        assert_eq!(one.calls(), ALL_CALLS);
        assert_eq!(two.calls(), ALL_CALLS);
    }

    #[tokio::test]
    async fn a_failing_or_hung_monitor_holds_up_nobody() {
        let good = Arc::new(Recorder { stats: Some("good"), ..Default::default() });
        let monitors = MultiMonitor::with_timeout(
            vec![
                ("fails".into(), Arc::new(Bad::Fails) as SharedMonitor),
                ("hangs".into(), Arc::new(Bad::Hangs) as _),
                ("good".into(), good.clone() as _),
            ],
            Duration::from_millis(20),
        );
        // Every call is queued and answered at once, whatever the monitors do with it.
        tokio::time::timeout(Duration::from_secs(5), drive(&monitors)).await.expect("calls do not wait for monitors");
        // The good monitor's queue is worked while the hung one's waits on its first call.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while good.calls().len() < ALL_CALLS.len() {
            assert!(tokio::time::Instant::now() < deadline, "good monitor starved: {:?}", good.calls());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(good.calls(), ALL_CALLS);
        // Stats skip the failing and the hung monitor (after its timeout) for the one with figures.
        let stats = monitors.stats(&task("a")).await.unwrap().unwrap();
        assert_eq!(stats.type_url, "good");
        // The hung monitor's calls time out one after another: flushing ends.
        tokio::time::timeout(Duration::from_secs(5), monitors.flush()).await.expect("hung calls are abandoned");
    }

    #[tokio::test]
    async fn stats_come_from_the_first_monitor_with_figures() {
        let none = Arc::new(Recorder::default());
        let first = Arc::new(Recorder { stats: Some("first"), ..Default::default() });
        let second = Arc::new(Recorder { stats: Some("second"), ..Default::default() });
        let monitors = MultiMonitor::new(vec![
            ("none".into(), none as SharedMonitor),
            ("first".into(), first as _),
            ("second".into(), second as _),
        ]);
        assert_eq!(monitors.stats(&task("a")).await.unwrap().unwrap().type_url, "first");
        let empty = MultiMonitor::new(Vec::new());
        assert!(empty.is_empty());
        assert_eq!(empty.stats(&task("a")).await.unwrap(), None);
        drive(&empty).await;
        empty.flush().await;
    }

    #[tokio::test]
    async fn the_noop_monitor_accepts_everything() {
        let noop = NoopMonitor;
        let t = task("a");
        noop.activate().await.unwrap();
        noop.monitor(&t).await.unwrap();
        noop.event(&t, &TaskEvent::Paused).await.unwrap();
        noop.stop(&t).await.unwrap();
        assert_eq!(noop.stats(&t).await.unwrap(), None);
    }

    #[test]
    fn errors_carry_their_message() {
        let e: MonitorError = crate::Error::NotFound("task \"a\"".into()).into();
        assert_eq!(e.to_string(), "task \"a\": not found");
        assert_eq!(MonitorError::new("boom").to_string(), "boom");
    }
}
