//! The named tables (LMDB sub-databases) and their typed handles.

use heed::byteorder::BigEndian;
use heed::types::{Str, U32};
use heed::{CommitToken, Database, DatabaseOpener, OnCommit, RoTxn, RwTxn, WithoutTls};

use super::codec::Proto;
use super::records::{Container, Namespace, Sandbox};

/// Table names as they appear in the LMDB file; never rename one without an upgrade step.
pub mod db_name {
    pub const META: &str = "meta";
    pub const NAMESPACES: &str = "namespaces";
    pub const CONTAINERS: &str = "containers";
    pub const SANDBOXES: &str = "sandboxes";

    /// Every table, for sizing `max_dbs`.
    pub const ALL: [&str; 4] = [META, NAMESPACES, CONTAINERS, SANDBOXES];
}

/// Keys of the `meta` table.
pub mod meta_key {
    /// The schema version of the whole store, a big-endian u32.
    pub const SCHEMA_VERSION: &str = "schema_version";
}

pub type MetaTable<'t> = Database<'t, Str, U32<BigEndian>>;
pub type NamespaceTable<'t> = Database<'t, Str, Proto<Namespace>>;
pub type ContainerTable<'t> = Database<'t, Str, Proto<Container>>;
pub type SandboxTable<'t> = Database<'t, Str, Proto<Sandbox>>;

/// Typed handles to every table. Handles are plain dbi numbers: copying them is free.
#[derive(Clone, Copy, Debug)]
pub struct Tables<'t> {
    pub meta: MetaTable<'t>,
    pub namespaces: NamespaceTable<'t>,
    pub containers: ContainerTable<'t>,
    pub sandboxes: SandboxTable<'t>,
}

impl<'t> Tables<'t> {
    /// Creates the data tables that do not exist yet (the `meta` table is the upgrader's).
    pub fn create(opener: &DatabaseOpener<'t, WithoutTls>, wtxn: &mut RwTxn<'t>) -> heed::Result<()> {
        opener.create_database::<Str, Proto<Namespace>>(wtxn, Some(db_name::NAMESPACES))?;
        opener.create_database::<Str, Proto<Container>>(wtxn, Some(db_name::CONTAINERS))?;
        opener.create_database::<Str, Proto<Sandbox>>(wtxn, Some(db_name::SANDBOXES))?;
        Ok(())
    }

    /// Opens the data tables, which must exist; `Err(name)` names the first missing one.
    pub fn open(
        opener: &DatabaseOpener<'t, WithoutTls>,
        txn: &RoTxn<'t>,
        meta: MetaTable<'t>,
    ) -> heed::Result<Result<Self, &'static str>> {
        let Some(namespaces) = opener.open_database(txn, Some(db_name::NAMESPACES))? else {
            return Ok(Err(db_name::NAMESPACES));
        };
        let Some(containers) = opener.open_database(txn, Some(db_name::CONTAINERS))? else {
            return Ok(Err(db_name::CONTAINERS));
        };
        let Some(sandboxes) = opener.open_database(txn, Some(db_name::SANDBOXES))? else {
            return Ok(Err(db_name::SANDBOXES));
        };
        Ok(Ok(Tables { meta, namespaces, containers, sandboxes }))
    }
}

// heed ties a handle to the transaction that opened it until that transaction commits.
impl OnCommit for Tables<'_> {
    type Committed = Tables<'static>;

    fn on_commit(self, token: &CommitToken) -> Tables<'static> {
        Tables {
            meta: self.meta.on_commit(token),
            namespaces: self.namespaces.on_commit(token),
            containers: self.containers.on_commit(token),
            sandboxes: self.sandboxes.on_commit(token),
        }
    }
}

/// The key of a container or sandbox: `<namespace>/<id>`.
pub fn object_key(namespace: &str, id: &str) -> String {
    format!("{namespace}/{id}")
}

/// The prefix of every key in `namespace`. Identifiers cannot contain `/`, so the scan is exact:
/// `default/` never matches keys of a namespace `default-2`.
pub fn namespace_prefix(namespace: &str) -> String {
    format!("{namespace}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(object_key("default", "c1"), "default/c1");
        assert_eq!(namespace_prefix("k8s.io"), "k8s.io/");
        assert!(!object_key("default-2", "c").starts_with(&namespace_prefix("default")));
    }
}
