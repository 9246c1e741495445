//! Command line of `backend-net` and its validation into a [`Config`].
//!
//! Two modes: `--tap NAME` bridges one front-end to an existing TAP device; `--switch` makes
//! every `--socket` a port of a learning L2 switch. `--socket-path` is accepted as an alias, as
//! in the "Backend program conventions" of QEMU's `docs/interop/vhost-user.rst`, as are `--fd`
//! (an inherited listening socket, TAP mode or a one-port switch) and `--print-capabilities`.

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use vhost_daemon::listener::SocketSource;

use crate::fdb::{FdbConfig, DEFAULT_MAX_PER_PORT};
use crate::mac::MacAddr;
use crate::switch::{SwitchConfig, DEFAULT_FLOOD_RATE};
use crate::threads;

/// Largest `--num-queue-pairs`: by default up to one worker thread per pair, and
/// vhost-user-backend describes a thread's queues with a 64-bit mask that must also hold the
/// control queue.
pub const MAX_QUEUE_PAIRS: u16 = 16;
/// Largest `--queue-size`: QEMU's `VIRTQUEUE_MAX_SIZE`.
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Smallest `--mtu`: the IPv4 minimum (RFC 791), bytes.
pub const MIN_MTU: u16 = 68;
/// Largest `--mtu`, bytes. Frames of up to this many bytes (plus Ethernet and VLAN headers)
/// pass without segmentation offload.
pub const MAX_MTU: u16 = 16_000;
/// Largest number of `--socket`s (switch ports).
pub const MAX_PORTS: usize = crate::switch::MAX_PORTS;
/// Default busy-poll window of the queue threads, µs (`--poll-us`): cloud-hypervisor's
/// daemons' 50. With receive kicks suppressed while no frame waits, a transmit queue that is
/// polled instead of re-armed also spares the driver its kicks (measured in
/// ../benches/README.md).
pub const DEFAULT_POLL_US: u32 = 50;
/// Largest `--poll-us` (a queue thread never polls longer than 2 ms per event anyway).
pub const MAX_POLL_US: u32 = 2000;
/// Default base MAC address: locally administered, QEMU's 52:54:00 prefix, then "pv".
pub const DEFAULT_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x70, 0x76, 0x01]);

/// `backend-net`: a vhost-user-net back-end that bridges virtio-net front-ends (QEMU's
/// `-netdev vhost-user`, cloud-hypervisor, DPDK's virtio-user) to a TAP device or to each other.
#[derive(Debug, Parser)]
#[command(
    name = "backend-net",
    version,
    about = "vhost-user-net back-end: bridges guests to a TAP device (--tap) or to each other \
             through a learning L2 switch (--switch)",
    long_about = None,
    after_help = "TAP mode: backend-net --socket PATH --tap NAME [--num-queue-pairs N]\n\
                  Switch mode: backend-net --switch --socket PATH1 --socket PATH2 ...\n\
                  \x20 [--switch-port PATH3,mac=52:54:00:00:00:03 ...]\n\n\
                  The TAP must exist (ip tuntap add dev NAME mode tap [multi_queue]). Each socket \
                  serves one front-end at a time and waits for the next when it leaves. SIGUSR1 \
                  prints the counters; SIGINT or SIGTERM stop the daemon cleanly.\n\
                  Logging: RUST_LOG=debug|info|warn (default info)."
)]
pub struct Cli {
    /// Unix socket to create and listen on; repeat it in switch mode, one per port.
    #[arg(
        long,
        visible_alias = "socket-path",
        value_name = "PATH",
        required_unless_present_any = ["fd", "print_capabilities", "xenstore", "switch_port"],
        conflicts_with = "fd"
    )]
    pub socket: Vec<PathBuf>,

    /// An already listening unix socket inherited from the launcher, instead of --socket.
    #[arg(long, value_name = "FDNUM")]
    pub fd: Option<RawFd>,

    /// Store mode: serve every vif with a TAP that the toolstack writes into the XenStore at
    /// this socket, walking the XenBus handshake for each (instead of --socket/--tap).
    #[arg(
        long,
        value_name = "PATH",
        requires = "run_dir",
        conflicts_with_all = ["socket", "fd", "tap", "switch", "stats_socket"]
    )]
    pub xenstore: Option<PathBuf>,

    /// Store mode: folder for the NICs' vhost-user sockets (`vif-<domid>-<devid>.sock`).
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,

    /// Print the back-end's capabilities as JSON (vhost-user.json, type "net") and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Switch port whose front-end may only send from the given MAC addresses (frames from
    /// other sources are dropped and counted as tx_spoofed, and no other port may claim them):
    /// PATH,mac=MAC[,mac=MAC...]. PATH is a --socket or a further port (after the --sockets).
    #[arg(long, value_name = "PATH,mac=MAC", conflicts_with_all = ["tap", "fd"])]
    pub switch_port: Vec<SwitchPort>,

    /// Switch: seconds after which a learned MAC address not seen again is forgotten (0:
    /// never), like a Linux bridge's ageing_time.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub fdb_aging: u64,

    /// Switch: MAC addresses the switch learns per port at most; sources beyond it are not
    /// learned (counted as fdb_refused) and frames to them flood.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PER_PORT)]
    pub fdb_max_per_port: usize,

    /// Switch: frames per second each port may flood (broadcast, multicast, unknown
    /// destination), as N/s or N; more are dropped and counted as tx_flood_limited. 0: no
    /// limit.
    #[arg(long, value_name = "N/s", default_value_t = FloodRate(DEFAULT_FLOOD_RATE))]
    pub flood_rate: FloodRate,

    /// Bridge the front-end to this existing TAP device.
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with = "switch",
        required_unless_present_any = ["switch", "print_capabilities", "xenstore"]
    )]
    pub tap: Option<String>,

    /// Make every --socket a port of a learning L2 switch between the front-ends.
    #[arg(long)]
    pub switch: bool,

    /// Queue pairs (receiveq/transmitq) offered per front-end, each served by its own thread
    /// while there are CPUs for them (see --worker-threads); in TAP mode each pair gets its own
    /// TAP queue (the TAP needs multi_queue for N > 1).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub num_queue_pairs: u16,

    /// Worker threads per front-end, 1 to --num-queue-pairs (default: one per pair, at most
    /// the CPUs the daemon may run on, e.g. 1 under `taskset -c 1`): pair i is served by
    /// thread i mod N, so one thread can poll several pairs (for a back-end given fewer cores
    /// than pairs).
    #[arg(long, value_name = "N", conflicts_with = "xenstore")]
    pub worker_threads: Option<u16>,

    /// MAC address offered in the configuration space; switch port i gets this plus i.
    #[arg(long, value_name = "MAC", default_value_t = DEFAULT_MAC)]
    pub mac: MacAddr,

    /// MTU offered to the driver (VIRTIO_NET_F_MTU), bytes.
    #[arg(long, value_name = "N", default_value_t = 1500)]
    pub mtu: u16,

    /// Largest virtqueue size the front-end may set: a power of two up to 1024.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub queue_size: u16,

    /// Frames that may wait per receive queue while the driver has no receive buffers; more are
    /// dropped and counted.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub rx_backlog: usize,

    /// Busy-poll window in µs: after its last frame a queue thread keeps looking at its
    /// transmit queue this long before it sleeps, so frames that come meanwhile need no kick
    /// and no wake-up (0: sleep at once). Costs up to this much CPU time per idle period; the
    /// net benchmark reports CPU µs per frame beside the rate (benches/README.md).
    #[arg(long, value_name = "US", default_value_t = DEFAULT_POLL_US)]
    pub poll_us: u32,

    /// Serve the counters as JSON to whoever connects to this unix socket.
    #[arg(long, value_name = "PATH")]
    pub stats_socket: Option<PathBuf>,
}

/// A `--switch-port PATH,mac=MAC[,mac=MAC...]` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchPort {
    /// The port's socket.
    pub socket: PathBuf,
    /// The source addresses it may send from.
    pub macs: Vec<MacAddr>,
}

/// A `--switch-port` argument that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchPortError {
    /// Not `PATH,mac=MAC[,mac=MAC...]`.
    #[error("{0:?} is not PATH,mac=MAC[,mac=MAC...]")]
    Syntax(String),
    /// A `mac=` value that is not a unicast MAC address.
    #[error("{0}: give unicast MAC addresses")]
    Mac(String),
}

impl FromStr for SwitchPort {
    type Err = SwitchPortError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let socket = parts.next().filter(|p| !p.is_empty());
        let socket = socket.ok_or_else(|| SwitchPortError::Syntax(s.to_string()))?;
        let macs = parts
            .map(|kv| {
                let value = kv
                    .strip_prefix("mac=")
                    .ok_or_else(|| SwitchPortError::Syntax(s.to_string()))?;
                match value.parse::<MacAddr>() {
                    Ok(m) if m.is_station() => Ok(m),
                    Ok(m) => Err(SwitchPortError::Mac(m.to_string())),
                    Err(e) => Err(SwitchPortError::Mac(e.to_string())),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if macs.is_empty() {
            return Err(SwitchPortError::Syntax(s.to_string()));
        }
        Ok(SwitchPort {
            socket: socket.into(),
            macs,
        })
    }
}

/// A `--flood-rate` value: frames per second, written `N/s` or `N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloodRate(pub u32);

impl FromStr for FloodRate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_suffix("/s")
            .unwrap_or(s)
            .parse()
            .map(FloodRate)
            .map_err(|_| format!("{s:?} is not a rate: give frames per second as N/s, e.g. 1000/s"))
    }
}

impl std::fmt::Display for FloodRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/s", self.0)
    }
}

/// What the daemon bridges its front-ends to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One front-end and the existing TAP device of this name.
    Tap(String),
    /// A learning switch between all front-ends.
    Switch,
}

/// Validated daemon configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// TAP or switch.
    pub mode: Mode,
    /// One socket per port (exactly one in TAP mode).
    pub sockets: Vec<SocketSource>,
    /// Queue pairs per front-end, 1 to [`MAX_QUEUE_PAIRS`].
    pub queue_pairs: u16,
    /// Worker threads per front-end, 1 to `queue_pairs` (see [`crate::threads`]).
    pub worker_threads: u16,
    /// MAC of port 0; port i has `mac.offset(i)`.
    pub mac: MacAddr,
    /// MTU in bytes, [`MIN_MTU`] to [`MAX_MTU`].
    pub mtu: u16,
    /// Largest virtqueue size, a power of two up to [`MAX_QUEUE_SIZE`].
    pub queue_size: u16,
    /// Frames that may wait per receive queue.
    pub rx_backlog: usize,
    /// Busy-poll window of the queue threads.
    pub poll: Duration,
    /// Where to serve counters.
    pub stats_socket: Option<PathBuf>,
    /// Per port (as `sockets`), the only source addresses it may send from; empty: any.
    pub pinned: Vec<Vec<MacAddr>>,
    /// Switch protections: aging, per-port cap, flood rate.
    pub switch: SwitchConfig,
}

/// A command line that parses but does not make sense.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `--num-queue-pairs` is 0 or above [`MAX_QUEUE_PAIRS`].
    #[error("--num-queue-pairs {0} is out of range: give 1 to {MAX_QUEUE_PAIRS}")]
    QueuePairs(u16),
    /// `--queue-size` is not a power of two or is above [`MAX_QUEUE_SIZE`].
    #[error("--queue-size {0} is invalid: give a power of two from 2 to {MAX_QUEUE_SIZE}")]
    QueueSize(u16),
    /// `--mtu` is outside [`MIN_MTU`]..=[`MAX_MTU`].
    #[error("--mtu {0} is out of range: give {MIN_MTU} to {MAX_MTU}")]
    Mtu(u16),
    /// TAP mode with more or fewer than one socket.
    #[error("--tap serves exactly one front-end: give one --socket (got {0})")]
    TapSockets(usize),
    /// `--run-dir` without `--xenstore`.
    #[error("--run-dir is for store mode: give --xenstore PATH too")]
    RunDirWithoutStore,
    /// Too many switch ports.
    #[error("--switch takes at most {MAX_PORTS} sockets (got {0})")]
    TooManyPorts(usize),
    /// The same socket path twice.
    #[error("socket {0} is given twice")]
    DuplicateSocket(PathBuf),
    /// `--mac` is a group address.
    #[error("--mac {0} is a multicast address: give a unicast one")]
    MulticastMac(MacAddr),
    /// `--rx-backlog` is zero.
    #[error("--rx-backlog must be at least 1")]
    RxBacklog,
    /// `--fdb-max-per-port` is zero.
    #[error("--fdb-max-per-port must be at least 1")]
    FdbMaxPerPort,
    /// The same socket in two `--switch-port`s.
    #[error("--switch-port {0} is given twice")]
    DuplicateSwitchPort(PathBuf),
    /// `--poll-us` is above [`MAX_POLL_US`].
    #[error("--poll-us {0} is out of range: give 0 to {MAX_POLL_US}")]
    PollUs(u32),
    /// `--worker-threads` is 0 or above `--num-queue-pairs` (the second value).
    #[error(
        "--worker-threads {0} is out of range: give 1 to {1} (a thread serves one or more of \
         the --num-queue-pairs {1})"
    )]
    WorkerThreads(u16, u16),
    /// `--fd` is negative.
    #[error("--fd {0} is not a file descriptor number")]
    Fd(RawFd),
}

/// The `--print-capabilities` type and features (vhost-user.json: net back-ends have none).
pub const CAPABILITIES: (&str, &[&str]) = ("net", &[]);

impl Cli {
    /// The store-mode configuration, when `--xenstore` was given.
    pub fn store_config(&self) -> Option<crate::store::StoreConfig> {
        Some(crate::store::StoreConfig {
            xenstore: self.xenstore.clone()?,
            run_dir: self.run_dir.clone()?,
            queue_size: self.queue_size,
            rx_backlog: self.rx_backlog,
            poll: Duration::from_micros(self.poll_us.min(MAX_POLL_US).into()),
        })
    }

    /// Checks the parsed arguments and builds the [`Config`].
    ///
    /// # Errors
    /// [`ConfigError`] naming the first argument that does not make sense.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        if self.run_dir.is_some() {
            return Err(ConfigError::RunDirWithoutStore);
        }
        if self.num_queue_pairs == 0 || self.num_queue_pairs > MAX_QUEUE_PAIRS {
            return Err(ConfigError::QueuePairs(self.num_queue_pairs));
        }
        let worker_threads = self
            .worker_threads
            .unwrap_or_else(|| threads::default_threads(self.num_queue_pairs));
        if worker_threads == 0 || worker_threads > self.num_queue_pairs {
            return Err(ConfigError::WorkerThreads(
                worker_threads,
                self.num_queue_pairs,
            ));
        }
        if !self.queue_size.is_power_of_two() || !(2..=MAX_QUEUE_SIZE).contains(&self.queue_size) {
            return Err(ConfigError::QueueSize(self.queue_size));
        }
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(ConfigError::Mtu(self.mtu));
        }
        if self.mac.is_multicast() {
            return Err(ConfigError::MulticastMac(self.mac));
        }
        if self.rx_backlog == 0 {
            return Err(ConfigError::RxBacklog);
        }
        if self.poll_us > MAX_POLL_US {
            return Err(ConfigError::PollUs(self.poll_us));
        }
        if self.fdb_max_per_port == 0 {
            return Err(ConfigError::FdbMaxPerPort);
        }
        for (i, s) in self.socket.iter().enumerate() {
            if self.socket[..i].contains(s) {
                return Err(ConfigError::DuplicateSocket(s.clone()));
            }
        }
        let mut paths = self.socket;
        let mut pinned = vec![Vec::new(); paths.len()];
        for (i, p) in self.switch_port.iter().enumerate() {
            if self.switch_port[..i].iter().any(|o| o.socket == p.socket) {
                return Err(ConfigError::DuplicateSwitchPort(p.socket.clone()));
            }
            match paths.iter().position(|s| *s == p.socket) {
                Some(at) => pinned[at] = p.macs.clone(),
                None => {
                    paths.push(p.socket.clone());
                    pinned.push(p.macs.clone());
                }
            }
        }
        let sockets: Vec<SocketSource> = match self.fd {
            Some(fd) if fd < 0 => return Err(ConfigError::Fd(fd)),
            Some(fd) => vec![SocketSource::Fd(fd)],
            None => paths.into_iter().map(SocketSource::Path).collect(),
        };
        pinned.resize(sockets.len(), Vec::new());
        let mode = match self.tap {
            Some(name) if sockets.len() == 1 => Mode::Tap(name),
            Some(_) => return Err(ConfigError::TapSockets(sockets.len())),
            None if sockets.len() > MAX_PORTS => {
                return Err(ConfigError::TooManyPorts(sockets.len()))
            }
            None => Mode::Switch,
        };
        let switch = SwitchConfig {
            fdb: FdbConfig {
                aging: (self.fdb_aging > 0).then(|| Duration::from_secs(self.fdb_aging)),
                max_per_port: self.fdb_max_per_port,
            },
            flood_rate: self.flood_rate.0,
        };
        Ok(Config {
            mode,
            sockets,
            pinned,
            switch,
            queue_pairs: self.num_queue_pairs,
            worker_threads,
            mac: self.mac,
            mtu: self.mtu,
            queue_size: self.queue_size,
            rx_backlog: self.rx_backlog,
            poll: Duration::from_micros(self.poll_us.into()),
            stats_socket: self.stats_socket,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("backend-net").chain(args.iter().copied()))
            .map_err(|e| e.kind().to_string())?;
        cli.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn store_mode_takes_the_store_and_a_run_dir_only() {
        let cli = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("backend-net").chain(args.iter().copied()))
        };
        let store = cli(&["--xenstore", "/xs", "--run-dir", "/run/pvio"])
            .unwrap()
            .store_config()
            .unwrap();
        assert_eq!(store.xenstore, PathBuf::from("/xs"));
        assert_eq!(store.run_dir, PathBuf::from("/run/pvio"));
        assert!(cli(&["--xenstore", "/xs"]).is_err());
        assert!(cli(&["--xenstore", "/xs", "--run-dir", "/r", "--tap", "t"]).is_err());
        let stray = cli(&["--socket", "/s", "--tap", "t", "--run-dir", "/r"]).unwrap();
        assert_eq!(stray.into_config(), Err(ConfigError::RunDirWithoutStore));
    }

    #[test]
    fn tap_mode_defaults() {
        let c = parse(&["--socket", "/s", "--tap", "tap0"]).unwrap();
        assert_eq!(
            c,
            Config {
                mode: Mode::Tap("tap0".into()),
                sockets: vec![SocketSource::Path("/s".into())],
                queue_pairs: 1,
                worker_threads: 1,
                mac: DEFAULT_MAC,
                mtu: 1500,
                queue_size: 256,
                rx_backlog: 256,
                poll: Duration::from_micros(u64::from(DEFAULT_POLL_US)),
                stats_socket: None,
                pinned: vec![vec![]],
                switch: SwitchConfig::default(),
            }
        );
    }

    #[test]
    fn switch_protections() {
        let c = parse(&[
            "--switch",
            "--socket",
            "/a",
            "--socket",
            "/b",
            "--switch-port",
            "/b,mac=52:54:00:00:00:02",
            "--switch-port",
            "/c,mac=52:54:00:00:00:03,mac=02:00:00:00:00:01",
            "--fdb-aging",
            "0",
            "--fdb-max-per-port",
            "8",
            "--flood-rate",
            "50/s",
        ])
        .unwrap();
        assert_eq!(
            c.sockets,
            ["/a", "/b", "/c"].map(|p| SocketSource::Path(p.into()))
        );
        assert_eq!(
            c.pinned,
            vec![
                vec![],
                vec![MacAddr([0x52, 0x54, 0, 0, 0, 2])],
                vec![
                    MacAddr([0x52, 0x54, 0, 0, 0, 3]),
                    MacAddr([2, 0, 0, 0, 0, 1])
                ]
            ]
        );
        assert_eq!(
            c.switch,
            SwitchConfig {
                fdb: FdbConfig {
                    aging: None,
                    max_per_port: 8
                },
                flood_rate: 50
            }
        );
        let only_pinned = parse(&["--switch", "--switch-port", "/p,mac=52:54:00:00:00:09"]);
        assert_eq!(
            only_pinned.unwrap().sockets,
            [SocketSource::Path("/p".into())]
        );
        assert_eq!(
            parse(&["--switch", "--socket", "/a", "--flood-rate", "0"])
                .unwrap()
                .switch
                .flood_rate,
            0
        );
        for bad in [
            &["--switch", "--socket", "/a", "--switch-port", "/a"][..],
            &[
                "--switch",
                "--socket",
                "/a",
                "--switch-port",
                "/a,mac=01:00:5e:00:00:01",
            ],
            &[
                "--switch",
                "--socket",
                "/a",
                "--switch-port",
                "/a,ip=1.2.3.4",
            ],
            &["--switch", "--socket", "/a", "--flood-rate", "fast"],
            &[
                "--socket",
                "/a",
                "--tap",
                "t",
                "--switch-port",
                "/a,mac=52:54:00:00:00:01",
            ],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let e = parse(&["--switch", "--socket", "/a", "--fdb-max-per-port", "0"]).unwrap_err();
        assert!(e.contains("--fdb-max-per-port"), "{e}");
        let twice = ["--switch", "--switch-port", "/p,mac=52:54:00:00:00:09"];
        let e = parse(&[&twice[..], &twice[1..]].concat()).unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn switch_mode_takes_many_sockets() {
        let c = parse(&[
            "--switch",
            "--socket",
            "/a",
            "--socket-path",
            "/b",
            "--mac",
            "02:00:00:00:00:10",
        ])
        .unwrap();
        assert_eq!(c.mode, Mode::Switch);
        assert_eq!(
            c.sockets,
            vec![
                SocketSource::Path("/a".into()),
                SocketSource::Path("/b".into())
            ]
        );
        assert_eq!(c.mac, MacAddr([2, 0, 0, 0, 0, 0x10]));
    }

    #[test]
    fn bad_arguments_are_named() {
        assert!(
            parse(&["--socket", "/s"]).is_err(),
            "needs --tap or --switch"
        );
        assert!(parse(&["--tap", "t"]).is_err(), "needs --socket");
        assert!(parse(&["--socket", "/s", "--tap", "t", "--switch"]).is_err());
        let e = parse(&["--socket", "/a", "--socket", "/b", "--tap", "t"]).unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        let e = parse(&["--socket", "/s", "--tap", "t", "--num-queue-pairs", "0"]).unwrap_err();
        assert!(e.contains("--num-queue-pairs 0"), "{e}");
        assert!(parse(&["--socket", "/s", "--tap", "t", "--num-queue-pairs", "17"]).is_err());
        assert!(parse(&["--socket", "/s", "--tap", "t", "--queue-size", "100"]).is_err());
        assert!(parse(&["--socket", "/s", "--tap", "t", "--mtu", "67"]).is_err());
        assert!(parse(&["--socket", "/s", "--tap", "t", "--mac", "01:00:5e:00:00:01"]).is_err());
        assert!(parse(&["--socket", "/s", "--tap", "t", "--mac", "nonsense"]).is_err());
        let e = parse(&["--switch", "--socket", "/a", "--socket", "/a"]).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        assert!(parse(&["--fd", "3", "--socket", "/s", "--tap", "t"]).is_err());
        assert!(parse(&["--fd=-1", "--tap", "t"])
            .unwrap_err()
            .contains("--fd -1"));
        let e = parse(&["--socket", "/s", "--tap", "t", "--poll-us", "2001"]).unwrap_err();
        assert!(e.contains("--poll-us 2001"), "{e}");
        assert!(parse(&["--socket", "/s", "--tap", "t", "--poll-us", "-1"]).is_err());
    }

    #[test]
    fn worker_threads_default_to_one_per_pair_up_to_the_cpus() {
        let pairs = ["--switch", "--socket", "/a", "--num-queue-pairs", "4"];
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(
            usize::from(parse(&pairs).unwrap().worker_threads),
            cpus.min(4)
        );
        let c = parse(&[&pairs[..], &["--worker-threads", "1"]].concat()).unwrap();
        assert_eq!((c.queue_pairs, c.worker_threads), (4, 1));
        let c = parse(&["--socket", "/s", "--tap", "t", "--num-queue-pairs", "2"]).unwrap();
        assert_eq!(usize::from(c.worker_threads), cpus.min(2));
        let e = parse(&[&pairs[..], &["--worker-threads", "0"]].concat()).unwrap_err();
        assert!(
            e.contains("--worker-threads 0 is out of range: give 1 to 4"),
            "{e}"
        );
        let e = parse(&["--switch", "--socket", "/a", "--worker-threads", "2"]).unwrap_err();
        assert!(
            e.contains("--worker-threads 2 is out of range: give 1 to 1"),
            "{e}"
        );
        assert!(parse(&[&pairs[..], &["--worker-threads", "-1"]].concat()).is_err());
        let store = [
            "--xenstore",
            "/xs",
            "--run-dir",
            "/r",
            "--worker-threads",
            "1",
        ];
        assert!(parse(&store).is_err());
    }

    #[test]
    fn busy_poll_window() {
        let c = parse(&["--socket", "/s", "--tap", "t", "--poll-us", "0"]).unwrap();
        assert_eq!(c.poll, Duration::ZERO);
        let c = parse(&["--switch", "--socket", "/a", "--poll-us", "2000"]).unwrap();
        assert_eq!(c.poll, Duration::from_millis(2));
        let cli = Cli::try_parse_from([
            "backend-net",
            "--xenstore",
            "/xs",
            "--run-dir",
            "/r",
            "--poll-us",
            "20",
        ])
        .unwrap();
        assert_eq!(cli.store_config().unwrap().poll, Duration::from_micros(20));
    }

    #[test]
    fn inherited_socket_and_capabilities() {
        let c = parse(&["--fd", "3", "--tap", "tap0"]).unwrap();
        assert_eq!(c.sockets, vec![SocketSource::Fd(3)]);
        let cli = Cli::try_parse_from(["backend-net", "--print-capabilities"]).unwrap();
        assert!(cli.print_capabilities);
    }
}
