//! Medians and spreads of repeated samples, and the Markdown report.

use std::fmt::Write;

use crate::matrix::Point;
use crate::systems::{Load, Medium, Sample, System};

/// All samples of one point on one system.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The image's medium.
    pub medium: Medium,
    /// The load source.
    pub load: Load,
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

/// Finds the entry of (medium, load, point, system).
pub fn find<'a>(
    entries: &'a [Entry],
    medium: Medium,
    load: Load,
    point: &Point,
    system: System,
) -> Option<&'a Entry> {
    entries
        .iter()
        .find(|e| e.medium == medium && e.load == load && e.point == *point && e.system == system)
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

/// The Markdown report: the goals of issue 14 as measured, then one table per medium and load
/// source.
pub fn markdown(
    entries: &[Entry],
    points: &[Point],
    media: &[Medium],
    loads: &[Load],
    ctx: &Context,
) -> String {
    let mut s = String::from("# pvio backend-blk vs qemu-storage-daemon vs raw io_uring\n\n");
    let _ = writeln!(
        s,
        "Each cell: median of {} runs of {:.1} s; ± is half the min–max spread, as % of the median. \
         Systems alternate within each repeat. Image: {} MiB. Latency: completion latency \
         (submit to used-ring entry for the vhost-user back-ends, fio's clat or libblkio's \
         completion for raw), µs. CPU: back-end process user+system time per I/O, µs (all its \
         threads). Load: the 1-minute load average at the end of each run (min–max).\n",
        ctx.repeats,
        ctx.runtime_s,
        ctx.image_bytes >> 20
    );
    for n in &ctx.notes {
        let _ = writeln!(s, "- {n}");
    }
    s.push_str(&goals(entries, media, loads));
    for &medium in media {
        for &load in loads {
            table(&mut s, entries, points, medium, load);
        }
    }
    s
}

/// One table: every point of `medium` driven by `load`.
fn table(s: &mut String, entries: &[Entry], points: &[Point], medium: Medium, load: Load) {
    let mine: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.medium == medium && e.load == load)
        .collect();
    if mine.is_empty() {
        return;
    }
    let loads = mine.iter().flat_map(|e| e.samples.iter().map(|s| s.load1));
    let (lo, hi) = loads.fold((f64::INFINITY, 0.0f64), |(lo, hi), l| {
        (lo.min(l), hi.max(l))
    });
    let _ = writeln!(
        s,
        "\n## {} image, {} (load {lo:.1}–{hi:.1})\n",
        medium.name(),
        load.name()
    );
    s.push_str("| workload | pvio IOPS | peer IOPS | raw io_uring IOPS | pvio/peer | pvio/raw | CPU µs/IO pvio | CPU µs/IO peer | mean µs pvio/peer/raw | p50/p99/p99.9 µs pvio | p50/p99/p99.9 µs peer | p50/p99 µs raw |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    {
        for p in points {
            let [pv, qs, raw] = [System::Pvio, System::Qsd, System::Raw]
                .map(|sys| find(entries, medium, load, p, sys));
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
            let means = [pv, qs, raw]
                .map(|e| opt(e.and_then(|e| e.median_of(|s| Some(s.mean))), 1))
                .join("/");
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.label(),
                iops_cell(pv),
                iops_cell(qs),
                iops_cell(raw),
                ratio(pv, qs),
                ratio(pv, raw),
                cpu(pv),
                cpu(qs),
                means,
                lat(pv, 3),
                lat(qs, 3),
                lat(raw, 2),
            );
        }
    }
}

/// 4 KiB random `rw` at depth `iodepth` on `queues` queues.
fn point(rw: &'static str, iodepth: u16, queues: u16) -> Point {
    Point {
        rw,
        bs: 4096,
        iodepth,
        queues,
    }
}

/// The goals of issue 14, each as measured per medium and load source where its points ran.
fn goals(entries: &[Entry], media: &[Medium], loads: &[Load]) -> String {
    let mut s = String::from(
        "\n## Goals (issue 14)\n\n| goal | medium, load | measured | met |\n|---|---|---|---|\n",
    );
    let mut row = |goal: &str, medium: Medium, load: Load, measured: String, met: bool| {
        let _ = writeln!(
            s,
            "| {goal} | {}, {} | {measured} | {} |",
            medium.name(),
            load.tag(),
            if met { "yes" } else { "no" }
        );
    };
    let iops = |m, l, p: &Point, sys| find(entries, m, l, p, sys).and_then(Entry::iops);
    let mean = |m, l, p: &Point, sys| {
        find(entries, m, l, p, sys).and_then(|e| e.median_of(|s| Some(s.mean)))
    };
    for &m in media {
        for &l in loads {
            for rw in ["randread", "randwrite"] {
                let p = point(rw, 32, 1);
                let pv = iops(m, l, &p, System::Pvio);
                if m == Medium::Tmpfs {
                    if let (Some(pv), Some(raw)) = (pv, iops(m, l, &p, System::Raw)) {
                        let r = pv / raw;
                        row(
                            &format!("{rw} QD32 1q ≥ 0.75× raw"),
                            m,
                            l,
                            format!("{r:.2}×"),
                            r >= 0.75,
                        );
                    }
                    if let (Some(pv), Some(qs)) = (pv, iops(m, l, &p, System::Qsd)) {
                        let r = pv / qs;
                        row(
                            &format!("{rw} QD32 1q ≥ 1.6× peer"),
                            m,
                            l,
                            format!("{r:.2}×"),
                            r >= 1.6,
                        );
                    }
                } else if let (Some(pv), Some(raw)) = (pv, iops(m, l, &p, System::Raw)) {
                    let r = pv / raw;
                    row(
                        &format!("O_DIRECT {rw} QD32 1q ≥ 0.95× raw"),
                        m,
                        l,
                        format!("{r:.2}×"),
                        r >= 0.95,
                    );
                }
                let two = point(rw, 32, 2);
                if let (Some(one), Some(two)) = (pv, iops(m, l, &two, System::Pvio)) {
                    let r = two / one;
                    row(
                        &format!("{rw} QD32: 2 queues ≥ 1.6× 1 queue"),
                        m,
                        l,
                        format!("{r:.2}×"),
                        r >= 1.6,
                    );
                }
                let p1 = point(rw, 1, 1);
                let [pv, qs, raw] =
                    [System::Pvio, System::Qsd, System::Raw].map(|sys| mean(m, l, &p1, sys));
                if let (Some(pv), Some(qs)) = (pv, qs) {
                    let r = pv / qs;
                    row(
                        &format!("{rw} QD1 mean latency ≤ 0.8× peer"),
                        m,
                        l,
                        format!("{pv:.1} vs {qs:.1} µs ({r:.2}×)"),
                        r <= 0.8,
                    );
                }
                if let (Some(pv), Some(raw)) = (pv, raw) {
                    row(
                        &format!("{rw} QD1 mean latency ≤ raw + 15 µs"),
                        m,
                        l,
                        format!("{pv:.1} vs {raw:.1} µs"),
                        pv <= raw + 15.0,
                    );
                }
            }
            let cpu = |e: &Entry| e.median_of(|s| s.cpu_us_per_io);
            let pairs: Vec<(f64, f64)> = entries
                .iter()
                .filter(|e| e.medium == m && e.load == l && e.system == System::Pvio)
                .filter_map(|e| {
                    let peer = find(entries, m, l, &e.point, System::Qsd)?;
                    Some((cpu(e)?, cpu(peer)?))
                })
                .collect();
            if !pairs.is_empty() {
                let lower = pairs.iter().filter(|(a, b)| a < b).count();
                row(
                    "CPU µs/IO lower than the peer's",
                    m,
                    l,
                    format!("{lower} of {} points", pairs.len()),
                    lower == pairs.len(),
                );
            }
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
            load: Load::Pvio,
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
        let md = markdown(&entries, &[p], &[Medium::Tmpfs], &[Load::Pvio], &ctx);
        assert!(md.contains("| randread 4k qd32 q1 | 130.0k ±0% | 100.0k ±0% | 200.0k ±0% | 1.30 | 0.65 | 2.00 |"), "{md}");
    }
}
