//! `snapshot.legacy`: a wasm snapshot plugin built against `berth:snapshot@1.0.0` as it was before 1.1.0
//! added `revisions` (wit/snapshot.wit is a copy of that version: the SDK, and proto/wit, moved on, and this
//! guest exists to stay behind). berth's tests load it to check a component without revisions still works,
//! each of its stats fetched whole. It keeps no snapshots: `stat("calls")` answers with this instance's count
//! of stat calls in label `calls`, so a test can see every stat reach it; other keys are not found.

use std::sync::atomic::{AtomicU64, Ordering};

wit_bindgen::generate!({
    path: "wit",
    world: "berth:snapshot/snapshot-plugin",
});

use berth::snapshot::types::{DiskUsage, Error, Info, InitError, Kind, Labels, Mount, PluginInfo, Timestamp};
use exports::berth::snapshot::snapshotter::Guest;

static CALLS: AtomicU64 = AtomicU64::new(0);

struct Legacy;

impl Guest for Legacy {
    fn describe() -> PluginInfo {
        PluginInfo { name: "legacy".into(), version: env!("CARGO_PKG_VERSION").into(), sdk: String::new() }
    }

    fn init(_id: String, _config_json: String) -> Result<(), InitError> {
        Ok(())
    }

    fn stat(key: String) -> Result<Info, Error> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        if key != "calls" {
            return Err(Error::NotFound(key));
        }
        let epoch = Timestamp { seconds: 0, nanos: 0 };
        Ok(Info {
            name: key,
            parent: String::new(),
            kind: Kind::Committed,
            labels: vec![("calls".into(), calls.to_string())],
            created: epoch,
            updated: epoch,
        })
    }

    fn update(info: Info, _: Vec<String>) -> Result<Info, Error> {
        Err(Error::NotFound(info.name))
    }

    fn usage(key: String) -> Result<DiskUsage, Error> {
        Err(Error::NotFound(key))
    }

    fn mounts(key: String) -> Result<Vec<Mount>, Error> {
        Err(Error::NotFound(key))
    }

    fn prepare(_: String, _: String, _: Labels) -> Result<Vec<Mount>, Error> {
        Err(Error::Unimplemented("legacy makes no snapshots".into()))
    }

    fn view(_: String, _: String, _: Labels) -> Result<Vec<Mount>, Error> {
        Err(Error::Unimplemented("legacy makes no snapshots".into()))
    }

    fn commit(_: String, key: String, _: Labels) -> Result<(), Error> {
        Err(Error::NotFound(key))
    }

    fn remove(key: String) -> Result<(), Error> {
        Err(Error::NotFound(key))
    }

    fn list() -> Result<Vec<Info>, Error> {
        Ok(Vec::new())
    }

    fn cleanup() -> Result<(), Error> {
        Ok(())
    }
}

export!(Legacy);
