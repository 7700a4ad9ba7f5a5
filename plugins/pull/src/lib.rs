//! berth's puller, plugin `service.pull`: images pulled from OCI registries inside berthd, served
//! as `berth.services.images.v1.Images` (Pull with a progress stream, GetOciImage).
//!
//! containerd 1.6 clients (`ctr images pull`) pull on the client side through the Content,
//! Images, Snapshots and Diff services; this service does the same work in the daemon, so a
//! client needs one call: the registry client is [`oci_client`] (anonymous, basic and bearer-token
//! auth; plain HTTP only for loopback registries and those the config lists as insecure). How a
//! pull stays resumable and safe is in [`pull`].
//!
//! ```
//! use berth_plugin_pull::pull::is_loopback;
//!
//! // Loopback registries are spoken to over plain HTTP; others need `insecure_registries`.
//! assert!(is_loopback("127.0.0.1:5000"));
//! assert!(!is_loopback("registry.example.com:5000"));
//! ```
#![warn(missing_docs)]

pub mod platform;
pub mod progress;
pub mod pull;

use std::collections::BTreeMap;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use berth_core::content::{BlobStore, ContentStore, Digest};
use berth_core::events::Exchange;
use berth_core::plugin::{InitError, Instance, PluginKind, Registration, Requirement};
use berth_core::services::{GrpcService, exchange_id, namespace, store_id};
use berth_core::snapshot::SharedSnapshotter;
use berth_core::snapshot::namespaced::Namespaced;
use berth_core::store::MetadataStore;
use berth_core::{Error, Result};
use berth_proto::berth::services::images::v1::images_server::{Images, ImagesServer};
use berth_proto::berth::services::images::v1::*;
use berth_proto::containerd::types::Descriptor as WireDescriptor;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::platform::Platform;
use crate::progress::Progress;
use crate::pull::{PullConfig, PullOptions, Puller};

const SERVICE: &str = "berth.services.images.v1.Images";

/// How often the progress stream sends what changed.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// The plugin: `service.pull`, serving `berth.services.images.v1.Images`.
pub fn registration() -> Registration {
    Registration::new::<PullConfig, _, _>(PluginKind::Service, "pull", |ctx| {
        let config = (*ctx.config::<PullConfig>()).clone();
        let store = ctx.get::<MetadataStore>(&store_id());
        let events = ctx.get::<Exchange>(&exchange_id());
        let backends = ctx.get_all::<SharedSnapshotter>(PluginKind::Snapshot);
        let root = ctx.daemon_config().root.join("content");
        let tmp = ctx.daemon_config().state.join("pull");
        let grpc = ctx.daemon_config().grpc.clone();
        async move {
            // The registry client speaks TLS through rustls; berth picks its crypto (ring) once.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let missing = |what: &str| InitError::Failed(format!("{what} not loaded"));
            let store = (*store.ok_or_else(|| missing("metadata store"))?).clone();
            let events = (*events.ok_or_else(|| missing("event exchange"))?).clone();
            if config.max_concurrent_downloads == 0 {
                return Err(InitError::Failed("max_concurrent_downloads must be at least 1".into()));
            }
            let blobs = tokio::task::spawn_blocking(move || BlobStore::open(&root))
                .await
                .map_err(|e| InitError::Failed(format!("opening the content store: {e}")))?
                .map_err(|e| InitError::Failed(e.to_string()))?;
            let snapshotters = backends
                .into_iter()
                .map(|(_, b)| {
                    let b = (*b).clone();
                    (b.name().to_owned(), Namespaced::new(store.clone(), b))
                })
                .collect::<BTreeMap<_, _>>();
            if !snapshotters.contains_key(&config.snapshotter) {
                tracing::warn!(snapshotter = %config.snapshotter, "the default snapshotter is not loaded: pulls must name one");
            }
            let puller = Puller { content: ContentStore::new(blobs, store.clone()), store, events, snapshotters, config, tmp };
            let server = ImagesServer::new(PullService { puller: Arc::new(puller) })
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

struct PullService {
    puller: Arc<Puller>,
}

fn wire(d: &berth_core::store::records::Descriptor) -> WireDescriptor {
    WireDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: d.annotations.clone().into_iter().collect(),
    }
}

type PullStream = Pin<Box<dyn Stream<Item = Result<PullResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Images for PullService {
    type PullStream = PullStream;

    async fn pull(&self, request: Request<PullRequest>) -> Result<Response<PullStream>, Status> {
        let ns = namespace(&request)?;
        let request = request.into_inner();
        if request.r#ref.is_empty() {
            return Err(Error::InvalidArgument("pull needs an image reference".into()).into());
        }
        let platform = match request.platform {
            Some(p) if p.os.is_empty() || p.architecture.is_empty() => {
                return Err(Error::InvalidArgument("a platform needs os and architecture".into()).into());
            }
            Some(p) => Some(Platform { os: p.os, architecture: p.architecture, variant: p.variant }),
            None => None,
        };
        let auth = request.auth.unwrap_or_default();
        let options = PullOptions {
            reference: request.r#ref,
            username: auth.username,
            password: auth.password,
            token: auth.token,
            snapshotter: request.snapshotter,
            skip_unpack: request.skip_unpack,
            platform,
        };
        let (tx, rx) = mpsc::channel(16);
        let puller = self.puller.clone();
        tokio::spawn(async move {
            let progress = Arc::new(Progress::default());
            let mut changes = progress.subscribe();
            let pull = puller.pull(&ns, options, progress.clone());
            tokio::pin!(pull);
            let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
            loop {
                tokio::select! {
                    result = &mut pull => {
                        let last = result.map(|image| PullResponse {
                            progress: progress.snapshot(),
                            target: image.target.as_ref().map(wire),
                            image: image.name,
                        });
                        let _ = tx.send(last.map_err(Status::from)).await;
                        return;
                    }
                    _ = tick.tick() => {
                        if changes.has_changed().unwrap_or(false) {
                            changes.mark_unchanged();
                            let update = PullResponse { progress: progress.snapshot(), ..Default::default() };
                            // The client went away: the pull stops here (dropping it aborts the
                            // downloads); what was fetched stays in its ingests for the next one.
                            if tx.send(Ok(update)).await.is_err() {
                                tracing::info!("pull cancelled: the client went away");
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_oci_image(
        &self,
        request: Request<GetOciImageRequest>,
    ) -> Result<Response<GetOciImageResponse>, Status> {
        let ns = namespace(&request)?;
        let name = request.into_inner().name;
        let puller = self.puller.clone();
        let response = tokio::task::spawn_blocking(move || oci_image(&puller, &ns, &name))
            .await
            .map_err(|e| Error::Internal(format!("reading an image: {e}")))??;
        Ok(Response::new(response))
    }
}

/// Reads blob `digest` of `ns` (at most 8 MiB: a document, not a layer).
fn read_document(content: &ContentStore, ns: &str, digest: &str, what: &str) -> Result<Vec<u8>> {
    let parsed = Digest::parse(digest).map_err(|e| Error::from(e).context(what.to_owned()))?;
    let (_, file) = content.open(ns, &parsed).map_err(|e| e.context(what.to_owned()))?;
    let mut out = Vec::new();
    file.take(8 << 20).read_to_end(&mut out).map_err(|e| Error::Internal(format!("reading {what}: {e}")))?;
    Ok(out)
}

#[derive(serde::Deserialize)]
struct Doc {
    #[serde(default)]
    manifests: Option<Vec<DocDesc>>,
    #[serde(default)]
    config: Option<DocDesc>,
}

#[derive(serde::Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct DocDesc {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    platform: Option<Platform>,
}

impl DocDesc {
    fn wire(&self) -> WireDescriptor {
        WireDescriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: Default::default(),
        }
    }
}

fn oci_image(puller: &Puller, ns: &str, name: &str) -> Result<GetOciImageResponse> {
    let image = puller.store.get_image(ns, name)?;
    let target =
        image.target.clone().ok_or_else(|| Error::FailedPrecondition(format!("image \"{name}\" has no target")))?;
    let parse = |bytes: &[u8], what: &str| -> Result<Doc> {
        serde_json::from_slice(bytes).map_err(|e| Error::InvalidArgument(format!("{what} is not valid JSON: {e}")))
    };
    let what = format!("image \"{name}\": target {}", target.digest);
    let top = read_document(&puller.content, ns, &target.digest, &what)?;
    let top_doc = parse(&top, &what)?;
    let (manifest_desc, manifest) = match top_doc.manifests {
        Some(entries) => {
            let platforms: Vec<_> = entries.iter().map(|e| e.platform.clone()).collect();
            let host = Platform::host();
            let i = platform::choose(&platforms, &host).ok_or_else(|| {
                Error::NotFound(format!("image \"{name}\": a manifest for {} in its index", host.display()))
            })?;
            let child = entries[i].clone();
            let what = format!("image \"{name}\": manifest {}", child.digest);
            (child.wire(), read_document(&puller.content, ns, &child.digest, &what)?)
        }
        None => (wire(&target), top),
    };
    let what = format!("image \"{name}\": manifest {}", manifest_desc.digest);
    let config_desc =
        parse(&manifest, &what)?.config.ok_or_else(|| Error::InvalidArgument(format!("{what} has no config")))?;
    let config = read_document(
        &puller.content,
        ns,
        &config_desc.digest,
        &format!("image \"{name}\": config {}", config_desc.digest),
    )?;
    Ok(GetOciImageResponse {
        name: name.to_owned(),
        target: Some(wire(&target)),
        manifest_descriptor: Some(manifest_desc),
        manifest,
        config_descriptor: Some(config_desc.wire()),
        config,
    })
}
