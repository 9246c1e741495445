//! The daemon's life: one thread per listening socket serves one front-end after another, each
//! with a fresh vhost-user-backend daemon and a fresh [`Backend`]; the main thread reads the
//! signals (SIGINT/SIGTERM stop, SIGHUP reconfigures, SIGUSR1 logs the counters).
//!
//! To stop, an eventfd wakes the socket threads waiting for a connection and each connected
//! front-end's socket is shut down; each socket thread then stops its connection's worker
//! threads (joining them), lets the device finish its in-flight work, and drops its listener,
//! which removes the socket file. [`Daemon::run`] returns when all of that is done.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backend::{Backend, Device, DeviceBackend};
use crate::listener::{self, ListenError, SocketSource};
use crate::memory::new_guest_ram;
use crate::signals::{Request, Signals};
use crate::{error_chain, relay, BoxError};

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A socket could not be listened on.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// An eventfd or thread could not be created.
    #[error("cannot create {what}: {source}")]
    Resource {
        /// What: "an eventfd", "a thread".
        what: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// Reading the signalfd failed.
    #[error("cannot read signals: {0}")]
    Signals(nix::Error),
}

/// The stop request every thread of the daemon watches.
pub struct Stop {
    requested: AtomicBool,
    wake: EventFd,
    sessions: Mutex<Vec<Option<ShutdownHandle>>>,
}

impl Stop {
    fn new(ports: usize) -> Result<Stop, DaemonError> {
        Ok(Stop {
            requested: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK).map_err(|source| DaemonError::Resource {
                what: "an eventfd",
                source,
            })?,
            sessions: Mutex::new(vec![None; ports]),
        })
    }

    /// Whether a stop was requested.
    pub fn stopping(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    fn trigger(&self) {
        self.requested.store(true, Ordering::Release);
        if let Err(e) = self.wake.write(1) {
            log::error!("cannot wake the socket threads: {e}");
        }
        let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.iter().flatten().for_each(ShutdownHandle::shutdown);
    }

    fn set_session(&self, port: usize, handle: Option<ShutdownHandle>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = sessions.get_mut(port) {
            *slot = handle;
        }
    }

    /// Waits until `fd` is readable (true) or a stop is requested (false).
    pub fn wait_readable(&self, fd: BorrowedFd<'_>) -> bool {
        loop {
            if self.stopping() {
                return false;
            }
            // SAFETY: `self.wake` outlives this borrow, which ends with the poll call.
            let wake = unsafe { BorrowedFd::borrow_raw(self.wake.as_raw_fd()) };
            let mut fds = [
                PollFd::new(fd, PollFlags::POLLIN),
                PollFd::new(wake, PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) if self.stopping() => return false,
                Ok(_) if fds[0].any().unwrap_or(false) => return true,
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("poll: {e}");
                    return false;
                }
            }
        }
    }
}

/// A daemon serving a [`Device`] on one or more sockets.
pub struct Daemon<D: Device> {
    device: Arc<D>,
    signals: Signals,
    listeners: Vec<(Listener, SocketSource)>,
    stop: Arc<Stop>,
}

impl<D: Device> Daemon<D> {
    /// Listens on `sockets` (socket `i` is the device's port `i`). `signals` must have been
    /// blocked before any thread was started ([`Signals::block`]).
    ///
    /// # Errors
    /// [`DaemonError::Listen`] for the first socket that cannot be listened on.
    pub fn new(
        device: Arc<D>,
        signals: Signals,
        sockets: &[SocketSource],
    ) -> Result<Daemon<D>, DaemonError> {
        let listeners = sockets
            .iter()
            .map(|source| Ok((listener::listen(source)?, source.clone())))
            .collect::<Result<Vec<_>, DaemonError>>()?;
        Ok(Daemon {
            device,
            signals,
            listeners,
            stop: Arc::new(Stop::new(sockets.len())?),
        })
    }

    /// The stop request, for the device's own threads (a stats socket, ...).
    pub fn stop_handle(&self) -> Arc<Stop> {
        self.stop.clone()
    }

    /// Serves until SIGINT or SIGTERM, then stops cleanly (see the module documentation).
    ///
    /// # Errors
    /// [`DaemonError`] when a socket thread cannot be started or the signals cannot be read;
    /// the daemon has stopped cleanly then too.
    pub fn run(self) -> Result<(), DaemonError> {
        let mut threads = Vec::new();
        let mut result = Ok(());
        for (port, (listener, source)) in self.listeners.into_iter().enumerate() {
            log::info!("socket {port}: listening on {source}");
            let session = Port {
                port,
                device: self.device.clone(),
                stop: self.stop.clone(),
            };
            let name = format!("{}-port-{port}", self.device.name());
            match spawn(name, move || session.serve(listener)) {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            result = handle_signals(&self.signals, &*self.device);
        }
        log::info!("stopping");
        self.stop.trigger();
        for t in threads {
            if t.join().is_err() {
                log::error!("a socket thread panicked");
            }
        }
        self.device.stopped();
        log::info!("stopped");
        result
    }
}

/// One socket served on its own thread until [`PortServer::stop`], independent of the
/// process's signals: the store-mode daemons run one per device, started and stopped as the
/// XenBus handshake asks (the device as port 0).
pub struct PortServer {
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
}

impl PortServer {
    /// Listens on `source` and serves `device` there, one front-end after another.
    ///
    /// # Errors
    /// [`DaemonError::Listen`]; [`DaemonError::Resource`] when the eventfd or the thread
    /// cannot be created.
    pub fn start<D: Device>(device: Arc<D>, source: &SocketSource) -> Result<Self, DaemonError> {
        let listener = listener::listen(source)?;
        let stop = Arc::new(Stop::new(1)?);
        let port = Port {
            port: 0,
            device: device.clone(),
            stop: stop.clone(),
        };
        log::info!("listening on {source}");
        let name = format!("{}-port", device.name());
        let thread = spawn(name, move || {
            port.serve(listener);
            device.stopped();
        })?;
        Ok(PortServer {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops as [`Daemon::run`] does on SIGTERM: the front-end's connection is shut down, the
    /// worker threads joined, the device drained and [`Device::stopped`] called, the socket
    /// file removed. Returns when all of that is done.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.trigger();
            if thread.join().is_err() {
                log::error!("a socket thread panicked");
            }
        }
    }
}

impl Drop for PortServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Reads signals until SIGINT or SIGTERM, calling the device's hooks for the others.
fn handle_signals<D: Device>(signals: &Signals, device: &D) -> Result<(), DaemonError> {
    loop {
        match signals.next().map_err(DaemonError::Signals)? {
            Request::Stop => return Ok(()),
            Request::Reconfigure => {
                log::info!("SIGHUP: reconfiguring");
                device.reconfigure();
            }
            Request::Stats => log::info!("stats: {}", device.stats()),
        }
    }
}

/// Starts a named thread.
///
/// # Errors
/// [`DaemonError::Resource`] when the thread cannot be created.
pub fn spawn(
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, DaemonError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|source| DaemonError::Resource {
            what: "a thread",
            source,
        })
}

/// Numbers the private folders of the relays' handler sockets.
static RELAY_DIRS: AtomicU32 = AtomicU32::new(0);

/// Serves one socket: one front-end connection after another.
struct Port<D: Device> {
    port: usize,
    device: Arc<D>,
    stop: Arc<Stop>,
}

type LibDaemon<B> = VhostUserDaemon<Arc<Backend<B>>>;

/// One front-end connection's back-end: the device's fresh [`DeviceBackend`] in its
/// [`Backend`] wrapper, with vhost-user-backend's daemon for it (its worker threads running,
/// the device's extra descriptors in their epolls). [`Port`] serves every connection through
/// one; the fuzz target of the vhost-user message stream drives one message at a time
/// through [`Session::request_handler`].
pub struct Session<B: DeviceBackend> {
    backend: Arc<Backend<B>>,
    daemon: LibDaemon<B>,
}

impl<B: DeviceBackend> Session<B> {
    /// A fresh back-end of `device` for a front-end on socket `port`, with empty guest memory.
    ///
    /// # Errors
    /// The device cannot make a back-end ([`Device::connect`]), vhost-user-backend cannot
    /// start its worker threads, or a worker's epoll refuses an extra descriptor; nothing is
    /// left running then.
    pub fn open<D: Device<Backend = B>>(device: &D, port: usize) -> Result<Self, BoxError> {
        let mem = new_guest_ram();
        let backend = Arc::new(Backend::new(device.connect(port, mem.clone())?));
        let daemon =
            VhostUserDaemon::new(format!("{}-{port}", device.name()), backend.clone(), mem)
                .map_err(|e| format!("cannot create the vhost-user daemon: {e}"))?;
        let session = Session { backend, daemon };
        if let Err(e) = session.register_extra_events() {
            session.close();
            return Err(e);
        }
        Ok(session)
    }

    /// The device back-end.
    pub fn device(&self) -> &B {
        self.backend.device()
    }

    /// The vhost crate's request handler for a front-end connected on `stream`, for a caller
    /// that handles the messages on its own thread (`handle_request`, one message per call;
    /// an error ends the connection, as it does for the daemon). Drop it before
    /// [`Session::close`].
    pub fn request_handler(
        &self,
        stream: UnixStream,
    ) -> vhost_user_backend::DaemonReqHandler<Arc<Backend<B>>> {
        self.daemon.request_handler(stream)
    }

    /// Adds the device's extra descriptors to its worker threads' epolls.
    fn register_extra_events(&self) -> Result<(), BoxError> {
        let handlers = self.daemon.get_epoll_handlers();
        for extra in self.device().extra_events() {
            let handler = handlers
                .get(extra.thread)
                .ok_or_else(|| format!("no worker thread {}", extra.thread))?;
            handler
                .register_listener(extra.fd, extra.events, u64::from(extra.device_event))
                .map_err(|e| {
                    format!("cannot watch a descriptor of worker {}: {e}", extra.thread)
                })?;
        }
        Ok(())
    }

    /// Ends the connection: stops the worker threads (dropping the library's daemon joins
    /// them), then lets the device finish its in-flight work ([`DeviceBackend::disconnected`]).
    pub fn close(self) {
        for handler in self.daemon.get_epoll_handlers() {
            handler.send_exit_event();
        }
        drop(self.daemon);
        self.backend.device().disconnected();
    }
}

impl<D: Device> Port<D> {
    fn serve(&self, mut listener: Listener) {
        // SAFETY: the listener outlives every use of the borrowed descriptor below.
        let fd = unsafe { BorrowedFd::borrow_raw(listener.as_raw_fd()) };
        while self.stop.wait_readable(fd) {
            if let Err(e) = self.connection(&mut listener) {
                log::error!("socket {}: {}", self.port, error_chain(&*e));
            }
        }
    }

    /// Accepts one front-end and serves it until it leaves or the daemon stops.
    fn connection(&self, listener: &mut Listener) -> Result<(), BoxError> {
        let id = self.port;
        let mut session = Session::open(&*self.device, id)?;
        let started = self.start(&mut session, listener);
        let relay_threads = match started {
            Ok(Some(threads)) => threads,
            Ok(None) => {
                session.close();
                return Ok(());
            }
            Err(e) => {
                session.close();
                return Err(e);
            }
        };
        log::info!("socket {id}: front-end connected");
        let daemon = &mut session.daemon;
        self.stop.set_session(id, daemon.shutdown_handle());
        if self.stop.stopping() {
            daemon.request_shutdown();
        }
        let ended = daemon.wait();
        self.stop.set_session(id, None);
        for t in relay_threads {
            let _ = t.join();
        }
        match ended {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => log::info!("socket {id}: front-end disconnected"),
            Err(e) => log::warn!("socket {id}: front-end connection ended: {e}"),
        }
        session.close();
        Ok(())
    }

    /// Accepts the front-end on `listener` and starts `session`'s request thread, through the
    /// early-enable relay if the device needs it: returns the relay's threads (none without
    /// it), or `None` when there was no front-end after all.
    fn start(
        &self,
        session: &mut Session<D::Backend>,
        listener: &mut Listener,
    ) -> Result<Option<Vec<JoinHandle<()>>>, BoxError> {
        if !self.device.early_enable_relay() {
            session
                .daemon
                .start(listener)
                .map_err(|e| format!("cannot accept the front-end: {e}"))?;
            return Ok(Some(Vec::new()));
        }
        let front = match listener.accept() {
            Ok(Some(stream)) => stream,
            Ok(None) => return Ok(None),
            Err(e) => return Err(format!("cannot accept the front-end: {e}").into()),
        };
        let rings = session.device().num_queues();
        let relay = attach_through_relay(&mut session.daemon, front, self.port, rings)?;
        Ok(Some(relay.into()))
    }
}

/// Connects `daemon` to the front-end's stream `front` through a [`relay`]: the daemon accepts
/// on a listener in a fresh private (0700) folder, the relay connects to it.
fn attach_through_relay<B: DeviceBackend>(
    daemon: &mut LibDaemon<B>,
    front: UnixStream,
    port: usize,
    rings: usize,
) -> Result<[JoinHandle<()>; 2], BoxError> {
    let n = RELAY_DIRS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pvio-vhost-{}-{port}-{n}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let result = (|| -> Result<_, BoxError> {
        let mut inner_listener = Listener::new(dir.join("handler.sock"), true)?;
        let inner = UnixStream::connect(dir.join("handler.sock"))?;
        daemon
            .start(&mut inner_listener)
            .map_err(|e| format!("cannot start the vhost-user daemon: {e}"))?;
        Ok(relay::spawn(front, inner, rings)?)
    })();
    // The listener removed its socket when dropped inside the closure.
    let _ = std::fs::remove_dir_all(&dir);
    result
}
