//! The daemon: backend-net's [`Device`] for vhost-daemon's serve loop. Its ports (one per
//! socket, each serving one front-end connection at a time with a fresh back-end), the counters
//! on SIGUSR1 and on the stats socket; listener, signals and the clean stop on SIGINT / SIGTERM
//! are vhost-daemon's. QEMU's virtio-net needs vhost-daemon's early SET_VRING_ENABLE relay.

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vhost::vhost_user::Listener;
use vhost_daemon::backend::Device;
use vhost_daemon::daemon::{spawn, Daemon, DaemonError, Stop};
use vhost_daemon::listener::{self, ListenError, SocketSource};
use vhost_daemon::memory::GuestRamAtomic;
use vhost_daemon::signals::Signals;
use vhost_daemon::BoxError;

use crate::backend::{Dataplane, NetBackend};
use crate::cli::{Config, Mode};
use crate::port::Port;
use crate::switch::Switch;
use crate::tap::{self, TapError};

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Blocking signals or creating the signalfd failed.
    #[error("cannot set up signal handling")]
    Signals(#[source] nix::Error),
    /// The TAP device could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The stats socket could not be created.
    #[error("stats socket")]
    StatsSocket(#[source] ListenError),
    /// A vhost-user socket, a thread or the signals failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// The ports and what they are bridged to.
pub(crate) struct NetDevice {
    ports: Vec<Arc<Port>>,
    sockets: Vec<SocketSource>,
    dataplane: Dataplane,
    queue_size: u16,
    rx_backlog: usize,
}

impl NetDevice {
    /// The ports of `config` (one per socket) and its data plane: the TAP device's queues,
    /// or a switch between the ports.
    ///
    /// # Errors
    /// [`TapError`] when the TAP device cannot be opened.
    pub(crate) fn new(config: &Config) -> Result<NetDevice, TapError> {
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
        Ok(NetDevice {
            ports,
            sockets: config.sockets.clone(),
            dataplane,
            queue_size: config.queue_size,
            rx_backlog: config.rx_backlog,
        })
    }
}

impl Device for NetDevice {
    type Backend = NetBackend;

    fn name(&self) -> &str {
        "backend-net"
    }

    fn connect(&self, port: usize, mem: GuestRamAtomic) -> Result<NetBackend, BoxError> {
        let port = self
            .ports
            .get(port)
            .ok_or_else(|| format!("no port {port}"))?;
        port.stats.connections.fetch_add(1, Ordering::Relaxed);
        Ok(NetBackend::new(
            port.clone(),
            self.dataplane.clone(),
            mem,
            self.queue_size,
            self.rx_backlog,
        )?)
    }

    fn stats(&self) -> String {
        stats_json(&self.ports, &self.sockets)
    }

    fn early_enable_relay(&self) -> bool {
        true
    }
}

/// Runs the daemon described by `config` until SIGINT or SIGTERM.
///
/// # Errors
/// [`Error`] when something needed at start-up is missing (TAP, sockets, signal handling).
pub fn run(config: Config) -> Result<(), Error> {
    let signals = Signals::block().map_err(Error::Signals)?;
    let stats_listener = match &config.stats_socket {
        Some(path) => {
            Some(listener::listen(&SocketSource::Path(path.clone())).map_err(Error::StatsSocket)?)
        }
        None => None,
    };
    let device = Arc::new(NetDevice::new(&config)?);
    let ports = device.ports.clone();
    for (port, socket) in ports.iter().zip(&config.sockets) {
        log::info!("port {}: socket {socket} (MAC {})", port.id, port.mac);
    }
    let daemon = Daemon::new(device, signals, &config.sockets)?;
    let stats_thread = match stats_listener {
        Some(listener) => {
            let (stop, sockets) = (daemon.stop_handle(), config.sockets.clone());
            Some(spawn("stats".into(), move || {
                serve_stats(&listener, &ports, &sockets, &stop)
            })?)
        }
        None => None,
    };
    let result = daemon.run();
    if let Some(t) = stats_thread {
        if t.join().is_err() {
            log::error!("the stats thread panicked");
        }
    }
    Ok(result?)
}

/// All ports' counters: `{"ports": [{"port": i, "socket": path, ...PortStats}]}`.
pub fn stats_json(ports: &[Arc<Port>], sockets: &[SocketSource]) -> String {
    let list: Vec<serde_json::Value> = ports
        .iter()
        .zip(sockets)
        .map(|(p, s)| {
            let mut v = p.stats.to_json();
            v["port"] = p.id.into();
            v["socket"] = s.to_string().into();
            v["mac"] = p.mac.to_string().into();
            v
        })
        .collect();
    serde_json::json!({ "ports": list }).to_string()
}

/// Answers every connection to the stats socket with the counters as one line of JSON; the
/// socket file goes with the listener.
fn serve_stats(listener: &Listener, ports: &[Arc<Port>], sockets: &[SocketSource], stop: &Stop) {
    // SAFETY: the listener outlives every use of the borrowed descriptor below.
    let fd = unsafe { BorrowedFd::borrow_raw(listener.as_raw_fd()) };
    while stop.wait_readable(fd) {
        match listener.accept() {
            Ok(None) => {}
            Ok(Some(mut stream)) => {
                let line = stats_json(ports, sockets) + "\n";
                if let Err(e) = stream.write_all(line.as_bytes()) {
                    log::debug!("stats socket: {e}");
                }
            }
            Err(e) => log::warn!("stats socket: {e}"),
        }
    }
}
