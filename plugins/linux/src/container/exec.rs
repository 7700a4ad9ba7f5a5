//! `exec`: run another process in a running container. The intermediate joins the cgroup (by itself, see
//! `cgroups::Entry`) and every namespace of init (user first), then clones the process as the runtime's child
//! (CLONE_PARENT, so a joined pid namespace applies and the runtime can wait for it), which applies the process
//! spec and execs.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use oci_spec::runtime::{LinuxSeccomp, Process};

use super::cgroup::Cgroup;
use super::error::Step;
use super::process::channel::{self, Channel, Msg};
use super::process::namespaces::Joins;
use super::process::{console, fork, sys};
use super::state::{self, StateDir, Status};
use super::{Error, Result, Runtime, start};

#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// A process.json (the OCI `process` object); otherwise `args` and the overrides below apply to the
    /// container's own process spec.
    pub process: Option<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub user: Option<(u32, u32)>,
    pub additional_gids: Vec<u32>,
    pub tty: bool,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub no_new_privs: bool,
    /// The process spec itself (as the Tasks API sends it); takes precedence over `process` and `args`.
    pub spec: Option<Process>,
    /// An already connected socket for the pty master, instead of `console_socket`. Borrowed.
    pub console_fd: Option<RawFd>,
    /// The process's stdin, stdout and stderr; None: inherit the caller's. Borrowed.
    pub stdio: Option<[RawFd; 3]>,
}

impl Runtime {
    /// Returns the exit status of the process (0 when detached).
    pub fn exec(&self, id: &str, opts: &ExecOptions) -> Result<i32> {
        let pid = self.spawn_exec(id, opts)?;
        if opts.detach {
            return Ok(0);
        }
        start::wait_forwarding(pid)
    }

    /// Starts the process and returns its pid; it is the caller's child, to be waited for by the caller.
    pub fn spawn_exec(&self, id: &str, opts: &ExecOptions) -> Result<i32> {
        let sd = StateDir::new(&self.root, id);
        let rec = sd.load()?;
        match rec.state.status {
            Status::Stopped => return Err(Error::Status("cannot exec in a stopped container".into())),
            Status::Paused => return Err(Error::Status("cannot exec in a paused container".into())),
            _ => {}
        }
        let process = exec_process(&rec.config, opts)?;
        let terminal = process.terminal().unwrap_or(false);
        if terminal && opts.console_socket.is_none() && opts.console_fd.is_none() {
            return Err(Error::config(
                "exec with a terminal needs --console-socket (terminal proxying is not implemented)",
            ));
        }
        let seccomp = rec.config.linux().as_ref().and_then(|l| l.seccomp().clone());
        let joins = Joins::of_process(rec.state.pid).step(|| "opening the container's namespaces")?;
        // Re-check after opening: the namespace files must belong to init, not to a process that reused its pid.
        if !state::init_alive(rec.state.pid, rec.init_start_time) {
            return Err(Error::Status("cannot exec in a stopped container".into()));
        }
        let console = if terminal {
            opts.console_socket.as_deref().map(console::connect).transpose().step(|| "console socket")?
        } else {
            None
        };
        let (parent_ch, child_ch) = channel::pair().step(|| "creating sync socketpair")?;
        let parent_fd = parent_ch.as_raw_fd();
        let console_fd = console.as_ref().map(|c| c.as_raw_fd()).or(if terminal { opts.console_fd } else { None });
        let stdio = opts.stdio;
        let joins_ref = &joins;
        let process_ref = &process;
        let seccomp_ref = &seccomp;
        // The process enters the container's cgroup itself, not by its pid being written (cgroups::Entry).
        let cgroup = Cgroup::open(&rec.cgroup_path);
        let cgroup_entry = cgroup.entry()?;
        let entry_ref = &cgroup_entry;
        // FORK: the intermediate; child_ch moves into it (closed here when the closure is dropped).
        let (inter, in_unified) = fork::fork_child_into(cgroup_entry.unified(), move |_| {
            // SAFETY: our copy of the runtime's end.
            unsafe { libc::close(parent_fd) };
            // Single-threaded and still with the host's credentials: the v1 hierarchies, itself.
            if let Err(e) = entry_ref.join_v1() {
                let _ = child_ch.send(&Msg::Error(e.to_string()));
                return 1;
            }
            if let Some(fds) = stdio
                && let Err(e) = super::process::set_stdio(fds)
            {
                let _ = child_ch.send(&Msg::Error(format!("setting up stdio: {e}")));
                return 1;
            }
            intermediate(child_ch, joins_ref, process_ref, seccomp_ref, console_fd)
        })
        .step(|| "forking the exec process")?;
        drop(console);
        let cleanup = |pids: &[i32]| {
            for &p in pids {
                let _ = sys::kill(p, libc::SIGKILL);
                let _ = sys::waitpid(p, 0);
            }
        };
        drop(cgroup_entry);
        if !in_unified && let Err(e) = cgroup.add_process_unified(inter) {
            cleanup(&[inter]);
            return Err(e);
        }
        parent_ch.send(&Msg::Go).step(|| "sync with the exec process")?;
        // The intermediate sends the pid or its own error (then there is no process); the exec'd process sends
        // its error if it cannot execve. Both write to this channel, so the process's error can come first:
        // keep it and read on for the pid, or the process would be left unreaped (a zombie that keeps init in
        // zap_pid_ns_processes after a kill, so the container never stops).
        let mut early_error = None;
        let pid = loop {
            match parent_ch.recv() {
                Ok(Some(Msg::Pid(pid))) => break pid,
                Ok(Some(Msg::Error(e))) if early_error.is_none() => early_error = Some(e),
                Ok(None) if early_error.is_some() => {
                    cleanup(&[inter]);
                    return Err(Error::Child(format!("exec: {}", early_error.unwrap_or_default())));
                }
                other => {
                    cleanup(&[inter]);
                    return Err(Error::Child(format!("exec: the intermediate process failed ({other:?})")));
                }
            }
        };
        let _ = sys::waitpid(inter, 0);
        // EOF means execve succeeded (the channel is close-on-exec); a message is the failure.
        let reply = match early_error {
            Some(e) => Ok(Some(Msg::Error(e))),
            None => parent_ch.recv(),
        };
        match reply {
            Ok(None) => {}
            Ok(Some(Msg::Error(e))) => {
                let _ = sys::waitpid(pid, 0);
                return Err(Error::Child(format!("exec: {e}")));
            }
            other => {
                cleanup(&[pid]);
                return Err(Error::Child(format!("exec: unexpected reply {other:?}")));
            }
        }
        if let Some(pid_file) = &opts.pid_file {
            state::write_pid_file(pid_file, pid)?;
        }
        Ok(pid)
    }
}

/// The process to exec: --process, or the container's process with the command line's overrides (runc's rules).
fn exec_process(config: &oci_spec::runtime::Spec, opts: &ExecOptions) -> Result<Process> {
    let mut p = if let Some(spec) = &opts.spec {
        spec.clone()
    } else if let Some(path) = &opts.process {
        let file =
            std::fs::File::open(path).map_err(|e| Error::config(format!("--process {}: {e}", path.display())))?;
        let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(file));
        serde_path_to_error::deserialize::<_, Process>(&mut de)
            .map_err(|e| Error::config(format!("--process {}: {}: {}", path.display(), e.path(), e.inner())))?
    } else {
        let mut p = config.process().clone().unwrap_or_default();
        p.set_args(Some(opts.args.clone()));
        let mut env = p.env().clone().unwrap_or_default();
        for kv in &opts.env {
            let key = kv.split('=').next().unwrap_or_default();
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(kv.clone());
        }
        p.set_env(Some(env));
        if let Some(cwd) = &opts.cwd {
            p.set_cwd(cwd.clone());
        }
        if let Some((uid, gid)) = opts.user {
            p.user_mut().set_uid(uid);
            p.user_mut().set_gid(gid);
        }
        if !opts.additional_gids.is_empty() {
            p.user_mut().set_additional_gids(Some(opts.additional_gids.clone()));
        }
        p.set_terminal(Some(opts.tty));
        if opts.no_new_privs {
            p.set_no_new_privileges(Some(true));
        }
        p
    };
    if opts.tty {
        p.set_terminal(Some(true));
    }
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::config("exec: no command given (args are empty)"));
    }
    if !p.cwd().is_absolute() {
        return Err(Error::config(format!("process.cwd: {:?} is not an absolute path", p.cwd())));
    }
    Ok(p)
}

fn intermediate(
    ch: Channel,
    joins: &Joins,
    process: &Process,
    seccomp: &Option<LinuxSeccomp>,
    console_fd: Option<RawFd>,
) -> i32 {
    let result = (|| -> std::result::Result<i32, String> {
        // Not dumpable before joining the container's namespaces: its processes must not reach us or the exec'd
        // process (which inherits this until execve) through /proc (CVE-2019-5736).
        sys::prctl(libc::PR_SET_DUMPABLE, 0).map_err(|e| format!("prctl: {e}"))?;
        ch.wait_go().map_err(|e| e.to_string())?;
        // SETNS: user first, then the rest; the pid namespace applies to the child cloned below, and the mount
        // namespace moves our root and cwd to the container's root.
        joins.enter().map_err(|e| e.to_string())?;
        let ch_fd = ch.as_raw_fd();
        // CLONE: the exec'd process, as the runtime's child.
        let pid = fork::clone_sibling(|| {
            // SAFETY: the child owns its copies of these inherited fds.
            let (ch, console) = unsafe { (Channel::from_raw_fd(ch_fd), console_fd.map(|fd| OwnedFd::from_raw_fd(fd))) };
            let err = exec_child(process, seccomp, console);
            let _ = ch.send(&Msg::Error(err));
            1
        })
        .map_err(|e| format!("cloning the exec process: {e}"))?;
        Ok(pid)
    })();
    match result {
        Ok(pid) => {
            let _ = ch.send(&Msg::Pid(pid));
            0
        }
        Err(e) => {
            let _ = ch.send(&Msg::Error(e));
            1
        }
    }
}

/// Applies the process spec and execs; returns the error if anything fails.
fn exec_child(process: &Process, seccomp: &Option<LinuxSeccomp>, console: Option<OwnedFd>) -> String {
    let steps = || -> std::result::Result<std::convert::Infallible, String> {
        use super::process as p;
        p::reset_signals();
        let step = |name: &str, e: std::io::Error| format!("{name}: {e}");
        // Not dumpable until execve: the container must not reach the runtime binary through /proc (CVE-2019-5736).
        sys::prctl(libc::PR_SET_DUMPABLE, 0).map_err(|e| step("prctl", e))?;
        if let Some(sock) = console {
            // SAFETY: plain syscall; we are not a group leader.
            unsafe { libc::setsid() };
            super::process::console::setup(&sock, process, false).map_err(|e| step("console", e))?;
        }
        p::set_rlimits(process).map_err(|e| step("rlimits", e))?;
        let nnp = process.no_new_privileges().unwrap_or(false);
        // The container's filter applies to exec'd processes too; installed at the same points as in init.
        let seccomp = seccomp.as_ref().map(p::compile_seccomp).transpose()?;
        if !nnp && let Some((program, flags)) = &seccomp {
            p::install_seccomp(program, flags)?;
        }
        if nnp {
            sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map_err(|e| step("no_new_privs", e))?;
        }
        let denied = std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny");
        p::set_user_and_caps(process, denied).map_err(|e| step("user and capabilities", e))?;
        p::set_umask(process);
        p::enter_cwd(process.cwd()).map_err(|e| step("cwd", e))?;
        let args = process.args().clone().unwrap_or_default();
        let env = process.env().clone().unwrap_or_default();
        let exe = p::find_executable(&args[0], &env).map_err(|e| e.to_string())?;
        if nnp && let Some((program, flags)) = &seccomp {
            p::install_seccomp(program, flags)?;
        }
        sys::cloexec_from(3).map_err(|e| step("close_range", e))?;
        let err = p::execve(&exe, &args, &env);
        Err(format!("exec {}: {err}", exe.display()))
    };
    match steps() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}
