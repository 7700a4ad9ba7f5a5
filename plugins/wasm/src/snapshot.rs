//! A wasm snapshot plugin as a core [`Snapshotter`]: each call one call of `berth:snapshot/snapshotter`, and a
//! `stat` first asks `berth:snapshot/revisions` (1.1.0) if the component exports it, answering from the copy
//! kept under an unchanged revision ([`StatCache`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use berth_core::mount::Mount;
use berth_core::snapshot::stat_cache::StatCache;
use berth_core::snapshot::{Info, Kind as SnapshotKind, Labels, Result, SnapshotError, Snapshotter, Usage, WalkFilter};
use wasmtime::component::InstancePre;
use wasmtime::{AsContextMut, Store};

use crate::ctx::Ctx;
use crate::plugin::WasmPlugin;

mod bindings {
    // The world with revisions, for its interfaces' bindings; a component need only match the base world
    // (`SnapshotInstancePre` looks the revisions up optionally).
    wasmtime::component::bindgen!({
        path: "../../proto/wit/snapshot",
        world: "berth:snapshot/snapshot-plugin-revisions",
    });
}

use bindings::berth::snapshot::host;
use bindings::berth::snapshot::types as wit;
use bindings::exports::berth::snapshot::{revisions, snapshotter};

/// The exported name of the revisions interface, as 1.1.0 added it.
const REVISIONS: &str = "berth:snapshot/revisions@1.1.0";

/// One instance of a snapshot component: its snapshotter, and its revisions if it exports them.
pub struct SnapshotInstance {
    snapshotter: snapshotter::Guest,
    revisions: Option<revisions::Guest>,
}

impl SnapshotInstance {
    /// Adds the host imports (those of the base world: the revisions world imports nothing more).
    pub fn add_to_linker<T, D>(
        linker: &mut wasmtime::component::Linker<T>,
        host_getter: fn(&mut T) -> D::Data<'_>,
    ) -> wasmtime::Result<()>
    where
        D: wasmtime::component::HasData,
        for<'a> D::Data<'a>: host::Host + wit::Host,
        T: 'static,
    {
        bindings::SnapshotPluginRevisions::add_to_linker::<T, D>(linker, host_getter)
    }

    fn berth_snapshot_snapshotter(&self) -> &snapshotter::Guest {
        &self.snapshotter
    }
}

/// A checked snapshot component, ready to instantiate.
pub struct SnapshotInstancePre<T: 'static> {
    instance_pre: InstancePre<T>,
    snapshotter: snapshotter::GuestIndices,
    revisions: Option<revisions::GuestIndices>,
}

impl<T: 'static> SnapshotInstancePre<T> {
    /// Finds the exports: the snapshotter must be there; the revisions are absent from a 1.0.0 component,
    /// whose every stat is then fetched whole, but must match if present.
    pub fn new(instance_pre: InstancePre<T>) -> wasmtime::Result<Self> {
        let snapshotter = snapshotter::GuestIndices::new(&instance_pre)?;
        let revisions = match instance_pre.component().get_export_index(None, REVISIONS) {
            Some(_) => Some(revisions::GuestIndices::new(&instance_pre)?),
            None => None,
        };
        Ok(Self { instance_pre, snapshotter, revisions })
    }

    /// Instantiates, type-checking the exports.
    pub fn instantiate(&self, mut store: impl AsContextMut<Data = T>) -> wasmtime::Result<SnapshotInstance> {
        let mut store = store.as_context_mut();
        let instance = self.instance_pre.instantiate(&mut store)?;
        let snapshotter = self.snapshotter.load(&mut store, &instance)?;
        let revisions = self.revisions.as_ref().map(|r| r.load(&mut store, &instance)).transpose()?;
        Ok(SnapshotInstance { snapshotter, revisions })
    }
}

impl host::Host for Ctx {
    fn log(&mut self, level: host::Level, message: String) {
        let plugin = &*self.plugin;
        match level {
            host::Level::Error => tracing::error!(target: "berth_plugin", %plugin, "{message}"),
            host::Level::Warn => tracing::warn!(target: "berth_plugin", %plugin, "{message}"),
            host::Level::Info => tracing::info!(target: "berth_plugin", %plugin, "{message}"),
            host::Level::Debug => tracing::debug!(target: "berth_plugin", %plugin, "{message}"),
            host::Level::Trace => tracing::trace!(target: "berth_plugin", %plugin, "{message}"),
        }
    }
}

impl wit::Host for Ctx {}

/// The snapshot kind's world.
pub struct SnapshotWorld;

crate::plugin::wasm_kind!(SnapshotWorld, SnapshotInstance, SnapshotInstancePre, berth_snapshot_snapshotter, package: "berth:snapshot", export: "berth:snapshot/snapshotter@1.1.0", world: "berth:snapshot/snapshot-plugin@1.1.0");

/// What the first call of a stat found.
enum Revised {
    /// The snapshot's revision: the answer is the kept copy, or fetched.
    Revision(u64),
    /// No revision: the whole answer.
    Whole(wit::Info),
}

/// The adapter.
pub struct WasmSnapshotter {
    plugin: Arc<WasmPlugin<SnapshotWorld>>,
    /// The stat answers kept under the guest's revisions, and the lineage of instances that gave them
    /// ([`WasmPlugin::call_in_lineage`]): a reload or a fresh instance starts an empty cache, as what a guest
    /// keeps in memory (a counter) may have started again.
    stats: Mutex<(u64, Arc<StatCache>)>,
    /// Held across an update and the revision read after it, so the revision names that update's answer
    /// and not a later update's state (see `update`).
    updates: tokio::sync::Mutex<()>,
}

impl WasmSnapshotter {
    /// Wraps a loaded plugin.
    pub fn new(plugin: Arc<WasmPlugin<SnapshotWorld>>) -> Self {
        Self { plugin, stats: Mutex::new((0, Arc::new(StatCache::default()))), updates: tokio::sync::Mutex::new(()) }
    }

    /// The cache of answers of `lineage`; none for an answer of instances older than the kept ones.
    fn stats_of(&self, lineage: u64) -> Option<Arc<StatCache>> {
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        if lineage > stats.0 {
            *stats = (lineage, Arc::new(StatCache::default()));
        }
        (lineage == stats.0).then(|| Arc::clone(&stats.1))
    }

    /// Forgets what is kept of `keys` (berthd changed them).
    fn forget(&self, keys: &[&str]) {
        let stats = Arc::clone(&self.stats.lock().unwrap_or_else(PoisonError::into_inner).1);
        for key in keys {
            stats.forget(key);
        }
    }

    /// The whole `stat` answer, with its lineage.
    async fn fetch(&self, key: &str) -> Result<(Info, u64)> {
        let key = key.to_owned();
        let (info, lineage) =
            self.call_in_lineage("stat", move |b, s| b.berth_snapshot_snapshotter().call_stat(s, &key)).await?;
        Ok((info_from(info), lineage))
    }

    /// Calls `method`, turning the guest's typed errors into snapshot errors and the host's into internal
    /// ones naming the plugin.
    async fn call<R, F>(&self, method: &'static str, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&SnapshotInstance, &mut Store<Ctx>) -> wasmtime::Result<std::result::Result<R, wit::Error>>
            + Send
            + 'static,
    {
        Ok(self.call_in_lineage(method, f).await?.0)
    }

    /// [`Self::call`], with the lineage of the answer.
    async fn call_in_lineage<R, F>(&self, method: &'static str, f: F) -> Result<(R, u64)>
    where
        R: Send + 'static,
        F: FnOnce(&SnapshotInstance, &mut Store<Ctx>) -> wasmtime::Result<std::result::Result<R, wit::Error>>
            + Send
            + 'static,
    {
        match self.plugin.call_in_lineage(method, f).await {
            Ok((Ok(answer), lineage)) => Ok((answer, lineage)),
            Ok((Err(e), _)) => Err(self.error(method, e)),
            Err(e) => Err(SnapshotError::Other(e.into())),
        }
    }

    fn error(&self, method: &str, e: wit::Error) -> SnapshotError {
        let plugin = &self.plugin.id;
        match e {
            wit::Error::NotFound(m) => SnapshotError::NotFound(m),
            wit::Error::AlreadyExists(m) => SnapshotError::AlreadyExists(m),
            wit::Error::InvalidArgument(m) => SnapshotError::InvalidArgument(m),
            wit::Error::FailedPrecondition(m) => SnapshotError::FailedPrecondition(m),
            wit::Error::Unimplemented(m) => SnapshotError::Other(berth_core::Error::Unimplemented(m)),
            wit::Error::Unavailable(m) => {
                SnapshotError::Other(berth_core::Error::Unavailable(format!("plugin {plugin}: {m}")))
            }
            wit::Error::Internal(m) => {
                self.plugin.record_internal(method, &m);
                SnapshotError::Other(berth_core::Error::Internal(format!("plugin {plugin}: {m}")))
            }
        }
    }
}

impl WasmSnapshotter {
    /// The mounts, if every host path they name is inside a directory granted to the component (writable
    /// where the mount writes): berthd mounts what a snapshot plugin returns, so without this check a
    /// component could hand a container any file of the host. Paths are resolved (symlinks, `..`) first.
    fn checked(&self, method: &str, mounts: Vec<wit::Mount>) -> Result<Vec<Mount>> {
        let grants = &self.plugin.options().preopens;
        let granted = |path: &str, write: bool| {
            let Ok(real) = std::fs::canonicalize(path) else { return false };
            grants.iter().any(|g| {
                (write <= !g.read_only) && std::fs::canonicalize(&g.host).is_ok_and(|host| real.starts_with(host))
            })
        };
        for m in &mounts {
            let mut paths: Vec<(&str, bool)> = Vec::new();
            if m.type_ == "overlay" {
                for option in &m.options {
                    if let Some(lowers) = option.strip_prefix("lowerdir=") {
                        paths.extend(lowers.split(':').map(|p| (p, false)));
                    } else if let Some(dir) =
                        option.strip_prefix("upperdir=").or_else(|| option.strip_prefix("workdir="))
                    {
                        paths.push((dir, true));
                    }
                }
            } else if m.source.starts_with('/') || m.type_.contains("bind") {
                paths.push((&m.source, !m.options.iter().any(|o| o == "ro")));
            }
            if let Some((path, write)) = paths.into_iter().find(|(p, w)| !granted(p, *w)) {
                let error = format!(
                    "{method} returned a {} mount of {path}, which is not inside a directory granted to it{}",
                    m.type_,
                    if write { " for writing" } else { "" }
                );
                self.plugin.record_internal(method, &error);
                return Err(SnapshotError::Other(berth_core::Error::Internal(format!(
                    "plugin {}: {error}",
                    self.plugin.id
                ))));
            }
        }
        Ok(mounts_from(mounts))
    }
}

fn time_from(t: wit::Timestamp) -> SystemTime {
    let since = Duration::new(t.seconds.max(0) as u64, t.nanos.min(999_999_999));
    SystemTime::UNIX_EPOCH + since
}

fn time_to(t: SystemTime) -> wit::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    wit::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() }
}

fn info_from(info: wit::Info) -> Info {
    Info {
        kind: match info.kind {
            wit::Kind::View => SnapshotKind::View,
            wit::Kind::Active => SnapshotKind::Active,
            wit::Kind::Committed => SnapshotKind::Committed,
        },
        name: info.name,
        parent: (!info.parent.is_empty()).then_some(info.parent),
        labels: Arc::new(info.labels.into_iter().collect()),
        created: time_from(info.created),
        updated: time_from(info.updated),
    }
}

fn info_to(info: Info) -> wit::Info {
    wit::Info {
        kind: match info.kind {
            SnapshotKind::View => wit::Kind::View,
            SnapshotKind::Active => wit::Kind::Active,
            SnapshotKind::Committed => wit::Kind::Committed,
        },
        name: info.name,
        parent: info.parent.unwrap_or_default(),
        // Moved out when the caller holds the only reference (an update's request), copied otherwise.
        labels: Arc::unwrap_or_clone(info.labels).into_iter().collect(),
        created: time_to(info.created),
        updated: time_to(info.updated),
    }
}

fn mounts_from(mounts: Vec<wit::Mount>) -> Vec<Mount> {
    mounts
        .into_iter()
        .map(|m| Mount { kind: m.type_, source: m.source, target: m.target, options: m.options })
        .collect()
}

fn labels_to(labels: Labels) -> Vec<(String, String)> {
    labels.into_iter().collect()
}

#[async_trait::async_trait]
impl Snapshotter for WasmSnapshotter {
    fn name(&self) -> &str {
        &self.plugin.id.name
    }

    async fn stat(&self, key: &str) -> Result<Info> {
        let owned = key.to_owned();
        // One call into the instance: the revision, and the whole answer at once when there is none (a 1.0.0
        // component, or a snapshot the guest keeps no revision for).
        let (answer, lineage) = self
            .call_in_lineage("stat", move |b, s| {
                let revision = match &b.revisions {
                    Some(revisions) => match revisions.call_revision(&mut *s, &owned)? {
                        Ok(revision) => revision,
                        Err(e) => return Ok(Err(e)),
                    },
                    None => None,
                };
                Ok(match revision {
                    Some(revision) => Ok(Revised::Revision(revision)),
                    None => b.berth_snapshot_snapshotter().call_stat(s, &owned)?.map(Revised::Whole),
                })
            })
            .await?;
        let revision = match answer {
            Revised::Whole(info) => return Ok(info_from(info)),
            Revised::Revision(revision) => revision,
        };
        let Some(stats) = self.stats_of(lineage) else {
            return Ok(self.fetch(key).await?.0);
        };
        let fetched_in = std::sync::atomic::AtomicU64::new(lineage);
        let info = stats
            .stat(key, std::future::ready(Ok(Some(revision))), || async {
                let (info, lineage) = self.fetch(key).await?;
                fetched_in.store(lineage, std::sync::atomic::Ordering::Relaxed);
                Ok(info)
            })
            .await?;
        // Fetched from other instances than the revision came from: kept under a revision they may not share.
        if fetched_in.into_inner() != lineage {
            stats.forget(key);
        }
        Ok(info)
    }

    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let name = info.name.clone();
        let (info, paths) = (info_to(info), fieldpaths.to_vec());
        let _one_update_at_a_time = self.updates.lock().await;
        let answer = self
            .call_in_lineage("update", move |b, s| b.berth_snapshot_snapshotter().call_update(s, &info, &paths))
            .await;
        self.forget(&[&name]);
        let (info, lineage) = answer?;
        let info = info_from(info);
        // The answer is the snapshot's new state, whole: kept under the revision read right after it (no
        // other update can come between, and only berthd's calls move a revision), so the next stat need
        // not copy every label out of the guest again. Only when both calls were answered by the instances
        // whose answers the cache holds; a failed read (the snapshot removed meanwhile) keeps nothing.
        let key = name.clone();
        let revision = self
            .call_in_lineage("revision", move |b, s| match &b.revisions {
                Some(revisions) => revisions.call_revision(s, &key),
                None => Ok(Ok(None)),
            })
            .await;
        if let Ok((Some(revision), read_in)) = revision
            && read_in == lineage
            && let Some(stats) = self.stats_of(lineage)
        {
            stats.keep(&name, revision, &info);
        }
        Ok(info)
    }

    async fn usage(&self, key: &str) -> Result<Usage> {
        let key = key.to_owned();
        let u = self.call("usage", move |b, s| b.berth_snapshot_snapshotter().call_usage(s, &key)).await?;
        Ok(Usage { size: u.size, inodes: u.inodes })
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let key = key.to_owned();
        let mounts = self.call("mounts", move |b, s| b.berth_snapshot_snapshotter().call_mounts(s, &key)).await?;
        self.checked("mounts", mounts)
    }

    async fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        let (key, parent, labels) = (key.to_owned(), parent.unwrap_or_default().to_owned(), labels_to(labels));
        let mounts = self
            .call("prepare", move |b, s| b.berth_snapshot_snapshotter().call_prepare(s, &key, &parent, &labels))
            .await?;
        self.checked("prepare", mounts)
    }

    async fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        let (key, parent, labels) = (key.to_owned(), parent.unwrap_or_default().to_owned(), labels_to(labels));
        let mounts =
            self.call("view", move |b, s| b.berth_snapshot_snapshotter().call_view(s, &key, &parent, &labels)).await?;
        self.checked("view", mounts)
    }

    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        let forgotten = [name, key];
        let (name, key, labels) = (name.to_owned(), key.to_owned(), labels_to(labels));
        let answer =
            self.call("commit", move |b, s| b.berth_snapshot_snapshotter().call_commit(s, &name, &key, &labels)).await;
        self.forget(&forgotten);
        answer
    }

    async fn remove(&self, key: &str) -> Result<()> {
        let owned = key.to_owned();
        let answer = self.call("remove", move |b, s| b.berth_snapshot_snapshotter().call_remove(s, &owned)).await;
        self.forget(&[key]);
        answer
    }

    async fn walk(&self, filter: WalkFilter<'_>) -> Result<Vec<Info>> {
        let infos = self.call("list", move |b, s| b.berth_snapshot_snapshotter().call_list(s)).await?;
        Ok(infos.into_iter().map(info_from).filter(|i| filter(i)).collect())
    }

    async fn cleanup(&self) -> Result<()> {
        self.call("cleanup", move |b, s| b.berth_snapshot_snapshotter().call_cleanup(s)).await
    }
}
