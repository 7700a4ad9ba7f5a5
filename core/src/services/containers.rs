//! `containerd.services.containers.v1.Containers`.

use std::pin::Pin;

use berth_proto::containerd::services::containers::v1::containers_server::{Containers, ContainersServer};
use berth_proto::containerd::services::containers::v1::*;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::{GrpcService, namespace, publish};
use crate::Error;
use crate::filters::FilterSet;
use crate::store::MetadataStore;
use berth_proto::containerd::events::{ContainerCreate, ContainerDelete, ContainerUpdate, container_create};

struct ContainersService {
    store: MetadataStore,
    events: crate::events::Exchange,
}

pub(super) fn service(deps: super::ServiceDeps) -> GrpcService {
    let super::ServiceDeps { store, events, max_recv: recv, max_send: send } = deps;
    GrpcService::new(
        "containerd.services.containers.v1.Containers",
        ContainersServer::new(ContainersService { store, events })
            .max_decoding_message_size(recv)
            .max_encoding_message_size(send),
    )
}

fn required(container: Option<Container>) -> Result<Container, Status> {
    container.ok_or_else(|| Error::InvalidArgument("container must be set in the request".into()).into())
}

impl ContainersService {
    fn list_matching(&self, ns: &str, filters: &[String]) -> Result<Vec<Container>, Status> {
        let filters = FilterSet::parse_all(filters)?;
        Ok(self.store.list_containers(ns, &|c| filters.matches(c))?.into_iter().map(Into::into).collect())
    }
}

#[tonic::async_trait]
impl Containers for ContainersService {
    async fn get(&self, request: Request<GetContainerRequest>) -> Result<Response<GetContainerResponse>, Status> {
        let ns = namespace(&request)?;
        let container = self.store.get_container(&ns, &request.into_inner().id)?;
        Ok(Response::new(GetContainerResponse { container: Some(container.into()) }))
    }

    async fn list(&self, request: Request<ListContainersRequest>) -> Result<Response<ListContainersResponse>, Status> {
        let ns = namespace(&request)?;
        let containers = self.list_matching(&ns, &request.into_inner().filters)?;
        Ok(Response::new(ListContainersResponse { containers }))
    }

    type ListStreamStream = Pin<Box<dyn Stream<Item = Result<ListContainerMessage, Status>> + Send>>;

    async fn list_stream(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<Self::ListStreamStream>, Status> {
        let ns = namespace(&request)?;
        let containers = self.list_matching(&ns, &request.into_inner().filters)?;
        let stream =
            futures::stream::iter(containers.into_iter().map(|c| Ok(ListContainerMessage { container: Some(c) })));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let ns = namespace(&request)?;
        let container = required(request.into_inner().container)?;
        let created = self.store.create_container(&ns, container.into()).await?;
        let runtime = created.runtime.clone().map(|r| container_create::Runtime { name: r.name, options: r.options });
        let event = ContainerCreate { id: created.id.clone(), image: created.image.clone(), runtime };
        publish(&self.events, &ns, "/containers/create", "ContainerCreate", &event);
        Ok(Response::new(CreateContainerResponse { container: Some(created.into()) }))
    }

    async fn update(
        &self,
        request: Request<UpdateContainerRequest>,
    ) -> Result<Response<UpdateContainerResponse>, Status> {
        let ns = namespace(&request)?;
        let request = request.into_inner();
        let container = required(request.container)?;
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        let updated = self.store.update_container(&ns, container.into(), paths).await?;
        let event = ContainerUpdate {
            id: updated.id.clone(),
            image: updated.image.clone(),
            labels: updated.labels.clone().into_iter().collect(),
            snapshot_key: updated.snapshot_key.clone(),
        };
        publish(&self.events, &ns, "/containers/update", "ContainerUpdate", &event);
        Ok(Response::new(UpdateContainerResponse { container: Some(updated.into()) }))
    }

    async fn delete(&self, request: Request<DeleteContainerRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let id = request.into_inner().id;
        self.store.delete_container(&ns, &id).await?;
        publish(&self.events, &ns, "/containers/delete", "ContainerDelete", &ContainerDelete { id });
        Ok(Response::new(()))
    }
}
