//! Namespaces: which to create, which to join by path, and in which order.
//!
//! Order matters: the user namespace is joined first (it owns the others, so joining it grants the
//! capabilities needed for the rest), and a new user namespace is created before the other new namespaces so
//! that it owns them. Paths are opened before any setns: after joining a mount namespace, paths resolve in it.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use super::sys;

pub fn clone_flag(t: LinuxNamespaceType) -> libc::c_int {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
    }
}

/// Name of the namespace file under /proc/<pid>/ns/.
pub fn proc_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// setns order: user first (see the module docs), mount last (it changes how later paths would resolve, though
/// all fds are open already, and it changes root and cwd).
const ORDER: [LinuxNamespaceType; 8] = [
    LinuxNamespaceType::User,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::Time,
    LinuxNamespaceType::Mount,
];

/// Namespaces to enter with setns, opened up front.
pub struct Joins(Vec<(LinuxNamespaceType, File)>);

impl Joins {
    /// The namespaces of the spec that have a path.
    pub fn from_spec(namespaces: &[LinuxNamespace]) -> io::Result<Joins> {
        let mut joins = Vec::new();
        for t in ORDER {
            if let Some(path) = namespaces.iter().find(|n| n.typ() == t).and_then(|n| n.path().as_ref()) {
                let f = File::open(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("opening {} namespace {}: {e}", t, path.display()))
                })?;
                joins.push((t, f));
            }
        }
        Ok(Joins(joins))
    }

    /// Every namespace of `pid` that differs from ours (for exec).
    pub fn of_process(pid: i32) -> io::Result<Joins> {
        let mut joins = Vec::new();
        for t in ORDER {
            let theirs = format!("/proc/{pid}/ns/{}", proc_name(t));
            let ours = format!("/proc/self/ns/{}", proc_name(t));
            let Ok(theirs_meta) = std::fs::metadata(&theirs) else { continue };
            let same =
                std::fs::metadata(&ours).is_ok_and(|m| m.ino() == theirs_meta.ino() && m.dev() == theirs_meta.dev());
            if !same {
                let f = File::open(&theirs).map_err(|e| io::Error::new(e.kind(), format!("opening {theirs}: {e}")))?;
                joins.push((t, f));
            }
        }
        Ok(Joins(joins))
    }

    /// Enters them in order. A joined PID namespace applies to children only.
    pub fn enter(&self) -> io::Result<()> {
        for (t, f) in &self.0 {
            sys::setns(f, clone_flag(*t))
                .map_err(|e| io::Error::new(e.kind(), format!("joining {t} namespace: {e}")))?;
        }
        Ok(())
    }

    pub fn enter_except_user(&self) -> io::Result<()> {
        for (t, f) in self.0.iter().filter(|(t, _)| *t != LinuxNamespaceType::User) {
            sys::setns(f, clone_flag(*t))
                .map_err(|e| io::Error::new(e.kind(), format!("joining {t} namespace: {e}")))?;
        }
        Ok(())
    }

    pub fn enter_user(&self) -> io::Result<()> {
        for (t, f) in self.0.iter().filter(|(t, _)| *t == LinuxNamespaceType::User) {
            sys::setns(f, clone_flag(*t))
                .map_err(|e| io::Error::new(e.kind(), format!("joining {t} namespace: {e}")))?;
        }
        Ok(())
    }
}

/// Flags of the namespaces to create, user excluded (it is created separately, first).
pub fn new_flags(namespaces: &[LinuxNamespace]) -> libc::c_int {
    namespaces
        .iter()
        .filter(|n| n.path().is_none() && n.typ() != LinuxNamespaceType::User)
        .fold(0, |acc, n| acc | clone_flag(n.typ()))
}

pub fn wants_new(namespaces: &[LinuxNamespace], t: LinuxNamespaceType) -> bool {
    namespaces.iter().any(|n| n.typ() == t && n.path().is_none())
}
