//! The conformance suite of the monitor kind: what every `monitor.*` backend must honour, whatever it does
//! with what it is told. A backend's tests call [`run_all`] with the backend and the name of a runtime whose
//! tasks it has no business reading (the suite's tasks do not exist on the host).
//!
//! The Tasks service calls monitors in situations a monitor cannot rule out: a task it never saw (berthd
//! restarted, the monitor was added later), a stop after the task is gone, events of exec'd processes, several
//! tasks at once. None of these may fail, and figures, when a monitor has them, are a typed `Any`.
//!
//! Each check panics with a message naming the check and what differed.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::monitor::{Monitor, TaskEvent, TaskInfo};
use crate::runtime::Exit;

/// The namespace of the suite's tasks.
pub const NAMESPACE: &str = "conformance";

fn task(id: &str, runtime: &str) -> TaskInfo {
    TaskInfo {
        namespace: NAMESPACE.into(),
        id: id.into(),
        runtime: runtime.into(),
        pid: 0,
        labels: BTreeMap::from([("berth.test/suite".to_string(), "monitor".to_string())]),
    }
}

fn exit(pid: u32, status: u32) -> Exit {
    Exit { pid, status, timestamp: SystemTime::now() }
}

/// Runs every check on `monitor`; its tasks name `runtime` as their runtime.
pub async fn run_all(monitor: &dyn Monitor, runtime: &str) {
    lifecycle(monitor, runtime).await;
    unknown_tasks(monitor, runtime).await;
    stop_is_idempotent(monitor, runtime).await;
    several_tasks_at_once(monitor, runtime).await;
    activate_once(monitor).await;
}

/// A task's whole life, in the order the Tasks service reports it, with an exec'd process that fails.
pub async fn lifecycle(monitor: &dyn Monitor, runtime: &str) {
    let mut t = task("suite-life", runtime);
    monitor.monitor(&t).await.unwrap_or_else(|e| panic!("lifecycle: monitor: {e}"));
    t.pid = 4242;
    let events = [
        TaskEvent::Created { pid: 4242 },
        TaskEvent::Started { pid: 4242 },
        TaskEvent::Paused,
        TaskEvent::Resumed,
        TaskEvent::Exited { exec_id: Some("exec-1".into()), exit: exit(4243, 3) },
        TaskEvent::Exited { exec_id: None, exit: exit(4242, 0) },
        TaskEvent::Deleted { exit: exit(4242, 0) },
    ];
    for event in &events {
        monitor.event(&t, event).await.unwrap_or_else(|e| panic!("lifecycle: event {}: {e}", event.name()));
    }
    stats_shape(monitor, &t, "lifecycle").await;
    monitor.stop(&t).await.unwrap_or_else(|e| panic!("lifecycle: stop: {e}"));
}

/// Calls about a task the monitor was never told about succeed.
pub async fn unknown_tasks(monitor: &dyn Monitor, runtime: &str) {
    let t = task("suite-never-seen", runtime);
    for event in [
        TaskEvent::Started { pid: 7 },
        TaskEvent::Oom,
        TaskEvent::Exited { exec_id: None, exit: exit(7, 137) },
        TaskEvent::Deleted { exit: exit(7, 137) },
    ] {
        monitor.event(&t, &event).await.unwrap_or_else(|e| panic!("unknown task: event {}: {e}", event.name()));
    }
    stats_shape(monitor, &t, "unknown task").await;
    monitor.stop(&t).await.unwrap_or_else(|e| panic!("unknown task: stop: {e}"));
    // A task without labels and without a pid (its container record is gone).
    let bare = TaskInfo {
        namespace: NAMESPACE.into(),
        id: "suite-bare".into(),
        runtime: runtime.into(),
        ..Default::default()
    };
    monitor.event(&bare, &TaskEvent::Deleted { exit: exit(0, 0) }).await.unwrap_or_else(|e| panic!("bare task: {e}"));
    monitor.stop(&bare).await.unwrap_or_else(|e| panic!("bare task: stop: {e}"));
}

/// Stopping twice, and events after the stop, succeed; the task can then be monitored again (a new task of
/// the same id).
pub async fn stop_is_idempotent(monitor: &dyn Monitor, runtime: &str) {
    let t = task("suite-stop", runtime);
    monitor.monitor(&t).await.unwrap_or_else(|e| panic!("stop: monitor: {e}"));
    monitor.stop(&t).await.unwrap_or_else(|e| panic!("stop: first stop: {e}"));
    monitor.stop(&t).await.unwrap_or_else(|e| panic!("stop: second stop: {e}"));
    monitor.event(&t, &TaskEvent::Resumed).await.unwrap_or_else(|e| panic!("stop: event after stop: {e}"));
    monitor.monitor(&t).await.unwrap_or_else(|e| panic!("stop: monitor again: {e}"));
    monitor.event(&t, &TaskEvent::Created { pid: 9 }).await.unwrap_or_else(|e| panic!("stop: created again: {e}"));
    monitor.stop(&t).await.unwrap_or_else(|e| panic!("stop: last stop: {e}"));
}

/// Calls about several tasks at once all succeed (the Tasks service feeds one monitor in order, but stats
/// and other callers' calls run concurrently).
pub async fn several_tasks_at_once(monitor: &dyn Monitor, runtime: &str) {
    let tasks: Vec<TaskInfo> = (0..8).map(|i| task(&format!("suite-many-{i}"), runtime)).collect();
    let calls = tasks.iter().map(|t| async move {
        monitor.monitor(t).await?;
        monitor.event(t, &TaskEvent::Started { pid: 1 }).await?;
        monitor.stats(t).await?;
        monitor.event(t, &TaskEvent::Exited { exec_id: None, exit: exit(1, 1) }).await?;
        monitor.stop(t).await
    });
    let results = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(calls))
        .await
        .expect("several tasks: calls did not finish within 30 s");
    for (t, result) in tasks.iter().zip(results) {
        result.unwrap_or_else(|e| panic!("several tasks: {}: {e}", t.id));
    }
}

/// Activation succeeds.
pub async fn activate_once(monitor: &dyn Monitor) {
    monitor.activate().await.unwrap_or_else(|e| panic!("activate: {e}"));
}

/// Stats succeed, and figures, if any, are a typed message.
async fn stats_shape(monitor: &dyn Monitor, t: &TaskInfo, check: &str) {
    match monitor.stats(t).await {
        Ok(None) => {}
        Ok(Some(any)) => assert!(!any.type_url.is_empty(), "{check}: stats without a type URL: {any:?}"),
        Err(e) => panic!("{check}: stats: {e}"),
    }
}
