//! One error type for every verb; messages follow runc's where runc has one (scripts match on them).

use std::fmt;
use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// runc's wording, matched by containerd's go-runc.
    #[error("container does not exist")]
    NotExist,
    #[error("container with id exists: {0}")]
    Exists(String),
    #[error("invalid container id {0:?}: {1}")]
    InvalidId(String, &'static str),
    /// config.json is unreadable or invalid; the message names the field.
    #[error("invalid config.json: {0}")]
    Config(String),
    /// The verb does not fit the container's status ("container not running", ...).
    #[error("{0}")]
    Status(String),
    /// A signal name or number that is not a signal.
    #[error("{0}")]
    Signal(String),
    /// A step failed: the step's name, then the cause.
    #[error("{step}: {source}")]
    Io { step: String, source: io::Error },
    /// A step failed inside the container init or the exec'd process (reported over the sync channel).
    #[error("{0}")]
    Child(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(step: impl Into<String>, source: io::Error) -> Self {
        Error::Io { step: step.into(), source }
    }

    pub fn config(msg: impl fmt::Display) -> Self {
        Error::Config(msg.to_string())
    }
}

/// Names the failing step of an io error: `fs::create_dir(p).step(|| format!("creating {p}"))`.
pub trait Step<T> {
    fn step<S: Into<String>>(self, step: impl FnOnce() -> S) -> Result<T>;
}

impl<T> Step<T> for io::Result<T> {
    fn step<S: Into<String>>(self, step: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::io(step(), e))
    }
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Self {
        Error::Other(e.to_string())
    }
}
