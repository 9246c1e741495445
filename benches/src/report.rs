//! Medians and spreads of repeated samples, and the Markdown report.

use std::fmt::Write;

use crate::matrix::Point;
use crate::systems::{Medium, Sample, System};

/// All samples of one point on one system.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The image's medium.
    pub medium: Medium,
    /// The workload.
    pub point: Point,
    /// The system.
    pub system: System,
    /// One per repeat.
    pub samples: Vec<Sample>,
}

/// Median of `xs` (mean of the middle two for an even count); `None` if empty.
pub fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Spread of `xs` around its median: (max - min) / median, as a fraction.
pub fn spread(xs: &[f64]) -> Option<f64> {
    let m = median(xs)?;
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (m > 0.0).then(|| (hi - lo) / m)
}

impl Entry {
    /// Median of one measure over the repeats.
    pub fn median_of(&self, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        median(&self.samples.iter().filter_map(f).collect::<Vec<_>>())
    }

    /// Median IOPS.
    pub fn iops(&self) -> Option<f64> {
        self.median_of(|s| Some(s.iops))
    }

    /// IOPS spread (fraction).
    pub fn iops_spread(&self) -> Option<f64> {
        spread(&self.samples.iter().map(|s| s.iops).collect::<Vec<_>>())
    }
}

/// Finds the entry of (medium, point, system).
pub fn find<'a>(
    entries: &'a [Entry],
    medium: Medium,
    point: &Point,
    system: System,
) -> Option<&'a Entry> {
    entries
        .iter()
        .find(|e| e.medium == medium && e.point == *point && e.system == system)
}

fn iops_cell(e: Option<&Entry>) -> String {
    match e.and_then(|e| e.iops().map(|m| (m, e.iops_spread().unwrap_or(0.0)))) {
        Some((m, s)) => format!("{:.1}k ±{:.0}%", m / 1000.0, s * 50.0),
        None => "—".to_owned(),
    }
}

fn ratio(a: Option<&Entry>, b: Option<&Entry>) -> String {
    match (a.and_then(Entry::iops), b.and_then(Entry::iops)) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "—".to_owned(),
    }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.prec$}"))
}

/// Header of the report: how it was measured.
#[derive(Debug, Clone)]
pub struct Context {
    /// Seconds per run.
    pub runtime_s: f64,
    /// Repeats per point and system.
    pub repeats: usize,
    /// Image size in bytes.
    pub image_bytes: u64,
    /// Free-form notes (machine, load).
    pub notes: Vec<String>,
}

/// The Markdown report: one table per medium.
pub fn markdown(entries: &[Entry], points: &[Point], media: &[Medium], ctx: &Context) -> String {
    let mut s = String::from("# pvio backend-blk vs qemu-storage-daemon vs raw io_uring\n\n");
    let _ = writeln!(
        s,
        "Each cell: median of {} runs of {:.1} s; ± is half the min–max spread, as % of the median. \
         Systems alternate within each repeat. Image: {} MiB. Latency: completion latency \
         (submit to used-ring entry for the vhost-user back-ends, fio's clat for raw), µs. CPU: \
         back-end process user+system time per I/O, µs (all its threads).\n",
        ctx.repeats,
        ctx.runtime_s,
        ctx.image_bytes >> 20
    );
    for n in &ctx.notes {
        let _ = writeln!(s, "- {n}");
    }
    for &medium in media {
        let _ = writeln!(s, "\n## {} image\n", medium.name());
        s.push_str("| workload | pvio IOPS | peer IOPS | raw io_uring IOPS | pvio/peer | pvio/raw | CPU µs/IO pvio | CPU µs/IO peer | p50/p99/p99.9 µs pvio | p50/p99/p99.9 µs peer | p50/p99 µs raw |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
        for p in points {
            let [pv, qs, raw] =
                [System::Pvio, System::Qsd, System::Raw].map(|sys| find(entries, medium, p, sys));
            if pv.is_none() && qs.is_none() && raw.is_none() {
                continue;
            }
            let cpu = |e: Option<&Entry>| opt(e.and_then(|e| e.median_of(|s| s.cpu_us_per_io)), 2);
            let lat = |e: Option<&Entry>, n: usize| {
                e.map_or_else(
                    || "—".to_owned(),
                    |e| {
                        let v = [
                            e.median_of(|s| Some(s.p50)),
                            e.median_of(|s| Some(s.p99)),
                            e.median_of(|s| Some(s.p999)),
                        ];
                        v[..n]
                            .iter()
                            .map(|x| opt(*x, 0))
                            .collect::<Vec<_>>()
                            .join("/")
                    },
                )
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.label(),
                iops_cell(pv),
                iops_cell(qs),
                iops_cell(raw),
                ratio(pv, qs),
                ratio(pv, raw),
                cpu(pv),
                cpu(qs),
                lat(pv, 3),
                lat(qs, 3),
                lat(raw, 2),
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(spread(&[90.0, 100.0, 110.0]), Some(0.2));
    }

    #[test]
    fn table_has_ratios() {
        let p = Point {
            rw: "randread",
            bs: 4096,
            iodepth: 32,
            queues: 1,
        };
        let mk = |system, iops| Entry {
            medium: Medium::Tmpfs,
            point: p,
            system,
            samples: vec![Sample {
                iops,
                cpu_us_per_io: Some(2.0),
                ..Sample::default()
            }],
        };
        let entries = [
            mk(System::Pvio, 130_000.0),
            mk(System::Qsd, 100_000.0),
            mk(System::Raw, 200_000.0),
        ];
        let ctx = Context {
            runtime_s: 1.0,
            repeats: 1,
            image_bytes: 1 << 20,
            notes: vec![],
        };
        let md = markdown(&entries, &[p], &[Medium::Tmpfs], &ctx);
        assert!(md.contains("| randread 4k qd32 q1 | 130.0k ±0% | 100.0k ±0% | 200.0k ±0% | 1.30 | 0.65 | 2.00 |"), "{md}");
    }
}
