//! The errors a plugin returns, in containerd's categories, and how a plugin reads its config.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::abi::code;

/// A failed call: a [`code`] and a message. Messages are lowercase and without a trailing period; for
/// [`Error::not_found`] and [`Error::already_exists`] the message is the thing itself (a snapshot's key, a
/// task's `task "id"`), which berthd completes as `snapshot KEY: not found`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// One of [`code`].
    pub code: i32,
    /// What went wrong.
    pub message: String,
    /// For config errors: the key path inside the plugin's `config` table.
    pub config_path: Vec<String>,
}

impl Error {
    /// An error of `code`.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), config_path: Vec::new() }
    }
    /// `what` does not exist.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(code::NOT_FOUND, what)
    }
    /// `what` exists already.
    pub fn already_exists(what: impl Into<String>) -> Self {
        Self::new(code::ALREADY_EXISTS, what)
    }
    /// The request is wrong.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(code::INVALID_ARGUMENT, message)
    }
    /// The object is not in a state for the request.
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(code::FAILED_PRECONDITION, message)
    }
    /// Something needed is not available now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(code::UNAVAILABLE, message)
    }
    /// The plugin does not do this.
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(code::UNIMPLEMENTED, message)
    }
    /// A failure inside the plugin.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(code::INTERNAL, message)
    }
    /// A runtime's process `what` has exited already.
    pub fn process_finished(what: impl Into<String>) -> Self {
        Self::new(code::PROCESS_FINISHED, what)
    }
    /// An I/O failure while `doing` something.
    pub fn io(doing: impl fmt::Display, e: std::io::Error) -> Self {
        Self::internal(format!("{doing}: {e}"))
    }
    /// Prefixes the message with `context`, keeping the code.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            code::NOT_FOUND => write!(f, "{}: not found", self.message),
            code::ALREADY_EXISTS => write!(f, "{}: already exists", self.message),
            code::PROCESS_FINISHED => write!(f, "{}: process already finished", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {}

/// Result of plugin calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Reads the plugin's config (the JSON berthd made of its `config` table) into `C`. Give `C`
/// `#[serde(default, deny_unknown_fields)]`, as berth's built-in plugins do: a misspelt key is then an error
/// whose path berthd reports with the file, line and column of the key.
///
/// ```
/// #[derive(serde::Deserialize, Default, Debug)]
/// #[serde(default, deny_unknown_fields)]
/// struct Config { root: String }
///
/// let config: Config = berth_plugin_sdk::parse_config(br#"{"root": "/srv"}"#).unwrap();
/// assert_eq!(config.root, "/srv");
/// let e = berth_plugin_sdk::parse_config::<Config>(br#"{"rot": "/srv"}"#).unwrap_err();
/// assert_eq!(e.config_path, ["rot"]);
/// ```
pub fn parse_config<C: DeserializeOwned>(json: &[u8]) -> Result<C> {
    let json = if json.is_empty() { b"{}".as_slice() } else { json };
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        use serde_path_to_error::Segment;
        let mut path: Vec<String> = e
            .path()
            .iter()
            .filter_map(|s| match s {
                Segment::Seq { index } => Some(index.to_string()),
                Segment::Map { key } => Some(key.clone()),
                Segment::Enum { variant } => Some(variant.clone()),
                Segment::Unknown => None,
            })
            .collect();
        let mut message = e.inner().to_string();
        // serde_json appends " at line L column C" of the JSON, which means nothing to the operator.
        if let Some(at) = message.rfind(" at line ") {
            message.truncate(at);
        }
        // serde reports an unknown field without putting it on the path.
        if let Some(field) = message.strip_prefix("unknown field `").and_then(|r| r.split('`').next())
            && path.last().map(String::as_str) != Some(field)
        {
            path.push(field.to_string());
        }
        Error { code: code::INVALID_ARGUMENT, message, config_path: path }
    })
}
