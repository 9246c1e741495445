//! A stand-in for backend-blk's store mode: the xenbus device manager whose device actions
//! launch one `backend-blk` process per disk on the socket it publishes. It lets the whole
//! XenBus handshake run with the real data path before the daemon itself watches the store.

use std::path::{Path, PathBuf};

use xenbus::{ActionsFactory, DeviceActions, DeviceConfig, DeviceId, Published};

use crate::backend::{self, BlkBackend, BlkBackendConfig, BlkBackendKind};

/// Why a disk could not be served.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The image cannot be opened.
    #[error("cannot open image {path}: {source}")]
    Image {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The device is not a disk.
    #[error("not a vbd")]
    NotADisk,
    /// backend-blk did not start.
    #[error(transparent)]
    Backend(#[from] backend::Error),
    /// backend-blk exited while it should serve.
    #[error("backend-blk exited; its log:\n{0}")]
    Exited(String),
}

/// Makes [`ProcessBlk`] actions with sockets and logs in `run_dir`.
#[derive(Debug)]
pub struct ProcessBlkFactory {
    kind: BlkBackendKind,
    run_dir: PathBuf,
}

impl ProcessBlkFactory {
    /// backend-blk from `kind`, files in `run_dir`.
    pub fn new(kind: BlkBackendKind, run_dir: &Path) -> Self {
        ProcessBlkFactory {
            kind,
            run_dir: run_dir.into(),
        }
    }
}

impl ActionsFactory for ProcessBlkFactory {
    type Actions = ProcessBlk;

    fn actions(&mut self, dev: &DeviceId) -> ProcessBlk {
        let stem = format!("vbd-{}-{}", dev.domid, dev.devid);
        ProcessBlk {
            kind: self.kind.clone(),
            socket: self.run_dir.join(format!("{stem}.sock")),
            log: self.run_dir.join(format!("{stem}.log")),
            process: None,
        }
    }
}

/// One disk served by one backend-blk process.
#[derive(Debug)]
pub struct ProcessBlk {
    kind: BlkBackendKind,
    socket: PathBuf,
    log: PathBuf,
    process: Option<BlkBackend>,
}

impl ProcessBlk {
    fn stop(&mut self) {
        if let Some(p) = self.process.take() {
            if let Err(e) = p.stop() {
                log::warn!("{}: {e}", self.socket.display());
            }
        }
    }
}

impl DeviceActions for ProcessBlk {
    type Error = HarnessError;

    fn prepare(&mut self, config: &DeviceConfig) -> Result<Published, HarnessError> {
        let DeviceConfig::Vbd(vbd) = config else {
            return Err(HarnessError::NotADisk);
        };
        let bytes = std::fs::metadata(&vbd.image)
            .map_err(|source| HarnessError::Image {
                path: vbd.image.clone(),
                source,
            })?
            .len();
        self.stop();
        let mut cfg = BlkBackendConfig::new(&vbd.image, &self.socket, vbd.num_queues);
        cfg.readonly = vbd.readonly;
        self.process = Some(BlkBackend::start(&self.kind, &cfg, &self.log)?);
        Ok(Published {
            socket: self.socket.clone(),
            facts: Published::vbd_facts(bytes, vbd.readonly),
        })
    }

    fn connect(&mut self) -> Result<(), HarnessError> {
        match &mut self.process {
            Some(p) => match p.is_running() {
                true => Ok(()),
                false => Err(HarnessError::Exited(p.log())),
            },
            None => Err(HarnessError::Exited(String::new())),
        }
    }

    fn drain(&mut self) {
        // backend-blk completes what it has taken off the rings before it exits on SIGTERM.
        self.stop();
    }

    fn remove(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.socket);
    }
}
