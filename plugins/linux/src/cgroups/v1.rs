//! cgroup v1 (and the v1 side of hybrid): per-controller directories, limit files and the freezer.
//!
//! Each function takes the cgroup's directory in the hierarchy that holds the controller, e.g.
//! `/sys/fs/cgroup/memory/berth/default/c1` for [`memory`].

use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxDeviceCgroup, LinuxDeviceType, LinuxMemory, LinuxNetwork};

use super::error::{CgroupError, Result};
use super::files::{self, OpenFile, write};
use super::resources::{hugetlb_page_size, nonzero};

/// Copies `cpuset.cpus` and `cpuset.mems` from the parent into `dir` when they are empty, parents first.
///
/// A new v1 cpuset cgroup starts with both empty, and adding a process to it then fails with ENOSPC.
pub(crate) fn init_cpuset(root: &Path, dir: &Path) -> Result<()> {
    if dir == root || !dir.starts_with(root) {
        return Ok(());
    }
    let Some(parent) = dir.parent() else { return Ok(()) };
    let mut empty = Vec::with_capacity(2);
    for name in ["cpuset.cpus", "cpuset.mems"] {
        let file = dir.join(name);
        if files::read(&file)?.trim().is_empty() {
            empty.push((name, file));
        }
    }
    if empty.is_empty() {
        return Ok(());
    }
    // The parent once for both files, not once per file.
    init_cpuset(root, parent)?;
    for (name, file) in empty {
        let value = files::read(&parent.join(name))?;
        write(&file, value.trim())?;
    }
    Ok(())
}

/// Memory limits: `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` (only when swap accounting
/// exists), `memory.soft_limit_in_bytes`, `memory.kmem.tcp.limit_in_bytes`, `memory.swappiness`,
/// `memory.oom_control`. `kernel` is ignored (deprecated, and a no-op on kernels >= 5.16).
pub(crate) fn memory(dir: &Path, m: &LinuxMemory) -> Result<()> {
    let limit = m.limit().and_then(nonzero).map(|v| v.max(-1));
    let memsw_file = dir.join("memory.memsw.limit_in_bytes");
    let swap = m.swap().and_then(nonzero).map(|v| v.max(-1));
    if swap.is_some() && !memsw_file.exists() {
        tracing::debug!(dir = %dir.display(), "cgroups: no swap accounting (memory.memsw.*), ignoring memory.swap");
    }
    let swap = swap.filter(|_| memsw_file.exists());
    let limit_file = dir.join("memory.limit_in_bytes");
    match (limit, swap) {
        (Some(l), Some(s)) => {
            if s >= 0 && (l < 0 || s < l) {
                return Err(CgroupError::InvalidValue {
                    what: "memory.swap".into(),
                    value: s.to_string(),
                    reason: format!("memory+swap must be -1 or at least the memory limit {l}"),
                });
            }
            // memsw >= limit must hold after each write. Growing memsw past the current limit goes first;
            // otherwise (s < current limit, so l <= s < current limit <= current memsw) the limit goes first.
            let current = files::read(&limit_file)?;
            let current = files::parse_u64(&limit_file, current.trim())?;
            if s < 0 || s as u64 >= current {
                write(&memsw_file, &s.to_string())?;
                write(&limit_file, &l.to_string())?;
            } else {
                write(&limit_file, &l.to_string())?;
                write(&memsw_file, &s.to_string())?;
            }
        }
        (Some(l), None) => write(&limit_file, &l.to_string())?,
        (None, Some(s)) => write(&memsw_file, &s.to_string())?,
        (None, None) => {}
    }
    if let Some(r) = m.reservation().and_then(nonzero) {
        write(&dir.join("memory.soft_limit_in_bytes"), &r.to_string())?;
    }
    if m.kernel().is_some() {
        tracing::debug!("cgroups: ignoring memory.kernel (kernel memory limits are deprecated)");
    }
    if let Some(t) = m.kernel_tcp().and_then(nonzero) {
        let file = dir.join("memory.kmem.tcp.limit_in_bytes");
        if file.exists() {
            write(&file, &t.to_string())?;
        } else {
            tracing::debug!("cgroups: no memory.kmem.tcp.limit_in_bytes, ignoring memory.kernelTCP");
        }
    }
    if let Some(s) = m.swappiness() {
        if s > 100 {
            return Err(CgroupError::InvalidValue {
                what: "memory.swappiness".into(),
                value: s.to_string(),
                reason: "must be between 0 and 100".into(),
            });
        }
        write(&dir.join("memory.swappiness"), &s.to_string())?;
    }
    if let Some(disable) = m.disable_oom_killer() {
        write(&dir.join("memory.oom_control"), if disable { "1" } else { "0" })?;
    }
    Ok(())
}

/// CPU bandwidth and weight: `cpu.shares`, `cpu.cfs_period_us`/`cpu.cfs_quota_us`, `cpu.cfs_burst_us`,
/// `cpu.idle`, `cpu.rt_period_us`/`cpu.rt_runtime_us`. Zero values mean "unset" and are skipped.
pub(crate) fn cpu(dir: &Path, c: &LinuxCpu) -> Result<()> {
    if let Some(shares) = c.shares().filter(|s| *s != 0) {
        write(&dir.join("cpu.shares"), &shares.to_string())?;
    }
    let period = c.period().filter(|p| *p != 0);
    let quota = c.quota().and_then(nonzero).map(|q| if q < 0 { -1 } else { q });
    let (period_file, quota_file) = (dir.join("cpu.cfs_period_us"), dir.join("cpu.cfs_quota_us"));
    let mut quota_written = false;
    if let Some(p) = period
        && let Err(e) = write(&period_file, &p.to_string())
    {
        // The old quota can make a new period invalid: set the quota first, then retry.
        let Some(q) = quota else { return Err(e) };
        write(&quota_file, &q.to_string())?;
        quota_written = true;
        write(&period_file, &p.to_string())?;
    }
    if let Some(q) = quota
        && !quota_written
    {
        write(&quota_file, &q.to_string())?;
    }
    if let Some(b) = c.burst() {
        write(&dir.join("cpu.cfs_burst_us"), &b.to_string())?;
    }
    if let Some(i) = c.idle() {
        write(&dir.join("cpu.idle"), &i.to_string())?;
    }
    if let Some(p) = c.realtime_period().filter(|p| *p != 0) {
        write(&dir.join("cpu.rt_period_us"), &p.to_string())?;
    }
    if let Some(r) = c.realtime_runtime().filter(|r| *r != 0) {
        write(&dir.join("cpu.rt_runtime_us"), &r.to_string())?;
    }
    Ok(())
}

/// Block I/O: `blkio.weight` (or `blkio.bfq.weight` on kernels with only BFQ), per-device weights,
/// `blkio.leaf_weight*` where CFQ still exists, and the `blkio.throttle.*` limits.
pub(crate) fn blkio(dir: &Path, b: &LinuxBlockIo) -> Result<()> {
    let pick = |plain: &str, bfq: &str| {
        let p = dir.join(plain);
        if !p.exists() && dir.join(bfq).exists() { dir.join(bfq) } else { p }
    };
    if let Some(w) = b.weight() {
        write(&pick("blkio.weight", "blkio.bfq.weight"), &w.to_string())?;
    }
    if let Some(w) = b.leaf_weight() {
        leaf_weight(&dir.join("blkio.leaf_weight"), &w.to_string())?;
    }
    for wd in b.weight_device().iter().flatten() {
        if let Some(w) = wd.weight() {
            let file = pick("blkio.weight_device", "blkio.bfq.weight_device");
            write(&file, &format!("{}:{} {w}", wd.major(), wd.minor()))?;
        }
        if let Some(w) = wd.leaf_weight() {
            leaf_weight(&dir.join("blkio.leaf_weight_device"), &format!("{}:{} {w}", wd.major(), wd.minor()))?;
        }
    }
    let throttles = [
        ("blkio.throttle.read_bps_device", b.throttle_read_bps_device()),
        ("blkio.throttle.write_bps_device", b.throttle_write_bps_device()),
        ("blkio.throttle.read_iops_device", b.throttle_read_iops_device()),
        ("blkio.throttle.write_iops_device", b.throttle_write_iops_device()),
    ];
    for (name, list) in throttles {
        for t in list.iter().flatten() {
            write(&dir.join(name), &format!("{}:{} {}", t.major(), t.minor(), t.rate()))?;
        }
    }
    Ok(())
}

fn leaf_weight(file: &Path, value: &str) -> Result<()> {
    if file.exists() {
        write(file, value)
    } else {
        tracing::debug!(file = %file.display(), "cgroups: no CFQ leaf weights on this kernel, ignoring leafWeight");
        Ok(())
    }
}

/// Huge page limits: `hugetlb.<size>.limit_in_bytes`, and `hugetlb.<size>.rsvd.limit_in_bytes` where the
/// kernel has reservation accounting (the OCI spec asks for reservation limits when supported).
pub(crate) fn hugetlb(dir: &Path, page_size: &str, limit: i64) -> Result<()> {
    let size = hugetlb_page_size(page_size)?;
    let value = if limit < 0 { "-1".to_string() } else { limit.to_string() };
    write(&dir.join(format!("hugetlb.{size}.limit_in_bytes")), &value)?;
    let rsvd = dir.join(format!("hugetlb.{size}.rsvd.limit_in_bytes"));
    if rsvd.exists() {
        write(&rsvd, &value)?;
    }
    Ok(())
}

/// The device allow/deny list, written rule by rule to `devices.allow` / `devices.deny` in order.
///
/// Rules are applied in order, as the OCI spec asks; an update therefore replays the whole list (a
/// leading "deny all" briefly denies everything until the allows follow).
pub(crate) fn devices(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    let (allow_path, deny_path) = (dir.join("devices.allow"), dir.join("devices.deny"));
    let (mut allow, mut deny) = (OpenFile::new(&allow_path), OpenFile::new(&deny_path));
    for rule in rules {
        let Some(line) = device_rule(rule)? else { continue };
        if rule.allow() { allow.write(&line)? } else { deny.write(&line)? }
    }
    Ok(())
}

/// `type major:minor access`, or `None` for rule types the device controller does not know (FIFOs).
pub(crate) fn device_rule(rule: &LinuxDeviceCgroup) -> Result<Option<String>> {
    let typ = match rule.typ().unwrap_or_default() {
        LinuxDeviceType::A => "a",
        LinuxDeviceType::B => "b",
        LinuxDeviceType::C | LinuxDeviceType::U => "c",
        LinuxDeviceType::P => return Ok(None),
    };
    let num = |n: Option<i64>| n.filter(|n| *n >= 0).map_or_else(|| "*".to_string(), |n| n.to_string());
    let access = rule.access().as_deref().filter(|a| !a.is_empty()).unwrap_or("rwm");
    if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(CgroupError::InvalidValue {
            what: "device access".into(),
            value: access.into(),
            reason: "only r, w and m are allowed".into(),
        });
    }
    Ok(Some(format!("{typ} {}:{} {access}", num(rule.major()), num(rule.minor()))))
}

/// `net_cls.classid`.
pub(crate) fn net_cls(dir: &Path, n: &LinuxNetwork) -> Result<()> {
    if let Some(id) = n.class_id() {
        write(&dir.join("net_cls.classid"), &id.to_string())?;
    }
    Ok(())
}

/// `net_prio.ifpriomap`, one write per interface.
pub(crate) fn net_prio(dir: &Path, n: &LinuxNetwork) -> Result<()> {
    for p in n.priorities().iter().flatten() {
        write(&dir.join("net_prio.ifpriomap"), &format!("{} {}", p.name(), p.priority()))?;
    }
    Ok(())
}

/// How long [`freeze`] and [`thaw`] wait for the state to settle.
pub(crate) const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes `FROZEN` to `freezer.state` and waits until it reads `FROZEN` (it reads `FREEZING` while
/// tasks are still running). Like runc, the write is repeated while waiting, as a task forking during
/// the freeze can leave the cgroup stuck in `FREEZING`. On timeout the cgroup is thawed again.
pub(crate) fn freeze(dir: &Path) -> Result<()> {
    let file = dir.join("freezer.state");
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    let mut i = 0u32;
    loop {
        if i.is_multiple_of(50) {
            write(&file, "FROZEN")?;
        }
        if files::read(&file)?.trim() == "FROZEN" {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = write(&file, "THAWED");
            return Err(CgroupError::Timeout { what: "FROZEN", path: file, timeout: FREEZE_TIMEOUT });
        }
        i += 1;
        sleep(Duration::from_millis(1));
    }
}

/// Writes `THAWED` to `freezer.state` and waits until it reads `THAWED`.
pub(crate) fn thaw(dir: &Path) -> Result<()> {
    let file = dir.join("freezer.state");
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    loop {
        write(&file, "THAWED")?;
        if files::read(&file)?.trim() == "THAWED" {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::Timeout { what: "THAWED", path: file, timeout: FREEZE_TIMEOUT });
        }
        sleep(Duration::from_millis(1));
    }
}

/// Whether `freezer.state` reads `FROZEN` (a `FREEZING` cgroup is not frozen yet).
pub(crate) fn is_frozen(dir: &Path) -> Result<bool> {
    Ok(files::read(&dir.join("freezer.state"))?.trim() == "FROZEN")
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    #[test]
    fn device_rules() {
        let all = LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().unwrap();
        assert_eq!(device_rule(&all).unwrap().unwrap(), "a *:* rwm");
        let null = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(1)
            .minor(3)
            .access("rw")
            .build()
            .unwrap();
        assert_eq!(device_rule(&null).unwrap().unwrap(), "c 1:3 rw");
        let no_access =
            LinuxDeviceCgroupBuilder::default().allow(true).typ(LinuxDeviceType::B).major(8).build().unwrap();
        assert_eq!(device_rule(&no_access).unwrap().unwrap(), "b 8:* rwm");
        let fifo = LinuxDeviceCgroupBuilder::default().allow(true).typ(LinuxDeviceType::P).build().unwrap();
        assert_eq!(device_rule(&fifo).unwrap(), None);
        let bad = LinuxDeviceCgroupBuilder::default().allow(true).access("rwx").build().unwrap();
        assert!(device_rule(&bad).unwrap_err().to_string().contains("\"rwx\""));
    }
}
