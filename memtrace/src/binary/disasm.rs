//! Finding uprobe sites inside a function by decoding its x86-64 machine code.
//!
//! * The entry probe goes on the `push %rbp` that follows Go's stack-bound check, not on the
//!   first instruction: the kernel emulates `push` (about 1 µs per hit instead of about 15 µs
//!   for an out-of-line single-step), and the symbol start is reached a second time when
//!   `morestack` grows the stack and jumps back to the entry, which would double-count the call.
//! * Return probes go on every `RET`, because uretprobes replace the return address on the
//!   goroutine stack and crash the Go runtime when it walks or copies that stack.

use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, Register};

use super::BinaryError;

/// How far into a function the frame-pointer push is looked for. Go's prologue before it is the
/// stack check (`cmp`/`jbe`, or `lea`/`cmp`/`jbe` for big frames), possibly after an `endbr64`.
pub const ENTRY_PROBE_MAX_BYTES: usize = 64;
pub const ENTRY_PROBE_MAX_INSTRUCTIONS: usize = 16;

/// The offset from the function start of its frame-pointer push (`push %rbp`), where an entry
/// uprobe is cheap and fires once per call.
///
/// Decodes from the start of `code` (the function's bytes, at address `func_addr`) through the
/// straight-line prologue: at most [`ENTRY_PROBE_MAX_INSTRUCTIONS`] instructions within
/// [`ENTRY_PROBE_MAX_BYTES`] bytes, stopping at the first return, unconditional jump or trap. A
/// leading `endbr64` is decoded over like any other instruction.
///
/// # Errors
/// [`BinaryError::NoFramePointerPush`] for frameless functions (small leaves) and for code that
/// does not decode.
pub fn entry_probe_offset(code: &[u8], func_addr: u64) -> Result<u64, BinaryError> {
    let prologue = &code[..code.len().min(ENTRY_PROBE_MAX_BYTES)];
    let mut decoder = Decoder::with_ip(64, prologue, func_addr, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    for _ in 0..ENTRY_PROBE_MAX_INSTRUCTIONS {
        if !decoder.can_decode() {
            break;
        }
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            break;
        }
        if instruction.code() == Code::Push_r64 && instruction.op0_register() == Register::RBP {
            return Ok(instruction.ip().wrapping_sub(func_addr));
        }
        // Past one of these, later bytes are not the prologue any more (a `push %rbp` there
        // would belong to some other path, or to the next function).
        if matches!(
            instruction.flow_control(),
            FlowControl::Return
                | FlowControl::UnconditionalBranch
                | FlowControl::IndirectBranch
                | FlowControl::Interrupt
                | FlowControl::Exception
        ) {
            break;
        }
    }
    Err(BinaryError::NoFramePointerPush { addr: func_addr })
}

/// Offsets from the function start of every `RET` in `code` (the function's bytes, at address
/// `func_addr`), decoding linearly from the start. Go on amd64 puts no data in `.text` (jump
/// tables live in `.rodata`), so linear decoding sees every instruction; the `int3` padding
/// after the function decodes harmlessly.
pub fn ret_offsets(code: &[u8], func_addr: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, func_addr, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let mut offsets = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if instruction.mnemonic() == Mnemonic::Ret {
            offsets.push(instruction.ip().wrapping_sub(func_addr));
        }
    }
    offsets
}

/// Offsets from the function start of every direct `call` to `callee` in `code` (the function's
/// bytes, at address `func_addr`). A uprobe on a `call` is emulated by the kernel, not
/// single-stepped, and sees the callee's arguments already in their registers.
pub fn call_offsets(code: &[u8], func_addr: u64, callee: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, func_addr, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let mut offsets = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if instruction.flow_control() == FlowControl::Call
            && instruction.is_call_near()
            && instruction.near_branch_target() == callee
        {
            offsets.push(instruction.ip().wrapping_sub(func_addr));
        }
    }
    offsets
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go 1.26's runtime.mallocgc prologue: cmp 0x10(%r14),%rsp; jbe; push %rbp; mov %rsp,%rbp.
    const GO_PROLOGUE: &[u8] = &[
        0x49, 0x3b, 0x66, 0x10, // cmp 0x10(%r14),%rsp
        0x0f, 0x86, 0x45, 0x01, 0x00, 0x00, // jbe +0x145
        0x55, // push %rbp
        0x48, 0x89, 0xe5, // mov %rsp,%rbp
        0xc3, // ret
    ];

    #[test]
    fn finds_the_push_after_the_stack_check() {
        assert_eq!(entry_probe_offset(GO_PROLOGUE, 0x47_8120).unwrap(), 0xa);
    }

    #[test]
    fn skips_endbr64() {
        let mut code = vec![0xf3, 0x0f, 0x1e, 0xfa];
        code.extend_from_slice(GO_PROLOGUE);
        assert_eq!(entry_probe_offset(&code, 0x1000).unwrap(), 0xe);
    }

    #[test]
    fn frameless_functions_are_an_error() {
        // mov %rax,%rbx; ret; push %rbp  -- the push after the RET is not a prologue.
        let code = [0x48, 0x89, 0xc3, 0xc3, 0x55];
        assert!(matches!(
            entry_probe_offset(&code, 0x2000),
            Err(BinaryError::NoFramePointerPush { addr: 0x2000 })
        ));
        assert!(entry_probe_offset(&[], 0).is_err());
        // push %r13 (41 55) is not push %rbp.
        assert!(entry_probe_offset(&[0x41, 0x55, 0xc3], 0).is_err());
        // Garbage and a push beyond the search window.
        assert!(entry_probe_offset(&[0xff; 8], 0).is_err());
        let mut far = vec![0x90; ENTRY_PROBE_MAX_BYTES];
        far.push(0x55);
        assert!(entry_probe_offset(&far, 0).is_err());
    }

    #[test]
    fn finds_direct_calls_to_one_callee() {
        // Go 1.21's runtime.newproc.func1, from its push %rbp: the call to runqput is at +0x2f.
        let code = [
            0x55, // push %rbp
            0x48, 0x89, 0xe5, // mov %rsp,%rbp
            0x48, 0x83, 0xec, 0x18, // sub $0x18,%rsp
            0x48, 0x8b, 0x42, 0x08, // mov 0x8(%rdx),%rax
            0x48, 0x8b, 0x5a, 0x10, // mov 0x10(%rdx),%rbx
            0x48, 0x8b, 0x4a, 0x18, // mov 0x18(%rdx),%rcx
            0xe8, 0x41, 0x00, 0x00, 0x00, // call newproc1 (0x43d8c0)
            0x49, 0x8b, 0x56, 0x30, // mov 0x30(%r14),%rdx
            0x48, 0x8b, 0x92, 0xd0, 0x00, 0x00, 0x00, // mov 0xd0(%rdx),%rdx
            0x48, 0x89, 0xc3, // mov %rax,%rbx
            0xb9, 0x01, 0x00, 0x00, 0x00, // mov $1,%ecx
            0x48, 0x89, 0xd0, // mov %rdx,%rax
            0xe8, 0x86, 0x40, 0x00, 0x00, // call runqput (0x441920)
            0xff, 0xd2, // call *%rdx: indirect, never a match
        ];
        let start = 0x43_d866;
        assert_eq!(call_offsets(&code, start, 0x44_1920), vec![0x2f]);
        assert_eq!(call_offsets(&code, start, 0x43_d8c0), vec![0x14]);
        assert!(call_offsets(&code, start, 0x40_0000).is_empty());
    }

    #[test]
    fn finds_every_ret() {
        let code = [
            0x55, // push %rbp
            0x5d, // pop %rbp
            0xc3, // ret
            0xc2, 0x08, 0x00, // ret $8
            0x48, 0x8d, 0x05, 0xc3, 0x00, 0x00,
            0x00, // lea 0xc3(%rip),%rax: a c3 byte that is no ret
            0xc3, // ret
            0xcc, 0xcc, // int3 padding
        ];
        assert_eq!(ret_offsets(&code, 0x40_0000), vec![2, 3, 13]);
        assert!(ret_offsets(&[], 0).is_empty());
        assert!(ret_offsets(&[0xff; 5], 0).is_empty());
    }
}
