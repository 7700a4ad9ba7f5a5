//! `containerd.services.diff.v1.Diff`: layers of the content store applied onto mounts, and
//! layers made from the difference of two mounts (`crate::diff`), as containerd's walking
//! differ and overlay applier do.
//!
//! Apply needs no mount for the two kinds snapshotters hand out: a bind mount is applied into
//! its source (a full tree: whiteouts delete), an overlay mount into its upperdir (overlay
//! whiteouts), as containerd's overlay applier does. Any other mount list is mounted on a
//! temporary directory under `<state>/diff`, and unmounted whatever happens ([`Mounted`]).

use std::collections::BTreeMap;
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use berth_proto::containerd::services::diff::v1::diff_server::{Diff, DiffServer};
use berth_proto::containerd::services::diff::v1::*;
use berth_proto::containerd::types::{Descriptor, Mount as ProtoMount};
use tonic::{Request, Response, Status};

use super::content::lease;
use super::{GrpcService, namespace, store_id};
use crate::content::{BlobStore, ContentStore, Digest, Writer};
use crate::diff::{self, LayerCompression, MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP, Whiteouts};
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

/// A name no other temporary mount point of this process has.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{prefix}-{}-{nanos}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Mounts on a temporary directory; unmounted and removed when dropped, on every path.
struct Mounted {
    dir: PathBuf,
    /// Mount points made, in order.
    points: Vec<PathBuf>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for point in self.points.iter().rev() {
            if let Ok(c) = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()) {
                // Detached: a reader still inside must not keep the mount (and berthd) stuck.
                if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                    let e = io::Error::last_os_error();
                    tracing::warn!(path = %point.display(), error = %e, "unmounting a diff mount");
                }
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            tracing::warn!(path = %self.dir.display(), error = %e, "removing a diff mount point");
        }
    }
}

fn mount_error(m: &Mount, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("mounting {} {:?} on a temporary directory: {e}", m.kind, m.source))
}

/// Mounts `mounts` in order on a new directory under `tmp`, read-only if `readonly`.
fn mount_all(mounts: &[Mount], tmp: &Path, readonly: bool) -> Result<Mounted> {
    std::fs::create_dir_all(tmp).map_err(|e| Error::Internal(format!("making {}: {e}", tmp.display())))?;
    let dir = tmp.join(unique("mount"));
    std::fs::create_dir(&dir).map_err(|e| Error::Internal(format!("making {}: {e}", dir.display())))?;
    let mut mounted = Mounted { dir: dir.clone(), points: Vec::new() };
    for m in mounts {
        let rel = Path::new(&m.target);
        if rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(Error::InvalidArgument(format!("mount target {:?} must be a relative path", m.target)));
        }
        let point = dir.join(rel);
        let mut flags: libc::c_ulong = 0;
        let mut data = Vec::new();
        for option in &m.options {
            match option.as_str() {
                "ro" => flags |= libc::MS_RDONLY,
                "rw" | "defaults" => {}
                "bind" => flags |= libc::MS_BIND,
                "rbind" => flags |= libc::MS_BIND | libc::MS_REC,
                "nosuid" => flags |= libc::MS_NOSUID,
                "nodev" => flags |= libc::MS_NODEV,
                "noexec" => flags |= libc::MS_NOEXEC,
                other => data.push(other),
            }
        }
        if m.kind == "bind" {
            flags |= libc::MS_BIND;
        }
        if readonly {
            flags |= libc::MS_RDONLY;
        }
        let c = |s: &str| std::ffi::CString::new(s).map_err(|_| mount_error(m, "a NUL byte in the mount"));
        let (source, target) = (c(&m.source)?, c(&point.to_string_lossy())?);
        let (kind, data) = (c(&m.kind)?, c(&data.join(","))?);
        let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), kind.as_ptr(), flags, data.as_ptr().cast()) };
        if rc != 0 {
            return Err(mount_error(m, io::Error::last_os_error()));
        }
        mounted.points.push(point.clone());
        if flags & libc::MS_BIND != 0 && flags & libc::MS_RDONLY != 0 {
            // A bind mount takes its read-only flag only from a remount.
            let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
            let rc =
                unsafe { libc::mount(std::ptr::null(), target.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
            if rc != 0 {
                return Err(mount_error(m, io::Error::last_os_error()));
            }
        }
    }
    Ok(mounted)
}

fn option<'a>(m: &'a Mount, key: &str) -> Option<&'a str> {
    m.options.iter().find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
}

/// Where a layer is applied: a directory, and the mounts held while it is.
struct ApplyTarget {
    path: PathBuf,
    whiteouts: Whiteouts,
    _mounted: Option<Mounted>,
}

fn apply_target(mounts: &[Mount], tmp: &Path) -> Result<ApplyTarget> {
    match mounts {
        [] => Err(Error::InvalidArgument("apply needs at least one mount".into())),
        [m] if m.kind == "bind" => {
            if m.options.iter().any(|o| o == "ro") {
                return Err(Error::InvalidArgument(format!("bind mount of {:?} is read-only", m.source)));
            }
            Ok(ApplyTarget { path: PathBuf::from(&m.source), whiteouts: Whiteouts::Delete, _mounted: None })
        }
        [m] if m.kind == "overlay" => {
            let upper = option(m, "upperdir").ok_or_else(|| {
                Error::InvalidArgument("overlay mount has no upperdir: a read-only view cannot take a layer".into())
            })?;
            Ok(ApplyTarget { path: PathBuf::from(upper), whiteouts: Whiteouts::Overlay, _mounted: None })
        }
        _ => {
            let mounted = mount_all(mounts, tmp, false)?;
            Ok(ApplyTarget { path: mounted.dir.clone(), whiteouts: Whiteouts::Delete, _mounted: Some(mounted) })
        }
    }
}

/// A tree to read a diff from: None for no mounts (an empty tree).
struct ReadTarget {
    path: Option<PathBuf>,
    _mounted: Option<Mounted>,
}

fn read_target(mounts: &[Mount], tmp: &Path) -> Result<ReadTarget> {
    match mounts {
        [] => Ok(ReadTarget { path: None, _mounted: None }),
        // Only read: the source is the tree, with no mount to make.
        [m] if m.kind == "bind" => Ok(ReadTarget { path: Some(PathBuf::from(&m.source)), _mounted: None }),
        _ => {
            let mounted = mount_all(mounts, tmp, true)?;
            Ok(ReadTarget { path: Some(mounted.dir.clone()), _mounted: Some(mounted) })
        }
    }
}

fn sync_fs(path: &Path) -> Result<()> {
    let dir = std::fs::File::open(path).map_err(|e| Error::Internal(format!("opening {}: {e}", path.display())))?;
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
        let e = io::Error::last_os_error();
        return Err(Error::Internal(format!("syncing the filesystem of {}: {e}", path.display())));
    }
    Ok(())
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
            let target = apply_target(&mounts, &tmp)?;
            let applied =
                diff::apply(BufReader::with_capacity(1 << 20, file), &media_type, &target.path, target.whiteouts)?;
            if sync {
                sync_fs(&target.path)?;
            }
            Ok(applied)
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
