//! `containerd.services.sandbox.v1.Store`: sandbox metadata.

use berth_proto::containerd::services::sandbox::v1::store_server::{Store, StoreServer};
use berth_proto::containerd::services::sandbox::v1::*;
use berth_proto::containerd::types::Sandbox;
use tonic::{Request, Response, Status};

use super::{GrpcService, namespace};
use crate::Error;
use crate::filters::FilterSet;
use crate::store::MetadataStore;

struct SandboxStoreService {
    store: MetadataStore,
}

pub(super) fn service(deps: super::ServiceDeps) -> GrpcService {
    let super::ServiceDeps { store, max_recv: recv, max_send: send, .. } = deps;
    GrpcService::new(
        "containerd.services.sandbox.v1.Store",
        StoreServer::new(SandboxStoreService { store }).max_decoding_message_size(recv).max_encoding_message_size(send),
    )
}

fn required(sandbox: Option<Sandbox>) -> Result<Sandbox, Status> {
    sandbox.ok_or_else(|| Error::InvalidArgument("sandbox must be set in the request".into()).into())
}

#[tonic::async_trait]
impl Store for SandboxStoreService {
    async fn create(&self, request: Request<StoreCreateRequest>) -> Result<Response<StoreCreateResponse>, Status> {
        let ns = namespace(&request)?;
        let sandbox = required(request.into_inner().sandbox)?;
        let created = self.store.create_sandbox(&ns, sandbox.into()).await?;
        Ok(Response::new(StoreCreateResponse { sandbox: Some(created.into()) }))
    }

    async fn update(&self, request: Request<StoreUpdateRequest>) -> Result<Response<StoreUpdateResponse>, Status> {
        let ns = namespace(&request)?;
        let request = request.into_inner();
        let sandbox = required(request.sandbox)?;
        let updated = self.store.update_sandbox(&ns, sandbox.into(), request.fields).await?;
        Ok(Response::new(StoreUpdateResponse { sandbox: Some(updated.into()) }))
    }

    async fn delete(&self, request: Request<StoreDeleteRequest>) -> Result<Response<StoreDeleteResponse>, Status> {
        let ns = namespace(&request)?;
        self.store.delete_sandbox(&ns, &request.into_inner().sandbox_id).await?;
        Ok(Response::new(StoreDeleteResponse {}))
    }

    async fn list(&self, request: Request<StoreListRequest>) -> Result<Response<StoreListResponse>, Status> {
        let ns = namespace(&request)?;
        let filters = FilterSet::parse_all(&request.into_inner().filters)?;
        let list = self.store.list_sandboxes(&ns, &|s| filters.matches(s))?.into_iter().map(Into::into).collect();
        Ok(Response::new(StoreListResponse { list }))
    }

    async fn get(&self, request: Request<StoreGetRequest>) -> Result<Response<StoreGetResponse>, Status> {
        let ns = namespace(&request)?;
        let sandbox = self.store.get_sandbox(&ns, &request.into_inner().sandbox_id)?;
        Ok(Response::new(StoreGetResponse { sandbox: Some(sandbox.into()) }))
    }
}
