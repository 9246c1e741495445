//! `blkio-load`: libblkio as a load generator (see [`pvio_benches::libblkio`]); prints the same
//! JSON object as `frontend-guest bench blk --json`.

use clap::Parser;
use frontend_guest::bench::cli::{parse_duration, parse_size, to_json};
use frontend_guest::bench::{RwMode, Workload};
use pvio_benches::libblkio::{run, Target};

/// Drive a vhost-user-blk back-end (or, with --file, the image itself through libblkio's
/// io_uring driver) with libblkio.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The back-end's vhost-user socket.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    socket: Option<String>,
    /// The image file, through libblkio's io_uring driver (the raw ceiling).
    #[arg(long, value_name = "PATH")]
    file: Option<String>,
    /// With --file: open it with O_DIRECT.
    #[arg(long, requires = "file")]
    direct: bool,
    /// randread, randwrite, read, write or randrw.
    #[arg(long, default_value = "randread")]
    rw: RwMode,
    /// Bytes per request, e.g. 4k.
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    bs: u64,
    /// Requests in flight per queue.
    #[arg(long, default_value_t = 32)]
    iodepth: u16,
    /// Queues, one thread each.
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// How long to measure, e.g. 3s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    runtime: std::time::Duration,
    /// Bytes of the device to use from offset 0 (default: all of it).
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// The back-end's process id, for its CPU time per I/O.
    #[arg(long, value_name = "PID")]
    backend_pid: Option<i32>,
}

fn main() {
    env_logger::init();
    let args = Args::parse();
    let target = match (args.socket, args.file) {
        (Some(socket), _) => Target::VhostUser(socket),
        (None, Some(path)) => Target::File {
            path,
            direct: args.direct,
        },
        (None, None) => unreachable!("clap requires --socket or --file"),
    };
    let Ok(bs) = u32::try_from(args.bs) else {
        eprintln!("blkio-load: --bs {} is too large", args.bs);
        std::process::exit(2);
    };
    let w = Workload {
        rw: args.rw,
        bs,
        iodepth: args.iodepth,
        queues: args.queues,
        runtime: args.runtime,
        size: args.size.unwrap_or(0),
        ..Workload::default()
    };
    match run(&target, &w, args.backend_pid) {
        Ok(report) => println!("{}", to_json(&report)),
        Err(e) => {
            eprintln!("blkio-load: {e}");
            std::process::exit(1);
        }
    }
}
