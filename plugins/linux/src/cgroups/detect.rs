//! Detecting the host's cgroup layout once: the [`Mode`] and where each hierarchy is mounted.
//!
//! - `statfs("/sys/fs/cgroup")` is cgroup2 → [`Mode::V2`].
//! - it is a tmpfs and `/sys/fs/cgroup/unified` is cgroup2 → [`Mode::Hybrid`].
//! - otherwise → [`Mode::V1`].
//!
//! v1 hierarchies are found in `/proc/self/mountinfo` (filesystem type `cgroup`), with their controllers
//! taken from the super options, so co-mounted hierarchies (`cpu,cpuacct`, `net_cls,net_prio`) are one
//! hierarchy with several controllers. A hierarchy mounted more than once (bind mounts) is used once.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, TMPFS_MAGIC, statfs};

use super::error::{CgroupError, Result};
use super::files;

/// Where the cgroup filesystems are mounted.
pub(crate) const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How the host's cgroups are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only cgroup v1 hierarchies.
    V1,
    /// cgroup v1 hierarchies plus cgroup2 at `/sys/fs/cgroup/unified`: managed as v1, the unified
    /// hierarchy is joined too, and controllers bound only to it (e.g. hugetlb) are driven the v2 way.
    Hybrid,
    /// Pure cgroup v2 at `/sys/fs/cgroup`.
    V2,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::V1 => "v1",
            Mode::Hybrid => "hybrid (v1 + unified)",
            Mode::V2 => "v2",
        })
    }
}

/// One mounted v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct V1Hierarchy {
    /// Controllers bound to it, e.g. `["cpu", "cpuacct"]`, or `["name=systemd"]` for a named hierarchy.
    pub controllers: Vec<String>,
    /// Where it is mounted, e.g. `/sys/fs/cgroup/cpu,cpuacct`.
    pub mount_point: PathBuf,
}

/// The detected layout.
#[derive(Debug)]
pub(crate) struct Layout {
    pub mode: Mode,
    /// v1 hierarchies berth manages (empty on v2).
    pub v1: Vec<V1Hierarchy>,
    /// The cgroup2 mount: `/sys/fs/cgroup` on v2, `/sys/fs/cgroup/unified` on hybrid, none on v1.
    pub unified: Option<PathBuf>,
}

static LAYOUT: OnceLock<Layout> = OnceLock::new();

/// The host's cgroup mode, detected on first use and cached for the life of the process.
pub fn mode() -> Result<Mode> {
    Ok(layout()?.mode)
}

/// The host's layout, detected on first use. A failed detection is not cached, so it is retried.
pub(crate) fn layout() -> Result<&'static Layout> {
    if let Some(layout) = LAYOUT.get() {
        return Ok(layout);
    }
    let detected = detect()?;
    tracing::debug!(mode = %detected.mode, v1 = ?detected.v1, unified = ?detected.unified, "cgroups: detected layout");
    Ok(LAYOUT.get_or_init(|| detected))
}

fn detect() -> Result<Layout> {
    let root = Path::new(CGROUP_ROOT);
    let fs_type =
        statfs(root).map_err(|e| CgroupError::Detect { path: root.to_path_buf(), err: e.into() })?.filesystem_type();
    if fs_type == CGROUP2_SUPER_MAGIC {
        return Ok(Layout { mode: Mode::V2, v1: Vec::new(), unified: Some(root.to_path_buf()) });
    }
    let mountinfo = files::read(Path::new("/proc/self/mountinfo"))?;
    let known = files::read_opt(Path::new("/proc/cgroups"))?.map(|t| known_controllers(&t)).unwrap_or_default();
    let v1 = v1_hierarchies(&mountinfo, &known);
    let unified = root.join("unified");
    let hybrid = fs_type == TMPFS_MAGIC && statfs(&unified).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC);
    if v1.is_empty() {
        return Err(CgroupError::NoHierarchies);
    }
    Ok(if hybrid {
        Layout { mode: Mode::Hybrid, v1, unified: Some(unified) }
    } else {
        Layout { mode: Mode::V1, v1, unified: None }
    })
}

/// Controller names from `/proc/cgroups` (`#subsys_name hierarchy num_cgroups enabled`).
fn known_controllers(proc_cgroups: &str) -> BTreeSet<String> {
    proc_cgroups
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Mount options that are not controllers (used when /proc/cgroups is unreadable).
const NOT_CONTROLLERS: &[&str] =
    &["rw", "ro", "none", "noprefix", "clone_children", "xattr", "cpuset_v2_mode", "favordynmods", "nofavordynmods"];

/// The v1 hierarchies in a mountinfo text: one per superblock (`major:minor`), preferring the mount under
/// /sys/fs/cgroup, keeping those with a controller plus the `name=systemd` one (joined like runc does).
pub(crate) fn v1_hierarchies(mountinfo: &str, known: &BTreeSet<String>) -> Vec<V1Hierarchy> {
    let mut found: Vec<(String, V1Hierarchy)> = Vec::new();
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options [optional...] - fstype source super-options
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 || right[0] != "cgroup" {
            continue;
        }
        let dev = left[2].to_string();
        let mount_point = PathBuf::from(unescape(left[4]));
        let controllers: Vec<String> = right[2]
            .split(',')
            .filter(|o| {
                *o == "name=systemd"
                    || if known.is_empty() {
                        !NOT_CONTROLLERS.contains(o) && !o.contains('=')
                    } else {
                        known.contains(*o)
                    }
            })
            .map(str::to_string)
            .collect();
        if controllers.is_empty() {
            continue;
        }
        let preferred = mount_point.starts_with(CGROUP_ROOT);
        match found.iter_mut().find(|(d, _)| *d == dev) {
            Some((_, h)) => {
                if preferred && !h.mount_point.starts_with(CGROUP_ROOT) {
                    h.mount_point = mount_point;
                }
            }
            None => found.push((dev, V1Hierarchy { controllers, mount_point })),
        }
    }
    found.into_iter().map(|(_, h)| h).collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
35 31 0:32 / /sys/fs/cgroup/net_cls,net_prio rw,relatime - cgroup cgroup rw,net_cls,net_prio
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/x,name=systemd
44 31 0:39 / /sys/fs/cgroup/other rw,relatime - cgroup cgroup rw,name=other
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
90 31 0:31 / /mnt/cpuset\\040copy rw,relatime - cgroup cgroup rw,cpuset
";

    #[test]
    fn parses_comounted_and_named_hierarchies() {
        let known: BTreeSet<String> =
            ["cpu", "cpuacct", "cpuset", "net_cls", "net_prio"].iter().map(|s| s.to_string()).collect();
        for known in [known, BTreeSet::new()] {
            let h = v1_hierarchies(MOUNTINFO, &known);
            let got: Vec<(Vec<&str>, &Path)> = h
                .iter()
                .map(|h| (h.controllers.iter().map(String::as_str).collect(), h.mount_point.as_path()))
                .collect();
            assert_eq!(
                got,
                vec![
                    (vec!["cpu", "cpuacct"], Path::new("/sys/fs/cgroup/cpu,cpuacct")),
                    (vec!["cpuset"], Path::new("/sys/fs/cgroup/cpuset")),
                    (vec!["net_cls", "net_prio"], Path::new("/sys/fs/cgroup/net_cls,net_prio")),
                    (vec!["name=systemd"], Path::new("/sys/fs/cgroup/systemd")),
                ]
            );
        }
    }

    #[test]
    fn unescapes_mount_points() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/trailing\\04"), "/trailing\\04");
    }
}
