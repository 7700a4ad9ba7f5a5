//! The task's root filesystem from the mounts the client sent (a snapshot's bind or overlay mounts), mounted on
//! `<task dir>/rootfs` before the container is created and unmounted when the task is deleted.

use std::io;
use std::path::Path;

use berth_core::mount::{COMPACT_MARGIN, compact_lowerdir, flags_and_data, page_size};
use nix::mount::{MntFlags, MsFlags};

use super::protocol::RootfsMount;

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
    let (flags, data) = flags_and_data(&m.kind, &m.options);
    let flags = MsFlags::from_bits_retain(flags);
    // A bind mount's type is not a filesystem's.
    let kind = (!flags.contains(MsFlags::MS_BIND)).then_some(m.kind.as_str());
    if kind == Some("overlay")
        && data.len() + 1 > page_size() - COMPACT_MARGIN
        && let Some((common, compacted)) = compact_lowerdir(&data)
    {
        // The target is resolved before the working directory moves.
        let target = std::path::absolute(&target).map_err(|e| format!("{}: {e}", target.display()))?;
        let _back = WorkingDir::enter(&common)?;
        return mount_data(m, &target, kind, flags, &compacted)
            .map_err(|e| format!("{e} (lower directories relative to {})", common.display()));
    }
    mount_data(m, &target, kind, flags, &data)
}

fn mount_data(m: &RootfsMount, target: &Path, kind: Option<&str>, flags: MsFlags, data: &str) -> Result<(), String> {
    if data.len() + 1 > page_size() {
        return Err(format!(
            "the mount options are {} bytes, more than the {} mount(2) takes",
            data.len(),
            page_size() - 1
        ));
    }
    let readonly_bind = flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY);
    nix::mount::mount(Some(m.source.as_str()), target, kind, flags, (!data.is_empty()).then_some(data))
        .map_err(|e| e.to_string())?;
    // A bind mount ignores MS_RDONLY on the first call; it takes a remount.
    if readonly_bind {
        nix::mount::mount(None::<&str>, target, None::<&str>, flags | MsFlags::MS_REMOUNT, None::<&str>)
            .map_err(|e| format!("remounting read-only: {e}"))?;
    }
    Ok(())
}

/// The working directory moved for a mount with relative lower directories, and moved back on
/// drop. Changing it is safe here because the reaper is single-threaded (see server.rs): no other
/// thread resolves a relative path meanwhile. Going back is by a descriptor of the old one, which
/// works even if its path changed.
struct WorkingDir(std::fs::File);

impl WorkingDir {
    fn enter(dir: &Path) -> Result<WorkingDir, String> {
        let old = std::fs::File::open(".").map_err(|e| format!("opening the working directory: {e}"))?;
        std::env::set_current_dir(dir).map_err(|e| format!("changing to {}: {e}", dir.display()))?;
        Ok(WorkingDir(old))
    }
}

impl Drop for WorkingDir {
    fn drop(&mut self) {
        // SAFETY: fchdir on a descriptor we own.
        if unsafe { libc::fchdir(std::os::fd::AsRawFd::as_raw_fd(&self.0)) } != 0 {
            // Only relative paths would go wrong from here on, and the reaper's are absolute (its task
            // directory); say so in its log rather than abort a created container.
            eprintln!("berth-reaper: going back to the working directory: {}", io::Error::last_os_error());
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A real overlay of more lowers than one page of options names, mounted with `mount_all` as
    /// the reaper does; the working directory is the same afterwards. (It moves meanwhile, for the
    /// whole test process: no other test here uses relative paths.)
    #[test]
    fn an_overlay_of_many_long_lowers_mounts() {
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
        for d in ["upper", "work"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let options = vec![
            format!("lowerdir={}", lowers.join(":")),
            format!("upperdir={}", dir.path().join("upper").display()),
            format!("workdir={}", dir.path().join("work").display()),
        ];
        assert!(options[0].len() > page_size(), "the test needs options beyond a page");
        let m = RootfsMount { kind: "overlay".into(), source: "overlay".into(), target: String::new(), options };
        let cwd = std::env::current_dir().unwrap();
        let root = dir.path().join("rootfs");
        mount_all(&[m], &root).unwrap();
        let seen = (std::fs::read_to_string(root.join("top")), root.join("f0").exists(), root.join("f149").exists());
        unmount(&root).unwrap();
        assert_eq!(std::env::current_dir().unwrap(), cwd);
        assert_eq!((seen.0.unwrap().as_str(), seen.1, seen.2), ("nearest\n", true, true));
    }
}
