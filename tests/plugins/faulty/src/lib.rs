//! A native snapshot plugin that misbehaves as its file name says, for berth's tests of the native loader.
//! The tests copy the one library under several names; `berth_plugin_entry` finds its own file with
//! `dladdr` and answers with the header of that variant (the plugin's name is the file's stem):
//!
//! * `bad-magic`: a header without berth's magic;
//! * `wrong-major`: ABI major 99;
//! * `newer-minor`: a newer ABI minor than the host knows (accepted);
//! * `wrong-kind`: says it is a runtime plugin;
//! * `wrong-name`: names itself `someone-else`;
//! * `wrong-target`: built for another target triple;
//! * `short-table`: only the first three methods (stat, update, usage), as an older ABI minor would have;
//! * `abi-1.1`: a snapshotter of ABI 1.1, whose table ends before `revision` (ABI 1.2);
//! * `monitor-panics`: a monitor (ABI 1.1) whose every `event` call panics;
//! * `monitor-blocks`: a monitor whose `event` calls block until the file named by config `gate` exists
//!   (at most a minute), then publish `/faulty/released`;
//! * `monitor-old`: a monitor header of ABI 1.0, which had no monitor kind;
//! * anything else: a working in-memory snapshotter whose `prepare` panics for keys ending in `boom`, and
//!   whose creation panics with config `{"panic_on_init": true}`. It keeps revisions (a counter of the
//!   instance, which holds every record: nothing outlives it), or none, as the SDK's default, with config
//!   `{"no_revisions": true}`. With config `{"count_stats": true}` its stat
//!   answers carry the label `faulty.stat-calls`, how many stats it answered so far, without moving the
//!   revision: a stat berthd answers from its copy shows the count of the stat it copied.

use std::collections::HashMap;
use std::ffi::CStr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use berth_plugin_sdk::abi::{
    self, FunctionTable, Header, MethodFn, StaticStr, monitor_methods as mm, snapshot_methods as m,
};
use berth_plugin_sdk::monitor::{Monitor, Task, TaskEvent};
use berth_plugin_sdk::proto::Mount;
use berth_plugin_sdk::proto::snapshots::{Info, Kind, UsageResponse};
use berth_plugin_sdk::snapshot::{Labels, Snapshotter};
use berth_plugin_sdk::{Error, Init, Result};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    panic_on_init: bool,
    gate: String,
    count_stats: bool,
    no_revisions: bool,
}

/// The records: each snapshot with its revision.
#[derive(Default)]
struct Records {
    snapshots: HashMap<String, (Info, u64)>,
    last_revision: u64,
}

impl Records {
    fn insert(&mut self, info: Info) {
        self.last_revision += 1;
        self.snapshots.insert(info.name.clone(), (info, self.last_revision));
    }
}

/// Snapshots in memory, with tmpfs mounts.
pub struct Faulty {
    records: Mutex<Records>,
    /// Stats answered, when the config asks for them to be counted.
    stat_calls: Option<AtomicU64>,
    no_revisions: bool,
}

impl Faulty {
    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, kind: Kind, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        if key.ends_with("boom") {
            panic!("asked to prepare {key}");
        }
        let mut records = self.lock();
        if records.snapshots.contains_key(key) {
            return Err(Error::already_exists(key));
        }
        if !parent.is_empty() && !records.snapshots.contains_key(parent) {
            return Err(Error::not_found(parent));
        }
        let now = std::time::SystemTime::now().into();
        let info = Info {
            name: key.into(),
            parent: parent.into(),
            kind: kind as i32,
            created_at: Some(now),
            updated_at: Some(now),
            labels,
        };
        records.insert(info);
        Ok(vec![Mount { r#type: "tmpfs".into(), source: "tmpfs".into(), target: String::new(), options: vec![] }])
    }
}

impl Snapshotter for Faulty {
    const NAME: &'static str = "faulty";

    fn new(init: Init) -> Result<Self> {
        let config: Config = init.config()?;
        if config.panic_on_init {
            panic!("told to panic on init");
        }
        let stat_calls = config.count_stats.then(|| AtomicU64::new(0));
        Ok(Self { records: Mutex::new(Records::default()), stat_calls, no_revisions: config.no_revisions })
    }
    fn stat(&self, key: &str) -> Result<Info> {
        let mut info =
            self.lock().snapshots.get(key).map(|(info, _)| info.clone()).ok_or_else(|| Error::not_found(key))?;
        if let Some(calls) = &self.stat_calls {
            let calls = calls.fetch_add(1, Ordering::Relaxed) + 1;
            info.labels.insert("faulty.stat-calls".into(), calls.to_string());
        }
        Ok(info)
    }
    fn revision(&self, key: &str) -> Result<Option<u64>> {
        let revision = self.lock().snapshots.get(key).ok_or_else(|| Error::not_found(key))?.1;
        Ok((!self.no_revisions).then_some(revision))
    }
    fn update(&self, info: Info, _: &[String]) -> Result<Info> {
        let mut records = self.lock();
        let (current, _) = records.snapshots.get(&info.name).ok_or_else(|| Error::not_found(&info.name))?;
        let updated = Info { labels: info.labels, ..current.clone() };
        records.insert(updated.clone());
        Ok(updated)
    }
    fn usage(&self, key: &str) -> Result<UsageResponse> {
        self.stat(key).map(|_| UsageResponse { size: 0, inodes: 1 })
    }
    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.stat(key).map(|_| vec![Mount { r#type: "tmpfs".into(), source: "tmpfs".into(), ..Default::default() }])
    }
    fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.add(Kind::Active, key, parent, labels)
    }
    fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.add(Kind::View, key, parent, labels)
    }
    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        let mut records = self.lock();
        let (mut info, _) = records.snapshots.remove(key).ok_or_else(|| Error::not_found(key))?;
        info.name = name.into();
        info.kind = Kind::Committed as i32;
        info.labels = labels;
        records.insert(info);
        Ok(())
    }
    fn remove(&self, key: &str) -> Result<()> {
        self.lock().snapshots.remove(key).map(|_| ()).ok_or_else(|| Error::not_found(key))
    }
    fn list(&self) -> Result<Vec<Info>> {
        Ok(self.lock().snapshots.values().map(|(info, _)| info.clone()).collect())
    }
}

/// A monitor that panics or blocks in its `event` calls, as its variant says.
pub struct FaultyMonitor {
    gate: Option<std::path::PathBuf>,
    host: berth_plugin_sdk::Host,
}

impl Monitor for FaultyMonitor {
    const NAME: &'static str = "faulty";

    fn new(init: Init) -> Result<Self> {
        let config: Config = init.config()?;
        let gate = (!config.gate.is_empty()).then(|| config.gate.into());
        Ok(Self { gate, host: init.host })
    }
    fn monitor(&self, _task: &Task) -> Result<()> {
        Ok(())
    }
    fn stop(&self, _task: &Task) -> Result<()> {
        Ok(())
    }
    fn event(&self, task: &Task, event: &TaskEvent) -> Result<()> {
        let Some(gate) = &self.gate else {
            panic!("asked to watch an event of task {}: {event:?}", task.id);
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !gate.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let note =
            berth_plugin_sdk::proto::Any { type_url: "faulty.Released".into(), value: task.id.clone().into_bytes() };
        self.host.publish(&task.namespace, "/faulty/released", note)
    }
}

/// This library's file stem, from the loader's record of it.
fn variant() -> String {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr on the address of a function of this library.
    let found = unsafe { libc::dladdr(berth_plugin_entry as *const libc::c_void, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return "faulty".into();
    }
    // SAFETY: dladdr returns a NUL-terminated path.
    let path = unsafe { CStr::from_ptr(info.dli_fname) }.to_string_lossy().into_owned();
    Path::new(&path).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

static METHODS: [Option<MethodFn>; m::COUNT] = berth_plugin_sdk::snapshot::__methods::<Faulty>();
static MONITOR_METHODS: [Option<MethodFn>; mm::COUNT] = berth_plugin_sdk::monitor::__methods::<FaultyMonitor>();

fn leak(s: String) -> StaticStr {
    StaticStr::new(Box::leak(s.into_boxed_str()))
}

/// The berth plugin entry point: the header of this file's variant.
#[unsafe(no_mangle)]
pub extern "C" fn berth_plugin_entry() -> *const Header {
    static HEADER: OnceLock<usize> = OnceLock::new();
    *HEADER.get_or_init(|| {
        let variant = variant();
        if variant.starts_with("monitor-") {
            let table = Box::leak(Box::new(FunctionTable {
                create: berth_plugin_sdk::monitor::__create::<FaultyMonitor>,
                destroy: berth_plugin_sdk::__private::destroy::<FaultyMonitor>,
                method_count: mm::COUNT as u32,
                methods: MONITOR_METHODS.as_ptr(),
            }));
            let mut header = Header::new("monitor", "faulty", env!("CARGO_PKG_VERSION"), table);
            if variant == "monitor-old" {
                header.abi_minor = 0;
            }
            header.name = leak(variant);
            return Box::leak(Box::new(header)) as *const Header as usize;
        }
        let table = Box::leak(Box::new(FunctionTable {
            create: berth_plugin_sdk::snapshot::__create::<Faulty>,
            destroy: berth_plugin_sdk::__private::destroy::<Faulty>,
            method_count: match variant.as_str() {
                "short-table" => 3,
                "abi-1.1" => m::REVISION as u32,
                _ => m::COUNT as u32,
            },
            methods: METHODS.as_ptr(),
        }));
        let mut header = Header::new("snapshot", "faulty", env!("CARGO_PKG_VERSION"), table);
        header.name = leak(variant.clone());
        match variant.as_str() {
            "bad-magic" => header.magic = *b"NOTBERTH",
            "wrong-major" => (header.abi_major, header.abi_minor) = (99, 0),
            "newer-minor" => header.abi_minor = abi::ABI_MINOR + 5,
            "abi-1.1" => header.abi_minor = 1,
            "wrong-kind" => header.kind = StaticStr::new("runtime"),
            "wrong-name" => header.name = StaticStr::new("someone-else"),
            "wrong-target" => header.target = StaticStr::new("riscv64gc-unknown-none-elf"),
            _ => {}
        }
        Box::leak(Box::new(header)) as *const Header as usize
    }) as *const Header
}
