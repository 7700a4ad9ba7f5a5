//! Containers: `containers/<namespace>/<id>` → Container.

use super::MetadataStore;
use super::records::Container;
use super::runnable::{Runnable, common_fields, invalid};
use crate::error::Result;

impl Runnable for Container {
    const FULL_REPLACE: &'static [&'static str] = &["labels", "spec", "extensions", "image", "snapshotkey"];

    common_fields!();

    fn update_own_field(&mut self, req: &Self, path: &str) -> bool {
        match path {
            "image" => self.image.clone_from(&req.image),
            // containerd's spelling, and the field's.
            "snapshotkey" | "snapshot_key" => self.snapshot_key.clone_from(&req.snapshot_key),
            "sandbox" => self.sandbox.clone_from(&req.sandbox),
            _ => return false,
        }
        true
    }

    fn check_own_immutables(&self, req: &Self) -> Result<()> {
        if req.snapshotter != self.snapshotter {
            return Err(invalid(req, "snapshotter is immutable"));
        }
        Ok(())
    }

    /// What containerd's `validateContainer` checks that sandboxes do not have.
    fn validate_own_fields(&self) -> Result<()> {
        if self.spec.is_none() {
            return Err(invalid(self, "spec must be set"));
        }
        if !self.snapshot_key.is_empty() && self.snapshotter.is_empty() {
            return Err(invalid(self, "snapshotter must be set when snapshot_key is set"));
        }
        Ok(())
    }
}

impl MetadataStore {
    /// Creates container `c.id` in namespace `ns` (creating the namespace if needed), stamping
    /// its creation and update times; AlreadyExists if the id is taken.
    pub async fn create_container(&self, ns: &str, c: Container) -> Result<Container> {
        self.create_runnable(ns, c).await
    }

    /// Container `id` in namespace `ns`; NotFound if there is none.
    pub fn get_container(&self, ns: &str, id: &str) -> Result<Container> {
        self.get_object(ns, id)
    }

    /// The containers of namespace `ns` that `keep` accepts, sorted by id.
    pub fn list_containers(&self, ns: &str, keep: &dyn Fn(&Container) -> bool) -> Result<Vec<Container>> {
        self.list_objects(ns, keep)
    }

    /// Updates container `c.id` from `c`: the fields named by `paths`, or with no paths the
    /// labels, spec, extensions, image and snapshot key (runtime name and snapshotter must then
    /// be unchanged). Returns the stored container.
    pub async fn update_container(&self, ns: &str, c: Container, paths: Vec<String>) -> Result<Container> {
        self.update_runnable(ns, c, paths).await
    }

    /// Deletes container `id` from namespace `ns`; NotFound if there is none.
    pub async fn delete_container(&self, ns: &str, id: &str) -> Result<()> {
        self.delete_object::<Container>(ns, id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::store::Runtime;
    use crate::store::testutil::*;

    fn container(id: &str) -> Container {
        Container {
            id: id.into(),
            labels: labels(&[("a", "1"), ("b", "2")]),
            image: "docker.io/library/alpine:latest".into(),
            runtime: runtime("io.containerd.runc.v2"),
            spec: Some(any("types.containerd.io/opencontainers/runtime-spec/1/Spec", b"{}")),
            snapshotter: "overlayfs".into(),
            snapshot_key: id.into(),
            extensions: [("ext".to_string(), any("t/ext", b"1"))].into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn crud() {
        let (_dir, store) = open_temp();
        let created = store.create_container("default", container("c2")).await.unwrap();
        let stamp = created.created_at.unwrap();
        assert_eq!(created.updated_at, Some(stamp));
        assert!(stamp.seconds > 1_600_000_000);
        assert_eq!(Container { created_at: None, updated_at: None, ..created.clone() }, container("c2"));
        store.create_container("default", container("c1")).await.unwrap();
        store.create_container("other", container("c0")).await.unwrap();

        assert_eq!(store.get_container("default", "c2").unwrap(), created);
        let ids = |ns: &str| -> Vec<String> {
            store.list_containers(ns, &|_| true).unwrap().into_iter().map(|c| c.id).collect()
        };
        assert_eq!(ids("default"), ["c1", "c2"]);
        assert_eq!(ids("other"), ["c0"]);
        assert!(ids("nobody").is_empty());
        let kept = store.list_containers("default", &|c| c.id == "c1").unwrap();
        assert_eq!(kept.len(), 1);

        store.delete_container("default", "c2").await.unwrap();
        let err = store.get_container("default", "c2").unwrap_err();
        assert_eq!(err.to_string(), "container \"c2\" in namespace \"default\": not found");
        let err = store.delete_container("default", "c2").await.unwrap_err();
        assert_eq!(err, Error::NotFound("container \"c2\" in namespace \"default\"".into()));
        assert_eq!(ids("default"), ["c1"]);
    }

    #[tokio::test]
    async fn create_creates_the_namespace_and_refuses_duplicates() {
        let (_dir, store) = open_temp();
        store.create_container("fresh", container("c")).await.unwrap();
        let ns = store.get_namespace("fresh").unwrap();
        assert!(ns.labels.is_empty());

        let mut again = container("c");
        again.image = "other".into();
        let err = store.create_container("fresh", again).await.unwrap_err();
        assert_eq!(err, Error::AlreadyExists("container \"c\" in namespace \"fresh\"".into()));
        assert_eq!(err.to_string(), "container \"c\" in namespace \"fresh\": already exists");
        assert_eq!(store.get_container("fresh", "c").unwrap().image, container("c").image);
    }

    #[tokio::test]
    async fn create_validates_before_writing() {
        let (_dir, store) = open_temp();
        let cases: Vec<(&str, Container, &str)> = vec![
            ("default", container(""), "container id: identifier must not be empty"),
            ("default", container("a/b"), "container id: identifier \"a/b\""),
            ("bad/ns", container("c"), "namespace: identifier \"bad/ns\""),
            ("default", Container { runtime: None, ..container("c") }, "container \"c\": runtime name must be set"),
            (
                "default",
                Container { runtime: runtime(""), ..container("c") },
                "container \"c\": runtime name must be set",
            ),
            ("default", Container { spec: None, ..container("c") }, "container \"c\": spec must be set"),
            (
                "default",
                Container { snapshotter: String::new(), ..container("c") },
                "container \"c\": snapshotter must be set when snapshot_key is set",
            ),
            (
                "default",
                Container { labels: labels(&[("", "v")]), ..container("c") },
                "container \"c\": label key must not be empty",
            ),
            (
                "default",
                Container { extensions: [(String::new(), any("t", b""))].into(), ..container("c") },
                "container \"c\": extension keys must not be empty",
            ),
        ];
        for (ns, c, want) in cases {
            let err = store.create_container(ns, c).await.unwrap_err();
            assert!(matches!(&err, Error::InvalidArgument(m) if m.starts_with(want)), "want {want:?}, got {err:?}");
        }
        // Nothing was written, not even the namespace.
        assert!(store.list_namespaces().unwrap().is_empty());
        assert!(store.list_containers("default", &|_| true).unwrap().is_empty());
    }

    #[tokio::test]
    async fn update_paths() {
        let (_dir, store) = open_temp();
        let created = store.create_container("default", container("c")).await.unwrap();

        let req = Container {
            labels: labels(&[("a", "10"), ("new", "n")]),
            image: "img2".into(),
            spec: Some(any("spec", b"2")),
            snapshot_key: "key2".into(),
            runtime: Some(Runtime { name: "rt2".into(), options: Some(any("opts", b"o")) }),
            sandbox: "sb".into(),
            extensions: [("e2".to_string(), any("t/e2", b"2"))].into(),
            ..container("c")
        };
        let paths = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();

        // labels.<key>: set a, add new, remove b (absent from the request).
        let got = store
            .update_container("default", req.clone(), paths(&["labels.a", "labels.new", "labels.b"]))
            .await
            .unwrap();
        assert_eq!(got.labels, labels(&[("a", "10"), ("new", "n")]));
        assert_eq!(got.image, created.image, "not in the paths");
        assert_eq!(got.created_at, created.created_at);
        let seconds = |t: Option<prost_types::Timestamp>| t.map(|t| (t.seconds, t.nanos));
        assert!(seconds(got.updated_at) >= seconds(created.updated_at));
        assert_eq!(store.get_container("default", "c").unwrap(), got);

        // extensions.<key>: add e2, remove ext.
        let got =
            store.update_container("default", req.clone(), paths(&["extensions.e2", "extensions.ext"])).await.unwrap();
        assert_eq!(got.extensions, req.extensions);

        let got = store
            .update_container(
                "default",
                req.clone(),
                paths(&["image", "spec", "snapshotkey", "runtime", "sandbox", "labels", "extensions"]),
            )
            .await
            .unwrap();
        assert_eq!((&got.image, &got.spec, &got.snapshot_key), (&req.image, &req.spec, &req.snapshot_key));
        assert_eq!((&got.runtime, &got.sandbox, &got.labels), (&req.runtime, &req.sandbox, &req.labels));
        assert_eq!(got.snapshotter, "overlayfs", "never updated");
        let got = store
            .update_container(
                "default",
                Container { snapshot_key: "k3".into(), ..req.clone() },
                paths(&["snapshot_key"]),
            )
            .await
            .unwrap();
        assert_eq!(got.snapshot_key, "k3");
    }

    #[tokio::test]
    async fn full_replace_keeps_immutable_fields() {
        let (_dir, store) = open_temp();
        store.create_container("default", container("c")).await.unwrap();
        let req = Container {
            labels: labels(&[("only", "this")]),
            image: "img2".into(),
            sandbox: "not-in-full-replace".into(),
            ..container("c")
        };
        let got = store.update_container("default", req, vec![]).await.unwrap();
        assert_eq!(got.labels, labels(&[("only", "this")]));
        assert_eq!(got.image, "img2");
        assert_eq!(got.sandbox, "");

        let err = store
            .update_container("default", Container { runtime: runtime("other"), ..container("c") }, vec![])
            .await
            .unwrap_err();
        assert_eq!(err, Error::InvalidArgument("container \"c\": runtime.name is immutable".into()));
        let err = store
            .update_container("default", Container { snapshotter: "btrfs".into(), ..container("c") }, vec![])
            .await
            .unwrap_err();
        assert_eq!(err, Error::InvalidArgument("container \"c\": snapshotter is immutable".into()));
        assert_eq!(store.get_container("default", "c").unwrap(), got);
    }

    #[tokio::test]
    async fn failed_updates_write_nothing() {
        let (_dir, store) = open_temp();
        let before = store.create_container("default", container("c")).await.unwrap();
        let req = Container { labels: labels(&[]), ..container("c") };

        let err =
            store.update_container("default", req.clone(), vec!["labels".into(), "foo".into()]).await.unwrap_err();
        assert_eq!(err, Error::InvalidArgument("cannot update \"foo\" field on container \"c\"".into()));
        // The result must still be a valid container.
        let err = store
            .update_container("default", Container { spec: None, ..req.clone() }, vec!["spec".into()])
            .await
            .unwrap_err();
        assert_eq!(err, Error::InvalidArgument("container \"c\": spec must be set".into()));
        let err = store
            .update_container("default", Container { runtime: None, ..req.clone() }, vec!["runtime".into()])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("runtime name must be set"), "{err}");
        let big = labels(&[("k", &"v".repeat(5000))]);
        let err = store
            .update_container("default", Container { labels: big, ..req.clone() }, vec!["labels.k".into()])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert_eq!(store.get_container("default", "c").unwrap(), before);

        let err = store.update_container("default", container("missing"), vec![]).await.unwrap_err();
        assert_eq!(err.to_string(), "container \"missing\" in namespace \"default\": not found");
        let err = store.update_container("default", container(""), vec![]).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    }
}
