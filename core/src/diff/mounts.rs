//! Mounts as the Diff service and the puller meet them: a layer applied onto a snapshot's mounts,
//! a tree read from mounts.
//!
//! Apply needs no mount for the two kinds snapshotters hand out: a bind mount is applied into its
//! source (a full tree: whiteouts delete), an overlay mount into its upperdir (overlay whiteouts),
//! as containerd's overlay applier does. Any other mount list is mounted on a temporary directory
//! under `tmp`, and unmounted whatever happens ([`Mounted`]).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Applied, Whiteouts, apply_over};
use crate::mount::{COMPACT_MARGIN, Mount, compact_lowerdir, flags_and_data, page_size};
use crate::{Error, Result};

/// A name no other temporary mount point of this process has.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{prefix}-{}-{nanos}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Mounts on a temporary directory; unmounted and removed when dropped, on every path.
pub struct Mounted {
    /// The temporary directory.
    pub dir: PathBuf,
    /// Mount points made, in order.
    points: Vec<PathBuf>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for point in self.points.iter().rev() {
            if let Ok(c) = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()) {
                // Detached: a reader still inside must not keep the mount (and berthd) stuck.
                if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                    let e = io::Error::last_os_error();
                    tracing::warn!(path = %point.display(), error = %e, "unmounting a diff mount");
                }
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            tracing::warn!(path = %self.dir.display(), error = %e, "removing a diff mount point");
        }
    }
}

/// Runs `mount(data)` with `dir` as the working directory, for an overlay whose lower directories
/// are relative to it (see [`compact_lowerdir`]). berthd is multi-threaded, so the working
/// directory cannot move for the process: the mount runs on a thread of its own that first
/// unshares its filesystem attributes (CLONE_FS), as containerd's mountAt does with a locked OS
/// thread, and the thread ends with the mount.
fn in_directory(
    dir: &Path,
    mount: impl FnOnce(std::ffi::CString) -> io::Result<()> + Send,
    data: std::ffi::CString,
) -> io::Result<()> {
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                std::env::set_current_dir(dir)?;
                mount(data)
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the mounting thread panicked")))
    })
    .map_err(|e| io::Error::new(e.kind(), format!("{e} (lower directories relative to {})", dir.display())))
}

fn mount_error(m: &Mount, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("mounting {} {:?} on a temporary directory: {e}", m.kind, m.source))
}

/// Mounts `mounts` in order on a new directory under `tmp`, read-only if `readonly`.
pub fn mount_all(mounts: &[Mount], tmp: &Path, readonly: bool) -> Result<Mounted> {
    std::fs::create_dir_all(tmp).map_err(|e| Error::Internal(format!("making {}: {e}", tmp.display())))?;
    let dir = tmp.join(unique("mount"));
    std::fs::create_dir(&dir).map_err(|e| Error::Internal(format!("making {}: {e}", dir.display())))?;
    let mut mounted = Mounted { dir: dir.clone(), points: Vec::new() };
    for m in mounts {
        let rel = Path::new(&m.target);
        if rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(Error::InvalidArgument(format!("mount target {:?} must be a relative path", m.target)));
        }
        let point = dir.join(rel);
        let (mut flags, data) = flags_and_data(&m.kind, &m.options);
        if readonly {
            flags |= libc::MS_RDONLY;
        }
        let c = |s: &str| std::ffi::CString::new(s).map_err(|_| mount_error(m, "a NUL byte in the mount"));
        let (source, target) = (c(&m.source)?, c(&point.to_string_lossy())?);
        let compacted = (m.kind == "overlay" && data.len() + 1 > page_size() - COMPACT_MARGIN)
            .then(|| compact_lowerdir(&data))
            .flatten();
        let kind = c(&m.kind)?;
        let mount = |data: std::ffi::CString| {
            let rc =
                unsafe { libc::mount(source.as_ptr(), target.as_ptr(), kind.as_ptr(), flags, data.as_ptr().cast()) };
            if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
        };
        let mounted_now = match compacted {
            None => mount(c(&data)?),
            Some((common, data)) => in_directory(&common, mount, c(&data)?),
        };
        mounted_now.map_err(|e| mount_error(m, e))?;
        mounted.points.push(point.clone());
        if flags & libc::MS_BIND != 0 && flags & libc::MS_RDONLY != 0 {
            // A bind mount takes its read-only flag only from a remount.
            let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
            let rc =
                unsafe { libc::mount(std::ptr::null(), target.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
            if rc != 0 {
                return Err(mount_error(m, io::Error::last_os_error()));
            }
        }
    }
    Ok(mounted)
}

fn option<'a>(m: &'a Mount, key: &str) -> Option<&'a str> {
    m.options.iter().find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
}

/// Where a layer is applied: a directory, and the mounts held while it is.
pub struct ApplyTarget {
    /// Where the layer's entries go.
    pub path: PathBuf,
    /// How its whiteouts are written there.
    pub whiteouts: Whiteouts,
    /// The layers under it (an overlay's lower directories, top first).
    pub parents: Vec<PathBuf>,
    _mounted: Option<Mounted>,
}

/// Where a layer applied onto `mounts` goes, mounting them under `tmp` if they must be.
pub fn apply_target(mounts: &[Mount], tmp: &Path) -> Result<ApplyTarget> {
    match mounts {
        [] => Err(Error::InvalidArgument("apply needs at least one mount".into())),
        [m] if m.kind == "bind" => {
            if m.options.iter().any(|o| o == "ro") {
                return Err(Error::InvalidArgument(format!("bind mount of {:?} is read-only", m.source)));
            }
            Ok(ApplyTarget {
                path: PathBuf::from(&m.source),
                whiteouts: Whiteouts::Delete,
                parents: Vec::new(),
                _mounted: None,
            })
        }
        [m] if m.kind == "overlay" => {
            let upper = option(m, "upperdir").ok_or_else(|| {
                Error::InvalidArgument("overlay mount has no upperdir: a read-only view cannot take a layer".into())
            })?;
            let parents = option(m, "lowerdir").map(|l| l.split(':').map(PathBuf::from).collect()).unwrap_or_default();
            Ok(ApplyTarget { path: PathBuf::from(upper), whiteouts: Whiteouts::Overlay, parents, _mounted: None })
        }
        _ => {
            let mounted = mount_all(mounts, tmp, false)?;
            Ok(ApplyTarget {
                path: mounted.dir.clone(),
                whiteouts: Whiteouts::Delete,
                parents: Vec::new(),
                _mounted: Some(mounted),
            })
        }
    }
}

/// A tree to read a diff from: None for no mounts (an empty tree).
pub struct ReadTarget {
    /// The tree's root.
    pub path: Option<PathBuf>,
    _mounted: Option<Mounted>,
}

/// The tree `mounts` show, mounted read-only under `tmp` if it must be.
pub fn read_target(mounts: &[Mount], tmp: &Path) -> Result<ReadTarget> {
    match mounts {
        [] => Ok(ReadTarget { path: None, _mounted: None }),
        // Only read: the source is the tree, with no mount to make.
        [m] if m.kind == "bind" => Ok(ReadTarget { path: Some(PathBuf::from(&m.source)), _mounted: None }),
        _ => {
            let mounted = mount_all(mounts, tmp, true)?;
            Ok(ReadTarget { path: Some(mounted.dir.clone()), _mounted: Some(mounted) })
        }
    }
}

/// Syncs the filesystem `path` is on (a layer applied is durable before its snapshot commits).
pub fn sync_fs(path: &Path) -> Result<()> {
    let dir = std::fs::File::open(path).map_err(|e| Error::Internal(format!("opening {}: {e}", path.display())))?;
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
        let e = io::Error::last_os_error();
        return Err(Error::Internal(format!("syncing the filesystem of {}: {e}", path.display())));
    }
    Ok(())
}

/// Applies `layer` (of `media_type`) onto `mounts` (a snapshot's), syncing the filesystem after
/// if `sync`. Blocking: call it from a blocking thread.
pub fn apply_to_mounts(
    layer: impl Read,
    media_type: &str,
    mounts: &[Mount],
    tmp: &Path,
    sync: bool,
) -> Result<Applied> {
    let target = apply_target(mounts, tmp)?;
    let applied = apply_over(layer, media_type, &target.path, target.whiteouts, &target.parents)?;
    if sync {
        sync_fs(&target.path)?;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An overlay of more lowers than one page of options names, mounted the way the Diff service
    /// mounts what it reads, from a thread while the process's working directory stays put.
    #[test]
    fn an_overlay_of_many_long_lowers_mounts_without_moving_the_process() {
        if unsafe { libc::geteuid() } != 0 {
            return eprintln!("skipping: needs root");
        }
        let dir = tempfile::tempdir().unwrap();
        let snapshots = dir.path().join("a-rather-long-directory-name-for-snapshots/snapshots");
        let mut lowers = Vec::new();
        for i in 0..150 {
            let fs = snapshots.join(format!("{i}/fs"));
            std::fs::create_dir_all(&fs).unwrap();
            std::fs::write(fs.join(format!("f{i}")), "").unwrap();
            lowers.push(fs.display().to_string());
        }
        std::fs::write(snapshots.join("0/fs/top"), "nearest\n").unwrap();
        std::fs::write(snapshots.join("149/fs/top"), "farthest\n").unwrap();
        let options = vec![format!("lowerdir={}", lowers.join(":"))];
        assert!(options[0].len() > page_size(), "the test needs options longer than a page");
        let overlay = Mount { kind: "overlay".into(), source: "overlay".into(), target: String::new(), options };
        let cwd = std::env::current_dir().unwrap();
        let tmp = dir.path().join("tmp");
        let mounted = mount_all(&[overlay], &tmp, true).unwrap();
        assert_eq!(std::env::current_dir().unwrap(), cwd);
        assert_eq!(std::fs::read_to_string(mounted.dir.join("top")).unwrap(), "nearest\n");
        assert!(mounted.dir.join("f0").exists() && mounted.dir.join("f149").exists());
        let point = mounted.dir.clone();
        drop(mounted);
        assert!(!point.exists(), "unmounted and removed");
    }
}
