//! Loading a compiled [`Program`] into the kernel.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use libc::{c_ulong, c_ushort};
use oci_spec::runtime::LinuxSeccompFilterFlag as Flag;

use super::{Program, SeccompError};

/// Installs `program` on the calling thread with `seccomp(SECCOMP_SET_MODE_FILTER)` and the
/// profile's `flags` (`SECCOMP_FILTER_FLAG_TSYNC` applies it to every thread of the process).
/// Falls back to `prctl(PR_SET_SECCOMP)` on kernels without the seccomp syscall when no flag is
/// needed.
///
/// Does not set `no_new_privs`: the caller sets it when `process.noNewPrivileges` is true;
/// otherwise the kernel requires `CAP_SYS_ADMIN`. A program using `SCMP_ACT_NOTIFY` is refused:
/// see [`install_with_listener`]. `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` only applies to
/// listeners and is ignored here.
pub fn install(program: &Program, flags: &[Flag]) -> Result<(), SeccompError> {
    if program.uses_notify() {
        return Err(SeccompError::ListenerRequired);
    }
    load(program, flags, false).map(drop)
}

/// Like [`install`], and when the program uses `SCMP_ACT_NOTIFY`, also asks for a user
/// notification listener (`SECCOMP_FILTER_FLAG_NEW_LISTENER`) and returns its fd; `None` when the
/// program does not notify. With `SECCOMP_FILTER_FLAG_TSYNC`, `SECCOMP_FILTER_FLAG_TSYNC_ESRCH`
/// is added, as the kernel requires (Linux 5.7+).
pub fn install_with_listener(program: &Program, flags: &[Flag]) -> Result<Option<OwnedFd>, SeccompError> {
    load(program, flags, program.uses_notify())
}

fn flag_bit(flag: Flag) -> c_ulong {
    match flag {
        Flag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
        Flag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
        Flag::SeccompFilterFlagSpecAllow => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
        Flag::SeccompFilterFlagWaitKillableRecv => libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
    }
}

fn describe(flags: &[Flag], listener: bool) -> String {
    let mut names: Vec<String> = flags.iter().map(ToString::to_string).collect();
    if listener {
        names.push("SECCOMP_FILTER_FLAG_NEW_LISTENER".to_owned());
    }
    names.join(", ")
}

fn load(program: &Program, flags: &[Flag], listener: bool) -> Result<Option<OwnedFd>, SeccompError> {
    let mut bits: c_ulong = 0;
    for &flag in flags {
        if flag == Flag::SeccompFilterFlagWaitKillableRecv && !listener {
            tracing::debug!("seccomp: {flag} ignored: the filter has no listener");
            continue;
        }
        bits |= flag_bit(flag);
    }
    if listener {
        bits |= libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
        if bits & libc::SECCOMP_FILTER_FLAG_TSYNC != 0 {
            bits |= libc::SECCOMP_FILTER_FLAG_TSYNC_ESRCH;
        }
    }
    let prog = libc::sock_fprog {
        len: c_ushort::try_from(program.len()).map_err(|_| SeccompError::ProgramTooLong { len: program.len() })?,
        filter: program.instructions().as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points to `program.len()` initialized instructions that outlive the call;
    // the kernel copies them and does not write through the pointer.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            c_ulong::from(libc::SECCOMP_SET_MODE_FILTER),
            bits,
            &prog as *const libc::sock_fprog,
        )
    };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOSYS) {
            return load_with_prctl(&prog, bits, flags, listener);
        }
        return Err(SeccompError::Install { flags: describe(flags, listener), source: err });
    }
    if listener {
        let fd = RawFd::try_from(ret).expect("seccomp returns an fd");
        // SAFETY: with NEW_LISTENER, seccomp returns a new fd that nothing else owns.
        return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
    }
    if ret > 0 {
        // TSYNC without TSYNC_ESRCH: the id of a thread that could not be synchronized.
        return Err(SeccompError::TsyncFailed { tid: ret });
    }
    Ok(None)
}

/// Linux < 3.17: no seccomp syscall; prctl takes no flags.
fn load_with_prctl(
    prog: &libc::sock_fprog,
    bits: c_ulong,
    flags: &[Flag],
    listener: bool,
) -> Result<Option<OwnedFd>, SeccompError> {
    if bits != 0 {
        let flag = flags
            .iter()
            .find(|f| bits & flag_bit(**f) != 0)
            .map(ToString::to_string)
            .unwrap_or_else(|| "SECCOMP_FILTER_FLAG_NEW_LISTENER".to_owned());
        return Err(SeccompError::FlagUnsupported { flag });
    }
    // SAFETY: as for seccomp(2) above.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            c_ulong::from(libc::SECCOMP_MODE_FILTER),
            prog as *const libc::sock_fprog,
            0 as c_ulong,
            0 as c_ulong,
        )
    };
    if ret != 0 {
        let source = io::Error::last_os_error();
        return Err(SeccompError::Install { flags: describe(flags, listener), source });
    }
    Ok(None)
}

/// These tests install real filters. Filters (and `no_new_privs`) apply to the calling thread
/// only, so each case runs in a thread of its own and never touches the test harness's threads.
#[cfg(test)]
mod tests {
    use super::super::compile;
    use super::super::testutil::{docker_default, profile};
    use super::*;
    use serde_json::json;
    use std::os::fd::AsRawFd;

    /// A raw syscall: `Ok(return value)` or `Err(errno)`.
    fn sys(nr: libc::c_long, args: &[u64]) -> Result<i64, i32> {
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        // SAFETY: the tests only make syscalls whose pointer arguments are null, point to live
        // data, or are never dereferenced because the filter or a bad fd stops them first.
        let ret = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
        if ret == -1 { Err(io::Error::last_os_error().raw_os_error().unwrap()) } else { Ok(ret) }
    }

    fn no_new_privs() {
        // SAFETY: plain prctl; affects the calling thread only.
        let ret =
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as c_ulong, 0 as c_ulong, 0 as c_ulong, 0 as c_ulong) };
        assert_eq!(ret, 0, "PR_SET_NO_NEW_PRIVS: {}", io::Error::last_os_error());
    }

    /// Runs `check` in a new thread, after setting `no_new_privs` and installing `program` there.
    fn filtered<T: Send + 'static>(
        program: Program,
        flags: Vec<Flag>,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        std::thread::spawn(move || {
            no_new_privs();
            install(&program, &flags).expect("filter installs");
            check()
        })
        .join()
        .expect("filtered thread ran to completion")
    }

    fn compiled(value: serde_json::Value) -> Program {
        compile(&profile(value)).expect("profile compiles")
    }

    /// dirfd -1 with a relative path: EBADF when the syscall is allowed, and nothing created.
    const PATH: &[u8] = b"berth-seccomp-test-dir\0";
    fn mkdirat(mode: u64) -> Result<i64, i32> {
        sys(libc::SYS_mkdirat, &[-1i64 as u64, PATH.as_ptr() as u64, mode])
    }
    fn lseek(offset: u64, whence: u64) -> Result<i64, i32> {
        sys(libc::SYS_lseek, &[-1i64 as u64, offset, whence])
    }

    #[test]
    fn errno_rule() {
        let program = compiled(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
        }));
        assert_eq!(mkdirat(0o755), Err(libc::EBADF), "unfiltered");
        let (blocked, pid) = filtered(program, vec![], || (mkdirat(0o755), sys(libc::SYS_getpid, &[])));
        assert_eq!(blocked, Err(38));
        assert_eq!(pid, Ok(i64::from(std::process::id())));
    }

    #[test]
    fn argument_equality() {
        let program = compiled(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                "args": [{"index": 0, "value": 0xffff_ffffu32, "op": "SCMP_CMP_NE"}]}]
        }));
        let (query, set) = filtered(program, vec![], || {
            (sys(libc::SYS_personality, &[0xffff_ffff]), sys(libc::SYS_personality, &[0x0040_0000]))
        });
        assert!(query.is_ok(), "{query:?}");
        assert_eq!(set, Err(libc::EACCES));
    }

    #[test]
    fn masked_equality() {
        let program = compiled(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 40,
                "args": [{"index": 2, "value": 0o700, "valueTwo": 0o700, "op": "SCMP_CMP_MASKED_EQ"}]}]
        }));
        let results = filtered(program, vec![], || [mkdirat(0o755), mkdirat(0o644), mkdirat(0o7777)]);
        assert_eq!(results, [Err(40), Err(libc::EBADF), Err(40)]);
    }

    #[test]
    fn sixty_four_bit_comparison() {
        let program = compiled(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["lseek"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42,
                "args": [{"index": 1, "value": 0x1_0000_0000u64, "op": "SCMP_CMP_GT"}]}]
        }));
        let results = filtered(program, vec![], || {
            [0x1_0000_0001u64, 0x2_0000_0000, 0x1_0000_0000, 0xffff_ffff, 5].map(|offset| lseek(offset, 0))
        });
        let (blocked, allowed) = (Err(42), Err(libc::EBADF));
        assert_eq!(results, [blocked, blocked, allowed, allowed, allowed]);
    }

    #[test]
    fn several_rules_for_one_syscall() {
        let program = compiled(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["lseek"], "action": "SCMP_ACT_ERRNO", "errnoRet": 41,
                    "args": [{"index": 2, "value": 1, "op": "SCMP_CMP_EQ"}]},
                {"names": ["lseek"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42,
                    "args": [{"index": 1, "value": 7, "op": "SCMP_CMP_LE"}, {"index": 2, "value": 2, "op": "SCMP_CMP_EQ"}]},
            ]
        }));
        let results = filtered(program, vec![], || [lseek(0, 1), lseek(7, 2), lseek(8, 2), lseek(9, 0), lseek(3, 1)]);
        assert_eq!(results, [Err(41), Err(42), Err(libc::EBADF), Err(libc::EBADF), Err(41)]);
    }

    #[test]
    fn log_action_allows() {
        let program = compiled(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_LOG"},
                         {"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO"}]
        }));
        let (ppid, mkdir) =
            filtered(program, vec![Flag::SeccompFilterFlagLog], || (sys(libc::SYS_getppid, &[]), mkdirat(0o755)));
        // SAFETY: getppid cannot fail.
        assert_eq!(ppid, Ok(i64::from(unsafe { libc::getppid() })));
        assert_eq!(mkdir, Err(libc::EPERM));
    }

    #[test]
    fn docker_default_profile_installs() {
        let program = compile(&docker_default()).expect("docker profile compiles");
        let results = filtered(program, vec![], || {
            let mut path = [0u8; 256];
            [
                mkdirat(0o755),                                                     // allowed
                sys(libc::SYS_getcwd, &[path.as_mut_ptr() as u64, 256]).map(|_| 0), // allowed
                sys(libc::SYS_mount, &[0, 0, 0, 0, 0]),                             // EPERM
                sys(libc::SYS_unshare, &[libc::CLONE_NEWUSER as u64]),              // EPERM
                sys(libc::SYS_clone3, &[0, 0]),                                     // ENOSYS (rule)
                sys(462, &[0, 0, 0]), // mseal, newer than the profile: ENOSYS (stub), not EPERM
                sys(libc::SYS_personality, &[0x0040_0000]), // EPERM
                sys(libc::SYS_personality, &[0xffff_ffff]).map(|_| 0), // allowed
            ]
        });
        assert_eq!(
            results,
            [
                Err(libc::EBADF),
                Ok(0),
                Err(libc::EPERM),
                Err(libc::EPERM),
                Err(libc::ENOSYS),
                Err(libc::ENOSYS),
                Err(libc::EPERM),
                Ok(0)
            ]
        );
    }

    #[test]
    fn long_program_loads() {
        // A rule for every known syscall: ~2000 instructions, plenty of out-of-reach jumps.
        let rules: Vec<_> = super::super::syscalls::all()
            .map(|(name, nr)| {
                json!({"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": nr % 4000 + 1,
                    "args": [{"index": 1, "value": u64::from(nr) << 32 | 9, "op": "SCMP_CMP_EQ"}]})
            })
            .collect();
        let program = compiled(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules}));
        assert!(program.len() > 1000);
        let nr = libc::SYS_lseek as u64;
        let results = filtered(program, vec![], move || [lseek(nr << 32 | 9, 0), lseek(9, 0)]);
        assert_eq!(results, [Err((nr % 4000 + 1) as i32), Err(libc::EBADF)]);
    }

    #[test]
    fn notify_needs_a_listener() {
        let program = compiled(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
        }));
        assert!(matches!(install(&program, &[]), Err(SeccompError::ListenerRequired)));

        let (tx, rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            no_new_privs();
            let listener = install_with_listener(&program, &[Flag::SeccompFilterFlagWaitKillableRecv])
                .expect("filter installs")
                .expect("notify profile has a listener");
            tx.send(listener).unwrap();
            // Blocks until the supervisor answers (or ENOSYS if the listener is closed).
            mkdirat(0o755)
        });
        let listener = rx.recv().unwrap();
        // Do not hang if the notification never comes.
        let mut pollfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut pollfd, 1, 10_000) }, 1, "no notification within 10 s");
        // SAFETY: seccomp_notif is plain data; RECV requires it zeroed.
        let mut notif: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: valid listener fd and a properly sized buffer.
        let ret = unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut notif) };
        assert_eq!(ret, 0, "NOTIF_RECV: {}", io::Error::last_os_error());
        assert_eq!(i64::from(notif.data.nr), libc::SYS_mkdirat);
        assert_eq!(notif.data.args[2], 0o755);
        let resp = libc::seccomp_notif_resp { id: notif.id, val: 0, error: -libc::EXDEV, flags: 0 };
        // SAFETY: valid listener fd and response.
        let ret = unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &resp) };
        assert_eq!(ret, 0, "NOTIF_SEND: {}", io::Error::last_os_error());
        assert_eq!(worker.join().unwrap(), Err(libc::EXDEV));

        // Without notify rules there is no listener.
        let plain = compiled(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO"}]}));
        let listener = std::thread::spawn(move || {
            no_new_privs();
            install_with_listener(&plain, &[]).expect("filter installs").is_none()
        });
        assert!(listener.join().unwrap());
    }
}
