//! The plugin registry: orders plugins by their requirements, starts them, and keeps the status
//! of every one (loaded, skipped with a reason, failed with an error) for introspection.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::config::Config;
use crate::external::{ExternalPlugin, LoadContext, Origin, PluginSource, StatusHandle};
use crate::plugin::{
    InitError, Instance, PluginDirs, PluginId, PluginKind, Registration, Requirement, SharedPluginTable,
};

/// Why the registry could not start berthd.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Two registrations share an id.
    #[error("plugin {0} is registered twice")]
    Duplicate(PluginId),
    /// Two plugin sources share a name.
    #[error("plugin source {0:?} is registered twice")]
    DuplicateSource(String),
    /// Requirements form a cycle; the path is listed from and back to one plugin.
    #[error("plugin requirements form a cycle: {}", .0.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(" -> "))]
    Cycle(Vec<PluginId>),
    /// A plugin named in `required_plugins` did not load.
    #[error("required plugin {id} did not load: {reason}")]
    RequiredFailed {
        /// The plugin.
        id: PluginId,
        /// Its skip reason or error.
        reason: String,
    },
}

/// The state a plugin ended up in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginState {
    /// Not started yet (or start-up is still running).
    Pending,
    /// Running.
    Loaded,
    /// Cannot run on this host or disabled in config; the reason says which.
    Skipped(String),
    /// Failed to start.
    Failed(String),
}

/// One row of the status table.
#[derive(Debug, Clone)]
pub struct PluginStatus {
    /// Kind and name.
    pub id: PluginId,
    /// Its requirements, as written in its registration.
    pub requires: Vec<Requirement>,
    /// Its description.
    pub description: String,
    /// Where it stands.
    pub state: PluginState,
    /// Built in, or which source loaded it from where.
    pub origin: Origin,
    /// The last error a call into it failed with inside the plugin (external plugins: a panic, an internal
    /// failure), for introspection.
    pub last_error: Option<String>,
}

/// The status of every registered plugin, in init order.
#[derive(Debug, Clone, Default)]
pub struct PluginTable {
    /// Rows in init order.
    pub plugins: Vec<PluginStatus>,
    /// How to reload the plugins whose source can (set through [`StatusHandle::set_reload`]).
    pub reloaders: BTreeMap<PluginId, crate::external::Reloader>,
}

/// What a plugin's init function gets: its config, its directories, and the plugins it required.
pub struct InitContext {
    id: PluginId,
    config: Arc<dyn Any + Send + Sync>,
    dirs: PluginDirs,
    loaded: Arc<BTreeMap<PluginId, Arc<dyn Any + Send + Sync>>>,
    table: SharedPluginTable,
    daemon: Arc<Config>,
}

impl InitContext {
    /// This plugin's id.
    pub fn id(&self) -> &PluginId {
        &self.id
    }

    /// This plugin's typed config (the type given to [`Registration::new`]).
    pub fn config<C: Any + Send + Sync>(&self) -> Arc<C> {
        Arc::clone(&self.config).downcast::<C>().unwrap_or_else(|_| {
            panic!("plugin {}: config requested with a type other than its registration's", self.id)
        })
    }

    /// This plugin's directories (not created: create them if you need them).
    pub fn dirs(&self) -> &PluginDirs {
        &self.dirs
    }

    /// The daemon's whole config (root, state, gRPC address).
    pub fn daemon_config(&self) -> &Config {
        &self.daemon
    }

    /// A loaded plugin's exported value, if it loaded and exports a `T`.
    pub fn get<T: Any + Send + Sync>(&self, id: &PluginId) -> Option<Arc<T>> {
        self.loaded.get(id).and_then(|v| Arc::clone(v).downcast::<T>().ok())
    }

    /// Every loaded plugin of `kind` that exports a `T`, by name.
    pub fn get_all<T: Any + Send + Sync>(&self, kind: PluginKind) -> Vec<(PluginId, Arc<T>)> {
        self.loaded
            .iter()
            .filter(|(id, _)| id.kind == kind)
            .filter_map(|(id, v)| Arc::clone(v).downcast::<T>().ok().map(|v| (id.clone(), v)))
            .collect()
    }

    /// The live status table of all plugins, for introspection.
    pub fn plugin_table(&self) -> SharedPluginTable {
        Arc::clone(&self.table)
    }
}

/// Registered plugins and plugin sources, before start-up.
#[derive(Default, Clone)]
pub struct Registry {
    registrations: Vec<Registration>,
    sources: Vec<PluginSource>,
}

/// Plugins after start-up: the exported values of the loaded ones and the status of all.
pub struct Started {
    loaded: BTreeMap<PluginId, Arc<dyn Any + Send + Sync>>,
    shutdown: Vec<(PluginId, Box<dyn FnOnce() + Send>)>,
    /// The status table, shared with introspection.
    pub table: SharedPluginTable,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one plugin.
    pub fn register(&mut self, registration: Registration) -> Result<(), RegistryError> {
        if self.registrations.iter().any(|r| r.id == registration.id) {
            return Err(RegistryError::Duplicate(registration.id));
        }
        self.registrations.push(registration);
        Ok(())
    }

    /// Adds a source of plugins from outside berthd ([`crate::external`]): tables with
    /// `source = "<its name>"` are loaded by it.
    pub fn add_source(&mut self, source: PluginSource) -> Result<(), RegistryError> {
        if self.sources.iter().any(|s| s.name == source.name) || source.name == "builtin" {
            return Err(RegistryError::DuplicateSource(source.name));
        }
        self.sources.push(source);
        Ok(())
    }

    /// The source named `name`, if registered.
    pub fn source(&self, name: &str) -> Option<&PluginSource> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// Every registered source.
    pub fn sources(&self) -> &[PluginSource] {
        &self.sources
    }

    /// The registration of `id`, if any.
    pub fn get(&self, id: &PluginId) -> Option<&Registration> {
        self.registrations.iter().find(|r| &r.id == id)
    }

    /// All registrations, in registration order.
    pub fn registrations(&self) -> &[Registration] {
        &self.registrations
    }

    /// The init order: requirements first, ties broken by kind and then name so start-up is
    /// deterministic. Fails with the cycle if there is one.
    pub fn init_order(&self) -> Result<Vec<PluginId>, RegistryError> {
        let ids: BTreeSet<&PluginId> = self.registrations.iter().map(|r| &r.id).collect();
        // Edges only to registered plugins: a missing Plugin requirement fails that plugin at init.
        let deps: HashMap<&PluginId, BTreeSet<&PluginId>> = self
            .registrations
            .iter()
            .map(|r| {
                let mut d = BTreeSet::new();
                for req in &r.requires {
                    match req {
                        Requirement::Kind(k) => d.extend(ids.iter().copied().filter(|i| i.kind == *k && **i != r.id)),
                        Requirement::Plugin(p) => d.extend(ids.get(p).copied()),
                    }
                }
                (&r.id, d)
            })
            .collect();
        let mut order = Vec::with_capacity(ids.len());
        let mut done: BTreeSet<&PluginId> = BTreeSet::new();
        while done.len() < ids.len() {
            let ready: Vec<&PluginId> = ids
                .iter()
                .copied()
                .filter(|id| !done.contains(id) && deps[id].iter().all(|d| done.contains(d)))
                .collect();
            if ready.is_empty() {
                let remaining: BTreeSet<&PluginId> = ids.iter().copied().filter(|id| !done.contains(id)).collect();
                return Err(RegistryError::Cycle(find_cycle(&remaining, &deps)));
            }
            for id in ready {
                done.insert(id);
                order.push(id.clone());
            }
        }
        Ok(order)
    }

    /// Starts every plugin in dependency order. A plugin that cannot run here is skipped with a
    /// logged reason; one that fails is recorded; start-up fails only when a plugin named in
    /// `required_plugins` did not load.
    ///
    /// The external plugins of the config ([`Config::external`]) are registered first, one registration
    /// each whose init is its source's load.
    pub async fn start(&self, config: Arc<Config>) -> Result<Started, RegistryError> {
        let mut all = self.clone();
        for plugin in config.external.values() {
            all.register(external_registration(plugin, self.source(&plugin.source)))?;
        }
        all.start_registered(config).await
    }

    async fn start_registered(&self, config: Arc<Config>) -> Result<Started, RegistryError> {
        let order = self.init_order()?;
        let table: SharedPluginTable = Arc::new(RwLock::new(PluginTable {
            plugins: order
                .iter()
                .map(|id| {
                    let r = self.get(id).expect("ordered ids are registered");
                    PluginStatus {
                        id: id.clone(),
                        requires: r.requires.clone(),
                        description: r.description.clone(),
                        state: PluginState::Pending,
                        origin: r.origin.clone(),
                        last_error: None,
                    }
                })
                .collect(),
            reloaders: BTreeMap::new(),
        }));
        let mut loaded: BTreeMap<PluginId, Arc<dyn Any + Send + Sync>> = BTreeMap::new();
        let mut shutdown = Vec::new();
        for (index, id) in order.iter().enumerate() {
            let registration = self.get(id).expect("ordered ids are registered");
            let state = self.start_one(registration, &config, &loaded, &table).await;
            let state = match state {
                Ok(instance) => {
                    tracing::info!(plugin = %id, "loaded plugin");
                    loaded.insert(id.clone(), instance.value);
                    if let Some(hook) = instance.shutdown {
                        shutdown.push((id.clone(), hook));
                    }
                    PluginState::Loaded
                }
                Err(InitError::Skip(reason)) => {
                    tracing::info!(plugin = %id, %reason, "skipped plugin");
                    PluginState::Skipped(reason)
                }
                Err(InitError::Failed(error)) => {
                    tracing::error!(plugin = %id, %error, "plugin failed to load");
                    PluginState::Failed(error)
                }
            };
            let required = config.required_plugins.iter().any(|r| r == &id.to_string())
                || config.external.get(id).is_some_and(|p| p.required);
            table.write().expect("plugin table lock").plugins[index].state = state.clone();
            if required {
                let reason = match state {
                    PluginState::Skipped(r) => format!("skipped: {r}"),
                    PluginState::Failed(e) => e,
                    _ => continue,
                };
                let started = Started { loaded, shutdown, table };
                started.shutdown();
                return Err(RegistryError::RequiredFailed { id: id.clone(), reason });
            }
        }
        Ok(Started { loaded, shutdown, table })
    }

    async fn start_one(
        &self,
        registration: &Registration,
        config: &Arc<Config>,
        loaded: &BTreeMap<PluginId, Arc<dyn Any + Send + Sync>>,
        table: &SharedPluginTable,
    ) -> Result<Instance, InitError> {
        let id = &registration.id;
        if config.disabled_plugins.iter().any(|d| d == &id.to_string()) {
            return Err(InitError::Skip("disabled by disabled_plugins in the config".into()));
        }
        for req in &registration.requires {
            if let Requirement::Plugin(dep) = req {
                if loaded.contains_key(dep) {
                    continue;
                }
                let why = match self.get(dep) {
                    None => "it is not registered".to_string(),
                    Some(_) => {
                        let t = table.read().expect("plugin table lock");
                        match t.plugins.iter().find(|p| &p.id == dep).map(|p| &p.state) {
                            Some(PluginState::Skipped(r)) => format!("it was skipped: {r}"),
                            Some(PluginState::Failed(e)) => format!("it failed: {e}"),
                            _ => "it did not load".to_string(),
                        }
                    }
                };
                return Err(InitError::Failed(format!("requires plugin {dep}, but {why}")));
            }
        }
        let table_value =
            config.plugins.get(&id.to_string()).cloned().unwrap_or_else(|| toml::Value::Table(Default::default()));
        // Config was validated at load time; a failure here means the registration changed since.
        let plugin_config = (registration.parse_config)(table_value)
            .map_err(|e| InitError::Failed(format!("invalid config at {}: {}", e.path(), e.inner().message())))?;
        let ctx = InitContext {
            id: id.clone(),
            config: plugin_config,
            dirs: plugin_dirs(&config.root, &config.state, id),
            loaded: Arc::new(loaded.clone()),
            table: Arc::clone(table),
            daemon: Arc::clone(config),
        };
        (registration.init)(ctx).await
    }
}

/// The registration of an external plugin: its init is its source's load. A source that is not registered
/// (a config checked against another registry) fails the plugin, not start-up.
fn external_registration(plugin: &ExternalPlugin, source: Option<&PluginSource>) -> Registration {
    let origin = Origin::External(crate::external::ExternalOrigin {
        source: plugin.source.clone(),
        path: plugin.path.clone(),
        ..Default::default()
    });
    let description = format!("{} plugin from {}", plugin.source, plugin.path.display());
    let id = plugin.id.clone();
    let plugin = plugin.clone();
    let load = source.map(|s| Arc::clone(&s.load));
    let init: crate::plugin::InitFn = Arc::new(move |ctx: InitContext| {
        let plugin = plugin.clone();
        match &load {
            Some(load) => {
                let status = StatusHandle::new(ctx.plugin_table(), plugin.id.clone());
                load(LoadContext { plugin, init: ctx, status })
            }
            None => {
                let error = format!("no plugin source {:?} is registered", plugin.source);
                Box::pin(async move { Err(InitError::Failed(error)) })
            }
        }
    });
    // A monitor publishes through the host (`Host::publish`): it starts once the event exchange is there.
    let requires = match id.kind {
        PluginKind::Monitor => vec![Requirement::Plugin(crate::services::exchange_id())],
        _ => Vec::new(),
    };
    Registration {
        id,
        requires,
        description,
        // The table's own keys were checked with the config; the plugin reads its `config` itself.
        parse_config: Arc::new(|_| Ok(Arc::new(()) as Arc<dyn Any + Send + Sync>)),
        init,
        origin,
    }
}

fn plugin_dirs(root: &Path, state: &Path, id: &PluginId) -> PluginDirs {
    let name = id.to_string();
    PluginDirs { root: root.join(&name), state: state.join(PathBuf::from(name)) }
}

/// Finds one cycle among `remaining` (every node there has an unmet dependency inside the set).
fn find_cycle(remaining: &BTreeSet<&PluginId>, deps: &HashMap<&PluginId, BTreeSet<&PluginId>>) -> Vec<PluginId> {
    let start = *remaining.iter().next().expect("a cycle has members");
    let mut path = vec![start];
    let mut current = start;
    loop {
        let next =
            *deps[current].iter().find(|d| remaining.contains(*d)).expect("every remaining plugin waits on another");
        if let Some(pos) = path.iter().position(|p| *p == next) {
            let mut cycle: Vec<PluginId> = path[pos..].iter().map(|p| (*p).clone()).collect();
            cycle.push(next.clone());
            return cycle;
        }
        path.push(next);
        current = next;
    }
}

impl Started {
    /// A loaded plugin's exported value.
    pub fn get<T: Any + Send + Sync>(&self, id: &PluginId) -> Option<Arc<T>> {
        self.loaded.get(id).and_then(|v| Arc::clone(v).downcast::<T>().ok())
    }

    /// Every loaded plugin's value of type `T`, in id order.
    pub fn all<T: Any + Send + Sync>(&self) -> Vec<(PluginId, Arc<T>)> {
        self.loaded.iter().filter_map(|(id, v)| Arc::clone(v).downcast::<T>().ok().map(|v| (id.clone(), v))).collect()
    }

    /// Runs shutdown hooks in reverse init order and drops every instance.
    pub fn shutdown(mut self) {
        self.loaded.clear();
        while let Some((id, hook)) = self.shutdown.pop() {
            tracing::debug!(plugin = %id, "shutting down plugin");
            hook();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::NoConfig;

    fn config(disabled: &[&str], required: &[&str]) -> Arc<Config> {
        let text = format!(
            "version = 1\nroot = \"/nonexistent/root\"\nstate = \"/nonexistent/state\"\ndisabled_plugins = {disabled:?}\nrequired_plugins = {required:?}\n[grpc]\naddress = \"/nonexistent/s.sock\"\n"
        );
        let mut registry = Registry::new();
        for r in test_plugins() {
            registry.register(r).unwrap();
        }
        Arc::new(Config::parse("test.toml", &text, &registry).unwrap())
    }

    /// A plugin that records nothing and exports its own name.
    fn plugin(kind: PluginKind, name: &'static str, requires: &[Requirement]) -> Registration {
        let mut r = Registration::new::<NoConfig, _, _>(kind, name, move |_| async move { Ok(Instance::new(name)) });
        for req in requires {
            r = r.requires(req.clone());
        }
        r
    }

    fn skipping(kind: PluginKind, name: &'static str) -> Registration {
        Registration::new::<NoConfig, _, _>(kind, name, |_| async {
            Err(InitError::Skip("no such kernel feature".into()))
        })
    }

    fn id(s: &str) -> PluginId {
        s.parse().unwrap()
    }

    fn test_plugins() -> Vec<Registration> {
        vec![
            plugin(
                PluginKind::Service,
                "api",
                &[Requirement::Kind(PluginKind::Snapshot), Requirement::Plugin(id("store.db"))],
            ),
            plugin(PluginKind::Snapshot, "b", &[Requirement::Plugin(id("store.db"))]),
            plugin(PluginKind::Snapshot, "a", &[]),
            skipping(PluginKind::Snapshot, "exotic"),
            plugin(PluginKind::Runtime, "needs-exotic", &[Requirement::Plugin(id("snapshot.exotic"))]),
            plugin(PluginKind::Store, "db", &[]),
        ]
    }

    fn registry_of(plugins: Vec<Registration>) -> Registry {
        let mut registry = Registry::new();
        for r in plugins {
            registry.register(r).unwrap();
        }
        registry
    }

    #[test]
    fn orders_by_requirements_then_kind_and_name() {
        let order: Vec<String> =
            registry_of(test_plugins()).init_order().unwrap().iter().map(ToString::to_string).collect();
        let pos = |s: &str| order.iter().position(|o| o == s).unwrap();
        assert!(pos("store.db") < pos("snapshot.b"));
        for snapshot in ["snapshot.a", "snapshot.b", "snapshot.exotic"] {
            assert!(pos(snapshot) < pos("service.api"), "{order:?}");
        }
        assert!(pos("snapshot.exotic") < pos("runtime.needs-exotic"));
        assert_eq!(order[0], "store.db");
    }

    #[test]
    fn reports_cycles_with_their_path() {
        let registry = registry_of(vec![
            plugin(PluginKind::Snapshot, "x", &[Requirement::Plugin(id("runtime.y"))]),
            plugin(PluginKind::Runtime, "y", &[Requirement::Kind(PluginKind::Monitor)]),
            plugin(PluginKind::Monitor, "z", &[Requirement::Plugin(id("snapshot.x"))]),
            plugin(PluginKind::Store, "free", &[]),
        ]);
        let err = registry.init_order().unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("plugin requirements form a cycle: "), "{message}");
        for member in ["snapshot.x", "runtime.y", "monitor.z"] {
            assert!(message.contains(member), "{message}");
        }
        assert!(!message.contains("store.free"), "{message}");
    }

    #[test]
    fn duplicate_registration_is_refused() {
        let mut registry = Registry::new();
        registry.register(plugin(PluginKind::Store, "db", &[])).unwrap();
        let err = registry.register(plugin(PluginKind::Store, "db", &[])).unwrap_err();
        assert_eq!(err.to_string(), "plugin store.db is registered twice");
    }

    fn state(started: &Started, plugin: &str) -> PluginState {
        let table = started.table.read().unwrap();
        table.plugins.iter().find(|p| p.id.to_string() == plugin).unwrap().state.clone()
    }

    #[tokio::test]
    async fn skips_and_failures_are_recorded_and_dependents_fail() {
        let registry = registry_of(test_plugins());
        let started = registry.start(config(&["snapshot.a"], &[])).await.unwrap();
        assert_eq!(state(&started, "store.db"), PluginState::Loaded);
        assert_eq!(*started.get::<&str>(&id("store.db")).unwrap(), "db");
        assert_eq!(
            state(&started, "snapshot.a"),
            PluginState::Skipped("disabled by disabled_plugins in the config".into())
        );
        assert_eq!(state(&started, "snapshot.exotic"), PluginState::Skipped("no such kernel feature".into()));
        assert_eq!(
            state(&started, "runtime.needs-exotic"),
            PluginState::Failed("requires plugin snapshot.exotic, but it was skipped: no such kernel feature".into())
        );
        // A kind requirement is about order only: api loads with one snapshot plugin skipped.
        assert_eq!(state(&started, "service.api"), PluginState::Loaded);
        started.shutdown();
    }

    #[tokio::test]
    async fn required_plugin_that_fails_stops_startup() {
        let registry = registry_of(test_plugins());
        let Err(err) = registry.start(config(&[], &["runtime.needs-exotic"])).await else { panic!("started") };
        assert_eq!(
            err.to_string(),
            "required plugin runtime.needs-exotic did not load: requires plugin snapshot.exotic, but it was skipped: no such kernel feature"
        );
    }

    #[tokio::test]
    async fn plugin_config_reaches_init_and_shutdown_hooks_run_in_reverse() {
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        struct Greeting {
            word: String,
        }
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (l1, l2) = (log.clone(), log.clone());
        let registry = registry_of(vec![
            Registration::new::<Greeting, _, _>(PluginKind::Store, "first", move |ctx| {
                let log = l1.clone();
                async move {
                    let word = ctx.config::<Greeting>().word.clone();
                    Ok(Instance::new(word).on_shutdown(move || log.lock().unwrap().push("first")))
                }
            }),
            Registration::new::<NoConfig, _, _>(PluginKind::Service, "second", move |ctx| {
                let log = l2.clone();
                async move {
                    let word = ctx.get::<String>(&id("store.first")).unwrap();
                    assert_eq!(*word, "hello");
                    Ok(Instance::new(()).on_shutdown(move || log.lock().unwrap().push("second")))
                }
            })
            .requires(Requirement::Plugin(id("store.first"))),
        ]);
        let text = "version = 1\nroot = \"/r\"\nstate = \"/s\"\n[grpc]\naddress = \"/s.sock\"\n[plugins.\"store.first\"]\nword = \"hello\"\n";
        let config = Arc::new(Config::parse("t.toml", text, &registry).unwrap());
        let started = registry.start(config).await.unwrap();
        started.shutdown();
        assert_eq!(*log.lock().unwrap(), ["second", "first"]);
    }

    /// A source of berth's own making, to show that a new source needs nothing of the registry or the config
    /// but `add_source`: its plugin is registered from the table, its options checked, its failures recorded.
    fn echo_source() -> PluginSource {
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        struct EchoOptions {
            fail: bool,
        }
        PluginSource::new::<EchoOptions, _, _>("echo", |ctx: LoadContext| async move {
            ctx.status.update_origin(|o| o.version = Some("9.9".into()));
            if ctx.options::<EchoOptions>().fail {
                return Err(InitError::Failed("told to fail".into()));
            }
            Ok(Instance::new(ctx.plugin.config.to_string()))
        })
    }

    #[tokio::test]
    async fn external_plugins_come_from_their_source() {
        let mut registry = registry_of(vec![plugin(PluginKind::Store, "db", &[])]);
        registry.add_source(echo_source()).unwrap();
        assert!(matches!(registry.add_source(echo_source()), Err(RegistryError::DuplicateSource(_))));
        let text = "version = 1\nroot = \"/r\"\nstate = \"/s\"\ndisabled_plugins = [\"monitor.off\"]\n[grpc]\naddress = \"/s.sock\"\n\
            [plugins.\"snapshot.one\"]\nsource = \"echo\"\npath = \"/one\"\n[plugins.\"snapshot.one\".config]\nword = \"hi\"\nwhen = 1979-05-27\n\
            [plugins.\"runtime.two\"]\nsource = \"echo\"\npath = \"/two\"\nfail = true\n\
            [plugins.\"monitor.off\"]\nsource = \"echo\"\npath = \"/off\"\n";
        let config = Arc::new(Config::parse("t.toml", text, &registry).unwrap());
        assert_eq!(config.external.len(), 3);
        let started = registry.start(Arc::clone(&config)).await.unwrap();
        let one = started.get::<String>(&id("snapshot.one")).unwrap();
        assert_eq!(*one, r#"{"when":"1979-05-27","word":"hi"}"#);
        assert_eq!(state(&started, "runtime.two"), PluginState::Failed("told to fail".into()));
        assert!(matches!(state(&started, "monitor.off"), PluginState::Skipped(_)));
        let row = started.table.read().unwrap().plugins.iter().find(|p| p.id == id("snapshot.one")).unwrap().clone();
        let Origin::External(origin) = &row.origin else { panic!("{:?}", row.origin) };
        assert_eq!(
            (origin.source.as_str(), origin.path.to_str(), origin.version.as_deref()),
            ("echo", Some("/one"), Some("9.9"))
        );
        assert_eq!(row.description, "echo plugin from /one");
        started.shutdown();

        // required = true makes a failure stop start-up.
        let text = text.replace("fail = true", "fail = true\nrequired = true");
        let config = Arc::new(Config::parse("t.toml", &text, &registry).unwrap());
        let Err(e) = registry.start(config).await else { panic!("started") };
        assert_eq!(e.to_string(), "required plugin runtime.two did not load: told to fail");
    }

    #[test]
    fn external_tables_are_checked_where_they_are_written() {
        let mut registry = registry_of(vec![plugin(PluginKind::Store, "db", &[])]);
        registry.add_source(echo_source()).unwrap();
        let base = "version = 1\nroot = \"/r\"\nstate = \"/s\"\n[grpc]\naddress = \"/s.sock\"\n";
        let error = |table: &str| Config::parse("t.toml", &format!("{base}{table}"), &registry).unwrap_err();
        let e = error("[plugins.\"snapshot.x\"]\nsource = \"wasm\"\npath = \"/x\"\n");
        assert_eq!((e.line, e.column, e.key.as_str()), (7, 1, "plugins.\"snapshot.x\".source"), "{e}");
        assert_eq!(e.message, "unknown plugin source \"wasm\" (known: builtin, echo)");
        let e = error("[plugins.\"snapshot.x\"]\nsource = \"echo\"\npath = \"/x\"\n  fial = true\n");
        assert_eq!((e.line, e.column, e.key.as_str()), (9, 3, "plugins.\"snapshot.x\".fial"), "{e}");
        let e = error("[plugins.\"snapshot.x\"]\nsource = \"echo\"\npath = \"x\"\n");
        assert_eq!((e.line, e.key.as_str()), (8, "plugins.\"snapshot.x\".path"), "{e}");
        let e = error("[plugins.\"snapshot.x\"]\nsource = \"echo\"\n");
        assert!(e.message.contains("needs `path`"), "{e}");
        let e = error("[plugins.\"snapshot.x\"]\nsource = \"echo\"\npath = \"/x\"\nrequired = \"yes\"\n");
        assert_eq!(e.key, "plugins.\"snapshot.x\".required", "{e}");
        let e = error("[plugins.\"snapshot.x\"]\nsource = \"echo\"\npath = \"/x\"\nconfig = 3\n");
        assert_eq!(e.key, "plugins.\"snapshot.x\".config", "{e}");
        let e = error("[plugins.\"store.db\"]\nsource = \"echo\"\npath = \"/x\"\n");
        assert!(e.message.contains("built into berthd"), "{e}");
        let e = error("[plugins.\"service.x\"]\nsource = \"echo\"\npath = \"/x\"\n");
        assert!(e.message.contains("cannot come from outside berthd"), "{e}");
        let e = error("[plugins.\"snapshot.x\"]\nsource = 1\n");
        assert_eq!(e.key, "plugins.\"snapshot.x\".source", "{e}");

        // What a plugin reports about its own config later is located too.
        let text = format!(
            "{base}[plugins.\"snapshot.x\"]\nsource = \"echo\"\npath = \"/x\"\n[plugins.\"snapshot.x\".config]\nnested = {{ deep = 1 }}\n"
        );
        let config = Config::parse("t.toml", &text, &registry).unwrap();
        let plugin = &config.external[&id("snapshot.x")];
        let e = plugin.config_error(&["nested".into(), "deep".into()], "must be a string");
        assert_eq!(e.to_string(), "t.toml:10:12: key plugins.\"snapshot.x\".config.nested.deep: must be a string");
    }
}
