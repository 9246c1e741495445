//! A process's open file descriptors and threads, from `/proc/PID/fd` and `/proc/PID/task`,
//! for tests that check a long-lived daemon keeps none it should have released.

use std::time::{Duration, Instant};

/// (open descriptors, threads) of process `pid`; (0, 0) once it is gone.
pub fn fds_and_threads(pid: u32) -> (usize, usize) {
    let count = |what: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{what}"))
            .map(Iterator::count)
            .unwrap_or(0)
    };
    (count("fd"), count("task"))
}

/// Waits up to `timeout` until the counts of `pid` equal `want`; returns the last counts seen.
pub fn settle_at(pid: u32, want: (usize, usize), timeout: Duration) -> (usize, usize) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = fds_and_threads(pid);
        if now == want || Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
