//! Transactions whose body may fail with the caller's own error type (the client library's
//! helper only carries store errors), and small directory helpers.

use xenstore_lite::client::{Transaction, MAX_TRANSACTION_ATTEMPTS};
use xenstore_lite::{Client, ClientError, Errno, XsOps};

use crate::error::{Result, XenbusError};

/// Runs `f` in one transaction and commits, from the start again while the commit fails with
/// `EAGAIN` (a concurrent change). An error from `f` aborts the transaction: nothing of it is
/// applied.
///
/// # Errors
/// `f`'s error, or the commit's.
pub fn transaction<T, E: From<ClientError>>(
    client: &mut Client,
    mut f: impl FnMut(&mut Transaction<'_>) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    for _ in 0..MAX_TRANSACTION_ATTEMPTS {
        let id = client.transaction_start()?;
        let value = match f(&mut client.in_transaction(id)) {
            Ok(v) => v,
            Err(e) => {
                // The abort can only fail if the connection is gone; `e` says more.
                let _ = client.transaction_end(id, false);
                return Err(e);
            }
        };
        match client.transaction_end(id, true) {
            Ok(()) => return Ok(value),
            Err(ClientError::Xs(Errno::EAGAIN)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ClientError::Xs(Errno::EAGAIN).into())
}

/// XS_DIRECTORY of `path`; an absent directory is empty.
///
/// # Errors
/// Store errors other than `ENOENT`.
pub fn children<O: XsOps + ?Sized>(ops: &mut O, path: &str) -> Result<Vec<String>> {
    match ops.directory(path) {
        Ok(v) => Ok(v),
        Err(ClientError::Xs(Errno::ENOENT)) => Ok(Vec::new()),
        Err(e) => Err(XenbusError::Store(e)),
    }
}

/// The numeric children of `path` (domids, devids), sorted; other names are skipped.
///
/// # Errors
/// As [`children`].
pub fn numeric_children<O: XsOps + ?Sized>(ops: &mut O, path: &str) -> Result<Vec<u32>> {
    let mut v: Vec<u32> = children(ops, path)?
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// XS_RM of `path`; an absent node is not an error.
///
/// # Errors
/// Store errors other than `ENOENT`.
pub fn rm_if_present<O: XsOps + ?Sized>(ops: &mut O, path: &str) -> Result<()> {
    match ops.rm(path) {
        Ok(()) | Err(ClientError::Xs(Errno::ENOENT)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
