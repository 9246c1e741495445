//! The front-end host's own failure paths: connection deadline, silent back-end, guest RAM.

mod common;

use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use common::TempDir;
use frontend_guest::host::{BlkDevice, BlkOptions, ConnectOptions, Error, HostRam};
use frontend_guest::mem::{GuestRam, MemError};

fn quick() -> BlkOptions {
    BlkOptions {
        connect: ConnectOptions {
            connect_timeout: Duration::from_millis(300),
            reply_timeout: Duration::from_millis(300),
        },
        ..BlkOptions::default()
    }
}

#[test]
fn missing_socket_fails_after_the_deadline() {
    let dir = TempDir::new("nosock");
    let start = Instant::now();
    let err = BlkDevice::connect(dir.path().join("absent.sock"), &quick()).unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "retried until the deadline"
    );
}

#[test]
fn silent_back_end_times_out_instead_of_hanging() {
    let dir = TempDir::new("silent");
    let path = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let err = BlkDevice::connect(&path, &quick()).unwrap_err();
    // SET_OWNER needs no reply; GET_FEATURES is the first message that waits.
    assert!(
        matches!(
            err,
            Error::ControlTimeout {
                request: "VHOST_USER_GET_FEATURES",
                ..
            }
        ),
        "{err:?}"
    );
    drop(listener);
}

#[test]
fn guest_ram_bounds_and_allocator() {
    let ram = HostRam::new(8192).unwrap();
    assert_eq!(ram.size(), 8192);
    let a = ram.alloc(100, 64).unwrap();
    let b = ram.alloc(100, 4096).unwrap();
    assert_eq!((a, b), (0, 4096));
    assert!(matches!(
        ram.alloc(8192, 1),
        Err(Error::OutOfRam { free: 3996, .. })
    ));
    ram.write(8190, &[1, 2]).unwrap();
    assert_eq!(ram.read_vec(8190, 2).unwrap(), vec![1, 2]);
    assert_eq!(
        ram.write(8191, &[1, 2]),
        Err(MemError::OutOfRange { gpa: 8191, len: 2 })
    );
    assert_eq!(
        ram.load_u16(3, std::sync::atomic::Ordering::Acquire),
        Err(MemError::Misaligned { gpa: 3, align: 2 })
    );
    ram.store_u16(8190, 0x1234, std::sync::atomic::Ordering::Release)
        .unwrap();
    assert_eq!(
        ram.read_vec(8190, 2).unwrap(),
        vec![0x34, 0x12],
        "little-endian"
    );
    assert!(ram.host_address(8192).is_err());
}
