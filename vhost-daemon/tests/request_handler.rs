//! The vhost crate's request handler as vhost-daemon's [`Session`] drives it, facing a
//! front-end that breaks the message rules (regressions found by the `vhost_user` fuzz target).

use std::fs::File;
use std::io::{IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_daemon::backend::{Device, DeviceBackend};
use vhost_daemon::daemon::Session;
use vhost_daemon::memory::{GuestRamAtomic, Vring};
use vhost_daemon::BoxError;
use vmm_sys_util::epoll::EventSet;

/// A device with one queue and nothing behind it.
struct Idle;

impl DeviceBackend for Idle {
    fn num_queues(&self) -> usize {
        1
    }
    fn max_queue_size(&self) -> usize {
        8
    }
    fn features(&self) -> u64 {
        0
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::empty()
    }
    fn config_space(&self) -> Vec<u8> {
        Vec::new()
    }
    fn queues_per_thread(&self) -> Vec<u64> {
        vec![1]
    }
    fn handle_event(&self, _: u16, _: EventSet, _: &[Vring], _: usize) {}
}

impl Device for Idle {
    type Backend = Idle;
    fn name(&self) -> &str {
        "idle"
    }
    fn connect(&self, _port: usize, _mem: GuestRamAtomic) -> Result<Idle, BoxError> {
        Ok(Idle)
    }
    fn stats(&self) -> String {
        String::new()
    }
}

/// VHOST_USER_GET_FEATURES (1), version 1, no payload.
const GET_FEATURES: [u8; 12] = [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];

/// A header with more descriptors than a message may carry (32): vmm-sys-util closes them and
/// reports ENOBUFS after consuming the header; the vhost crate took that for "retry" and read
/// the next message as this one, silently. Now the connection ends with an error.
#[test]
fn a_message_with_too_many_descriptors_ends_the_connection() {
    let session = Session::open(&Idle, 0).unwrap();
    let (front, back) = UnixStream::pair().unwrap();
    let mut handler = session.request_handler(back);
    let file = File::open("/dev/null").unwrap();
    let fds = [file.as_raw_fd(); 40];
    sendmsg::<()>(
        front.as_raw_fd(),
        &[IoSlice::new(&GET_FEATURES)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    // A well-formed message next: the old behaviour handled it as the refused one.
    (&front).write_all(&GET_FEATURES).unwrap();
    let handled = handler.handle_request();
    assert!(
        matches!(handled, Err(vhost::vhost_user::Error::IncorrectFds)),
        "{handled:?}"
    );
    drop(handler);
    session.close();
}
