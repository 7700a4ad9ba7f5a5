//! Content digests, `<algorithm>:<encoded>`, checked as go-digest's `Parse` checks them.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use super::ContentError;

/// The algorithm berth hashes with, and the only one its blobs are stored under.
pub const SHA256: &str = "sha256";

/// A valid digest. Digests of algorithms other than sha256 are valid (clients may name them) but
/// never stored: berth computes sha256 only, as containerd's local store does.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    /// Parses `digest`: `<algorithm>:<encoded>`, the algorithm lowercase letters and digits
    /// (separated by single `+ . _ -`), and for sha256, sha384 and sha512 the encoded part lowercase
    /// hex of the algorithm's length. Unknown algorithms are refused, as go-digest does.
    pub fn parse(digest: &str) -> Result<Digest, ContentError> {
        let invalid = |why: &str| ContentError::InvalidDigest { digest: digest.to_owned(), why: why.to_owned() };
        let Some((algorithm, encoded)) = digest.split_once(':') else {
            return Err(invalid("want <algorithm>:<encoded>"));
        };
        if algorithm.is_empty() || encoded.is_empty() {
            return Err(invalid("want <algorithm>:<encoded>"));
        }
        let hex_len = match algorithm {
            SHA256 => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return Err(invalid("unsupported digest algorithm")),
        };
        if encoded.len() != hex_len {
            return Err(invalid(&format!("{algorithm} takes {hex_len} hex digits, not {}", encoded.len())));
        }
        if !encoded.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid("the hex digits must be 0-9 and a-f"));
        }
        Ok(Digest(digest.to_owned()))
    }

    /// The sha256 digest of what `hasher` has seen.
    pub fn from_sha256(hasher: &Sha256) -> Digest {
        Digest(format!("{SHA256}:{}", hex(&hasher.clone().finalize())))
    }

    /// The sha256 digest of `data`.
    pub fn sha256_of(data: &[u8]) -> Digest {
        Digest::from_sha256(&Sha256::new_with_prefix(data))
    }

    /// `sha256`.
    pub fn algorithm(&self) -> &str {
        self.0.split_once(':').map_or("", |(a, _)| a)
    }

    /// The hex digits after the `:`.
    pub fn encoded(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, e)| e)
    }

    /// The whole digest, `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = ContentError;
    fn from_str(s: &str) -> Result<Self, ContentError> {
        Digest::parse(s)
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_digests() {
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let d = Digest::parse(empty).unwrap();
        assert_eq!((d.algorithm(), d.encoded().len(), d.as_str()), ("sha256", 64, empty));
        assert_eq!(Digest::sha256_of(b""), d);
        assert_eq!(d.to_string(), empty);
        Digest::parse(&format!("sha512:{}", "0".repeat(128))).unwrap();
        Digest::parse(&format!("sha384:{}", "a".repeat(96))).unwrap();
    }

    #[test]
    fn refuses_invalid_digests() {
        let cases = [
            ("", "want <algorithm>:<encoded>"),
            ("sha256", "want <algorithm>:<encoded>"),
            ("sha256:", "want <algorithm>:<encoded>"),
            (":abc", "want <algorithm>:<encoded>"),
            ("md5:d41d8cd98f00b204e9800998ecf8427e", "unsupported digest algorithm"),
            ("sha256:abc", "sha256 takes 64 hex digits, not 3"),
            (&format!("sha256:{}", "A".repeat(64)), "the hex digits must be 0-9 and a-f"),
            (&format!("sha256:{}", "g".repeat(64)), "the hex digits must be 0-9 and a-f"),
        ];
        for (digest, why) in cases {
            let err = Digest::parse(digest).unwrap_err();
            assert_eq!(err.to_string(), format!("invalid digest {digest:?}: {why}"));
        }
    }

    #[test]
    fn hex_digits() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
