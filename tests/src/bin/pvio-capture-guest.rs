//! `pvio-capture-guest`: boots the tests' Linux guest (QEMU, 512 MiB of shared memfd RAM) with
//! one `vhost-user-blk-pci` disk and one `-netdev vhost-user` NIC on the given sockets, writes
//! and reads the disk, sends a few frames on the NIC, and powers off. `fuzz/capture-vhost-seeds.sh`
//! puts its capturing proxy on those sockets to record real front-end traffic as fuzz seeds.
//!
//! With `--mock-net-socket` it plays pvio's mock front-end (frontend-guest) on a backend-net
//! socket instead, and sends the control commands a Linux driver sends
//! (QEMU keeps a vhost-user NIC's control queue to itself, so its traffic has none).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use frontend_guest::host::net::{NetDevice, NetOptions};
use frontend_guest::net::{
    mac_table, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, VIRTIO_NET_CTRL_MAC_TABLE_SET,
    VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_ALLMULTI, VIRTIO_NET_CTRL_RX_NOBCAST,
    VIRTIO_NET_CTRL_RX_PROMISC,
};
use pvio_tests::guest::GuestKit;
use pvio_tests::initramfs::net_modules;
use pvio_tests::qemu::{BlkDisk, NetNic};

/// Boots one guest on a vhost-user-blk disk and a vhost-user-net NIC, or plays the mock
/// front-end on a NIC.
#[derive(Debug, Parser)]
struct Args {
    /// The vhost-user-blk back-end's socket (listening).
    #[arg(
        long,
        requires = "net_socket",
        required_unless_present = "mock_net_socket"
    )]
    blk_socket: Option<PathBuf>,
    /// The vhost-user-net back-end's socket (listening).
    #[arg(long, requires = "blk_socket")]
    net_socket: Option<PathBuf>,
    /// Instead of a guest: the mock front-end on this backend-net socket, sending control
    /// commands.
    #[arg(long, conflicts_with_all = ["blk_socket", "net_socket"])]
    mock_net_socket: Option<PathBuf>,
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

/// The mock front-end's control commands: receive modes, MAC tables and address.
fn mock_control(socket: &Path) -> Result<(), String> {
    let mut nic = NetDevice::connect(socket, &NetOptions::default()).map_err(|e| e.to_string())?;
    let mut tables = vec![0u8; 64];
    let n = mac_table(&[[0x52, 0x54, 0, 0x99, 0, 2]], &mut tables).ok_or("MAC table")?;
    let m = mac_table(&[[0x33, 0x33, 0, 0, 0, 1]], &mut tables[n..]).ok_or("MAC table")?;
    tables.truncate(n + m);
    let commands: [(u8, u8, &[u8]); 6] = [
        (VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, &[1]),
        (VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_ALLMULTI, &[1]),
        (VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_NOBCAST, &[0]),
        (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, &tables),
        (
            VIRTIO_NET_CTRL_MAC,
            VIRTIO_NET_CTRL_MAC_ADDR_SET,
            &[0x52, 0x54, 0, 0x12, 0x34, 0x57],
        ),
        (VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, &[0]),
    ];
    for (class, command, data) in commands {
        nic.ctrl(class, command, data).map_err(|e| e.to_string())?;
        // The capturing proxy polls the rings every 2 ms: let it read this chain before the
        // next command reuses its descriptors.
        std::thread::sleep(Duration::from_millis(50));
    }
    nic.disconnect().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(socket) = &args.mock_net_socket {
        return match mock_control(socket) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pvio-capture-guest: mock front-end: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let (Some(blk_socket), Some(net_socket)) = (args.blk_socket, args.net_socket) else {
        eprintln!("pvio-capture-guest: give --blk-socket and --net-socket");
        return ExitCode::FAILURE;
    };
    let run = GuestKit::new("capture", &net_modules()).and_then(|kit| {
        kit.boot(SCRIPT, |g| {
            g.memory_mib = 512;
            g.disks.push(BlkDisk {
                socket: blk_socket.clone(),
                num_queues: 1,
                reconnect: false,
            });
            g.nics.push(NetNic {
                socket: net_socket.clone(),
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
