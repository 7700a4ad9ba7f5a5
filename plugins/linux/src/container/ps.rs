//! `ps`, `pause`, `resume`: the cgroup's view of the container.

use super::cgroup::Cgroup;
use super::state::{StateDir, Status};
use super::{Error, Result, Runtime, State};

impl Runtime {
    /// `state`: the live state of the container.
    pub fn state(&self, id: &str) -> Result<State> {
        Ok(StateDir::new(&self.root, id).load()?.state)
    }

    /// Pids (host view) of every process in the container's cgroup.
    pub fn ps(&self, id: &str) -> Result<Vec<i32>> {
        let rec = StateDir::new(&self.root, id).load()?;
        let mut pids = Cgroup::open(&rec.cgroup_path).pids()?;
        pids.sort_unstable();
        Ok(pids)
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        let rec = StateDir::new(&self.root, id).load()?;
        match rec.state.status {
            Status::Running | Status::Created => Cgroup::open(&rec.cgroup_path).freeze(),
            Status::Paused => Err(Error::Status("container already paused".into())),
            _ => Err(Error::Status("container not running".into())),
        }
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        let rec = StateDir::new(&self.root, id).load()?;
        match rec.state.status {
            Status::Paused => Cgroup::open(&rec.cgroup_path).thaw(),
            _ => Err(Error::Status("container not paused".into())),
        }
    }
}
