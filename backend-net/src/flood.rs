//! Per-port limit on flooded frames (broadcast, multicast and unknown unicast), so one guest
//! cannot make the switch copy a storm into every other guest: a token bucket of `rate` frames
//! per second holding at most one second's worth, refilled from the caller's clock.

use std::sync::Mutex;
use std::time::Instant;

/// A token bucket of flooded frames.
#[derive(Debug)]
pub struct FloodLimit {
    /// Frames per second; 0: unlimited.
    rate: u32,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Frames that may flood now, at most `rate`.
    tokens: f64,
    last: Instant,
}

impl FloodLimit {
    /// A full bucket of `rate` frames per second (0: no limit), its clock starting at `start`.
    pub fn new(rate: u32, start: Instant) -> FloodLimit {
        FloodLimit {
            rate,
            state: Mutex::new(Bucket {
                tokens: f64::from(rate),
                last: start,
            }),
        }
    }

    /// Whether one more frame may flood at `now` (and takes its token if so).
    #[inline]
    pub fn take(&self, now: Instant) -> bool {
        self.rate == 0 || self.take_token(now)
    }

    /// [`FloodLimit::take`] from a limited bucket.
    fn take_token(&self, now: Instant) -> bool {
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.last = b.last.max(now);
        let rate = f64::from(self.rate);
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let start = Instant::now();
        let limit = FloodLimit::new(10, start);
        assert_eq!((0..20).filter(|_| limit.take(start)).count(), 10);
        let later = start + Duration::from_millis(500);
        assert_eq!((0..20).filter(|_| limit.take(later)).count(), 5);
        let much_later = start + Duration::from_secs(60);
        assert_eq!(
            (0..20).filter(|_| limit.take(much_later)).count(),
            10,
            "capped"
        );
    }

    #[test]
    fn zero_is_unlimited() {
        let start = Instant::now();
        let limit = FloodLimit::new(0, start);
        assert!((0..100_000).all(|_| limit.take(start)));
    }
}
