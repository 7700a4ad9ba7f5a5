//! Field paths of update requests (a protobuf FieldMask), applied the way containerd does.

use std::collections::BTreeMap;

use crate::error::Error;

/// The key of a `<map>.<key>` path: `map_key("labels.app", "labels")` is `Some("app")`.
pub fn map_key<'p>(path: &'p str, map: &str) -> Option<&'p str> {
    path.strip_prefix(map)?.strip_prefix('.').filter(|key| !key.is_empty())
}

/// Sets `key` in `into` to its value in `from`, or removes it if `from` does not have it: a
/// `labels.<key>` path absent from the request's labels means "delete this label".
pub fn copy_key<V: Clone>(into: &mut BTreeMap<String, V>, from: &BTreeMap<String, V>, key: &str) {
    match from.get(key) {
        Some(value) => {
            into.insert(key.to_owned(), value.clone());
        }
        None => {
            into.remove(key);
        }
    }
}

/// containerd never stores a label with an empty value (its bolt writer skips them), so setting
/// a label to "" removes it: `ctr namespaces label ns key=` deletes `key`.
pub fn drop_empty_labels(labels: &mut BTreeMap<String, String>) {
    labels.retain(|_, value| !value.is_empty());
}

/// The error for a path the object does not have (or that may not be changed).
pub fn cannot_update(path: &str, kind: &str, name: &str) -> Error {
    Error::InvalidArgument(format!("cannot update \"{path}\" field on {kind} \"{name}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_keys() {
        assert_eq!(map_key("labels.app", "labels"), Some("app"));
        assert_eq!(map_key("labels.a.b/c", "labels"), Some("a.b/c"));
        assert_eq!(map_key("labels.", "labels"), None);
        assert_eq!(map_key("labels", "labels"), None);
        assert_eq!(map_key("labelsx.a", "labels"), None);
        assert_eq!(map_key("extensions.x", "labels"), None);
    }

    #[test]
    fn copy_sets_or_removes() {
        let mut into: BTreeMap<String, String> = [("a".into(), "1".into()), ("b".into(), "2".into())].into();
        let from: BTreeMap<String, String> = [("a".into(), "9".into())].into();
        copy_key(&mut into, &from, "a");
        copy_key(&mut into, &from, "b");
        copy_key(&mut into, &from, "c");
        assert_eq!(into, BTreeMap::from([("a".to_string(), "9".to_string())]));
    }
}
