//! What berthd offers a plugin: its log, a way to report events, and (ABI 1.1) berthd's event stream.

use std::path::PathBuf;

use serde::de::DeserializeOwned;

use crate::abi::{self, Bytes, HostApi, log_level};
use crate::proto::runtime::{Event, Exit, ExitEvent, OomEvent, event};
use crate::proto::{Any, Message, PluginError, PublishRequest};

/// A log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Errors.
    Error,
    /// Warnings.
    Warn,
    /// Information.
    Info,
    /// Debugging.
    Debug,
    /// Tracing.
    Trace,
}

/// The host's functions, valid as long as the plugin instance lives. Cheap to copy and usable from any thread.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    api: *const HostApi,
}

// SAFETY: berthd's host functions are thread-safe; the pointer stays valid while the instance lives.
unsafe impl Send for Host {}
// SAFETY: as above.
unsafe impl Sync for Host {}

impl Host {
    /// Wraps the host's table.
    ///
    /// # Safety
    /// `api` must be null or point to a [`HostApi`] that outlives every use of the returned value.
    pub unsafe fn from_raw(api: *const HostApi) -> Self {
        Self { api }
    }

    /// A host that is not there, for a plugin's own unit tests: log lines go to stderr, events nowhere.
    pub fn detached() -> Self {
        Self { api: std::ptr::null() }
    }

    fn api(&self) -> Option<&HostApi> {
        // SAFETY: from_raw's contract.
        unsafe { self.api.as_ref() }
    }

    /// Whether the host has the function whose field ends at `end` bytes into [`HostApi`] (append-only).
    fn has(&self, end: usize) -> Option<&HostApi> {
        self.api().filter(|api| api.size >= end)
    }

    /// Writes `message` into berthd's log, attributed to this plugin.
    pub fn log(&self, level: Level, message: &str) {
        let end = std::mem::offset_of!(HostApi, log) + std::mem::size_of::<abi::LogFn>();
        match self.has(end) {
            Some(api) => {
                let level = match level {
                    Level::Error => log_level::ERROR,
                    Level::Warn => log_level::WARN,
                    Level::Info => log_level::INFO,
                    Level::Debug => log_level::DEBUG,
                    Level::Trace => log_level::TRACE,
                };
                // SAFETY: the host's function with its own context; the message is lent for the call.
                unsafe { (api.log)(api.context, level, Bytes::new(message.as_bytes())) }
            }
            // Inside a wasm component the host is the component's host import.
            #[cfg(target_family = "wasm")]
            None => crate::wasm::log(level, message),
            #[cfg(not(target_family = "wasm"))]
            None => eprintln!("{level:?}: {message}"),
        }
    }

    /// [`Host::log`] at info level.
    pub fn info(&self, message: &str) {
        self.log(Level::Info, message)
    }

    /// [`Host::log`] at warn level.
    pub fn warn(&self, message: &str) {
        self.log(Level::Warn, message)
    }

    /// [`Host::log`] at debug level.
    pub fn debug(&self, message: &str) {
        self.log(Level::Debug, message)
    }

    /// Reports an event.
    pub fn emit(&self, event: &Event) {
        let end = std::mem::offset_of!(HostApi, event) + std::mem::size_of::<abi::EventFn>();
        if let Some(api) = self.has(end) {
            let bytes = event.encode_to_vec();
            // SAFETY: the host's function with its own context; the bytes are lent for the call.
            unsafe { (api.event)(api.context, Bytes::new(&bytes)) }
        }
    }

    /// Reports that process `exec_id` (empty for init) of task `id` in `namespace` exited. A runtime reports
    /// every exit, after its `state` already answers Stopped: berthd's waits end on it.
    pub fn exit(&self, namespace: &str, id: &str, exec_id: &str, exit: Exit) {
        self.emit(&Event {
            kind: Some(event::Kind::Exit(ExitEvent {
                namespace: namespace.into(),
                id: id.into(),
                exec_id: exec_id.into(),
                exit: Some(exit),
            })),
        })
    }

    /// Publishes `event` on `topic` (`/`-separated identifiers starting with `/`, e.g. `/berth/alert`) in
    /// `namespace` into berthd's event stream, where `ctr events` and every Events subscriber see it. Fails
    /// with InvalidArgument for a bad topic or namespace, Unimplemented on a berthd older than ABI 1.1 and
    /// Unavailable on a detached host.
    pub fn publish(&self, namespace: &str, topic: &str, event: Any) -> crate::Result<()> {
        // Inside a wasm component the host is the component's host import.
        #[cfg(target_family = "wasm")]
        if self.api().is_none() {
            return crate::wasm::publish(namespace, topic, event);
        }
        let end = std::mem::offset_of!(HostApi, publish) + std::mem::size_of::<abi::PublishFn>();
        let Some(api) = self.has(end) else {
            return Err(match self.api() {
                Some(_) => crate::Error::unimplemented("this berthd cannot publish events (it is older than ABI 1.1)"),
                None => crate::Error::unavailable("no host to publish events to"),
            });
        };
        let request = PublishRequest { namespace: namespace.into(), topic: topic.into(), event: Some(event) };
        let bytes = request.encode_to_vec();
        let mut error = abi::Buffer::empty();
        // SAFETY: the host's function with its own context; the request is lent for the call, the error
        // buffer is the host's to fill.
        let result = unsafe { (api.publish)(api.context, Bytes::new(&bytes), &mut error) };
        if result == abi::code::OK {
            return Ok(());
        }
        // SAFETY: the host filled the buffer or left it empty; read, then given back to the host's free.
        let e = PluginError::decode(unsafe { error.as_slice() }).unwrap_or_default();
        // SAFETY: as above.
        unsafe { error.release() };
        let message =
            if e.message.is_empty() { format!("publishing on {topic}: error code {result}") } else { e.message };
        Err(crate::Error::new(result, message))
    }

    /// Reports that a process of task `id` was killed for going over its memory limit.
    pub fn oom(&self, namespace: &str, id: &str) {
        self.emit(&Event { kind: Some(event::Kind::Oom(OomEvent { namespace: namespace.into(), id: id.into() })) })
    }
}

/// What a plugin gets when berthd makes its instance.
#[derive(Debug, Clone)]
pub struct Init {
    /// Its id, `kind.name`.
    pub id: String,
    /// Its `config` table, as JSON; read it with [`Init::config`].
    pub config_json: Vec<u8>,
    /// A persistent directory for it (`<root>/<kind>.<name>`), not created.
    pub root_dir: PathBuf,
    /// A directory for state that does not survive a reboot (`<state>/<kind>.<name>`), not created.
    pub state_dir: PathBuf,
    /// The host.
    pub host: Host,
}

impl Init {
    /// An init for a plugin's own unit tests: a detached host, `config_json` as config and `dir` for both
    /// directories.
    pub fn for_tests(id: &str, config_json: &str, dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            id: id.into(),
            config_json: config_json.as_bytes().to_vec(),
            root_dir: dir.join("root"),
            state_dir: dir.join("state"),
            host: Host::detached(),
        }
    }

    /// The config, parsed as [`crate::parse_config`] does.
    pub fn config<C: DeserializeOwned>(&self) -> crate::Result<C> {
        crate::parse_config(&self.config_json)
    }
}
