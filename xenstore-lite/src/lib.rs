//! xenstore-lite: a XenStore-compatible hierarchical configuration store.
//!
//! It speaks Xen's real wire protocol (xs_wire.h, `docs/misc/xenstore.txt`), so the
//! xenstore-utils tools work against it unchanged, and it can be durable: with a data
//! directory every acknowledged change is in a checksummed append-only journal before its
//! reply leaves, which Xen's xenstored does not offer.
//!
//! Layers, bottom up:
//! - [`wire`]: the `xsd_sockmsg` codec, message types, errno names, payload helpers.
//! - [`path`], [`perms`]: path validation and canonical form; Xen's permission lists.
//! - [`tree`]: committed nodes with generation counts.
//! - [`transaction`]: overlays with optimistic concurrency (`EAGAIN` on conflict).
//! - [`ops`]: read, directory, write, mkdir, rm, permissions on an overlay.
//! - [`watch`], [`quota`], [`domain`]: watches, limits, introduced domains.
//! - [`journal`]: append-only journal and snapshot.
//! - [`store`]: connections and the dispatch table; fed bytes, yields reply bytes.
//! - [`server`]: the single-threaded mio daemon on unix sockets.
//! - [`ring_conn`]: guests' xenstore rings and event channels through the evtchn broker.
//! - [`client`], [`cli`]: a blocking Rust client and the xenstore-utils-shaped CLI.

pub mod cli;
pub mod client;
pub mod domain;
pub mod journal;
pub mod ops;
pub mod path;
pub mod perms;
pub mod quota;
pub mod ring_conn;
pub mod server;
pub mod store;
pub mod transaction;
pub mod tree;
pub mod watch;
pub mod wire;

pub use client::{Client, ClientError, XsOps};
pub use journal::{JournalError, SyncMode};
pub use quota::Quotas;
pub use server::{Server, ServerConfig, ServerError};
pub use store::{ConnId, RingMapper, Store};
pub use wire::{Errno, MsgType};

/// `error` and its sources as one line: "outer: cause: root cause" (what pvio's daemons and
/// CLIs print for a failure).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}
