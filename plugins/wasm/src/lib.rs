//! The `wasm` plugin source of berthd: plugins as wasm components, run by wasmtime with WASI p2, each kind
//! a versioned WIT package of `proto/wit` (`berth:snapshot@1.1.0`, world `snapshot-plugin`, its `revisions`
//! optional: [`snapshot`];
//! `berth:monitor@1.0.0`, world `monitor-plugin`, whose `publish` reaches berthd's event exchange;
//! `berth:runtime@1.0.0`, world `function-runtime`, a function runtime whose tasks berthd keeps: [`runtime`]).
//!
//! ```toml
//! [plugins."snapshot.layers"]
//! source = "wasm"
//! path = "/usr/lib/berth/layers.wasm"             # absolute
//! required = false
//! preopens = [{ host = "/var/lib/layers", guest = "/layers", read_only = false }]
//! env = { RUST_BACKTRACE = "1" }
//! network = false                                  # no sockets unless granted
//! memory_limit = "64MiB"                           # per instance
//! call_timeout = "5s"                              # per call
//! instances = 1                                    # calls served at once; more wait
//! watch = true                                     # a replaced file is loaded without a restart
//! [plugins."snapshot.layers".config]              # handed to the guest's init as JSON
//! host_root = "/var/lib/layers"
//! ```
//!
//! Loading, each step refusing the plugin with its reason (berthd carries on unless it is required):
//!
//! 1. the file is read and hashed (sha256, shown by introspection) and must be a wasm component (a core
//!    module or anything else is refused before compiling);
//! 2. it is compiled, or its compiled code read from the cache (`<root>/wasm-cache/<sha256>-<engine>.cwasm`,
//!    written atomically; an unreadable entry is compiled again);
//! 3. it must export the kind's interface in this berthd's major version (another kind, another major
//!    version and anything else are told apart) and import nothing but WASI and the kind's host interface;
//! 4. one instance is made: `describe` (its name must be the table's, its version is shown) and `init` with
//!    the plugin's config (a config error it reports is located in the config file).
//!
//! Every call then runs where it may block without stalling other tasks (its worker turned blocking with
//! `block_in_place` on berthd's multi-threaded runtime, `spawn_blocking` elsewhere), under the table's limits
//! ([`plugin`]); a trap or a hit limit fails that call with an error naming the plugin and what was hit, is
//! kept as the plugin's last error, and the next call gets a fresh instance. A replaced file is loaded while
//! the old one keeps serving, and swapped in once it loaded; one that fails to load leaves the old one.

mod ctx;
mod engine;
pub mod monitor;
pub mod options;
pub mod plugin;
pub mod runtime;
pub mod snapshot;

use std::sync::{Arc, Weak};

use berth_core::events::Exchange;
use berth_core::external::{LoadContext, PluginSource, Reloader};
use berth_core::monitor::SharedMonitor;
use berth_core::plugin::{InitError, Instance, PluginKind};
use berth_core::runtime::SharedRuntime;
use berth_core::snapshot::SharedSnapshotter;

use ctx::HostState;
pub use options::WasmOptions;
use plugin::{Kind, WasmPlugin};

/// The `wasm` source, for berthd to register ([`berth_core::registry::Registry::add_source`]).
pub fn source() -> PluginSource {
    PluginSource::new::<WasmOptions, _, _>("wasm", load)
}

async fn load(ctx: LoadContext) -> Result<Instance, InitError> {
    match ctx.plugin.id.kind {
        PluginKind::Snapshot => {
            let plugin = load_kind::<snapshot::SnapshotWorld>(&ctx, None).await?;
            let backend: SharedSnapshotter = Arc::new(snapshot::WasmSnapshotter::new(plugin));
            Ok(Instance::new(backend))
        }
        // A monitor's `publish` import goes to berthd's event exchange (which the registry starts before every
        // external monitor).
        PluginKind::Monitor => {
            let exchange = ctx.init.get::<Exchange>(&berth_core::services::exchange_id()).map(|e| (*e).clone());
            let host: HostState = Arc::new(monitor::MonitorHost { exchange });
            let plugin = load_kind::<monitor::MonitorWorld>(&ctx, Some(host)).await?;
            let backend: SharedMonitor = Arc::new(monitor::WasmMonitor::new(plugin));
            Ok(Instance::new(backend))
        }
        // A function runtime: berthd keeps its tasks, the component runs each process ([`runtime`]).
        PluginKind::Runtime => {
            let plugin = load_kind::<runtime::FunctionWorld>(&ctx, None).await?;
            let mount_dir = ctx.init.daemon_config().state.join(ctx.plugin.id.to_string()).join("rootfs");
            let backend: SharedRuntime = Arc::new(runtime::WasmRuntime::new(plugin, mount_dir));
            Ok(Instance::new(backend))
        }
        kind => Err(InitError::Failed(format!(
            "wasm {kind} plugins are not supported by this berthd (wasm plugins are snapshot, runtime or monitor plugins)"
        ))),
    }
}

/// Loads the plugin's file as a component of kind `K` (off the async workers: compiling can take a while),
/// then watches the file if the table asks and answers `berth plugins reload`.
async fn load_kind<K: Kind>(ctx: &LoadContext, host: Option<HostState>) -> Result<Arc<WasmPlugin<K>>, InitError> {
    let options = (*ctx.options::<WasmOptions>()).clone();
    let cache_dir = ctx.init.daemon_config().root.join("wasm-cache");
    let (plugin, status) = (ctx.plugin.clone(), ctx.status.clone());
    let loaded =
        tokio::task::spawn_blocking(move || WasmPlugin::<K>::load_with(plugin, options, status, cache_dir, host))
            .await
            .map_err(|e| InitError::Failed(format!("loading the plugin did not finish: {e}")))?
            .map_err(InitError::Failed)?;
    let plugin = Arc::new(loaded);
    tracing::info!(plugin = %ctx.plugin.id, path = %ctx.plugin.path.display(), version = %plugin.current().described.version, "wasm plugin loaded");
    if plugin.watched() {
        watch(Arc::downgrade(&plugin));
    }
    ctx.status.set_reload(reloader(Arc::downgrade(&plugin)));
    Ok(plugin)
}

/// `berth plugins reload`: loads the file again and swaps it in, whether it changed or not.
fn reloader<K: Kind>(plugin: Weak<WasmPlugin<K>>) -> Reloader {
    Reloader(Arc::new(move || {
        let plugin = plugin.clone();
        Box::pin(async move {
            let plugin = plugin.upgrade().ok_or("the plugin is no longer loaded")?;
            tokio::task::spawn_blocking(move || {
                plugin.reload()?;
                let serving = plugin.current();
                Ok((serving.sha256.clone(), serving.described.version.clone()))
            })
            .await
            .map_err(|e| format!("reloading did not finish: {e}"))?
        })
    }))
}

/// Checks the plugin's file every [`plugin::WATCH_INTERVAL`] while the plugin lives, and reloads it when it
/// changed.
fn watch<K: Kind>(plugin: Weak<WasmPlugin<K>>) {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(plugin::WATCH_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let Some(plugin) = plugin.upgrade() else { return };
            let _ = tokio::task::spawn_blocking(move || plugin.reload_if_changed()).await;
        }
    });
}
