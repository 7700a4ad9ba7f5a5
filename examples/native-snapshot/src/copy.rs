//! Copying a snapshot's tree as an image layer needs it: owners, modes (setuid, sticky), times, extended
//! attributes, symlinks as they are, hard links within the tree as hard links, and device nodes, fifos and
//! sockets as nodes.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Copies the tree at `from` to `to`, which must not exist.
pub fn tree(from: &Path, to: &Path) -> io::Result<()> {
    let mut links = HashMap::new();
    copy_entry(from, to, &mut links)
}

fn copy_entry(from: &Path, to: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    let kind = meta.file_type();
    if !kind.is_dir() && meta.nlink() > 1 {
        if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
            return fs::hard_link(first, to);
        }
        links.insert((meta.dev(), meta.ino()), to.to_owned());
    }
    if kind.is_dir() {
        fs::create_dir(to)?;
        let mut entries: Vec<_> = fs::read_dir(from)?.collect::<io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            copy_entry(&entry.path(), &to.join(entry.file_name()), links)?;
        }
    } else if kind.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
    } else if kind.is_file() {
        fs::copy(from, to)?;
    } else if kind.is_block_device() || kind.is_char_device() || kind.is_fifo() || kind.is_socket() {
        let path = cstring(to)?;
        // SAFETY: mknod with a valid path; mode and device as the source has them.
        check(unsafe { libc::mknod(path.as_ptr(), meta.mode() as libc::mode_t, meta.rdev() as libc::dev_t) })?;
    }
    copy_xattrs(from, to)?;
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    if !kind.is_symlink() {
        // After chown, which clears setuid and setgid.
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    let times = [
        libc::timespec { tv_sec: meta.atime() as _, tv_nsec: meta.atime_nsec() as _ },
        libc::timespec { tv_sec: meta.mtime() as _, tv_nsec: meta.mtime_nsec() as _ },
    ];
    let path = cstring(to)?;
    // SAFETY: utimensat with a valid path and two timespecs; the link itself for symlinks.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
}

fn copy_xattrs(from: &Path, to: &Path) -> io::Result<()> {
    let (src, dst) = (cstring(from)?, cstring(to)?);
    let mut names = vec![0u8; 4096];
    // SAFETY: llistxattr into a buffer of the given size.
    let len = unsafe { libc::llistxattr(src.as_ptr(), names.as_mut_ptr() as *mut libc::c_char, names.len()) };
    if len < 0 {
        let e = io::Error::last_os_error();
        // Filesystems without xattrs have none to copy.
        return if e.raw_os_error() == Some(libc::ENOTSUP) { Ok(()) } else { Err(e) };
    }
    for name in names[..len as usize].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = CString::new(name).expect("split at NUL");
        let mut value = vec![0u8; 65536];
        // SAFETY: lgetxattr into a buffer of the given size.
        let n = unsafe {
            libc::lgetxattr(src.as_ptr(), name.as_ptr(), value.as_mut_ptr() as *mut libc::c_void, value.len())
        };
        if n < 0 {
            continue;
        }
        // SAFETY: lsetxattr with the value just read.
        let rc = unsafe {
            libc::lsetxattr(dst.as_ptr(), name.as_ptr(), value.as_ptr() as *const libc::c_void, n as usize, 0)
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // Some namespaces (trusted.*, security.*) need privileges or support the target lacks: skip those.
            if !matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM)) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Bytes allocated (as `du` counts) and distinct inodes of the tree at `dir`, its root included.
pub fn usage(dir: &Path) -> io::Result<(u64, u64)> {
    let mut seen = std::collections::HashSet::new();
    let mut size = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path)?;
        if seen.insert((meta.dev(), meta.ino())) {
            size += meta.blocks() * 512;
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok((size, seen.len() as u64))
}
