//! Host programs and files the guest tests need, and the message that says how to get them.
//!
//! A missing QEMU, kernel or busybox must fail a test loudly, never skip it: every lookup here
//! returns [`Missing`] whose message names the Debian package and `scripts/install-deps.sh`.

use std::path::{Path, PathBuf};

/// The Debian packages the guest tests and the demo need (installed by `scripts/install-deps.sh`).
pub const GUEST_PACKAGES: &str = "qemu-system-x86 linux-image-amd64 busybox-static";

/// Something the guest tests need is not on this machine.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} not found; install it with `apt-get install -y --no-install-recommends {package}` \
     (all of pvio's test dependencies: `scripts/install-deps.sh`)"
)]
pub struct Missing {
    /// What was looked for, e.g. "program qemu-system-x86_64 (in PATH)".
    pub what: String,
    /// The Debian package that provides it.
    pub package: &'static str,
}

/// Finds `program` in `PATH` (or takes it as is when it contains a `/` and exists).
///
/// # Errors
/// [`Missing`] naming `package` when no executable file of that name is found.
pub fn program(program: &str, package: &'static str) -> Result<PathBuf, Missing> {
    let missing = || Missing {
        what: format!("program {program} (in PATH)"),
        package,
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(missing())
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(missing)
}

/// Checks that the file `path` exists.
///
/// # Errors
/// [`Missing`] naming `package` when it does not.
pub fn file(path: &Path, package: &'static str) -> Result<PathBuf, Missing> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(Missing {
            what: format!("file {}", path.display()),
            package,
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_names_the_package_of_a_missing_program() {
        assert!(program("sh", "dash").unwrap().is_absolute());
        let err = program("pvio-no-such-program", "pvio-pkg").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("pvio-no-such-program") && msg.contains("apt-get install"),
            "{msg}"
        );
        assert!(
            msg.contains("pvio-pkg") && msg.contains("scripts/install-deps.sh"),
            "{msg}"
        );
    }

    #[test]
    fn missing_file_is_an_error() {
        assert!(file(Path::new("/pvio/no/such/file"), "x").is_err());
        assert!(file(Path::new("/bin/sh"), "x").is_ok());
    }
}
