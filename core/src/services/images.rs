//! `containerd.services.images.v1.Images`: image records (a name, labels and a target descriptor)
//! per namespace, as `ctr images` and pulls use them.
//!
//! Deleting an image record leaves what it pointed at (the manifest, config and layers, and the
//! snapshots their labels reference) to the garbage collector (`crate::gc`). Delete's `sync`
//! waits for a collection that started after the record was gone, so when Delete returns
//! whatever only that image held is removed, files and backend snapshots included. Without
//! `sync` they go at the next scheduled collection. With the `gc.scheduler` plugin disabled,
//! `sync` has nothing to wait for and is ignored.

use berth_proto::containerd::services::images::v1::images_server::{Images, ImagesServer};
use berth_proto::containerd::services::images::v1::*;
use berth_proto::containerd::types;
use tonic::{Request, Response, Status};

use super::{GrpcService, namespace};
use crate::Error;
use crate::events::Exchange;
use crate::filters::{Adaptor, FilterSet, map_field};
use crate::gc::GcScheduler;
use crate::store::{self, MetadataStore};

struct ImagesService {
    store: MetadataStore,
    events: Exchange,
    gc: Option<GcScheduler>,
}

pub(super) fn service(deps: super::ServiceDeps, gc: Option<GcScheduler>) -> GrpcService {
    let super::ServiceDeps { store, events, max_recv: recv, max_send: send } = deps;
    GrpcService::new(
        "containerd.services.images.v1.Images",
        ImagesServer::new(ImagesService { store, events, gc })
            .max_decoding_message_size(recv)
            .max_encoding_message_size(send),
    )
}

impl Adaptor for store::Image {
    /// `name`, `labels.<key>`, `target.digest` and `target.mediatype`, as containerd's `adaptImage`.
    fn field(&self, path: &[String]) -> Option<String> {
        let (first, rest) = path.split_first()?;
        let target = self.target.as_ref();
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        match (first.as_str(), rest) {
            ("name", []) => nonempty(&self.name),
            ("labels", key) => map_field(key, &self.labels),
            ("target", [field]) if field == "digest" => target.and_then(|t| nonempty(&t.digest)),
            ("target", [field]) if field == "mediatype" => target.and_then(|t| nonempty(&t.media_type)),
            _ => None,
        }
    }
}

fn to_record(image: Image) -> store::Image {
    store::Image {
        name: image.name,
        labels: image.labels.into_iter().collect(),
        target: image.target.map(|t| store::Descriptor {
            media_type: t.media_type,
            digest: t.digest,
            size: t.size,
            annotations: t.annotations.into_iter().collect(),
        }),
        created_at: image.created_at,
        updated_at: image.updated_at,
    }
}

fn to_wire(image: store::Image) -> Image {
    Image {
        name: image.name,
        labels: image.labels.into_iter().collect(),
        target: image.target.map(|t| types::Descriptor {
            media_type: t.media_type,
            digest: t.digest,
            size: t.size,
            annotations: t.annotations.into_iter().collect(),
        }),
        created_at: image.created_at,
        updated_at: image.updated_at,
    }
}

fn required(image: Option<Image>) -> Result<Image, Error> {
    image.ok_or_else(|| Error::InvalidArgument("image must be set in the request".into()))
}

impl ImagesService {
    /// Publishes an image event; its type URL is in the images package, as containerd's.
    fn publish<M: prost::Message>(&self, ns: &str, topic: &str, kind: &str, event: &M) {
        let any = crate::events::pack(&format!("containerd.services.images.v1.{kind}"), event);
        if let Err(error) = self.events.publish(ns, topic, any) {
            tracing::warn!(%topic, %error, "event not published");
        }
    }
}

#[tonic::async_trait]
impl Images for ImagesService {
    async fn get(&self, request: Request<GetImageRequest>) -> Result<Response<GetImageResponse>, Status> {
        let ns = namespace(&request)?;
        let image = self.store.get_image(&ns, &request.into_inner().name)?;
        Ok(Response::new(GetImageResponse { image: Some(to_wire(image)) }))
    }

    async fn list(&self, request: Request<ListImagesRequest>) -> Result<Response<ListImagesResponse>, Status> {
        let ns = namespace(&request)?;
        let filters = FilterSet::parse_all(&request.into_inner().filters)?;
        let images = self.store.list_images(&ns, &|i| filters.matches(i))?.into_iter().map(to_wire).collect();
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn create(&self, request: Request<CreateImageRequest>) -> Result<Response<CreateImageResponse>, Status> {
        let ns = namespace(&request)?;
        let image = to_record(required(request.into_inner().image)?);
        let created = self.store.create_image(&ns, image).await?;
        let event = ImageCreate { name: created.name.clone(), labels: created.labels.clone().into_iter().collect() };
        self.publish(&ns, "/images/create", "ImageCreate", &event);
        Ok(Response::new(CreateImageResponse { image: Some(to_wire(created)) }))
    }

    async fn update(&self, request: Request<UpdateImageRequest>) -> Result<Response<UpdateImageResponse>, Status> {
        let ns = namespace(&request)?;
        let request = request.into_inner();
        let image = to_record(required(request.image)?);
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        let updated = self.store.update_image(&ns, image, paths).await?;
        let event = ImageUpdate { name: updated.name.clone(), labels: updated.labels.clone().into_iter().collect() };
        self.publish(&ns, "/images/update", "ImageUpdate", &event);
        Ok(Response::new(UpdateImageResponse { image: Some(to_wire(updated)) }))
    }

    async fn delete(&self, request: Request<DeleteImageRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        // `sync`: see the module doc.
        let DeleteImageRequest { name, sync, target } = request.into_inner();
        if let Some(target) = target.filter(|t| !t.digest.is_empty()) {
            // containerd's DeleteTarget: delete only if the image still points at this target.
            let stored = self.store.get_image(&ns, &name)?;
            let current = stored.target.map(|t| t.digest).unwrap_or_default();
            if current != target.digest {
                return Err(Error::FailedPrecondition(format!(
                    "image \"{name}\" in namespace \"{ns}\" has target {current}, not {}",
                    target.digest
                ))
                .into());
            }
        }
        self.store.delete_image(&ns, &name).await?;
        self.publish(&ns, "/images/delete", "ImageDelete", &ImageDelete { name });
        if let (true, Some(gc)) = (sync, &self.gc) {
            gc.collect().await?;
        }
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

    fn image(name: &str, c: char, media_type: &str, labels: &[(&str, &str)]) -> Image {
        Image {
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            target: Some(types::Descriptor {
                media_type: media_type.into(),
                digest: format!("sha256:{}", c.to_string().repeat(64)),
                size: 3,
                annotations: Default::default(),
            }),
            ..Default::default()
        }
    }

    async fn list(svc: &ImagesService, filters: &[&str]) -> Vec<String> {
        let filters = filters.iter().map(|f| f.to_string()).collect();
        let images = svc.list(req("default", ListImagesRequest { filters })).await.unwrap().into_inner().images;
        images.into_iter().map(|i| i.name).collect()
    }

    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";

    #[tokio::test]
    async fn create_filter_update_delete_with_events() {
        let (_dir, store) = open_temp();
        let events = Exchange::new();
        let mut subscription = events.subscribe(FilterSet::default());
        let svc = ImagesService { store, events, gc: None };
        for i in
            [image("docker.io/library/busybox:latest", 'a', MANIFEST, &[("team", "a")]), image("b", 'b', INDEX, &[])]
        {
            svc.create(req("default", CreateImageRequest { image: Some(i), source_date_epoch: None })).await.unwrap();
        }
        let dup = CreateImageRequest { image: Some(image("b", 'c', INDEX, &[])), source_date_epoch: None };
        assert_eq!(svc.create(req("default", dup)).await.unwrap_err().code(), Code::AlreadyExists);

        assert_eq!(list(&svc, &[]).await, ["b", "docker.io/library/busybox:latest"]);
        assert_eq!(list(&svc, &["name==b"]).await, ["b"]);
        assert_eq!(list(&svc, &["name~=busybox"]).await, ["docker.io/library/busybox:latest"]);
        assert_eq!(list(&svc, &["labels.team==a"]).await, ["docker.io/library/busybox:latest"]);
        assert_eq!(list(&svc, &[&format!("target.digest==sha256:{}", "b".repeat(64))]).await, ["b"]);
        assert_eq!(list(&svc, &[&format!("target.mediatype=={INDEX}")]).await, ["b"]);
        assert_eq!(list(&svc, &["name==b", "labels.team"]).await.len(), 2);
        assert!(list(&svc, &["labels.none"]).await.is_empty());

        let mut changed = image("b", 'd', INDEX, &[("new", "1")]);
        changed.target = None;
        let mask = prost_types::FieldMask { paths: vec!["labels.new".into()] };
        let request =
            UpdateImageRequest { image: Some(changed.clone()), update_mask: Some(mask), source_date_epoch: None };
        let got = svc.update(req("default", request)).await.unwrap().into_inner().image.unwrap();
        assert_eq!(got.labels["new"], "1");
        assert_eq!(got.target.unwrap().digest, format!("sha256:{}", "b".repeat(64)));
        let mask = prost_types::FieldMask { paths: vec!["size".into()] };
        let request = UpdateImageRequest { image: Some(changed), update_mask: Some(mask), source_date_epoch: None };
        let err = svc.update(req("default", request)).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "cannot update \"size\" field on image \"b\""));

        let wrong = image("b", 'z', INDEX, &[]).target;
        let err = svc.delete(req("default", DeleteImageRequest { name: "b".into(), sync: true, target: wrong })).await;
        assert_eq!(err.unwrap_err().code(), Code::FailedPrecondition);
        svc.delete(req("default", DeleteImageRequest { name: "b".into(), sync: true, target: None })).await.unwrap();
        let err = svc.delete(req("default", DeleteImageRequest { name: "b".into(), sync: false, target: None })).await;
        assert_eq!(err.unwrap_err().code(), Code::NotFound);
        let err = svc.get(req("other", GetImageRequest { name: "docker.io/library/busybox:latest".into() })).await;
        assert_eq!(err.unwrap_err().code(), Code::NotFound);

        let mut topics = Vec::new();
        for _ in 0..4 {
            let envelope = subscription.next().await.unwrap();
            topics.push((envelope.topic.clone(), envelope.event.map(|e| e.type_url).unwrap_or_default()));
        }
        let expect = |t: &str, k: &str| (t.to_string(), format!("containerd.services.images.v1.{k}"));
        assert_eq!(
            topics,
            [
                expect("/images/create", "ImageCreate"),
                expect("/images/create", "ImageCreate"),
                expect("/images/update", "ImageUpdate"),
                expect("/images/delete", "ImageDelete"),
            ]
        );
    }
}
