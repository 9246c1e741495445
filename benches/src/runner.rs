//! The whole comparison: for each medium, create the image; for each load source, point and
//! repeat, run every system (the order rotates per repeat, so no system always runs on a
//! warmer cache); then write the report, the raw samples and the plots.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::matrix::{self, Point};
use crate::plot::{line_chart, Series};
use crate::report::{self, Context, Entry};
use crate::systems::{run_loadgen, run_raw, Daemon, Image, Load, Medium, Programs, Sample, System};
use crate::{BenchError, Result};

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds per run.
    pub runtime: Duration,
    /// Repeats per point and system.
    pub repeats: usize,
    /// The points to run.
    pub points: Vec<Point>,
    /// The media to run on.
    pub media: Vec<Medium>,
    /// The load sources.
    pub loads: Vec<Load>,
    /// Image size in bytes.
    pub image_bytes: u64,
    /// Folder for the report, plots and the on-disk image (e.g. target/bench).
    pub out_dir: PathBuf,
    /// Folder of the tmpfs image (e.g. /dev/shm).
    pub tmpfs_dir: PathBuf,
    /// The programs.
    pub programs: Programs,
    /// Notes for the report header.
    pub notes: Vec<String>,
}

/// Reads one measure of a sample.
type Measure = fn(&Sample) -> f64;

const SYSTEMS: [System; 3] = [System::Pvio, System::Qsd, System::Raw];

/// Runs everything and writes `blk-report.md`, `blk-results.json` and the SVG plots into
/// `out_dir`. Returns the report text.
///
/// # Errors
/// [`BenchError`] on the first failing run; daemons and images are cleaned up either way.
pub fn run(opts: &Options) -> Result<String> {
    fs::create_dir_all(&opts.out_dir).map_err(BenchError::io(format!(
        "creating {}",
        opts.out_dir.display()
    )))?;
    let mut entries = Vec::new();
    let total =
        opts.media.len() * opts.loads.len() * opts.points.len() * opts.repeats * SYSTEMS.len();
    let mut done = 0;
    for &medium in &opts.media {
        let parent = match medium {
            Medium::Tmpfs => &opts.tmpfs_dir,
            Medium::Disk => &opts.out_dir,
        };
        let image = Image::create(parent, medium, opts.image_bytes)?;
        for &load in &opts.loads {
            for p in &opts.points {
                let mut samples: [Vec<Sample>; 3] = Default::default();
                for r in 0..opts.repeats {
                    for k in 0..SYSTEMS.len() {
                        let i = (k + r) % SYSTEMS.len();
                        done += 1;
                        eprintln!(
                            "[{done}/{total}] {} {} {} {} (repeat {})",
                            medium.name(),
                            load.tag(),
                            p.label(),
                            SYSTEMS[i].name(),
                            r + 1
                        );
                        let s = run_one(opts, load, SYSTEMS[i], p, &image)?;
                        eprintln!(
                            "    {:.0} IOPS, mean {:.1} us, p99 {:.0} us, cpu {}, load {:.1}",
                            s.iops,
                            s.mean,
                            s.p99,
                            s.cpu_us_per_io
                                .map_or("-".to_owned(), |c| format!("{c:.2} us/IO")),
                            s.load1
                        );
                        samples[i].push(s);
                    }
                }
                for (system, samples) in SYSTEMS.into_iter().zip(samples) {
                    entries.push(Entry {
                        medium,
                        load,
                        point: *p,
                        system,
                        samples,
                    });
                }
            }
        }
    }
    write_outputs(opts, &entries)
}

fn run_one(opts: &Options, load: Load, system: System, p: &Point, image: &Image) -> Result<Sample> {
    if system == System::Raw {
        return run_raw(&opts.programs, load, p, image, opts.runtime);
    }
    let mut daemon = Daemon::start(&opts.programs, system, image, p.queues)?;
    run_loadgen(&opts.programs, load, &mut daemon, p, image, opts.runtime)
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(BenchError::io(format!("writing {}", path.display())))
}

fn write_outputs(opts: &Options, entries: &[Entry]) -> Result<String> {
    let ctx = Context {
        runtime_s: opts.runtime.as_secs_f64(),
        repeats: opts.repeats,
        image_bytes: opts.image_bytes,
        notes: opts.notes.clone(),
    };
    let mut md = report::markdown(entries, &opts.points, &opts.media, &opts.loads, &ctx);
    let plots = write_plots(opts, entries)?;
    if !plots.is_empty() {
        md.push_str("\n## Plots\n\n");
        for p in &plots {
            md.push_str(&format!("![{p}]({p})\n"));
        }
    }
    write_file(&opts.out_dir.join("blk-report.md"), &md)?;
    write_file(
        &opts.out_dir.join("blk-results.json"),
        &results_json(entries),
    )?;
    Ok(md)
}

fn results_json(entries: &[Entry]) -> String {
    let v: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "medium": e.medium.name(), "load": e.load.tag(), "system": e.system.name(),
                "rw": e.point.rw,
                "bs": e.point.bs, "iodepth": e.point.iodepth, "queues": e.point.queues,
                "samples": e.samples.iter().map(|s| serde_json::json!({
                    "iops": s.iops, "mib_s": s.mib_s, "mean_us": s.mean, "p50_us": s.p50,
                    "p99_us": s.p99, "p99_9_us": s.p999,
                    "backend_cpu_us_per_io": s.cpu_us_per_io, "load1": s.load1,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// IOPS against queue depth (4 KiB random, per medium, load, workload and queue count) and
/// latency percentiles at QD 32 (per medium and load), one line per system. Returns the file
/// names.
fn write_plots(opts: &Options, entries: &[Entry]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for &medium in &opts.media {
        for &load in &opts.loads {
            let section = Section { medium, load };
            for queues in [1u16, 2] {
                for rw in ["randread", "randwrite"] {
                    if let Some(name) = iops_plot(opts, entries, section, rw, queues)? {
                        names.push(name);
                    }
                }
            }
            if let Some(name) = latency_plot(opts, entries, section)? {
                names.push(name);
            }
        }
    }
    Ok(names)
}

/// One table's worth of entries: an image medium and a load source.
#[derive(Debug, Clone, Copy)]
struct Section {
    medium: Medium,
    load: Load,
}

impl Section {
    fn describe(self) -> String {
        format!("{} image, {}", self.medium.name(), self.load.name())
    }

    fn tag(self) -> String {
        format!("{}-{}", self.medium.name(), self.load.tag())
    }
}

fn iops_plot(
    opts: &Options,
    entries: &[Entry],
    sec: Section,
    rw: &'static str,
    queues: u16,
) -> Result<Option<String>> {
    let pts: Vec<Point> = matrix::RANDOM_DEPTHS
        .iter()
        .map(|&iodepth| Point {
            rw,
            bs: 4096,
            iodepth,
            queues,
        })
        .filter(|p| opts.points.contains(p))
        .collect();
    if pts.len() < 2 {
        return Ok(None);
    }
    let series = per_system(entries, sec, &pts, Entry::iops);
    let labels = pts
        .iter()
        .map(|p| p.iodepth.to_string())
        .collect::<Vec<_>>();
    let title = format!("4 KiB {rw}, {queues} queue(s), {}", sec.describe());
    let name = format!("iops-qd-{}-{rw}-q{queues}.svg", sec.tag());
    write_file(
        &opts.out_dir.join(&name),
        &line_chart(&title, "queue depth (per queue)", "IOPS", &labels, &series),
    )?;
    Ok(Some(name))
}

fn latency_plot(opts: &Options, entries: &[Entry], sec: Section) -> Result<Option<String>> {
    let p = Point {
        rw: "randread",
        bs: 4096,
        iodepth: 32,
        queues: 1,
    };
    if !opts.points.contains(&p) {
        return Ok(None);
    }
    let pcts: [(&str, Measure); 3] = [
        ("p50", |s| s.p50),
        ("p99", |s| s.p99),
        ("p99.9", |s| s.p999),
    ];
    let series = SYSTEMS
        .iter()
        .map(|&sys| Series {
            name: sys.name().to_owned(),
            values: pcts
                .iter()
                .map(|(_, f)| {
                    report::find(entries, sec.medium, sec.load, &p, sys)
                        .and_then(|e| e.median_of(|s| Some(f(s))))
                })
                .collect(),
        })
        .collect::<Vec<_>>();
    let labels = pcts
        .iter()
        .map(|(n, _)| (*n).to_owned())
        .collect::<Vec<_>>();
    let title = format!("4 KiB randread QD 32, 1 queue, {}", sec.describe());
    let name = format!("latency-{}-randread-qd32.svg", sec.tag());
    write_file(
        &opts.out_dir.join(&name),
        &line_chart(
            &title,
            "percentile",
            "completion latency (µs)",
            &labels,
            &series,
        ),
    )?;
    Ok(Some(name))
}

fn per_system(
    entries: &[Entry],
    sec: Section,
    pts: &[Point],
    f: fn(&Entry) -> Option<f64>,
) -> Vec<Series> {
    SYSTEMS
        .iter()
        .map(|&sys| Series {
            name: sys.name().to_owned(),
            values: pts
                .iter()
                .map(|p| report::find(entries, sec.medium, sec.load, p, sys).and_then(f))
                .collect(),
        })
        .collect()
}
