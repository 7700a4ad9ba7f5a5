//! `containerd.services.snapshots.v1.Snapshots`: the loaded `snapshot.*` backends, each seen
//! through the request's namespace ([`Namespaced`]), the backend chosen by the request's
//! `snapshotter` field as `ctr snapshots --snapshotter NAME` sets it.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use berth_proto::containerd::events::{SnapshotCommit, SnapshotPrepare, SnapshotRemove};
use berth_proto::containerd::services::snapshots::v1::snapshots_server::{Snapshots, SnapshotsServer};
use berth_proto::containerd::services::snapshots::v1::{self as api, *};
use berth_proto::containerd::types;
use futures::Stream;
use prost_types::Timestamp;
use tonic::{Request, Response, Status};

use super::content::lease;
use super::{GrpcService, exchange_id, namespace, publish, store_id};
use crate::Error;
use crate::events::Exchange;
use crate::filters::FilterSet;
use crate::mount::Mount;
use crate::plugin::{InitError, Instance, NoConfig, PluginKind, Registration, Requirement};
use crate::snapshot::namespaced::Namespaced;
use crate::snapshot::{Info as SnapInfo, Kind as SnapKind, SharedSnapshotter};
use crate::store::MetadataStore;

const SERVICE: &str = "containerd.services.snapshots.v1.Snapshots";

/// Infos per List message, as containerd sends them.
const LIST_BLOCK: usize = 100;

struct SnapshotsService {
    snapshotters: BTreeMap<String, Namespaced>,
    /// Where /snapshot/prepare, /snapshot/commit and /snapshot/remove go, as containerd publishes them.
    events: Exchange,
}

/// The Snapshots service plugin, `service.snapshots`. It starts after every snapshot plugin and
/// serves the ones that loaded.
pub fn registration() -> Registration {
    Registration::new::<NoConfig, _, _>(PluginKind::Service, "snapshots", |ctx| {
        let store = ctx.get::<MetadataStore>(&store_id());
        let events = ctx.get::<Exchange>(&exchange_id());
        let backends = ctx.get_all::<SharedSnapshotter>(PluginKind::Snapshot);
        let grpc = ctx.daemon_config().grpc.clone();
        async move {
            let store = (*store.ok_or_else(|| InitError::Failed("metadata store not loaded".into()))?).clone();
            let events = (*events.ok_or_else(|| InitError::Failed("event exchange not loaded".into()))?).clone();
            let service = SnapshotsService::new(store, events, backends.into_iter().map(|(_, b)| (*b).clone()));
            let server = SnapshotsServer::new(service)
                .max_decoding_message_size(grpc.max_recv_message_size)
                .max_encoding_message_size(grpc.max_send_message_size);
            Ok(Instance::new(GrpcService::new(SERVICE, server)))
        }
    })
    .requires(Requirement::Plugin(store_id()))
    .requires(Requirement::Plugin(exchange_id()))
    .requires(Requirement::Kind(PluginKind::Snapshot))
    .describe(SERVICE)
}

impl SnapshotsService {
    fn new(store: MetadataStore, events: Exchange, backends: impl IntoIterator<Item = SharedSnapshotter>) -> Self {
        let snapshotters =
            backends.into_iter().map(|b| (b.name().to_owned(), Namespaced::new(store.clone(), b))).collect();
        SnapshotsService { snapshotters, events }
    }

    fn get(&self, name: &str) -> Result<&Namespaced, Error> {
        if name.is_empty() {
            return Err(Error::InvalidArgument("snapshotter name must not be empty".into()));
        }
        self.snapshotters.get(name).ok_or_else(|| {
            let loaded: Vec<_> = self.snapshotters.keys().map(String::as_str).collect();
            Error::NotFound(format!(
                "snapshotter \"{name}\" (loaded: {})",
                if loaded.is_empty() { "none".to_string() } else { loaded.join(", ") }
            ))
        })
    }
}

fn mounts(m: Vec<Mount>) -> Vec<types::Mount> {
    m.into_iter().map(Into::into).collect()
}

fn to_info(i: SnapInfo) -> api::Info {
    let kind = match i.kind {
        SnapKind::View => api::Kind::View,
        SnapKind::Active => api::Kind::Active,
        SnapKind::Committed => api::Kind::Committed,
    };
    api::Info {
        name: i.name,
        parent: i.parent.unwrap_or_default(),
        kind: kind as i32,
        created_at: Some(Timestamp::from(i.created)),
        updated_at: Some(Timestamp::from(i.updated)),
        labels: Arc::unwrap_or_clone(i.labels).into_iter().collect(),
    }
}

fn parent(p: &str) -> Option<&str> {
    (!p.is_empty()).then_some(p)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[tonic::async_trait]
impl Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        request: Request<PrepareSnapshotRequest>,
    ) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let (ns, lease) = (namespace(&request)?, lease(&request)?);
        let r = request.into_inner();
        let s = self.get(&r.snapshotter)?;
        let m = s.prepare(&ns, &r.key, parent(&r.parent), r.labels.into_iter().collect(), lease).await?;
        let event = SnapshotPrepare { key: r.key, parent: r.parent, snapshotter: r.snapshotter };
        publish(&self.events, &ns, "/snapshot/prepare", "SnapshotPrepare", &event);
        Ok(Response::new(PrepareSnapshotResponse { mounts: mounts(m) }))
    }

    async fn view(&self, request: Request<ViewSnapshotRequest>) -> Result<Response<ViewSnapshotResponse>, Status> {
        let (ns, lease) = (namespace(&request)?, lease(&request)?);
        let r = request.into_inner();
        let s = self.get(&r.snapshotter)?;
        let m = s.view(&ns, &r.key, parent(&r.parent), r.labels.into_iter().collect(), lease).await?;
        Ok(Response::new(ViewSnapshotResponse { mounts: mounts(m) }))
    }

    async fn mounts(&self, request: Request<MountsRequest>) -> Result<Response<MountsResponse>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        let m = self.get(&r.snapshotter)?.mounts(&ns, &r.key).await?;
        Ok(Response::new(MountsResponse { mounts: mounts(m) }))
    }

    async fn commit(&self, request: Request<CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let (ns, lease) = (namespace(&request)?, lease(&request)?);
        let r = request.into_inner();
        self.get(&r.snapshotter)?.commit(&ns, &r.name, &r.key, r.labels.into_iter().collect(), lease).await?;
        let event = SnapshotCommit { key: r.key, name: r.name, snapshotter: r.snapshotter };
        publish(&self.events, &ns, "/snapshot/commit", "SnapshotCommit", &event);
        Ok(Response::new(()))
    }

    async fn remove(&self, request: Request<RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        self.get(&r.snapshotter)?.remove(&ns, &r.key).await?;
        publish(
            &self.events,
            &ns,
            "/snapshot/remove",
            "SnapshotRemove",
            &SnapshotRemove { key: r.key, snapshotter: r.snapshotter },
        );
        Ok(Response::new(()))
    }

    async fn stat(&self, request: Request<StatSnapshotRequest>) -> Result<Response<StatSnapshotResponse>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        let info = self.get(&r.snapshotter)?.stat(&ns, &r.key).await?;
        Ok(Response::new(StatSnapshotResponse { info: Some(to_info(info)) }))
    }

    async fn update(
        &self,
        request: Request<UpdateSnapshotRequest>,
    ) -> Result<Response<UpdateSnapshotResponse>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        let s = self.get(&r.snapshotter)?;
        let info = r.info.ok_or_else(|| Error::InvalidArgument("info must be set in the request".into()))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let update = SnapInfo {
            kind: SnapKind::Active,
            name: info.name,
            parent: None,
            labels: Arc::new(info.labels.into_iter().collect()),
            created: std::time::SystemTime::UNIX_EPOCH,
            updated: std::time::SystemTime::UNIX_EPOCH,
        };
        let info = s.update(&ns, update, paths).await?;
        Ok(Response::new(UpdateSnapshotResponse { info: Some(to_info(info)) }))
    }

    type ListStream = Pin<Box<dyn Stream<Item = Result<ListSnapshotsResponse, Status>> + Send>>;

    async fn list(&self, request: Request<ListSnapshotsRequest>) -> Result<Response<Self::ListStream>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        let s = self.get(&r.snapshotter)?;
        let filters = FilterSet::parse_all(&r.filters)?;
        let infos: Vec<api::Info> = s.walk(&ns, &|i| filters.matches(i)).await?.into_iter().map(to_info).collect();
        let blocks: Vec<_> =
            infos.chunks(LIST_BLOCK).map(|block| Ok(ListSnapshotsResponse { info: block.to_vec() })).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(blocks))))
    }

    async fn usage(&self, request: Request<UsageRequest>) -> Result<Response<UsageResponse>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        let usage = self.get(&r.snapshotter)?.usage(&ns, &r.key).await?;
        Ok(Response::new(UsageResponse { size: to_i64(usage.size), inodes: to_i64(usage.inodes) }))
    }

    async fn cleanup(&self, request: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.get(&r.snapshotter)?.cleanup().await?;
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::services::NAMESPACE_HEADER;
    use crate::store::testutil::open_temp;

    fn req<T>(ns: &str, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(NAMESPACE_HEADER, ns.parse().unwrap());
        request
    }

    #[tokio::test]
    async fn unknown_snapshotter_names_the_loaded_ones() {
        let (_dir, store) = open_temp();
        let svc = SnapshotsService::new(store, Exchange::new(), []);
        let r = PrepareSnapshotRequest { snapshotter: "zfs".into(), key: "k".into(), ..Default::default() };
        let err = svc.prepare(req("default", r)).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::NotFound, "snapshotter \"zfs\" (loaded: none): not found"));
        let err = svc.stat(Request::new(StatSnapshotRequest::default())).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
    }
}
