//! The `frontend-guest bench blk` command: arguments (fio's names and units) and output (a
//! human summary, or one JSON object with `--json`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use super::{Report, RwMode, Workload};

/// `frontend-guest`: the mock vhost-user front-end's tools.
#[derive(Debug, Parser)]
#[command(name = "frontend-guest", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load generators.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// Load generators by device type.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Drive a vhost-user-blk back-end directly (no VM): fio for vhost-user-blk.
    Blk(BlkArgs),
}

/// Arguments of `bench blk`.
#[derive(Debug, Args)]
pub struct BlkArgs {
    /// The back-end's vhost-user socket.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Workload: randread, randwrite, read, write or randrw (50 % reads).
    #[arg(long, default_value = "randread")]
    pub rw: RwMode,
    /// Bytes per request, e.g. 4k, 128k, 1m (a multiple of 512).
    #[arg(long, default_value = "4k", value_parser = parse_bs)]
    pub bs: u32,
    /// Requests in flight per queue.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub iodepth: u16,
    /// Queues, each driven by its own thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub queues: u16,
    /// How long to measure, e.g. 10s, 500ms (a bare number is seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub runtime: Duration,
    /// Bytes of the device to use from offset 0, e.g. 1g (default: all of it).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Check every read of a block written in this run against what was written.
    #[arg(long)]
    pub verify: bool,
    /// The back-end's process id for its CPU time (default: the socket peer, SO_PEERCRED).
    #[arg(long, value_name = "PID")]
    pub backend_pid: Option<i32>,
    /// Largest data segment per descriptor, e.g. 4k for page-sized segments.
    #[arg(long, default_value = "1m", value_parser = parse_bs)]
    pub segment: u32,
    /// Use direct descriptor chains instead of indirect ones.
    #[arg(long)]
    pub no_indirect: bool,
    /// Virtqueue size (a power of two up to 1024).
    #[arg(long, default_value_t = 256, value_parser = parse_queue_size)]
    pub queue_size: u16,
    /// Seed of the I/O pattern.
    #[arg(long, default_value_t = 0x7076_696f)]
    pub seed: u64,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub no_progress: bool,
}

impl BlkArgs {
    /// The workload these arguments describe.
    pub fn workload(&self) -> Workload {
        Workload {
            rw: self.rw,
            bs: self.bs,
            iodepth: self.iodepth,
            queues: self.queues,
            runtime: self.runtime,
            size: self.size.unwrap_or(0),
            verify: self.verify,
            segment_bytes: self.segment,
            indirect: !self.no_indirect,
            queue_size: self.queue_size,
            seed: self.seed,
            progress: !self.no_progress,
            ..Workload::default()
        }
    }
}

/// Parses a byte count with an optional binary suffix: `4096`, `4k`, `128K`, `1m`, `2g`.
///
/// # Errors
/// A message naming the bad value.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                _ => return Err(format!("bad size {s:?}: use a number with k, m, g or t")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("bad size {s:?}: use a number with k, m, g or t"))
}

fn parse_bs(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    u32::try_from(n)
        .ok()
        .filter(|&n| n > 0 && n % 512 == 0 && n <= 64 << 20)
        .ok_or_else(|| format!("bad block size {s:?}: a multiple of 512 bytes up to 64m"))
}

fn parse_queue_size(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|n| n.is_power_of_two() && *n <= 1024)
        .ok_or_else(|| format!("bad queue size {s:?}: a power of two up to 1024"))
}

/// Parses a duration: `10s`, `500ms`, `2m`, or a bare number of seconds (`1.5`).
///
/// # Errors
/// A message naming the bad value.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let scale = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        _ => return Err(format!("bad duration {s:?}: use e.g. 10s, 500ms, 2m")),
    };
    num.parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .map(|n| Duration::from_secs_f64(n * scale))
        .ok_or_else(|| format!("bad duration {s:?}: use e.g. 10s, 500ms, 2m"))
}

/// The report as one JSON object (field names are what the benches runner reads).
pub fn to_json(r: &Report) -> serde_json::Value {
    let w = &r.workload;
    serde_json::json!({
        "rw": w.rw.name(),
        "bs": w.bs,
        "iodepth": w.iodepth,
        "queues": w.queues,
        "size": w.size,
        "verify": w.verify,
        "seconds": r.seconds,
        "ios": r.ios,
        "iops": r.iops,
        "mib_s": r.mib_s,
        "lat_us": {
            "min": r.latency.min,
            "mean": r.latency.mean,
            "p50": r.latency.p50,
            "p99": r.latency.p99,
            "p99_9": r.latency.p999,
            "max": r.latency.max,
        },
        "verified_reads": r.verified_reads,
        "backend_pid": r.backend_pid,
        "backend_cpu_us_per_io": r.backend_cpu_us_per_io,
        "frontend_cpu_us_per_io": r.frontend_cpu_us_per_io,
    })
}

/// The report as a few human-readable lines.
pub fn to_text(r: &Report) -> String {
    let w = &r.workload;
    let l = &r.latency;
    let cpu = r.backend_cpu_us_per_io.map_or_else(
        || "unknown".to_owned(),
        |c| format!("{c:.2} us/IO (pid {})", r.backend_pid.unwrap_or(0)),
    );
    let mut s = format!(
        "{} bs={} iodepth={} queues={}: {:.0} IOPS, {:.1} MiB/s, {} I/Os in {:.2} s\n\
         lat (us): min {:.1} mean {:.1} p50 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}\n\
         cpu: back-end {cpu}, front-end {:.2} us/IO\n",
        w.rw,
        w.bs,
        w.iodepth,
        w.queues,
        r.iops,
        r.mib_s,
        r.ios,
        r.seconds,
        l.min,
        l.mean,
        l.p50,
        l.p99,
        l.p999,
        l.max,
        r.frontend_cpu_us_per_io
    );
    if w.verify {
        s.push_str(&format!(
            "verify: {} reads checked, all matched\n",
            r.verified_reads
        ));
    }
    s
}

/// Runs the parsed command line; returns the process exit code.
pub fn main_with(cli: Cli) -> i32 {
    let Command::Bench(BenchCommand::Blk(args)) = cli.command;
    match super::run(&args.socket, &args.workload(), args.backend_pid) {
        Ok(report) if args.json => {
            println!("{}", to_json(&report));
            0
        }
        Ok(report) => {
            print!("{}", to_text(&report));
            0
        }
        Err(e) => {
            let mut msg = format!("frontend-guest bench blk: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("{msg}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("128K"), Ok(128 << 10));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("4x").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_bs("1000").is_err());
        assert!(parse_bs("0").is_err());
        assert_eq!(parse_bs("1m"), Ok(1 << 20));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3h").is_err());
    }

    fn parse_blk(extra: &[&str]) -> Result<BlkArgs, clap::Error> {
        let base = ["frontend-guest", "bench", "blk", "--socket", "/s"];
        let cli = Cli::try_parse_from(base.iter().chain(extra))?;
        let Command::Bench(BenchCommand::Blk(args)) = cli.command;
        Ok(args)
    }

    #[test]
    fn command_line_parses_to_a_workload() {
        let args = parse_blk(&[
            "--rw",
            "randwrite",
            "--bs",
            "128k",
            "--iodepth",
            "8",
            "--queues",
            "2",
            "--runtime",
            "3s",
            "--verify",
        ])
        .unwrap();
        let w = args.workload();
        assert_eq!(
            (w.rw, w.bs, w.iodepth, w.queues),
            (RwMode::RandWrite, 128 << 10, 8, 2)
        );
        assert_eq!(w.runtime, Duration::from_secs(3));
        assert!(w.verify && w.indirect);
        assert!(parse_blk(&["--rw", "x"]).is_err());
        assert!(parse_blk(&["--iodepth", "0"]).is_err());
        assert!(parse_blk(&["--queue-size", "100"]).is_err());
    }
}
