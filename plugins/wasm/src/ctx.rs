//! What one instance's store holds: its WASI context (only what the table grants), its memory limiter, and
//! its stderr, which goes into berthd's log tagged with the plugin.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::options::WasmOptions;

/// Why an instance's context could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CtxError {
    /// A granted directory cannot be opened.
    #[error("cannot open preopen {host} (as {guest}): {message}")]
    Preopen { host: String, guest: String, message: String },
}

/// One instance's host state.
pub struct Ctx {
    wasi: WasiCtx,
    table: ResourceTable,
    /// The memory limiter.
    pub limits: Limits,
    /// The plugin's id, for the log.
    pub plugin: Arc<str>,
    /// What the kind's host imports need beyond that (a monitor's event exchange), as the source gave it to
    /// [`crate::plugin::WasmPlugin::load_with`].
    pub host: Option<HostState>,
}

/// A kind's own state for its host imports, shared by every instance of the plugin.
pub type HostState = Arc<dyn std::any::Any + Send + Sync>;

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl Ctx {
    /// A context granting what `options` grant, and nothing else.
    pub fn new(plugin: Arc<str>, options: &WasmOptions) -> Result<Self, CtxError> {
        Self::with(plugin, options, |_| {})
    }

    /// [`Ctx::new`], then `more` on the builder: a runtime task's own stdio, args, environment and working
    /// directory.
    pub fn with(
        plugin: Arc<str>,
        options: &WasmOptions,
        more: impl FnOnce(&mut WasiCtxBuilder),
    ) -> Result<Self, CtxError> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(LogStream { plugin: Arc::clone(&plugin) });
        for (k, v) in &options.env {
            wasi.env(k, v);
        }
        for p in &options.preopens {
            let perms = if p.read_only { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
            wasi.preopened_dir(&p.host, &p.guest, perms).map_err(|e| CtxError::Preopen {
                host: p.host.display().to_string(),
                guest: p.guest.clone(),
                message: format!("{e:#}"),
            })?;
        }
        if options.network {
            wasi.inherit_network().allow_ip_name_lookup(true);
        }
        // Otherwise WASI's defaults stand: every socket address is refused and names do not resolve.
        more(&mut wasi);
        Ok(Self {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: Limits { limit: options.memory_limit.0 as usize, used: 0, hit: false },
            plugin,
            host: None,
        })
    }
}

/// The memory cap of one instance: all its linear memories together. Growing past it traps the call
/// (rather than failing the allocation, which a Rust guest turns into an abort anyway) and is remembered, so
/// the error can say which limit was hit.
pub struct Limits {
    limit: usize,
    used: usize,
    /// Whether a growth was refused since the last [`Limits::reset`].
    pub hit: bool,
}

impl Limits {
    /// Forgets an earlier refusal, before a call.
    pub fn reset(&mut self) {
        self.hit = false;
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.used - current.min(self.used) + desired;
        if total > self.limit {
            self.hit = true;
            return Err(wasmtime::format_err!("memory limit of {} bytes reached", self.limit));
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The component's stderr: each line into berthd's log under target `berth_plugin`.
#[derive(Clone)]
struct LogStream {
    plugin: Arc<str>,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter { plugin: Arc::clone(&self.plugin), pending: Vec::new() })
    }
}

struct LineWriter {
    plugin: Arc<str>,
    pending: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self, all: bool) {
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.log(&line[..line.len() - 1]);
        }
        if all && !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.log(&line);
        }
    }

    fn log(&self, line: &[u8]) {
        let plugin = &*self.plugin;
        tracing::info!(target: "berth_plugin", %plugin, stream = "stderr", "{}", String::from_utf8_lossy(line));
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.emit(true);
    }
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        // A line longer than this is logged in pieces rather than kept growing.
        const MAX_LINE: usize = 16 << 10;
        self.pending.extend_from_slice(buf);
        let full = self.pending.len() > MAX_LINE;
        self.emit(full);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.emit(false);
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.emit(true);
        Poll::Ready(Ok(()))
    }
}
