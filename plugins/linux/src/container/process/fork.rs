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
//! Both run the child's closure and then `_exit`, never returning into the caller's stack frames: destructors
//! and buffered output of the parent's state must not run twice.

use std::io;
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
