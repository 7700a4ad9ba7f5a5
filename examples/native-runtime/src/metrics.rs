//! A task's resource usage: `runc events --stats ID` (one JSON object, runc's `types.Stats` under `data`)
//! turned into the message containerd's shims send, so `ctr tasks metrics` and other clients decode it.
//!
//! As the built-in runtime (plugins/linux/src/runtime/metrics.rs) does, the message follows the host:
//! `io.containerd.cgroups.v2.Metrics` on a pure cgroup v2 host, `io.containerd.cgroups.v1.Metrics` otherwise.
//! The structs below are the subsets of containerd's `proto/containerd/cgroups/v{1,2}/metrics.proto` this
//! runtime fills, with the same field numbers; what runc does not report stays zero.

use berth_plugin_sdk::proto::{Any, Message};
use serde_json::Value;

/// The cgroup v1 message's type URL (containerd's typeurl registers the bare message name).
pub const V1_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";
/// The cgroup v2 message's type URL.
pub const V2_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// Whether `/sys/fs/cgroup` is the cgroup v2 unified hierarchy.
pub fn host_is_v2() -> bool {
    // SAFETY: statfs(2) into a zeroed struct, with a NUL-terminated path.
    unsafe {
        let mut fs: libc::statfs = std::mem::zeroed();
        libc::statfs(c"/sys/fs/cgroup".as_ptr(), &mut fs) == 0 && fs.f_type == libc::CGROUP2_SUPER_MAGIC
    }
}

/// The metrics in `events` (what `runc events --stats` printed) for a v1 or v2 host.
pub fn from_runc_events(events: &[u8], v2: bool) -> Result<Any, String> {
    let event: Value = serde_json::from_slice(events).map_err(|e| format!("not JSON: {e}"))?;
    let data = event.get("data").filter(|d| d.is_object()).ok_or("no \"data\" object of stats")?;
    Ok(if v2 {
        Any { type_url: V2_TYPE_URL.into(), value: to_v2(data).encode_to_vec() }
    } else {
        Any { type_url: V1_TYPE_URL.into(), value: to_v1(data).encode_to_vec() }
    })
}

/// The number at `path` in `v`, 0 when absent.
fn n(v: &Value, path: &[&str]) -> u64 {
    path.iter().try_fold(v, |v, key| v.get(key)).and_then(Value::as_u64).unwrap_or(0)
}

fn list(v: &Value, path: &[&str]) -> Vec<u64> {
    let found = path.iter().try_fold(v, |v, key| v.get(key)).and_then(Value::as_array);
    found.map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default()
}

/// cgroup v1 messages (`io.containerd.cgroups.v1`).
pub mod v1 {
    /// `Metrics`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metrics {
        #[prost(message, repeated, tag = "1")]
        pub hugetlb: Vec<HugetlbStat>,
        #[prost(message, optional, tag = "2")]
        pub pids: Option<PidsStat>,
        #[prost(message, optional, tag = "3")]
        pub cpu: Option<CpuStat>,
        #[prost(message, optional, tag = "4")]
        pub memory: Option<MemoryStat>,
        #[prost(message, optional, tag = "5")]
        pub blkio: Option<BlkIoStat>,
    }
    /// `HugetlbStat`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HugetlbStat {
        #[prost(uint64, tag = "1")]
        pub usage: u64,
        #[prost(uint64, tag = "2")]
        pub max: u64,
        #[prost(uint64, tag = "3")]
        pub failcnt: u64,
        #[prost(string, tag = "4")]
        pub pagesize: String,
    }
    /// `PidsStat`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PidsStat {
        #[prost(uint64, tag = "1")]
        pub current: u64,
        #[prost(uint64, tag = "2")]
        pub limit: u64,
    }
    /// `CPUStat`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CpuStat {
        #[prost(message, optional, tag = "1")]
        pub usage: Option<CpuUsage>,
        #[prost(message, optional, tag = "2")]
        pub throttling: Option<Throttle>,
    }
    /// `CPUUsage`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CpuUsage {
        #[prost(uint64, tag = "1")]
        pub total: u64,
        #[prost(uint64, tag = "2")]
        pub kernel: u64,
        #[prost(uint64, tag = "3")]
        pub user: u64,
        #[prost(uint64, repeated, tag = "4")]
        pub per_cpu: Vec<u64>,
    }
    /// `Throttle`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Throttle {
        #[prost(uint64, tag = "1")]
        pub periods: u64,
        #[prost(uint64, tag = "2")]
        pub throttled_periods: u64,
        #[prost(uint64, tag = "3")]
        pub throttled_time: u64,
    }
    /// `MemoryStat`, the counters runc passes through from `memory.stat`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryStat {
        #[prost(uint64, tag = "1")]
        pub cache: u64,
        #[prost(uint64, tag = "2")]
        pub rss: u64,
        #[prost(uint64, tag = "3")]
        pub rss_huge: u64,
        #[prost(uint64, tag = "4")]
        pub mapped_file: u64,
        #[prost(uint64, tag = "5")]
        pub dirty: u64,
        #[prost(uint64, tag = "6")]
        pub writeback: u64,
        #[prost(uint64, tag = "9")]
        pub pg_fault: u64,
        #[prost(uint64, tag = "10")]
        pub pg_maj_fault: u64,
        #[prost(uint64, tag = "11")]
        pub inactive_anon: u64,
        #[prost(uint64, tag = "12")]
        pub active_anon: u64,
        #[prost(uint64, tag = "13")]
        pub inactive_file: u64,
        #[prost(uint64, tag = "14")]
        pub active_file: u64,
        #[prost(uint64, tag = "15")]
        pub unevictable: u64,
        #[prost(uint64, tag = "16")]
        pub hierarchical_memory_limit: u64,
        #[prost(uint64, tag = "18")]
        pub total_cache: u64,
        #[prost(uint64, tag = "19")]
        pub total_rss: u64,
        #[prost(message, optional, tag = "33")]
        pub usage: Option<MemoryEntry>,
        #[prost(message, optional, tag = "34")]
        pub swap: Option<MemoryEntry>,
        #[prost(message, optional, tag = "35")]
        pub kernel: Option<MemoryEntry>,
    }
    /// `MemoryEntry`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryEntry {
        #[prost(uint64, tag = "1")]
        pub limit: u64,
        #[prost(uint64, tag = "2")]
        pub usage: u64,
        #[prost(uint64, tag = "3")]
        pub max: u64,
        #[prost(uint64, tag = "4")]
        pub failcnt: u64,
    }
    /// `BlkIOStat`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct BlkIoStat {
        #[prost(message, repeated, tag = "1")]
        pub io_service_bytes_recursive: Vec<BlkIoEntry>,
        #[prost(message, repeated, tag = "2")]
        pub io_serviced_recursive: Vec<BlkIoEntry>,
    }
    /// `BlkIOEntry`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct BlkIoEntry {
        #[prost(string, tag = "1")]
        pub op: String,
        #[prost(string, tag = "2")]
        pub device: String,
        #[prost(uint64, tag = "3")]
        pub major: u64,
        #[prost(uint64, tag = "4")]
        pub minor: u64,
        #[prost(uint64, tag = "5")]
        pub value: u64,
    }
}

/// cgroup v2 messages (`io.containerd.cgroups.v2`).
pub mod v2 {
    /// `Metrics`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metrics {
        #[prost(message, optional, tag = "1")]
        pub pids: Option<PidsStat>,
        #[prost(message, optional, tag = "2")]
        pub cpu: Option<CpuStat>,
        #[prost(message, optional, tag = "4")]
        pub memory: Option<MemoryStat>,
    }
    /// `PidsStat`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PidsStat {
        #[prost(uint64, tag = "1")]
        pub current: u64,
        #[prost(uint64, tag = "2")]
        pub limit: u64,
    }
    /// `CPUStat`, in microseconds.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CpuStat {
        #[prost(uint64, tag = "1")]
        pub usage_usec: u64,
        #[prost(uint64, tag = "2")]
        pub user_usec: u64,
        #[prost(uint64, tag = "3")]
        pub system_usec: u64,
        #[prost(uint64, tag = "4")]
        pub nr_periods: u64,
        #[prost(uint64, tag = "5")]
        pub nr_throttled: u64,
        #[prost(uint64, tag = "6")]
        pub throttled_usec: u64,
    }
    /// `MemoryStat` (part of it).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryStat {
        #[prost(uint64, tag = "1")]
        pub anon: u64,
        #[prost(uint64, tag = "2")]
        pub file: u64,
        #[prost(uint64, tag = "32")]
        pub usage: u64,
        #[prost(uint64, tag = "33")]
        pub usage_limit: u64,
        #[prost(uint64, tag = "34")]
        pub swap_usage: u64,
        #[prost(uint64, tag = "35")]
        pub swap_limit: u64,
        #[prost(uint64, tag = "36")]
        pub max_usage: u64,
    }
}

fn entry(m: &Value, key: &str) -> Option<v1::MemoryEntry> {
    let e = m.get(key)?;
    Some(v1::MemoryEntry {
        limit: n(e, &["limit"]),
        usage: n(e, &["usage"]),
        max: n(e, &["max"]),
        failcnt: n(e, &["failcnt"]),
    })
}

fn to_v1(d: &Value) -> v1::Metrics {
    let m = d.get("memory").cloned().unwrap_or_default();
    let raw = |key: &str| n(&m, &["raw", key]);
    let blkio = |key: &str| {
        let entries = d.get("blkio").and_then(|b| b.get(key)).and_then(Value::as_array);
        entries
            .into_iter()
            .flatten()
            .map(|e| v1::BlkIoEntry {
                op: e.get("op").and_then(Value::as_str).unwrap_or_default().into(),
                device: String::new(),
                major: n(e, &["major"]),
                minor: n(e, &["minor"]),
                value: n(e, &["value"]),
            })
            .collect()
    };
    let hugetlb = d.get("hugetlb").and_then(Value::as_object);
    v1::Metrics {
        hugetlb: hugetlb
            .into_iter()
            .flatten()
            .map(|(size, h)| v1::HugetlbStat {
                usage: n(h, &["usage"]),
                max: n(h, &["max"]),
                failcnt: n(h, &["failcnt"]),
                pagesize: size.clone(),
            })
            .collect(),
        pids: Some(v1::PidsStat { current: n(d, &["pids", "current"]), limit: n(d, &["pids", "limit"]) }),
        cpu: Some(v1::CpuStat {
            usage: Some(v1::CpuUsage {
                total: n(d, &["cpu", "usage", "total"]),
                kernel: n(d, &["cpu", "usage", "kernel"]),
                user: n(d, &["cpu", "usage", "user"]),
                per_cpu: list(d, &["cpu", "usage", "percpu"]),
            }),
            throttling: Some(v1::Throttle {
                periods: n(d, &["cpu", "throttling", "periods"]),
                throttled_periods: n(d, &["cpu", "throttling", "throttledPeriods"]),
                throttled_time: n(d, &["cpu", "throttling", "throttledTime"]),
            }),
        }),
        memory: Some(v1::MemoryStat {
            cache: n(&m, &["cache"]).max(raw("cache")),
            rss: raw("rss"),
            rss_huge: raw("rss_huge"),
            mapped_file: raw("mapped_file"),
            dirty: raw("dirty"),
            writeback: raw("writeback"),
            pg_fault: raw("pgfault"),
            pg_maj_fault: raw("pgmajfault"),
            inactive_anon: raw("inactive_anon"),
            active_anon: raw("active_anon"),
            inactive_file: raw("inactive_file"),
            active_file: raw("active_file"),
            unevictable: raw("unevictable"),
            hierarchical_memory_limit: raw("hierarchical_memory_limit"),
            total_cache: raw("total_cache"),
            total_rss: raw("total_rss"),
            usage: entry(&m, "usage"),
            swap: entry(&m, "swap"),
            kernel: entry(&m, "kernel"),
        }),
        blkio: Some(v1::BlkIoStat {
            io_service_bytes_recursive: blkio("ioServiceBytesRecursive"),
            io_serviced_recursive: blkio("ioServicedRecursive"),
        }),
    }
}

fn to_v2(d: &Value) -> v2::Metrics {
    let m = d.get("memory").cloned().unwrap_or_default();
    let us = |path: &[&str]| n(d, path) / 1000;
    // runc reports `max` as 2^64-1, as containerd does.
    v2::Metrics {
        pids: Some(v2::PidsStat { current: n(d, &["pids", "current"]), limit: n(d, &["pids", "limit"]) }),
        cpu: Some(v2::CpuStat {
            usage_usec: us(&["cpu", "usage", "total"]),
            user_usec: us(&["cpu", "usage", "user"]),
            system_usec: us(&["cpu", "usage", "kernel"]),
            nr_periods: n(d, &["cpu", "throttling", "periods"]),
            nr_throttled: n(d, &["cpu", "throttling", "throttledPeriods"]),
            throttled_usec: us(&["cpu", "throttling", "throttledTime"]),
        }),
        memory: Some(v2::MemoryStat {
            anon: n(&m, &["raw", "anon"]),
            file: n(&m, &["raw", "file"]),
            usage: n(&m, &["usage", "usage"]),
            usage_limit: n(&m, &["usage", "limit"]),
            swap_usage: n(&m, &["swap", "usage"]),
            swap_limit: n(&m, &["swap", "limit"]),
            max_usage: n(&m, &["usage", "max"]),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"type":"stats","id":"c","data":{"cpu":{"usage":{"percpu":[5,6],"total":11,"kernel":3,"user":8},
        "throttling":{"periods":2,"throttledPeriods":1,"throttledTime":7000}},
        "memory":{"cache":4096,"usage":{"limit":67108864,"usage":1048576,"max":2097152,"failcnt":0},
        "raw":{"rss":8192,"total_rss":8192,"anon":12288}},"pids":{"current":1,"limit":32},
        "blkio":{"ioServiceBytesRecursive":[{"major":8,"minor":0,"op":"Read","value":512}]},
        "hugetlb":{"2MB":{"failcnt":0}}}}"#;

    #[test]
    fn runc_stats_become_containerd_metrics() {
        let any = from_runc_events(EVENT.as_bytes(), false).unwrap();
        assert_eq!(any.type_url, V1_TYPE_URL);
        let m = v1::Metrics::decode(any.value.as_slice()).unwrap();
        assert_eq!(m.pids, Some(v1::PidsStat { current: 1, limit: 32 }));
        let cpu = m.cpu.unwrap().usage.unwrap();
        assert_eq!((cpu.total, cpu.kernel, cpu.user, cpu.per_cpu), (11, 3, 8, vec![5, 6]));
        let memory = m.memory.unwrap();
        assert_eq!((memory.cache, memory.rss, memory.usage.unwrap().limit), (4096, 8192, 67108864));
        assert_eq!(m.blkio.unwrap().io_service_bytes_recursive[0].value, 512);
        assert_eq!(m.hugetlb[0].pagesize, "2MB");

        let any = from_runc_events(EVENT.as_bytes(), true).unwrap();
        let m = v2::Metrics::decode(any.value.as_slice()).unwrap();
        assert_eq!((m.cpu.unwrap().throttled_usec, m.memory.unwrap().anon), (7, 12288));

        assert!(from_runc_events(b"{\"type\":\"stats\"}", false).unwrap_err().contains("no \"data\""));
        assert!(from_runc_events(b"nope", false).unwrap_err().starts_with("not JSON"));
    }
}
