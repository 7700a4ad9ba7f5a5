//! The one wasmtime engine of berthd's wasm plugins, its epoch ticker, and the on-disk cache of compiled
//! components.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Config, Engine};

/// How often the epoch advances: the granularity of call timeouts.
pub const TICK: Duration = Duration::from_millis(10);

/// Why a component could not be compiled or read from the cache.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The bytes are not a component wasmtime accepts.
    #[error("{0}")]
    Compile(String),
}

/// The engine: components, epoch interruption for call timeouts. Made once, with its ticker thread.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        let engine = Engine::new(&config).expect("the wasm engine's configuration is valid");
        let ticking = engine.clone();
        // The ticker runs as long as berthd: it is what interrupts a call that ran past its deadline.
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(TICK);
                    ticking.increment_epoch();
                }
            })
            .expect("starting the wasm epoch thread");
        engine
    })
}

/// Ticks to a deadline `timeout` from now, rounded up (a deadline is checked at ticks, so one more).
pub fn ticks(timeout: Duration) -> u64 {
    (timeout.as_nanos().div_ceil(TICK.as_nanos()) as u64).max(1) + 1
}

/// What the cache did for a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached {
    /// Read from the cache.
    Hit,
    /// Compiled and written to the cache.
    Compiled,
    /// The cache entry was unreadable: compiled again and rewritten.
    Recompiled,
    /// Compiled; writing the cache failed (logged).
    Uncached,
}

impl Cached {
    /// As the status row shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Cached::Hit => "cache hit",
            Cached::Compiled => "compiled, cached",
            Cached::Recompiled => "compiled (the cache entry was unreadable), cached",
            Cached::Uncached => "compiled, not cached",
        }
    }
}

/// The cache file of a component whose content hashes to `sha256`, for this engine (its wasmtime version
/// and settings are part of the name, so another berthd's entries are never read).
pub fn cache_path(dir: &Path, sha256: &str) -> PathBuf {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine().precompile_compatibility_hash().hash(&mut hasher);
    dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish()))
}

/// The component of `bytes` (content hash `sha256`), from the cache in `dir` or compiled (and cached).
pub fn component(bytes: &[u8], sha256: &str, dir: &Path) -> Result<(Component, Cached), EngineError> {
    let engine = engine();
    let path = cache_path(dir, sha256);
    let mut outcome = Cached::Compiled;
    if path.exists() {
        // SAFETY: the file is berthd's own cache, named by the content hash and the engine's compatibility
        // hash, and only ever written whole (tmp + rename) from `precompile_component`.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => return Ok((component, Cached::Hit)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable wasm cache entry: compiling again");
                outcome = Cached::Recompiled;
            }
        }
    }
    let compiled = engine.precompile_component(bytes).map_err(|e| EngineError::Compile(format!("{e:#}")))?;
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{sha256}.{}.tmp", std::process::id()));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&compiled)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the wasm cache");
        outcome = Cached::Uncached;
    }
    // SAFETY: the bytes were just made by this engine's precompile_component.
    let component =
        unsafe { Component::deserialize(engine, &compiled) }.map_err(|e| EngineError::Compile(format!("{e:#}")))?;
    Ok((component, outcome))
}

/// Whether `bytes` is a wasm component: the reason it is not, otherwise.
pub fn check_header(bytes: &[u8]) -> Result<(), String> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err("it is not a wasm file (no \\0asm magic)".into());
    }
    match bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => Err(
            "it is a core wasm module, not a component (build it for wasm32-wasip2, or wrap it with wasm-tools component new)"
                .into(),
        ),
        ref v => Err(format!("it is a wasm binary of an unknown version or layer {v:02x?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_tell_components_from_modules() {
        assert!(check_header(b"\0asm\x0d\x00\x01\x00").is_ok());
        assert!(check_header(b"\0asm\x01\x00\x00\x00").unwrap_err().contains("core wasm module"));
        assert!(check_header(b"#!/bin/sh\n").unwrap_err().contains("not a wasm file"));
        assert!(check_header(b"\0as").unwrap_err().contains("not a wasm file"));
    }

    #[test]
    fn ticks_round_up() {
        assert_eq!(ticks(Duration::from_millis(10)), 2);
        assert_eq!(ticks(Duration::from_millis(15)), 3);
        assert_eq!(ticks(Duration::from_secs(5)), 501);
    }

    #[test]
    fn the_cache_is_used_and_survives_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = wat::parse_str("(component)").unwrap();
        let (_, first) = component(&bytes, "abc", dir.path()).unwrap();
        assert_eq!(first, Cached::Compiled);
        let (_, second) = component(&bytes, "abc", dir.path()).unwrap();
        assert_eq!(second, Cached::Hit);
        std::fs::write(cache_path(dir.path(), "abc"), b"not compiled code").unwrap();
        let (_, third) = component(&bytes, "abc", dir.path()).unwrap();
        assert_eq!(third, Cached::Recompiled);
        let (_, fourth) = component(&bytes, "abc", dir.path()).unwrap();
        assert_eq!(fourth, Cached::Hit);
    }
}
