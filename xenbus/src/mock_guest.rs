//! A mock front end playing a guest's role for a disk or a NIC: domain `domid` over its own
//! store connection walks the XenBus handshake and drives the device with frontend-guest's
//! vhost-user front-end host, so the whole handshake is tested without a VM.
//!
//! [`MockFrontend::attach`]: Initialising → the back end's InitWait and socket → connect →
//! Initialised → the back end's Connected → Connected. [`MockBlkFrontend::verified_io`]
//! writes, reads back and compares; [`MockNetFrontend::device`] sends and receives frames.
//! [`MockFrontend::wait_unplug`]: the back end's Closing → Closing → stop I/O, disconnect →
//! Closed.

use std::time::Duration;

use frontend_guest::blk::BlkStatus;
use frontend_guest::host::{BlkDevice, BlkOptions, BlkQueue, NetDevice, NetOptions};
use thiserror::Error;
use xenstore_lite::Client;

use crate::error::XenbusError;
use crate::frontend::{BackendReady, Frontend};
use crate::layout::{node, DeviceId};
use crate::state::XenbusState;

/// Errors of the mock front end.
#[derive(Debug, Error)]
pub enum MockError {
    /// The handshake failed.
    #[error(transparent)]
    Xenbus(#[from] XenbusError),
    /// The vhost-user front end failed.
    #[error("vhost-user front end: {0}")]
    Host(#[from] frontend_guest::host::Error),
    /// The vhost-user-net front end failed.
    #[error("vhost-user-net front end: {0}")]
    Net(#[from] frontend_guest::host::NetError),
    /// The device does not match what the back end published, or I/O returned wrong data.
    #[error("{0}")]
    Mismatch(String),
}

/// Result type of the mock front end.
pub type MockResult<T> = Result<T, MockError>;

/// A vhost-user device the mock front end drives.
pub trait MockDevice: Sized {
    /// Connects to the back end's published socket and checks what the back end published.
    ///
    /// # Errors
    /// vhost-user errors, [`MockError::Mismatch`].
    fn connect(dev: &DeviceId, ready: &BackendReady, timeout: Duration) -> MockResult<Self>;

    /// Stops the queues and closes the connection.
    ///
    /// # Errors
    /// The back end did not answer (it may be gone already).
    fn disconnect(self) -> MockResult<()>;
}

/// One device of the guest, connected.
#[derive(Debug)]
pub struct MockFrontend<D> {
    client: Client,
    frontend: Frontend,
    ready: BackendReady,
    device: Option<D>,
    timeout: Duration,
}

/// A disk of the guest.
pub type MockBlkFrontend = MockFrontend<BlkDevice>;
/// A NIC of the guest.
pub type MockNetFrontend = MockFrontend<NetDevice>;

impl<D: MockDevice> MockFrontend<D> {
    /// Runs the front end's half of the handshake for `dev` over `client` (the guest's
    /// connection); each wait is bounded by `timeout`.
    ///
    /// # Errors
    /// [`XenbusError::BackendFailed`] when the back end gave up, timeouts, vhost-user errors,
    /// [`MockError::Mismatch`] when the device does not match what the back end published.
    pub fn attach(mut client: Client, dev: DeviceId, timeout: Duration) -> MockResult<Self> {
        let frontend = Frontend::open(&mut client, dev)?;
        frontend.set_state(&mut client, XenbusState::Initialising)?;
        let ready = frontend.wait_backend_ready(&mut client, timeout)?;
        let device = D::connect(&dev, &ready, timeout)?;
        frontend.set_state(&mut client, XenbusState::Initialised)?;
        let state = frontend.wait_backend_state(&mut client, timeout, |s| {
            s == XenbusState::Connected || s >= XenbusState::Closing
        })?;
        if state != XenbusState::Connected {
            return Err(MockError::Mismatch(format!(
                "{dev}: the back end went {state} instead of Connected"
            )));
        }
        frontend.set_state(&mut client, XenbusState::Connected)?;
        Ok(MockFrontend {
            client,
            frontend,
            ready,
            device: Some(device),
            timeout,
        })
    }

    /// Connects again after the back end restarted: drops the old connection, waits for
    /// the back end's published socket (InitWait or Connected) and connects to it; the
    /// front end's `state` stays Connected.
    ///
    /// # Errors
    /// As [`MockBlkFrontend::attach`].
    pub fn reconnect(&mut self) -> MockResult<()> {
        self.device = None;
        self.ready = self
            .frontend
            .wait_backend_ready(&mut self.client, self.timeout)?;
        self.device = Some(D::connect(
            self.frontend.device(),
            &self.ready,
            self.timeout,
        )?);
        Ok(())
    }

    /// What the back end published.
    pub fn backend(&self) -> &BackendReady {
        &self.ready
    }

    /// The store connection (the guest's).
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Waits for the back end to go Closing (unplug), then quiesces: stops the queues,
    /// disconnects, and writes Closing then Closed.
    ///
    /// # Errors
    /// Timeouts, store errors.
    pub fn wait_unplug(&mut self) -> MockResult<()> {
        let timeout = self.timeout;
        self.frontend
            .wait_backend_state(&mut self.client, timeout, |s| s >= XenbusState::Closing)?;
        self.close()
    }

    /// Closes the device from the guest's side (quiesce, disconnect, Closing, Closed).
    ///
    /// # Errors
    /// Store errors.
    pub fn close(&mut self) -> MockResult<()> {
        self.frontend
            .set_state(&mut self.client, XenbusState::Closing)?;
        if let Some(device) = self.device.take() {
            // A back end that already stopped cannot answer: nothing is lost.
            if let Err(e) = device.disconnect() {
                log::info!("{}: disconnect: {e}", self.frontend.device());
            }
        }
        self.frontend
            .set_state(&mut self.client, XenbusState::Closed)?;
        Ok(())
    }
}

impl MockDevice for BlkDevice {
    /// Connects and checks the capacity against the published `sectors`.
    fn connect(dev: &DeviceId, ready: &BackendReady, timeout: Duration) -> MockResult<Self> {
        let mut opts = BlkOptions::default();
        opts.connect.connect_timeout = timeout;
        let device = BlkDevice::connect(&ready.socket, &opts)?;
        let published = ready.number(node::SECTORS);
        if published != Some(device.config().capacity) {
            return Err(MockError::Mismatch(format!(
                "{dev}: the device has {} sectors, the back end published {published:?}",
                device.config().capacity
            )));
        }
        Ok(device)
    }

    fn disconnect(self) -> MockResult<()> {
        BlkDevice::disconnect(self)
            .map(drop)
            .map_err(MockError::from)
    }
}

impl MockDevice for NetDevice {
    /// Connects and checks the offered MAC against the published `mac`.
    fn connect(dev: &DeviceId, ready: &BackendReady, timeout: Duration) -> MockResult<Self> {
        let mut opts = NetOptions::default();
        opts.connect.connect_timeout = timeout;
        let device = NetDevice::connect(&ready.socket, &opts)
            .map_err(|e| MockError::Mismatch(format!("{dev}: vhost-user-net front end: {e}")))?;
        let offered = crate::config::Mac(device.config().mac).to_string();
        if ready.nodes.get(node::MAC) != Some(&offered) {
            return Err(MockError::Mismatch(format!(
                "{dev}: the device offers MAC {offered}, the back end published {:?}",
                ready.nodes.get(node::MAC)
            )));
        }
        Ok(device)
    }

    fn disconnect(self) -> MockResult<()> {
        Ok(NetDevice::disconnect(self)?)
    }
}

impl MockBlkFrontend {
    /// Writes a pattern derived from `seed` to the first and the last 4 KiB of the disk,
    /// flushes, then [`MockBlkFrontend::check_data`].
    ///
    /// # Errors
    /// I/O errors, a status other than OK, [`MockError::Mismatch`] on different data.
    pub fn verified_io(&mut self, seed: u8) -> MockResult<()> {
        self.each_probe(|name, queue, sector| {
            expect_ok(name, "write", queue.write(sector, &pattern(seed, sector))?)?;
            expect_ok(name, "flush", queue.flush()?)
        })?;
        self.check_data(seed)
    }

    /// Reads the first and the last 4 KiB and compares them with the pattern of `seed`
    /// (written by [`MockBlkFrontend::verified_io`], perhaps before an unplug).
    ///
    /// # Errors
    /// I/O errors, a status other than OK, [`MockError::Mismatch`] on different data.
    pub fn check_data(&mut self, seed: u8) -> MockResult<()> {
        self.each_probe(|name, queue, sector| {
            let (status, back) = queue.read(sector, PROBE_BYTES as u32)?;
            expect_ok(name, "read", status)?;
            if back != pattern(seed, sector) {
                return Err(MockError::Mismatch(format!(
                    "{name}: sector {sector} holds other data than pattern {seed:#x}"
                )));
            }
            Ok(())
        })
    }

    /// Runs `f` on queue 0 for the first and the last [`PROBE_BYTES`] of the disk.
    fn each_probe(
        &mut self,
        mut f: impl FnMut(&str, &mut BlkQueue, u64) -> MockResult<()>,
    ) -> MockResult<()> {
        let name = self.frontend.device().to_string();
        let device = self.device.as_mut().ok_or_else(|| {
            MockError::Mismatch(format!("{name}: I/O after the device was unplugged"))
        })?;
        let sectors = device.config().capacity;
        let queue = device.queue(0)?;
        for sector in [0, sectors.saturating_sub(PROBE_BYTES as u64 / 512)] {
            f(&name, queue, sector)?;
        }
        Ok(())
    }
}

impl MockNetFrontend {
    /// The NIC, to send and receive frames (None once unplugged).
    pub fn device(&mut self) -> Option<&mut NetDevice> {
        self.device.as_mut()
    }
}

/// Bytes written and read at each end of the disk.
pub const PROBE_BYTES: usize = 4096;

/// The probe data of `seed` at `sector`.
fn pattern(seed: u8, sector: u64) -> Vec<u8> {
    (0..PROBE_BYTES)
        .map(|i| (i as u8) ^ seed ^ (sector as u8))
        .collect()
}

fn expect_ok(name: &str, what: &str, status: BlkStatus) -> MockResult<()> {
    match status {
        BlkStatus::Ok => Ok(()),
        other => Err(MockError::Mismatch(format!(
            "{name}: {what} returned {other:?}"
        ))),
    }
}
