//! pvio benchmark harness: pvio's back-ends side by side with their peers.
//!
//! `blk-compare` (see `benches/README.md`) runs one matrix of workloads against
//! backend-blk, qemu-storage-daemon's vhost-user-blk export and fio with io_uring on the same
//! image, on a tmpfs image and an O_DIRECT image on the local disk, repeating each point and
//! alternating the systems, then writes a Markdown report and SVG plots.
//!
//! - [`matrix`]: the workload points (full and quick).
//! - [`systems`]: images, daemons (killed on drop) and the load generators.
//! - [`report`]: medians, spreads, the Markdown table.
//! - [`plot`]: minimal SVG line charts.
//! - [`libblkio`]: libblkio as a second load source (`blkio-load`).
//! - [`runner`]: the whole run.
//! - [`netdisk`]: `netdisk-compare`'s RBD and NBD rows (libblkio load, qemu-storage-daemon's
//!   rbd/nbd drivers, fio's rbd/nbd engines).
//! - [`placement`]: a cache line's round trip between two CPUs (the `net` bench tells by it
//!   under which placement of the virtual CPUs each figure was taken).

pub mod libblkio;
pub mod matrix;
pub mod netdisk;
pub mod placement;
pub mod plot;
pub mod report;
pub mod runner;
pub mod systems;

use std::path::PathBuf;

/// Errors of the benchmark harness.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file or process operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A program ran but failed.
    #[error("{program} failed ({status}): {stderr}")]
    Program {
        /// The program.
        program: String,
        /// Its exit status.
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// A program's output could not be understood.
    #[error("unexpected output from {program}: {detail}")]
    Output {
        /// The program.
        program: String,
        /// What was wrong.
        detail: String,
    },
    /// A needed binary is missing.
    #[error("{0} not found (build with `cargo build --release -p frontend-guest -p backend-blk`, install qemu-system-common and fio)")]
    Missing(PathBuf),
}

impl BenchError {
    /// Maps an I/O error to [`BenchError::Io`] saying `what` was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }
}

/// Result of the harness.
pub type Result<T> = std::result::Result<T, BenchError>;
