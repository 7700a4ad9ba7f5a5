//! Container resource control with cgroups, on cgroup v1, hybrid and pure v2 hosts.
//!
//! # Layout detection ([`mode`])
//! Done once per process, by `statfs("/sys/fs/cgroup")`:
//! - **v2** (`cgroup2fs`): one hierarchy at /sys/fs/cgroup.
//! - **hybrid** (tmpfs, with cgroup2 at /sys/fs/cgroup/unified): managed as v1, like runc. The v1
//!   hierarchies do the resource control; the same path is also created in the unified hierarchy and every
//!   process is added there too, so systemd-style tools see it. Controllers that are bound to the unified
//!   hierarchy rather than to a v1 one (`cgroup.controllers` of /sys/fs/cgroup/unified, e.g. hugetlb on some
//!   hosts) are enabled down the path and driven the v2 way. The v2 freezer (`cgroup.freeze`) is used only if
//!   no v1 freezer is mounted.
//! - **v1** (anything else): the v1 hierarchies only.
//!
//! v1 hierarchies are read from /proc/self/mountinfo, so co-mounted controllers (`cpu,cpuacct`,
//! `net_cls,net_prio`) are one directory. The `name=systemd` hierarchy is joined (not controlled), as runc
//! does. A cgroup's directory in a hierarchy is the mount point joined with the cgroup path.
//!
//! # Paths
//! `linux.cgroupsPath` is taken relative to the hierarchy roots, whether written absolute (`/berth/ns/id`)
//! or relative (`berth/ns/id`); `..`, the root itself and systemd `slice:prefix:name` paths are rejected.
//!
//! # What is enforced where
//! | OCI resource | v1 file(s) | v2 file(s) |
//! |---|---|---|
//! | memory.limit / swap / reservation | `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` (if swap accounting), `memory.soft_limit_in_bytes` | `memory.max`, `memory.swap.max` (= swap - limit), `memory.low` |
//! | memory.swappiness / disableOOMKiller / kernelTCP | `memory.swappiness`, `memory.oom_control`, `memory.kmem.tcp.limit_in_bytes` | ignored (disableOOMKiller warns) |
//! | memory.kernel | ignored | ignored |
//! | cpu.shares / quota / period / burst / idle | `cpu.shares`, `cpu.cfs_*_us`, `cpu.idle` | `cpu.weight` (runc conversion), `cpu.max`, `cpu.max.burst`, `cpu.idle` |
//! | cpu.realtime* | `cpu.rt_period_us`, `cpu.rt_runtime_us` | error (no v2 equivalent) |
//! | cpu.cpus / mems | `cpuset.cpus`, `cpuset.mems` (new v1 cgroups first copy the parent's) | same |
//! | pids.limit | `pids.max` (`max` for <= 0) | same |
//! | blockIO | `blkio.weight` / `blkio.bfq.weight`, `blkio.weight_device`, `blkio.throttle.*` | `io.bfq.weight` or `io.weight`, `io.max` |
//! | hugepageLimits | `hugetlb.<size>.limit_in_bytes` (+ `.rsvd.`) | `hugetlb.<size>.max` (+ `.rsvd.`) |
//! | devices | `devices.allow` / `devices.deny`, in order | **not enforced** (needs a BPF program; warned once) |
//! | network | `net_cls.classid`, `net_prio.ifpriomap` (skipped with a warning if not mounted) | ignored with a warning |
//! | rdma | `rdma.max` | `rdma.max` |
//! | unified | error naming the key | written as-is |
//!
//! On v2 (and for the unified hierarchy on hybrid) every controller offered in `cgroup.controllers` is
//! enabled in `cgroup.subtree_control` of each ancestor, from the root down; those the kernel refuses are
//! logged and then unavailable.
//!
//! # Lifecycle
//! [`Cgroup::create`] → [`Cgroup::entry`] (a new process enters by itself) or [`Cgroup::add_process`] →
//! [`Cgroup::apply`] (updates) / [`Cgroup::freeze`] / [`Cgroup::stats`] / [`Cgroup::oom_watcher`] →
//! [`Cgroup::kill_all`] → [`Cgroup::delete`]. After a daemon restart, [`Cgroup::open`] finds an existing cgroup again. Processes are listed, signalled and waited for
//! across every hierarchy and in child cgroups too (a container may create its own).

mod detect;
mod error;
mod files;
mod oom;
mod resources;
mod stats;
mod v1;
mod v2;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub use detect::{Mode, mode};
pub use error::{CgroupError, Result};
pub use oom::OomWatcher;
pub use stats::{BlkioEntry, CpuStats, HugetlbStats, MemoryStats, PidsStats, Stats};

use detect::{Layout, layout};

/// How long [`Cgroup::delete`] waits for the cgroup's processes to die and its directories to go.
pub const DELETE_TIMEOUT: Duration = Duration::from_secs(2);

/// A cgroup, at the same path in every hierarchy berth manages.
#[derive(Debug, Clone)]
pub struct Cgroup {
    /// Normalized path relative to the hierarchy roots, e.g. `/berth/default/c1`.
    path: String,
    mode: Mode,
    /// The cgroup's directory in each managed v1 hierarchy (empty on v2).
    v1: Vec<V1Dir>,
    /// The cgroup's directory in the cgroup2 hierarchy: the cgroup itself on v2, its unified twin on hybrid.
    unified: Option<PathBuf>,
    /// Controllers usable through `unified` (its `cgroup.controllers`).
    v2_controllers: BTreeSet<String>,
}

#[derive(Debug, Clone)]
struct V1Dir {
    controllers: Vec<String>,
    root: PathBuf,
    dir: PathBuf,
}

/// A cgroup opened for a process that is about to be forked into it ([`Cgroup::entry`]).
///
/// Why not [`Cgroup::add_process`]: writing another process's pid to `cgroup.procs` takes the kernel's
/// cgroup threadgroup lock for writing, and taking it when it was not taken recently waits for an RCU grace
/// period: 6-14 ms per container measured on this project's hosts, most of a `ctr run`'s daemon-side time.
/// Two ways in do not take it: `clone3(CLONE_INTO_CGROUP)` with the cgroup2 directory ([`Entry::unified`]),
/// and a thread moving itself into a v1 cgroup by writing `0` to its `tasks` file ([`Entry::join_v1`]).
#[derive(Debug)]
pub struct Entry {
    v1_tasks: Vec<(PathBuf, OwnedFd)>,
    unified: Option<OwnedFd>,
}

impl Entry {
    /// The cgroup2 directory (v2, or the unified twin on hybrid), for `clone3(CLONE_INTO_CGROUP)`.
    pub fn unified(&self) -> Option<BorrowedFd<'_>> {
        self.unified.as_ref().map(|fd| fd.as_fd())
    }

    /// Moves the calling thread into the cgroup in every v1 hierarchy. Called by the new process while it is
    /// single-threaded, so the thread is the whole process; its children inherit the cgroups. It only writes
    /// to file descriptors that are already open: safe to call in a child forked from any process.
    pub fn join_v1(&self) -> Result<()> {
        for (path, fd) in &self.v1_tasks {
            // SAFETY: a plain write of two bytes from a static buffer to an open fd.
            let n = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if n != 1 {
                let err = if n < 0 { io::Error::last_os_error() } else { io::ErrorKind::WriteZero.into() };
                return Err(CgroupError::Write { path: path.clone(), value: "0".into(), err });
            }
        }
        Ok(())
    }
}

/// Where a controller is: a v1 directory, or the v2 directory.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Loc<'a> {
    V1(&'a Path),
    V2(&'a Path),
}

/// Splits and checks a cgroups path; returns the normalized `/a/b/c` form and its components.
pub(crate) fn normalize(path: &str) -> Result<(String, Vec<String>)> {
    let invalid = |reason| CgroupError::InvalidPath { path: path.to_string(), reason };
    if !path.contains('/') && path.matches(':').count() == 2 {
        return Err(invalid("systemd slice:prefix:name paths are not supported, use a cgroupfs path"));
    }
    let parts: Vec<String> = path.split('/').filter(|c| !c.is_empty() && *c != ".").map(str::to_string).collect();
    if parts.iter().any(|c| c == "..") {
        return Err(invalid("must not contain .."));
    }
    if parts.is_empty() {
        return Err(invalid("is the root cgroup"));
    }
    Ok((format!("/{}", parts.join("/")), parts))
}

impl Cgroup {
    /// Computes the cgroup's directories without touching the filesystem.
    fn resolve(layout: &Layout, path: &str) -> Result<Cgroup> {
        let (path, parts) = normalize(path)?;
        let rel: PathBuf = parts.iter().collect();
        let v1 = layout
            .v1
            .iter()
            .map(|h| V1Dir {
                controllers: h.controllers.clone(),
                root: h.mount_point.clone(),
                dir: h.mount_point.join(&rel),
            })
            .collect();
        let unified = layout.unified.as_ref().map(|u| u.join(&rel));
        Ok(Cgroup { path, mode: layout.mode, v1, unified, v2_controllers: BTreeSet::new() })
    }

    /// Creates the cgroup (`mkdir -p`) in every hierarchy berth manages and applies `resources`.
    ///
    /// `path` is the OCI `linux.cgroupsPath`, relative to the hierarchy roots. It is an error if the
    /// cgroup already exists ([`CgroupError::AlreadyExists`]); see [`Cgroup::create_or_reuse`]. On failure,
    /// the directories this call created are removed again.
    pub fn create(path: &str, resources: Option<&oci_spec::runtime::LinuxResources>) -> Result<Cgroup> {
        Self::create_inner(path, resources, false)
    }

    /// Like [`Cgroup::create`], but an existing cgroup is reused (its resources are re-applied); for
    /// cgroups shared on purpose, e.g. by the containers of one pod.
    pub fn create_or_reuse(path: &str, resources: Option<&oci_spec::runtime::LinuxResources>) -> Result<Cgroup> {
        Self::create_inner(path, resources, true)
    }

    fn create_inner(path: &str, resources: Option<&oci_spec::runtime::LinuxResources>, reuse: bool) -> Result<Cgroup> {
        let layout = layout()?;
        let mut cg = Self::resolve(layout, path)?;
        let mut created = Vec::new();
        match cg.setup(layout, resources, reuse, &mut created) {
            Ok(()) => {
                tracing::debug!(path = %cg.path, mode = %cg.mode, "cgroups: created");
                Ok(cg)
            }
            Err(e) => {
                for dir in created.iter().rev() {
                    if let Err(err) = fs::remove_dir(dir) {
                        tracing::warn!("cgroups: cleaning up {} after a failed create: {err}", dir.display());
                    }
                }
                Err(e)
            }
        }
    }

    fn setup(
        &mut self,
        layout: &Layout,
        resources: Option<&oci_spec::runtime::LinuxResources>,
        reuse: bool,
        created: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let (_, parts) = normalize(&self.path)?;
        for h in &self.v1 {
            let cpuset = h.controllers.iter().any(|c| c == "cpuset");
            mkdir_all(
                &h.root,
                &parts,
                reuse,
                created,
                |dir, _| if cpuset { v1::init_cpuset(&h.root, dir) } else { Ok(()) },
            )?;
        }
        if let (Some(root), Some(_)) = (&layout.unified, &self.unified) {
            v2::enable_subtree(root)?;
            mkdir_all(root, &parts, reuse, created, |dir, leaf| if leaf { Ok(()) } else { v2::enable_subtree(dir) })?;
        }
        self.v2_controllers = self.read_v2_controllers()?;
        if let Some(r) = resources {
            self.apply(r)?;
        }
        Ok(())
    }

    fn read_v2_controllers(&self) -> Result<BTreeSet<String>> {
        match &self.unified {
            Some(d) => v2::controllers(&d.join("cgroup.controllers")),
            None => Ok(BTreeSet::new()),
        }
    }

    /// Opens an existing cgroup (after a daemon restart). [`CgroupError::NotFound`] if it is in no hierarchy.
    pub fn open(path: &str) -> Result<Cgroup> {
        let mut cg = Self::resolve(layout()?, path)?;
        if !cg.dirs().any(Path::is_dir) {
            return Err(CgroupError::NotFound { path: cg.path });
        }
        cg.v2_controllers = cg.read_v2_controllers()?;
        Ok(cg)
    }

    /// The normalized cgroup path, e.g. `/berth/default/c1`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The host's cgroup mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The cgroup's directory in every hierarchy (v1 ones first, then the cgroup2 one).
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.v1.iter().map(|h| h.dir.as_path()).chain(self.unified.as_deref())
    }

    /// Where `controller` is handled for this cgroup: its v1 hierarchy, or the cgroup2 one.
    pub(crate) fn locate(&self, controller: &str) -> Option<Loc<'_>> {
        if let Some(h) = self.v1.iter().find(|h| h.controllers.iter().any(|c| c == controller)) {
            return Some(Loc::V1(&h.dir));
        }
        match &self.unified {
            Some(d) if self.v2_controllers.contains(controller) => Some(Loc::V2(d)),
            _ => None,
        }
    }

    pub(crate) fn require(&self, controller: &'static str, what: &'static str) -> Result<Loc<'_>> {
        self.locate(controller).ok_or(CgroupError::ControllerUnavailable { controller, what })
    }

    /// The freezer: v1 `freezer`, else `cgroup.freeze` in the cgroup2 directory (never the root).
    fn freezer(&self) -> Option<Loc<'_>> {
        if let Some(loc @ Loc::V1(_)) = self.locate("freezer") {
            return Some(loc);
        }
        self.unified.as_deref().filter(|d| d.join("cgroup.freeze").exists()).map(Loc::V2)
    }

    fn require_freezer(&self) -> Result<Loc<'_>> {
        self.freezer().ok_or(CgroupError::ControllerUnavailable { controller: "freezer", what: "freeze/thaw" })
    }

    /// Moves process `pid` (with all its threads) into the cgroup, in every hierarchy.
    pub fn add_process(&self, pid: i32) -> Result<()> {
        for dir in self.dirs() {
            files::write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Opens what a process about to be forked needs to enter the cgroup itself, without anyone writing its
    /// pid ([`Entry`]). Opened by the caller while it still has the privileges to open them.
    pub fn entry(&self) -> Result<Entry> {
        let v1_tasks = self
            .v1
            .iter()
            .map(|h| {
                let path = h.dir.join("tasks");
                let file = OpenOptions::new().write(true).open(&path).map_err(|err| CgroupError::Write {
                    path: path.clone(),
                    value: "0".into(),
                    err,
                })?;
                Ok((path, OwnedFd::from(file)))
            })
            .collect::<Result<Vec<_>>>()?;
        let unified = self
            .unified
            .as_ref()
            .map(|dir| {
                fs::File::open(dir)
                    .map(OwnedFd::from)
                    .map_err(|err| CgroupError::Sys { op: format!("opening {}", dir.display()), err })
            })
            .transpose()?;
        Ok(Entry { v1_tasks, unified })
    }

    /// Adds `pid` to the cgroup2 hierarchy only (v2, or the unified twin on hybrid): for a process that
    /// entered the v1 hierarchies itself ([`Entry::join_v1`]) but was not forked into the cgroup2 one.
    pub fn add_process_unified(&self, pid: i32) -> Result<()> {
        match &self.unified {
            Some(dir) => files::write(&dir.join("cgroup.procs"), &pid.to_string()),
            None => Ok(()),
        }
    }

    /// Freezes every process in the cgroup and waits until the kernel reports it frozen (v1
    /// `freezer.state` = `FROZEN`, v2 `cgroup.events` `frozen 1`); thaws again and fails after 5 s.
    pub fn freeze(&self) -> Result<()> {
        match self.require_freezer()? {
            Loc::V1(d) => v1::freeze(d),
            Loc::V2(d) => v2::freeze(d),
        }
    }

    /// Thaws the cgroup and waits until the kernel reports it thawed.
    pub fn thaw(&self) -> Result<()> {
        match self.require_freezer()? {
            Loc::V1(d) => v1::thaw(d),
            Loc::V2(d) => v2::thaw(d),
        }
    }

    /// Whether the cgroup is frozen (fully, not still freezing).
    pub fn is_frozen(&self) -> Result<bool> {
        match self.require_freezer()? {
            Loc::V1(d) => v1::is_frozen(d),
            Loc::V2(d) => v2::is_frozen(d),
        }
    }

    /// Every process in the cgroup or its child cgroups, in any hierarchy, sorted. A cgroup that no longer
    /// exists has none.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let mut all = BTreeSet::new();
        for dir in self.dirs() {
            collect_pids(dir, &mut all)?;
        }
        Ok(all.into_iter().collect())
    }

    /// Sends `signal` to every process in the cgroup, frozen while signalling so forks cannot escape.
    ///
    /// Without a freezer the processes are signalled unfrozen. On pure v2, SIGKILL uses `cgroup.kill`
    /// (Linux >= 5.14) when present. After SIGKILL the cgroup is always left thawed (killed tasks of a frozen
    /// v1 cgroup cannot die otherwise); for other signals a cgroup that was frozen before stays frozen.
    pub fn kill_all(&self, signal: i32) -> Result<()> {
        if self.mode == Mode::V2
            && signal == libc::SIGKILL
            && let Some(d) = &self.unified
            && d.join("cgroup.kill").exists()
        {
            return files::write(&d.join("cgroup.kill"), "1");
        }
        let was_frozen = self.freezer().is_some() && self.is_frozen().unwrap_or(false);
        let mut froze = false;
        if self.freezer().is_some() && !was_frozen {
            match self.freeze() {
                Ok(()) => froze = true,
                Err(e) => tracing::warn!("cgroups: signalling {} without freezing it first: {e}", self.path),
            }
        }
        let result = self.signal_all(signal);
        if froze || (was_frozen && signal == libc::SIGKILL) {
            self.thaw()?;
        }
        result
    }

    fn signal_all(&self, signal: i32) -> Result<()> {
        let me = std::process::id() as i32;
        for pid in self.pids()? {
            if pid == me {
                continue;
            }
            // SAFETY: kill(2) has no memory-safety preconditions.
            if unsafe { libc::kill(pid, signal) } != 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::ESRCH) {
                    return Err(CgroupError::Kill { pid, signal, err });
                }
            }
        }
        Ok(())
    }

    /// Removes the cgroup: kills what is still in it (SIGKILL), waits up to [`DELETE_TIMEOUT`] for it to
    /// empty, then removes its directory (and child cgroups a container made) in every hierarchy. Parent
    /// directories stay (other cgroups use them). Directories already gone are fine, so deleting a cgroup
    /// that does not exist succeeds.
    pub fn delete(&self) -> Result<()> {
        // Usually nothing is left: removing the directories straight away spares a scan of every hierarchy
        // for processes (an rmdir of a cgroup that still has processes, or child cgroups, fails with EBUSY).
        match self.remove_dirs() {
            Ok(()) => {
                tracing::debug!(path = %self.path, "cgroups: deleted");
                return Ok(());
            }
            Err(e) if e.errno() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e),
        }
        let deadline = Instant::now() + DELETE_TIMEOUT;
        let mut last_kill: Option<Instant> = None;
        loop {
            let pids = self.pids()?;
            let err = if pids.is_empty() {
                match self.remove_dirs() {
                    Ok(()) => {
                        tracing::debug!(path = %self.path, "cgroups: deleted");
                        return Ok(());
                    }
                    Err(e) if e.errno() == Some(libc::EBUSY) => e,
                    Err(e) => return Err(e),
                }
            } else {
                if last_kill.is_none_or(|t| t.elapsed() >= Duration::from_millis(200)) {
                    if let Err(e) = self.kill_all(libc::SIGKILL) {
                        tracing::warn!("cgroups: killing the processes of {}: {e}", self.path);
                    }
                    last_kill = Some(Instant::now());
                }
                let dir = self.dirs().next().map(Path::to_path_buf).unwrap_or_default();
                CgroupError::Timeout { what: "empty", path: dir, timeout: DELETE_TIMEOUT }
            };
            if Instant::now() >= deadline {
                return Err(err);
            }
            sleep(Duration::from_millis(10));
        }
    }

    fn remove_dirs(&self) -> Result<()> {
        let mut first_err = None;
        for dir in self.dirs() {
            if let Err(e) = remove_tree(dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// `mkdir -p root/parts...`, calling `init(dir, is_leaf)` on every level (existing or new). An existing
/// leaf is an error unless `reuse`. New directories are recorded in `created`.
fn mkdir_all(
    root: &Path,
    parts: &[String],
    reuse: bool,
    created: &mut Vec<PathBuf>,
    init: impl Fn(&Path, bool) -> Result<()>,
) -> Result<()> {
    let mut dir = root.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        dir.push(part);
        let leaf = i + 1 == parts.len();
        match fs::create_dir(&dir) {
            Ok(()) => created.push(dir.clone()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if leaf && !reuse {
                    return Err(CgroupError::AlreadyExists { path: dir });
                }
            }
            Err(err) => return Err(CgroupError::Create { path: dir, err }),
        }
        init(&dir, leaf)?;
    }
    Ok(())
}

/// Adds the pids of `dir` and its child cgroups to `out`; a missing directory adds nothing.
fn collect_pids(dir: &Path, out: &mut BTreeSet<i32>) -> Result<()> {
    out.extend(files::read_pids(&dir.join("cgroup.procs"))?);
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(CgroupError::Read { path: dir.to_path_buf(), err }),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_pids(&entry.path(), out)?;
        }
    }
    Ok(())
}

/// rmdir of `dir` and its child cgroups, deepest first; missing directories are fine.
fn remove_tree(dir: &Path) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&entry.path())?;
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(CgroupError::Read { path: dir.to_path_buf(), err }),
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(CgroupError::Remove { path: dir.to_path_buf(), err }),
    }
}
