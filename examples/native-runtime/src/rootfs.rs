//! Mounting a task's root filesystem (the snapshotter's mounts) into its bundle, as the OCI runtime expects
//! to find it, and unmounting it at delete.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use berth_plugin_sdk::proto::Mount;

fn flag(option: &str) -> Option<(libc::c_ulong, bool)> {
    Some(match option {
        "ro" => (libc::MS_RDONLY, true),
        "rw" => (libc::MS_RDONLY, false),
        "bind" => (libc::MS_BIND, true),
        "rbind" => (libc::MS_BIND | libc::MS_REC, true),
        "nosuid" => (libc::MS_NOSUID, true),
        "nodev" => (libc::MS_NODEV, true),
        "noexec" => (libc::MS_NOEXEC, true),
        "remount" => (libc::MS_REMOUNT, true),
        _ => return None,
    })
}

fn cstring(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a mount argument"))
}

/// Mounts `mounts` in order onto `dir`.
pub fn mount_all(mounts: &[Mount], dir: &Path) -> io::Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, dir) {
            unmount(dir, i);
            return Err(io::Error::new(
                e.kind(),
                format!("mounting {} {} on {}: {e}", m.r#type, m.source, dir.display()),
            ));
        }
    }
    Ok(())
}

fn mount_one(m: &Mount, dir: &Path) -> io::Result<()> {
    let point = dir.join(m.target.trim_start_matches('/'));
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for option in &m.options {
        match flag(option) {
            Some((f, true)) => flags |= f,
            Some((f, false)) => flags &= !f,
            None => data.push(option.as_str()),
        }
    }
    if m.r#type == "bind" || m.r#type == "rbind" {
        flags |= libc::MS_BIND;
    }
    let (source, target, kind, data) = (
        cstring(m.source.as_bytes())?,
        cstring(point.as_os_str().as_bytes())?,
        cstring(m.r#type.as_bytes())?,
        cstring(data.join(",").as_bytes())?,
    );
    // SAFETY: mount(2) with NUL-terminated strings.
    if unsafe { libc::mount(source.as_ptr(), target.as_ptr(), kind.as_ptr(), flags, data.as_ptr() as *const _) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // A bind mount ignores MS_RDONLY until it is remounted.
    if flags & libc::MS_BIND != 0 && flags & libc::MS_RDONLY != 0 {
        let flags = flags | libc::MS_REMOUNT;
        // SAFETY: as above; a remount takes no source or type.
        if unsafe { libc::mount(std::ptr::null(), target.as_ptr(), std::ptr::null(), flags, std::ptr::null()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Unmounts what is mounted on `dir` (up to `count` stacked mounts, lazily if busy).
pub fn unmount(dir: &Path, count: usize) {
    let Ok(target) = cstring(dir.as_os_str().as_bytes()) else { return };
    for _ in 0..count {
        // SAFETY: umount2 with a valid path.
        unsafe {
            if libc::umount2(target.as_ptr(), 0) != 0 && libc::umount2(target.as_ptr(), libc::MNT_DETACH) != 0 {
                return;
            }
        }
    }
}
