//! The node operations behind XS_READ, XS_DIRECTORY(_PART), XS_GET_PERMS, XS_WRITE,
//! XS_MKDIR, XS_RM and XS_SET_PERMS, on a [`Lookup`] or [`TxView`] (C xenstored `core.c`).
//!
//! Paths given here are canonical. Permission rule for a node that does not exist (C
//! `errno_from_parents`): the caller learns `ENOENT` only if it holds the needed right on
//! the nearest existing ancestor, else `EACCES`; creating a node needs write access there.
//! New nodes inherit their parent's permissions, with an unprivileged writer as owner.

use crate::path;
use crate::perms::{Access, Caller, NodePerms};
use crate::quota::Quotas;
use crate::transaction::{Lookup, TxView};
use crate::tree::{node_size, Node};
use crate::wire::{Errno, XENSTORE_PAYLOAD_MAX};

type Result<T> = std::result::Result<T, Errno>;

/// Whether the node exists with `need` granted (`Ok(true)`), or is missing while the caller
/// may know it (`Ok(false)`).
fn access_or_missing(
    view: &mut dyn Lookup,
    caller: &Caller,
    path: &str,
    need: Access,
) -> Result<bool> {
    match view.lookup(path).map(|n| n.perms.access(caller)) {
        Some(a) if a.contains(need) => Ok(true),
        Some(_) => Err(Errno::EACCES),
        None => {
            let mut cur = path;
            while let Some(p) = path::parent(cur) {
                if let Some(n) = view.lookup(p) {
                    return if n.perms.access(caller).intersects(need) {
                        Ok(false)
                    } else {
                        Err(Errno::EACCES)
                    };
                }
                cur = p;
            }
            Ok(false)
        }
    }
}

/// The node at `path` if it exists and `caller` holds `need` on it.
fn checked<'v>(
    view: &'v mut dyn Lookup,
    caller: &Caller,
    path: &str,
    need: Access,
) -> Result<&'v Node> {
    if !access_or_missing(view, caller, path, need)? {
        return Err(Errno::ENOENT);
    }
    view.lookup(path).ok_or(Errno::ENOENT)
}

/// XS_READ: the value.
///
/// # Errors
/// `ENOENT`, `EACCES`.
pub fn read(view: &mut dyn Lookup, caller: &Caller, path: &str) -> Result<Vec<u8>> {
    Ok(checked(view, caller, path, Access::READ)?.value.clone())
}

/// XS_DIRECTORY: the children's names, each NUL-terminated.
///
/// # Errors
/// `ENOENT`, `EACCES`.
pub fn directory(view: &mut dyn Lookup, caller: &Caller, path: &str) -> Result<Vec<u8>> {
    Ok(checked(view, caller, path, Access::READ)?.children_payload())
}

/// XS_DIRECTORY_PART: `"<generation>\0"` then the child names from byte `offset` of the
/// NUL-separated list, as many as fit in one payload; a final extra NUL marks the end of
/// the list.
///
/// # Errors
/// `ENOENT`, `EACCES`.
pub fn directory_part(
    view: &mut dyn Lookup,
    caller: &Caller,
    path: &str,
    offset: usize,
) -> Result<Vec<u8>> {
    let node = checked(view, caller, path, Access::READ)?;
    let all = node.children_payload();
    let mut out = node.generation.to_string().into_bytes();
    out.push(0);
    let room = XENSTORE_PAYLOAD_MAX - out.len() - 1;
    let rest = all.get(offset..).unwrap_or(&[]);
    let mut take = 0;
    for name in rest.split_inclusive(|&b| b == 0) {
        if take + name.len() > room {
            break;
        }
        take += name.len();
    }
    out.extend_from_slice(&rest[..take]);
    if take == rest.len() {
        out.push(0);
    }
    Ok(out)
}

/// XS_GET_PERMS: the permissions in text form, each NUL-terminated.
///
/// # Errors
/// `ENOENT`, `EACCES`.
pub fn get_perms(view: &mut dyn Lookup, caller: &Caller, path: &str) -> Result<Vec<u8>> {
    Ok(checked(view, caller, path, Access::READ)?
        .perms
        .to_payload())
}

fn check_size(caller: &Caller, quotas: &Quotas, node: &Node) -> Result<()> {
    if !caller.privileged && node_size(node) >= quotas.node_size {
        return Err(Errno::ENOSPC);
    }
    Ok(())
}

/// Creates `path` and its missing ancestors, the leaf with `value` (C `create_node`).
fn create(
    tx: &mut TxView<'_>,
    caller: &Caller,
    quotas: &Quotas,
    path: &str,
    value: &[u8],
) -> Result<()> {
    let mut missing = vec![path.to_owned()];
    let mut parent_path = loop {
        let last = missing.last().expect("starts non-empty");
        let p = path::parent(last).ok_or(Errno::EINVAL)?.to_owned();
        if tx.lookup(&p).is_some() {
            break p;
        }
        missing.push(p);
    };
    let mut parent = tx.lookup(&parent_path).cloned().ok_or(Errno::ENOENT)?;
    for name in missing.iter().rev() {
        if !caller.privileged && tx.owned_after(caller.domid) >= quotas.nodes as i64 {
            return Err(Errno::ENOSPC);
        }
        parent.children.push(path::basename(name).to_owned());
        check_size(caller, quotas, &parent)?;
        let perms = if caller.privileged {
            parent.perms.clone()
        } else {
            parent.perms.with_owner(caller.domid)
        };
        tx.put(&parent_path, parent);
        let mut node = Node::empty(perms);
        if name == path {
            node.value = value.to_vec();
        }
        check_size(caller, quotas, &node)?;
        tx.put(name, node.clone());
        parent_path.clone_from(name);
        parent = node;
    }
    Ok(())
}

/// XS_WRITE: sets the value, creating the node and missing ancestors.
///
/// # Errors
/// `EACCES`, `ENOSPC` (node count or size quota), `EINVAL`.
pub fn write(
    tx: &mut TxView<'_>,
    caller: &Caller,
    quotas: &Quotas,
    path: &str,
    value: &[u8],
) -> Result<()> {
    if access_or_missing(tx, caller, path, Access::WRITE)? {
        let mut node = tx.lookup(path).cloned().ok_or(Errno::ENOENT)?;
        node.value = value.to_vec();
        check_size(caller, quotas, &node)?;
        tx.put(path, node);
    } else {
        create(tx, caller, quotas, path, value)?;
    }
    tx.queue_watch(path, false);
    Ok(())
}

/// XS_MKDIR: creates an empty node unless it exists.
///
/// # Errors
/// As [`write()`].
pub fn mkdir(tx: &mut TxView<'_>, caller: &Caller, quotas: &Quotas, path: &str) -> Result<()> {
    if !access_or_missing(tx, caller, path, Access::WRITE)? {
        create(tx, caller, quotas, path, b"")?;
        tx.queue_watch(path, false);
    }
    Ok(())
}

/// XS_RM: removes `path` and its whole subtree. Removing a missing node succeeds when its
/// parent exists.
///
/// # Errors
/// `EACCES`, `ENOENT` (parent missing), `EINVAL` (the root).
pub fn rm(tx: &mut TxView<'_>, caller: &Caller, path: &str) -> Result<()> {
    if !access_or_missing(tx, caller, path, Access::WRITE)? {
        let parent = path::parent(path).ok_or(Errno::EINVAL)?;
        return tx.lookup(parent).map(|_| ()).ok_or(Errno::ENOENT);
    }
    let parent_path = path::parent(path).ok_or(Errno::EINVAL)?;
    remove_subtree(tx, path);
    let mut parent = tx.lookup(parent_path).cloned().ok_or(Errno::ENOENT)?;
    let name = path::basename(path);
    parent.children.retain(|c| c != name);
    tx.put(parent_path, parent);
    Ok(())
}

/// Removes `root` and its descendants, children first; the root's watch event matches its
/// ancestors' watches, the descendants' only watches on themselves (C `delnode_sub`).
fn remove_subtree(tx: &mut TxView<'_>, root: &str) {
    let mut stack = vec![(root.to_owned(), false)];
    while let Some((p, expanded)) = stack.pop() {
        if expanded {
            tx.remove(&p);
            tx.queue_watch(&p, p != root);
            continue;
        }
        let children = tx
            .lookup(&p)
            .map(|n| n.children.clone())
            .unwrap_or_default();
        stack.push((p.clone(), true));
        for c in children.iter().rev() {
            stack.push((path::child(&p, c), false));
        }
    }
}

/// XS_SET_PERMS: replaces the permissions. Needs ownership; only a privileged caller may
/// change the owner.
///
/// # Errors
/// `ENOENT`, `EACCES`, `EPERM` (owner change), `ENOSPC` (too many entries or node size).
pub fn set_perms(
    tx: &mut TxView<'_>,
    caller: &Caller,
    quotas: &Quotas,
    path: &str,
    perms: NodePerms,
) -> Result<()> {
    if !caller.privileged && perms.entries().len() > quotas.perms_per_node {
        return Err(Errno::ENOSPC);
    }
    let mut node = checked(tx, caller, path, Access::WRITE.union(Access::OWNER))?.clone();
    if !caller.privileged && perms.owner() != node.perms.owner() {
        return Err(Errno::EPERM);
    }
    node.perms = perms;
    check_size(caller, quotas, &node)?;
    tx.put(path, node);
    tx.queue_watch(path, false);
    Ok(())
}
