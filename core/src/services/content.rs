//! `containerd.services.content.v1.Content`: the content store (`crate::content`) over gRPC, as
//! containerd's content service and its proxy client speak it (`ctr content ...`, pulls, imports).

use std::pin::Pin;
use std::sync::Arc;

use berth_proto::containerd::events::{ContentCreate, ContentDelete};
use berth_proto::containerd::services::content::v1::content_server::{Content, ContentServer};
use berth_proto::containerd::services::content::v1::*;
use futures::Stream;
use prost_types::Timestamp;
use tonic::{Request, Response, Status, Streaming};

use super::{GrpcService, exchange_id, namespace, publish, store_id};
use crate::Error;
use crate::content::{BlobStore, ContentStore, Digest, IngestStatus, Writer};
use crate::events::Exchange;
use crate::filters::{Adaptor, FilterSet, map_field};
use crate::plugin::{InitError, Instance, NoConfig, PluginKind, Registration, Requirement};
use crate::store::{ContentInfo, MetadataStore};

const SERVICE: &str = "containerd.services.content.v1.Content";

/// The gRPC metadata key naming the lease a request works under, as in containerd.
pub const LEASE_HEADER: &str = "containerd-lease";

/// Largest piece of a blob one Read message carries (containerd's read buffer).
const READ_CHUNK: usize = 1 << 20;

/// Infos per List message, as containerd sends them.
const LIST_BLOCK: usize = 100;

struct ContentService {
    content: ContentStore,
    events: Exchange,
    /// Bytes of blob data per Read message: READ_CHUNK, less if the send limit is smaller.
    read_chunk: usize,
}

/// The Content service plugin, `service.content`: blobs under `<root>/content`, records in the
/// metadata store.
pub fn registration() -> Registration {
    Registration::new::<NoConfig, _, _>(PluginKind::Service, "content", |ctx| {
        let store = ctx.get::<MetadataStore>(&store_id());
        let events = ctx.get::<Exchange>(&exchange_id());
        let root = ctx.daemon_config().root.join("content");
        let grpc = ctx.daemon_config().grpc.clone();
        async move {
            let missing = |what: &str| InitError::Failed(format!("{what} not loaded"));
            let store = (*store.ok_or_else(|| missing("metadata store"))?).clone();
            let events = (*events.ok_or_else(|| missing("event exchange"))?).clone();
            let blobs = tokio::task::spawn_blocking(move || BlobStore::open(&root))
                .await
                .map_err(|e| InitError::Failed(format!("opening the content store: {e}")))?
                .map_err(|e| InitError::Failed(e.to_string()))?;
            let read_chunk = READ_CHUNK.min(grpc.max_send_message_size.saturating_sub(1024)).max(1);
            let service = ContentService { content: ContentStore::new(blobs, store), events, read_chunk };
            let server = ContentServer::new(service)
                .max_decoding_message_size(grpc.max_recv_message_size)
                .max_encoding_message_size(grpc.max_send_message_size);
            Ok(Instance::new(GrpcService::new(SERVICE, server)))
        }
    })
    .requires(Requirement::Plugin(store_id()))
    .requires(Requirement::Plugin(exchange_id()))
    .describe(SERVICE)
}

/// The lease a request works under, if it names one.
pub fn lease<T>(request: &Request<T>) -> Result<Option<String>, Error> {
    let Some(value) = request.metadata().get(LEASE_HEADER) else { return Ok(None) };
    let lease =
        value.to_str().map_err(|_| Error::InvalidArgument(format!("{LEASE_HEADER} metadata is not valid ASCII")))?;
    Ok((!lease.is_empty()).then(|| lease.to_owned()))
}

impl Adaptor for ContentInfo {
    /// `digest`, `size` and `labels.<key>`: containerd's `adaptContentInfo` (whose `size` is a
    /// TODO; here it is the size in bytes, in decimal).
    fn field(&self, path: &[String]) -> Option<String> {
        let (first, rest) = path.split_first()?;
        match (first.as_str(), rest) {
            ("digest", []) => (!self.digest.is_empty()).then(|| self.digest.clone()),
            ("size", []) => Some(self.size.to_string()),
            ("labels", key) => map_field(key, &self.labels),
            _ => None,
        }
    }
}

impl Adaptor for IngestStatus {
    /// `ref`, as containerd's `adaptContentStatus`.
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [field] if field == "ref" => Some(self.reference.clone()),
            _ => None,
        }
    }
}

fn to_info(c: ContentInfo) -> Info {
    Info {
        digest: c.digest,
        size: c.size,
        created_at: c.created_at,
        updated_at: c.updated_at,
        labels: c.labels.into_iter().collect(),
    }
}

fn to_status(s: IngestStatus) -> berth_proto::containerd::services::content::v1::Status {
    berth_proto::containerd::services::content::v1::Status {
        started_at: Some(Timestamp::from(s.started_at)),
        updated_at: Some(Timestamp::from(s.updated_at)),
        r#ref: s.reference,
        offset: to_i64(s.offset),
        total: to_i64(s.total),
        expected: s.expected.map(|d| d.to_string()).unwrap_or_default(),
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A digest from a request; containerd answers a bad one with InvalidArgument too.
fn digest(digest: &str) -> Result<Digest, Error> {
    Ok(Digest::parse(digest)?)
}

#[tonic::async_trait]
impl Content for ContentService {
    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let ns = namespace(&request)?;
        let digest = digest(&request.into_inner().digest)?;
        let info = self.content.info(&ns, &digest)?;
        Ok(Response::new(InfoResponse { info: Some(to_info(info)) }))
    }

    async fn update(&self, request: Request<UpdateRequest>) -> Result<Response<UpdateResponse>, Status> {
        let ns = namespace(&request)?;
        let request = request.into_inner();
        let info = request.info.ok_or_else(|| Error::InvalidArgument("info must be set in the request".into()))?;
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        let record =
            ContentInfo { digest: info.digest, labels: info.labels.into_iter().collect(), ..Default::default() };
        let updated = self.content.update(&ns, record, paths).await?;
        Ok(Response::new(UpdateResponse { info: Some(to_info(updated)) }))
    }

    type ListStream = Pin<Box<dyn Stream<Item = Result<ListContentResponse, Status>> + Send>>;

    async fn list(&self, request: Request<ListContentRequest>) -> Result<Response<Self::ListStream>, Status> {
        let ns = namespace(&request)?;
        let filters = FilterSet::parse_all(&request.into_inner().filters)?;
        let infos: Vec<Info> = self.content.list(&ns, &|c| filters.matches(c))?.into_iter().map(to_info).collect();
        let blocks: Vec<_> =
            infos.chunks(LIST_BLOCK).map(|block| Ok(ListContentResponse { info: block.to_vec() })).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(blocks))))
    }

    async fn delete(&self, request: Request<DeleteContentRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let lease = lease(&request)?;
        let digest = digest(&request.into_inner().digest)?;
        self.content.delete(&ns, &digest, lease).await?;
        publish(&self.events, &ns, "/content/delete", "ContentDelete", &ContentDelete { digest: digest.to_string() });
        Ok(Response::new(()))
    }

    type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadContentResponse, Status>> + Send>>;

    async fn read(&self, request: Request<ReadContentRequest>) -> Result<Response<Self::ReadStream>, Status> {
        let ns = namespace(&request)?;
        let request = request.into_inner();
        let digest = digest(&request.digest)?;
        let (info, file) = self.content.open(&ns, &digest)?;
        let size = u64::try_from(info.size).unwrap_or(0);
        let offset = u64::try_from(request.offset).unwrap_or(0);
        if offset > size {
            return Err(Error::InvalidArgument(format!(
                "read at offset {offset} is past the end of content {digest}, {size} bytes long"
            ))
            .into());
        }
        let end = match u64::try_from(request.size) {
            Ok(n) if n > 0 => offset.saturating_add(n).min(size),
            _ => size,
        };
        Ok(Response::new(Box::pin(read_stream(Arc::new(file), digest, offset, end, self.read_chunk))))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let ns = namespace(&request)?;
        let status = self.content.status(&ns, &request.into_inner().r#ref).await?;
        Ok(Response::new(StatusResponse { status: Some(to_status(status)) }))
    }

    async fn list_statuses(
        &self,
        request: Request<ListStatusesRequest>,
    ) -> Result<Response<ListStatusesResponse>, Status> {
        let ns = namespace(&request)?;
        let filters = FilterSet::parse_all(&request.into_inner().filters)?;
        let statuses = self.content.list_statuses(&ns).await?;
        let statuses = statuses.into_iter().filter(|s| filters.matches(s)).map(to_status).collect();
        Ok(Response::new(ListStatusesResponse { statuses }))
    }

    type WriteStream = Pin<Box<dyn Stream<Item = Result<WriteContentResponse, Status>> + Send>>;

    async fn write(
        &self,
        request: Request<Streaming<WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let ns = namespace(&request)?;
        let lease = lease(&request)?;
        let session = WriteSession::new(self.content.clone(), self.events.clone(), ns, lease);
        let incoming = request.into_inner();
        let stream = futures::stream::unfold((incoming, session), |(mut incoming, mut session)| async move {
            if session.done {
                return None;
            }
            let answer = match incoming.message().await {
                Ok(Some(message)) => session.handle(message).await,
                // The client closed its side: the session is over, and the ingest is let go.
                Ok(None) => return None,
                Err(status) => Err(status),
            };
            // The first error ends the stream, as in containerd.
            session.done = answer.is_err();
            Some((answer, (incoming, session)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn abort(&self, request: Request<AbortRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let lease = lease(&request)?;
        self.content.abort(&ns, &request.into_inner().r#ref, lease).await?;
        Ok(Response::new(()))
    }
}

/// Reads up to this size are made on the handler's own task rather than on a blocking thread.
const INLINE_READ: usize = 16 * 1024;

/// The messages of a Read: `[offset, end)` of `file` in pieces of `chunk` bytes, each read when the
/// client is ready for it: on a blocking thread, or at once if it is [`INLINE_READ`] or less.
fn read_stream(
    file: Arc<std::fs::File>,
    digest: Digest,
    offset: u64,
    end: u64,
    chunk: usize,
) -> impl Stream<Item = Result<ReadContentResponse, Status>> + Send {
    futures::stream::unfold(Some(offset), move |next| {
        let (file, digest) = (file.clone(), digest.clone());
        async move {
            let offset = next.filter(|&o| o < end)?;
            let len = usize::try_from(end - offset).unwrap_or(usize::MAX).min(chunk);
            let read_at = move || {
                let mut data = vec![0; len];
                std::os::unix::fs::FileExt::read_exact_at(&*file, &mut data, offset).map(|()| data)
            };
            // Manifests, configs and indexes are read here: a blocking thread's hand-off costs
            // more than the read, and would send the answer's HEADERS apart from its DATA.
            let read = if len <= INLINE_READ { Ok(read_at()) } else { tokio::task::spawn_blocking(read_at).await };
            match read {
                Ok(Ok(data)) => {
                    let message = ReadContentResponse { offset: to_i64(offset), data };
                    Some((Ok(message), Some(offset + len as u64)))
                }
                Ok(Err(e)) => {
                    let e = Error::Internal(format!("content store: reading blob {digest} at offset {offset}: {e}"));
                    Some((Err(e.into()), None))
                }
                Err(e) => {
                    let e = Error::Internal(format!("content store: reading blob {digest}: {e}"));
                    Some((Err(e.into()), None))
                }
            }
        }
    })
}

/// One Write stream: the writer its first message opened, and the expectations so far (the latest
/// given before or with the commit count, as in containerd).
struct WriteSession {
    content: ContentStore,
    events: Exchange,
    ns: String,
    lease: Option<String>,
    writer: Option<Writer>,
    total: u64,
    expected: Option<Digest>,
    done: bool,
}

fn expected_digest(expected: &str) -> Result<Option<Digest>, Error> {
    if expected.is_empty() { Ok(None) } else { Ok(Some(Digest::parse(expected)?)) }
}

impl WriteSession {
    fn new(content: ContentStore, events: Exchange, ns: String, lease: Option<String>) -> WriteSession {
        WriteSession { content, events, ns, lease, writer: None, total: 0, expected: None, done: false }
    }

    /// Answers one request, as containerd's `(*service).Write` loop does.
    async fn handle(&mut self, request: WriteContentRequest) -> Result<WriteContentResponse, Status> {
        let action = WriteAction::try_from(request.action)
            .map_err(|_| Error::InvalidArgument(format!("unknown write action {}", request.action)))?;
        let writer = match &mut self.writer {
            Some(writer) => writer,
            None => {
                if request.r#ref.is_empty() {
                    return Err(Error::InvalidArgument("first message must have a reference".into()).into());
                }
                self.total = u64::try_from(request.total).unwrap_or(0);
                self.expected = expected_digest(&request.expected)?;
                let writer = self
                    .content
                    .writer(&self.ns, &request.r#ref, self.total, self.expected.clone(), self.lease.clone())
                    .await?;
                self.writer.insert(writer)
            }
        };
        let status = writer.status()?;
        let mut answer =
            WriteContentResponse { action: request.action, offset: to_i64(status.offset), ..Default::default() };

        if let Some(expected) = expected_digest(&request.expected)? {
            if self.content.info(&self.ns, &expected).is_ok() {
                // Someone committed it meanwhile: this ingest is not needed any more.
                let reference = writer.reference().to_owned();
                self.writer = None;
                match self.content.abort(&self.ns, &reference, self.lease.clone()).await {
                    Ok(()) | Err(Error::NotFound(_)) => {}
                    Err(e) => tracing::warn!(%reference, error = %e, "aborting a write whose blob exists"),
                }
                return Err(Error::AlreadyExists(format!("content {expected}")).into());
            }
            self.expected = Some(expected);
        }
        if request.total > 0 {
            self.total = request.total as u64;
        }
        // What the ingest was started with holds unless the client says otherwise.
        let total = if self.total > 0 { self.total } else { status.total };
        let expected = self.expected.clone().or(status.expected.clone());

        match action {
            WriteAction::Stat => {
                answer.digest = writer.digest()?.to_string();
                answer.started_at = Some(Timestamp::from(status.started_at));
                answer.updated_at = Some(Timestamp::from(status.updated_at));
                answer.total = to_i64(total);
            }
            WriteAction::Write | WriteAction::Commit => {
                let offset = u64::try_from(request.offset).map_err(|_| {
                    Error::InvalidArgument(format!("write offset {} must not be negative", request.offset))
                })?;
                answer.offset = to_i64(writer.write(offset, request.data).await?);
                if action == WriteAction::Commit {
                    let labels = request.labels.into_iter().collect();
                    let committed = writer.commit(total, expected, labels).await?;
                    if !committed.created {
                        return Err(Error::AlreadyExists(format!("content {}", committed.info.digest)).into());
                    }
                    let event = ContentCreate { digest: committed.info.digest.clone(), size: committed.info.size };
                    publish(&self.events, &self.ns, "/content/create", "ContentCreate", &event);
                    let status = writer.status()?;
                    answer.started_at = Some(Timestamp::from(status.started_at));
                    answer.updated_at = committed.info.created_at;
                    answer.total = committed.info.size;
                }
                answer.digest = writer.digest()?.to_string();
            }
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use prost::Message;
    use tonic::Code;

    use super::*;
    use crate::services::NAMESPACE_HEADER;
    use crate::store::testutil::open_temp;

    struct Fixture {
        _dir: tempfile::TempDir,
        svc: ContentService,
    }

    fn fixture() -> Fixture {
        let (dir, store) = open_temp();
        let blobs = BlobStore::open(&dir.path().join("content")).unwrap();
        let svc = ContentService { content: ContentStore::new(blobs, store), events: Exchange::new(), read_chunk: 4 };
        Fixture { _dir: dir, svc }
    }

    fn req<T>(ns: &str, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(NAMESPACE_HEADER, ns.parse().unwrap());
        request
    }

    fn session(f: &Fixture, ns: &str) -> WriteSession {
        WriteSession::new(f.svc.content.clone(), f.svc.events.clone(), ns.into(), None)
    }

    fn message(action: WriteAction, offset: i64, data: &[u8]) -> WriteContentRequest {
        WriteContentRequest { action: action as i32, offset, data: data.to_vec(), ..Default::default() }
    }

    /// Writes `data` in `ns` as containerd's proxy writer does: STAT, WRITE, COMMIT.
    async fn put(f: &Fixture, ns: &str, reference: &str, data: &[u8], labels: &[(&str, &str)]) -> String {
        let mut s = session(f, ns);
        let stat = WriteContentRequest {
            r#ref: reference.into(),
            total: data.len() as i64,
            expected: Digest::sha256_of(data).to_string(),
            ..Default::default()
        };
        assert_eq!(s.handle(stat).await.unwrap().offset, 0);
        s.handle(message(WriteAction::Write, 0, data)).await.unwrap();
        let mut commit = message(WriteAction::Commit, data.len() as i64, b"");
        commit.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let answer = s.handle(commit).await.unwrap();
        answer.digest
    }

    async fn listed(f: &Fixture, filters: &[&str]) -> Vec<String> {
        let filters = filters.iter().map(|s| s.to_string()).collect();
        let stream = f.svc.list(req("default", ListContentRequest { filters })).await.unwrap().into_inner();
        let blocks: Vec<_> = stream.collect().await;
        blocks.into_iter().flat_map(|b| b.unwrap().info).map(|i| i.digest).collect()
    }

    async fn read(f: &Fixture, digest: &str, offset: i64, size: i64) -> Result<Vec<ReadContentResponse>, Status> {
        let request = req("default", ReadContentRequest { digest: digest.into(), offset, size });
        let stream = f.svc.read(request).await?.into_inner();
        stream.collect::<Vec<_>>().await.into_iter().collect()
    }

    #[tokio::test]
    async fn write_stat_commit_and_events() {
        let f = fixture();
        let mut events = f.svc.events.subscribe(FilterSet::default());
        let digest = put(&f, "default", "r1", b"hello", &[("a", "1")]).await;
        assert_eq!(digest, Digest::sha256_of(b"hello").to_string());
        let envelope = events.next().await.unwrap();
        assert_eq!((envelope.topic.as_str(), envelope.namespace.as_str()), ("/content/create", "default"));
        let event = envelope.event.unwrap();
        assert_eq!(event.type_url, "containerd.events.ContentCreate");
        assert_eq!(ContentCreate::decode(&*event.value).unwrap(), ContentCreate { digest: digest.clone(), size: 5 });

        let info = f.svc.info(req("default", InfoRequest { digest: digest.clone() })).await.unwrap().into_inner();
        let info = info.info.unwrap();
        assert_eq!((info.size, info.labels["a"].as_str()), (5, "1"));
        assert!(info.created_at.is_some());

        f.svc.delete(req("default", DeleteContentRequest { digest: digest.clone() })).await.unwrap();
        let envelope = events.next().await.unwrap();
        assert_eq!(envelope.topic, "/content/delete");
        assert_eq!(ContentDelete::decode(&*envelope.event.unwrap().value).unwrap().digest, digest);
        let err = f.svc.info(req("default", InfoRequest { digest })).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }

    #[tokio::test]
    async fn write_errors_have_containerds_codes() {
        let f = fixture();
        // No ref on the first message.
        let err = session(&f, "default").handle(message(WriteAction::Stat, 0, b"")).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "first message must have a reference"));
        // A bad expected digest.
        let bad = WriteContentRequest { r#ref: "r".into(), expected: "sha256:nope".into(), ..Default::default() };
        let err = session(&f, "default").handle(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        // An unknown action.
        let odd = WriteContentRequest { r#ref: "r".into(), action: 7, ..Default::default() };
        assert_eq!(session(&f, "default").handle(odd).await.unwrap_err().code(), Code::InvalidArgument);

        // A wrong offset.
        let mut s = session(&f, "default");
        let first = WriteContentRequest { r#ref: "r".into(), ..message(WriteAction::Write, 0, b"abc") };
        assert_eq!(s.handle(first).await.unwrap().offset, 3);
        let err = s.handle(message(WriteAction::Write, 2, b"x")).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(err.message(), "write at offset 2 of ingest \"r\" must occur at its current offset 3");
        // A second writer of the same ref.
        let other = WriteContentRequest { r#ref: "r".into(), ..Default::default() };
        let err = session(&f, "default").handle(other).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::Unavailable, "ref \"r\" locked: another writer holds it"));
        // A digest mismatch at commit.
        let wrong = Digest::sha256_of(b"other");
        let commit = WriteContentRequest { expected: wrong.to_string(), ..message(WriteAction::Commit, 3, b"") };
        let err = s.handle(commit).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(
            err.message().contains(&wrong.to_string())
                && err.message().contains(&Digest::sha256_of(b"abc").to_string())
        );
        let err = f.svc.info(req("default", InfoRequest { digest: Digest::sha256_of(b"abc").to_string() })).await;
        assert_eq!(err.unwrap_err().code(), Code::NotFound);

        // Content the namespace has: AlreadyExists, at open and at commit.
        let digest = put(&f, "default", "r2", b"xyz", &[]).await;
        let again = WriteContentRequest { r#ref: "r3".into(), expected: digest.clone(), ..Default::default() };
        assert_eq!(session(&f, "default").handle(again).await.unwrap_err().code(), Code::AlreadyExists);
        let mut s = session(&f, "default");
        let first = WriteContentRequest { r#ref: "r4".into(), ..message(WriteAction::Write, 0, b"xyz") };
        s.handle(first).await.unwrap();
        let err = s.handle(message(WriteAction::Commit, 3, b"")).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        // Named while writing: the ingest is aborted.
        let mut s = session(&f, "default");
        let first = WriteContentRequest { r#ref: "r5".into(), ..message(WriteAction::Write, 0, b"x") };
        s.handle(first).await.unwrap();
        let named = WriteContentRequest { expected: digest, ..message(WriteAction::Write, 1, b"yz") };
        assert_eq!(s.handle(named).await.unwrap_err().code(), Code::AlreadyExists);
        let err = f.svc.status(req("default", StatusRequest { r#ref: "r5".into() })).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }

    #[tokio::test]
    async fn resume_status_list_statuses_and_abort() {
        let f = fixture();
        {
            let mut s = session(&f, "default");
            let first =
                WriteContentRequest { r#ref: "layer".into(), total: 6, ..message(WriteAction::Write, 0, b"abc") };
            s.handle(first).await.unwrap();
        }
        let status = f.svc.status(req("default", StatusRequest { r#ref: "layer".into() })).await.unwrap();
        let status = status.into_inner().status.unwrap();
        assert_eq!((status.r#ref.as_str(), status.offset, status.total), ("layer", 3, 6));

        // A new stream picks it up where it stands.
        let mut s = session(&f, "default");
        let stat = s.handle(WriteContentRequest { r#ref: "layer".into(), ..Default::default() }).await.unwrap();
        assert_eq!((stat.offset, stat.total), (3, 6));
        assert_eq!(stat.digest, Digest::sha256_of(b"abc").to_string());
        assert!(stat.started_at.is_some());
        // The size the ingest began with is checked at commit.
        let err = s.handle(message(WriteAction::Commit, 3, b"de")).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        drop(s);

        let mut s = session(&f, "default");
        s.handle(WriteContentRequest { r#ref: "other".into(), ..Default::default() }).await.unwrap();
        let all = |filters: Vec<String>| async {
            let request = req("default", ListStatusesRequest { filters });
            let statuses = f.svc.list_statuses(request).await.unwrap().into_inner().statuses;
            statuses.into_iter().map(|s| (s.r#ref, s.offset)).collect::<Vec<_>>()
        };
        assert_eq!(all(vec![]).await, [("layer".to_string(), 5), ("other".to_string(), 0)]);
        // `ctr content active` sends its (empty) argument as a filter.
        assert_eq!(all(vec![String::new()]).await.len(), 2);
        assert_eq!(all(vec!["ref==layer".into()]).await, [("layer".to_string(), 5)]);
        assert_eq!(all(vec!["ref~=^oth".into()]).await, [("other".to_string(), 0)]);

        let err = f.svc.abort(req("default", AbortRequest { r#ref: "other".into() })).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "a held ingest is not aborted under its writer");
        drop(s);
        f.svc.abort(req("default", AbortRequest { r#ref: "other".into() })).await.unwrap();
        f.svc.abort(req("default", AbortRequest { r#ref: "layer".into() })).await.unwrap();
        assert!(all(vec![]).await.is_empty());
        let err = f.svc.abort(req("default", AbortRequest { r#ref: "layer".into() })).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }

    #[tokio::test]
    async fn read_in_chunks_with_offset_and_size() {
        let f = fixture();
        let digest = put(&f, "default", "r", b"0123456789", &[]).await;
        let whole = read(&f, &digest, 0, 0).await.unwrap();
        // Chunks of the fixture's 4 bytes, each saying where it starts.
        let pieces: Vec<_> = whole.iter().map(|m| (m.offset, m.data.as_slice())).collect();
        assert_eq!(pieces, [(0, &b"0123"[..]), (4, b"4567"), (8, b"89")]);
        let data = |messages: Vec<ReadContentResponse>| messages.into_iter().flat_map(|m| m.data).collect::<Vec<_>>();
        assert_eq!(data(read(&f, &digest, 3, 0).await.unwrap()), b"3456789");
        assert_eq!(data(read(&f, &digest, 3, 2).await.unwrap()), b"34");
        assert_eq!(data(read(&f, &digest, 8, 100).await.unwrap()), b"89");
        assert_eq!(data(read(&f, &digest, -5, 1).await.unwrap()), b"0");
        assert!(read(&f, &digest, 10, 0).await.unwrap().is_empty());
        let err = read(&f, &digest, 11, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        // Another namespace does not see it; a bad digest is refused.
        let request = req("other", ReadContentRequest { digest: digest.clone(), offset: 0, size: 0 });
        assert_eq!(f.svc.read(request).await.err().unwrap().code(), Code::NotFound);
        assert_eq!(read(&f, "sha256:xyz", 0, 0).await.unwrap_err().code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn update_and_list_filters() {
        let f = fixture();
        let a = put(&f, "default", "a", b"aaaa", &[("team", "x"), ("gone", "1")]).await;
        let b = put(&f, "default", "b", b"bb", &[("team", "y")]).await;
        let mut sorted = vec![a.clone(), b.clone()];
        sorted.sort();
        assert_eq!(listed(&f, &[]).await, sorted);
        assert_eq!(listed(&f, &["labels.team==x"]).await, std::slice::from_ref(&a));
        assert_eq!(listed(&f, &[&format!("digest=={b}")]).await, std::slice::from_ref(&b));
        assert_eq!(listed(&f, &["size==2"]).await, std::slice::from_ref(&b));
        assert_eq!(listed(&f, &["labels.gone"]).await, std::slice::from_ref(&a));
        assert_eq!(listed(&f, &["labels.team==x", "size==2"]).await.len(), 2);
        let err = f.svc.list(req("default", ListContentRequest { filters: vec!["labels.==".into()] })).await;
        assert_eq!(err.err().unwrap().code(), Code::InvalidArgument);

        // `ctr content label DIGEST team=z gone=`: labels.<key> paths.
        let info =
            Info { digest: a.clone(), labels: [("team".to_string(), "z".to_string())].into(), ..Default::default() };
        let mask = prost_types::FieldMask { paths: vec!["labels.team".into(), "labels.gone".into()] };
        let request = UpdateRequest { info: Some(info), update_mask: Some(mask) };
        let updated = f.svc.update(req("default", request)).await.unwrap().into_inner().info.unwrap();
        assert_eq!(updated.labels, [("team".to_string(), "z".to_string())].into());
        assert_eq!(updated.size, 4);
        assert_eq!(listed(&f, &["labels.team==z"]).await, std::slice::from_ref(&a));
        assert!(listed(&f, &["labels.gone"]).await.is_empty());

        let bad = UpdateRequest {
            info: Some(Info { digest: a, ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["digest".into()] }),
        };
        assert_eq!(f.svc.update(req("default", bad)).await.unwrap_err().code(), Code::InvalidArgument);
        let none = UpdateRequest { info: None, update_mask: None };
        assert_eq!(f.svc.update(req("default", none)).await.unwrap_err().code(), Code::InvalidArgument);
        let missing = UpdateRequest {
            info: Some(Info { digest: Digest::sha256_of(b"").to_string(), ..Default::default() }),
            update_mask: None,
        };
        assert_eq!(f.svc.update(req("default", missing)).await.unwrap_err().code(), Code::NotFound);
    }

    #[tokio::test]
    async fn the_lease_header_leases_what_is_written() {
        let f = fixture();
        let store = f.svc.content.metadata();
        store.create_lease("default", crate::store::Lease { id: "l".into(), ..Default::default() }).await.unwrap();
        let mut request = req("default", ());
        request.metadata_mut().insert(LEASE_HEADER, "l".parse().unwrap());
        let named = lease(&request).unwrap();
        assert_eq!(named.as_deref(), Some("l"));
        let mut s = WriteSession::new(f.svc.content.clone(), f.svc.events.clone(), "default".into(), named);
        let first = WriteContentRequest { r#ref: "r".into(), ..message(WriteAction::Write, 0, b"leased") };
        s.handle(first).await.unwrap();
        let held = store.list_lease_resources("default", "l").unwrap();
        assert_eq!((held[0].kind.as_str(), held[0].id.as_str()), ("ingests", "r"));
        let digest = s.handle(message(WriteAction::Commit, 6, b"")).await.unwrap().digest;
        let held = store.list_lease_resources("default", "l").unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!((held[0].kind.as_str(), held[0].id.as_str()), ("content", digest.as_str()));
        assert_eq!(lease(&req("default", ())).unwrap(), None);
    }

    #[tokio::test]
    async fn namespace_is_required() {
        let f = fixture();
        let err = f.svc.info(Request::new(InfoRequest { digest: Digest::sha256_of(b"").to_string() })).await;
        assert_eq!(err.unwrap_err().code(), Code::FailedPrecondition);
    }
}
