//! What runs in the runtime's children, between fork and execve. See the parent module for why forking is safe
//! here (single-threaded callers only) and the process model.

pub mod capabilities;
pub mod channel;
pub mod console;
pub mod fork;
pub mod init;
pub mod namespaces;
pub mod rootfs;
pub mod sys;

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompFilterFlag, PosixRlimitType, Process};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Sets the process' rlimits (before dropping privileges: raising a hard limit needs CAP_SYS_RESOURCE).
pub fn set_rlimits(process: &Process) -> io::Result<()> {
    for rl in process.rlimits().iter().flatten() {
        let resource = match rl.typ() {
            PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
            PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
            PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
            PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
            PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
            PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
            PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
            PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
            PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
            PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
            PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
            PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
            PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
            PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
            PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
            PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
        };
        let lim = libc::rlimit { rlim_cur: rl.soft(), rlim_max: rl.hard() };
        // SAFETY: lim is a valid rlimit.
        sys::cvt(unsafe { libc::setrlimit(resource, &lim) })
            .map_err(|e| io::Error::new(e.kind(), format!("setrlimit {:?}: {e}", rl.typ())))?;
    }
    Ok(())
}

/// Changes user and groups (with the capability dance in [`capabilities::change_user`]).
pub fn set_user_and_caps(process: &Process, in_userns_without_setgroups: bool) -> io::Result<()> {
    let user = process.user();
    let groups: Vec<libc::gid_t> = user.additional_gids().clone().unwrap_or_default();
    capabilities::change_user(user.uid(), user.gid(), &groups, !in_userns_without_setgroups, process.capabilities())
}

/// Finds the executable like execvp would, in the container's PATH (after pivot_root, so in its filesystem).
pub fn find_executable(arg0: &str, env: &[String]) -> io::Result<PathBuf> {
    let executable = |p: &Path| {
        let Ok(c) = sys::cstring(p) else { return false };
        // SAFETY: NUL-terminated path.
        p.is_file() && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0
    };
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        if executable(&p) {
            return Ok(p);
        }
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("exec: {arg0:?}: no such executable file")));
    }
    let path = env.iter().find_map(|kv| kv.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(arg0);
        if executable(&p) {
            return Ok(p);
        }
    }
    Err(io::Error::new(io::ErrorKind::NotFound, format!("exec: {arg0:?}: executable file not found in $PATH")))
}

/// execve; returns only on failure.
pub fn execve(path: &Path, args: &[String], env: &[String]) -> io::Error {
    let to_c = |v: &[String]| v.iter().map(sys::cstring).collect::<io::Result<Vec<CString>>>();
    let (path, args, env) = match (sys::cstring(path), to_c(args), to_c(env)) {
        (Ok(p), Ok(a), Ok(e)) => (p, a, e),
        _ => return io::Error::new(io::ErrorKind::InvalidInput, "argument or environment contains NUL"),
    };
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: argv and envp are NULL-terminated arrays of NUL-terminated strings that outlive the call.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// The umask of the process: user.umask, else 0022 like runc.
pub fn set_umask(process: &Process) {
    let mask = process.user().umask().unwrap_or(0o022);
    // SAFETY: plain syscall.
    unsafe { libc::umask(mask as libc::mode_t) };
}

/// chdir into cwd and check that it is reachable from the root: a cwd through a leaked fd
/// (/proc/self/fd/N) would be outside the container (CVE-2024-21626); the kernel's getcwd fails then.
pub fn enter_cwd(cwd: &Path) -> io::Result<()> {
    std::env::set_current_dir(cwd)
        .map_err(|e| io::Error::new(e.kind(), format!("chdir to cwd {}: {e}", cwd.display())))?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: buf is valid for its length.
    let r = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
    if r < 0 || buf[0] != b'/' {
        return Err(io::Error::other(format!("cwd {} is outside the container root", cwd.display())));
    }
    Ok(())
}

/// Compiles the profile to BPF (pure computation: done early so a bad profile fails `create`).
pub fn compile_seccomp(
    profile: &LinuxSeccomp,
) -> Result<(crate::seccomp::Program, Vec<LinuxSeccompFilterFlag>), String> {
    let program = crate::seccomp::compile(profile).map_err(|e| format!("linux.seccomp: {e}"))?;
    Ok((program, profile.flags().clone().unwrap_or_default()))
}

/// Installs the filter: the last thing before execve when no_new_privs is set; otherwise (the kernel then wants
/// CAP_SYS_ADMIN) before the capabilities are dropped.
pub fn install_seccomp(program: &crate::seccomp::Program, flags: &[LinuxSeccompFilterFlag]) -> Result<(), String> {
    crate::seccomp::install(program, flags).map_err(|e| format!("installing the seccomp filter: {e}"))
}

/// Writes oom_score_adj through the host's /proc (before pivot_root; "self" is our host pid there).
pub fn set_oom_score_adj(process: &Process) -> io::Result<()> {
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| io::Error::new(e.kind(), format!("writing oom_score_adj {adj}: {e}")))?;
    }
    Ok(())
}

/// Makes `fds` this process's stdin, stdout and stderr. Each is first copied above 2, so a source that is
/// itself 0, 1 or 2 is not overwritten before it is used.
pub fn set_stdio(fds: [std::os::fd::RawFd; 3]) -> io::Result<()> {
    let mut high = [0; 3];
    for (i, fd) in fds.into_iter().enumerate() {
        // SAFETY: plain syscall; the copy is close-on-exec and only lives until dup2 below.
        high[i] = sys::cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })?;
    }
    for (target, fd) in high.into_iter().enumerate() {
        sys::dup2(fd, target as i32)?;
        // SAFETY: our temporary copy.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Gives the container a clean signal state: every signal at its default action and none blocked. The process
/// that forked us may ignore some (Rust's runtime ignores SIGPIPE) or block some (the reaper blocks SIGCHLD for
/// its signalfd), and ignored and blocked signals survive execve.
pub fn reset_signals() {
    // SAFETY: sigaction with SIG_DFL and sigprocmask on a local empty set; SIGKILL and SIGSTOP are skipped.
    unsafe {
        for sig in 1..libc::SIGRTMIN() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}
