//! Per-domain and per-connection limits, with C xenstored's defaults (`domain.c`
//! `hard_quotas[]`).
//!
//! Quotas bind unprivileged domains only; dom0 (every unix-socket client) is exempt, as in
//! Xen. Over a quota a request fails with the errno C xenstored uses and changes nothing:
//! `ENOSPC` for nodes, node size, permissions per node, transactions and nodes per
//! transaction; `E2BIG` for watches; `EINVAL` for an over-long path. The outstanding-request
//! limit is not an error: the daemon stops reading from a connection that has that many
//! replies not yet taken by its transport.

/// The limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own (`nodes`, default 1000).
    pub nodes: usize,
    /// Size limit of one node in bytes: header, permissions, value and child names
    /// (`node-size`, default 2048); a node must stay below it.
    pub node_size: usize,
    /// Watches per connection (`watches`, default 128).
    pub watches: usize,
    /// Open transactions per connection (`transactions`, default 10).
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
        }
    }
}
