//! The committed node tree: nodes keyed by canonical path, generation counts, per-domain node
//! counts (C xenstored `core.c` nodes, `transaction.c` generation notes).
//!
//! Every node carries its value, permissions, the ordered list of its children's names and
//! the generation at which it was last written. The tree changes only through
//! [`Tree::apply`], with a list of [`Change`]s computed by an overlay; the same list is what
//! the journal stores, so a replay rebuilds the same tree.

use std::collections::HashMap;

use crate::path::{self, INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use crate::perms::{NodePerms, PermKind};

/// Generation of a node that does not exist (C xenstored `NO_GENERATION`).
pub const NO_GENERATION: u64 = u64::MAX;

/// Bytes a node occupies for the node-size quota: C xenstored's record header (24 bytes),
/// 8 bytes per permission entry, the value and the NUL-terminated child names.
pub fn node_size(node: &Node) -> usize {
    24 + 8 * node.perms.entries().len()
        + node.value.len()
        + node.children.iter().map(|c| c.len() + 1).sum::<usize>()
}

/// Bytes a node at `path` costs its owner for the memory quota: the path and
/// [`node_size`].
pub fn node_memory(path: &str, node: &Node) -> usize {
    path.len() + node_size(node)
}

/// One node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The value, up to 4096 bytes, any bytes.
    pub value: Vec<u8>,
    /// Permissions, owner first.
    pub perms: NodePerms,
    /// Names of the children, in creation order.
    pub children: Vec<String>,
    /// Generation of the last write (set by [`Tree::apply`]).
    pub generation: u64,
}

impl Node {
    /// An empty node with the given permissions.
    pub fn empty(perms: NodePerms) -> Self {
        Node {
            value: Vec::new(),
            perms,
            children: Vec::new(),
            generation: NO_GENERATION,
        }
    }

    /// The children as XS_DIRECTORY sends them: each name NUL-terminated.
    pub fn children_payload(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for c in &self.children {
            out.extend_from_slice(c.as_bytes());
            out.push(0);
        }
        out
    }
}

/// One change of the tree: the new state of `path`, or its removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Canonical path.
    pub path: String,
    /// New node (its generation is ignored), `None` to remove the node.
    pub node: Option<Node>,
}

/// The committed tree.
#[derive(Debug, Clone)]
pub struct Tree {
    nodes: HashMap<String, Node>,
    generation: u64,
    owned: HashMap<u32, Owned>,
}

/// What one domain owns in the tree.
#[derive(Debug, Clone, Copy, Default)]
struct Owned {
    nodes: usize,
    bytes: usize,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// The initial tree of C xenstored: `/`, `/tool`, `/tool/xenstored` and the two special
    /// nodes, all owned by dom0 with no access for others (`n0`).
    pub fn new() -> Self {
        let mut t = Tree::empty();
        let perms = NodePerms::new(0, PermKind::None);
        let mk = |children: &[&str]| Node {
            children: children.iter().map(|c| (*c).to_owned()).collect(),
            ..Node::empty(perms.clone())
        };
        let initial = [
            ("/", mk(&["tool"])),
            ("/tool", mk(&["xenstored"])),
            ("/tool/xenstored", mk(&[])),
            (INTRODUCE_DOMAIN, mk(&[])),
            (RELEASE_DOMAIN, mk(&[])),
        ];
        let changes: Vec<Change> = initial
            .into_iter()
            .map(|(p, n)| Change {
                path: p.to_owned(),
                node: Some(n),
            })
            .collect();
        t.apply(&changes);
        t
    }

    /// A tree with no node at all (the start of a snapshot load).
    pub fn empty() -> Self {
        Tree {
            nodes: HashMap::new(),
            generation: 0,
            owned: HashMap::new(),
        }
    }

    /// The node at a canonical path.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Current generation of a path, [`NO_GENERATION`] when absent.
    pub fn generation_of(&self, path: &str) -> u64 {
        self.nodes.get(path).map_or(NO_GENERATION, |n| n.generation)
    }

    /// Number of nodes in the tree, special nodes included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree has no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Number of nodes owned by `domid` (the nodes quota).
    pub fn owned_by(&self, domid: u32) -> usize {
        self.owned.get(&domid).map_or(0, |o| o.nodes)
    }

    /// Bytes of the nodes owned by `domid` ([`node_memory`], for the memory quota).
    pub fn owned_bytes(&self, domid: u32) -> usize {
        self.owned.get(&domid).map_or(0, |o| o.bytes)
    }

    /// Applies changes in order; each written node gets a fresh generation.
    pub fn apply(&mut self, changes: &[Change]) {
        for c in changes {
            if let Some(old) = self.nodes.remove(&c.path) {
                self.count(old.perms.owner(), node_memory(&c.path, &old), false);
            }
            if let Some(node) = &c.node {
                self.generation += 1;
                let mut node = node.clone();
                node.generation = self.generation;
                self.count(node.perms.owner(), node_memory(&c.path, &node), true);
                self.nodes.insert(c.path.clone(), node);
            }
        }
    }

    fn count(&mut self, owner: u32, bytes: usize, add: bool) {
        let o = self.owned.entry(owner).or_default();
        if add {
            o.nodes += 1;
            o.bytes += bytes;
        } else {
            o.nodes = o.nodes.saturating_sub(1);
            o.bytes = o.bytes.saturating_sub(bytes);
        }
    }

    /// Every node as a change that recreates it, parents before children, special nodes
    /// last (the snapshot).
    pub fn snapshot_changes(&self) -> Vec<Change> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut stack = vec!["/".to_owned()];
        while let Some(p) = stack.pop() {
            let Some(node) = self.nodes.get(&p) else {
                continue;
            };
            for c in node.children.iter().rev() {
                stack.push(path::child(&p, c));
            }
            out.push(Change {
                path: p,
                node: Some(node.clone()),
            });
        }
        for special in [INTRODUCE_DOMAIN, RELEASE_DOMAIN] {
            if let Some(node) = self.nodes.get(special) {
                out.push(Change {
                    path: special.to_owned(),
                    node: Some(node.clone()),
                });
            }
        }
        out
    }

    /// Checks the structural invariants: the root exists, every listed child exists exactly
    /// once, every non-special node is listed by its parent. Returns the first violation.
    pub fn check(&self) -> Result<(), String> {
        if !self.nodes.contains_key("/") {
            return Err("no root".into());
        }
        for (p, n) in &self.nodes {
            let mut seen = std::collections::HashSet::new();
            for c in &n.children {
                if !seen.insert(c) {
                    return Err(format!("{p} lists {c} twice"));
                }
                if !self.nodes.contains_key(&path::child(p, c)) {
                    return Err(format!("{p} lists missing child {c}"));
                }
            }
            if let Some(parent) = path::parent(p) {
                let listed = self
                    .nodes
                    .get(parent)
                    .is_some_and(|pn| pn.children.iter().any(|c| c == path::basename(p)));
                if !listed {
                    return Err(format!("{p} is not listed by its parent"));
                }
            }
        }
        let mut counted: HashMap<u32, (usize, usize)> = HashMap::new();
        for (p, n) in &self.nodes {
            let c = counted.entry(n.perms.owner()).or_default();
            c.0 += 1;
            c.1 += node_memory(p, n);
        }
        for (d, c) in &counted {
            if (self.owned_by(*d), self.owned_bytes(*d)) != *c {
                return Err(format!(
                    "domain {d} owns {c:?} nodes and bytes, counted {} and {}",
                    self.owned_by(*d),
                    self.owned_bytes(*d)
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_tree_is_consistent() {
        let t = Tree::new();
        t.check().unwrap();
        assert_eq!(t.get("/").unwrap().children, vec!["tool"]);
        assert!(t.get(INTRODUCE_DOMAIN).is_some());
        assert_eq!(t.owned_by(0), 5);
    }

    #[test]
    fn apply_bumps_generations_and_counts_owners() {
        let mut t = Tree::new();
        let g = t.generation_of("/tool");
        let mut tool = t.get("/tool").unwrap().clone();
        tool.value = b"x".to_vec();
        tool.perms = tool.perms.with_owner(3);
        t.apply(&[Change {
            path: "/tool".into(),
            node: Some(tool),
        }]);
        assert!(t.generation_of("/tool") > g);
        assert_eq!(t.owned_by(3), 1);
        assert_eq!(t.owned_by(0), 4);
        assert_eq!(t.generation_of("/nope"), NO_GENERATION);
    }

    #[test]
    fn snapshot_recreates_the_tree() {
        let t = Tree::new();
        let mut u = Tree::empty();
        u.apply(&t.snapshot_changes());
        u.check().unwrap();
        assert_eq!(u.len(), t.len());
        assert_eq!(
            u.get("/tool").unwrap().children,
            t.get("/tool").unwrap().children
        );
    }
}
