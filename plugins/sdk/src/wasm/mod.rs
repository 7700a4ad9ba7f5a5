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

use crate::host::{Host, Init, Level};
use crate::proto::Any;

/// The host imports of the world the component exports, set by that kind's glue in `init` before the
/// plugin's `new`: [`crate::Host`] calls go to them, so a component imports its own world's host and no
/// other kind's.
static HOST: OnceLock<Imports> = OnceLock::new();

struct Imports {
    log: fn(Level, &str),
    publish: Option<Publish>,
}

/// A world's `publish` import.
type Publish = fn(&str, &str, Any) -> crate::Result<()>;

/// Sets the host imports (the first call wins: a component exports one world).
fn set_host(log: fn(Level, &str), publish: Option<Publish>) {
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

/// The instance's plugin, made by the world's `init`, one cell per kind: berthd initialises an instance once.
pub(crate) struct Instance(OnceLock<Held>);

/// Holds the plugin in a static cell; a component instance is single-threaded.
struct Held(Box<dyn std::any::Any>);
// SAFETY: a wasm32-wasip2 component instance has one thread; the value never leaves it.
unsafe impl Send for Held {}
// SAFETY: as above.
unsafe impl Sync for Held {}

impl Instance {
    pub(crate) const fn new() -> Self {
        Instance(OnceLock::new())
    }

    /// The plugin, if `init` made one of type `T`.
    pub(crate) fn get<T: 'static>(&self) -> Option<&T> {
        self.0.get().and_then(|held| held.0.downcast_ref())
    }
}

/// The `init` of every world: points [`crate::Host`] at the world's imports, then makes the plugin and keeps
/// it in `instance`. An error is the message and config path of the world's `init-error`.
pub(crate) fn init<T: 'static>(
    instance: &Instance,
    log: fn(Level, &str),
    publish: Option<Publish>,
    make: impl FnOnce() -> crate::Result<T>,
) -> Result<(), (String, Vec<String>)> {
    set_host(log, publish);
    let plugin = make().map_err(|e| (e.to_string(), e.config_path))?;
    instance.0.set(Held(Box::new(plugin))).map_err(|_| ("the plugin was initialised twice".into(), vec![]))
}

/// The [`Init`] of a snapshotter or monitor in a component: no directories (it sees only the ones its table
/// grants) and a [`crate::Host`] that reaches the world's imports.
pub(crate) fn backend_init(id: String, config_json: String) -> Init {
    Init {
        id,
        config_json: config_json.into_bytes(),
        root_dir: Default::default(),
        state_dir: Default::default(),
        host: Host::detached(),
    }
}

/// `$level`, a [`Level`], as the world's `host::Level` (`$($level_enum)::+`): every world's host has the
/// enum, each as its own type.
macro_rules! host_level {
    ($level:expr, $($level_enum:ident)::+) => {
        match $level {
            Level::Error => $($level_enum)::+::Error,
            Level::Warn => $($level_enum)::+::Warn,
            Level::Info => $($level_enum)::+::Info,
            Level::Debug => $($level_enum)::+::Debug,
            Level::Trace => $($level_enum)::+::Trace,
        }
    };
}
pub(crate) use host_level;

/// `fn error(crate::Error) -> $($error)::+`: an SDK error as the world's WIT `error` variant, which has one
/// case per containerd error category in every world, each as its own type.
macro_rules! wit_error {
    ($($error:ident)::+) => {
        fn error(e: crate::Error) -> $($error)::+ {
                        use $($error)::+ as E;
            let message = e.message;
            match e.code {
                crate::abi::code::NOT_FOUND => E::NotFound(message),
                crate::abi::code::ALREADY_EXISTS => E::AlreadyExists(message),
                crate::abi::code::INVALID_ARGUMENT => E::InvalidArgument(message),
                crate::abi::code::FAILED_PRECONDITION => E::FailedPrecondition(message),
                crate::abi::code::UNAVAILABLE => E::Unavailable(message),
                crate::abi::code::UNIMPLEMENTED => E::Unimplemented(message),
                _ => E::Internal(message),
            }
        }
    };
}
pub(crate) use wit_error;
