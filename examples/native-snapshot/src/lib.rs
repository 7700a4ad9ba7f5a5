//! A snapshot backend as a native berth plugin: `snapshot.example`. Every snapshot is a directory holding a
//! full copy of its parent's tree (owners, modes, times, symlinks, hard links, device nodes and extended
//! attributes kept), handed out as a bind mount: read-write for active snapshots, read-only for views.
//!
//! Built as a `cdylib` with `berth-plugin-sdk` only (no berthd code), loaded by berthd from its config:
//!
//! ```toml
//! [plugins."snapshot.example"]
//! source = "native"
//! path = "/usr/lib/berth/libberth_example_native_snapshot.so"
//! [plugins."snapshot.example".config]
//! root = "/var/lib/berth-example"     # optional; default: berthd's directory for the plugin
//! ```
//!
//! On disk, under `root`:
//!
//! ```text
//! metadata.json         every snapshot: id, kind, parent, labels, times, revision (written whole, then renamed)
//! snapshots/<id>/fs/    its tree, the bind mount's source
//! ```
//!
//! Calls take one lock, copies included: simple, and enough for an example (images unpack one layer after
//! the other anyway).
//!
//! Revisions (what lets berthd answer a repeated stat from its copy): every change of a snapshot (made,
//! labels updated, committed) gives its record the next value of one counter kept in `metadata.json`, so a
//! value names one state of one key only, also after a key is removed and made again and after a restart.

mod copy;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use berth_plugin_sdk::proto::Mount;
use berth_plugin_sdk::proto::snapshots::{Info, Kind, UsageResponse};
use berth_plugin_sdk::snapshot::{Labels, Snapshotter};
use berth_plugin_sdk::{Error, Init, Result};
use serde::{Deserialize, Serialize};

/// `[plugins."snapshot.example".config]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where snapshots are kept; empty: the directory berthd gives the plugin.
    pub root: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: u64,
    kind: String,
    parent: String,
    labels: BTreeMap<String, String>,
    created: (u64, u32),
    updated: (u64, u32),
    /// The value of `Metadata::next_revision` its last change took (0: written before revisions, see `open`).
    #[serde(default)]
    revision: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Metadata {
    next_id: u64,
    /// The revision the next change takes: only ever grows, and is saved with the change that took one.
    #[serde(default)]
    next_revision: u64,
    snapshots: BTreeMap<String, Record>,
}

impl Metadata {
    fn take_revision(&mut self) -> u64 {
        let revision = self.next_revision;
        self.next_revision += 1;
        revision
    }
}

/// The backend.
pub struct CopySnapshotter {
    root: PathBuf,
    state: Mutex<Metadata>,
}

fn now() -> (u64, u32) {
    let d = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

fn timestamp((seconds, nanos): (u64, u32)) -> berth_plugin_sdk::proto::Timestamp {
    berth_plugin_sdk::proto::Timestamp { seconds: seconds as i64, nanos: nanos as i32 }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::View => "view",
        Kind::Active => "active",
        _ => "committed",
    }
}

fn kind_of(name: &str) -> Kind {
    match name {
        "view" => Kind::View,
        "active" => Kind::Active,
        _ => Kind::Committed,
    }
}

impl CopySnapshotter {
    /// Opens (or makes) a backend in `root`.
    pub fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root.join("snapshots")).map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        let path = root.join("metadata.json");
        let metadata = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::internal(format!("reading {}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Metadata { next_id: 1, next_revision: 1, ..Default::default() }
            }
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        let mut metadata: Metadata = metadata;
        // A file from before revisions: its records get fresh ones past any the file holds. They are saved
        // with the next change; a restart before it gives the same records the same values again.
        metadata.next_revision =
            metadata.snapshots.values().map(|r| r.revision + 1).max().unwrap_or(1).max(metadata.next_revision);
        for record in metadata.snapshots.values_mut().filter(|r| r.revision == 0) {
            record.revision = metadata.next_revision;
            metadata.next_revision += 1;
        }
        Ok(Self { root: root.to_owned(), state: Mutex::new(metadata) })
    }

    fn fs_dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string()).join("fs")
    }

    fn save(&self, metadata: &Metadata) -> Result<()> {
        let path = self.root.join("metadata.json");
        let tmp = self.root.join("metadata.json.tmp");
        let bytes = serde_json::to_vec_pretty(metadata).expect("metadata serializes");
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Metadata> {
        // A panic elsewhere leaves the metadata as it was before the call: carry on with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn info(name: &str, r: &Record) -> Info {
        Info {
            name: name.into(),
            parent: r.parent.clone(),
            kind: kind_of(&r.kind) as i32,
            created_at: Some(timestamp(r.created)),
            updated_at: Some(timestamp(r.updated)),
            labels: r.labels.clone(),
        }
    }

    fn mounts_of(&self, r: &Record) -> Vec<Mount> {
        let mode = if r.kind == "view" { "ro" } else { "rw" };
        vec![Mount {
            r#type: "bind".into(),
            source: self.fs_dir(r.id).display().to_string(),
            target: String::new(),
            options: vec!["rbind".into(), mode.into()],
        }]
    }

    fn create(&self, kind: Kind, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(Error::invalid_argument("snapshot key must not be empty"));
        }
        let mut metadata = self.lock();
        if metadata.snapshots.contains_key(key) {
            return Err(Error::already_exists(key));
        }
        let parent_dir = if parent.is_empty() {
            None
        } else {
            let p = metadata.snapshots.get(parent).ok_or_else(|| Error::not_found(parent))?;
            if p.kind != "committed" {
                return Err(Error::invalid_argument(format!("parent {parent:?} is not a committed snapshot")));
            }
            Some(self.fs_dir(p.id))
        };
        let id = metadata.next_id;
        metadata.next_id += 1;
        let dir = self.fs_dir(id);
        let made = (|| -> std::io::Result<()> {
            fs::create_dir_all(dir.parent().expect("fs has a parent"))?;
            match &parent_dir {
                Some(from) => copy::tree(from, &dir),
                None => fs::create_dir(&dir),
            }
        })();
        if let Err(e) = made {
            let _ = fs::remove_dir_all(dir.parent().expect("fs has a parent"));
            return Err(Error::io(format!("making snapshot {key}"), e));
        }
        let t = now();
        let record = Record {
            id,
            kind: kind_name(kind).into(),
            parent: parent.into(),
            labels: labels.into_iter().collect(),
            created: t,
            updated: t,
            revision: metadata.take_revision(),
        };
        let mounts = self.mounts_of(&record);
        metadata.snapshots.insert(key.into(), record);
        if let Err(e) = self.save(&metadata) {
            metadata.snapshots.remove(key);
            return Err(e);
        }
        Ok(mounts)
    }
}

impl Snapshotter for CopySnapshotter {
    const NAME: &'static str = "example";

    fn new(init: Init) -> Result<Self> {
        let config: Config = init.config()?;
        let root = if config.root.is_empty() { init.root_dir.clone() } else { PathBuf::from(&config.root) };
        let backend = Self::open(&root)?;
        init.host.info(&format!("copying snapshotter in {}", root.display()));
        Ok(backend)
    }

    fn stat(&self, key: &str) -> Result<Info> {
        let metadata = self.lock();
        let r = metadata.snapshots.get(key).ok_or_else(|| Error::not_found(key))?;
        Ok(Self::info(key, r))
    }

    fn revision(&self, key: &str) -> Result<Option<u64>> {
        let metadata = self.lock();
        Ok(Some(metadata.snapshots.get(key).ok_or_else(|| Error::not_found(key))?.revision))
    }

    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let mut metadata = self.lock();
        let r = metadata.snapshots.get(&info.name).ok_or_else(|| Error::not_found(&info.name))?;
        let mut labels = r.labels.clone();
        let given: BTreeMap<String, String> = info.labels.into_iter().collect();
        if fieldpaths.is_empty() {
            labels = given.clone();
        }
        for path in fieldpaths {
            if path == "labels" {
                labels = given.clone();
            } else if let Some(key) = path.strip_prefix("labels.") {
                match given.get(key) {
                    Some(v) => labels.insert(key.into(), v.clone()),
                    None => labels.remove(key),
                };
            } else {
                return Err(Error::invalid_argument(format!("cannot update {path:?} of snapshot {}", info.name)));
            }
        }
        let revision = metadata.take_revision();
        let r = metadata.snapshots.get_mut(&info.name).expect("checked above");
        let before = (r.labels.clone(), r.updated, r.revision);
        r.labels = labels;
        r.updated = now();
        r.revision = revision;
        let updated = Self::info(&info.name, r);
        if let Err(e) = self.save(&metadata) {
            let r = metadata.snapshots.get_mut(&info.name).expect("checked above");
            (r.labels, r.updated, r.revision) = before;
            return Err(e);
        }
        Ok(updated)
    }

    fn usage(&self, key: &str) -> Result<UsageResponse> {
        let dir = {
            let metadata = self.lock();
            self.fs_dir(metadata.snapshots.get(key).ok_or_else(|| Error::not_found(key))?.id)
        };
        let (size, inodes) = copy::usage(&dir).map_err(|e| Error::io(format!("measuring snapshot {key}"), e))?;
        Ok(UsageResponse { size: size as i64, inodes: inodes as i64 })
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let metadata = self.lock();
        let r = metadata.snapshots.get(key).ok_or_else(|| Error::not_found(key))?;
        if r.kind == "committed" {
            return Err(Error::failed_precondition(format!("snapshot {key} is committed: it has no mounts")));
        }
        Ok(self.mounts_of(r))
    }

    fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels)
    }

    fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels)
    }

    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        let mut metadata = self.lock();
        let r = metadata.snapshots.get(key).ok_or_else(|| Error::not_found(key))?;
        if r.kind != "active" {
            return Err(Error::failed_precondition(format!("snapshot {key} is {}, only active ones commit", r.kind)));
        }
        if metadata.snapshots.contains_key(name) {
            return Err(Error::already_exists(name));
        }
        let mut record = metadata.snapshots.remove(key).expect("checked above");
        let active = record.clone();
        record.kind = "committed".into();
        record.labels = labels.into_iter().collect();
        record.created = now();
        record.updated = record.created;
        record.revision = metadata.take_revision();
        metadata.snapshots.insert(name.into(), record);
        if let Err(e) = self.save(&metadata) {
            metadata.snapshots.remove(name);
            metadata.snapshots.insert(key.into(), active);
            return Err(e);
        }
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<()> {
        let mut metadata = self.lock();
        let r = metadata.snapshots.get(key).ok_or_else(|| Error::not_found(key))?;
        if let Some(child) = metadata.snapshots.iter().find(|(_, c)| c.parent == key).map(|(k, _)| k.clone()) {
            return Err(Error::failed_precondition(format!("snapshot {key} has children ({child})")));
        }
        let id = r.id;
        let record = metadata.snapshots.remove(key).expect("checked above");
        if let Err(e) = self.save(&metadata) {
            metadata.snapshots.insert(key.into(), record);
            return Err(e);
        }
        // The record is gone: a directory left by a failure here is cleanup's.
        let _ = fs::remove_dir_all(self.root.join("snapshots").join(id.to_string()));
        Ok(())
    }

    fn list(&self) -> Result<Vec<Info>> {
        let metadata = self.lock();
        Ok(metadata.snapshots.iter().map(|(k, r)| Self::info(k, r)).collect())
    }

    fn cleanup(&self) -> Result<()> {
        let metadata = self.lock();
        let dir = self.root.join("snapshots");
        let entries = fs::read_dir(&dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        for entry in entries.flatten() {
            let owned = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|id| metadata.snapshots.values().any(|r| r.id == id));
            if !owned && entry.metadata().map(|m| m.is_dir()).unwrap_or(false) {
                fs::remove_dir_all(entry.path())
                    .map_err(|e| Error::io(format!("removing {}", entry.path().display()), e))?;
            }
        }
        Ok(())
    }
}

berth_plugin_sdk::export_snapshot!(CopySnapshotter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let sn = CopySnapshotter::new(Init::for_tests("snapshot.example", "{}", dir.path())).unwrap();
        let mounts = sn.prepare("a", "", Labels::new()).unwrap();
        assert_eq!(mounts[0].options, ["rbind", "rw"]);
        fs::write(Path::new(&mounts[0].source).join("f"), b"x").unwrap();
        sn.commit("c", "a", Labels::new()).unwrap();
        let again = CopySnapshotter::open(&dir.path().join("root")).unwrap();
        assert_eq!(again.stat("c").unwrap().kind, Kind::Committed as i32);
        let view = again.view("v", "c", Labels::new()).unwrap();
        assert_eq!(fs::read(Path::new(&view[0].source).join("f")).unwrap(), b"x");
        assert_eq!(again.remove("c").unwrap_err().code, berth_plugin_sdk::abi::code::FAILED_PRECONDITION);
    }

    #[test]
    fn revisions_move_with_every_change_and_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let sn = CopySnapshotter::open(dir.path()).unwrap();
        let mut seen = Vec::new();
        let mut fresh = |sn: &CopySnapshotter, key: &str, what: &str| {
            let revision = sn.revision(key).unwrap().expect("the example keeps revisions");
            assert!(!seen.contains(&revision), "{what}: revision {revision} of {key} was used before: {seen:?}");
            seen.push(revision);
            revision
        };
        sn.prepare("a", "", [("l".to_string(), "1".to_string())].into()).unwrap();
        let made = fresh(&sn, "a", "prepare");
        assert_eq!(sn.revision("a").unwrap(), Some(made), "no change, the same revision");
        let mut info = sn.stat("a").unwrap();
        info.labels.insert("l".into(), "2".into());
        sn.update(info.clone(), &["labels.l".into()]).unwrap();
        let updated = fresh(&sn, "a", "update");
        assert!(sn.update(info, &["parent".into()]).is_err());
        assert_eq!(sn.revision("a").unwrap(), Some(updated), "a refused update keeps the revision");
        sn.commit("c", "a", Labels::new()).unwrap();
        fresh(&sn, "c", "commit");
        assert_eq!(sn.revision("a").unwrap_err().code, berth_plugin_sdk::abi::code::NOT_FOUND);
        sn.remove("c").unwrap();
        sn.prepare("c", "", Labels::new()).unwrap();
        let remade = fresh(&sn, "c", "remove and prepare again");

        // The counter is kept with the records: a restart neither changes a revision nor hands one out again.
        drop(sn);
        let again = CopySnapshotter::open(dir.path()).unwrap();
        assert_eq!(again.revision("c").unwrap(), Some(remade));
        again.remove("c").unwrap();
        again.view("c", "", Labels::new()).unwrap();
        fresh(&again, "c", "a view of the key after a restart");
    }

    #[test]
    fn records_from_before_revisions_get_distinct_ones() {
        let dir = tempfile::tempdir().unwrap();
        let record = |id: u64| {
            format!(
                r#"{{"id": {id}, "kind": "active", "parent": "", "labels": {{}}, "created": [1, 0], "updated": [1, 0]}}"#
            )
        };
        let old = format!(r#"{{"next_id": 3, "snapshots": {{"a": {}, "b": {}}}}}"#, record(1), record(2));
        fs::create_dir_all(dir.path().join("snapshots")).unwrap();
        fs::write(dir.path().join("metadata.json"), old).unwrap();
        let sn = CopySnapshotter::open(dir.path()).unwrap();
        let (a, b) = (sn.revision("a").unwrap().unwrap(), sn.revision("b").unwrap().unwrap());
        assert!(a != b && a > 0 && b > 0, "{a} {b}");
        sn.prepare("c", "", Labels::new()).unwrap();
        assert!(sn.revision("c").unwrap().unwrap() > a.max(b));
    }

    #[test]
    fn config_errors_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let Err(e) = CopySnapshotter::new(Init::for_tests("snapshot.example", r#"{"rot": "/x"}"#, dir.path())) else {
            panic!("a misspelt key must fail")
        };
        assert_eq!(e.config_path, ["rot"]);
    }
}
