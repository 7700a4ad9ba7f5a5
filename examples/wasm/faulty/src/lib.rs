//! `snapshot.faulty`: a wasm snapshot plugin for berth's tests, which misbehaves when asked to. `stat` or
//! `prepare` of a key containing `loop` never returns, `alloc` allocates until something stops it, `trap`
//! panics (a trap in a component); `prepare` of `escape` returns a bind mount of the host's /etc; other keys are not found (stat) or refused (prepare: it makes no
//! snapshots). Its config can make `init` fail (`fail_init = true`). Each instance counts its stat calls, so a
//! test can tell a fresh instance from a reused one: `stat("calls")` answers with the count in label `calls`.

use std::sync::atomic::{AtomicU64, Ordering};

use berth_plugin_sdk::proto::Mount;
use berth_plugin_sdk::proto::snapshots::{Info, UsageResponse};
use berth_plugin_sdk::snapshot::{Labels, Snapshotter};
use berth_plugin_sdk::{Error, Init, Result};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    fail_init: bool,
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
}

impl Snapshotter for Faulty {
    const NAME: &'static str = "faulty";

    fn new(init: Init) -> Result<Self> {
        let config: Config = init.config()?;
        if config.fail_init {
            return Err(Error { config_path: vec!["fail_init".into()], ..Error::invalid_argument("asked to fail") });
        }
        Ok(Faulty { calls: AtomicU64::new(0) })
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
            _ => Err(Error::not_found(key)),
        }
    }

    fn update(&self, info: Info, _: &[String]) -> Result<Info> {
        Err(Error::not_found(info.name))
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
        Ok(Vec::new())
    }
}

berth_plugin_sdk::export_snapshot!(Faulty);
