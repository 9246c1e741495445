//! The workload points of a comparison run.

/// One workload point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    /// fio's workload name: randread, randwrite, read, write.
    pub rw: &'static str,
    /// Bytes per request.
    pub bs: u32,
    /// Requests in flight per queue (fio job).
    pub iodepth: u16,
    /// Queues (fio jobs).
    pub queues: u16,
}

impl Point {
    /// A short label, e.g. `randread 4k qd32 q1`.
    pub fn label(&self) -> String {
        format!(
            "{} {} qd{} q{}",
            self.rw,
            human_bytes(self.bs),
            self.iodepth,
            self.queues
        )
    }
}

/// `4096` -> `4k`, `1048576` -> `1m`.
pub fn human_bytes(b: u32) -> String {
    if b % (1 << 20) == 0 {
        format!("{}m", b >> 20)
    } else if b % 1024 == 0 {
        format!("{}k", b >> 10)
    } else {
        b.to_string()
    }
}

/// Queue depths of the 4 KiB random points.
pub const RANDOM_DEPTHS: [u16; 4] = [1, 8, 32, 128];
/// Queue depth of the sequential points.
pub const SEQ_DEPTH: u16 = 8;

/// The issue's matrix: 4 KiB random read and write at QD 1, 8, 32, 128; 128 KiB and 1 MiB
/// sequential read and write at QD 8; each with 1 and 2 queues.
pub fn full() -> Vec<Point> {
    let mut points = Vec::new();
    for queues in [1, 2] {
        for rw in ["randread", "randwrite"] {
            for iodepth in RANDOM_DEPTHS {
                points.push(Point {
                    rw,
                    bs: 4096,
                    iodepth,
                    queues,
                });
            }
        }
        for bs in [128 << 10, 1 << 20] {
            for rw in ["read", "write"] {
                points.push(Point {
                    rw,
                    bs,
                    iodepth: SEQ_DEPTH,
                    queues,
                });
            }
        }
    }
    points
}

/// The points of issue 14's goals: 4 KiB random read and write at QD 1 and 32 on one queue
/// and at QD 32 on two queues.
pub fn goals() -> Vec<Point> {
    let mut points = Vec::new();
    for rw in ["randread", "randwrite"] {
        for (iodepth, queues) in [(1, 1), (32, 1), (32, 2)] {
            points.push(Point {
                rw,
                bs: 4096,
                iodepth,
                queues,
            });
        }
    }
    points
}

/// The smoke matrix: 4 KiB random read and write at QD 8, one queue.
pub fn quick() -> Vec<Point> {
    ["randread", "randwrite"]
        .into_iter()
        .map(|rw| Point {
            rw,
            bs: 4096,
            iodepth: 8,
            queues: 1,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_matrix_covers_the_issue() {
        let m = full();
        assert_eq!(m.len(), 24);
        for q in [1, 2] {
            for rw in ["randread", "randwrite"] {
                for d in RANDOM_DEPTHS {
                    assert!(m.contains(&Point {
                        rw,
                        bs: 4096,
                        iodepth: d,
                        queues: q
                    }));
                }
            }
        }
        assert!(m.iter().any(|p| p.bs == 1 << 20 && p.rw == "read"));
        assert_eq!(human_bytes(128 << 10), "128k");
        assert_eq!(
            Point {
                rw: "read",
                bs: 1 << 20,
                iodepth: 8,
                queues: 2
            }
            .label(),
            "read 1m qd8 q2"
        );
    }
}
