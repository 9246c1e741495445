//! `blk-compare`: backend-blk vs qemu-storage-daemon vs raw io_uring, one command; writes
//! `blk-report.md`, `blk-results.json` and SVG plots (see benches/README.md).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use pvio_benches::matrix;
use pvio_benches::runner::{self, Options};
use pvio_benches::systems::{Load, Medium, Programs};

/// Compare pvio's backend-blk with qemu-storage-daemon and raw io_uring (fio).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Seconds per run.
    #[arg(long, default_value_t = 3.0)]
    runtime: f64,
    /// Repeats per point and system (the report gives the median and spread).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Smoke mode: 4 KiB random read and write at QD 8, one queue, tmpfs only, one repeat,
    /// 64 MiB image (use with a short --runtime).
    #[arg(long)]
    quick: bool,
    /// Only the tmpfs image.
    #[arg(long)]
    tmpfs_only: bool,
    /// Only the points of issue 14's goals: 4 KiB random read and write at QD 1 and 32 on one
    /// queue and QD 32 on two.
    #[arg(long, conflicts_with = "quick")]
    goals: bool,
    /// An extra backend-blk argument, e.g. `--pvio-arg=--poll-us=50` (repeatable).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pvio_arg: Vec<String>,
    /// Load sources: pvio's generator, libblkio, or both (each its own table).
    #[arg(long, value_enum, default_value_t = Loads::Both)]
    load: Loads,
    /// Image size in MiB.
    #[arg(long, default_value_t = 1024)]
    image_mib: u64,
    /// Output folder (report, plots, results, on-disk image).
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Folder of the tmpfs image.
    #[arg(long, default_value = "/dev/shm")]
    tmpfs: PathBuf,
    /// Folder holding the frontend-guest and backend-blk binaries (default: this program's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// The `--load` choice.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Loads {
    /// pvio's load generator (raw: fio).
    Pvio,
    /// libblkio (raw: libblkio's io_uring driver).
    Libblkio,
    /// Both, one after the other per image.
    Both,
}

impl Loads {
    fn list(self) -> Vec<Load> {
        match self {
            Loads::Pvio => vec![Load::Pvio],
            Loads::Libblkio => vec![Load::Libblkio],
            Loads::Both => vec![Load::Pvio, Load::Libblkio],
        }
    }
}

fn main() {
    env_logger::init();
    let args = Args::parse();
    if let Err(e) = run(args) {
        let mut msg = format!("blk-compare: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        eprintln!("{msg}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> pvio_benches::Result<()> {
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(PathBuf::from))
            .unwrap_or_default(),
    };
    let quick = args.quick;
    let opts = Options {
        runtime: Duration::from_secs_f64(args.runtime.max(0.1)),
        repeats: if quick { 1 } else { args.repeats.max(1) },
        points: if quick {
            matrix::quick()
        } else if args.goals {
            matrix::goals()
        } else {
            matrix::full()
        },
        loads: args.load.list(),
        media: if quick || args.tmpfs_only {
            vec![Medium::Tmpfs]
        } else {
            vec![Medium::Tmpfs, Medium::Disk]
        },
        image_bytes: if quick {
            64 << 20
        } else {
            args.image_mib.max(16) << 20
        },
        out_dir: args.out,
        tmpfs_dir: args.tmpfs,
        programs: Programs {
            pvio_args: args.pvio_arg.clone(),
            ..Programs::find(&bin_dir)?
        },
        notes: machine_notes(&args.pvio_arg),
    };
    let md = runner::run(&opts)?;
    println!("{md}");
    eprintln!("wrote {}", opts.out_dir.join("blk-report.md").display());
    Ok(())
}

fn machine_notes(pvio_args: &[String]) -> Vec<String> {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let args = if pvio_args.is_empty() {
        "defaults".to_owned()
    } else {
        pvio_args.join(" ")
    };
    vec![format!(
        "Machine: {cpus} CPUs, kernel {}, load average at start {}; backend-blk options: {args}",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )]
}
