//! pvctl against a real xenstore-lite, judged by Debian's xenstore-utils: the layout and
//! permissions it writes, its errors leaving nothing half-made, and a guest domain refused
//! (EACCES) when it writes into its back end's directory.

use std::path::Path;
use std::process::{Command, Output};

use pvio_tests::bins::workspace_bin;
use pvio_tests::prereq;
use pvio_tests::tmp::TempDir;
use pvio_tests::xenstore::XenstoreDaemon;
use xenstore_lite::{ClientError, Errno, XsOps};

/// `pvctl domain create` of the guest the tests use, domain 1.
const CREATE_G1: &str = "domain create --name g1 --mem 64 --guest /bin/true";

struct Setup {
    dir: TempDir,
    store: XenstoreDaemon,
}

impl Setup {
    fn new(label: &str) -> Self {
        let dir = TempDir::new(label).unwrap();
        let store = XenstoreDaemon::start(dir.path(), &[1]);
        Setup { dir, store }
    }

    fn pvctl(&self, args: &[&str]) -> Output {
        self.store.pvctl(args)
    }

    /// Runs pvctl, expects success, returns its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.pvctl(args);
        assert!(
            out.status.success(),
            "pvctl {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs pvctl, expects failure, returns its standard error.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.pvctl(args);
        assert!(!out.status.success(), "pvctl {args:?} succeeded");
        text(&out.stderr)
    }

    /// `xenstore-ls -f -p` of `path` through Debian's tool, as domain `socket`'s client.
    fn xenstore_ls(&self, socket: &Path, path: &str) -> String {
        let ls = prereq::program("xenstore-ls", "xenstore-utils").unwrap();
        let out = Command::new(ls)
            .args(["-f", "-p", path])
            .env("XENSTORED_PATH", socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "xenstore-ls: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn whole_store(&self) -> String {
        self.xenstore_ls(&self.store.socket(), "/")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The line of `path` in `xenstore-ls -f -p` output: (value, permissions).
fn ls_entry<'a>(listing: &'a str, path: &str) -> (&'a str, &'a str) {
    let line = listing
        .lines()
        .find(|l| l.starts_with(&format!("{path} = ")))
        .unwrap_or_else(|| panic!("{path} not in\n{listing}"));
    let value = line.split('"').nth(1).unwrap();
    let perms = line.rsplit_once('(').unwrap().1.trim_end_matches(')');
    (value, perms)
}

#[test]
fn layout_and_permissions_are_xens() {
    let s = Setup::new("pvctl-layout");
    let image = s.dir.join("disk.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let domid = s.ok(&words(CREATE_G1));
    assert_eq!(domid.trim(), "1");
    let img = image.to_str().unwrap();
    assert_eq!(
        s.ok(&["disk", "attach", "1", "--image", img, "--readonly"])
            .trim(),
        "0"
    );
    assert_eq!(s.ok(&["nic", "attach", "1", "--tap", "tap7"]).trim(), "0");
    let ls = s.whole_store();
    let be = "/local/domain/0/backend/vbd/1/0";
    let fe = "/local/domain/1/device/vbd/0";
    assert_eq!(ls_entry(&ls, be), ("", "n0,r1"));
    assert_eq!(ls_entry(&ls, &format!("{be}/params")), (img, "n0,r1"));
    assert_eq!(ls_entry(&ls, &format!("{be}/mode")).0, "r");
    assert_eq!(ls_entry(&ls, &format!("{be}/state")).0, "1");
    assert_eq!(ls_entry(&ls, &format!("{be}/frontend")).0, fe);
    assert_eq!(ls_entry(&ls, &format!("{be}/specification")).0, "virtio");
    assert_eq!(ls_entry(&ls, fe), ("", "n1,r0"));
    assert_eq!(ls_entry(&ls, &format!("{fe}/backend")), (be, "n1,r0"));
    assert_eq!(ls_entry(&ls, &format!("{fe}/state")), ("1", "n1,r0"));
    let vif = "/local/domain/0/backend/vif/1/0";
    assert_eq!(ls_entry(&ls, &format!("{vif}/tap")).0, "tap7");
    assert_eq!(ls_entry(&ls, &format!("{vif}/mac")).0, "00:16:3e:00:01:00");
    assert_eq!(ls_entry(&ls, "/local/domain/1"), ("", "n0,r1"));
    assert_eq!(ls_entry(&ls, "/local/domain/1/memory/target").0, "65536");
    // The guest sees its back end's directory but cannot write into it; its own is its own.
    let guest_view = s.xenstore_ls(&s.store.domain_socket(1), be);
    assert!(guest_view.contains(&format!("{be}/params")), "{guest_view}");
    let mut guest = s.store.guest_client(1);
    let err = guest.write(&format!("{be}/state"), b"4").unwrap_err();
    assert!(matches!(err, ClientError::Xs(Errno::EACCES)), "{err}");
    let err = guest
        .write(&format!("{be}/params"), b"/etc/shadow")
        .unwrap_err();
    assert!(matches!(err, ClientError::Xs(Errno::EACCES)), "{err}");
    guest.write(&format!("{fe}/state"), b"3").unwrap();
    // Debian's xenstore-write as the guest is refused too.
    let write = prereq::program("xenstore-write", "xenstore-utils").unwrap();
    let out = Command::new(write)
        .args([&format!("{be}/mode"), "w"])
        .env("XENSTORED_PATH", s.store.domain_socket(1))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(ls_entry(&s.whole_store(), &format!("{be}/mode")).0, "r");
    let list = s.ok(&["list"]);
    assert!(
        list.starts_with("domain 1 g1: 64 MiB, 1 vCPU, guest /bin/true\n"),
        "{list}"
    );
    assert!(
        list.contains("vbd 0  front Initialised   back Initialising"),
        "{list}"
    );
    assert!(
        list.contains("vif 0  front Initialising  back Initialising  00:16:3e:00:01:00"),
        "{list}"
    );
}

#[test]
fn refused_commands_leave_nothing_behind() {
    let s = Setup::new("pvctl-errors");
    let image = s.dir.join("disk.raw");
    std::fs::write(&image, vec![0u8; 4096]).unwrap();
    let img = image.to_str().unwrap();
    let err = s.fails(&["disk", "attach", "1", "--image", img]);
    assert!(err.contains("domain 1 does not exist"), "{err}");
    s.ok(&words(CREATE_G1));
    s.ok(&["disk", "attach", "1", "--image", img, "--devid", "5"]);
    let before = s.whole_store();
    let create = words(CREATE_G1);
    let cases: [(&[&str], &str); 7] = [
        (
            &["disk", "attach", "1", "--image", img, "--devid", "5"],
            "device vbd/1/5 already exists",
        ),
        (
            &["disk", "attach", "1", "--image", "/nonexistent/disk.raw"],
            "No such file",
        ),
        (
            &["disk", "attach", "1", "--image", "/tmp"],
            "not a regular file or block device",
        ),
        (&create, "exists already"),
        (
            &["nic", "detach", "1", "3"],
            "device vif/1/3 does not exist",
        ),
        (&["domain", "destroy", "9"], "domain 9 does not exist"),
        (
            &[
                "domain",
                "create",
                "--name",
                "g2",
                "--mem",
                "8",
                "--guest",
                "/nonexistent",
            ],
            "guest payload /nonexistent: No such file",
        ),
    ];
    for (args, expected) in cases {
        let err = s.fails(args);
        assert!(err.contains(expected), "pvctl {args:?}: {err}");
        assert_eq!(s.whole_store(), before, "pvctl {args:?} changed the store");
    }
    let err = s.fails(&["nic", "attach", "1", "--mac", "01:00:5e:00:00:01"]);
    assert!(err.contains("multicast"), "{err}");
    // No back end runs: detach warns after its timeout and still removes the device.
    let out = s.pvctl(&["disk", "detach", "1", "5", "--timeout", "1"]);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("did not reach Closed"));
    s.ok(&["domain", "destroy", "1", "--timeout", "1"]);
    let after = s.whole_store();
    assert!(!after.contains("/local/domain/1"), "{after}");
    assert!(!after.contains("/backend/vbd/1"), "{after}");
    assert_eq!(s.ok(&["list"]), "");
}

#[test]
fn introduce_on_create_and_release_on_destroy() {
    let s = Setup::new("pvctl-introduce");
    let mut dom0 = s.store.client();
    dom0.write("/local/domain/0/name", b"Domain-0").unwrap();
    let before = s.whole_store();
    // Event channel port 0 is invalid: the store refuses, nothing is left.
    let mut create = words(CREATE_G1);
    create.extend(["--xenstore-gfn", "4096", "--xenstore-evtchn", "0"]);
    let err = s.fails(&create);
    assert!(err.contains("refused to introduce domain 1"), "{err}");
    assert_eq!(s.whole_store(), before);
    assert!(!dom0.is_domain_introduced(1).unwrap());
    *create.last_mut().unwrap() = "3";
    s.ok(&create);
    assert!(dom0.is_domain_introduced(1).unwrap());
    let ls = s.whole_store();
    assert_eq!(ls_entry(&ls, "/local/domain/1/store/ring-ref").0, "4096");
    assert_eq!(ls_entry(&ls, "/local/domain/1/store/port").0, "3");
    s.ok(&["domain", "destroy", "1"]);
    assert!(!dom0.is_domain_introduced(1).unwrap());
    assert_eq!(s.whole_store(), before);
}

#[test]
fn a_store_that_is_not_running_is_named() {
    let dir = TempDir::new("pvctl-nostore").unwrap();
    let out = Command::new(workspace_bin("pvctl", "pvctl"))
        .arg("--xenstore")
        .arg(dir.join("absent.sock"))
        .arg("list")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("xenstore is not running at"), "{err}");
    assert!(err.contains("absent.sock"), "{err}");
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}
