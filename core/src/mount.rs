//! A filesystem mount as runtimes and snapshotters exchange it (containerd's `types.Mount`).

/// One mount: `mount -t <kind> -o <options> <source> <target>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mount {
    /// Filesystem type: `bind`, `overlay`, `tmpfs`...
    pub kind: String,
    /// What is mounted: a path for bind mounts, a name for virtual filesystems.
    pub source: String,
    /// Where, relative to the root it is mounted into; empty means the root itself.
    pub target: String,
    /// Mount options as `mount -o` takes them: `ro`, `rbind`, `lowerdir=...`.
    pub options: Vec<String>,
}
