//! The native plugin ABI: what crosses between berthd and a plugin library. Plain C types only: no Rust type,
//! trait object, allocator or async runtime handle crosses the boundary.
//!
//! # Loading
//!
//! The library exports one symbol, [`ENTRY_SYMBOL`] (`berth_plugin_entry`), an `extern "C" fn() -> *const
//! Header`. berthd calls it first and checks the [`Header`] before anything else: [`MAGIC`], then
//! [`Header::abi_major`] (must equal the host's [`ABI_MAJOR`]), then [`Header::header_size`], the target
//! triple, the kind and the name. Only then does it call [`FunctionTable::create`] and the methods.
//!
//! # Versions
//!
//! Within one major version everything is append-only: fields are added at the end of [`Header`],
//! [`FunctionTable`] and [`HostApi`], and methods at the end of a kind's method list (their indices in
//! [`snapshot_methods`], [`runtime_methods`] and [`monitor_methods`] never change). ABI 1.1 appended the
//! `monitor` kind and [`HostApi::publish`]. ABI 1.2 appended [`snapshot_methods::REVISION`]: berthd asks a
//! snapshot plugin for its revision of a snapshot (a few bytes) before each stat and answers from the copy it
//! kept while the revision stays, so a snapshot with many labels is not copied across on every stat; a
//! plugin of an older SDK has no such method and every stat is fetched whole, as before. Each side says how
//! much it has ([`Header::header_size`], [`FunctionTable::method_count`], [`HostApi::size`]), so a host and a
//! plugin of different minor versions work together in both directions: the host calls only the methods the
//! plugin has (a missing one answers [`code::UNIMPLEMENTED`]), and the SDK uses only the host functions the
//! host has. A different major version is refused.
//!
//! # Calls
//!
//! Every method has the signature [`MethodFn`]: the request is a protobuf message as bytes, borrowed for the
//! call; the answer is a [`Buffer`] the plugin allocates and the host hands back to the buffer's own
//! [`Buffer::free`]. The return value is [`code::OK`] with the response message in the buffer, or another
//! [`code`] with an encoded [`crate::proto::PluginError`] in it. The plugin catches every panic
//! ([`code::PANICKED`]): unwinding out of an `extern "C"` function aborts the process.
//!
//! Methods may be called from several host threads at once, and block as long as they need: berthd calls them
//! off its async workers.
//!
//! # Lifetime
//!
//! berthd never unloads a library (no `dlclose`: thread-local destructors of an unloaded library crash the
//! process), so statics, threads and the instance may live until the process ends.

use std::ffi::c_void;

/// The first eight bytes of every [`Header`].
pub const MAGIC: [u8; 8] = *b"BERTHPLG";

/// The ABI major version: a host refuses plugins of another major version.
pub const ABI_MAJOR: u16 = 1;

/// The ABI minor version: what was appended within the major version. Any minor works with any other.
/// 1: the `monitor` kind ([`monitor_methods`]) and the host's [`HostApi::publish`].
/// 2: the snapshot kind's [`snapshot_methods::REVISION`].
pub const ABI_MINOR: u16 = 2;

/// The name of the one symbol a plugin library exports.
pub const ENTRY_SYMBOL: &str = "berth_plugin_entry";

/// The target triple this copy of the SDK was built for. The host compares the plugin's with its own.
pub const TARGET: &str = env!("BERTH_SDK_TARGET");

/// The compiler this copy of the SDK was built with; shown by introspection, not checked: the ABI is C.
pub const RUSTC: &str = env!("BERTH_SDK_RUSTC");

/// This SDK's version.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The entry symbol's type.
pub type EntryFn = unsafe extern "C" fn() -> *const Header;

/// A UTF-8 string the plugin keeps for as long as it is loaded (in practice a `&'static str`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StaticStr {
    /// First byte.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl StaticStr {
    /// Wraps a static string.
    pub const fn new(s: &'static str) -> Self {
        Self { ptr: s.as_ptr(), len: s.len() }
    }

    /// The string, if it is valid UTF-8.
    ///
    /// # Safety
    /// `ptr` and `len` must describe readable memory that outlives `'a`.
    pub unsafe fn as_str<'a>(&self) -> Option<&'a str> {
        if self.ptr.is_null() {
            return if self.len == 0 { Some("") } else { None };
        }
        // SAFETY: the caller guarantees the memory.
        std::str::from_utf8(unsafe { std::slice::from_raw_parts(self.ptr, self.len) }).ok()
    }
}

/// Bytes lent for the duration of one call; the lender keeps ownership.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Bytes {
    /// First byte (may be null when `len` is 0).
    pub ptr: *const u8,
    /// Length.
    pub len: usize,
}

impl Bytes {
    /// Lends `data`.
    pub fn new(data: &[u8]) -> Self {
        Self { ptr: data.as_ptr(), len: data.len() }
    }

    /// The bytes.
    ///
    /// # Safety
    /// `ptr` and `len` must describe readable memory for the lifetime `'a`.
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: the caller guarantees the memory.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Frees a [`Buffer`]'s memory: called with the buffer's own `ptr`, `len` and `cap`.
pub type FreeFn = unsafe extern "C" fn(ptr: *mut u8, len: usize, cap: usize);

/// Bytes handed over by the side that allocated them, with the function that frees them. The receiver reads
/// them and then calls `free` (on the allocator's side) exactly once.
#[repr(C)]
#[derive(Debug)]
pub struct Buffer {
    /// First byte, or null for an empty buffer.
    pub ptr: *mut u8,
    /// Length.
    pub len: usize,
    /// Capacity, as the allocator needs it back.
    pub cap: usize,
    /// Frees the memory; None for an empty buffer.
    pub free: Option<FreeFn>,
}

impl Buffer {
    /// An empty buffer, for the callee to fill.
    pub const fn empty() -> Self {
        Self { ptr: std::ptr::null_mut(), len: 0, cap: 0, free: None }
    }

    /// Hands `data` over; [`free_vec`] of this library frees it.
    pub fn from_vec(data: Vec<u8>) -> Self {
        let mut data = std::mem::ManuallyDrop::new(data);
        Self { ptr: data.as_mut_ptr(), len: data.len(), cap: data.capacity(), free: Some(free_vec) }
    }

    /// The bytes.
    ///
    /// # Safety
    /// The buffer must come from [`Buffer::from_vec`] or an equivalent of the other side, not freed yet.
    pub unsafe fn as_slice(&self) -> &[u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: the caller guarantees the memory.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Gives the memory back to its allocator and leaves the buffer empty.
    ///
    /// # Safety
    /// `free`, `ptr`, `len` and `cap` must be as the allocating side set them.
    pub unsafe fn release(&mut self) {
        if let Some(free) = self.free.take() {
            // SAFETY: the caller guarantees the triple is the allocator's.
            unsafe { free(self.ptr, self.len, self.cap) };
        }
        *self = Self::empty();
    }
}

/// Frees a buffer made by [`Buffer::from_vec`] in this library: keeps it as this thread's spare (see
/// `spare_vec`) when it is not larger than `SPARE_MAX` (256 KiB).
///
/// # Safety
/// The arguments must be those of a `Vec<u8>` of this library's allocator, not freed yet.
pub unsafe extern "C" fn free_vec(ptr: *mut u8, len: usize, cap: usize) {
    if !ptr.is_null() {
        // SAFETY: the caller guarantees the triple came from a Vec<u8> of this allocator.
        keep_spare(unsafe { Vec::from_raw_parts(ptr, len, cap) });
    }
}

/// The largest buffer a thread keeps for its next answer: 256 KiB, so a thread holds at most that much
/// between calls (and nothing once it exits).
pub(crate) const SPARE_MAX: usize = 256 * 1024;

std::thread_local! {
    /// The buffer the host gave back last on this thread, empty or not (see [`spare_vec`]).
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// An empty buffer for an answer: the one this thread's last answer left (berthd frees an answer on the
/// thread that made the call, right after decoding it), or a new one. An answer is encoded into a buffer
/// that is already large enough instead of a new allocation of its exact size per call: with glibc's
/// allocator, freeing a block of 64 KiB or more also consolidates every small free block, which made the
/// next call's small allocations slower (docs/benchmarks.md, Plugins).
pub(crate) fn spare_vec() -> Vec<u8> {
    let mut spare = SPARE.try_with(|s| s.take()).unwrap_or_default();
    spare.clear();
    spare
}

/// Keeps `data` as this thread's spare if it is the larger and at most [`SPARE_MAX`]; frees the other.
fn keep_spare(data: Vec<u8>) {
    if data.capacity() > SPARE_MAX {
        return;
    }
    // During the thread's exit (no more thread-local) the buffer is freed instead.
    let _ = SPARE.try_with(move |s| {
        let old = s.take();
        s.set(if old.capacity() > data.capacity() { old } else { data });
    });
}

/// What the entry symbol returns: who the plugin is and where its functions are. Lives as long as the library.
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`ABI_MAJOR`] of the SDK the plugin was built with.
    pub abi_major: u16,
    /// [`ABI_MINOR`] of the SDK the plugin was built with.
    pub abi_minor: u16,
    /// `size_of::<Header>()` as the plugin knows it: fields past it are absent.
    pub header_size: u32,
    /// The target triple the plugin was built for ([`TARGET`]).
    pub target: StaticStr,
    /// The compiler it was built with ([`RUSTC`]).
    pub rustc: StaticStr,
    /// The SDK version ([`SDK_VERSION`]).
    pub sdk_version: StaticStr,
    /// Its kind: `snapshot`, `runtime` or `monitor`.
    pub kind: StaticStr,
    /// Its name: `[plugins."KIND.NAME"]` must name it so.
    pub name: StaticStr,
    /// The plugin's own version (its crate version).
    pub version: StaticStr,
    /// Its functions.
    pub functions: *const FunctionTable,
}

// SAFETY: a header is immutable static data.
unsafe impl Sync for Header {}

impl Header {
    /// A header of this SDK's ABI version, target and compiler.
    pub const fn new(
        kind: &'static str,
        name: &'static str,
        version: &'static str,
        functions: &'static FunctionTable,
    ) -> Self {
        Self {
            magic: MAGIC,
            abi_major: ABI_MAJOR,
            abi_minor: ABI_MINOR,
            header_size: std::mem::size_of::<Header>() as u32,
            target: StaticStr::new(TARGET),
            rustc: StaticStr::new(RUSTC),
            sdk_version: StaticStr::new(SDK_VERSION),
            kind: StaticStr::new(kind),
            name: StaticStr::new(name),
            version: StaticStr::new(version),
            functions,
        }
    }
}

/// Makes the plugin instance from a [`crate::proto::InitRequest`]. On success it stores the instance in
/// `*instance` and returns [`code::OK`]; otherwise it returns an error code with an encoded
/// [`crate::proto::PluginError`] in `*error`. `host` stays valid for as long as the instance lives.
pub type CreateFn =
    unsafe extern "C" fn(request: Bytes, host: *const HostApi, instance: *mut *mut c_void, error: *mut Buffer) -> i32;

/// Drops an instance (berthd's shutdown). The library stays loaded.
pub type DestroyFn = unsafe extern "C" fn(instance: *mut c_void);

/// One method: request message in, response (or [`crate::proto::PluginError`]) out, a [`code`] returned.
pub type MethodFn = unsafe extern "C" fn(instance: *mut c_void, request: Bytes, response: *mut Buffer) -> i32;

/// The plugin's functions.
#[repr(C)]
#[derive(Debug)]
pub struct FunctionTable {
    /// Makes the instance.
    pub create: CreateFn,
    /// Drops it.
    pub destroy: DestroyFn,
    /// How many entries `methods` has.
    pub method_count: u32,
    /// The kind's methods by index ([`snapshot_methods`], [`runtime_methods`], [`monitor_methods`]); a None
    /// entry is unimplemented.
    pub methods: *const Option<MethodFn>,
}

// SAFETY: a function table is immutable static data.
unsafe impl Sync for FunctionTable {}

/// Writes a log line into berthd's log, attributed to the plugin: `level` is one of [`log_level`].
pub type LogFn = unsafe extern "C" fn(context: *const c_void, level: u32, message: Bytes);

/// Reports an event the plugin noticed by itself (a runtime's exits): an encoded
/// [`crate::proto::runtime::Event`]. May be called from any thread, at any time while the instance lives.
pub type EventFn = unsafe extern "C" fn(context: *const c_void, event: Bytes);

/// Publishes an event into berthd's event stream (what `ctr events` shows): an encoded
/// [`crate::proto::PublishRequest`]. Returns [`code::OK`], or another code with an encoded
/// [`crate::proto::PluginError`] in `error`, allocated by the host with its own free function. May be called
/// from any thread while the instance lives.
pub type PublishFn = unsafe extern "C" fn(context: *const c_void, request: Bytes, error: *mut Buffer) -> i32;

/// What the host offers the plugin, passed to [`FunctionTable::create`]. Append-only, like the rest.
#[repr(C)]
#[derive(Debug)]
pub struct HostApi {
    /// `size_of::<HostApi>()` as the host knows it: fields past it are absent.
    pub size: usize,
    /// Passed back to every function below.
    pub context: *const c_void,
    /// Logging.
    pub log: LogFn,
    /// Events.
    pub event: EventFn,
    /// Publishing into berthd's event stream (ABI 1.1).
    pub publish: PublishFn,
}

/// The levels of [`LogFn`].
pub mod log_level {
    /// Errors.
    pub const ERROR: u32 = 1;
    /// Warnings.
    pub const WARN: u32 = 2;
    /// Information.
    pub const INFO: u32 = 3;
    /// Debugging.
    pub const DEBUG: u32 = 4;
    /// Tracing.
    pub const TRACE: u32 = 5;
}

/// Return codes of [`CreateFn`] and [`MethodFn`]: containerd's error categories, plus what only a plugin
/// boundary has. A code the host does not know counts as [`INTERNAL`](code::INTERNAL).
pub mod code {
    /// Success: the buffer holds the response.
    pub const OK: i32 = 0;
    /// The object does not exist.
    pub const NOT_FOUND: i32 = 1;
    /// The object exists already.
    pub const ALREADY_EXISTS: i32 = 2;
    /// The request is wrong.
    pub const INVALID_ARGUMENT: i32 = 3;
    /// The object is not in a state for the request.
    pub const FAILED_PRECONDITION: i32 = 4;
    /// Something needed is not available now.
    pub const UNAVAILABLE: i32 = 5;
    /// The plugin does not do this.
    pub const UNIMPLEMENTED: i32 = 6;
    /// A failure inside the plugin.
    pub const INTERNAL: i32 = 7;
    /// A runtime's process has exited already (signal, resize, write refused).
    pub const PROCESS_FINISHED: i32 = 8;
    /// The plugin panicked; the message holds the panic's.
    pub const PANICKED: i32 = 9;
}

/// Method indices of the `snapshot` kind; requests and responses are containerd's
/// `containerd.services.snapshots.v1` messages ([`crate::proto::snapshots`]).
pub mod snapshot_methods {
    /// `StatSnapshotRequest` → `StatSnapshotResponse`.
    pub const STAT: usize = 0;
    /// `UpdateSnapshotRequest` → `UpdateSnapshotResponse`.
    pub const UPDATE: usize = 1;
    /// `UsageRequest` → `UsageResponse`.
    pub const USAGE: usize = 2;
    /// `MountsRequest` → `MountsResponse`.
    pub const MOUNTS: usize = 3;
    /// `PrepareSnapshotRequest` → `PrepareSnapshotResponse`.
    pub const PREPARE: usize = 4;
    /// `ViewSnapshotRequest` → `ViewSnapshotResponse`.
    pub const VIEW: usize = 5;
    /// `CommitSnapshotRequest` → empty.
    pub const COMMIT: usize = 6;
    /// `RemoveSnapshotRequest` → empty.
    pub const REMOVE: usize = 7;
    /// `ListSnapshotsRequest` → one `ListSnapshotsResponse` with every snapshot the filters select.
    pub const LIST: usize = 8;
    /// `CleanupRequest` → empty.
    pub const CLEANUP: usize = 9;
    /// `RevisionRequest` → `RevisionResponse` (ABI 1.2; berth's own messages,
    /// [`crate::proto::snapshots::RevisionRequest`]): the plugin's revision of a snapshot, read before each
    /// stat so berthd answers from the copy it kept while the revision stays.
    pub const REVISION: usize = 10;
    /// How many methods ABI 1.2 defines (ABI 1.0 and 1.1: 10, without `REVISION`).
    pub const COUNT: usize = 11;
}

/// Method indices of the `runtime` kind; messages are `berth.plugin.runtime.v1`'s
/// ([`crate::proto::runtime`]).
pub mod runtime_methods {
    /// `CreateRequest` → `CreateResponse`.
    pub const CREATE: usize = 0;
    /// `ProcessRequest` → `StartResponse`.
    pub const START: usize = 1;
    /// `ProcessRequest` → `StateResponse`.
    pub const STATE: usize = 2;
    /// `KillRequest` → empty.
    pub const KILL: usize = 3;
    /// `TaskRequest` → `Exit` (the init's).
    pub const DELETE: usize = 4;
    /// `ExecRequest` → empty.
    pub const EXEC: usize = 5;
    /// `ProcessRequest` → `Exit` (the exec'd process's).
    pub const DELETE_PROCESS: usize = 6;
    /// `ResizePtyRequest` → empty.
    pub const RESIZE_PTY: usize = 7;
    /// `ProcessRequest` → empty.
    pub const CLOSE_IO: usize = 8;
    /// `TaskRequest` → empty.
    pub const PAUSE: usize = 9;
    /// `TaskRequest` → empty.
    pub const RESUME: usize = 10;
    /// `TaskRequest` → `PidsResponse`.
    pub const PIDS: usize = 11;
    /// `CheckpointRequest` → empty.
    pub const CHECKPOINT: usize = 12;
    /// `UpdateRequest` → empty.
    pub const UPDATE: usize = 13;
    /// `TaskRequest` → `StatsResponse`.
    pub const STATS: usize = 14;
    /// `ListRequest` → `ListResponse`.
    pub const LIST: usize = 15;
    /// How many methods ABI 1.0 defines.
    pub const COUNT: usize = 16;
}

/// Method indices of the `monitor` kind (ABI 1.1); messages are `berth.plugin.monitor.v1`'s
/// ([`crate::proto::monitor`]).
pub mod monitor_methods {
    /// `Empty` → `Empty`.
    pub const ACTIVATE: usize = 0;
    /// `TaskRequest` → `Empty`.
    pub const MONITOR: usize = 1;
    /// `TaskRequest` → `Empty`.
    pub const STOP: usize = 2;
    /// `EventRequest` → `Empty`.
    pub const EVENT: usize = 3;
    /// `TaskRequest` → `StatsResponse`.
    pub const STATS: usize = 4;
    /// How many methods ABI 1.1 defines.
    pub const COUNT: usize = 5;
}
