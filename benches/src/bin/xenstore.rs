//! xenstore-lite benchmark: read, write, directory and transaction-commit operations per
//! second with 1 and 16 clients, and watch-event latency, in memory and with a data
//! directory (`--sync batch` and `--sync always`). Prints the figures; no pass or fail.
//!
//! Every client is a blocking [`xenstore_lite::Client`] on its own thread, one request in
//! flight at a time, against an in-process daemon thread on a unix socket.
//!
//! `cargo run --release -p pvio-benches --bin xenstore -- [--seconds S] [--data-dir DIR]`

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use xenstore_lite::server::ServerConfig;
use xenstore_lite::{Client, Server, SyncMode, XsOps};

/// Benchmark options.
#[derive(Debug, Parser)]
#[command(about = "xenstore-lite operations per second and watch latency")]
struct Args {
    /// Seconds per measured point.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Parent of the data directories (default: the system temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Watch events to time per store.
    #[arg(long, default_value_t = 2000)]
    watch_samples: usize,
}

/// A store configuration under test.
#[derive(Clone, Copy)]
struct Mode {
    name: &'static str,
    sync: Option<SyncMode>,
}

const MODES: [Mode; 3] = [
    Mode {
        name: "in memory",
        sync: None,
    },
    Mode {
        name: "--data-dir, --sync batch",
        sync: Some(SyncMode::Batch),
    },
    Mode {
        name: "--data-dir, --sync always",
        sync: Some(SyncMode::Always),
    },
];

#[derive(Clone, Copy, Debug)]
enum Op {
    Read,
    Write,
    Directory,
    Commit,
}

const OPS: [Op; 4] = [Op::Read, Op::Write, Op::Directory, Op::Commit];

/// A daemon on its own thread, stopped on drop.
struct Daemon {
    socket: PathBuf,
    stop: xenstore_lite::server::StopHandle,
    thread: Option<thread::JoinHandle<()>>,
    dir: PathBuf,
}

impl Daemon {
    fn start(mode: Mode, parent: &std::path::Path) -> Daemon {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::SeqCst);
        let dir = parent.join(format!("xs-bench-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create bench dir");
        let socket = dir.join("xs.sock");
        let mut cfg = ServerConfig::new(&socket);
        if let Some(sync) = mode.sync {
            cfg.data_dir = Some(dir.join("data"));
            cfg.sync = sync;
        }
        let mut server = Server::bind(&cfg).expect("bind daemon");
        let stop = server.stop_handle();
        let thread = thread::spawn(move || server.run().expect("daemon run"));
        Daemon {
            socket,
            stop,
            thread: Some(thread),
            dir,
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup(d: &Daemon, clients: usize) {
    let mut c = d.client();
    c.transaction(|tx| {
        for i in 0..100 {
            tx.write(&format!("/bench/r/{i}"), b"some value of a plausible size")?;
        }
        for i in 0..50 {
            tx.write(&format!("/bench/dir/child-{i}"), b"")?;
        }
        for k in 0..clients {
            tx.write(&format!("/bench/t/{k}"), b"0")?;
        }
        Ok(())
    })
    .expect("setup");
}

fn one_op(c: &mut Client, op: Op, k: usize, n: usize) {
    let r = match op {
        Op::Read => c.read(&format!("/bench/r/{}", n % 100)).map(drop),
        Op::Write => c
            .write(&format!("/bench/w/{k}/{}", n % 100), b"value")
            .map(drop),
        Op::Directory => c.directory("/bench/dir").map(drop),
        Op::Commit => c
            .transaction(|tx| {
                let key = format!("/bench/t/{k}");
                let v: u64 = tx.read_string(&key)?.parse().unwrap_or(0);
                tx.write(&key, (v + 1).to_string().as_bytes())
            })
            .map(drop),
    };
    r.expect("benchmark operation");
}

/// Operations per second of `clients` threads doing `op` for `seconds`.
fn throughput(d: &Daemon, op: Op, clients: usize, seconds: f64) -> f64 {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..clients)
        .map(|k| {
            let mut c = d.client();
            let (barrier, stop) = (barrier.clone(), stop.clone());
            thread::spawn(move || {
                barrier.wait();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    one_op(&mut c, op, k, n);
                    n += 1;
                }
                n
            })
        })
        .collect();
    barrier.wait();
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let total: usize = handles.into_iter().map(|h| h.join().expect("client")).sum();
    total as f64 / t0.elapsed().as_secs_f64()
}

/// Microseconds from a write's send to its watch event's arrival at another client:
/// (median, 99th percentile, mean).
fn watch_latency(d: &Daemon, samples: usize) -> (f64, f64, f64) {
    let mut watcher = d.client();
    watcher.watch("/bench/watch", "lat").expect("watch");
    watcher.next_event().expect("initial event");
    let (tx, rx) = mpsc::channel::<Instant>();
    let t = thread::spawn(move || {
        for _ in 0..samples {
            watcher.next_event().expect("event");
            tx.send(Instant::now()).expect("send");
        }
    });
    let mut writer = d.client();
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let sent = Instant::now();
        writer
            .write("/bench/watch/k", i.to_string().as_bytes())
            .expect("write");
        let got = rx.recv().expect("event time");
        lat.push(got.duration_since(sent).as_secs_f64() * 1e6);
    }
    t.join().expect("watcher");
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    (
        pct(0.5),
        pct(0.99),
        lat.iter().sum::<f64>() / lat.len() as f64,
    )
}

fn main() {
    let args = Args::parse();
    let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    println!(
        "xenstore-lite benchmark: {} s per point, data directories under {}, {} CPUs",
        args.seconds,
        parent.display(),
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| store | clients | read op/s | write op/s | directory op/s | tx commit op/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut latencies = Vec::new();
    for mode in MODES {
        for clients in [1, 16] {
            let d = Daemon::start(mode, &parent);
            setup(&d, clients);
            let figures: Vec<String> = OPS
                .iter()
                .map(|op| format!("{:.0}", throughput(&d, *op, clients, args.seconds)))
                .collect();
            println!("| {} | {clients} | {} |", mode.name, figures.join(" | "));
        }
        let d = Daemon::start(mode, &parent);
        latencies.push((mode.name, watch_latency(&d, args.watch_samples)));
    }
    println!();
    println!("| store | watch latency p50 (us) | p99 (us) | mean (us) |");
    println!("|---|---:|---:|---:|");
    for (name, (p50, p99, mean)) in latencies {
        println!("| {name} | {p50:.1} | {p99:.1} | {mean:.1} |");
    }
}
