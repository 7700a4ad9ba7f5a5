//! The task's root filesystem from the mounts the client sent (a snapshot's bind or overlay mounts), mounted on
//! `<task dir>/rootfs` before the container is created and unmounted when the task is deleted.

use std::io;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

use super::protocol::RootfsMount;

/// Mount flags by option name, as mount(8) spells them; anything else goes to the filesystem as data.
fn flag(option: &str) -> Option<(MsFlags, bool)> {
    Some(match option {
        "ro" => (MsFlags::MS_RDONLY, true),
        "rw" => (MsFlags::MS_RDONLY, false),
        "bind" => (MsFlags::MS_BIND, true),
        "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, true),
        "nosuid" => (MsFlags::MS_NOSUID, true),
        "suid" => (MsFlags::MS_NOSUID, false),
        "nodev" => (MsFlags::MS_NODEV, true),
        "dev" => (MsFlags::MS_NODEV, false),
        "noexec" => (MsFlags::MS_NOEXEC, true),
        "exec" => (MsFlags::MS_NOEXEC, false),
        "noatime" => (MsFlags::MS_NOATIME, true),
        "relatime" => (MsFlags::MS_RELATIME, true),
        "sync" => (MsFlags::MS_SYNCHRONOUS, true),
        "defaults" => (MsFlags::empty(), true),
        _ => return None,
    })
}

/// Mounts every entry in order onto `root` (the first at `root` itself, later ones at their target inside it).
/// On failure, what was mounted is unmounted again and the error names the mount.
pub fn mount_all(mounts: &[RootfsMount], root: &Path) -> Result<(), String> {
    std::fs::create_dir_all(root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, root) {
            let _ = unmount(root);
            return Err(format!("rootfs mount {i} ({} {}): {e}", m.kind, m.source));
        }
    }
    Ok(())
}

fn mount_one(m: &RootfsMount, root: &Path) -> Result<(), String> {
    let target = m.target.trim_start_matches('/');
    if target.split('/').any(|c| c == "..") {
        return Err(format!("target {:?} leaves the root filesystem", m.target));
    }
    let target = if target.is_empty() { root.to_path_buf() } else { root.join(target) };
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in &m.options {
        match flag(o) {
            Some((f, true)) => flags |= f,
            Some((f, false)) => flags &= !f,
            None => data.push(o.as_str()),
        }
    }
    let kind = if m.kind == "bind" || m.kind == "rbind" {
        flags |= MsFlags::MS_BIND;
        if m.kind == "rbind" {
            flags |= MsFlags::MS_REC;
        }
        None
    } else {
        Some(m.kind.as_str())
    };
    let data = data.join(",");
    let readonly_bind = flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY);
    nix::mount::mount(Some(m.source.as_str()), &target, kind, flags, (!data.is_empty()).then_some(data.as_str()))
        .map_err(|e| e.to_string())?;
    // A bind mount ignores MS_RDONLY on the first call; it takes a remount.
    if readonly_bind {
        nix::mount::mount(None::<&str>, &target, None::<&str>, flags | MsFlags::MS_REMOUNT, None::<&str>)
            .map_err(|e| format!("remounting read-only: {e}"))?;
    }
    Ok(())
}

/// Unmounts everything mounted at or under `root` (deepest first); a root with nothing mounted is fine.
pub fn unmount(root: &Path) -> io::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let root_s = root.to_string_lossy();
    let mut targets: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|t| t == root_s.as_ref() || t.starts_with(&format!("{root_s}/")))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        match nix::mount::umount2(t.as_str(), MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(io::Error::other(format!("unmounting {t}: {e}"))),
        }
    }
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}
