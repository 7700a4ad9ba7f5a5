//! `containerd.services.diff.v1.Diff`: layers of the content store applied onto mounts, and
//! layers made from the difference of two mounts (`crate::diff`), as containerd's walking
//! differ and overlay applier do.
//!
//! How mounts are applied onto and read is `crate::diff::mounts`; temporary mounts go under
//! `<state>/diff`.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Write};
use std::path::PathBuf;

use berth_proto::containerd::services::diff::v1::diff_server::{Diff, DiffServer};
use berth_proto::containerd::services::diff::v1::*;
use berth_proto::containerd::types::{Descriptor, Mount as ProtoMount};
use tonic::{Request, Response, Status};

use super::content::lease;
use super::{GrpcService, namespace, store_id};
use crate::content::{BlobStore, ContentStore, Digest, Writer};
use crate::diff::mounts::{apply_to_mounts, read_target, unique};
use crate::diff::{self, LayerCompression, MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP};
use crate::mount::Mount;
use crate::plugin::{InitError, Instance, NoConfig, PluginKind, Registration, Requirement};
use crate::store::MetadataStore;
use crate::{Error, Result};

const SERVICE: &str = "containerd.services.diff.v1.Diff";

/// The label containerd puts on a layer it made: the digest of its uncompressed stream.
pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

/// Bytes of a made layer per content store write.
const WRITE_CHUNK: usize = 1 << 20;

struct DiffService {
    content: ContentStore,
    /// Where mounts that have to be mounted are mounted.
    tmp: PathBuf,
}

/// The Diff service plugin, `service.diff`: layers read from and written to `<root>/content`.
pub fn registration() -> Registration {
    Registration::new::<NoConfig, _, _>(PluginKind::Service, "diff", |ctx| {
        let store = ctx.get::<MetadataStore>(&store_id());
        let root = ctx.daemon_config().root.join("content");
        let tmp = ctx.daemon_config().state.join("diff");
        let grpc = ctx.daemon_config().grpc.clone();
        async move {
            let store = (*store.ok_or_else(|| InitError::Failed("metadata store not loaded".into()))?).clone();
            // The content service opens the same files: ingests are locked with flock, so two
            // openers are as safe as one.
            let blobs = tokio::task::spawn_blocking(move || BlobStore::open(&root))
                .await
                .map_err(|e| InitError::Failed(format!("opening the content store: {e}")))?
                .map_err(|e| InitError::Failed(e.to_string()))?;
            let service = DiffService { content: ContentStore::new(blobs, store), tmp };
            let server = DiffServer::new(service)
                .max_decoding_message_size(grpc.max_recv_message_size)
                .max_encoding_message_size(grpc.max_send_message_size);
            Ok(Instance::new(GrpcService::new(SERVICE, server)))
        }
    })
    .requires(Requirement::Plugin(store_id()))
    .describe(SERVICE)
}

fn from_proto(m: ProtoMount) -> Mount {
    Mount { kind: m.r#type, source: m.source, target: m.target, options: m.options }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("diff: a blocking task failed: {e}")))?
}

/// The made layer on its way into the content store, in chunks, from a blocking thread.
struct ContentSink<'a> {
    writer: &'a mut Writer,
    runtime: tokio::runtime::Handle,
    offset: u64,
    buf: Vec<u8>,
}

impl ContentSink<'_> {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(WRITE_CHUNK));
        // A blocking thread, not a runtime worker: block_on is allowed here.
        self.offset = self
            .runtime
            .block_on(self.writer.write(self.offset, chunk))
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(())
    }
}

impl Write for ContentSink<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[tonic::async_trait]
impl Diff for DiffService {
    async fn apply(&self, request: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        let ns = namespace(&request)?;
        let request = request.into_inner();
        let desc = request.diff.ok_or_else(|| Error::InvalidArgument("diff descriptor must be set".into()))?;
        let digest = Digest::parse(&desc.digest).map_err(|e| Error::from(e).context("apply"))?;
        let (_, file) = self.content.open(&ns, &digest).map_err(|e| e.context("apply"))?;
        let mounts: Vec<Mount> = request.mounts.into_iter().map(from_proto).collect();
        let (tmp, media_type, sync) = (self.tmp.clone(), desc.media_type, request.sync_fs);
        let context = format!("applying layer {digest}");
        let applied = blocking(move || {
            apply_to_mounts(BufReader::with_capacity(1 << 20, file), &media_type, &mounts, &tmp, sync)
        })
        .await
        .map_err(|e| e.context(context))?;
        let applied = Descriptor {
            media_type: MEDIA_TYPE_TAR.into(),
            digest: applied.digest.to_string(),
            size: i64::try_from(applied.size).unwrap_or(i64::MAX),
            annotations: Default::default(),
        };
        Ok(Response::new(ApplyResponse { applied: Some(applied) }))
    }

    async fn diff(&self, request: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        let ns = namespace(&request)?;
        let lease = lease(&request)?;
        let request = request.into_inner();
        let compression = LayerCompression::from_media_type(&request.media_type).map_err(Error::from)?;
        let media_type =
            if request.media_type.is_empty() { MEDIA_TYPE_TAR_GZIP.to_owned() } else { request.media_type };
        if request.right.is_empty() {
            return Err(Error::InvalidArgument("diff needs the right mounts".into()).into());
        }
        let reference = if request.r#ref.is_empty() { unique("diff") } else { request.r#ref };
        let epoch = request.source_date_epoch.map(|t| t.seconds);
        let mut writer = self.content.writer(&ns, &reference, 0, None, lease.clone()).await?;

        let (left, right) = (
            request.left.into_iter().map(from_proto).collect::<Vec<_>>(),
            request.right.into_iter().map(from_proto).collect::<Vec<_>>(),
        );
        let tmp = self.tmp.clone();
        let runtime = tokio::runtime::Handle::current();
        let made = tokio::task::spawn_blocking(move || {
            let result = (|| {
                let (left, right) = (read_target(&left, &tmp)?, read_target(&right, &tmp)?);
                let right = right.path.as_deref().expect("right mounts were checked");
                let mut sink =
                    ContentSink { writer: &mut writer, runtime, offset: 0, buf: Vec::with_capacity(WRITE_CHUNK) };
                let layer = diff::write_layer(left.path.as_deref(), right, &mut sink, compression, epoch)?;
                sink.flush().map_err(|e| Error::Internal(format!("writing the layer to the content store: {e}")))?;
                Ok::<_, Error>(layer)
            })();
            (writer, result)
        })
        .await
        .map_err(|e| Error::Internal(format!("diff: a blocking task failed: {e}")))?;
        let (mut writer, layer) = made;
        let committed = match layer {
            Ok(layer) => {
                let mut labels: BTreeMap<String, String> = request.labels.into_iter().collect();
                labels.insert(UNCOMPRESSED_LABEL.into(), layer.diff_id.to_string());
                writer.commit(layer.size, Some(layer.digest.clone()), labels).await.map(|_| layer)
            }
            Err(e) => Err(e),
        };
        let layer = match committed {
            Ok(layer) => layer,
            Err(e) => {
                drop(writer);
                if let Err(abort) = self.content.abort(&ns, &reference, lease).await {
                    tracing::warn!(%reference, error = %abort, "aborting the ingest of a failed diff");
                }
                return Err(e.context("diff").into());
            }
        };
        let diff = Descriptor {
            media_type,
            digest: layer.digest.to_string(),
            size: i64::try_from(layer.size).unwrap_or(i64::MAX),
            annotations: Default::default(),
        };
        Ok(Response::new(DiffResponse { diff: Some(diff) }))
    }
}
