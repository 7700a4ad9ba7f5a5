//! One loaded wasm plugin, whatever its kind: the checked component of its file (a generation), the
//! instances that serve calls, the limits every call runs under, and the swap to a new generation.
//!
//! A call takes one of the generation's permits (`instances` of them; calls beyond wait), an idle instance
//! (or a fresh one: instantiated from the `InstancePre`, then the guest's `init` with the plugin's config), and
//! runs where it may block (see [`WasmPlugin::call`]) with the time limit as an epoch deadline and the memory limit in the store's
//! limiter. A trap or a hit limit fails that call only: the instance is dropped and the next call gets a fresh
//! one. A reload makes a whole new generation beside the serving one and swaps it in; calls in flight keep
//! the generation they started on, and finish there.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use berth_core::external::{ExternalPlugin, StatusHandle};
use berth_core::plugin::PluginId;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Store, Trap};

use crate::ctx::{Ctx, HostState};
use crate::engine::{self, Cached};
use crate::options::WasmOptions;

/// What a guest says of itself (`describe`).
#[derive(Debug, Clone)]
pub struct Described {
    pub name: String,
    pub version: String,
    pub sdk: String,
}

/// A failed `init`, as the guest reported it.
#[derive(Debug, Clone)]
pub struct InitFailure {
    pub message: String,
    pub config_path: Vec<String>,
}

/// What the source knows of one kind's WIT world.
pub trait Kind: Send + Sync + 'static {
    /// The bindings' pre-instantiated component.
    type Pre: Send + Sync + 'static;
    /// One instance's bindings.
    type Bindings: Send + 'static;
    /// The kind's WIT package, unversioned (`berth:snapshot`).
    const PACKAGE: &'static str;
    /// The interface the component must export, versioned (`berth:snapshot/snapshotter@1.0.0`).
    const EXPORT: &'static str;
    /// The world, as the status row shows it.
    const WORLD: &'static str;
    /// Adds the kind's host imports.
    fn link(linker: &mut Linker<Ctx>) -> wasmtime::Result<()>;
    /// Checks the component's imports and exports against the world.
    fn pre(pre: InstancePre<Ctx>) -> wasmtime::Result<Self::Pre>;
    /// Instantiates.
    fn instantiate(pre: &Self::Pre, store: &mut Store<Ctx>) -> wasmtime::Result<Self::Bindings>;
    /// Calls `describe`.
    fn describe(b: &Self::Bindings, store: &mut Store<Ctx>) -> wasmtime::Result<Described>;
    /// Calls `init`.
    fn init(
        b: &Self::Bindings,
        store: &mut Store<Ctx>,
        id: &str,
        config_json: &str,
    ) -> wasmtime::Result<Result<(), InitFailure>>;
}

/// A call that failed in the host's terms (the guest's own typed errors are answers, not these).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The call ran past `call_timeout`.
    #[error("plugin {plugin}: call {method} exceeded its time limit of {limit}")]
    TimeLimit { plugin: String, method: &'static str, limit: String },
    /// The instance grew past `memory_limit`.
    #[error("plugin {plugin}: call {method} exceeded its memory limit of {limit}")]
    MemoryLimit { plugin: String, method: &'static str, limit: String },
    /// The guest trapped (a panic, an unreachable, an out-of-bounds access).
    #[error("plugin {plugin}: call {method} trapped: {message}")]
    Trapped { plugin: String, method: &'static str, message: String },
    /// A fresh instance could not be made.
    #[error("plugin {plugin}: making a fresh instance for call {method}: {message}")]
    Instance { plugin: String, method: &'static str, message: String },
    /// The blocking thread went away.
    #[error("plugin {plugin}: call {method} did not finish: {message}")]
    Lost { plugin: String, method: &'static str, message: String },
}

impl From<CallError> for berth_core::Error {
    fn from(e: CallError) -> Self {
        berth_core::Error::Internal(e.to_string())
    }
}

/// One instance: its store and bindings.
struct Live<K: Kind> {
    store: Store<Ctx>,
    bindings: K::Bindings,
}

/// One version of the plugin's file, checked and ready to instantiate.
pub struct Generation<K: Kind> {
    pre: K::Pre,
    /// The content hash of its file.
    pub sha256: String,
    /// What it said of itself.
    pub described: Described,
    /// Whether its code came from the cache.
    pub cached: Cached,
    idle: Mutex<Vec<Live<K>>>,
    permits: Arc<tokio::sync::Semaphore>,
}

/// The identity of a file on disk, to notice it was replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentity {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileIdentity {
    /// Of `path`, if it can be read.
    pub fn of(path: &std::path::Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Self { len: m.len(), modified: m.modified().ok(), inode: m.ino() })
    }
}

/// A loaded wasm plugin of kind `K`.
pub struct WasmPlugin<K: Kind> {
    /// Its id.
    pub id: PluginId,
    plugin: ExternalPlugin,
    options: WasmOptions,
    status: StatusHandle,
    cache_dir: PathBuf,
    current: RwLock<Arc<Generation<K>>>,
    /// How many generations were loaded (the first is 1).
    generations: Mutex<(u64, Option<FileIdentity>)>,
    name: Arc<str>,
    host: Option<HostState>,
}

impl<K: Kind> WasmPlugin<K> {
    /// Loads the plugin's file (on the calling thread, which may block): checks, compiles or reads the
    /// cache, makes one instance and initialises it, so a broken plugin fails here rather than at its first
    /// call. The error is the reason to refuse it, config errors located in the config file.
    pub fn load(
        plugin: ExternalPlugin,
        options: WasmOptions,
        status: StatusHandle,
        cache_dir: PathBuf,
    ) -> Result<Self, String> {
        Self::load_with(plugin, options, status, cache_dir, None)
    }

    /// [`WasmPlugin::load`], with `host` in every instance's [`Ctx::host`] for the kind's host imports.
    pub fn load_with(
        plugin: ExternalPlugin,
        options: WasmOptions,
        status: StatusHandle,
        cache_dir: PathBuf,
        host: Option<HostState>,
    ) -> Result<Self, String> {
        let identity = FileIdentity::of(&plugin.path);
        let name: Arc<str> = plugin.id.to_string().into();
        let generation = Self::generation(&plugin, &options, &status, &cache_dir, &name, &host, 1)?;
        Ok(Self {
            id: plugin.id.clone(),
            plugin,
            options,
            status,
            cache_dir,
            current: RwLock::new(Arc::new(generation)),
            generations: Mutex::new((1, identity)),
            name,
            host,
        })
    }

    /// The serving generation.
    pub fn current(&self) -> Arc<Generation<K>> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// What the table grants and limits.
    pub fn options(&self) -> &WasmOptions {
        &self.options
    }

    /// Whether the file is watched for changes.
    pub fn watched(&self) -> bool {
        self.options.watch
    }

    /// Loads the file again and, if it loads, swaps it in; otherwise the serving generation stays and the
    /// reason is the plugin's last error. Blocks.
    pub fn reload(&self) -> Result<(), String> {
        let mut generations = self.generations.lock().unwrap_or_else(PoisonError::into_inner);
        let identity = FileIdentity::of(&self.plugin.path);
        let number = generations.0 + 1;
        match Self::generation(
            &self.plugin,
            &self.options,
            &self.status,
            &self.cache_dir,
            &self.name,
            &self.host,
            number,
        ) {
            Ok(generation) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(generation);
                *generations = (number, identity);
                tracing::info!(plugin = %self.id, generation = number, "wasm plugin reloaded");
                Ok(())
            }
            Err(e) => {
                // The row shows the serving generation again, with the reason the new file was refused.
                let serving = self.current();
                self.status.update_origin(|o| {
                    o.sha256 = Some(serving.sha256.clone());
                    o.version = Some(serving.described.version.clone());
                    o.details.insert("generation".into(), generations.0.to_string());
                    o.details.insert("cache".into(), serving.cached.as_str().into());
                });
                // Not retried until the file changes again.
                generations.1 = identity;
                let error =
                    format!("reloading {}: {e}; the previous version keeps serving", self.plugin.path.display());
                tracing::warn!(plugin = %self.id, %error, "wasm plugin reload failed");
                self.status.record_error(error.clone());
                Err(error)
            }
        }
    }

    /// Reloads if the file changed since the serving generation was loaded.
    pub fn reload_if_changed(&self) {
        let changed = {
            let generations = self.generations.lock().unwrap_or_else(PoisonError::into_inner);
            let now = FileIdentity::of(&self.plugin.path);
            now.is_some() && now != generations.1
        };
        if changed {
            let _ = self.reload();
        }
    }

    fn generation(
        plugin: &ExternalPlugin,
        options: &WasmOptions,
        status: &StatusHandle,
        cache_dir: &std::path::Path,
        name: &Arc<str>,
        host: &Option<HostState>,
        number: u64,
    ) -> Result<Generation<K>, String> {
        let path = &plugin.path;
        let id = &plugin.id;
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let sha256: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        status.update_origin(|o| {
            o.sha256 = Some(sha256.clone());
            o.details.insert("wasmtime".into(), env!("BERTH_WASMTIME_VERSION").into());
            o.details.insert("generation".into(), number.to_string());
        });
        engine::check_header(&bytes).map_err(|e| format!("{} is not a wasm component: {e}", path.display()))?;
        let (component, cached) = engine::component(&bytes, &sha256, cache_dir)
            .map_err(|e| format!("{} is not a valid wasm component: {e}", path.display()))?;
        drop(bytes);
        status.update_origin(|o| {
            o.details.insert("cache".into(), cached.as_str().into());
        });
        check_world::<K>(&component, id)?;
        let mut linker = Linker::<Ctx>::new(engine::engine());
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| format!("linking WASI: {e:#}"))?;
        K::link(&mut linker).map_err(|e| format!("linking the host imports: {e:#}"))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| format!("the component needs what this berthd does not offer: {e:#}"))?;
        let pre = K::pre(pre).map_err(|e| format!("the component does not match world {}: {e:#}", K::WORLD))?;
        // The first instance is made now: it says who the plugin is, and its init checks the config.
        let mut store = new_store(name, options, host).map_err(|e| e.to_string())?;
        store.set_epoch_deadline(engine::ticks(options.call_timeout.0));
        let fail =
            |store: &Store<Ctx>, method, e: wasmtime::Error| classify(name, options, method, store, e).to_string();
        let bindings = K::instantiate(&pre, &mut store).map_err(|e| fail(&store, "instantiate", e))?;
        let described = K::describe(&bindings, &mut store).map_err(|e| fail(&store, "describe", e))?;
        status.update_origin(|o| {
            o.version = Some(described.version.clone());
            o.details.insert("world".into(), K::WORLD.into());
            o.details.insert("sdk".into(), described.sdk.clone());
        });
        if described.name != id.name {
            return Err(format!(
                "plugin is named {:?}, but its table is [plugins.\"{id}\"]: name the table [plugins.\"{}.{}\"]",
                described.name, id.kind, described.name
            ));
        }
        let config = String::from_utf8(plugin.config_json()).expect("JSON is UTF-8");
        match K::init(&bindings, &mut store, &id.to_string(), &config) {
            Ok(Ok(())) => {}
            Ok(Err(failure)) if !failure.config_path.is_empty() => {
                return Err(plugin.config_error(&failure.config_path, failure.message).to_string());
            }
            Ok(Err(failure)) => return Err(format!("the plugin's init failed: {}", failure.message)),
            Err(e) => return Err(fail(&store, "init", e)),
        }
        Ok(Generation {
            pre,
            sha256,
            described,
            cached,
            idle: Mutex::new(vec![Live { store, bindings }]),
            permits: Arc::new(tokio::sync::Semaphore::new(options.instances.get())),
        })
    }

    /// Runs `f` on an instance of the serving generation, where it may block: in place on a multi-threaded
    /// runtime, on the blocking pool otherwise.
    pub async fn call<R, F>(self: &Arc<Self>, method: &'static str, f: F) -> Result<R, CallError>
    where
        R: Send + 'static,
        F: FnOnce(&K::Bindings, &mut Store<Ctx>) -> wasmtime::Result<R> + Send + 'static,
    {
        let generation = self.current();
        let lost = |message: String| CallError::Lost { plugin: self.id.to_string(), method, message };
        let permit = Arc::clone(&generation.permits).acquire_owned().await.map_err(|e| lost(e.to_string()))?;
        // On a multi-threaded runtime (berthd's) the worker turns into a blocking thread for the call and its
        // other tasks move to another worker: the same effect as spawn_blocking without handing the call to
        // another thread, which is most of a short call's cost. A current-thread runtime cannot do that.
        if tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
            let _permit = permit;
            return tokio::task::block_in_place(|| self.call_blocking(&generation, method, f));
        }
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.call_blocking(&generation, method, f)
        })
        .await
        .unwrap_or_else(|e| Err(lost(e.to_string())))
    }

    fn call_blocking<R, F>(&self, generation: &Generation<K>, method: &'static str, f: F) -> Result<R, CallError>
    where
        F: FnOnce(&K::Bindings, &mut Store<Ctx>) -> wasmtime::Result<R>,
    {
        let idle = generation.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut live = match idle {
            Some(live) => live,
            None => self.fresh(generation, method).inspect_err(|e| self.record(e))?,
        };
        live.store.data_mut().limits.reset();
        live.store.set_epoch_deadline(engine::ticks(self.options.call_timeout.0));
        match f(&live.bindings, &mut live.store) {
            Ok(answer) => {
                generation.idle.lock().unwrap_or_else(PoisonError::into_inner).push(live);
                Ok(answer)
            }
            Err(e) => {
                // The instance is dropped: whatever state the trap left it in goes with it.
                let error = classify(&self.name, &self.options, method, &live.store, e);
                self.record(&error);
                Err(error)
            }
        }
    }

    /// A new instance of `generation`, initialised with the plugin's config.
    fn fresh(&self, generation: &Generation<K>, method: &'static str) -> Result<Live<K>, CallError> {
        let fail = |message: String| CallError::Instance { plugin: self.id.to_string(), method, message };
        let mut store = new_store(&self.name, &self.options, &self.host).map_err(|e| fail(e.to_string()))?;
        store.set_epoch_deadline(engine::ticks(self.options.call_timeout.0));
        let bindings = K::instantiate(&generation.pre, &mut store)
            .map_err(|e| fail(classify(&self.name, &self.options, "instantiate", &store, e).to_string()))?;
        let config = String::from_utf8(self.plugin.config_json()).expect("JSON is UTF-8");
        match K::init(&bindings, &mut store, &self.id.to_string(), &config) {
            Ok(Ok(())) => Ok(Live { store, bindings }),
            Ok(Err(failure)) => Err(fail(format!("init failed: {}", failure.message))),
            Err(e) => Err(fail(classify(&self.name, &self.options, "init", &store, e).to_string())),
        }
    }

    /// Keeps `error` as the plugin's last error, and logs it.
    pub fn record(&self, error: &CallError) {
        tracing::warn!(plugin = %self.id, error = %error, "wasm plugin call failed; the instance is replaced");
        self.status.record_error(error.to_string());
    }

    /// Keeps a guest's own internal error as the last error (its other errors are answers).
    pub fn record_internal(&self, method: &str, message: &str) {
        let error = format!("{method}: {message}");
        tracing::warn!(plugin = %self.id, %error, "wasm plugin call failed");
        self.status.record_error(error);
    }

    /// A dedicated instance of the serving generation for one long call (a runtime task's invocation), in a
    /// store whose context is `ctx` (the task's own stdio, args and environment: [`Ctx::with`]), under the
    /// memory limit and initialised with the plugin's config within `call_timeout`. It is neither pooled nor
    /// counted against `instances`; the caller sets the deadline of its call. Blocks.
    pub fn dedicated(&self, ctx: Ctx, method: &'static str) -> Result<(Store<Ctx>, K::Bindings), CallError> {
        let fail = |message: String| CallError::Instance { plugin: self.id.to_string(), method, message };
        let generation = self.current();
        let mut store = Store::new(engine::engine(), ctx);
        store.limiter(|ctx| &mut ctx.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(engine::ticks(self.options.call_timeout.0));
        let bindings = K::instantiate(&generation.pre, &mut store)
            .map_err(|e| fail(self.classify("instantiate", &store, e).to_string()))?;
        let config = String::from_utf8(self.plugin.config_json()).expect("JSON is UTF-8");
        match K::init(&bindings, &mut store, &self.id.to_string(), &config) {
            Ok(Ok(())) => Ok((store, bindings)),
            Ok(Err(failure)) => Err(fail(format!("init failed: {}", failure.message))),
            Err(e) => Err(fail(self.classify("init", &store, e).to_string())),
        }
    }

    /// What a failed call `method` into an instance of this plugin ran into.
    pub fn classify(&self, method: &'static str, store: &Store<Ctx>, e: wasmtime::Error) -> CallError {
        classify(&self.name, &self.options, method, store, e)
    }
}

/// A store for one instance: its WASI context and limiter, traps on epoch deadlines.
fn new_store(
    name: &Arc<str>,
    options: &WasmOptions,
    host: &Option<HostState>,
) -> Result<Store<Ctx>, crate::ctx::CtxError> {
    let mut ctx = Ctx::new(Arc::clone(name), options)?;
    ctx.host = host.clone();
    let mut store = Store::new(engine::engine(), ctx);
    store.limiter(|ctx| &mut ctx.limits);
    store.epoch_deadline_trap();
    Ok(store)
}

/// What a failed call into an instance ran into.
fn classify(
    name: &str,
    options: &WasmOptions,
    method: &'static str,
    store: &Store<Ctx>,
    e: wasmtime::Error,
) -> CallError {
    let plugin = name.to_string();
    if store.data().limits.hit {
        return CallError::MemoryLimit { plugin, method, limit: options.memory_limit.to_string() };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::TimeLimit { plugin, method, limit: options.call_timeout.to_string() },
        Some(trap) => CallError::Trapped { plugin, method, message: trap.to_string() },
        None => CallError::Trapped { plugin, method, message: format!("{e:#}") },
    }
}

/// Refuses a component that does not export the kind's interface in a version this berthd speaks, saying
/// what it is instead: another kind, another major version, or something else.
fn check_world<K: Kind>(component: &Component, id: &PluginId) -> Result<(), String> {
    let engine = engine::engine();
    let exports: Vec<String> = component.component_type().exports(engine).map(|(name, _)| name.to_string()).collect();
    if exports.iter().any(|e| e == K::EXPORT) {
        return Ok(());
    }
    let (_, wanted) = K::EXPORT.split_once('@').expect("exports are versioned");
    let major = |v: &str| v.split('.').next().map(str::to_owned);
    for export in &exports {
        let Some(rest) = export.strip_prefix("berth:") else { continue };
        let package = rest.split('/').next().unwrap_or_default();
        let version = export.split_once('@').map(|(_, v)| v).unwrap_or("unversioned");
        if format!("berth:{package}") == K::PACKAGE {
            if major(version) != major(wanted) {
                return Err(format!(
                    "the component speaks {}@{version}, this berthd speaks {}@{}.x (rebuild it with a berth-plugin-sdk of that major version)",
                    K::PACKAGE,
                    K::PACKAGE,
                    major(wanted).unwrap_or_default()
                ));
            }
        } else {
            return Err(format!(
                "the component is a {package} plugin (it exports {export}), but its table [plugins.\"{id}\"] makes it a {} plugin",
                id.kind
            ));
        }
    }
    Err(format!(
        "the component does not export {} (its exports: {})",
        K::EXPORT,
        if exports.is_empty() { "none".to_string() } else { exports.join(", ") }
    ))
}

/// How often a watched file is checked.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::SnapshotWorld;

    /// A component exporting an instance named `name` with one function.
    fn exporting(name: &str) -> Component {
        let text = format!(
            r#"(component
                (core module $m (func (export "f")))
                (core instance $i (instantiate $m))
                (type $t (func))
                (func $f (type $t) (canon lift (core func $i "f")))
                (instance $inst (export "describe" (func $f)))
                (export "{name}" (instance $inst)))"#
        );
        Component::new(engine::engine(), wat::parse_str(text).unwrap()).unwrap()
    }

    #[test]
    fn worlds_are_told_apart() {
        let id: PluginId = "snapshot.x".parse().unwrap();
        let e = check_world::<SnapshotWorld>(&exporting("berth:snapshot/snapshotter@2.0.0"), &id).unwrap_err();
        assert_eq!(
            e,
            "the component speaks berth:snapshot@2.0.0, this berthd speaks berth:snapshot@1.x (rebuild it with a berth-plugin-sdk of that major version)"
        );
        let e = check_world::<SnapshotWorld>(&exporting("berth:runtime/runtime@1.0.0"), &id).unwrap_err();
        assert_eq!(
            e,
            "the component is a runtime plugin (it exports berth:runtime/runtime@1.0.0), but its table [plugins.\"snapshot.x\"] makes it a snapshot plugin"
        );
        let e = check_world::<SnapshotWorld>(&exporting("example:other/thing"), &id).unwrap_err();
        assert_eq!(
            e,
            "the component does not export berth:snapshot/snapshotter@1.0.0 (its exports: example:other/thing)"
        );
        assert!(check_world::<SnapshotWorld>(&exporting("berth:snapshot/snapshotter@1.0.0"), &id).is_ok());
    }
}
