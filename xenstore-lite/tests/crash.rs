//! Durability: a writer streams acknowledged changes, the daemon is killed with SIGKILL at a
//! random moment, restarted on the same data directory, and every acknowledged change must
//! be there.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::{Daemon, TempDir};
use xenstore_lite::perms::NodePerms;
use xenstore_lite::{Client, XsOps};

/// What the writer knows: changes acknowledged (key → value, `None` = removed) and the keys
/// of the one request in flight, whose outcome is unknown.
#[derive(Default)]
struct Ledger {
    acked: BTreeMap<String, Option<String>>,
    in_flight: BTreeSet<String>,
    count: usize,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Streams writes, transactions and removals from `first` on until the daemon dies.
fn writer(
    mut c: Client,
    ledger: Arc<Mutex<Ledger>>,
    acked: Arc<AtomicUsize>,
    first: usize,
) -> usize {
    let mut i = first;
    loop {
        let (keys, result) = if i % 13 == 12 {
            let key = format!("/crash/k{}", i - 1);
            ledger.lock().unwrap().in_flight = BTreeSet::from([key.clone()]);
            (vec![(key.clone(), None)], c.rm(&key))
        } else if i % 7 == 6 {
            let a = format!("/crash/t{i}/a");
            let b = format!("/crash/t{i}/b");
            ledger.lock().unwrap().in_flight = BTreeSet::from([a.clone(), b.clone()]);
            let v = i.to_string();
            let r = c.transaction(|tx| {
                tx.write(&a, v.as_bytes())?;
                tx.write(&b, v.as_bytes())
            });
            (vec![(a, Some(v.clone())), (b, Some(v))], r)
        } else {
            let key = format!("/crash/k{i}");
            ledger.lock().unwrap().in_flight = BTreeSet::from([key.clone()]);
            let v = i.to_string();
            let r = c.write(&key, v.as_bytes());
            (vec![(key, Some(v))], r)
        };
        if result.is_err() {
            return i;
        }
        let mut l = ledger.lock().unwrap();
        l.acked.extend(keys);
        l.in_flight.clear();
        l.count += 1;
        acked.fetch_add(1, Ordering::SeqCst);
        i += 1;
    }
}

fn verify(d: &Daemon, ledger: &Ledger) {
    let mut c = d.client();
    let mut checked = 0;
    for (key, value) in &ledger.acked {
        if ledger.in_flight.contains(key) {
            continue;
        }
        match value {
            Some(v) => assert_eq!(
                c.read_string(key).ok().as_deref(),
                Some(v.as_str()),
                "{key} lost"
            ),
            None => assert!(!c.exists(key).unwrap(), "removed {key} is back"),
        }
        checked += 1;
    }
    assert!(checked > 0);
}

/// Appends half a record to the current journal, as a write cut off by a crash leaves it.
fn tear_journal(data: &Path) {
    let journal = std::fs::read_dir(data)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("journal-")
        })
        .expect("a journal file");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(journal)
        .unwrap();
    let mut torn = 1000u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xab; 20]);
    f.write_all(&torn).unwrap();
}

fn crash_rounds(sync: &str, compact_after: &str) {
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test --sync {sync}: seed {seed}");
    let mut rng = Rng(seed);
    let dir = TempDir::new(&format!("crash-{sync}"));
    let data = dir.join("data");
    let data_arg = data.to_str().unwrap().to_owned();
    let args = [
        "--data-dir",
        &data_arg,
        "--sync",
        sync,
        "--compact-after",
        compact_after,
    ];
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut next = 0;
    for round in 0..3 {
        let mut d = Daemon::start(&dir.join("xs.sock"), &args);
        if round > 0 {
            verify(&d, &ledger.lock().unwrap());
        }
        let acked = Arc::new(AtomicUsize::new(0));
        let target = 50 + rng.next(600) as usize;
        let w = {
            let (c, l, a) = (d.client(), ledger.clone(), acked.clone());
            thread::spawn(move || writer(c, l, a, next))
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "writer stalled");
            thread::sleep(Duration::from_micros(200));
        }
        d.kill();
        next = w.join().unwrap();
        eprintln!(
            "round {round}: killed after {} acknowledged changes",
            acked.load(Ordering::SeqCst)
        );
        if round == 1 {
            tear_journal(&data);
        }
    }
    let d = Daemon::start(&dir.join("xs.sock"), &args);
    let l = ledger.lock().unwrap();
    verify(&d, &l);
    eprintln!("{} acknowledged changes verified", l.count);
}

#[test]
fn sigkill_loses_no_acknowledged_change_sync_batch() {
    // A small threshold so snapshots happen during the stream.
    crash_rounds("batch", "8192");
}

#[test]
fn sigkill_loses_no_acknowledged_change_sync_always() {
    crash_rounds("always", "16777216");
}

#[test]
fn sigkill_loses_no_acknowledged_change_sync_never() {
    crash_rounds("never", "65536");
}

#[test]
fn restart_keeps_the_tree_and_permissions() {
    let dir = TempDir::new("restart");
    let data = dir.join("data");
    let args = ["--data-dir", data.to_str().unwrap()];
    {
        let d = Daemon::start(&dir.join("xs.sock"), &args);
        let mut c = d.client();
        c.write("/a/b", b"1").unwrap();
        c.write("/a/c", b"\x00binary").unwrap();
        c.set_perms("/a/b", &NodePerms::parse(&["r3"]).unwrap())
            .unwrap();
        c.rm("/a/c").unwrap();
        c.write("/z", b"last").unwrap();
    }
    let d = Daemon::start(&dir.join("xs.sock"), &args);
    let mut c = d.client();
    assert_eq!(c.read("/a/b").unwrap(), b"1");
    assert!(!c.exists("/a/c").unwrap());
    assert_eq!(c.get_perms("/a/b").unwrap().to_string(), "r3");
    assert_eq!(c.directory("/").unwrap(), ["tool", "a", "z"]);
}
