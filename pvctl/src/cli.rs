//! The command line (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use xenbus::Mac;

/// pvio's toolstack: domains and their devices in xenstore-lite.
#[derive(Debug, Parser)]
#[command(name = "pvctl", version)]
pub struct Cli {
    /// The store's socket (default: as libxenstore, `XENSTORED_PATH`, then
    /// `$XENSTORED_RUNDIR/socket`, then /var/run/xenstored/socket).
    #[arg(long, global = true)]
    pub xenstore: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Domains.
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Virtual disks (vbd).
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Virtual NICs (vif).
    #[command(subcommand)]
    Nic(NicCommand),
    /// Domains, their devices and each side's state.
    List,
}

/// `pvctl domain ...`.
#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Allocates a domain id and writes the domain's nodes; prints the domain id.
    Create(CreateArgs),
    /// Detaches every device, releases the domain from the store and removes its nodes.
    Destroy {
        /// The domain.
        domid: u32,
        /// Seconds to wait for each back end to reach Closed.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
}

/// Options of `pvctl domain create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Domain name (unique).
    #[arg(long)]
    pub name: String,
    /// Memory in MiB.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    pub mem: u32,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=128))]
    pub vcpus: u32,
    /// The guest payload (kernel or pvio guest image) the VMM boots.
    #[arg(long)]
    pub guest: PathBuf,
    /// Guest frame of the domain's xenstore ring page: introduce the domain to the store
    /// (XS_INTRODUCE) with it; needs `--xenstore-evtchn`.
    #[arg(long, requires = "xenstore_evtchn")]
    pub xenstore_gfn: Option<u64>,
    /// Event channel port of the domain's xenstore ring.
    #[arg(long, requires = "xenstore_gfn")]
    pub xenstore_evtchn: Option<u32>,
}

/// Options shared by the attach commands.
#[derive(Debug, Args)]
pub struct AttachCommon {
    /// The guest domain.
    pub domid: u32,
    /// Device number (default: the lowest free one).
    #[arg(long)]
    pub devid: Option<u32>,
}

/// `pvctl disk ...`.
#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Adds a virtio-blk disk served by backend-blk; prints the device number.
    Attach {
        /// Domain and device number.
        #[command(flatten)]
        common: AttachCommon,
        /// Raw image file or block device.
        #[arg(long)]
        image: PathBuf,
        /// Read-only disk.
        #[arg(long)]
        readonly: bool,
        /// Virtqueues.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        queues: u16,
    },
    /// Asks the back end to close the disk, waits for Closed, removes its nodes.
    Detach(DetachArgs),
}

/// `pvctl nic ...`.
#[derive(Debug, Subcommand)]
pub enum NicCommand {
    /// Adds a virtio-net NIC served by backend-net; prints the device number.
    Attach {
        /// Domain and device number.
        #[command(flatten)]
        common: AttachCommon,
        /// MAC address (default 00:16:3e, then the domid and devid).
        #[arg(long)]
        mac: Option<Mac>,
        /// Join this L2 switch (the default: `pvio0`).
        #[arg(long, conflicts_with = "tap")]
        switch: Option<String>,
        /// Bridge to this existing TAP device instead.
        #[arg(long)]
        tap: Option<String>,
        /// Queue pairs.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        queue_pairs: u16,
        /// MTU in bytes.
        #[arg(long, default_value_t = xenbus::config::DEFAULT_MTU, value_parser = clap::value_parser!(u16).range(68..))]
        mtu: u16,
    },
    /// Asks the back end to close the NIC, waits for Closed, removes its nodes.
    Detach(DetachArgs),
}

/// Options of the detach commands.
#[derive(Debug, Args)]
pub struct DetachArgs {
    /// The guest domain.
    pub domid: u32,
    /// The device number.
    pub devid: u32,
    /// Seconds to wait for the back end to reach Closed (the nodes are removed either way).
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

/// The switch a NIC joins when neither `--switch` nor `--tap` is given.
pub const DEFAULT_SWITCH: &str = "pvio0";
