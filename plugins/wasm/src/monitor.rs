//! A wasm monitor plugin as a core [`Monitor`]: each call one call of `berth:monitor/monitor`, and the
//! guest's `publish` import into berthd's event exchange.
//!
//! The Tasks service reaches it through its [`berth_core::monitor::MultiMonitor`], which queues the calls
//! and abandons one after its timeout; the component's own `call_timeout` (5 s by default) stops a call that
//! loops well before, and a trap or a hit limit fails that call only: the next one gets a fresh instance. A
//! call that fails is logged by the multi-monitor; a trap, a hit limit and an internal error are also the
//! plugin's last error.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_core::events::Exchange;
use berth_core::monitor::{Monitor, MonitorError, Result, TaskEvent, TaskInfo};
use berth_core::runtime::Exit;
use prost_types::Any;
use wasmtime::Store;

use crate::ctx::Ctx;
use crate::plugin::WasmPlugin;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../proto/wit/monitor",
        world: "berth:monitor/monitor-plugin",
    });
}

use bindings::berth::monitor::host;
use bindings::berth::monitor::types as wit;
use bindings::{MonitorPlugin, MonitorPluginPre};

/// What a monitor's host imports reach: the event exchange its `publish` goes to (none in a registry
/// without one, where `publish` answers unavailable).
pub struct MonitorHost {
    /// berthd's event exchange.
    pub exchange: Option<Exchange>,
}

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

    fn publish(&mut self, namespace: String, topic: String, event: wit::Any) -> std::result::Result<(), wit::Error> {
        let exchange =
            self.host.as_ref().and_then(|h| h.downcast_ref::<MonitorHost>()).and_then(|h| h.exchange.as_ref());
        let Some(exchange) = exchange else {
            return Err(wit::Error::Unavailable("this berthd has no event exchange".into()));
        };
        let event = Any { type_url: event.type_url, value: event.value };
        exchange.publish(&namespace, &topic, event).map_err(|e| {
            tracing::debug!(plugin = %self.plugin, error = %e, "plugin's event refused");
            wit::Error::InvalidArgument(e.to_string())
        })
    }
}

impl wit::Host for Ctx {}

/// The monitor kind's world.
pub struct MonitorWorld;

crate::plugin::wasm_kind!(MonitorWorld, MonitorPlugin, MonitorPluginPre, berth_monitor_monitor, package: "berth:monitor", export: "berth:monitor/monitor@1.0.0", world: "berth:monitor/monitor-plugin@1.0.0");

/// The adapter.
pub struct WasmMonitor {
    plugin: Arc<WasmPlugin<MonitorWorld>>,
}

impl WasmMonitor {
    /// Wraps a loaded plugin.
    pub fn new(plugin: Arc<WasmPlugin<MonitorWorld>>) -> Self {
        Self { plugin }
    }

    /// Calls `method`: the guest's errors and the host's (a trap, a limit) become monitor errors naming the
    /// plugin; an internal one is also kept as its last error.
    async fn call<R, F>(&self, method: &'static str, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&MonitorPlugin, &mut Store<Ctx>) -> wasmtime::Result<std::result::Result<R, wit::Error>>
            + Send
            + 'static,
    {
        let plugin = &self.plugin.id;
        match self.plugin.call(method, f).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(wit::Error::Internal(m))) => {
                self.plugin.record_internal(method, &m);
                Err(MonitorError::new(format!("plugin {plugin}: {method}: {m}")))
            }
            Ok(Err(e)) => Err(MonitorError::new(format!("plugin {plugin}: {method}: {}", message(e)))),
            // The host's errors name the plugin and the call already.
            Err(e) => Err(MonitorError::new(e.to_string())),
        }
    }
}

/// A guest error's text, with its category where the text alone would not say it.
fn message(e: wit::Error) -> String {
    match e {
        wit::Error::NotFound(m) => format!("{m}: not found"),
        wit::Error::AlreadyExists(m) => format!("{m}: already exists"),
        wit::Error::InvalidArgument(m)
        | wit::Error::FailedPrecondition(m)
        | wit::Error::Unavailable(m)
        | wit::Error::Unimplemented(m)
        | wit::Error::Internal(m) => m,
    }
}

fn time_to(t: SystemTime) -> wit::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO);
    wit::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() }
}

fn task_to(task: &TaskInfo) -> wit::Task {
    wit::Task {
        namespace: task.namespace.clone(),
        id: task.id.clone(),
        runtime: task.runtime.clone(),
        pid: task.pid,
        labels: task.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

fn exit_to(exit: &Exit) -> wit::Exit {
    wit::Exit { pid: exit.pid, status: exit.status, exited_at: time_to(exit.timestamp) }
}

fn event_to(event: &TaskEvent) -> wit::TaskEvent {
    match event {
        TaskEvent::Created { pid } => wit::TaskEvent::Created(*pid),
        TaskEvent::Started { pid } => wit::TaskEvent::Started(*pid),
        TaskEvent::Exited { exec_id, exit } => {
            wit::TaskEvent::Exited(wit::Exited { exec_id: exec_id.clone().unwrap_or_default(), exit: exit_to(exit) })
        }
        TaskEvent::Oom => wit::TaskEvent::Oom,
        TaskEvent::Paused => wit::TaskEvent::Paused,
        TaskEvent::Resumed => wit::TaskEvent::Resumed,
        TaskEvent::Deleted { exit } => wit::TaskEvent::Deleted(exit_to(exit)),
    }
}

#[async_trait::async_trait]
impl Monitor for WasmMonitor {
    async fn activate(&self) -> Result<()> {
        self.call("activate", |b, s| b.berth_monitor_monitor().call_activate(s)).await
    }

    async fn monitor(&self, task: &TaskInfo) -> Result<()> {
        let task = task_to(task);
        self.call("monitor", move |b, s| b.berth_monitor_monitor().call_monitor(s, &task)).await
    }

    async fn stop(&self, task: &TaskInfo) -> Result<()> {
        let task = task_to(task);
        self.call("stop", move |b, s| b.berth_monitor_monitor().call_stop(s, &task)).await
    }

    async fn event(&self, task: &TaskInfo, event: &TaskEvent) -> Result<()> {
        let (task, event) = (task_to(task), event_to(event));
        self.call("event", move |b, s| b.berth_monitor_monitor().call_event(s, &task, &event)).await
    }

    async fn stats(&self, task: &TaskInfo) -> Result<Option<Any>> {
        let task = task_to(task);
        let stats = self.call("stats", move |b, s| b.berth_monitor_monitor().call_stats(s, &task)).await?;
        Ok(stats.map(|a| Any { type_url: a.type_url, value: a.value }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn tasks_and_events_cross_whole() {
        let task = TaskInfo {
            namespace: "ns".into(),
            id: "t".into(),
            runtime: "linux".into(),
            pid: 7,
            labels: [("a".to_string(), "b".to_string())].into(),
        };
        let t = task_to(&task);
        assert_eq!((t.namespace.as_str(), t.id.as_str(), t.runtime.as_str(), t.pid), ("ns", "t", "linux", 7));
        assert_eq!(t.labels.into_iter().collect::<BTreeMap<_, _>>(), task.labels);
        let at = SystemTime::UNIX_EPOCH + Duration::new(9, 5);
        let exit = Exit { pid: 7, status: 137, timestamp: at };
        match event_to(&TaskEvent::Exited { exec_id: Some("e".into()), exit }) {
            wit::TaskEvent::Exited(e) => {
                assert_eq!((e.exec_id.as_str(), e.exit.pid, e.exit.status), ("e", 7, 137));
                assert_eq!((e.exit.exited_at.seconds, e.exit.exited_at.nanos), (9, 5));
            }
            other => panic!("{other:?}"),
        }
        match event_to(&TaskEvent::Exited { exec_id: None, exit }) {
            wit::TaskEvent::Exited(e) => assert_eq!(e.exec_id, ""),
            other => panic!("{other:?}"),
        }
        assert!(matches!(event_to(&TaskEvent::Created { pid: 3 }), wit::TaskEvent::Created(3)));
        assert!(matches!(event_to(&TaskEvent::Started { pid: 3 }), wit::TaskEvent::Started(3)));
        assert!(matches!(event_to(&TaskEvent::Oom), wit::TaskEvent::Oom));
        assert!(matches!(event_to(&TaskEvent::Paused), wit::TaskEvent::Paused));
        assert!(matches!(event_to(&TaskEvent::Resumed), wit::TaskEvent::Resumed));
        assert!(matches!(event_to(&TaskEvent::Deleted { exit }), wit::TaskEvent::Deleted(e) if e.status == 137));
        assert_eq!(message(wit::Error::NotFound("task t".into())), "task t: not found");
        assert_eq!(message(wit::Error::Internal("boom".into())), "boom");
    }
}
