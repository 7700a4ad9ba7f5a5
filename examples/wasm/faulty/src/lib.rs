//! `snapshot.faulty`: a wasm snapshot plugin for berth's tests, which misbehaves when asked to. `stat` or
//! `prepare` of a key containing `loop` never returns, `alloc` allocates until something stops it, `trap`
//! panics (a trap in a component); `prepare` of `escape` returns a bind mount of the host's /etc; other keys are not found (stat) or refused (prepare: it makes no
//! snapshots). Its config can make `init` fail (`fail_init = true`). Each instance counts its stat calls, so a
//! test can tell a fresh instance from a reused one: `stat("calls")` answers with the count in label `calls`
//! (and has no revision, as every stat changes it).
//!
//! It also keeps, in memory, committed snapshot `big` (64 labels of 1 KiB: a 64 KiB answer, and label
//! `faulty.instance`, random per instance) with revisions, which `update` changes: the boundary's cost for a
//! large answer, and berthd's cache of it, without file I/O. Each instance has its own copy (they are not
//! coherent, as a test plugin need not be), and its revisions start at a random base, so two instances, or an
//! instance and its replacement, never share one. Unless asked to break that promise: `revision_base = N`
//! starts every instance at N, so a test can check berthd forgets what it kept when an instance is replaced.

use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use berth_plugin_sdk::proto::Mount;
use berth_plugin_sdk::proto::snapshots::{Info, UsageResponse};
use berth_plugin_sdk::snapshot::{Labels, Snapshotter};
use berth_plugin_sdk::{Error, Init, Result};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    fail_init: bool,
    revision_base: Option<u64>,
}

/// The key of the snapshot kept in memory.
const BIG: &str = "big";

/// `big`'s labels at start: 64 of 1 KiB each, key included, and which instance this is.
fn big_labels(instance: u64) -> Labels {
    let mut labels: Labels = (0..64).map(|i| (format!("bench.label.{i:02}"), "x".repeat(1024 - 14))).collect();
    labels.insert("faulty.instance".into(), format!("{instance:016x}"));
    labels
}

/// `big` and its revision, which every change moves.
struct Big {
    labels: Labels,
    revision: u64,
}

/// Does what `key` asks for, if anything.
fn misbehave(key: &str) {
    if key.contains("loop") {
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
    if key.contains("alloc") {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
    if key.contains("trap") {
        panic!("asked to trap");
    }
}

/// The plugin.
pub struct Faulty {
    calls: AtomicU64,
    big: Mutex<Big>,
}

impl Faulty {
    fn big(&self) -> std::sync::MutexGuard<'_, Big> {
        self.big.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Snapshotter for Faulty {
    const NAME: &'static str = "faulty";

    fn new(init: Init) -> Result<Self> {
        let config: Config = init.config()?;
        if config.fail_init {
            return Err(Error { config_path: vec!["fail_init".into()], ..Error::invalid_argument("asked to fail") });
        }
        // std's RandomState is seeded from WASI's random source, per instance. A random 64-bit base: the
        // counters of two instances overlap only if their bases are within as many changes of each other.
        let (instance, base) = (RandomState::new().hash_one(0u8), RandomState::new().hash_one(1u8));
        let revision = config.revision_base.unwrap_or(base);
        Ok(Faulty { calls: AtomicU64::new(0), big: Mutex::new(Big { labels: big_labels(instance), revision }) })
    }

    fn stat(&self, key: &str) -> Result<Info> {
        let calls = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        misbehave(key);
        match key {
            "calls" => Ok(Info {
                name: key.into(),
                labels: [("calls".to_string(), calls.to_string())].into(),
                ..Default::default()
            }),
            BIG => Ok(Info {
                name: key.into(),
                kind: berth_plugin_sdk::proto::snapshots::Kind::Committed as i32,
                labels: self.big().labels.clone(),
                ..Default::default()
            }),
            _ => Err(Error::not_found(key)),
        }
    }

    fn revision(&self, key: &str) -> Result<Option<u64>> {
        match key {
            BIG => Ok(Some(self.big().revision)),
            // None for the misbehaving keys: their stat misbehaves, and should be called.
            "calls" => Ok(None),
            _ if ["loop", "alloc", "trap"].iter().any(|k| key.contains(k)) => Ok(None),
            _ => Err(Error::not_found(key)),
        }
    }

    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        if info.name != BIG {
            return Err(Error::not_found(info.name));
        }
        let mut big = self.big();
        let mut labels = big.labels.clone();
        if fieldpaths.is_empty() {
            labels = info.labels.clone();
        }
        for path in fieldpaths {
            if path == "labels" {
                labels = info.labels.clone();
            } else if let Some(label) = path.strip_prefix("labels.") {
                match info.labels.get(label) {
                    Some(v) => labels.insert(label.into(), v.clone()),
                    None => labels.remove(label),
                };
            } else {
                return Err(Error::invalid_argument(format!("cannot update {path:?} of snapshot {BIG}")));
            }
        }
        big.labels = labels;
        big.revision = big.revision.wrapping_add(1);
        Ok(Info {
            name: BIG.into(),
            kind: berth_plugin_sdk::proto::snapshots::Kind::Committed as i32,
            labels: big.labels.clone(),
            ..Default::default()
        })
    }
    fn usage(&self, key: &str) -> Result<UsageResponse> {
        Err(Error::not_found(key))
    }
    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        Err(Error::not_found(key))
    }
    fn prepare(&self, key: &str, _: &str, _: Labels) -> Result<Vec<Mount>> {
        misbehave(key);
        if key.contains("escape") {
            // A host directory it was never granted: berthd must not mount it.
            return Ok(vec![Mount {
                r#type: "bind".into(),
                source: "/etc".into(),
                target: String::new(),
                options: vec!["rbind".into(), "rw".into()],
            }]);
        }
        Err(Error::unimplemented("faulty makes no snapshots"))
    }
    fn view(&self, _: &str, _: &str, _: Labels) -> Result<Vec<Mount>> {
        Err(Error::unimplemented("faulty makes no snapshots"))
    }
    fn commit(&self, _: &str, key: &str, _: Labels) -> Result<()> {
        Err(Error::not_found(key))
    }
    fn remove(&self, key: &str) -> Result<()> {
        Err(Error::not_found(key))
    }
    fn list(&self) -> Result<Vec<Info>> {
        // Not `big`: no namespace of berthd's has it, so its collector would remove it.
        Ok(Vec::new())
    }
}

berth_plugin_sdk::export_snapshot!(Faulty);
