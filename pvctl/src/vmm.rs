//! `pvctl domain start`: runs pvio's VMM for a created domain, and stopping it again on
//! `domain destroy`.
//!
//! The VMM (`vmm run --guest PAYLOAD --mem MiB --vcpus N --xenstore STORE --domid D
//! --evtchn-broker BROKER -- GUEST ARGS`) gives the guest its xenstore ring, introduces the
//! domain (XS_INTRODUCE) and connects every device the store lists for it; the guest walks
//! the XenBus handshake itself. The payload, memory and vCPUs are what `domain create`
//! recorded. The VMM runs in its own process group, detached from pvctl, with its console
//! and log in `--console` (or discarded); its pid is recorded in
//! `/tool/pvctl/<domid>/vmm-pid` (dom0 only) so that `domain destroy` can stop it.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use xenbus::config::read_optional;
use xenbus::device::domain_exists;
use xenbus::layout::domain_path;
use xenbus::XenbusError;
use xenstore_lite::{Client, XsOps};

use crate::cli::StartArgs;
use crate::domain::{guest_path, tool_path};
use crate::error::{PvctlError, Result};

/// Where the pid of a domain's VMM is recorded.
pub fn pid_path(domid: u32) -> String {
    format!("{}/vmm-pid", tool_path(domid))
}

/// The VMM binary: `--vmm`, else `vmm` beside pvctl's own executable, else `vmm` on PATH.
fn vmm_binary(args: &StartArgs) -> PathBuf {
    if let Some(p) = &args.vmm {
        return p.clone();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("vmm")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("vmm"))
}

fn read_number<O: XsOps + ?Sized>(ops: &mut O, path: &str) -> Result<u64> {
    read_optional(ops, path)?
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| XenbusError::Missing(path.to_owned()).into())
}

/// Whether process `pid` exists and is not a zombie (an exiting process counts as alive
/// until it is one).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}

/// Whether `pid` is a live VMM process of `domid` (by its command line).
fn is_domain_vmm(pid: u32, domid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let words: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let ours = words
        .windows(2)
        .any(|w| w[0] == b"--domid" && w[1] == domid.to_string().as_bytes());
    ours && alive(pid)
}

/// The recorded VMM of `domid` if it still runs.
fn running_vmm(client: &mut Client, domid: u32) -> Result<Option<u32>> {
    let pid = read_optional(client, &pid_path(domid))?.and_then(|v| v.trim().parse().ok());
    Ok(pid.filter(|&p| is_domain_vmm(p, domid)))
}

/// Starts the VMM of `domid` against the store at `store`; returns its pid.
///
/// # Errors
/// [`XenbusError::NoSuchDomain`], [`PvctlError::VmmRunning`], [`PvctlError::VmmStart`], store
/// errors.
pub fn start(client: &mut Client, store: &Path, args: &StartArgs) -> Result<u32> {
    let domid = args.domid;
    if domid == 0 || !domain_exists(client, domid)? {
        return Err(XenbusError::NoSuchDomain(domid).into());
    }
    if let Some(pid) = running_vmm(client, domid)? {
        return Err(PvctlError::VmmRunning { domid, pid });
    }
    let guest = read_optional(client, &guest_path(domid))?
        .ok_or_else(|| XenbusError::Missing(guest_path(domid)))?;
    let kib = read_number(client, &format!("{}/memory/static-max", domain_path(domid)))?;
    let vcpus = read_number(client, &format!("{}/vcpus", tool_path(domid)))?;
    let vmm = vmm_binary(args);
    let spawn_err = |cause: std::io::Error| PvctlError::VmmStart {
        path: vmm.clone(),
        cause,
    };
    let (out, err) = match &args.console {
        Some(path) => {
            let f = File::create(path).map_err(spawn_err)?;
            (
                Stdio::from(f.try_clone().map_err(spawn_err)?),
                Stdio::from(f),
            )
        }
        None => (Stdio::null(), Stdio::null()),
    };
    let child = Command::new(&vmm)
        .arg("run")
        .arg("--guest")
        .arg(&guest)
        .arg("--mem")
        .arg((kib / 1024).to_string())
        .arg("--vcpus")
        .arg(vcpus.to_string())
        .arg("--xenstore")
        .arg(store)
        .arg("--domid")
        .arg(domid.to_string())
        .arg("--evtchn-broker")
        .arg(&args.evtchn_broker)
        .arg("--")
        .args(&args.guest_args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(spawn_err)?;
    let pid = child.id();
    client.write(&pid_path(domid), pid.to_string().as_bytes())?;
    Ok(pid)
}

/// Stops the VMM of `domid` if one runs (SIGTERM, then SIGKILL after `timeout`) and waits
/// until it is gone.
///
/// # Errors
/// [`PvctlError::VmmStuck`] when it does not go away, store errors.
pub fn stop(client: &mut Client, domid: u32, timeout: Duration) -> Result<()> {
    let Some(pid) = running_vmm(client, domid)? else {
        return Ok(());
    };
    let target = Pid::from_raw(pid as i32);
    let _ = kill(target, Signal::SIGTERM);
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            let _ = kill(target, Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(100));
            if alive(pid) {
                return Err(PvctlError::VmmStuck { domid, pid });
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
