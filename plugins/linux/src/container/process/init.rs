//! The container's init: runs in the new namespaces (forked from the intermediate with CLONE_PARENT), sets up
//! the root filesystem and the process attributes, reports Ready, waits on exec.fifo for `start`, and execs the
//! container process. Every failure is reported over the channel with the step that failed; after Ready the
//! runtime is gone, so later failures can only end init.

use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::channel::{Channel, Msg};
use super::{console, namespaces, rootfs, sys};
use crate::container::hooks;

pub struct InitArgs<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    pub bundle: &'a Path,
    pub channel: Option<Channel>,
    /// Read end of a pipe the intermediate closes once it has sent our pid: read to EOF before anything is sent
    /// on `channel`, so the runtime knows our pid before any message of ours.
    pub pid_sent: Option<OwnedFd>,
    pub console_socket: Option<OwnedFd>,
    /// O_PATH fd of the state directory: exec.fifo is opened through it after pivot_root, when the host path is
    /// no longer reachable. It is close-on-exec and closed before exec.
    pub state_dir: Option<OwnedFd>,
    /// In a user namespace (new or joined): devices are bind-mounted, not created.
    pub in_userns: bool,
    pub new_cgroupns: bool,
    /// The state JSON for createContainer and startContainer hooks.
    pub hook_state: String,
}

/// Runs init; returns only on failure (the exit code), having reported the error if the runtime still listens.
pub fn run(mut a: InitArgs) -> i32 {
    super::reset_signals();
    let err = match init(&mut a) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    wait_pid_sent(&mut a.pid_sent);
    if a.channel.as_ref().is_none_or(|c| c.send(&Msg::Error(err.clone())).is_err()) {
        // After Ready nobody listens: stderr is all there is (it is the container's stderr).
        let _ = writeln!(io::stderr(), "berth init: {err}");
    }
    1
}

fn step<T>(name: &str, r: io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{name}: {e}"))
}

fn init(a: &mut InitArgs) -> Result<std::convert::Infallible, String> {
    let spec = a.spec;
    let process = spec.process().as_ref().ok_or("process: missing")?;
    let linux = spec.linux().as_ref().ok_or("linux: missing")?;

    // Devices are created with their exact modes; the process' umask is set later.
    // SAFETY: plain syscall.
    unsafe { libc::umask(0) };
    // A new session: init must not share the runtime's controlling terminal or process group.
    // SAFETY: plain syscall; fails only if already a group leader, which a fresh child is not.
    unsafe { libc::setsid() };
    // Not dumpable until execve (which resets it): nothing in the container may ptrace us or open
    // /proc/<init>/exe, the runtime binary, while we are still the runtime (CVE-2019-5736).
    step("prctl(PR_SET_DUMPABLE)", sys::prctl(libc::PR_SET_DUMPABLE, 0))?;

    step("setting rlimits", super::set_rlimits(process))?;
    step("setting oom_score_adj", super::set_oom_score_adj(process))?;

    // Mounts happen in our own mount namespace (validation requires a new one), so nothing reaches the host.
    step("preparing rootfs", rootfs::prepare(a.rootfs, linux.rootfs_propagation().as_deref()))?;
    let mounts = spec.mounts().clone().unwrap_or_default();
    for m in &mounts {
        step("mounts", rootfs::mount_one(a.rootfs, a.bundle, m, a.in_userns, a.new_cgroupns))?;
    }

    // prestart and createRuntime hooks run in the runtime namespace, by the runtime, now that our namespaces
    // exist and before pivot_root; then createContainer hooks run here, in the container's namespaces.
    wait_pid_sent(&mut a.pid_sent);
    let channel = a.channel.as_ref().ok_or("no channel")?;
    // Asked for only when there are such hooks: the round trip through the runtime is a wake-up on each side.
    if hooks::has_runtime_hooks(spec) {
        step("sync with runtime", channel.send(&Msg::RunHooks))?;
        step("sync with runtime", channel.wait_go())?;
    }
    hooks::run(spec, hooks::Kind::CreateContainer, &hook_state(&a.hook_state, "creating"))
        .map_err(|e| e.to_string())?;

    if !rootfs::binds_dev(&mounts) {
        step("devices", rootfs::create_devices(a.rootfs, linux.devices().as_deref().unwrap_or_default(), a.in_userns))?;
        step("devices", rootfs::create_dev_symlinks(a.rootfs))?;
    }

    step("pivot_root", rootfs::pivot(a.rootfs))?;
    step("rootfsPropagation", rootfs::set_root_propagation(linux.rootfs_propagation().as_deref()))?;

    if process.terminal().unwrap_or(false) {
        let sock = a.console_socket.take().ok_or("process.terminal is true but there is no console socket")?;
        step("console", console::setup(&sock, process, true))?;
    }
    a.console_socket = None;

    for (key, value) in linux.sysctl().iter().flatten() {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        step(&format!("sysctl {key}"), std::fs::write(&path, value))?;
    }
    step("readonly paths", rootfs::readonly_paths(linux.readonly_paths().as_deref().unwrap_or_default()))?;
    step("masked paths", rootfs::mask_paths(linux.masked_paths().as_deref().unwrap_or_default()))?;
    if spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        step("readonly root", rootfs::readonly_root())?;
    }

    if let Some(hostname) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        // SAFETY: pointer and length of a valid buffer.
        step(
            "sethostname",
            sys::cvt(unsafe { libc::sethostname(hostname.as_ptr() as *const libc::c_char, hostname.len()) }),
        )?;
    }
    if let Some(domain) = spec.domainname().as_deref().filter(|h| !h.is_empty()) {
        // SAFETY: pointer and length of a valid buffer.
        step(
            "setdomainname",
            sys::cvt(unsafe { libc::setdomainname(domain.as_ptr() as *const libc::c_char, domain.len()) }),
        )?;
    }
    if process.apparmor_profile().is_some() || process.selinux_label().is_some() {
        tracing::debug!("apparmorProfile and selinuxLabel are ignored: no LSM support yet");
    }

    let nnp = process.no_new_privileges().unwrap_or(false);
    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it before the capabilities are dropped
    // (as runc does). With it, install last, so the runtime's own remaining syscalls are not filtered.
    // Compiled now, so that a bad profile fails create; installed below.
    let seccomp = linux.seccomp().as_ref().map(super::compile_seccomp).transpose()?;
    if !nnp && let Some((program, flags)) = &seccomp {
        super::install_seccomp(program, flags)?;
    }
    if nnp {
        step("prctl(PR_SET_NO_NEW_PRIVS)", sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1))?;
    }
    let setgroups_denied = std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny");
    step("user and capabilities", super::set_user_and_caps(process, setgroups_denied))?;
    super::set_umask(process);
    step("cwd", super::enter_cwd(process.cwd()))?;

    let args = process.args().clone().unwrap_or_default();
    let env = process.env().clone().unwrap_or_default();
    let exe = step("resolving the executable", super::find_executable(&args[0], &env))?;

    // Created: the runtime records the state and exits. From here on, errors only reach our stderr.
    step("sync with runtime", channel.send(&Msg::Ready))?;
    a.channel = None;

    // Blocks until `start` opens the fifo for reading. openat through the state directory fd: the fifo's path
    // is on the host, outside our root now.
    let name = CString::new(crate::container::state::EXEC_FIFO).unwrap_or_default();
    let state_dir = a.state_dir.take().ok_or("no state directory fd")?;
    let fifo = step("opening exec fifo", sys::openat(&state_dir, &name, libc::O_WRONLY))?;
    // Closed before anything of the container runs.
    drop(state_dir);

    // startContainer hooks run once `start` is called and before the byte that lets `start` return: start then
    // runs poststart only after them (the spec's order) and fails when one fails (init exits without writing).
    hooks::run(spec, hooks::Kind::StartContainer, &hook_state(&a.hook_state, "created")).map_err(|e| e.to_string())?;
    step("writing exec fifo", std::fs::File::from(fifo).write_all(b"0"))?;

    if nnp && let Some((program, flags)) = &seccomp {
        super::install_seccomp(program, flags)?;
    }
    // Nothing of the runtime may leak into the container (CVE-2024-21626): every fd above stdio closes on exec.
    step("close_range", sys::cloexec_from(3))?;
    let err = super::execve(&exe, &args, &env);
    Err(format!("exec {}: {err}", exe.display()))
}

/// Blocks until the intermediate has sent our pid to the runtime (it closes the pipe's other end then).
fn wait_pid_sent(pid_sent: &mut Option<OwnedFd>) {
    let Some(fd) = pid_sent.take() else { return };
    let mut byte = [0u8; 1];
    loop {
        // SAFETY: a read into a local one-byte buffer from an fd we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // EOF (or an error, which leaves nothing to wait for either).
        if n <= 0 {
            return;
        }
    }
}

/// The state for hooks that run in the container (createContainer, startContainer): the spec wants the pid as
/// the container sees it, and `status` (the runtime's copy was taken before init existed: pid 0, creating).
fn hook_state(runtime_state: &str, status: &str) -> String {
    let Ok(mut st) = serde_json::from_str::<serde_json::Value>(runtime_state) else {
        return runtime_state.to_string();
    };
    st["pid"] = std::process::id().into();
    st["status"] = status.into();
    st.to_string()
}

/// Whether init is in a user namespace of its own (new or joined).
pub fn in_userns(ns: &[oci_spec::runtime::LinuxNamespace]) -> bool {
    ns.iter().any(|n| n.typ() == LinuxNamespaceType::User)
}

/// True when a new cgroup namespace is created.
pub fn new_cgroupns(ns: &[oci_spec::runtime::LinuxNamespace]) -> bool {
    namespaces::wants_new(ns, LinuxNamespaceType::Cgroup)
}
