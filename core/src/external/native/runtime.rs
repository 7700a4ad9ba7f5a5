//! A native runtime plugin as a [`Runtime`]: calls are `berth.plugin.runtime.v1` messages across the ABI.
//!
//! Waiting: the ABI has no blocking wait (it would hold a thread per waiting client). The plugin reports
//! every exit through the host's event function, after its state already says Stopped; the adapter keeps the
//! last exit of each process and ends waits on it, and a wait that starts after the exit finds it in the
//! process's state.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use berth_plugin_sdk::abi::{code, runtime_methods as m};
use berth_plugin_sdk::proto::runtime::{self as pb, event};
use prost_types::Any;
use tokio::sync::{mpsc, watch};

use super::snapshot::{mount_to, time_from};
use super::{CallError, NativePlugin};
use crate::runtime::{
    ConsoleSize, CreateOptions, ExecOptions, Exit, Io, Process, ProcessInfo, Result, Runtime, RuntimeError,
    RuntimeEvent, RuntimeEvents, State, Status, Task,
};

/// Method names by index, for messages.
pub(crate) const METHOD_NAMES: &[&str] = &[
    "create",
    "start",
    "state",
    "kill",
    "delete",
    "exec",
    "delete_process",
    "resize_pty",
    "close_io",
    "pause",
    "resume",
    "pids",
    "checkpoint",
    "update",
    "stats",
    "list",
];

type Key = (String, String, String);

/// What the adapter and the plugin's event callback share.
pub(crate) struct Shared {
    events: mpsc::UnboundedSender<RuntimeEvent>,
    receiver: Mutex<Option<RuntimeEvents>>,
    exits: Mutex<HashMap<Key, watch::Sender<Option<Exit>>>>,
}

impl Shared {
    pub(crate) fn new() -> Arc<Self> {
        let (events, receiver) = mpsc::unbounded_channel();
        Arc::new(Self { events, receiver: Mutex::new(Some(receiver)), exits: Mutex::new(HashMap::new()) })
    }

    /// An event from the plugin (any thread).
    pub(crate) fn on_event(&self, event: pb::Event) {
        match event.kind {
            Some(event::Kind::Exit(e)) => {
                let exit = exit_from(e.exit);
                let key = (e.namespace.clone(), e.id.clone(), e.exec_id.clone());
                self.exits
                    .lock()
                    .expect("exits lock")
                    .entry(key)
                    .or_insert_with(|| watch::channel(None).0)
                    .send_replace(Some(exit));
                let _ = self.events.send(RuntimeEvent::Exit {
                    namespace: e.namespace,
                    container_id: e.id,
                    exec_id: (!e.exec_id.is_empty()).then_some(e.exec_id),
                    exit,
                });
            }
            Some(event::Kind::Oom(e)) => {
                let _ = self.events.send(RuntimeEvent::Oom { namespace: e.namespace, container_id: e.id });
            }
            None => {}
        }
    }

    fn watch(&self, key: &Key) -> watch::Receiver<Option<Exit>> {
        self.exits.lock().expect("exits lock").entry(key.clone()).or_insert_with(|| watch::channel(None).0).subscribe()
    }

    /// Forgets the exits of a process (exec id given) or of a whole task (None): a new process of the same id
    /// starts afresh, and waits still running on the old one end.
    fn forget(&self, ns: &str, id: &str, exec_id: Option<&str>) {
        self.exits
            .lock()
            .expect("exits lock")
            .retain(|(n, i, e), _| !(n == ns && i == id && exec_id.is_none_or(|x| x == e)));
    }
}

fn exit_from(exit: Option<pb::Exit>) -> Exit {
    let exit = exit.unwrap_or_default();
    Exit { pid: exit.pid, status: exit.status, timestamp: time_from(exit.exited_at) }
}

fn io_to(io: &Io) -> pb::Io {
    pb::Io { stdin: io.stdin.clone(), stdout: io.stdout.clone(), stderr: io.stderr.clone(), terminal: io.terminal }
}

fn io_from(io: Option<pb::Io>) -> Io {
    let io = io.unwrap_or_default();
    Io { stdin: io.stdin, stdout: io.stdout, stderr: io.stderr, terminal: io.terminal }
}

/// The adapter.
pub(crate) struct NativeRuntime {
    plugin: Arc<NativePlugin>,
    shared: Arc<Shared>,
}

impl NativeRuntime {
    pub(crate) fn new(plugin: Arc<NativePlugin>, shared: Arc<Shared>) -> Self {
        Self { plugin, shared }
    }

    fn handle(&self, ns: &str, id: &str, exec_id: &str) -> Arc<Handle> {
        Arc::new(Handle {
            plugin: Arc::clone(&self.plugin),
            shared: Arc::clone(&self.shared),
            namespace: ns.into(),
            id: id.into(),
            exec_id: exec_id.into(),
        })
    }
}

fn error(plugin: &NativePlugin, e: CallError) -> RuntimeError {
    match e.code {
        code::NOT_FOUND => RuntimeError::DoesNotExist(e.message),
        code::ALREADY_EXISTS => RuntimeError::AlreadyExists(e.message),
        code::PROCESS_FINISHED => RuntimeError::ProcessAlreadyExited(e.message),
        _ => RuntimeError::Other(plugin.other_error(e)),
    }
}

/// A task's init (empty exec id) or an exec'd process.
struct Handle {
    plugin: Arc<NativePlugin>,
    shared: Arc<Shared>,
    namespace: String,
    id: String,
    exec_id: String,
}

impl Handle {
    fn process(&self) -> pb::ProcessRequest {
        pb::ProcessRequest { namespace: self.namespace.clone(), id: self.id.clone(), exec_id: self.exec_id.clone() }
    }

    fn task(&self) -> pb::TaskRequest {
        pb::TaskRequest { namespace: self.namespace.clone(), id: self.id.clone() }
    }

    async fn call<Req, Resp>(&self, index: usize, request: Req) -> Result<Resp>
    where
        Req: prost::Message + Send + 'static,
        Resp: prost::Message + Default + Send + 'static,
    {
        self.plugin.call(index, request).await.map_err(|e| error(&self.plugin, e))
    }

    fn exec_handle(&self, exec_id: &str) -> Arc<Handle> {
        Arc::new(Handle {
            plugin: Arc::clone(&self.plugin),
            shared: Arc::clone(&self.shared),
            namespace: self.namespace.clone(),
            id: self.id.clone(),
            exec_id: exec_id.into(),
        })
    }
}

#[async_trait::async_trait]
impl Process for Handle {
    fn id(&self) -> &str {
        if self.exec_id.is_empty() { &self.id } else { &self.exec_id }
    }

    async fn state(&self) -> Result<State> {
        let state: pb::StateResponse = self.call(m::STATE, self.process()).await?;
        let status = match pb::Status::try_from(state.status).unwrap_or(pb::Status::Unknown) {
            pb::Status::Created => Status::Created,
            pb::Status::Running => Status::Running,
            pb::Status::Stopped => Status::Stopped,
            pb::Status::Paused => Status::Paused,
            pb::Status::Pausing => Status::Pausing,
            pb::Status::Unknown => Status::Unknown,
        };
        Ok(State {
            status,
            pid: state.pid,
            exit_status: state.exit_status,
            exited_at: state.exited_at.map(|t| time_from(Some(t))),
            io: io_from(state.io),
        })
    }

    async fn start(&self) -> Result<u32> {
        let response: pb::StartResponse = self.call(m::START, self.process()).await?;
        Ok(response.pid)
    }

    async fn kill(&self, signal: u32, all: bool) -> Result<()> {
        let request = pb::KillRequest {
            namespace: self.namespace.clone(),
            id: self.id.clone(),
            exec_id: self.exec_id.clone(),
            signal,
            all,
        };
        self.call(m::KILL, request).await
    }

    async fn resize_pty(&self, size: ConsoleSize) -> Result<()> {
        let request = pb::ResizePtyRequest {
            namespace: self.namespace.clone(),
            id: self.id.clone(),
            exec_id: self.exec_id.clone(),
            width: size.width,
            height: size.height,
        };
        self.call(m::RESIZE_PTY, request).await
    }

    async fn close_io(&self) -> Result<()> {
        self.call(m::CLOSE_IO, self.process()).await
    }

    async fn wait(&self) -> Result<Exit> {
        let key = (self.namespace.clone(), self.id.clone(), self.exec_id.clone());
        // Subscribe before asking: an exit between the two is then seen by the subscription.
        let mut exits = self.shared.watch(&key);
        if let Some(exit) = *exits.borrow_and_update() {
            return Ok(exit);
        }
        let state = self.state().await?;
        if state.status == Status::Stopped {
            return Ok(Exit {
                pid: state.pid,
                status: state.exit_status,
                timestamp: state.exited_at.unwrap_or(std::time::SystemTime::UNIX_EPOCH),
            });
        }
        loop {
            if exits.changed().await.is_err() {
                return Err(RuntimeError::DoesNotExist(format!(
                    "process {:?} was deleted while waited for",
                    self.id()
                )));
            }
            if let Some(exit) = *exits.borrow_and_update() {
                return Ok(exit);
            }
        }
    }
}

#[async_trait::async_trait]
impl Task for Handle {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    async fn pause(&self) -> Result<()> {
        self.call(m::PAUSE, self.task()).await
    }

    async fn resume(&self) -> Result<()> {
        self.call(m::RESUME, self.task()).await
    }

    async fn exec(&self, id: &str, options: ExecOptions) -> Result<Arc<dyn Process>> {
        self.shared.forget(&self.namespace, &self.id, Some(id));
        let request = pb::ExecRequest {
            namespace: self.namespace.clone(),
            id: self.id.clone(),
            exec_id: id.into(),
            spec: options.spec,
            io: Some(io_to(&options.io)),
        };
        self.call::<_, ()>(m::EXEC, request).await?;
        Ok(self.exec_handle(id))
    }

    async fn pids(&self) -> Result<Vec<ProcessInfo>> {
        let response: pb::PidsResponse = self.call(m::PIDS, self.task()).await?;
        Ok(response
            .processes
            .into_iter()
            .map(|p| ProcessInfo { pid: p.pid, exec_id: (!p.exec_id.is_empty()).then_some(p.exec_id) })
            .collect())
    }

    async fn checkpoint(&self, path: &str, options: Option<Any>) -> Result<()> {
        let request = pb::CheckpointRequest {
            namespace: self.namespace.clone(),
            id: self.id.clone(),
            path: path.into(),
            options,
        };
        self.call(m::CHECKPOINT, request).await
    }

    async fn update(&self, resources: Any, annotations: BTreeMap<String, String>) -> Result<()> {
        let request = pb::UpdateRequest {
            namespace: self.namespace.clone(),
            id: self.id.clone(),
            resources: Some(resources),
            annotations: annotations.into_iter().collect(),
        };
        self.call(m::UPDATE, request).await
    }

    async fn process(&self, id: &str) -> Result<Arc<dyn Process>> {
        let handle = self.exec_handle(id);
        let _: pb::StateResponse = handle.call(m::STATE, handle.process()).await?;
        Ok(handle)
    }

    async fn delete_process(&self, id: &str) -> Result<Exit> {
        let request = pb::ProcessRequest { namespace: self.namespace.clone(), id: self.id.clone(), exec_id: id.into() };
        let exit: pb::Exit = self.call(m::DELETE_PROCESS, request).await?;
        self.shared.forget(&self.namespace, &self.id, Some(id));
        Ok(exit_from(Some(exit)))
    }

    async fn stats(&self) -> Result<Any> {
        let response: pb::StatsResponse = self.call(m::STATS, self.task()).await?;
        response.stats.ok_or_else(|| {
            RuntimeError::Other(crate::Error::Internal(format!(
                "plugin {} answered stats without stats",
                self.plugin.id
            )))
        })
    }
}

#[async_trait::async_trait]
impl Runtime for NativeRuntime {
    fn id(&self) -> &str {
        &self.plugin.id.name
    }

    fn take_events(&self) -> Option<RuntimeEvents> {
        self.shared.receiver.lock().expect("events lock").take()
    }

    async fn create(&self, ns: &str, id: &str, options: CreateOptions) -> Result<Arc<dyn Task>> {
        let handle = self.handle(ns, id, "");
        self.shared.forget(ns, id, None);
        let request = pb::CreateRequest {
            namespace: ns.into(),
            id: id.into(),
            spec: options.spec,
            rootfs: options.rootfs.iter().map(mount_to).collect(),
            io: Some(io_to(&options.io)),
            checkpoint: options.checkpoint.unwrap_or_default(),
            runtime_options: options.runtime_options,
            task_options: options.task_options,
        };
        let _: pb::CreateResponse = handle.call(m::CREATE, request).await?;
        Ok(handle)
    }

    async fn get(&self, ns: &str, id: &str) -> Result<Arc<dyn Task>> {
        let handle = self.handle(ns, id, "");
        let _: pb::StateResponse = handle.call(m::STATE, handle.process()).await?;
        Ok(handle)
    }

    async fn tasks(&self, ns: Option<&str>) -> Result<Vec<Arc<dyn Task>>> {
        let request = pb::ListRequest { namespace: ns.unwrap_or_default().into(), all_namespaces: ns.is_none() };
        let response: pb::ListResponse =
            self.plugin.call(m::LIST, request).await.map_err(|e| error(&self.plugin, e))?;
        Ok(response.tasks.into_iter().map(|t| self.handle(&t.namespace, &t.id, "") as Arc<dyn Task>).collect())
    }

    async fn delete(&self, ns: &str, id: &str) -> Result<Exit> {
        let request = pb::TaskRequest { namespace: ns.into(), id: id.into() };
        let exit: pb::Exit = self.plugin.call(m::DELETE, request).await.map_err(|e| error(&self.plugin, e))?;
        self.shared.forget(ns, id, None);
        Ok(exit_from(Some(exit)))
    }
}

#[cfg(test)]
mod tests {
    use berth_plugin_sdk::proto::runtime as sdk;
    use berth_plugin_sdk::proto::{InitRequest, Message, PluginError};
    use berth_proto::berth::plugin::runtime::v1 as generated;

    /// The SDK's hand-written messages are wire-identical to proto/berth/plugin's definitions.
    #[test]
    fn sdk_runtime_messages_match_the_proto_files() {
        let create = sdk::CreateRequest {
            namespace: "ns".into(),
            id: "t".into(),
            spec: Some(prost_types::Any { type_url: "u".into(), value: b"{}".to_vec() }),
            rootfs: vec![berth_plugin_sdk::proto::Mount { r#type: "bind".into(), ..Default::default() }],
            io: Some(sdk::Io { stdin: "i".into(), stdout: "o".into(), stderr: "e".into(), terminal: true }),
            checkpoint: "c".into(),
            runtime_options: None,
            task_options: Some(prost_types::Any::default()),
        };
        let decoded = generated::CreateRequest::decode(create.encode_to_vec().as_slice()).unwrap();
        assert_eq!((decoded.namespace.as_str(), decoded.id.as_str(), decoded.checkpoint.as_str()), ("ns", "t", "c"));
        assert_eq!(decoded.rootfs[0].r#type, "bind");
        assert!(decoded.io.unwrap().terminal && decoded.task_options.is_some());

        let state = generated::StateResponse {
            status: generated::Status::Paused as i32,
            pid: 7,
            exit_status: 3,
            exited_at: Some(std::time::SystemTime::UNIX_EPOCH.into()),
            io: None,
        };
        let ours = sdk::StateResponse::decode(state.encode_to_vec().as_slice()).unwrap();
        assert_eq!((ours.status, ours.pid, ours.exit_status), (sdk::Status::Paused as i32, 7, 3));

        let event = sdk::Event {
            kind: Some(sdk::event::Kind::Exit(sdk::ExitEvent {
                namespace: "ns".into(),
                id: "t".into(),
                exec_id: "e".into(),
                exit: Some(sdk::Exit { pid: 1, status: 137, exited_at: None }),
            })),
        };
        let decoded = generated::Event::decode(event.encode_to_vec().as_slice()).unwrap();
        let Some(generated::event::Kind::Exit(exit)) = decoded.kind else { panic!("{decoded:?}") };
        assert_eq!((exit.exec_id.as_str(), exit.exit.unwrap().status), ("e", 137));

        let kill = sdk::KillRequest { signal: 9, all: true, exec_id: "x".into(), ..Default::default() };
        let decoded = generated::KillRequest::decode(kill.encode_to_vec().as_slice()).unwrap();
        assert_eq!((decoded.signal, decoded.all, decoded.exec_id.as_str()), (9, true, "x"));
        let update = sdk::UpdateRequest { annotations: [("a".into(), "b".into())].into(), ..Default::default() };
        let decoded = generated::UpdateRequest::decode(update.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.annotations["a"], "b");
        let list =
            generated::ListResponse { tasks: vec![generated::TaskRef { namespace: "n".into(), id: "i".into() }] };
        assert_eq!(sdk::ListResponse::decode(list.encode_to_vec().as_slice()).unwrap().tasks[0].id, "i");

        use berth_proto::berth::plugin::v1 as plugin;
        let init = InitRequest {
            id: "runtime.x".into(),
            config_json: b"{}".to_vec(),
            root_dir: "/r".into(),
            state_dir: "/s".into(),
            host_abi_minor: 2,
        };
        let decoded = plugin::InitRequest::decode(init.encode_to_vec().as_slice()).unwrap();
        assert_eq!((decoded.id.as_str(), decoded.state_dir.as_str(), decoded.host_abi_minor), ("runtime.x", "/s", 2));
        let error = PluginError { code: 9, message: "m".into(), config_path: vec!["a".into()] };
        let decoded = plugin::PluginError::decode(error.encode_to_vec().as_slice()).unwrap();
        assert_eq!((decoded.code, decoded.config_path.len()), (9, 1));
    }
}
