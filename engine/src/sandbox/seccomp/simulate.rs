//! A classic-BPF evaluator for the compiled filter, for tests: runs the exact program
//! [`install`](super::install) would load against a `seccomp_data` the test makes up, so
//! the table's meaning (architecture check, x32 rejection, argument masks) is checked
//! without the kernel — including calls no test could safely make for real.

/// The `seccomp_data` a filter sees: `nr`, `arch`, instruction pointer, six arguments.
pub(super) struct Call {
    pub nr: i32,
    pub arch: u32,
    pub args: [u64; 6],
}

/// `AUDIT_ARCH_*` of the architecture the tests run on.
pub(super) const NATIVE_ARCH: u32 = if cfg!(target_arch = "x86_64") {
    0xc000_003e
} else if cfg!(target_arch = "aarch64") {
    0xc000_00b7
} else {
    panic!("add this architecture's AUDIT_ARCH value")
};

/// `AUDIT_ARCH_I386`: a 32-bit x86 call into a 64-bit kernel.
pub(super) const I386_ARCH: u32 = 0x4000_0003;

impl Call {
    pub(super) fn native(nr: libc::c_long, args: [u64; 6]) -> Self {
        Self {
            nr: i32::try_from(nr).expect("system call numbers fit in an int"),
            arch: NATIVE_ARCH,
            args,
        }
    }

    /// The 32-bit word at `offset` of `struct seccomp_data`, as `BPF_LD | BPF_ABS` loads it.
    fn word(&self, offset: u32) -> u32 {
        let mut data = Vec::with_capacity(64);
        data.extend_from_slice(&self.nr.to_ne_bytes());
        data.extend_from_slice(&self.arch.to_ne_bytes());
        data.extend_from_slice(&0u64.to_ne_bytes());
        for arg in self.args {
            data.extend_from_slice(&arg.to_ne_bytes());
        }
        let offset = usize::try_from(offset).unwrap();
        let bytes = data
            .get(offset..offset + 4)
            .unwrap_or_else(|| panic!("load beyond seccomp_data at offset {offset}"));
        u32::from_ne_bytes(bytes.try_into().unwrap())
    }
}

/// The `SECCOMP_RET_*` value `program` returns for `call`. Panics on an instruction the
/// evaluator does not know, so a change in libseccomp's output shows up here.
pub(super) fn run(program: &[libc::sock_filter], call: &Call) -> u32 {
    let mut accumulator: u32 = 0;
    let mut scratch = [0u32; 16];
    let mut pc = 0usize;
    loop {
        let instruction = program
            .get(pc)
            .unwrap_or_else(|| panic!("jumped past the end of the program to {pc}"));
        let k = instruction.k;
        let jump = |taken: bool| {
            1 + usize::from(if taken {
                instruction.jt
            } else {
                instruction.jf
            })
        };
        pc += match instruction.code {
            // BPF_LD | BPF_W | BPF_ABS
            0x20 => {
                accumulator = call.word(k);
                1
            }
            // BPF_LD | BPF_MEM
            0x60 => {
                accumulator = scratch[usize::try_from(k).unwrap()];
                1
            }
            // BPF_ST
            0x02 => {
                scratch[usize::try_from(k).unwrap()] = accumulator;
                1
            }
            // BPF_ALU | BPF_AND | BPF_K
            0x54 => {
                accumulator &= k;
                1
            }
            // BPF_JMP | BPF_JA
            0x05 => 1 + usize::try_from(k).unwrap(),
            // BPF_JMP | BPF_JEQ | BPF_K
            0x15 => jump(accumulator == k),
            // BPF_JMP | BPF_JGT | BPF_K
            0x25 => jump(accumulator > k),
            // BPF_JMP | BPF_JGE | BPF_K
            0x35 => jump(accumulator >= k),
            // BPF_JMP | BPF_JSET | BPF_K
            0x45 => jump(accumulator & k != 0),
            // BPF_RET | BPF_K
            0x06 => return k,
            other => panic!("instruction {other:#06x} at {pc} is not simulated"),
        };
    }
}
