//! Builds pvio's guest (`guest/`, a freestanding x86-64 program) and hands its path to the
//! crate as `PVIO_GUEST`.
//!
//! The guest's CPL0 code runs in KVM's instruction emulator on hosts like pvio's CI (nested
//! kvm_pvm), which stops on SSE arithmetic, x87, xsave, cmpxchg16b and AVX. So the guest is
//! built without SSE (`-C target-feature=-sse,-sse2,...`) with fat LTO, which recompiles the
//! parts of `core` it uses with the same features; `tests/guest_isa.rs` disassembles the
//! result and fails on any forbidden instruction. The guest has its own target directory
//! (`target/pvio-guest`) and lock file, so this nested cargo never waits on the outer one.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let guest = manifest.join("guest");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    // OUT_DIR is <target>/<profile>/build/vmm-<hash>/out.
    let target_dir = out.ancestors().nth(4).unwrap_or(&out).join("pvio-guest");
    let flags = [
        "-C",
        "target-feature=-sse,-sse2,-sse3,-ssse3,-sse4.1,-sse4.2,-avx,-avx2,-fma,+crt-static",
        "-C",
        "relocation-model=static",
        "-C",
        "link-arg=-nostartfiles",
        "-C",
        "link-arg=-nostdlib",
        "-C",
        "link-arg=-static",
        "-C",
        "link-arg=-Wl,--build-id=none",
    ];
    // The linker script is passed by the guest's own build script, which relinks on changes.
    let encoded: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&guest)
        .args([
            "build",
            "--release",
            "--locked",
            "--offline",
            "--target",
            TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env("CARGO_ENCODED_RUSTFLAGS", encoded.join("\x1f"))
        .status()
        .expect("run cargo to build the guest");
    assert!(status.success(), "building pvio's guest (vmm/guest) failed");
    let built = target_dir.join(TARGET).join("release").join("pvio-guest");
    let payload = out.join("pvio-guest");
    std::fs::copy(&built, &payload).expect("copy the guest payload");
    println!("cargo:rustc-env=PVIO_GUEST={}", payload.display());
    for path in [
        guest.join("src"),
        guest.join("Cargo.toml"),
        guest.join("Cargo.lock"),
        guest.join("build.rs"),
        guest.join("link.ld"),
        manifest.join("src/boot_info.rs"),
        manifest.join("src/pattern.rs"),
        manifest.join("../frontend-guest/src"),
    ] {
        rerun_if_changed(&path);
    }
}

fn rerun_if_changed(path: &Path) {
    println!("cargo:rerun-if-changed={}", path.display());
}
