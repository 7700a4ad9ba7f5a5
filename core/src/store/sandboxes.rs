//! Sandboxes: `sandboxes/<namespace>/<id>` → Sandbox.

use super::MetadataStore;
use super::records::Sandbox;
use super::runnable::{Runnable, common_fields};
use crate::error::Result;

impl Runnable for Sandbox {
    /// The sandboxer changes only when named explicitly.
    const FULL_REPLACE: &'static [&'static str] = &["labels", "extensions", "spec", "runtime"];

    common_fields!();

    fn update_own_field(&mut self, req: &Self, path: &str) -> bool {
        if path != "sandboxer" {
            return false;
        }
        self.sandboxer.clone_from(&req.sandboxer);
        true
    }
}

impl MetadataStore {
    /// Creates sandbox `sb.id` in namespace `ns` (creating the namespace if needed), stamping its
    /// creation and update times; AlreadyExists if the id is taken.
    pub async fn create_sandbox(&self, ns: &str, sb: Sandbox) -> Result<Sandbox> {
        self.create_runnable(ns, sb).await
    }

    /// Sandbox `id` in namespace `ns`; NotFound if there is none.
    pub fn get_sandbox(&self, ns: &str, id: &str) -> Result<Sandbox> {
        self.get_object(ns, id)
    }

    /// The sandboxes of namespace `ns` that `keep` accepts, sorted by id.
    pub fn list_sandboxes(&self, ns: &str, keep: &dyn Fn(&Sandbox) -> bool) -> Result<Vec<Sandbox>> {
        self.list_objects(ns, keep)
    }

    /// Updates sandbox `sb.id` from `sb`: the fields named by `paths`, or with no paths the
    /// labels, extensions, spec and runtime (whose name must then be unchanged). Returns the
    /// stored sandbox.
    pub async fn update_sandbox(&self, ns: &str, sb: Sandbox, paths: Vec<String>) -> Result<Sandbox> {
        self.update_runnable(ns, sb, paths).await
    }

    /// Deletes sandbox `id` from namespace `ns`; NotFound if there is none.
    pub async fn delete_sandbox(&self, ns: &str, id: &str) -> Result<()> {
        self.delete_object::<Sandbox>(ns, id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::store::Runtime;
    use crate::store::testutil::*;

    fn sandbox(id: &str) -> Sandbox {
        Sandbox {
            id: id.into(),
            runtime: runtime("io.containerd.runc.v2"),
            spec: Some(any("spec", b"1")),
            labels: labels(&[("a", "1"), ("b", "2")]),
            extensions: [("ext".to_string(), any("t/ext", b"1"))].into(),
            sandboxer: "podsandbox".into(),
            ..Default::default()
        }
    }

    fn paths(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn crud() {
        let (_dir, store) = open_temp();
        let created = store.create_sandbox("k8s.io", sandbox("s2")).await.unwrap();
        assert!(created.created_at.is_some() && created.updated_at == created.created_at);
        assert_eq!(Sandbox { created_at: None, updated_at: None, ..created.clone() }, sandbox("s2"));
        store.create_sandbox("k8s.io", sandbox("s1")).await.unwrap();
        assert!(store.get_namespace("k8s.io").unwrap().labels.is_empty(), "namespace created");

        assert_eq!(store.get_sandbox("k8s.io", "s2").unwrap(), created);
        let ids: Vec<_> = store.list_sandboxes("k8s.io", &|_| true).unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["s1", "s2"]);
        assert_eq!(store.list_sandboxes("k8s.io", &|s| s.id == "s2").unwrap(), [created]);
        // Sandboxes and containers live in separate tables.
        assert!(store.list_containers("k8s.io", &|_| true).unwrap().is_empty());

        let err = store.create_sandbox("k8s.io", sandbox("s1")).await.unwrap_err();
        assert_eq!(err, Error::AlreadyExists("sandbox \"s1\" in namespace \"k8s.io\"".into()));

        store.delete_sandbox("k8s.io", "s2").await.unwrap();
        let err = store.get_sandbox("k8s.io", "s2").unwrap_err();
        assert_eq!(err.to_string(), "sandbox \"s2\" in namespace \"k8s.io\": not found");
        assert!(matches!(store.delete_sandbox("k8s.io", "s2").await, Err(Error::NotFound(_))));
    }

    #[tokio::test]
    async fn create_validates() {
        let (_dir, store) = open_temp();
        let err = store.create_sandbox("default", Sandbox { runtime: None, ..sandbox("s") }).await.unwrap_err();
        assert_eq!(err, Error::InvalidArgument("sandbox \"s\": runtime name must be set".into()));
        let err = store.create_sandbox("default", sandbox("")).await.unwrap_err();
        assert!(err.to_string().starts_with("sandbox id: identifier must not be empty"), "{err}");
        let err = store.create_sandbox("", sandbox("s")).await.unwrap_err();
        assert!(err.to_string().starts_with("namespace: "), "{err}");
        assert!(store.list_namespaces().unwrap().is_empty());
    }

    #[tokio::test]
    async fn update_paths() {
        let (_dir, store) = open_temp();
        let created = store.create_sandbox("default", sandbox("s")).await.unwrap();
        let req = Sandbox {
            labels: labels(&[("a", "10")]),
            spec: Some(any("spec", b"2")),
            runtime: Some(Runtime { name: "io.containerd.runc.v2".into(), options: Some(any("o", b"")) }),
            extensions: Default::default(),
            sandboxer: "shim".into(),
            ..sandbox("s")
        };

        let got = store.update_sandbox("default", req.clone(), paths(&["labels.a", "labels.b"])).await.unwrap();
        assert_eq!(got.labels, labels(&[("a", "10")]));
        assert_eq!(got.spec, created.spec);
        assert_eq!(got.created_at, created.created_at);
        assert_eq!(store.get_sandbox("default", "s").unwrap(), got);

        let got = store.update_sandbox("default", req.clone(), paths(&["extensions.ext"])).await.unwrap();
        assert!(got.extensions.is_empty());

        let got = store.update_sandbox("default", req.clone(), paths(&["spec", "sandboxer"])).await.unwrap();
        assert_eq!((&got.spec, got.sandboxer.as_str()), (&req.spec, "shim"));

        // No paths: labels, extensions, spec and runtime; the sandboxer stays.
        let full = Sandbox { labels: labels(&[("z", "26")]), sandboxer: "ignored".into(), ..req.clone() };
        let got = store.update_sandbox("default", full, vec![]).await.unwrap();
        assert_eq!(got.labels, labels(&[("z", "26")]));
        assert_eq!(got.runtime, req.runtime);
        assert_eq!(got.sandboxer, "shim");

        // The runtime may change by path, not by full replace.
        let other = Sandbox { runtime: runtime("other"), ..req.clone() };
        let err = store.update_sandbox("default", other.clone(), vec![]).await.unwrap_err();
        assert_eq!(err, Error::InvalidArgument("sandbox \"s\": runtime.name is immutable".into()));
        let got = store.update_sandbox("default", other, paths(&["runtime"])).await.unwrap();
        assert_eq!(got.runtime, runtime("other"));
    }

    #[tokio::test]
    async fn failed_updates_write_nothing() {
        let (_dir, store) = open_temp();
        let before = store.create_sandbox("default", sandbox("s")).await.unwrap();
        let req = Sandbox { labels: labels(&[]), ..sandbox("s") };
        let err = store.update_sandbox("default", req.clone(), paths(&["labels", "image"])).await.unwrap_err();
        assert_eq!(err, Error::InvalidArgument("cannot update \"image\" field on sandbox \"s\"".into()));
        let err = store
            .update_sandbox("default", Sandbox { runtime: None, ..req.clone() }, paths(&["runtime"]))
            .await
            .unwrap_err();
        assert_eq!(err, Error::InvalidArgument("sandbox \"s\": runtime name must be set".into()));
        assert_eq!(store.get_sandbox("default", "s").unwrap(), before);

        let err = store.update_sandbox("default", sandbox("nope"), vec![]).await.unwrap_err();
        assert_eq!(err.to_string(), "sandbox \"nope\" in namespace \"default\": not found");
    }
}
