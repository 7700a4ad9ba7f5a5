//! The error categories every berth component reports in, as containerd's errdefs does.
//!
//! Modules keep their own error enums with context and convert into [`Error`]; the gRPC layer turns
//! an [`Error`] into a status code in exactly one place (`services::status`).

/// A categorised error with a lowercase message that names what was wrong.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// The named object does not exist.
    #[error("{0}: not found")]
    NotFound(String),
    /// An object with that name already exists.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// The request itself is malformed: bad identifier, oversized label, unknown field path.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is well formed but the system is not in a state to carry it out.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Something the request needs is not available right now (a backend, the store).
    #[error("{0}")]
    Unavailable(String),
    /// A remote party (a registry) refused the credentials, or asked for some and got none.
    #[error("{0}")]
    Unauthenticated(String),
    /// The operation is not supported by this server or backend.
    #[error("{0}")]
    Unimplemented(String),
    /// A failure inside berth (I/O, store corruption); never the caller's fault.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Prefixes the message with `context`, keeping the category.
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        use Error::*;
        match self {
            NotFound(m) => NotFound(format!("{context}: {m}")),
            AlreadyExists(m) => AlreadyExists(format!("{context}: {m}")),
            InvalidArgument(m) => InvalidArgument(format!("{context}: {m}")),
            FailedPrecondition(m) => FailedPrecondition(format!("{context}: {m}")),
            Unavailable(m) => Unavailable(format!("{context}: {m}")),
            Unauthenticated(m) => Unauthenticated(format!("{context}: {m}")),
            Unimplemented(m) => Unimplemented(format!("{context}: {m}")),
            Internal(m) => Internal(format!("{context}: {m}")),
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
