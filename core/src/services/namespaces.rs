//! `containerd.services.namespaces.v1.Namespaces`.

use berth_proto::containerd::services::namespaces::v1::namespaces_server::{Namespaces, NamespacesServer};
use berth_proto::containerd::services::namespaces::v1::*;
use tonic::{Request, Response, Status};

use super::{GrpcService, publish};
use crate::Error;
use crate::filters::{Adaptor, FilterSet, map_field};
use crate::store::{MetadataStore, records};
use berth_proto::containerd::events::{NamespaceCreate, NamespaceDelete, NamespaceUpdate};

struct NamespacesService {
    store: MetadataStore,
    events: crate::events::Exchange,
}

pub(super) fn service(deps: super::ServiceDeps) -> GrpcService {
    let super::ServiceDeps { store, events, max_recv: recv, max_send: send } = deps;
    GrpcService::new(
        "containerd.services.namespaces.v1.Namespaces",
        NamespacesServer::new(NamespacesService { store, events })
            .max_decoding_message_size(recv)
            .max_encoding_message_size(send),
    )
}

impl Adaptor for records::Namespace {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str)? {
            "name" => Some(self.name.clone()),
            "labels" => map_field(&path[1..], &self.labels),
            _ => None,
        }
    }
}

fn required(namespace: Option<Namespace>) -> Result<Namespace, Status> {
    namespace.ok_or_else(|| Error::InvalidArgument("namespace must be set in the request".into()).into())
}

#[tonic::async_trait]
impl Namespaces for NamespacesService {
    async fn get(&self, request: Request<GetNamespaceRequest>) -> Result<Response<GetNamespaceResponse>, Status> {
        let ns = self.store.get_namespace(&request.into_inner().name)?;
        Ok(Response::new(GetNamespaceResponse { namespace: Some(ns.into()) }))
    }

    async fn list(&self, request: Request<ListNamespacesRequest>) -> Result<Response<ListNamespacesResponse>, Status> {
        let filter = request.into_inner().filter;
        let filters = if filter.is_empty() { FilterSet::default() } else { FilterSet::parse_all(&[filter])? };
        let namespaces =
            self.store.list_namespaces()?.into_iter().filter(|n| filters.matches(n)).map(Into::into).collect();
        Ok(Response::new(ListNamespacesResponse { namespaces }))
    }

    async fn create(
        &self,
        request: Request<CreateNamespaceRequest>,
    ) -> Result<Response<CreateNamespaceResponse>, Status> {
        let context = super::namespace(&request).ok();
        let ns = required(request.into_inner().namespace)?;
        let created = self.store.create_namespace(ns.into()).await?;
        let event =
            NamespaceCreate { name: created.name.clone(), labels: created.labels.clone().into_iter().collect() };
        let on = context.as_deref().unwrap_or(&created.name);
        publish(&self.events, on, "/namespaces/create", "NamespaceCreate", &event);
        Ok(Response::new(CreateNamespaceResponse { namespace: Some(created.into()) }))
    }

    async fn update(
        &self,
        request: Request<UpdateNamespaceRequest>,
    ) -> Result<Response<UpdateNamespaceResponse>, Status> {
        let context = super::namespace(&request).ok();
        let request = request.into_inner();
        let ns = required(request.namespace)?;
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        let updated = self.store.update_namespace(ns.into(), paths).await?;
        let event =
            NamespaceUpdate { name: updated.name.clone(), labels: updated.labels.clone().into_iter().collect() };
        let on = context.as_deref().unwrap_or(&updated.name);
        publish(&self.events, on, "/namespaces/update", "NamespaceUpdate", &event);
        Ok(Response::new(UpdateNamespaceResponse { namespace: Some(updated.into()) }))
    }

    async fn delete(&self, request: Request<DeleteNamespaceRequest>) -> Result<Response<()>, Status> {
        let context = super::namespace(&request).ok();
        let name = request.into_inner().name;
        self.store.delete_namespace(&name).await?;
        let on = context.as_deref().unwrap_or(&name);
        publish(&self.events, on, "/namespaces/delete", "NamespaceDelete", &NamespaceDelete { name: name.clone() });
        Ok(Response::new(()))
    }
}
