//! The SDK on `wasm32-wasip2`: the same traits, exported as wasm components by the same macros.
//!
//! Compiled for a wasm target, [`crate::export_snapshot!`] expands to the bindings of berth's WIT package of
//! the kind (`proto/wit/snapshot`: `berth:snapshot@1.0.0`, world `snapshot-plugin`) instead of the native
//! ABI, so one plugin crate builds either way:
//!
//! ```text
//! cargo build --release                                # a .so for source = "native"
//! cargo build --release --target wasm32-wasip2         # a .wasm component for source = "wasm"
//! ```
//!
//! What differs inside a component: the plugin sees only the directories its table grants (`preopens`), so
//! [`crate::Init::root_dir`] and [`crate::Init::state_dir`] are empty; its log lines go through the host's
//! `log` import ([`snapshot::log`]), and whatever it writes to stderr (a panic message, `Host::info` of a
//! detached host) lands in berthd's log too, tagged with the plugin. A panic traps: the call fails and berthd
//! replaces the instance with a fresh one.

pub mod snapshot;

use crate::abi::code;

/// An SDK error code as the WIT error's case (each kind's `error` variant has one case per category).
pub(crate) fn category_of(code: i32) -> Category {
    match code {
        code::NOT_FOUND => Category::NotFound,
        code::ALREADY_EXISTS => Category::AlreadyExists,
        code::INVALID_ARGUMENT => Category::InvalidArgument,
        code::FAILED_PRECONDITION => Category::FailedPrecondition,
        code::UNAVAILABLE => Category::Unavailable,
        code::UNIMPLEMENTED => Category::Unimplemented,
        _ => Category::Internal,
    }
}

/// containerd's error categories, as every kind's WIT `error` variant has them.
pub(crate) enum Category {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    FailedPrecondition,
    Unavailable,
    Unimplemented,
    Internal,
}
