//! pvio's guest runs at CPL0, which KVM's instruction emulator executes on nested kvm_pvm
//! hosts; the emulator stops the guest on SSE arithmetic, x87, xsave, cmpxchg16b, int3, AVX and
//! a few others (../shared/KVM-HOST.md). This test disassembles the built payload with objdump
//! and fails on any of them, so a toolchain or code change that brings one in is caught here
//! rather than as an emulation failure in a VM.

use std::process::Command;

/// Mnemonics (AT&T, as objdump prints them) the emulator cannot run, by prefix.
const FORBIDDEN_PREFIXES: &[&str] = &[
    "xsave",
    "xrstor",
    "xgetbv",
    "cmpxchg16b",
    "rdtscp",
    "ldmxcsr",
    "stmxcsr",
    "vzero",
    "fxsave",
    "fxrstor",
    "emms",
];

/// Registers whose use means SSE, AVX, MMX or x87 code.
const FORBIDDEN_REGISTERS: &[&str] = &["%xmm", "%ymm", "%zmm", "%mm", "%st", "%k0", "%k1"];

/// Why a disassembled instruction is forbidden, if it is.
fn forbidden(mnemonic: &str, operands: &str) -> Option<&'static str> {
    if FORBIDDEN_PREFIXES.iter().any(|p| mnemonic.starts_with(p)) {
        return Some("unsupported by the emulator");
    }
    if FORBIDDEN_REGISTERS.iter().any(|r| operands.contains(r)) {
        return Some("SSE/AVX/MMX/x87 register");
    }
    // x87 instructions all start with 'f' (fld, fstp, fadd, fnstcw...); no integer one does.
    if mnemonic.starts_with('f') {
        return Some("x87");
    }
    // VEX/EVEX-encoded (AVX) mnemonics start with 'v' (verr/verw are not used).
    if mnemonic.starts_with('v') {
        return Some("AVX");
    }
    None
}

/// Checks an objdump listing; returns the offending lines. `int3` is allowed only as the
/// padding that runs up to the next symbol (never executed).
fn check_listing(listing: &str) -> Vec<String> {
    let lines: Vec<&str> = listing.lines().collect();
    let mut bad = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        // Instruction lines: "  addr:\tmnemonic operands".
        let Some((_, insn)) = line.split_once(":\t") else {
            continue;
        };
        let mut words = insn.split_whitespace();
        let Some(mnemonic) = words.next() else {
            continue;
        };
        let mnemonic = match mnemonic {
            "lock" | "rep" | "repz" | "repnz" | "data16" | "cs" => words.next().unwrap_or(""),
            m => m,
        };
        let operands: String = words.collect::<Vec<_>>().join(" ");
        if mnemonic == "int3" {
            let padding = lines[i + 1..]
                .iter()
                .find(|l| !l.contains("\tint3"))
                .is_none_or(|l| l.trim().is_empty() || l.ends_with(">:"));
            if !padding {
                bad.push(format!("{line}  <- int3 in code"));
            }
            continue;
        }
        if let Some(why) = forbidden(mnemonic, &operands) {
            bad.push(format!("{line}  <- {why}"));
        }
    }
    bad
}

#[test]
fn the_checker_catches_forbidden_instructions() {
    let sample = "\
0000000000100000 <a>:
  100000:\tpxor   %xmm0,%xmm0
  100004:\tfldz
  100006:\tlock cmpxchg16b (%rdi)
  10000b:\tvmovdqu %ymm0,(%rax)
  10000f:\txsave  (%rdi)
  100012:\tint3
  100013:\tret
  100014:\tint3
  100015:\tint3

0000000000100020 <b>:
  100020:\tmov    %rdi,%rax
  100023:\tmovq   %rdi,%rsi
  100026:\trep stos %al,%es:(%rdi)
";
    let bad = check_listing(sample);
    assert_eq!(bad.len(), 6, "{bad:#?}");
    assert!(bad[5].contains("int3 in code"));
}

#[test]
fn guest_payload_has_no_instruction_the_cpl0_emulator_rejects() {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn", vmm::GUEST_PAYLOAD])
        .output()
        .expect("run objdump (binutils; scripts/install-deps.sh installs it)");
    assert!(out.status.success(), "objdump failed: {out:?}");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("<_start>:") && listing.contains("<guest_main>"),
        "unexpected listing:\n{listing}"
    );
    let bad = check_listing(&listing);
    assert!(
        bad.is_empty(),
        "{} forbidden instruction(s) in {}:\n{}",
        bad.len(),
        vmm::GUEST_PAYLOAD,
        bad.join("\n")
    );
}
