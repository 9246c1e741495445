//! A TAP device opened for virtio-net frames (linux/if_tun.h, Documentation/networking/tuntap.rst).
//!
//! Each queue is a file descriptor of /dev/net/tun attached to the named, already existing TAP
//! with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (and `IFF_MULTI_QUEUE` for more than one queue, or
//! when the TAP was made multi-queue),
//! non-blocking. Every frame read or written is preceded by a virtio-net header of the size set
//! with TUNSETVNETHDRSZ, so offloads pass through; TUNSETOFFLOAD says which offloads the kernel
//! may leave in frames it hands over (what the driver acked as GUEST_CSUM / GUEST_TSO*).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Failure to open or configure the TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// No network interface of that name (in this network namespace).
    #[error("TAP device {0} does not exist (create it with `ip tuntap add dev {0} mode tap multi_queue`)")]
    Missing(String),
    /// The interface exists but is not a TUN/TAP device.
    #[error("network interface {0} is not a TAP device")]
    NotTap(String),
    /// More than one queue asked of a TAP created without multi_queue.
    #[error("TAP device {name} was created without multi_queue; {queues} queue pairs need it (ip tuntap add dev {name} mode tap multi_queue)")]
    NotMultiQueue {
        /// Interface name.
        name: String,
        /// Queues asked for.
        queues: u16,
    },
    /// The name does not fit `IFNAMSIZ`.
    #[error("interface name {0:?} is longer than 15 bytes")]
    Name(String),
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun")]
    Open(#[source] io::Error),
    /// TUNSETIFF failed: not permitted (needs CAP_NET_ADMIN or the TAP's owner), not a TAP, or
    /// its multi_queue flag does not match the number of queues.
    #[error("cannot attach to TAP device {name} (TUNSETIFF)")]
    Attach {
        /// Interface name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A configuration ioctl failed.
    #[error("{ioctl} on TAP device {name} failed")]
    Ioctl {
        /// The ioctl, e.g. "TUNSETVNETHDRSZ".
        ioctl: &'static str,
        /// Interface name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq` with the name and the flags member of its union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// One queue of a TAP device.
#[derive(Debug)]
pub struct TapQueue {
    file: File,
    name: String,
    multi_queue: bool,
}

/// Opens `queues` queues of the existing TAP `name`, detached on a multi-queue TAP (see
/// [`TapQueue::set_attached`]): the kernel steers no frame to a queue until it is attached.
///
/// # Errors
/// [`TapError`]: the device is missing, the name is too long, or the open / attach failed.
pub fn open(name: &str, queues: u16) -> Result<Vec<TapQueue>, TapError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
        return Err(TapError::Name(name.to_string()));
    }
    if !Path::new("/sys/class/net").join(name).exists() {
        return Err(TapError::Missing(name.to_string()));
    }
    // A TAP made multi-queue (`ip tuntap add ... multi_queue`) takes only IFF_MULTI_QUEUE
    // attachments, even for one queue: several back-ends can then share it (live migration).
    let multi_queue = queues > 1 || made_multi_queue(name);
    (0..queues)
        .map(|_| TapQueue::open(name, multi_queue))
        .collect()
}

/// Whether TAP `name` was created with IFF_MULTI_QUEUE (its sysfs `tun_flags`, hex).
fn made_multi_queue(name: &str) -> bool {
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("tun_flags"))
        .ok()
        .and_then(|t| i64::from_str_radix(t.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|flags| flags & i64::from(libc::IFF_MULTI_QUEUE) != 0)
}

impl TapQueue {
    fn open(name: &str, multi_queue: bool) -> Result<TapQueue, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let mut req = ifreq(name, flags);
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is one (name, flags,
        // padding to the union size) and outlives the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if r < 0 {
            return Err(TapError::Attach {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let queue = TapQueue {
            file,
            name: name.to_string(),
            multi_queue,
        };
        // TUNSETIFF leaves the queue attached: the kernel would steer frames to it before any
        // driver runs a receive queue behind it (a daemon waiting for its front-end, a live
        // migration's destination sharing the TAP with the source). It is attached when a
        // receive queue runs.
        queue.set_attached(false)?;
        Ok(queue)
    }

    /// The file descriptor (non-blocking) for reads, writes and polling.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the virtio-net header size (TUNSETVNETHDRSZ): 10 or 12 bytes.
    ///
    /// # Errors
    /// [`TapError::Ioctl`].
    pub fn set_vnet_hdr_len(&self, len: usize) -> Result<(), TapError> {
        let len = libc::c_int::try_from(len).unwrap_or(libc::c_int::MAX);
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid for the call.
        let r = unsafe { libc::ioctl(self.fd(), libc::TUNSETVNETHDRSZ, &len) };
        self.check(r, "TUNSETVNETHDRSZ")
    }

    /// Sets the offloads the kernel may leave in frames it hands over (TUNSETOFFLOAD, `TUN_F_*`).
    ///
    /// # Errors
    /// [`TapError::Ioctl`].
    pub fn set_offloads(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let r = unsafe { libc::ioctl(self.fd(), libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
        self.check(r, "TUNSETOFFLOAD")
    }

    /// Attaches (`true`) or detaches this queue (TUNSETQUEUE), so the kernel steers frames only
    /// to queues a driver is using. A no-op on a single-queue TAP.
    ///
    /// # Errors
    /// [`TapError::Ioctl`].
    pub fn set_attached(&self, attached: bool) -> Result<(), TapError> {
        if !self.multi_queue {
            return Ok(());
        }
        let flags = if attached {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        };
        let mut req = ifreq("", flags);
        // SAFETY: TUNSETQUEUE reads a `struct ifreq`; `req` is one and outlives the call.
        let r = unsafe { libc::ioctl(self.fd(), libc::TUNSETQUEUE, &mut req) };
        // Attaching an attached queue or detaching a detached one is EINVAL: already done.
        if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            return Ok(());
        }
        self.check(r, "TUNSETQUEUE")
    }

    fn check(&self, r: libc::c_int, ioctl: &'static str) -> Result<(), TapError> {
        if r < 0 {
            return Err(TapError::Ioctl {
                ioctl,
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

fn ifreq(name: &str, flags: libc::c_int) -> IfReq {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: flags as libc::c_short,
        _pad: [0; 22],
    };
    let n = name.len().min(libc::IFNAMSIZ - 1);
    req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        let r = ifreq("tap0", libc::IFF_TAP);
        assert_eq!(&r.name[..5], b"tap0\0");
        assert_eq!(r.flags, libc::IFF_TAP as libc::c_short);
    }

    #[test]
    fn missing_device_and_bad_names_are_clear_errors() {
        let e = open("pvio-nosuch0", 1).unwrap_err();
        assert!(matches!(e, TapError::Missing(_)));
        assert!(
            e.to_string().contains("ip tuntap add dev pvio-nosuch0"),
            "{e}"
        );
        assert!(matches!(
            open("a-name-far-too-long", 1),
            Err(TapError::Name(_))
        ));
        assert!(matches!(open("", 1), Err(TapError::Name(_))));
        assert!(matches!(open("../x", 1), Err(TapError::Name(_))));
    }
}
