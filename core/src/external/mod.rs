//! Plugins from outside berthd's binary. A plugin's config table says where it comes from:
//!
//! ```toml
//! [plugins."snapshot.example"]
//! source = "native"                          # absent or "builtin": compiled into berthd
//! path = "/usr/lib/berth/libexample.so"      # absolute
//! required = false                           # true: berthd does not start without it
//! [plugins."snapshot.example".config]        # the plugin's own config, handed to it as JSON
//! root = "/var/lib/example"
//! ```
//!
//! Each source is a [`PluginSource`] that berthd registers with the registry
//! ([`crate::registry::Registry::add_source`]); [`native`] is the one for dynamic libraries. A source takes
//! the keys of a table besides `source`, `path`, `required` and `config` as its own options (checked like a
//! plugin's config, with file, line and column), and turns the table into a loaded plugin that exports the
//! same core trait value a built-in one does (a [`crate::snapshot::SharedSnapshotter`], a
//! [`crate::runtime::SharedRuntime`]): the rest of the daemon cannot tell them apart. The registry makes one
//! registration per such table, so a plugin that fails to load is a failed plugin like any other: its reason
//! is in the status table, and berthd carries on unless the plugin is required.
//!
//! Adding a source (wasm components next) is one new module and one `add_source` call in berthd: neither
//! the config, the registry nor the services change.

pub mod native;

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;

use crate::config::{ConfigError, ConfigLocator};
use crate::plugin::{ConfigParser, InitError, Instance, PluginId, SharedPluginTable};
use crate::registry::InitContext;

/// Where a plugin comes from, as introspection shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Origin {
    /// Compiled into berthd.
    #[default]
    Builtin,
    /// Loaded by a [`PluginSource`].
    External(ExternalOrigin),
}

/// What is known of an external plugin's artifact; filled in as loading gets further.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExternalOrigin {
    /// The source's name (`native`).
    pub source: String,
    /// The artifact's path.
    pub path: PathBuf,
    /// The sha256 of its content, in hex, once read.
    pub sha256: Option<String>,
    /// The plugin's own version, once its header was read.
    pub version: Option<String>,
    /// What else the source read (ABI version, SDK version, compiler, target), for `berth plugins ls -d`.
    pub details: BTreeMap<String, String>,
}

/// One external plugin's table, checked.
#[derive(Clone)]
pub struct ExternalPlugin {
    /// Its id.
    pub id: PluginId,
    /// The source's name.
    pub source: String,
    /// The artifact.
    pub path: PathBuf,
    /// Whether berthd must not start without it.
    pub required: bool,
    /// Its `config` table as JSON (an object).
    pub config: serde_json::Value,
    pub(crate) options: Arc<dyn Any + Send + Sync>,
    pub(crate) locator: ConfigLocator,
}

impl fmt::Debug for ExternalPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalPlugin")
            .field("id", &self.id)
            .field("source", &self.source)
            .field("path", &self.path)
            .field("required", &self.required)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ExternalPlugin {
    /// The plugin's config as the bytes handed to it.
    pub fn config_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.config).expect("a JSON value serializes")
    }

    /// A problem with key `path` of the plugin's `config` table (as the plugin reported it), located in the
    /// config file.
    pub fn config_error(&self, path: &[String], message: impl Into<String>) -> ConfigError {
        self.locator.error(path, message.into())
    }
}

type LoadFn = Arc<dyn Fn(LoadContext) -> BoxFuture<'static, Result<Instance, InitError>> + Send + Sync>;

/// A way of providing plugins from outside berthd: its name in `source = "..."`, the type of its own options,
/// and how it loads a plugin.
#[derive(Clone)]
pub struct PluginSource {
    pub(crate) name: String,
    pub(crate) parse_options: ConfigParser,
    pub(crate) load: LoadFn,
}

impl PluginSource {
    /// A source named `name` whose options (the table's keys besides `source`, `path`, `required` and
    /// `config`) deserialize into `O`, which should carry `#[serde(default, deny_unknown_fields)]`. `load` runs
    /// as the plugin's init: it returns the plugin's [`Instance`], exporting the core trait value of its kind.
    pub fn new<O, F, Fut>(name: &str, load: F) -> Self
    where
        O: DeserializeOwned + Default + Send + Sync + 'static,
        F: Fn(LoadContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Instance, InitError>> + Send + 'static,
    {
        Self {
            name: name.into(),
            parse_options: Arc::new(|value| {
                let options: O = serde_path_to_error::deserialize(value)?;
                Ok(Arc::new(options) as Arc<dyn Any + Send + Sync>)
            }),
            load: Arc::new(move |ctx| Box::pin(load(ctx))),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What a source's load function gets: the plugin's table, the usual init context and a handle on the
/// plugin's status row.
pub struct LoadContext {
    /// The plugin's table.
    pub plugin: ExternalPlugin,
    /// Its init context (directories, other plugins, the daemon's config).
    pub init: InitContext,
    /// Its row in the status table.
    pub status: StatusHandle,
}

impl LoadContext {
    /// The source's options of this table, as the type given to [`PluginSource::new`].
    pub fn options<O: Any + Send + Sync>(&self) -> Arc<O> {
        Arc::clone(&self.plugin.options)
            .downcast::<O>()
            .unwrap_or_else(|_| panic!("plugin {}: options requested with another type", self.plugin.id))
    }
}

/// One plugin's row of the status table, for what a source learns while loading and running it.
#[derive(Clone)]
pub struct StatusHandle {
    table: SharedPluginTable,
    id: PluginId,
}

impl StatusHandle {
    pub(crate) fn new(table: SharedPluginTable, id: PluginId) -> Self {
        Self { table, id }
    }

    /// Changes the row's origin (hash, version, details).
    pub fn update_origin(&self, change: impl FnOnce(&mut ExternalOrigin)) {
        let mut table = self.table.write().expect("plugin table lock");
        if let Some(row) = table.plugins.iter_mut().find(|p| p.id == self.id)
            && let Origin::External(origin) = &mut row.origin
        {
            change(origin);
        }
    }

    /// Makes the plugin reloadable on request, with `reload`.
    pub fn set_reload(&self, reload: Reloader) {
        let mut table = self.table.write().expect("plugin table lock");
        table.reloaders.insert(self.id.clone(), reload);
    }

    /// Records the last error of a call into the plugin (shown by introspection).
    pub fn record_error(&self, error: String) {
        let mut table = self.table.write().expect("plugin table lock");
        if let Some(row) = table.plugins.iter_mut().find(|p| p.id == self.id) {
            row.last_error = Some(error);
        }
    }
}

/// How a source reloads one of its plugins from its artifact, for `berth plugins reload` (the berth Plugins
/// service's Reload): the serving artifact's sha256 and version once the new one serves, or the reason it
/// does not (the old one keeps serving).
#[derive(Clone)]
pub struct Reloader(pub Arc<dyn Fn() -> BoxFuture<'static, ReloadResult> + Send + Sync>);

/// What a reload ends with: the serving artifact's (sha256, version), or why the new one does not serve.
pub type ReloadResult = Result<(String, String), String>;

impl fmt::Debug for Reloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reloader")
    }
}

/// A TOML value as JSON: datetimes become their RFC 3339 strings.
pub(crate) fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => J::Object(t.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_becomes_json() {
        let value: toml::Value =
            toml::from_str("a = 1\nb = [\"x\", 2.5]\nc = { d = true }\ne = 1979-05-27T07:32:00Z\n").unwrap();
        assert_eq!(
            toml_to_json(&value),
            serde_json::json!({"a": 1, "b": ["x", 2.5], "c": {"d": true}, "e": "1979-05-27T07:32:00Z"})
        );
    }
}
