//! The README's "main job" (`scripts/demo.sh` runs the `pvio-demo` binary): serve a sparse disk
//! image with backend-blk, boot a Linux guest under QEMU on it as a vhost-user-blk-pci disk, run
//! a short I/O workload in the guest, check the data on both sides, and print the throughput.
//!
//! The guest writes `workload` MiB (a random pattern of up to 64 MiB repeated) with O_DIRECT in
//! 1 MiB requests, flushes, reads it all back with O_DIRECT, then reads 16 MiB in 4 KiB requests
//! at queue depth 1. Times come from the guest's clock (`/proc/uptime`, 10 ms resolution). Every
//! chunk's SHA-256, as read by the guest and as found in the image file by the host, must match
//! the pattern's. Temporary files and the back-end go away at the end, on failure too, and on
//! Ctrl-C or SIGTERM ([`install_interrupt_handler`]).

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::backend::{self, BlkBackend, BlkBackendConfig, BlkBackendKind};
use crate::console::{self, Console};
use crate::guest::{self, GuestKit};
use crate::image::{self, MIB};
use crate::initramfs::BLK_MODULES;
use crate::qemu::{Accel, BlkDisk, GuestRun};

/// The guest holds at most this much of its pattern in RAM (MiB); larger workloads repeat it.
const MAX_CHUNK_MIB: u64 = 64;
/// Number of 4 KiB reads in the small-request test (16 MiB).
const SMALL_READS: u64 = 4096;

/// Set by the SIGINT/SIGTERM handler; the guest run polls it and stops QEMU.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The options do not fit together.
    #[error("{0}")]
    BadOptions(String),
    /// The disk image could not be made or checked.
    #[error(transparent)]
    Image(#[from] image::Error),
    /// The back-end did not start or stop cleanly.
    #[error(transparent)]
    Backend(#[from] backend::Error),
    /// The guest failed (the back-end's log follows).
    #[error("{source}\n{backend} log:\n{log}")]
    Guest {
        /// What went wrong in the guest run.
        #[source]
        source: guest::Error,
        /// The back-end's name.
        backend: &'static str,
        /// The back-end's log.
        log: String,
    },
    /// The guest's report is missing a value.
    #[error(transparent)]
    Report(#[from] console::Error),
    /// A timing line is not two numbers.
    #[error("cannot read timing {key:?} = {value:?}")]
    BadTiming {
        /// The marker key.
        key: String,
        /// What the guest printed.
        value: String,
    },
    /// Data read back differs from what was written.
    #[error("data mismatch: {0}")]
    DataMismatch(String),
    /// The back-end did not exit 0 after SIGTERM, or left its socket.
    #[error("{0}")]
    UncleanStop(String),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,
}

/// Which back-end serves the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// pvio's backend-blk (built with the demo's profile).
    BackendBlk,
    /// qemu-storage-daemon's vhost-user-blk export, for comparison.
    QemuStorageDaemon,
}

/// The demo's command line.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "pvio-demo",
    about = "Boots a Linux guest under QEMU on a disk served by pvio's backend-blk \
             (vhost-user-blk), runs an I/O workload in it, checks the data, prints throughput"
)]
pub struct Options {
    /// The back-end serving the disk.
    #[arg(long, value_enum, default_value_t = BackendChoice::BackendBlk)]
    pub backend: BackendChoice,
    /// Size of the sparse disk image, MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub image_mib: u64,
    /// How much the guest writes and reads back, MiB (up to 64, or a multiple of 64).
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub workload_mib: u64,
    /// Guest vCPUs.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub vcpus: u32,
    /// Virtqueues of the disk (back-end and QEMU device).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub num_queues: u16,
}

impl Options {
    /// The size of the guest's pattern, MiB: the workload is `chunks` repeats of it.
    fn chunk_mib(&self) -> Result<u64, Error> {
        let chunk = self.workload_mib.min(MAX_CHUNK_MIB);
        if chunk == 0 || self.workload_mib % chunk != 0 {
            return Err(Error::BadOptions(format!(
                "--workload-mib {}: must be 1 to {MAX_CHUNK_MIB} or a multiple of {MAX_CHUNK_MIB}",
                self.workload_mib
            )));
        }
        if self.workload_mib > self.image_mib || self.image_mib * MIB / 4096 < SMALL_READS {
            return Err(Error::BadOptions(format!(
                "--image-mib {} must hold the workload ({} MiB) and at least 16 MiB",
                self.image_mib, self.workload_mib
            )));
        }
        if self.vcpus == 0 || self.num_queues == 0 {
            return Err(Error::BadOptions(
                "--vcpus and --num-queues must be at least 1".into(),
            ));
        }
        Ok(chunk)
    }
}

/// Installs handlers so that SIGINT and SIGTERM stop the guest run (and so the demo cleans up
/// and exits) instead of killing the process on the spot.
///
/// # Errors
/// sigaction fails.
pub fn install_interrupt_handler() -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    extern "C" fn on_signal(_: libc::c_int) {
        INTERRUPTED.store(true, Ordering::Relaxed);
    }
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe, and it
        // replaces no handler that other code relies on.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// Throughput figures from the guest's clock.
#[derive(Debug, Clone)]
pub struct Report {
    /// MiB written and read in 1 MiB requests.
    pub workload_mib: u64,
    /// Seconds to write them (O_DIRECT, then a flush).
    pub write_seconds: f64,
    /// Seconds to read them (O_DIRECT).
    pub read_seconds: f64,
    /// Number of 4 KiB reads at queue depth 1.
    pub small_reads: u64,
    /// Seconds they took.
    pub small_read_seconds: f64,
    /// Guest uptime when its `/init` started, seconds.
    pub boot_seconds: f64,
    /// Wall-clock time of the whole guest run (boot, workload, checks, power-off).
    pub guest_wall_seconds: f64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = self.workload_mib as f64;
        let rate = |seconds: f64, amount: f64| {
            if seconds > 0.0 {
                amount / seconds
            } else {
                f64::INFINITY
            }
        };
        let w = self.workload_mib;
        writeln!(
            f,
            "  sequential write {w:>5} MiB, 1 MiB requests, O_DIRECT + flush: {:>7.2} s {:>9.1} MiB/s",
            self.write_seconds,
            rate(self.write_seconds, mib)
        )?;
        writeln!(
            f,
            "  sequential read  {w:>5} MiB, 1 MiB requests, O_DIRECT:         {:>7.2} s {:>9.1} MiB/s",
            self.read_seconds,
            rate(self.read_seconds, mib)
        )?;
        writeln!(
            f,
            "  read {:>5} x 4 KiB requests, queue depth 1, O_DIRECT:          {:>7.2} s {:>9.0} IOPS",
            self.small_reads,
            self.small_read_seconds,
            rate(self.small_read_seconds, self.small_reads as f64)
        )?;
        write!(
            f,
            "  guest boot to /init {:.2} s; whole guest run {:.1} s wall",
            self.boot_seconds, self.guest_wall_seconds
        )
    }
}

/// Runs the demo, printing each step to standard output; returns the figures.
///
/// # Errors
/// Any step fails, the data does not match, or the run is interrupted.
pub fn run(options: &Options) -> Result<Report, Error> {
    let chunk_mib = options.chunk_mib()?;
    let kind = match options.backend {
        BackendChoice::BackendBlk => {
            println!("[1/5] building backend-blk (cargo, the demo's profile)");
            BlkBackendKind::pvio()
        }
        BackendChoice::QemuStorageDaemon => {
            println!("[1/5] using qemu-storage-daemon as the back-end");
            BlkBackendKind::QemuStorageDaemon
        }
    };
    check_interrupted()?;
    let kit =
        GuestKit::new("demo", BLK_MODULES).map_err(|source| guest_error(source, &kind, None))?;
    let image_path = kit.dir().join("disk.raw");
    println!(
        "[2/5] creating a sparse {} MiB image {}",
        options.image_mib,
        image_path.display()
    );
    image::create_sparse(&image_path, options.image_mib * MIB)?;

    let socket = kit.dir().join("blk.sock");
    let mut config = BlkBackendConfig::new(&image_path, &socket, options.num_queues);
    config.direct = Some(true);
    let command = config.command_line(&kind).map_err(backend::Error::from)?;
    println!("[3/5] starting {}:\n      {command}", kind.name());
    let backend = BlkBackend::start(&kind, &config, &kit.dir().join("backend.log"))?;
    check_interrupted()?;

    println!(
        "[4/5] booting Linux under QEMU ({}, {} vCPUs) with a vhost-user-blk-pci disk, {} queue(s)",
        match crate::qemu::Accel::from_env() {
            Ok(Accel::Kvm) => "KVM",
            _ => "TCG",
        },
        options.vcpus,
        options.num_queues
    );
    let disk = BlkDisk {
        socket: socket.clone(),
        num_queues: options.num_queues,
        reconnect: false,
    };
    let script = workload_script(options.workload_mib, chunk_mib);
    let guest_mib = u32::try_from(256 + 2 * chunk_mib).expect("chunk is at most 64 MiB");
    let started = Instant::now();
    let booted = kit.boot(&script, |guest| {
        guest.vcpus = options.vcpus;
        guest.memory_mib = guest_mib;
        guest.disks = vec![disk];
        guest.echo = Some("      guest| ".into());
        guest.cancel = Some(&INTERRUPTED);
    });
    let run = booted.map_err(|source| guest_error(source, &kind, Some(&backend)))?;
    println!(
        "      guest powered off after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    println!("[5/5] checking the data and stopping {}", kind.name());
    let chunks = check_data(&run.console, &image_path, options.workload_mib, chunk_mib)?;
    println!(
        "      the guest read back all {chunks} x {chunk_mib} MiB chunks as written; the image \
         file on the host holds the same bytes (SHA-256)"
    );
    stop_backend(backend, &socket, &kind)?;
    report(&run, options.workload_mib)
}

/// Guest shell for the workload; see the module doc. Chunks are checked from a file in RAM:
/// piping dd into sha256sum across vCPUs is about 4x slower under TCG.
fn workload_script(workload_mib: u64, chunk_mib: u64) -> String {
    let chunks = workload_mib / chunk_mib;
    format!(
        r#"up() {{ cut -d' ' -f1 /proc/uptime; }}
echo "making a {chunk_mib} MiB random pattern"
dd if=/dev/urandom of=/tmp/p bs=1M count={chunk_mib} status=none
P=$(sha256sum < /tmp/p | cut -d' ' -f1)
echo "@@pvio pattern $P"
echo "writing {workload_mib} MiB to /dev/vda (O_DIRECT, 1 MiB requests), then flushing"
T0=$(up)
i=0
while [ $i -lt {chunks} ]; do
    dd if=/tmp/p of=/dev/vda bs=1M seek=$((i * {chunk_mib})) oflag=direct status=none
    i=$((i + 1))
done
sync
T1=$(up)
echo "@@pvio write-seconds $T0 $T1"
echo "reading {workload_mib} MiB (O_DIRECT, 1 MiB requests)"
T0=$(up)
dd if=/dev/vda of=/dev/null bs=1M count={workload_mib} iflag=direct status=none
T1=$(up)
echo "@@pvio read-seconds $T0 $T1"
echo "reading {SMALL_READS} x 4 KiB (O_DIRECT, queue depth 1)"
T0=$(up)
dd if=/dev/vda of=/dev/null bs=4k count={SMALL_READS} iflag=direct status=none
T1=$(up)
echo "@@pvio small-read-seconds $T0 $T1"
echo "checking every chunk"
i=0
while [ $i -lt {chunks} ]; do
    dd if=/dev/vda of=/tmp/r bs=1M skip=$((i * {chunk_mib})) count={chunk_mib} iflag=direct status=none
    S=$(sha256sum < /tmp/r | cut -d' ' -f1)
    echo "@@pvio chunk-$i $S"
    i=$((i + 1))
done
"#
    )
}

/// Checks every chunk as the guest read it and as the image file holds it against the
/// pattern's digest; returns the number of chunks.
fn check_data(
    console: &Console,
    image_path: &Path,
    workload_mib: u64,
    chunk_mib: u64,
) -> Result<u64, Error> {
    let pattern = console.marker("pattern")?;
    let chunk_len = usize::try_from(chunk_mib * MIB).expect("chunk is at most 64 MiB");
    let chunks = workload_mib / chunk_mib;
    for i in 0..chunks {
        let guest = console.marker(&format!("chunk-{i}"))?;
        if guest != pattern {
            return Err(Error::DataMismatch(format!(
                "guest read chunk {i} as {guest}, wrote {pattern}"
            )));
        }
        let host = image::sha256_hex(&image::read_at(image_path, i * chunk_mib * MIB, chunk_len)?)?;
        if host != pattern {
            return Err(Error::DataMismatch(format!(
                "image chunk {i} is {host}, the guest wrote {pattern}"
            )));
        }
    }
    Ok(chunks)
}

/// SIGTERM to the back-end; backend-blk must exit 0 and remove its socket.
fn stop_backend(backend: BlkBackend, socket: &Path, kind: &BlkBackendKind) -> Result<(), Error> {
    let log = backend.log();
    let status = backend.stop()?;
    if let BlkBackendKind::Pvio(_) = kind {
        if !status.success() || socket.exists() {
            return Err(Error::UncleanStop(format!(
                "backend-blk exited with {status} after SIGTERM (socket left: {}); log:\n{log}",
                socket.exists()
            )));
        }
    }
    println!("      {} stopped on SIGTERM: {status}", kind.name());
    Ok(())
}

fn report(run: &GuestRun, workload_mib: u64) -> Result<Report, Error> {
    let boot = run.console.marker("booted")?;
    Ok(Report {
        workload_mib,
        write_seconds: seconds(&run.console, "write-seconds")?,
        read_seconds: seconds(&run.console, "read-seconds")?,
        small_reads: SMALL_READS,
        small_read_seconds: seconds(&run.console, "small-read-seconds")?,
        boot_seconds: boot.parse().map_err(|_| Error::BadTiming {
            key: "booted".into(),
            value: boot.into(),
        })?,
        guest_wall_seconds: run.wall.as_secs_f64(),
    })
}

/// The difference of the two uptimes in marker `key` ("T0 T1").
fn seconds(console: &Console, key: &str) -> Result<f64, Error> {
    let value = console.marker(key)?;
    let bad = || Error::BadTiming {
        key: key.into(),
        value: value.into(),
    };
    let (t0, t1) = value.split_once(' ').ok_or_else(bad)?;
    let t0: f64 = t0.parse().map_err(|_| bad())?;
    let t1: f64 = t1.parse().map_err(|_| bad())?;
    Ok(t1 - t0)
}

fn guest_error(source: guest::Error, kind: &BlkBackendKind, backend: Option<&BlkBackend>) -> Error {
    if INTERRUPTED.load(Ordering::Relaxed) {
        return Error::Interrupted;
    }
    Error::Guest {
        source,
        backend: kind.name(),
        log: backend.map(BlkBackend::log).unwrap_or_default(),
    }
}

fn check_interrupted() -> Result<(), Error> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn defaults_and_option_checks() {
        let o = Options::parse_from(["pvio-demo"]);
        assert_eq!(
            (o.image_mib, o.workload_mib, o.vcpus, o.num_queues),
            (1024, 256, 2, 2)
        );
        assert_eq!(o.backend, BackendChoice::BackendBlk);
        assert_eq!(o.chunk_mib().unwrap(), 64);
        assert_eq!(
            Options::parse_from(["d", "--workload-mib", "8"])
                .chunk_mib()
                .unwrap(),
            8
        );
        assert!(Options::parse_from(["d", "--workload-mib", "100"])
            .chunk_mib()
            .is_err());
        assert!(Options::parse_from(["d", "--workload-mib", "0"])
            .chunk_mib()
            .is_err());
        assert!(
            Options::parse_from(["d", "--image-mib", "128", "--workload-mib", "192"])
                .chunk_mib()
                .is_err()
        );
        let qsd = Options::parse_from(["d", "--backend", "qemu-storage-daemon"]);
        assert_eq!(qsd.backend, BackendChoice::QemuStorageDaemon);
    }

    #[test]
    fn timings_are_read_from_uptime_pairs() {
        let c = Console::new("@@pvio write-seconds 3.10 4.35\n@@pvio read-seconds 5 x\n");
        assert!((seconds(&c, "write-seconds").unwrap() - 1.25).abs() < 1e-9);
        assert!(matches!(
            seconds(&c, "read-seconds"),
            Err(Error::BadTiming { .. })
        ));
        assert!(matches!(seconds(&c, "other"), Err(Error::Report(_))));
    }

    #[test]
    fn script_repeats_the_pattern_over_the_workload() {
        let s = workload_script(256, 64);
        assert!(s.contains("while [ $i -lt 4 ]; do"));
        assert!(s.contains("bs=1M count=64 status=none"));
        assert!(s.contains("of=/dev/null bs=1M count=256 iflag=direct"));
    }
}
