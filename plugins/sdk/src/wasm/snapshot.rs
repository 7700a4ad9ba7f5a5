//! The snapshot kind as a wasm component: [`crate::snapshot::Snapshotter`] behind the WIT interfaces
//! `berth:snapshot/snapshotter@1.1.0` and `berth:snapshot/revisions@1.1.0` ([`Snapshotter::revision`]).

use crate::proto::snapshots::{Info, Kind};
use crate::proto::{Mount, Timestamp};
use crate::snapshot::{Labels, Snapshotter};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../proto/wit/snapshot",
        world: "berth:snapshot/snapshot-plugin-revisions",
        pub_export_macro: true,
        export_macro_name: "__export_snapshot_world",
        default_bindings_module: "berth_plugin_sdk::wasm::snapshot::bindings",
    });
}

use bindings::berth::snapshot::host;
use bindings::berth::snapshot::types as wit;
use bindings::exports::berth::snapshot::revisions::Guest as RevisionsGuest;
use bindings::exports::berth::snapshot::snapshotter::Guest;

pub use crate::host::Level;

/// Writes `message` into berthd's log at `level`, tagged with the plugin (the host's `log` import).
pub fn log(level: Level, message: &str) {
    host::log(super::host_level!(level, host::Level), message)
}

/// What [`crate::export_snapshot!`] implements for the plugin's type: the backend and its crate's version.
#[doc(hidden)]
pub trait Export {
    type Backend: Snapshotter;
    const VERSION: &'static str;
}

/// The instance's backend, made by `init`. A component instance is single-threaded and berthd initialises
/// it once, so one cell per instance is all there is.
static BACKEND: super::Instance = super::Instance::new();

fn backend<T: Snapshotter>() -> Result<&'static T, wit::Error> {
    BACKEND.get().ok_or_else(|| wit::Error::FailedPrecondition("the plugin was not initialised".into()))
}

super::wit_error!(wit::Error);

fn time_to(t: Option<Timestamp>) -> wit::Timestamp {
    let t = t.unwrap_or_default();
    wit::Timestamp { seconds: t.seconds, nanos: t.nanos.max(0) as u32 }
}

fn time_from(t: wit::Timestamp) -> Option<Timestamp> {
    Some(Timestamp { seconds: t.seconds, nanos: t.nanos as i32 })
}

fn info_to(info: Info) -> wit::Info {
    let kind = match Kind::try_from(info.kind) {
        Ok(Kind::View) => wit::Kind::View,
        Ok(Kind::Active) => wit::Kind::Active,
        _ => wit::Kind::Committed,
    };
    wit::Info {
        name: info.name,
        parent: info.parent,
        kind,
        labels: info.labels.into_iter().collect(),
        created: time_to(info.created_at),
        updated: time_to(info.updated_at),
    }
}

fn info_from(info: wit::Info) -> Info {
    let kind = match info.kind {
        wit::Kind::View => Kind::View,
        wit::Kind::Active => Kind::Active,
        wit::Kind::Committed => Kind::Committed,
    };
    Info {
        name: info.name,
        parent: info.parent,
        kind: kind as i32,
        labels: info.labels.into_iter().collect(),
        created_at: time_from(info.created),
        updated_at: time_from(info.updated),
    }
}

fn mounts_to(mounts: Vec<Mount>) -> Vec<wit::Mount> {
    mounts
        .into_iter()
        .map(|m| wit::Mount { type_: m.r#type, source: m.source, target: m.target, options: m.options })
        .collect()
}

fn labels(labels: wit::Labels) -> Labels {
    labels.into_iter().collect()
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
        super::init(&BACKEND, log, None, || E::Backend::new(super::backend_init(id, config_json)))
            .map_err(|(message, config_path)| wit::InitError { message, config_path })
    }

    fn stat(key: String) -> Result<wit::Info, wit::Error> {
        backend::<E::Backend>()?.stat(&key).map(info_to).map_err(error)
    }

    fn update(info: wit::Info, fieldpaths: Vec<String>) -> Result<wit::Info, wit::Error> {
        backend::<E::Backend>()?.update(info_from(info), &fieldpaths).map(info_to).map_err(error)
    }

    fn usage(key: String) -> Result<wit::DiskUsage, wit::Error> {
        let usage = backend::<E::Backend>()?.usage(&key).map_err(error)?;
        Ok(wit::DiskUsage { size: usage.size.max(0) as u64, inodes: usage.inodes.max(0) as u64 })
    }

    fn mounts(key: String) -> Result<Vec<wit::Mount>, wit::Error> {
        backend::<E::Backend>()?.mounts(&key).map(mounts_to).map_err(error)
    }

    fn prepare(key: String, parent: String, l: wit::Labels) -> Result<Vec<wit::Mount>, wit::Error> {
        backend::<E::Backend>()?.prepare(&key, &parent, labels(l)).map(mounts_to).map_err(error)
    }

    fn view(key: String, parent: String, l: wit::Labels) -> Result<Vec<wit::Mount>, wit::Error> {
        backend::<E::Backend>()?.view(&key, &parent, labels(l)).map(mounts_to).map_err(error)
    }

    fn commit(name: String, key: String, l: wit::Labels) -> Result<(), wit::Error> {
        backend::<E::Backend>()?.commit(&name, &key, labels(l)).map_err(error)
    }

    fn remove(key: String) -> Result<(), wit::Error> {
        backend::<E::Backend>()?.remove(&key).map_err(error)
    }

    fn list() -> Result<Vec<wit::Info>, wit::Error> {
        Ok(backend::<E::Backend>()?.list().map_err(error)?.into_iter().map(info_to).collect())
    }

    fn cleanup() -> Result<(), wit::Error> {
        backend::<E::Backend>()?.cleanup().map_err(error)
    }
}

impl<E: Export> RevisionsGuest for E {
    fn revision(key: String) -> Result<Option<u64>, wit::Error> {
        backend::<E::Backend>()?.revision(&key).map_err(error)
    }
}

/// Exports a [`Snapshotter`] from a `wasm32-wasip2` `cdylib` as a component of world
/// `berth:snapshot/snapshot-plugin-revisions` (the kind, its revisions, its [`Snapshotter::NAME`], the crate's version). Use it once,
/// at the crate root; the same line makes a native plugin when built for the host.
#[macro_export]
macro_rules! export_snapshot {
    ($ty:ty) => {
        #[doc(hidden)]
        pub struct __BerthSnapshotExport;
        impl $crate::wasm::snapshot::Export for __BerthSnapshotExport {
            type Backend = $ty;
            const VERSION: &'static str = env!("CARGO_PKG_VERSION");
        }
        $crate::wasm::snapshot::bindings::__export_snapshot_world!(__BerthSnapshotExport with_types_in $crate::wasm::snapshot::bindings);
    };
}
