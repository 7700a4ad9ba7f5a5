//! Classic BPF instructions and a back-to-front code emitter that never overflows a jump.
//!
//! Conditional jumps in classic BPF carry 8-bit offsets (`jt`/`jf` ≤ 255 instructions forward);
//! only `ja` has a 32-bit offset. The [`Emitter`] builds the program from its last instruction
//! towards its first, so when a jump is emitted every instruction it can target already exists
//! and its exact distance is known. A target further than 255 instructions away is reached
//! through a stub placed right after the jump: a copy of the `ret` when the target is a return
//! (as cheap as a `ja`, and one jump less at run time), an `ja` otherwise. Returns are
//! deduplicated: a jump to "return X" reuses the nearest `ret X` when it is within reach.

use libc::sock_filter;

/// The kernel's limit on the length of a classic BPF program (`BPF_MAXINSNS`).
pub(crate) const MAX_INSNS: usize = 4096;

/// Longest distance a conditional jump can encode.
const MAX_JUMP: usize = u8::MAX as usize;

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const ALU_AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// A conditional jump comparing the accumulator with a constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    /// `A == k`
    Eq,
    /// `A > k` (unsigned)
    Gt,
    /// `A >= k` (unsigned)
    Ge,
    /// `A & k != 0`
    Set,
}

impl Cmp {
    fn code(self) -> u16 {
        let op = match self {
            Cmp::Eq => libc::BPF_JEQ,
            Cmp::Gt => libc::BPF_JGT,
            Cmp::Ge => libc::BPF_JGE,
            Cmp::Set => libc::BPF_JSET,
        };
        (libc::BPF_JMP | op | libc::BPF_K) as u16
    }
}

/// An emitted instruction, named by its distance from the end of the program (0 = the last
/// instruction). Labels stay valid while instructions are prepended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Label(usize);

/// Where a jump goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// An instruction already emitted.
    At(Label),
    /// Return this seccomp action (`SECCOMP_RET_*` with its data).
    Ret(u32),
}

/// Builds a program back to front; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Emitter {
    /// The program, last instruction first.
    reversed: Vec<sock_filter>,
    /// For each action returned so far, the label of its nearest (most recently emitted) `ret`.
    rets: Vec<(u32, Label)>,
}

impl Emitter {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Emitter { reversed: Vec::with_capacity(capacity), rets: Vec::with_capacity(8) }
    }

    /// The number of instructions emitted so far.
    pub(crate) fn len(&self) -> usize {
        self.reversed.len()
    }

    /// The label the next instruction to emit will get.
    fn next_label(&self) -> Label {
        Label(self.reversed.len())
    }

    fn push(&mut self, code: u16, jt: u8, jf: u8, k: u32) -> Label {
        let label = self.next_label();
        self.reversed.push(sock_filter { code, jt, jf, k });
        label
    }

    /// `A = seccomp_data[offset]` (32-bit load); falls through to the previously emitted
    /// instruction.
    pub(crate) fn load(&mut self, offset: u32) -> Label {
        debug_assert!(!self.reversed.is_empty(), "a load cannot end the program");
        self.push(LD_W_ABS, 0, 0, offset)
    }

    /// `A &= k`; falls through to the previously emitted instruction.
    pub(crate) fn and(&mut self, k: u32) -> Label {
        debug_assert!(!self.reversed.is_empty(), "an ALU op cannot end the program");
        self.push(ALU_AND_K, 0, 0, k)
    }

    /// `return action`, always emitted (also records it as the nearest copy of that return).
    pub(crate) fn ret(&mut self, action: u32) -> Label {
        let label = self.push(RET_K, 0, 0, action);
        match self.rets.iter_mut().find(|(a, _)| *a == action) {
            Some(entry) => entry.1 = label,
            None => self.rets.push((action, label)),
        }
        label
    }

    /// Makes `target` the instruction the next emitted one falls through to, and returns its
    /// label: emits a `ret` or an `ja` unless `target` is already the previous instruction.
    pub(crate) fn place(&mut self, target: Target) -> Label {
        match target {
            Target::Ret(action) => self.ret(action),
            Target::At(label) if label.0 + 1 == self.reversed.len() => label,
            Target::At(label) => {
                let distance = self.reversed.len() - label.0 - 1;
                self.push(JA, 0, 0, u32::try_from(distance).expect("program shorter than 2^32"))
            }
        }
    }

    /// `if A <cmp> k goto on_true else goto on_false`.
    pub(crate) fn jump(&mut self, cmp: Cmp, k: u32, on_true: Target, on_false: Target) -> Label {
        let mut t = self.resolve(on_true);
        let mut f = self.resolve(on_false);
        loop {
            let here = self.reversed.len();
            let (dt, df) = (here - t.0 - 1, here - f.0 - 1);
            if dt <= MAX_JUMP && df <= MAX_JUMP {
                return self.push(cmp.code(), dt as u8, df as u8, k);
            }
            // Too far: put a stub right after the jump. Stubs are at most two instructions, so
            // the loop ends after two rounds.
            if dt > MAX_JUMP {
                t = self.place_far(on_true, t);
            } else {
                f = self.place_far(on_false, f);
            }
        }
    }

    /// The label of `target`, emitting a `ret` if no copy of it exists yet.
    fn resolve(&mut self, target: Target) -> Label {
        match target {
            Target::At(label) => label,
            Target::Ret(action) => match self.rets.iter().find(|(a, _)| *a == action) {
                Some(&(_, label)) => label,
                None => self.ret(action),
            },
        }
    }

    /// A stub next to the current position that continues at `target` (resolved to `label`).
    fn place_far(&mut self, target: Target, label: Label) -> Label {
        match target {
            Target::Ret(action) => self.ret(action),
            Target::At(_) => self.place(Target::At(label)),
        }
    }

    /// The finished program, first instruction first.
    pub(crate) fn finish(mut self) -> Vec<sock_filter> {
        self.reversed.reverse();
        self.reversed
    }
}

/// A classic BPF interpreter for the instructions the emitter produces, with the kernel
/// checker's structural rules, so tests can run programs without installing them.
#[cfg(test)]
pub(crate) mod interp {
    use super::*;

    /// `struct seccomp_data`, as the filter sees it.
    #[derive(Debug, Clone, Copy, Default)]
    pub(crate) struct Data {
        pub nr: u32,
        pub arch: u32,
        pub args: [u64; 6],
    }

    impl Data {
        fn word(&self, offset: u32) -> u32 {
            let mut bytes = [0u8; 64];
            bytes[0..4].copy_from_slice(&self.nr.to_ne_bytes());
            bytes[4..8].copy_from_slice(&self.arch.to_ne_bytes());
            for (i, arg) in self.args.iter().enumerate() {
                bytes[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_ne_bytes());
            }
            let o = offset as usize;
            assert!(o.is_multiple_of(4) && o + 4 <= 64, "misaligned or out-of-range load at {o}");
            u32::from_ne_bytes(bytes[o..o + 4].try_into().unwrap())
        }
    }

    /// Checks what the kernel's `bpf_check_classic` and `seccomp_check_filter` check for the
    /// instructions we emit: length, known opcodes, jumps inside the program, ends in `ret`.
    pub(crate) fn check(program: &[sock_filter]) {
        assert!(!program.is_empty() && program.len() <= MAX_INSNS, "program length {}", program.len());
        for (pc, insn) in program.iter().enumerate() {
            let next = pc + 1;
            match insn.code {
                LD_W_ABS | ALU_AND_K | RET_K => {}
                JA => assert!(next + (insn.k as usize) < program.len(), "ja out of range at {pc}"),
                code if [Cmp::Eq, Cmp::Gt, Cmp::Ge, Cmp::Set].iter().any(|c| c.code() == code) => {
                    assert!(next + (insn.jt as usize) < program.len(), "jt out of range at {pc}");
                    assert!(next + (insn.jf as usize) < program.len(), "jf out of range at {pc}");
                }
                code => panic!("unexpected opcode {code:#x} at {pc}"),
            }
        }
        assert_eq!(program.last().unwrap().code, RET_K, "program must end with ret");
    }

    /// Runs `program` on `data` and returns the action.
    pub(crate) fn run(program: &[sock_filter], data: &Data) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let insn = program[pc];
            pc += 1;
            let taken = match insn.code {
                LD_W_ABS => {
                    a = data.word(insn.k);
                    continue;
                }
                ALU_AND_K => {
                    a &= insn.k;
                    continue;
                }
                RET_K => return insn.k,
                JA => {
                    pc += insn.k as usize;
                    continue;
                }
                code if code == Cmp::Eq.code() => a == insn.k,
                code if code == Cmp::Gt.code() => a > insn.k,
                code if code == Cmp::Ge.code() => a >= insn.k,
                code if code == Cmp::Set.code() => a & insn.k != 0,
                code => panic!("unexpected opcode {code:#x}"),
            };
            pc += if taken { insn.jt } else { insn.jf } as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::interp::{Data, check, run};
    use super::*;

    #[test]
    fn far_jumps_get_stubs() {
        let mut e = Emitter::default();
        e.ret(1);
        for _ in 0..600 {
            e.load(0);
        }
        let middle = e.ret(2);
        for _ in 0..300 {
            e.load(0);
        }
        // Both targets are out of reach of a conditional jump.
        e.jump(Cmp::Eq, 7, Target::Ret(1), Target::At(middle));
        e.load(0);
        let program = e.finish();
        check(&program);
        // load; jeq 7, +1, +0; ja middle; ret 1 (a copy, not a far jump to the last one); ...
        assert_eq!((program[1].jt, program[1].jf), (1, 0));
        assert_eq!(program[2].code, JA);
        assert_eq!((program[3].code, program[3].k), (RET_K, 1));
        assert_eq!(run(&program, &Data { nr: 7, ..Data::default() }), 1);
        assert_eq!(run(&program, &Data { nr: 8, ..Data::default() }), 2);
    }

    #[test]
    fn near_returns_are_shared() {
        let mut e = Emitter::default();
        e.ret(5);
        let second = e.jump(Cmp::Eq, 1, Target::Ret(5), Target::Ret(6));
        e.jump(Cmp::Eq, 2, Target::Ret(5), Target::At(second));
        e.load(0);
        let program = e.finish();
        check(&program);
        // load; jeq 2; jeq 1; ret 6; ret 5
        assert_eq!(program.len(), 5);
        assert_eq!(run(&program, &Data { nr: 1, ..Data::default() }), 5);
        assert_eq!(run(&program, &Data { nr: 2, ..Data::default() }), 5);
        assert_eq!(run(&program, &Data { nr: 3, ..Data::default() }), 6);
    }
}
