//! berthd's configuration: one TOML file, embedded as the default (the repository's
//! `config.toml`) and overridable with `berthd --config PATH`.
//!
//! Every problem is reported with the file, line, column and key it is about, so an operator can
//! go straight to it: unknown keys, wrong types, bad values, and keys in a plugin's table that the
//! plugin does not take.
//!
//! A plugin table with a `source` other than `builtin` describes a plugin from outside berthd
//! ([`crate::external`]): its keys `source`, `path`, `required` and `config` are checked here, the rest by
//! the source, and the `config` table by the plugin itself when it loads, whose errors are located in this
//! file all the same ([`ConfigLocator`]).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::external::ExternalPlugin;
use crate::plugin::{PluginId, PluginKind};
use crate::registry::Registry;

/// The default configuration, compiled into berthd.
pub const DEFAULT_CONFIG: &str = include_str!("../../config.toml");

/// The config format version this berthd reads.
pub const CONFIG_VERSION: u32 = 1;

/// The daemon's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Config format version; must be [`CONFIG_VERSION`].
    pub version: u32,
    /// Persistent data (the metadata store, plugin data).
    pub root: PathBuf,
    /// Runtime state that does not survive a reboot.
    pub state: PathBuf,
    /// Log filter when `RUST_LOG` is not set: a level (`info`) or a tracing filter
    /// (`info,berth_core::store=debug`).
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Seconds to let in-flight requests finish on SIGTERM/SIGINT before stopping anyway.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_secs: u64,
    /// The gRPC endpoint.
    pub grpc: GrpcConfig,
    /// Plugin ids (`kind.name`) not to start.
    #[serde(default)]
    pub disabled_plugins: Vec<String>,
    /// Plugin ids that must load, or berthd does not start.
    #[serde(default)]
    pub required_plugins: Vec<String>,
    /// One table per plugin, keyed by plugin id; validated by the plugin's own config type.
    #[serde(default)]
    pub plugins: BTreeMap<String, toml::Value>,
    /// The plugin tables with a `source` other than `builtin`, checked; filled by [`Config::parse`].
    #[serde(skip)]
    pub external: BTreeMap<PluginId, ExternalPlugin>,
}

/// The gRPC endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// Absolute path of the unix socket.
    pub address: PathBuf,
    /// Owner uid of the socket (default: berthd's).
    #[serde(default)]
    pub uid: Option<u32>,
    /// Owner gid of the socket (default: berthd's); members of this group may connect (mode 0660).
    #[serde(default)]
    pub gid: Option<u32>,
    /// Largest request accepted, in bytes.
    #[serde(default = "default_message_size")]
    pub max_recv_message_size: usize,
    /// Largest response sent, in bytes.
    #[serde(default = "default_message_size")]
    pub max_send_message_size: usize,
}

fn default_log_level() -> String {
    "info".into()
}
fn default_shutdown_timeout() -> u64 {
    10
}
fn default_message_size() -> usize {
    16 << 20
}

/// A configuration problem, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file (or `<embedded default>`).
    pub file: String,
    /// 1-based line, 0 when the problem has no place in the file.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted key path, empty for syntax errors.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": key {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A parsed config together with its source, for locating later problems.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
    doc: toml_edit::Document<&'a str>,
}

impl<'a> Source<'a> {
    fn new(file: &'a str, text: &'a str) -> Option<Self> {
        Some(Source { file, text, doc: toml_edit::Document::parse(text).ok()? })
    }

    fn error(&self, path: &[String], span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        let span = span.or_else(|| self.span_of(path));
        let (line, column) = span.map(|s| line_column(self.text, s.start)).unwrap_or((0, 0));
        ConfigError { file: self.file.into(), line, column, key: key_path(path), message: message.into() }
    }

    /// The span of the key at `path` (or of its value when the key has none).
    fn span_of(&self, path: &[String]) -> Option<Range<usize>> {
        let mut table: &dyn toml_edit::TableLike = self.doc.as_table();
        let mut best = None;
        for (i, segment) in path.iter().enumerate() {
            let (key, item) = table.get_key_value(segment)?;
            best = key.span().or_else(|| item.span()).or(best);
            if i + 1 < path.len() {
                match item {
                    toml_edit::Item::Table(t) => table = t,
                    toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => table = t,
                    _ => return best,
                }
            }
        }
        best
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Writes a key path as TOML would: `grpc.address`, `plugins."store.lmdb".map_size`.
fn key_path(path: &[String]) -> String {
    path.iter()
        .map(|s| {
            if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                s.clone()
            } else {
                format!("{s:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn segments(path: &serde_path_to_error::Path) -> Vec<String> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Map { key } => Some(key.clone()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect()
}

/// serde reports an unknown field without putting it on the path; pull it out of the message.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

/// Puts an unknown field on its path, unless serde already did.
fn push_unknown(path: &mut Vec<String>, field: String) {
    if path.last() != Some(&field) {
        path.push(field);
    }
}

impl Config {
    /// The embedded default configuration, parsed and checked against `registry`.
    pub fn default_config(registry: &Registry) -> Result<Config, ConfigError> {
        Self::parse("<embedded default config.toml>", DEFAULT_CONFIG, registry)
    }

    /// Reads and checks the config file at `path`.
    pub fn load(path: &Path, registry: &Registry) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read config file: {e}"),
        })?;
        Self::parse(&file, &text, registry)
    }

    /// Parses `text` (from `file`, used in error messages) and checks every key and value,
    /// plugin tables included.
    pub fn parse(file: &str, text: &str, registry: &Registry) -> Result<Config, ConfigError> {
        let doc = toml_edit::Document::parse(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_column(text, s.start)).unwrap_or((0, 0));
            ConfigError {
                file: file.into(),
                line,
                column,
                key: String::new(),
                message: format!("invalid TOML: {}", e.message().trim_end()),
            }
        })?;
        let source = Source { file, text, doc };
        let deserializer = toml::Deserializer::parse(text).map_err(|e| source.error(&[], e.span(), e.message()))?;
        let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let mut path = segments(e.path());
            let message = e.inner().message().to_string();
            let span = if let Some(field) = unknown_field(&message) {
                push_unknown(&mut path, field);
                None
            } else {
                e.inner().span()
            };
            source.error(&path, span, message)
        })?;
        config.external = config.check(&source, registry)?;
        Ok(config)
    }

    fn check(
        &self,
        source: &Source<'_>,
        registry: &Registry,
    ) -> Result<BTreeMap<PluginId, ExternalPlugin>, ConfigError> {
        let at = |path: &[&str], message: String| {
            source.error(&path.iter().map(|s| s.to_string()).collect::<Vec<_>>(), None, message)
        };
        if self.version != CONFIG_VERSION {
            return Err(at(
                &["version"],
                format!("unsupported config version {} (this berthd reads version {CONFIG_VERSION})", self.version),
            ));
        }
        for (key, path) in [("root", &self.root), ("state", &self.state)] {
            if !path.is_absolute() {
                return Err(at(&[key], format!("must be an absolute path, got {:?}", path.display().to_string())));
            }
        }
        if !self.grpc.address.is_absolute() {
            return Err(at(
                &["grpc", "address"],
                format!(
                    "must be the absolute path of a unix socket, got {:?}",
                    self.grpc.address.display().to_string()
                ),
            ));
        }
        if self.grpc.address.as_os_str().len() > 107 {
            return Err(at(
                &["grpc", "address"],
                "unix socket path is longer than the 107 bytes the kernel allows".into(),
            ));
        }
        if let Err(e) = tracing_filter_check(&self.log_level) {
            return Err(at(&["log_level"], e));
        }
        let mut external = BTreeMap::new();
        for (name, table) in &self.plugins {
            let path = vec!["plugins".to_string(), name.clone()];
            let id: PluginId = name.parse().map_err(|e: String| source.error(&path, None, e))?;
            let Some(table) = table.as_table() else {
                return Err(source.error(&path, None, format!("must be a table, got a {}", table.type_str())));
            };
            let at = |key: &str| [path.clone(), vec![key.to_string()]].concat();
            let plugin_source = match table.get("source") {
                None => None,
                Some(toml::Value::String(s)) if s == "builtin" => None,
                Some(toml::Value::String(s)) => Some(s.as_str()),
                Some(other) => {
                    return Err(source.error(
                        &at("source"),
                        None,
                        format!("must be a string naming where the plugin comes from, got a {}", other.type_str()),
                    ));
                }
            };
            if let Some(name) = plugin_source {
                let plugin = self.external_plugin(source, registry, &id, name, table, &path)?;
                external.insert(id, plugin);
                continue;
            }
            let registration = registry.get(&id).ok_or_else(|| {
                let hint = if registry.sources().is_empty() {
                    String::new()
                } else {
                    format!("; a plugin from outside berthd needs a source ({})", known_sources(registry))
                };
                source.error(
                    &path,
                    None,
                    format!("no plugin {id} is registered (known: {}){hint}", known_ids(registry)),
                )
            })?;
            let mut own = table.clone();
            own.remove("source");
            (registration.parse_config)(toml::Value::Table(own)).map_err(|e| {
                let mut full = path.clone();
                full.extend(segments(e.path()));
                let message = e.inner().message().to_string();
                if let Some(field) = unknown_field(&message) {
                    push_unknown(&mut full, field);
                }
                source.error(&full, None, message)
            })?;
        }
        for (list_name, list) in
            [("disabled_plugins", &self.disabled_plugins), ("required_plugins", &self.required_plugins)]
        {
            for (i, entry) in list.iter().enumerate() {
                let path = [list_name.to_string(), i.to_string()];
                let id: PluginId = entry.parse().map_err(|e: String| source.error(&path[..1], None, e))?;
                if registry.get(&id).is_none() && !external.contains_key(&id) {
                    return Err(source.error(
                        &path[..1],
                        None,
                        format!("no plugin {id} is registered (known: {})", known_ids(registry)),
                    ));
                }
            }
        }
        Ok(external)
    }

    /// Checks the table of a plugin from source `name` and keeps what loading it takes.
    fn external_plugin(
        &self,
        source: &Source<'_>,
        registry: &Registry,
        id: &PluginId,
        name: &str,
        table: &toml::Table,
        path: &[String],
    ) -> Result<ExternalPlugin, ConfigError> {
        let at = |key: &str| [path.to_vec(), vec![key.to_string()]].concat();
        let plugin_source = registry.source(name).ok_or_else(|| {
            source.error(
                &at("source"),
                None,
                format!("unknown plugin source {name:?} (known: {})", known_sources(registry)),
            )
        })?;
        if registry.get(id).is_some() {
            return Err(source.error(
                &at("source"),
                None,
                format!("plugin {id} is built into berthd; a {name} plugin needs a name of its own"),
            ));
        }
        if !matches!(id.kind, PluginKind::Snapshot | PluginKind::Runtime | PluginKind::Monitor) {
            return Err(source.error(
                path,
                None,
                format!(
                    "a {} plugin cannot come from outside berthd: only snapshot, runtime and monitor plugins can",
                    id.kind
                ),
            ));
        }
        let plugin_path = match table.get("path") {
            Some(toml::Value::String(p)) if Path::new(p).is_absolute() => PathBuf::from(p),
            Some(toml::Value::String(p)) => {
                return Err(source.error(&at("path"), None, format!("must be an absolute path, got {p:?}")));
            }
            Some(other) => {
                return Err(source.error(&at("path"), None, format!("must be a string, got a {}", other.type_str())));
            }
            None => return Err(source.error(path, None, format!("a {name} plugin needs `path`, the file to load"))),
        };
        let required = match table.get("required") {
            None => false,
            Some(toml::Value::Boolean(b)) => *b,
            Some(other) => {
                return Err(source.error(
                    &at("required"),
                    None,
                    format!("must be true or false, got a {}", other.type_str()),
                ));
            }
        };
        let config = match table.get("config") {
            None => serde_json::Value::Object(Default::default()),
            Some(value @ toml::Value::Table(_)) => crate::external::toml_to_json(value),
            Some(other) => {
                return Err(source.error(
                    &at("config"),
                    None,
                    format!("must be a table (the plugin's own config), got a {}", other.type_str()),
                ));
            }
        };
        let mut options = table.clone();
        for key in ["source", "path", "required", "config"] {
            options.remove(key);
        }
        let options = (plugin_source.parse_options)(toml::Value::Table(options)).map_err(|e| {
            let mut full = path.to_vec();
            full.extend(segments(e.path()));
            let message = e.inner().message().to_string();
            if let Some(field) = unknown_field(&message) {
                push_unknown(&mut full, field);
            }
            source.error(&full, None, message)
        })?;
        Ok(ExternalPlugin {
            id: id.clone(),
            source: name.to_string(),
            path: plugin_path,
            required,
            config,
            options,
            locator: ConfigLocator { file: source.file.into(), text: source.text.into(), base: at("config") },
        })
    }
}

/// Locates keys of an external plugin's `config` table in the config file, for the errors the plugin reports
/// when it loads (after the file was parsed).
#[derive(Clone)]
pub struct ConfigLocator {
    file: String,
    text: Arc<str>,
    base: Vec<String>,
}

impl ConfigLocator {
    /// A problem with key `path` below the plugin's `config` table.
    pub fn error(&self, path: &[String], message: String) -> ConfigError {
        let full = [self.base.clone(), path.to_vec()].concat();
        match Source::new(&self.file, &self.text) {
            Some(source) => source.error(&full, None, message),
            None => ConfigError { file: self.file.clone(), line: 0, column: 0, key: key_path(&full), message },
        }
    }
}

fn known_sources(registry: &Registry) -> String {
    std::iter::once("builtin").chain(registry.sources().iter().map(|s| s.name())).collect::<Vec<_>>().join(", ")
}

fn known_ids(registry: &Registry) -> String {
    registry.registrations().iter().map(|r| r.id.to_string()).collect::<Vec<_>>().join(", ")
}

/// Checks a log filter without depending on tracing-subscriber: levels and `target=level` pairs.
fn tracing_filter_check(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    if filter.trim().is_empty() {
        return Err("must name a log level: trace, debug, info, warn, error or off".into());
    }
    for directive in filter.split(',') {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l).trim();
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!("{level:?} is not a log level (expected trace, debug, info, warn, error or off)"));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn registry() -> Registry {
        crate::builtin::registry().unwrap()
    }

    /// The embedded default without the tables of plugins that live outside core (berthd registers those;
    /// the integration tests check the whole file against berthd's registry).
    pub(crate) fn core_default_config() -> Config {
        let registry = registry();
        let mut doc: toml_edit::DocumentMut = DEFAULT_CONFIG.parse().unwrap();
        if let Some(plugins) = doc.get_mut("plugins").and_then(|p| p.as_table_like_mut()) {
            let outside: Vec<String> = plugins
                .iter()
                .map(|(k, _)| k.to_string())
                .filter(|k| k.parse().map_or(true, |id| registry.get(&id).is_none()))
                .collect();
            for key in outside {
                plugins.remove(&key);
            }
        }
        Config::parse("<embedded default config.toml>", &doc.to_string(), &registry).unwrap()
    }

    fn error(text: &str) -> ConfigError {
        Config::parse("c.toml", text, &registry()).unwrap_err()
    }

    #[test]
    fn embedded_default_parses() {
        let config = core_default_config();
        assert_eq!(config.grpc.address, Path::new("/run/berth/berth.sock"));
        assert_eq!(config.required_plugins, ["store.lmdb"]);
        assert!(config.plugins.contains_key("store.lmdb"));
    }

    #[test]
    fn locates_errors_in_plugin_tables() {
        let text = "version = 1\nroot = \"/r\"\nstate = \"/s\"\n[grpc]\naddress = \"/a.sock\"\n\n[plugins.\"store.lmdb\"]\nmap_size_mib = 8\n  max_bach = 3\n";
        let e = error(text);
        assert_eq!((e.line, e.column, e.key.as_str()), (9, 3, "plugins.\"store.lmdb\".max_bach"), "{e}");
        assert!(e.message.starts_with("unknown field `max_bach`"), "{e}");
        assert_eq!(e.to_string().split(": ").next().unwrap(), "c.toml:9:3");

        let e = error(&text.replace("  max_bach = 3", "max_batch = -1"));
        assert_eq!((e.line, e.key.as_str()), (9, "plugins.\"store.lmdb\".max_batch"), "{e}");
    }

    #[test]
    fn locates_type_errors_and_syntax_errors() {
        let e = error("version = 1\nroot = \"/r\"\nstate = \"/s\"\n[grpc]\naddress = 5\n");
        assert_eq!((e.line, e.key.as_str()), (5, "grpc.address"), "{e}");
        assert!(e.message.contains("invalid type"), "{e}");

        let e = error("version = 1\nroot = \"/r\"\nstate = [\n");
        assert_eq!((e.line, e.column), (3, 10), "{e}");
        assert!(e.message.starts_with("invalid TOML"), "{e}");
        assert!(e.key.is_empty());

        let e = error("version = 1\nroot = \"/r\"\nstate = \"/s\"\n");
        assert!(e.message.contains("missing field `grpc`"), "{e}");
    }

    #[test]
    fn checks_values() {
        let base = "version = 1\nroot = \"/r\"\nstate = \"/s\"\n[grpc]\naddress = \"/a.sock\"\n";
        let e = error(&base.replace("root = \"/r\"", "root = \"relative\""));
        assert_eq!((e.line, e.key.as_str()), (2, "root"), "{e}");
        let long = format!("/{}", "x".repeat(120));
        let e = error(&base.replace("/a.sock", &long));
        assert_eq!(e.key, "grpc.address", "{e}");
        let e = error(&format!("log_level = \"info,berth=verbose\"\n{base}"));
        assert_eq!((e.line, e.key.as_str()), (1, "log_level"), "{e}");
        Config::parse("c.toml", &format!("log_level = \"warn,berth_core::store=trace\"\n{base}"), &registry()).unwrap();
    }
}
