//! The `native` plugin source: plugins in dynamic libraries (`.so`), built with `berth-plugin-sdk`.
//!
//! Loading a library, in order, each step refusing the plugin with its reason (a failed plugin in the status
//! table; berthd carries on unless the plugin is required):
//!
//! 1. the file is read and hashed (sha256, shown by introspection) and must be a complete ELF shared object
//!    of berthd's class and machine (`elf`): dlopen of a truncated file would crash berthd with SIGBUS;
//! 2. `dlopen` (through libloading); the library is never closed, refused or not: thread-local destructors of
//!    an unloaded library crash the process, so a loaded library stays mapped until berthd exits;
//! 3. the entry symbol `berth_plugin_entry` must exist; its header is checked before any other call: magic,
//!    ABI major (equal to berthd's), header size, target triple (equal to berthd's), kind and name (equal to
//!    the table's `kind.name`). Any ABI minor is accepted: tables are append-only and carry their lengths;
//! 4. the instance is made from the plugin's `config` table (as JSON) and its directories; a config error the
//!    plugin reports is located in the config file like berthd's own.
//!
//! The plugin then stands behind the core trait of its kind ([`snapshot`], [`runtime`], [`monitor`]). Every call runs on
//! a blocking thread, never on an async worker (`NativePlugin::call`); a call that fails inside the plugin (a
//! caught panic, an internal error) fails that call only and is kept as the plugin's last error.

mod elf;
pub mod monitor;
pub mod runtime;
pub mod snapshot;

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use berth_plugin_sdk::abi::{
    self, ABI_MAJOR, ABI_MINOR, Buffer, Bytes, DestroyFn, EntryFn, FunctionTable, Header, HostApi, MAGIC, MethodFn,
    code, log_level,
};
use berth_plugin_sdk::proto::{InitRequest, Message, PluginError, PublishRequest};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{LoadContext, PluginSource, StatusHandle};
use crate::events::Exchange;
use crate::monitor::SharedMonitor;
use crate::plugin::{InitError, Instance, PluginId, PluginKind};
use crate::runtime::SharedRuntime;
use crate::snapshot::SharedSnapshotter;

/// The options of a native plugin's table besides `source`, `path`, `required` and `config`: none.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NativeOptions {}

/// The `native` source, for berthd to register ([`crate::registry::Registry::add_source`]).
pub fn source() -> PluginSource {
    PluginSource::new::<NativeOptions, _, _>("native", load)
}

/// What the header said, checked.
#[derive(Debug, Clone)]
struct Checked {
    table: &'static FunctionTable,
    abi_minor: u16,
}

/// The fields every header version starts with: read before anything that depends on the version.
#[repr(C)]
struct HeaderPrefix {
    magic: [u8; 8],
    abi_major: u16,
    abi_minor: u16,
    header_size: u32,
}

/// Opens `path` and checks its header against `id`; updates the status row's origin as it learns.
fn open(path: &Path, id: &PluginId, status: &StatusHandle) -> Result<Checked, String> {
    let content = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let sha256: String = Sha256::digest(&content).iter().map(|b| format!("{b:02x}")).collect();
    status.update_origin(|o| o.sha256 = Some(sha256));
    elf::check(&content).map_err(|e| format!("{} is not a shared library berthd can load: {e}", path.display()))?;
    drop(content);
    // SAFETY: loading a library runs its initialisers; the operator named this file as a berth plugin.
    let library = unsafe { libloading::Library::new(path) }
        .map_err(|e| format!("cannot load {} as a shared library: {e}", path.display()))?;
    // Never dlclose (see the module doc): the library lives as long as the process.
    let library: &'static libloading::Library = Box::leak(Box::new(library));
    // SAFETY: the symbol's type is the ABI's; it is checked to exist before it is called.
    let entry = unsafe { library.get::<EntryFn>(abi::ENTRY_SYMBOL.as_bytes()) }.map_err(|e| {
        format!("{} is not a berth plugin: it has no symbol {} ({e})", path.display(), abi::ENTRY_SYMBOL)
    })?;
    // SAFETY: the entry takes nothing and returns a pointer to static data.
    let header = unsafe { entry() };
    if header.is_null() {
        return Err(format!("{} returned no header", abi::ENTRY_SYMBOL));
    }
    // SAFETY: every header version starts with the prefix; nothing past it is read before the checks.
    let prefix = unsafe { &*(header as *const HeaderPrefix) };
    if prefix.magic != MAGIC {
        return Err(format!(
            "{} does not return a berth plugin header (magic {:?}, expected {:?})",
            abi::ENTRY_SYMBOL,
            String::from_utf8_lossy(&prefix.magic),
            String::from_utf8_lossy(&MAGIC)
        ));
    }
    let abi_version = format!("{}.{}", prefix.abi_major, prefix.abi_minor);
    status.update_origin(|o| {
        o.details.insert("abi".into(), abi_version.clone());
    });
    if prefix.abi_major != ABI_MAJOR {
        return Err(format!(
            "plugin ABI version {abi_version} is not supported: this berthd speaks ABI {ABI_MAJOR}.x (rebuild the plugin with a berth-plugin-sdk of ABI major {ABI_MAJOR})"
        ));
    }
    if (prefix.header_size as usize) < std::mem::size_of::<Header>() {
        return Err(format!(
            "plugin header is {} bytes, ABI {ABI_MAJOR}.0 has {}",
            prefix.header_size,
            std::mem::size_of::<Header>()
        ));
    }
    // SAFETY: major version and size checked: the whole header of this version is there.
    let header: &'static Header = unsafe { &*header };
    // SAFETY: the header's strings are static data of the library.
    let text =
        |s: &abi::StaticStr, what: &str| unsafe { s.as_str() }.ok_or_else(|| format!("plugin {what} is not UTF-8"));
    let (target, rustc, sdk) =
        (text(&header.target, "target")?, text(&header.rustc, "compiler")?, text(&header.sdk_version, "SDK version")?);
    let (kind, name, version) =
        (text(&header.kind, "kind")?, text(&header.name, "name")?, text(&header.version, "version")?);
    status.update_origin(|o| {
        o.version = Some(version.to_string());
        o.details.insert("target".into(), target.into());
        o.details.insert("rustc".into(), rustc.into());
        o.details.insert("sdk".into(), sdk.into());
    });
    if target != abi::TARGET {
        return Err(format!("plugin is built for target {target}, this berthd runs on {}", abi::TARGET));
    }
    if kind != id.kind.as_str() {
        return Err(format!(
            "plugin is a {kind} plugin, but its table [plugins.\"{id}\"] makes it a {} plugin",
            id.kind
        ));
    }
    if name != id.name {
        return Err(format!(
            "plugin is named {name:?}, but its table is [plugins.\"{id}\"]: name the table [plugins.\"{kind}.{name}\"]"
        ));
    }
    // SAFETY: a checked header's function table is static data of the library.
    let table = unsafe { header.functions.as_ref() }.ok_or("plugin header has no function table")?;
    if table.method_count > 0 && table.methods.is_null() {
        return Err("plugin function table has methods but no method list".into());
    }
    if prefix.abi_minor > ABI_MINOR {
        tracing::info!(plugin = %id, abi = %abi_version, "plugin is built for a newer ABI minor version; berthd uses what ABI {ABI_MAJOR}.{ABI_MINOR} has");
    }
    Ok(Checked { table, abi_minor: prefix.abi_minor })
}

/// What the host functions see: which plugin calls, where its events go, and the exchange it publishes on.
pub(crate) struct HostState {
    id: PluginId,
    on_event: OnceLock<Box<dyn Fn(berth_plugin_sdk::proto::runtime::Event) + Send + Sync>>,
    exchange: Option<Exchange>,
}

unsafe extern "C" fn host_log(context: *const c_void, level: u32, message: Bytes) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the context is the HostState this berthd made; the message is lent for the call.
        let (state, message) = unsafe { (&*(context as *const HostState), message.as_slice()) };
        let message = String::from_utf8_lossy(message);
        let plugin = state.id.to_string();
        match level {
            log_level::ERROR => tracing::error!(target: "berth_plugin", %plugin, "{message}"),
            log_level::WARN => tracing::warn!(target: "berth_plugin", %plugin, "{message}"),
            log_level::INFO => tracing::info!(target: "berth_plugin", %plugin, "{message}"),
            log_level::DEBUG => tracing::debug!(target: "berth_plugin", %plugin, "{message}"),
            _ => tracing::trace!(target: "berth_plugin", %plugin, "{message}"),
        }
    }));
}

unsafe extern "C" fn host_event(context: *const c_void, event: Bytes) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: as in host_log.
        let (state, event) = unsafe { (&*(context as *const HostState), event.as_slice()) };
        match berth_plugin_sdk::proto::runtime::Event::decode(event) {
            Ok(event) => match state.on_event.get() {
                Some(handle) => handle(event),
                None => tracing::debug!(plugin = %state.id, "event from a plugin that has no events to send: dropped"),
            },
            Err(e) => tracing::warn!(plugin = %state.id, error = %e, "undecodable event from plugin: dropped"),
        }
    }));
}

/// Writes `code` and `message` into the host-allocated `out` for the plugin to read and free.
///
/// # Safety
/// `out` must be null or point to a writable [`Buffer`].
unsafe fn host_fail(out: *mut Buffer, code: i32, message: String) -> i32 {
    if !out.is_null() {
        let error = PluginError { code, message, config_path: Vec::new() };
        // SAFETY: the caller's contract.
        unsafe { out.write(Buffer::from_vec(error.encode_to_vec())) };
    }
    code
}

unsafe extern "C" fn host_publish(context: *const c_void, request: Bytes, error: *mut Buffer) -> i32 {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: as in host_log.
        let (state, request) = unsafe { (&*(context as *const HostState), request.as_slice()) };
        let request = PublishRequest::decode(request)
            .map_err(|e| (code::INVALID_ARGUMENT, format!("decoding the publish request: {e}")))?;
        let exchange =
            state.exchange.as_ref().ok_or((code::UNAVAILABLE, "this berthd has no event exchange".to_string()))?;
        let event = request.event.unwrap_or_default();
        exchange.publish(&request.namespace, &request.topic, event).map_err(|e| (code::INVALID_ARGUMENT, e.to_string()))
    }));
    match result {
        Ok(Ok(())) => code::OK,
        Ok(Err((code, message))) => {
            tracing::debug!(plugin = %state_id(context), %message, "plugin's event refused");
            // SAFETY: the plugin passes a writable buffer.
            unsafe { host_fail(error, code, message) }
        }
        // SAFETY: as above.
        Err(_) => unsafe { host_fail(error, code::INTERNAL, "publishing the event failed inside berthd".into()) },
    }
}

/// The plugin id of a host context, for logs.
fn state_id(context: *const c_void) -> String {
    // SAFETY: the context is the HostState this berthd made.
    unsafe { &*(context as *const HostState) }.id.to_string()
}

/// A call into a plugin that failed: the plugin's code and message, or the host's own failure as INTERNAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallError {
    pub code: i32,
    pub message: String,
}

/// A loaded plugin instance: its methods and the instance pointer they take.
pub(crate) struct NativePlugin {
    pub id: PluginId,
    instance: *mut c_void,
    destroy: DestroyFn,
    methods: Vec<Option<MethodFn>>,
    names: &'static [&'static str],
    status: StatusHandle,
}

// SAFETY: the SDK requires plugin types to be Send + Sync, and the ABI allows concurrent calls.
unsafe impl Send for NativePlugin {}
// SAFETY: as above.
unsafe impl Sync for NativePlugin {}

impl Drop for NativePlugin {
    fn drop(&mut self) {
        // Only the instance goes; the library stays loaded.
        // SAFETY: the instance came from this table's create, and no call is running (we hold the last Arc).
        unsafe { (self.destroy)(self.instance) };
    }
}

impl NativePlugin {
    /// Whether the plugin's table has method `index` (an older ABI minor's is shorter).
    pub fn has(&self, index: usize) -> bool {
        matches!(self.methods.get(index), Some(Some(_)))
    }

    /// Calls method `index` with `request`, off the async workers. On berthd's multi-threaded runtime a
    /// snapshot or runtime call runs where it was awaited, the worker turning into a blocking thread for it
    /// while its other tasks move to another worker (`block_in_place`): that adds tens of nanoseconds where
    /// handing the call to the blocking pool adds 10-20 µs (docs/benchmarks.md, Plugins). A monitor's calls
    /// still go to the pool: the Tasks service gives up on a monitor that takes too long, and it can only give
    /// up on a call that does not hold its thread.
    pub async fn call<Req, Resp>(self: &Arc<Self>, index: usize, request: Req) -> Result<Resp, CallError>
    where
        Req: Message + Send + 'static,
        Resp: Message + Default + Send + 'static,
    {
        let bytes = request.encode_to_vec();
        if self.id.kind != PluginKind::Monitor
            && tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        {
            return tokio::task::block_in_place(|| self.call_blocking(index, &bytes));
        }
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.call_blocking(index, &bytes)).await.unwrap_or_else(|e| {
            Err(CallError { code: code::INTERNAL, message: format!("plugin {} call did not finish: {e}", self.id) })
        })
    }

    fn call_blocking<Resp: Message + Default>(&self, index: usize, request: &[u8]) -> Result<Resp, CallError> {
        let name = self.names.get(index).copied().unwrap_or("an unknown method");
        let Some(Some(method)) = self.methods.get(index) else {
            return Err(CallError {
                code: code::UNIMPLEMENTED,
                message: format!("plugin {} does not implement {name}", self.id),
            });
        };
        let mut out = Buffer::empty();
        // SAFETY: the method and instance are the plugin's; the request is lent for the call.
        let result = unsafe { method(self.instance, Bytes::new(request), &mut out) };
        // SAFETY: the plugin filled the buffer (or left it empty); it is read, then given back to its free.
        let bytes = unsafe { out.as_slice() };
        let outcome = if result == code::OK {
            Resp::decode(bytes).map_err(|e| CallError {
                code: code::INTERNAL,
                message: format!("plugin {} answered {name} with an undecodable message: {e}", self.id),
            })
        } else {
            let error = PluginError::decode(bytes).unwrap_or_default();
            let message = if error.message.is_empty() { format!("error code {result}") } else { error.message };
            Err(CallError { code: result, message })
        };
        // SAFETY: as above; the buffer is not used again.
        unsafe { out.release() };
        if let Err(e) = &outcome
            && !matches!(
                e.code,
                code::NOT_FOUND
                    | code::ALREADY_EXISTS
                    | code::INVALID_ARGUMENT
                    | code::FAILED_PRECONDITION
                    | code::UNIMPLEMENTED
                    | code::PROCESS_FINISHED
            )
        {
            let error = format!("{name}: {}", e.message);
            if e.code == code::PANICKED {
                tracing::error!(plugin = %self.id, %error, "plugin panicked in a call; the call failed, the plugin stays loaded");
            } else {
                tracing::warn!(plugin = %self.id, %error, "plugin call failed");
            }
            self.status.record_error(error);
        }
        outcome
    }

    /// A failure that is not one of the kind's own error categories, as a core error naming the plugin.
    pub fn other_error(&self, e: CallError) -> crate::Error {
        let message = format!("plugin {}: {}", self.id, e.message);
        match e.code {
            code::UNAVAILABLE => crate::Error::Unavailable(message),
            code::UNIMPLEMENTED => crate::Error::Unimplemented(e.message),
            code::INVALID_ARGUMENT => crate::Error::InvalidArgument(e.message),
            code::FAILED_PRECONDITION => crate::Error::FailedPrecondition(e.message),
            code::NOT_FOUND => crate::Error::NotFound(e.message),
            code::ALREADY_EXISTS => crate::Error::AlreadyExists(e.message),
            _ => crate::Error::Internal(message),
        }
    }
}

/// Makes the instance: runs the plugin's create on this (blocking) thread.
fn create(
    ctx: &LoadContext,
    checked: &Checked,
    state: Arc<HostState>,
    names: &'static [&'static str],
) -> Result<NativePlugin, InitError> {
    let plugin = &ctx.plugin;
    let dirs = ctx.init.dirs();
    let request = InitRequest {
        id: plugin.id.to_string(),
        config_json: plugin.config_json(),
        root_dir: dirs.root.display().to_string(),
        state_dir: dirs.state.display().to_string(),
        host_abi_minor: ABI_MINOR.into(),
    };
    // The host table and its state live as long as the process: plugin threads may call them at any time.
    let host: &'static HostApi = Box::leak(Box::new(HostApi {
        size: std::mem::size_of::<HostApi>(),
        context: Arc::into_raw(state) as *const c_void,
        log: host_log,
        event: host_event,
        publish: host_publish,
    }));
    let bytes = request.encode_to_vec();
    let mut instance: *mut c_void = std::ptr::null_mut();
    let mut error = Buffer::empty();
    // SAFETY: the plugin's create with the ABI's arguments.
    let result = unsafe { (checked.table.create)(Bytes::new(&bytes), host, &mut instance, &mut error) };
    if result != code::OK || instance.is_null() {
        // SAFETY: the plugin filled the error buffer or left it empty; read, then freed by its side.
        let e = PluginError::decode(unsafe { error.as_slice() }).unwrap_or_default();
        // SAFETY: as above.
        unsafe { error.release() };
        let message = if e.message.is_empty() { format!("error code {result}") } else { e.message };
        return Err(InitError::Failed(if !e.config_path.is_empty() {
            plugin.config_error(&e.config_path, message).to_string()
        } else if result == code::PANICKED {
            format!("making the plugin instance: {message}")
        } else {
            message
        }));
    }
    // SAFETY: the table's method list has method_count entries (checked non-null when non-empty).
    let methods = (0..checked.table.method_count as usize).map(|i| unsafe { *checked.table.methods.add(i) }).collect();
    Ok(NativePlugin {
        id: plugin.id.clone(),
        instance,
        destroy: checked.table.destroy,
        methods,
        names,
        status: ctx.status.clone(),
    })
}

async fn load(ctx: LoadContext) -> Result<Instance, InitError> {
    let id = ctx.plugin.id.clone();
    if !matches!(id.kind, PluginKind::Snapshot | PluginKind::Runtime | PluginKind::Monitor) {
        return Err(InitError::Failed(format!(
            "native {} plugins are not supported by this berthd (native plugins are snapshot, runtime or monitor plugins)",
            id.kind
        )));
    }
    let exchange = ctx.init.get::<Exchange>(&crate::services::exchange_id()).map(|e| (*e).clone());
    let path = ctx.plugin.path.clone();
    tokio::task::spawn_blocking(move || {
        let checked = open(&path, &id, &ctx.status).map_err(InitError::Failed)?;
        tracing::info!(plugin = %id, path = %path.display(), abi_minor = checked.abi_minor, "native plugin library loaded");
        if id.kind == PluginKind::Monitor && checked.abi_minor < 1 {
            return Err(InitError::Failed(format!(
                "plugin is built for ABI {ABI_MAJOR}.{}, which has no monitor kind (monitors came with ABI {ABI_MAJOR}.1)",
                checked.abi_minor
            )));
        }
        let state = Arc::new(HostState { id: id.clone(), on_event: OnceLock::new(), exchange });
        match id.kind {
            PluginKind::Snapshot => {
                let plugin = create(&ctx, &checked, state, snapshot::METHOD_NAMES)?;
                let backend: SharedSnapshotter = Arc::new(snapshot::NativeSnapshotter::new(Arc::new(plugin)));
                Ok(Instance::new(backend))
            }
            PluginKind::Runtime => {
                let shared = runtime::Shared::new();
                let events = Arc::clone(&shared);
                let _ = state.on_event.set(Box::new(move |event| events.on_event(event)));
                let plugin = create(&ctx, &checked, state, runtime::METHOD_NAMES)?;
                let backend: SharedRuntime = Arc::new(runtime::NativeRuntime::new(Arc::new(plugin), shared));
                Ok(Instance::new(backend))
            }
            PluginKind::Monitor => {
                let plugin = create(&ctx, &checked, state, monitor::METHOD_NAMES)?;
                let backend: SharedMonitor = Arc::new(monitor::NativeMonitor::new(Arc::new(plugin)));
                Ok(Instance::new(backend))
            }
            _ => unreachable!("kinds checked above"),
        }
    })
    .await
    .map_err(|e| InitError::Failed(format!("loading the plugin did not finish: {e}")))?
}
