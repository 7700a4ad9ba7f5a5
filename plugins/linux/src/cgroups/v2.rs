//! cgroup v2 (pure v2, and the unified hierarchy of hybrid): controller delegation, limit files and the
//! `cgroup.freeze` freezer.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Once;
use std::thread::sleep;
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory};

use super::Mode;
use super::error::{CgroupError, Result};
use super::files::{self, write};
use super::resources::{hugetlb_page_size, nonzero};

/// Controllers listed in a `cgroup.controllers` (or `cgroup.subtree_control`) file; none if it is missing.
pub(crate) fn controllers(file: &Path) -> Result<BTreeSet<String>> {
    Ok(files::read_opt(file)?.map(|t| t.split_whitespace().map(str::to_string).collect()).unwrap_or_default())
}

/// Enables in `dir/cgroup.subtree_control` every controller `dir/cgroup.controllers` offers that is not
/// enabled yet, so that children get them. All at once first; if the kernel refuses (e.g. `cpu` while a
/// realtime task is in the subtree, or processes sit in a non-root `dir`), one by one, warning about those
/// that cannot be enabled. Controllers are only ever added, never removed.
pub(crate) fn enable_subtree(dir: &Path) -> Result<()> {
    let available = controllers(&dir.join("cgroup.controllers"))?;
    let file = dir.join("cgroup.subtree_control");
    let enabled = controllers(&file)?;
    let missing: Vec<&String> = available.difference(&enabled).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let all = missing.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ");
    if write(&file, &all).is_ok() {
        return Ok(());
    }
    for c in missing {
        if let Err(e) = write(&file, &format!("+{c}")) {
            tracing::warn!("cgroups: controller {c} stays unavailable below {}: {e}", dir.display());
        }
    }
    Ok(())
}

fn max_or(v: i64) -> String {
    if v < 0 { "max".to_string() } else { v.to_string() }
}

/// The `memory.swap.max` value for OCI `memory.swap` (memory+swap) and `memory.limit`, as runc computes
/// it: `None` leaves it alone, `-1` means `max`.
pub(crate) fn swap_max(swap: Option<i64>, limit: Option<i64>) -> Result<Option<i64>> {
    let (s, l) = (swap.unwrap_or(0), limit.unwrap_or(0));
    let invalid =
        |reason: String| CgroupError::InvalidValue { what: "memory.swap".into(), value: s.to_string(), reason };
    if l < 0 && s == 0 {
        // unlimited memory with no swap setting: unlimited swap too, as on v1.
        return Ok(Some(-1));
    }
    if s == 0 {
        return Ok(None);
    }
    if s < 0 {
        return Ok(Some(-1));
    }
    if l <= 0 {
        return Err(invalid("a swap limit needs a memory limit on cgroup v2".into()));
    }
    if s < l {
        return Err(invalid(format!("memory+swap must be at least the memory limit {l}")));
    }
    Ok(Some(s - l))
}

/// Memory limits: `memory.max`, `memory.swap.max` (= swap - limit, only when swap accounting exists),
/// `memory.low` for the reservation. swappiness, kernel, kernelTCP and disableOOMKiller have no v2
/// equivalent and are ignored (disableOOMKiller with a warning).
pub(crate) fn memory(dir: &Path, m: &LinuxMemory) -> Result<()> {
    let limit = m.limit().and_then(nonzero).map(|v| v.max(-1));
    if let Some(swap) = swap_max(m.swap().and_then(nonzero), limit)? {
        let file = dir.join("memory.swap.max");
        if file.exists() {
            write(&file, &max_or(swap))?;
        } else {
            tracing::debug!(dir = %dir.display(), "cgroups: no memory.swap.max (swap accounting off), ignoring memory.swap");
        }
    }
    if let Some(l) = limit {
        write(&dir.join("memory.max"), &max_or(l))?;
    }
    if let Some(r) = m.reservation().and_then(nonzero) {
        write(&dir.join("memory.low"), &max_or(r))?;
    }
    if m.swappiness().is_some() || m.kernel().is_some() || m.kernel_tcp().is_some() {
        tracing::debug!("cgroups: memory.swappiness/kernel/kernelTCP have no cgroup v2 equivalent, ignoring them");
    }
    if m.disable_oom_killer() == Some(true) {
        tracing::warn!("cgroups: disableOOMKiller is not supported on cgroup v2, the OOM killer stays enabled");
    }
    Ok(())
}

/// `cpu.weight` from OCI (v1) shares, as runc converts it: `1 + ((shares - 2) * 9999) / 262142`, with
/// shares clamped to v1's range 2..=262144 so the result is within 1..=10000.
pub(crate) fn cpu_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// `io.weight` (1..=10000) from a v1 blkio weight (10..=1000), as runc converts it.
pub(crate) fn io_weight(weight: u16) -> Result<u64> {
    if !(10..=1000).contains(&weight) {
        return Err(CgroupError::InvalidValue {
            what: "blockIO weight".into(),
            value: weight.to_string(),
            reason: "must be between 10 and 1000".into(),
        });
    }
    Ok(1 + (u64::from(weight) - 10) * 9999 / 990)
}

/// CPU: `cpu.weight`, `cpu.max` (`$quota $period`; an unset half keeps its current value), `cpu.max.burst`,
/// `cpu.idle`. Realtime runtime/period do not exist on v2 and are an error.
pub(crate) fn cpu(dir: &Path, c: &LinuxCpu) -> Result<()> {
    if c.realtime_runtime().is_some_and(|r| r != 0) || c.realtime_period().is_some_and(|p| p != 0) {
        return Err(CgroupError::Unsupported { what: "realtime cpu runtime/period".into(), mode: Mode::V2 });
    }
    if let Some(shares) = c.shares().filter(|s| *s != 0) {
        write(&dir.join("cpu.weight"), &cpu_weight(shares).to_string())?;
    }
    let quota = c.quota().and_then(nonzero);
    let period = c.period().filter(|p| *p != 0);
    if quota.is_some() || period.is_some() {
        let file = dir.join("cpu.max");
        let current = files::read(&file)?;
        let mut it = current.split_whitespace();
        let (cur_quota, cur_period) =
            (it.next().unwrap_or("max").to_string(), it.next().unwrap_or("100000").to_string());
        let quota = quota.map_or(cur_quota, max_or);
        let period = period.map_or(cur_period, |p| p.to_string());
        write(&file, &format!("{quota} {period}"))?;
    }
    if let Some(b) = c.burst() {
        write(&dir.join("cpu.max.burst"), &b.to_string())?;
    }
    if let Some(i) = c.idle() {
        write(&dir.join("cpu.idle"), &i.to_string())?;
    }
    Ok(())
}

/// Block I/O: the weight goes to `io.bfq.weight` when BFQ is there (same 10..=1000 scale), else to
/// `io.weight` converted; throttles go to `io.max` as `rbps`/`wbps`/`riops`/`wiops` (0 = `max`).
/// Leaf weights have no v2 equivalent and are ignored.
pub(crate) fn io(dir: &Path, b: &LinuxBlockIo) -> Result<()> {
    let bfq = dir.join("io.bfq.weight");
    let has_bfq = bfq.exists();
    if let Some(w) = b.weight() {
        if has_bfq {
            write(&bfq, &w.to_string())?;
        } else {
            write(&dir.join("io.weight"), &format!("default {}", io_weight(w)?))?;
        }
    }
    for wd in b.weight_device().iter().flatten() {
        if let Some(w) = wd.weight() {
            if has_bfq {
                write(&bfq, &format!("{}:{} {w}", wd.major(), wd.minor()))?;
            } else {
                write(&dir.join("io.weight"), &format!("{}:{} {}", wd.major(), wd.minor(), io_weight(w)?))?;
            }
        }
    }
    if b.leaf_weight().is_some() || b.weight_device().iter().flatten().any(|wd| wd.leaf_weight().is_some()) {
        tracing::debug!("cgroups: blockIO leaf weights have no cgroup v2 equivalent, ignoring them");
    }
    let throttles = [
        ("rbps", b.throttle_read_bps_device()),
        ("wbps", b.throttle_write_bps_device()),
        ("riops", b.throttle_read_iops_device()),
        ("wiops", b.throttle_write_iops_device()),
    ];
    for (key, list) in throttles {
        for t in list.iter().flatten() {
            let rate = if t.rate() == 0 { "max".to_string() } else { t.rate().to_string() };
            write(&dir.join("io.max"), &format!("{}:{} {key}={rate}", t.major(), t.minor()))?;
        }
    }
    Ok(())
}

/// Huge page limits: `hugetlb.<size>.max`, and `hugetlb.<size>.rsvd.max` where reservations are accounted.
pub(crate) fn hugetlb(dir: &Path, page_size: &str, limit: i64) -> Result<()> {
    let size = hugetlb_page_size(page_size)?;
    let value = max_or(limit);
    write(&dir.join(format!("hugetlb.{size}.max")), &value)?;
    let rsvd = dir.join(format!("hugetlb.{size}.rsvd.max"));
    if rsvd.exists() {
        write(&rsvd, &value)?;
    }
    Ok(())
}

static DEVICES_WARNING: Once = Once::new();

/// Device rules on v2 need an eBPF `BPF_CGROUP_DEVICE` program, which berth does not load yet: the rules
/// are NOT enforced. This warns once per process instead of pretending.
pub(crate) fn devices_not_enforced(dir: &Path) {
    DEVICES_WARNING.call_once(|| {
        tracing::warn!(
            "cgroups: device rules are not enforced on cgroup v2 (needs a BPF device program, not implemented); \
             first seen for {}",
            dir.display()
        );
    });
}

/// `linux.resources.unified`: each key is a file in the cgroup directory, written as-is (sorted by key,
/// so the order is stable). Keys must be plain interface file names.
pub(crate) fn unified(dir: &Path, values: &HashMap<String, String>) -> Result<()> {
    let mut keys: Vec<&String> = values.keys().collect();
    keys.sort();
    for key in keys {
        let bad = key.is_empty()
            || key.contains('/')
            || key.starts_with('.')
            || !key.contains('.')
            || matches!(key.as_str(), "cgroup.procs" | "cgroup.threads" | "cgroup.kill" | "cgroup.subtree_control");
        if bad {
            return Err(CgroupError::InvalidValue {
                what: "unified key".into(),
                value: key.clone(),
                reason: "must name a resource interface file of the cgroup".into(),
            });
        }
        write(&dir.join(key), &values[key])?;
    }
    Ok(())
}

/// How long [`freeze`] and [`thaw`] wait for `cgroup.events` to report the new state.
pub(crate) const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

fn set_frozen(dir: &Path, frozen: bool) -> Result<()> {
    write(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
    let events = dir.join("cgroup.events");
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    loop {
        if is_frozen(dir)? == frozen {
            return Ok(());
        }
        if Instant::now() >= deadline {
            if frozen {
                let _ = write(&dir.join("cgroup.freeze"), "0");
            }
            let what = if frozen { "frozen 1" } else { "frozen 0" };
            return Err(CgroupError::Timeout { what, path: events, timeout: FREEZE_TIMEOUT });
        }
        sleep(Duration::from_millis(1));
    }
}

/// Writes 1 to `cgroup.freeze` and waits until `cgroup.events` says `frozen 1`.
pub(crate) fn freeze(dir: &Path) -> Result<()> {
    set_frozen(dir, true)
}

/// Writes 0 to `cgroup.freeze` and waits until `cgroup.events` says `frozen 0`.
pub(crate) fn thaw(dir: &Path) -> Result<()> {
    set_frozen(dir, false)
}

/// `frozen 1` in `cgroup.events`.
pub(crate) fn is_frozen(dir: &Path) -> Result<bool> {
    Ok(files::flat_keyed_get(&files::read(&dir.join("cgroup.events"))?, "frozen") == Some(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_weight_matches_runc() {
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(262_144), 10_000);
        assert_eq!(cpu_weight(1), 1);
        assert_eq!(cpu_weight(1 << 40), 10_000);
    }

    #[test]
    fn io_weight_range() {
        assert_eq!(io_weight(10).unwrap(), 1);
        assert_eq!(io_weight(1000).unwrap(), 10_000);
        assert!(io_weight(5).is_err());
    }

    #[test]
    fn swap_conversion() {
        assert_eq!(swap_max(None, Some(100)).unwrap(), None);
        assert_eq!(swap_max(Some(300), Some(100)).unwrap(), Some(200));
        assert_eq!(swap_max(Some(100), Some(100)).unwrap(), Some(0));
        assert_eq!(swap_max(Some(-1), Some(100)).unwrap(), Some(-1));
        assert_eq!(swap_max(None, Some(-1)).unwrap(), Some(-1));
        assert!(swap_max(Some(50), Some(100)).is_err());
        assert!(swap_max(Some(50), None).is_err());
    }
}
