//! Command line of `backend-blk` and its validation into a [`Config`].
//!
//! The options follow the "Backend program conventions" of QEMU's
//! `docs/interop/vhost-user.rst` (`--socket-path`, `--fd`, `--print-capabilities`, and for
//! block back-ends `--blk-file` and `--read-only`), plus pvio's own spellings (`--socket`,
//! `--image`, `--readonly`) which are the documented contract of this binary.

use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
pub use vhost_daemon::listener::SocketSource;

/// Largest `--queue-size`: QEMU's `VIRTQUEUE_MAX_SIZE`, the most a vhost-user front-end asks for.
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// Largest `--num-queues`: one worker thread per queue, and vhost-user-backend describes the
/// queues of a thread with a 64-bit mask.
pub const MAX_NUM_QUEUES: u16 = 64;

/// Length of the virtio-blk device ID returned by VIRTIO_BLK_T_GET_ID (virtio 1.2 §5.2.6), bytes.
pub const SERIAL_BYTES: usize = 20;

/// Default busy-poll window of the queue threads, µs (`--poll-us`).
pub const DEFAULT_POLL_US: u32 = 0;

/// `backend-blk`: a vhost-user-blk back-end that serves a raw image file or a block device to a
/// vhost-user front-end (QEMU's vhost-user-blk-pci, cloud-hypervisor, ...) with io_uring.
#[derive(Debug, Parser)]
#[command(
    name = "backend-blk",
    version,
    about = "vhost-user-blk back-end: serves a raw image or block device over a unix socket \
             with io_uring",
    long_about = None,
    after_help = "The daemon never daemonizes. It serves one front-end at a time and, when it \
                  leaves, waits for the next one on the same socket. SIGTERM or SIGINT stop it \
                  cleanly: in-flight I/O completes, the image is synced, the socket is removed.\n\
                  Logging: RUST_LOG=debug|info|warn (default info)."
)]
pub struct Cli {
    /// Unix socket to create and listen on for the vhost-user front-end.
    #[arg(
        long,
        visible_alias = "socket-path",
        value_name = "PATH",
        required_unless_present_any = ["fd", "print_capabilities", "xenstore"],
        conflicts_with = "fd"
    )]
    pub socket: Option<PathBuf>,

    /// An already listening unix socket inherited from the launcher, instead of --socket.
    #[arg(long, value_name = "FDNUM")]
    pub fd: Option<RawFd>,

    /// Disk image to serve: a raw regular file or a block device.
    #[arg(
        long,
        visible_alias = "blk-file",
        value_name = "PATH",
        required_unless_present_any = ["print_capabilities", "xenstore"]
    )]
    pub image: Option<PathBuf>,

    /// Serve the image read-only (offers VIRTIO_BLK_F_RO; writes fail with VIRTIO_BLK_S_IOERR).
    #[arg(long, visible_alias = "read-only")]
    pub readonly: bool,

    /// Number of request queues, each served by its own thread and io_uring (1 to 64).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub num_queues: u16,

    /// Largest virtqueue size the front-end may set: a power of two from 1 to 1024.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub queue_size: u16,

    /// Open the image with O_DIRECT (falls back to buffered I/O, with a warning, where the file
    /// system has no O_DIRECT, e.g. tmpfs).
    #[arg(long, value_enum, value_name = "on|off", default_value_t = OnOff::On)]
    pub direct: OnOff,

    /// Busy-poll window in µs: after its last work a queue's thread keeps looking at the
    /// available ring and the I/O completions this long before it sleeps, so a request that
    /// comes meanwhile needs no kick and no wake-up (0 sleeps at once). It costs up to this
    /// much CPU time per idle period, measured as back-end CPU time per I/O in benches/README.md.
    #[arg(long, value_name = "US", default_value_t = DEFAULT_POLL_US)]
    pub poll_us: u32,

    /// Device ID returned to the driver by VIRTIO_BLK_T_GET_ID, truncated to 20 bytes
    /// (default: "pvio-" and a hash of the image path).
    #[arg(long, value_name = "STR")]
    pub serial: Option<String>,

    /// Store mode: serve every vbd that the toolstack writes into the XenStore at this
    /// socket, walking the XenBus handshake for each (instead of --socket/--image).
    #[arg(
        long,
        value_name = "PATH",
        requires = "run_dir",
        conflicts_with_all = ["socket", "fd", "image", "serial"]
    )]
    pub xenstore: Option<PathBuf>,

    /// Store mode: folder for the disks' vhost-user sockets (`vbd-<domid>-<devid>.sock`).
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,

    /// Print the back-end's capabilities as JSON (vhost-user.json, type "block") and exit.
    #[arg(long)]
    pub print_capabilities: bool,
}

/// An on/off switch on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Validated daemon configuration built from the [`Cli`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The vhost-user socket.
    pub socket: SocketSource,
    /// Image path (regular file or block device).
    pub image: PathBuf,
    /// Serve read-only.
    pub read_only: bool,
    /// Number of request queues, 1 to [`MAX_NUM_QUEUES`].
    pub num_queues: u16,
    /// Maximum virtqueue size, a power of two up to [`MAX_QUEUE_SIZE`].
    pub queue_size: u16,
    /// Ask for O_DIRECT.
    pub direct: bool,
    /// Busy-poll window of the queue threads, µs (0: none).
    pub poll_us: u32,
    /// GET_ID serial given by the user, already cut to [`SERIAL_BYTES`]; `None` for the default.
    pub serial: Option<Vec<u8>>,
}

/// A command line that parses but does not make sense.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `--num-queues` is 0 or above [`MAX_NUM_QUEUES`].
    #[error("--num-queues {0} is out of range: give 1 to {MAX_NUM_QUEUES}")]
    NumQueues(u16),
    /// `--queue-size` is not a power of two or is above [`MAX_QUEUE_SIZE`].
    #[error("--queue-size {0} is invalid: give a power of two from 1 to {MAX_QUEUE_SIZE}")]
    QueueSize(u16),
    /// `--fd` is negative.
    #[error("--fd {0} is not a file descriptor number")]
    Fd(RawFd),
    /// Neither `--socket` nor `--fd` was given.
    #[error("give --socket PATH or --fd FDNUM")]
    NoSocket,
    /// No `--image` was given.
    #[error("give --image PATH")]
    NoImage,
    /// `--run-dir` without `--xenstore`.
    #[error("--run-dir is for store mode: give --xenstore PATH too")]
    RunDirWithoutStore,
}

impl Cli {
    /// The store-mode configuration, when `--xenstore` was given.
    pub fn store_config(&self) -> Option<crate::store::StoreConfig> {
        Some(crate::store::StoreConfig {
            xenstore: self.xenstore.clone()?,
            run_dir: self.run_dir.clone()?,
            queue_size: self.queue_size,
            direct: self.direct == OnOff::On,
            poll_us: self.poll_us,
        })
    }

    /// Checks the parsed arguments and builds the [`Config`].
    ///
    /// # Errors
    /// [`ConfigError`] naming the first argument out of range.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        if self.run_dir.is_some() {
            return Err(ConfigError::RunDirWithoutStore);
        }
        if self.num_queues == 0 || self.num_queues > MAX_NUM_QUEUES {
            return Err(ConfigError::NumQueues(self.num_queues));
        }
        if !self.queue_size.is_power_of_two() || self.queue_size > MAX_QUEUE_SIZE {
            return Err(ConfigError::QueueSize(self.queue_size));
        }
        let socket = match (self.socket, self.fd) {
            (Some(path), _) => SocketSource::Path(path),
            (None, Some(fd)) if fd >= 0 => SocketSource::Fd(fd),
            (None, Some(fd)) => return Err(ConfigError::Fd(fd)),
            (None, None) => return Err(ConfigError::NoSocket),
        };
        let image = self.image.ok_or(ConfigError::NoImage)?;
        let serial = self.serial.map(|s| {
            let mut bytes = s.into_bytes();
            bytes.truncate(SERIAL_BYTES);
            bytes
        });
        Ok(Config {
            socket,
            image,
            read_only: self.readonly,
            num_queues: self.num_queues,
            queue_size: self.queue_size,
            direct: self.direct == OnOff::On,
            poll_us: self.poll_us,
            serial,
        })
    }
}

/// The `--print-capabilities` document: `{"type": "block", "features": [...]}` with the block
/// features of QEMU's `docs/interop/vhost-user.json` this binary supports.
pub fn capabilities_json() -> String {
    vhost_daemon::capabilities::json(CAPABILITIES.0, CAPABILITIES.1)
}

/// The `--print-capabilities` type and features.
pub const CAPABILITIES: (&str, &[&str]) = ("block", &["read-only", "blk-file"]);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("backend-blk").chain(args.iter().copied()))
            .map_err(|e| e.kind().to_string())?;
        cli.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn store_mode_takes_the_store_and_a_run_dir_only() {
        let cli = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("backend-blk").chain(args.iter().copied()))
        };
        let store = cli(&[
            "--xenstore",
            "/xs",
            "--run-dir",
            "/run/pvio",
            "--direct",
            "off",
        ])
        .unwrap()
        .store_config()
        .unwrap();
        assert_eq!(store.xenstore, PathBuf::from("/xs"));
        assert_eq!(store.run_dir, PathBuf::from("/run/pvio"));
        assert!(!store.direct);
        assert!(cli(&["--xenstore", "/xs"]).is_err());
        assert!(cli(&["--xenstore", "/xs", "--run-dir", "/r", "--image", "/i"]).is_err());
        let stray = cli(&["--socket", "/s", "--image", "/i", "--run-dir", "/r"]).unwrap();
        assert_eq!(stray.into_config(), Err(ConfigError::RunDirWithoutStore));
        let single = cli(&["--socket", "/s", "--image", "/i"]).unwrap();
        assert!(single.store_config().is_none());
    }

    #[test]
    fn defaults() {
        let c = parse(&["--socket", "/s", "--image", "/i"]).unwrap();
        assert_eq!(
            c,
            Config {
                socket: SocketSource::Path("/s".into()),
                image: "/i".into(),
                read_only: false,
                num_queues: 1,
                queue_size: 256,
                direct: true,
                poll_us: DEFAULT_POLL_US,
                serial: None,
            }
        );
    }

    #[test]
    fn convention_aliases() {
        let c = parse(&["--socket-path=/s", "--blk-file=/i", "--read-only"]).unwrap();
        assert_eq!(c.socket, SocketSource::Path("/s".into()));
        assert_eq!(c.image, PathBuf::from("/i"));
        assert!(c.read_only);
        let c = parse(&["--fd", "3", "--image", "/i", "--direct", "off"]).unwrap();
        assert_eq!(c.socket, SocketSource::Fd(3));
        assert!(!c.direct);
        let c = parse(&["--fd", "3", "--image", "/i", "--poll-us", "50"]).unwrap();
        assert_eq!(c.poll_us, 50);
        assert!(parse(&["--fd", "3", "--image", "/i", "--poll-us", "-1"]).is_err());
    }

    #[test]
    fn ranges() {
        let base = ["--socket", "/s", "--image", "/i"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            parse(&v)
        };
        assert!(with(&["--num-queues", "0"])
            .unwrap_err()
            .contains("--num-queues 0"));
        assert!(with(&["--num-queues", "65"]).is_err());
        assert_eq!(with(&["--num-queues", "64"]).unwrap().num_queues, 64);
        assert!(with(&["--queue-size", "100"])
            .unwrap_err()
            .contains("power of two"));
        assert!(with(&["--queue-size", "2048"]).is_err());
        assert!(with(&["--queue-size", "0"]).is_err());
        assert_eq!(with(&["--queue-size", "1024"]).unwrap().queue_size, 1024);
        assert!(
            with(&["--fd", "3"]).is_err(),
            "--fd conflicts with --socket"
        );
    }

    #[test]
    fn serial_is_cut_to_20_bytes() {
        let c = parse(&[
            "--socket",
            "/s",
            "--image",
            "/i",
            "--serial",
            "0123456789abcdefghijXYZ",
        ]);
        assert_eq!(c.unwrap().serial.unwrap(), b"0123456789abcdefghij");
    }

    #[test]
    fn socket_and_image_are_required() {
        assert!(parse(&["--image", "/i"]).is_err());
        assert!(parse(&["--socket", "/s"]).is_err());
        let cli = Cli::try_parse_from(["backend-blk", "--print-capabilities"]).unwrap();
        assert!(cli.print_capabilities);
    }

    #[test]
    fn capabilities_document() {
        let v: serde_json::Value = serde_json::from_str(&capabilities_json()).unwrap();
        assert_eq!(v["type"], "block");
        assert_eq!(v["features"], serde_json::json!(["read-only", "blk-file"]));
    }
}
