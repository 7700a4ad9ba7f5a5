//! OCI seccomp profile → classic BPF program. The layout is described in the module
//! documentation of [`crate::seccomp`].

use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction as Action, LinuxSeccompOperator as Op};

use super::bpf::{Cmp, Emitter, Label, MAX_INSNS, Target};
use super::{Program, SeccompError, syscalls};

/// `offsetof(struct seccomp_data, nr)`
const NR_OFFSET: u32 = 0;
/// `offsetof(struct seccomp_data, arch)`
const ARCH_OFFSET: u32 = 4;
/// `offsetof(struct seccomp_data, args)`
const ARGS_OFFSET: u32 = 16;
/// Syscalls take at most six arguments.
const MAX_ARG_INDEX: usize = 5;

/// The errno of `SCMP_ACT_ERRNO` / the message of `SCMP_ACT_TRACE` when the profile gives none
/// (runc's default).
const DEFAULT_ERRNO: u32 = libc::EPERM as u32;
/// What syscalls newer than every syscall the profile names return (see the module docs).
const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
/// At most this many syscall numbers are compared one after another at a leaf of the dispatch
/// tree; larger sets are split in two with a `jge`.
const LEAF_SIZE: usize = 4;

/// One argument comparison.
#[derive(Debug, Clone, Copy)]
struct Cond {
    index: u8,
    op: Op,
    value: u64,
    value_two: u64,
}

/// Conditions that must all hold (AND) for `action` to be returned.
#[derive(Debug)]
struct Rule {
    action: u32,
    conds: Vec<Cond>,
}

/// What the filter does for one syscall number.
#[derive(Debug)]
enum Slot {
    /// An unconditional rule: always this action.
    Always(u32),
    /// Conditional rules, tried in profile order (OR); the default action when none matches.
    Rules(Vec<Rule>),
}

impl Slot {
    fn actions(&self) -> impl Iterator<Item = u32> + '_ {
        let (always, rules) = match self {
            Slot::Always(action) => (Some(*action), &[][..]),
            Slot::Rules(rules) => (None, &rules[..]),
        };
        always.into_iter().chain(rules.iter().map(|rule| rule.action))
    }

    /// libseccomp semantics: an unconditional rule replaces the conditional ones of its syscall,
    /// and later rules cannot change an unconditional one.
    fn add(slot: &mut Option<Slot>, action: u32, conds: Option<Vec<Cond>>) {
        match (slot.as_mut(), conds) {
            (Some(Slot::Always(_)), _) => {}
            (_, None) => *slot = Some(Slot::Always(action)),
            (Some(Slot::Rules(rules)), Some(conds)) => rules.push(Rule { action, conds }),
            (None, Some(conds)) => *slot = Some(Slot::Rules(vec![Rule { action, conds }])),
        }
    }
}

/// The kernel return value (`SECCOMP_RET_*` with data) of an OCI action.
fn action_value(action: Action, ret: Option<u32>, owner: impl Fn() -> String) -> Result<u32, SeccompError> {
    let data = |base: u32| {
        let value = ret.unwrap_or(DEFAULT_ERRNO);
        if value > libc::SECCOMP_RET_DATA {
            return Err(SeccompError::ReturnValueTooLarge { owner: owner(), action, value });
        }
        Ok(base | value)
    };
    Ok(match action {
        Action::ScmpActKill | Action::ScmpActKillThread => libc::SECCOMP_RET_KILL_THREAD,
        Action::ScmpActKillProcess => libc::SECCOMP_RET_KILL_PROCESS,
        Action::ScmpActTrap => libc::SECCOMP_RET_TRAP,
        Action::ScmpActErrno => data(libc::SECCOMP_RET_ERRNO)?,
        Action::ScmpActTrace => data(libc::SECCOMP_RET_TRACE)?,
        Action::ScmpActLog => libc::SECCOMP_RET_LOG,
        Action::ScmpActAllow => libc::SECCOMP_RET_ALLOW,
        Action::ScmpActNotify => libc::SECCOMP_RET_USER_NOTIF,
    })
}

/// Offsets of the low and the high 32-bit word of argument `index` in `seccomp_data`.
fn arg_words(index: u8) -> (u32, u32) {
    let base = ARGS_OFFSET + 8 * u32::from(index);
    if cfg!(target_endian = "little") { (base, base + 4) } else { (base + 4, base) }
}

/// `(high, low)` 32-bit halves.
fn split(value: u64) -> (u32, u32) {
    ((value >> 32) as u32, value as u32)
}

/// Emits the test of one 64-bit argument comparison; returns its first instruction.
fn emit_cond(e: &mut Emitter, cond: &Cond, pass: Target, fail: Target) -> Label {
    use Target::At;
    let (lo, hi) = arg_words(cond.index);
    let (vh, vl) = split(cond.value);
    match cond.op {
        Op::ScmpCmpEq => {
            e.jump(Cmp::Eq, vl, pass, fail);
            let low = e.load(lo);
            e.jump(Cmp::Eq, vh, At(low), fail);
        }
        Op::ScmpCmpNe => {
            e.jump(Cmp::Eq, vl, fail, pass);
            let low = e.load(lo);
            e.jump(Cmp::Eq, vh, At(low), pass);
        }
        // Unsigned 64-bit order: decided by the high words unless they are equal.
        Op::ScmpCmpGt | Op::ScmpCmpGe => {
            let cmp = if cond.op == Op::ScmpCmpGt { Cmp::Gt } else { Cmp::Ge };
            e.jump(cmp, vl, pass, fail);
            let low = e.load(lo);
            let equal = e.jump(Cmp::Eq, vh, At(low), fail);
            e.jump(Cmp::Gt, vh, pass, At(equal));
        }
        // arg < v is !(arg >= v), arg <= v is !(arg > v).
        Op::ScmpCmpLt | Op::ScmpCmpLe => {
            let cmp = if cond.op == Op::ScmpCmpLt { Cmp::Ge } else { Cmp::Gt };
            e.jump(cmp, vl, fail, pass);
            let low = e.load(lo);
            let equal = e.jump(Cmp::Eq, vh, At(low), pass);
            e.jump(Cmp::Gt, vh, fail, At(equal));
        }
        // (arg & value) == valueTwo
        Op::ScmpCmpMaskedEq => {
            let (wh, wl) = split(cond.value_two);
            e.jump(Cmp::Eq, wl, pass, fail);
            e.and(vl);
            let low = e.load(lo);
            e.jump(Cmp::Eq, wh, At(low), fail);
            e.and(vh);
        }
    }
    e.load(hi)
}

/// Emits one rule: its conditions in order, then its action; `fail` when one does not hold.
fn emit_rule(e: &mut Emitter, rule: &Rule, fail: Target) -> Label {
    let mut pass = Target::Ret(rule.action);
    let mut start = None;
    for cond in rule.conds.iter().rev() {
        let label = emit_cond(e, cond, pass, fail);
        pass = Target::At(label);
        start = Some(label);
    }
    start.expect("conditional rules have conditions")
}

/// Emits the dispatch on the syscall number (in the accumulator) over `items`, sorted by
/// number: a binary search tree of `jge`, with short `jeq` chains at the leaves.
fn emit_tree(e: &mut Emitter, items: &[(u32, Target)], default: u32) -> Target {
    if items.len() <= LEAF_SIZE {
        let mut next = Target::Ret(default);
        for &(nr, target) in items.iter().rev() {
            next = Target::At(e.jump(Cmp::Eq, nr, target, next));
        }
        return next;
    }
    let mid = items.len() / 2;
    // Emitted back to front: the right half ends up after the left one, which directly
    // follows the `jge`.
    let right = emit_tree(e, &items[mid..], default);
    let left = emit_tree(e, &items[..mid], default);
    Target::At(e.jump(Cmp::Ge, items[mid].0, right, left))
}

fn has_repeated_index(conds: &[Cond]) -> bool {
    let mut seen = 0u8;
    for cond in conds {
        let bit = 1 << cond.index;
        if seen & bit != 0 {
            return true;
        }
        seen |= bit;
    }
    false
}

fn slot_mut(slots: &mut Vec<Option<Slot>>, nr: u32) -> &mut Option<Slot> {
    let nr = nr as usize;
    if nr >= slots.len() {
        slots.resize_with(nr + 1, || None);
    }
    &mut slots[nr]
}

/// Compiles an OCI seccomp profile for the architecture berth runs on.
///
/// See the [module documentation](crate::seccomp) for the semantics and the limitations.
pub fn compile(profile: &LinuxSeccomp) -> Result<Program, SeccompError> {
    let native = syscalls::NATIVE.ok_or(SeccompError::UnsupportedHostArch { arch: std::env::consts::ARCH })?;
    let architectures = profile.architectures().as_deref().unwrap_or(&[]);
    if !architectures.is_empty() && !architectures.iter().any(|a| *a == native.oci || *a == Arch::ScmpArchNative) {
        return Err(SeccompError::NativeArchNotListed {
            native: native.oci,
            listed: architectures.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        });
    }

    let default_action = profile.default_action();
    if default_action == Action::ScmpActNotify {
        return Err(SeccompError::NotifyDefaultAction);
    }
    let default = action_value(default_action, profile.default_errno_ret(), || "default action".to_owned())?;

    // Resolve the rules into per-syscall slots, indexed by syscall number.
    let mut slots: Vec<Option<Slot>> = Vec::with_capacity(512);
    let mut max_nr: Option<u32> = None;
    let mut skipped = 0usize;
    for (index, entry) in profile.syscalls().as_deref().unwrap_or(&[]).iter().enumerate() {
        let names = entry.names();
        if names.is_empty() {
            return Err(SeccompError::EmptyNames { index });
        }
        if names.iter().any(String::is_empty) {
            return Err(SeccompError::EmptyName { index });
        }
        let owner = || format!("syscall {}", names.join(","));
        let action = action_value(entry.action(), entry.errno_ret(), owner)?;
        let args = entry.args().as_deref().unwrap_or(&[]);
        let mut conds = Vec::with_capacity(args.len());
        for arg in args {
            if arg.index() > MAX_ARG_INDEX {
                return Err(SeccompError::ArgIndex { syscall: names.join(","), index: arg.index() });
            }
            conds.push(Cond {
                index: arg.index() as u8,
                op: arg.op(),
                value: arg.value(),
                value_two: arg.value_two().unwrap_or(0),
            });
        }
        // runc: several conditions on the same argument are OR-ed, each becoming its own rule.
        let repeated = has_repeated_index(&conds);
        // Rules repeating the default action change nothing (libseccomp refuses them, runc
        // skips them), but they do count for the highest syscall number below.
        let effective = action != default;

        for name in names {
            let Some(nr) = syscalls::number(name) else {
                tracing::debug!(syscall = %name, "seccomp: syscall unknown on this architecture, rule skipped");
                skipped += 1;
                continue;
            };
            max_nr = max_nr.max(Some(nr));
            if !effective {
                continue;
            }
            let slot = slot_mut(&mut slots, nr);
            if conds.is_empty() {
                Slot::add(slot, action, None);
            } else if repeated {
                for cond in &conds {
                    Slot::add(slot, action, Some(vec![*cond]));
                }
            } else {
                Slot::add(slot, action, Some(conds.clone()));
            }
        }
    }

    let actions = || slots.iter().flatten().flat_map(Slot::actions);
    let uses_notify = actions().any(|a| a == libc::SECCOMP_RET_USER_NOTIF);
    // Foreign architectures (and x32) get the default action, except that a permissive default
    // with restricting rules would let them bypass those rules: kill the process instead.
    let permissive = |a: u32| a == libc::SECCOMP_RET_ALLOW || a == libc::SECCOMP_RET_LOG;
    let foreign =
        if permissive(default) && actions().any(|a| !permissive(a)) { libc::SECCOMP_RET_KILL_PROCESS } else { default };
    for arch in architectures.iter().filter(|a| **a != native.oci && **a != Arch::ScmpArchNative) {
        let action = format_args!("{foreign:#x}");
        tracing::debug!(%arch, %action, "seccomp: no syscall table for this architecture: one action for all");
    }
    // runc's ENOSYS stub: when the default action refuses syscalls, the ones newer than every
    // syscall the profile names get ENOSYS so that libc falls back to older syscalls.
    let enosys_above = match default_action {
        Action::ScmpActAllow | Action::ScmpActLog | Action::ScmpActTrace => None,
        _ if default == RET_ENOSYS => None,
        _ => max_nr,
    };

    // Emit back to front: returns and per-syscall rule blocks, the dispatch tree, the header.
    let mut e = Emitter::with_capacity(1024);
    e.ret(default);
    let mut dispatch: Vec<(u32, Target)> = Vec::with_capacity(slots.len());
    for (nr, slot) in slots.iter().enumerate() {
        let target = match slot {
            None => continue,
            Some(Slot::Always(action)) => Target::Ret(*action),
            Some(Slot::Rules(rules)) => {
                let mut next = Target::Ret(default);
                for rule in rules.iter().rev() {
                    next = Target::At(emit_rule(&mut e, rule, next));
                }
                next
            }
        };
        dispatch.push((nr as u32, target));
    }
    let mut entry = emit_tree(&mut e, &dispatch, default);
    if let Some(max_nr) = enosys_above {
        entry = Target::At(e.jump(Cmp::Gt, max_nr, Target::Ret(RET_ENOSYS), entry));
    }
    if native.x32_bit {
        // Number -1 has the x32 bit set too, but it is what a tracer sets to skip a syscall: it
        // goes through the filter like any native number (as in libseccomp).
        let minus_one = e.jump(Cmp::Eq, u32::MAX, entry, Target::Ret(foreign));
        entry = Target::At(e.jump(Cmp::Set, syscalls::X32_SYSCALL_BIT, Target::At(minus_one), entry));
    }
    e.place(entry);
    let load_nr = e.load(NR_OFFSET);
    e.jump(Cmp::Eq, native.audit_arch, Target::At(load_nr), Target::Ret(foreign));
    e.load(ARCH_OFFSET);

    if e.len() > MAX_INSNS {
        return Err(SeccompError::ProgramTooLong { len: e.len() });
    }
    if skipped > 0 {
        tracing::debug!(skipped, "seccomp: skipped syscall names unknown on this architecture");
    }
    Ok(Program { instructions: e.finish(), uses_notify })
}

#[cfg(test)]
mod tests {
    use super::super::bpf::interp::{self, Data};
    use super::super::testutil::{docker_default, profile};
    use super::*;
    use serde_json::json;

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const fn errno(n: u32) -> u32 {
        libc::SECCOMP_RET_ERRNO | n
    }

    fn nr(name: &str) -> u32 {
        syscalls::number(name).unwrap_or_else(|| panic!("{name} unknown"))
    }

    fn call(name: &str, args: &[u64]) -> Data {
        let mut data = Data { nr: nr(name), arch: syscalls::NATIVE.unwrap().audit_arch, args: [0; 6] };
        data.args[..args.len()].copy_from_slice(args);
        data
    }

    fn run(program: &Program, data: Data) -> u32 {
        interp::run(program.instructions(), &data)
    }

    fn compiled(value: serde_json::Value) -> Program {
        let program = compile(&profile(value)).expect("profile compiles");
        interp::check(program.instructions());
        program
    }

    #[test]
    fn docker_default_profile() {
        let docker = docker_default();
        let start = std::time::Instant::now();
        let program = compile(&docker).expect("docker profile compiles");
        let first = start.elapsed();
        let rounds = 200;
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(compile(std::hint::black_box(&docker)).unwrap());
        }
        let average = start.elapsed() / rounds;
        let names: usize = docker.syscalls().as_ref().unwrap().iter().map(|s| s.names().len()).sum();
        println!(
            "docker default profile: {names} syscall names -> {} BPF instructions; compile: first {first:?}, \
             average {average:?} over {rounds} rounds",
            program.len()
        );
        interp::check(program.instructions());
        assert!(program.len() < MAX_INSNS);
        assert!(!program.uses_notify());

        let eperm = errno(1);
        assert_eq!(run(&program, call("read", &[])), ALLOW);
        assert_eq!(run(&program, call("mkdirat", &[])), ALLOW);
        assert_eq!(run(&program, call("mount", &[])), eperm);
        assert_eq!(run(&program, call("unshare", &[])), eperm);
        assert_eq!(run(&program, call("clone3", &[])), errno(38));
        // personality: only the listed personas.
        assert_eq!(run(&program, call("personality", &[0xffff_ffff])), ALLOW);
        assert_eq!(run(&program, call("personality", &[0x20008])), ALLOW);
        assert_eq!(run(&program, call("personality", &[0x1_ffff_ffff])), eperm);
        assert_eq!(run(&program, call("personality", &[0x0040_0000])), eperm);
        // clone: no namespace flags.
        assert_eq!(run(&program, call("clone", &[libc::SIGCHLD as u64 | 0x0100_0000])), ALLOW);
        assert_eq!(run(&program, call("clone", &[libc::CLONE_NEWUSER as u64])), eperm);
        assert_eq!(run(&program, call("clone", &[(libc::CLONE_NEWNS | libc::CLONE_VM) as u64])), eperm);
        // socket: anything but AF_VSOCK.
        assert_eq!(run(&program, call("socket", &[libc::AF_INET as u64])), ALLOW);
        assert_eq!(run(&program, call("socket", &[libc::AF_VSOCK as u64])), eperm);
        // Newer than anything the profile names: ENOSYS. Unnamed older ones: the default.
        assert_eq!(run(&program, Data { nr: 1000, ..call("read", &[]) }), errno(38));
        assert_eq!(run(&program, Data { nr: u32::MAX, ..call("read", &[]) }), errno(38));
        assert_eq!(run(&program, call("kexec_load", &[])), eperm);
        // Foreign architecture and x32: the default action.
        assert_eq!(run(&program, Data { arch: 0x4000_0003, ..call("read", &[]) }), eperm);
        if syscalls::NATIVE.unwrap().x32_bit {
            assert_eq!(run(&program, Data { nr: nr("read") | 0x4000_0000, ..call("read", &[]) }), eperm);
        }
        // Every unconditionally allowed name the host knows is allowed.
        for entry in docker.syscalls().as_ref().unwrap() {
            if entry.action() != Action::ScmpActAllow || entry.args().is_some() {
                continue;
            }
            for name in entry.names() {
                if let Some(n) = syscalls::number(name) {
                    assert_eq!(run(&program, Data { nr: n, ..call("read", &[]) }), ALLOW, "{name}");
                }
            }
        }
    }

    #[test]
    fn every_comparison_matches_64_bit_semantics() {
        let values: [u64; 12] = [
            0,
            1,
            7,
            0xffff_fffe,
            0xffff_ffff,
            0x1_0000_0000,
            0x1_0000_0001,
            0x1_ffff_ffff,
            0x2_0000_0000,
            0x8000_0000_0000_0000,
            u64::MAX - 1,
            u64::MAX,
        ];
        let ops = [
            ("SCMP_CMP_NE", Op::ScmpCmpNe),
            ("SCMP_CMP_LT", Op::ScmpCmpLt),
            ("SCMP_CMP_LE", Op::ScmpCmpLe),
            ("SCMP_CMP_EQ", Op::ScmpCmpEq),
            ("SCMP_CMP_GE", Op::ScmpCmpGe),
            ("SCMP_CMP_GT", Op::ScmpCmpGt),
            ("SCMP_CMP_MASKED_EQ", Op::ScmpCmpMaskedEq),
        ];
        for (op_name, op) in ops {
            for &value in &values {
                for &value_two in &[0, 1, 0xffff_ffff, 0x1_0000_0000, value] {
                    let program = compiled(json!({
                        "defaultAction": "SCMP_ACT_ALLOW",
                        "syscalls": [{"names": ["lseek"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42,
                            "args": [{"index": 3, "value": value, "valueTwo": value_two, "op": op_name}]}]
                    }));
                    for &arg in &values {
                        let expected = match op {
                            Op::ScmpCmpNe => arg != value,
                            Op::ScmpCmpLt => arg < value,
                            Op::ScmpCmpLe => arg <= value,
                            Op::ScmpCmpEq => arg == value,
                            Op::ScmpCmpGe => arg >= value,
                            Op::ScmpCmpGt => arg > value,
                            Op::ScmpCmpMaskedEq => arg & value == value_two,
                        };
                        let got = run(&program, call("lseek", &[0, 0, 0, arg]));
                        let want = if expected { errno(42) } else { ALLOW };
                        assert_eq!(got, want, "{op_name} arg {arg:#x} value {value:#x} valueTwo {value_two:#x}");
                    }
                    if op != Op::ScmpCmpMaskedEq {
                        break;
                    }
                }
            }
        }
    }

    #[test]
    fn rules_and_or_order() {
        let program = compiled(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 5,
            "syscalls": [
                {"names": ["lseek"], "action": "SCMP_ACT_ERRNO", "errnoRet": 41,
                    "args": [{"index": 2, "value": 1, "op": "SCMP_CMP_EQ"}]},
                {"names": ["lseek"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42,
                    "args": [{"index": 1, "value": 7, "op": "SCMP_CMP_EQ"}]},
                {"names": ["lseek", "read"], "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 1, "value": 8, "op": "SCMP_CMP_EQ"},
                             {"index": 2, "value": 2, "op": "SCMP_CMP_EQ"}]},
                // Same argument twice: OR-ed (runc).
                {"names": ["write"], "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                             {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]},
                // Same as the default: skipped, the conditional rule before it still applies.
                {"names": ["write"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5},
            ]
        }));
        assert_eq!(run(&program, call("lseek", &[0, 0, 1])), errno(41));
        assert_eq!(run(&program, call("lseek", &[0, 7, 0])), errno(42));
        assert_eq!(run(&program, call("lseek", &[0, 7, 1])), errno(41), "first matching rule wins");
        assert_eq!(run(&program, call("lseek", &[0, 8, 2])), ALLOW);
        assert_eq!(run(&program, call("lseek", &[0, 8, 0])), errno(5), "AND needs both");
        assert_eq!(run(&program, call("read", &[0, 8, 2])), ALLOW);
        assert_eq!(run(&program, call("read", &[0, 8, 3])), errno(5));
        assert_eq!(run(&program, call("write", &[1])), ALLOW);
        assert_eq!(run(&program, call("write", &[2])), ALLOW);
        assert_eq!(run(&program, call("write", &[3])), errno(5));
    }

    #[test]
    fn unconditional_rule_wins() {
        for order in [[0, 1], [1, 0]] {
            let rules = [
                json!({"names": ["lseek"], "action": "SCMP_ACT_ERRNO", "errnoRet": 41,
                    "args": [{"index": 2, "value": 1, "op": "SCMP_CMP_EQ"}]}),
                json!({"names": ["lseek"], "action": "SCMP_ACT_ERRNO", "errnoRet": 44}),
            ];
            let program = compiled(json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [rules[order[0]].clone(), rules[order[1]].clone()]
            }));
            assert_eq!(run(&program, call("lseek", &[0, 0, 1])), errno(44));
            assert_eq!(run(&program, call("lseek", &[0, 0, 0])), errno(44));
            assert_eq!(run(&program, call("read", &[])), ALLOW);
        }
    }

    #[test]
    fn actions_and_return_values() {
        let cases = [
            ("SCMP_ACT_KILL", None, libc::SECCOMP_RET_KILL_THREAD),
            ("SCMP_ACT_KILL_THREAD", None, libc::SECCOMP_RET_KILL_THREAD),
            ("SCMP_ACT_KILL_PROCESS", None, libc::SECCOMP_RET_KILL_PROCESS),
            ("SCMP_ACT_TRAP", None, libc::SECCOMP_RET_TRAP),
            ("SCMP_ACT_ERRNO", None, errno(1)),
            ("SCMP_ACT_ERRNO", Some(38), errno(38)),
            ("SCMP_ACT_TRACE", None, libc::SECCOMP_RET_TRACE | 1),
            ("SCMP_ACT_TRACE", Some(7), libc::SECCOMP_RET_TRACE | 7),
            ("SCMP_ACT_LOG", None, libc::SECCOMP_RET_LOG),
            ("SCMP_ACT_NOTIFY", None, libc::SECCOMP_RET_USER_NOTIF),
        ];
        for (action, ret, want) in cases {
            let program = compiled(json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["getpid"], "action": action, "errnoRet": ret}]
            }));
            assert_eq!(run(&program, call("getpid", &[])), want, "{action}");
            assert_eq!(run(&program, call("read", &[])), ALLOW);
            assert_eq!(program.uses_notify(), action == "SCMP_ACT_NOTIFY");
            // As the default action (NOTIFY cannot be one).
            if action != "SCMP_ACT_NOTIFY" {
                let program = compiled(json!({"defaultAction": action, "defaultErrnoRet": ret}));
                assert_eq!(run(&program, call("getpid", &[])), want, "default {action}");
            }
        }
    }

    #[test]
    fn foreign_architectures() {
        let x86 = 0x4000_0003; // AUDIT_ARCH_I386
        let native = syscalls::NATIVE.unwrap();
        // Restrictive default: foreign syscalls get it.
        let program = compiled(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64"],
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]
        }));
        assert_eq!(run(&program, Data { arch: x86, ..call("read", &[]) }), errno(1));
        if native.x32_bit {
            assert_eq!(run(&program, Data { nr: nr("read") | 0x4000_0000, ..call("read", &[]) }), errno(1));
        }
        // Permissive default with restricting rules: foreign syscalls would bypass them.
        let program = compiled(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_ERRNO"}]
        }));
        assert_eq!(run(&program, Data { arch: x86, ..call("read", &[]) }), libc::SECCOMP_RET_KILL_PROCESS);
        if native.x32_bit {
            let x32 = Data { nr: nr("read") | 0x4000_0000, ..call("read", &[]) };
            assert_eq!(run(&program, x32), libc::SECCOMP_RET_KILL_PROCESS);
        }
        assert_eq!(run(&program, call("read", &[])), ALLOW);
        // Syscall -1 (a tracer skipping a syscall) is not an x32 syscall.
        assert_eq!(run(&program, Data { nr: u32::MAX, ..call("read", &[]) }), ALLOW);
        // Nothing restricted: foreign syscalls are allowed too.
        let program = compiled(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_LOG"}]}));
        assert_eq!(run(&program, Data { arch: x86, ..call("read", &[]) }), ALLOW);
        // SCMP_ARCH_NATIVE counts as the native architecture.
        compiled(json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_NATIVE"]}));
    }

    #[test]
    fn unknown_names_are_skipped() {
        let program = compiled(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["no_such_syscall", "s390_pci_mmio_read", "write"], "action": "SCMP_ACT_ALLOW"}]
        }));
        assert_eq!(run(&program, call("write", &[])), ALLOW);
        assert_eq!(run(&program, call("read", &[])), errno(1));
    }

    #[test]
    fn long_programs_keep_jumps_in_range() {
        // Every known syscall with a conditional rule of its own: far more than 255 instructions
        // between the dispatch and the rule blocks, and between blocks and shared returns.
        let all: Vec<(&str, u32)> = syscalls::all().collect();
        let rules: Vec<_> = all
            .iter()
            .map(|(name, nr)| {
                json!({"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": nr % 4000 + 1,
                    "args": [{"index": 1, "value": u64::from(*nr) << 32 | 9, "op": "SCMP_CMP_EQ"}]})
            })
            .collect();
        let program = compiled(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules}));
        assert!(program.len() > 2000, "{}", program.len());
        for (name, n) in all {
            let hit = Data { nr: n, ..call("read", &[0, u64::from(n) << 32 | 9]) };
            assert_eq!(run(&program, hit), errno(n % 4000 + 1), "{name}");
            let miss = Data { nr: n, ..call("read", &[0, u64::from(n) << 32 | 10]) };
            assert_eq!(run(&program, miss), ALLOW, "{name}");
        }
    }

    #[test]
    fn bad_profiles_are_refused() {
        let err = compile(&profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["lseek"], "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]
        })))
        .unwrap_err();
        assert!(matches!(err, SeccompError::ArgIndex { index: 6, .. }), "{err}");
        assert!(err.to_string().contains("lseek"), "{err}");

        let foreign =
            if syscalls::NATIVE.unwrap().oci == Arch::ScmpArchX86_64 { "SCMP_ARCH_ARM" } else { "SCMP_ARCH_X86" };
        let err =
            compile(&profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": [foreign]}))).unwrap_err();
        assert!(matches!(err, SeccompError::NativeArchNotListed { .. }), "{err}");
        assert!(err.to_string().contains(&syscalls::NATIVE.unwrap().oci.to_string()), "{err}");
        assert!(err.to_string().contains(foreign), "{err}");

        let err = compile(&profile(json!({"defaultAction": "SCMP_ACT_NOTIFY"}))).unwrap_err();
        assert!(matches!(err, SeccompError::NotifyDefaultAction), "{err}");

        let err = compile(&profile(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]})))
        .unwrap_err();
        assert!(matches!(err, SeccompError::EmptyNames { index: 0 }), "{err}");

        let err = compile(&profile(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_LOG"}, {"names": ["read", ""], "action": "SCMP_ACT_ERRNO"}]})))
        .unwrap_err();
        assert!(matches!(err, SeccompError::EmptyName { index: 1 }), "{err}");

        let err = compile(&profile(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]})))
        .unwrap_err();
        assert!(err.to_string().contains("mkdirat") && err.to_string().contains("SCMP_ACT_ERRNO"), "{err}");

        // Unknown action strings never reach compile(): oci-spec refuses them.
        assert!(serde_json::from_value::<LinuxSeccomp>(json!({"defaultAction": "SCMP_ACT_NOPE"})).is_err());
    }
}
