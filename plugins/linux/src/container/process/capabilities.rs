//! Capabilities and the user switch, with libc (capset and prctl), in the order the kernel requires:
//! 1. drop the bounding set (needs CAP_SETPCAP, so while still privileged);
//! 2. PR_SET_KEEPCAPS, so that setresuid away from 0 keeps the permitted set;
//! 3. setgroups, setresgid, setresuid;
//! 4. capset effective/permitted/inheritable (setresuid cleared effective), then the ambient set.

use std::io;

use oci_spec::runtime::{Capabilities, LinuxCapabilities};

use super::sys;

const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// All capability names this runtime knows (for `features`).
pub fn known_names() -> &'static [&'static str] {
    &NAMES
}

/// The kernel's highest capability number, read once per process (it is fixed while the kernel runs; the
/// reaper spawner reads it before forking, so no reaper reads it again).
pub fn last_cap() -> u32 {
    static LAST: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(NAMES.len() as u32 - 1)
    })
}

/// A set as a bit mask; capabilities the kernel does not have are skipped, as runc does.
fn mask(set: &Option<Capabilities>) -> u64 {
    let last = last_cap();
    let mut m = 0u64;
    for cap in set.iter().flatten() {
        let name = serde_json::to_value(cap).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        match NAMES.iter().position(|n| *n == name) {
            Some(i) if i as u32 <= last => m |= 1 << i,
            _ => tracing::warn!("capability {name} is not supported by this kernel, skipping"),
        }
    }
    m
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x20080522;

fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    let hdr = CapHeader { version: CAP_V3, pid: 0 };
    let data = [
        CapData { effective: effective as u32, permitted: permitted as u32, inheritable: inheritable as u32 },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: header and a 2-element data array, as capset v3 expects.
    sys::cvt_long(unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) })?;
    Ok(())
}

fn drop_bounding(keep: u64) -> io::Result<()> {
    for cap in 0..=last_cap() {
        if keep & (1 << cap) == 0 {
            sys::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("dropping {} from the bounding set: {e}", NAMES.get(cap as usize).unwrap_or(&"?")),
                )
            })?;
        }
    }
    Ok(())
}

/// Switches to uid/gid with `groups` and leaves exactly the spec's capabilities (all of root's if `caps` is None).
pub fn change_user(
    uid: u32,
    gid: u32,
    groups: &[u32],
    set_groups: bool,
    caps: &Option<LinuxCapabilities>,
) -> io::Result<()> {
    if let Some(caps) = caps {
        drop_bounding(mask(caps.bounding()))?;
    }
    sys::prctl(libc::PR_SET_KEEPCAPS, 1)?;
    if set_groups {
        // SAFETY: groups is a valid slice.
        sys::cvt(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })
            .map_err(|e| io::Error::new(e.kind(), format!("setgroups {groups:?}: {e}")))?;
    }
    // SAFETY: plain syscalls (libc's wrappers apply them to every thread; we have one).
    sys::cvt(unsafe { libc::setresgid(gid, gid, gid) })
        .map_err(|e| io::Error::new(e.kind(), format!("setresgid {gid}: {e}")))?;
    // SAFETY: as above.
    sys::cvt(unsafe { libc::setresuid(uid, uid, uid) })
        .map_err(|e| io::Error::new(e.kind(), format!("setresuid {uid}: {e}")))?;
    sys::prctl(libc::PR_SET_KEEPCAPS, 0)?;
    if let Some(caps) = caps {
        let (e, p, i) = (mask(caps.effective()), mask(caps.permitted()), mask(caps.inheritable()));
        capset(e, p, i).map_err(|err| io::Error::new(err.kind(), format!("capset: {err}")))?;
        sys::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong)?;
        let ambient = mask(caps.ambient());
        for (cap, name) in NAMES.iter().enumerate() {
            if ambient & (1 << cap) != 0 {
                // SAFETY: integer arguments only.
                let r = unsafe {
                    libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap as libc::c_ulong, 0, 0)
                };
                // The kernel only raises an ambient capability that is also permitted and inheritable; runc's
                // default spec lists ambient capabilities without inheritable ones, and runc skips them too.
                if let Err(err) = sys::cvt(r) {
                    tracing::debug!("not raising ambient {name}: {err}");
                }
            }
        }
    }
    Ok(())
}
