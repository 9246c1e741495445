//! Counters per port and queue pair, readable while the daemon runs (SIGUSR1 prints them, the
//! `--stats-socket` serves them as JSON).
//!
//! "rx" is toward the driver (frames put in its receive queue), "tx" is from the driver (frames
//! taken from its transmit queue). Each drop reason has its own counter. Counters only grow;
//! they are relaxed atomics, since readers need no ordering with the data path.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

/// Why a frame did not make it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// Transmit chain whose virtio-net header is short or malformed.
    TxBadHeader,
    /// Transmit frame larger than the MTU (or the GSO limit) allows.
    TxTooBig,
    /// Transmit chain with a descriptor outside guest memory, a device-writable buffer, or a
    /// broken link.
    TxBadChain,
    /// The TAP refused the frame (link down, or the kernel rejected the header).
    TxTapError,
    /// Switch: no port to deliver to (the destination is on the sender's own port, or no other
    /// port is connected).
    TxNoDestination,
    /// The software offload fallback could not handle the frame.
    TxOffload,
    /// Switch: the frame's source address is not one the port may send from (not among its
    /// pinned addresses, or pinned to another port).
    TxSpoofed,
    /// Switch: the frame would flood (group or unknown destination) beyond the port's
    /// `--flood-rate`.
    TxFloodLimited,
    /// The receive backlog was full while the driver had no receive buffers.
    RxNoBuffers,
    /// The frame does not fit the driver's receive buffers.
    RxTooBig,
    /// Receive chain with a descriptor outside guest memory or without writable space.
    RxBadChain,
    /// The receive filter (control queue RX mode and MAC table) refused the frame.
    RxFiltered,
}

impl Drop {
    /// Every reason, in the order the counters are printed.
    pub const ALL: [Drop; 12] = [
        Drop::TxBadHeader,
        Drop::TxTooBig,
        Drop::TxBadChain,
        Drop::TxTapError,
        Drop::TxNoDestination,
        Drop::TxOffload,
        Drop::TxSpoofed,
        Drop::TxFloodLimited,
        Drop::RxNoBuffers,
        Drop::RxTooBig,
        Drop::RxBadChain,
        Drop::RxFiltered,
    ];

    /// Counter name.
    pub fn name(self) -> &'static str {
        match self {
            Drop::TxBadHeader => "tx_bad_header",
            Drop::TxTooBig => "tx_too_big",
            Drop::TxBadChain => "tx_bad_chain",
            Drop::TxTapError => "tx_tap_error",
            Drop::TxNoDestination => "tx_no_destination",
            Drop::TxOffload => "tx_offload",
            Drop::TxSpoofed => "tx_spoofed",
            Drop::TxFloodLimited => "tx_flood_limited",
            Drop::RxNoBuffers => "rx_no_buffers",
            Drop::RxTooBig => "rx_too_big",
            Drop::RxBadChain => "rx_bad_chain",
            Drop::RxFiltered => "rx_filtered",
        }
    }
}

/// The counters of one queue pair.
#[derive(Debug, Default)]
pub struct QueueStats {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    drops: [AtomicU64; Drop::ALL.len()],
}

impl QueueStats {
    /// Counts a frame of `bytes` (without the virtio-net header) delivered to the driver.
    pub fn rx(&self, bytes: usize) {
        self.rx_frames.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts a frame of `bytes` taken from the driver and passed on.
    pub fn tx(&self, bytes: usize) {
        self.tx_frames.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts `frames` frames of `bytes` bytes in all delivered to the driver (a batch: one
    /// atomic add per counter instead of one per frame).
    pub fn rx_batch(&self, frames: u64, bytes: u64) {
        if frames > 0 {
            self.rx_frames.fetch_add(frames, Ordering::Relaxed);
            self.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Counts `frames` frames of `bytes` bytes in all taken from the driver and passed on.
    pub fn tx_batch(&self, frames: u64, bytes: u64) {
        if frames > 0 {
            self.tx_frames.fetch_add(frames, Ordering::Relaxed);
            self.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Counts a dropped frame.
    pub fn drop(&self, why: Drop) {
        self.drops[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Current value of a drop counter.
    pub fn drops(&self, why: Drop) -> u64 {
        self.drops[why as usize].load(Ordering::Relaxed)
    }

    /// `{"rx_frames":..,"rx_bytes":..,"tx_frames":..,"tx_bytes":..,"drops":{reason: n}}`.
    pub fn to_json(&self) -> Value {
        let drops: serde_json::Map<String, Value> = Drop::ALL
            .iter()
            .map(|&d| (d.name().to_string(), json!(self.drops(d))))
            .collect();
        json!({
            "rx_frames": self.rx_frames.load(Ordering::Relaxed),
            "rx_bytes": self.rx_bytes.load(Ordering::Relaxed),
            "tx_frames": self.tx_frames.load(Ordering::Relaxed),
            "tx_bytes": self.tx_bytes.load(Ordering::Relaxed),
            "drops": drops,
        })
    }
}

/// The counters of one port (one socket).
#[derive(Debug)]
pub struct PortStats {
    /// One per queue pair.
    pub queues: Vec<QueueStats>,
    /// Control commands answered VIRTIO_NET_OK.
    pub ctrl_ok: AtomicU64,
    /// Control commands answered VIRTIO_NET_ERR (or malformed control chains).
    pub ctrl_err: AtomicU64,
    /// Front-end connections accepted so far.
    pub connections: AtomicU64,
    /// Switch: source addresses of this port's frames the learning table refused (the port
    /// held `--fdb-max-per-port` addresses, or the table was full); those frames still went on.
    pub fdb_refused: AtomicU64,
    /// Switch: addresses learned on this port that aged out (`--fdb-aging`).
    pub fdb_aged: AtomicU64,
}

impl PortStats {
    /// Zeroed counters for `pairs` queue pairs.
    pub fn new(pairs: u16) -> PortStats {
        PortStats {
            queues: (0..pairs).map(|_| QueueStats::default()).collect(),
            ctrl_ok: AtomicU64::new(0),
            ctrl_err: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            fdb_refused: AtomicU64::new(0),
            fdb_aged: AtomicU64::new(0),
        }
    }

    /// Queue pair `q`'s counters (the last pair's for an out-of-range index).
    pub fn queue(&self, q: usize) -> &QueueStats {
        &self.queues[q.min(self.queues.len() - 1)]
    }

    /// The port's counters as JSON, with per-queue objects and totals.
    pub fn to_json(&self) -> Value {
        let queues: Vec<Value> = self.queues.iter().map(QueueStats::to_json).collect();
        let sum = |key: &str| -> u64 { queues.iter().filter_map(|q| q[key].as_u64()).sum() };
        let drop_totals: serde_json::Map<String, Value> = Drop::ALL
            .iter()
            .map(|&d| {
                let n: u64 = self.queues.iter().map(|q| q.drops(d)).sum();
                (d.name().to_string(), json!(n))
            })
            .collect();
        json!({
            "rx_frames": sum("rx_frames"),
            "rx_bytes": sum("rx_bytes"),
            "tx_frames": sum("tx_frames"),
            "tx_bytes": sum("tx_bytes"),
            "drops": drop_totals,
            "ctrl_ok": self.ctrl_ok.load(Ordering::Relaxed),
            "ctrl_err": self.ctrl_err.load(Ordering::Relaxed),
            "connections": self.connections.load(Ordering::Relaxed),
            "fdb_refused": self.fdb_refused.load(Ordering::Relaxed),
            "fdb_aged": self.fdb_aged.load(Ordering::Relaxed),
            "queues": queues,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_reports() {
        let s = PortStats::new(2);
        s.queue(0).rx(100);
        s.queue(1).rx(50);
        s.queue(1).tx(60);
        s.queue(1).drop(Drop::TxBadHeader);
        s.queue(7).drop(Drop::TxBadHeader);
        s.ctrl_err.fetch_add(1, Ordering::Relaxed);
        let j = s.to_json();
        assert_eq!(j["rx_frames"], 2);
        assert_eq!(j["rx_bytes"], 150);
        assert_eq!(j["tx_bytes"], 60);
        assert_eq!(j["drops"]["tx_bad_header"], 2);
        assert_eq!(j["drops"]["rx_no_buffers"], 0);
        assert_eq!(j["queues"][1]["drops"]["tx_bad_header"], 2);
        assert_eq!(j["ctrl_err"], 1);
        let names: std::collections::HashSet<_> = Drop::ALL.iter().map(|d| d.name()).collect();
        assert_eq!(names.len(), Drop::ALL.len());
        for (i, d) in Drop::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i, "ALL is in discriminant order");
        }
    }
}
