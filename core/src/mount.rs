//! A filesystem mount as runtimes and snapshotters exchange it (containerd's `types.Mount`), and
//! what mounting an overlay of many layers takes.

use std::path::{Component, Path, PathBuf};

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

/// The mount(2) flags and filesystem data of a mount: its `options` as mount(8) reads them (`ro` and
/// `rw`, `nosuid` and `suid`, `bind`, `rbind`, ... set or clear a flag, in order; anything else goes to
/// the filesystem, comma-joined), and MS_BIND for a `bind` or `rbind` type. Where a bind mount is also
/// read-only, the caller must remount it so: mount(2) ignores MS_RDONLY on the bind itself.
///
/// ```
/// use berth_core::mount::flags_and_data;
///
/// let options = ["ro", "nosuid", "lowerdir=/l", "upperdir=/u"].map(String::from);
/// let (flags, data) = flags_and_data("overlay", &options);
/// assert_eq!((flags, data.as_str()), (libc::MS_RDONLY | libc::MS_NOSUID, "lowerdir=/l,upperdir=/u"));
/// assert_eq!(flags_and_data("rbind", &[]).0, libc::MS_BIND | libc::MS_REC);
/// ```
pub fn flags_and_data(kind: &str, options: &[String]) -> (libc::c_ulong, String) {
    let mut flags = match kind {
        "bind" => libc::MS_BIND,
        "rbind" => libc::MS_BIND | libc::MS_REC,
        _ => 0,
    };
    let mut data = Vec::new();
    for option in options {
        let (flag, set) = match option.as_str() {
            "ro" => (libc::MS_RDONLY, true),
            "rw" => (libc::MS_RDONLY, false),
            "bind" => (libc::MS_BIND, true),
            "rbind" => (libc::MS_BIND | libc::MS_REC, true),
            "nosuid" => (libc::MS_NOSUID, true),
            "suid" => (libc::MS_NOSUID, false),
            "nodev" => (libc::MS_NODEV, true),
            "dev" => (libc::MS_NODEV, false),
            "noexec" => (libc::MS_NOEXEC, true),
            "exec" => (libc::MS_NOEXEC, false),
            "noatime" => (libc::MS_NOATIME, true),
            "relatime" => (libc::MS_RELATIME, true),
            "sync" => (libc::MS_SYNCHRONOUS, true),
            "defaults" => (0, true),
            other => {
                data.push(other);
                continue;
            }
        };
        if set {
            flags |= flag;
        } else {
            flags &= !flag;
        }
    }
    (flags, data.join(","))
}

/// How far under a page of mount options an overlay's lowers are made relative, as containerd does
/// (mount/mount_linux.go): room for the rest of the options.
pub const COMPACT_MARGIN: usize = 512;

/// The most bytes of options mount(2) copies from the caller, the terminating NUL included.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as usize } else { 4096 }
}

/// An overlay's `lowerdir=` made short enough for mount(2), as containerd's
/// compactLowerdirOption does: the lowers (`<root>/snapshots/<id>/fs` from a snapshotter) relative
/// to the longest directory they all are in, which the caller makes the working directory while
/// mounting. None when there is nothing to gain: one lower, a relative one, or no common
/// directory but `/`. Returns that directory and the new options, `lowerdir=` last.
///
/// ```
/// use berth_core::mount::compact_lowerdir;
///
/// let (dir, options) = compact_lowerdir("lowerdir=/r/snapshots/1/fs:/r/snapshots/2/fs,upperdir=/u").unwrap();
/// assert_eq!((dir.to_str().unwrap(), options.as_str()), ("/r/snapshots", "upperdir=/u,lowerdir=1/fs:2/fs"));
/// ```
pub fn compact_lowerdir(data: &str) -> Option<(PathBuf, String)> {
    let options: Vec<&str> = data.split(',').collect();
    let index = options.iter().position(|o| o.starts_with("lowerdir="))?;
    let lowers: Vec<&Path> = options[index]["lowerdir=".len()..].split(':').map(Path::new).collect();
    if lowers.len() < 2 || lowers.iter().any(|l| !l.is_absolute()) {
        return None;
    }
    // Components shared by the parents of every lower: each keeps at least its last one.
    let mut common: Vec<Component> = lowers[0].parent()?.components().collect();
    for lower in &lowers[1..] {
        let parent: Vec<Component> = lower.parent()?.components().collect();
        let shared = common.iter().zip(&parent).take_while(|(a, b)| a == b).count();
        common.truncate(shared);
    }
    let common: PathBuf = common.iter().collect();
    common.parent()?; // none for `/`: nothing to strip
    let relative: Vec<String> = lowers
        .iter()
        .map(|l| l.strip_prefix(&common).map(|r| r.to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .ok()?;
    let mut compacted: Vec<String> =
        options.iter().enumerate().filter(|(i, _)| *i != index).map(|(_, o)| o.to_string()).collect();
    compacted.push(format!("lowerdir={}", relative.join(":")));
    Some((common, compacted.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lowers(n: usize) -> String {
        (1..=n).map(|i| format!("/r/snapshots/{i}/fs")).collect::<Vec<_>>().join(":")
    }

    #[test]
    fn lowers_are_made_relative_to_their_longest_common_directory() {
        let data = format!("index=off,lowerdir={},upperdir=/r/snapshots/9/fs,workdir=/r/snapshots/9/work", lowers(3));
        let (common, compacted) = compact_lowerdir(&data).unwrap();
        assert_eq!(common, Path::new("/r/snapshots"));
        assert_eq!(
            compacted,
            "index=off,upperdir=/r/snapshots/9/fs,workdir=/r/snapshots/9/work,lowerdir=1/fs:2/fs:3/fs"
        );
        // Of different depths, and one the parent of another's: each keeps at least its last component.
        let (common, compacted) = compact_lowerdir("lowerdir=/r/s/x/2/fs:/r/s/1/fs:/r/s").unwrap();
        assert_eq!((common.to_str().unwrap(), compacted.as_str()), ("/r", "lowerdir=s/x/2/fs:s/1/fs:s"));
    }

    #[test]
    fn nothing_to_gain_is_left_alone() {
        assert_eq!(compact_lowerdir("lowerdir=/r/snapshots/1/fs,upperdir=/u"), None, "one lower");
        assert_eq!(compact_lowerdir("lowerdir=/a/fs:/b/fs"), None, "only / in common");
        assert_eq!(compact_lowerdir("lowerdir=r/1/fs:r/2/fs"), None, "relative already");
        assert_eq!(compact_lowerdir("upperdir=/u,workdir=/w"), None, "no lowers");
    }
}
