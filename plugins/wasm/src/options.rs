//! The wasm source's own keys of a plugin's table: what the component is granted, and its limits.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Component, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

/// The keys of a `source = "wasm"` table besides `source`, `path`, `required` and `config`. Nothing is granted
/// unless named here: no directory, no environment variable, no socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WasmOptions {
    /// Host directories the component may use, each under a path of its own.
    pub preopens: Vec<Preopen>,
    /// Environment variables the component sees.
    pub env: BTreeMap<String, String>,
    /// Whether the component may open sockets and resolve names (WASI sockets).
    pub network: bool,
    /// The most linear memory one instance may have (bytes, or a string like `"64MiB"`).
    pub memory_limit: ByteSize,
    /// The longest one call may run before it is interrupted (a string like `"5s"`, `"500ms"`).
    pub call_timeout: Timeout,
    /// How many instances may serve calls at once; calls beyond wait for one.
    pub instances: NonZeroUsize,
    /// Whether a change of the file is loaded as it happens (checked every second).
    pub watch: bool,
}

impl Default for WasmOptions {
    fn default() -> Self {
        Self {
            preopens: Vec::new(),
            env: BTreeMap::new(),
            network: false,
            memory_limit: ByteSize(64 << 20),
            call_timeout: Timeout(Duration::from_secs(5)),
            instances: NonZeroUsize::MIN,
            watch: true,
        }
    }
}

/// One granted directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preopen {
    /// The directory on the host (absolute, without `..`).
    #[serde(deserialize_with = "absolute")]
    pub host: PathBuf,
    /// Where the component sees it (absolute, e.g. `/data`).
    #[serde(deserialize_with = "absolute_text")]
    pub guest: String,
    /// Whether the component may only read it.
    #[serde(default)]
    pub read_only: bool,
}

/// A size in bytes, written as an integer or with a unit (`KiB`, `MiB`, `GiB`, `KB`, `MB`, `GB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if b >= size && b.is_multiple_of(size) {
                return write!(f, "{} {unit}", b / size);
            }
        }
        write!(f, "{b} bytes")
    }
}

impl ByteSize {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a size (like 64MiB)"))?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => return Err(format!("unknown size unit {other:?} (B, KiB, MiB, GiB, KB, MB, GB)")),
        };
        number.checked_mul(factor).map(ByteSize).ok_or_else(|| format!("{text:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(b) => Ok(ByteSize(b)),
            Raw::Text(t) => ByteSize::parse(&t).map_err(de::Error::custom),
        }
    }
}

/// A duration, written with a unit: `ms`, `s`, `m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub Duration);

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) { write!(f, "{}s", ms / 1000) } else { write!(f, "{ms}ms") }
    }
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: u64 =
            number.parse().map_err(|_| de::Error::custom(format!("{text:?} is not a duration (like 5s)")))?;
        let duration = match unit {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number * 60),
            _ => return Err(de::Error::custom(format!("{text:?}: give a unit, ms, s or m (like 5s)"))),
        };
        if duration.is_zero() {
            return Err(de::Error::custom("a call timeout must be longer than zero"));
        }
        Ok(Timeout(duration))
    }
}

fn absolute<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let path = PathBuf::from(String::deserialize(d)?);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(de::Error::custom(format!("{} must be an absolute path without ..", path.display())));
    }
    Ok(path)
}

fn absolute_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    if !text.starts_with('/') {
        return Err(de::Error::custom(format!("{text:?} must be an absolute path")));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        let o: WasmOptions =
            serde_json::from_str(r#"{"memory_limit": "16MiB", "call_timeout": "250ms", "instances": 2}"#).unwrap();
        assert_eq!(
            (o.memory_limit, o.call_timeout.0, o.instances.get()),
            (ByteSize(16 << 20), Duration::from_millis(250), 2)
        );
        assert!(serde_json::from_str::<WasmOptions>(r#"{"instances": 0}"#).is_err());
        assert_eq!(o.memory_limit.to_string(), "16 MiB");
        let o: WasmOptions = serde_json::from_str(r#"{"memory_limit": 65536}"#).unwrap();
        assert_eq!(o.memory_limit, ByteSize(65536));
        assert!(serde_json::from_str::<WasmOptions>(r#"{"memory_limit": "16 parsecs"}"#).is_err());
        assert!(serde_json::from_str::<WasmOptions>(r#"{"call_timeout": "5"}"#).is_err());
        assert!(serde_json::from_str::<WasmOptions>(r#"{"call_timeout": "0s"}"#).is_err());
        assert!(serde_json::from_str::<WasmOptions>(r#"{"networking": true}"#).is_err());
    }

    #[test]
    fn defaults_grant_nothing() {
        let o = WasmOptions::default();
        assert!(o.preopens.is_empty() && o.env.is_empty() && !o.network);
        assert_eq!(o.call_timeout.to_string(), "5s");
        let e = serde_json::from_str::<WasmOptions>(r#"{"preopens": [{"host": "data", "guest": "/d"}]}"#).unwrap_err();
        assert!(e.to_string().contains("data must be an absolute path without .."), "{e}");
        let e =
            serde_json::from_str::<WasmOptions>(r#"{"preopens": [{"host": "/a/../b", "guest": "/d"}]}"#).unwrap_err();
        assert!(e.to_string().contains("must be an absolute path without .."), "{e}");
        let e = serde_json::from_str::<WasmOptions>(r#"{"preopens": [{"host": "/a", "guest": "d"}]}"#).unwrap_err();
        assert!(e.to_string().contains("\"d\" must be an absolute path"), "{e}");
    }
}
