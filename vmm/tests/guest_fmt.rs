//! pvio's guest (`vmm/guest`) is not a workspace member (it has its own target settings), so
//! `cargo fmt --all -- --check` does not see it: this test checks its formatting instead.

use std::path::Path;
use std::process::Command;

#[test]
fn guest_sources_are_rustfmt_clean() {
    let main = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/src/main.rs");
    let out = Command::new("rustfmt")
        .args(["--check", "--edition", "2021"])
        .arg(&main)
        .output()
        .expect("run rustfmt");
    assert!(
        out.status.success(),
        "run `rustfmt --edition 2021 {}`:\n{}",
        main.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}
