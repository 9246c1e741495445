//! `pvio-capture-guest`: boots the tests' Linux guest (QEMU, 512 MiB of shared memfd RAM) with
//! one `vhost-user-blk-pci` disk and one `-netdev vhost-user` NIC on the given sockets, writes
//! and reads the disk, sends a few frames on the NIC, and powers off. `fuzz/capture-vhost-seeds.sh`
//! puts its capturing proxy on those sockets to record real front-end traffic as fuzz seeds.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pvio_tests::guest::GuestKit;
use pvio_tests::initramfs::net_modules;
use pvio_tests::qemu::{BlkDisk, NetNic};

/// Boots one guest on a vhost-user-blk disk and a vhost-user-net NIC.
#[derive(Debug, Parser)]
struct Args {
    /// The vhost-user-blk back-end's socket (listening).
    #[arg(long)]
    blk_socket: PathBuf,
    /// The vhost-user-net back-end's socket (listening).
    #[arg(long)]
    net_socket: PathBuf,
}

/// The guest's script: O_DIRECT writes and reads, a flush, then ARP and ICMP frames.
const SCRIPT: &str = "\
dd if=/dev/urandom of=/dev/vda bs=4k count=8 oflag=direct 2>/dev/null
dd if=/dev/vda of=/dev/null bs=64k count=4 iflag=direct 2>/dev/null
sync
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ping -c 3 -W 1 10.0.2.2 > /dev/null || true
";

fn main() -> ExitCode {
    let args = Args::parse();
    let run = GuestKit::new("capture", &net_modules()).and_then(|kit| {
        kit.boot(SCRIPT, |g| {
            g.memory_mib = 512;
            g.disks.push(BlkDisk {
                socket: args.blk_socket.clone(),
                num_queues: 1,
                reconnect: false,
            });
            g.nics.push(NetNic {
                socket: args.net_socket.clone(),
                mac: "52:54:00:12:34:56".into(),
                queue_pairs: 1,
            });
        })
    });
    match run {
        Ok(run) => {
            println!("guest ran for {:.1} s", run.wall.as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pvio-capture-guest: {e}");
            ExitCode::FAILURE
        }
    }
}
