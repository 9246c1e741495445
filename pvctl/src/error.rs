//! Errors of pvctl; each says what to do about it.

use std::io;
use std::path::PathBuf;

use thiserror::Error;
use xenbus::XenbusError;

/// Errors of the toolstack.
#[derive(Debug, Error)]
pub enum PvctlError {
    /// Nothing listens on the store's socket.
    #[error("xenstore is not running at {path} ({cause}); start `xenstore-lite serve --socket {path}` or pass --xenstore")]
    StoreNotRunning {
        /// The socket tried.
        path: PathBuf,
        /// The connect error (in the message).
        cause: io::Error,
    },
    /// A store or handshake error.
    #[error(transparent)]
    Xenbus(#[from] XenbusError),
    /// The disk image cannot be used.
    #[error("image {path}: {cause}")]
    Image {
        /// The image.
        path: PathBuf,
        /// Why (in the message).
        cause: io::Error,
    },
    /// The guest payload is not a readable regular file.
    #[error("guest payload {path}: {why}")]
    Guest {
        /// The payload.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The image is neither a regular file nor a block device.
    #[error("image {0}: not a regular file or block device")]
    ImageKind(PathBuf),
    /// Another domain has this name.
    #[error("a domain named {name:?} exists already (domain {domid})")]
    NameTaken {
        /// The name.
        name: String,
        /// Its domain.
        domid: u32,
    },
    /// The store refused XS_INTRODUCE (the domain's nodes were removed again).
    #[error("the store refused to introduce domain {domid} (ring frame {gfn}, event channel {port}): {cause}")]
    Introduce {
        /// The domain.
        domid: u32,
        /// Its ring's guest frame number.
        gfn: u64,
        /// Its event channel port.
        port: u32,
        /// The store's answer (in the message).
        cause: xenstore_lite::ClientError,
    },
    /// Every domain id is in use.
    #[error("no free domain id")]
    NoFreeDomid,
    /// The name is empty or has characters a store path segment cannot hold.
    #[error("bad domain name {0:?}: use 1-64 letters, digits, '-', '_' or '.'")]
    BadName(String),
}

impl From<xenstore_lite::ClientError> for PvctlError {
    fn from(e: xenstore_lite::ClientError) -> Self {
        PvctlError::Xenbus(e.into())
    }
}

/// Result type of pvctl.
pub type Result<T> = std::result::Result<T, PvctlError>;
