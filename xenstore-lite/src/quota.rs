//! Per-domain and per-connection limits, with C xenstored's defaults (`domain.c`
//! `hard_quotas[]`).
//!
//! Quotas bind unprivileged domains only; dom0 (every unix-socket client) is exempt, as in
//! Xen. Watches, transactions and memory count for the whole domain, whatever number of
//! connections it has (in Xen a domain has one, its ring). Over a quota a request fails with
//! the errno C xenstored uses and changes nothing: `ENOSPC` for nodes, node size, permissions
//! per node, transactions and nodes per transaction; `E2BIG` for watches; `ENOMEM` for memory;
//! `EINVAL` for an over-long path. The outstanding-request limit is not an error: the daemon
//! stops reading from a connection that has that many replies not yet taken by its
//! transport. A watch event that would take its domain over the memory quota is dropped
//! (XSA-326: a domain that does not read its events cannot make the daemon grow). A
//! connection beyond the connections quota is closed at once.
//!
//! The memory of a domain (C `domain_memory_add`, in bytes): its nodes (path and
//! [`crate::tree::node_size`]), its open transactions' node copies, its watches (path and
//! token), and its connections' queued output and buffered input.

/// The limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own (`nodes`, default 1000).
    pub nodes: usize,
    /// Size limit of one node in bytes: header, permissions, value and child names
    /// (`node-size`, default 2048); a node must stay below it.
    pub node_size: usize,
    /// Watches per domain (`watches`, default 128).
    pub watches: usize,
    /// Open transactions per domain (`transactions`, default 10).
    pub transactions: usize,
    /// Distinct nodes one transaction may access (`transaction-nodes`, default 1024).
    pub transaction_nodes: usize,
    /// Replies a connection may have waiting (`outstanding`, default 20).
    pub outstanding: usize,
    /// Permission entries per node (`node-permissions`, default 5).
    pub perms_per_node: usize,
    /// Path length below the domain's home in bytes (`path-max`, default 2048,
    /// `XENSTORE_REL_PATH_MAX`).
    pub path_max: usize,
    /// Memory a domain may use in bytes (`memory`, default 2.5 MiB: C xenstored's hard
    /// memory quota).
    pub memory: usize,
    /// Connections a domain may have open at once (not in Xen, where a domain has exactly
    /// one ring; default 8): each costs the daemon a file descriptor, so a domain socket's
    /// clients cannot exhaust them and lock dom0 out.
    pub connections: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            nodes: 1000,
            node_size: 2048,
            watches: 128,
            transactions: 10,
            transaction_nodes: 1024,
            outstanding: 20,
            perms_per_node: 5,
            path_max: crate::wire::XENSTORE_REL_PATH_MAX,
            memory: 2 * 1024 * 1024 + 512 * 1024,
            connections: 8,
        }
    }
}
