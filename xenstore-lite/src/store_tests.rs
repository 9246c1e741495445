//! Tests of the request processor through its byte interface: the tree, permissions,
//! transactions, watches, quotas, domains and malformed input.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;
use crate::wire::{encode, join_strings};

/// A store with connections driven through encoded requests.
struct Harness {
    store: Store,
    events: HashMap<ConnId, Vec<(String, String)>>,
    req_id: u32,
}

type Reply = std::result::Result<Vec<u8>, Errno>;

impl Harness {
    fn new() -> Self {
        Self::with_quotas(Quotas::default())
    }

    fn with_quotas(quotas: Quotas) -> Self {
        Harness {
            store: Store::new(Tree::new(), None, quotas),
            events: HashMap::new(),
            req_id: 100,
        }
    }

    fn conn(&mut self, domid: u32) -> ConnId {
        self.store.connect(domid)
    }

    /// Sends one request and returns its reply, stashing every watch event delivered.
    fn call(&mut self, conn: ConnId, t: MsgType, tx: u32, payload: &[u8]) -> Reply {
        self.req_id += 1;
        let req_id = self.req_id;
        self.store
            .feed(conn, &encode(t, req_id, tx, payload))
            .unwrap();
        let mut reply = None;
        for c in self.store.take_ready() {
            let mut d = Decoder::new();
            d.push(&self.store.take_output(c));
            while let Some(m) = d.next_message().unwrap() {
                if m.msg_type() == Some(MsgType::WATCH_EVENT) {
                    assert_eq!((m.header.req_id, m.header.tx_id), (0, 0));
                    let parts = wire::split_strings(&m.payload);
                    let s = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
                    self.events
                        .entry(c)
                        .or_default()
                        .push((s(parts[0]), s(parts[1])));
                    continue;
                }
                assert_eq!(c, conn, "a reply went to another connection");
                assert_eq!((m.header.req_id, m.header.tx_id), (req_id, tx));
                reply = Some(if m.msg_type() == Some(MsgType::ERROR) {
                    Err(Errno::from_name(wire::one_arg(&m.payload).unwrap()).unwrap())
                } else {
                    assert_eq!(m.header.msg_type, t as u32);
                    Ok(m.payload)
                });
            }
        }
        reply.expect("every request gets a reply")
    }

    fn events(&mut self, conn: ConnId) -> Vec<(String, String)> {
        self.events.remove(&conn).unwrap_or_default()
    }

    fn write_in(&mut self, c: ConnId, tx: u32, path: &str, value: &str) -> Reply {
        let mut p = join_strings(&[path]);
        p.extend_from_slice(value.as_bytes());
        self.call(c, MsgType::WRITE, tx, &p)
    }

    fn write(&mut self, c: ConnId, path: &str, value: &str) -> Reply {
        self.write_in(c, 0, path, value)
    }

    fn read_in(&mut self, c: ConnId, tx: u32, path: &str) -> std::result::Result<String, Errno> {
        self.call(c, MsgType::READ, tx, &join_strings(&[path]))
            .map(|v| String::from_utf8(v).unwrap())
    }

    fn read(&mut self, c: ConnId, path: &str) -> std::result::Result<String, Errno> {
        self.read_in(c, 0, path)
    }

    fn one(&mut self, c: ConnId, t: MsgType, arg: &str) -> Reply {
        self.call(c, t, 0, &join_strings(&[arg]))
    }

    fn dir(&mut self, c: ConnId, path: &str) -> std::result::Result<Vec<String>, Errno> {
        self.one(c, MsgType::DIRECTORY, path).map(|v| {
            wire::split_strings(&v)
                .into_iter()
                .map(|s| String::from_utf8(s.to_vec()).unwrap())
                .collect()
        })
    }

    fn set_perms(&mut self, c: ConnId, path: &str, perms: &[&str]) -> Reply {
        let mut parts = vec![path];
        parts.extend_from_slice(perms);
        self.call(c, MsgType::SET_PERMS, 0, &join_strings(&parts))
    }

    fn watch(&mut self, c: ConnId, path: &str, token: &str) -> Reply {
        self.call(c, MsgType::WATCH, 0, &join_strings(&[path, token]))
    }

    fn tx_start(&mut self, c: ConnId) -> u32 {
        let r = self.call(c, MsgType::TRANSACTION_START, 0, b"\0").unwrap();
        wire::one_arg(&r).unwrap().parse().unwrap()
    }

    fn tx_end(&mut self, c: ConnId, tx: u32, commit: bool) -> Reply {
        self.call(
            c,
            MsgType::TRANSACTION_END,
            tx,
            if commit { b"T\0" } else { b"F\0" },
        )
    }

    /// dom0 makes `/local/domain/<d>` owned by `d`, as a toolstack does.
    fn make_home(&mut self, dom0: ConnId, d: u32) {
        let home = path::domain_home(d);
        self.write(dom0, &home, "").unwrap();
        let owner = format!("n{d}");
        self.set_perms(dom0, &home, &[&owner]).unwrap();
    }
}

fn ok_reply() -> Reply {
    Ok(b"OK\0".to_vec())
}

#[test]
fn write_creates_parents_and_rm_removes_subtrees() {
    let mut h = Harness::new();
    let c = h.conn(0);
    assert_eq!(h.write(c, "/a/b/c", "v"), ok_reply());
    assert_eq!(h.read(c, "/a/b/c").unwrap(), "v");
    assert_eq!(h.read(c, "/a/b").unwrap(), "");
    assert_eq!(h.dir(c, "/").unwrap(), vec!["tool", "a"]);
    h.write(c, "/a/b/d", "w").unwrap();
    assert_eq!(h.dir(c, "/a/b").unwrap(), vec!["c", "d"]);
    assert_eq!(h.one(c, MsgType::RM, "/a/b"), ok_reply());
    assert_eq!(h.read(c, "/a/b/c"), Err(Errno::ENOENT));
    assert_eq!(h.dir(c, "/a").unwrap(), Vec::<String>::new());
    // A missing node with an existing parent: fine. Missing parent: ENOENT.
    assert_eq!(h.one(c, MsgType::RM, "/a/zz"), ok_reply());
    assert_eq!(h.one(c, MsgType::RM, "/q/zz"), Err(Errno::ENOENT));
    assert_eq!(h.one(c, MsgType::RM, "/"), Err(Errno::EINVAL));
    assert_eq!(h.one(c, MsgType::MKDIR, "/m/n"), ok_reply());
    assert_eq!(h.one(c, MsgType::MKDIR, "/m/n"), ok_reply());
    assert_eq!(h.read(c, "/m/n").unwrap(), "");
    h.store.tree().check().unwrap();
}

#[test]
fn values_are_binary_up_to_the_payload_limit() {
    let mut h = Harness::new();
    let c = h.conn(0);
    let value: Vec<u8> = (0..=255u8).cycle().take(4096 - 3).collect();
    let mut p = join_strings(&["/b"]);
    p.extend_from_slice(&value);
    assert_eq!(p.len(), 4096);
    assert_eq!(h.call(c, MsgType::WRITE, 0, &p), ok_reply());
    assert_eq!(h.one(c, MsgType::READ, "/b").unwrap(), value);
}

#[test]
fn relative_paths_are_under_the_callers_home() {
    let mut h = Harness::new();
    let d0 = h.conn(0);
    let g = h.conn(3);
    h.make_home(d0, 3);
    assert_eq!(h.write(g, "device/vbd/state", "1"), ok_reply());
    assert_eq!(h.read(d0, "/local/domain/3/device/vbd/state").unwrap(), "1");
    assert_eq!(h.write(d0, "name", "Domain-0"), ok_reply());
    assert_eq!(h.read(d0, "/local/domain/0/name").unwrap(), "Domain-0");
    assert_eq!(
        h.one(d0, MsgType::GET_DOMAIN_PATH, "3").unwrap(),
        b"/local/domain/3\0"
    );
}

#[test]
fn bad_paths_and_payloads_are_einval() {
    let mut h = Harness::new();
    let c = h.conn(0);
    for bad in ["/a//b", "/a/", "/a b", "@introduceDomain", ""] {
        assert_eq!(h.write(c, bad, "x"), Err(Errno::EINVAL), "{bad:?}");
        assert_eq!(h.read(c, bad), Err(Errno::EINVAL), "{bad:?}");
    }
    let long = format!("/{}", "a".repeat(3072));
    assert_eq!(h.write(c, &long, "x"), Err(Errno::EINVAL));
    assert_eq!(h.call(c, MsgType::READ, 0, b"/a"), Err(Errno::EINVAL));
    assert_eq!(h.call(c, MsgType::READ, 0, b"/a\0/b\0"), Err(Errno::EINVAL));
    assert_eq!(h.call(c, MsgType::WRITE, 0, b"/nonul"), Err(Errno::EINVAL));
    assert_eq!(h.call(c, MsgType::WATCH, 0, b"/a\0"), Err(Errno::EINVAL));
    assert_eq!(
        h.call(c, MsgType::TRANSACTION_END, 0, b"X\0"),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.call(c, MsgType::SET_PERMS, 0, b"/tool\0x1\0"),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.call(c, MsgType::DIRECTORY_PART, 0, b"/\0zz\0"),
        Err(Errno::EINVAL)
    );
    h.store.tree().check().unwrap();
}

#[test]
fn unknown_and_server_only_types_are_enosys() {
    let mut h = Harness::new();
    let c = h.conn(0);
    for t in [
        MsgType::WATCH_EVENT,
        MsgType::ERROR,
        MsgType::RESTRICT,
        MsgType::INVALID,
    ] {
        assert_eq!(h.call(c, t, 0, b""), Err(Errno::ENOSYS), "{t:?}");
    }
    // A type xs_wire.h does not define at all.
    h.store
        .feed(
            c,
            &Header {
                msg_type: 999,
                req_id: 5,
                tx_id: 0,
                len: 0,
            }
            .encode(),
        )
        .unwrap();
    let mut d = Decoder::new();
    d.push(&h.store.take_output(c));
    let m = d.next_message().unwrap().unwrap();
    assert_eq!(m.msg_type(), Some(MsgType::ERROR));
    assert_eq!(m.payload, b"ENOSYS\0");
    assert_eq!(m.header.req_id, 5);
}

#[test]
fn privileged_operations_need_dom0() {
    let mut h = Harness::new();
    let g = h.conn(4);
    let args = join_strings(&["5", "1000", "3"]);
    assert_eq!(h.call(g, MsgType::INTRODUCE, 0, &args), Err(Errno::EACCES));
    assert_eq!(h.one(g, MsgType::RELEASE, "5"), Err(Errno::EACCES));
    assert_eq!(
        h.one(g, MsgType::IS_DOMAIN_INTRODUCED, "5"),
        Err(Errno::EACCES)
    );
    assert_eq!(
        h.call(g, MsgType::SET_TARGET, 0, b"5\x004\0"),
        Err(Errno::EACCES)
    );
}

#[test]
fn guests_need_permission() {
    let mut h = Harness::new();
    let d0 = h.conn(0);
    let g1 = h.conn(1);
    let g2 = h.conn(2);
    h.write(d0, "/secret/x", "s").unwrap();
    assert_eq!(h.read(g1, "/secret/x"), Err(Errno::EACCES));
    assert_eq!(h.write(g1, "/secret/x", "t"), Err(Errno::EACCES));
    // Missing node below an unreadable parent: EACCES, not ENOENT (no information leak).
    assert_eq!(h.read(g1, "/secret/nothing"), Err(Errno::EACCES));
    assert_eq!(h.write(g1, "/secret/new", "t"), Err(Errno::EACCES));
    h.make_home(d0, 1);
    assert_eq!(h.read(g1, "nothing"), Err(Errno::ENOENT));
    h.write(g1, "data/a", "1").unwrap();
    // New nodes inherit the parent's permissions with the writer as owner.
    assert_eq!(
        h.one(d0, MsgType::GET_PERMS, "/local/domain/1/data/a")
            .unwrap(),
        b"n1\0"
    );
    assert_eq!(h.read(g2, "/local/domain/1/data/a"), Err(Errno::EACCES));
    // The owner grants domain 2 read access.
    assert_eq!(h.set_perms(g1, "data/a", &["n1", "r2"]), ok_reply());
    assert_eq!(h.read(g2, "/local/domain/1/data/a").unwrap(), "1");
    assert_eq!(
        h.write(g2, "/local/domain/1/data/a", "x"),
        Err(Errno::EACCES)
    );
    // Only dom0 changes the owner; only the owner changes permissions.
    assert_eq!(h.set_perms(g1, "data/a", &["n2"]), Err(Errno::EPERM));
    assert_eq!(
        h.set_perms(g2, "/local/domain/1/data/a", &["b2"]),
        Err(Errno::EACCES)
    );
    assert_eq!(
        h.set_perms(d0, "/local/domain/1/data/a", &["b2"]),
        ok_reply()
    );
    assert_eq!(h.write(g2, "/local/domain/1/data/a", "mine"), ok_reply());
    // dom0 writing under a guest's node keeps the inherited owner.
    h.write(d0, "/local/domain/1/data/b", "0").unwrap();
    assert_eq!(
        h.one(d0, MsgType::GET_PERMS, "/local/domain/1/data/b")
            .unwrap(),
        b"n1\0"
    );
}

#[test]
fn transactions_isolate_and_commit_atomically() {
    let mut h = Harness::new();
    let c = h.conn(0);
    let other = h.conn(0);
    h.write(c, "/t/a", "0").unwrap();
    h.watch(other, "/t", "tok").unwrap();
    h.events(other);
    let tx = h.tx_start(c);
    h.write_in(c, tx, "/t/a", "1").unwrap();
    h.write_in(c, tx, "/t/new/deep", "2").unwrap();
    assert_eq!(h.read_in(c, tx, "/t/a").unwrap(), "1");
    assert_eq!(h.read(other, "/t/a").unwrap(), "0");
    assert_eq!(h.read(other, "/t/new/deep"), Err(Errno::ENOENT));
    assert!(h.events(other).is_empty(), "no event before commit");
    assert_eq!(h.tx_end(c, tx, true), ok_reply());
    assert_eq!(h.read(other, "/t/new/deep").unwrap(), "2");
    let paths: Vec<String> = h.events(other).into_iter().map(|e| e.0).collect();
    assert_eq!(paths, vec!["/t/a", "/t/new/deep"]);
    // The transaction is gone after its end.
    assert_eq!(h.tx_end(c, tx, true), Err(Errno::ENOENT));
    assert_eq!(h.read_in(c, tx, "/t/a"), Err(Errno::ENOENT));
    h.store.tree().check().unwrap();
}

#[test]
fn conflicting_commit_is_eagain_and_changes_nothing() {
    let mut h = Harness::new();
    let a = h.conn(0);
    let b = h.conn(0);
    h.write(a, "/A", "a0").unwrap();
    h.write(a, "/B", "b0").unwrap();
    h.watch(b, "/", "all").unwrap();
    // Worked example 4 of transaction.c, over the wire.
    let t1 = h.tx_start(a);
    let t2 = h.tx_start(b);
    h.read_in(a, t1, "/A").unwrap();
    h.read_in(b, t2, "/B").unwrap();
    h.write_in(a, t1, "/B", "b1").unwrap();
    h.write_in(b, t2, "/A", "a2").unwrap();
    h.write_in(b, t2, "/C", "c2").unwrap();
    assert_eq!(h.tx_end(a, t1, true), ok_reply());
    h.events(b);
    assert_eq!(h.tx_end(b, t2, true), Err(Errno::EAGAIN));
    assert_eq!(h.read(a, "/A").unwrap(), "a0");
    assert_eq!(h.read(a, "/B").unwrap(), "b1");
    assert_eq!(h.read(a, "/C"), Err(Errno::ENOENT));
    assert!(h.events(b).is_empty(), "a failed commit fires nothing");
    // Aborting discards too.
    let t3 = h.tx_start(a);
    h.write_in(a, t3, "/A", "never").unwrap();
    assert_eq!(h.tx_end(a, t3, false), ok_reply());
    assert_eq!(h.read(a, "/A").unwrap(), "a0");
}

#[test]
fn transaction_ids_and_nesting() {
    let mut h = Harness::new();
    let c = h.conn(0);
    let t1 = h.tx_start(c);
    let t2 = h.tx_start(c);
    assert_ne!(t1, 0);
    assert_ne!(t1, t2);
    assert_eq!(
        h.call(c, MsgType::TRANSACTION_START, t1, b"\0"),
        Err(Errno::EBUSY)
    );
    assert_eq!(h.read_in(c, 77, "/tool"), Err(Errno::ENOENT));
    // WATCH ignores the transaction id.
    assert_eq!(h.call(c, MsgType::WATCH, 77, b"/tool\0t\0"), ok_reply());
    // Transactions of one connection are not visible to another.
    let d = h.conn(0);
    assert_eq!(h.read_in(d, t1, "/tool"), Err(Errno::ENOENT));
    assert_eq!(h.call(c, MsgType::RESET_WATCHES, 0, b""), ok_reply());
    assert_eq!(h.tx_end(c, t1, true), Err(Errno::ENOENT));
}

#[test]
fn watches_fire_once_at_registration_and_on_subtree_changes() {
    let mut h = Harness::new();
    let d0 = h.conn(0);
    let w = h.conn(0);
    assert_eq!(h.watch(w, "/x", "tok"), ok_reply());
    assert_eq!(h.events(w), vec![("/x".into(), "tok".into())]);
    assert_eq!(h.watch(w, "/x", "tok"), Err(Errno::EEXIST));
    h.write(d0, "/x/y/z", "1").unwrap();
    h.write(d0, "/xy", "1").unwrap();
    h.write(d0, "/", "root").unwrap();
    assert_eq!(h.events(w), vec![("/x/y/z".into(), "tok".into())]);
    // Removing an ancestor fires with the watched path.
    h.one(d0, MsgType::RM, "/x").unwrap();
    assert_eq!(h.events(w), vec![("/x".into(), "tok".into())]);
    // A watch below a removed subtree hears of it with its own path.
    h.write(d0, "/p/q/r", "1").unwrap();
    h.watch(w, "/p/q/r", "deep").unwrap();
    h.events(w);
    h.one(d0, MsgType::RM, "/p").unwrap();
    assert_eq!(h.events(w), vec![("/p/q/r".into(), "deep".into())]);
    // Permission changes fire too.
    h.write(d0, "/x", "").unwrap();
    h.events(w);
    h.set_perms(d0, "/x", &["r0"]).unwrap();
    assert_eq!(h.events(w), vec![("/x".into(), "tok".into())]);
    assert_eq!(h.call(w, MsgType::UNWATCH, 0, b"/x\0tok\0"), ok_reply());
    assert_eq!(
        h.call(w, MsgType::UNWATCH, 0, b"/x\0tok\0"),
        Err(Errno::ENOENT)
    );
    h.write(d0, "/x/again", "1").unwrap();
    assert!(h.events(w).is_empty());
}

#[test]
fn watch_depth_and_relative_paths() {
    let mut h = Harness::new();
    let d0 = h.conn(0);
    let g = h.conn(6);
    h.make_home(d0, 6);
    assert_eq!(h.watch(g, "device", "rel"), ok_reply());
    assert_eq!(h.events(g), vec![("device".into(), "rel".into())]);
    h.write(d0, "/local/domain/6/device/vbd", "1").unwrap();
    assert_eq!(h.events(g), vec![("device/vbd".into(), "rel".into())]);
    let w = h.conn(0);
    h.call(w, MsgType::WATCH, 0, b"/d\0shallow\x001\0").unwrap();
    h.events(w);
    h.write(d0, "/d/a", "1").unwrap();
    h.write(d0, "/d/a/b", "1").unwrap();
    assert_eq!(h.events(w), vec![("/d/a".into(), "shallow".into())]);
}

#[test]
fn watch_events_respect_permissions() {
    let mut h = Harness::new();
    let d0 = h.conn(0);
    let g = h.conn(2);
    h.make_home(d0, 2);
    h.watch(g, "/", "all").unwrap();
    h.events(g);
    h.write(d0, "/private/x", "1").unwrap();
    assert!(
        h.events(g).is_empty(),
        "a guest hears nothing of nodes it cannot read"
    );
    h.write(d0, "/local/domain/2/x", "1").unwrap();
    assert_eq!(
        h.events(g),
        vec![("/local/domain/2/x".into(), "all".into())]
    );
    // Losing access still tells the watcher, through the old permissions.
    h.set_perms(d0, "/local/domain/2/x", &["n0"]).unwrap();
    assert_eq!(
        h.events(g),
        vec![("/local/domain/2/x".into(), "all".into())]
    );
}

#[test]
fn special_watches_hear_introduce_and_release() {
    let mut h = Harness::new();
    let d0 = h.conn(0);
    let g = h.conn(9);
    h.watch(d0, "@introduceDomain", "intro").unwrap();
    h.watch(d0, "@releaseDomain", "rel").unwrap();
    h.watch(d0, "/", "root").unwrap();
    h.events(d0);
    // A guest may not watch @releaseDomain events without permission: it registers, but
    // events are filtered.
    h.watch(g, "@releaseDomain", "g").unwrap();
    h.events(g);
    assert_eq!(
        h.call(
            d0,
            MsgType::INTRODUCE,
            0,
            &join_strings(&["9", "4096", "5"])
        ),
        ok_reply()
    );
    assert_eq!(
        h.events(d0),
        vec![("@introduceDomain".into(), "intro".into())]
    );
    assert_eq!(
        h.one(d0, MsgType::IS_DOMAIN_INTRODUCED, "9").unwrap(),
        b"T\0"
    );
    assert_eq!(
        h.one(d0, MsgType::IS_DOMAIN_INTRODUCED, "8").unwrap(),
        b"F\0"
    );
    assert_eq!(h.one(d0, MsgType::RESUME, "9"), ok_reply());
    assert_eq!(h.one(d0, MsgType::RESUME, "8"), Err(Errno::ENOENT));
    // The guest's own nodes go away with it.
    h.make_home(d0, 9);
    h.write(d0, "/shared/by9", "x").unwrap();
    h.set_perms(d0, "/shared/by9", &["b9"]).unwrap();
    h.events(d0);
    assert_eq!(h.one(d0, MsgType::RELEASE, "9"), ok_reply());
    let ev = h.events(d0);
    assert!(
        ev.contains(&("@releaseDomain".into(), "rel".into())),
        "{ev:?}"
    );
    assert!(
        ev.contains(&("/local/domain/9".into(), "root".into())),
        "{ev:?}"
    );
    assert_eq!(h.read(d0, "/local/domain/9"), Err(Errno::ENOENT));
    assert_eq!(h.read(d0, "/shared/by9"), Err(Errno::ENOENT));
    assert!(h.store.is_closed(g), "a released domain's connection ends");
    assert_eq!(h.one(d0, MsgType::RELEASE, "9"), Err(Errno::ENOENT));
    assert_eq!(h.one(d0, MsgType::RELEASE, "0"), Err(Errno::EINVAL));
    h.store.tree().check().unwrap();
}

#[test]
fn set_target_gives_a_device_model_its_guests_rights() {
    let mut h = Harness::new();
    let d0 = h.conn(0);
    let dm = h.conn(11);
    h.make_home(d0, 10);
    h.write(d0, "/local/domain/10/x", "1").unwrap();
    assert_eq!(h.read(dm, "/local/domain/10/x"), Err(Errno::EACCES));
    assert_eq!(
        h.call(d0, MsgType::SET_TARGET, 0, b"11\x0010\0"),
        Err(Errno::ENOENT)
    );
    h.call(d0, MsgType::INTRODUCE, 0, b"10\x000\x001\0")
        .unwrap();
    h.call(d0, MsgType::INTRODUCE, 0, b"11\x000\x002\0")
        .unwrap();
    assert_eq!(
        h.call(d0, MsgType::SET_TARGET, 0, b"11\x0010\0"),
        ok_reply()
    );
    assert_eq!(h.read(dm, "/local/domain/10/x").unwrap(), "1");
}

#[test]
fn node_quota_is_enospc_and_changes_nothing() {
    let quotas = Quotas {
        nodes: 3,
        ..Quotas::default()
    };
    let mut h = Harness::with_quotas(quotas);
    let d0 = h.conn(0);
    let g = h.conn(5);
    h.make_home(d0, 5);
    // The home counts: domain 5 owns 1 node.
    h.write(g, "a", "1").unwrap();
    h.write(g, "b", "1").unwrap();
    assert_eq!(h.write(g, "c", "1"), Err(Errno::ENOSPC));
    assert_eq!(h.write(g, "x/y", "1"), Err(Errno::ENOSPC));
    assert_eq!(h.read(d0, "/local/domain/5/x"), Err(Errno::ENOENT));
    assert_eq!(h.dir(d0, "/local/domain/5").unwrap(), vec!["a", "b"]);
    // Existing nodes can still be rewritten; freeing one allows another.
    assert_eq!(h.write(g, "a", "2"), ok_reply());
    h.one(g, MsgType::RM, "b").unwrap();
    assert_eq!(h.write(g, "c", "1"), ok_reply());
    // dom0 has no quota.
    for i in 0..10 {
        h.write(d0, &format!("/many/{i}"), "x").unwrap();
    }
    h.store.tree().check().unwrap();
}

#[test]
fn node_quota_is_checked_again_at_commit() {
    let quotas = Quotas {
        nodes: 5,
        ..Quotas::default()
    };
    let mut h = Harness::with_quotas(quotas);
    let d0 = h.conn(0);
    let g = h.conn(5);
    h.make_home(d0, 5);
    // Two directories the guest owns: 3 nodes in all.
    h.write(d0, "/local/domain/5/p", "").unwrap();
    h.write(d0, "/local/domain/5/q", "").unwrap();
    let t1 = h.tx_start(g);
    let t2 = h.tx_start(g);
    h.write_in(g, t1, "p/a", "1").unwrap();
    h.write_in(g, t2, "q/b", "1").unwrap();
    h.write_in(g, t2, "q/c", "1").unwrap();
    assert_eq!(h.tx_end(g, t1, true), ok_reply());
    // No conflict (disjoint nodes), but 4 + 2 nodes exceed the quota of 5.
    assert_eq!(h.tx_end(g, t2, true), Err(Errno::ENOSPC));
    assert_eq!(h.read(d0, "/local/domain/5/q/b"), Err(Errno::ENOENT));
    assert_eq!(h.read(d0, "/local/domain/5/p/a").unwrap(), "1");
}

#[test]
fn size_watch_transaction_and_perm_quotas() {
    let quotas = Quotas {
        node_size: 100,
        watches: 2,
        transactions: 2,
        transaction_nodes: 3,
        perms_per_node: 2,
        path_max: 20,
        ..Quotas::default()
    };
    let mut h = Harness::with_quotas(quotas);
    let d0 = h.conn(0);
    let g = h.conn(5);
    h.make_home(d0, 5);
    h.write(g, "v", "small").unwrap();
    assert_eq!(h.write(g, "v", &"x".repeat(100)), Err(Errno::ENOSPC));
    assert_eq!(h.read(g, "v").unwrap(), "small");
    assert_eq!(
        h.write(d0, "/local/domain/5/big", &"x".repeat(1000)),
        ok_reply()
    );
    h.watch(g, "v", "1").unwrap();
    h.watch(g, "v", "2").unwrap();
    assert_eq!(h.watch(g, "v", "3"), Err(Errno::E2BIG));
    let t1 = h.tx_start(g);
    h.tx_start(g);
    assert_eq!(
        h.call(g, MsgType::TRANSACTION_START, 0, b"\0"),
        Err(Errno::ENOSPC)
    );
    // Transaction nodes: v, a and the home make 3 accessed nodes; b would be the fourth.
    h.read_in(g, t1, "v").unwrap();
    h.write_in(g, t1, "a", "1").unwrap();
    assert_eq!(h.write_in(g, t1, "b", "1"), Err(Errno::ENOSPC));
    assert_eq!(h.tx_end(g, t1, true), ok_reply());
    assert_eq!(h.read(g, "a").unwrap(), "1");
    assert_eq!(h.read(g, "b"), Err(Errno::ENOENT));
    assert_eq!(h.set_perms(g, "v", &["n5", "r1", "r2"]), Err(Errno::ENOSPC));
    assert_eq!(h.set_perms(g, "v", &["n5", "r1"]), ok_reply());
    assert_eq!(h.write(g, &"p".repeat(21), "1"), Err(Errno::EINVAL));
    assert_eq!(h.write(g, &"p".repeat(20), "1"), ok_reply());
}

#[test]
fn outstanding_quota_stops_reading_until_replies_are_taken() {
    let quotas = Quotas {
        outstanding: 3,
        ..Quotas::default()
    };
    let mut h = Harness::with_quotas(quotas);
    let g = h.conn(5);
    let mut bytes = Vec::new();
    for i in 0..5 {
        bytes.extend_from_slice(&encode(MsgType::GET_DOMAIN_PATH, i, 0, b"5\0"));
    }
    h.store.feed(g, &bytes).unwrap();
    assert!(!h.store.wants_input(g));
    let mut d = Decoder::new();
    d.push(&h.store.take_output(g));
    let mut n = 0;
    while d.next_message().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 3);
    assert!(h.store.wants_input(g));
    h.store.process(g).unwrap();
    d.push(&h.store.take_output(g));
    while d.next_message().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 5);
}

#[test]
fn a_privileged_client_that_never_reads_is_paused() {
    let mut h = Harness::new();
    let c = h.conn(0);
    h.write(c, &format!("/v/{}", "k".repeat(10)), &"x".repeat(4000))
        .unwrap();
    let mut bytes = Vec::new();
    for i in 0..1000 {
        bytes.extend_from_slice(&encode(MsgType::READ, i, 0, b"/v/kkkkkkkkkk\0"));
    }
    h.store.feed(c, &bytes).unwrap();
    assert!(
        !h.store.wants_input(c),
        "1000 replies of 4 KiB are not queued at once"
    );
    let mut d = Decoder::new();
    let mut replies = 0;
    while replies < 1000 {
        d.push(&h.store.take_output(c));
        while d.next_message().unwrap().is_some() {
            replies += 1;
        }
        h.store.process(c).unwrap();
    }
    assert!(h.store.wants_input(c));
}

#[test]
fn oversized_payload_gets_e2big_and_closes() {
    let mut h = Harness::new();
    let c = h.conn(0);
    let header = Header {
        msg_type: MsgType::WRITE as u32,
        req_id: 3,
        tx_id: 0,
        len: 5000,
    };
    assert!(h.store.feed(c, &header.encode()).is_err());
    let mut d = Decoder::new();
    d.push(&h.store.take_output(c));
    let m = d.next_message().unwrap().unwrap();
    assert_eq!(m.payload, b"E2BIG\0");
    assert!(h.store.is_closed(c));
    h.store.tree().check().unwrap();
}

#[test]
fn large_directories_use_directory_part() {
    let mut h = Harness::new();
    let c = h.conn(0);
    let names: Vec<String> = (0..400).map(|i| format!("child-number-{i:04}")).collect();
    for n in &names {
        h.write(c, &format!("/big/{n}"), "").unwrap();
    }
    assert_eq!(h.one(c, MsgType::DIRECTORY, "/big"), Err(Errno::E2BIG));
    let mut all = Vec::new();
    let mut generation = None;
    loop {
        let off = all.len().to_string();
        let r = h
            .call(
                c,
                MsgType::DIRECTORY_PART,
                0,
                &join_strings(&["/big", &off]),
            )
            .unwrap();
        assert!(r.len() <= XENSTORE_PAYLOAD_MAX);
        let nul = r.iter().position(|&b| b == 0).unwrap();
        let g = r[..nul].to_vec();
        assert_eq!(*generation.get_or_insert(g.clone()), g);
        let body = &r[nul + 1..];
        if body == b"\0" || body.ends_with(b"\0\0") {
            all.extend_from_slice(&body[..body.len() - 1]);
            break;
        }
        all.extend_from_slice(body);
    }
    let got: Vec<String> = wire::split_strings(&all)
        .into_iter()
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect();
    assert_eq!(got, names);
}

#[test]
fn disconnect_drops_transactions_and_watches() {
    let mut h = Harness::new();
    let c = h.conn(0);
    let d = h.conn(0);
    let tx = h.tx_start(c);
    h.write_in(c, tx, "/gone", "1").unwrap();
    h.watch(c, "/", "w").unwrap();
    h.events(c);
    // Half a message, then the client goes away.
    h.store
        .feed(c, &encode(MsgType::WRITE, 1, 0, b"/half\0x")[..10])
        .unwrap();
    h.store.disconnect(c);
    assert_eq!(h.read(d, "/gone"), Err(Errno::ENOENT));
    assert_eq!(h.read(d, "/half"), Err(Errno::ENOENT));
    h.write(d, "/after", "1").unwrap();
    assert!(h.events(c).is_empty());
    h.store.tree().check().unwrap();
}

/// One random operation for the model test.
#[derive(Debug, Clone)]
enum Op {
    Write(usize, u8),
    Mkdir(usize),
    Rm(usize),
    Read(usize),
}

const PATHS: &[&str] = &["/m", "/m/a", "/m/a/b", "/m/c", "/n", "/n/d/e"];

fn arb_op() -> impl Strategy<Value = Op> {
    let p = 0..PATHS.len();
    prop_oneof![
        (p.clone(), any::<u8>()).prop_map(|(p, v)| Op::Write(p, v)),
        p.clone().prop_map(Op::Mkdir),
        p.clone().prop_map(Op::Rm),
        p.prop_map(Op::Read),
    ]
}

/// A naive model: a map of path to value, parents created on write, subtrees removed.
fn model_apply(model: &mut BTreeMap<String, Vec<u8>>, op: &Op) -> Option<Vec<u8>> {
    let ancestors = |p: &str| {
        let mut out = Vec::new();
        let mut cur = p;
        while let Some(parent) = path::parent(cur) {
            if parent != "/" {
                out.push(parent.to_owned());
            }
            cur = parent;
        }
        out
    };
    match op {
        Op::Write(p, v) => {
            for a in ancestors(PATHS[*p]) {
                model.entry(a).or_default();
            }
            model.insert(PATHS[*p].into(), vec![*v]);
            None
        }
        Op::Mkdir(p) => {
            for a in ancestors(PATHS[*p]) {
                model.entry(a).or_default();
            }
            model.entry(PATHS[*p].into()).or_default();
            None
        }
        Op::Rm(p) => {
            model.retain(|k, _| !path::is_at_or_below(k, PATHS[*p]));
            None
        }
        Op::Read(p) => model.get(PATHS[*p]).cloned(),
    }
}

proptest! {
    /// Random writes, mkdirs, removals and reads through the wire give the same results as
    /// a naive map model, and the tree stays consistent.
    #[test]
    fn store_matches_a_simple_model(ops in proptest::collection::vec(arb_op(), 1..60)) {
        let mut h = Harness::new();
        let c = h.conn(0);
        let mut model = BTreeMap::new();
        for op in &ops {
            let expected = model_apply(&mut model, op);
            match op {
                Op::Write(p, v) => {
                    let mut payload = join_strings(&[PATHS[*p]]);
                    payload.push(*v);
                    prop_assert_eq!(h.call(c, MsgType::WRITE, 0, &payload), ok_reply());
                }
                Op::Mkdir(p) => prop_assert_eq!(h.one(c, MsgType::MKDIR, PATHS[*p]), ok_reply()),
                Op::Rm(p) => {
                    let parent_exists = path::parent(PATHS[*p])
                        .is_some_and(|pp| pp == "/" || h.store.tree().get(pp).is_some());
                    let r = h.one(c, MsgType::RM, PATHS[*p]);
                    if parent_exists {
                        prop_assert_eq!(r, ok_reply());
                    } else {
                        prop_assert_eq!(r, Err(Errno::ENOENT));
                    }
                }
                Op::Read(p) => {
                    let got = h.one(c, MsgType::READ, PATHS[*p]).ok();
                    prop_assert_eq!(got, expected);
                }
            }
            prop_assert!(h.store.tree().check().is_ok());
        }
    }

    /// Arbitrary bytes from a privileged and an unprivileged client never panic the store,
    /// never break the tree, and every whole message gets exactly one reply.
    #[test]
    fn garbage_never_breaks_the_store(
        msgs in proptest::collection::vec(
            (0u32..30, any::<u32>(), 0u32..3, proptest::collection::vec(
                prop_oneof![Just(0u8), Just(b'/'), Just(b'a'), Just(b'@'), Just(b'T'), Just(b'1'), any::<u8>()],
                0..40)),
            0..40),
        domid in prop_oneof![Just(0u32), Just(7u32)],
    ) {
        let mut store = Store::in_memory();
        let c = store.connect(domid);
        let mut d = Decoder::new();
        let mut replies = 0;
        for (t, req, tx, payload) in &msgs {
            let h = Header { msg_type: *t, req_id: *req, tx_id: *tx, len: payload.len() as u32 };
            let mut bytes = h.encode().to_vec();
            bytes.extend_from_slice(payload);
            store.feed(c, &bytes).unwrap();
            d.push(&store.take_output(c));
            while let Some(m) = d.next_message().unwrap() {
                if m.msg_type() != Some(MsgType::WATCH_EVENT) {
                    prop_assert_eq!(m.header.req_id, *req);
                    replies += 1;
                }
            }
            prop_assert!(store.tree().check().is_ok());
        }
        prop_assert_eq!(replies, msgs.len());
    }
}
