//! The virtio-blk status byte (virtio 1.2 §5.2.6) and the mapping of every failure to it.

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};

use crate::request::RequestError;

/// Value of the status byte the device writes last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// VIRTIO_BLK_S_OK.
    Ok,
    /// VIRTIO_BLK_S_IOERR.
    IoErr,
    /// VIRTIO_BLK_S_UNSUPP.
    Unsupp,
}

impl Status {
    /// The byte written to the guest.
    pub fn byte(self) -> u8 {
        let code = match self {
            Status::Ok => VIRTIO_BLK_S_OK,
            Status::IoErr => VIRTIO_BLK_S_IOERR,
            Status::Unsupp => VIRTIO_BLK_S_UNSUPP,
        };
        // The VIRTIO_BLK_S_* codes are 0, 1 and 2.
        code as u8
    }

    /// Status for an io_uring operation that failed with `errno`: EOPNOTSUPP (e.g. a block
    /// device without discard support) is VIRTIO_BLK_S_UNSUPP, anything else VIRTIO_BLK_S_IOERR.
    pub fn from_errno(errno: i32) -> Status {
        if errno == libc::EOPNOTSUPP {
            Status::Unsupp
        } else {
            Status::IoErr
        }
    }
}

impl From<&RequestError> for Status {
    /// Unsupported request types and DISCARD with UNMAP (virtio 1.2 §5.2.6.2) are
    /// VIRTIO_BLK_S_UNSUPP; every malformed or out-of-range request is VIRTIO_BLK_S_IOERR.
    fn from(error: &RequestError) -> Status {
        match error {
            RequestError::Unsupported(_) | RequestError::DiscardUnmap => Status::Unsupp,
            RequestError::EmptyChain
            | RequestError::BrokenChain(_)
            | RequestError::TooLong(_)
            | RequestError::NoStatus
            | RequestError::OutsideMemory { .. }
            | RequestError::ReadableAfterWritable(_)
            | RequestError::HeaderWritable
            | RequestError::ShortHeader(_)
            | RequestError::MemoryRead(_)
            | RequestError::WrongDirection { .. }
            | RequestError::NotSectorMultiple(_)
            | RequestError::OutOfRange { .. }
            | RequestError::ReadOnly(_)
            | RequestError::TooManyBuffers(..)
            | RequestError::BadSegments(_)
            | RequestError::UnknownSegmentFlags(_)
            | RequestError::SegmentTooLong { .. } => Status::IoErr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_match_the_spec() {
        assert_eq!(Status::Ok.byte(), 0);
        assert_eq!(Status::IoErr.byte(), 1);
        assert_eq!(Status::Unsupp.byte(), 2);
    }

    #[test]
    fn errno_mapping() {
        assert_eq!(Status::from_errno(libc::EOPNOTSUPP), Status::Unsupp);
        assert_eq!(Status::from_errno(libc::EIO), Status::IoErr);
        assert_eq!(Status::from_errno(libc::EINVAL), Status::IoErr);
    }

    #[test]
    fn request_errors() {
        assert_eq!(Status::from(&RequestError::Unsupported(2)), Status::Unsupp);
        assert_eq!(Status::from(&RequestError::DiscardUnmap), Status::Unsupp);
        assert_eq!(Status::from(&RequestError::ReadOnly("OUT")), Status::IoErr);
        assert_eq!(Status::from(&RequestError::BrokenChain(3)), Status::IoErr);
        let oob = RequestError::OutOfRange {
            sector: 1,
            sectors: 2,
            capacity: 2,
        };
        assert_eq!(Status::from(&oob), Status::IoErr);
    }
}
