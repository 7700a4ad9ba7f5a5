//! What containers and sandboxes have in common: records keyed `<namespace>/<id>` in their own
//! table, living in a namespace.

use heed::types::{DecodeIgnore, Str};
use heed::{Database, RwTxn};

use super::codec::Proto;
use super::records::{Container, Sandbox};
use super::tables::{Tables, namespace_prefix, object_key};
use super::{MetadataStore, internal, namespaces, validate_namespace};
use crate::error::{Error, Result};

/// A record stored under `<namespace>/<id>`.
pub trait Object: prost::Message + Default + Send + 'static {
    /// What the record is called in messages: "container".
    const KIND: &'static str;
    fn table(tables: &Tables<'static>) -> Database<'static, Str, Proto<Self>>;
    fn id(&self) -> &str;
    fn set_id(&mut self, id: &str);
    fn labels_mut(&mut self) -> &mut std::collections::BTreeMap<String, String>;
}

impl Object for Container {
    const KIND: &'static str = "container";
    fn table(tables: &Tables<'static>) -> Database<'static, Str, Proto<Self>> {
        tables.containers
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

impl Object for Sandbox {
    const KIND: &'static str = "sandbox";
    fn table(tables: &Tables<'static>) -> Database<'static, Str, Proto<Self>> {
        tables.sandboxes
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

/// `container "x" in namespace "ns"`: how errors name an object.
pub fn describe<O: Object>(ns: &str, id: &str) -> String {
    format!("{} \"{id}\" in namespace \"{ns}\"", O::KIND)
}

pub fn not_found<O: Object>(ns: &str, id: &str) -> Error {
    Error::NotFound(describe::<O>(ns, id))
}

impl MetadataStore {
    pub(super) fn get_object<O: Object>(&self, ns: &str, id: &str) -> Result<O> {
        validate_namespace(ns)?;
        let rtxn = self.read_txn()?;
        let found = O::table(self.tables()).get(&rtxn, &object_key(ns, id));
        let mut object = found
            .map_err(internal(format_args!("reading {}", describe::<O>(ns, id))))?
            .ok_or_else(|| not_found::<O>(ns, id))?;
        object.set_id(id);
        Ok(object)
    }

    pub(super) fn list_objects<O: Object>(&self, ns: &str, keep: &dyn Fn(&O) -> bool) -> Result<Vec<O>> {
        validate_namespace(ns)?;
        let rtxn = self.read_txn()?;
        let prefix = namespace_prefix(ns);
        let listing = || internal(format!("listing {}s in namespace \"{ns}\"", O::KIND));
        let mut objects = Vec::new();
        for entry in O::table(self.tables()).prefix_iter(&rtxn, &prefix).map_err(listing())? {
            let (key, mut object) = entry.map_err(listing())?;
            object.set_id(&key[prefix.len()..]);
            if keep(&object) {
                objects.push(object);
            }
        }
        Ok(objects)
    }

    pub(super) async fn delete_object<O: Object>(&self, ns: &str, id: &str) -> Result<()> {
        validate_namespace(ns)?;
        let (ns, id) = (ns.to_owned(), id.to_owned());
        self.write_deletion(move |txn, tables| {
            let deleted = O::table(tables)
                .delete(txn, &object_key(&ns, &id))
                .map_err(internal(format_args!("deleting {}", describe::<O>(&ns, &id))))?;
            if deleted { Ok(()) } else { Err(not_found::<O>(&ns, &id)) }
        })
        .await
    }
}

/// Stores a new object, creating its namespace if needed; AlreadyExists if the id is taken.
pub fn insert<O: Object>(txn: &mut RwTxn<'_>, tables: &Tables<'static>, ns: &str, object: &mut O) -> Result<()> {
    let (id, table) = (object.id(), O::table(tables));
    let key = object_key(ns, id);
    let found = table.remap_data_type::<DecodeIgnore>().get(txn, &key);
    if found.map_err(internal(format_args!("reading {}", describe::<O>(ns, id))))?.is_some() {
        return Err(Error::AlreadyExists(describe::<O>(ns, id)));
    }
    namespaces::ensure(txn, tables, ns)?;
    put(txn, tables, ns, object)
}

/// The stored object, for an update; NotFound if there is none.
pub fn load<O: Object>(txn: &RwTxn<'_>, tables: &Tables<'static>, ns: &str, id: &str) -> Result<O> {
    let found = O::table(tables).get(txn, &object_key(ns, id));
    let mut object = found
        .map_err(internal(format_args!("reading {}", describe::<O>(ns, id))))?
        .ok_or_else(|| not_found::<O>(ns, id))?;
    object.set_id(id);
    Ok(object)
}

/// Writes `object` under its key, replacing what was there; labels set to "" are dropped.
pub fn put<O: Object>(txn: &mut RwTxn<'_>, tables: &Tables<'static>, ns: &str, object: &mut O) -> Result<()> {
    super::paths::drop_empty_labels(object.labels_mut());
    let id = object.id();
    O::table(tables)
        .put(txn, &object_key(ns, id), object)
        .map_err(internal(format_args!("writing {}", describe::<O>(ns, id))))
}
