//! Image records: `images/<namespace>/<name>` → Image (containerd's `v1/<namespace>/images/<name>`).
//!
//! A record names a target descriptor (a manifest or index) in the content store. Image names may
//! contain `/` (`docker.io/library/busybox:latest`); the namespace before them cannot, so the
//! `<namespace>/` prefix stays exact.

use heed::Database;

use super::codec::Proto;
use super::objects::{self, Object, not_found};
use super::paths::{cannot_update, copy_key, map_key};
use super::records::{Descriptor, Image};
use super::tables::{MAX_KEY_SIZE, Tables, object_key};
use super::{MetadataStore, now, validate_namespace};
use crate::content::Digest;
use crate::error::{Error, Result};
use crate::ident;

impl Object for Image {
    const KIND: &'static str = "image";
    fn table(tables: &Tables<'static>) -> Database<'static, heed::types::Str, Proto<Self>> {
        tables.images
    }
    fn id(&self) -> &str {
        &self.name
    }
    fn set_id(&mut self, id: &str) {
        id.clone_into(&mut self.name);
    }
    fn labels_mut(&mut self) -> &mut std::collections::BTreeMap<String, String> {
        &mut self.labels
    }
}

/// Checks an image as containerd's `validateImage` does: a name, labels, and a target with a
/// media type, a valid digest and a size that is not negative.
fn validate(ns: &str, image: &Image) -> Result<()> {
    let name = &image.name;
    if name.is_empty() {
        return Err(Error::InvalidArgument("image name must not be empty".into()));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!("image name {name:?} must not contain control characters")));
    }
    if object_key(ns, name).len() > MAX_KEY_SIZE {
        return Err(Error::InvalidArgument(format!(
            "image name {name:?} is longer than the maximum of {MAX_KEY_SIZE} bytes with its namespace"
        )));
    }
    ident::validate_labels(&image.labels).map_err(|e| e.context(format!("image \"{name}\"")))?;
    validate_target(name, image.target.as_ref())
}

fn validate_target(name: &str, target: Option<&Descriptor>) -> Result<()> {
    let Some(target) = target else {
        return Err(Error::InvalidArgument(format!("image \"{name}\": target must be set")));
    };
    if target.media_type.is_empty() {
        return Err(Error::InvalidArgument(format!("image \"{name}\": target media type must not be empty")));
    }
    Digest::parse(&target.digest).map_err(|e| Error::from(e).context(format!("image \"{name}\": target")))?;
    if target.size < 0 {
        return Err(Error::InvalidArgument(format!("image \"{name}\": target size {} is negative", target.size)));
    }
    Ok(())
}

impl MetadataStore {
    /// Image `name` in namespace `ns`; NotFound if there is none.
    pub fn get_image(&self, ns: &str, name: &str) -> Result<Image> {
        validate_namespace(ns)?;
        if name.is_empty() || object_key(ns, name).len() > MAX_KEY_SIZE {
            return Err(not_found::<Image>(ns, name));
        }
        self.get_object(ns, name)
    }

    /// The images of namespace `ns` that `keep` accepts, sorted by name.
    pub fn list_images(&self, ns: &str, keep: &dyn Fn(&Image) -> bool) -> Result<Vec<Image>> {
        self.list_objects(ns, keep)
    }

    /// Creates image `image.name` in namespace `ns` (creating the namespace if needed), stamped now;
    /// AlreadyExists if the name is taken.
    pub async fn create_image(&self, ns: &str, mut image: Image) -> Result<Image> {
        validate_namespace(ns)?;
        validate(ns, &image)?;
        let ns = ns.to_owned();
        self.write(move |txn, tables| {
            let stamp = now();
            image.created_at = Some(stamp);
            image.updated_at = Some(stamp);
            objects::insert(txn, tables, &ns, &mut image)?;
            Ok(image)
        })
        .await
    }

    /// Updates image `image.name` as containerd does: with no `paths`, labels and target are replaced;
    /// otherwise `labels`, `labels.<key>`, `target` and `annotations` / `annotations.<key>` (the
    /// target's) each change that part. Any other path is InvalidArgument, and nothing is written.
    pub async fn update_image(&self, ns: &str, image: Image, paths: Vec<String>) -> Result<Image> {
        validate_namespace(ns)?;
        if image.name.is_empty() {
            return Err(Error::InvalidArgument("image name must not be empty".into()));
        }
        for path in &paths {
            let known = matches!(path.as_str(), "labels" | "target" | "annotations")
                || map_key(path, "labels").is_some()
                || map_key(path, "annotations").is_some();
            if !known {
                return Err(cannot_update(path, "image", &image.name));
            }
        }
        let ns = ns.to_owned();
        self.write(move |txn, tables| {
            let mut stored: Image = objects::load(txn, tables, &ns, &image.name)?;
            if paths.is_empty() {
                stored.labels = image.labels.clone();
                stored.target = image.target.clone();
            }
            let empty = Descriptor::default();
            let given = image.target.as_ref().unwrap_or(&empty);
            for path in &paths {
                if let Some(key) = map_key(path, "labels") {
                    copy_key(&mut stored.labels, &image.labels, key);
                } else if let Some(key) = map_key(path, "annotations") {
                    let target = stored.target.get_or_insert_with(Default::default);
                    copy_key(&mut target.annotations, &given.annotations, key);
                } else if path == "labels" {
                    stored.labels = image.labels.clone();
                } else if path == "target" {
                    stored.target = image.target.clone();
                } else {
                    let target = stored.target.get_or_insert_with(Default::default);
                    target.annotations = given.annotations.clone();
                }
            }
            validate(&ns, &stored)?;
            stored.updated_at = Some(now());
            objects::put(txn, tables, &ns, &mut stored)?;
            Ok(stored)
        })
        .await
    }

    /// Deletes image `name` from namespace `ns`; NotFound if there is none. What it pointed at stays
    /// until garbage collection.
    pub async fn delete_image(&self, ns: &str, name: &str) -> Result<()> {
        validate_namespace(ns)?;
        if name.is_empty() || object_key(ns, name).len() > MAX_KEY_SIZE {
            return Err(not_found::<Image>(ns, name));
        }
        self.delete_object::<Image>(ns, name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testutil::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    pub fn image(name: &str, c: char) -> Image {
        Image {
            name: name.into(),
            labels: labels(&[("a", "1")]),
            target: Some(Descriptor {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: digest(c),
                size: 10,
                annotations: labels(&[("x", "y")]),
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn create_get_list_delete() {
        let (_dir, store) = open_temp();
        let created = store.create_image("default", image("docker.io/library/busybox:latest", 'a')).await.unwrap();
        assert!(created.created_at.is_some() && created.created_at == created.updated_at);
        assert_eq!(store.get_image("default", "docker.io/library/busybox:latest").unwrap(), created);
        let err = store.create_image("default", image("docker.io/library/busybox:latest", 'b')).await.unwrap_err();
        assert_eq!(
            err,
            Error::AlreadyExists("image \"docker.io/library/busybox:latest\" in namespace \"default\"".into())
        );
        assert!(store.list_images("other", &|_| true).unwrap().is_empty());
        store.create_image("default", image("a", 'b')).await.unwrap();
        let names: Vec<_> = store.list_images("default", &|_| true).unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["a", "docker.io/library/busybox:latest"]);
        let err = store.delete_namespace("default").await.unwrap_err();
        assert!(err.to_string().ends_with("still has images"), "{err}");
        store.delete_image("default", "a").await.unwrap();
        assert!(matches!(store.delete_image("default", "a").await, Err(Error::NotFound(_))));
        assert!(matches!(store.get_image("default", "a"), Err(Error::NotFound(_))));
    }

    #[tokio::test]
    async fn bad_images_write_nothing() {
        let (_dir, store) = open_temp();
        let mut no_target = image("n", 'a');
        no_target.target = None;
        let mut bad_digest = image("n", 'a');
        bad_digest.target.as_mut().unwrap().digest = "sha256:abc".into();
        let mut no_type = image("n", 'a');
        no_type.target.as_mut().unwrap().media_type.clear();
        for bad in [image("", 'a'), no_target, bad_digest, no_type] {
            let err = store.create_image("default", bad).await.unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        }
        assert!(store.list_namespaces().unwrap().is_empty());
    }

    #[tokio::test]
    async fn update_by_field_path() {
        let (_dir, store) = open_temp();
        let created = store.create_image("default", image("i", 'a')).await.unwrap();
        let mut request = image("i", 'b');
        request.labels = labels(&[("b", "2")]);
        let got = store.update_image("default", request.clone(), vec!["labels.b".into()]).await.unwrap();
        assert_eq!(got.labels, labels(&[("a", "1"), ("b", "2")]));
        assert_eq!(got.target, created.target, "only the label path changes");
        assert_eq!(got.created_at, created.created_at);
        let got = store.update_image("default", request.clone(), vec!["target".into()]).await.unwrap();
        assert_eq!(got.target.as_ref().unwrap().digest, digest('b'));
        let mut annotated = image("i", 'c');
        annotated.target.as_mut().unwrap().annotations = labels(&[("z", "1")]);
        let got = store.update_image("default", annotated, vec!["annotations.z".into()]).await.unwrap();
        assert_eq!(got.target.as_ref().unwrap().annotations, labels(&[("x", "y"), ("z", "1")]));
        assert_eq!(got.target.as_ref().unwrap().digest, digest('b'));
        let got = store.update_image("default", image("i", 'd'), vec![]).await.unwrap();
        assert_eq!(
            (got.labels.clone(), got.target.as_ref().unwrap().digest.clone()),
            (labels(&[("a", "1")]), digest('d'))
        );

        let err = store.update_image("default", image("i", 'e'), vec!["name".into()]).await.unwrap_err();
        assert_eq!(err, Error::InvalidArgument("cannot update \"name\" field on image \"i\"".into()));
        let mut bad = image("i", 'e');
        bad.target = None;
        let err = store.update_image("default", bad, vec!["target".into()]).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert_eq!(store.get_image("default", "i").unwrap().target.unwrap().digest, digest('d'));
        assert!(matches!(store.update_image("default", image("nope", 'a'), vec![]).await, Err(Error::NotFound(_))));
    }
}
