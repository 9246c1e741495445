//! Watches: registration, matching and permission filtering (C xenstored `watch.c`,
//! xenstore.txt "WATCH").
//!
//! A watch on a path fires for a change of that path or any descendant (optionally limited
//! to `depth` levels below it), once right after registration, and only for watchers allowed
//! to read the changed node, its parent or the node's permissions before the change. Events
//! of a path removed as part of a larger removal, and of the special `@` paths, are *exact*:
//! they reach only watches on that very path.

use crate::path;
use crate::perms::{Access, Caller, NodePerms};

/// One registered watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// Canonical path (absolute, or a special `@` path).
    pub path: String,
    /// The client's token, returned verbatim in every event.
    pub token: Vec<u8>,
    /// Bytes to strip from event paths: the `/local/domain/<n>/` prefix of a watch that was
    /// registered with a relative path, 0 otherwise.
    pub relative_prefix: usize,
    /// Levels below `path` that still match; `None` for unlimited.
    pub depth: Option<usize>,
}

impl Watch {
    /// Whether an event for `event_path` reaches this watch.
    pub fn matches(&self, event_path: &str, exact: bool) -> bool {
        if exact || self.path.starts_with('@') {
            return event_path == self.path;
        }
        path::is_at_or_below(event_path, &self.path)
            && self
                .depth
                .is_none_or(|d| path::depth_below(event_path, &self.path) <= d)
    }

    /// The path as reported to this watch's client (relative for relative watches).
    pub fn reported_path<'a>(&self, event_path: &'a str) -> &'a str {
        event_path.get(self.relative_prefix..).unwrap_or(event_path)
    }
}

/// A change that watches may hear of, produced by a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    /// Canonical path of the changed node.
    pub path: String,
    /// Only watches on exactly this path match.
    pub exact: bool,
    /// The node's permissions after and before the change (whichever exist).
    pub perms: Vec<NodePerms>,
}

/// Whether `caller` may hear of an event (C `watch_permitted`): it can read the node now or
/// before the change, or the node's parent (`parent_perms`).
pub fn permitted(caller: &Caller, event: &PendingEvent, parent_perms: Option<&NodePerms>) -> bool {
    let can_read = |p: &NodePerms| p.access(caller).contains(Access::READ);
    caller.privileged || event.perms.iter().any(can_read) || parent_perms.is_some_and(can_read)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(path: &str, depth: Option<usize>) -> Watch {
        Watch {
            path: path.into(),
            token: b"t".to_vec(),
            relative_prefix: 0,
            depth,
        }
    }

    #[test]
    fn subtree_and_exact_matching() {
        let w = watch("/a/b", None);
        assert!(w.matches("/a/b", false));
        assert!(w.matches("/a/b/c/d", false));
        assert!(!w.matches("/a/bc", false));
        assert!(!w.matches("/a", false));
        assert!(!w.matches("/a/b/c", true));
        assert!(w.matches("/a/b", true));
        let root = watch("/", None);
        assert!(root.matches("/x/y", false));
        assert!(!root.matches("@introduceDomain", true));
    }

    #[test]
    fn depth_limits_matching() {
        let w = watch("/a", Some(1));
        assert!(w.matches("/a", false));
        assert!(w.matches("/a/b", false));
        assert!(!w.matches("/a/b/c", false));
    }

    #[test]
    fn special_paths_match_only_themselves() {
        let w = watch("@releaseDomain", None);
        assert!(w.matches("@releaseDomain", true));
        assert!(!w.matches("@introduceDomain", true));
        assert!(!w.matches("/", false));
    }

    #[test]
    fn relative_watches_report_relative_paths() {
        let w = Watch {
            relative_prefix: "/local/domain/3/".len(),
            ..watch("/local/domain/3/device", None)
        };
        assert_eq!(w.reported_path("/local/domain/3/device/vbd"), "device/vbd");
    }

    #[test]
    fn permission_filter() {
        let ev = PendingEvent {
            path: "/a".into(),
            exact: false,
            perms: vec![NodePerms::parse(&["n0", "r2"]).unwrap()],
        };
        assert!(permitted(&Caller::guest(2), &ev, None));
        assert!(!permitted(&Caller::guest(3), &ev, None));
        let parent = NodePerms::parse(&["r0"]).unwrap();
        assert!(permitted(&Caller::guest(3), &ev, Some(&parent)));
        assert!(permitted(&Caller::DOM0, &ev, None));
    }
}
