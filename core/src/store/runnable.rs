//! What containers and sandboxes share beyond [`Object`]: labels, extensions, a spec and a
//! runtime, validated and updated alike, as containerd's container and sandbox stores do.

use std::collections::BTreeMap;

use prost_types::{Any, Timestamp};

use super::objects::{self, Object};
use super::paths::{cannot_update, copy_key, map_key};
use super::records::Runtime;
use super::{MetadataStore, now, validate_namespace};
use crate::error::{Error, Result};
use crate::ident;

/// The fields every runnable record has, borrowed from one.
pub struct Common<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub extensions: &'a BTreeMap<String, Any>,
    pub spec: &'a Option<Any>,
    pub runtime: &'a Option<Runtime>,
}

/// [`Common`], borrowed mutably, with the times the store stamps.
pub struct CommonMut<'a> {
    pub labels: &'a mut BTreeMap<String, String>,
    pub extensions: &'a mut BTreeMap<String, Any>,
    pub spec: &'a mut Option<Any>,
    pub runtime: &'a mut Option<Runtime>,
    pub created_at: &'a mut Option<Timestamp>,
    pub updated_at: &'a mut Option<Timestamp>,
}

/// A record a runtime runs: a container or a sandbox.
pub trait Runnable: Object {
    /// What an update with no field paths replaces (containerd's list).
    const FULL_REPLACE: &'static [&'static str];
    fn common(&self) -> Common<'_>;
    fn common_mut(&mut self) -> CommonMut<'_>;
    /// Copies the field at `path` from `req`, if it is one of this kind's own; false if not.
    fn update_own_field(&mut self, req: &Self, path: &str) -> bool;
    /// Checks the kind's own immutable fields, besides the runtime name, before a full replace.
    fn check_own_immutables(&self, _req: &Self) -> Result<()> {
        Ok(())
    }
    /// Checks the kind's own fields, after what [`validate`] checks of the common ones.
    fn validate_own_fields(&self) -> Result<()> {
        Ok(())
    }
}

/// [`Runnable::common`] and [`Runnable::common_mut`], inside the impl of a record whose common
/// fields go by the same names: containers and sandboxes, as containerd's messages name them.
macro_rules! common_fields {
    () => {
        fn common(&self) -> $crate::store::runnable::Common<'_> {
            let Self { labels, extensions, spec, runtime, .. } = self;
            $crate::store::runnable::Common { labels, extensions, spec, runtime }
        }

        fn common_mut(&mut self) -> $crate::store::runnable::CommonMut<'_> {
            let Self { labels, extensions, spec, runtime, created_at, updated_at, .. } = self;
            $crate::store::runnable::CommonMut { labels, extensions, spec, runtime, created_at, updated_at }
        }
    };
}
pub(super) use common_fields;

/// The error for an invalid field of `record`: `container "c": spec must be set`.
pub fn invalid<R: Runnable>(record: &R, what: &str) -> Error {
    Error::InvalidArgument(format!("{} \"{}\": {what}", R::KIND, record.id()))
}

fn runtime_name(runtime: &Option<Runtime>) -> &str {
    runtime.as_ref().map_or("", |r| &r.name)
}

impl MetadataStore {
    /// Creates `record` in namespace `ns` (creating the namespace if needed), stamping its
    /// creation and update times; AlreadyExists if the id is taken.
    pub(super) async fn create_runnable<R: Runnable>(&self, ns: &str, mut record: R) -> Result<R> {
        validate_namespace(ns)?;
        validate(&record)?;
        let created = now();
        let times = record.common_mut();
        *times.created_at = Some(created);
        *times.updated_at = Some(created);
        let ns = ns.to_owned();
        self.write(move |txn, tables| {
            objects::insert(txn, tables, &ns, &mut record)?;
            Ok(record)
        })
        .await
    }

    /// Updates the stored record `req.id()` from `req` along `paths` (see [`apply_update`]) and
    /// returns it.
    pub(super) async fn update_runnable<R: Runnable>(&self, ns: &str, req: R, paths: Vec<String>) -> Result<R> {
        validate_namespace(ns)?;
        if req.id().is_empty() {
            return Err(Error::InvalidArgument(format!("{} id must be set", R::KIND)));
        }
        let ns = ns.to_owned();
        self.write(move |txn, tables| {
            let mut stored: R = objects::load(txn, tables, &ns, req.id())?;
            apply_update(&mut stored, &req, &paths)?;
            validate(&stored)?;
            *stored.common_mut().updated_at = Some(now());
            objects::put(txn, tables, &ns, &mut stored)?;
            Ok(stored)
        })
        .await
    }
}

/// Applies the update request `req` to `stored` along `paths`, or with no paths along
/// [`Runnable::FULL_REPLACE`], as containerd's container and sandbox stores do.
fn apply_update<R: Runnable>(stored: &mut R, req: &R, paths: &[String]) -> Result<()> {
    let paths: Vec<&str> = if paths.is_empty() {
        // Immutable fields must be unchanged in a full replace, so they can become mutable later
        // without changing what an existing client's request means.
        if runtime_name(req.common().runtime) != runtime_name(stored.common().runtime) {
            return Err(invalid(req, "runtime.name is immutable"));
        }
        req.check_own_immutables(stored)?;
        R::FULL_REPLACE.to_vec()
    } else {
        paths.iter().map(String::as_str).collect()
    };
    let from = req.common();
    for path in paths {
        let into = stored.common_mut();
        if let Some(key) = map_key(path, "labels") {
            copy_key(into.labels, from.labels, key);
            continue;
        }
        if let Some(key) = map_key(path, "extensions") {
            copy_key(into.extensions, from.extensions, key);
            continue;
        }
        match path {
            "labels" => into.labels.clone_from(from.labels),
            "extensions" => into.extensions.clone_from(from.extensions),
            "spec" => into.spec.clone_from(from.spec),
            "runtime" => into.runtime.clone_from(from.runtime),
            _ if stored.update_own_field(req, path) => {}
            _ => return Err(cannot_update(path, R::KIND, req.id())),
        }
    }
    Ok(())
}

/// containerd's `validateContainer` and sandbox `validate`: checked on create and on the result
/// of every update.
fn validate<R: Runnable>(record: &R) -> Result<()> {
    let (kind, id) = (R::KIND, record.id());
    ident::validate(id).map_err(|e| e.context(format!("{kind} id")))?;
    let common = record.common();
    ident::validate_labels(common.labels).map_err(|e| e.context(format!("{kind} \"{id}\"")))?;
    if common.extensions.keys().any(String::is_empty) {
        return Err(invalid(record, "extension keys must not be empty"));
    }
    if runtime_name(common.runtime).is_empty() {
        return Err(invalid(record, "runtime name must be set"));
    }
    record.validate_own_fields()
}
