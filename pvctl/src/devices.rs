//! `pvctl disk|nic attach|detach`.

use std::fs::OpenOptions;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;

use xenbus::device::{self, domain_exists, free_devid};
use xenbus::{DeviceConfig, DeviceId, DeviceKind, Mac, NetLink, VbdConfig, VifConfig, XenbusError};
use xenstore_lite::{Client, XsOps};

use crate::cli::{AttachCommon, DetachArgs, DEFAULT_SWITCH};
use crate::error::{PvctlError, Result};

/// A disk of `image` (made absolute), checked to exist, to be a regular file or block device
/// and to open with the access the guest will have.
///
/// # Errors
/// [`PvctlError::Image`], [`PvctlError::ImageKind`].
pub fn disk_config(image: &Path, readonly: bool, num_queues: u16) -> Result<DeviceConfig> {
    let err = |cause| PvctlError::Image {
        path: image.to_owned(),
        cause,
    };
    let image = std::path::absolute(image).map_err(err)?;
    let meta = std::fs::metadata(&image).map_err(err)?;
    if !(meta.is_file() || meta.file_type().is_block_device()) {
        return Err(PvctlError::ImageKind(image));
    }
    OpenOptions::new()
        .read(true)
        .write(!readonly)
        .open(&image)
        .map_err(err)?;
    Ok(DeviceConfig::Vbd(VbdConfig {
        image,
        readonly,
        num_queues,
    }))
}

/// NIC `devid` of `domid`; the MAC defaults to [`Mac::generated`], the link to the switch
/// [`DEFAULT_SWITCH`].
pub fn nic_config(
    (domid, devid): (u32, u32),
    mac: Option<Mac>,
    switch: &Option<String>,
    tap: &Option<String>,
    num_queue_pairs: u16,
    mtu: u16,
) -> DeviceConfig {
    let link = match (switch, tap) {
        (_, Some(t)) => NetLink::Tap(t.clone()),
        (Some(s), None) => NetLink::Switch(s.clone()),
        (None, None) => NetLink::Switch(DEFAULT_SWITCH.to_owned()),
    };
    DeviceConfig::Vif(VifConfig {
        mac: mac.unwrap_or_else(|| Mac::generated(domid, devid)),
        mtu,
        link,
        num_queue_pairs,
    })
}

/// Writes the front-end and back-end directories of a `kind` device, described by
/// `config(devid)`, in one transaction; returns the device number.
///
/// # Errors
/// [`XenbusError::NoSuchDomain`], [`XenbusError::DeviceExists`], store errors.
pub fn attach(
    client: &mut Client,
    kind: DeviceKind,
    common: &AttachCommon,
    config: impl FnOnce(u32) -> DeviceConfig,
) -> Result<u32> {
    let domid = common.domid;
    if domid == 0 || !domain_exists(client, domid)? {
        return Err(XenbusError::NoSuchDomain(domid).into());
    }
    let devid = match common.devid {
        Some(d) => d,
        None => free_devid(client, domid, kind)?,
    };
    device::create(client, &DeviceId::new(kind, domid, devid), &config(devid))?;
    Ok(devid)
}

/// Detaches device `args.devid` of kind `kind`.
///
/// # Errors
/// [`XenbusError::NoSuchDevice`], store errors.
pub fn detach(client: &mut Client, kind: DeviceKind, args: &DetachArgs) -> Result<()> {
    let dev = DeviceId::new(kind, args.domid, args.devid);
    if !client.exists(&dev.backend())? && !client.exists(&dev.frontend())? {
        return Err(XenbusError::NoSuchDevice(dev).into());
    }
    detach_device(client, &dev, Duration::from_secs(args.timeout))
}

/// Asks the back end to close `dev` (libxl: `online` 0, `state` Closing), waits up to
/// `timeout` for Closed, then removes both directories in one transaction. A back end that
/// does not answer in time gets a warning and its nodes removed anyway.
///
/// # Errors
/// Store errors.
pub fn detach_device(client: &mut Client, dev: &DeviceId, timeout: Duration) -> Result<()> {
    if client.exists(&dev.backend())? {
        device::request_close(client, dev)?;
        match device::wait_backend_closed(client, dev, timeout) {
            Ok(()) => {}
            Err(XenbusError::Timeout { .. }) => eprintln!(
                "pvctl: warning: the back end of {dev} did not reach Closed within {timeout:?}; removing its nodes anyway"
            ),
            Err(e) => return Err(e.into()),
        }
    }
    device::remove(client, dev)?;
    Ok(())
}
