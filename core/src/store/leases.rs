//! Leases: `leases/<namespace>/<lease>` → Lease, and the resources each one holds:
//! `lease_resources/<namespace>/<lease>/<type>\0<resource id>` → empty.
//!
//! A lease keeps content, ingests and snapshots from the garbage collector (`crate::gc`) while a
//! client works with them (containerd clients take one around every container create and image
//! pull), until it is deleted or its `containerd.io/gc.expire` time passes; the collector removes
//! expired leases with their resources.

use heed::types::DecodeIgnore;
use heed::{Database, RoTxn, WithoutTls};

use super::codec::Proto;
use super::objects::{self, Object, describe, not_found};
use super::records::{Lease, LeaseResource};
use super::tables::{
    MAX_KEY_SIZE, Tables, lease_resource_key, lease_resources_prefix, object_key, split_lease_resource,
};
use super::{MetadataStore, internal, now, validate_namespace};
use crate::error::{Error, Result};
use crate::ident;

/// Longest lease id, in bytes.
pub const MAX_LEASE_ID_LEN: usize = 255;

impl Object for Lease {
    const KIND: &'static str = "lease";
    fn table(tables: &Tables<'static>) -> Database<'static, heed::types::Str, Proto<Self>> {
        tables.leases
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn set_id(&mut self, id: &str) {
        id.clone_into(&mut self.id);
    }
    fn labels_mut(&mut self) -> &mut std::collections::BTreeMap<String, String> {
        &mut self.labels
    }
}

impl MetadataStore {
    /// Creates lease `lease.id` in namespace `ns` (creating the namespace if needed), stamping its
    /// creation time; AlreadyExists if the id is taken.
    pub async fn create_lease(&self, ns: &str, mut lease: Lease) -> Result<Lease> {
        validate_namespace(ns)?;
        validate_id(&lease.id)?;
        ident::validate_labels(&lease.labels).map_err(|e| e.context(format!("lease \"{}\"", lease.id)))?;
        lease.created_at = Some(now());
        let ns = ns.to_owned();
        self.write(move |txn, tables| {
            objects::insert(txn, tables, &ns, &mut lease)?;
            Ok(lease)
        })
        .await
    }

    /// Lease `id` in namespace `ns`; NotFound if there is none.
    pub fn get_lease(&self, ns: &str, id: &str) -> Result<Lease> {
        validate_namespace(ns)?;
        if !storable(&object_key(ns, id)) {
            return Err(not_found::<Lease>(ns, id));
        }
        self.get_object(ns, id)
    }

    /// The leases of namespace `ns` that `keep` accepts, sorted by id.
    pub fn list_leases(&self, ns: &str, keep: &dyn Fn(&Lease) -> bool) -> Result<Vec<Lease>> {
        self.list_objects(ns, keep)
    }

    /// Deletes lease `id` from namespace `ns` and, in the same transaction, every resource it
    /// holds; NotFound if there is no such lease.
    pub async fn delete_lease(&self, ns: &str, id: &str) -> Result<()> {
        validate_namespace(ns)?;
        let (ns, id) = (ns.to_owned(), id.to_owned());
        self.write_deletion(move |txn, tables| {
            let key = object_key(&ns, &id);
            let deleting = || internal(format!("deleting {}", describe::<Lease>(&ns, &id)));
            if !storable(&key) || !tables.leases.delete(txn, &key).map_err(deleting())? {
                return Err(not_found::<Lease>(&ns, &id));
            }
            let prefix = lease_resources_prefix(&ns, &id);
            let keys: Vec<String> = tables
                .lease_resources
                .remap_data_type::<DecodeIgnore>()
                .prefix_iter(txn, &prefix)
                .map_err(deleting())?
                .map(|entry| entry.map(|(key, ())| key.to_owned()))
                .collect::<heed::Result<_>>()
                .map_err(deleting())?;
            for key in keys {
                tables.lease_resources.delete(txn, &key).map_err(deleting())?;
            }
            Ok(())
        })
        .await
    }

    /// Makes lease `lease` of namespace `ns` hold `resource`; NotFound if there is no such lease,
    /// InvalidArgument if the resource is not one containerd knows (see `validate_resource`).
    /// Adding a resource the lease holds already changes nothing.
    pub async fn add_lease_resource(&self, ns: &str, lease: &str, resource: LeaseResource) -> Result<()> {
        validate_namespace(ns)?;
        let (ns, lease) = (ns.to_owned(), lease.to_owned());
        self.write(move |txn, tables| {
            // As containerd: a missing lease is reported before a bad resource.
            require_lease(txn, tables, &ns, &lease)?;
            validate_resource(&resource)?;
            let key = lease_resource_key(&ns, &lease, &resource);
            if !storable(&key) {
                return Err(Error::InvalidArgument(format!(
                    "lease resource {} {:?}: namespace, lease id, type and id make a {}-byte key, more \
                     than the maximum of {MAX_KEY_SIZE}",
                    resource.kind,
                    resource.id,
                    key.len()
                )));
            }
            let writing = internal(format!("adding a resource to {}", describe::<Lease>(&ns, &lease)));
            tables.lease_resources.put(txn, &key, &()).map_err(writing)
        })
        .await
    }

    /// Makes lease `lease` of namespace `ns` stop holding `resource`; NotFound if there is no such
    /// lease. A resource the lease does not hold is no error, as in containerd.
    pub async fn delete_lease_resource(&self, ns: &str, lease: &str, resource: LeaseResource) -> Result<()> {
        validate_namespace(ns)?;
        let (ns, lease) = (ns.to_owned(), lease.to_owned());
        self.write_deletion(move |txn, tables| {
            require_lease(txn, tables, &ns, &lease)?;
            validate_resource(&resource)?;
            let key = lease_resource_key(&ns, &lease, &resource);
            // A key too long to store cannot be held.
            if storable(&key) {
                let deleting = internal(format!("deleting a resource of {}", describe::<Lease>(&ns, &lease)));
                tables.lease_resources.delete(txn, &key).map_err(deleting)?;
            }
            Ok(())
        })
        .await
    }

    /// The resources lease `lease` of namespace `ns` holds, sorted by type then id; NotFound if
    /// there is no such lease.
    pub fn list_lease_resources(&self, ns: &str, lease: &str) -> Result<Vec<LeaseResource>> {
        validate_namespace(ns)?;
        let rtxn = self.read_txn()?;
        let tables = self.tables();
        require_lease(&rtxn, tables, ns, lease)?;
        let prefix = lease_resources_prefix(ns, lease);
        let listing = || internal(format!("listing the resources of {}", describe::<Lease>(ns, lease)));
        let table = tables.lease_resources.remap_data_type::<DecodeIgnore>();
        let mut resources = Vec::new();
        for entry in table.prefix_iter(&rtxn, &prefix).map_err(listing())? {
            let (key, ()) = entry.map_err(listing())?;
            let resource = split_lease_resource(&key[prefix.len()..]).ok_or_else(|| {
                Error::Internal(format!("metadata store: malformed lease resource key {key:?}: it has no NUL"))
            })?;
            resources.push(resource);
        }
        Ok(resources)
    }
}

/// Whether LMDB can hold (or look up) `key`; a longer key cannot be in the store.
fn storable(key: &str) -> bool {
    key.len() <= MAX_KEY_SIZE
}

/// NotFound unless lease `id` exists in namespace `ns`.
fn require_lease(txn: &RoTxn<'_, WithoutTls>, tables: &Tables<'static>, ns: &str, id: &str) -> Result<()> {
    let key = object_key(ns, id);
    let found = if storable(&key) {
        let reading = internal(format!("reading {}", describe::<Lease>(ns, id)));
        tables.leases.remap_data_type::<DecodeIgnore>().get(txn, &key).map_err(reading)?.is_some()
    } else {
        false
    };
    if found { Ok(()) } else { Err(not_found::<Lease>(ns, id)) }
}

/// Checks a lease id.
///
/// Not [`ident::validate`]: containerd checks only that a lease id is set, and its own client
/// names the lease it takes around every container create `<nanoseconds>-<4 base64url characters>`
/// (`leases.WithRandomID`), which may end in `-` or hold `_-`; identifier rules would refuse one
/// `ctr containers create` in sixteen, and `ctr images mount` names its lease after the mount
/// point, `/` and all. So berth asks only what its keys need: not empty, no control characters
/// (NUL ends the lease id in a `lease_resources` key), at most [`MAX_LEASE_ID_LEN`] bytes.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::InvalidArgument("lease id must not be empty".into()));
    }
    if id.len() > MAX_LEASE_ID_LEN {
        let shown: String = id.chars().take(64).collect();
        return Err(Error::InvalidArgument(format!(
            "lease id {shown:?}... is {} bytes long, longer than the maximum of {MAX_LEASE_ID_LEN}",
            id.len()
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!("lease id {id:?} must not contain control characters")));
    }
    Ok(())
}

/// Checks a resource as containerd 1.6's `parseLeaseResource` does: `content` takes a digest,
/// `ingests` any (non-empty) ref, `snapshots/<snapshotter>` any (non-empty) snapshot key. Type
/// and id must not contain NUL, which separates them in the store's key.
pub fn validate_resource(r: &LeaseResource) -> Result<()> {
    let (kind, id) = (&r.kind, &r.id);
    if kind.contains('\0') || id.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "lease resource {kind:?} {id:?}: type and id must not contain NUL"
        )));
    }
    let mut parts = kind.split('/');
    match (parts.next().unwrap_or(""), parts.next(), parts.next()) {
        ("content" | "ingests", Some(_), _) => {
            Err(Error::InvalidArgument(format!("invalid lease resource type {kind:?}")))
        }
        ("content", None, _) => validate_digest(id)
            .map_err(|why| Error::InvalidArgument(format!("invalid content lease resource id {id:?}: {why}"))),
        ("ingests", None, _) if id.is_empty() => {
            Err(Error::InvalidArgument("ingests lease resource id must not be empty".into()))
        }
        ("ingests", None, _) => Ok(()),
        ("snapshots", Some(snapshotter), None) if !snapshotter.is_empty() => {
            if id.is_empty() {
                Err(Error::InvalidArgument(format!("{kind} lease resource id must not be empty")))
            } else {
                Ok(())
            }
        }
        ("snapshots", ..) => Err(Error::InvalidArgument(format!(
            "invalid snapshot lease resource type {kind:?}: want snapshots/<snapshotter>"
        ))),
        _ => Err(Error::InvalidArgument(format!("unsupported lease resource type {kind:?}"))),
    }
}

/// Checks a digest as go-digest's `Parse` does for the algorithms it has: `<algorithm>:<hex>`,
/// the hex lowercase and as long as the algorithm's output. Returns why not.
fn validate_digest(digest: &str) -> std::result::Result<(), String> {
    let Some((algorithm, encoded)) = digest.split_once(':').filter(|(a, e)| !a.is_empty() && !e.is_empty()) else {
        return Err("invalid checksum digest format, want <algorithm>:<hex>".into());
    };
    let hex_len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(format!("unsupported digest algorithm {algorithm:?}")),
    };
    if encoded.len() != hex_len {
        return Err(format!("invalid checksum digest length: {algorithm} takes {hex_len} hex digits"));
    }
    if !encoded.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("invalid checksum digest format: the hex digits must be 0-9 and a-f".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testutil::*;

    fn lease(id: &str, pairs: &[(&str, &str)]) -> Lease {
        Lease { id: id.into(), labels: labels(pairs), created_at: None }
    }

    fn resource(kind: &str, id: &str) -> LeaseResource {
        LeaseResource { id: id.into(), kind: kind.into() }
    }

    fn sha256(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn ids(store: &MetadataStore, ns: &str) -> Vec<String> {
        store.list_leases(ns, &|_| true).unwrap().into_iter().map(|l| l.id).collect()
    }

    #[tokio::test]
    async fn crud() {
        let (_dir, store) = open_temp();
        let created = store.create_lease("default", lease("l2", &[("a", "1")])).await.unwrap();
        assert!(created.created_at.unwrap().seconds > 1_600_000_000);
        assert_eq!(Lease { created_at: None, ..created.clone() }, lease("l2", &[("a", "1")]));
        store.create_lease("default", lease("l1", &[])).await.unwrap();
        store.create_lease("other", lease("l0", &[])).await.unwrap();

        assert_eq!(store.get_lease("default", "l2").unwrap(), created);
        assert_eq!(ids(&store, "default"), ["l1", "l2"]);
        assert_eq!(ids(&store, "other"), ["l0"]);
        assert!(ids(&store, "nobody").is_empty());
        assert_eq!(store.list_leases("default", &|l| l.labels.contains_key("a")).unwrap(), [created]);
        // Leases live in their own table.
        assert!(store.list_containers("default", &|_| true).unwrap().is_empty());

        store.delete_lease("default", "l2").await.unwrap();
        let err = store.get_lease("default", "l2").unwrap_err();
        assert_eq!(err.to_string(), "lease \"l2\" in namespace \"default\": not found");
        let err = store.delete_lease("default", "l2").await.unwrap_err();
        assert_eq!(err, Error::NotFound("lease \"l2\" in namespace \"default\"".into()));
        assert_eq!(ids(&store, "default"), ["l1"]);
    }

    #[tokio::test]
    async fn create_creates_the_namespace_and_refuses_duplicates() {
        let (_dir, store) = open_temp();
        store.create_lease("fresh", lease("l", &[("a", "1")])).await.unwrap();
        assert!(store.get_namespace("fresh").unwrap().labels.is_empty());
        let err = store.create_lease("fresh", lease("l", &[("b", "2")])).await.unwrap_err();
        assert_eq!(err, Error::AlreadyExists("lease \"l\" in namespace \"fresh\"".into()));
        assert_eq!(err.to_string(), "lease \"l\" in namespace \"fresh\": already exists");
        assert_eq!(store.get_lease("fresh", "l").unwrap().labels, labels(&[("a", "1")]));
    }

    #[tokio::test]
    async fn containerd_client_lease_ids_are_accepted() {
        let (_dir, store) = open_temp();
        // What containerd's leases.WithRandomID makes (base64url may give `_-` and a final `-`),
        // and the other ids clients use.
        // `ctr images mount IMAGE /mnt/x` names its lease after the mount point.
        for id in ["123456789-Ab_-", "5-_x-Q", "987-AAA-", "buildkit-1234", "moby-image-sha256:ab", "l", "/mnt/x"] {
            store.create_lease("default", lease(id, &[])).await.unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(store.get_lease("default", id).unwrap().id, id);
        }
    }

    #[tokio::test]
    async fn create_validates_before_writing() {
        let (_dir, store) = open_temp();
        let long = "x".repeat(MAX_LEASE_ID_LEN + 1);
        let cases: Vec<(&str, Lease, &str)> = vec![
            ("default", lease("", &[]), "lease id must not be empty"),
            ("default", lease("a\0b", &[]), "lease id \"a\\0b\" must not contain"),
            ("default", lease("a\nb", &[]), "lease id \"a\\nb\" must not contain"),
            ("default", lease(&long, &[]), "lease id \"xxxx"),
            ("bad/ns", lease("l", &[]), "namespace: identifier \"bad/ns\""),
            ("default", lease("l", &[("", "v")]), "lease \"l\": label key must not be empty"),
            ("default", lease("l", &[("k", &"v".repeat(5000))]), "lease \"l\": label \"k\""),
        ];
        for (ns, l, want) in cases {
            let err = store.create_lease(ns, l).await.unwrap_err();
            assert!(matches!(&err, Error::InvalidArgument(m) if m.starts_with(want)), "want {want:?}, got {err:?}");
        }
        // Nothing was written, not even a namespace.
        assert!(store.list_namespaces().unwrap().is_empty());
        assert!(ids(&store, "default").is_empty());
        // The longest id is fine.
        store.create_lease("default", lease(&"x".repeat(MAX_LEASE_ID_LEN), &[])).await.unwrap();
    }

    #[tokio::test]
    async fn resources() {
        let (_dir, store) = open_temp();
        store.create_lease("default", lease("l", &[])).await.unwrap();
        store.create_lease("default", lease("l-2", &[])).await.unwrap();
        assert!(store.list_lease_resources("default", "l").unwrap().is_empty());

        let held = [
            resource("snapshots/overlayfs", "default/3/sha256:ab"),
            resource("content", &sha256('b')),
            resource("ingests", "default-ref"),
            resource("content", &sha256('a')),
            resource("snapshots/native", "k"),
        ];
        for r in &held {
            store.add_lease_resource("default", "l", r.clone()).await.unwrap();
        }
        // Adding again changes nothing.
        store.add_lease_resource("default", "l", held[1].clone()).await.unwrap();
        // Another lease, whose id starts like this one's.
        store.add_lease_resource("default", "l-2", resource("ingests", "other")).await.unwrap();

        let mut want = held.to_vec();
        want.sort_by(|a, b| (&a.kind, &a.id).cmp(&(&b.kind, &b.id)));
        assert_eq!(store.list_lease_resources("default", "l").unwrap(), want);
        assert_eq!(store.list_lease_resources("default", "l-2").unwrap(), [resource("ingests", "other")]);

        store.delete_lease_resource("default", "l", held[0].clone()).await.unwrap();
        // Deleting what the lease does not hold (any more) is fine, as in containerd.
        store.delete_lease_resource("default", "l", held[0].clone()).await.unwrap();
        store.delete_lease_resource("default", "l", resource("ingests", "never-held")).await.unwrap();
        want.retain(|r| r != &held[0]);
        assert_eq!(store.list_lease_resources("default", "l").unwrap(), want);

        // Deleting the lease deletes its resources, and only its.
        store.delete_lease("default", "l").await.unwrap();
        let rtxn = store.read_txn().unwrap();
        let table = store.tables().lease_resources;
        let keys: Vec<String> = table.iter(&rtxn).unwrap().map(|e| e.unwrap().0.to_owned()).collect();
        assert_eq!(keys, ["default/l-2\0ingests\0other"]);
        drop(rtxn);
        // A lease made again under the same id starts empty.
        store.create_lease("default", lease("l", &[])).await.unwrap();
        assert!(store.list_lease_resources("default", "l").unwrap().is_empty());
    }

    #[tokio::test]
    async fn resources_of_a_missing_lease_are_not_found() {
        let (_dir, store) = open_temp();
        store.create_lease("default", lease("l", &[])).await.unwrap();
        let long = "x".repeat(600);
        for missing in ["nope", "l/ingests", long.as_str()] {
            let want = Error::NotFound(format!("lease \"{missing}\" in namespace \"default\""));
            // Reported before the bad resource, as containerd does.
            let bad = resource("unknown", "x");
            assert_eq!(store.add_lease_resource("default", missing, bad.clone()).await.unwrap_err(), want);
            assert_eq!(store.delete_lease_resource("default", missing, bad).await.unwrap_err(), want);
            assert_eq!(store.list_lease_resources("default", missing).unwrap_err(), want);
            assert_eq!(store.get_lease("default", missing).unwrap_err(), want);
            assert_eq!(store.delete_lease("default", missing).await.unwrap_err(), want);
        }
        // The same lease in another namespace.
        let err = store.list_lease_resources("other", "l").unwrap_err();
        assert_eq!(err, Error::NotFound("lease \"l\" in namespace \"other\"".into()));
        assert!(store.list_lease_resources("default", "l").unwrap().is_empty());
    }

    #[tokio::test]
    async fn resources_are_validated_and_nothing_is_written() {
        let (_dir, store) = open_temp();
        store.create_lease("default", lease("l", &[])).await.unwrap();
        let cases = [
            (
                resource("content", "sha256:abc"),
                "invalid content lease resource id \"sha256:abc\": invalid checksum digest length",
            ),
            (resource("content", &sha256('A')), "invalid content lease resource id \"sha256:AAAA"),
            (resource("content", &sha256('g')), "invalid content lease resource id"),
            (
                resource("content", "md5:d41d8cd98f00b204e9800998ecf8427e"),
                "invalid content lease resource id \"md5:d41d8cd98f00b204e9800998ecf8427e\": unsupported digest algorithm \"md5\"",
            ),
            (resource("content", ""), "invalid content lease resource id \"\": invalid checksum digest format"),
            (
                resource("content", "sha256:"),
                "invalid content lease resource id \"sha256:\": invalid checksum digest format",
            ),
            (resource("content", &sha256('a')[6..]), "invalid content lease resource id"),
            (resource("content/x", &sha256('a')), "invalid lease resource type \"content/x\""),
            (resource("ingests/x", "ref"), "invalid lease resource type \"ingests/x\""),
            (resource("ingests", ""), "ingests lease resource id must not be empty"),
            (
                resource("snapshots", "k"),
                "invalid snapshot lease resource type \"snapshots\": want snapshots/<snapshotter>",
            ),
            (resource("snapshots/", "k"), "invalid snapshot lease resource type \"snapshots/\""),
            (resource("snapshots/a/b", "k"), "invalid snapshot lease resource type \"snapshots/a/b\""),
            (resource("snapshots/overlayfs", ""), "snapshots/overlayfs lease resource id must not be empty"),
            (resource("images", "docker.io/library/alpine:latest"), "unsupported lease resource type \"images\""),
            (resource("", "x"), "unsupported lease resource type \"\""),
            (resource("ingests", "a\0b"), "lease resource \"ingests\" \"a\\0b\": type and id must not contain NUL"),
            (resource("snapshots/over\0lay", "k"), "lease resource \"snapshots/over\\0lay\" \"k\": type and id"),
            (resource("ingests", &"r".repeat(500)), "lease resource ingests \"rrrr"),
        ];
        for (r, want) in cases {
            let err = store.add_lease_resource("default", "l", r.clone()).await.unwrap_err();
            assert!(
                matches!(&err, Error::InvalidArgument(m) if m.starts_with(want)),
                "add {r:?}: want {want:?}, got {err:?}"
            );
            if !want.starts_with("lease resource ingests \"rrrr") {
                let err = store.delete_lease_resource("default", "l", r.clone()).await.unwrap_err();
                assert!(matches!(&err, Error::InvalidArgument(m) if m.starts_with(want)), "delete {r:?}: {err:?}");
            }
        }
        assert!(store.list_lease_resources("default", "l").unwrap().is_empty());
        // Too long to store is too long to hold: deleting it is no error.
        store.delete_lease_resource("default", "l", resource("ingests", &"r".repeat(500))).await.unwrap();

        for digest in [sha256('0'), format!("sha384:{}", "f".repeat(96)), format!("sha512:{}", "9".repeat(128))] {
            store.add_lease_resource("default", "l", resource("content", &digest)).await.unwrap();
        }
        assert_eq!(store.list_lease_resources("default", "l").unwrap().len(), 3);
    }
}
