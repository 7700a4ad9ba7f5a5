//! `kill`: a signal to init, or with `all` to every process of the cgroup.

use super::cgroup::Cgroup;
use super::process::sys;
use super::state::{StateDir, Status};
use super::{Error, Result, Runtime};

const SIGNALS: &[(&str, libc::c_int)] = &[
    ("ABRT", libc::SIGABRT),
    ("ALRM", libc::SIGALRM),
    ("BUS", libc::SIGBUS),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("FPE", libc::SIGFPE),
    ("HUP", libc::SIGHUP),
    ("ILL", libc::SIGILL),
    ("INT", libc::SIGINT),
    ("IO", libc::SIGIO),
    ("IOT", libc::SIGIOT),
    ("KILL", libc::SIGKILL),
    ("PIPE", libc::SIGPIPE),
    ("POLL", libc::SIGPOLL),
    ("PROF", libc::SIGPROF),
    ("PWR", libc::SIGPWR),
    ("QUIT", libc::SIGQUIT),
    ("SEGV", libc::SIGSEGV),
    ("STKFLT", libc::SIGSTKFLT),
    ("STOP", libc::SIGSTOP),
    ("SYS", libc::SIGSYS),
    ("TERM", libc::SIGTERM),
    ("TRAP", libc::SIGTRAP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("VTALRM", libc::SIGVTALRM),
    ("WINCH", libc::SIGWINCH),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
];

/// Parses `KILL`, `SIGKILL`, `kill`, `9`, `RTMIN+3` as runc does.
pub fn parse_signal(s: &str) -> Result<libc::c_int> {
    let bad = || Error::Signal(format!("unknown signal {s:?}"));
    if let Ok(n) = s.parse::<libc::c_int>() {
        return if (1..=libc::SIGRTMAX()).contains(&n) { Ok(n) } else { Err(bad()) };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some((_, n)) = SIGNALS.iter().find(|(n, _)| *n == name) {
        return Ok(*n);
    }
    let rt = |base: libc::c_int, off: &str, sign: libc::c_int| {
        let off: libc::c_int = if off.is_empty() { 0 } else { off.parse().map_err(|_| bad())? };
        let n = base + sign * off;
        if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&n) { Ok(n) } else { Err(bad()) }
    };
    if let Some(off) = name.strip_prefix("RTMIN") {
        return rt(libc::SIGRTMIN(), off.trim_start_matches('+'), 1);
    }
    if let Some(off) = name.strip_prefix("RTMAX") {
        return rt(libc::SIGRTMAX(), off.trim_start_matches('-'), -1);
    }
    Err(bad())
}

impl Runtime {
    pub fn kill(&self, id: &str, sig: libc::c_int, all: bool) -> Result<()> {
        let sd = StateDir::new(&self.root, id);
        let rec = sd.load()?;
        if rec.state.status == Status::Stopped && !all {
            return Err(Error::Status("container not running".into()));
        }
        let cg = Cgroup::open(&rec.cgroup_path);
        if all {
            cg.kill_all(sig)?;
        } else {
            sys::kill(rec.state.pid, sig).map_err(|e| Error::io(format!("signalling pid {}", rec.state.pid), e))?;
        }
        // A frozen process only dies when thawed.
        if rec.state.status == Status::Paused && sig == libc::SIGKILL {
            cg.thaw()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("SIGKILL").unwrap(), 9);
        assert_eq!(parse_signal("term").unwrap(), 15);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("RTMIN+1").unwrap(), libc::SIGRTMIN() + 1);
        assert!(parse_signal("FOO").unwrap_err().to_string().contains("unknown signal \"FOO\""));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("999").is_err());
    }
}
