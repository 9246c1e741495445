//! The split-driver stack with pvio's real guest: the evtchn broker, xenstore-lite serving
//! introduced guests over their xenstore rings (`--evtchn-broker`), `backend-blk --xenstore`,
//! pvctl as the toolstack, and `vmm run --xenstore --domid 1` booting pvio's guest, which walks
//! the XenBus handshake over its ring (Initialised, Connected), does verified I/O on the disk,
//! and on `pvctl disk detach` sees the back end's Closing and closes (Closing, Closed). States
//! are checked with `pvctl list` and Debian's `xenstore-ls`; at the end nothing is left
//! behind (VMM process, sockets, nodes).

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
        Stack {
            dir,
            store,
            _broker: broker,
            backend,
        }
    }

    fn logs(&self) -> String {
        ["backend.log", "broker.log"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
                format!("--- {f} ---\n{text}")
            })
            .collect()
    }

    fn pvctl(&self, args: &[&str]) -> String {
        let out = Command::new(workspace_bin("pvctl", "pvctl"))
            .arg("--xenstore")
            .arg(self.store.socket())
            .args(args)
            .output()
            .unwrap();
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
        let console = self.dir.join(&format!("{name}.out"));
        let broker = self.dir.join("evtchn.sock");
        let vmm = pvio_tests::vmm::vmm_bin();
        let mut args = vec!["domain", "start", "1"];
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
