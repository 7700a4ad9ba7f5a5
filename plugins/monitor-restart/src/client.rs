//! The monitor acts as a client of berthd's own containerd API, over its socket, as containerd's
//! restart monitor is a containerd client: tasks it starts go through the Tasks service like any
//! client's (events, other monitors, checks), and the monitor needs no access to berthd's insides.

use std::time::Duration;

use berth_proto::containerd::services::containers::v1::containers_client::ContainersClient;
use berth_proto::containerd::services::containers::v1::{
    Container, GetContainerRequest, ListContainersRequest, UpdateContainerRequest,
};
use berth_proto::containerd::services::namespaces::v1::ListNamespacesRequest;
use berth_proto::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
use berth_proto::containerd::services::snapshots::v1::MountsRequest;
use berth_proto::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_proto::containerd::services::tasks::v1::tasks_client::TasksClient;
use berth_proto::containerd::services::tasks::v1::{
    CreateTaskRequest, DeleteTaskRequest, GetRequest, KillRequest, ResumeTaskRequest, StartRequest, WaitRequest,
};
use berth_proto::containerd::types::Mount;
use berth_proto::containerd::v1::types::Status as TaskStatus;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::labels::{COUNT, Observed};

/// SIGKILL.
const SIGKILL: u32 = 9;

/// How long stopping a task waits for it to die after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// A namespaced request, as containerd clients send them.
fn req<T>(ns: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    // Namespaces are validated identifiers, always valid metadata.
    if let Ok(value) = ns.parse() {
        request.metadata_mut().insert(berth_core::services::NAMESPACE_HEADER, value);
    }
    request
}

/// A gRPC failure as the monitor logs it.
pub fn describe(what: &str, status: &Status) -> String {
    format!("{what}: {} ({:?})", status.message(), status.code())
}

/// The calls the monitor makes.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
}

impl Client {
    /// A client on `channel`.
    pub fn new(channel: Channel) -> Self {
        Self { channel }
    }

    /// Every namespace.
    pub async fn namespaces(&self) -> Result<Vec<String>, Status> {
        let mut client = NamespacesClient::new(self.channel.clone());
        let list = client.list(Request::new(ListNamespacesRequest::default())).await?.into_inner();
        Ok(list.namespaces.into_iter().map(|n| n.name).collect())
    }

    /// The containers of `ns` that carry a restart status label.
    pub async fn labelled(&self, ns: &str) -> Result<Vec<Container>, Status> {
        let mut client = ContainersClient::new(self.channel.clone());
        let list = client.list(req(ns, ListContainersRequest::default())).await?.into_inner();
        Ok(list.containers.into_iter().filter(|c| c.labels.contains_key(crate::labels::STATUS)).collect())
    }

    /// Container `id`, or None when it does not exist.
    pub async fn container(&self, ns: &str, id: &str) -> Result<Option<Container>, Status> {
        let mut client = ContainersClient::new(self.channel.clone());
        match client.get(req(ns, GetContainerRequest { id: id.into() })).await {
            Ok(r) => Ok(r.into_inner().container),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(s),
        }
    }

    /// Records `count` restarts on container `id`; false when the container is gone.
    pub async fn set_count(&self, ns: &str, id: &str, count: u32) -> Result<bool, Status> {
        let mut client = ContainersClient::new(self.channel.clone());
        let container =
            Container { id: id.into(), labels: [(COUNT.to_string(), count.to_string())].into(), ..Default::default() };
        let mask = prost_types::FieldMask { paths: vec![format!("labels.{COUNT}")] };
        let update = UpdateContainerRequest { container: Some(container), update_mask: Some(mask) };
        match client.update(req(ns, update)).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(s),
        }
    }

    /// The task of container `id`.
    pub async fn task(&self, ns: &str, id: &str) -> Result<Observed, Status> {
        let mut client = TasksClient::new(self.channel.clone());
        let process = match client.get(req(ns, GetRequest { container_id: id.into(), exec_id: String::new() })).await {
            Ok(r) => r.into_inner().process.unwrap_or_default(),
            Err(s) if s.code() == Code::NotFound => return Ok(Observed::Missing),
            Err(s) => return Err(s),
        };
        Ok(match TaskStatus::try_from(process.status).unwrap_or(TaskStatus::Unknown) {
            TaskStatus::Created => Observed::Created,
            TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing => Observed::Running,
            TaskStatus::Stopped => Observed::Stopped { exit_status: Some(process.exit_status) },
            TaskStatus::Unknown => Observed::Stopped { exit_status: None },
        })
    }

    /// The mounts of snapshot `key` of `snapshotter` in namespace `ns`.
    pub async fn mounts(&self, ns: &str, snapshotter: &str, key: &str) -> Result<Vec<Mount>, Status> {
        let mut client = SnapshotsClient::new(self.channel.clone());
        let request = MountsRequest { snapshotter: snapshotter.into(), key: key.into() };
        Ok(client.mounts(req(ns, request)).await?.into_inner().mounts)
    }

    /// Creates and starts the task of container `id`; returns its pid. A task created but not
    /// started is removed again.
    pub async fn run(&self, ns: &str, id: &str, rootfs: Vec<Mount>, log: Option<String>) -> Result<u32, Status> {
        let mut client = TasksClient::new(self.channel.clone());
        let log = log.unwrap_or_default();
        let create = CreateTaskRequest {
            container_id: id.into(),
            rootfs,
            stdout: log.clone(),
            stderr: log,
            ..Default::default()
        };
        client.create(req(ns, create)).await?;
        match client.start(req(ns, StartRequest { container_id: id.into(), exec_id: String::new() })).await {
            Ok(r) => Ok(r.into_inner().pid),
            Err(s) => {
                let _ = self.delete(ns, id).await;
                Err(s)
            }
        }
    }

    /// Removes the (stopped or created) task of container `id`; a missing one is fine.
    pub async fn delete(&self, ns: &str, id: &str) -> Result<(), Status> {
        let mut client = TasksClient::new(self.channel.clone());
        match client.delete(req(ns, DeleteTaskRequest { container_id: id.into() })).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(s),
        }
    }

    /// Kills every process of the task of container `id`, waits for it and removes it, as
    /// containerd's restart monitor stops one.
    pub async fn stop(&self, ns: &str, id: &str) -> Result<(), Status> {
        let mut client = TasksClient::new(self.channel.clone());
        // A frozen task does not die of SIGKILL until it is thawed.
        let _ = client.resume(req(ns, ResumeTaskRequest { container_id: id.into() })).await;
        let kill = KillRequest { container_id: id.into(), exec_id: String::new(), signal: SIGKILL, all: true };
        match client.kill(req(ns, kill)).await {
            Ok(_) => {
                let wait = client.wait(req(ns, WaitRequest { container_id: id.into(), exec_id: String::new() }));
                match tokio::time::timeout(KILL_TIMEOUT, wait).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(s)) if s.code() == Code::NotFound => {}
                    Ok(Err(s)) => return Err(s),
                    Err(_) => return Err(Status::deadline_exceeded("the task did not die after SIGKILL")),
                }
            }
            // Exited already, or gone.
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(s),
        }
        self.delete(ns, id).await
    }
}
