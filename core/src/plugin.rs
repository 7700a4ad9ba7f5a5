//! Plugin identities and registrations.
//!
//! A plugin is identified by kind and name (`snapshot.overlayfs`); the id is also the name of its
//! table in config.toml (`[plugins."snapshot.overlayfs"]`). A [`Registration`] is a plain runtime
//! value, not a static: a built-in backend, one loaded from a native library and one loaded from a
//! wasm component are all handed to the registry the same way, so neither the registry nor its
//! callers change when a new source of plugins is added.

use std::any::Any;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::registry::{InitContext, PluginTable};

/// What a plugin provides. The public backend kinds are `runtime`, `snapshot` and `monitor`;
/// `store`, `event`, `gc` and `service` are berth's internal kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// The metadata store.
    Store,
    /// The event exchange.
    Event,
    /// Snapshot backends (root filesystems).
    Snapshot,
    /// Runtime backends (run tasks).
    Runtime,
    /// Task monitors.
    Monitor,
    /// The garbage collector's scheduler.
    Gc,
    /// gRPC services.
    Service,
}

impl PluginKind {
    /// Every kind, in the order plugins of equal standing are initialised.
    pub const ALL: [PluginKind; 7] =
        [Self::Store, Self::Event, Self::Snapshot, Self::Runtime, Self::Monitor, Self::Gc, Self::Service];

    /// The kind as written in plugin ids and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::Event => "event",
            Self::Snapshot => "snapshot",
            Self::Runtime => "runtime",
            Self::Monitor => "monitor",
            Self::Gc => "gc",
            Self::Service => "service",
        }
    }

    /// The plugin type string containerd reports for the same role, shown to containerd clients
    /// (`ctr plugins ls`) so tools that look for e.g. `io.containerd.snapshotter.v1` find berth's.
    pub fn containerd_type(self) -> &'static str {
        match self {
            Self::Store => "io.containerd.metadata.v1",
            Self::Event => "io.containerd.event.v1",
            Self::Snapshot => "io.containerd.snapshotter.v1",
            Self::Runtime => "io.containerd.runtime.v2",
            Self::Monitor => "io.containerd.monitor.task.v1",
            Self::Gc => "io.containerd.gc.v1",
            Self::Service => "io.containerd.grpc.v1",
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PluginKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            format!("unknown plugin kind {s:?} (expected one of store, event, snapshot, runtime, monitor, gc, service)")
        })
    }
}

/// A plugin's identity: kind and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PluginId {
    /// What the plugin provides.
    pub kind: PluginKind,
    /// Its name, unique within the kind.
    pub name: String,
}

impl PluginId {
    /// Builds an id.
    pub fn new(kind: PluginKind, name: impl Into<String>) -> Self {
        Self { kind, name: name.into() }
    }
}

impl fmt::Display for PluginId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind, self.name)
    }
}

impl FromStr for PluginId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, name) = s
            .split_once('.')
            .ok_or_else(|| format!("plugin id {s:?} must be written kind.name, e.g. snapshot.overlayfs"))?;
        if name.is_empty() {
            return Err(format!("plugin id {s:?} has an empty name"));
        }
        Ok(Self::new(kind.parse()?, name))
    }
}

/// What a plugin needs before it can start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// Start after every plugin of this kind (there may be none).
    Kind(PluginKind),
    /// This exact plugin must be loaded first; if it is not, this plugin fails.
    Plugin(PluginId),
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kind(k) => write!(f, "{k}.*"),
            Self::Plugin(id) => id.fmt(f),
        }
    }
}

/// Why a plugin did not load.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InitError {
    /// The plugin cannot run on this host (missing kernel feature, binary...): skipped, not an error.
    #[error("{0}: skip plugin")]
    Skip(String),
    /// The plugin should have run and failed.
    #[error("{0}")]
    Failed(String),
}

/// A loaded plugin: the value other plugins get through [`InitContext`], plus an optional
/// shutdown hook run (in reverse init order) when berthd stops.
pub struct Instance {
    pub(crate) value: Arc<dyn Any + Send + Sync>,
    pub(crate) shutdown: Option<Box<dyn FnOnce() + Send>>,
}

impl Instance {
    /// Wraps the value a plugin exports.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Self { value: Arc::new(value), shutdown: None }
    }

    /// Runs `hook` on shutdown, after the gRPC server has stopped.
    pub fn on_shutdown(mut self, hook: impl FnOnce() + Send + 'static) -> Self {
        self.shutdown = Some(Box::new(hook));
        self
    }
}

/// Parses a plugin's config table into its typed config.
pub(crate) type ConfigParser = Arc<
    dyn Fn(toml::Value) -> Result<Arc<dyn Any + Send + Sync>, serde_path_to_error::Error<toml::de::Error>>
        + Send
        + Sync,
>;

pub(crate) type InitFn = Arc<dyn Fn(InitContext) -> BoxFuture<'static, Result<Instance, InitError>> + Send + Sync>;

/// Everything the registry needs to know about one plugin.
#[derive(Clone)]
pub struct Registration {
    /// Kind and name.
    pub id: PluginId,
    /// What must start first.
    pub requires: Vec<Requirement>,
    /// A one-line description for `berth plugins ls -d` and the docs.
    pub description: String,
    pub(crate) parse_config: ConfigParser,
    pub(crate) init: InitFn,
    pub(crate) origin: crate::external::Origin,
}

impl Registration {
    /// Registers plugin `kind.name`, started by `init`, whose config table deserializes into `C`.
    /// `C` should carry `#[serde(default, deny_unknown_fields)]`: a missing table means all
    /// defaults and a misspelt key is an error. Plugins without options use [`NoConfig`].
    pub fn new<C, F, Fut>(kind: PluginKind, name: &str, init: F) -> Self
    where
        C: DeserializeOwned + Default + Send + Sync + 'static,
        F: Fn(InitContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Instance, InitError>> + Send + 'static,
    {
        Self {
            id: PluginId::new(kind, name),
            requires: Vec::new(),
            description: String::new(),
            parse_config: Arc::new(|value| {
                let config: C = serde_path_to_error::deserialize(value)?;
                Ok(Arc::new(config) as Arc<dyn Any + Send + Sync>)
            }),
            init: Arc::new(move |ctx| Box::pin(init(ctx))),
            origin: crate::external::Origin::Builtin,
        }
    }

    /// Adds a requirement.
    pub fn requires(mut self, requirement: Requirement) -> Self {
        self.requires.push(requirement);
        self
    }

    /// Sets the description.
    pub fn describe(mut self, description: &str) -> Self {
        self.description = description.into();
        self
    }
}

/// Where a plugin's files go, derived from the daemon's root and state directories.
#[derive(Debug, Clone)]
pub struct PluginDirs {
    /// Persistent data: `<root>/<kind>.<name>`.
    pub root: PathBuf,
    /// Runtime state, gone after reboot: `<state>/<kind>.<name>`.
    pub state: PathBuf,
}

/// Handed to introspection-like plugins: the live status table of every plugin.
pub type SharedPluginTable = Arc<std::sync::RwLock<PluginTable>>;

/// The config type of a plugin that takes no options: any key in its table is an error.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}
