//! Waiting on the store: a watch, then re-checking a condition at every event until it holds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xenstore_lite::{Client, XsOps};

use crate::config::read_optional;
use crate::error::{Result, XenbusError};
use crate::state::XenbusState;

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(0);

/// Reads a `state` node: [`XenbusState::Unknown`] when it is absent or not a XenbusState
/// (the other side's nodes are untrusted; a garbage value is logged, not fatal).
///
/// # Errors
/// Store errors other than `ENOENT`.
pub fn read_state<O: XsOps + ?Sized>(ops: &mut O, path: &str) -> Result<XenbusState> {
    Ok(match read_optional(ops, path)? {
        None => XenbusState::Unknown,
        Some(v) => v.parse().unwrap_or_else(|e| {
            log::warn!("{path}: {e}");
            XenbusState::Unknown
        }),
    })
}

/// Watches `path` (and its subtree) and calls `check` at once and after every event until it
/// returns `Some`, or `timeout` passes. The watch is removed before returning.
///
/// # Errors
/// `check`'s errors, store errors, [`XenbusError::Timeout`] naming `what`.
pub fn wait_until<T>(
    client: &mut Client,
    path: &str,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut(&mut Client) -> Result<Option<T>>,
) -> Result<T> {
    let token = format!(
        "xenbus-wait-{}-{}",
        std::process::id(),
        NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
    );
    client.watch(path, &token)?;
    let deadline = Instant::now() + timeout;
    let result = loop {
        match check(client) {
            Ok(Some(v)) => break Ok(v),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(XenbusError::Timeout {
                what: what.to_owned(),
                timeout,
            });
        }
        // Any event (ours or another watch's) is a reason to look again.
        if let Err(e) = client.next_event_timeout(left) {
            break Err(e.into());
        }
    };
    // The watch only matters while waiting; a failure here leaves a harmless watch.
    let _ = client.unwatch(path, &token);
    result
}

/// Waits until the `state` node at `path` satisfies `accept`; returns that state.
///
/// # Errors
/// As [`wait_until`].
pub fn wait_state(
    client: &mut Client,
    path: &str,
    timeout: Duration,
    accept: impl Fn(XenbusState) -> bool,
) -> Result<XenbusState> {
    wait_until(client, path, &format!("{path} state"), timeout, |c| {
        let s = read_state(c, path)?;
        Ok(accept(s).then_some(s))
    })
}
