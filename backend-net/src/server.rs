//! The daemon's life cycle: ports and their sockets, one front-end connection at a time per
//! port with a fresh vhost-user daemon for each (so a front-end that goes away can come back),
//! the counters on SIGUSR1 and on the stats socket, and a clean stop on SIGINT / SIGTERM.
//!
//! Signals are blocked in every thread and read from a signalfd by the main thread, so no
//! handler runs at an arbitrary point. To stop, an eventfd wakes the port threads waiting for a
//! connection and each connected front-end's socket is shut down; the port threads then tear
//! their daemon down (joining its worker threads) and the listeners remove their socket files.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backend::{Dataplane, NetBackend};
use crate::cli::{Config, Mode};
use crate::port::Port;
use crate::relay;
use crate::switch::Switch;
use crate::tap::{self, TapError};
use crate::uring::UringError;

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Blocking signals or creating the signalfd failed.
    #[error("cannot set up signal handling")]
    Signals(#[source] nix::Error),
    /// The TAP device could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// A vhost-user socket could not be created.
    #[error("cannot listen on {path}")]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: vhost::vhost_user::Error,
    },
    /// The stats socket could not be created.
    #[error("cannot listen on stats socket {path}")]
    StatsSocket {
        /// Socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An eventfd or thread could not be created.
    #[error("cannot create {what}")]
    Resource {
        /// What: "an eventfd", "a thread".
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An io_uring could not be created.
    #[error(transparent)]
    Uring(#[from] UringError),
}

/// Numbers the private folders of the handler sockets.
static RELAY_DIRS: AtomicU32 = AtomicU32::new(0);

/// What every thread needs to know to stop.
struct Stop {
    requested: AtomicBool,
    wake: EventFd,
    sessions: Mutex<Vec<Option<ShutdownHandle>>>,
}

impl Stop {
    fn stopping(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    fn trigger(&self) {
        self.requested.store(true, Ordering::Release);
        if let Err(e) = self.wake.write(1) {
            log::error!("cannot wake the port threads: {e}");
        }
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.iter().flatten().for_each(ShutdownHandle::shutdown);
    }

    fn set_session(&self, port: usize, handle: Option<ShutdownHandle>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = sessions.get_mut(port) {
            *slot = handle;
        }
    }

    /// Waits until `fd` is readable (true) or a stop is requested (false).
    fn wait_readable(&self, fd: BorrowedFd<'_>) -> bool {
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

/// Runs the daemon described by `config` until SIGINT or SIGTERM.
///
/// # Errors
/// [`Error`] when something needed at start-up is missing (TAP, sockets, signal handling).
pub fn run(config: Config) -> Result<(), Error> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGUSR1] {
        signals.add(s);
    }
    signals.thread_block().map_err(Error::Signals)?;
    let signal_fd = SignalFd::new(&signals).map_err(Error::Signals)?;

    let ports: Vec<Arc<Port>> = (0..config.sockets.len())
        .map(|i| {
            Arc::new(
                Port::new(
                    i,
                    config.mac.offset(i as u32),
                    config.mtu,
                    config.queue_pairs,
                    config.rx_backlog,
                )
                .with_pinned(config.pinned.get(i).cloned().unwrap_or_default()),
            )
        })
        .collect();
    let dataplane = match &config.mode {
        Mode::Tap(name) => Dataplane::Tap(
            tap::open(name, config.queue_pairs)?
                .into_iter()
                .map(Arc::new)
                .collect(),
        ),
        Mode::Switch => Dataplane::Switch(Arc::new(Switch::new(ports.clone(), config.switch))),
    };
    let listeners = config
        .sockets
        .iter()
        .map(|path| {
            Listener::new(path, true).map_err(|source| Error::Listen {
                path: path.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let stop = Arc::new(Stop {
        requested: AtomicBool::new(false),
        wake: EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Resource {
            what: "an eventfd",
            source,
        })?,
        sessions: Mutex::new(vec![None; ports.len()]),
    });
    let stats_listener = match &config.stats_socket {
        Some(path) => Some(bind_stats(path)?),
        None => None,
    };

    let mut threads = Vec::new();
    for ((port, listener), path) in ports.iter().zip(listeners).zip(&config.sockets) {
        let session = Session {
            port: port.clone(),
            dataplane: dataplane.clone(),
            queue_size: config.queue_size,
            rx_backlog: config.rx_backlog,
            stop: stop.clone(),
        };
        log::info!(
            "port {}: listening on {} (MAC {})",
            port.id,
            path.display(),
            port.mac
        );
        threads.push(spawn(format!("port-{}", port.id), move || {
            session.serve(listener)
        })?);
    }
    if let Some((listener, path)) = stats_listener {
        let (ports, stop, sockets) = (ports.clone(), stop.clone(), config.sockets.clone());
        threads.push(spawn("stats".into(), move || {
            serve_stats(&listener, &path, &ports, &sockets, &stop)
        })?);
    }
    wait_for_stop(&signal_fd, &ports, &config.sockets);
    log::info!("stopping");
    stop.trigger();
    for t in threads {
        if t.join().is_err() {
            log::error!("a port thread panicked");
        }
    }
    Ok(())
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|source| Error::Resource {
            what: "a thread",
            source,
        })
}

/// Reads signals until SIGINT or SIGTERM; prints the counters on SIGUSR1.
fn wait_for_stop(signal_fd: &SignalFd, ports: &[Arc<Port>], sockets: &[PathBuf]) {
    loop {
        match signal_fd.read_signal() {
            Ok(Some(info)) if info.ssi_signo == Signal::SIGUSR1 as u32 => {
                eprintln!("{}", stats_json(ports, sockets));
            }
            Ok(Some(_)) => return,
            Ok(None) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log::error!("reading signals: {e}");
                return;
            }
        }
    }
}

/// All ports' counters: `{"ports": [{"port": i, "socket": path, ...PortStats}]}`.
pub fn stats_json(ports: &[Arc<Port>], sockets: &[PathBuf]) -> String {
    let list: Vec<serde_json::Value> = ports
        .iter()
        .zip(sockets)
        .map(|(p, s)| {
            let mut v = p.stats.to_json();
            v["port"] = p.id.into();
            v["socket"] = s.display().to_string().into();
            v["mac"] = p.mac.to_string().into();
            v
        })
        .collect();
    serde_json::json!({ "ports": list }).to_string()
}

fn bind_stats(path: &Path) -> Result<(UnixListener, PathBuf), Error> {
    let err = |source| Error::StatsSocket {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    Ok((UnixListener::bind(path).map_err(err)?, path.to_path_buf()))
}

/// Answers every connection to the stats socket with the counters as one line of JSON.
fn serve_stats(
    listener: &UnixListener,
    path: &Path,
    ports: &[Arc<Port>],
    sockets: &[PathBuf],
    stop: &Stop,
) {
    while stop.wait_readable(listener.as_fd()) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let line = stats_json(ports, sockets) + "\n";
                if let Err(e) = stream.write_all(line.as_bytes()) {
                    log::debug!("stats socket: {e}");
                }
            }
            Err(e) => log::warn!("stats socket: {e}"),
        }
    }
    let _ = std::fs::remove_file(path);
}

/// Serves one port: one front-end connection after another.
struct Session {
    port: Arc<Port>,
    dataplane: Dataplane,
    queue_size: u16,
    rx_backlog: usize,
    stop: Arc<Stop>,
}

impl Session {
    fn serve(&self, mut listener: Listener) {
        // SAFETY: the listener outlives every use of the borrowed descriptor below.
        let fd = unsafe { BorrowedFd::borrow_raw(listener.as_raw_fd()) };
        while self.stop.wait_readable(fd) {
            if let Err(e) = self.connection(&mut listener) {
                log::error!("port {}: {}", self.port.id, crate::error_chain(&*e));
            }
        }
    }

    /// Connects `daemon` to the front-end's stream `front` through a [`relay`]: the daemon
    /// accepts on a listener in a fresh private (0700) folder, the relay connects to it.
    fn attach_through_relay(
        &self,
        daemon: &mut VhostUserDaemon<Arc<NetBackend>>,
        front: UnixStream,
    ) -> Result<[JoinHandle<()>; 2], Box<dyn std::error::Error>> {
        let n = RELAY_DIRS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "pvio-net-{}-{}-{n}",
            std::process::id(),
            self.port.id
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let result = (|| -> Result<_, Box<dyn std::error::Error>> {
            let mut inner_listener = Listener::new(dir.join("handler.sock"), true)?;
            let inner = UnixStream::connect(dir.join("handler.sock"))?;
            daemon
                .start(&mut inner_listener)
                .map_err(|e| format!("cannot start the vhost-user daemon: {e}"))?;
            Ok(relay::spawn(front, inner)?)
        })();
        // The listener removed its socket when dropped inside the closure.
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    /// Accepts one front-end and serves it until it leaves.
    fn connection(&self, listener: &mut Listener) -> Result<(), Box<dyn std::error::Error>> {
        let id = self.port.id;
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let backend = Arc::new(NetBackend::new(
            self.port.clone(),
            self.dataplane.clone(),
            mem.clone(),
            self.queue_size,
            self.rx_backlog,
        )?);
        let mut daemon = VhostUserDaemon::new(format!("backend-net-{id}"), backend.clone(), mem)
            .map_err(|e| format!("cannot create the vhost-user daemon: {e}"))?;
        let front = match listener.accept() {
            Ok(Some(stream)) => stream,
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("cannot accept the front-end: {e}").into()),
        };
        let relay = self.attach_through_relay(&mut daemon, front)?;
        self.port.stats.connections.fetch_add(1, Ordering::Relaxed);
        log::info!("port {id}: front-end connected");
        if let Dataplane::Tap(taps) = &self.dataplane {
            let events = EventSet::IN | EventSet::EDGE_TRIGGERED;
            for (handler, tap) in daemon.get_epoll_handlers().iter().zip(taps) {
                handler
                    .register_listener(tap.fd(), events, backend.tap_event())
                    .map_err(|e| format!("cannot watch the TAP queue: {e}"))?;
            }
        }
        self.stop.set_session(id, daemon.shutdown_handle());
        if self.stop.stopping() {
            daemon.request_shutdown();
        }
        let result = daemon.wait();
        self.stop.set_session(id, None);
        for t in relay {
            let _ = t.join();
        }
        backend.disconnect();
        match result {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => log::info!("port {id}: front-end disconnected"),
            Err(e) => log::warn!("port {id}: front-end connection ended: {e}"),
        }
        Ok(())
    }
}
