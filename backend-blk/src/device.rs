//! What the virtio-blk device offers: feature bits, the configuration space
//! (`struct virtio_blk_config`, virtio 1.2 §5.2.4), the request limits derived from them, and
//! the device ID (serial). Built once from the [`Config`] and the opened [`Disk`].

use std::mem::size_of;
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use vm_memory::ByteValued;

use crate::cli::{Config, SERIAL_BYTES};
use crate::driver::{Capabilities, Disk};
use crate::image::{ImageError, SECTOR_SIZE};
use crate::request::Limits;

/// Largest segment (one descriptor's buffer) the driver should use: `size_max`, bytes.
pub const SIZE_MAX: u32 = 1 << 20;
/// Most data segments per request the driver should use: `seg_max`.
pub const SEG_MAX: u32 = 126;
/// Most buffers (iovecs) per request the device accepts: more than [`SEG_MAX`] for lenient
/// drivers, bounded by the kernel's `UIO_MAXIOV` so one `readv` can carry a whole request.
pub const MAX_REQUEST_BUFFERS: usize = 1024;
/// Largest DISCARD or WRITE_ZEROES range, 512-byte sectors (1 GiB).
pub const MAX_ZERO_SECTORS: u32 = 1 << 21;
/// Segments per DISCARD or WRITE_ZEROES request: one, done with one fallocate (the parser
/// accepts exactly one).
pub const MAX_ZERO_SEGMENTS: u32 = 1;

/// Size of `struct virtio_blk_config` in bytes.
pub const CONFIG_SPACE_BYTES: usize = size_of::<virtio_blk_config>();

/// `struct virtio_blk_config` as guest-visible bytes.
#[derive(Clone, Copy, Debug, Default)]
#[repr(transparent)]
struct ConfigSpace(virtio_blk_config);

// SAFETY: virtio_blk_config is a packed repr(C) struct of integers and integer arrays: plain
// old data with no padding and no invalid bit patterns.
unsafe impl ByteValued for ConfigSpace {}

/// The device model shared by every queue worker of every connection.
#[derive(Debug)]
pub struct BlockDevice {
    disk: Disk,
    capabilities: Capabilities,
    num_queues: u16,
    queue_size: u16,
    poll: Duration,
    features: u64,
    config: Vec<u8>,
    limits: Limits,
    serial: [u8; SERIAL_BYTES],
}

impl BlockDevice {
    /// Derives features, configuration space and limits from `config` and the opened `disk`
    /// (its driver's [`Capabilities`] decide FLUSH, DISCARD, WRITE_ZEROES and RO).
    pub fn new(config: &Config, disk: Disk) -> BlockDevice {
        let capabilities = disk.capabilities();
        let read_only = config.read_only || capabilities.read_only;
        let limits = Limits {
            capacity_sectors: disk.capacity_sectors(),
            read_only,
            discard: !read_only && capabilities.discard,
            write_zeroes: !read_only && capabilities.write_zeroes,
            max_zero_sectors: MAX_ZERO_SECTORS,
            max_buffers: MAX_REQUEST_BUFFERS,
        };
        let features = device_features(&limits, capabilities.flush);
        let config_space = config_space(&disk, config.num_queues, &limits);
        let serial = serial(config.serial.as_deref(), &config.image);
        BlockDevice {
            disk,
            capabilities,
            num_queues: config.num_queues,
            queue_size: config.queue_size,
            poll: Duration::from_micros(config.poll_us.into()),
            features,
            config: config_space.as_slice().to_vec(),
            limits,
            serial,
        }
    }

    /// How long a queue's thread busy-polls after its last work before it sleeps.
    pub fn poll(&self) -> Duration {
        self.poll
    }

    /// The disk served.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// What the disk's driver can do.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// Number of request queues.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// Largest virtqueue size.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// Virtio feature bits offered, with VHOST_USER_F_PROTOCOL_FEATURES (bit 30).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The device's vhost-user protocol features: MQ, CONFIG, INFLIGHT_SHMFD (crash-safe
    /// reconnect) and BACKEND_REQ (configuration change notifications on resize)
    /// (vhost-user.rst); vhost-daemon adds its own (REPLY_ACK).
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
            | VhostUserProtocolFeatures::BACKEND_REQ
    }

    /// Request limits for the parser, with the capacity as it is now.
    pub fn limits(&self) -> Limits {
        Limits {
            capacity_sectors: self.disk.capacity_sectors(),
            ..self.limits.clone()
        }
    }

    /// Reads the disk size again (SIGHUP, or the driver noticed a resize) and serves it as the
    /// new `capacity`. Returns the old and new capacity in 512-byte sectors when it changed.
    ///
    /// # Errors
    /// [`ImageError`] when the size cannot be read; the old capacity stays.
    pub fn resize(&self) -> Result<Option<(u64, u64)>, ImageError> {
        let old = self.disk.capacity_sectors();
        self.disk.reread_size()?;
        let new = self.disk.capacity_sectors();
        Ok((new != old).then_some((old, new)))
    }

    /// The 20-byte device ID for VIRTIO_BLK_T_GET_ID, NUL-padded.
    pub fn serial(&self) -> &[u8; SERIAL_BYTES] {
        &self.serial
    }

    /// `struct virtio_blk_config` as the driver sees it, with the capacity as it is now (the
    /// core cuts GET_CONFIG windows).
    pub fn config_space(&self) -> Vec<u8> {
        let mut config = self.config.clone();
        // `capacity` is the first field (virtio 1.2 §5.2.4) and follows the image size.
        config[..8].copy_from_slice(&self.disk.capacity_sectors().to_le_bytes());
        config
    }
}

fn device_features(limits: &Limits, flush: bool) -> u64 {
    let mut bits = vec![
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_TOPOLOGY,
        VIRTIO_BLK_F_MQ,
    ];
    if flush {
        bits.push(VIRTIO_BLK_F_FLUSH);
    }
    if limits.read_only {
        bits.push(VIRTIO_BLK_F_RO);
    }
    if limits.discard {
        bits.push(VIRTIO_BLK_F_DISCARD);
    }
    if limits.write_zeroes {
        bits.push(VIRTIO_BLK_F_WRITE_ZEROES);
    }
    bits.iter().fold(
        VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
        |acc, b| acc | 1 << b,
    )
}

fn config_space(disk: &Disk, num_queues: u16, limits: &Limits) -> ConfigSpace {
    let logical = disk.logical_block_size();
    let physical = disk.physical_block_size().max(logical);
    let blocks_per_physical = physical / logical;
    let physical_sectors = u32::try_from(u64::from(physical) / SECTOR_SIZE).unwrap_or(1);
    let mut c = virtio_blk_config {
        capacity: limits.capacity_sectors.to_le(),
        size_max: SIZE_MAX.to_le(),
        seg_max: SEG_MAX.to_le(),
        blk_size: logical.to_le(),
        num_queues: num_queues.to_le(),
        ..Default::default()
    };
    c.physical_block_exp = u8::try_from(blocks_per_physical.trailing_zeros()).unwrap_or(0);
    c.min_io_size = u16::try_from(blocks_per_physical).unwrap_or(1).to_le();
    if limits.discard {
        c.max_discard_sectors = limits.max_zero_sectors.to_le();
        c.max_discard_seg = MAX_ZERO_SEGMENTS.to_le();
        c.discard_sector_alignment = physical_sectors.to_le();
    }
    if limits.write_zeroes {
        c.max_write_zeroes_sectors = limits.max_zero_sectors.to_le();
        c.max_write_zeroes_seg = MAX_ZERO_SEGMENTS.to_le();
        c.write_zeroes_may_unmap = u8::from(disk.capabilities().zeroes_may_unmap);
    }
    ConfigSpace(c)
}

/// The user's serial, or "pvio-" and the 32-bit FNV-1a hash of the image path (or URL) in hex.
fn serial(user: Option<&[u8]>, image: &std::path::Path) -> [u8; SERIAL_BYTES] {
    let default;
    let bytes = match user {
        Some(s) => s,
        None => {
            let path = image.as_os_str().as_encoded_bytes();
            let hash = path.iter().fold(0x811c_9dc5u32, |h, &b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            });
            default = format!("pvio-{hash:08x}");
            default.as_bytes()
        }
    };
    let mut out = [0u8; SERIAL_BYTES];
    let n = bytes.len().min(SERIAL_BYTES);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;
    use std::path::PathBuf;

    use super::*;
    use vhost_daemon::config::window;
    use vhost_daemon::listener::SocketSource;

    fn device(tag: &str, read_only: bool, serial: Option<&[u8]>) -> (BlockDevice, PathBuf) {
        let dir = std::env::temp_dir().join(format!("pvio-blk-dev-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.raw");
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let config = Config {
            socket: SocketSource::Fd(0),
            image: path.clone(),
            read_only,
            num_queues: 3,
            queue_size: 128,
            direct: false,
            poll_us: 0,
            serial: serial.map(<[u8]>::to_vec),
        };
        let disk = Disk::open(&path, read_only, false).unwrap();
        (BlockDevice::new(&config, disk), dir)
    }

    fn le32(dev: &BlockDevice, offset: usize) -> u32 {
        u32::from_le_bytes(
            window(&dev.config_space(), offset as u32, 4)
                .try_into()
                .unwrap(),
        )
    }

    #[test]
    fn config_space_fields() {
        let (dev, dir) = device("cfg", false, None);
        let cap = window(&dev.config_space(), 0, 8);
        assert_eq!(u64::from_le_bytes(cap.try_into().unwrap()), 2048);
        assert_eq!(
            le32(&dev, offset_of!(virtio_blk_config, size_max)),
            SIZE_MAX
        );
        assert_eq!(le32(&dev, offset_of!(virtio_blk_config, seg_max)), SEG_MAX);
        assert_eq!(le32(&dev, offset_of!(virtio_blk_config, blk_size)), 512);
        let nq = window(
            &dev.config_space(),
            offset_of!(virtio_blk_config, num_queues) as u32,
            2,
        );
        assert_eq!(nq, 3u16.to_le_bytes());
        let f = dev.features();
        assert_ne!(f & (1 << VIRTIO_F_VERSION_1), 0);
        assert_ne!(f & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
        if f & (1 << VIRTIO_BLK_F_DISCARD) != 0 {
            let off = offset_of!(virtio_blk_config, max_discard_seg);
            assert_eq!(le32(&dev, off), MAX_ZERO_SEGMENTS);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn read_only_features() {
        let (dev, dir) = device("ro", true, Some(b"disk-7"));
        let f = dev.features();
        assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(
            f & (1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES),
            0
        );
        assert_eq!(&dev.serial()[..6], b"disk-7");
        assert!(dev.serial()[6..].iter().all(|&b| b == 0));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn default_serial_is_stable_per_path() {
        let (a, dir) = device("ser", false, None);
        assert_eq!(&a.serial()[..5], b"pvio-");
        let (b, _) = device("ser", false, None);
        assert_eq!(a.serial(), b.serial());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
