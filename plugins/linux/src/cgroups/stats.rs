//! Resource usage of a cgroup ([`Cgroup::stats`]), read from whichever hierarchy holds each controller.
//!
//! Accounting is best effort: a controller or file the kernel does not offer leaves its fields at zero /
//! `None`; a file that exists but cannot be read or parsed is an error.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{CgroupError, Result};
use super::files::{self, flat_keyed_get, parse_flat_keyed, read_opt, read_u64_opt};
use super::{Cgroup, Loc};

/// Usage of one cgroup.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    pub memory: MemoryStats,
    pub cpu: CpuStats,
    pub pids: PidsStats,
    /// Per block device I/O (v1 blkio, v2 io.stat).
    pub blkio: Vec<BlkioEntry>,
    /// Per huge page size.
    pub hugetlb: Vec<HugetlbStats>,
}

/// Memory usage. Limits are `None` when unlimited.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryStats {
    /// Bytes charged now: v1 `memory.usage_in_bytes`, v2 `memory.current`.
    pub usage: u64,
    /// Peak usage: v1 `memory.max_usage_in_bytes`, v2 `memory.peak` (0 where the kernel lacks it).
    pub max_usage: u64,
    /// v1 `memory.limit_in_bytes`, v2 `memory.max`.
    pub limit: Option<u64>,
    /// Times the limit was hit: v1 `memory.failcnt`, v2 `max` in `memory.events`.
    pub failcnt: u64,
    /// Page cache: v1 `total_cache`, v2 `file` from `memory.stat`.
    pub cache: u64,
    /// Anonymous memory: v1 `total_rss`, v2 `anon` from `memory.stat`.
    pub rss: u64,
    /// Swap in use: v1 `memory.memsw.usage_in_bytes` - usage, v2 `memory.swap.current`.
    pub swap_usage: u64,
    /// Swap-only limit: v1 memsw limit - memory limit, v2 `memory.swap.max`; `None` when unlimited or
    /// when swap is not accounted.
    pub swap_limit: Option<u64>,
    /// OOM kills in the cgroup: `oom_kill` of v1 `memory.oom_control` / v2 `memory.events`.
    pub oom_kills: u64,
    /// Every counter of `memory.stat`, as the kernel names it.
    pub raw: BTreeMap<String, u64>,
}

/// CPU usage, in nanoseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuStats {
    pub usage_total_ns: u64,
    pub usage_user_ns: u64,
    pub usage_kernel_ns: u64,
    /// Per CPU usage (v1 `cpuacct.usage_percpu`; empty on v2).
    pub per_cpu_ns: Vec<u64>,
    /// CFS bandwidth periods elapsed, periods throttled, and total time throttled.
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_time_ns: u64,
}

/// Process count.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PidsStats {
    /// `pids.current`.
    pub current: u64,
    /// `pids.max`, `None` for `max`.
    pub limit: Option<u64>,
}

/// I/O on one block device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlkioEntry {
    pub major: u64,
    pub minor: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

/// Huge page usage for one page size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HugetlbStats {
    /// E.g. `2MB`.
    pub page_size: String,
    pub usage: u64,
    /// Peak usage (v1 only; 0 on v2).
    pub max_usage: u64,
    pub limit: Option<u64>,
    /// Allocations that failed on the limit: v1 `failcnt`, v2 `max` in `hugetlb.<size>.events`.
    pub failcnt: u64,
}

/// v1 prints "unlimited" as a huge page-aligned number (0x7FFFFFFFFFFFF000), v2 as `max` (read as u64::MAX).
fn limit_opt(v: Option<u64>) -> Option<u64> {
    v.filter(|v| *v < 1 << 62)
}

impl Cgroup {
    /// Reads memory, CPU, pids, block I/O and huge page usage.
    pub fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        match self.locate("memory") {
            Some(Loc::V1(d)) => s.memory = memory_v1(d)?,
            Some(Loc::V2(d)) => s.memory = memory_v2(d)?,
            None => {}
        }
        match self.locate("cpuacct") {
            Some(Loc::V1(d)) => cpuacct_v1(d, &mut s.cpu)?,
            _ => {
                if let Some(d) = &self.unified {
                    cpu_stat_v2(d, &mut s.cpu)?;
                }
            }
        }
        match self.locate("cpu") {
            Some(Loc::V1(d)) => {
                if let Some(text) = read_opt(&d.join("cpu.stat"))? {
                    s.cpu.nr_periods = flat_keyed_get(&text, "nr_periods").unwrap_or(0);
                    s.cpu.nr_throttled = flat_keyed_get(&text, "nr_throttled").unwrap_or(0);
                    s.cpu.throttled_time_ns = flat_keyed_get(&text, "throttled_time").unwrap_or(0);
                }
            }
            Some(Loc::V2(d)) => cpu_stat_v2(d, &mut s.cpu)?,
            None => {}
        }
        if let Some(Loc::V1(d) | Loc::V2(d)) = self.locate("pids") {
            s.pids.current = read_u64_opt(&d.join("pids.current"))?.unwrap_or(0);
            s.pids.limit = limit_opt(read_u64_opt(&d.join("pids.max"))?);
        }
        match self.locate("blkio").or_else(|| self.locate("io")) {
            Some(Loc::V1(d)) => s.blkio = blkio_v1(d)?,
            Some(Loc::V2(d)) => s.blkio = io_v2(d)?,
            None => {}
        }
        match self.locate("hugetlb") {
            Some(Loc::V1(d)) => s.hugetlb = hugetlb(d, false)?,
            Some(Loc::V2(d)) => s.hugetlb = hugetlb(d, true)?,
            None => {}
        }
        Ok(s)
    }
}

fn raw_stat(dir: &Path) -> Result<BTreeMap<String, u64>> {
    let text = read_opt(&dir.join("memory.stat"))?.unwrap_or_default();
    Ok(parse_flat_keyed(&text).into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn memory_v1(d: &Path) -> Result<MemoryStats> {
    let raw = raw_stat(d)?;
    let usage = read_u64_opt(&d.join("memory.usage_in_bytes"))?.unwrap_or(0);
    let limit = limit_opt(read_u64_opt(&d.join("memory.limit_in_bytes"))?);
    let memsw_usage = read_u64_opt(&d.join("memory.memsw.usage_in_bytes"))?;
    let memsw_limit = limit_opt(read_u64_opt(&d.join("memory.memsw.limit_in_bytes"))?);
    let oom_control = read_opt(&d.join("memory.oom_control"))?.unwrap_or_default();
    Ok(MemoryStats {
        usage,
        max_usage: read_u64_opt(&d.join("memory.max_usage_in_bytes"))?.unwrap_or(0),
        limit,
        failcnt: read_u64_opt(&d.join("memory.failcnt"))?.unwrap_or(0),
        cache: raw.get("total_cache").or(raw.get("cache")).copied().unwrap_or(0),
        rss: raw.get("total_rss").or(raw.get("rss")).copied().unwrap_or(0),
        swap_usage: memsw_usage.map_or(0, |m| m.saturating_sub(usage)),
        swap_limit: match (memsw_limit, limit) {
            (Some(m), Some(l)) => Some(m.saturating_sub(l)),
            (Some(m), None) => Some(m),
            _ => None,
        },
        oom_kills: flat_keyed_get(&oom_control, "oom_kill").unwrap_or(0),
        raw,
    })
}

fn memory_v2(d: &Path) -> Result<MemoryStats> {
    let raw = raw_stat(d)?;
    let events = read_opt(&d.join("memory.events"))?.unwrap_or_default();
    Ok(MemoryStats {
        usage: read_u64_opt(&d.join("memory.current"))?.unwrap_or(0),
        max_usage: read_u64_opt(&d.join("memory.peak"))?.unwrap_or(0),
        limit: limit_opt(read_u64_opt(&d.join("memory.max"))?),
        failcnt: flat_keyed_get(&events, "max").unwrap_or(0),
        cache: raw.get("file").copied().unwrap_or(0),
        rss: raw.get("anon").copied().unwrap_or(0),
        swap_usage: read_u64_opt(&d.join("memory.swap.current"))?.unwrap_or(0),
        swap_limit: limit_opt(read_u64_opt(&d.join("memory.swap.max"))?),
        oom_kills: flat_keyed_get(&events, "oom_kill").unwrap_or(0),
        raw,
    })
}

fn cpuacct_v1(d: &Path, cpu: &mut CpuStats) -> Result<()> {
    cpu.usage_total_ns = read_u64_opt(&d.join("cpuacct.usage"))?.unwrap_or(0);
    match (read_u64_opt(&d.join("cpuacct.usage_user"))?, read_u64_opt(&d.join("cpuacct.usage_sys"))?) {
        (Some(user), Some(sys)) => (cpu.usage_user_ns, cpu.usage_kernel_ns) = (user, sys),
        _ => {
            // Older kernels: cpuacct.stat in USER_HZ ticks.
            let text = read_opt(&d.join("cpuacct.stat"))?.unwrap_or_default();
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
            let ns = |ticks: u64| ticks.saturating_mul(1_000_000_000 / hz);
            cpu.usage_user_ns = ns(flat_keyed_get(&text, "user").unwrap_or(0));
            cpu.usage_kernel_ns = ns(flat_keyed_get(&text, "system").unwrap_or(0));
        }
    }
    let file = d.join("cpuacct.usage_percpu");
    if let Some(text) = read_opt(&file)? {
        cpu.per_cpu_ns = text.split_whitespace().map(|v| files::parse_u64(&file, v)).collect::<Result<_>>()?;
    }
    Ok(())
}

/// v2 `cpu.stat` (microseconds): usage always, throttling when the cpu controller is enabled.
fn cpu_stat_v2(d: &Path, cpu: &mut CpuStats) -> Result<()> {
    let Some(text) = read_opt(&d.join("cpu.stat"))? else { return Ok(()) };
    let us = |key| flat_keyed_get(&text, key).map(|v| v.saturating_mul(1000));
    if let Some(v) = us("usage_usec") {
        cpu.usage_total_ns = v;
        cpu.usage_user_ns = us("user_usec").unwrap_or(0);
        cpu.usage_kernel_ns = us("system_usec").unwrap_or(0);
    }
    if let Some(p) = flat_keyed_get(&text, "nr_periods") {
        cpu.nr_periods = p;
        cpu.nr_throttled = flat_keyed_get(&text, "nr_throttled").unwrap_or(0);
        cpu.throttled_time_ns = us("throttled_usec").unwrap_or(0);
    }
    Ok(())
}

fn entry<'a>(list: &'a mut Vec<BlkioEntry>, dev: &str, path: &Path) -> Result<&'a mut BlkioEntry> {
    let bad = || CgroupError::Parse { path: path.to_path_buf(), reason: format!("bad device {dev:?}") };
    let (major, minor) = dev.split_once(':').ok_or_else(bad)?;
    let (major, minor) = (major.parse().map_err(|_| bad())?, minor.parse().map_err(|_| bad())?);
    let i = match list.iter().position(|e| e.major == major && e.minor == minor) {
        Some(i) => i,
        None => {
            list.push(BlkioEntry { major, minor, ..Default::default() });
            list.len() - 1
        }
    };
    Ok(&mut list[i])
}

/// v1: `<maj:min> Read|Write|... <n>` lines of the throttle (or CFQ/BFQ) recursive service files.
fn blkio_v1(d: &Path) -> Result<Vec<BlkioEntry>> {
    let mut out = Vec::new();
    for (bytes, candidates) in [
        (
            true,
            [
                "blkio.throttle.io_service_bytes_recursive",
                "blkio.io_service_bytes_recursive",
                "blkio.bfq.io_service_bytes_recursive",
            ],
        ),
        (
            false,
            ["blkio.throttle.io_serviced_recursive", "blkio.io_serviced_recursive", "blkio.bfq.io_serviced_recursive"],
        ),
    ] {
        let Some(file) = candidates.iter().map(|c| d.join(c)).find(|p| p.exists()) else { continue };
        let text = files::read(&file)?;
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [dev, op, value] = f[..] else { continue };
            let Ok(value) = value.parse::<u64>() else { continue };
            let e = entry(&mut out, dev, &file)?;
            match (bytes, op) {
                (true, "Read") => e.read_bytes = value,
                (true, "Write") => e.write_bytes = value,
                (false, "Read") => e.read_ops = value,
                (false, "Write") => e.write_ops = value,
                _ => {}
            }
        }
    }
    Ok(out)
}

/// v2: `io.stat` lines `<maj:min> rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..`.
fn io_v2(d: &Path) -> Result<Vec<BlkioEntry>> {
    let file = d.join("io.stat");
    let Some(text) = read_opt(&file)? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some(dev) = it.next() else { continue };
        let e = entry(&mut out, dev, &file)?;
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else { continue };
            let Ok(v) = v.parse::<u64>() else { continue };
            match k {
                "rbytes" => e.read_bytes = v,
                "wbytes" => e.write_bytes = v,
                "rios" => e.read_ops = v,
                "wios" => e.write_ops = v,
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Page sizes from the `hugetlb.<size>.usage_in_bytes` (v1) / `hugetlb.<size>.current` (v2) file names.
fn hugetlb(d: &Path, v2: bool) -> Result<Vec<HugetlbStats>> {
    let suffix = if v2 { ".current" } else { ".usage_in_bytes" };
    let entries = match fs::read_dir(d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(CgroupError::Read { path: d.to_path_buf(), err }),
    };
    let mut sizes: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let size = name.strip_prefix("hugetlb.")?.strip_suffix(suffix)?;
            (!size.contains('.')).then(|| size.to_string())
        })
        .collect();
    sizes.sort();
    sizes
        .into_iter()
        .map(|size| {
            let f = |name: &str| d.join(format!("hugetlb.{size}.{name}"));
            Ok(if v2 {
                let events = read_opt(&f("events"))?.unwrap_or_default();
                HugetlbStats {
                    usage: read_u64_opt(&f("current"))?.unwrap_or(0),
                    max_usage: 0,
                    limit: limit_opt(read_u64_opt(&f("max"))?),
                    failcnt: flat_keyed_get(&events, "max").unwrap_or(0),
                    page_size: size,
                }
            } else {
                HugetlbStats {
                    usage: read_u64_opt(&f("usage_in_bytes"))?.unwrap_or(0),
                    max_usage: read_u64_opt(&f("max_usage_in_bytes"))?.unwrap_or(0),
                    limit: limit_opt(read_u64_opt(&f("limit_in_bytes"))?),
                    failcnt: read_u64_opt(&f("failcnt"))?.unwrap_or(0),
                    page_size: size,
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blkio_and_io_stat() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("blkio.throttle.io_service_bytes_recursive"),
            "254:0 Read 4096\n254:0 Write 8192\n254:0 Total 12288\nTotal 12288\n",
        )
        .unwrap();
        fs::write(dir.path().join("blkio.throttle.io_serviced_recursive"), "254:0 Read 1\n254:0 Write 2\n").unwrap();
        let v1 = blkio_v1(dir.path()).unwrap();
        assert_eq!(
            v1,
            vec![BlkioEntry { major: 254, minor: 0, read_bytes: 4096, write_bytes: 8192, read_ops: 1, write_ops: 2 }]
        );
        fs::write(dir.path().join("io.stat"), "8:16 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n").unwrap();
        let v2 = io_v2(dir.path()).unwrap();
        assert_eq!(
            v2,
            vec![BlkioEntry { major: 8, minor: 16, read_bytes: 1, write_bytes: 2, read_ops: 3, write_ops: 4 }]
        );
    }

    #[test]
    fn parses_hugetlb_files() {
        let dir = tempfile::tempdir().unwrap();
        for (name, value) in [
            ("hugetlb.2MB.current", "4194304"),
            ("hugetlb.2MB.max", "max"),
            ("hugetlb.2MB.events", "max 3\n"),
            ("hugetlb.2MB.rsvd.current", "0"),
        ] {
            fs::write(dir.path().join(name), value).unwrap();
        }
        let h = hugetlb(dir.path(), true).unwrap();
        assert_eq!(
            h,
            vec![HugetlbStats { page_size: "2MB".into(), usage: 4 << 20, max_usage: 0, limit: None, failcnt: 3 }]
        );
    }
}
