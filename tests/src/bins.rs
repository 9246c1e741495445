//! Locates the workspace's binaries for tests that run them as separate processes.
//!
//! Integration tests of one package cannot see another package's binaries through
//! `CARGO_BIN_EXE_*`, so [`workspace_bin`] builds the named binary with the same profile as
//! the running test (a no-op when it is up to date) and returns its path.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits one level below the workspace root")
        .to_path_buf()
}

/// Builds binary `bin` of package `package` with the profile of the running test (or binary) and
/// returns its path, e.g. `workspace_bin("backend-blk", "backend-blk")`. backend-blk is built
/// with the storage drivers this crate's features ask for (`nbd`, `rbd`), the same for every
/// test, so concurrent tests never rebuild it differently.
///
/// # Panics
/// When cargo fails to build it: the test cannot go on without the binary.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe of the test");
    // Test executables are target/<profile>/deps/<test-exe>; binaries (the demo) are
    // target/<profile>/<bin>.
    let exe_dir = exe
        .parent()
        .expect("executables live in target/<profile>[/deps]");
    let profile_dir = if exe_dir.ends_with("deps") {
        exe_dir.parent().expect("target/<profile>/deps")
    } else {
        exe_dir
    };
    let target_dir = profile_dir.parent().expect("target/<profile>");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile directory name");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .env("CARGO_TARGET_DIR", target_dir);
    let features = [
        ("nbd", cfg!(feature = "nbd")),
        ("rbd", cfg!(feature = "rbd")),
    ];
    let features: Vec<&str> = features.iter().filter(|f| f.1).map(|f| f.0).collect();
    if package == "backend-blk" && !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    if profile != "debug" {
        cmd.args([
            "--profile",
            if profile == "release" {
                "release"
            } else {
                profile
            },
        ]);
    }
    let status = cmd.status().expect("run cargo build");
    assert!(
        status.success(),
        "cargo build -p {package} --bin {bin} failed"
    );
    profile_dir.join(bin)
}
