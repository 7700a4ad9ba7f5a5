//! The `monitor.cgroups` plugin: the task monitor that owns what berth learns from cgroups.
//!
//! - OOM kills: the reaper of each task watches its cgroup (`cgroups::OomWatcher`) and the runtime
//!   reports each notice as `RuntimeEvent::Oom`; the Tasks service hands those to the monitors and
//!   this one publishes each as `/tasks/oom` (containerd's `TaskOOM`). The reaper notices kills, not
//!   out-of-memory conditions (on cgroup v1 one kill may follow several), so that is one event per kill.
//! - Tasks.Metrics: for tasks of `runtime.linux` it reads the task's cgroup itself, from berthd,
//!   and answers with containerd's cgroups v1 or v2 `Metrics` (`runtime/metrics.rs`).
//!   The cgroup is found from the runtime's state of the container when the task is monitored.
//!   Tasks of other runtimes get no figures here, so Tasks.Metrics asks their runtime.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use berth_core::events::Exchange;
use berth_core::monitor::{Monitor, MonitorError, Result, SharedMonitor, TaskEvent, TaskInfo};
use berth_core::plugin::{InitError, Instance, NoConfig, PluginId, PluginKind, Registration, Requirement};
use berth_core::services::exchange_id;
use berth_proto::containerd::events::TaskOom;
use prost_types::Any;

use crate::container::state::StateDir;

/// The runtime whose tasks' cgroups this monitor reads.
const RUNTIME: &str = "linux";

/// The plugin's registration.
pub fn registration() -> Registration {
    Registration::new::<NoConfig, _, _>(PluginKind::Monitor, "cgroups", |ctx| {
        let events = ctx.get::<Exchange>(&exchange_id());
        // runtime.linux keeps its containers' state in <state>/runtime.linux/oci/<namespace>.
        let runtime_state = ctx.daemon_config().state.join(PluginId::new(PluginKind::Runtime, RUNTIME).to_string());
        async move {
            let events = (*events.ok_or_else(|| InitError::Failed("event exchange not loaded".into()))?).clone();
            let monitor = CgroupsMonitor::new(crate::runtime::oci_dir(&runtime_state), events);
            Ok(Instance::new(Arc::new(monitor) as SharedMonitor))
        }
    })
    .requires(Requirement::Plugin(exchange_id()))
    .describe("task monitor: OOM kills as /tasks/oom events, cgroup statistics for Tasks.Metrics")
}

/// The cgroups monitor.
pub struct CgroupsMonitor {
    /// runtime.linux's container state, one directory per namespace.
    oci_dir: PathBuf,
    events: Exchange,
    /// The cgroup path of each monitored task, by namespace and id.
    cgroups: Mutex<HashMap<(String, String), String>>,
}

impl CgroupsMonitor {
    /// A monitor reading the state of runtime.linux's containers under `oci_dir` and publishing on
    /// `events`.
    pub fn new(oci_dir: PathBuf, events: Exchange) -> Self {
        Self { oci_dir, events, cgroups: Mutex::new(HashMap::new()) }
    }

    fn key(task: &TaskInfo) -> (String, String) {
        (task.namespace.clone(), task.id.clone())
    }

    /// The cgroup of `task`, as its container's runtime state records it.
    async fn cgroup_of(&self, task: &TaskInfo) -> Result<String> {
        if let Some(path) = self.cgroups.lock().expect("cgroups lock").get(&Self::key(task)) {
            return Ok(path.clone());
        }
        let dir = StateDir::new(&self.oci_dir.join(&task.namespace), &task.id);
        let record = tokio::task::spawn_blocking(move || dir.load())
            .await
            .map_err(|e| MonitorError::new(format!("reading the runtime state: {e}")))?
            .map_err(|e| MonitorError::new(format!("task {:?}: reading its runtime state: {e}", task.id)))?;
        Ok(record.cgroup_path)
    }
}

#[async_trait::async_trait]
impl Monitor for CgroupsMonitor {
    async fn monitor(&self, task: &TaskInfo) -> Result<()> {
        if task.runtime != RUNTIME {
            return Ok(());
        }
        let path = self.cgroup_of(task).await?;
        self.cgroups.lock().expect("cgroups lock").insert(Self::key(task), path);
        Ok(())
    }

    async fn stop(&self, task: &TaskInfo) -> Result<()> {
        self.cgroups.lock().expect("cgroups lock").remove(&Self::key(task));
        Ok(())
    }

    async fn event(&self, task: &TaskInfo, event: &TaskEvent) -> Result<()> {
        if let TaskEvent::Oom = event {
            let oom = berth_core::events::pack("containerd.events.TaskOOM", &TaskOom { container_id: task.id.clone() });
            self.events.publish(&task.namespace, "/tasks/oom", oom)?;
        }
        Ok(())
    }

    async fn stats(&self, task: &TaskInfo) -> Result<Option<Any>> {
        if task.runtime != RUNTIME {
            return Ok(None);
        }
        let path = self.cgroup_of(task).await?;
        let id = task.id.clone();
        tokio::task::spawn_blocking(move || {
            let cgroup = crate::cgroups::Cgroup::open(&path)
                .map_err(|e| MonitorError::new(format!("task {id:?}: its cgroup {path}: {e}")))?;
            let stats =
                cgroup.stats().map_err(|e| MonitorError::new(format!("task {id:?}: reading cgroup stats: {e}")))?;
            let mode =
                crate::cgroups::mode().map_err(|e| MonitorError::new(format!("detecting the cgroup mode: {e}")))?;
            Ok(Some(crate::runtime::metrics::to_any(&stats, mode)))
        })
        .await
        .map_err(|e| MonitorError::new(format!("reading cgroup stats: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use berth_core::filters::FilterSet;
    use prost::Message;

    use super::*;

    fn task(runtime: &str) -> TaskInfo {
        TaskInfo { namespace: "ns1".into(), id: "web".into(), runtime: runtime.into(), ..Default::default() }
    }

    #[tokio::test]
    async fn oom_kills_become_one_task_oom_event_each() {
        let events = Exchange::new();
        let mut subscription = events.subscribe(FilterSet::default());
        let dir = tempfile::tempdir().unwrap();
        let monitor = CgroupsMonitor::new(dir.path().to_path_buf(), events.clone());
        // Any runtime's OOM kills are published.
        monitor.event(&task("wasm"), &TaskEvent::Oom).await.unwrap();
        monitor.event(&task("linux"), &TaskEvent::Started { pid: 1 }).await.unwrap();
        monitor.event(&task("linux"), &TaskEvent::Oom).await.unwrap();
        for _ in 0..2 {
            let envelope = subscription.next().await.unwrap();
            assert_eq!((envelope.namespace.as_str(), envelope.topic.as_str()), ("ns1", "/tasks/oom"));
            let event = envelope.event.unwrap();
            assert_eq!(event.type_url, "containerd.events.TaskOOM");
            assert_eq!(TaskOom::decode(event.value.as_slice()).unwrap().container_id, "web");
        }
        let more = tokio::time::timeout(std::time::Duration::from_millis(50), subscription.next()).await;
        assert!(more.is_err(), "only OOM kills are published: {more:?}");
    }

    #[tokio::test]
    async fn other_runtimes_tasks_get_no_figures_and_missing_state_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let monitor = CgroupsMonitor::new(dir.path().to_path_buf(), Exchange::new());
        assert_eq!(monitor.stats(&task("wasm")).await.unwrap(), None);
        monitor.monitor(&task("wasm")).await.unwrap();
        let e = monitor.monitor(&task("linux")).await.unwrap_err();
        assert!(e.to_string().starts_with("task \"web\": reading its runtime state"), "{e}");
        let e = monitor.stats(&task("linux")).await.unwrap_err();
        assert!(e.to_string().starts_with("task \"web\""), "{e}");
        monitor.stop(&task("linux")).await.unwrap();
    }
}
