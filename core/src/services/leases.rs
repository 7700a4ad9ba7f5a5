//! `containerd.services.leases.v1.Leases`: the leases clients take to keep what they create from
//! garbage collection (`crate::gc`): until it is deleted, or its `containerd.io/gc.expire` time
//! (RFC 3339) passes, a lease holds its resources and what they reference.
//!
//! Delete's `sync` waits for a collection that started after the lease was gone, so what only
//! the lease held is removed when Delete returns; without it, at the next scheduled collection.
//! With the `gc.scheduler` plugin disabled, `sync` has nothing to wait for and is ignored.

use std::io::Read;

use berth_proto::containerd::services::leases::v1::leases_server::{Leases, LeasesServer};
use berth_proto::containerd::services::leases::v1::*;
use tonic::{Request, Response, Status};

use super::{GrpcService, namespace};
use crate::Error;
use crate::filters::{Adaptor, FilterSet, map_field};
use crate::gc::GcScheduler;
use crate::store::{MetadataStore, records};

struct LeasesService {
    store: MetadataStore,
    gc: Option<GcScheduler>,
}

pub(super) fn service(deps: super::ServiceDeps, gc: Option<GcScheduler>) -> GrpcService {
    let super::ServiceDeps { store, max_recv: recv, max_send: send, .. } = deps;
    GrpcService::new(
        "containerd.services.leases.v1.Leases",
        LeasesServer::new(LeasesService { store, gc }).max_decoding_message_size(recv).max_encoding_message_size(send),
    )
}

impl Adaptor for records::Lease {
    /// `id` and `labels.<key>`, as containerd's `adaptLease`.
    fn field(&self, path: &[String]) -> Option<String> {
        let (first, rest) = path.split_first()?;
        match (first.as_str(), rest) {
            ("id", []) => (!self.id.is_empty()).then(|| self.id.clone()),
            ("labels", key) => map_field(key, &self.labels),
            _ => None,
        }
    }
}

/// A fresh lease id for a Create request without one (containerd's service then applies
/// `leases.WithRandomID`): 16 hex digits from /dev/urandom, a valid identifier.
fn random_id() -> Result<String, Error> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::Internal(format!("generating a lease id from /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn required(resource: Option<Resource>) -> Result<records::LeaseResource, Status> {
    let resource = resource.ok_or_else(|| Error::InvalidArgument("resource must be set in the request".into()))?;
    Ok(resource.into())
}

#[tonic::async_trait]
impl Leases for LeasesService {
    async fn create(&self, request: Request<CreateRequest>) -> Result<Response<CreateResponse>, Status> {
        let ns = namespace(&request)?;
        let request = request.into_inner();
        let id = if request.id.is_empty() { random_id()? } else { request.id };
        let lease = records::Lease { id, created_at: None, labels: request.labels.into_iter().collect() };
        let created = self.store.create_lease(&ns, lease).await?;
        Ok(Response::new(CreateResponse { lease: Some(created.into()) }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        // `sync`: see the module doc.
        let DeleteRequest { id, sync } = request.into_inner();
        self.store.delete_lease(&ns, &id).await?;
        if let (true, Some(gc)) = (sync, &self.gc) {
            gc.collect().await?;
        }
        Ok(Response::new(()))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let ns = namespace(&request)?;
        let filters = FilterSet::parse_all(&request.into_inner().filters)?;
        let leases = self.store.list_leases(&ns, &|l| filters.matches(l))?.into_iter().map(Into::into).collect();
        Ok(Response::new(ListResponse { leases }))
    }

    async fn add_resource(&self, request: Request<AddResourceRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let request = request.into_inner();
        let resource = required(request.resource)?;
        self.store.add_lease_resource(&ns, &request.id, resource).await?;
        Ok(Response::new(()))
    }

    async fn delete_resource(&self, request: Request<DeleteResourceRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let request = request.into_inner();
        let resource = required(request.resource)?;
        self.store.delete_lease_resource(&ns, &request.id, resource).await?;
        Ok(Response::new(()))
    }

    async fn list_resources(
        &self,
        request: Request<ListResourcesRequest>,
    ) -> Result<Response<ListResourcesResponse>, Status> {
        let ns = namespace(&request)?;
        let resources =
            self.store.list_lease_resources(&ns, &request.into_inner().id)?.into_iter().map(Into::into).collect();
        Ok(Response::new(ListResourcesResponse { resources }))
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::ident;
    use crate::services::NAMESPACE_HEADER;
    use crate::store::testutil::open_temp;

    fn req<T>(ns: &str, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(NAMESPACE_HEADER, ns.parse().unwrap());
        request
    }

    fn labels(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    async fn create(svc: &LeasesService, ns: &str, id: &str, pairs: &[(&str, &str)]) -> Lease {
        let request = req(ns, CreateRequest { id: id.into(), labels: labels(pairs) });
        svc.create(request).await.unwrap().into_inner().lease.unwrap()
    }

    async fn listed(svc: &LeasesService) -> Vec<Resource> {
        let request = req("default", ListResourcesRequest { id: "l".into() });
        svc.list_resources(request).await.unwrap().into_inner().resources
    }

    async fn list(svc: &LeasesService, filters: &[&str]) -> Vec<String> {
        let filters = filters.iter().map(|f| f.to_string()).collect();
        let leases = svc.list(req("default", ListRequest { filters })).await.unwrap().into_inner().leases;
        leases.into_iter().map(|l| l.id).collect()
    }

    #[test]
    fn random_ids_are_identifiers() {
        for _ in 0..100 {
            let id = random_id().unwrap();
            assert_eq!(id.len(), 16);
            ident::validate(&id).unwrap();
        }
        assert_ne!(random_id().unwrap(), random_id().unwrap());
    }

    #[tokio::test]
    async fn create_list_delete() {
        let (_dir, store) = open_temp();
        let svc = LeasesService { store, gc: None };
        let lease = create(&svc, "default", "l1", &[("containerd.io/gc.expire", "2030-01-01T00:00:00Z")]).await;
        assert_eq!(lease.id, "l1");
        assert!(lease.created_at.is_some());
        assert_eq!(lease.labels, labels(&[("containerd.io/gc.expire", "2030-01-01T00:00:00Z")]));
        create(&svc, "default", "l2", &[("team", "b")]).await;
        create(&svc, "other", "l3", &[]).await;

        // No id: the service makes one.
        let generated = create(&svc, "default", "", &[]).await;
        ident::validate(&generated.id).unwrap();
        assert_eq!(generated.id.len(), 16);

        let err = svc.create(req("default", CreateRequest { id: "l1".into(), ..Default::default() })).await;
        assert_eq!(err.unwrap_err().code(), Code::AlreadyExists);

        let mut all = vec!["l1".to_string(), "l2".to_string(), generated.id.clone()];
        all.sort();
        assert_eq!(list(&svc, &[]).await, all);
        assert_eq!(list(&svc, &["id==l2"]).await, ["l2"]);
        assert_eq!(list(&svc, &["labels.team==b"]).await, ["l2"]);
        assert_eq!(list(&svc, &["labels.\"containerd.io/gc.expire\""]).await, ["l1"]);
        assert_eq!(list(&svc, &["id==l1", "labels.team"]).await, ["l1", "l2"]);
        assert_eq!(list(&svc, &["id~=^l"]).await, ["l1", "l2"]);
        assert!(list(&svc, &["image==x"]).await.is_empty());
        let err = svc.list(req("default", ListRequest { filters: vec!["id==".into()] })).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        for sync in [false, true] {
            let id = if sync { "l1" } else { "l2" };
            svc.delete(req("default", DeleteRequest { id: id.into(), sync })).await.unwrap();
        }
        assert_eq!(list(&svc, &[]).await, [generated.id]);
        let err = svc.delete(req("default", DeleteRequest { id: "l1".into(), sync: false })).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), "lease \"l1\" in namespace \"default\": not found");
    }

    #[tokio::test]
    async fn resources() {
        let (_dir, store) = open_temp();
        let svc = LeasesService { store, gc: None };
        create(&svc, "default", "l", &[]).await;
        let content = Resource { id: format!("sha256:{}", "e".repeat(64)), r#type: "content".into() };
        let snapshot = Resource { id: "default/1/sha256:abc".into(), r#type: "snapshots/overlayfs".into() };
        for resource in [&snapshot, &content] {
            let request = AddResourceRequest { id: "l".into(), resource: Some(resource.clone()) };
            svc.add_resource(req("default", request)).await.unwrap();
        }
        assert_eq!(listed(&svc).await, [content.clone(), snapshot.clone()]);

        let request = DeleteResourceRequest { id: "l".into(), resource: Some(snapshot) };
        svc.delete_resource(req("default", request)).await.unwrap();
        assert_eq!(listed(&svc).await, std::slice::from_ref(&content));

        // Errors: no resource, a bad one, a missing lease.
        let err = svc.add_resource(req("default", AddResourceRequest { id: "l".into(), resource: None })).await;
        let err = err.unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "resource must be set in the request"));
        let err = svc.delete_resource(req("default", DeleteResourceRequest { id: "l".into(), resource: None })).await;
        assert_eq!(err.unwrap_err().code(), Code::InvalidArgument);
        let bad = Resource { id: "x".into(), r#type: "images".into() };
        let request = AddResourceRequest { id: "l".into(), resource: Some(bad) };
        let err = svc.add_resource(req("default", request)).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "unsupported lease resource type \"images\""));
        let request = AddResourceRequest { id: "nope".into(), resource: Some(content) };
        assert_eq!(svc.add_resource(req("default", request)).await.unwrap_err().code(), Code::NotFound);
        let request = req("default", ListResourcesRequest { id: "nope".into() });
        assert_eq!(svc.list_resources(request).await.unwrap_err().code(), Code::NotFound);
    }

    #[tokio::test]
    async fn namespace_is_required() {
        let (_dir, store) = open_temp();
        let svc = LeasesService { store, gc: None };
        let err = svc.create(Request::new(CreateRequest::default())).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        let err = svc.list(req("a/b", ListRequest::default())).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
}
