//! The two ways the runtime creates processes, and why each.
//!
//! - [`fork_child`]: glibc's `fork()`, used for the intermediate process. glibc runs its atfork handlers, so
//!   malloc's locks are consistent in the child even if the caller had other threads (it must not: see the
//!   module docs of `container`, but tests run inside libtest's threads).
//! - [`clone_sibling`]: raw `clone(CLONE_PARENT)`, used by the intermediate for init and exec'd processes: the
//!   new process becomes a child of the runtime process (the intermediate's parent), so the runtime can wait for
//!   it and no exit status is lost to re-parenting (youki#1601). The intermediate is single-threaded, so
//!   bypassing glibc's atfork handlers is safe there.
//!
//! - [`fork_child_into`]: like [`fork_child`], but with `clone3(CLONE_INTO_CGROUP)` so that the child starts in
//!   a cgroup2 cgroup (see `cgroups::Entry` for why not by writing its pid), where the kernel has it and only
//!   from a single-threaded caller (the per-task reaper): a raw clone skips glibc's atfork handlers.
//!
//! Both run the child's closure and then `_exit`, never returning into the caller's stack frames: destructors
//! and buffered output of the parent's state must not run twice.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::sys;

/// Runs `child` in a forked process that exits with its return value; returns the child's pid to the parent.
pub fn fork_child(child: impl FnOnce() -> i32) -> io::Result<i32> {
    // SAFETY: see the module docs; the child only runs `child` and then _exits.
    let pid = sys::cvt(unsafe { libc::fork() })?;
    if pid == 0 {
        run_and_exit(child);
    }
    Ok(pid)
}

/// Like [`fork_child`], but the child starts in the cgroup2 cgroup `cgroup` when the kernel can do that and the
/// caller is single-threaded. Returns the pid and whether the child is in that cgroup; if not, the caller adds
/// it the usual way. The child gets the same answer as its argument, so it knows whether to wait for that.
pub fn fork_child_into(cgroup: Option<BorrowedFd<'_>>, child: impl FnOnce(bool) -> i32) -> io::Result<(i32, bool)> {
    let Some(cgroup) = cgroup.filter(|_| single_threaded()) else {
        return fork_child(|| child(false)).map(|pid| (pid, false));
    };
    // struct clone_args of <linux/sched.h> up to `cgroup` (Linux 5.7).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..Default::default()
    };
    // No stack: like fork, the child runs on a copy-on-write copy of ours.
    // SAFETY: clone3 without CLONE_VM from a single-threaded process; the child only runs `child` and _exits.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, size_of::<CloneArgs>()) };
    match sys::cvt_long(pid) {
        Ok(0) => run_and_exit(|| child(true)),
        Ok(pid) => Ok((pid as i32, true)),
        // ENOSYS (before 5.3, or a seccomp filter), E2BIG/EINVAL (no CLONE_INTO_CGROUP before 5.7), or a
        // cgroup the kernel will not start a process in: the usual way reports that one properly.
        Err(e) => {
            tracing::debug!("clone3 into the cgroup failed ({e}); forking and adding the pid instead");
            fork_child(|| child(false)).map(|pid| (pid, false))
        }
    }
}

/// Whether the calling process has one thread (`num_threads` of /proc/self/stat).
fn single_threaded() -> bool {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return false };
    // After the command's closing parenthesis: state is field 3, num_threads field 20.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(17)).is_some_and(|n| n == "1")
}

/// Like [`fork_child`] but the child becomes a sibling of the caller (a child of the caller's parent).
pub fn clone_sibling(child: impl FnOnce() -> i32) -> io::Result<i32> {
    // A null stack makes clone behave like fork: the child runs on a copy-on-write copy of our stack.
    // SAFETY: raw clone without CLONE_VM; the child only runs `child` and then _exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    let pid = sys::cvt_long(pid)? as i32;
    if pid == 0 {
        run_and_exit(child);
    }
    Ok(pid)
}

fn run_and_exit(child: impl FnOnce() -> i32) -> ! {
    let code = catch_unwind(AssertUnwindSafe(child)).unwrap_or(127);
    // SAFETY: _exit skips atexit handlers and stdio flushing, which belong to the parent.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::Cgroup;

    /// A process forked by a single-threaded one (the reaper's case) starts in the cgroup2 cgroup and moves
    /// itself into every v1 one: /proc/self/cgroup names the cgroup in every hierarchy.
    #[test]
    fn a_child_enters_the_cgroup_by_itself() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let path = format!("/berth-test-entry-{}", std::process::id());
        let cg = Cgroup::create(&path, None).unwrap();
        let entry = cg.entry().unwrap();
        let has_unified = entry.unified().is_some();
        // The test runs among libtest's threads: fork a single-threaded helper first, as berthd starts a reaper.
        let helper = fork_child(|| {
            let Ok((pid, in_unified)) = fork_child_into(entry.unified(), |started_in| {
                if started_in != has_unified {
                    return 8;
                }
                if entry.join_v1().is_err() {
                    return 2;
                }
                let Ok(own) = std::fs::read_to_string("/proc/self/cgroup") else { return 3 };
                if own.lines().all(|l| l.ends_with(&format!(":{path}"))) { 0 } else { 4 }
            }) else {
                return 5;
            };
            let status = sys::waitpid(pid, 0).ok().flatten().map_or(6, sys::exit_code);
            if status == 0 && has_unified && !in_unified { 7 } else { status }
        })
        .unwrap();
        let status = sys::waitpid(helper, 0).unwrap().map(sys::exit_code);
        drop(entry);
        cg.delete().unwrap();
        // 2: join_v1 failed, 4: a hierarchy without the cgroup, 7: clone3 did not start it in the cgroup2 one,
        // 8: the child was told otherwise.
        assert_eq!(status, Some(0));
    }
}
