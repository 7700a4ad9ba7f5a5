//! The SDK on `wasm32-wasip2`: the same traits, exported as wasm components by the same macros.
//!
//! Compiled for a wasm target, [`crate::export_snapshot!`] expands to the bindings of berth's WIT package of
//! the kind (`proto/wit/snapshot`: `berth:snapshot@1.1.0`, world `snapshot-plugin-revisions`) instead of the
//! native ABI, so one plugin crate builds either way:
//!
//! ```text
//! cargo build --release                                # a .so for source = "native"
//! cargo build --release --target wasm32-wasip2         # a .wasm component for source = "wasm"
//! ```
//!
//! What differs inside a component: the plugin sees only the directories its table grants (`preopens`), so
//! [`crate::Init::root_dir`] and [`crate::Init::state_dir`] are empty; its log lines go through its kind's
//! host `log` import ([`snapshot::log`], [`monitor::log`]; a monitor's `Host::publish` through its `publish`
//! import), and whatever it writes to stderr (a panic message) lands in berthd's log too, tagged with the
//! plugin. A panic traps: the call fails and berthd replaces the instance with a fresh one.
//!
//! A runtime is the exception: as a component it is a function runtime, with a trait and a macro of its own
//! ([`runtime::Function`], [`crate::export_function!`]), since berthd keeps its tasks and the component only
//! runs each process.

pub mod monitor;
pub mod runtime;
pub mod snapshot;

use std::sync::OnceLock;

use crate::abi::code;
use crate::host::Level;
use crate::proto::Any;

/// The host imports of the world the component exports, set by that kind's glue in `init` before the
/// plugin's `new`: [`crate::Host`] calls go to them, so a component imports its own world's host and no
/// other kind's.
static HOST: OnceLock<Imports> = OnceLock::new();

struct Imports {
    log: fn(Level, &str),
    publish: Option<fn(&str, &str, Any) -> crate::Result<()>>,
}

/// Sets the host imports (the first call wins: a component exports one world).
pub(crate) fn set_host(log: fn(Level, &str), publish: Option<fn(&str, &str, Any) -> crate::Result<()>>) {
    let _ = HOST.set(Imports { log, publish });
}

/// `Host::log` inside a component: the world's `log` import, or stderr (which berthd logs too) before `init`.
pub(crate) fn log(level: Level, message: &str) {
    match HOST.get() {
        Some(imports) => (imports.log)(level, message),
        None => eprintln!("{level:?}: {message}"),
    }
}

/// `Host::publish` inside a component: the world's `publish` import, if the kind has one.
pub(crate) fn publish(namespace: &str, topic: &str, event: Any) -> crate::Result<()> {
    match HOST.get().and_then(|imports| imports.publish) {
        Some(publish) => publish(namespace, topic, event),
        None => Err(crate::Error::unimplemented("plugins of this kind cannot publish events")),
    }
}

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
