//! The waiter: the small process that runs a container's runtime command and outlives berthd.
//!
//! `runc run` and `runc exec` stay in the foreground until the container's process ends, and exit with its
//! status (128 + signal when a signal killed it). Run as berthd's children they would take that status with
//! them when berthd stops: nobody else can `waitpid` them. So each one runs under a waiter, `/bin/sh` in a
//! session of its own (berthd's signals and its end do not reach it), which writes the command's exit status
//! into a file of the task's bundle (`<tag>.exit`) and exits with it.
//!
//! While berthd runs, the waiter is its child and a thread waits for it. A berthd that starts again finds the
//! waiter by its pid and start time (recorded in the task's state file, so a reused pid is not mistaken for
//! it), watches it with a pidfd (which works for processes that are not our children), and reads the exit
//! file once it is gone, or at once if it is gone already.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The script: runs `"$@"`, writes its status into `$1`'s file, exits with it.
const SCRIPT: &str = "f=$1; shift; \"$@\"; rc=$?; echo $rc > \"$f\"; exit $rc";

/// A waiter, as recorded in the task's state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaiterId {
    /// Its pid.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/PID/stat` field 22): tells it from a later process
    /// that got the same pid.
    pub start: u64,
}

/// Starts `argv` under a waiter writing its status into `exit_file`, with the given stdio.
pub fn spawn(argv: &[OsString], exit_file: &Path, stdio: [Stdio; 3]) -> io::Result<(Child, WaiterId)> {
    let _ = fs::remove_file(exit_file);
    let [stdin, stdout, stderr] = stdio;
    let mut command = Command::new("/bin/sh");
    command.arg("-c").arg(SCRIPT).arg("berth-oci-waiter").arg(exit_file).args(argv);
    command.stdin(stdin).stdout(stdout).stderr(stderr);
    // SAFETY: setsid(2) is async-signal-safe, as the code between fork and exec must be. A session of its own:
    // berthd's process group and terminal signals do not reach the waiter or the runtime command under it.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    let pid = child.id();
    // The child exists (a zombie at worst) until we wait for it, so its /proc entry is there.
    let start = start_time(pid).unwrap_or(0);
    Ok((child, WaiterId { pid, start }))
}

/// A process's start time, None when it is gone (or a zombie: it ran already).
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (the state), so field 22 is fields[19].
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether the waiter still runs.
pub fn alive(waiter: &WaiterId) -> bool {
    start_time(waiter.pid).is_some_and(|s| s == waiter.start)
}

/// Blocks until process `pid` (not necessarily our child) ends; returns at once if it is gone already.
pub fn wait_gone(pid: u32, still_it: impl Fn() -> bool) {
    // SAFETY: pidfd_open(2) returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: the descriptor is new and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // Opened after the check that found it: make sure the pid was not reused in between.
    if !still_it() {
        return;
    }
    loop {
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one valid descriptor.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n > 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// The status a waiter wrote and when: None when it wrote none (it was killed, or has not finished).
pub fn read_exit(exit_file: &Path) -> Option<(u32, SystemTime)> {
    let text = fs::read_to_string(exit_file).ok()?;
    let status = text.trim().parse().ok()?;
    let at = fs::metadata(exit_file).and_then(|m| m.modified()).unwrap_or_else(|_| SystemTime::now());
    Some((status, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_waiter_records_the_status_and_is_found_by_pid_and_start_time() {
        let dir = std::env::temp_dir().join(format!("oci-waiter-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let exit = dir.join("init.exit");
        let argv: Vec<OsString> = ["/bin/sh", "-c", "sleep 0.2; exit 7"].map(Into::into).to_vec();
        let (mut child, id) = spawn(&argv, &exit, [Stdio::null(), Stdio::null(), Stdio::null()]).unwrap();
        assert!(alive(&id));
        assert!(!alive(&WaiterId { pid: id.pid, start: id.start + 1 }), "another start time is another process");
        assert_eq!(child.wait().unwrap().code(), Some(7));
        assert!(!alive(&id));
        assert_eq!(read_exit(&exit).map(|e| e.0), Some(7));
        // Killed by a signal: 128 + the signal, as a shell reports it.
        let argv: Vec<OsString> = ["/bin/sh", "-c", "kill -9 $$"].map(Into::into).to_vec();
        let (child, id) = spawn(&argv, &exit, [Stdio::null(), Stdio::null(), Stdio::null()]).unwrap();
        // Not waited for as a child: found gone through its pidfd.
        wait_gone(id.pid, || true);
        drop(child);
        assert_eq!(read_exit(&exit).map(|e| e.0), Some(137));
        assert!(read_exit(&dir.join("none")).is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}
