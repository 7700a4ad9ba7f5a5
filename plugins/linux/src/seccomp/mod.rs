//! OCI seccomp profiles compiled to classic BPF in pure Rust (no libseccomp), and installed.
//!
//! [`compile`] turns a [`LinuxSeccomp`](oci_spec::runtime::LinuxSeccomp) into a [`Program`] for
//! the architecture berth runs on (x86_64 or aarch64); [`install`] / [`install_with_listener`]
//! load it on the calling thread. Docker's default profile (~380 names, a dozen argument rules)
//! compiles to ~450 instructions in ~50 µs (release build; ~200 µs unoptimized), where crun
//! spends ~40 ms in libseccomp.
//!
//! # Semantics (those of runc + libseccomp)
//!
//! - Syscall names are resolved with berth's tables for the native architecture
//!   (`syscalls.rs`: libc's `SYS_*` constants plus the syscalls libc does not have yet). Unknown
//!   names are skipped, as runc does: profiles list other architectures' syscalls (Docker's lists
//!   `chown32`, `arm_fadvise64_64`, ...). Skipped names are logged at debug level.
//! - Actions: `SCMP_ACT_KILL`/`KILL_THREAD`, `KILL_PROCESS`, `TRAP`, `ERRNO` (the rule's
//!   `errnoRet`, the profile's `defaultErrnoRet` for the default action, `EPERM` when absent),
//!   `TRACE` (same return value rules), `LOG`, `ALLOW` and `NOTIFY` (user notification, see
//!   [`install_with_listener`]; it cannot be the default action).
//! - Within one syscall entry every argument condition must hold (AND). Several entries for the
//!   same syscall are tried in profile order (OR); the first that matches decides, the default
//!   action applies when none does. An unconditional entry for a syscall replaces its
//!   conditional ones, wherever it appears, and the first unconditional entry wins (libseccomp).
//!   Conditions repeating an argument index inside one entry are OR-ed instead, each becoming its
//!   own rule (runc). Entries whose action equals the default action are dropped (libseccomp
//!   refuses them, runc skips them).
//! - Arguments are compared as unsigned 64-bit values: `SCMP_CMP_NE`, `LT`, `LE`, `EQ`, `GE`,
//!   `GT`, and `SCMP_CMP_MASKED_EQ`, which is `(arg & value) == valueTwo`.
//! - When the default action refuses syscalls (anything but `ALLOW`, `LOG` and `TRACE`), syscall
//!   numbers above the highest one the profile names return `ENOSYS` instead, like runc's
//!   "ENOSYS stub": syscalls newer than the profile then look unimplemented, and libc falls back
//!   to the older ones (`clone3` → `clone`, `faccessat2` → `faccessat`, ...).
//!
//! # BPF layout
//!
//! ```text
//!     ld  [arch]
//!     jeq AUDIT_ARCH_<native>, +1, foreign   ; foreign: ret <foreign action>
//!     ld  [nr]
//!     jset 0x40000000, +0, +1                ; x86_64 only: x32 syscalls are foreign,
//!     jeq 0xffffffff, +0, foreign            ; except -1 (what tracers use to skip a syscall)
//!     jgt <highest named nr>, enosys         ; only with a refusing default action
//! tree:                                      ; binary search over the syscalls with rules
//!     jge 230, right, left
//! left:   jge 100, ...
//!   ...   jeq 0, ret_allow, next             ; leaves: <= 4 jeq on the syscall number,
//!         jeq 1, block_1, ret_default        ; unconditional rules jump to their ret
//! block_1:                                   ; one block per syscall with conditional rules
//!     ld [arg1 hi]; jeq 0, +0, rule2         ; rule 1, condition 1: 32-bit halves, high first
//!     ld [arg1 lo]; jeq 7, +0, rule2
//!     ld [arg2 hi]; ...                      ; condition 2 (AND)
//!     ret <action 1>
//! rule2: ...                                 ; next rule (OR), the last one fails to ret_default
//! ret_default:
//!     ret <default action>
//! ```
//!
//! Classic BPF conditional jumps only reach 255 instructions ahead. The program is therefore
//! built back to front (`bpf.rs`), so every jump target already exists when the jump is emitted;
//! a target out of reach gets a stub right behind the jump: a copy of the `ret` for returns, an
//! unconditional `ja` (32-bit offset) otherwise. Returns are shared while in reach. No layout,
//! however large, can overflow a jump; the kernel's 4096-instruction limit is the only bound
//! (Docker's default profile takes about 450 instructions). A syscall is decided after at most
//! ~12 comparisons, instead of a linear scan over every rule.
//!
//! # Limitations
//!
//! - Syscall tables exist for the native architecture only. Syscalls of another architecture
//!   (`seccomp_data.arch` is not the native one: 32-bit x86 or arm processes, whether or not the
//!   profile lists `SCMP_ARCH_X86` / `SCMP_ARCH_ARM`) and, on x86_64, x32 syscalls (number with
//!   bit 30 set, even with `SCMP_ARCH_X32` listed) get the default action: 32-bit programs
//!   cannot run under allow-list profiles such as Docker's, where runc would filter them with
//!   the 32-bit tables. Exception: under a permissive default (`ALLOW`/`LOG`) with rules that
//!   restrict something, they get `KILL_PROCESS` — the default would let them bypass the rules.
//! - The architectures list must include the native architecture (or `SCMP_ARCH_NATIVE`), or be
//!   empty; other entries are only validated by oci-spec's parser.
//! - Conflicting conditional rules for one syscall follow profile order (first match wins), which
//!   can differ from libseccomp's tree merging for overlapping rules with different actions.
//! - `seccomp_data.args` holds the full 64-bit registers: an `int` argument compared with `EQ`
//!   against a 32-bit value fails if the caller left garbage in the upper half (as in libseccomp).
//! - A profile naming `SCMP_ACT_NOTIFY` must be installed with [`install_with_listener`]; the
//!   installing process must not need notified syscalls before it hands the listener over.
//!   `listenerPath` / `listenerMetadata` are the caller's business.

mod apply;
mod bpf;
mod compile;
mod syscalls;

pub use apply::{install, install_with_listener};
pub use compile::compile;

use oci_spec::runtime::{Arch, LinuxSeccompAction};

/// Errors from compiling or installing a seccomp profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// berth has no syscall table for the architecture it was built for.
    #[error("seccomp: no syscall table for host architecture {arch}")]
    UnsupportedHostArch { arch: &'static str },
    /// The profile lists architectures, but not the one berth runs on.
    #[error("seccomp profile architectures [{listed}] do not include the native architecture {native}")]
    NativeArchNotListed { native: Arch, listed: String },
    /// A syscall entry without names.
    #[error("seccomp syscall entry #{index} has no syscall names")]
    EmptyNames { index: usize },
    /// A syscall entry with an empty name.
    #[error("seccomp syscall entry #{index} contains an empty syscall name")]
    EmptyName { index: usize },
    /// An argument condition on an index other than 0-5.
    #[error("seccomp rule for syscall {syscall}: argument index {index} is out of range (0-5)")]
    ArgIndex { syscall: String, index: usize },
    /// An `errnoRet` / `defaultErrnoRet` larger than the 16 bits of `SECCOMP_RET_DATA`.
    #[error("seccomp {owner}: {action} return value {value} does not fit in 16 bits")]
    ReturnValueTooLarge { owner: String, action: LinuxSeccompAction, value: u32 },
    /// `SCMP_ACT_NOTIFY` as the default action (runc refuses it too).
    #[error("seccomp default action SCMP_ACT_NOTIFY is not supported")]
    NotifyDefaultAction,
    /// The compiled program exceeds the kernel's limit.
    #[error("seccomp program has {len} instructions, more than the kernel limit of 4096")]
    ProgramTooLong { len: usize },
    /// [`install`] was given a program that returns `SCMP_ACT_NOTIFY`.
    #[error("seccomp profile uses SCMP_ACT_NOTIFY: install it with install_with_listener")]
    ListenerRequired,
    /// The kernel has no seccomp(2) syscall, and prctl cannot pass this flag.
    #[error("seccomp flag {flag} needs the seccomp syscall, which this kernel lacks")]
    FlagUnsupported { flag: String },
    /// seccomp(2) / prctl(2) refused the filter.
    #[error("installing the seccomp filter (flags [{flags}]) failed: {source}")]
    Install {
        flags: String,
        #[source]
        source: std::io::Error,
    },
    /// `SECCOMP_FILTER_FLAG_TSYNC`: another thread could not be synchronized.
    #[error("seccomp SECCOMP_FILTER_FLAG_TSYNC: thread {tid} could not be synchronized to the filter")]
    TsyncFailed { tid: i64 },
}

/// A compiled seccomp filter: classic BPF, ready for `SECCOMP_SET_MODE_FILTER`.
#[derive(Debug, Clone)]
pub struct Program {
    instructions: Vec<libc::sock_filter>,
    uses_notify: bool,
}

impl Program {
    /// The BPF instructions.
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.instructions
    }

    /// The number of instructions (at most 4096).
    pub fn len(&self) -> usize {
        self.instructions.len()
    }

    /// Always false for a compiled program; present for the `len` convention.
    pub fn is_empty(&self) -> bool {
        self.instructions.is_empty()
    }

    /// Whether some rule returns `SCMP_ACT_NOTIFY`, so the filter needs a listener.
    pub fn uses_notify(&self) -> bool {
        self.uses_notify
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use oci_spec::runtime::{Arch, LinuxSeccomp};

    pub(crate) fn profile(value: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(value).expect("valid OCI seccomp profile")
    }

    /// `testdata/docker-default.json`, with the host's architecture when it is not x86_64.
    pub(crate) fn docker_default() -> LinuxSeccomp {
        let mut profile: LinuxSeccomp =
            serde_json::from_str(include_str!("testdata/docker-default.json")).expect("fixture parses");
        if let Some(native) = super::syscalls::NATIVE
            && native.oci != Arch::ScmpArchX86_64
        {
            profile.set_architectures(Some(vec![native.oci]));
        }
        profile
    }
}
