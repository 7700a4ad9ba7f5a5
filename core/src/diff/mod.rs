//! Layers: applying an OCI layer (a tar stream, plain, gzip or zstd) onto a directory, and making
//! one from the difference of two directories, as containerd's `archive` package and its
//! walking differ do.
//!
//! Applying never writes outside the target directory: entry names with `..` or a leading `/`,
//! and hard links to such names, are refused with the entry named; every parent directory is
//! resolved with `openat2(RESOLVE_IN_ROOT)`, so a symlink in the tree (`link -> /`,
//! `link -> ../..`) is followed as if the target were `/`, never out of it; the last component
//! of an entry is never followed (what was there is removed first).
//!
//! OCI whiteouts are written in one of two ways ([`Whiteouts`]): as overlayfs whiteouts (a 0/0
//! character device, `trusted.overlay.opaque=y`) when the target is an overlay upperdir, or as
//! plain deletions when the target is a full tree (native and bind snapshots).

mod apply;
mod fs;
mod layer;
pub mod mounts;
#[cfg(test)]
mod tests;

pub use self::apply::{Applied, Whiteouts, apply, apply_over};
pub use self::layer::{Layer, LayerCompression, write_layer};
use crate::Error;

/// The media type of an uncompressed OCI layer.
pub const MEDIA_TYPE_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// The media type of a gzip-compressed OCI layer, the one [`write_layer`] makes by default.
pub const MEDIA_TYPE_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The media type of a zstd-compressed OCI layer.
pub const MEDIA_TYPE_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// The prefix of a whiteout's name.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The name of the entry that makes its directory opaque.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// What can go wrong applying or making a layer, with the entry or path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// An entry that would write outside the target, or that cannot be expressed safely.
    #[error("layer entry {entry:?} refused: {why}")]
    Refused {
        /// The entry's name in the tar stream.
        entry: String,
        /// What is wrong with it.
        why: String,
    },
    /// A stream that is not a layer berth can read.
    #[error("layer: {0}")]
    Format(String),
    /// A media type berth does not apply or make.
    #[error("unsupported layer media type {0:?}")]
    MediaType(String),
    /// A filesystem operation on an entry failed.
    #[error("layer entry {entry:?}: {context}: {source}")]
    Entry {
        /// The entry's name in the tar stream, or the path being compared.
        entry: String,
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// Reading or writing the stream itself failed.
    #[error("layer: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl From<DiffError> for Error {
    fn from(e: DiffError) -> Error {
        match &e {
            DiffError::Refused { .. } | DiffError::Format(_) => Error::InvalidArgument(e.to_string()),
            DiffError::MediaType(_) => Error::Unimplemented(e.to_string()),
            DiffError::Entry { .. } | DiffError::Io { .. } => Error::Internal(e.to_string()),
        }
    }
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiffError {
    move |source| DiffError::Io { context: context.into(), source }
}
