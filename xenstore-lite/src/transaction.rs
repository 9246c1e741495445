//! Transactions with optimistic concurrency as C xenstored does them (`transaction.c`).
//!
//! Every operation, inside a transaction or not, runs against an [`Overlay`]: a private copy
//! of each node it touches. The first access of a node records the node's generation (or
//! [`NO_GENERATION`](crate::tree::NO_GENERATION) when it does not exist); writes change only the copy. Committing checks
//! that every recorded generation still matches the tree (else `EAGAIN`, and nothing
//! changes), then turns the modified copies into [`Change`]s for the journal and the tree,
//! and the queued watch events into [`PendingEvent`]s. An operation outside a transaction is
//! a one-operation overlay committed at once; inside a transaction the overlay lives until
//! XS_TRANSACTION_END, so its reads see its own writes and its watches fire only on commit.
//!
//! Worked example 4 of `transaction.c` (two interfering transactions): T1 reads A and
//! writes B, T2 reads B and writes A; T1 commits first (A unchanged), T2 then fails because
//! B's generation moved. See the tests below.

use std::collections::{HashMap, HashSet};

use crate::perms::NodePerms;
use crate::tree::{node_size, Change, Node, Tree};
use crate::watch::PendingEvent;

/// Read access to nodes, recording what it saw when it is a transaction view.
pub trait Lookup {
    /// The node at a canonical path as this view sees it.
    fn lookup(&mut self, path: &str) -> Option<&Node>;
}

/// The committed tree seen directly (reads outside a transaction).
#[derive(Debug)]
pub struct Committed<'a>(pub &'a Tree);

impl Lookup for Committed<'_> {
    fn lookup(&mut self, path: &str) -> Option<&Node> {
        self.0.get(path)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    /// Generation seen at the first access, checked at commit.
    read_gen: u64,
    /// The overlay's version of the node, `None` when absent.
    view: Option<Node>,
    modified: bool,
    /// Permissions of the committed node at first access (watch permission of removals
    /// and permission changes).
    orig_perms: Option<NodePerms>,
    /// A queued watch event: `Some(exact)`.
    fire: Option<bool>,
}

#[derive(Debug)]
struct Undo {
    saved: Vec<(String, Option<Entry>)>,
    seen: HashSet<String>,
    order_len: usize,
    owner_delta: HashMap<u32, i64>,
    bytes: usize,
}

/// The private node copies of one operation or transaction.
#[derive(Debug, Default)]
pub struct Overlay {
    entries: HashMap<String, Entry>,
    order: Vec<String>,
    owner_delta: HashMap<u32, i64>,
    undo: Option<Undo>,
    /// Bytes of the private node copies (paths and node sizes), for the memory quota.
    bytes: usize,
}

fn view_memory(path: &str, view: &Option<Node>) -> usize {
    path.len() + view.as_ref().map_or(0, node_size)
}

fn owner_of(view: &Option<Node>) -> Option<u32> {
    view.as_ref().map(|n| n.perms.owner())
}

impl Overlay {
    /// An empty overlay.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct nodes accessed (the transaction-nodes quota).
    pub fn accessed(&self) -> usize {
        self.entries.len()
    }

    /// Bytes held by the overlay's node copies (paths and [`node_size`]s), which a
    /// transaction charges to its domain's memory quota.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Starts an operation that [`Overlay::rollback_op`] can undo entirely.
    pub fn begin_op(&mut self) {
        self.undo = Some(Undo {
            saved: Vec::new(),
            seen: HashSet::new(),
            order_len: self.order.len(),
            owner_delta: self.owner_delta.clone(),
            bytes: self.bytes,
        });
    }

    /// Keeps the effects of the current operation.
    pub fn end_op(&mut self) {
        self.undo = None;
    }

    /// Undoes every effect of the operation started by [`Overlay::begin_op`].
    pub fn rollback_op(&mut self) {
        let Some(undo) = self.undo.take() else {
            return;
        };
        for (path, prev) in undo.saved.into_iter().rev() {
            match prev {
                Some(e) => {
                    self.entries.insert(path, e);
                }
                None => {
                    self.entries.remove(&path);
                }
            }
        }
        self.order.truncate(undo.order_len);
        self.owner_delta = undo.owner_delta;
        self.bytes = undo.bytes;
    }

    fn save(&mut self, path: &str) {
        if let Some(undo) = &mut self.undo {
            if undo.seen.insert(path.to_owned()) {
                undo.saved
                    .push((path.to_owned(), self.entries.get(path).cloned()));
            }
        }
    }

    fn entry(&mut self, tree: &Tree, path: &str) -> &mut Entry {
        if !self.entries.contains_key(path) {
            self.save(path);
            let node = tree.get(path).cloned();
            self.bytes += view_memory(path, &node);
            self.order.push(path.to_owned());
            self.entries.insert(
                path.to_owned(),
                Entry {
                    read_gen: tree.generation_of(path),
                    orig_perms: node.as_ref().map(|n| n.perms.clone()),
                    view: node,
                    modified: false,
                    fire: None,
                },
            );
        }
        self.entries
            .get_mut(path)
            .expect("the entry was inserted just above")
    }

    fn set(&mut self, tree: &Tree, path: &str, node: Option<Node>) {
        self.entry(tree, path);
        self.save(path);
        let e = self.entries.get_mut(path).expect("entry() created it");
        if let Some(o) = owner_of(&e.view) {
            *self.owner_delta.entry(o).or_insert(0) -= 1;
        }
        if let Some(o) = owner_of(&node) {
            *self.owner_delta.entry(o).or_insert(0) += 1;
        }
        self.bytes =
            self.bytes.saturating_sub(view_memory(path, &e.view)) + view_memory(path, &node);
        e.view = node;
        e.modified = true;
    }

    /// Whether any node this overlay accessed changed in the tree since (commit would fail
    /// with `EAGAIN`).
    pub fn conflicts_with(&self, tree: &Tree) -> bool {
        self.entries
            .iter()
            .any(|(p, e)| e.read_gen != tree.generation_of(p))
    }

    /// Nodes `domid` would own after committing this overlay onto `tree`.
    pub fn owned_after(&self, tree: &Tree, domid: u32) -> i64 {
        let base = i64::try_from(tree.owned_by(domid)).unwrap_or(i64::MAX);
        base + self.owner_delta.get(&domid).copied().unwrap_or(0)
    }

    /// Whether this overlay adds nodes owned by `domid`.
    pub fn grows(&self, domid: u32) -> bool {
        self.owner_delta.get(&domid).copied().unwrap_or(0) > 0
    }

    /// The changes to apply, in first-access order, and the watch events to fire.
    pub fn finish(self) -> (Vec<Change>, Vec<PendingEvent>) {
        let mut entries = self.entries;
        let mut changes = Vec::new();
        let mut events = Vec::new();
        for path in self.order {
            let Some(e) = entries.remove(&path) else {
                continue;
            };
            if let Some(exact) = e.fire {
                let perms = e
                    .view
                    .iter()
                    .map(|n| n.perms.clone())
                    .chain(e.orig_perms)
                    .collect();
                events.push(PendingEvent {
                    path: path.clone(),
                    exact,
                    perms,
                });
            }
            if e.modified {
                changes.push(Change { path, node: e.view });
            }
        }
        (changes, events)
    }
}

/// The view of one operation: the committed tree under an overlay.
#[derive(Debug)]
pub struct TxView<'a> {
    tree: &'a Tree,
    overlay: &'a mut Overlay,
}

impl<'a> TxView<'a> {
    /// A view of `tree` through `overlay`.
    pub fn new(tree: &'a Tree, overlay: &'a mut Overlay) -> Self {
        TxView { tree, overlay }
    }

    /// Sets the node at `path` (created or replaced).
    pub fn put(&mut self, path: &str, node: Node) {
        self.overlay.set(self.tree, path, Some(node));
    }

    /// Removes the node at `path` (not its children: callers remove those first).
    pub fn remove(&mut self, path: &str) {
        self.overlay.set(self.tree, path, None);
    }

    /// Queues a watch event for `path`; `exact` events reach only watches on `path` itself.
    /// A non-exact event replaces an exact one, never the reverse (C `queue_watches`).
    pub fn queue_watch(&mut self, path: &str, exact: bool) {
        let e = self.overlay.entry(self.tree, path);
        e.fire = Some(match e.fire {
            Some(prev) => prev && exact,
            None => exact,
        });
    }

    /// Nodes `domid` would own after this view is committed.
    pub fn owned_after(&self, domid: u32) -> i64 {
        self.overlay.owned_after(self.tree, domid)
    }
}

impl Lookup for TxView<'_> {
    fn lookup(&mut self, path: &str) -> Option<&Node> {
        self.overlay.entry(self.tree, path).view.as_ref()
    }
}

/// An open transaction of one connection.
#[derive(Debug)]
pub struct Transaction {
    /// The id sent to the client (never 0).
    pub id: u32,
    /// The transaction's node copies.
    pub overlay: Overlay,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perms::{NodePerms, PermKind};

    fn tree_with(paths: &[&str]) -> Tree {
        let mut t = Tree::new();
        for p in paths {
            let mut ov = Overlay::new();
            let mut v = TxView::new(&t, &mut ov);
            let mut root = v.lookup("/").cloned().unwrap();
            root.children.push(p.trim_start_matches('/').to_owned());
            v.put("/", root);
            v.put(p, Node::empty(NodePerms::new(0, PermKind::None)));
            let (c, _) = ov.finish();
            t.apply(&c);
        }
        t
    }

    fn write(t: &Tree, ov: &mut Overlay, path: &str, val: &[u8]) {
        let mut v = TxView::new(t, ov);
        let mut n = v.lookup(path).cloned().unwrap();
        n.value = val.to_vec();
        v.put(path, n);
    }

    fn commit(t: &mut Tree, ov: Overlay) -> bool {
        if ov.conflicts_with(t) {
            return false;
        }
        let (c, _) = ov.finish();
        t.apply(&c);
        true
    }

    #[test]
    fn example_1_read_a_write_b_commits() {
        let mut t = tree_with(&["/A", "/B"]);
        let mut t1 = Overlay::new();
        TxView::new(&t, &mut t1).lookup("/A");
        write(&t, &mut t1, "/B", b"1");
        assert!(commit(&mut t, t1));
        assert_eq!(t.get("/B").unwrap().value, b"1");
    }

    #[test]
    fn example_2_conflicting_write_fails() {
        let mut t = tree_with(&["/A", "/B"]);
        let mut t1 = Overlay::new();
        TxView::new(&t, &mut t1).lookup("/A");
        let mut direct = Overlay::new();
        write(&t, &mut direct, "/A", b"x");
        assert!(commit(&mut t, direct));
        write(&t, &mut t1, "/B", b"1");
        assert!(!commit(&mut t, t1));
        assert_eq!(t.get("/B").unwrap().value, b"");
    }

    #[test]
    fn example_3_conflicting_delete_fails() {
        let mut t = tree_with(&["/A", "/B"]);
        let mut t1 = Overlay::new();
        TxView::new(&t, &mut t1).lookup("/A");
        let mut direct = Overlay::new();
        TxView::new(&t, &mut direct).remove("/A");
        assert!(commit(&mut t, direct));
        write(&t, &mut t1, "/B", b"1");
        assert!(!commit(&mut t, t1));
    }

    #[test]
    fn example_4_two_interfering_transactions() {
        let mut t = tree_with(&["/A", "/B"]);
        let mut t1 = Overlay::new();
        let mut t2 = Overlay::new();
        TxView::new(&t, &mut t1).lookup("/A");
        TxView::new(&t, &mut t2).lookup("/B");
        write(&t, &mut t1, "/B", b"1");
        write(&t, &mut t2, "/A", b"2");
        assert!(commit(&mut t, t1));
        assert!(!commit(&mut t, t2));
        assert_eq!(t.get("/A").unwrap().value, b"");
        assert_eq!(t.get("/B").unwrap().value, b"1");
    }

    #[test]
    fn disjoint_transactions_both_commit() {
        let mut t = tree_with(&["/A", "/B"]);
        let mut t1 = Overlay::new();
        let mut t2 = Overlay::new();
        write(&t, &mut t1, "/A", b"1");
        write(&t, &mut t2, "/B", b"2");
        assert!(commit(&mut t, t1));
        assert!(commit(&mut t, t2));
    }

    #[test]
    fn reading_a_missing_node_conflicts_with_its_creation() {
        let mut t = tree_with(&[]);
        let mut t1 = Overlay::new();
        assert!(TxView::new(&t, &mut t1).lookup("/X").is_none());
        t = tree_with(&["/X"]);
        assert!(t1.conflicts_with(&t));
    }

    #[test]
    fn reads_see_own_writes_and_rollback_restores() {
        let t = tree_with(&["/A"]);
        let mut ov = Overlay::new();
        write(&t, &mut ov, "/A", b"mine");
        assert_eq!(
            TxView::new(&t, &mut ov).lookup("/A").unwrap().value,
            b"mine"
        );
        ov.begin_op();
        write(&t, &mut ov, "/A", b"other");
        TxView::new(&t, &mut ov).lookup("/Z");
        ov.rollback_op();
        assert_eq!(
            TxView::new(&t, &mut ov).lookup("/A").unwrap().value,
            b"mine"
        );
        assert_eq!(ov.accessed(), 1);
        assert_eq!(t.get("/A").unwrap().value, b"");
    }
}
