//! A task's cgroup [`Stats`] as the `data` of a `containerd.types.Metric`: the message containerd's shims
//! send, so `ctr tasks metrics` and other containerd clients decode it.
//!
//! containerd picks the message by the host, not by the controller: `io.containerd.cgroups.v2.Metrics` on
//! pure cgroup v2 hosts, `io.containerd.cgroups.v1.Metrics` on v1 and hybrid ones (which berth, like runc,
//! manages as v1). The type URLs are the bare message names, without a `type.googleapis.com/` prefix: that is
//! how containerd's typeurl registers the cgroups messages, and the name it looks them up by.
//!
//! Figures berth does not read (kmem, rdma, network, memory.events `low`/`high`/`oom`, ...) are left at zero.

use berth_proto::io::containerd::cgroups::{v1, v2};
use prost::Message;
use prost_types::Any;

use crate::cgroups::{Mode, Stats};

/// The type URL of cgroup v1 metrics.
pub const V1_METRICS_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";
/// The type URL of cgroup v2 metrics.
pub const V2_METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// What cgroup v1 prints for an unlimited memory limit (`PAGE_COUNTER_MAX` pages of 4 KiB); containerd
/// passes the file's number through, so clients expect this rather than 0.
const V1_UNLIMITED_BYTES: u64 = 0x7FFF_FFFF_FFFF_F000;

/// What containerd sends for `max` on cgroup v2.
const V2_UNLIMITED: u64 = u64::MAX;

/// `stats` as the metrics message for a host in `mode`, packed in an `Any`.
pub fn to_any(stats: &Stats, mode: Mode) -> Any {
    match mode {
        Mode::V2 => Any { type_url: V2_METRICS_TYPE_URL.to_string(), value: to_v2(stats).encode_to_vec() },
        Mode::V1 | Mode::Hybrid => {
            Any { type_url: V1_METRICS_TYPE_URL.to_string(), value: to_v1(stats).encode_to_vec() }
        }
    }
}

/// The cgroup v1 message. Memory counters come from `memory.stat` as the kernel names them.
pub fn to_v1(s: &Stats) -> v1::Metrics {
    let m = &s.memory;
    let raw = |key: &str| m.raw.get(key).copied().unwrap_or(0);
    // Reapers older than the raw map still sent the totals.
    let total_or = |key: &str, fallback: u64| m.raw.get(key).copied().unwrap_or(fallback);
    let mem_limit = m.limit.unwrap_or(V1_UNLIMITED_BYTES);
    // The v1 `swap` entry is the memsw files (memory + swap). memory.stat lists `swap` only when swap is
    // accounted, i.e. when those files exist; otherwise the entry stays empty, as containerd leaves it.
    let swap = (m.raw.contains_key("swap") || m.raw.contains_key("total_swap")).then(|| v1::MemoryEntry {
        limit: match (m.swap_limit, m.limit) {
            (Some(swap), Some(limit)) => swap.saturating_add(limit),
            (Some(swap), None) => swap,
            (None, _) => V1_UNLIMITED_BYTES,
        },
        usage: m.usage.saturating_add(m.swap_usage),
        max: 0,
        failcnt: 0,
    });
    let entries = |pick: fn(&crate::cgroups::BlkioEntry) -> (u64, u64)| {
        s.blkio
            .iter()
            .flat_map(|e| {
                let (read, write) = pick(e);
                [("Read", read), ("Write", write)].map(|(op, value)| v1::BlkIoEntry {
                    op: op.to_string(),
                    device: String::new(),
                    major: e.major,
                    minor: e.minor,
                    value,
                })
            })
            .collect::<Vec<_>>()
    };
    v1::Metrics {
        hugetlb: s
            .hugetlb
            .iter()
            .map(|h| v1::HugetlbStat {
                usage: h.usage,
                max: h.max_usage,
                failcnt: h.failcnt,
                pagesize: h.page_size.clone(),
            })
            .collect(),
        // containerd's v1 reader turns `max` into 0.
        pids: Some(v1::PidsStat { current: s.pids.current, limit: s.pids.limit.unwrap_or(0) }),
        cpu: Some(v1::CpuStat {
            usage: Some(v1::CpuUsage {
                total: s.cpu.usage_total_ns,
                kernel: s.cpu.usage_kernel_ns,
                user: s.cpu.usage_user_ns,
                per_cpu: s.cpu.per_cpu_ns.clone(),
            }),
            throttling: Some(v1::Throttle {
                periods: s.cpu.nr_periods,
                throttled_periods: s.cpu.nr_throttled,
                throttled_time: s.cpu.throttled_time_ns,
            }),
        }),
        memory: Some(v1::MemoryStat {
            cache: raw("cache"),
            rss: raw("rss"),
            rss_huge: raw("rss_huge"),
            mapped_file: raw("mapped_file"),
            dirty: raw("dirty"),
            writeback: raw("writeback"),
            pg_pg_in: raw("pgpgin"),
            pg_pg_out: raw("pgpgout"),
            pg_fault: raw("pgfault"),
            pg_maj_fault: raw("pgmajfault"),
            inactive_anon: raw("inactive_anon"),
            active_anon: raw("active_anon"),
            inactive_file: raw("inactive_file"),
            active_file: raw("active_file"),
            unevictable: raw("unevictable"),
            hierarchical_memory_limit: raw("hierarchical_memory_limit"),
            hierarchical_swap_limit: raw("hierarchical_memsw_limit"),
            total_cache: total_or("total_cache", m.cache),
            total_rss: total_or("total_rss", m.rss),
            total_rss_huge: raw("total_rss_huge"),
            total_mapped_file: raw("total_mapped_file"),
            total_dirty: raw("total_dirty"),
            total_writeback: raw("total_writeback"),
            total_pg_pg_in: raw("total_pgpgin"),
            total_pg_pg_out: raw("total_pgpgout"),
            total_pg_fault: raw("total_pgfault"),
            total_pg_maj_fault: raw("total_pgmajfault"),
            total_inactive_anon: raw("total_inactive_anon"),
            total_active_anon: raw("total_active_anon"),
            total_inactive_file: raw("total_inactive_file"),
            total_active_file: raw("total_active_file"),
            total_unevictable: raw("total_unevictable"),
            usage: Some(v1::MemoryEntry { limit: mem_limit, usage: m.usage, max: m.max_usage, failcnt: m.failcnt }),
            swap,
            kernel: None,
            kernel_tcp: None,
        }),
        blkio: Some(v1::BlkIoStat {
            io_service_bytes_recursive: entries(|e| (e.read_bytes, e.write_bytes)),
            io_serviced_recursive: entries(|e| (e.read_ops, e.write_ops)),
            ..Default::default()
        }),
        rdma: None,
        network: Vec::new(),
        cgroup_stats: None,
        memory_oom_control: Some(v1::MemoryOomControl { oom_kill_disable: 0, under_oom: 0, oom_kill: m.oom_kills }),
    }
}

/// The cgroup v2 message: CPU in microseconds, unlimited limits as 2^64-1, as containerd reads them.
pub fn to_v2(s: &Stats) -> v2::Metrics {
    let m = &s.memory;
    let raw = |key: &str| m.raw.get(key).copied().unwrap_or(0);
    let us = |ns: u64| ns / 1000;
    v2::Metrics {
        pids: Some(v2::PidsStat { current: s.pids.current, limit: s.pids.limit.unwrap_or(V2_UNLIMITED) }),
        cpu: Some(v2::CpuStat {
            usage_usec: us(s.cpu.usage_total_ns),
            user_usec: us(s.cpu.usage_user_ns),
            system_usec: us(s.cpu.usage_kernel_ns),
            nr_periods: s.cpu.nr_periods,
            nr_throttled: s.cpu.nr_throttled,
            throttled_usec: us(s.cpu.throttled_time_ns),
        }),
        memory: Some(v2::MemoryStat {
            anon: m.raw.get("anon").copied().unwrap_or(m.rss),
            file: m.raw.get("file").copied().unwrap_or(m.cache),
            kernel_stack: raw("kernel_stack"),
            slab: raw("slab"),
            sock: raw("sock"),
            shmem: raw("shmem"),
            file_mapped: raw("file_mapped"),
            file_dirty: raw("file_dirty"),
            file_writeback: raw("file_writeback"),
            anon_thp: raw("anon_thp"),
            inactive_anon: raw("inactive_anon"),
            active_anon: raw("active_anon"),
            inactive_file: raw("inactive_file"),
            active_file: raw("active_file"),
            unevictable: raw("unevictable"),
            slab_reclaimable: raw("slab_reclaimable"),
            slab_unreclaimable: raw("slab_unreclaimable"),
            pgfault: raw("pgfault"),
            pgmajfault: raw("pgmajfault"),
            workingset_refault: raw("workingset_refault"),
            workingset_activate: raw("workingset_activate"),
            workingset_nodereclaim: raw("workingset_nodereclaim"),
            pgrefill: raw("pgrefill"),
            pgscan: raw("pgscan"),
            pgsteal: raw("pgsteal"),
            pgactivate: raw("pgactivate"),
            pgdeactivate: raw("pgdeactivate"),
            pglazyfree: raw("pglazyfree"),
            pglazyfreed: raw("pglazyfreed"),
            thp_fault_alloc: raw("thp_fault_alloc"),
            thp_collapse_alloc: raw("thp_collapse_alloc"),
            usage: m.usage,
            usage_limit: m.limit.unwrap_or(V2_UNLIMITED),
            swap_usage: m.swap_usage,
            swap_limit: m.swap_limit.unwrap_or(V2_UNLIMITED),
            max_usage: m.max_usage,
            swap_max_usage: 0,
        }),
        rdma: None,
        io: Some(v2::IoStat {
            usage: s
                .blkio
                .iter()
                .map(|e| v2::IoEntry {
                    major: e.major,
                    minor: e.minor,
                    rbytes: e.read_bytes,
                    wbytes: e.write_bytes,
                    rios: e.read_ops,
                    wios: e.write_ops,
                })
                .collect(),
        }),
        hugetlb: s
            .hugetlb
            .iter()
            .map(|h| v2::HugeTlbStat {
                current: h.usage,
                max: h.limit.unwrap_or(V2_UNLIMITED),
                pagesize: h.page_size.clone(),
            })
            .collect(),
        memory_events: Some(v2::MemoryEvents { low: 0, high: 0, max: m.failcnt, oom: 0, oom_kill: m.oom_kills }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::{BlkioEntry, CpuStats, HugetlbStats, MemoryStats, PidsStats};

    fn stats(raw: &[(&str, u64)]) -> Stats {
        Stats {
            memory: MemoryStats {
                usage: 10 << 20,
                max_usage: 12 << 20,
                limit: Some(64 << 20),
                failcnt: 2,
                cache: 3 << 20,
                rss: 5 << 20,
                swap_usage: 1 << 20,
                swap_limit: Some(32 << 20),
                oom_kills: 1,
                raw: raw.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            },
            cpu: CpuStats {
                usage_total_ns: 3_000_500,
                usage_user_ns: 2_000_000,
                usage_kernel_ns: 1_000_000,
                per_cpu_ns: vec![1_000_500, 2_000_000],
                nr_periods: 7,
                nr_throttled: 3,
                throttled_time_ns: 9_000,
            },
            pids: PidsStats { current: 4, limit: None },
            blkio: vec![BlkioEntry {
                major: 8,
                minor: 16,
                read_bytes: 4096,
                write_bytes: 8192,
                read_ops: 1,
                write_ops: 2,
            }],
            hugetlb: vec![HugetlbStats {
                page_size: "2MB".into(),
                usage: 2 << 20,
                max_usage: 4 << 20,
                limit: None,
                failcnt: 5,
            }],
        }
    }

    #[test]
    fn converts_v1() {
        let s = stats(&[
            ("cache", 100),
            ("total_cache", 3 << 20),
            ("total_rss", 5 << 20),
            ("pgpgin", 11),
            ("total_pgmajfault", 12),
            ("hierarchical_memsw_limit", 13),
            ("total_inactive_file", 14),
            ("swap", 0),
        ]);
        let m = to_v1(&s);
        let mem = m.memory.unwrap();
        assert_eq!((mem.cache, mem.total_cache, mem.total_rss), (100, 3 << 20, 5 << 20));
        assert_eq!((mem.pg_pg_in, mem.total_pg_maj_fault, mem.hierarchical_swap_limit), (11, 12, 13));
        assert_eq!(mem.total_inactive_file, 14);
        assert_eq!(mem.usage, Some(v1::MemoryEntry { limit: 64 << 20, usage: 10 << 20, max: 12 << 20, failcnt: 2 }));
        assert_eq!(mem.swap, Some(v1::MemoryEntry { limit: 96 << 20, usage: 11 << 20, max: 0, failcnt: 0 }));
        let cpu = m.cpu.unwrap();
        assert_eq!(
            cpu.usage,
            Some(v1::CpuUsage {
                total: 3_000_500,
                kernel: 1_000_000,
                user: 2_000_000,
                per_cpu: vec![1_000_500, 2_000_000]
            })
        );
        assert_eq!(cpu.throttling, Some(v1::Throttle { periods: 7, throttled_periods: 3, throttled_time: 9_000 }));
        assert_eq!(m.pids, Some(v1::PidsStat { current: 4, limit: 0 }));
        let blkio = m.blkio.unwrap();
        let ops: Vec<_> = blkio.io_service_bytes_recursive.iter().map(|e| (e.op.as_str(), e.major, e.value)).collect();
        assert_eq!(ops, [("Read", 8, 4096), ("Write", 8, 8192)]);
        let ops: Vec<_> = blkio.io_serviced_recursive.iter().map(|e| (e.op.as_str(), e.minor, e.value)).collect();
        assert_eq!(ops, [("Read", 16, 1), ("Write", 16, 2)]);
        assert_eq!(m.hugetlb, [v1::HugetlbStat { usage: 2 << 20, max: 4 << 20, failcnt: 5, pagesize: "2MB".into() }]);
        assert_eq!(m.memory_oom_control.unwrap().oom_kill, 1);
    }

    #[test]
    fn v1_unlimited_and_unaccounted_swap() {
        let mut s = stats(&[]);
        s.memory.limit = None;
        let mem = to_v1(&s).memory.unwrap();
        assert_eq!(mem.usage.unwrap().limit, V1_UNLIMITED_BYTES);
        assert_eq!(mem.swap, None, "no memsw files: no swap entry");
        // Without the raw counters the totals still come through.
        assert_eq!((mem.total_cache, mem.total_rss), (3 << 20, 5 << 20));
    }

    #[test]
    fn converts_v2() {
        let s = stats(&[("anon", 5 << 20), ("file", 3 << 20), ("file_dirty", 7), ("pgmajfault", 8), ("slab", 9)]);
        let m = to_v2(&s);
        assert_eq!(m.pids, Some(v2::PidsStat { current: 4, limit: u64::MAX }));
        assert_eq!(
            m.cpu,
            Some(v2::CpuStat {
                usage_usec: 3000,
                user_usec: 2000,
                system_usec: 1000,
                nr_periods: 7,
                nr_throttled: 3,
                throttled_usec: 9,
            })
        );
        let mem = m.memory.unwrap();
        assert_eq!((mem.anon, mem.file, mem.file_dirty, mem.pgmajfault, mem.slab), (5 << 20, 3 << 20, 7, 8, 9));
        assert_eq!((mem.usage, mem.usage_limit, mem.max_usage), (10 << 20, 64 << 20, 12 << 20));
        assert_eq!((mem.swap_usage, mem.swap_limit), (1 << 20, 32 << 20));
        assert_eq!(
            m.io.unwrap().usage,
            [v2::IoEntry { major: 8, minor: 16, rbytes: 4096, wbytes: 8192, rios: 1, wios: 2 }]
        );
        assert_eq!(m.hugetlb, [v2::HugeTlbStat { current: 2 << 20, max: u64::MAX, pagesize: "2MB".into() }]);
        assert_eq!(m.memory_events, Some(v2::MemoryEvents { low: 0, high: 0, max: 2, oom: 0, oom_kill: 1 }));
    }

    #[test]
    fn packs_under_containerd_type_urls() {
        let s = stats(&[("total_cache", 3 << 20)]);
        for mode in [Mode::V1, Mode::Hybrid] {
            let any = to_any(&s, mode);
            assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
            assert_eq!(v1::Metrics::decode(any.value.as_slice()).unwrap(), to_v1(&s));
        }
        let any = to_any(&s, Mode::V2);
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = v2::Metrics::decode(any.value.as_slice()).unwrap();
        assert_eq!(m, to_v2(&s));
        assert_eq!(m.memory.unwrap().usage, 10 << 20);
    }

    #[test]
    fn reads_the_reapers_json() {
        // What the reaper answers to `Request::Stats`.
        let s = stats(&[("total_cache", 3 << 20)]);
        let back: Stats = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(to_v1(&back), to_v1(&s));
        assert_eq!(to_v2(&back), to_v2(&s));
        // A reaper that sends fewer fields still decodes.
        let partial: Stats = serde_json::from_str(r#"{"pids":{"current":2,"limit":10}}"#).unwrap();
        assert_eq!(to_v1(&partial).pids, Some(v1::PidsStat { current: 2, limit: 10 }));
    }
}
