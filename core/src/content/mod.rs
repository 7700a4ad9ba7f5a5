//! The content store: immutable blobs named by their digest, written through resumable ingests,
//! as containerd's local content store and its metadata layer.
//!
//! On disk, under `<root>/content` (blobs are shared by every namespace, as in containerd):
//!
//! ```text
//! content/
//! ├── blobs/sha256/<hex>     committed blobs, read-only
//! └── ingest/<hex>/          one ingest: data, ingest.json (see ingest.rs)
//! ```
//!
//! Which namespace sees which blob is metadata: a `content` record in the LMDB store
//! (`MetadataStore::commit_content`), made when a blob is committed in a namespace, or imported
//! into it by a writer that names the digest of a blob another namespace committed. [`BlobStore`]
//! is the files; [`ContentStore`] is the namespaced view every caller uses.
//!
//! A commit checks the size and the sha256 digest against what was written before the blob
//! appears: the data is fsynced, made read-only and renamed into `blobs/`, and only then recorded.
//! Hashing is incremental: each write feeds the running hash, and a resumed ingest hashes what is
//! on disk once.
//!
//! Blob files go only through garbage collection (`crate::gc`), once no namespace has a record of
//! them: a commit holds [`MetadataStore::guard_against_sweep`] from the file in place to its record
//! committed, so the collector never sees the one without the other.

pub mod digest;
mod ingest;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

pub use self::digest::Digest;
pub use self::ingest::{IngestStatus, IngestWriter};
use crate::error::{Error, Result};
use crate::ident;
use crate::store::{
    CONTENT_RESOURCE, Committed, ContentInfo, ContentLease, INGEST_RESOURCE, LeaseResource, MetadataStore,
};

/// What can go wrong in the content store, with the ref or digest it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// A digest that does not parse.
    #[error("invalid digest {digest:?}: {why}")]
    InvalidDigest {
        /// As given.
        digest: String,
        /// What is wrong with it.
        why: String,
    },
    /// Another writer holds the ref (containerd: "ref ... locked", Unavailable).
    #[error("ref {0:?} locked: another writer holds it")]
    Locked(String),
    /// No ingest of that ref in the namespace.
    #[error("ingest {reference:?} in namespace {ns:?}")]
    IngestNotFound {
        /// The namespace.
        ns: String,
        /// The ref.
        reference: String,
    },
    /// A write that does not continue where the ingest stands.
    #[error("write at offset {offset} of ingest {reference:?} must occur at its current offset {current}")]
    Offset {
        /// The ref.
        reference: String,
        /// Where the write was to go.
        offset: u64,
        /// What the ingest holds.
        current: u64,
    },
    /// A resumed ingest given another expected size than the one it began with.
    #[error("ingest {reference:?}: expected size {given} differs from the {stored} it was started with")]
    TotalDiffers {
        /// The ref.
        reference: String,
        /// The size given now.
        given: u64,
        /// The size recorded when the ingest began.
        stored: u64,
    },
    /// A commit whose size is not the expected one.
    #[error("commit of ingest {reference:?}: unexpected size {actual}, expected {expected}")]
    SizeMismatch {
        /// The ref.
        reference: String,
        /// The size the client expects.
        expected: u64,
        /// The size written.
        actual: u64,
    },
    /// A commit whose digest is not the expected one.
    #[error("commit of ingest {reference:?}: unexpected digest {actual}, expected {expected}")]
    DigestMismatch {
        /// The ref.
        reference: String,
        /// The digest the client expects.
        expected: Digest,
        /// The digest of what was written.
        actual: Digest,
    },
    /// A write or commit after the commit.
    #[error("ingest {0:?} is committed already")]
    Committed(String),
    /// Files of the store that are not what berth wrote.
    #[error("content store: {0}")]
    Corrupt(String),
    /// A filesystem operation failed.
    #[error("content store: {context}: {source}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl From<ContentError> for Error {
    fn from(e: ContentError) -> Error {
        use ContentError::*;
        let message = e.to_string();
        match e {
            InvalidDigest { .. } => Error::InvalidArgument(message),
            Locked(_) => Error::Unavailable(message),
            IngestNotFound { .. } => Error::NotFound(message),
            Offset { .. } | TotalDiffers { .. } | SizeMismatch { .. } | DigestMismatch { .. } | Committed(_) => {
                Error::FailedPrecondition(message)
            }
            Corrupt(_) | Io { .. } => Error::Internal(message),
        }
    }
}

/// Maps an I/O error to [`ContentError::Io`], saying what the store was doing.
fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContentError {
    let context = context.into();
    move |source| ContentError::Io { context, source }
}

/// Runs blocking file work off the async workers.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("content store: a blocking task failed: {e}")))?
}

/// The files: blobs by digest and ingests by namespace and ref, for every namespace.
#[derive(Debug)]
pub struct BlobStore {
    blobs: PathBuf,
    ingests: PathBuf,
}

impl BlobStore {
    /// Opens the store in `root` (berthd's: `<root>/content`), creating its directories (0700).
    pub fn open(root: &Path) -> Result<BlobStore, ContentError> {
        let blobs = root.join("blobs").join(digest::SHA256);
        let ingests = root.join("ingest");
        for dir in [&blobs, &ingests] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_error(format!("creating {}", dir.display())))?;
        }
        Ok(BlobStore { blobs, ingests })
    }

    /// Where blob `digest` is (or would be); None for algorithms berth does not store.
    pub fn blob_path(&self, digest: &Digest) -> Option<PathBuf> {
        (digest.algorithm() == digest::SHA256).then(|| self.blobs.join(digest.encoded()))
    }

    /// The size of blob `digest`, None if the store has no such blob.
    pub fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, ContentError> {
        let Some(path) = self.blob_path(digest) else { return Ok(None) };
        match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(format!("checking {}", path.display()))(e)),
        }
    }

    /// Opens blob `digest` for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, ContentError> {
        let path = self
            .blob_path(digest)
            .ok_or_else(|| ContentError::Corrupt(format!("blob {digest} is recorded but berth stores sha256 only")))?;
        File::open(&path).map_err(io_error(format!("opening blob {}", path.display())))
    }

    /// Takes ingest `reference` of namespace `ns`, creating or resuming it (blocking).
    pub fn ingest(
        &self,
        ns: &str,
        reference: &str,
        total: u64,
        expected: Option<&Digest>,
    ) -> Result<IngestWriter, ContentError> {
        ingest::open(&self.ingests, ns, reference, total, expected)
    }

    /// Verifies and commits what `writer` wrote (blocking); see [`IngestWriter::commit`].
    pub fn commit(
        &self,
        writer: &mut IngestWriter,
        total: u64,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64, bool), ContentError> {
        // The digest is sha256, so blob_path always has a path for it.
        writer.commit(total, expected, |d| self.blobs.join(d.encoded()))
    }

    /// The status of ingest `reference` of `ns` (blocking).
    pub fn status(&self, ns: &str, reference: &str) -> Result<IngestStatus, ContentError> {
        ingest::status(&self.ingests, ns, reference)
    }

    /// Every ingest of `ns`, sorted by ref (blocking).
    pub fn list_statuses(&self, ns: &str) -> Result<Vec<IngestStatus>, ContentError> {
        ingest::list(&self.ingests, ns)
    }

    /// Removes ingest `reference` of `ns` (blocking); Locked while a writer holds it.
    pub fn abort(&self, ns: &str, reference: &str) -> Result<(), ContentError> {
        ingest::abort(&self.ingests, ns, reference)
    }

    /// Every ingest of every namespace, as (namespace, status), in no particular order (blocking).
    pub fn list_all_statuses(&self) -> Result<Vec<(String, IngestStatus)>, ContentError> {
        ingest::list_all(&self.ingests)
    }

    /// The digest of every blob file, sorted (blocking). Files whose names are not a sha256 are
    /// not berth's and are left out.
    pub fn list_blobs(&self) -> Result<Vec<Digest>, ContentError> {
        let listing = || io_error(format!("listing {}", self.blobs.display()));
        let mut digests = Vec::new();
        for entry in std::fs::read_dir(&self.blobs).map_err(listing())? {
            let entry = entry.map_err(listing())?;
            let name = entry.file_name();
            if let Some(digest) = name.to_str().and_then(|hex| Digest::parse(&format!("{}:{hex}", digest::SHA256)).ok())
            {
                digests.push(digest);
            }
        }
        digests.sort();
        Ok(digests)
    }

    /// Removes the file of blob `digest` (blocking); false if there was none. Only the garbage
    /// collector calls this, once no namespace has a record of the blob.
    pub fn remove_blob(&self, digest: &Digest) -> Result<bool, ContentError> {
        let Some(path) = self.blob_path(digest) else { return Ok(false) };
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error(format!("removing {}", path.display()))(e)),
        }
    }
}

/// How long Abort waits for a writer that holds the ingest to let it go.
const ABORT_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The content store as namespaces see it: the blob files plus each namespace's records of them.
/// Clones share both.
#[derive(Clone, Debug)]
pub struct ContentStore {
    blobs: Arc<BlobStore>,
    store: MetadataStore,
}

impl ContentStore {
    /// The content store over `blobs`, with its records in `store`.
    pub fn new(blobs: BlobStore, store: MetadataStore) -> ContentStore {
        ContentStore { blobs: Arc::new(blobs), store }
    }

    /// The files.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The metadata store holding the records.
    pub fn metadata(&self) -> &MetadataStore {
        &self.store
    }

    /// Blob `digest` as namespace `ns` sees it; NotFound unless committed or imported there.
    pub fn info(&self, ns: &str, digest: &Digest) -> Result<ContentInfo> {
        self.store.get_content(ns, digest.as_str())
    }

    /// The blobs of namespace `ns` that `keep` accepts, sorted by digest.
    pub fn list(&self, ns: &str, keep: &dyn Fn(&ContentInfo) -> bool) -> Result<Vec<ContentInfo>> {
        self.store.list_content(ns, keep)
    }

    /// Changes the labels of a blob of `ns`; see [`MetadataStore::update_content`].
    pub async fn update(&self, ns: &str, info: ContentInfo, paths: Vec<String>) -> Result<ContentInfo> {
        Digest::parse(&info.digest)?;
        self.store.update_content(ns, info, paths).await
    }

    /// Removes blob `digest` from namespace `ns` (and from `lease`); the file stays for the
    /// garbage collector, since other namespaces may see it.
    pub async fn delete(&self, ns: &str, digest: &Digest, lease: Option<String>) -> Result<()> {
        self.store.delete_content(ns, digest.as_str(), lease).await
    }

    /// Blob `digest` of namespace `ns` and its file, open for reading.
    pub fn open(&self, ns: &str, digest: &Digest) -> Result<(ContentInfo, File)> {
        let info = self.info(ns, digest)?;
        let file = self.blobs.open_blob(digest)?;
        Ok((info, file))
    }

    /// The status of ingest `reference` of `ns`; NotFound if there is none.
    pub async fn status(&self, ns: &str, reference: &str) -> Result<IngestStatus> {
        ident::validate(ns).map_err(|e| e.context("namespace"))?;
        let (blobs, ns, reference) = (self.blobs.clone(), ns.to_owned(), reference.to_owned());
        blocking(move || Ok(blobs.status(&ns, &reference)?)).await
    }

    /// The ingests of `ns`, sorted by ref.
    pub async fn list_statuses(&self, ns: &str) -> Result<Vec<IngestStatus>> {
        ident::validate(ns).map_err(|e| e.context("namespace"))?;
        let (blobs, ns) = (self.blobs.clone(), ns.to_owned());
        blocking(move || Ok(blobs.list_statuses(&ns)?)).await
    }

    /// Removes ingest `reference` of `ns` and what it wrote (and lets `lease` go of it); NotFound
    /// if there is none, Unavailable while a writer holds it.
    pub async fn abort(&self, ns: &str, reference: &str, lease: Option<String>) -> Result<()> {
        ident::validate(ns).map_err(|e| e.context("namespace"))?;
        // A client that ends its Write stream and aborts at once can be quicker than the stream's
        // task, which lets the ingest go once it sees the end: give a writer that is going away a
        // moment before answering that the ref is locked.
        let deadline = std::time::Instant::now() + ABORT_LOCK_WAIT;
        loop {
            let (blobs, owned_ns, owned_ref) = (self.blobs.clone(), ns.to_owned(), reference.to_owned());
            match blocking(move || Ok(blobs.abort(&owned_ns, &owned_ref)?)).await {
                Err(Error::Unavailable(_)) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                other => break other?,
            }
        }
        if let Some(lease) = lease {
            let resource = LeaseResource { id: reference.to_owned(), kind: INGEST_RESOURCE.into() };
            match self.store.delete_lease_resource(ns, &lease, resource).await {
                Ok(()) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Starts or resumes writing through ingest `reference` of `ns`, as containerd's metadata
    /// content store does:
    ///
    /// * if `expected` is a blob `ns` has, AlreadyExists (and `lease` takes the blob);
    /// * if it is a blob another namespace committed (of size `total`, if given), the writer
    ///   imports it: it reports the whole blob written, and its commit only records it in `ns`;
    /// * otherwise the ingest is taken (Unavailable if another writer holds it), created or
    ///   resumed where it stands, and held by `lease` until committed.
    pub async fn writer(
        &self,
        ns: &str,
        reference: &str,
        total: u64,
        expected: Option<Digest>,
        lease: Option<String>,
    ) -> Result<Writer> {
        ident::validate(ns).map_err(|e| e.context("namespace"))?;
        if reference.is_empty() {
            return Err(Error::InvalidArgument("ingest ref must not be empty".into()));
        }
        let writer = |state| Writer {
            content: self.clone(),
            ns: ns.to_owned(),
            reference: reference.to_owned(),
            lease: lease.clone(),
            state,
        };
        if let Some(expected) = &expected {
            match self.info(ns, expected) {
                Ok(_) => {
                    if let Some(lease) = &lease {
                        let resource = LeaseResource { id: expected.to_string(), kind: CONTENT_RESOURCE.into() };
                        self.store.add_lease_resource(ns, lease, resource).await?;
                    }
                    return Err(Error::AlreadyExists(format!("content {expected}")));
                }
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            if let Some(size) = self.blobs.blob_size(expected)?
                && (total == 0 || total == size)
            {
                let started = SystemTime::now();
                return Ok(writer(State::Import { digest: expected.clone(), size, started }));
            }
        }
        if let Some(lease) = &lease {
            let resource = LeaseResource { id: reference.to_owned(), kind: INGEST_RESOURCE.into() };
            self.store.add_lease_resource(ns, lease, resource).await?;
        }
        let ingest = self.open_ingest(ns, reference, total, expected).await?;
        Ok(writer(State::Ingest(Some(ingest))))
    }

    async fn open_ingest(
        &self,
        ns: &str,
        reference: &str,
        total: u64,
        expected: Option<Digest>,
    ) -> Result<IngestWriter> {
        let (blobs, ns, reference) = (self.blobs.clone(), ns.to_owned(), reference.to_owned());
        blocking(move || Ok(blobs.ingest(&ns, &reference, total, expected.as_ref())?)).await
    }
}

/// One client's write of a blob: holds its ingest (and so its ref) until dropped.
#[derive(Debug)]
pub struct Writer {
    content: ContentStore,
    ns: String,
    reference: String,
    lease: Option<String>,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Writing through an ingest. None only while a blocking task has it, or after one failed.
    Ingest(Option<IngestWriter>),
    /// Importing a blob another namespace committed: nothing to write.
    Import { digest: Digest, size: u64, started: SystemTime },
    /// Done.
    Committed { digest: Digest, size: u64, started: SystemTime },
}

impl Writer {
    fn ingest(&self) -> Result<&IngestWriter> {
        match &self.state {
            State::Ingest(Some(w)) => Ok(w),
            _ => Err(Error::Internal(format!("content store: ingest {:?} was lost by a failed task", self.reference))),
        }
    }

    /// The client's name for the ingest.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// Where the write stands.
    pub fn status(&self) -> Result<IngestStatus> {
        match &self.state {
            State::Ingest(_) => Ok(self.ingest()?.status()),
            State::Import { digest, size, started } | State::Committed { digest, size, started } => Ok(IngestStatus {
                reference: self.reference.clone(),
                offset: *size,
                total: *size,
                expected: Some(digest.clone()),
                started_at: *started,
                updated_at: *started,
            }),
        }
    }

    /// The digest of what is written so far.
    pub fn digest(&self) -> Result<Digest> {
        match &self.state {
            State::Ingest(_) => Ok(self.ingest()?.digest()),
            State::Import { digest, .. } | State::Committed { digest, .. } => Ok(digest.clone()),
        }
    }

    /// Runs `work` on the ingest on a blocking thread.
    async fn with_ingest<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut IngestWriter, &BlobStore) -> Result<T, ContentError> + Send + 'static,
    ) -> Result<T> {
        let State::Ingest(slot) = &mut self.state else {
            return Err(Error::Internal("content store: not an ingest".into()));
        };
        let mut ingest = slot.take().ok_or_else(|| {
            Error::Internal(format!("content store: ingest {:?} was lost by a failed task", self.reference))
        })?;
        let blobs = self.content.blobs.clone();
        let (ingest, result) = tokio::task::spawn_blocking(move || {
            let result = work(&mut ingest, &blobs);
            (ingest, result)
        })
        .await
        .map_err(|e| Error::Internal(format!("content store: a blocking task failed: {e}")))?;
        self.state = State::Ingest(Some(ingest));
        Ok(result?)
    }

    /// Writes `data` at `offset`: the current offset, or 0 to start over. Returns the new offset.
    pub async fn write(&mut self, offset: u64, data: Vec<u8>) -> Result<u64> {
        match &self.state {
            State::Ingest(_) => self.with_ingest(move |w, _| w.write_at(offset, &data)).await,
            State::Import { size, .. } if data.is_empty() && (offset == 0 || offset == *size) => Ok(*size),
            State::Import { .. } if offset == 0 => {
                // The client writes the blob after all: write it through an ingest like any other.
                let ingest = self.content.open_ingest(&self.ns, &self.reference, 0, None).await?;
                self.state = State::Ingest(Some(ingest));
                self.with_ingest(move |w, _| w.write_at(0, &data)).await
            }
            State::Import { size, .. } => {
                Err(ContentError::Offset { reference: self.reference.clone(), offset, current: *size }.into())
            }
            State::Committed { .. } => Err(ContentError::Committed(self.reference.clone()).into()),
        }
    }

    /// Verifies the size (if `total` > 0) and the digest (if `expected`), makes the blob durable
    /// and records it in the namespace with `labels`, under the writer's lease. On a mismatch
    /// nothing is committed and the ingest stays. `created` is false if the namespace had the
    /// blob already.
    pub async fn commit(
        &mut self,
        total: u64,
        expected: Option<Digest>,
        labels: BTreeMap<String, String>,
    ) -> Result<Committed> {
        ident::validate_labels(&labels).map_err(|e| e.context(format!("commit of ingest {:?}", self.reference)))?;
        // From the blob file in place to its record committed, the garbage collector must not
        // take the file for one no namespace has.
        let _guard = self.content.store.guard_against_sweep().await;
        let (digest, size, started, ingest) = match &self.state {
            State::Ingest(_) => {
                let started = self.ingest()?.status().started_at;
                let expected = expected.clone();
                let (digest, size, _existed) =
                    self.with_ingest(move |w, blobs| blobs.commit(w, total, expected.as_ref())).await?;
                (digest, size, started, Some(self.reference.clone()))
            }
            State::Import { digest, size, started } => {
                let reference = || self.reference.clone();
                if total > 0 && total != *size {
                    return Err(
                        ContentError::SizeMismatch { reference: reference(), expected: total, actual: *size }.into()
                    );
                }
                if let Some(expected) = expected.filter(|e| e != digest) {
                    let actual = digest.clone();
                    return Err(ContentError::DigestMismatch { reference: reference(), expected, actual }.into());
                }
                // The namespace that had the blob may have let go of it since the write began,
                // and the collector removed the file: then there is nothing to import.
                if self.content.blobs.blob_size(digest)?.is_none() {
                    return Err(Error::FailedPrecondition(format!(
                        "commit of ingest {:?}: blob {digest} was garbage collected while it was imported: write it again",
                        self.reference
                    )));
                }
                (digest.clone(), *size, *started, None)
            }
            State::Committed { .. } => return Err(ContentError::Committed(self.reference.clone()).into()),
        };
        // The blob is in place: from here on the ingest is gone whatever the record's fate.
        self.state = State::Committed { digest: digest.clone(), size, started };
        let size = i64::try_from(size)
            .map_err(|_| Error::InvalidArgument(format!("content {digest}: {size} bytes is too large")))?;
        let info = ContentInfo { digest: digest.to_string(), size, labels, ..Default::default() };
        let lease = self.lease.clone().map(|id| ContentLease { id, ingest });
        self.content.store.commit_content(&self.ns, info, lease).await
    }
}

#[cfg(test)]
mod tests;
