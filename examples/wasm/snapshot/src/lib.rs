//! A snapshot backend as a wasm component: `snapshot.layers`. Each snapshot is a directory of its own
//! changes; an active snapshot or a view on a parent chain is an overlay mount of the chain's directories
//! (containerd's overlayfs snapshotter's layout), one without a parent a bind mount. The component sees only
//! the directory its table grants, and works in it with WASI file calls; the mounts it returns name the same
//! directory as the host sees it (`host_root` of its config), since the host mounts them.
//!
//! ```toml
//! [plugins."snapshot.layers"]
//! source = "wasm"
//! path = "/usr/lib/berth/berth_example_wasm_snapshot.wasm"
//! preopens = [{ host = "/var/lib/berth/layers", guest = "/layers" }]
//! [plugins."snapshot.layers".config]
//! host_root = "/var/lib/berth/layers"    # the granted directory, as the host sees it
//! dir = "/layers"                         # the same, as the component sees it (default /layers)
//! ```
//!
//! In that directory:
//!
//! ```text
//! metadata.json          every snapshot: id, kind, parent, labels, times, revision (written whole, then renamed)
//! snapshots/<id>/fs/     its own files: the overlay's upper directory, or the bind mount's source
//! snapshots/<id>/work/   the overlay's work directory
//! ```
//!
//! Several instances may serve calls (`instances` of the table) and an instance may be replaced at any time,
//! so the metadata file is the truth: each call re-reads it when it changed since this instance last saw it.
//! The revisions berthd's stat cache goes by are kept there too: one counter in the file, moved by every
//! change and recorded in the snapshot changed, so every instance gives the same value for the same state.

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

/// `[plugins."snapshot.layers".config]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The granted directory as the host sees it: the mounts' paths start with it.
    pub host_root: String,
    /// The granted directory as the component sees it.
    pub dir: String,
}

impl Default for Config {
    fn default() -> Self {
        Self { host_root: String::new(), dir: "/layers".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: u64,
    kind: String,
    parent: String,
    labels: BTreeMap<String, String>,
    created: (u64, u32),
    updated: (u64, u32),
    /// The file's revision counter when this snapshot last changed (0: before the file kept revisions).
    #[serde(default)]
    revision: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Metadata {
    next_id: u64,
    snapshots: BTreeMap<String, Record>,
    /// The last revision handed out. A file without one (new, or older than revisions) starts at the clock's
    /// nanoseconds, above any value a file made before it in this directory handed out one per change.
    #[serde(default = "clock_revision")]
    revision: u64,
}

fn clock_revision() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or_default()
}

impl Metadata {
    /// A new revision for a change.
    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }
}

/// The metadata as this instance last read or wrote it, with the file's identity then.
struct Loaded {
    metadata: Metadata,
    seen: Option<(u64, SystemTime)>,
}

/// The backend.
pub struct Layers {
    dir: PathBuf,
    host_root: PathBuf,
    state: Mutex<Loaded>,
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

/// Bytes and inodes under `dir`, itself included; sizes in 4 KiB blocks as `du` counts them. WASI does not
/// say which entries are hard links of one another (inode numbers are not stable API on wasm yet), so each
/// link counts.
fn usage_of(dir: &Path) -> std::io::Result<(u64, u64)> {
    let (mut size, mut inodes, mut stack) = (0u64, 1u64, vec![dir.to_path_buf()]);
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            let meta = fs::symlink_metadata(entry.path())?;
            inodes += 1;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                size += meta.len().div_ceil(4096) * 4096;
            }
        }
    }
    Ok((size, inodes))
}

impl Layers {
    /// Opens (or makes) a backend in `dir` (a guest path), whose host path is `host_root`.
    pub fn open(dir: &Path, host_root: &Path) -> Result<Self> {
        fs::create_dir_all(dir.join("snapshots")).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let this = Self {
            dir: dir.to_owned(),
            host_root: host_root.to_owned(),
            state: Mutex::new(Loaded {
                metadata: Metadata { next_id: 1, revision: clock_revision(), ..Default::default() },
                seen: None,
            }),
        };
        drop(this.lock()?); // reads the metadata now: a broken file fails init, not the first call
        Ok(this)
    }

    fn metadata_path(&self) -> PathBuf {
        self.dir.join("metadata.json")
    }

    fn identity(&self) -> Option<(u64, SystemTime)> {
        let meta = fs::metadata(self.metadata_path()).ok()?;
        Some((meta.len(), meta.modified().ok()?))
    }

    /// The metadata, re-read if another instance changed the file since this one last saw it.
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Loaded>> {
        // A call that failed part way left the metadata as it was before it: carry on with it.
        let mut loaded = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let identity = self.identity();
        if identity.is_some() && identity != loaded.seen {
            let path = self.metadata_path();
            let bytes = fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            loaded.metadata = serde_json::from_slice(&bytes)
                .map_err(|e| Error::internal(format!("reading {}: {e}", path.display())))?;
            loaded.seen = identity;
        }
        Ok(loaded)
    }

    fn save(&self, loaded: &mut Loaded) -> Result<()> {
        let path = self.metadata_path();
        let tmp = self.dir.join("metadata.json.tmp");
        let bytes = serde_json::to_vec_pretty(&loaded.metadata).expect("metadata serializes");
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        loaded.seen = self.identity();
        Ok(())
    }

    fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.dir.join("snapshots").join(id.to_string())
    }

    fn host_dir(&self, id: u64, sub: &str) -> String {
        self.host_root.join("snapshots").join(id.to_string()).join(sub).display().to_string()
    }

    fn info(name: &str, r: &Record) -> Info {
        Info {
            name: name.into(),
            parent: r.parent.clone(),
            kind: kind_of(&r.kind) as i32,
            created_at: Some(timestamp(r.created)),
            updated_at: Some(timestamp(r.updated)),
            labels: r.labels.clone().into_iter().collect(),
        }
    }

    /// The ids of `parent` and its ancestors, nearest first.
    fn chain<'a>(metadata: &'a Metadata, mut parent: &'a str) -> Vec<u64> {
        let mut ids = Vec::new();
        while let Some(p) = metadata.snapshots.get(parent) {
            ids.push(p.id);
            parent = &p.parent;
        }
        ids
    }

    fn mounts_of(&self, metadata: &Metadata, r: &Record) -> Vec<Mount> {
        let bind = |source: String, mode: &str| Mount {
            r#type: "bind".into(),
            source,
            target: String::new(),
            options: vec!["rbind".into(), mode.into()],
        };
        let lowers = Self::chain(metadata, &r.parent);
        let lowerdir = || {
            let dirs: Vec<String> = lowers.iter().map(|id| self.host_dir(*id, "fs")).collect();
            format!("lowerdir={}", dirs.join(":"))
        };
        let overlay = |options: Vec<String>| Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        };
        let mount = match (r.kind.as_str(), lowers.len()) {
            ("view", 0) => bind(self.host_dir(r.id, "fs"), "ro"),
            ("view", 1) => bind(self.host_dir(lowers[0], "fs"), "ro"),
            ("view", _) => overlay(vec![lowerdir()]),
            (_, 0) => bind(self.host_dir(r.id, "fs"), "rw"),
            _ => overlay(vec![
                "index=off".into(),
                format!("workdir={}", self.host_dir(r.id, "work")),
                format!("upperdir={}", self.host_dir(r.id, "fs")),
                lowerdir(),
            ]),
        };
        vec![mount]
    }

    fn create(&self, kind: Kind, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(Error::invalid_argument("snapshot key must not be empty"));
        }
        let mut loaded = self.lock()?;
        let metadata = &mut loaded.metadata;
        if metadata.snapshots.contains_key(key) {
            return Err(Error::already_exists(key));
        }
        if !parent.is_empty() {
            let p = metadata.snapshots.get(parent).ok_or_else(|| Error::not_found(parent))?;
            if p.kind != "committed" {
                return Err(Error::invalid_argument(format!("parent {parent:?} is not a committed snapshot")));
            }
        }
        let id = metadata.next_id;
        metadata.next_id += 1;
        let dir = self.snapshot_dir(id);
        let made = fs::create_dir_all(dir.join("fs")).and_then(|()| fs::create_dir(dir.join("work")));
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&dir);
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
            revision: metadata.next_revision(),
        };
        let mounts = self.mounts_of(metadata, &record);
        metadata.snapshots.insert(key.into(), record);
        if let Err(e) = self.save(&mut loaded) {
            loaded.metadata.snapshots.remove(key);
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(mounts)
    }
}

impl Snapshotter for Layers {
    const NAME: &'static str = "layers";

    fn new(init: Init) -> Result<Self> {
        let config: Config = init.config()?;
        if !config.host_root.starts_with('/') {
            return Err(Error {
                config_path: vec!["host_root".into()],
                ..Error::invalid_argument("host_root must be the granted directory's absolute host path")
            });
        }
        let backend = Self::open(Path::new(&config.dir), Path::new(&config.host_root))?;
        // Through the host's log import: berthd's log, tagged with the plugin.
        init.host.info(&format!("layers in {} (host {})", config.dir, config.host_root));
        Ok(backend)
    }

    fn stat(&self, key: &str) -> Result<Info> {
        let loaded = self.lock()?;
        let r = loaded.metadata.snapshots.get(key).ok_or_else(|| Error::not_found(key))?;
        Ok(Self::info(key, r))
    }

    fn revision(&self, key: &str) -> Result<Option<u64>> {
        let loaded = self.lock()?;
        let r = loaded.metadata.snapshots.get(key).ok_or_else(|| Error::not_found(key))?;
        Ok(Some(r.revision))
    }

    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let mut loaded = self.lock()?;
        let r = loaded.metadata.snapshots.get(&info.name).ok_or_else(|| Error::not_found(&info.name))?;
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
        let revision = loaded.metadata.next_revision();
        let r = loaded.metadata.snapshots.get_mut(&info.name).expect("checked above");
        let before = (r.labels.clone(), r.updated, r.revision);
        r.labels = labels;
        r.updated = now();
        r.revision = revision;
        let updated = Self::info(&info.name, r);
        if let Err(e) = self.save(&mut loaded) {
            let r = loaded.metadata.snapshots.get_mut(&info.name).expect("checked above");
            (r.labels, r.updated, r.revision) = before;
            return Err(e);
        }
        Ok(updated)
    }

    fn usage(&self, key: &str) -> Result<UsageResponse> {
        let dir = {
            let loaded = self.lock()?;
            self.snapshot_dir(loaded.metadata.snapshots.get(key).ok_or_else(|| Error::not_found(key))?.id).join("fs")
        };
        let (size, inodes) = usage_of(&dir).map_err(|e| Error::io(format!("measuring snapshot {key}"), e))?;
        Ok(UsageResponse { size: size as i64, inodes: inodes as i64 })
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let loaded = self.lock()?;
        let r = loaded.metadata.snapshots.get(key).ok_or_else(|| Error::not_found(key))?;
        if r.kind == "committed" {
            return Err(Error::failed_precondition(format!("snapshot {key} is committed: it has no mounts")));
        }
        Ok(self.mounts_of(&loaded.metadata, r))
    }

    fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels)
    }

    fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels)
    }

    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        let mut loaded = self.lock()?;
        let metadata = &mut loaded.metadata;
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
        record.revision = metadata.next_revision();
        metadata.snapshots.insert(name.into(), record);
        if let Err(e) = self.save(&mut loaded) {
            loaded.metadata.snapshots.remove(name);
            loaded.metadata.snapshots.insert(key.into(), active);
            return Err(e);
        }
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<()> {
        let mut loaded = self.lock()?;
        let metadata = &mut loaded.metadata;
        let r = metadata.snapshots.get(key).ok_or_else(|| Error::not_found(key))?;
        if let Some(child) = metadata.snapshots.iter().find(|(_, c)| c.parent == key).map(|(k, _)| k.clone()) {
            return Err(Error::failed_precondition(format!("snapshot {key} has children ({child})")));
        }
        let id = r.id;
        let record = metadata.snapshots.remove(key).expect("checked above");
        if let Err(e) = self.save(&mut loaded) {
            loaded.metadata.snapshots.insert(key.into(), record);
            return Err(e);
        }
        // The record is gone: a directory left by a failure here is cleanup's.
        let _ = fs::remove_dir_all(self.snapshot_dir(id));
        Ok(())
    }

    fn list(&self) -> Result<Vec<Info>> {
        let loaded = self.lock()?;
        Ok(loaded.metadata.snapshots.iter().map(|(k, r)| Self::info(k, r)).collect())
    }

    fn cleanup(&self) -> Result<()> {
        let loaded = self.lock()?;
        let dir = self.dir.join("snapshots");
        let entries = fs::read_dir(&dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        for entry in entries.flatten() {
            let owned = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|id| loaded.metadata.snapshots.values().any(|r| r.id == id));
            if !owned && entry.metadata().map(|m| m.is_dir()).unwrap_or(false) {
                fs::remove_dir_all(entry.path())
                    .map_err(|e| Error::io(format!("removing {}", entry.path().display()), e))?;
            }
        }
        Ok(())
    }
}

berth_plugin_sdk::export_snapshot!(Layers);
