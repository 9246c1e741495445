//! `pvctl list`: every guest domain, its devices and both sides' XenbusState.
//!
//! ```text
//! domain 1 web: 256 MiB, 1 vCPU, guest /srv/guest.bin
//!   vbd 0  front Connected     back Connected     /srv/disk.raw  socket /run/pvio/vbd-1-0.sock
//!   vif 0  front Initialising  back Closed        00:16:3e:00:01:00  error: no switch "x"
//! ```

use std::fmt::Write;

use xenbus::config::read_optional;
use xenbus::device::{devids, status, DeviceStatus};
use xenbus::layout::domain_path;
use xenbus::{DeviceId, DeviceKind};
use xenstore_lite::XsOps;

use crate::domain::{domains, guest_path, tool_path};
use crate::error::Result;

/// The listing as text (empty when there are no guest domains).
///
/// # Errors
/// Store errors.
pub fn render<O: XsOps + ?Sized>(ops: &mut O) -> Result<String> {
    let mut out = String::new();
    for (domid, name) in domains(ops)? {
        out.push_str(&domain_line(ops, domid, &name)?);
        for kind in DeviceKind::ALL {
            for devid in devids(ops, domid, kind)? {
                let s = status(ops, &DeviceId::new(kind, domid, devid))?;
                out.push_str(&device_line(&s));
            }
        }
    }
    Ok(out)
}

fn domain_line<O: XsOps + ?Sized>(ops: &mut O, domid: u32, name: &str) -> Result<String> {
    let home = domain_path(domid);
    let kib: u64 = read_optional(ops, &format!("{home}/memory/target"))?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let vcpus = read_optional(ops, &format!("{}/vcpus", tool_path(domid)))?.unwrap_or_default();
    let guest = read_optional(ops, &guest_path(domid))?.unwrap_or_default();
    let plural = if vcpus == "1" { "" } else { "s" };
    Ok(format!(
        "domain {domid} {name}: {} MiB, {vcpus} vCPU{plural}, guest {guest}\n",
        kib / 1024
    ))
}

fn device_line(s: &DeviceStatus) -> String {
    let mut line = format!(
        "  {} {}  front {:<12}  back {:<12}",
        s.id.kind,
        s.id.devid,
        s.frontend_state.name(),
        s.backend_state.name()
    );
    if let Some(d) = &s.detail {
        let _ = write!(line, "  {d}");
    }
    if let Some(sock) = &s.socket {
        let _ = write!(line, "  socket {sock}");
    }
    if let Some(e) = &s.error {
        let _ = write!(line, "  error: {e}");
    }
    line.truncate(line.trim_end().len());
    line.push('\n');
    line
}
