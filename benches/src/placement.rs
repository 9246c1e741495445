//! Where the host put this machine's CPUs while a benchmark ran: the round-trip time of one
//! cache line between two CPUs, sampled during the run.
//!
//! On a virtual machine the host may move the virtual CPUs between physical cores; two
//! virtual CPUs on cores that share a cache pass a cache line back and forth several times
//! faster than two on cores that do not (measured on the 2-CPU development VM, a Firecracker
//! guest: about 50 ns against about 430 ns, changing every few seconds, also in the middle of
//! a run). A benchmark whose load and back-end run on different CPUs moves every ring index
//! and frame through that path, so its rates follow the placement. [`Watch`] samples the
//! round trip a few times a second while the benchmark runs, so each figure can be told apart
//! by the placement it was taken under.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Runs the calling thread on `cpu` only.
///
/// # Errors
/// `cpu` is out of range or the affinity cannot be set.
pub fn pin_thread(cpu: usize) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

/// Time between samples.
const PERIOD: Duration = Duration::from_millis(250);

/// Longest either side waits for the other at a sample (a woken thread may wait for the busy
/// thread on its CPU to finish its time slice).
const MEET: Duration = Duration::from_millis(5);

/// Round trips per sample.
const TRIPS: u32 = 100;

/// A value on a cache line of its own (so the sample's state does not share the ball's line).
#[repr(align(64))]
#[derive(Default)]
struct Line(AtomicU64);

/// What both sides of the watch share. `state` is `4k + READY` once the echo side is there
/// for sample `k`, `4k + RUNNING` while the timing side bounces the ball, `4k + OVER` after.
#[derive(Default)]
struct Shared {
    ball: Line,
    state: Line,
    stop: AtomicBool,
}

const READY: u64 = 1;
const RUNNING: u64 = 2;
const OVER: u64 = 3;

/// Samples the cache line round trip between two CPUs while other work runs on them, every
/// 250 ms: both sides wake at the same moment, meet (within 5 ms) and bounce a counter 100
/// times. Costs each CPU about 0.1 % of its time (more when the other side comes late).
pub struct Watch {
    shared: Arc<Shared>,
    timing: JoinHandle<nix::Result<Vec<f64>>>,
    echo: JoinHandle<nix::Result<()>>,
}

impl Watch {
    /// Starts sampling between CPU `a` (the timing side) and CPU `b` (the echo side).
    pub fn start(a: usize, b: usize) -> Watch {
        let shared = Arc::new(Shared::default());
        let start = Instant::now();
        let s = shared.clone();
        let timing = std::thread::spawn(move || {
            pin_thread(a)?;
            Ok(samples(start, &s, time_one).into_iter().flatten().collect())
        });
        let s = shared.clone();
        let echo = std::thread::spawn(move || {
            pin_thread(b)?;
            samples(start, &s, echo_one);
            Ok(())
        });
        Watch {
            shared,
            timing,
            echo,
        }
    }

    /// Stops sampling; the median round trip in ns, `None` when no sample met.
    ///
    /// # Errors
    /// A side could not be pinned to its CPU.
    pub fn stop(self) -> nix::Result<Option<f64>> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let echoed = self.echo.join().unwrap_or(Err(nix::Error::EINVAL));
        let mut ns = self.timing.join().unwrap_or(Err(nix::Error::EINVAL))?;
        echoed?;
        ns.sort_by(f64::total_cmp);
        Ok(ns.get(ns.len() / 2).copied())
    }
}

/// Runs `one` for sample 1, 2, ... at `start + k * PERIOD` until stopped.
fn samples<T>(start: Instant, s: &Shared, one: fn(&Shared, u64) -> T) -> Vec<T> {
    let mut out = Vec::new();
    for k in 1.. {
        let at = start + PERIOD * k;
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        if s.stop.load(Ordering::Relaxed) {
            break;
        }
        out.push(one(s, u64::from(k)));
    }
    out
}

/// The timing side of sample `k`: claims the sample if the echo side is there within
/// [`MEET`], then times [`TRIPS`] round trips; ns per round trip.
fn time_one(s: &Shared, k: u64) -> Option<f64> {
    let came = Instant::now();
    while s
        .state
        .0
        .compare_exchange(
            4 * k + READY,
            4 * k + RUNNING,
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_err()
    {
        if came.elapsed() > MEET {
            return None;
        }
        std::hint::spin_loop();
    }
    let ball = &s.ball.0;
    let t = Instant::now();
    for _ in 0..TRIPS {
        let odd = ball.fetch_add(1, Ordering::AcqRel) + 1;
        while ball.load(Ordering::Acquire) == odd {
            std::hint::spin_loop();
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / f64::from(TRIPS);
    s.state.0.store(4 * k + OVER, Ordering::Release);
    Some(ns)
}

/// The echo side of sample `k`: makes the ball even whenever it is odd until the timing side
/// is done, or leaves if it did not come within [`MEET`].
fn echo_one(s: &Shared, k: u64) {
    let came = Instant::now();
    s.state.0.store(4 * k + READY, Ordering::Release);
    let ball = &s.ball.0;
    loop {
        let v = ball.load(Ordering::Acquire);
        if v % 2 == 1 {
            ball.store(v + 1, Ordering::Release);
        }
        match s.state.0.load(Ordering::Acquire) {
            st if st == 4 * k + OVER => return,
            st if st == 4 * k + READY && came.elapsed() > MEET => {
                let gone = 4 * k + OVER;
                let left =
                    s.state
                        .0
                        .compare_exchange(st, gone, Ordering::AcqRel, Ordering::Relaxed);
                if left.is_ok() {
                    return;
                }
            }
            _ => std::hint::spin_loop(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_round_trips_and_reports_bad_cpus() {
        if std::thread::available_parallelism().map_or(1, usize::from) >= 2 {
            let w = Watch::start(0, 1);
            std::thread::sleep(PERIOD * 3);
            let ns = w.stop().unwrap().expect("the idle CPUs met");
            assert!(ns > 1.0 && ns < 1e6, "{ns} ns");
        }
        let bad = nix::sched::CpuSet::count();
        assert!(Watch::start(0, bad).stop().is_err());
        assert!(Watch::start(bad, 0).stop().is_err());
    }
}
