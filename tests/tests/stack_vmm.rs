//! The split-driver stack with pvio's real guest: the evtchn broker, xenstore-lite serving
//! introduced guests over their xenstore rings (`--evtchn-broker`), `backend-blk --xenstore`
//! and `backend-net --xenstore`, pvctl as the toolstack, and `vmm run --xenstore --domid N`
//! booting pvio's guest, which walks the XenBus handshake over its ring (Initialised,
//! Connected), does verified I/O on its disk and NIC, and on `pvctl disk detach` sees the back
//! end's Closing and closes (Closing, Closed). A disk attached while the guest runs is
//! hot-plugged into an empty virtio-mmio slot and the guest connects it. States are checked
//! with `pvctl list` and Debian's `xenstore-ls`; at the end nothing is left behind (VMM
//! processes, sockets, nodes).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pvio_tests::bins::workspace_bin;
use pvio_tests::tmp::TempDir;
use pvio_tests::xenstore::XenstoreDaemon;
use vmm::pattern;

/// Generous: a loaded 2-core CI runner, and the guest's CPL0 code is emulated there.
const STEP: Duration = Duration::from_secs(120);
const SEED: u64 = 0x5e;
const LEN: usize = 64 << 10;

/// A child process killed and reaped on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Process {
    let log = std::fs::File::create(log).unwrap();
    Process(
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Polls `check` until it returns true or `STEP` passes.
fn wait_for(what: &str, mut check: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + STEP;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Stack {
    dir: TempDir,
    store: XenstoreDaemon,
    _broker: Process,
    backend: Process,
    net: Process,
}

impl Stack {
    fn start() -> Self {
        let dir = TempDir::new("stack-vmm").unwrap();
        std::fs::create_dir(dir.join("run")).unwrap();
        let broker_sock = dir.join("evtchn.sock");
        let broker = spawn(
            Command::new(workspace_bin("evtchn", "evtchn-broker"))
                .arg("--socket")
                .arg(&broker_sock),
            &dir.join("broker.log"),
        );
        wait_for("the broker's socket", || broker_sock.exists(), String::new);
        let store = XenstoreDaemon::start_with(
            dir.path(),
            &[],
            &["--evtchn-broker".as_ref(), broker_sock.as_os_str()],
        );
        let backend = spawn(
            Command::new(workspace_bin("backend-blk", "backend-blk"))
                .arg("--xenstore")
                .arg(store.socket())
                .arg("--run-dir")
                .arg(dir.join("run")),
            &dir.join("backend.log"),
        );
        let net = spawn(
            Command::new(workspace_bin("backend-net", "backend-net"))
                .arg("--xenstore")
                .arg(store.socket())
                .arg("--run-dir")
                .arg(dir.join("run")),
            &dir.join("backend-net.log"),
        );
        Stack {
            dir,
            store,
            _broker: broker,
            backend,
            net,
        }
    }

    fn logs(&self) -> String {
        ["backend.log", "backend-net.log", "broker.log"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
                format!("--- {f} ---\n{text}")
            })
            .collect()
    }

    fn pvctl(&self, args: &[&str]) -> String {
        let out = self.store.pvctl(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "pvctl {args:?}: {err}\n{}",
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn xenstore_ls(&self, path: &str) -> String {
        self.store.ls(path)
    }

    fn sockets(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.join("run"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "sock"))
            .collect()
    }
}

impl Stack {
    /// `pvctl domain start 1` with the guest arguments `words`, console in `<name>.out`;
    /// returns the VMM's pid.
    fn start_guest(&self, name: &str, words: &[&str]) -> u32 {
        self.start_domain("1", name, words)
    }

    /// `pvctl domain start DOMID` with the guest arguments `words`, console in
    /// `<name>.out`; returns the VMM's pid.
    fn start_domain(&self, domid: &str, name: &str, words: &[&str]) -> u32 {
        let console = self.dir.join(&format!("{name}.out"));
        let broker = self.dir.join("evtchn.sock");
        let vmm = pvio_tests::vmm::vmm_bin();
        let mut args = vec!["domain", "start", domid];
        args.extend(["--evtchn-broker", broker.to_str().unwrap()]);
        args.extend(["--vmm", vmm.to_str().unwrap()]);
        args.extend(["--console", console.to_str().unwrap(), "--"]);
        args.extend(words);
        self.pvctl(&args).trim().parse().unwrap()
    }

    fn console(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(&format!("{name}.out"))).unwrap_or_default()
    }

    fn wait_console(&self, name: &str, what: &str) {
        wait_for(
            what,
            || self.console(name).contains(what),
            || {
                format!(
                    "{}\n--- {name}.out ---\n{}",
                    self.logs(),
                    self.console(name)
                )
            },
        );
    }
}

/// Whether process `pid` is gone (or a zombie no one reaped yet).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z'))
    })
}

#[test]
fn the_guest_walks_the_handshake_does_io_and_closes_on_detach() {
    let mut s = Stack::start();
    let image = s.dir.join("disk.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let created = s.pvctl(&[
        "domain",
        "create",
        "--name",
        "g1",
        "--mem",
        "64",
        "--guest",
        vmm::GUEST_PAYLOAD,
    ]);
    assert_eq!(created.trim(), "1");
    let devid = s.pvctl(&["disk", "attach", "1", "--image", image.to_str().unwrap()]);
    assert_eq!(devid.trim(), "0");

    // pvctl starts the VMM; the guest reaches Connected through its own ring, does its I/O.
    let range = format!("{SEED}@0+{LEN}");
    let (write, verify) = (format!("write={range}"), format!("verify={range}"));
    let pid = s.start_guest("vm1", &["qd=4", &write, &verify, "unplug-wait"]);
    s.wait_console("vm1", "blk verify ok");
    let list = s.pvctl(&["list"]);
    assert!(
        list.contains("front Connected     back Connected"),
        "{list}"
    );
    let ls = s.xenstore_ls("/local/domain");
    for line in [
        "/local/domain/1/device/vbd/0/state = \"4\"",
        "/local/domain/0/backend/vbd/1/0/state = \"4\"",
        "/local/domain/1/store/port",
        "/local/domain/1/store/ring-ref",
    ] {
        assert!(
            ls.lines().any(|l| l.starts_with(line)),
            "{line} not in\n{ls}"
        );
    }
    let console = s.console("vm1");
    for step in ["xenbus vbd/0 state 3", "xenbus vbd/0 state 4"] {
        assert!(console.contains(step), "{step} not in\n{console}");
    }

    // Detach while the guest runs: it sees Closing, quiesces and closes, then exits.
    s.pvctl(&["disk", "detach", "1", "0"]);
    s.wait_console("vm1", "all jobs passed");
    let console = s.console("vm1");
    for step in ["xenbus vbd/0 state 5", "xenbus vbd/0 state 6"] {
        assert!(console.contains(step), "{step} not in\n{console}");
    }
    wait_for("the first VMM's exit", || gone(pid), || s.logs());
    let data = std::fs::read(&image).unwrap();
    assert_eq!(pattern::check_disk(&data[..LEN], SEED, 0), None);
    assert!(!s.pvctl(&["list"]).contains("vbd"));

    // Re-plug the disk, start the domain again: the guest finds the data; destroy closes the
    // disk through the guest and stops the VMM.
    s.pvctl(&["disk", "attach", "1", "--image", image.to_str().unwrap()]);
    let pid = s.start_guest("vm2", &[&verify, "unplug-wait"]);
    s.wait_console("vm2", "blk verify ok");
    s.pvctl(&["domain", "destroy", "1"]);
    assert!(gone(pid), "VMM {pid} still runs after destroy");
    assert!(s.console("vm2").contains("xenbus vbd/0 state 6"));
    assert_eq!(s.pvctl(&["list"]), "");
    assert!(!s.xenstore_ls("/local/domain").contains("/local/domain/1"));
    assert!(!s.xenstore_ls("/").contains("/tool/pvctl/1"));
    assert!(s.sockets().is_empty(), "{:?}", s.sockets());
    assert!(
        matches!(s.backend.0.try_wait(), Ok(None)),
        "backend-blk exited\n{}",
        s.logs()
    );
}

#[test]
fn bad_input_is_refused_with_a_message_and_leaves_nothing() {
    let s = Stack::start();
    // A domain that does not exist.
    let out = Command::new(workspace_bin("pvctl", "pvctl"))
        .arg("--xenstore")
        .arg(s.store.socket())
        .args(["domain", "start", "7", "--evtchn-broker"])
        .arg(s.dir.join("evtchn.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("domain 7"), "{err}");

    // The VMM with a broker that is not there: one message naming it, exit 1, no node made.
    s.pvctl(&[
        "domain",
        "create",
        "--name",
        "g1",
        "--mem",
        "64",
        "--guest",
        vmm::GUEST_PAYLOAD,
    ]);
    let missing = s.dir.join("no-broker.sock");
    let out = Command::new(pvio_tests::vmm::vmm_bin())
        .args(["run", "--guest", vmm::GUEST_PAYLOAD, "--xenstore"])
        .arg(s.store.socket())
        .args(["--domid", "1", "--evtchn-broker"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    assert!(!s.xenstore_ls("/local/domain/1").contains("store/ring-ref"));

    // --xenstore without --domid is a command-line error.
    let out = Command::new(pvio_tests::vmm::vmm_bin())
        .args(["run", "--guest", vmm::GUEST_PAYLOAD, "--xenstore"])
        .arg(s.store.socket())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    s.pvctl(&["domain", "destroy", "1"]);
    assert_eq!(s.pvctl(&["list"]), "");
}

impl Stack {
    /// Waits until `name`'s console holds `what` `n` times.
    fn wait_console_count(&self, name: &str, what: &str, n: usize) {
        wait_for(
            &format!("{n} × {what:?} on {name}"),
            || self.console(name).matches(what).count() >= n,
            || {
                format!(
                    "{}\n--- {name}.out ---\n{}",
                    self.logs(),
                    self.console(name)
                )
            },
        );
    }

    /// Asserts `pvctl list` shows `n` devices Connected on both sides; returns the listing.
    fn assert_connected(&self, n: usize) -> String {
        let list = self.pvctl(&["list"]);
        let connected = list.matches("front Connected     back Connected").count();
        assert_eq!(connected, n, "{list}");
        list
    }

    /// Asserts every line starts a line of `xenstore-ls /local/domain` and no line starts
    /// with any of `absent`.
    fn assert_ls(&self, present: &[&str], absent: &[&str]) {
        let ls = self.xenstore_ls("/local/domain");
        for line in present {
            assert!(
                ls.lines().any(|l| l.starts_with(line)),
                "{line} not in\n{ls}"
            );
        }
        for line in absent {
            assert!(
                !ls.lines().any(|l| l.starts_with(line)),
                "{line} still in\n{ls}"
            );
        }
    }
}

/// The end-to-end run: domain 1 with a disk and a NIC, domain 2 with a NIC on the
/// same switch; verified disk I/O and checked frames between the two guests; the disk
/// detached while domain 1 runs and attached again (hot-unplug, hot-plug into the freed
/// slot, the data still there); destroy; nothing left behind.
#[test]
fn hot_unplug_and_replug_of_a_disk_beside_a_nic_in_a_running_guest() {
    let s = Stack::start();
    let image = s.dir.join("disk.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let image = image.to_str().unwrap();
    for name in ["g1", "g2"] {
        let guest = vmm::GUEST_PAYLOAD;
        s.pvctl(&[
            "domain", "create", "--name", name, "--mem", "64", "--guest", guest,
        ]);
    }
    assert_eq!(
        s.pvctl(&["disk", "attach", "1", "--image", image]).trim(),
        "0"
    );
    assert_eq!(s.pvctl(&["nic", "attach", "1"]).trim(), "0");
    assert_eq!(s.pvctl(&["nic", "attach", "2"]).trim(), "0");

    // Domain 1 writes and checks its disk, sends frames to domain 2, then waits for the
    // disk to leave and come back and checks the data on it again.
    let range = format!("{SEED}@0+{LEN}");
    let (write, verify) = (format!("write={range}"), format!("verify={range}"));
    let later = format!("write={}@{LEN}+{LEN}", SEED + 1);
    let frames = "net-send=12";
    let words = [
        "qd=4",
        &write,
        &verify,
        frames,
        "unplug-wait=vbd",
        "plug-wait=vbd",
        &verify,
        &later,
        "unplug-wait",
    ];
    let pid1 = s.start_domain("1", "vm1", &words);
    let pid2 = s.start_domain("2", "vm2", &["net-recv=12", "unplug-wait"]);
    s.wait_console("vm1", "net send ok frames=12");
    s.wait_console("vm2", "net recv ok frames=12");
    let console = s.console("vm1");
    assert_eq!(console.matches("blk verify ok").count(), 1, "{console}");
    s.assert_connected(3);
    s.assert_ls(
        &[
            "/local/domain/1/device/vbd/0/state = \"4\"",
            "/local/domain/1/device/vbd/0/virtio-mmio-slot = \"0\"",
            "/local/domain/1/device/vbd/0/multi-queue-num-queues = \"1\"",
            "/local/domain/1/device/vif/0/state = \"4\"",
            "/local/domain/1/device/vif/0/virtio-mmio-slot = \"1\"",
            "/local/domain/2/device/vif/0/virtio-mmio-slot = \"0\"",
            "/local/domain/0/backend/vbd/1/0/state = \"4\"",
            "/local/domain/0/backend/vif/1/0/state = \"4\"",
            "/local/domain/0/backend/vif/2/0/state = \"4\"",
        ],
        &[],
    );
    let sockets = s.sockets().len();
    assert_eq!(sockets, 3, "{:?}", s.sockets());

    // Hot-unplug: the guest closes the disk, the VMM empties its slot; the NIC stays.
    s.pvctl(&["disk", "detach", "1", "0", "--timeout", "120"]);
    s.wait_console("vm1", "xenbus vbd/0 state 6");
    assert!(!gone(pid1), "VMM 1 exited on detach\n{}", s.console("vm1"));
    let list = s.assert_connected(2);
    assert!(!list.contains("vbd"), "{list}");
    s.assert_ls(
        &["/local/domain/1/device/vif/0/state = \"4\""],
        &[
            "/local/domain/1/device/vbd/0",
            "/local/domain/0/backend/vbd/1",
        ],
    );
    // The back end removes the socket when it sees the nodes gone.
    wait_for(
        "the disk's socket to go",
        || s.sockets().len() == 2,
        || format!("{:?}", s.sockets()),
    );

    // Hot-plug: the same image again; the VMM puts it in the free slot, the guest sees the
    // node, connects and finds its data.
    assert_eq!(
        s.pvctl(&["disk", "attach", "1", "--image", image]).trim(),
        "0"
    );
    s.wait_console("vm1", "xenbus vbd/0 plugged in slot 0");
    s.wait_console_count("vm1", "blk verify ok", 2);
    s.wait_console_count("vm1", "blk write ok bytes=65536", 2);
    s.assert_connected(3);
    s.assert_ls(
        &[
            "/local/domain/1/device/vbd/0/state = \"4\"",
            "/local/domain/1/device/vbd/0/virtio-mmio-slot = \"0\"",
            "/local/domain/0/backend/vbd/1/0/state = \"4\"",
        ],
        &[],
    );

    // Destroy: the guests close every device and exit; nothing is left behind.
    for domid in ["1", "2"] {
        s.pvctl(&["domain", "destroy", domid, "--timeout", "120"]);
    }
    for (pid, name) in [(pid1, "vm1"), (pid2, "vm2")] {
        assert!(gone(pid), "VMM {pid} still runs after destroy");
        let console = s.console(name);
        assert!(console.contains("xenbus vif/0 state 6"), "{console}");
    }
    let data = std::fs::read(image).unwrap();
    assert_eq!(pattern::check_disk(&data[..LEN], SEED, 0), None);
    let second = &data[LEN..2 * LEN];
    assert_eq!(pattern::check_disk(second, SEED + 1, LEN as u64), None);
    assert_eq!(s.pvctl(&["list"]), "");
    assert!(!s.xenstore_ls("/local/domain").contains("/local/domain/1"));
    assert!(!s.xenstore_ls("/local/domain").contains("/local/domain/2"));
    wait_for(
        "every socket to go",
        || s.sockets().is_empty(),
        || format!("{:?}", s.sockets()),
    );
    let mut s = s;
    for (name, daemon) in [("backend-blk", &mut s.backend), ("backend-net", &mut s.net)] {
        let alive = matches!(daemon.0.try_wait(), Ok(None));
        assert!(alive, "{name} exited");
    }
}
