//! A wasm snapshot plugin as a core [`Snapshotter`]: each call one call of `berth:snapshot/snapshotter`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_core::mount::Mount;
use berth_core::snapshot::{Info, Kind as SnapshotKind, Labels, Result, SnapshotError, Snapshotter, Usage, WalkFilter};
use wasmtime::Store;

use crate::ctx::Ctx;
use crate::plugin::WasmPlugin;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../proto/wit/snapshot",
        world: "berth:snapshot/snapshot-plugin",
    });
}

use bindings::berth::snapshot::host;
use bindings::berth::snapshot::types as wit;
use bindings::{SnapshotPlugin, SnapshotPluginPre};

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

crate::plugin::wasm_kind!(SnapshotWorld, SnapshotPlugin, SnapshotPluginPre, berth_snapshot_snapshotter, package: "berth:snapshot", export: "berth:snapshot/snapshotter@1.0.0", world: "berth:snapshot/snapshot-plugin@1.0.0");

/// The adapter.
pub struct WasmSnapshotter {
    plugin: Arc<WasmPlugin<SnapshotWorld>>,
}

impl WasmSnapshotter {
    /// Wraps a loaded plugin.
    pub fn new(plugin: Arc<WasmPlugin<SnapshotWorld>>) -> Self {
        Self { plugin }
    }

    /// Calls `method`, turning the guest's typed errors into snapshot errors and the host's into internal
    /// ones naming the plugin.
    async fn call<R, F>(&self, method: &'static str, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&SnapshotPlugin, &mut Store<Ctx>) -> wasmtime::Result<std::result::Result<R, wit::Error>>
            + Send
            + 'static,
    {
        match self.plugin.call(method, f).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(self.error(method, e)),
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
        labels: info.labels.into_iter().collect(),
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
        labels: info.labels.into_iter().collect(),
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
        let key = key.to_owned();
        let info = self.call("stat", move |b, s| b.berth_snapshot_snapshotter().call_stat(s, &key)).await?;
        Ok(info_from(info))
    }

    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let (info, paths) = (info_to(info), fieldpaths.to_vec());
        let info =
            self.call("update", move |b, s| b.berth_snapshot_snapshotter().call_update(s, &info, &paths)).await?;
        Ok(info_from(info))
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
        let (name, key, labels) = (name.to_owned(), key.to_owned(), labels_to(labels));
        self.call("commit", move |b, s| b.berth_snapshot_snapshotter().call_commit(s, &name, &key, &labels)).await
    }

    async fn remove(&self, key: &str) -> Result<()> {
        let key = key.to_owned();
        self.call("remove", move |b, s| b.berth_snapshot_snapshotter().call_remove(s, &key)).await
    }

    async fn walk(&self, filter: WalkFilter<'_>) -> Result<Vec<Info>> {
        let infos = self.call("list", move |b, s| b.berth_snapshot_snapshotter().call_list(s)).await?;
        Ok(infos.into_iter().map(info_from).filter(|i| filter(i)).collect())
    }

    async fn cleanup(&self) -> Result<()> {
        self.call("cleanup", move |b, s| b.berth_snapshot_snapshotter().call_cleanup(s)).await
    }
}
