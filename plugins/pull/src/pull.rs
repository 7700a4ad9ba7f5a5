//! One pull: resolve the reference on its registry, fetch the manifest (picking the host's
//! platform from an index), the config and the layers into the content store, unpack the layers
//! into the snapshotter, record the image.
//!
//! What makes it safe and resumable:
//! * Everything is held by a lease of its own from the first write to the image record, so a
//!   garbage collection in between cannot take half of it; the lease goes when the pull ends.
//! * A blob goes through an ingest named after it (`layer-sha256:...`): a pull that was
//!   interrupted left the bytes it had, and the next one asks the registry for the rest only
//!   (an HTTP range request). The content store checks size and digest before the blob appears;
//!   a blob whose digest does not match is refused, its ingest dropped, and the pull fails.
//! * Layers download in parallel (`max_concurrent_downloads`) while they are unpacked in order as
//!   soon as each one and its parent are there. Each unpack goes into a fresh active snapshot
//!   committed under the layer's chain ID only once the layer's uncompressed digest is the one
//!   the config lists; a chain ID already committed is not unpacked again.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_core::content::{ContentStore, Digest};
use berth_core::diff::mounts::{apply_to_mounts, unique};
use berth_core::events::Exchange;
use berth_core::snapshot::Kind;
use berth_core::snapshot::namespaced::Namespaced;
use berth_core::store::MetadataStore;
use berth_core::store::records::{ContentInfo, Descriptor, Image, Lease};
use berth_core::{Error, Result};
use futures::StreamExt;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use crate::platform::{self, Platform};
use crate::progress::{Item, Progress, Status};

/// The OCI image index media type (what a multi-platform tag names).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker's manifest list: an index.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker's schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const ACCEPTED: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Largest manifest, index or config read into memory.
const MAX_DOCUMENT: u64 = 8 << 20;
/// Bytes per content store write.
const WRITE_CHUNK: usize = 1 << 20;
/// How long the pull's lease lasts if berthd dies before it can delete it.
const LEASE_TTL: Duration = Duration::from_secs(3600);

const GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
const GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot";
const UNCOMPRESSED: &str = "containerd.io/uncompressed";
const DISTRIBUTION_SOURCE: &str = "containerd.io/distribution.source";

/// `[plugins."service.pull"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PullConfig {
    /// The snapshotter images are unpacked into when the request names none.
    pub snapshotter: String,
    /// Layers fetched at once per pull.
    pub max_concurrent_downloads: usize,
    /// Registries (`host[:port]`) spoken to over plain HTTP. Loopback ones always are.
    pub insecure_registries: Vec<String>,
    /// Times a blob download that broke off is taken up again where it stopped.
    pub retries: u32,
    /// Seconds to wait for a registry connection.
    pub connect_timeout_secs: u64,
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            snapshotter: "overlayfs".into(),
            max_concurrent_downloads: 3,
            insecure_registries: Vec::new(),
            retries: 3,
            connect_timeout_secs: 10,
        }
    }
}

/// What to pull and how.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// The reference as the user wrote it.
    pub reference: String,
    /// Basic credentials: the user name...
    pub username: String,
    /// ...and its password.
    pub password: String,
    /// A bearer token (instead of credentials).
    pub token: String,
    /// Snapshotter; empty: the configured default.
    pub snapshotter: String,
    /// Fetch only.
    pub skip_unpack: bool,
    /// None: the host's.
    pub platform: Option<Platform>,
}

/// The puller: what every pull shares.
pub struct Puller {
    pub(crate) content: ContentStore,
    pub(crate) store: MetadataStore,
    pub(crate) events: Exchange,
    pub(crate) snapshotters: BTreeMap<String, Namespaced>,
    pub(crate) config: PullConfig,
    /// Where mounts that must be mounted to apply a layer go.
    pub(crate) tmp: PathBuf,
}

/// A descriptor as manifests spell it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Desc {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    platform: Option<Platform>,
}

/// An index or a manifest, as much of it as the pull reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    schema_version: u32,
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    manifests: Option<Vec<Desc>>,
    #[serde(default)]
    config: Option<Desc>,
    #[serde(default)]
    layers: Vec<Desc>,
}

#[derive(Debug, Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// The registry side of one pull.
struct Remote {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
    host: String,
}

/// Whether `host` (`name[:port]`) is a loopback address or name.
pub fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(n, port)| if port.parse::<u16>().is_ok() { n } else { host }),
    };
    name == "localhost"
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        || name.ends_with(".localhost")
}

/// A registry failure as a berth error naming the registry and what was asked.
fn registry_error(host: &str, what: &str, e: OciDistributionError) -> Error {
    match e {
        OciDistributionError::UnauthorizedError { url } => Error::Unauthenticated(format!(
            "registry {host} refused {what}: the credentials are wrong or missing ({url} answered 401)"
        )),
        OciDistributionError::AuthenticationFailure(m) => {
            Error::Unauthenticated(format!("registry {host}: authenticating for {what} failed: {m}"))
        }
        OciDistributionError::RegistryError { envelope, url } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let detail = envelope.errors.iter().map(|e| format!("{:?}: {}", e.code, e.message)).collect::<Vec<_>>();
            let detail = detail.join("; ");
            if codes.iter().any(|c| matches!(c, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown)) {
                Error::NotFound(format!("{what} on registry {host} ({detail})"))
            } else if codes.iter().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                Error::Unauthenticated(format!("registry {host} refused {what}: {detail} ({url})"))
            } else if codes.iter().any(|c| matches!(c, OciErrorCode::BlobUnknown)) {
                Error::NotFound(format!("{what} on registry {host} ({detail})"))
            } else {
                Error::Unavailable(format!("registry {host} failed {what}: {detail} ({url})"))
            }
        }
        OciDistributionError::ImageManifestNotFoundError(m) => {
            Error::NotFound(format!("{what} on registry {host} ({m})"))
        }
        OciDistributionError::ServerError { code: 404, url, .. } => {
            Error::NotFound(format!("{what} on registry {host} ({url} answered 404)"))
        }
        OciDistributionError::ServerError { code, url, message } => {
            Error::Unavailable(format!("registry {host} failed {what}: {url} answered {code}: {}", message.trim()))
        }
        OciDistributionError::RequestError(e) => {
            let mut chain = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                chain.push_str(": ");
                chain.push_str(&s.to_string());
                source = s.source();
            }
            Error::Unavailable(format!("registry {host} is unreachable ({what}): {chain}"))
        }
        other => Error::Unavailable(format!("registry {host}, {what}: {other}")),
    }
}

/// Whether a download error is worth taking up again where it stopped.
fn retryable(e: &Error) -> bool {
    matches!(e, Error::Unavailable(_))
}

fn chain_id(parent: Option<&str>, diff_id: &str) -> String {
    match parent {
        None => diff_id.to_owned(),
        Some(parent) => {
            format!("sha256:{}", berth_core::content::digest::hex(&Sha256::digest(format!("{parent} {diff_id}"))))
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    // Civil date from days since the epoch (Howard Hinnant's algorithm): no date crate for one label.
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn record_descriptor(d: &Desc) -> Descriptor {
    Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: Default::default(),
    }
}

fn parse_document(bytes: &[u8], what: &str) -> Result<Document> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::InvalidArgument(format!("{what} is not a valid manifest or index: {e}")))
}

impl Puller {
    fn remote(&self, options: &PullOptions) -> Result<Remote> {
        let reference: Reference = options
            .reference
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("image reference {:?}: {e}", options.reference)))?;
        let host = reference.resolve_registry().to_owned();
        let plain_http = is_loopback(&host) || self.config.insecure_registries.iter().any(|r| r == &host);
        let config = ClientConfig {
            protocol: if plain_http { ClientProtocol::Http } else { ClientProtocol::Https },
            connect_timeout: Some(Duration::from_secs(self.config.connect_timeout_secs.max(1))),
            max_concurrent_download: self.config.max_concurrent_downloads.max(1),
            ..Default::default()
        };
        let auth = if !options.token.is_empty() {
            RegistryAuth::Bearer(options.token.clone())
        } else if !options.username.is_empty() {
            RegistryAuth::Basic(options.username.clone(), options.password.clone())
        } else {
            RegistryAuth::Anonymous
        };
        Ok(Remote { client: Client::new(config), reference, auth, host })
    }

    fn snapshotter(&self, name: &str) -> Result<&Namespaced> {
        let name = if name.is_empty() { self.config.snapshotter.as_str() } else { name };
        self.snapshotters.get(name).ok_or_else(|| {
            let loaded: Vec<_> = self.snapshotters.keys().map(String::as_str).collect();
            Error::NotFound(format!(
                "snapshotter \"{name}\" (loaded: {})",
                if loaded.is_empty() { "none".to_string() } else { loaded.join(", ") }
            ))
        })
    }

    /// Pulls `options.reference` into namespace `ns`, reporting on `progress`. Returns the image
    /// record.
    pub async fn pull(self: &Arc<Self>, ns: &str, options: PullOptions, progress: Arc<Progress>) -> Result<Image> {
        let remote = Arc::new(self.remote(&options)?);
        if !options.skip_unpack {
            self.snapshotter(&options.snapshotter)?;
        }
        let name = remote.reference.whole();
        let lease = unique("pull");
        let labels = [("containerd.io/gc.expire".to_owned(), rfc3339(SystemTime::now() + LEASE_TTL))].into();
        self.store.create_lease(ns, Lease { id: lease.clone(), created_at: None, labels }).await?;
        let guard = LeaseGuard { store: self.store.clone(), ns: ns.to_owned(), lease: lease.clone() };
        let result = self.pull_leased(ns, &options, &remote, &lease, &progress).await;
        let target = result.map_err(|e| e.context(format!("pulling {name}")))?;
        let image = self.record_image(ns, &name, target).await;
        drop(guard);
        image
    }

    async fn pull_leased(
        self: &Arc<Self>,
        ns: &str,
        options: &PullOptions,
        remote: &Arc<Remote>,
        lease: &str,
        progress: &Arc<Progress>,
    ) -> Result<Descriptor> {
        let want = options.platform.clone().unwrap_or_else(Platform::host);
        let resolving = progress.add(&remote.reference.whole(), 0);
        progress.set(resolving, Status::Resolving);
        let what = format!("image {}", remote.reference.whole());
        let (bytes, digest) = remote
            .client
            .pull_manifest_raw(&remote.reference, &remote.auth, ACCEPTED)
            .await
            .map_err(|e| registry_error(&remote.host, &what, e))?;
        progress.set(resolving, Status::Done);
        let top = parse_document(&bytes, &what)?;
        let top_media_type = if !top.media_type.is_empty() {
            top.media_type.clone()
        } else if top.manifests.is_some() {
            OCI_INDEX.to_owned()
        } else {
            OCI_MANIFEST.to_owned()
        };
        let target = Desc {
            media_type: top_media_type.clone(),
            digest: digest.clone(),
            size: bytes.len() as i64,
            platform: None,
        };

        let (manifest_desc, manifest, manifest_bytes) = match &top.manifests {
            Some(entries) => {
                let platforms: Vec<_> = entries.iter().map(|e| e.platform.clone()).collect();
                let chosen = platform::choose(&platforms, &want).ok_or_else(|| {
                    let offered: Vec<_> = platforms.iter().flatten().map(Platform::display).collect();
                    Error::NotFound(format!(
                        "{what}: no manifest for platform {} in its index (it has {})",
                        want.display(),
                        if offered.is_empty() { "none".into() } else { offered.join(", ") }
                    ))
                })?;
                let child = entries[chosen].clone();
                let mut labels = BTreeMap::new();
                for (i, e) in entries.iter().enumerate() {
                    labels.insert(format!("{GC_REF_CONTENT}.m.{i}"), e.digest.clone());
                }
                self.put_document(ns, remote, lease, progress, "index", &target, &bytes, labels).await?;
                // Manifests come from the manifests endpoint, by digest (which oci-client verifies).
                let by_digest = remote.reference.clone_with_digest(child.digest.clone());
                let what = format!("manifest {} of {what}", child.digest);
                let (child_bytes, _) = remote
                    .client
                    .pull_manifest_raw(&by_digest, &remote.auth, ACCEPTED)
                    .await
                    .map_err(|e| registry_error(&remote.host, &what, e))?;
                (child.clone(), parse_document(&child_bytes, &what)?, child_bytes.to_vec())
            }
            None => (target.clone(), top, bytes.to_vec()),
        };
        if manifest.schema_version != 2 {
            return Err(Error::InvalidArgument(format!(
                "{what}: manifest schema version {} is not supported (only 2)",
                manifest.schema_version
            )));
        }
        let config = manifest.config.clone().ok_or_else(|| {
            Error::InvalidArgument(format!("{what}: manifest {} has no config", manifest_desc.digest))
        })?;
        let mut labels = BTreeMap::new();
        labels.insert(format!("{GC_REF_CONTENT}.config"), config.digest.clone());
        for (i, l) in manifest.layers.iter().enumerate() {
            labels.insert(format!("{GC_REF_CONTENT}.l.{i}"), l.digest.clone());
        }
        // Stored with the labels that name its config and layers, for the collector.
        self.put_document(ns, remote, lease, progress, "manifest", &manifest_desc, &manifest_bytes, labels).await?;
        let config_bytes = self.fetch_document(ns, remote, lease, progress, "config", &config).await?;
        let image_config: ImageConfig = serde_json::from_slice(&config_bytes).map_err(|e| {
            Error::InvalidArgument(format!("{what}: config {} is not an image config: {e}", config.digest))
        })?;
        if !options.skip_unpack && image_config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::InvalidArgument(format!(
                "{what}: the manifest has {} layers but the config lists {} diff IDs",
                manifest.layers.len(),
                image_config.rootfs.diff_ids.len()
            )));
        }

        // Layers: downloads start in layer order, as many at a time as configured (a download
        // gives its place up once its bytes are in, before the blob's fsync); unpacking takes
        // them in order as they land, so the first layers are wanted first.
        let permits = Arc::new(Semaphore::new(self.config.max_concurrent_downloads.max(1)));
        let running = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut landed = Vec::new();
        let mut jobs = Vec::new();
        for layer in &manifest.layers {
            let item = progress.add(&format!("layer-{}", layer.digest), layer.size.max(0) as u64);
            let (done, landing) = tokio::sync::oneshot::channel::<Result<()>>();
            landed.push((item, landing));
            jobs.push((item, layer.clone(), done));
        }
        let dispatcher = {
            let (this, remote, running) = (self.clone(), remote.clone(), running.clone());
            let (ns, lease, progress) = (ns.to_owned(), lease.to_owned(), progress.clone());
            tokio::spawn(async move {
                for (item, layer, done) in jobs {
                    let Ok(permit) = permits.clone().acquire_owned().await else { return };
                    let (this, remote) = (this.clone(), remote.clone());
                    let (ns, lease, progress) = (ns.clone(), lease.clone(), progress.clone());
                    let download = tokio::spawn(async move {
                        let result = this.fetch_blob(
                            &ns,
                            &remote,
                            &lease,
                            &progress,
                            item,
                            &layer,
                            BTreeMap::new(),
                            Some(permit),
                        );
                        let _ = done.send(result.await);
                    });
                    running.lock().unwrap_or_else(|e| e.into_inner()).push(download.abort_handle());
                }
            })
        };
        let _abort_on_return = AbortAll { dispatcher: dispatcher.abort_handle(), running };

        let mut parent: Option<String> = None;
        for (i, (item, landing)) in landed.into_iter().enumerate() {
            let layer = &manifest.layers[i];
            landing
                .await
                .map_err(|_| Error::Internal(format!("downloading layer {}: the task ended", layer.digest)))??;
            if options.skip_unpack {
                continue;
            }
            let diff_id = &image_config.rootfs.diff_ids[i];
            let chain = chain_id(parent.as_deref(), diff_id);
            self.unpack(ns, &options.snapshotter, lease, progress, item, layer, diff_id, &chain, parent.as_deref())
                .await
                .inspect_err(|_| progress.set(item, Status::Failed))?;
            parent = Some(chain);
        }
        if let Some(top_chain) = &parent {
            // As containerd's unpacker: the config holds the unpacked snapshot for the collector.
            let snapshotter = self.snapshotter(&options.snapshotter)?.name().to_owned();
            let key = format!("{GC_REF_SNAPSHOT}.{snapshotter}");
            self.add_labels(ns, &config.digest, [(key, top_chain.clone())].into()).await?;
        }
        Ok(record_descriptor(&target))
    }

    /// Stores a document the pull already holds (the index or manifest it resolved).
    #[allow(clippy::too_many_arguments)]
    async fn put_document(
        &self,
        ns: &str,
        remote: &Remote,
        lease: &str,
        progress: &Progress,
        kind: &str,
        desc: &Desc,
        bytes: &[u8],
        mut labels: BTreeMap<String, String>,
    ) -> Result<()> {
        let item = progress.add(&format!("{kind}-{}", desc.digest), desc.size as u64);
        labels.insert(format!("{DISTRIBUTION_SOURCE}.{}", remote.host), remote.reference.repository().to_owned());
        let digest = Digest::parse(&desc.digest).map_err(Error::from)?;
        let reference = format!("{kind}-{}", desc.digest);
        match self.content.writer(ns, &reference, bytes.len() as u64, Some(digest.clone()), Some(lease.into())).await {
            Err(Error::AlreadyExists(_)) => {
                progress.set(item, Status::Exists);
                return self.add_labels(ns, &desc.digest, labels).await;
            }
            Err(e) => return Err(e),
            Ok(mut writer) => {
                writer.write(0, bytes.to_vec()).await?;
                writer.commit(bytes.len() as u64, Some(digest), labels).await?;
            }
        }
        progress.set(item, Status::Done);
        Ok(())
    }

    /// Fetches a small document (a manifest or config) into the content store and returns it.
    async fn fetch_document(
        &self,
        ns: &str,
        remote: &Remote,
        lease: &str,
        progress: &Progress,
        kind: &str,
        desc: &Desc,
    ) -> Result<Vec<u8>> {
        if desc.size < 0 || desc.size as u64 > MAX_DOCUMENT {
            return Err(Error::InvalidArgument(format!(
                "{kind} {}: {} bytes is not a plausible size (at most {MAX_DOCUMENT})",
                desc.digest, desc.size
            )));
        }
        let item = progress.add(&format!("{kind}-{}", desc.digest), desc.size as u64);
        self.fetch_blob(ns, remote, lease, progress, item, desc, BTreeMap::new(), None).await?;
        let digest = Digest::parse(&desc.digest).map_err(Error::from)?;
        let (_, file) = self.content.open(ns, &digest)?;
        let bytes = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut out = Vec::new();
            BufReader::new(file).take(MAX_DOCUMENT + 1).read_to_end(&mut out).map(|_| out)
        })
        .await
        .map_err(|e| Error::Internal(format!("reading {kind} {}: {e}", desc.digest)))?
        .map_err(|e| Error::Internal(format!("reading {kind} {}: {e}", desc.digest)))?;
        Ok(bytes)
    }

    /// Fetches blob `desc` into the content store through its ingest, resuming where an earlier
    /// attempt stopped, verified by the store before it is committed with `labels`.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_blob(
        &self,
        ns: &str,
        remote: &Remote,
        lease: &str,
        progress: &Progress,
        item: Item,
        desc: &Desc,
        mut labels: BTreeMap<String, String>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<()> {
        let digest = Digest::parse(&desc.digest).map_err(|e| Error::from(e).context("a manifest descriptor"))?;
        let size = u64::try_from(desc.size)
            .map_err(|_| Error::InvalidArgument(format!("blob {}: negative size {}", desc.digest, desc.size)))?;
        labels.insert(format!("{DISTRIBUTION_SOURCE}.{}", remote.host), remote.reference.repository().to_owned());
        let reference = format!("{}-{}", kind_of(&desc.media_type), desc.digest);
        let mut waited = Duration::ZERO;
        let mut writer = loop {
            match self.content.writer(ns, &reference, size, Some(digest.clone()), Some(lease.into())).await {
                Ok(writer) => break writer,
                Err(Error::AlreadyExists(_)) => {
                    progress.set(item, Status::Exists);
                    return self.add_labels(ns, &desc.digest, labels).await;
                }
                // Another pull is writing the same blob: wait for it to land.
                Err(Error::Unavailable(_)) if waited < Duration::from_secs(600) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    waited += Duration::from_millis(200);
                }
                Err(e) => return Err(e),
            }
        };
        let what = format!("blob {}", desc.digest);
        let mut attempts = 0;
        loop {
            let offset = writer.status()?.offset;
            progress.fetched(item, offset, size);
            if offset >= size {
                break;
            }
            progress.set(item, Status::Downloading);
            let fetched = match self.fetch_from(remote, desc, &what, offset, &mut writer, progress, item).await {
                Ok(()) => match writer.status()?.offset {
                    at if at < size => Err(Error::Unavailable(format!(
                        "registry {}: {what} ended at {at} of {size} bytes",
                        remote.host
                    ))),
                    _ => Ok(()),
                },
                Err(e) => Err(e),
            };
            match fetched {
                Ok(()) => {}
                Err(e) if retryable(&e) && attempts < self.config.retries => {
                    attempts += 1;
                    tracing::info!(blob = %desc.digest, attempt = attempts, error = %e, "download broke off; resuming");
                    tokio::time::sleep(Duration::from_millis(200 << attempts.min(5))).await;
                }
                Err(e) => return Err(e),
            }
        }
        // The bytes are in: the next download may start while this blob is synced and committed.
        drop(permit);
        match writer.commit(size, Some(digest), labels).await {
            Ok(_) => {}
            Err(e) => {
                // Bytes that do not hash to the digest must not be resumed from: start afresh next time.
                drop(writer);
                if let Err(abort) = self.content.abort(ns, &reference, Some(lease.into())).await {
                    tracing::warn!(%reference, error = %abort, "ingest of a refused blob left");
                }
                return Err(e.context(format!("{what} from registry {}", remote.host)));
            }
        }
        progress.set(item, Status::Done);
        Ok(())
    }

    /// One request for blob `desc` from `offset` on, written through `writer`.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_from(
        &self,
        remote: &Remote,
        desc: &Desc,
        what: &str,
        offset: u64,
        writer: &mut berth_core::content::Writer,
        progress: &Progress,
        item: Item,
    ) -> Result<()> {
        let response = remote
            .client
            .pull_blob_stream_partial(&remote.reference, desc.digest.as_str(), offset, None)
            .await
            .map_err(|e| registry_error(&remote.host, what, e))?;
        // A registry that ignores the range sends the whole blob: start over.
        let (mut at, stream) = match response {
            BlobResponse::Partial(s) => (offset, s),
            BlobResponse::Full(s) => (0, s),
        };
        let mut stream = stream.stream;
        let mut buf = Vec::with_capacity(WRITE_CHUNK);
        let mut first = true;
        loop {
            let chunk = stream.next().await;
            let done = chunk.is_none();
            match chunk {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    // Keep what came before the break: the next attempt resumes after it.
                    if !buf.is_empty() {
                        at = writer.write(at, std::mem::take(&mut buf)).await?;
                        progress.fetched(item, at, 0);
                    }
                    return Err(Error::Unavailable(format!("registry {}: reading {what}: {e}", remote.host)));
                }
                None => {}
            }
            if buf.len() >= WRITE_CHUNK || (done && (!buf.is_empty() || first)) {
                let data = std::mem::replace(&mut buf, Vec::with_capacity(WRITE_CHUNK));
                at = writer.write(at, data).await?;
                first = false;
                progress.fetched(item, at, 0);
            }
            if done {
                return Ok(());
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn unpack(
        &self,
        ns: &str,
        snapshotter: &str,
        lease: &str,
        progress: &Progress,
        item: Item,
        layer: &Desc,
        diff_id: &str,
        chain: &str,
        parent: Option<&str>,
    ) -> Result<()> {
        let sn = self.snapshotter(snapshotter)?;
        match sn.stat(ns, chain).await {
            Ok(info) if info.kind == Kind::Committed => {
                progress.set(item, Status::Unpacked);
                return Ok(());
            }
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        progress.set(item, Status::Unpacking);
        let key = format!("extract-{} {chain}", unique("pull"));
        let labels = [("containerd.io/snapshot.ref".to_owned(), chain.to_owned())].into();
        let mounts = sn.prepare(ns, &key, parent, labels, Some(lease.into())).await?;
        let applied = self.apply(ns, layer, mounts).await;
        let result = match applied {
            Ok(d) if d == diff_id => sn.commit(ns, chain, &key, Default::default(), Some(lease.into())).await,
            Ok(d) => Err(Error::InvalidArgument(format!(
                "layer {}: its content has diff ID {d}, but the image config says {diff_id}",
                layer.digest
            ))),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {}
            // Another pull unpacked the same chain meanwhile: theirs stands.
            Err(Error::AlreadyExists(_)) => {}
            Err(e) => {
                if let Err(undo) = sn.remove(ns, &key).await {
                    tracing::warn!(%key, error = %undo, "active snapshot of a failed unpack left");
                }
                return Err(e.context(format!("unpacking layer {}", layer.digest)));
            }
        }
        if sn.stat(ns, &key).await.is_ok() {
            let _ = sn.remove(ns, &key).await;
        }
        self.add_labels(ns, &layer.digest, [(UNCOMPRESSED.to_owned(), diff_id.to_owned())].into()).await?;
        progress.set(item, Status::Unpacked);
        Ok(())
    }

    /// Applies layer `layer` from the content store onto `mounts`; its uncompressed digest.
    async fn apply(&self, ns: &str, layer: &Desc, mounts: Vec<berth_core::mount::Mount>) -> Result<String> {
        let digest = Digest::parse(&layer.digest).map_err(Error::from)?;
        let (_, file) = self.content.open(ns, &digest)?;
        let (media_type, tmp) = (layer.media_type.clone(), self.tmp.clone());
        let applied = tokio::task::spawn_blocking(move || {
            apply_to_mounts(BufReader::with_capacity(1 << 20, file), &media_type, &mounts, &tmp, false)
        })
        .await
        .map_err(|e| Error::Internal(format!("applying layer {}: {e}", layer.digest)))??;
        Ok(applied.digest.to_string())
    }

    /// Adds `labels` to blob `digest`'s record in `ns`.
    async fn add_labels(&self, ns: &str, digest: &str, labels: BTreeMap<String, String>) -> Result<()> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let info = ContentInfo { digest: digest.to_owned(), labels, ..Default::default() };
        self.content.update(ns, info, paths).await.map(|_| ())
    }

    async fn record_image(&self, ns: &str, name: &str, target: Descriptor) -> Result<Image> {
        use berth_proto::containerd::services::images::v1::{ImageCreate, ImageUpdate};
        let image = Image { name: name.to_owned(), target: Some(target), ..Default::default() };
        let (image, topic, event) = match self.store.create_image(ns, image.clone()).await {
            Ok(created) => {
                let event = ImageCreate { name: name.into(), labels: created.labels.clone().into_iter().collect() };
                (
                    created,
                    "/images/create",
                    berth_core::events::pack("containerd.services.images.v1.ImageCreate", &event),
                )
            }
            Err(Error::AlreadyExists(_)) => {
                let updated = self.store.update_image(ns, image, vec!["target".into()]).await?;
                let event = ImageUpdate { name: name.into(), labels: updated.labels.clone().into_iter().collect() };
                (
                    updated,
                    "/images/update",
                    berth_core::events::pack("containerd.services.images.v1.ImageUpdate", &event),
                )
            }
            Err(e) => return Err(e),
        };
        if let Err(error) = self.events.publish(ns, topic, event) {
            tracing::warn!(%topic, %error, "event not published");
        }
        Ok(image)
    }
}

/// Ingest ref prefix for a blob of `media_type`, as containerd names them.
fn kind_of(media_type: &str) -> &'static str {
    if media_type.contains("config") {
        "config"
    } else if media_type.contains("manifest") || media_type.contains("index") {
        "manifest"
    } else {
        "layer"
    }
}

/// Deletes the pull's lease however the pull ends, cancelled (the client went away) included:
/// what the image does not hold is then the collector's, ingests stay to be resumed.
struct LeaseGuard {
    store: MetadataStore,
    ns: String,
    lease: String,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let (store, ns, lease) = (self.store.clone(), std::mem::take(&mut self.ns), std::mem::take(&mut self.lease));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            if let Err(e) = store.delete_lease(&ns, &lease).await {
                tracing::warn!(%lease, error = %e, "the pull's lease stays until it expires");
            }
        });
    }
}

/// Aborts the downloads still running (and those not started) when the pull returns early.
struct AbortAll {
    dispatcher: tokio::task::AbortHandle,
    running: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Drop for AbortAll {
    fn drop(&mut self) {
        self.dispatcher.abort();
        for handle in self.running.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in ["127.0.0.1:5000", "localhost", "localhost:5000", "[::1]:5000", "127.1.2.3", "reg.localhost:80"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["docker.io", "10.0.0.1:5000", "index.docker.io", "[2001:db8::1]:5000", "localhost.example.com"] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn chain_ids_as_the_oci_spec_defines_them() {
        let a = "sha256:aaaa";
        assert_eq!(chain_id(None, a), a);
        let expected =
            format!("sha256:{}", berth_core::content::digest::hex(&Sha256::digest("sha256:aaaa sha256:bbbb")));
        assert_eq!(chain_id(Some(a), "sha256:bbbb"), expected);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_083_199)), "2026-11-30T23:59:59Z");
    }

    #[test]
    fn registry_errors_name_the_registry_and_keep_their_category() {
        let e =
            registry_error("r:5000", "image r:5000/x:1", OciDistributionError::UnauthorizedError { url: "u".into() });
        assert!(matches!(e, Error::Unauthenticated(_)) && e.to_string().contains("r:5000"), "{e}");
        let e = registry_error(
            "r:5000",
            "image r:5000/x:1",
            OciDistributionError::ServerError { code: 404, url: "u".into(), message: String::new() },
        );
        assert!(matches!(e, Error::NotFound(_)) && e.to_string().contains("image r:5000/x:1"), "{e}");
    }
}
