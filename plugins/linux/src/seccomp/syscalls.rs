//! Syscall name → number tables for the architecture berth runs on.
//!
//! Numbers come from libc's `SYS_*` constants (the names listed are the ones both the glibc and
//! the musl bindings of libc provide, so the table builds for either target environment). Syscalls
//! that libc does not know yet — mostly the ones added after Linux 6.4, which have the same number
//! on every architecture since 5.1's unified numbering (424 and up) — are listed with literal
//! numbers in `EXTRA`. Both tables are sorted by name; a unit test checks it.

use libc::c_long;

/// A name table: sorted by name, each name spelled with libc's `SYS_` prefix.
type Table = &'static [(&'static str, c_long)];

/// Builds a [`Table`] from libc constants: `libc_table!(SYS_read SYS_write ...)`.
macro_rules! libc_table {
    ($($sys:ident)*) => {
        &[$((stringify!($sys), libc::$sys)),*]
    };
}

/// The native architecture as seccomp sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NativeArch {
    /// `AUDIT_ARCH_*`, the value of `seccomp_data.arch` for native syscalls.
    pub audit_arch: u32,
    /// The OCI (libseccomp) name of the architecture.
    pub oci: oci_spec::runtime::Arch,
    /// Whether syscall numbers with the x32 bit set must be treated as another ABI (x86_64 only).
    pub x32_bit: bool,
}

/// `__X32_SYSCALL_BIT`: x32 syscalls enter the x86_64 kernel with this bit set in their number.
pub(crate) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

#[cfg(target_arch = "x86_64")]
pub(crate) const NATIVE: Option<NativeArch> = Some(NativeArch {
    audit_arch: 0xc000_003e, // AUDIT_ARCH_X86_64 = EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
    oci: oci_spec::runtime::Arch::ScmpArchX86_64,
    x32_bit: true,
});

#[cfg(target_arch = "aarch64")]
pub(crate) const NATIVE: Option<NativeArch> = Some(NativeArch {
    audit_arch: 0xc000_00b7, // AUDIT_ARCH_AARCH64 = EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
    oci: oci_spec::runtime::Arch::ScmpArchAarch64,
    x32_bit: false,
});

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) const NATIVE: Option<NativeArch> = None;

#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
const LIBC: Table = libc_table!(
        SYS__sysctl SYS_accept SYS_accept4 SYS_access SYS_acct SYS_add_key SYS_adjtimex SYS_afs_syscall
        SYS_alarm SYS_arch_prctl SYS_bind SYS_bpf SYS_brk SYS_capget SYS_capset SYS_chdir SYS_chmod SYS_chown
        SYS_chroot SYS_clock_adjtime SYS_clock_getres SYS_clock_gettime SYS_clock_nanosleep SYS_clock_settime
        SYS_clone SYS_clone3 SYS_close SYS_close_range SYS_connect SYS_copy_file_range SYS_creat
        SYS_delete_module SYS_dup SYS_dup2 SYS_dup3 SYS_epoll_create SYS_epoll_create1 SYS_epoll_ctl
        SYS_epoll_ctl_old SYS_epoll_pwait SYS_epoll_pwait2 SYS_epoll_wait SYS_epoll_wait_old SYS_eventfd
        SYS_eventfd2 SYS_execve SYS_execveat SYS_exit SYS_exit_group SYS_faccessat SYS_faccessat2 SYS_fadvise64
        SYS_fallocate SYS_fanotify_init SYS_fanotify_mark SYS_fchdir SYS_fchmod SYS_fchmodat SYS_fchmodat2
        SYS_fchown SYS_fchownat SYS_fcntl SYS_fdatasync SYS_fgetxattr SYS_finit_module SYS_flistxattr SYS_flock
        SYS_fork SYS_fremovexattr SYS_fsconfig SYS_fsetxattr SYS_fsmount SYS_fsopen SYS_fspick SYS_fstat
        SYS_fstatfs SYS_fsync SYS_ftruncate SYS_futex SYS_futex_waitv SYS_futimesat SYS_get_mempolicy
        SYS_get_robust_list SYS_get_thread_area SYS_getcpu SYS_getcwd SYS_getdents SYS_getdents64 SYS_getegid
        SYS_geteuid SYS_getgid SYS_getgroups SYS_getitimer SYS_getpeername SYS_getpgid SYS_getpgrp SYS_getpid
        SYS_getpmsg SYS_getppid SYS_getpriority SYS_getrandom SYS_getresgid SYS_getresuid SYS_getrlimit
        SYS_getrusage SYS_getsid SYS_getsockname SYS_getsockopt SYS_gettid SYS_gettimeofday SYS_getuid
        SYS_getxattr SYS_init_module SYS_inotify_add_watch SYS_inotify_init SYS_inotify_init1
        SYS_inotify_rm_watch SYS_io_cancel SYS_io_destroy SYS_io_getevents SYS_io_setup SYS_io_submit
        SYS_io_uring_enter SYS_io_uring_register SYS_io_uring_setup SYS_ioctl SYS_ioperm SYS_iopl
        SYS_ioprio_get SYS_ioprio_set SYS_kcmp SYS_kexec_file_load SYS_kexec_load SYS_keyctl SYS_kill
        SYS_landlock_add_rule SYS_landlock_create_ruleset SYS_landlock_restrict_self SYS_lchown SYS_lgetxattr
        SYS_link SYS_linkat SYS_listen SYS_listxattr SYS_llistxattr SYS_lookup_dcookie SYS_lremovexattr
        SYS_lseek SYS_lsetxattr SYS_lstat SYS_madvise SYS_mbind SYS_membarrier SYS_memfd_create
        SYS_memfd_secret SYS_migrate_pages SYS_mincore SYS_mkdir SYS_mkdirat SYS_mknod SYS_mknodat SYS_mlock
        SYS_mlock2 SYS_mlockall SYS_mmap SYS_modify_ldt SYS_mount SYS_mount_setattr SYS_move_mount
        SYS_move_pages SYS_mprotect SYS_mq_getsetattr SYS_mq_notify SYS_mq_open SYS_mq_timedreceive
        SYS_mq_timedsend SYS_mq_unlink SYS_mremap SYS_mseal SYS_msgctl SYS_msgget SYS_msgrcv SYS_msgsnd
        SYS_msync SYS_munlock SYS_munlockall SYS_munmap SYS_name_to_handle_at SYS_nanosleep SYS_newfstatat
        SYS_nfsservctl SYS_open SYS_open_by_handle_at SYS_open_tree SYS_openat SYS_openat2 SYS_pause
        SYS_perf_event_open SYS_personality SYS_pidfd_getfd SYS_pidfd_open SYS_pidfd_send_signal SYS_pipe
        SYS_pipe2 SYS_pivot_root SYS_pkey_alloc SYS_pkey_free SYS_pkey_mprotect SYS_poll SYS_ppoll SYS_prctl
        SYS_pread64 SYS_preadv SYS_preadv2 SYS_prlimit64 SYS_process_madvise SYS_process_mrelease
        SYS_process_vm_readv SYS_process_vm_writev SYS_pselect6 SYS_ptrace SYS_putpmsg SYS_pwrite64 SYS_pwritev
        SYS_pwritev2 SYS_quotactl SYS_quotactl_fd SYS_read SYS_readahead SYS_readlink SYS_readlinkat SYS_readv
        SYS_reboot SYS_recvfrom SYS_recvmmsg SYS_recvmsg SYS_remap_file_pages SYS_removexattr SYS_rename
        SYS_renameat SYS_renameat2 SYS_request_key SYS_restart_syscall SYS_rmdir SYS_rseq SYS_rt_sigaction
        SYS_rt_sigpending SYS_rt_sigprocmask SYS_rt_sigqueueinfo SYS_rt_sigreturn SYS_rt_sigsuspend
        SYS_rt_sigtimedwait SYS_rt_tgsigqueueinfo SYS_sched_get_priority_max SYS_sched_get_priority_min
        SYS_sched_getaffinity SYS_sched_getattr SYS_sched_getparam SYS_sched_getscheduler
        SYS_sched_rr_get_interval SYS_sched_setaffinity SYS_sched_setattr SYS_sched_setparam
        SYS_sched_setscheduler SYS_sched_yield SYS_seccomp SYS_security SYS_select SYS_semctl SYS_semget
        SYS_semop SYS_semtimedop SYS_sendfile SYS_sendmmsg SYS_sendmsg SYS_sendto SYS_set_mempolicy
        SYS_set_mempolicy_home_node SYS_set_robust_list SYS_set_thread_area SYS_set_tid_address
        SYS_setdomainname SYS_setfsgid SYS_setfsuid SYS_setgid SYS_setgroups SYS_sethostname SYS_setitimer
        SYS_setns SYS_setpgid SYS_setpriority SYS_setregid SYS_setresgid SYS_setresuid SYS_setreuid
        SYS_setrlimit SYS_setsid SYS_setsockopt SYS_settimeofday SYS_setuid SYS_setxattr SYS_shmat SYS_shmctl
        SYS_shmdt SYS_shmget SYS_shutdown SYS_sigaltstack SYS_signalfd SYS_signalfd4 SYS_socket SYS_socketpair
        SYS_splice SYS_stat SYS_statfs SYS_statx SYS_swapoff SYS_swapon SYS_symlink SYS_symlinkat SYS_sync
        SYS_sync_file_range SYS_syncfs SYS_sysfs SYS_sysinfo SYS_syslog SYS_tee SYS_tgkill SYS_time
        SYS_timer_create SYS_timer_delete SYS_timer_getoverrun SYS_timer_gettime SYS_timer_settime
        SYS_timerfd_create SYS_timerfd_gettime SYS_timerfd_settime SYS_times SYS_tkill SYS_truncate SYS_tuxcall
        SYS_umask SYS_umount2 SYS_uname SYS_unlink SYS_unlinkat SYS_unshare SYS_uselib SYS_userfaultfd
        SYS_ustat SYS_utime SYS_utimensat SYS_utimes SYS_vfork SYS_vhangup SYS_vmsplice SYS_vserver SYS_wait4
        SYS_waitid SYS_write SYS_writev);

#[cfg(target_arch = "x86_64")]
const EXTRA: Table = &[
    ("SYS_cachestat", 451),
    ("SYS_create_module", 174),
    ("SYS_file_getattr", 468),
    ("SYS_file_setattr", 469),
    ("SYS_futex_requeue", 456),
    ("SYS_futex_wait", 455),
    ("SYS_futex_wake", 454),
    ("SYS_get_kernel_syms", 177),
    ("SYS_getxattrat", 464),
    ("SYS_io_pgetevents", 333),
    ("SYS_listmount", 458),
    ("SYS_listxattrat", 465),
    ("SYS_lsm_get_self_attr", 459),
    ("SYS_lsm_list_modules", 461),
    ("SYS_lsm_set_self_attr", 460),
    ("SYS_map_shadow_stack", 453),
    ("SYS_open_tree_attr", 467),
    ("SYS_query_module", 178),
    ("SYS_removexattrat", 466),
    ("SYS_setxattrat", 463),
    ("SYS_statmount", 457),
    ("SYS_uprobe", 336),
    ("SYS_uretprobe", 335),
];

#[cfg(target_arch = "aarch64")]
#[rustfmt::skip]
const LIBC: Table = libc_table!(
        SYS_accept SYS_accept4 SYS_acct SYS_add_key SYS_adjtimex SYS_bind SYS_bpf SYS_brk SYS_capget SYS_capset
        SYS_chdir SYS_chroot SYS_clock_adjtime SYS_clock_getres SYS_clock_gettime SYS_clock_nanosleep
        SYS_clock_settime SYS_clone SYS_clone3 SYS_close SYS_close_range SYS_connect SYS_copy_file_range
        SYS_delete_module SYS_dup SYS_dup3 SYS_epoll_create1 SYS_epoll_ctl SYS_epoll_pwait SYS_epoll_pwait2
        SYS_eventfd2 SYS_execve SYS_execveat SYS_exit SYS_exit_group SYS_faccessat SYS_faccessat2 SYS_fadvise64
        SYS_fallocate SYS_fanotify_init SYS_fanotify_mark SYS_fchdir SYS_fchmod SYS_fchmodat SYS_fchown
        SYS_fchownat SYS_fcntl SYS_fdatasync SYS_fgetxattr SYS_finit_module SYS_flistxattr SYS_flock
        SYS_fremovexattr SYS_fsconfig SYS_fsetxattr SYS_fsmount SYS_fsopen SYS_fspick SYS_fstat SYS_fstatfs
        SYS_fsync SYS_ftruncate SYS_futex SYS_futex_waitv SYS_get_mempolicy SYS_get_robust_list SYS_getcpu
        SYS_getcwd SYS_getdents64 SYS_getegid SYS_geteuid SYS_getgid SYS_getgroups SYS_getitimer
        SYS_getpeername SYS_getpgid SYS_getpid SYS_getppid SYS_getpriority SYS_getrandom SYS_getresgid
        SYS_getresuid SYS_getrlimit SYS_getrusage SYS_getsid SYS_getsockname SYS_getsockopt SYS_gettid
        SYS_gettimeofday SYS_getuid SYS_getxattr SYS_init_module SYS_inotify_add_watch SYS_inotify_init1
        SYS_inotify_rm_watch SYS_io_cancel SYS_io_destroy SYS_io_getevents SYS_io_setup SYS_io_submit
        SYS_io_uring_enter SYS_io_uring_register SYS_io_uring_setup SYS_ioctl SYS_ioprio_get SYS_ioprio_set
        SYS_kcmp SYS_kexec_load SYS_keyctl SYS_kill SYS_landlock_add_rule SYS_landlock_create_ruleset
        SYS_landlock_restrict_self SYS_lgetxattr SYS_linkat SYS_listen SYS_listxattr SYS_llistxattr
        SYS_lookup_dcookie SYS_lremovexattr SYS_lseek SYS_lsetxattr SYS_madvise SYS_mbind SYS_membarrier
        SYS_memfd_create SYS_memfd_secret SYS_migrate_pages SYS_mincore SYS_mkdirat SYS_mknodat SYS_mlock
        SYS_mlock2 SYS_mlockall SYS_mmap SYS_mount SYS_mount_setattr SYS_move_mount SYS_move_pages SYS_mprotect
        SYS_mq_getsetattr SYS_mq_notify SYS_mq_open SYS_mq_timedreceive SYS_mq_timedsend SYS_mq_unlink
        SYS_mremap SYS_mseal SYS_msgctl SYS_msgget SYS_msgrcv SYS_msgsnd SYS_msync SYS_munlock SYS_munlockall
        SYS_munmap SYS_name_to_handle_at SYS_nanosleep SYS_newfstatat SYS_nfsservctl SYS_open_by_handle_at
        SYS_open_tree SYS_openat SYS_openat2 SYS_perf_event_open SYS_personality SYS_pidfd_getfd SYS_pidfd_open
        SYS_pidfd_send_signal SYS_pipe2 SYS_pivot_root SYS_pkey_alloc SYS_pkey_free SYS_pkey_mprotect SYS_ppoll
        SYS_prctl SYS_pread64 SYS_preadv SYS_preadv2 SYS_prlimit64 SYS_process_madvise SYS_process_mrelease
        SYS_process_vm_readv SYS_process_vm_writev SYS_pselect6 SYS_ptrace SYS_pwrite64 SYS_pwritev
        SYS_pwritev2 SYS_quotactl SYS_quotactl_fd SYS_read SYS_readahead SYS_readlinkat SYS_readv SYS_reboot
        SYS_recvfrom SYS_recvmmsg SYS_recvmsg SYS_remap_file_pages SYS_removexattr SYS_renameat SYS_renameat2
        SYS_request_key SYS_restart_syscall SYS_rseq SYS_rt_sigaction SYS_rt_sigpending SYS_rt_sigprocmask
        SYS_rt_sigqueueinfo SYS_rt_sigreturn SYS_rt_sigsuspend SYS_rt_sigtimedwait SYS_rt_tgsigqueueinfo
        SYS_sched_get_priority_max SYS_sched_get_priority_min SYS_sched_getaffinity SYS_sched_getattr
        SYS_sched_getparam SYS_sched_getscheduler SYS_sched_rr_get_interval SYS_sched_setaffinity
        SYS_sched_setattr SYS_sched_setparam SYS_sched_setscheduler SYS_sched_yield SYS_seccomp SYS_semctl
        SYS_semget SYS_semop SYS_semtimedop SYS_sendfile SYS_sendmmsg SYS_sendmsg SYS_sendto SYS_set_mempolicy
        SYS_set_mempolicy_home_node SYS_set_robust_list SYS_set_tid_address SYS_setdomainname SYS_setfsgid
        SYS_setfsuid SYS_setgid SYS_setgroups SYS_sethostname SYS_setitimer SYS_setns SYS_setpgid
        SYS_setpriority SYS_setregid SYS_setresgid SYS_setresuid SYS_setreuid SYS_setrlimit SYS_setsid
        SYS_setsockopt SYS_settimeofday SYS_setuid SYS_setxattr SYS_shmat SYS_shmctl SYS_shmdt SYS_shmget
        SYS_shutdown SYS_sigaltstack SYS_signalfd4 SYS_socket SYS_socketpair SYS_splice SYS_statfs SYS_statx
        SYS_swapoff SYS_swapon SYS_symlinkat SYS_sync SYS_sync_file_range SYS_syncfs SYS_sysinfo SYS_syslog
        SYS_tee SYS_tgkill SYS_timer_create SYS_timer_delete SYS_timer_getoverrun SYS_timer_gettime
        SYS_timer_settime SYS_timerfd_create SYS_timerfd_gettime SYS_timerfd_settime SYS_times SYS_tkill
        SYS_truncate SYS_umask SYS_umount2 SYS_uname SYS_unlinkat SYS_unshare SYS_userfaultfd SYS_utimensat
        SYS_vhangup SYS_vmsplice SYS_wait4 SYS_waitid SYS_write SYS_writev);

#[cfg(target_arch = "aarch64")]
const EXTRA: Table = &[
    ("SYS_cachestat", 451),
    ("SYS_fchmodat2", 452),
    ("SYS_file_getattr", 468),
    ("SYS_file_setattr", 469),
    ("SYS_futex_requeue", 456),
    ("SYS_futex_wait", 455),
    ("SYS_futex_wake", 454),
    ("SYS_getxattrat", 464),
    ("SYS_io_pgetevents", 292),
    ("SYS_kexec_file_load", 294),
    ("SYS_listmount", 458),
    ("SYS_listxattrat", 465),
    ("SYS_lsm_get_self_attr", 459),
    ("SYS_lsm_list_modules", 461),
    ("SYS_lsm_set_self_attr", 460),
    ("SYS_map_shadow_stack", 453),
    ("SYS_open_tree_attr", 467),
    ("SYS_removexattrat", 466),
    ("SYS_setxattrat", 463),
    ("SYS_statmount", 457),
];

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const LIBC: Table = &[];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const EXTRA: Table = &[];

/// Looks `name` up in one table.
fn find(table: Table, name: &str) -> Option<u32> {
    table.binary_search_by(|(sys, _)| sys[4..].cmp(name)).ok().map(|i| table[i].1 as u32)
}

/// The native number of the syscall called `name`, or `None` if berth does not know it for this
/// architecture (an arch-specific syscall of another architecture, or one newer than the tables).
pub(crate) fn number(name: &str) -> Option<u32> {
    find(LIBC, name).or_else(|| find(EXTRA, name))
}

/// Every syscall berth knows on this architecture, as `(name, number)`.
#[cfg(test)]
pub(crate) fn all() -> impl Iterator<Item = (&'static str, u32)> {
    LIBC.iter().chain(EXTRA).map(|(sys, nr)| (&sys[4..], *nr as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_and_disjoint() {
        for table in [LIBC, EXTRA] {
            for pair in table.windows(2) {
                assert!(pair[0].0 < pair[1].0, "{} must sort before {}", pair[1].0, pair[0].0);
            }
        }
        for (name, _) in EXTRA {
            assert!(find(LIBC, &name[4..]).is_none(), "{name} is in libc: drop it from EXTRA");
        }
        let mut numbers: Vec<u32> = all().map(|(_, nr)| nr).collect();
        numbers.sort_unstable();
        let len = numbers.len();
        numbers.dedup();
        assert_eq!(numbers.len(), len, "two names share a syscall number");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn known_numbers() {
        assert_eq!(number("read"), Some(0));
        assert_eq!(number("_sysctl"), Some(156));
        assert_eq!(number("mkdirat"), Some(258));
        assert_eq!(number("clone3"), Some(435));
        assert_eq!(number("cachestat"), Some(451));
        assert_eq!(number("chown32"), None);
        assert_eq!(number("arm_fadvise64_64"), None);
        assert_eq!(number(""), None);
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn known_numbers() {
        assert_eq!(number("io_setup"), Some(0));
        assert_eq!(number("mkdirat"), Some(34));
        assert_eq!(number("clone3"), Some(435));
        assert_eq!(number("open"), None);
        assert_eq!(number(""), None);
    }
}
