//! Smoke tests of the benchmark harness, so it cannot rot: the load generator's verification
//! mode against real back-ends (every read of a written block checked), and a short run of
//! `blk-compare --quick` producing its report. No speed is asserted: only that every system
//! was measured and every checked read matched.

use std::fs;
use std::path::Path;
use std::process::Command;

use pvio_tests::backend::{BlkBackend, BlkBackendConfig, BlkBackendKind};
use pvio_tests::bins::workspace_bin;
use pvio_tests::tmp::TempDir;
use pvio_tests::OrPanic;

/// The number after `"key":` in a one-line JSON object.
fn json_number(json: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pat.len();
    let end = json[at..].find([',', '}']).map_or(json.len(), |e| at + e);
    json[at..end]
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

fn verify_against(kind: &BlkBackendKind, dir: TempDir, poll_us: Option<u32>) {
    let image = dir.join("disk.raw");
    fs::File::create(&image)
        .and_then(|f| f.set_len(16 << 20))
        .or_panic("image");
    let config = BlkBackendConfig {
        poll_us,
        ..BlkBackendConfig::new(&image, &dir.join("vub.sock"), 2)
    };
    let backend = BlkBackend::start(kind, &config, &dir.join("backend.log")).or_panic("back-end");
    let out = Command::new(workspace_bin("frontend-guest", "frontend-guest"))
        .args([
            "bench",
            "blk",
            "--rw",
            "randrw",
            "--verify",
            "--json",
            "--no-progress",
        ])
        .args([
            "--bs",
            "4k",
            "--iodepth",
            "16",
            "--queues",
            "2",
            "--runtime",
            "1s",
        ])
        .args(["--size", "2m"])
        .arg("--socket")
        .arg(backend.socket())
        .output()
        .or_panic("run frontend-guest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} verification run failed: {}\n{}",
        kind.name(),
        String::from_utf8_lossy(&out.stderr),
        backend.log()
    );
    // A 2 MiB region per run of 16 requests in flight rewrites and rereads blocks many times.
    assert!(json_number(&stdout, "verified_reads") > 0.0, "{stdout}");
    assert!(json_number(&stdout, "ios") > 0.0, "{stdout}");
    assert_eq!(
        json_number(&stdout, "backend_pid"),
        f64::from(backend.pid()),
        "SO_PEERCRED"
    );
    assert!(
        json_number(&stdout, "backend_cpu_us_per_io") >= 0.0,
        "{stdout}"
    );
}

#[test]
fn verification_mode_passes_against_backend_blk() {
    let dir = TempDir::new("bench-verify").or_panic("temp dir");
    verify_against(&BlkBackendKind::pvio(), dir, None);
}

/// The same with busy-polling: the worker takes chains and reaps io_uring completions
/// without kicks or completion events while it polls.
#[test]
fn verification_mode_passes_against_backend_blk_polling() {
    let dir = TempDir::new("bench-verify").or_panic("temp dir");
    verify_against(&BlkBackendKind::pvio(), dir, Some(200));
}

/// On tmpfs backend-blk serves reads and writes with preadv/pwritev on the queue's thread
/// (tmpfs refuses RWF_NOWAIT, so io_uring would punt each to io-wq): same checks.
#[test]
fn verification_mode_passes_against_backend_blk_on_tmpfs() {
    let dir = TempDir::new_in(Path::new("/dev/shm"), "bench-verify").or_panic("temp dir");
    verify_against(&BlkBackendKind::pvio(), dir, None);
}

#[test]
fn verification_mode_passes_against_qemu_storage_daemon() {
    let dir = TempDir::new("bench-verify").or_panic("temp dir");
    verify_against(&BlkBackendKind::QemuStorageDaemon, dir, None);
}

#[test]
fn quick_comparison_writes_a_report_for_every_system() {
    let runner = workspace_bin("pvio-benches", "blk-compare");
    workspace_bin("frontend-guest", "frontend-guest");
    workspace_bin("backend-blk", "backend-blk");
    workspace_bin("pvio-benches", "blkio-load");
    let dir = TempDir::new("bench-quick").or_panic("temp dir");
    let out = Command::new(&runner)
        .args(["--quick", "--runtime", "0.5", "--out"])
        .arg(dir.join("out"))
        .arg("--tmpfs")
        .arg(dir.path())
        .output()
        .or_panic("run blk-compare");
    assert!(
        out.status.success(),
        "blk-compare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = fs::read_to_string(dir.join("out").join("blk-report.md")).or_panic("report");
    for workload in ["randread 4k qd8 q1", "randwrite 4k qd8 q1"] {
        let rows: Vec<&str> = report
            .lines()
            .filter(|l| l.starts_with(&format!("| {workload} |")))
            .collect();
        assert_eq!(rows.len(), 2, "one row per load source:\n{report}");
        for row in rows {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            // pvio, peer, raw IOPS, the two ratios, the two CPU columns, the means: measured.
            for (i, cell) in cells[2..10].iter().enumerate() {
                assert!(
                    !cell.contains('—'),
                    "column {} of {workload} is empty:\n{report}",
                    i + 1
                );
            }
        }
    }
    let results = fs::read_to_string(dir.join("out").join("blk-results.json")).or_panic("results");
    // 2 points x 3 systems x 2 load sources (pvio's generator, libblkio).
    assert_eq!(results.matches("\"system\"").count(), 12, "{results}");
    assert!(report.contains("## Goals (issue 14)"), "{report}");
    let left: Vec<_> = fs::read_dir(dir.path())
        .or_panic("list temp dir")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(left, ["out"], "the image folder and sockets are removed");
}
