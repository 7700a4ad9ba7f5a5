//! The container's cgroup, through [`crate::cgroups`]: the verbs' view of it (a cgroup that is already gone has
//! no processes and deletes fine), with errors naming the step.

use oci_spec::runtime::LinuxResources;

use super::{Error, Result};
use crate::cgroups;

pub struct Cgroup {
    path: String,
    /// None when the cgroup does not exist (any more).
    inner: Option<cgroups::Cgroup>,
}

fn err(what: &str, path: &str) -> impl FnOnce(cgroups::CgroupError) -> Error {
    let what = format!("{what} cgroup {path}");
    move |e| Error::Other(format!("{what}: {e}"))
}

impl Cgroup {
    /// Creates the cgroup in every hierarchy and applies `linux.resources`.
    pub fn create(path: &str, resources: Option<&LinuxResources>) -> Result<Cgroup> {
        let inner = cgroups::Cgroup::create(path, resources).map_err(err("creating", path))?;
        Ok(Cgroup { path: path.to_string(), inner: Some(inner) })
    }

    pub fn open(path: &str) -> Cgroup {
        Cgroup { path: path.to_string(), inner: cgroups::Cgroup::open(path).ok() }
    }

    fn get(&self) -> Result<&cgroups::Cgroup> {
        self.inner.as_ref().ok_or_else(|| Error::Other(format!("cgroup {} does not exist", self.path)))
    }

    /// What a process about to be forked needs to enter the cgroup itself (see [`cgroups::Entry`]).
    pub fn entry(&self) -> Result<cgroups::Entry> {
        self.get()?.entry().map_err(err("opening", &self.path))
    }

    pub fn add_process_unified(&self, pid: i32) -> Result<()> {
        self.get()?.add_process_unified(pid).map_err(err(&format!("adding pid {pid} to"), &self.path))
    }

    pub fn freeze(&self) -> Result<()> {
        self.get()?.freeze().map_err(err("freezing", &self.path))
    }

    pub fn thaw(&self) -> Result<()> {
        self.get()?.thaw().map_err(err("thawing", &self.path))
    }

    pub fn pids(&self) -> Result<Vec<i32>> {
        match &self.inner {
            Some(cg) => cg.pids().map_err(err("listing processes of", &self.path)),
            None => Ok(Vec::new()),
        }
    }

    pub fn kill_all(&self, sig: i32) -> Result<()> {
        match &self.inner {
            Some(cg) => cg.kill_all(sig).map_err(err("signalling", &self.path)),
            None => Ok(()),
        }
    }

    pub fn delete(&self) -> Result<()> {
        match &self.inner {
            Some(cg) => cg.delete().map_err(err("removing", &self.path)),
            None => Ok(()),
        }
    }
}

/// Whether the container's cgroup is frozen (the `paused` status).
pub fn is_frozen(path: &str) -> bool {
    cgroups::Cgroup::open(path).and_then(|cg| cg.is_frozen()).unwrap_or(false)
}

/// The default cgroup path of a container without linux.cgroupsPath.
pub fn default_path(id: &str) -> String {
    format!("/berth/{id}")
}
