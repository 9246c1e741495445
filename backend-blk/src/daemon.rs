//! The daemon's life: listen, serve one front-end at a time with a fresh back-end, listen again
//! when it leaves, and stop cleanly on SIGTERM or SIGINT.
//!
//! SIGTERM and SIGINT are blocked in every thread and read from a signalfd, so the main thread
//! notices them while idle (waiting for a connection) and while a front-end is connected. On a
//! signal the daemon closes the connection, lets the queue workers finish, waits for in-flight
//! I/O, runs `fdatasync` on the image, removes the socket file and returns.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use log::{debug, info, warn};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{getsockopt, sockopt};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonLibError, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backend::{BackendError, BlkBackend};
use crate::cli::{Config, SocketSource};
use crate::device::BlockDevice;
use crate::image::{Image, ImageError};

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// SIGTERM/SIGINT could not be routed to a signalfd.
    #[error("cannot set up signal handling: {0}")]
    Signals(nix::Error),
    /// The socket path exists and is not a socket (it is never removed).
    #[error("cannot listen on {0}: the path exists and is not a socket")]
    NotASocket(PathBuf),
    /// The socket could not be created.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `--fd` is not an open, listening socket.
    #[error("--fd {fd} is not a listening socket: {reason}")]
    BadFd {
        /// The descriptor number.
        fd: RawFd,
        /// Why.
        reason: String,
    },
    /// The image cannot be served.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The back-end for a connection could not be set up.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// vhost-user-backend failed to create the daemon or accept a connection.
    #[error("vhost-user: {0}")]
    Vhost(DaemonLibError),
    /// Waiting for events failed.
    #[error("cannot wait for events: {0}")]
    Wait(io::Error),
    /// The thread following a connection could not be started or panicked.
    #[error("connection thread failed: {0}")]
    Session(String),
}

/// Serves `config` until SIGTERM or SIGINT.
///
/// # Errors
/// [`DaemonError`] when the socket, the image or a connection's back-end cannot be set up.
pub fn run(config: &Config) -> Result<(), DaemonError> {
    let signals = block_termination_signals()?;
    let mut listener = listen(&config.socket)?;
    let image = Image::open(&config.image, config.read_only, config.direct)?;
    let device = Arc::new(BlockDevice::new(config, image));
    info!(
        "serving {} ({} bytes{}{}) with {} queue(s) of up to {} descriptors, features {:#x}",
        config.image.display(),
        device.image().size(),
        if device.image().is_direct() {
            ", O_DIRECT"
        } else {
            ""
        },
        if config.read_only { ", read-only" } else { "" },
        device.num_queues(),
        device.queue_size(),
        device.features()
    );
    let served = serve(&device, &mut listener, &signals);
    match device.image().sync() {
        Ok(()) => debug!("image synced"),
        Err(e) => warn!("fdatasync of the image failed: {e}"),
    }
    drop(listener); // removes a socket file it created
    info!("stopped");
    served
}

/// Accepts front-ends one after another until a termination signal.
fn serve(
    device: &Arc<BlockDevice>,
    listener: &mut Listener,
    signals: &SignalFd,
) -> Result<(), DaemonError> {
    info!("waiting for a vhost-user front-end");
    loop {
        if wait_readable(&[signals.as_fd().as_raw_fd(), listener.as_raw_fd()])? == 0 {
            match take_signal(signals) {
                Some(Signal::SIGHUP) => reconfigure(device, None),
                Some(_) => {
                    info!("termination signal: stopping");
                    return Ok(());
                }
                None => {}
            }
            continue;
        }
        if serve_connection(device, listener, signals)? == Ended::Signal {
            info!("termination signal: stopped serving the front-end");
            return Ok(());
        }
        info!("waiting for a vhost-user front-end");
    }
}

/// Reads one pending signal from the signalfd.
fn take_signal(signals: &SignalFd) -> Option<Signal> {
    let info = signals.read_signal().ok().flatten()?;
    Signal::try_from(i32::try_from(info.ssi_signo).ok()?).ok()
}

/// SIGHUP: re-reads the image size and, when the capacity changed and a front-end is
/// connected, tells it (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG) from a thread of its own, so a
/// front-end slow to ack does not hold up the daemon.
fn reconfigure(device: &BlockDevice, backend: Option<&Arc<BlkBackend>>) {
    match device.resize() {
        Ok(None) => info!(
            "SIGHUP: image size unchanged ({} bytes)",
            device.image().size()
        ),
        Ok(Some((old, new))) => {
            info!("SIGHUP: capacity changed from {old} to {new} sectors");
            let Some(backend) = backend.cloned() else {
                return;
            };
            let spawned = thread::Builder::new()
                .name("config-change".to_string())
                .spawn(move || match backend.notify_config_change() {
                    Ok(()) => info!("front-end notified of the new capacity"),
                    Err(e) => warn!("cannot notify the front-end of the new capacity: {e}"),
                });
            if let Err(e) = spawned {
                warn!("cannot start the configuration change thread: {e}");
            }
        }
        Err(e) => warn!("SIGHUP: {e}"),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Disconnected,
    Signal,
}

/// Serves one front-end with a fresh back-end; returns when it leaves or a signal arrives.
fn serve_connection(
    device: &Arc<BlockDevice>,
    listener: &mut Listener,
    signals: &SignalFd,
) -> Result<Ended, DaemonError> {
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let backend = Arc::new(BlkBackend::new(device.clone(), mem.clone())?);
    let mut daemon = VhostUserDaemon::new("backend-blk".to_string(), backend.clone(), mem)
        .map_err(DaemonError::Vhost)?;
    backend.register_completions(&daemon.get_epoll_handlers())?;
    daemon.start(listener).map_err(DaemonError::Vhost)?;
    info!("front-end connected");

    let shutdown = daemon.shutdown_handle();
    let done = EventFd::new(EFD_NONBLOCK).map_err(DaemonError::Wait)?;
    let done_signal = done.try_clone().map_err(DaemonError::Wait)?;
    let session = thread::Builder::new()
        .name("vhost-user-session".to_string())
        .spawn(move || {
            let result = daemon.wait();
            let _ = done_signal.write(1);
            (daemon, result)
        })
        .map_err(|e| DaemonError::Session(e.to_string()))?;

    let ended = loop {
        if wait_readable(&[signals.as_fd().as_raw_fd(), done.as_raw_fd()])? != 0 {
            break Ended::Disconnected;
        }
        match take_signal(signals) {
            Some(Signal::SIGHUP) => reconfigure(device, Some(&backend)),
            Some(_) => {
                if let Some(handle) = shutdown {
                    handle.shutdown();
                }
                break Ended::Signal;
            }
            None => {}
        }
    };
    debug!("waiting for the connection thread");
    let (daemon, result) = session
        .join()
        .map_err(|_| DaemonError::Session("the connection thread panicked".to_string()))?;
    match result {
        Ok(())
        | Err(DaemonLibError::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => info!("front-end disconnected"),
        Err(e) => warn!("connection ended: {e}"),
    }
    // Stop the queue workers (dropping the daemon joins them), then finish in-flight I/O.
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    drop(daemon);
    debug!("queue workers stopped");
    let in_flight = backend.in_flight();
    if in_flight > 0 {
        info!("waiting for {in_flight} in-flight request(s)");
    }
    backend.drain();
    Ok(ended)
}

/// Blocks SIGTERM and SIGINT in this thread and every thread it starts later, and returns a
/// signalfd that reads them.
fn block_termination_signals() -> Result<SignalFd, DaemonError> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGHUP);
    mask.thread_block().map_err(DaemonError::Signals)?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(DaemonError::Signals)
}

/// The listening socket: created at a path (replacing a stale socket, never another file), or
/// inherited from the launcher.
fn listen(socket: &SocketSource) -> Result<Listener, DaemonError> {
    match socket {
        SocketSource::Path(path) => listen_at(path),
        SocketSource::Fd(fd) => inherited_listener(*fd),
    }
}

fn listen_at(path: &Path) -> Result<Listener, DaemonError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(DaemonError::NotASocket(path.to_path_buf()))
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
    Listener::new(path, false).map_err(|e| DaemonError::Listen {
        path: path.to_path_buf(),
        source: match e {
            VhostUserError::SocketError(io) => io,
            other => io::Error::other(other.to_string()),
        },
    })
}

fn inherited_listener(fd: RawFd) -> Result<Listener, DaemonError> {
    let bad = |reason: String| DaemonError::BadFd { fd, reason };
    // SAFETY: F_GETFD only reads the descriptor's flags; an invalid number fails with EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(bad(io::Error::last_os_error().to_string()));
    }
    // SAFETY: `fd` was just checked to be open; the borrow ends within this function.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    match getsockopt(&borrowed, sockopt::AcceptConn) {
        Ok(true) => {}
        Ok(false) => return Err(bad("the socket is not listening".to_string())),
        Err(e) => return Err(bad(e.desc().to_string())),
    }
    // SAFETY: the launcher hands this open, listening socket to the daemon, which becomes its
    // only owner; nothing else in the process uses the number.
    let socket = unsafe { UnixListener::from_raw_fd(fd) };
    // SAFETY: F_SETFD with FD_CLOEXEC only changes the flags of the descriptor owned above.
    unsafe { libc::fcntl(socket.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(Listener::from(socket))
}

/// Waits until one of `fds` is readable; returns the lowest such index (so earlier entries,
/// e.g. the signalfd, win ties).
fn wait_readable(fds: &[RawFd]) -> Result<usize, DaemonError> {
    let epoll = Epoll::new().map_err(DaemonError::Wait)?;
    for (index, fd) in fds.iter().enumerate() {
        epoll
            .ctl(
                ControlOperation::Add,
                *fd,
                EpollEvent::new(EventSet::IN, index as u64),
            )
            .map_err(DaemonError::Wait)?;
    }
    let mut events = vec![EpollEvent::default(); fds.len()];
    loop {
        match epoll.wait(-1, &mut events) {
            Ok(n) => {
                if let Some(first) = events[..n].iter().map(EpollEvent::data).min() {
                    // `first` is one of the indices registered above.
                    return Ok(first as usize);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DaemonError::Wait(e)),
        }
    }
}
