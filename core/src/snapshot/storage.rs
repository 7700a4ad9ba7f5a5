//! A snapshot backend's own metadata and directories (containerd's `snapshots/storage`), for backends
//! to share: each backend opens one [`MetaStore`] in its own root directory.
//!
//! On disk, one small JSON record per snapshot, named by a number that never changes, and one
//! directory per snapshot under the same number for the backend to fill:
//!
//! ```text
//! <root>/                         0700 (the plugin's root dir, e.g. /var/lib/berth/snapshot.overlayfs)
//! ├── lock                        flock'd while a MetaStore has the root open
//! ├── metadata/
//! │   ├── <id>.json               {"version":1,"id":7,"kind":"committed","name":"sha256:..","parent":"..",
//! │   │                             "labels":{..},"created_unix_ns":..,"updated_unix_ns":..}
//! │   └── <id>.json.tmp           a record being written; removed at open
//! └── snapshots/
//!     └── <id>/                   0700, the backend's files for snapshot <id> (e.g. fs/ and work/)
//! ```
//!
//! Every change writes or removes exactly one record, and a record is replaced atomically (written to
//! `.tmp`, fsync'd, renamed over the old one, and the directory fsync'd), so a crash at any point leaves
//! each snapshot either fully there or not there at all:
//!
//! * commit rewrites the record under the same id with the new name and kind, so the files never move;
//! * a new snapshot's directory is filled first and its record written last;
//! * removal removes the record first and the directory after.
//!
//! What a crash can leave is a directory without a record (and a `.tmp`), which
//! [`MetaStore::cleanup`] removes. Ids only grow (past every record and directory seen at open), so an
//! id is never reused for a leftover directory.
//!
//! The records are all read into memory at open; a mutex serialises changes, so the rules are checked
//! and applied in one step: keys are unique across every kind (and keys being made), parents must be
//! committed, a snapshot with children (or children being made) cannot be removed, only active
//! snapshots commit, and only labels can be updated.
//!
//! A backend that only fills new snapshots' directories and says how to mount them implements
//! [`StoredBackend`], and is a [`Snapshotter`](super::Snapshotter) by that alone.

mod backend;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use self::backend::StoredBackend;
use super::{Info, Kind, Labels, Result, SharedLabels, SnapshotError, Usage};
use crate::ident;

/// The record format version this code writes and reads.
const RECORD_VERSION: u32 = 1;

/// One snapshot: the number its files are kept under, and its info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The number of its record and directory; fixed for the snapshot's life.
    pub id: u64,
    /// Kind, name, parent, labels, times.
    pub info: Info,
}

/// A record as stored in `metadata/<id>.json`. The labels are the record's own shared map: writing a record
/// does not copy them, nor does reading one into the [`Record`] that stats hand out.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    version: u32,
    id: u64,
    kind: Kind,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "no_labels",
        serialize_with = "serialize_labels",
        deserialize_with = "deserialize_labels"
    )]
    labels: SharedLabels,
    created_unix_ns: u64,
    updated_unix_ns: u64,
}

fn no_labels(labels: &SharedLabels) -> bool {
    labels.is_empty()
}

// The map itself, as before the labels were shared: the same JSON object (serde's own `Arc` impls need
// its `rc` feature, and would write the same).
fn serialize_labels<S: serde::Serializer>(labels: &SharedLabels, s: S) -> std::result::Result<S::Ok, S::Error> {
    Labels::serialize(labels, s)
}

fn deserialize_labels<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<SharedLabels, D::Error> {
    Labels::deserialize(d).map(Arc::new)
}

fn to_ns(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64)
}

fn from_ns(ns: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(ns)
}

impl From<&Record> for Stored {
    fn from(r: &Record) -> Self {
        Stored {
            version: RECORD_VERSION,
            id: r.id,
            kind: r.info.kind,
            name: r.info.name.clone(),
            parent: r.info.parent.clone(),
            labels: r.info.labels.clone(),
            created_unix_ns: to_ns(r.info.created),
            updated_unix_ns: to_ns(r.info.updated),
        }
    }
}

impl From<Stored> for Record {
    fn from(s: Stored) -> Self {
        Record {
            id: s.id,
            info: Info {
                kind: s.kind,
                name: s.name,
                parent: s.parent,
                labels: s.labels,
                created: from_ns(s.created_unix_ns),
                updated: from_ns(s.updated_unix_ns),
            },
        }
    }
}

/// A key being made: its id and parent, held until its record is written or the attempt is dropped.
struct Pending {
    id: u64,
    parent: Option<String>,
}

struct State {
    snapshots: BTreeMap<String, Record>,
    pending: BTreeMap<String, Pending>,
    next_id: u64,
}

impl State {
    fn get(&self, key: &str) -> Result<&Record> {
        self.snapshots.get(key).ok_or_else(|| SnapshotError::NotFound(key.to_owned()))
    }

    fn taken(&self, key: &str) -> bool {
        self.snapshots.contains_key(key) || self.pending.contains_key(key)
    }

    /// The parents of a snapshot whose parent is `parent`, nearest first.
    fn ancestors<'a>(&'a self, mut parent: Option<&'a str>) -> Result<Vec<Record>> {
        let mut chain = Vec::new();
        while let Some(name) = parent {
            let record = self.snapshots.get(name).ok_or_else(|| {
                SnapshotError::Other(crate::Error::Internal(format!("snapshot store: parent {name:?} is missing")))
            })?;
            chain.push(record.clone());
            parent = record.info.parent.as_deref();
        }
        Ok(chain)
    }

    fn children(&self, key: &str) -> usize {
        let records = self.snapshots.values().filter(|r| r.info.parent.as_deref() == Some(key)).count();
        records + self.pending.values().filter(|p| p.parent.as_deref() == Some(key)).count()
    }
}

/// The metadata and directories of one backend's snapshots; see the module doc for the layout and the
/// rules it enforces. Calls block on file I/O: async callers run them on blocking threads.
pub struct MetaStore {
    root: PathBuf,
    state: Mutex<State>,
    // Held for the store's life so a second berthd (or a second open) cannot share the root.
    _lock: File,
}

impl std::fmt::Debug for MetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStore").field("root", &self.root).finish_non_exhaustive()
    }
}

fn create_dir_0700(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| SnapshotError::io(format_args!("creating {}", path.display()), e))
}

fn internal(message: String) -> SnapshotError {
    SnapshotError::Other(crate::Error::Internal(message))
}

fn validate_key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(SnapshotError::InvalidArgument(format!("snapshot {what} must not be empty")));
    }
    Ok(())
}

impl MetaStore {
    /// Opens (creating) the store in `root`, reading every record. Fails with Internal if the root is
    /// open elsewhere or a record cannot be read.
    pub fn open(root: &Path) -> Result<MetaStore> {
        create_dir_0700(root)?;
        let metadata = root.join("metadata");
        let snapshots = root.join("snapshots");
        create_dir_0700(&metadata)?;
        create_dir_0700(&snapshots)?;
        let lock_path = root.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| SnapshotError::io(format_args!("opening {}", lock_path.display()), e))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(internal(format!("snapshot store {} is in use by another process: {e}", root.display())));
        }

        let mut records = BTreeMap::new();
        let mut max_id = 0;
        for entry in read_dir(&metadata)? {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let path = entry.path();
            if name.ends_with(".tmp") {
                fs::remove_file(&path)
                    .map_err(|e| SnapshotError::io(format_args!("removing {}", path.display()), e))?;
                continue;
            }
            let Some(id) = name.strip_suffix(".json").and_then(|n| n.parse::<u64>().ok()) else { continue };
            let text = fs::read(&path).map_err(|e| SnapshotError::io(format_args!("reading {}", path.display()), e))?;
            let stored: Stored = serde_json::from_slice(&text)
                .map_err(|e| internal(format!("snapshot record {}: {e}", path.display())))?;
            if stored.version != RECORD_VERSION {
                return Err(internal(format!(
                    "snapshot record {} has version {}, this berth reads version {RECORD_VERSION}",
                    path.display(),
                    stored.version
                )));
            }
            if stored.id != id {
                return Err(internal(format!("snapshot record {} holds id {}", path.display(), stored.id)));
            }
            let record = Record::from(stored);
            max_id = max_id.max(id);
            if let Some(other) = records.insert(record.info.name.clone(), record) {
                return Err(internal(format!(
                    "snapshot records {} and {id} both name {:?}",
                    other.id, other.info.name
                )));
            }
        }
        for entry in read_dir(&snapshots)? {
            if let Some(id) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
                max_id = max_id.max(id);
            }
        }
        let state = State { snapshots: records, pending: BTreeMap::new(), next_id: max_id + 1 };
        for record in state.snapshots.values() {
            if let Some(parent) = &record.info.parent
                && !state.snapshots.contains_key(parent)
            {
                return Err(internal(format!("snapshot {:?}: its parent {parent:?} has no record", record.info.name)));
            }
        }
        Ok(MetaStore { root: root.to_owned(), state: Mutex::new(state), _lock: lock })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as the files are: keep going.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of snapshot `id`: `<root>/snapshots/<id>`.
    pub fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn record_path(&self, id: u64) -> PathBuf {
        self.root.join("metadata").join(format!("{id}.json"))
    }

    /// Writes a record atomically and durably.
    fn write_record(&self, record: &Record) -> Result<()> {
        let path = self.record_path(record.id);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec(&Stored::from(record)).map_err(|e| internal(format!("encoding record: {e}")))?;
        let write = || -> io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(&text)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            sync_dir(&self.root.join("metadata"))
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            SnapshotError::io(format_args!("writing {}", path.display()), e)
        })
    }

    fn remove_record(&self, id: u64) -> Result<()> {
        let path = self.record_path(id);
        fs::remove_file(&path)
            .and_then(|()| sync_dir(&self.root.join("metadata")))
            .map_err(|e| SnapshotError::io(format_args!("removing {}", path.display()), e))
    }

    /// Snapshot `key`.
    pub fn get(&self, key: &str) -> Result<Record> {
        self.lock().get(key).cloned()
    }

    /// An active or view snapshot and its parents, nearest first, for its mounts. FailedPrecondition for a
    /// committed snapshot, which has no mounts.
    pub fn mountable(&self, key: &str) -> Result<(Record, Vec<Record>)> {
        let state = self.lock();
        let record = state.get(key)?;
        if record.info.kind == Kind::Committed {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key} is committed: only active and view snapshots have mounts"
            )));
        }
        Ok((record.clone(), state.ancestors(record.info.parent.as_deref())?))
    }

    /// Starts making snapshot `key` on `parent`: checks the key is free and the parent committed, takes an
    /// id and creates the snapshot's (empty, 0700) directory. The key counts as taken, and the parent as
    /// having a child, until the reservation is finished or dropped; dropping it removes the directory.
    pub fn reserve(&self, key: &str, parent: Option<&str>) -> Result<Reservation<'_>> {
        validate_key("key", key)?;
        let parent = parent.filter(|p| !p.is_empty());
        let mut state = self.lock();
        if state.taken(key) {
            return Err(SnapshotError::AlreadyExists(key.to_owned()));
        }
        if let Some(parent) = parent {
            let record = state.snapshots.get(parent).ok_or_else(|| SnapshotError::NotFound(parent.to_owned()))?;
            if record.info.kind != Kind::Committed {
                return Err(SnapshotError::InvalidArgument(format!(
                    "parent {parent} of snapshot {key} is {}, not committed",
                    record.info.kind
                )));
            }
        }
        let ancestors = state.ancestors(parent)?;
        let id = state.next_id;
        let dir = self.snapshot_dir(id);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| SnapshotError::io(format_args!("creating {}", dir.display()), e))?;
        state.next_id += 1;
        state.pending.insert(key.to_owned(), Pending { id, parent: parent.map(str::to_owned) });
        Ok(Reservation {
            store: self,
            key: key.to_owned(),
            id,
            parent: parent.map(str::to_owned),
            ancestors,
            done: false,
        })
    }

    /// Turns active snapshot `key` into committed snapshot `name` with `labels`, in place (same id and
    /// directory).
    pub fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<Record> {
        validate_key("name", name)?;
        ident::validate_labels(&labels)?;
        let mut state = self.lock();
        let active = state.get(key)?;
        if active.info.kind != Kind::Active {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key} is {}: only active snapshots can be committed",
                active.info.kind
            )));
        }
        if state.taken(name) {
            return Err(SnapshotError::AlreadyExists(name.to_owned()));
        }
        let now = SystemTime::now();
        let committed = Record {
            id: active.id,
            info: Info {
                kind: Kind::Committed,
                name: name.to_owned(),
                parent: active.info.parent.clone(),
                labels: Arc::new(labels),
                created: now,
                updated: now,
            },
        };
        self.write_record(&committed)?;
        state.snapshots.remove(key);
        state.snapshots.insert(name.to_owned(), committed.clone());
        Ok(committed)
    }

    /// Removes snapshot `key`: its record, then its directory. FailedPrecondition while it has children.
    pub fn remove(&self, key: &str) -> Result<Record> {
        let record = {
            let mut state = self.lock();
            let record = state.get(key)?.clone();
            let children = state.children(key);
            if children > 0 {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "cannot remove snapshot {key}: {children} other snapshot(s) have it as parent"
                )));
            }
            self.remove_record(record.id)?;
            state.snapshots.remove(key);
            record
        };
        // The snapshot is gone once its record is; files left by a failure here are cleanup's.
        let dir = self.snapshot_dir(record.id);
        if let Err(e) = remove_tree(&dir) {
            tracing::warn!(dir = %dir.display(), "removing the files of snapshot {key}: {e}");
        }
        Ok(record)
    }

    /// Changes the labels of snapshot `info.name`, as [`super::Snapshotter::update`] describes.
    pub fn update(&self, info: &Info, fieldpaths: &[String]) -> Result<Info> {
        let mut state = self.lock();
        let mut record = state.get(&info.name)?.clone();
        if fieldpaths.is_empty() {
            record.info.labels = info.labels.clone();
        }
        for path in fieldpaths {
            if path == "labels" {
                record.info.labels = info.labels.clone();
            } else if let Some(key) = path.strip_prefix("labels.") {
                // Copy-on-write: the kept record shares this map until the new one is written.
                let labels = Arc::make_mut(&mut record.info.labels);
                match info.labels.get(key) {
                    Some(value) => labels.insert(key.to_owned(), value.clone()),
                    None => labels.remove(key),
                };
            } else {
                return Err(SnapshotError::InvalidArgument(format!(
                    "cannot update field {path:?} of snapshot {}: only labels can change",
                    info.name
                )));
            }
        }
        ident::validate_labels(record.info.labels.iter())?;
        record.info.updated = SystemTime::now();
        self.write_record(&record)?;
        let updated = record.info.clone();
        state.snapshots.insert(record.info.name.clone(), record);
        Ok(updated)
    }

    /// Every snapshot `filter` selects, sorted by name.
    pub fn walk(&self, filter: &dyn Fn(&Info) -> bool) -> Vec<Info> {
        self.lock().snapshots.values().filter(|r| filter(&r.info)).map(|r| r.info.clone()).collect()
    }

    /// Removes every directory under `snapshots/` that no snapshot (nor one being made) owns, and stray
    /// temporary records.
    pub fn cleanup(&self) -> Result<()> {
        let orphans = {
            let state = self.lock();
            let owned: BTreeSet<String> = state
                .snapshots
                .values()
                .map(|r| r.id)
                .chain(state.pending.values().map(|p| p.id))
                .map(|id| id.to_string())
                .collect();
            for entry in read_dir(&self.root.join("metadata"))? {
                if entry.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = fs::remove_file(entry.path());
                }
            }
            let orphans: Vec<PathBuf> = read_dir(&self.root.join("snapshots"))?
                .into_iter()
                .filter(|e| !owned.contains(e.file_name().to_string_lossy().as_ref()))
                .map(|e| e.path())
                .collect();
            orphans
        };
        // Ids only grow, so nothing made from here on can be one of these.
        for path in orphans {
            tracing::info!(path = %path.display(), "removing files no snapshot owns");
            remove_tree(&path).map_err(|e| SnapshotError::io(format_args!("removing {}", path.display()), e))?;
        }
        Ok(())
    }
}

/// A snapshot being made; see [`MetaStore::reserve`].
pub struct Reservation<'a> {
    store: &'a MetaStore,
    key: String,
    id: u64,
    parent: Option<String>,
    ancestors: Vec<Record>,
    done: bool,
}

impl Reservation<'_> {
    /// The new snapshot's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Its directory, created empty, for the backend to fill.
    pub fn dir(&self) -> PathBuf {
        self.store.snapshot_dir(self.id)
    }

    /// Its parents, nearest first (empty without a parent).
    pub fn ancestors(&self) -> &[Record] {
        &self.ancestors
    }

    /// Writes the record of the snapshot, now that its directory is ready: an active or view snapshot.
    pub fn finish(mut self, kind: Kind, labels: Labels) -> Result<Record> {
        if kind == Kind::Committed {
            return Err(internal("a snapshot is made active or view, then committed".into()));
        }
        ident::validate_labels(&labels)?;
        let now = SystemTime::now();
        let record = Record {
            id: self.id,
            info: Info {
                kind,
                name: self.key.clone(),
                parent: self.parent.clone(),
                labels: Arc::new(labels),
                created: now,
                updated: now,
            },
        };
        let mut state = self.store.lock();
        self.store.write_record(&record)?;
        state.pending.remove(&self.key);
        state.snapshots.insert(self.key.clone(), record.clone());
        self.done = true;
        Ok(record)
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.store.lock().pending.remove(&self.key);
        let dir = self.dir();
        if let Err(e) = remove_tree(&dir) {
            tracing::warn!(dir = %dir.display(), "removing the files of unfinished snapshot {}: {e}", self.key);
        }
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    let read = || fs::read_dir(dir)?.collect::<io::Result<Vec<_>>>();
    read().map_err(|e| SnapshotError::io(format_args!("reading {}", dir.display()), e))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes `path` and everything under it without crossing into another filesystem: a directory
/// something is mounted on is an error, never emptied. A missing path is fine.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    remove_dir_on(path, meta.dev())
}

fn remove_dir_on(dir: &Path, dev: u64) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    if meta.dev() != dev {
        return Err(io::Error::other(format!(
            "{} is a mount point: not removing what is mounted there",
            dir.display()
        )));
    }
    // Without CAP_DAC_OVERRIDE a read-only directory cannot be emptied: make it ours first.
    if meta.permissions().mode() & 0o700 != 0o700 {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            remove_dir_on(&path, dev)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    fs::remove_dir(dir)
}

/// The disk space under `dir`, as `du` counts it: allocated bytes of every distinct inode (hard links
/// once), and the number of distinct inodes, `dir` itself included. Does not cross into other filesystems.
pub fn disk_usage(dir: &Path) -> io::Result<Usage> {
    fn walk(path: &Path, dev: u64, seen: &mut BTreeSet<(u64, u64)>, usage: &mut Usage) -> io::Result<()> {
        let meta = fs::symlink_metadata(path)?;
        if meta.dev() != dev {
            return Ok(());
        }
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.size += meta.blocks() * 512;
        }
        if meta.is_dir() {
            for entry in fs::read_dir(path)? {
                walk(&entry?.path(), dev, seen, usage)?;
            }
        }
        Ok(())
    }
    let dev = fs::symlink_metadata(dir)?.dev();
    let mut usage = Usage::default();
    walk(dir, dev, &mut BTreeSet::new(), &mut usage)?;
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn active(store: &MetaStore, key: &str, parent: Option<&str>) -> Record {
        store.reserve(key, parent).unwrap().finish(Kind::Active, Labels::new()).unwrap()
    }

    #[test]
    fn records_survive_reopening_and_commit_keeps_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let (base, child) = {
            let store = MetaStore::open(&root).unwrap();
            let a = active(&store, "a", None);
            let base = store.commit("base", "a", labels(&[("l", "1")])).unwrap();
            assert_eq!(base.id, a.id, "commit keeps the id, so the files never move");
            let child =
                store.reserve("child", Some("base")).unwrap().finish(Kind::View, labels(&[("v", "2")])).unwrap();
            (base, child)
        };
        let store = MetaStore::open(&root).unwrap();
        assert_eq!(store.get("base").unwrap().info.created, base.info.created, "times keep nanoseconds");
        assert_eq!(store.get("base").unwrap(), base);
        assert_eq!(store.get("child").unwrap(), child);
        assert!(matches!(store.get("a"), Err(SnapshotError::NotFound(_))));
        let next = active(&store, "next", None);
        assert!(next.id > child.id, "ids only grow");
    }

    #[test]
    fn a_second_open_of_the_same_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _store = MetaStore::open(dir.path()).unwrap();
        let e = MetaStore::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("in use"), "{e}");
    }

    #[test]
    fn a_dropped_reservation_frees_the_key_and_removes_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        active(&store, "p", None);
        store.commit("parent", "p", Labels::new()).unwrap();
        let reservation = store.reserve("k", Some("parent")).unwrap();
        let path = reservation.dir();
        fs::write(path.join("file"), b"x").unwrap();
        assert!(matches!(store.reserve("k", None), Err(SnapshotError::AlreadyExists(_))), "a key being made is taken");
        assert!(
            matches!(store.remove("parent"), Err(SnapshotError::FailedPrecondition(_))),
            "a parent with a child being made stays"
        );
        assert!(store.walk(&|_| true).iter().all(|i| i.name != "k"), "a key being made is not listed");
        drop(reservation);
        assert!(!path.exists());
        active(&store, "k", None);
        store.remove("k").unwrap();
        store.remove("parent").unwrap();
    }

    #[test]
    fn cleanup_removes_what_no_record_owns() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        {
            let store = MetaStore::open(root).unwrap();
            active(&store, "kept", None);
        }
        // What a crash leaves: a filled directory whose record was never written, and a half-written record.
        fs::create_dir_all(root.join("snapshots/99/fs/deep")).unwrap();
        fs::write(root.join("metadata/99.json.tmp"), b"{").unwrap();
        let store = MetaStore::open(root).unwrap();
        assert!(!root.join("metadata/99.json.tmp").exists(), "open removes half-written records");
        assert!(active(&store, "new", None).id > 99, "ids pass leftover directories");
        store.cleanup().unwrap();
        assert!(!root.join("snapshots/99").exists());
        assert!(store.snapshot_dir(store.get("kept").unwrap().id).exists());
        assert!(store.snapshot_dir(store.get("new").unwrap().id).exists());
    }

    #[test]
    fn only_labels_update() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        let record = active(&store, "a", None);
        let mut info = record.info.clone();
        info.labels = Arc::new(labels(&[("a", "1"), ("b", "2")]));
        let info = store.update(&info, &[]).unwrap();
        assert_eq!(*info.labels, labels(&[("a", "1"), ("b", "2")]));
        let change = Info { labels: Arc::new(labels(&[("a", "x"), ("c", "3")])), ..info.clone() };
        let info = store.update(&change, &["labels.a".into(), "labels.b".into()]).unwrap();
        assert_eq!(*info.labels, labels(&[("a", "x")]), "labels.b absent from the request removes it");
        let e = store.update(&info, &["parent".into()]).unwrap_err();
        assert!(matches!(e, SnapshotError::InvalidArgument(_)), "{e}");
        let e = store.update(&Info { name: "nope".into(), ..info }, &[]).unwrap_err();
        assert!(matches!(e, SnapshotError::NotFound(_)), "{e}");
    }

    #[test]
    fn records_keep_their_json_format() {
        let record = Record {
            id: 7,
            info: Info {
                kind: Kind::Committed,
                name: "sha256:c".into(),
                parent: Some("sha256:p".into()),
                labels: Arc::new(labels(&[("b", "2"), ("a", "1")])),
                created: from_ns(1_700_000_000_123_456_789),
                updated: from_ns(1_700_000_001_000_000_000),
            },
        };
        let text = r#"{"version":1,"id":7,"kind":"committed","name":"sha256:c","parent":"sha256:p","labels":{"a":"1","b":"2"},"created_unix_ns":1700000000123456789,"updated_unix_ns":1700000001000000000}"#;
        assert_eq!(serde_json::to_string(&Stored::from(&record)).unwrap(), text);
        assert_eq!(Record::from(serde_json::from_str::<Stored>(text).unwrap()), record);
        // Without a parent or labels, neither is written; a record without them reads as empty.
        let bare = Record { id: 8, info: Info { parent: None, labels: Arc::default(), ..record.info.clone() } };
        let text = r#"{"version":1,"id":8,"kind":"committed","name":"sha256:c","created_unix_ns":1700000000123456789,"updated_unix_ns":1700000001000000000}"#;
        assert_eq!(serde_json::to_string(&Stored::from(&bare)).unwrap(), text);
        assert_eq!(Record::from(serde_json::from_str::<Stored>(text).unwrap()), bare);
        let empty = text.replace(r#""created"#, r#""labels":{},"created"#);
        assert_eq!(Record::from(serde_json::from_str::<Stored>(&empty).unwrap()), bare);
    }

    #[test]
    fn stats_share_the_labels_and_updates_copy_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        let before = store.reserve("a", None).unwrap().finish(Kind::Active, labels(&[("a", "1"), ("b", "2")])).unwrap();
        let (one, two) = (store.get("a").unwrap(), store.get("a").unwrap());
        assert!(Arc::ptr_eq(&one.info.labels, &before.info.labels) && Arc::ptr_eq(&one.info.labels, &two.info.labels));
        assert!(Arc::ptr_eq(&store.walk(&|_| true)[0].labels, &before.info.labels), "a walk shares them too");
        let change = Info { labels: Arc::new(labels(&[("a", "x")])), ..before.info.clone() };
        let after = store.update(&change, &["labels.a".into()]).unwrap();
        assert_eq!(*after.labels, labels(&[("a", "x"), ("b", "2")]));
        assert_eq!(*before.info.labels, labels(&[("a", "1"), ("b", "2")]), "what was handed out stays as it was");
        assert!(Arc::ptr_eq(&store.get("a").unwrap().info.labels, &after.labels));
    }

    #[test]
    fn usage_counts_blocks_and_inodes_once_per_inode() {
        let dir = tempfile::tempdir().unwrap();
        let empty = disk_usage(dir.path()).unwrap();
        assert_eq!(empty.inodes, 1);
        fs::write(dir.path().join("f"), vec![1u8; 64 * 1024]).unwrap();
        fs::hard_link(dir.path().join("f"), dir.path().join("g")).unwrap();
        let usage = disk_usage(dir.path()).unwrap();
        assert_eq!(usage.inodes, 2, "a hard link is one inode");
        assert!(usage.size >= empty.size + 64 * 1024, "{usage:?}");
    }
}
