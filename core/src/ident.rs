//! Identifier and label rules, the same as containerd's `identifiers` and `labels` packages, so a
//! name accepted by berth is accepted by containerd and the other way round.

use crate::error::{Error, Result};

/// Longest identifier accepted (containerd's `maxLength`).
pub const MAX_IDENTIFIER_LEN: usize = 76;
/// Largest label key plus value, in bytes (containerd's `labels.maxSize`).
pub const MAX_LABEL_SIZE: usize = 4096;

/// Checks an object identifier (namespace, container, sandbox): letters and digits, separated by
/// single `.`, `_` or `-`, starting and ending with a letter or digit, at most 76 characters.
pub fn validate(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::InvalidArgument("identifier must not be empty".into()));
    }
    if id.len() > MAX_IDENTIFIER_LEN {
        return Err(Error::InvalidArgument(format!(
            "identifier {id:?} is {} characters long, longer than the maximum of {MAX_IDENTIFIER_LEN}",
            id.len()
        )));
    }
    let bytes = id.as_bytes();
    let separator = |b: u8| matches!(b, b'.' | b'_' | b'-');
    let ok = bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.iter().all(|&b| b.is_ascii_alphanumeric() || separator(b))
        && !bytes.windows(2).any(|w| separator(w[0]) && separator(w[1]));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "identifier {id:?} must be letters and digits separated by single '.', '_' or '-'"
        )))
    }
}

/// Checks one label: a non-empty key, and key plus value no larger than [`MAX_LABEL_SIZE`].
pub fn validate_label(key: &str, value: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("label key must not be empty".into()));
    }
    let size = key.len() + value.len();
    if size > MAX_LABEL_SIZE {
        let shown: String = key.chars().take(64).collect();
        return Err(Error::InvalidArgument(format!(
            "label {shown:?}: key and value are {size} bytes, more than the maximum of {MAX_LABEL_SIZE}"
        )));
    }
    Ok(())
}

/// Checks every label of a map.
pub fn validate_labels<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> Result<()> {
    labels.into_iter().try_for_each(|(k, v)| validate_label(k, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_containerd_identifiers() {
        for id in ["default", "k8s.io", "a", "my_ctr-1.2", "A9", &"x".repeat(76)] {
            validate(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    }

    #[test]
    fn rejects_bad_identifiers() {
        for id in ["", "-a", "a-", "a..b", "a/b", "a b", "ä", ".", "a_-b", &"x".repeat(77)] {
            assert!(matches!(validate(id), Err(Error::InvalidArgument(_))), "{id:?} accepted");
        }
    }

    #[test]
    fn label_size_limit() {
        validate_label("k", &"v".repeat(4095)).unwrap();
        let err = validate_label("k", &"v".repeat(4096)).unwrap_err();
        assert!(err.to_string().contains("maximum of 4096"), "{err}");
        assert!(validate_label("", "v").is_err());
    }
}
