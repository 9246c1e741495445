//! Real Linux guests (the host's Debian kernel, busybox, the stock virtio_net driver) under
//! QEMU on `-netdev vhost-user` NICs served by backend-net.
//!
//! - TAP mode: the TAP lives in a network namespace this test creates; the guest gets an
//!   address in the namespace's subnet, pings the namespace's address, and moves 4 MiB each way
//!   over TCP (busybox nc) to and from listeners inside the namespace, checked by SHA-256.
//! - Switch mode: two guests on one backend-net ping each other and one sends the other 4 MiB
//!   over TCP, checked by SHA-256.
//!
//! No address outside the test's own namespace (TAP mode) or the guests' own isolated segment
//! (switch mode) is used. QEMU 7.2 under TCG crashes with MSI-X on a vhost-user netdev, so the
//! NICs use legacy interrupts (`vectors=0`, see shared/REAL-CLIENTS.md). Needs root (network
//! namespaces, TAP devices).

mod net_support;

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use net_support::{counter, drops, NetDaemon, Netns};
use pvio_tests::console::Console;
use pvio_tests::guest::GuestKit;
use pvio_tests::initramfs::net_modules;
use pvio_tests::qemu::NetNic;
use pvio_tests::OrPanic;

/// Bytes moved each way.
const DATA_MIB: u32 = 4;

/// Guest shell: bring eth0 up with `addr` (CIDR).
fn guest_ip(addr: &str) -> String {
    format!("ip link set eth0 up\nip addr add {addr} dev eth0\n")
}

/// Guest shell: ping `peer` 5 times, report the replies as `ping-received`, and stop the
/// script (failing) if none came back.
fn guest_ping(peer: &str) -> String {
    format!(
        "ping -c 5 -W 5 {peer} > /tmp/ping || true\ncat /tmp/ping\n\
         echo \"@@pvio ping-received $(grep -o '[0-9]* packets received' /tmp/ping | cut -d' ' -f1)\"\n\
         grep -q ' 0 packets received' /tmp/ping && exit 1\n"
    )
}

/// Guest shell: wait (up to about two minutes) until `peer` answers a ping; the other guest may
/// still be booting.
fn wait_for_peer(peer: &str) -> String {
    format!("i=0; until ping -c 1 -W 1 {peer} > /dev/null; do i=$((i+1)); [ $i -lt 120 ]; done\n")
}

/// Guest shell: make /tmp/up of random data and report its digest as `up`.
fn guest_make_data() -> String {
    format!(
        "dd if=/dev/urandom of=/tmp/up bs=1M count={DATA_MIB} 2>/dev/null\n\
         echo \"@@pvio up $(sha256sum < /tmp/up | cut -d' ' -f1)\"\n"
    )
}

fn sha256(path: &Path) -> String {
    let out = net_support::run("sha256sum", &[path.to_str().expect("utf-8 path")]);
    out.split_whitespace().next().expect("a digest").to_string()
}

fn check_ping(console: &Console) {
    let received: u32 = console
        .marker("ping-received")
        .or_panic("ping")
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        received >= 4,
        "only {received} of 5 pings answered:\n{}",
        console.text()
    );
}

/// A `busybox nc -l` inside the test's namespace, killed on drop (also when the test fails).
struct NcListener(Child);

impl NcListener {
    /// Waits for it to end (its peer closed the connection); panics if it failed.
    fn finish(mut self) {
        let status = self.0.wait().expect("wait for busybox nc");
        assert!(status.success(), "busybox nc exited with {status}");
    }
}

impl Drop for NcListener {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `busybox nc -l -p PORT` inside `ns`, writing what it receives to `out` (stdin stays open,
/// so it ends when the peer closes) or sending file `input` and closing.
fn nc_listen(ns: &Netns, port: u16, out: Option<&Path>, input: Option<&Path>) -> NcListener {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        ns.name(),
        "busybox",
        "nc",
        "-l",
        "-p",
        &port.to_string(),
    ]);
    match (out, input) {
        (Some(o), _) => cmd
            .stdout(File::create(o).expect("create"))
            .stdin(Stdio::piped()),
        (None, Some(i)) => cmd
            .stdin(File::open(i).expect("open"))
            .stdout(Stdio::null()),
        (None, None) => unreachable!("a listener either receives or sends"),
    };
    NcListener(cmd.spawn().expect("start busybox nc in the namespace"))
}

/// Waits until something listens on TCP `port` inside `ns`.
fn wait_tcp_listening(ns: &Netns, port: u16) {
    net_support::wait_for(
        &format!("nc to listen on {port}"),
        net_support::PROCESS_DEADLINE,
        || {
            // IPv4 or IPv6 (busybox listens dual-stack): the local_address column ends in
            // :HEX_PORT and state 0A is LISTEN.
            let out = ns.exec("cat", &["/proc/net/tcp", "/proc/net/tcp6"]);
            let port = format!(":{port:04X}");
            out.lines()
                .any(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    cols.len() > 3 && cols[1].ends_with(&port) && cols[3] == "0A"
                })
                .then_some(())
        },
    );
}

/// Boots a guest; on failure the panic shows the daemon's counters and log next to the console.
fn boot(
    kit: &GuestKit,
    script: &str,
    daemon: &NetDaemon,
    configure: impl FnOnce(&mut pvio_tests::qemu::Guest),
) -> pvio_tests::qemu::GuestRun {
    kit.boot(script, configure).unwrap_or_else(|e| {
        let ports: Vec<String> = (0..daemon.sockets().len())
            .map(|i| daemon.port(i).to_string())
            .collect();
        panic!(
            "guest failed: {e}\nbackend-net counters: {}\nbackend-net log:\n{}",
            ports.join("\n"),
            daemon.log()
        )
    })
}

#[test]
fn guest_reaches_a_tap_in_a_namespace() {
    let kit = GuestKit::new("net-qemu-tap", &net_modules()).or_panic("guest kit");
    let ns = Netns::new();
    ns.add_tap("tap0", false, "10.77.0.1/24");
    let daemon = NetDaemon::tap(kit.dir().path(), &ns, "tap0", &[]);

    let down = kit.dir().join("down");
    net_support::run(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", down.display()),
            "bs=1M",
            &format!("count={DATA_MIB}"),
        ],
    );
    let received = kit.dir().join("received");
    let up_listener = nc_listen(&ns, 5001, Some(&received), None);
    let down_listener = nc_listen(&ns, 5002, None, Some(&down));
    wait_tcp_listening(&ns, 5001);
    wait_tcp_listening(&ns, 5002);

    let script = [
        guest_ip("10.77.0.2/24"),
        guest_ping("10.77.0.1"),
        guest_make_data(),
        "nc 10.77.0.1 5001 < /tmp/up\n".to_string(),
        "nc 10.77.0.1 5002 > /tmp/down\n".to_string(),
        "echo \"@@pvio down $(sha256sum < /tmp/down | cut -d' ' -f1)\"\n".to_string(),
    ]
    .concat();
    let socket = daemon.sockets()[0].clone();
    let run = boot(&kit, &script, &daemon, |g| {
        g.nics = vec![NetNic {
            socket,
            mac: "52:54:00:77:00:02".into(),
            queue_pairs: 1,
        }];
    });
    check_ping(&run.console);
    up_listener.finish();
    down_listener.finish();
    assert_eq!(
        run.console.marker("up").or_panic("up"),
        sha256(&received),
        "guest → namespace data"
    );
    assert_eq!(
        run.console.marker("down").or_panic("down"),
        sha256(&down),
        "namespace → guest data"
    );

    let p = daemon.port(0);
    let mib = u64::from(DATA_MIB) << 20;
    assert!(
        counter(&p, "tx_bytes") > mib && counter(&p, "rx_bytes") > mib,
        "{p}"
    );
    for reason in [
        "tx_bad_header",
        "tx_bad_chain",
        "tx_too_big",
        "tx_tap_error",
        "rx_bad_chain",
    ] {
        assert_eq!(drops(&p, reason), 0, "{reason}: {p}");
    }
    println!("TAP guest: {}s wall; counters {p}", run.wall.as_secs_f32());
    daemon.stop();
}

#[test]
fn two_guests_talk_through_the_switch() {
    let kit_a = GuestKit::new("net-qemu-sw-a", &net_modules()).or_panic("guest kit");
    let kit_b = GuestKit::new("net-qemu-sw-b", &net_modules()).or_panic("guest kit");
    let daemon = NetDaemon::switch(kit_a.dir().path(), 2, &[]);
    let (sock_a, sock_b) = (daemon.sockets()[0].clone(), daemon.sockets()[1].clone());

    // B receives: it listens, reports what it got; A waits for B to answer pings, then sends.
    let script_b = [
        guest_ip("10.78.0.2/24"),
        wait_for_peer("10.78.0.1"),
        guest_ping("10.78.0.1"),
        "nc -l -p 5001 > /tmp/got\n".to_string(),
        "echo \"@@pvio got $(sha256sum < /tmp/got | cut -d' ' -f1)\"\n".to_string(),
    ]
    .concat();
    let script_a = [
        guest_ip("10.78.0.1/24"),
        guest_make_data(),
        wait_for_peer("10.78.0.2"),
        guest_ping("10.78.0.2"),
        "i=0; until nc 10.78.0.2 5001 < /tmp/up; do i=$((i+1)); [ $i -lt 50 ]; sleep 1; done\n"
            .to_string(),
    ]
    .concat();
    let guest_b = std::thread::spawn(move || {
        kit_b
            .boot(&script_b, |g| {
                g.nics = vec![NetNic {
                    socket: sock_b,
                    mac: "52:54:00:78:00:02".into(),
                    queue_pairs: 1,
                }];
            })
            .or_panic("guest B")
    });
    let run_a = kit_a
        .boot(&script_a, |g| {
            g.nics = vec![NetNic {
                socket: sock_a,
                mac: "52:54:00:78:00:01".into(),
                queue_pairs: 1,
            }];
        })
        .or_panic("guest A");
    let run_b = guest_b.join().expect("guest B thread");
    check_ping(&run_a.console);
    check_ping(&run_b.console);
    assert_eq!(
        run_a.console.marker("up").or_panic("up"),
        run_b.console.marker("got").or_panic("got"),
        "A → B data"
    );
    let (pa, pb) = (daemon.port(0), daemon.port(1));
    let mib = u64::from(DATA_MIB) << 20;
    assert!(
        counter(&pa, "tx_bytes") > mib && counter(&pb, "rx_bytes") > mib,
        "{pa}\n{pb}"
    );
    for p in [&pa, &pb] {
        for reason in [
            "tx_bad_header",
            "tx_bad_chain",
            "tx_too_big",
            "tx_offload",
            "rx_bad_chain",
            "rx_too_big",
        ] {
            assert_eq!(drops(p, reason), 0, "{reason}: {p}");
        }
    }
    println!(
        "switch guests: A {}s, B {}s",
        run_a.wall.as_secs_f32(),
        run_b.wall.as_secs_f32()
    );
    daemon.stop();
}
