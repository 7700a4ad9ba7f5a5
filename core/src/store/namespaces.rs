//! Namespaces: `namespaces/<name>` → Namespace.

use heed::RwTxn;
use heed::types::DecodeIgnore;

use super::paths::{cannot_update, copy_key, map_key};
use super::records::Namespace;
use super::tables::{Tables, namespace_prefix};
use super::{MetadataStore, internal};
use crate::error::{Error, Result};
use crate::ident;

impl MetadataStore {
    /// Creates a namespace; AlreadyExists if it exists.
    pub async fn create_namespace(&self, mut ns: Namespace) -> Result<Namespace> {
        validate(&ns)?;
        self.write(move |txn, tables| {
            if exists(txn, tables, &ns.name)? {
                return Err(Error::AlreadyExists(format!("namespace \"{}\"", ns.name)));
            }
            put(txn, tables, &mut ns)?;
            Ok(ns)
        })
        .await
    }

    /// The namespace `name`; NotFound if there is none.
    pub fn get_namespace(&self, name: &str) -> Result<Namespace> {
        let rtxn = self.read_txn()?;
        let found = self.tables().namespaces.get(&rtxn, name);
        let mut ns =
            found.map_err(internal(format_args!("reading namespace \"{name}\"")))?.ok_or_else(|| not_found(name))?;
        ns.name = name.to_owned();
        Ok(ns)
    }

    /// Every namespace, sorted by name.
    pub fn list_namespaces(&self) -> Result<Vec<Namespace>> {
        let rtxn = self.read_txn()?;
        let iter = self.tables().namespaces.iter(&rtxn).map_err(internal("listing namespaces"))?;
        iter.map(|entry| {
            let (name, mut ns) = entry.map_err(internal("listing namespaces"))?;
            ns.name = name.to_owned();
            Ok(ns)
        })
        .collect()
    }

    /// Updates the labels of namespace `ns.name`: all of them if `paths` is empty or holds
    /// `labels`, one per `labels.<key>` path (removed if `ns.labels` lacks the key).
    pub async fn update_namespace(&self, ns: Namespace, paths: Vec<String>) -> Result<Namespace> {
        ident::validate(&ns.name).map_err(|e| e.context("namespace"))?;
        self.write(move |txn, tables| {
            let name = &ns.name;
            let mut stored = tables
                .namespaces
                .get(txn, name)
                .map_err(internal(format_args!("reading namespace \"{name}\"")))?
                .ok_or_else(|| not_found(name))?;
            stored.name.clone_from(name);
            if paths.is_empty() {
                stored.labels = ns.labels.clone();
            }
            for path in &paths {
                if let Some(key) = map_key(path, "labels") {
                    copy_key(&mut stored.labels, &ns.labels, key);
                } else if path == "labels" {
                    stored.labels = ns.labels.clone();
                } else {
                    return Err(cannot_update(path, "namespace", name));
                }
            }
            validate(&stored)?;
            put(txn, tables, &mut stored)?;
            Ok(stored)
        })
        .await
    }

    /// Deletes namespace `name`; NotFound if there is none, FailedPrecondition while it still
    /// holds content ("blobs"), containers, leases or sandboxes (named in that order, containerd's).
    pub async fn delete_namespace(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.write(move |txn, tables| {
            if !exists(txn, tables, &name)? {
                return Err(not_found(&name));
            }
            let prefix = namespace_prefix(&name);
            let reading = || internal(format!("checking that namespace \"{name}\" is empty"));
            let mut holds = Vec::new();
            // containerd calls a namespace's content records its "blobs".
            let content = tables.content.remap_data_type::<DecodeIgnore>();
            if content.prefix_iter(txn, &prefix).map_err(reading())?.next().is_some() {
                holds.push("blobs");
            }
            let containers = tables.containers.remap_data_type::<DecodeIgnore>();
            if containers.prefix_iter(txn, &prefix).map_err(reading())?.next().is_some() {
                holds.push("containers");
            }
            let leases = tables.leases.remap_data_type::<DecodeIgnore>();
            if leases.prefix_iter(txn, &prefix).map_err(reading())?.next().is_some() {
                holds.push("leases");
            }
            let sandboxes = tables.sandboxes.remap_data_type::<DecodeIgnore>();
            if sandboxes.prefix_iter(txn, &prefix).map_err(reading())?.next().is_some() {
                holds.push("sandboxes");
            }
            let images = tables.images.remap_data_type::<DecodeIgnore>();
            if images.prefix_iter(txn, &prefix).map_err(reading())?.next().is_some() {
                holds.push("images");
            }
            let snapshots = tables.snapshots.remap_data_type::<DecodeIgnore>();
            if snapshots.prefix_iter(txn, &prefix).map_err(reading())?.next().is_some() {
                holds.push("snapshots");
            }
            if !holds.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "namespace \"{name}\" must be empty, but it still has {}",
                    holds.join(", ")
                )));
            }
            tables.namespaces.delete(txn, &name).map_err(internal(format_args!("deleting namespace \"{name}\"")))?;
            Ok(())
        })
        .await
    }
}

/// Creates namespace `name` with no labels unless it exists: containers and sandboxes may be
/// created in a namespace nobody created, as with containerd.
pub(super) fn ensure(txn: &mut RwTxn<'_>, tables: &Tables<'static>, name: &str) -> Result<()> {
    if !exists(txn, tables, name)? {
        put(txn, tables, &mut Namespace { name: name.to_owned(), labels: Default::default() })?;
    }
    Ok(())
}

fn exists(txn: &RwTxn<'_>, tables: &Tables<'static>, name: &str) -> Result<bool> {
    let found = tables.namespaces.remap_data_type::<DecodeIgnore>().get(txn, name);
    Ok(found.map_err(internal(format_args!("reading namespace \"{name}\"")))?.is_some())
}

fn put(txn: &mut RwTxn<'_>, tables: &Tables<'static>, ns: &mut Namespace) -> Result<()> {
    super::paths::drop_empty_labels(&mut ns.labels);
    let name = &ns.name;
    tables.namespaces.put(txn, name, ns).map_err(internal(format_args!("writing namespace \"{name}\"")))
}

fn validate(ns: &Namespace) -> Result<()> {
    ident::validate(&ns.name).map_err(|e| e.context("namespace"))?;
    ident::validate_labels(&ns.labels).map_err(|e| e.context(format!("namespace \"{}\"", ns.name)))
}

fn not_found(name: &str) -> Error {
    Error::NotFound(format!("namespace \"{name}\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testutil::*;
    use crate::store::{Container, Lease, LeaseResource, Sandbox};

    fn ns(name: &str, pairs: &[(&str, &str)]) -> Namespace {
        Namespace { name: name.into(), labels: labels(pairs) }
    }

    #[tokio::test]
    async fn crud() {
        let (_dir, store) = open_temp();
        assert!(store.list_namespaces().unwrap().is_empty());
        let created = store.create_namespace(ns("b", &[("x", "1")])).await.unwrap();
        assert_eq!(created, ns("b", &[("x", "1")]));
        store.create_namespace(ns("a", &[])).await.unwrap();
        assert_eq!(store.get_namespace("b").unwrap(), ns("b", &[("x", "1")]));
        let names: Vec<_> = store.list_namespaces().unwrap().into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["a", "b"]);

        store.delete_namespace("b").await.unwrap();
        let err = store.get_namespace("b").unwrap_err();
        assert_eq!(err.to_string(), "namespace \"b\": not found");
        let err = store.delete_namespace("b").await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    }

    #[tokio::test]
    async fn create_validates_and_refuses_duplicates() {
        let (_dir, store) = open_temp();
        store.create_namespace(ns("default", &[])).await.unwrap();
        let err = store.create_namespace(ns("default", &[("y", "2")])).await.unwrap_err();
        assert_eq!(err, Error::AlreadyExists("namespace \"default\"".into()));
        assert!(store.get_namespace("default").unwrap().labels.is_empty());

        let err = store.create_namespace(ns("a/b", &[])).await.unwrap_err();
        assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("\"a/b\"")), "{err:?}");
        let big = "v".repeat(5000);
        let err = store.create_namespace(ns("big", &[("k", &big)])).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.starts_with("namespace \"big\": label \"k\"")),
            "{err:?}"
        );
        assert!(matches!(store.get_namespace("big"), Err(Error::NotFound(_))));
    }

    #[tokio::test]
    async fn update_paths() {
        let (_dir, store) = open_temp();
        store.create_namespace(ns("n", &[("a", "1"), ("b", "2")])).await.unwrap();

        // labels.<key>: set one, remove one (absent from the request), leave the rest.
        let req = ns("n", &[("a", "10"), ("z", "unused")]);
        let got = store.update_namespace(req, vec!["labels.a".into(), "labels.b".into()]).await.unwrap();
        assert_eq!(got, ns("n", &[("a", "10")]));
        assert_eq!(store.get_namespace("n").unwrap(), got);

        // labels, and no paths at all: replace every label.
        let got = store.update_namespace(ns("n", &[("c", "3")]), vec!["labels".into()]).await.unwrap();
        assert_eq!(got, ns("n", &[("c", "3")]));
        let got = store.update_namespace(ns("n", &[("d", "4")]), vec![]).await.unwrap();
        assert_eq!(got, ns("n", &[("d", "4")]));

        // An unknown path fails and writes nothing, even after a valid path.
        let err = store.update_namespace(ns("n", &[]), vec!["labels".into(), "name".into()]).await.unwrap_err();
        assert_eq!(err, Error::InvalidArgument("cannot update \"name\" field on namespace \"n\"".into()));
        assert_eq!(store.get_namespace("n").unwrap(), ns("n", &[("d", "4")]));

        let err = store.update_namespace(ns("missing", &[]), vec![]).await.unwrap_err();
        assert_eq!(err.to_string(), "namespace \"missing\": not found");
    }

    #[tokio::test]
    async fn delete_refused_while_not_empty() {
        let (_dir, store) = open_temp();
        let c =
            Container { id: "c".into(), runtime: runtime("rt"), spec: Some(any("spec", b"")), ..Default::default() };
        store.create_container("busy-2", c).await.unwrap();
        // "busy" is empty even though "busy-2" (which starts like it) is not.
        store.create_namespace(ns("busy", &[])).await.unwrap();
        store.delete_namespace("busy").await.unwrap();

        let err = store.delete_namespace("busy-2").await.unwrap_err();
        assert_eq!(
            err,
            Error::FailedPrecondition("namespace \"busy-2\" must be empty, but it still has containers".into())
        );
        let sb = Sandbox { id: "s".into(), runtime: runtime("rt"), ..Default::default() };
        store.create_sandbox("busy-2", sb).await.unwrap();
        let err = store.delete_namespace("busy-2").await.unwrap_err();
        assert!(err.to_string().ends_with("still has containers, sandboxes"), "{err}");

        store.delete_container("busy-2", "c").await.unwrap();
        let err = store.delete_namespace("busy-2").await.unwrap_err();
        assert!(err.to_string().ends_with("still has sandboxes"), "{err}");
        store.delete_sandbox("busy-2", "s").await.unwrap();
        store.delete_namespace("busy-2").await.unwrap();
        assert!(store.list_namespaces().unwrap().is_empty());
    }

    #[tokio::test]
    async fn delete_refused_while_it_holds_leases() {
        let (_dir, store) = open_temp();
        store.create_lease("leased", Lease { id: "l".into(), ..Default::default() }).await.unwrap();
        let c =
            Container { id: "c".into(), runtime: runtime("rt"), spec: Some(any("spec", b"")), ..Default::default() };
        store.create_container("leased", c).await.unwrap();
        let err = store.delete_namespace("leased").await.unwrap_err();
        assert_eq!(
            err,
            Error::FailedPrecondition("namespace \"leased\" must be empty, but it still has containers, leases".into())
        );
        let sb = Sandbox { id: "s".into(), runtime: runtime("rt"), ..Default::default() };
        store.create_sandbox("leased", sb).await.unwrap();
        let err = store.delete_namespace("leased").await.unwrap_err();
        assert!(err.to_string().ends_with("still has containers, leases, sandboxes"), "{err}");
        store.delete_container("leased", "c").await.unwrap();
        store.delete_sandbox("leased", "s").await.unwrap();

        let r = LeaseResource { id: "ingest-1".into(), kind: "ingests".into() };
        store.add_lease_resource("leased", "l", r).await.unwrap();
        let err = store.delete_namespace("leased").await.unwrap_err();
        assert!(err.to_string().ends_with("still has leases"), "{err}");
        assert!(store.get_namespace("leased").is_ok());
        // Deleting the lease takes its resources with it, and the namespace can go.
        store.delete_lease("leased", "l").await.unwrap();
        store.delete_namespace("leased").await.unwrap();
        assert!(store.list_namespaces().unwrap().is_empty());
    }

    #[tokio::test]
    async fn empty_label_values_are_not_stored() {
        let (_dir, store) = open_temp();
        let created = store.create_namespace(ns("n", &[("a", "1"), ("gone", "")])).await.unwrap();
        assert_eq!(created, ns("n", &[("a", "1")]));
        let updated = store.update_namespace(ns("n", &[("a", "")]), vec!["labels.a".into()]).await.unwrap();
        assert!(updated.labels.is_empty());
        assert!(store.get_namespace("n").unwrap().labels.is_empty());

        let c = Container {
            id: "c".into(),
            runtime: runtime("rt"),
            spec: Some(any("spec", b"")),
            labels: labels(&[("k", "v"), ("e", "")]),
            ..Default::default()
        };
        assert_eq!(store.create_container("n", c.clone()).await.unwrap().labels, labels(&[("k", "v")]));
        let c = Container { labels: labels(&[("k", "")]), ..c };
        assert!(store.update_container("n", c, vec!["labels.k".into()]).await.unwrap().labels.is_empty());
        assert!(store.get_container("n", "c").unwrap().labels.is_empty());
    }
}
