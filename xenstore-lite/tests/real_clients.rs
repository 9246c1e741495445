//! Debian's xenstore-utils (libxenstore 4.17) against the daemon, unpatched, through
//! `XENSTORED_PATH`. The tools must be installed (`.ci/run` installs xenstore-utils).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{Daemon, TempDir, BIN};
use xenstore_lite::perms::NodePerms;
use xenstore_lite::XsOps;

fn tool(name: &str, socket: &Path, args: &[&str]) -> Output {
    Command::new(name)
        .args(args)
        .env("XENSTORED_PATH", socket)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name} (is xenstore-utils installed?): {e}"))
}

fn ours(socket: &Path, args: &[&str]) -> Output {
    tool(BIN, socket, args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed: {o:?}");
    stdout(&o)
}

fn start(dir: &TempDir) -> Daemon {
    Daemon::start(&dir.join("xs.sock"), &[])
}

#[test]
fn write_read_list_exists_rm() {
    let dir = TempDir::new("rc-basic");
    let d = start(&dir);
    let s = &d.socket;
    ok(tool(
        "xenstore-write",
        s,
        &["/local/domain/0/name", "Domain-0", "/vm/1/state", "4"],
    ));
    assert_eq!(
        ok(tool("xenstore-read", s, &["/local/domain/0/name"])),
        "Domain-0\n"
    );
    assert_eq!(
        ok(tool(
            "xenstore-read",
            s,
            &["-p", "/local/domain/0/name", "/vm/1/state"]
        )),
        "/local/domain/0/name: Domain-0\n/vm/1/state: 4\n"
    );
    // A relative path is under dom0's home for a socket client.
    ok(tool("xenstore-write", s, &["rel/key", "v"]));
    assert_eq!(
        d.client().read_string("/local/domain/0/rel/key").unwrap(),
        "v"
    );
    assert_eq!(ok(tool("xenstore-list", s, &["/"])), "tool\nlocal\nvm\n");
    assert_eq!(ok(tool("xenstore-list", s, &["-p", "/vm"])), "/vm/1\n");
    assert!(tool("xenstore-exists", s, &["/vm/1"]).status.success());
    ok(tool("xenstore-rm", s, &["/vm"]));
    let gone = tool("xenstore-exists", s, &["/vm/1"]);
    assert_eq!(gone.status.code(), Some(1));
    let r = tool("xenstore-read", s, &["/vm/1/state"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        stderr(&r).contains("couldn't read path /vm/1/state"),
        "{}",
        stderr(&r)
    );
    let rm = tool("xenstore-rm", s, &["/no/such"]);
    assert_eq!(rm.status.code(), Some(1));
    assert!(stderr(&rm).contains("could not remove path /no/such"));
    // rm -t removes emptied parents.
    ok(tool("xenstore-write", s, &["/t1/t2/t3", "x"]));
    ok(tool("xenstore-rm", s, &["-t", "/t1/t2/t3"]));
    assert!(!d.client().exists("/t1").unwrap());
}

#[test]
fn binary_and_escaped_values() {
    let dir = TempDir::new("rc-bin");
    let d = start(&dir);
    let s = &d.socket;
    ok(tool("xenstore-write", s, &["/esc", "a\\tb\\nc\\x01\\\\"]));
    assert_eq!(d.client().read("/esc").unwrap(), b"a\tb\nc\x01\\");
    assert_eq!(
        ok(tool("xenstore-read", s, &["/esc"])),
        "a\\tb\\nc\\001\\\\\n"
    );
    assert_eq!(ok(ours(s, &["read", "/esc"])), "a\\tb\\nc\\001\\\\\n");
    let raw = tool("xenstore-read", s, &["-R", "/esc"]);
    assert_eq!(raw.stdout, b"a\tb\nc\x01\\");
}

/// Builds a tree with short, long, empty, binary and unreadable-looking values.
fn populate(d: &Daemon) {
    let mut c = d.client();
    c.write("/local/domain/0/name", b"Domain-0").unwrap();
    c.write("/local/domain/1/device/vbd/51712/state", b"4")
        .unwrap();
    c.write(
        "/local/domain/1/device/vbd/51712/backend",
        b"/local/domain/0/backend/vbd/1/51712",
    )
    .unwrap();
    c.write("/local/domain/1/long", "x".repeat(120).as_bytes())
        .unwrap();
    c.write("/local/domain/1/bin", b"\x00\x07\x08\xff\t")
        .unwrap();
    c.mkdir("/local/domain/1/empty").unwrap();
    c.set_perms("/local/domain/1", &NodePerms::parse(&["n1", "r0"]).unwrap())
        .unwrap();
}

#[test]
fn ls_output_matches_xenstore_ls() {
    let dir = TempDir::new("rc-ls");
    let d = start(&dir);
    populate(&d);
    let s = &d.socket;
    let theirs = ok(tool("xenstore-ls", s, &[]));
    assert!(theirs.contains("   name = \"Domain-0\"\n"), "{theirs}");
    assert!(theirs.contains("\\..."), "long values are cut: {theirs}");
    assert_eq!(ours(s, &["ls"]).stdout, theirs.as_bytes());
    for args in [
        &["-f"][..],
        &["-p"],
        &["/local/domain/1"],
        &["-f", "-p", "/local"],
    ] {
        let theirs = ok(tool("xenstore-ls", s, args));
        let mut ours_args = vec!["ls"];
        ours_args.extend_from_slice(args);
        assert_eq!(stdout(&ours(s, &ours_args)), theirs, "ls {args:?}");
    }
    let perms = ok(tool("xenstore-ls", s, &["-p", "/local/domain"]));
    assert!(perms.contains("(n1,r0)"), "{perms}");
    let missing = tool("xenstore-ls", s, &["/nothing"]);
    assert_eq!(missing.status.code(), Some(1));
    let ours_missing = ours(s, &["ls", "/nothing"]);
    assert_eq!(ours_missing.status.code(), Some(1));
}

#[test]
fn our_cli_prints_what_xenstore_utils_print() {
    let dir = TempDir::new("rc-cli");
    let d = start(&dir);
    populate(&d);
    let s = &d.socket;
    for (tool_name, args) in [
        (
            "xenstore-read",
            &["/local/domain/0/name", "/local/domain/1/bin"][..],
        ),
        ("xenstore-read", &["-p", "/local/domain/1/long"]),
        ("xenstore-list", &["/local/domain/1"]),
        ("xenstore-list", &["-p", "/"]),
    ] {
        let theirs = tool(tool_name, s, args);
        let mut ours_args = vec![tool_name.trim_start_matches("xenstore-")];
        ours_args.extend_from_slice(args);
        let mine = ours(s, &ours_args);
        assert_eq!(mine.stdout, theirs.stdout, "{tool_name} {args:?}");
        assert_eq!(mine.status.code(), theirs.status.code());
    }
    ok(ours(s, &["write", "/ours/a", "1", "/ours/b", "2"]));
    assert_eq!(
        ok(tool("xenstore-read", s, &["/ours/a", "/ours/b"])),
        "1\n2\n"
    );
    ok(ours(s, &["mkdir", "/ours/dir"]));
    assert_eq!(ok(tool("xenstore-list", s, &["/ours"])), "a\nb\ndir\n");
    ok(ours(s, &["chmod", "/ours/a", "b3", "r0"]));
    assert_eq!(
        d.client().get_perms("/ours/a").unwrap().to_string(),
        "b3,r0"
    );
    ok(ours(s, &["rm", "/ours"]));
    assert_eq!(ours(s, &["exists", "/ours"]).status.code(), Some(1));
    let bad = ours(s, &["read", "/bad//path"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("couldn't read path /bad//path"));
}

#[test]
fn chmod_sets_permissions() {
    let dir = TempDir::new("rc-chmod");
    let d = start(&dir);
    let s = &d.socket;
    ok(tool("xenstore-write", s, &["/c/d/e", "1"]));
    ok(tool("xenstore-chmod", s, &["/c/d", "n1", "r2", "b3"]));
    let mut c = d.client();
    assert_eq!(c.get_perms("/c/d").unwrap().to_string(), "n1,r2,b3");
    assert_eq!(c.get_perms("/c/d/e").unwrap().to_string(), "n0");
    ok(tool("xenstore-chmod", s, &["-r", "/c", "r4"]));
    assert_eq!(c.get_perms("/c/d/e").unwrap().to_string(), "r4");
    ok(tool("xenstore-chmod", s, &["-u", "/c/d/e", "w5"]));
    assert_eq!(c.get_perms("/c").unwrap().to_string(), "w5");
    let bad = tool("xenstore-chmod", s, &["/missing", "r1"]);
    assert_eq!(bad.status.code(), Some(1));
}

#[test]
fn watch_prints_events() {
    let dir = TempDir::new("rc-watch");
    let d = start(&dir);
    let s = &d.socket;
    ok(tool("xenstore-write", s, &["/w", ""]));
    let mut child = Command::new("xenstore-watch")
        .args(["-n", "3", "/w"])
        .env("XENSTORED_PATH", s)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run xenstore-watch");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The first event comes at registration: the watch is in place once it is printed.
    assert_eq!(lines.next().unwrap().unwrap(), "/w");
    let mut c = d.client();
    c.write("/w/a", b"1").unwrap();
    c.write("/elsewhere", b"1").unwrap();
    c.rm("/w").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "/w/a");
    assert_eq!(lines.next().unwrap().unwrap(), "/w");
    assert!(child.wait().unwrap().success());
}

#[test]
fn large_directories_come_back_in_parts() {
    let dir = TempDir::new("rc-big");
    let d = start(&dir);
    let mut c = d.client();
    let names: Vec<String> = (0..500).map(|i| format!("entry-{i:05}")).collect();
    c.transaction(|tx| {
        for n in &names {
            tx.write(&format!("/big/{n}"), b"")?;
        }
        Ok(())
    })
    .unwrap();
    let listed = ok(tool("xenstore-list", &d.socket, &["/big"]));
    assert_eq!(listed.lines().collect::<Vec<_>>(), names);
    assert_eq!(c.directory("/big").unwrap(), names);
}

#[test]
fn guest_domain_socket_gets_eacces() {
    let dir = TempDir::new("rc-guest");
    let guest_sock = dir.join("dom5.sock");
    let spec = format!("5:{}", guest_sock.display());
    let d = Daemon::start(&dir.join("xs.sock"), &["--domain-socket", &spec]);
    let mut c = d.client();
    c.write("/secret", b"s").unwrap();
    c.write("/local/domain/5", b"").unwrap();
    c.set_perms("/local/domain/5", &NodePerms::parse(&["n5"]).unwrap())
        .unwrap();
    let r = tool("xenstore-read", &guest_sock, &["/secret"]);
    assert_eq!(r.status.code(), Some(1));
    let w = tool("xenstore-write", &guest_sock, &["/secret", "x"]);
    assert_eq!(w.status.code(), Some(1));
    ok(tool("xenstore-write", &guest_sock, &["data", "mine"]));
    assert_eq!(c.read_string("/local/domain/5/data").unwrap(), "mine");
    assert_eq!(
        c.get_perms("/local/domain/5/data").unwrap().to_string(),
        "n5"
    );
    assert_eq!(c.read_string("/secret").unwrap(), "s");
}
