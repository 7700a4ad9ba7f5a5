//! The monitor kind as a wasm component: [`crate::monitor::Monitor`] behind the WIT interface
//! `berth:monitor/monitor@1.0.0` (`proto/wit/monitor`, world `monitor-plugin`).
//!
//! The monitor is the same type a native library exports; inside a component its [`crate::Host`] is the
//! world's `host` import: [`crate::Host::publish`] puts an event into berthd's event stream, `Host::log` and
//! its shorthands write into berthd's log ([`publish`] and [`log`] are the same calls).

use crate::abi::code;
use crate::monitor::{Exit, Monitor, Task, TaskEvent};
use crate::proto::Any;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../proto/wit/monitor",
        world: "berth:monitor/monitor-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_monitor_world",
        default_bindings_module: "berth_plugin_sdk::wasm::monitor::bindings",
    });
}

use bindings::berth::monitor::host;
use bindings::berth::monitor::types as wit;
use bindings::exports::berth::monitor::monitor::Guest;

pub use crate::host::Level;

/// Writes `message` into berthd's log at `level`, tagged with the plugin (the host's `log` import).
pub fn log(level: Level, message: &str) {
    host::log(super::host_level!(level, host::Level), message)
}

/// Publishes `event` on `topic` in `namespace` into berthd's event stream (the host's `publish` import);
/// InvalidArgument for a topic or namespace berthd refuses.
pub fn publish(namespace: &str, topic: &str, event: Any) -> crate::Result<()> {
    let event = wit::Any { type_url: event.type_url, value: event.value };
    host::publish(namespace, topic, &event).map_err(|e| {
        let (code, message) = match e {
            wit::Error::NotFound(m) => (code::NOT_FOUND, m),
            wit::Error::AlreadyExists(m) => (code::ALREADY_EXISTS, m),
            wit::Error::InvalidArgument(m) => (code::INVALID_ARGUMENT, m),
            wit::Error::FailedPrecondition(m) => (code::FAILED_PRECONDITION, m),
            wit::Error::Unavailable(m) => (code::UNAVAILABLE, m),
            wit::Error::Unimplemented(m) => (code::UNIMPLEMENTED, m),
            wit::Error::Internal(m) => (code::INTERNAL, m),
        };
        crate::Error::new(code, message)
    })
}

/// What [`crate::export_monitor!`] implements for the plugin's type: the monitor and its crate's version.
#[doc(hidden)]
pub trait Export {
    type Backend: Monitor;
    const VERSION: &'static str;
}

/// The instance's monitor, made by `init` (one per instance: berthd initialises an instance once).
static BACKEND: super::Instance = super::Instance::new();

fn backend<T: Monitor>() -> Result<&'static T, wit::Error> {
    BACKEND.get().ok_or_else(|| wit::Error::FailedPrecondition("the plugin was not initialised".into()))
}

super::wit_error!(wit::Error);

fn task_from(task: wit::Task) -> Task {
    Task {
        namespace: task.namespace,
        id: task.id,
        runtime: task.runtime,
        pid: task.pid,
        labels: task.labels.into_iter().collect(),
    }
}

fn exit_from(exit: wit::Exit) -> Exit {
    let t = exit.exited_at;
    let since = std::time::Duration::new(t.seconds.max(0) as u64, t.nanos.min(999_999_999));
    Exit { pid: exit.pid, status: exit.status, exited_at: std::time::SystemTime::UNIX_EPOCH + since }
}

fn event_from(event: wit::TaskEvent) -> TaskEvent {
    match event {
        wit::TaskEvent::Created(pid) => TaskEvent::Created { pid },
        wit::TaskEvent::Started(pid) => TaskEvent::Started { pid },
        wit::TaskEvent::Exited(e) => {
            TaskEvent::Exited { exec_id: (!e.exec_id.is_empty()).then_some(e.exec_id), exit: exit_from(e.exit) }
        }
        wit::TaskEvent::Oom => TaskEvent::Oom,
        wit::TaskEvent::Paused => TaskEvent::Paused,
        wit::TaskEvent::Resumed => TaskEvent::Resumed,
        wit::TaskEvent::Deleted(exit) => TaskEvent::Deleted { exit: exit_from(exit) },
    }
}

impl<E: Export> Guest for E {
    fn describe() -> wit::PluginInfo {
        wit::PluginInfo {
            name: E::Backend::NAME.into(),
            version: E::VERSION.into(),
            sdk: crate::abi::SDK_VERSION.into(),
        }
    }

    fn init(id: String, config_json: String) -> Result<(), wit::InitError> {
        // `init` points the SDK's Host at this world's imports before `new`.
        super::init(&BACKEND, log, Some(publish), || E::Backend::new(super::backend_init(id, config_json)))
            .map_err(|(message, config_path)| wit::InitError { message, config_path })
    }

    fn activate() -> Result<(), wit::Error> {
        backend::<E::Backend>()?.activate().map_err(error)
    }

    fn monitor(task: wit::Task) -> Result<(), wit::Error> {
        backend::<E::Backend>()?.monitor(&task_from(task)).map_err(error)
    }

    fn stop(task: wit::Task) -> Result<(), wit::Error> {
        backend::<E::Backend>()?.stop(&task_from(task)).map_err(error)
    }

    fn event(task: wit::Task, event: wit::TaskEvent) -> Result<(), wit::Error> {
        backend::<E::Backend>()?.event(&task_from(task), &event_from(event)).map_err(error)
    }

    fn stats(task: wit::Task) -> Result<Option<wit::Any>, wit::Error> {
        let stats = backend::<E::Backend>()?.stats(&task_from(task)).map_err(error)?;
        Ok(stats.map(|a| wit::Any { type_url: a.type_url, value: a.value }))
    }
}

/// Exports a [`Monitor`] from a `wasm32-wasip2` `cdylib` as a component of world
/// `berth:monitor/monitor-plugin` (the kind, its [`Monitor::NAME`], the crate's version). Use it once, at
/// the crate root; the same line makes a native plugin when built for the host.
#[macro_export]
macro_rules! export_monitor {
    ($ty:ty) => {
        #[doc(hidden)]
        pub struct __BerthMonitorExport;
        impl $crate::wasm::monitor::Export for __BerthMonitorExport {
            type Backend = $ty;
            const VERSION: &'static str = env!("CARGO_PKG_VERSION");
        }
        $crate::wasm::monitor::bindings::__export_monitor_world!(__BerthMonitorExport with_types_in $crate::wasm::monitor::bindings);
    };
}
