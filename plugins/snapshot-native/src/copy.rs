//! Copying a directory tree so the copy is what the original was, to a container: each entry's type, owner,
//! mode (setuid, setgid and sticky bits included), extended attributes, access and modification times;
//! symlinks copied as links (never followed), hard links within the tree kept as hard links, device nodes,
//! fifos and sockets made again with `mknod`.
//!
//! Owners are set before modes (chown clears setuid bits) and extended attributes after both (chown clears
//! `security.capability`); a directory's times are set after its contents, which change them. What the
//! destination cannot hold is skipped rather than failing the copy: extended attributes the filesystem does
//! not support or the caller may not set, and, when not running as root, owners.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::{self, DirBuilder, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Copies directory `src` to `dst`, which must not exist; see the module doc for what is kept.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!("{} is not a directory", src.display())));
    }
    DirBuilder::new().mode(0o700).create(dst)?;
    let mut links = HashMap::new();
    copy_contents(src, dst, &mut links)?;
    copy_metadata(src, dst, &meta)
}

/// Copies what is in directory `src` into the existing directory `dst`. `links` maps the (device, inode)
/// of every multiply-linked file seen so far to its first copy.
fn copy_contents(src: &Path, dst: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let meta = fs::symlink_metadata(&from)?;
        let kind = meta.file_type();
        let context = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", from.display()));
        if !kind.is_dir() && meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                fs::hard_link(first, &to).map_err(context)?;
                continue;
            }
            links.insert((meta.dev(), meta.ino()), to.clone());
        }
        if kind.is_dir() {
            DirBuilder::new().mode(0o700).create(&to).map_err(context)?;
            copy_contents(&from, &to, links)?;
        } else if kind.is_file() {
            copy_file(&from, &to).map_err(context)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from).map_err(context)?, &to).map_err(context)?;
        } else {
            // Character and block devices, fifos and sockets: mknod makes each from its mode and device.
            mknod(&to, meta.mode(), meta.rdev()).map_err(context)?;
        }
        copy_metadata(&from, &to, &meta).map_err(context)?;
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path) -> io::Result<()> {
    let mut source = File::open(from)?;
    let mut target = OpenOptions::new().write(true).create_new(true).mode(0o600).open(to)?;
    // std copies file to file with copy_file_range, which shares extents where the filesystem can.
    io::copy(&mut source, &mut target)?;
    Ok(())
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::other("path contains a NUL byte"))
}

fn mknod(path: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: mknod with a valid path; the mode carries the file type.
    if unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::geteuid() == 0 }
}

/// Gives `to` the owner, mode, extended attributes and times of `from` (whose metadata is `meta`).
fn copy_metadata(from: &Path, to: &Path, meta: &Metadata) -> io::Result<()> {
    match std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid())) {
        Ok(()) => {}
        // Without root only one's own files can be given away: keep the copier's owner.
        Err(e) if !is_root() && e.raw_os_error() == Some(libc::EPERM) => {}
        Err(e) => return Err(e),
    }
    if !meta.file_type().is_symlink() {
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    copy_xattrs(from, to)?;
    set_times(to, meta)
}

/// A NUL-separated list from llistxattr, or a value from lgetxattr: sized by a first call, then read.
fn xattr_call(call: impl Fn(*mut libc::c_void, usize) -> libc::ssize_t) -> io::Result<Vec<u8>> {
    loop {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        let got = call(buf.as_mut_ptr().cast(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        // Grew between the two calls: ask again.
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

fn skippable(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM) | Some(libc::EACCES))
}

fn copy_xattrs(from: &Path, to: &Path) -> io::Result<()> {
    let (src, dst) = (cpath(from)?, cpath(to)?);
    // SAFETY (both closures): the path is NUL-terminated and the buffer is as long as said.
    let names = match xattr_call(|buf, len| unsafe { libc::llistxattr(src.as_ptr(), buf.cast(), len) }) {
        Ok(names) => names,
        Err(e) if skippable(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = CString::new(name).expect("split at NUL");
        let value = match xattr_call(|buf, len| unsafe { libc::lgetxattr(src.as_ptr(), name.as_ptr(), buf, len) }) {
            Ok(value) => value,
            // Gone since it was listed.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        // SAFETY: valid path, name and value buffer.
        let rc = unsafe { libc::lsetxattr(dst.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if !skippable(&e) {
                return Err(io::Error::new(e.kind(), format!("setting {}: {e}", show(&name))));
            }
            tracing::debug!(path = %to.display(), "extended attribute {} not copied: {e}", show(&name));
        }
    }
    Ok(())
}

fn show(name: &CStr) -> String {
    name.to_string_lossy().into_owned()
}

fn set_times(path: &Path, meta: &Metadata) -> io::Result<()> {
    let c = cpath(path)?;
    let times = [
        libc::timespec { tv_sec: meta.atime() as libc::time_t, tv_nsec: meta.atime_nsec() as _ },
        libc::timespec { tv_sec: meta.mtime() as libc::time_t, tv_nsec: meta.mtime_nsec() as _ },
    ];
    // SAFETY: valid path and two timespecs; the link itself, not its target.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, symlink};

    use super::*;

    fn meta(p: &Path) -> Metadata {
        fs::symlink_metadata(p).unwrap()
    }

    fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
        let (p, n) = (cpath(path)?, CString::new(name).unwrap());
        // SAFETY: valid path, name and value.
        if unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn get_xattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
        let (p, n) = (cpath(path)?, CString::new(name).unwrap());
        // SAFETY: valid path, name and buffer.
        xattr_call(|buf, len| unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf, len) })
    }

    #[test]
    fn hard_links_symlinks_modes_and_times_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        fs::create_dir(&src).unwrap();
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("file"), b"content").unwrap();
        fs::hard_link(src.join("file"), src.join("a/b/link")).unwrap();
        fs::hard_link(src.join("file"), src.join("a/link2")).unwrap();
        fs::write(src.join("single"), b"one").unwrap();
        symlink("../file", src.join("a/rel")).unwrap();
        symlink("/absolute/elsewhere", src.join("abs")).unwrap();
        fs::hard_link(src.join("abs"), src.join("abs-link")).unwrap();
        fs::set_permissions(src.join("single"), fs::Permissions::from_mode(0o4751)).unwrap();
        fs::set_permissions(src.join("a"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o751)).unwrap();
        mknod(&src.join("fifo"), libc::S_IFIFO | 0o640, 0).unwrap();
        let past = libc::timespec { tv_sec: 1_000_000_000, tv_nsec: 123_456_789 };
        let c = cpath(&src.join("single")).unwrap();
        // SAFETY: valid path and times.
        assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [past, past].as_ptr(), 0) }, 0);

        copy_tree(&src, &dst).unwrap();

        let file = meta(&dst.join("file"));
        assert_eq!(file.nlink(), 3, "three names of one file stay one inode");
        assert_eq!(meta(&dst.join("a/b/link")).ino(), file.ino());
        assert_eq!(meta(&dst.join("a/link2")).ino(), file.ino());
        assert_ne!(file.ino(), meta(&src.join("file")).ino(), "the copy is a new inode");
        assert_eq!(fs::read(dst.join("a/b/link")).unwrap(), b"content");
        assert_eq!(meta(&dst.join("single")).nlink(), 1);
        assert_eq!(fs::read_link(dst.join("a/rel")).unwrap(), Path::new("../file"));
        assert_eq!(fs::read_link(dst.join("abs")).unwrap(), Path::new("/absolute/elsewhere"), "not followed");
        assert_eq!(meta(&dst.join("abs-link")).ino(), meta(&dst.join("abs")).ino(), "a hard link to a symlink");
        assert_eq!(meta(&dst.join("single")).mode() & 0o7777, 0o4751, "setuid kept");
        assert_eq!(meta(&dst.join("a")).mode() & 0o7777, 0o1777, "sticky kept");
        assert_eq!(meta(&dst).mode() & 0o7777, 0o751, "the root's mode too");
        assert!(meta(&dst.join("fifo")).file_type().is_fifo());
        assert_eq!(meta(&dst.join("fifo")).mode() & 0o7777, 0o640);
        let single = meta(&dst.join("single"));
        assert_eq!((single.mtime(), single.mtime_nsec()), (past.tv_sec, past.tv_nsec), "mtime kept");
        assert_eq!((single.atime(), single.atime_nsec()), (past.tv_sec, past.tv_nsec), "atime kept");
        let (s, d) = (meta(&src.join("a")), meta(&dst.join("a")));
        assert_eq!(
            (d.mtime(), d.mtime_nsec()),
            (s.mtime(), s.mtime_nsec()),
            "a directory's mtime outlives its contents"
        );
        assert!(copy_tree(&src, &dst).is_err(), "the destination must not exist");
    }

    #[test]
    fn extended_attributes_are_kept_where_supported() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        fs::create_dir(&src).unwrap();
        fs::write(src.join("f"), b"x").unwrap();
        if let Err(e) = set_xattr(&src.join("f"), "user.berth.test", b"value") {
            eprintln!("skipping: {} does not take user extended attributes: {e}", dir.path().display());
            return;
        }
        set_xattr(&src, "user.berth.root", b"r").unwrap();
        copy_tree(&src, &dst).unwrap();
        assert_eq!(get_xattr(&dst.join("f"), "user.berth.test").unwrap(), b"value");
        assert_eq!(get_xattr(&dst, "user.berth.root").unwrap(), b"r");
    }

    #[test]
    fn owners_devices_and_capabilities_are_kept_as_root() {
        if !is_root() {
            eprintln!("skipping: owners and device nodes need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        fs::create_dir(&src).unwrap();
        fs::write(src.join("owned"), b"x").unwrap();
        std::os::unix::fs::lchown(src.join("owned"), Some(1234), Some(5678)).unwrap();
        fs::set_permissions(src.join("owned"), fs::Permissions::from_mode(0o6755)).unwrap();
        symlink("owned", src.join("link")).unwrap();
        std::os::unix::fs::lchown(src.join("link"), Some(42), Some(43)).unwrap();
        std::os::unix::fs::lchown(&src, Some(7), Some(8)).unwrap();
        let null = libc::makedev(1, 3);
        mknod(&src.join("null"), libc::S_IFCHR | 0o666, null).unwrap();
        // mknod's mode passes through the umask.
        fs::set_permissions(src.join("null"), fs::Permissions::from_mode(0o666)).unwrap();
        mknod(&src.join("whiteout"), libc::S_IFCHR, 0).unwrap();
        // A file capability (cap_net_bind_service), which chown would clear if it were set first.
        let cap: [u8; 20] = [0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let has_caps = set_xattr(&src.join("owned"), "security.capability", &cap).is_ok();
        set_xattr(&src.join("owned"), "trusted.berth", b"t").unwrap();

        copy_tree(&src, &dst).unwrap();

        let owned = meta(&dst.join("owned"));
        assert_eq!((owned.uid(), owned.gid()), (1234, 5678));
        assert_eq!(owned.mode() & 0o7777, 0o6755, "setuid and setgid survive the chown");
        let link = meta(&dst.join("link"));
        assert_eq!((link.uid(), link.gid()), (42, 43), "a symlink's own owner");
        assert_eq!((meta(&dst).uid(), meta(&dst).gid()), (7, 8), "the root's owner");
        let dev = meta(&dst.join("null"));
        assert!(dev.file_type().is_char_device());
        assert_eq!((dev.rdev(), dev.mode() & 0o7777), (null, 0o666));
        assert_eq!(meta(&dst.join("whiteout")).rdev(), 0, "overlay whiteouts are copied as they are");
        assert_eq!(get_xattr(&dst.join("owned"), "trusted.berth").unwrap(), b"t");
        if has_caps {
            assert_eq!(get_xattr(&dst.join("owned"), "security.capability").unwrap(), cap);
        }
    }
}
