//! One call to boot a test guest that runs a shell script: [`GuestKit`] holds a scratch folder,
//! the kernel and the initramfs base, and [`GuestKit::boot`] writes the run's initramfs, starts
//! QEMU and checks that the script exited 0.

use std::cell::Cell;

use crate::console;
use crate::initramfs::{self, GuestKernel, Initramfs};
use crate::qemu::{self, Guest, GuestRun};
use crate::tmp::TempDir;

/// Errors of a guest run, by stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The scratch folder could not be made.
    #[error("creating a scratch folder: {0}")]
    TempDir(#[source] std::io::Error),
    /// Finding the kernel or building the initramfs failed.
    #[error(transparent)]
    Initramfs(#[from] initramfs::Error),
    /// QEMU failed, timed out or was cancelled.
    #[error(transparent)]
    Qemu(#[from] qemu::Error),
    /// The guest's script failed.
    #[error(transparent)]
    Console(#[from] console::Error),
}

/// The parts every guest of one test (or one demo) shares.
#[derive(Debug)]
pub struct GuestKit {
    dir: TempDir,
    kernel: GuestKernel,
    initramfs: Initramfs,
    runs: Cell<u32>,
}

impl GuestKit {
    /// Makes a scratch folder `pvio-<label>-...`, finds the kernel and packs busybox and
    /// `modules` (in load order, e.g. [`initramfs::BLK_MODULES`]).
    ///
    /// # Errors
    /// The folder cannot be made, or the kernel, modules or busybox are missing.
    pub fn new(label: &str, modules: &[&str]) -> Result<Self, Error> {
        let dir = TempDir::new(label).map_err(Error::TempDir)?;
        let kernel = GuestKernel::find()?;
        let initramfs = Initramfs::new(&kernel, modules)?;
        Ok(Self {
            dir,
            kernel,
            initramfs,
            runs: Cell::new(0),
        })
    }

    /// The scratch folder (removed when the kit is dropped): put images, sockets, logs here.
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }

    /// Boots a guest that runs `script` (see [`Initramfs::write`]); `configure` sets up the
    /// machine (vCPUs, memory, disks, ...) from [`Guest::new`]'s defaults. Returns the run once
    /// the script exited 0 and the guest powered off.
    ///
    /// # Errors
    /// Writing the initramfs fails, QEMU fails or times out, or the script does not exit 0.
    pub fn boot(
        &self,
        script: &str,
        configure: impl FnOnce(&mut Guest),
    ) -> Result<GuestRun, Error> {
        let run = self.guest(script, configure)?.run()?;
        run.console.check_exit()?;
        Ok(run)
    }

    /// The machine that [`GuestKit::boot`] would run, with its initramfs written, for callers
    /// that start QEMU themselves (e.g. [`Guest::spawn`] for a migration).
    ///
    /// # Errors
    /// Writing the initramfs fails, or `PVIO_QEMU_ACCEL` is bad.
    pub fn guest(&self, script: &str, configure: impl FnOnce(&mut Guest)) -> Result<Guest, Error> {
        let n = self.runs.get();
        self.runs.set(n + 1);
        let initrd = self.dir.join(&format!("initrd-{n}.cpio"));
        self.initramfs.write(&initrd, script)?;
        let mut guest = Guest::new(&self.kernel.image, &initrd)?;
        configure(&mut guest);
        Ok(guest)
    }
}
