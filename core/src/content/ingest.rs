//! Ingests: blobs being written, one directory each under `ingest/`, named by the sha256 of
//! `<namespace>/<ref>` (namespaces cannot contain `/`, so two namespaces never share one):
//!
//! ```text
//! ingest/<hex>/
//! ├── data          the bytes written so far; locked (flock) by the one writer holding the ref
//! └── ingest.json   namespace, ref, start time, expected size and digest
//! ```
//!
//! Everything here blocks: callers run it on a blocking thread.
//!
//! The lock is an exclusive `flock` on the open `data` file, so it is released however its holder
//! goes away (a dropped stream, a crashed berthd) and it excludes writers of any handle. A writer
//! that opened `data` just before a commit or an abort moved or removed it would lock a file that
//! is no longer the ingest's: after locking, the writer checks that the path still names the file
//! it holds, and starts over if not.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::digest::{Digest, hex};
use super::{ContentError, io_error};

const DATA: &str = "data";
const META: &str = "ingest.json";

/// How much is read at a time when a resumed ingest is hashed again.
const REHASH_BUFFER: usize = 1 << 20;

/// What `ingest.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Meta {
    namespace: String,
    #[serde(rename = "ref")]
    reference: String,
    /// Nanoseconds since the Unix epoch.
    started_at: u64,
    /// Expected size in bytes, 0 if unknown.
    total: u64,
    /// Expected digest, empty if unknown.
    expected: String,
}

/// The state of an ingest, as Status reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestStatus {
    /// The client's name for the ingest.
    pub reference: String,
    /// Bytes written so far.
    pub offset: u64,
    /// Expected size, 0 if unknown.
    pub total: u64,
    /// Expected digest, if known.
    pub expected: Option<Digest>,
    /// When the ingest began.
    pub started_at: SystemTime,
    /// When it was last written to.
    pub updated_at: SystemTime,
}

/// The directory of ingest `reference` of namespace `ns` under `root` (the `ingest/` folder).
pub fn dir(root: &Path, ns: &str, reference: &str) -> PathBuf {
    root.join(hex(&Sha256::digest(format!("{ns}/{reference}").as_bytes())))
}

/// One writer's hold on an ingest: the locked data file and the running hash of what it holds.
#[derive(Debug)]
pub struct IngestWriter {
    dir: PathBuf,
    data: File,
    hasher: Sha256,
    offset: u64,
    meta: Meta,
}

/// Takes (creating or resuming) ingest `reference` of `ns` in `root`; Unavailable if another
/// writer holds it. `total` (0: unknown) and `expected` are recorded for Status; a resumed ingest
/// keeps its recorded size, and a different non-zero `total` is refused.
pub fn open(
    root: &Path,
    ns: &str,
    reference: &str,
    total: u64,
    expected: Option<&Digest>,
) -> Result<IngestWriter, ContentError> {
    let dir = dir(root, ns, reference);
    let data = lock(&dir, reference)?;
    let meta_path = dir.join(META);
    let writer = match read_meta(&meta_path)? {
        None => {
            // New, or left half-made by a crash before its metadata was written: start empty.
            data.set_len(0).map_err(io_error(format!("truncating {}", dir.display())))?;
            let meta = Meta {
                namespace: ns.to_owned(),
                reference: reference.to_owned(),
                started_at: nanos(SystemTime::now()),
                total,
                expected: expected.map(Digest::to_string).unwrap_or_default(),
            };
            write_meta(&dir, &meta)?;
            IngestWriter { dir, data, hasher: Sha256::new(), offset: 0, meta }
        }
        Some(mut meta) => {
            if meta.namespace != ns || meta.reference != reference {
                return Err(ContentError::Corrupt(format!(
                    "ingest {} holds ref {:?} of namespace {:?}, not {reference:?} of {ns:?}",
                    dir.display(),
                    meta.reference,
                    meta.namespace
                )));
            }
            if total > 0 && meta.total > 0 && total != meta.total {
                return Err(ContentError::TotalDiffers {
                    reference: reference.to_owned(),
                    given: total,
                    stored: meta.total,
                });
            }
            let expected = expected.map(Digest::to_string).unwrap_or_default();
            if (total > 0 && meta.total == 0) || (!expected.is_empty() && expected != meta.expected) {
                if total > 0 {
                    meta.total = total;
                }
                if !expected.is_empty() {
                    meta.expected = expected;
                }
                write_meta(&dir, &meta)?;
            }
            let (hasher, offset) = rehash(&data, &dir)?;
            IngestWriter { dir, data, hasher, offset, meta }
        }
    };
    Ok(writer)
}

/// Opens and locks the data file of the ingest in `dir`, creating both if needed.
fn lock(dir: &Path, reference: &str) -> Result<File, ContentError> {
    // Another writer committing or aborting between our open and our lock can make us lock a
    // file that left the ingest: a few tries always get a file that stays.
    for _ in 0..8 {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error(format!("creating ingest directory {}", dir.display())))?;
        let path = dir.join(DATA);
        let data = match OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&path)
        {
            Ok(data) => data,
            // Removed between the mkdir and the open: try again.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(format!("opening {}", path.display()))(e)),
        };
        try_flock(&data, &path, reference)?;
        let held = data.metadata().map_err(io_error(format!("checking {}", path.display())))?;
        match std::fs::metadata(&path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => return Ok(data),
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(format!("checking {}", path.display()))(e)),
        }
    }
    Err(ContentError::Locked(reference.to_owned()))
}

/// Takes the exclusive lock on `data` without waiting; Locked if someone else has it.
fn try_flock(data: &File, path: &Path, reference: &str) -> Result<(), ContentError> {
    loop {
        // SAFETY: flock on a file descriptor this function borrows; no memory is involved.
        if unsafe { libc::flock(data.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Err(ContentError::Locked(reference.to_owned())),
            _ => return Err(io_error(format!("locking {}", path.display()))(e)),
        }
    }
}

/// Hashes what `data` holds: the one pass a resumed ingest costs.
fn rehash(data: &File, dir: &Path) -> Result<(Sha256, u64), ContentError> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; REHASH_BUFFER];
    let mut offset = 0u64;
    loop {
        let n = match data.read_at(&mut buffer, offset) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(format!("reading {}", dir.join(DATA).display()))(e)),
        };
        hasher.update(&buffer[..n]);
        offset += n as u64;
    }
    Ok((hasher, offset))
}

fn read_meta(path: &Path) -> Result<Option<Meta>, ContentError> {
    let mut text = String::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_string(&mut text).map_err(io_error(format!("reading {}", path.display())))?,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(format!("reading {}", path.display()))(e)),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| ContentError::Corrupt(format!("{}: {e}", path.display())))
}

/// Replaces `ingest.json` in `dir` atomically: a reader sees the old or the new one, whole.
fn write_meta(dir: &Path, meta: &Meta) -> Result<(), ContentError> {
    let tmp = dir.join(format!("{META}.tmp"));
    let text = serde_json::to_vec(meta).map_err(|e| ContentError::Corrupt(format!("encoding ingest metadata: {e}")))?;
    std::fs::write(&tmp, text).map_err(io_error(format!("writing {}", tmp.display())))?;
    let path = dir.join(META);
    std::fs::rename(&tmp, &path).map_err(io_error(format!("renaming {} to {}", tmp.display(), path.display())))
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos().try_into().unwrap_or(u64::MAX))
}

fn from_nanos(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n)
}

/// The status of the ingest in `dir`; None if there is none (or it is still being made).
fn status_of(dir: &Path) -> Result<Option<(Meta, IngestStatus)>, ContentError> {
    let Some(meta) = read_meta(&dir.join(META))? else { return Ok(None) };
    let data = dir.join(DATA);
    let stat = match std::fs::metadata(&data) {
        Ok(stat) => stat,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(format!("checking {}", data.display()))(e)),
    };
    let started_at = from_nanos(meta.started_at);
    // The data file's mtime is the last write: no separate record to keep up to date per write.
    let updated_at = stat.modified().unwrap_or(started_at).max(started_at);
    let status = IngestStatus {
        reference: meta.reference.clone(),
        offset: stat.len(),
        total: meta.total,
        expected: Digest::parse(&meta.expected).ok(),
        started_at,
        updated_at,
    };
    Ok(Some((meta, status)))
}

/// The status of ingest `reference` of `ns`; IngestNotFound if there is none.
pub fn status(root: &Path, ns: &str, reference: &str) -> Result<IngestStatus, ContentError> {
    match status_of(&dir(root, ns, reference))? {
        Some((meta, status)) if meta.namespace == ns && meta.reference == reference => Ok(status),
        _ => Err(ContentError::IngestNotFound { ns: ns.to_owned(), reference: reference.to_owned() }),
    }
}

/// Every ingest of `ns`, sorted by ref.
pub fn list(root: &Path, ns: &str) -> Result<Vec<IngestStatus>, ContentError> {
    let mut statuses: Vec<IngestStatus> =
        list_all(root)?.into_iter().filter(|(owner, _)| owner == ns).map(|(_, status)| status).collect();
    statuses.sort_by(|a, b| a.reference.cmp(&b.reference));
    Ok(statuses)
}

/// Every ingest of every namespace, as (namespace, status), in no particular order.
pub fn list_all(root: &Path) -> Result<Vec<(String, IngestStatus)>, ContentError> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(format!("listing {}", root.display()))(e)),
    };
    let mut statuses = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(format!("listing {}", root.display())))?;
        // An ingest committed or aborted while we look is simply not listed.
        match status_of(&entry.path()) {
            Ok(Some((meta, status))) => statuses.push((meta.namespace, status)),
            Ok(None) => {}
            Err(ContentError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(statuses)
}

/// Removes ingest `reference` of `ns`; IngestNotFound if there is none, Locked while a writer
/// holds it.
pub fn abort(root: &Path, ns: &str, reference: &str) -> Result<(), ContentError> {
    let dir = dir(root, ns, reference);
    let not_found = || ContentError::IngestNotFound { ns: ns.to_owned(), reference: reference.to_owned() };
    if status_of(&dir)?.is_none_or(|(meta, _)| meta.namespace != ns || meta.reference != reference) {
        return Err(not_found());
    }
    let path = dir.join(DATA);
    let data = match File::open(&path) {
        Ok(data) => data,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(not_found()),
        Err(e) => return Err(io_error(format!("opening {}", path.display()))(e)),
    };
    try_flock(&data, &path, reference)?;
    remove(&dir)
}

fn remove(dir: &Path) -> Result<(), ContentError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(format!("removing {}", dir.display()))(e)),
    }
}

impl IngestWriter {
    /// Bytes written so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The digest of what is written so far.
    pub fn digest(&self) -> Digest {
        Digest::from_sha256(&self.hasher)
    }

    /// The client's name for the ingest.
    pub fn reference(&self) -> &str {
        &self.meta.reference
    }

    /// The ingest's status.
    pub fn status(&self) -> IngestStatus {
        let started_at = from_nanos(self.meta.started_at);
        let updated_at = self.data.metadata().and_then(|m| m.modified()).unwrap_or(started_at).max(started_at);
        IngestStatus {
            reference: self.meta.reference.clone(),
            offset: self.offset,
            total: self.meta.total,
            expected: Digest::parse(&self.meta.expected).ok(),
            started_at,
            updated_at,
        }
    }

    /// Writes `data` at `offset`, which must be the current offset; offset 0 starts the ingest
    /// over (containerd clients restart an ingest this way). Returns the new offset.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<u64, ContentError> {
        if offset == 0 && self.offset > 0 {
            self.data.set_len(0).map_err(io_error(format!("truncating {}", self.dir.join(DATA).display())))?;
            self.hasher = Sha256::new();
            self.offset = 0;
        } else if offset != self.offset {
            return Err(ContentError::Offset { reference: self.meta.reference.clone(), offset, current: self.offset });
        }
        if !data.is_empty() {
            self.data
                .write_all_at(data, self.offset)
                .map_err(io_error(format!("writing {}", self.dir.join(DATA).display())))?;
            self.hasher.update(data);
            self.offset += data.len() as u64;
        }
        Ok(self.offset)
    }

    /// Verifies the size (if `total` > 0) and the digest (if `expected`) and moves the data to
    /// `blob(digest)`, durably; then the ingest is gone. Returns the digest and the size, and
    /// whether the blob was there already (then this ingest's copy is dropped).
    ///
    /// On a mismatch nothing moves and the ingest stays as it was, for the client to resume,
    /// restart or abort.
    pub fn commit(
        &mut self,
        total: u64,
        expected: Option<&Digest>,
        blob: impl FnOnce(&Digest) -> PathBuf,
    ) -> Result<(Digest, u64, bool), ContentError> {
        let reference = || self.meta.reference.clone();
        if total > 0 && total != self.offset {
            return Err(ContentError::SizeMismatch { reference: reference(), expected: total, actual: self.offset });
        }
        let actual = self.digest();
        if let Some(expected) = expected.filter(|e| **e != actual) {
            return Err(ContentError::DigestMismatch { reference: reference(), expected: expected.clone(), actual });
        }
        let data_path = self.dir.join(DATA);
        let target = blob(&actual);
        let existed = target.exists();
        if !existed {
            // Blobs are immutable: read-only from the start, durable before they get their name.
            self.data
                .set_permissions(std::fs::Permissions::from_mode(0o444))
                .map_err(io_error(format!("making {} read-only", data_path.display())))?;
            self.data.sync_all().map_err(io_error(format!("syncing {}", data_path.display())))?;
            std::fs::rename(&data_path, &target).map_err(io_error(format!(
                "renaming {} to {}",
                data_path.display(),
                target.display()
            )))?;
            if let Some(parent) = target.parent() {
                sync_dir(parent)?;
            }
        }
        remove(&self.dir)?;
        Ok((actual, self.offset, existed))
    }
}

/// Makes a rename into `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), ContentError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(format!("syncing directory {}", dir.display())))
}
