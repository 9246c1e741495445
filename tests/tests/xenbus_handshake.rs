//! The whole XenBus handshake without a VM: xenstore-lite, `backend-blk --xenstore` (store
//! mode: one daemon for every disk), pvctl as the toolstack and the mock front end playing
//! guest domain 1 over its own store connection. Attach, verified I/O, a bad image next to a
//! good disk, hot-unplug while connected, re-plug, destroy with nothing left behind; a
//! back-end daemon killed and restarted serves its disks again; a TAP NIC through
//! `backend-net --xenstore` in a network namespace; two domains' NICs on one switch of
//! `backend-net --xenstore`, coming and going.

mod net_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use frontend_guest::net::NetHdr;
use net_support::{frames, Netns};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pvio_tests::backend::is_listening;
use pvio_tests::bins::workspace_bin;
use pvio_tests::procstat::{fds_and_threads, settle_at};
use pvio_tests::tmp::TempDir;
use pvio_tests::xenstore::XenstoreDaemon;
use xenbus::mock_guest::{MockBlkFrontend, MockError, MockNetFrontend};
use xenbus::{DeviceConfig, DeviceId, DeviceKind, VbdConfig, XenbusError};

/// `pvctl domain create` of the guest the tests use, domain 1.
const CREATE_G1: &str = "domain create --name g1 --mem 64 --guest /bin/true";

/// Generous: the machine is a loaded 2-core CI runner.
const STEP: Duration = Duration::from_secs(30);
const DOMID: u32 = 1;
/// The second guest domain (switch tests).
const DOMID2: u32 = 2;

/// A back-end daemon (`backend-blk` or `backend-net`) in store mode; SIGTERM and wait on drop.
struct ManagerProcess(Child);

/// Makes the command that starts the daemon (`program` directly, or inside a namespace).
type Launcher = Box<dyn Fn() -> Command>;

impl ManagerProcess {
    fn start(launch: &Launcher, store: &XenstoreDaemon, run_dir: &Path, log: &Path) -> Self {
        let log = std::fs::File::create(log).unwrap();
        let child = launch()
            .arg("--xenstore")
            .arg(store.socket())
            .arg("--run-dir")
            .arg(run_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        ManagerProcess(child)
    }

    /// SIGKILL: no clean stop, the socket file stays behind.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    fn stop(&mut self) -> bool {
        let pid = Pid::from_raw(self.0.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STEP;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        false
    }
}

impl ManagerProcess {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ManagerProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

struct Stack {
    dir: TempDir,
    store: XenstoreDaemon,
    launch: Launcher,
    manager: ManagerProcess,
}

impl Stack {
    /// xenstore-lite and backend-blk in store mode.
    fn start() -> Self {
        let blk = workspace_bin("backend-blk", "backend-blk");
        Self::start_with(Box::new(move || Command::new(&blk)))
    }

    /// xenstore-lite and the back-end daemon that `launch` starts, in store mode.
    fn start_with(launch: Launcher) -> Self {
        let dir = TempDir::new("xenbus-handshake").unwrap();
        std::fs::create_dir(dir.join("run")).unwrap();
        let store = XenstoreDaemon::start(dir.path(), &[DOMID, DOMID2]);
        let log = dir.join("manager.log");
        let manager = ManagerProcess::start(&launch, &store, &dir.join("run"), &log);
        Stack {
            dir,
            store,
            launch,
            manager,
        }
    }

    fn pvctl(&self, args: &[&str]) -> String {
        let out = self.store.pvctl(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "pvctl {args:?}: {err}\n{}",
            self.log()
        );
        assert!(err.is_empty(), "pvctl {args:?} warned: {err}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the back-end daemon and starts a new one on the same store and folder.
    fn restart_manager(&mut self) {
        self.manager.kill();
        let log = self.dir.join("manager-2.log");
        let run = self.dir.join("run");
        self.manager = ManagerProcess::start(&self.launch, &self.store, &run, &log);
    }

    /// `xenstore-ls -f` of `path` through Debian's tool (dom0).
    fn xenstore_ls(&self, path: &str) -> String {
        self.store.ls(path)
    }

    fn guest(&self, devid: u32) -> Result<MockBlkFrontend, MockError> {
        let dev = DeviceId::new(DeviceKind::Vbd, DOMID, devid);
        MockBlkFrontend::attach(self.store.guest_client(DOMID), dev, STEP)
    }

    fn nic_guest(&self, devid: u32) -> Result<MockNetFrontend, MockError> {
        self.nic_guest_of(DOMID, devid)
    }

    /// NIC `devid` of domain `domid`, connected through the handshake (panics if it fails).
    fn nic_guest_of(&self, domid: u32, devid: u32) -> Result<MockNetFrontend, MockError> {
        let dev = DeviceId::new(DeviceKind::Vif, domid, devid);
        MockNetFrontend::attach(self.store.guest_client(domid), dev, STEP)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("manager.log")).unwrap_or_default()
    }

    fn run_dir_entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.join("run"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sock"))
            .collect();
        v.sort();
        v
    }
}

fn image(dir: &TempDir, name: &str, mib: u64) -> String {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(mib << 20).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn attach_io_unplug_replug_destroy() {
    let mut s = Stack::start();
    let disk = image(&s.dir, "disk.raw", 4);
    s.pvctl(&words(CREATE_G1));
    assert_eq!(
        s.pvctl(&["disk", "attach", "1", "--image", &disk]).trim(),
        "0"
    );

    let mut guest = s.guest(0).unwrap_or_else(|e| panic!("{e}\n{}", s.log()));
    assert_eq!(guest.backend().number("sectors"), Some(4 << 11));
    guest.verified_io(0x5a).unwrap();
    let list = s.pvctl(&["list"]);
    let socket = s.dir.join("run").join("vbd-1-0.sock");
    let expected = format!(
        "  vbd 0  front Connected     back Connected     {disk}  socket {}\n",
        socket.display()
    );
    assert!(list.contains(&expected), "{list}");
    let ls = s.xenstore_ls("/local/domain");
    for line in [
        "/local/domain/0/backend/vbd/1/0/state = \"4\"",
        "/local/domain/1/device/vbd/0/state = \"4\"",
        "/local/domain/0/backend/vbd/1/0/sectors = \"8192\"",
        "/local/domain/0/backend/vbd/1/0/feature-flush-cache = \"1\"",
    ] {
        assert!(ls.lines().any(|l| l == line), "{line} not in\n{ls}");
    }

    // A disk whose image is missing fails alone: Closed with an error; disk 0 goes on.
    let mut dom0 = s.store.client();
    let bad = DeviceConfig::Vbd(VbdConfig {
        image: s.dir.join("missing.raw"),
        readonly: false,
        num_queues: 1,
    });
    xenbus::device::create(&mut dom0, &DeviceId::new(DeviceKind::Vbd, DOMID, 1), &bad).unwrap();
    match s.guest(1) {
        Err(MockError::Xenbus(XenbusError::BackendFailed { message, .. })) => {
            assert!(message.contains("cannot open image"), "{message}")
        }
        other => panic!("expected BackendFailed, got {other:?}"),
    }
    let list = s.pvctl(&["list"]);
    assert!(
        list.contains("vbd 1  front Initialising  back Closed"),
        "{list}"
    );
    assert!(list.contains("error: cannot open image"), "{list}");
    guest.verified_io(0x33).unwrap();
    s.pvctl(&["disk", "detach", "1", "1"]);

    // Hot-unplug while connected: the guest sees Closing, quiesces and closes.
    let unplug = std::thread::spawn(move || guest.wait_unplug().map(|()| guest));
    s.pvctl(&["disk", "detach", "1", "0"]);
    let guest = unplug.join().unwrap().unwrap();
    drop(guest);
    assert!(!is_listening(&socket));
    assert!(s.run_dir_entries().is_empty(), "{:?}", s.run_dir_entries());
    assert!(!s.pvctl(&["list"]).contains("vbd"));

    // Re-plug: the same image comes back with its data.
    assert_eq!(
        s.pvctl(&["disk", "attach", "1", "--image", &disk]).trim(),
        "0"
    );
    let mut guest = s.guest(0).unwrap_or_else(|e| panic!("{e}\n{}", s.log()));
    guest.check_data(0x33).unwrap();
    guest.verified_io(0x77).unwrap();
    let unplug = std::thread::spawn(move || guest.wait_unplug());
    s.pvctl(&["domain", "destroy", "1"]);
    unplug.join().unwrap().unwrap();
    assert_eq!(s.pvctl(&["list"]), "");
    assert!(!s.xenstore_ls("/local/domain").contains("/local/domain/1"));
    assert!(s.run_dir_entries().is_empty());
    assert!(s.manager.stop(), "manager exit\n{}", s.log());
}

#[test]
fn a_restarted_back_end_serves_its_devices_again() {
    let mut s = Stack::start();
    let disk = image(&s.dir, "disk.raw", 1);
    s.pvctl(&words(CREATE_G1));
    s.pvctl(&["disk", "attach", "1", "--image", &disk]);
    let mut guest = s.guest(0).unwrap_or_else(|e| panic!("{e}\n{}", s.log()));
    guest.verified_io(0x21).unwrap();

    // The daemon dies; the store keeps the device Connected, the socket file is stale.
    s.restart_manager();
    guest.reconnect().unwrap();
    guest.check_data(0x21).unwrap();
    guest.verified_io(0x42).unwrap();
    let list = s.pvctl(&["list"]);
    assert!(
        list.contains("front Connected     back Connected"),
        "{list}"
    );

    let unplug = std::thread::spawn(move || guest.wait_unplug());
    s.pvctl(&["domain", "destroy", "1"]);
    unplug.join().unwrap().unwrap();
    assert!(s.run_dir_entries().is_empty());
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// Waits until the daemon's counts stay the same for half a second.
fn settled(pid: u32) -> (usize, usize) {
    let mut last = fds_and_threads(pid);
    let deadline = Instant::now() + STEP;
    let mut stable = 0;
    while stable < 25 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let now = fds_and_threads(pid);
        stable = if now == last { stable + 1 } else { 0 };
        last = now;
    }
    last
}

#[test]
fn attach_detach_cycles_leave_no_fds_or_threads_behind() {
    const CYCLES: usize = 20;
    let s = Stack::start();
    let disk = image(&s.dir, "disk.raw", 1);
    s.pvctl(&words(CREATE_G1));
    let pid = s.manager.pid();
    // The daemon with no device: its watch set up and idle.
    wait_for_log(&s, "serving the vbds");
    let idle = settled(pid);
    for cycle in 0..CYCLES {
        s.pvctl(&["disk", "attach", "1", "--image", &disk]);
        let mut guest = s.guest(0).unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        guest.verified_io(cycle as u8).unwrap();
        let unplug = std::thread::spawn(move || guest.wait_unplug());
        s.pvctl(&["disk", "detach", "1", "0"]);
        unplug.join().unwrap().unwrap();
    }
    let after = settle_at(pid, idle, STEP);
    assert_eq!(
        after,
        idle,
        "(fds, threads) after {CYCLES} disks\n{}",
        s.log()
    );
    assert!(s.run_dir_entries().is_empty());
}

fn wait_for_log(s: &Stack, what: &str) {
    let deadline = Instant::now() + STEP;
    while !s.log().contains(what) {
        assert!(Instant::now() < deadline, "no {what:?} in\n{}", s.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A NIC bridged to a TAP device in a network namespace, with backend-net in store mode
/// running there: the guest's ICMP echo request to the namespace is answered, also after
/// backend-net was killed and restarted; unplug and destroy leave nothing behind.
#[test]
fn a_tap_nic_through_the_handshake() {
    let ns = Arc::new(Netns::new());
    ns.add_tap("tap0", false, "10.79.0.1/24");
    let net = workspace_bin("backend-net", "backend-net");
    let launcher = ns.clone();
    let mut s = Stack::start_with(Box::new(move || launcher.command(&net)));
    s.pvctl(&words(CREATE_G1));
    s.pvctl(&["nic", "attach", "1", "--tap", "tap0"]);
    let mut guest = s
        .nic_guest(0)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log()));
    let list = s.pvctl(&["list"]);
    assert!(
        list.contains("vif 0  front Connected     back Connected     00:16:3e:00:01:00"),
        "{list}"
    );
    let me = [0x00, 0x16, 0x3e, 0x00, 0x01, 0x00];
    let tap_mac = ns.mac("tap0");
    ns.add_neighbour("10.79.0.2", me, "tap0");
    let echo = frames::icmp_echo(
        tap_mac,
        me,
        [10, 79, 0, 2],
        [10, 79, 0, 1],
        0x51,
        1,
        &[7; 64],
    );
    echo_is_answered(&mut guest, &echo, &s);

    // backend-net killed and restarted: it serves the NIC again, the guest reconnects.
    s.restart_manager();
    guest.reconnect().unwrap();
    echo_is_answered(&mut guest, &echo, &s);

    let unplug = std::thread::spawn(move || guest.wait_unplug());
    s.pvctl(&["domain", "destroy", "1"]);
    unplug.join().unwrap().unwrap();
    assert_eq!(s.pvctl(&["list"]), "");
    assert!(s.run_dir_entries().is_empty(), "{:?}", s.run_dir_entries());
}

/// Sends the ICMP echo request `echo` from the guest's NIC and waits for the reply carrying
/// its payload.
fn echo_is_answered(guest: &mut MockNetFrontend, echo: &[u8], s: &Stack) {
    let pair = guest.device().unwrap().pair(0).unwrap();
    pair.send(&NetHdr::default(), echo).unwrap();
    pair.wait_tx_done().unwrap();
    let deadline = Instant::now() + STEP;
    let reply = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no echo reply\n{}", s.log());
        match pair.recv(left).unwrap() {
            Some(r) if r.frame.len() >= 42 && r.frame[23] == 1 && r.frame[34] == 0 => break r,
            _ => {}
        }
    };
    assert_eq!(
        reply.frame[42..],
        echo[42..],
        "the reply carries the payload"
    );
}

/// The MACs pvctl gives NIC 0 of domains 1 and 2.
const MAC1: [u8; 6] = [0x00, 0x16, 0x3e, 0x00, 0x01, 0x00];
const MAC2: [u8; 6] = [0x00, 0x16, 0x3e, 0x00, 0x02, 0x00];
/// IEEE 802 local experimental ethertype: frames only the test's guests use.
const TEST_ETHERTYPE: u16 = 0x88b5;

/// Two domains' NICs on switch `sw0` of one backend-net in store mode (`pvctl nic attach
/// DOMID --switch sw0`): frames go both ways with their content; a spoofed source address is
/// dropped and counted (SIGUSR1's counters); three times, domain 2's NIC is unplugged while
/// domain 1's keeps transmitting to it, then plugged again and reached again; destroy leaves no
/// socket, node, fd or thread behind.
#[test]
fn nics_on_a_switch_come_and_go() {
    let net = workspace_bin("backend-net", "backend-net");
    let s = Stack::start_with(Box::new(move || Command::new(&net)));
    let pid = s.manager.pid();
    wait_for_log(&s, "serving the vifs");
    let idle = settled(pid);
    s.pvctl(&words(CREATE_G1));
    s.pvctl(&words("domain create --name g2 --mem 64 --guest /bin/true"));
    for domid in ["1", "2"] {
        assert_eq!(
            s.pvctl(&["nic", "attach", domid, "--switch", "sw0"]).trim(),
            "0"
        );
    }
    let mut g1 = s
        .nic_guest_of(DOMID, 0)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log()));
    let mut g2 = s
        .nic_guest_of(DOMID2, 0)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log()));
    let list = s.pvctl(&["list"]);
    for line in [
        "vif 0  front Connected     back Connected     00:16:3e:00:01:00",
        "vif 0  front Connected     back Connected     00:16:3e:00:02:00",
    ] {
        assert!(list.contains(line), "{line} not in\n{list}");
    }
    exchange(&mut g1, &mut g2, &s, 1);

    // Spoofing: another guest's address and one the toolstack did not give are refused.
    let spoofed = [
        test_frame([0xff; 6], MAC2, 0xee),
        test_frame(MAC2, [0x02, 0, 0, 0, 0, 0x99], 0xee),
    ];
    let p1 = g1.device().unwrap().pair(0).unwrap();
    for f in &spoofed {
        p1.send(&NetHdr::default(), f).unwrap();
    }
    p1.wait_tx_done().unwrap();
    let genuine = test_frame(MAC2, MAC1, 0x42);
    let others = delivered(&mut g1, &mut g2, &genuine, &s);
    assert!(
        !others.iter().any(|f| spoofed.contains(f)),
        "a spoofed frame got through"
    );
    let spoofs = wait_for_counter(&s, "sw0", "00:16:3e:00:01:00", "tx_spoofed", 2);
    assert_eq!(spoofs, 2, "each spoofed frame counted once");

    // A second vif with domain 2's MAC on the same switch fails alone.
    s.pvctl(&[
        "nic",
        "attach",
        "1",
        "--switch",
        "sw0",
        "--mac",
        "00:16:3e:00:02:00",
    ]);
    match s.nic_guest_of(DOMID, 1) {
        Err(MockError::Xenbus(XenbusError::BackendFailed { message, .. })) => {
            assert!(
                message.contains("already used by another port"),
                "{message}"
            )
        }
        other => panic!("expected BackendFailed, got {other:?}"),
    }
    s.pvctl(&["nic", "detach", "1", "1"]);
    exchange(&mut g1, &mut g2, &s, 0x10);

    // Domain 2's NIC goes while domain 1's goes on sending to it, and comes back as a new
    // port with the same pinned MAC, reached both ways; a few times.
    for round in 2..5 {
        unplug_while_sending(&s, &mut g1, g2);
        assert_eq!(s.run_dir_entries(), vec!["vif-1-0.sock"]);
        let list = s.pvctl(&["list"]);
        assert!(!list.contains("00:16:3e:00:02:00"), "{list}");
        assert_eq!(
            s.pvctl(&["nic", "attach", "2", "--switch", "sw0"]).trim(),
            "0"
        );
        g2 = s
            .nic_guest_of(DOMID2, 0)
            .unwrap_or_else(|e| panic!("{e}\n{}", s.log()));
        let stale = exchange(&mut g1, &mut g2, &s, round);
        assert!(
            stale.is_empty(),
            "frames sent to the removed port reached the new one: {stale:?}"
        );
    }

    let unplug1 = std::thread::spawn(move || g1.wait_unplug());
    let unplug2 = std::thread::spawn(move || g2.wait_unplug());
    s.pvctl(&["domain", "destroy", "1"]);
    s.pvctl(&["domain", "destroy", "2"]);
    unplug1.join().unwrap().unwrap();
    unplug2.join().unwrap().unwrap();
    assert_eq!(s.pvctl(&["list"]), "");
    let ls = s.xenstore_ls("/local/domain");
    for gone in [
        "backend/vif/1",
        "backend/vif/2",
        "/local/domain/1",
        "/local/domain/2",
    ] {
        assert!(!ls.contains(gone), "{gone} left in\n{ls}");
    }
    assert!(s.run_dir_entries().is_empty(), "{:?}", s.run_dir_entries());
    assert_eq!(
        settle_at(pid, idle, STEP),
        idle,
        "(fds, threads)\n{}",
        s.log()
    );
}

/// `pvctl nic detach 2 0` while `g1` keeps sending frames to `g2`, which sees the unplug.
fn unplug_while_sending(s: &Stack, g1: &mut MockNetFrontend, mut g2: MockNetFrontend) {
    let sending = AtomicBool::new(true);
    std::thread::scope(|scope| {
        let unplug = scope.spawn(|| g2.wait_unplug());
        let sender = scope.spawn(|| {
            let p1 = g1.device().unwrap().pair(0).unwrap();
            let mut sent = 0u32;
            while sending.load(Ordering::Relaxed) || sent < 10 {
                p1.send(&NetHdr::default(), &test_frame(MAC2, MAC1, sent as u8))
                    .unwrap();
                p1.wait_tx_done().unwrap();
                sent += 1;
            }
            sent
        });
        s.pvctl(&["nic", "detach", "2", "0"]);
        unplug.join().unwrap().unwrap();
        sending.store(false, Ordering::Relaxed);
        assert!(sender.join().unwrap() >= 10);
    });
}

/// A frame of the test's ethertype from `src` to `dst`, its payload marked by `mark`.
fn test_frame(dst: [u8; 6], src: [u8; 6], mark: u8) -> Vec<u8> {
    let payload: Vec<u8> = (0..100u8).map(|i| i ^ mark).collect();
    frames::ethernet(dst, src, TEST_ETHERTYPE, &payload)
}

/// Round `round` of frames from guest 1 to guest 2 and back, each checked by content;
/// returns the other frames guest 2 received first.
fn exchange(
    g1: &mut MockNetFrontend,
    g2: &mut MockNetFrontend,
    s: &Stack,
    round: u8,
) -> Vec<Vec<u8>> {
    let others = delivered(g1, g2, &test_frame(MAC2, MAC1, round), s);
    delivered(g2, g1, &test_frame(MAC1, MAC2, round.wrapping_add(0x80)), s);
    others
}

/// Sends `frame` from `from` until `to` receives it unchanged (frames sent before the
/// receiver's queue runs are dropped by the switch, so sending again is not a fixed sleep);
/// returns the other frames `to` received meanwhile (late copies of earlier rounds).
fn delivered(
    from: &mut MockNetFrontend,
    to: &mut MockNetFrontend,
    frame: &[u8],
    s: &Stack,
) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + STEP;
    let tx = from.device().unwrap().pair(0).unwrap();
    let rx = to.device().unwrap().pair(0).unwrap();
    let mut others = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "frame not delivered\n{}",
            s.log()
        );
        tx.send(&NetHdr::default(), frame).unwrap();
        tx.wait_tx_done().unwrap();
        while let Some(r) = rx.recv(Duration::from_secs(1)).unwrap() {
            if r.frame == frame {
                return others;
            }
            others.push(r.frame);
        }
    }
}

/// Asks backend-net for its counters (SIGUSR1, logged) until counter `drop` of the port with
/// `mac` on `switch` reaches `at_least`; returns it.
fn wait_for_counter(s: &Stack, switch: &str, mac: &str, drop: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + STEP;
    loop {
        let _ = kill(Pid::from_raw(s.manager.pid() as i32), Signal::SIGUSR1);
        std::thread::sleep(Duration::from_millis(100));
        let log = s.log();
        let last = log
            .lines()
            .rev()
            .find_map(|l| l.split_once("stats: ").map(|(_, j)| j));
        let n = last
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            .and_then(|v| {
                v["switches"][switch]
                    .as_array()?
                    .iter()
                    .find(|p| p["mac"] == mac)?["drops"][drop]
                    .as_u64()
            });
        match n {
            Some(n) if n >= at_least => return n,
            _ => assert!(Instant::now() < deadline, "no {drop} >= {at_least}\n{log}"),
        }
    }
}
