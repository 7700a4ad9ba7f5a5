//! The named tables (LMDB sub-databases) and their typed handles.

use heed::byteorder::BigEndian;
use heed::types::{Str, U32, Unit};
use heed::{CommitToken, Database, DatabaseOpener, OnCommit, RoTxn, WithoutTls};

use super::codec::Proto;
use super::records::{Container, ContentInfo, Image, Lease, LeaseResource, Namespace, Sandbox, Snapshot};

/// Table names as they appear in the LMDB file; never rename one without an upgrade step.
pub mod db_name {
    pub const META: &str = "meta";
    pub const NAMESPACES: &str = "namespaces";
    pub const CONTAINERS: &str = "containers";
    pub const SANDBOXES: &str = "sandboxes";
    /// Since schema version 2.
    pub const LEASES: &str = "leases";
    /// Since schema version 2.
    pub const LEASE_RESOURCES: &str = "lease_resources";
    /// Since schema version 3.
    pub const CONTENT: &str = "content";
    /// Since schema version 4.
    pub const SNAPSHOTS: &str = "snapshots";
    /// Since schema version 4.
    pub const IMAGES: &str = "images";

    /// Every table, for sizing `max_dbs`.
    pub const ALL: [&str; 9] =
        [META, NAMESPACES, CONTAINERS, SANDBOXES, LEASES, LEASE_RESOURCES, CONTENT, SNAPSHOTS, IMAGES];
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
pub type LeaseTable<'t> = Database<'t, Str, Proto<Lease>>;
/// The key is everything; the value is empty.
pub type LeaseResourceTable<'t> = Database<'t, Str, Unit>;
pub type ContentTable<'t> = Database<'t, Str, Proto<ContentInfo>>;
pub type SnapshotTable<'t> = Database<'t, Str, Proto<Snapshot>>;
pub type ImageTable<'t> = Database<'t, Str, Proto<Image>>;

/// The longest key LMDB stores (its default `MDB_MAXKEYSIZE`); longer keys are refused with
/// `MDB_BAD_VALSIZE`.
pub const MAX_KEY_SIZE: usize = 511;

/// Typed handles to every table. Handles are plain dbi numbers: copying them is free.
#[derive(Clone, Copy, Debug)]
pub struct Tables<'t> {
    pub meta: MetaTable<'t>,
    pub namespaces: NamespaceTable<'t>,
    pub containers: ContainerTable<'t>,
    pub sandboxes: SandboxTable<'t>,
    pub leases: LeaseTable<'t>,
    pub lease_resources: LeaseResourceTable<'t>,
    pub content: ContentTable<'t>,
    pub snapshots: SnapshotTable<'t>,
    pub images: ImageTable<'t>,
}

impl<'t> Tables<'t> {
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
        let Some(leases) = opener.open_database(txn, Some(db_name::LEASES))? else {
            return Ok(Err(db_name::LEASES));
        };
        let Some(lease_resources) = opener.open_database(txn, Some(db_name::LEASE_RESOURCES))? else {
            return Ok(Err(db_name::LEASE_RESOURCES));
        };
        let Some(content) = opener.open_database(txn, Some(db_name::CONTENT))? else {
            return Ok(Err(db_name::CONTENT));
        };
        let Some(snapshots) = opener.open_database(txn, Some(db_name::SNAPSHOTS))? else {
            return Ok(Err(db_name::SNAPSHOTS));
        };
        let Some(images) = opener.open_database(txn, Some(db_name::IMAGES))? else {
            return Ok(Err(db_name::IMAGES));
        };
        Ok(Ok(Tables { meta, namespaces, containers, sandboxes, leases, lease_resources, content, snapshots, images }))
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
            leases: self.leases.on_commit(token),
            lease_resources: self.lease_resources.on_commit(token),
            content: self.content.on_commit(token),
            snapshots: self.snapshots.on_commit(token),
            images: self.images.on_commit(token),
        }
    }
}

/// The key of a container, sandbox, lease or content record: `<namespace>/<id>` (for content the id
/// is the digest, which has no `/` either).
pub fn object_key(namespace: &str, id: &str) -> String {
    format!("{namespace}/{id}")
}

/// The prefix of every key in `namespace`. Identifiers cannot contain `/`, so the scan is exact:
/// `default/` never matches keys of a namespace `default-2`.
pub fn namespace_prefix(namespace: &str) -> String {
    format!("{namespace}/")
}

/// The prefix of every resource key of lease `lease`: `<namespace>/<lease>\0`. A namespace has
/// no `/` and a lease id (which may hold `/`, as containerd's may) no NUL, so the scan is exact.
pub fn lease_resources_prefix(namespace: &str, lease: &str) -> String {
    format!("{namespace}/{lease}\0")
}

/// The prefix of every snapshot key of `snapshotter` in `namespace`: `<namespace>/<snapshotter>/`.
/// Neither part can contain `/`, so the scan is exact even though snapshot keys may contain `/`.
pub fn snapshots_prefix(namespace: &str, snapshotter: &str) -> String {
    format!("{namespace}/{snapshotter}/")
}

/// The key of a snapshot record: `<namespace>/<snapshotter>/<key>`.
pub fn snapshot_key(namespace: &str, snapshotter: &str, key: &str) -> String {
    format!("{namespace}/{snapshotter}/{key}")
}

/// The key of a resource held by a lease: `<namespace>/<lease>\0<type>\0<resource id>`. The type
/// may contain `/` (`snapshots/overlayfs`) and the id anything, but neither contains NUL, so the
/// first NUL after the prefix splits them again ([`split_lease_resource`]).
pub fn lease_resource_key(namespace: &str, lease: &str, resource: &LeaseResource) -> String {
    format!("{}{}\0{}", lease_resources_prefix(namespace, lease), resource.kind, resource.id)
}

/// The resource named by the part of a `lease_resources` key after its lease's prefix.
pub fn split_lease_resource(rest: &str) -> Option<LeaseResource> {
    let (kind, id) = rest.split_once('\0')?;
    Some(LeaseResource { id: id.to_owned(), kind: kind.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(object_key("default", "c1"), "default/c1");
        assert_eq!(namespace_prefix("k8s.io"), "k8s.io/");
        assert!(!object_key("default-2", "c").starts_with(&namespace_prefix("default")));

        let r = LeaseResource { id: "default/3/sha256:ab".into(), kind: "snapshots/overlayfs".into() };
        let key = lease_resource_key("k8s.io", "l1", &r);
        assert_eq!(key, "k8s.io/l1\0snapshots/overlayfs\0default/3/sha256:ab");
        let prefix = lease_resources_prefix("k8s.io", "l1");
        assert_eq!(prefix, "k8s.io/l1\0");
        assert_eq!(split_lease_resource(&key[prefix.len()..]), Some(r));
        assert_eq!(split_lease_resource("no-separator"), None);
        // Lease "l1" does not see the resources of lease "l1-2", nor of namespace "k8s.io-2".
        assert!(!lease_resource_key("k8s.io", "l1-2", &LeaseResource::default()).starts_with(&prefix));
        assert!(!lease_resource_key("k8s.io-2", "l1", &LeaseResource::default()).starts_with("k8s.io/"));
        // Nor lease "l1/x" (ctr names a lease after a mount point), nor "l1" those of "l1/x".
        assert!(!lease_resource_key("k8s.io", "l1/x", &LeaseResource::default()).starts_with(&prefix));
        assert!(!key.starts_with(&lease_resources_prefix("k8s.io", "l1/x")));
    }
}
