//! A log-linear latency histogram: exact below 128 ns, then 128 buckets per power of two, so
//! every recorded value is known to within 1/128 (0.8 %) of itself. Fixed memory (about 60 KB),
//! no allocation per record; histograms of several queues merge by adding counts.

/// Sub-buckets per power of two (and the exact range at the bottom).
const SUB: u64 = 128;
const SUB_BITS: u32 = 7;
/// Buckets covering every u64 value.
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// Latency histogram of values in nanoseconds.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let mag = 63 - v.leading_zeros();
    let shift = mag - SUB_BITS;
    ((u64::from(shift) + 1) * SUB + (v >> shift) - SUB) as usize
}

/// Highest value that falls into bucket `i`.
fn bucket_high(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let low = (SUB + i % SUB) << shift;
    low + ((1u64 << shift) - 1)
}

impl Histogram {
    /// Records one value (nanoseconds).
    pub fn record(&mut self, ns: u64) {
        self.counts[index(ns)] += 1;
        self.total += 1;
        self.sum += u128::from(ns);
        self.min = self.min.min(ns);
        self.max = self.max.max(ns);
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Smallest value recorded (0 if none).
    pub fn min(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            self.min
        }
    }

    /// Largest value recorded.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean of the recorded values (0 if none).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value below or at which `pct` percent (0..=100) of the recorded values lie: the
    /// upper edge of the bucket holding that rank, capped at the maximum (0 if empty).
    pub fn percentile(&self, pct: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((pct / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_high(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_monotonic() {
        let mut last = 0;
        for v in (0..100_000u64).chain([1 << 40, u64::MAX - 1, u64::MAX]) {
            let i = index(v);
            assert!(i >= last, "index goes back at {v}");
            assert!(bucket_high(i) >= v, "bucket of {v} ends below it");
            assert!(i < BUCKETS);
            last = i;
        }
        for i in 1..BUCKETS {
            assert_eq!(
                index(bucket_high(i - 1) + 1),
                i,
                "gap after bucket {}",
                i - 1
            );
        }
    }

    #[test]
    fn relative_error_is_below_one_percent() {
        for v in [1u64, 127, 128, 129, 1000, 12_345, 987_654_321, 1 << 50] {
            let hi = bucket_high(index(v));
            assert!((hi - v) as f64 <= v as f64 / 128.0, "{v} -> {hi}");
        }
    }

    #[test]
    fn percentiles_of_a_uniform_range() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let within = |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 / 100.0;
        assert!(
            within(h.percentile(50.0), 5_000_000),
            "{}",
            h.percentile(50.0)
        );
        assert!(within(h.percentile(99.0), 9_900_000));
        assert!(within(h.percentile(99.9), 9_990_000));
        assert_eq!(h.percentile(100.0), 10_000_000);
        assert_eq!(h.min(), 1000);
        assert_eq!(h.count(), 10_000);
        assert!((h.mean() - 5_000_500.0).abs() < 1.0);
    }

    #[test]
    fn tail_percentile_sees_outliers() {
        let mut h = Histogram::default();
        for _ in 0..998 {
            h.record(10_000);
        }
        h.record(5_000_000);
        h.record(5_000_000);
        assert!(h.percentile(99.0) < 10_100);
        assert!(h.percentile(99.9) >= 5_000_000);
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(100);
        b.record(300);
        b.record(200);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.min(), 100);
        assert_eq!(a.max(), 300);
        assert_eq!(a.percentile(50.0), 200);
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let h = Histogram::default();
        assert_eq!(h.percentile(99.0), 0);
        assert_eq!(h.min(), 0);
        assert_eq!(h.mean(), 0.0);
    }
}
