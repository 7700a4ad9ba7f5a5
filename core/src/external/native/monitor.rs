//! A native monitor plugin as a [`Monitor`]: each call is a `berth.plugin.monitor.v1` message across the ABI
//! (ABI 1.1), run on a blocking thread like every native call.
//!
//! The Tasks service reaches it through its [`crate::monitor::MultiMonitor`], which queues the calls and
//! abandons one that takes longer than its timeout: a native monitor that blocks or panics holds up only its
//! own queue (a blocked call keeps its blocking thread until the plugin returns). A failed call is logged by
//! the multi-monitor and, when the failure is the plugin's own (a panic, an internal error), kept as the
//! plugin's last error.

use std::sync::Arc;

use berth_plugin_sdk::abi::{code, monitor_methods as m};
use berth_plugin_sdk::proto::monitor as pb;
use prost_types::Any;

use super::{CallError, NativePlugin};
use crate::monitor::{Monitor, MonitorError, Result, TaskEvent, TaskInfo};
use crate::runtime::Exit;

/// Method names by index, for messages.
pub(crate) const METHOD_NAMES: &[&str] = &["activate", "monitor", "stop", "event", "stats"];

/// The adapter.
pub(crate) struct NativeMonitor {
    plugin: Arc<NativePlugin>,
}

impl NativeMonitor {
    pub(crate) fn new(plugin: Arc<NativePlugin>) -> Self {
        Self { plugin }
    }

    fn error(&self, e: CallError) -> MonitorError {
        MonitorError::new(format!("plugin {}: {}", self.plugin.id, e.message))
    }

    /// Calls `index`; a method the plugin does not have (an older ABI minor's table) does nothing, as the
    /// trait's defaults do.
    async fn call<Req, Resp>(&self, index: usize, request: Req) -> Result<Option<Resp>>
    where
        Req: prost::Message + Send + 'static,
        Resp: prost::Message + Default + Send + 'static,
    {
        match self.plugin.call(index, request).await {
            Ok(response) => Ok(Some(response)),
            Err(e) if e.code == code::UNIMPLEMENTED && !self.plugin.has(index) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }
}

fn task_to(task: &TaskInfo) -> pb::Task {
    pb::Task {
        namespace: task.namespace.clone(),
        id: task.id.clone(),
        runtime: task.runtime.clone(),
        pid: task.pid,
        labels: task.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

fn exit_to(exit: &Exit) -> pb::Exit {
    pb::Exit { pid: exit.pid, status: exit.status, exited_at: Some(exit.timestamp.into()) }
}

/// An event as its message.
pub(crate) fn event_to(event: &TaskEvent) -> pb::TaskEvent {
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

#[async_trait::async_trait]
impl Monitor for NativeMonitor {
    async fn activate(&self) -> Result<()> {
        self.call::<_, ()>(m::ACTIVATE, ()).await.map(drop)
    }

    async fn monitor(&self, task: &TaskInfo) -> Result<()> {
        self.call::<_, ()>(m::MONITOR, pb::TaskRequest { task: Some(task_to(task)) }).await.map(drop)
    }

    async fn stop(&self, task: &TaskInfo) -> Result<()> {
        self.call::<_, ()>(m::STOP, pb::TaskRequest { task: Some(task_to(task)) }).await.map(drop)
    }

    async fn event(&self, task: &TaskInfo, event: &TaskEvent) -> Result<()> {
        let request = pb::EventRequest { task: Some(task_to(task)), event: Some(event_to(event)) };
        self.call::<_, ()>(m::EVENT, request).await.map(drop)
    }

    async fn stats(&self, task: &TaskInfo) -> Result<Option<Any>> {
        let response: Option<pb::StatsResponse> =
            self.call(m::STATS, pb::TaskRequest { task: Some(task_to(task)) }).await?;
        Ok(response.and_then(|r| r.stats))
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use berth_plugin_sdk::proto::{Message, PublishRequest};
    use berth_proto::berth::plugin::monitor::v1 as generated;

    use super::*;

    /// The SDK's hand-written monitor messages are wire-identical to proto/berth/plugin/monitor's.
    #[test]
    fn sdk_monitor_messages_match_the_proto_files() {
        let task = TaskInfo {
            namespace: "ns".into(),
            id: "t".into(),
            runtime: "linux".into(),
            pid: 7,
            labels: [("a".to_string(), "b".to_string())].into(),
        };
        let exit = Exit { pid: 7, status: 137, timestamp: SystemTime::UNIX_EPOCH };
        let events = [
            TaskEvent::Created { pid: 7 },
            TaskEvent::Started { pid: 7 },
            TaskEvent::Exited { exec_id: Some("e".into()), exit },
            TaskEvent::Oom,
            TaskEvent::Paused,
            TaskEvent::Resumed,
            TaskEvent::Deleted { exit },
        ];
        for (n, event) in events.iter().enumerate() {
            let request = pb::EventRequest { task: Some(task_to(&task)), event: Some(event_to(event)) };
            let decoded = generated::EventRequest::decode(request.encode_to_vec().as_slice()).unwrap();
            let t = decoded.task.unwrap();
            assert_eq!((t.namespace.as_str(), t.id.as_str(), t.runtime.as_str(), t.pid), ("ns", "t", "linux", 7));
            assert_eq!(t.labels["a"], "b");
            use generated::task_event::Kind as G;
            let kind = decoded.event.unwrap().kind.unwrap();
            let index = match &kind {
                G::Created(c) => {
                    assert_eq!(c.pid, 7);
                    0
                }
                G::Started(s) => {
                    assert_eq!(s.pid, 7);
                    1
                }
                G::Exited(e) => {
                    assert_eq!((e.exec_id.as_str(), e.exit.unwrap().status), ("e", 137));
                    2
                }
                G::Oom(_) => 3,
                G::Paused(_) => 4,
                G::Resumed(_) => 5,
                G::Deleted(d) => {
                    assert_eq!(d.exit.unwrap().pid, 7);
                    6
                }
            };
            assert_eq!(index, n, "{event:?} became {kind:?}");
            // And back, through the SDK's own decoding.
            let ours = pb::EventRequest::decode(request.encode_to_vec().as_slice()).unwrap();
            let ours = format!("{:?}", berth_plugin_sdk::monitor::event_from(ours.event).unwrap());
            let variant = |debug: &str| debug.split([' ', '{']).next().unwrap_or_default().to_string();
            assert_eq!(variant(&ours), variant(&format!("{event:?}")), "{ours}");
        }
        let stats = generated::StatsResponse { stats: Some(Any { type_url: "x".into(), value: vec![1] }) };
        let ours = pb::StatsResponse::decode(stats.encode_to_vec().as_slice()).unwrap();
        assert_eq!(ours.stats.unwrap().type_url, "x");

        use berth_proto::berth::plugin::v1 as plugin;
        let publish = PublishRequest {
            namespace: "ns".into(),
            topic: "/berth/alert".into(),
            event: Some(Any { type_url: "google.protobuf.Struct".into(), value: vec![] }),
        };
        let decoded = plugin::PublishRequest::decode(publish.encode_to_vec().as_slice()).unwrap();
        assert_eq!((decoded.namespace.as_str(), decoded.topic.as_str()), ("ns", "/berth/alert"));
        assert_eq!(decoded.event.unwrap().type_url, "google.protobuf.Struct");
    }
}
