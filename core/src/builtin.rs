//! The plugins compiled into berth-core: the metadata store, the garbage collector and the gRPC
//! services.

use std::num::NonZeroUsize;

use serde::Deserialize;

use crate::plugin::{InitError, Instance, PluginKind, Registration};
use crate::registry::{Registry, RegistryError};
use crate::store::{MetadataStore, StoreOptions};

/// `[plugins."store.lmdb"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LmdbConfig {
    /// Largest size the store may grow to, in MiB.
    pub map_size_mib: NonZeroUsize,
    /// Most writes committed together in one durable transaction.
    pub max_batch: NonZeroUsize,
}

impl Default for LmdbConfig {
    fn default() -> Self {
        Self {
            map_size_mib: NonZeroUsize::new(1024).expect("nonzero"),
            max_batch: NonZeroUsize::new(256).expect("nonzero"),
        }
    }
}

fn store_registration() -> Registration {
    Registration::new::<LmdbConfig, _, _>(PluginKind::Store, "lmdb", |ctx| {
        let config = ctx.config::<LmdbConfig>();
        let dir = ctx.dirs().root.clone();
        async move {
            let options = StoreOptions { map_size: config.map_size_mib.get() << 20, max_batch: config.max_batch.get() };
            // Opening may run upgrade steps and fsync: keep it off the async workers.
            let path = dir.display().to_string();
            let store = tokio::task::spawn_blocking(move || MetadataStore::open(&dir, options))
                .await
                .map_err(|e| InitError::Failed(format!("opening the metadata store: {e}")))?
                .map_err(|e| InitError::Failed(e.to_string()))?;
            tracing::info!(%path, "metadata store open");
            let closing = store.clone();
            Ok(Instance::new(store).on_shutdown(move || closing.close()))
        }
    })
    .describe("metadata store on LMDB: namespaces, containers, sandboxes")
}

fn exchange_registration() -> Registration {
    Registration::new::<crate::plugin::NoConfig, _, _>(PluginKind::Event, "exchange", |_| async {
        Ok(Instance::new(crate::events::Exchange::new()))
    })
    .describe("event exchange: what services publish and Events subscribers receive")
}

/// A registry holding every plugin berth-core provides.
pub fn registry() -> Result<Registry, RegistryError> {
    let mut registry = Registry::new();
    registry.register(store_registration())?;
    registry.register(exchange_registration())?;
    registry.register(crate::gc::registration())?;
    for registration in crate::services::registrations() {
        registry.register(registration)?;
    }
    Ok(registry)
}
