//! `pvctl domain create` and `destroy`.
//!
//! A domain is `/local/domain/<domid>` (owned by dom0, readable by the guest, as libxl's
//! `roperms`) with `name`, `domid`, `memory/{static-max,target}` (KiB), `cpu/<n>/availability`,
//! the empty `device` directory, and `data` owned by the guest; the toolstack's own record
//! (the guest payload) is under `/tool/pvctl/<domid>`, dom0 only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use xenbus::device::{devids, domain_exists};
use xenbus::layout::{domain_path, domain_ro_perms, MAX_DOMID};
use xenbus::tx::{children, numeric_children, rm_if_present, transaction};
use xenbus::{DeviceId, DeviceKind, XenbusError};
use xenstore_lite::perms::{NodePerms, PermKind};
use xenstore_lite::{Client, XsOps};

use crate::cli::CreateArgs;
use crate::devices::detach_device;
use crate::error::{PvctlError, Result};

/// The folder of pvctl's own records (dom0 only).
pub const TOOL_ROOT: &str = "/tool/pvctl";

/// Where pvctl keeps what only the toolstack needs about a domain.
pub fn tool_path(domid: u32) -> String {
    format!("{TOOL_ROOT}/{domid}")
}

/// The guest payload of `domid` as recorded by `domain create`.
pub fn guest_path(domid: u32) -> String {
    format!("{}/guest", tool_path(domid))
}

fn check_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PvctlError::BadName(name.to_owned()))
    }
}

/// The absolute path of the guest payload, checked to be a regular file that opens.
fn check_guest(path: &Path) -> Result<PathBuf> {
    let bad = |why: String| PvctlError::Guest {
        path: path.to_owned(),
        why,
    };
    let abs = std::path::absolute(path).map_err(|e| bad(e.to_string()))?;
    let meta = std::fs::metadata(&abs).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    std::fs::File::open(&abs).map_err(|e| bad(e.to_string()))?;
    Ok(abs)
}

/// The guest domains (domid ≥ 1) with their names, sorted by domid.
///
/// # Errors
/// Store errors.
pub fn domains<O: XsOps + ?Sized>(ops: &mut O) -> Result<Vec<(u32, String)>> {
    let mut v = Vec::new();
    for domid in numeric_children(ops, "/local/domain")? {
        if domid == 0 {
            continue;
        }
        let name = xenbus::config::read_optional(ops, &format!("{}/name", domain_path(domid)))?;
        v.push((domid, name.unwrap_or_default()));
    }
    Ok(v)
}

/// Creates the domain's nodes in one transaction and, with `--xenstore-gfn`, introduces it
/// to the store; returns the new domain id.
///
/// # Errors
/// [`PvctlError::BadName`], [`PvctlError::NameTaken`], [`PvctlError::NoFreeDomid`], a
/// refused XS_INTRODUCE (the nodes are removed again), store errors.
pub fn create(client: &mut Client, args: &CreateArgs) -> Result<u32> {
    check_name(&args.name)?;
    let guest = check_guest(&args.guest)?;
    let domid = transaction(client, |tx| {
        let taken = domains(tx)?;
        if let Some((domid, _)) = taken.iter().find(|(_, n)| *n == args.name) {
            return Err(PvctlError::NameTaken {
                name: args.name.clone(),
                domid: *domid,
            });
        }
        let domid = (1..=MAX_DOMID)
            .find(|d| !taken.iter().any(|(t, _)| t == d))
            .ok_or(PvctlError::NoFreeDomid)?;
        write_domain(tx, domid, args, &guest)?;
        Ok(domid)
    })?;
    if let (Some(gfn), Some(port)) = (args.xenstore_gfn, args.xenstore_evtchn) {
        if let Err(e) = introduce(client, domid, gfn, port) {
            remove_nodes(client, domid)?;
            return Err(e);
        }
    }
    Ok(domid)
}

fn write_domain<O: XsOps + ?Sized>(
    tx: &mut O,
    domid: u32,
    args: &CreateArgs,
    guest: &Path,
) -> xenbus::Result<()> {
    let home = domain_path(domid);
    tx.mkdir(&home)?;
    tx.set_perms(&home, &domain_ro_perms(domid))?;
    let kib = (u64::from(args.mem) * 1024).to_string();
    let mut nodes = vec![
        ("name".to_owned(), args.name.clone()),
        ("domid".to_owned(), domid.to_string()),
        ("memory/static-max".to_owned(), kib.clone()),
        ("memory/target".to_owned(), kib),
    ];
    for cpu in 0..args.vcpus {
        nodes.push((format!("cpu/{cpu}/availability"), "online".to_owned()));
    }
    for (name, value) in &nodes {
        tx.write(&format!("{home}/{name}"), value.as_bytes())?;
    }
    tx.mkdir(&format!("{home}/device"))?;
    let data = format!("{home}/data");
    tx.mkdir(&data)?;
    tx.set_perms(&data, &NodePerms::new(domid, PermKind::None))?;
    let tool = tool_path(domid);
    tx.write(&guest_path(domid), guest.display().to_string().as_bytes())?;
    tx.write(&format!("{tool}/vcpus"), args.vcpus.to_string().as_bytes())?;
    Ok(())
}

/// XS_INTRODUCE of `domid` with its xenstore ring frame and event channel, recorded in
/// `store/ring-ref` and `store/port` as Xen does. The VMM calls this once it has the ring.
///
/// # Errors
/// The store refuses (`EINVAL`, `EACCES`), store errors.
pub fn introduce(client: &mut Client, domid: u32, gfn: u64, port: u32) -> Result<()> {
    client
        .introduce(domid, gfn, port)
        .map_err(|cause| PvctlError::Introduce {
            domid,
            gfn,
            port,
            cause,
        })?;
    let home = domain_path(domid);
    transaction(client, |tx| {
        tx.write(
            &format!("{home}/store/ring-ref"),
            gfn.to_string().as_bytes(),
        )?;
        tx.write(&format!("{home}/store/port"), port.to_string().as_bytes())?;
        Ok::<(), PvctlError>(())
    })
}

fn remove_nodes(client: &mut Client, domid: u32) -> Result<()> {
    transaction(client, |tx| {
        rm_if_present(tx, &domain_path(domid))?;
        rm_if_present(tx, &tool_path(domid))?;
        if children(tx, TOOL_ROOT)?.is_empty() {
            rm_if_present(tx, TOOL_ROOT)?;
        }
        Ok::<(), PvctlError>(())
    })
}

/// Detaches every device of `domid` (each back end gets `timeout` to reach Closed), releases
/// it from the store if it was introduced, and removes its nodes.
///
/// # Errors
/// [`XenbusError::NoSuchDomain`], store errors.
pub fn destroy(client: &mut Client, domid: u32, timeout: Duration) -> Result<()> {
    if domid == 0 || !domain_exists(client, domid)? {
        return Err(XenbusError::NoSuchDomain(domid).into());
    }
    for kind in DeviceKind::ALL {
        for devid in devids(client, domid, kind)? {
            detach_device(client, &DeviceId::new(kind, domid, devid), timeout)?;
        }
    }
    if client.is_domain_introduced(domid)? {
        client.release(domid)?;
    }
    remove_nodes(client, domid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_path_safe() {
        for ok in ["web", "db-1", "a.b_c"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
