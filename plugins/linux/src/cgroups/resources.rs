//! Applying OCI `linux.resources` to a cgroup: each resource goes to the hierarchy that holds its
//! controller, written the v1 or the v2 way depending on that hierarchy (so on hybrid hosts a controller
//! bound only to the unified hierarchy, like hugetlb here, is driven the v2 way).

use std::collections::HashMap;
use std::path::Path;

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxRdma, LinuxResources};

use super::error::{CgroupError, Result};
use super::files::write;
use super::{Cgroup, Loc, Mode, v1, v2};

/// OCI uses 0 for "unset" in most numeric fields; `None` for those.
pub(crate) fn nonzero(v: i64) -> Option<i64> {
    (v != 0).then_some(v)
}

/// Validates a hugepage size (`2MB`, `1GB`, `64KB`) so it can be used in a file name.
pub(crate) fn hugetlb_page_size(size: &str) -> Result<&str> {
    let ok = !size.is_empty() && size.chars().all(|c| c.is_ascii_alphanumeric()) && size.ends_with('B');
    if ok {
        Ok(size)
    } else {
        Err(CgroupError::InvalidValue {
            what: "hugepage size".into(),
            value: size.into(),
            reason: "expected a size like 2MB or 1GB".into(),
        })
    }
}

fn cpu_has_bandwidth(c: &LinuxCpu) -> bool {
    c.shares().is_some()
        || c.quota().is_some()
        || c.period().is_some()
        || c.burst().is_some()
        || c.idle().is_some()
        || c.realtime_runtime().is_some()
        || c.realtime_period().is_some()
}

/// `cpuset.cpus` / `cpuset.mems`: same files on v1 and v2. Empty strings mean "unset".
fn cpuset(dir: &Path, c: &LinuxCpu) -> Result<()> {
    if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
        write(&dir.join("cpuset.cpus"), cpus)?;
    }
    if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
        write(&dir.join("cpuset.mems"), mems)?;
    }
    Ok(())
}

/// `pids.max`: the limit, or `max` for a limit <= 0. Same on v1 and v2.
fn pids(dir: &Path, limit: i64) -> Result<()> {
    write(&dir.join("pids.max"), &if limit <= 0 { "max".to_string() } else { limit.to_string() })
}

/// `rdma.max`: `<device> hca_handles=<n> hca_objects=<n>` per device. Same on v1 and v2.
fn rdma(dir: &Path, limits: &HashMap<String, LinuxRdma>) -> Result<()> {
    let mut devices: Vec<&String> = limits.keys().collect();
    devices.sort();
    for dev in devices {
        let l = &limits[dev];
        let mut line = dev.clone();
        if let Some(h) = l.hca_handles() {
            line.push_str(&format!(" hca_handles={h}"));
        }
        if let Some(o) = l.hca_objects() {
            line.push_str(&format!(" hca_objects={o}"));
        }
        if line != *dev {
            write(&dir.join("rdma.max"), &line)?;
        }
    }
    Ok(())
}

impl Cgroup {
    /// Applies `resources`: at creation, and again for an Update of a running task.
    ///
    /// Only what is set is written; what is unset keeps its current value. A resource whose controller
    /// is not available fails with [`CgroupError::ControllerUnavailable`], except `network` (net_cls /
    /// net_prio, v1 only), which is skipped with a warning. On v2, device rules are not enforced (see
    /// the module doc) and a warning is logged once.
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        if let Some(m) = r.memory()
            && *m != LinuxMemory::default()
        {
            match self.require("memory", "memory limits")? {
                Loc::V1(d) => v1::memory(d, m)?,
                Loc::V2(d) => v2::memory(d, m)?,
            }
        }
        if let Some(c) = r.cpu() {
            if c.cpus().as_deref().is_some_and(|s| !s.is_empty()) || c.mems().as_deref().is_some_and(|s| !s.is_empty())
            {
                let (Loc::V1(d) | Loc::V2(d)) = self.require("cpuset", "cpus/mems")?;
                cpuset(d, c)?;
            }
            if cpu_has_bandwidth(c) {
                match self.require("cpu", "cpu shares/quota")? {
                    Loc::V1(d) => v1::cpu(d, c)?,
                    Loc::V2(d) => v2::cpu(d, c)?,
                }
            }
        }
        if let Some(p) = r.pids() {
            let (Loc::V1(d) | Loc::V2(d)) = self.require("pids", "the pids limit")?;
            pids(d, p.limit())?;
        }
        if let Some(b) = r.block_io()
            && *b != LinuxBlockIo::default()
        {
            match self.locate("blkio").or_else(|| self.locate("io")) {
                Some(Loc::V1(d)) => v1::blkio(d, b)?,
                Some(Loc::V2(d)) => v2::io(d, b)?,
                None => return Err(CgroupError::ControllerUnavailable { controller: "blkio/io", what: "blockIO" }),
            }
        }
        if let Some(limits) = r.hugepage_limits().as_ref().filter(|l| !l.is_empty()) {
            let loc = self.require("hugetlb", "hugepageLimits")?;
            for l in limits {
                match loc {
                    Loc::V1(d) => v1::hugetlb(d, l.page_size(), l.limit())?,
                    Loc::V2(d) => v2::hugetlb(d, l.page_size(), l.limit())?,
                }
            }
        }
        if let Some(rules) = r.devices().as_ref().filter(|d| !d.is_empty()) {
            match self.locate("devices") {
                Some(Loc::V1(d)) => v1::devices(d, rules)?,
                _ if self.mode == Mode::V2 => {
                    if let Some(d) = &self.unified {
                        v2::devices_not_enforced(d);
                    }
                }
                _ => return Err(CgroupError::ControllerUnavailable { controller: "devices", what: "device rules" }),
            }
        }
        if let Some(n) = r.network() {
            if n.class_id().is_some() {
                match self.locate("net_cls") {
                    Some(Loc::V1(d)) => v1::net_cls(d, n)?,
                    _ => {
                        tracing::warn!("cgroups: net_cls is not available, ignoring network.classID for {}", self.path)
                    }
                }
            }
            if n.priorities().as_ref().is_some_and(|p| !p.is_empty()) {
                match self.locate("net_prio") {
                    Some(Loc::V1(d)) => v1::net_prio(d, n)?,
                    _ => {
                        tracing::warn!(
                            "cgroups: net_prio is not available, ignoring network.priorities for {}",
                            self.path
                        )
                    }
                }
            }
        }
        if let Some(limits) = r.rdma().as_ref().filter(|l| !l.is_empty()) {
            let (Loc::V1(d) | Loc::V2(d)) = self.require("rdma", "rdma limits")?;
            rdma(d, limits)?;
        }
        if let Some(values) = r.unified().as_ref().filter(|u| !u.is_empty()) {
            match (&self.unified, self.mode) {
                (Some(d), Mode::V2) => v2::unified(d, values)?,
                _ => {
                    let mut keys: Vec<&String> = values.keys().collect();
                    keys.sort();
                    return Err(CgroupError::UnifiedNeedsV2 { key: keys[0].clone(), mode: self.mode });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes() {
        assert_eq!(hugetlb_page_size("2MB").unwrap(), "2MB");
        assert!(hugetlb_page_size("../x").is_err());
        assert!(hugetlb_page_size("").is_err());
    }
}
