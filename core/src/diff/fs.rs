//! The system calls applying a layer needs, each relative to a directory fd so that no path is
//! resolved outside the target.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

pub fn cstr(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))
}

fn name_cstr(name: &OsStr) -> io::Result<CString> {
    cstr(name.as_bytes())
}

/// The target directory, open: every path of a layer is resolved from it.
pub struct Root {
    fd: OwnedFd,
}

impl Root {
    pub fn open(path: &Path) -> io::Result<Root> {
        let c = cstr(path.as_os_str().as_bytes())?;
        let fd = cvt(unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
        Ok(Root { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Directory `rel` (normal components only), resolved as if the root were `/`: symlinks
    /// on the way are followed, but never out of the root (RESOLVE_IN_ROOT), and magic links
    /// (`/proc/self/...`) not at all.
    pub fn open_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        let path = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
        let c = cstr(path.as_os_str().as_bytes())?;
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOSYS) {
                return Err(io::Error::other(
                    "openat2 is not available: berth needs Linux 5.6 or later to apply layers",
                ));
            }
            return Err(e);
        }
        Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
    }

    /// Directory `rel`, made (0755, as containerd makes missing parents) where missing. A
    /// symlink on the way to a missing directory is followed inside the root and what it points
    /// to is made, as containerd's applier makes the parents of `fs.RootPath`. `made` is told
    /// each directory made, by its path inside the root.
    pub fn mkdir_all(&self, rel: &Path, made: &mut impl FnMut(&Path)) -> io::Result<OwnedFd> {
        self.mkdir_all_within(rel, made, 0)
    }

    fn mkdir_all_within(&self, rel: &Path, made: &mut impl FnMut(&Path), links: u32) -> io::Result<OwnedFd> {
        match self.open_dir(rel) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else { return Err(e) };
                let parent_fd = self.mkdir_all_within(parent, made, links)?;
                match mkdirat(parent_fd.as_raw_fd(), name, 0o755) {
                    Ok(()) => made(rel),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        // Something is there yet `rel` did not open: a symlink to what is missing.
                        let Some(target) = readlinkat(parent_fd.as_raw_fd(), name)? else { return Err(e) };
                        if links >= 40 {
                            return Err(io::Error::from_raw_os_error(libc::ELOOP));
                        }
                        let target = resolve_link(parent, &target);
                        return self.mkdir_all_within(&target, made, links + 1);
                    }
                    Err(e) => return Err(e),
                }
                self.open_dir(rel)
            }
            other => other,
        }
    }
}

/// Where a symlink in directory `parent` (inside the root) with target `target` points, as a
/// path inside the root: absolute targets start at the root, `..` stops there. Lexical only;
/// whatever is then opened is resolved again with RESOLVE_IN_ROOT.
fn resolve_link(parent: &Path, target: &[u8]) -> std::path::PathBuf {
    use std::path::Component;
    let target = Path::new(OsStr::from_bytes(target));
    let mut out = if target.is_absolute() { std::path::PathBuf::new() } else { parent.to_path_buf() };
    for c in target.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The target of symlink `dir/name`; None if it is not a symlink.
pub fn readlinkat(dir: RawFd, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
    let c = name_cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    let n = unsafe { libc::readlinkat(dir, c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EINVAL) { Ok(None) } else { Err(e) };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

/// Copies mode, owner, times and extended attributes (but `trusted.*`, which overlayfs keeps
/// for itself, e.g. opaque markers) of directory `from` onto directory `to`, as containerd's
/// applier gives a parent it makes in an upper directory the attributes of the lower one.
/// Returns the times, which the caller sets again once the layer is written.
pub fn copy_dir_info(from: &OwnedFd, to: &OwnedFd) -> io::Result<(libc::timespec, libc::timespec)> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(from.as_raw_fd(), &mut st) })?;
    for (key, value) in fxattrs(from)? {
        if key.starts_with("trusted.") {
            continue;
        }
        let k = cstr(key.as_bytes())?;
        cvt(unsafe { libc::fsetxattr(to.as_raw_fd(), k.as_ptr(), value.as_ptr().cast(), value.len(), 0) })?;
    }
    cvt(unsafe { libc::fchown(to.as_raw_fd(), st.st_uid, st.st_gid) })?;
    // After chown, which clears setuid/setgid bits.
    cvt(unsafe { libc::fchmod(to.as_raw_fd(), st.st_mode & 0o7777) })?;
    let atime = libc::timespec { tv_sec: st.st_atime, tv_nsec: st.st_atime_nsec };
    let mtime = libc::timespec { tv_sec: st.st_mtime, tv_nsec: st.st_mtime_nsec };
    cvt(unsafe { libc::futimens(to.as_raw_fd(), [atime, mtime].as_ptr()) })?;
    Ok((atime, mtime))
}

/// The extended attributes of an open file.
fn fxattrs(fd: &OwnedFd) -> io::Result<Vec<(String, Vec<u8>)>> {
    let fd = fd.as_raw_fd();
    // SAFETY: the buffers are valid for the sizes given.
    read_xattrs(
        |buf, len| unsafe { libc::flistxattr(fd, buf, len) },
        |key, buf, len| unsafe { libc::fgetxattr(fd, key, buf, len) },
    )
}

/// Every extended attribute through `list` and `get` (the l*, f* or plain variants of
/// listxattr/getxattr); none where the filesystem has no xattrs.
fn read_xattrs(
    list: impl Fn(*mut libc::c_char, usize) -> isize,
    get: impl Fn(*const libc::c_char, *mut libc::c_void, usize) -> isize,
) -> io::Result<Vec<(String, Vec<u8>)>> {
    let size = list(std::ptr::null_mut(), 0);
    if size < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOTSUP) { Ok(Vec::new()) } else { Err(e) };
    }
    let mut names = vec![0u8; size as usize];
    let size = list(names.as_mut_ptr().cast(), names.len());
    if size < 0 {
        return Err(io::Error::last_os_error());
    }
    names.truncate(size as usize);
    let mut out = Vec::new();
    for key in names.split(|b| *b == 0).filter(|k| !k.is_empty()) {
        let ckey = cstr(key)?;
        let len = get(ckey.as_ptr(), std::ptr::null_mut(), 0);
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut value = vec![0u8; len as usize];
        let len = get(ckey.as_ptr(), value.as_mut_ptr().cast(), value.len());
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        value.truncate(len as usize);
        out.push((String::from_utf8_lossy(key).into_owned(), value));
    }
    Ok(out)
}

/// Splits a relative path of normal components into (parent, name).
pub fn split(rel: &Path) -> (&Path, &OsStr) {
    (rel.parent().unwrap_or(Path::new("")), rel.file_name().unwrap_or_default())
}

pub fn lstatat(dir: RawFd, name: &OsStr) -> io::Result<Option<libc::stat>> {
    let c = name_cstr(name)?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    match cvt(unsafe { libc::fstatat(dir, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) }) {
        Ok(_) => Ok(Some(st)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub fn mkdirat(dir: RawFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = name_cstr(name)?;
    cvt(unsafe { libc::mkdirat(dir, c.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: RawFd, name: &OsStr, mode: u32, dev: libc::dev_t) -> io::Result<()> {
    let c = name_cstr(name)?;
    cvt(unsafe { libc::mknodat(dir, c.as_ptr(), mode, dev) }).map(drop)
}

pub fn symlinkat(target: &[u8], dir: RawFd, name: &OsStr) -> io::Result<()> {
    let (t, c) = (cstr(target)?, name_cstr(name)?);
    cvt(unsafe { libc::symlinkat(t.as_ptr(), dir, c.as_ptr()) }).map(drop)
}

/// A hard link `dir/name` to `src_dir/src_name`; a symlink there is linked, not followed.
pub fn linkat(src_dir: RawFd, src_name: &OsStr, dir: RawFd, name: &OsStr) -> io::Result<()> {
    let (s, c) = (name_cstr(src_name)?, name_cstr(name)?);
    cvt(unsafe { libc::linkat(src_dir, s.as_ptr(), dir, c.as_ptr(), 0) }).map(drop)
}

/// A new regular file `dir/name` (never through a symlink), for writing.
pub fn create_file(dir: RawFd, name: &OsStr) -> io::Result<std::fs::File> {
    let c = name_cstr(name)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let fd = cvt(unsafe { libc::openat(dir, c.as_ptr(), flags, 0o600 as libc::c_uint) })?;
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Directory `dir/name`, open, never through a symlink.
pub fn open_subdir(dir: RawFd, name: &OsStr) -> io::Result<OwnedFd> {
    let c = name_cstr(name)?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let fd = cvt(unsafe { libc::openat(dir, c.as_ptr(), flags) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The names in directory `dir`.
pub fn list(dir: RawFd) -> io::Result<Vec<std::ffi::OsString>> {
    // The magic link names the open directory itself: no path is resolved again.
    let mut names = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/self/fd/{dir}"))? {
        names.push(entry?.file_name());
    }
    Ok(names)
}

/// Removes `dir/name` and, if it is a directory, everything under it; nothing if absent.
pub fn remove_all_at(dir: RawFd, name: &OsStr) -> io::Result<()> {
    let Some(st) = lstatat(dir, name)? else { return Ok(()) };
    let c = name_cstr(name)?;
    if is_dir(&st) {
        let sub = open_subdir(dir, name)?;
        for child in list(sub.as_raw_fd())? {
            remove_all_at(sub.as_raw_fd(), &child)?;
        }
        cvt(unsafe { libc::unlinkat(dir, c.as_ptr(), libc::AT_REMOVEDIR) }).map(drop)
    } else {
        match cvt(unsafe { libc::unlinkat(dir, c.as_ptr(), 0) }) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other.map(drop),
        }
    }
}

pub fn chownat(dir: RawFd, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    let c = name_cstr(name)?;
    cvt(unsafe { libc::fchownat(dir, c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
}

/// Mode bits of `dir/name`, which must not be a symlink (Linux cannot chmod one).
pub fn chmodat(dir: RawFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = name_cstr(name)?;
    cvt(unsafe { libc::fchmodat(dir, c.as_ptr(), mode, 0) }).map(drop)
}

pub fn utimesat(dir: RawFd, name: &OsStr, atime: libc::timespec, mtime: libc::timespec) -> io::Result<()> {
    let c = name_cstr(name)?;
    let times = [atime, mtime];
    cvt(unsafe { libc::utimensat(dir, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
}

/// The path through which `dir/name` is reached without resolving anything but the fd.
fn fd_path(dir: RawFd, name: &OsStr) -> io::Result<CString> {
    let mut p = format!("/proc/self/fd/{dir}/").into_bytes();
    p.extend_from_slice(name.as_bytes());
    cstr(&p)
}

/// Sets extended attribute `key` of `dir/name` (not following a symlink there).
pub fn lsetxattr(dir: RawFd, name: &OsStr, key: &str, value: &[u8]) -> io::Result<()> {
    let (path, key) = (fd_path(dir, name)?, cstr(key.as_bytes())?);
    cvt(unsafe { libc::lsetxattr(path.as_ptr(), key.as_ptr(), value.as_ptr().cast(), value.len(), 0) }).map(drop)
}

/// The extended attributes of `path` (not following a symlink), sorted by name.
pub fn llistxattrs(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let c = cstr(path.as_os_str().as_bytes())?;
    // SAFETY: the buffers are valid for the sizes given.
    let mut out = read_xattrs(
        |buf, len| unsafe { libc::llistxattr(c.as_ptr(), buf, len) },
        |key, buf, len| unsafe { libc::lgetxattr(c.as_ptr(), key, buf, len) },
    )?;
    out.sort();
    Ok(out)
}
