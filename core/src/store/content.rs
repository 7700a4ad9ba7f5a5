//! Content records: `content/<namespace>/<digest>` → ContentInfo, what makes a blob of the content
//! store visible in a namespace (containerd's `v1/<namespace>/content/blob/<digest>` buckets).
//!
//! The blobs themselves are files shared by every namespace (`crate::content`); a namespace sees
//! one only once it was committed or imported there, and deleting it from a namespace removes only
//! the record: the file stays for the garbage collector.

use heed::types::DecodeIgnore;
use heed::{Database, RwTxn};

use super::codec::Proto;
use super::objects::{self, Object, describe};
use super::paths::{cannot_update, copy_key, map_key};
use super::records::{ContentInfo, LeaseResource};
use super::tables::{MAX_KEY_SIZE, Tables, lease_resource_key, object_key};
use super::{MetadataStore, internal, now, validate_namespace};
use crate::content::Digest;
use crate::error::{Error, Result};
use crate::ident;

/// The lease resource type of a blob, as containerd names it.
pub const CONTENT_RESOURCE: &str = "content";
/// The lease resource type of an ingest, as containerd names it.
pub const INGEST_RESOURCE: &str = "ingests";

impl Object for ContentInfo {
    const KIND: &'static str = "content";
    fn table(tables: &Tables<'static>) -> Database<'static, heed::types::Str, Proto<Self>> {
        tables.content
    }
    fn id(&self) -> &str {
        &self.digest
    }
    fn set_id(&mut self, id: &str) {
        id.clone_into(&mut self.digest);
    }
    fn labels_mut(&mut self) -> &mut std::collections::BTreeMap<String, String> {
        &mut self.labels
    }
}

/// The lease a commit happens under (the request's `containerd-lease`): the committed blob is
/// added to it, and the ingest it came from, if the lease held it, removed from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentLease {
    /// The lease id.
    pub id: String,
    /// The ref of the ingest the blob was written through, if any.
    pub ingest: Option<String>,
}

/// What a commit did.
#[derive(Clone, Debug, PartialEq)]
pub struct Committed {
    /// The namespace's record of the blob.
    pub info: ContentInfo,
    /// False if the namespace had the blob already: then the record is the one it had.
    pub created: bool,
}

impl MetadataStore {
    /// Blob `digest` as namespace `ns` sees it; NotFound unless it was committed there.
    pub fn get_content(&self, ns: &str, digest: &str) -> Result<ContentInfo> {
        validate_namespace(ns)?;
        validate_digest(digest)?;
        self.get_object(ns, digest)
    }

    /// The blobs namespace `ns` sees that `keep` accepts, sorted by digest.
    pub fn list_content(&self, ns: &str, keep: &dyn Fn(&ContentInfo) -> bool) -> Result<Vec<ContentInfo>> {
        self.list_objects(ns, keep)
    }

    /// Records that namespace `ns` sees blob `info.digest` of `info.size` bytes, with `info.labels`,
    /// stamped now; under `lease`, the lease takes the blob (and lets go of the ingest). If the
    /// namespace has the blob already, its record stays as it was (`created` is false) but the
    /// lease still takes it, as containerd's does.
    pub async fn commit_content(
        &self,
        ns: &str,
        mut info: ContentInfo,
        lease: Option<ContentLease>,
    ) -> Result<Committed> {
        validate_namespace(ns)?;
        validate_digest(&info.digest)?;
        ident::validate_labels(&info.labels).map_err(|e| e.context(format!("content {}", info.digest)))?;
        if info.size < 0 {
            return Err(Error::InvalidArgument(format!("content {}: size {} is negative", info.digest, info.size)));
        }
        let ns = ns.to_owned();
        self.write(move |txn, tables| {
            if let Some(lease) = &lease {
                let content = LeaseResource { id: info.digest.clone(), kind: CONTENT_RESOURCE.into() };
                hold(txn, tables, &ns, &lease.id, &content)?;
                if let Some(reference) = &lease.ingest {
                    let ingest = LeaseResource { id: reference.clone(), kind: INGEST_RESOURCE.into() };
                    release(txn, tables, &ns, &lease.id, &ingest)?;
                }
            }
            let key = object_key(&ns, &info.digest);
            if let Some(mut existing) = tables.content.get(txn, &key).map_err(reading(&ns, &info.digest))? {
                existing.digest.clone_from(&info.digest);
                return Ok(Committed { info: existing, created: false });
            }
            let stamp = now();
            info.created_at = Some(stamp);
            info.updated_at = Some(stamp);
            objects::insert(txn, tables, &ns, &mut info)?;
            Ok(Committed { info, created: true })
        })
        .await
    }

    /// Updates the labels of blob `info.digest` in namespace `ns`: all of them if `paths` is empty
    /// or holds `labels`, one per `labels.<key>` path (removed if `info.labels` lacks the key).
    /// Digest, size and creation time never change.
    pub async fn update_content(&self, ns: &str, info: ContentInfo, paths: Vec<String>) -> Result<ContentInfo> {
        validate_namespace(ns)?;
        validate_digest(&info.digest)?;
        let ns = ns.to_owned();
        self.write(move |txn, tables| {
            let mut stored: ContentInfo = objects::load(txn, tables, &ns, &info.digest)?;
            if paths.is_empty() {
                stored.labels = info.labels.clone();
            }
            for path in &paths {
                if let Some(key) = map_key(path, "labels") {
                    copy_key(&mut stored.labels, &info.labels, key);
                } else if path == "labels" {
                    stored.labels = info.labels.clone();
                } else {
                    return Err(cannot_update(path, "content", &info.digest));
                }
            }
            ident::validate_labels(&stored.labels).map_err(|e| e.context(format!("content {}", info.digest)))?;
            stored.updated_at = Some(now());
            objects::put(txn, tables, &ns, &mut stored)?;
            Ok(stored)
        })
        .await
    }

    /// Removes blob `digest` from namespace `ns` (and from `lease`, if given and it holds it);
    /// NotFound if the namespace does not have it. The blob's file stays until garbage collection.
    pub async fn delete_content(&self, ns: &str, digest: &str, lease: Option<String>) -> Result<()> {
        validate_namespace(ns)?;
        validate_digest(digest)?;
        let (ns, digest) = (ns.to_owned(), digest.to_owned());
        self.write_deletion(move |txn, tables| {
            let deleted = tables
                .content
                .delete(txn, &object_key(&ns, &digest))
                .map_err(internal(format_args!("deleting {}", describe::<ContentInfo>(&ns, &digest))))?;
            if !deleted {
                return Err(objects::not_found::<ContentInfo>(&ns, &digest));
            }
            if let Some(lease) = lease {
                let content = LeaseResource { id: digest.clone(), kind: CONTENT_RESOURCE.into() };
                release(txn, tables, &ns, &lease, &content)?;
            }
            Ok(())
        })
        .await
    }
}

fn validate_digest(digest: &str) -> Result<()> {
    Digest::parse(digest).map(drop).map_err(Error::from)
}

fn reading(ns: &str, digest: &str) -> impl FnOnce(heed::Error) -> Error {
    internal(format!("reading {}", describe::<ContentInfo>(ns, digest)))
}

/// The key of `resource` held by lease `lease`, if LMDB can store it; NotFound unless the lease
/// exists (containerd: "lease does not exist").
fn leased_key(
    txn: &RwTxn<'_>,
    tables: &Tables<'static>,
    ns: &str,
    lease: &str,
    resource: &LeaseResource,
) -> Result<Option<String>> {
    let lease_key = object_key(ns, lease);
    let found = lease_key.len() <= MAX_KEY_SIZE
        && tables
            .leases
            .remap_data_type::<DecodeIgnore>()
            .get(txn, &lease_key)
            .map_err(internal(format!("reading lease \"{lease}\" in namespace \"{ns}\"")))?
            .is_some();
    if !found {
        return Err(Error::NotFound(format!("lease \"{lease}\" in namespace \"{ns}\"")));
    }
    let key = lease_resource_key(ns, lease, resource);
    Ok((key.len() <= MAX_KEY_SIZE).then_some(key))
}

/// Makes lease `lease` hold `resource`.
pub(super) fn hold(
    txn: &mut RwTxn<'_>,
    tables: &Tables<'static>,
    ns: &str,
    lease: &str,
    resource: &LeaseResource,
) -> Result<()> {
    let Some(key) = leased_key(txn, tables, ns, lease, resource)? else {
        return Err(Error::InvalidArgument(format!(
            "lease resource {} {:?}: the key is longer than the maximum of {MAX_KEY_SIZE} bytes",
            resource.kind, resource.id
        )));
    };
    let writing = internal(format!("adding a resource to lease \"{lease}\" in namespace \"{ns}\""));
    tables.lease_resources.put(txn, &key, &()).map_err(writing)
}

/// Makes lease `lease` stop holding `resource`; no error if it did not.
fn release(
    txn: &mut RwTxn<'_>,
    tables: &Tables<'static>,
    ns: &str,
    lease: &str,
    resource: &LeaseResource,
) -> Result<()> {
    if let Some(key) = leased_key(txn, tables, ns, lease, resource)? {
        let deleting = internal(format!("deleting a resource of lease \"{lease}\" in namespace \"{ns}\""));
        tables.lease_resources.delete(txn, &key).map_err(deleting)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Lease;
    use crate::store::testutil::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn info(c: char, size: i64, pairs: &[(&str, &str)]) -> ContentInfo {
        ContentInfo { digest: digest(c), size, labels: labels(pairs), ..Default::default() }
    }

    fn digests(store: &MetadataStore, ns: &str) -> Vec<String> {
        store.list_content(ns, &|_| true).unwrap().into_iter().map(|c| c.digest).collect()
    }

    #[tokio::test]
    async fn commit_get_list_delete_per_namespace() {
        let (_dir, store) = open_temp();
        let committed = store.commit_content("default", info('b', 5, &[("a", "1")]), None).await.unwrap();
        assert!(committed.created);
        let got = store.get_content("default", &digest('b')).unwrap();
        assert_eq!(got, committed.info);
        assert_eq!((got.size, got.labels.clone()), (5, labels(&[("a", "1")])));
        assert!(got.created_at.is_some() && got.created_at == got.updated_at);
        store.commit_content("default", info('a', 1, &[]), None).await.unwrap();
        // Committing creates the namespace, as containerd does.
        assert!(store.get_namespace("default").is_ok());

        // Another namespace does not see them until it commits them itself.
        let err = store.get_content("other", &digest('b')).unwrap_err();
        assert_eq!(err, Error::NotFound(format!("content \"{}\" in namespace \"other\"", digest('b'))));
        assert!(digests(&store, "other").is_empty());
        assert_eq!(digests(&store, "default"), [digest('a'), digest('b')]);
        let again = store.commit_content("other", info('b', 5, &[("x", "y")]), None).await.unwrap();
        assert!(again.created);
        assert_eq!(store.get_content("other", &digest('b')).unwrap().labels, labels(&[("x", "y")]));

        // Committing again changes nothing.
        let again = store.commit_content("default", info('b', 5, &[("new", "1")]), None).await.unwrap();
        assert!(!again.created);
        assert_eq!(again.info, got);
        assert_eq!(store.get_content("default", &digest('b')).unwrap(), got);

        store.delete_content("default", &digest('b'), None).await.unwrap();
        assert!(matches!(store.get_content("default", &digest('b')), Err(Error::NotFound(_))));
        assert!(store.get_content("other", &digest('b')).is_ok());
        let err = store.delete_content("default", &digest('b'), None).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        assert_eq!(store.list_content("default", &|c| c.size == 1).unwrap().len(), 1);
        assert!(store.list_content("default", &|c| c.size == 5).unwrap().is_empty());
    }

    #[tokio::test]
    async fn bad_requests_write_nothing() {
        let (_dir, store) = open_temp();
        let bad = ContentInfo { digest: "sha256:abc".into(), ..Default::default() };
        let err = store.commit_content("default", bad, None).await.unwrap_err();
        assert!(matches!(&err, Error::InvalidArgument(m) if m.starts_with("invalid digest \"sha256:abc\"")), "{err}");
        let err = store.commit_content("default", info('a', -1, &[]), None).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        let big = "v".repeat(5000);
        let err = store.commit_content("default", info('a', 1, &[("k", &big)]), None).await.unwrap_err();
        assert!(err.to_string().starts_with(&format!("content {}: label \"k\"", digest('a'))), "{err}");
        let err = store.commit_content("a/b", info('a', 1, &[]), None).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(store.get_content("default", "sha256:abc").is_err());
        assert!(store.list_namespaces().unwrap().is_empty());
    }

    #[tokio::test]
    async fn update_labels_by_path() {
        let (_dir, store) = open_temp();
        let created = store.commit_content("default", info('c', 3, &[("a", "1"), ("b", "2")]), None).await.unwrap();
        let request = info('c', 999, &[("a", "10"), ("z", "unused")]);
        let got = store.update_content("default", request, vec!["labels.a".into(), "labels.b".into()]).await.unwrap();
        assert_eq!(got.labels, labels(&[("a", "10")]));
        // Size and creation time are immutable; the update time moves.
        assert_eq!((got.size, got.created_at), (3, created.info.created_at));
        let seconds = |t: Option<prost_types::Timestamp>| t.map(|t| (t.seconds, t.nanos));
        assert!(seconds(got.updated_at) >= seconds(created.info.updated_at));
        assert_eq!(store.get_content("default", &digest('c')).unwrap(), got);

        let got = store.update_content("default", info('c', 0, &[("c", "3")]), vec!["labels".into()]).await.unwrap();
        assert_eq!(got.labels, labels(&[("c", "3")]));
        let got = store.update_content("default", info('c', 0, &[("d", "4"), ("e", "")]), vec![]).await.unwrap();
        assert_eq!(got.labels, labels(&[("d", "4")]));
        // `labels.d` set to "" removes it, as `ctr content label DIGEST d=` does.
        let got = store.update_content("default", info('c', 0, &[("d", "")]), vec!["labels.d".into()]).await.unwrap();
        assert!(got.labels.is_empty());

        let err = store.update_content("default", info('c', 0, &[]), vec!["size".into()]).await.unwrap_err();
        assert_eq!(err, Error::InvalidArgument(format!("cannot update \"size\" field on content \"{}\"", digest('c'))));
        let err = store.update_content("other", info('c', 0, &[]), vec![]).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        let big = "v".repeat(5000);
        let err = store.update_content("default", info('c', 0, &[("k", &big)]), vec![]).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(store.get_content("default", &digest('c')).unwrap().labels.is_empty());
    }

    #[tokio::test]
    async fn commit_under_a_lease_moves_the_ingest_to_the_blob() {
        let (_dir, store) = open_temp();
        store.create_lease("default", Lease { id: "l".into(), ..Default::default() }).await.unwrap();
        let ingest = LeaseResource { id: "layer-1".into(), kind: INGEST_RESOURCE.into() };
        store.add_lease_resource("default", "l", ingest).await.unwrap();
        let lease = ContentLease { id: "l".into(), ingest: Some("layer-1".into()) };
        store.commit_content("default", info('d', 1, &[]), Some(lease)).await.unwrap();
        let content = LeaseResource { id: digest('d'), kind: CONTENT_RESOURCE.into() };
        assert_eq!(store.list_lease_resources("default", "l").unwrap(), std::slice::from_ref(&content));

        // A blob the namespace has already is still taken by the lease.
        store.create_lease("default", Lease { id: "l2".into(), ..Default::default() }).await.unwrap();
        let lease = ContentLease { id: "l2".into(), ingest: None };
        let again = store.commit_content("default", info('d', 1, &[]), Some(lease)).await.unwrap();
        assert!(!again.created);
        assert_eq!(store.list_lease_resources("default", "l2").unwrap(), std::slice::from_ref(&content));

        // A missing lease fails the commit, and nothing is committed.
        let lease = ContentLease { id: "gone".into(), ingest: None };
        let err = store.commit_content("default", info('e', 1, &[]), Some(lease)).await.unwrap_err();
        assert_eq!(err, Error::NotFound("lease \"gone\" in namespace \"default\"".into()));
        assert!(store.get_content("default", &digest('e')).is_err());

        // Deleting under the lease lets the lease go of it.
        store.delete_content("default", &digest('d'), Some("l".into())).await.unwrap();
        assert!(store.list_lease_resources("default", "l").unwrap().is_empty());
        assert_eq!(store.list_lease_resources("default", "l2").unwrap(), [content]);
    }

    #[tokio::test]
    async fn namespace_with_content_cannot_be_deleted() {
        let (_dir, store) = open_temp();
        store.commit_content("busy", info('f', 1, &[]), None).await.unwrap();
        let err = store.delete_namespace("busy").await.unwrap_err();
        assert_eq!(err, Error::FailedPrecondition("namespace \"busy\" must be empty, but it still has blobs".into()));
        let c = crate::store::Container {
            id: "c".into(),
            runtime: runtime("rt"),
            spec: Some(any("s", b"")),
            ..Default::default()
        };
        store.create_container("busy", c).await.unwrap();
        let err = store.delete_namespace("busy").await.unwrap_err();
        assert!(err.to_string().ends_with("still has blobs, containers"), "{err}");
        store.delete_container("busy", "c").await.unwrap();
        store.delete_content("busy", &digest('f'), None).await.unwrap();
        store.delete_namespace("busy").await.unwrap();
    }
}
