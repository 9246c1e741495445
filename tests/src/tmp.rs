//! Per-test scratch folders.
//!
//! nextest runs every test in its own process and many at once, so each test needs folders no
//! other test touches. [`TempDir::new`] makes `<temp_dir>/pvio-<label>-<pid>-<n>` (n counts up
//! within the process) and removes it, with everything inside, when dropped.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A folder under [`std::env::temp_dir`] removed recursively on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<temp_dir>/pvio-<label>-<pid>-<n>`; `label` names the user (a test, the demo).
    ///
    /// # Errors
    /// The folder cannot be created (an old one of the same name is removed first).
    pub fn new(label: &str) -> io::Result<Self> {
        Self::new_in(&std::env::temp_dir(), label)
    }

    /// [`TempDir::new`] under `parent` instead (e.g. `/dev/shm` for a tmpfs image).
    ///
    /// # Errors
    /// The folder cannot be created (an old one of the same name is removed first).
    pub fn new_in(parent: &Path, label: &str) -> io::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!("pvio-{label}-{}-{n}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(name)`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            log::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_are_distinct_and_removed_on_drop() {
        let a = TempDir::new("tmp-test").unwrap();
        let b = TempDir::new("tmp-test").unwrap();
        assert_ne!(a.path(), b.path());
        std::fs::write(a.join("f"), b"x").unwrap();
        let kept = a.path().to_path_buf();
        drop(a);
        assert!(!kept.exists());
        assert!(b.path().is_dir());
    }
}
