//! `delete`: a stopped (or created) container's cgroup and state go; `force` kills a running one first.
//! poststop hooks run last; their failure is only a warning (the container is gone by then).

use std::time::{Duration, Instant};

use super::cgroup::Cgroup;
use super::process::sys;
use super::state::{self, StateDir, Status};
use super::{Error, Result, Runtime, hooks};

impl Runtime {
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let sd = StateDir::new(&self.root, id);
        let rec = match sd.load() {
            Ok(rec) => rec,
            Err(Error::NotExist) if sd.dir.exists() && !sd.dir.join(state::STATE_FILE).exists() => {
                // A create that died half-way left a directory without state.json: only --force removes it,
                // so that a create in progress is not pulled from under its feet.
                if force {
                    return sd.remove();
                }
                return Err(Error::NotExist);
            }
            Err(e) => return Err(e),
        };
        let cg = Cgroup::open(&rec.cgroup_path);
        match rec.state.status {
            Status::Stopped => {}
            // runc: deleting a created container kills its init, no --force needed.
            Status::Created | Status::Creating => kill_and_wait(&cg, rec.state.pid, rec.init_start_time, false)?,
            Status::Running | Status::Paused if force => {
                kill_and_wait(&cg, rec.state.pid, rec.init_start_time, rec.state.status == Status::Paused)?
            }
            status => {
                return Err(Error::Status(format!("cannot delete container {id} that is not stopped: {status}")));
            }
        }
        // Processes left behind by a stopped init (it may have died alone) go too: delete kills them.
        cg.delete()?;
        sd.remove()?;
        let mut st = rec.state.clone();
        st.status = Status::Stopped;
        if let Err(e) = hooks::run(&rec.config, hooks::Kind::Poststop, &st.hook_json()) {
            tracing::warn!("{e}");
        }
        Ok(())
    }
}

/// SIGKILLs init and everything in the cgroup, then waits (up to 10 s) until init is gone or a zombie.
fn kill_and_wait(cg: &Cgroup, pid: i32, start_time: u64, paused: bool) -> Result<()> {
    if state::init_alive(pid, start_time) {
        let _ = sys::kill(pid, libc::SIGKILL);
    }
    let _ = cg.kill_all(libc::SIGKILL);
    if paused {
        let _ = cg.thaw();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while state::init_alive(pid, start_time) {
        // Our own child (run, or a test): reap it, or it stays a zombie.
        let _ = sys::waitpid(pid, libc::WNOHANG);
        if Instant::now() > deadline {
            return Err(Error::Other(format!("container init {pid} did not die after SIGKILL")));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = sys::waitpid(pid, libc::WNOHANG);
    Ok(())
}
