//! Schema versions and the ordered upgrade steps between them.
//!
//! A store without a `meta` table (or without `schema_version` in it) is version 0. Opening runs
//! every step from the stored version up to [`CURRENT_VERSION`] in the same write transaction
//! that records the new version, so an upgrade either happens completely or not at all. A store
//! written by a newer berth is refused rather than misread.

use heed::types::{Str, Unit};
use heed::{CommitOrAbort, DatabaseOpener, Env, RwTxn, WithoutTls};

use super::codec::Proto;
use super::internal;
use super::records::{Container, ContentInfo, Image, Lease, Namespace, Sandbox, Snapshot};
use super::tables::{MetaTable, Tables, db_name, meta_key};
use crate::error::{Error, Result};

/// The schema version this binary reads and writes.
pub const CURRENT_VERSION: u32 = 5;

type StepFn = for<'e> fn(&DatabaseOpener<'e, WithoutTls>, &mut RwTxn<'e>) -> heed::Result<()>;

/// One upgrade step, from version `from` to `from + 1`.
struct Step {
    from: u32,
    what: &'static str,
    run: StepFn,
}

/// Every step, in order; step `n` upgrades version `n` to `n + 1`. A step is history: once
/// released it never changes, since stores at its version exist. Each creates its tables by name
/// rather than through [`Tables`], which always describes the current version.
const STEPS: &[Step] = &[
    Step { from: 0, what: "create tables", run: create_tables },
    Step { from: 1, what: "create the lease tables", run: create_lease_tables },
    Step { from: 2, what: "create the content table", run: create_content_table },
    Step { from: 3, what: "create the snapshot and image tables", run: create_snapshot_and_image_tables },
    Step { from: 4, what: "end lease ids in lease resource keys with NUL", run: lease_resource_keys_end_with_nul },
];

/// 0→1: the first schema has the `namespaces`, `containers` and `sandboxes` tables.
fn create_tables<'e>(opener: &DatabaseOpener<'e, WithoutTls>, wtxn: &mut RwTxn<'e>) -> heed::Result<()> {
    opener.create_database::<Str, Proto<Namespace>>(wtxn, Some(db_name::NAMESPACES))?;
    opener.create_database::<Str, Proto<Container>>(wtxn, Some(db_name::CONTAINERS))?;
    opener.create_database::<Str, Proto<Sandbox>>(wtxn, Some(db_name::SANDBOXES))?;
    Ok(())
}

/// 1→2: leases (`leases`) and the resources they hold (`lease_resources`), both empty.
fn create_lease_tables<'e>(opener: &DatabaseOpener<'e, WithoutTls>, wtxn: &mut RwTxn<'e>) -> heed::Result<()> {
    opener.create_database::<Str, Proto<Lease>>(wtxn, Some(db_name::LEASES))?;
    opener.create_database::<Str, Unit>(wtxn, Some(db_name::LEASE_RESOURCES))?;
    Ok(())
}

/// 2→3: the content each namespace sees (`content`), empty. Blobs committed before version 3 do
/// not exist: berth had no content store then.
fn create_content_table<'e>(opener: &DatabaseOpener<'e, WithoutTls>, wtxn: &mut RwTxn<'e>) -> heed::Result<()> {
    opener.create_database::<Str, Proto<ContentInfo>>(wtxn, Some(db_name::CONTENT))?;
    Ok(())
}

/// 3→4: the snapshots each namespace sees (`snapshots`) and image records (`images`), both empty.
/// Snapshots made before version 4 were the backends' alone: berth had no Snapshots service then,
/// so no client could have made one.
fn create_snapshot_and_image_tables<'e>(
    opener: &DatabaseOpener<'e, WithoutTls>,
    wtxn: &mut RwTxn<'e>,
) -> heed::Result<()> {
    opener.create_database::<Str, Proto<Snapshot>>(wtxn, Some(db_name::SNAPSHOTS))?;
    opener.create_database::<Str, Proto<Image>>(wtxn, Some(db_name::IMAGES))?;
    Ok(())
}

/// 4→5: `lease_resources` keys `<namespace>/<lease>/<type>\0<id>` become
/// `<namespace>/<lease>\0<type>\0<id>`, so that lease ids may hold `/` as containerd's do. Before
/// version 5 neither a namespace nor a lease id could contain `/`: the first two `/` split them.
fn lease_resource_keys_end_with_nul<'e>(
    opener: &DatabaseOpener<'e, WithoutTls>,
    wtxn: &mut RwTxn<'e>,
) -> heed::Result<()> {
    let Some(table) = opener.open_database::<Str, Unit>(wtxn, Some(db_name::LEASE_RESOURCES))? else {
        return Ok(());
    };
    let mut moved = Vec::new();
    for entry in table.iter(wtxn)? {
        let (key, ()) = entry?;
        let mut parts = key.splitn(3, '/');
        if let (Some(ns), Some(lease), Some(rest)) = (parts.next(), parts.next(), parts.next()) {
            moved.push((key.to_owned(), format!("{ns}/{lease}\0{rest}")));
        }
    }
    for (old, new) in moved {
        table.delete(wtxn, &old)?;
        table.put(wtxn, &new, &())?;
    }
    Ok(())
}

/// Brings the store in `env` to [`CURRENT_VERSION`] and returns handles to its tables.
pub fn open_and_upgrade(env: &Env<WithoutTls>) -> Result<Tables<'static>> {
    let wtxn = env.write_txn().map_err(internal("opening the schema upgrade transaction"))?;
    let outcome = env
        .create_databases_and_commit(wtxn, |opener, wtxn| -> heed::Result<CommitOrAbort<_, Error>> {
            let meta: MetaTable = opener.create_database(wtxn, Some(db_name::META))?;
            let found = meta.get(wtxn, meta_key::SCHEMA_VERSION)?.unwrap_or(0);
            if found > CURRENT_VERSION {
                return Ok(CommitOrAbort::Abort(too_new(found)));
            }
            for step in STEPS.iter().filter(|step| step.from >= found) {
                tracing::info!(from = step.from, to = step.from + 1, "upgrading the metadata store: {}", step.what);
                (step.run)(opener, wtxn)?;
            }
            if found != CURRENT_VERSION {
                meta.put(wtxn, meta_key::SCHEMA_VERSION, &CURRENT_VERSION)?;
            }
            Ok(match Tables::open(opener, wtxn, meta)? {
                Ok(tables) => CommitOrAbort::Commit(tables),
                Err(missing) => CommitOrAbort::Abort(Error::Internal(format!(
                    "metadata store: table \"{missing}\" is missing from a store at schema version \
                     {CURRENT_VERSION}"
                ))),
            })
        })
        .map_err(internal("upgrading the schema"))?;
    outcome.into()
}

fn too_new(found: u32) -> Error {
    Error::FailedPrecondition(format!(
        "metadata store: schema version {found} is newer than version {CURRENT_VERSION}, the newest \
         this berth supports; run a newer berth on this store"
    ))
}

#[cfg(test)]
mod tests {
    use heed::EnvOpenOptions;

    use super::*;
    use crate::store::tables::NamespaceTable;

    fn raw_env(dir: &std::path::Path) -> Env<WithoutTls> {
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(16 << 20).max_dbs(db_name::ALL.len() as u32);
        // SAFETY: a fresh temporary directory that nothing else maps.
        unsafe { options.open(dir) }.unwrap()
    }

    fn stored_version(env: &Env<WithoutTls>, tables: &Tables) -> Option<u32> {
        let rtxn = env.read_txn().unwrap();
        tables.meta.get(&rtxn, meta_key::SCHEMA_VERSION).unwrap()
    }

    #[test]
    fn steps_are_contiguous_and_end_at_current() {
        for (n, step) in STEPS.iter().enumerate() {
            assert_eq!(step.from, n as u32, "step {:?} out of order", step.what);
        }
        assert_eq!(STEPS.len() as u32, CURRENT_VERSION);
    }

    #[test]
    fn empty_env_is_upgraded_to_current() {
        let dir = tempfile::tempdir().unwrap();
        let env = raw_env(dir.path());
        let tables = open_and_upgrade(&env).unwrap();
        assert_eq!(stored_version(&env, &tables), Some(CURRENT_VERSION));
        // A second open finds the current version and changes nothing.
        let again = open_and_upgrade(&env).unwrap();
        assert_eq!(stored_version(&env, &again), Some(CURRENT_VERSION));
    }

    #[test]
    fn version_0_store_with_data_keeps_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let env = raw_env(dir.path());
        // A version-0 store: a data table, no meta table.
        let wtxn = env.write_txn().unwrap();
        let namespaces: NamespaceTable = env
            .create_databases_and_commit(wtxn, |opener, wtxn| {
                let db: NamespaceTable = opener.create_database(wtxn, Some(db_name::NAMESPACES))?;
                let ns = Namespace { name: "old".into(), labels: [("a".into(), "b".into())].into() };
                db.put(wtxn, "old", &ns)?;
                Ok::<_, heed::Error>(CommitOrAbort::<_, ()>::Commit(db))
            })
            .unwrap()
            .unwrap_commit();
        {
            let rtxn = env.read_txn().unwrap();
            let opened = env
                .open_databases_and_commit(rtxn, |opener, rtxn| {
                    opener
                        .open_database::<heed::types::Str, heed::types::U32<heed::byteorder::BigEndian>>(
                            rtxn,
                            Some(db_name::META),
                        )
                        .map(CommitOrAbort::<_, ()>::Commit)
                })
                .unwrap()
                .unwrap_commit();
            assert!(opened.is_none(), "the meta table must not exist yet");
        }

        let tables = open_and_upgrade(&env).unwrap();
        assert_eq!(stored_version(&env, &tables), Some(CURRENT_VERSION));
        let rtxn = env.read_txn().unwrap();
        assert_eq!(tables.namespaces.get(&rtxn, "old").unwrap().unwrap().labels["a"], "b");
        assert_eq!(namespaces.len(&rtxn).unwrap(), 1);
        assert!(tables.containers.is_empty(&rtxn).unwrap());
        assert!(tables.sandboxes.is_empty(&rtxn).unwrap());
        assert!(tables.leases.is_empty(&rtxn).unwrap());
        assert!(tables.lease_resources.is_empty(&rtxn).unwrap());
        assert!(tables.content.is_empty(&rtxn).unwrap());
    }

    /// Writes what berth at schema version 1 left on disk: the `meta` table saying 1, the
    /// `namespaces`, `containers` and `sandboxes` tables, and container `default/c1`.
    fn write_version_1_store(dir: &std::path::Path) -> Container {
        let env = raw_env(dir);
        let c = Container {
            id: "c1".into(),
            runtime: Some(crate::store::Runtime { name: "io.containerd.runc.v2".into(), options: None }),
            spec: Some(prost_types::Any { type_url: "spec".into(), value: b"{}".to_vec() }),
            labels: [("k".into(), "v".into())].into(),
            ..Default::default()
        };
        let wtxn = env.write_txn().unwrap();
        let stored = c.clone();
        env.create_databases_and_commit(wtxn, move |opener, wtxn| {
            let meta: MetaTable = opener.create_database(wtxn, Some(db_name::META))?;
            meta.put(wtxn, meta_key::SCHEMA_VERSION, &1)?;
            let namespaces = opener.create_database::<Str, Proto<Namespace>>(wtxn, Some(db_name::NAMESPACES))?;
            namespaces.put(wtxn, "default", &Namespace { name: "default".into(), labels: Default::default() })?;
            let containers = opener.create_database::<Str, Proto<Container>>(wtxn, Some(db_name::CONTAINERS))?;
            containers.put(wtxn, "default/c1", &stored)?;
            opener.create_database::<Str, Proto<Sandbox>>(wtxn, Some(db_name::SANDBOXES))?;
            Ok::<_, heed::Error>(CommitOrAbort::<_, ()>::Commit(()))
        })
        .unwrap()
        .unwrap_commit();
        let rtxn = env.read_txn().unwrap();
        let leases = env
            .open_databases_and_commit(rtxn, |opener, rtxn| {
                opener
                    .open_database::<Str, Proto<Lease>>(rtxn, Some(db_name::LEASES))
                    .map(CommitOrAbort::<_, ()>::Commit)
            })
            .unwrap()
            .unwrap_commit();
        assert!(leases.is_none(), "a version-1 store has no lease tables");
        c
    }

    #[test]
    fn version_1_store_gets_the_lease_tables() {
        let dir = tempfile::tempdir().unwrap();
        let container = write_version_1_store(dir.path());
        let env = raw_env(dir.path());
        let tables = open_and_upgrade(&env).unwrap();
        assert_eq!(stored_version(&env, &tables), Some(CURRENT_VERSION));
        let rtxn = env.read_txn().unwrap();
        assert_eq!(tables.containers.get(&rtxn, "default/c1").unwrap(), Some(container));
        assert_eq!(tables.namespaces.len(&rtxn).unwrap(), 1);
        assert!(tables.leases.is_empty(&rtxn).unwrap());
        assert!(tables.lease_resources.is_empty(&rtxn).unwrap());
    }

    #[tokio::test]
    async fn version_1_store_opens_upgraded_and_keeps_its_container() {
        use crate::store::{LeaseResource, MetadataStore, StoreOptions};

        let dir = tempfile::tempdir().unwrap();
        let container = write_version_1_store(dir.path());
        let store = MetadataStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(store.schema_version().unwrap(), CURRENT_VERSION);
        assert_eq!(store.get_container("default", "c1").unwrap(), container);
        assert!(store.list_leases("default", &|_| true).unwrap().is_empty());
        let lease = Lease { id: "l1".into(), ..Default::default() };
        store.create_lease("default", lease).await.unwrap();
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = LeaseResource { id: digest, kind: "content".into() };
        store.add_lease_resource("default", "l1", r.clone()).await.unwrap();
        store.close();

        // Reopened, it is current already and nothing is upgraded again.
        let store = MetadataStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(store.schema_version().unwrap(), CURRENT_VERSION);
        assert_eq!(store.list_lease_resources("default", "l1").unwrap(), [r]);
        assert_eq!(store.get_container("default", "c1").unwrap(), container);
    }

    /// Writes what berth at schema version 2 left on disk: the version-1 tables, the lease tables,
    /// container `default/c1`, lease `default/l1` holding a content resource, and no content table.
    fn write_version_2_store(dir: &std::path::Path) -> (Container, Lease, String) {
        let env = raw_env(dir);
        let c = Container {
            id: "c1".into(),
            runtime: Some(crate::store::Runtime { name: "io.containerd.runc.v2".into(), options: None }),
            labels: [("k".into(), "v".into())].into(),
            ..Default::default()
        };
        let lease = Lease { id: "l1".into(), labels: [("gc".into(), "keep".into())].into(), created_at: None };
        let resource_key = format!("default/l1/content\0sha256:{}", "a".repeat(64));
        let wtxn = env.write_txn().unwrap();
        let (stored, stored_lease, key) = (c.clone(), lease.clone(), resource_key.clone());
        env.create_databases_and_commit(wtxn, move |opener, wtxn| {
            let meta: MetaTable = opener.create_database(wtxn, Some(db_name::META))?;
            meta.put(wtxn, meta_key::SCHEMA_VERSION, &2)?;
            let namespaces = opener.create_database::<Str, Proto<Namespace>>(wtxn, Some(db_name::NAMESPACES))?;
            namespaces.put(wtxn, "default", &Namespace { name: "default".into(), labels: Default::default() })?;
            let containers = opener.create_database::<Str, Proto<Container>>(wtxn, Some(db_name::CONTAINERS))?;
            containers.put(wtxn, "default/c1", &stored)?;
            opener.create_database::<Str, Proto<Sandbox>>(wtxn, Some(db_name::SANDBOXES))?;
            let leases = opener.create_database::<Str, Proto<Lease>>(wtxn, Some(db_name::LEASES))?;
            leases.put(wtxn, "default/l1", &stored_lease)?;
            let resources = opener.create_database::<Str, Unit>(wtxn, Some(db_name::LEASE_RESOURCES))?;
            resources.put(wtxn, &key, &())?;
            Ok::<_, heed::Error>(CommitOrAbort::<_, ()>::Commit(()))
        })
        .unwrap()
        .unwrap_commit();
        let rtxn = env.read_txn().unwrap();
        let content = env
            .open_databases_and_commit(rtxn, |opener, rtxn| {
                opener
                    .open_database::<Str, Proto<ContentInfo>>(rtxn, Some(db_name::CONTENT))
                    .map(CommitOrAbort::<_, ()>::Commit)
            })
            .unwrap()
            .unwrap_commit();
        assert!(content.is_none(), "a version-2 store has no content table");
        (c, lease, resource_key)
    }

    #[test]
    fn version_2_store_gets_the_content_table_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (container, lease, resource_key) = write_version_2_store(dir.path());
        let env = raw_env(dir.path());
        let tables = open_and_upgrade(&env).unwrap();
        assert_eq!(stored_version(&env, &tables), Some(CURRENT_VERSION));
        let rtxn = env.read_txn().unwrap();
        assert!(tables.content.is_empty(&rtxn).unwrap());
        assert_eq!(tables.containers.get(&rtxn, "default/c1").unwrap(), Some(container));
        assert_eq!(tables.leases.get(&rtxn, "default/l1").unwrap(), Some(lease));
        // Version 5 ends the lease id with NUL: the one resource moved to its new key.
        assert_eq!(resource_key, format!("default/l1/content\0sha256:{}", "a".repeat(64)));
        let moved = format!("default/l1\0content\0sha256:{}", "a".repeat(64));
        assert_eq!(tables.lease_resources.get(&rtxn, &moved).unwrap(), Some(()));
        assert_eq!(tables.lease_resources.len(&rtxn).unwrap(), 1);
        assert_eq!(tables.namespaces.len(&rtxn).unwrap(), 1);
    }

    #[tokio::test]
    async fn version_2_store_opens_upgraded_and_takes_content() {
        use crate::store::{LeaseResource, MetadataStore, StoreOptions};

        let dir = tempfile::tempdir().unwrap();
        let (container, _, _) = write_version_2_store(dir.path());
        let store = MetadataStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(store.schema_version().unwrap(), CURRENT_VERSION);
        assert_eq!(store.get_container("default", "c1").unwrap(), container);
        let held = store.list_lease_resources("default", "l1").unwrap();
        assert_eq!(held, [LeaseResource { id: format!("sha256:{}", "a".repeat(64)), kind: "content".into() }]);
        assert!(store.list_content("default", &|_| true).unwrap().is_empty());
        let digest = format!("sha256:{}", "b".repeat(64));
        let info = ContentInfo { digest: digest.clone(), size: 3, ..Default::default() };
        store.commit_content("default", info, None).await.unwrap();
        store.close();

        let store = MetadataStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(store.schema_version().unwrap(), CURRENT_VERSION);
        assert_eq!(store.get_content("default", &digest).unwrap().size, 3);
        // The namespace now holds content: it cannot be deleted, as in containerd.
        store.delete_container("default", "c1").await.unwrap();
        store.delete_lease("default", "l1").await.unwrap();
        let err = store.delete_namespace("default").await.unwrap_err();
        assert!(err.to_string().ends_with("still has blobs"), "{err}");
    }

    /// Writes what berth at schema version 3 left on disk: the version-2 store plus the `content`
    /// table holding `default/<digest>`, and no snapshot or image tables.
    fn write_version_3_store(dir: &std::path::Path) -> (Container, ContentInfo) {
        let (container, _, _) = write_version_2_store(dir);
        let env = raw_env(dir);
        let digest = format!("sha256:{}", "c".repeat(64));
        let info = ContentInfo { digest: digest.clone(), size: 7, ..Default::default() };
        let wtxn = env.write_txn().unwrap();
        let stored = info.clone();
        env.create_databases_and_commit(wtxn, move |opener, wtxn| {
            let meta: MetaTable = opener.create_database(wtxn, Some(db_name::META))?;
            meta.put(wtxn, meta_key::SCHEMA_VERSION, &3)?;
            let content = opener.create_database::<Str, Proto<ContentInfo>>(wtxn, Some(db_name::CONTENT))?;
            content.put(wtxn, &format!("default/{digest}"), &stored)?;
            Ok::<_, heed::Error>(CommitOrAbort::<_, ()>::Commit(()))
        })
        .unwrap()
        .unwrap_commit();
        let rtxn = env.read_txn().unwrap();
        let images = env
            .open_databases_and_commit(rtxn, |opener, rtxn| {
                opener
                    .open_database::<Str, Proto<Image>>(rtxn, Some(db_name::IMAGES))
                    .map(CommitOrAbort::<_, ()>::Commit)
            })
            .unwrap()
            .unwrap_commit();
        assert!(images.is_none(), "a version-3 store has no image table");
        (container, info)
    }

    #[tokio::test]
    async fn version_3_store_gets_the_snapshot_and_image_tables() {
        use crate::store::{Descriptor, KIND_ACTIVE, MetadataStore, Snapshot, StoreOptions};

        let dir = tempfile::tempdir().unwrap();
        let (container, info) = write_version_3_store(dir.path());
        {
            let env = raw_env(dir.path());
            let tables = open_and_upgrade(&env).unwrap();
            assert_eq!(stored_version(&env, &tables), Some(CURRENT_VERSION));
            let rtxn = env.read_txn().unwrap();
            assert!(tables.snapshots.is_empty(&rtxn).unwrap());
            assert!(tables.images.is_empty(&rtxn).unwrap());
            assert_eq!(tables.content.get(&rtxn, &format!("default/{}", info.digest)).unwrap(), Some(info.clone()));
        }
        let store = MetadataStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(store.schema_version().unwrap(), CURRENT_VERSION);
        assert_eq!(store.get_container("default", "c1").unwrap(), container);
        assert_eq!(store.get_content("default", &info.digest).unwrap().size, 7);
        let record =
            Snapshot { name: "k".into(), backend_key: "default/1/k".into(), kind: KIND_ACTIVE, ..Default::default() };
        store.create_snapshot("default", "overlayfs", record, None).await.unwrap();
        let target = Descriptor { media_type: "m".into(), digest: info.digest.clone(), size: 7, ..Default::default() };
        let image = Image { name: "i".into(), target: Some(target), ..Default::default() };
        store.create_image("default", image).await.unwrap();
        store.close();
        let store = MetadataStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(store.get_snapshot("default", "overlayfs", "k").unwrap().backend_key, "default/1/k");
        assert_eq!(store.get_image("default", "i").unwrap().target.unwrap().size, 7);
    }

    #[test]
    fn newer_store_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let env = raw_env(dir.path());
        let tables = open_and_upgrade(&env).unwrap();
        let mut wtxn = env.write_txn().unwrap();
        tables.meta.put(&mut wtxn, meta_key::SCHEMA_VERSION, &99).unwrap();
        wtxn.commit().unwrap();

        let err = open_and_upgrade(&env).unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("schema version 99") && msg.contains(&format!("version {CURRENT_VERSION},")), "{msg}");
        assert_eq!(stored_version(&env, &tables), Some(99));
    }
}
