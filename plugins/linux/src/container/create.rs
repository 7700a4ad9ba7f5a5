//! `create`: validate the bundle, fork the intermediate and init, answer their sync requests (id maps, hooks),
//! record the state. Every failure undoes what was done (child killed, cgroup and state directory removed) and
//! names the failing step.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use oci_spec::runtime::{Linux, LinuxNamespaceType, Spec};

use super::cgroup::{self, Cgroup};
use super::error::Step;
use super::process::channel::{self, Channel, Msg};
use super::process::init::{self, InitArgs};
use super::process::namespaces::{self, Joins};
use super::process::{self, console, fork, sys};
use super::state::{self, Record, State, StateDir, Status};
use super::{CreateOptions, Error, Result, Runtime, config, hooks};
use crate::cgroups;

/// Undoes a half-done create when dropped without [`Undo::disarm`].
struct Undo<'a> {
    state_dir: &'a StateDir,
    cgroup: Option<Cgroup>,
    /// Our children still to kill and reap.
    pids: Vec<i32>,
    /// Set once the container process exists: poststop hooks run after the container is destroyed, as the spec's
    /// lifecycle wants after a failing prestart, createRuntime or createContainer hook (runc runs them on any
    /// failed create too).
    poststop: Option<(&'a Spec, String)>,
    armed: bool,
}

impl Undo<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for &pid in &self.pids {
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = sys::waitpid(pid, 0);
        }
        if let Some(cg) = &self.cgroup
            && let Err(e) = cg.delete()
        {
            tracing::warn!("cleanup: {e}");
        }
        if let Err(e) = self.state_dir.remove() {
            tracing::warn!("cleanup: {e}");
        }
        if let Some((spec, state)) = &self.poststop
            && let Err(e) = hooks::run(spec, hooks::Kind::Poststop, state)
        {
            tracing::warn!("{e}");
        }
    }
}

/// A created container: what its caller needs next without reading the state back.
#[derive(Debug, Clone)]
pub struct Created {
    /// Init's pid.
    pub pid: i32,
    /// The cgroup path as given to the cgroup manager.
    pub cgroup_path: String,
    /// Whether init got a PID namespace of its own: then its exit ends every process of the container.
    pub own_pid_namespace: bool,
}

impl Runtime {
    /// `create`: returns the init pid. Init is left waiting on exec.fifo for `start`.
    pub fn create(&self, opts: &CreateOptions) -> Result<i32> {
        self.create_container(opts).map(|c| c.pid)
    }

    /// `create`, returning what the state records for the caller's next steps (the reaper watches the cgroup).
    pub fn create_container(&self, opts: &CreateOptions) -> Result<Created> {
        config::validate_id(&opts.id)?;
        let bundle = std::fs::canonicalize(&opts.bundle)
            .map_err(|e| Error::config(format!("bundle {}: {e}", opts.bundle.display())))?;
        let cfg = config::load(&bundle)?;
        let spec = &cfg.spec;
        let process = spec.process().as_ref().ok_or_else(|| Error::config("process: missing"))?;
        let linux = spec.linux().as_ref().ok_or_else(|| Error::config("linux: missing"))?;
        let terminal = process.terminal().unwrap_or(false);
        let has_console = opts.console_socket.is_some() || opts.console_fd.is_some();
        if terminal && !has_console {
            return Err(Error::config("process.terminal is true: --console-socket is required"));
        }
        if !terminal && has_console {
            return Err(Error::config("--console-socket given but process.terminal is false"));
        }
        let cgroup_path = match linux.cgroups_path() {
            Some(p) if p.to_string_lossy().contains(':') => {
                return Err(Error::config(
                    "linux.cgroupsPath: systemd cgroup paths (slice:prefix:name) are not supported",
                ));
            }
            Some(p) if !p.as_os_str().is_empty() => p.to_string_lossy().into_owned(),
            _ => cgroup::default_path(&opts.id),
        };

        let sd = StateDir::create(&self.root, &opts.id)?;
        let mut undo = Undo { state_dir: &sd, cgroup: None, pids: Vec::new(), poststop: None, armed: true };

        // exec.fifo: init blocks opening it for writing until `start` opens it for reading. 0622 so that init
        // can open it after switching to the container's user.
        let fifo = sd.fifo();
        sys::mkfifo(&fifo, 0o622).step(|| "creating exec fifo")?;
        std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o622)).step(|| "chmod exec fifo")?;

        let cg = Cgroup::create(&cgroup_path, Some(&cgroup_resources(linux)))?;
        undo.cgroup = Some(cg);

        let console = opts.console_socket.as_deref().map(console::connect).transpose().step(|| "console socket")?;
        let console_fd = console.as_ref().map(|c| c.as_raw_fd()).or(opts.console_fd);
        let state_dirfd = sys::open(&sd.dir, libc::O_PATH | libc::O_DIRECTORY, 0).step(|| "opening state directory")?;
        let ns = linux.namespaces().clone().unwrap_or_default();
        let own_pid_namespace = ns.iter().any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_none());
        let joins = Joins::from_spec(&ns).step(|| "namespaces")?;
        let (parent_ch, child_ch) = channel::pair().step(|| "creating sync socketpair")?;

        let mut st = State {
            oci_version: state::OCI_VERSION.to_string(),
            id: opts.id.clone(),
            pid: 0,
            status: Status::Creating,
            bundle: bundle.clone(),
            rootfs: cfg.rootfs.clone(),
            created: state::now_rfc3339(),
            annotations: spec.annotations().clone().unwrap_or_default().into_iter().collect(),
            owner: String::new(),
        };

        // The container's processes enter the cgroup themselves, not by their pid being written (cgroups::Entry).
        let cgroup_entry = undo.cgroup.as_ref().expect("cgroup set above").entry()?;
        let child = Child {
            cgroup_entry: &cgroup_entry,
            spec,
            linux,
            rootfs: &cfg.rootfs,
            bundle: &bundle,
            joins: &joins,
            parent_fd: parent_ch.as_raw_fd(),
            console_fd,
            stdio: opts.stdio,
            state_dir_fd: state_dirfd.as_raw_fd(),
            hook_state: st.hook_json(),
        };
        let has_unified = cgroup_entry.unified().is_some();
        // FORK: the intermediate joins and creates namespaces; it gets child_ch (moved: closed here when the
        // closure is dropped in the parent) and closes its copy of parent_ch.
        let (inter, in_unified) =
            fork::fork_child_into(cgroup_entry.unified(), move |in_unified| child.intermediate(child_ch, in_unified))
                .step(|| "forking the container process")?;
        undo.pids.push(inter);
        drop(cgroup_entry);
        undo.poststop = Some((spec, State { status: Status::Stopped, ..st.clone() }.hook_json()));
        drop(console);
        drop(state_dirfd);

        // In the cgroup before it creates anything: init and a new cgroup namespace inherit it. The intermediate
        // joins the v1 hierarchies itself, first thing; the cgroup2 one it was forked into, or is added to here,
        // and then it waits for Go (see `Child::intermediate`).
        if needs_unified_join(has_unified, in_unified) {
            undo.cgroup.as_ref().expect("cgroup set above").add_process_unified(inter)?;
            parent_ch.send(&Msg::Go).step(|| "sync with the container process")?;
        }

        let mut init_pid = 0;
        loop {
            let msg = parent_ch.recv().step(|| "sync with the container process")?;
            match msg {
                Some(Msg::MapIds) => {
                    write_id_maps(inter, linux)?;
                    parent_ch.send(&Msg::Go).step(|| "sync with the container process")?;
                }
                Some(Msg::Pid(pid)) => {
                    init_pid = pid;
                    undo.pids.push(pid);
                    // The intermediate's job is done; reap it so it leaves no zombie. Init does not wait for us:
                    // it sends nothing before the intermediate has sent this (see `pid_sent`).
                    let _ = sys::waitpid(inter, 0);
                    undo.pids.retain(|p| *p != inter);
                    st.pid = pid;
                }
                Some(Msg::RunHooks) => {
                    let json = st.hook_json();
                    hooks::run(spec, hooks::Kind::Prestart, &json)?;
                    hooks::run(spec, hooks::Kind::CreateRuntime, &json)?;
                    parent_ch.send(&Msg::Go).step(|| "sync with the container init")?;
                }
                Some(Msg::Ready) => break,
                Some(Msg::Error(e)) => return Err(Error::Child(format!("container init: {e}"))),
                Some(Msg::Go) => return Err(Error::Other("unexpected message from the container process".into())),
                None => {
                    let status = undo
                        .pids
                        .last()
                        .and_then(|p| sys::waitpid(*p, 0).ok().flatten())
                        .map(|s| format!(" (exit status {})", sys::exit_code(s)))
                        .unwrap_or_default();
                    undo.pids.clear();
                    return Err(Error::Child(format!("container init exited during setup{status}")));
                }
            }
        }

        let init_start_time = state::proc_stat(init_pid).map(|s| s.1).unwrap_or(0);
        st.status = Status::Created;
        let rec = Record { state: st, init_start_time, cgroup_path: cgroup_path.clone(), config: spec.clone() };
        sd.save(&rec)?;
        if let Some(pid_file) = &opts.pid_file {
            state::write_pid_file(pid_file, init_pid)?;
        }
        undo.disarm();
        Ok(Created { pid: init_pid, cgroup_path, own_pid_namespace })
    }
}

/// The spec's resources plus, like runc, device rules allowing the default devices (created by init in /dev,
/// and the pty pair), then the spec's own devices: a spec that denies all devices (runc's default) still gets
/// a working /dev/null.
fn cgroup_resources(linux: &Linux) -> oci_spec::runtime::LinuxResources {
    use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};
    let rule = |typ: LinuxDeviceType, major: Option<i64>, minor: Option<i64>| {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(true).set_typ(Some(typ)).set_major(major).set_minor(minor).set_access(Some("rwm".into()));
        r
    };
    let mut resources = linux.resources().clone().unwrap_or_default();
    let mut devices = resources.devices().clone().unwrap_or_default();
    for (major, minor) in [
        (1, Some(3)),
        (1, Some(5)),
        (1, Some(7)),
        (1, Some(8)),
        (1, Some(9)),
        (5, Some(0)),
        (5, Some(1)),
        (5, Some(2)),
        (136, None),
    ] {
        devices.push(rule(LinuxDeviceType::C, Some(major), minor));
    }
    for d in linux.devices().iter().flatten() {
        devices.push(rule(d.typ(), Some(d.major()), Some(d.minor())));
    }
    resources.set_devices(Some(devices));
    resources
}

/// Writes /proc/<pid>/uid_map and gid_map for a child that unshared its user namespace. setgroups is denied
/// first when we are not root on the host, which the kernel requires for an unprivileged gid_map.
fn write_id_maps(pid: i32, linux: &Linux) -> Result<()> {
    let lines = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        std::fs::write(format!("/proc/{pid}/setgroups"), "deny").step(|| "writing setgroups")?;
    }
    std::fs::write(format!("/proc/{pid}/uid_map"), lines(linux.uid_mappings())).step(|| "writing uid_map")?;
    std::fs::write(format!("/proc/{pid}/gid_map"), lines(linux.gid_mappings())).step(|| "writing gid_map")?;
    Ok(())
}

/// Whether the intermediate still has to be added to the cgroup2 cgroup by its pid (it was not forked into it),
/// and so waits for Go before it creates anything. Both sides decide with this.
fn needs_unified_join(has_unified: bool, forked_into_unified: bool) -> bool {
    has_unified && !forked_into_unified
}

/// What the children need, borrowed from the runtime's stack (they run on a copy of it).
struct Child<'a> {
    cgroup_entry: &'a cgroups::Entry,
    spec: &'a Spec,
    linux: &'a Linux,
    rootfs: &'a Path,
    bundle: &'a Path,
    joins: &'a Joins,
    parent_fd: RawFd,
    console_fd: Option<RawFd>,
    stdio: Option<[RawFd; 3]>,
    state_dir_fd: RawFd,
    hook_state: String,
}

impl Child<'_> {
    /// The intermediate process: joins the spec's namespace paths, creates the user namespace (the runtime
    /// writes its maps), creates the other namespaces, then clones init as our sibling and reports its pid.
    fn intermediate(self, ch: Channel, forked_into_unified: bool) -> i32 {
        // SAFETY: our copy of the runtime's end; closing it makes EOF reliable for the runtime.
        unsafe { libc::close(self.parent_fd) };
        // Not dumpable before any namespace is joined: a process already in a joined pid namespace must not reach
        // us (or init, which inherits this until execve) through /proc (CVE-2019-5736), as runc does.
        let _ = sys::prctl(libc::PR_SET_DUMPABLE, 0);
        if needs_unified_join(self.cgroup_entry.unified().is_some(), forked_into_unified) && ch.wait_go().is_err() {
            return 1;
        }
        // Into the cgroup before anything else, while single-threaded and still with the host's credentials.
        if let Err(e) = self.cgroup_entry.join_v1() {
            let _ = ch.send(&Msg::Error(e.to_string()));
            return 1;
        }
        // The container's stdio, inherited by init from here.
        if let Some(fds) = self.stdio
            && let Err(e) = process::set_stdio(fds)
        {
            let _ = ch.send(&Msg::Error(format!("setting up stdio: {e}")));
            return 1;
        }
        match self.intermediate_steps(&ch) {
            Ok(()) => 0,
            Err(e) => {
                let _ = ch.send(&Msg::Error(e));
                1
            }
        }
    }

    fn intermediate_steps(&self, ch: &Channel) -> std::result::Result<(), String> {
        let ns = self.linux.namespaces().clone().unwrap_or_default();
        self.joins.enter_user().map_err(|e| e.to_string())?;
        if namespaces::wants_new(&ns, LinuxNamespaceType::User) {
            // SETNS/UNSHARE: the new user namespace first, so that it owns the namespaces created below.
            sys::unshare(libc::CLONE_NEWUSER).map_err(|e| format!("creating user namespace: {e}"))?;
            ch.send(&Msg::MapIds).map_err(|e| e.to_string())?;
            ch.wait_go().map_err(|e| e.to_string())?;
            // Become the namespace's root (if mapped) so init starts with uid 0 inside.
            // SAFETY: plain syscalls.
            unsafe {
                libc::setresgid(0, 0, 0);
                libc::setresuid(0, 0, 0);
            }
        }
        self.joins.enter_except_user().map_err(|e| e.to_string())?;
        let flags = namespaces::new_flags(&ns);
        // UNSHARE: mount, uts, ipc, net and cgroup apply to us and are inherited by init; pid and time apply
        // to our children only, which is why init is a separate process.
        sys::unshare(flags).map_err(|e| format!("creating namespaces: {e}"))?;
        if flags & libc::CLONE_NEWTIME != 0 {
            let mut offsets = String::new();
            for (clock, off) in self.linux.time_offsets().iter().flatten() {
                offsets.push_str(&format!("{clock} {} {}\n", off.secs().unwrap_or(0), off.nanosecs().unwrap_or(0)));
            }
            if !offsets.is_empty() {
                std::fs::write("/proc/self/timens_offsets", offsets).map_err(|e| format!("linux.timeOffsets: {e}"))?;
            }
        }
        let in_userns = init::in_userns(&ns);
        let new_cgroupns = init::new_cgroupns(&ns);
        let ch_fd = ch.as_raw_fd();
        // Init reads this pipe to EOF before it sends anything, so the runtime has init's pid (sent below) before
        // any message of init's, without a round trip through the runtime.
        let (pid_sent_read, pid_sent_write) = sys::pipe().map_err(|e| format!("creating a pipe: {e}"))?;
        let (pid_sent_read_fd, pid_sent_write_fd) = (pid_sent_read.as_raw_fd(), pid_sent_write.as_raw_fd());
        // CLONE: init, pid 1 of a new pid namespace, as the runtime's child (CLONE_PARENT) so `run` can wait for it.
        let pid = fork::clone_sibling(|| {
            // SAFETY: init's copy of the write end, closed so that only ours keeps the pipe open.
            unsafe { libc::close(pid_sent_write_fd) };
            // SAFETY: init owns its copies of these inherited fds from here on.
            let (channel, pid_sent, console_socket, state_dir) = unsafe {
                (
                    Channel::from_raw_fd(ch_fd),
                    OwnedFd::from_raw_fd(pid_sent_read_fd),
                    self.console_fd.map(|fd| OwnedFd::from_raw_fd(fd)),
                    OwnedFd::from_raw_fd(self.state_dir_fd),
                )
            };
            init::run(InitArgs {
                spec: self.spec,
                rootfs: self.rootfs,
                bundle: self.bundle,
                channel: Some(channel),
                pid_sent: Some(pid_sent),
                console_socket,
                state_dir: Some(state_dir),
                in_userns,
                new_cgroupns,
                hook_state: self.hook_state.clone(),
            })
        })
        .map_err(|e| format!("cloning init: {e}"))?;
        ch.send(&Msg::Pid(pid)).map_err(|e| e.to_string())?;
        drop(pid_sent_write);
        drop(pid_sent_read);
        Ok(())
    }
}
