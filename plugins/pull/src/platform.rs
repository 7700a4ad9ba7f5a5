//! Picking one manifest out of an image index: the host's platform, as containerd's default
//! platform matcher does (os and architecture must match; among those, the host's variant first,
//! then no variant).

use serde::Deserialize;

/// An OCI platform: what an index entry is for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
pub struct Platform {
    /// `linux`, `windows`...
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`...
    pub architecture: String,
    /// `v7`, `v8`...; empty for none.
    #[serde(default)]
    pub variant: String,
}

impl Platform {
    /// The platform berthd runs on.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", ""),
            "aarch64" => ("arm64", "v8"),
            "arm" => ("arm", "v7"),
            "x86" => ("386", ""),
            "powerpc64" => ("ppc64le", ""),
            "s390x" => ("s390x", ""),
            "riscv64" => ("riscv64", ""),
            other => (other, ""),
        };
        Platform { os: "linux".into(), architecture: architecture.into(), variant: variant.into() }
    }

    /// `os/architecture[/variant]`.
    pub fn display(&self) -> String {
        if self.variant.is_empty() {
            format!("{}/{}", self.os, self.architecture)
        } else {
            format!("{}/{}/{}", self.os, self.architecture, self.variant)
        }
    }
}

/// How well an index entry's platform serves `want`: None if not at all, higher is better.
fn score(entry: &Platform, want: &Platform) -> Option<u8> {
    if entry.os != want.os || entry.architecture != want.architecture {
        return None;
    }
    // arm64 images mostly say no variant, or v8: both run on a v8 host.
    let entry_variant = if entry.architecture == "arm64" && entry.variant.is_empty() { "v8" } else { &entry.variant };
    match (entry_variant, want.variant.as_str()) {
        (e, w) if e == w => Some(2),
        ("", _) => Some(1),
        _ => None,
    }
}

/// The index of the entry of `platforms` (None: an entry without a platform) that best serves
/// `want`; the first among equals, as indexes list the preferred one first.
pub fn choose(platforms: &[Option<Platform>], want: &Platform) -> Option<usize> {
    let mut best: Option<(usize, u8)> = None;
    for (i, p) in platforms.iter().enumerate() {
        if let Some(s) = p.as_ref().and_then(|p| score(p, want))
            && best.is_none_or(|(_, b)| s > b)
        {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(os: &str, arch: &str, variant: &str) -> Option<Platform> {
        Some(Platform { os: os.into(), architecture: arch.into(), variant: variant.into() })
    }

    #[test]
    fn picks_os_and_architecture_then_the_variant() {
        let want = Platform { os: "linux".into(), architecture: "amd64".into(), variant: String::new() };
        let list = [p("windows", "amd64", ""), None, p("linux", "arm64", "v8"), p("linux", "amd64", "")];
        assert_eq!(choose(&list, &want), Some(3));
        let want = Platform { os: "linux".into(), architecture: "arm".into(), variant: "v7".into() };
        let list = [p("linux", "arm", "v6"), p("linux", "arm", ""), p("linux", "arm", "v7")];
        assert_eq!(choose(&list, &want), Some(2));
        assert_eq!(choose(&list[..2], &want), Some(1));
        let want = Platform { os: "linux".into(), architecture: "arm64".into(), variant: "v8".into() };
        assert_eq!(choose(&[p("linux", "arm64", "")], &want), Some(0));
        assert_eq!(choose(&[p("linux", "s390x", "")], &want), None);
        assert_eq!(choose(&[], &want), None);
    }

    #[test]
    fn the_host_is_linux_in_goarch_spelling() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        assert!(!host.architecture.is_empty() && host.architecture != "x86_64" && host.architecture != "aarch64");
    }
}
