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
use crate::switch::{Switch, SwitchError, SwitchPort};
use crate::tap::{self, TapError};

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Blocking signals or creating the signalfd failed.
    #[error("cannot set up signal handling")]
    Signals(#[source] nix::Error),
    /// The TAP device could not be opened, or a port could not join the switch.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The stats socket could not be created.
    #[error("stats socket")]
    StatsSocket(#[source] ListenError),
    /// A vhost-user socket, a thread or the signals failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// Why the device cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The TAP device could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// A port could not join the switch.
    #[error(transparent)]
    Switch(#[from] SwitchError),
}

/// The ports and what they are bridged to: vhost-daemon's [`Device`], a fresh [`NetBackend`]
/// per front-end connection on a port.
pub struct NetDevice {
    ports: Vec<Arc<Port>>,
    /// Switch mode: the ports' places on the switch (dropping the device removes them).
    _members: Vec<SwitchPort>,
    sockets: Vec<SocketSource>,
    dataplane: Dataplane,
    queue_size: u16,
    rx_backlog: usize,
}

impl NetDevice {
    /// The ports of `config` (one per socket) and its data plane: the TAP device's queues,
    /// or a new switch between the ports.
    ///
    /// # Errors
    /// [`BuildError`] when the TAP device cannot be opened or two ports pin one MAC.
    pub fn new(config: &Config) -> Result<NetDevice, BuildError> {
        let port = |i: usize, id| {
            Port::new(
                id,
                config.mac.offset(i as u32),
                config.mtu,
                config.queue_pairs,
                config.rx_backlog,
            )
            .with_pinned(config.pinned.get(i).cloned().unwrap_or_default())
            .with_poll(config.poll)
            .with_worker_threads(config.worker_threads)
        };
        let (ports, members, dataplane) = match &config.mode {
            Mode::Tap(name) => {
                let taps = tap::open(name, config.queue_pairs)?;
                let ports = (0..config.sockets.len())
                    .map(|i| Arc::new(port(i, i)))
                    .collect();
                let taps = taps.into_iter().map(Arc::new).collect();
                (ports, Vec::new(), Dataplane::Tap(taps))
            }
            Mode::Switch => {
                let switch = Arc::new(Switch::new(config.switch));
                let members = (0..config.sockets.len())
                    .map(|i| switch.add_port(|id| port(i, id)))
                    .collect::<Result<Vec<_>, _>>()?;
                let ports = members.iter().map(|m| m.port().clone()).collect();
                (ports, members, Dataplane::Switch(switch))
            }
        };
        Ok(NetDevice {
            ports,
            _members: members,
            sockets: config.sockets.clone(),
            dataplane,
            queue_size: config.queue_size,
            rx_backlog: config.rx_backlog,
        })
    }

    /// One port of a switch shared with other devices, served on `socket` (store mode).
    pub(crate) fn switch_port(
        member: SwitchPort,
        socket: SocketSource,
        queue_size: u16,
        rx_backlog: usize,
    ) -> NetDevice {
        NetDevice {
            ports: vec![member.port().clone()],
            dataplane: Dataplane::Switch(member.switch().clone()),
            _members: vec![member],
            sockets: vec![socket],
            queue_size,
            rx_backlog,
        }
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
            let mut v = port_json(p);
            v["socket"] = s.to_string().into();
            v
        })
        .collect();
    serde_json::json!({ "ports": list }).to_string()
}

/// A port's counters with its id, MAC and the receive queues frames can go to now
/// ([`Port::rx_queues_ready`]): `{"port": id, "mac": MAC, "rx_queues_ready": n, ...PortStats}`.
pub fn port_json(port: &Port) -> serde_json::Value {
    let mut v = port.stats.to_json();
    v["port"] = port.id.into();
    v["mac"] = port.mac.to_string().into();
    v["rx_queues_ready"] = port.rx_queues_ready().into();
    v
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
