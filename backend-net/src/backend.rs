//! The vhost-user side of one connection: the [`DeviceBackend`] that vhost-daemon's back-end
//! wrapper forwards to (control path on the daemon thread, the queue pairs on worker threads),
//! and the control queue.
//!
//! Queues: receiveq N is vring 2N, transmitq N is vring 2N+1, and the controlq follows the
//! last pair the negotiated features allow (virtio 1.2 §5.1.2): vring 2P for P pairs with
//! VIRTIO_NET_F_MQ, vring 2 without it. [`Layout`] spreads the pairs over the port's worker
//! threads (one per pair up to the CPUs by default, `--worker-threads` fewer) and turns a
//! thread's device event back into a vring or a TAP queue; vring 2P goes with thread 0. Without
//! MQ, vring 2 (pair 1's receive vring when more pairs are offered) is the controlq, served by
//! whichever thread has it.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_daemon::backend::{DeviceBackend, ExtraEvent};
use vhost_daemon::uring::UringError;
use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;

use crate::ctrl::{self, Command, ACK_ERR, ACK_OK, MAX_COMMAND_BYTES};
use crate::device::{self, Acked};
use crate::guest::{walk, Cursor, GuestRam, GuestRamAtomic, Vring};
use crate::port::{notify, Port};
use crate::switch::Switch;
use crate::tap::TapQueue;
use crate::threads::Layout;
use crate::worker::{Path, TapPath, Worker};

/// What the pairs of a connection are bridged to.
#[derive(Clone, Debug)]
pub enum Dataplane {
    /// One TAP queue per pair.
    Tap(Vec<Arc<TapQueue>>),
    /// The switch.
    Switch(Arc<Switch>),
}

/// The back-end of one front-end connection on one port.
#[derive(Debug)]
pub struct NetBackend {
    port: Arc<Port>,
    dataplane: Dataplane,
    queue_size: u16,
    config: Vec<u8>,
    mem: GuestRamAtomic,
    workers: Vec<Mutex<Worker>>,
    layout: Layout,
    /// Held while control chains are taken and answered (stop waits for it).
    ctrl_busy: Mutex<()>,
    event_idx: AtomicBool,
}

impl NetBackend {
    /// A back-end for `port` bridged to `dataplane`, with guest memory `mem` (the atomic the
    /// daemon updates on VHOST_USER_SET_MEM_TABLE), queues of up to `queue_size` descriptors and
    /// `rx_backlog` frames waiting per receive queue.
    ///
    /// # Errors
    /// [`UringError`] when a TAP pair's io_uring cannot be created.
    pub fn new(
        port: Arc<Port>,
        dataplane: Dataplane,
        mem: GuestRamAtomic,
        queue_size: u16,
        rx_backlog: usize,
    ) -> Result<NetBackend, UringError> {
        let workers = (0..usize::from(port.queue_pairs))
            .map(|q| {
                let path = match &dataplane {
                    Dataplane::Tap(taps) => {
                        Path::Tap(Box::new(TapPath::new(taps[q].clone(), rx_backlog)?))
                    }
                    Dataplane::Switch(sw) => Path::Switch(sw.clone()),
                };
                Ok(Mutex::new(Worker::new(q, port.clone(), mem.clone(), path)))
            })
            .collect::<Result<_, UringError>>()?;
        Ok(NetBackend {
            config: device::config_space(port.mac, port.queue_pairs, port.mtu),
            layout: Layout::new(port.queue_pairs, port.worker_threads),
            port,
            dataplane,
            queue_size,
            mem,
            workers,
            ctrl_busy: Mutex::new(()),
            event_idx: AtomicBool::new(false),
        })
    }

    /// The front-end left: the port forgets it (filter, features, backlogs, learned stations),
    /// and the TAP queues are detached.
    pub fn disconnect(&self) {
        for q in 0..self.workers.len() {
            self.worker(q).detach_tap();
        }
        self.port.reset();
        if let Dataplane::Switch(sw) = &self.dataplane {
            sw.port_gone(self.port.id);
        }
    }

    fn worker(&self, q: usize) -> MutexGuard<'_, Worker> {
        lock(&self.workers[q])
    }

    /// The vring index of the control queue under the acked features.
    fn ctrl_index(&self) -> usize {
        self.port.acked().ctrl_queue(self.port.queue_pairs)
    }

    /// Serves the control queue until it is empty.
    fn process_ctrl(&self, vring: &Vring) {
        let _busy = self.ctrl_busy.lock().unwrap_or_else(|p| p.into_inner());
        let guard = self.mem.memory();
        let mem: &GuestRam = &guard;
        let mut kick = vhost_daemon::ring::Kick::default();
        'kicked: loop {
            if let Err(e) = vring.disable_notification() {
                log::warn!("control queue: {e}");
            }
            let mut took = false;
            while kick.step() {
                let chain = {
                    let mut state = vring.get_mut();
                    let queue = state.get_queue_mut();
                    if !queue.ready() {
                        // Stopped by VHOST_USER_GET_VRING_BASE: leave the rest.
                        break 'kicked;
                    }
                    queue.pop_descriptor_chain(mem)
                };
                let Some(chain) = chain else { break };
                took = true;
                let head = chain.head_index();
                let used = self.ctrl_chain(chain, mem);
                if let Err(e) = vring.add_used(head, used) {
                    log::warn!("control queue: add_used({head}): {e}");
                }
            }
            if !kick.go_round_again(vring, mem, took, "control queue") {
                break;
            }
        }
        notify(vring);
    }

    /// Executes one control chain; returns the bytes written (the ack, or 0 for a chain with
    /// no room for it).
    fn ctrl_chain(&self, chain: virtio_queue::DescriptorChain<&GuestRam>, mem: &GuestRam) -> u32 {
        let mut arena = Vec::new();
        let c = match walk(chain.head_index(), chain, mem, &mut arena) {
            Ok(c) if c.writable_len > 0 => c,
            Ok(_) | Err(_) => {
                log::warn!("control chain without room for the ack, or broken");
                self.port.stats.ctrl_err.fetch_add(1, Ordering::Relaxed);
                return 0;
            }
        };
        let ack = if c.readable_len > MAX_COMMAND_BYTES {
            ACK_ERR
        } else {
            let mut cmd = vec![0u8; c.readable_len];
            Cursor::new(&arena[c.readable.clone()]).read(&mut cmd);
            self.execute(&cmd)
        };
        let counter = if ack == ACK_OK {
            &self.port.stats.ctrl_ok
        } else {
            &self.port.stats.ctrl_err
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Cursor::new(&arena[c.writable]).write(&[ack]);
        1
    }

    fn execute(&self, cmd: &[u8]) -> u8 {
        match ctrl::parse(cmd, self.port.acked(), self.port.queue_pairs) {
            Ok(Command::QueuePairs(n)) => {
                self.port.update(|s| s.active_pairs = n);
                for q in 0..self.workers.len() {
                    self.worker(q).set_tap_attached(q < usize::from(n));
                }
                ACK_OK
            }
            Ok(command) => {
                self.port.update(|s| s.filter.apply(&command));
                ACK_OK
            }
            Err(e) => {
                log::debug!("port {}: {e}", self.port.id);
                ACK_ERR
            }
        }
    }
}

impl DeviceBackend for NetBackend {
    fn num_queues(&self) -> usize {
        2 * usize::from(self.port.queue_pairs) + 1
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.queue_size)
    }

    fn features(&self) -> u64 {
        device::features(self.port.queue_pairs)
    }

    fn acked_features(&self, features: u64) {
        log::debug!("port {}: driver acked features {features:#x}", self.port.id);
        let acked = Acked(features);
        self.port.update(|s| {
            s.acked = acked;
            s.connected = true;
            s.active_pairs = acked.usable_pairs(self.port.queue_pairs);
        });
        if let Dataplane::Tap(taps) = &self.dataplane {
            for tap in taps {
                let r = tap
                    .set_vnet_hdr_len(acked.hdr_len())
                    .and_then(|()| tap.set_offloads(acked.tun_offloads()));
                if let Err(e) = r {
                    log::error!("{}", crate::error_chain(&e));
                }
            }
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        device::protocol_features()
    }

    fn reset_device(&self) {
        self.disconnect();
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn config_space(&self) -> Vec<u8> {
        self.config.clone()
    }

    fn set_config(&self, _offset: u32, _buf: &[u8]) -> io::Result<()> {
        // virtio 1.2 §5.1.4: the driver does not write the network device's configuration.
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        self.layout.masks().to_vec()
    }

    /// VHOST_USER_GET_VRING_BASE: the daemon marked the ring not ready, so no chain is taken
    /// from it any more. Before the next available index goes back to the front-end, every
    /// chain already taken must be in the used ring: taking the worker's lock waits for the
    /// batch it is forwarding (transmit) or reading from the TAP (receive), and detaching the
    /// receive queue waits for another port's delivery into it.
    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        if queue_index as usize == self.ctrl_index() {
            drop(self.ctrl_busy.lock().unwrap_or_else(|p| p.into_inner()));
            return Ok(());
        }
        let q = queue_index as usize / 2;
        let Some(worker) = self.workers.get(q) else {
            return Ok(());
        };
        let mut worker = lock(worker);
        if queue_index % 2 == 0 {
            worker.detach_tap();
            if let Some(rxq) = self.port.rx_queue(q) {
                rxq.detach();
            }
        }
        Ok(())
    }

    /// In TAP mode, pair `q`'s TAP queue joins the epoll of the worker thread that serves pair
    /// `q` (edge-triggered), as device event [`Layout::tap_event`].
    fn extra_events(&self) -> Vec<ExtraEvent> {
        let Dataplane::Tap(taps) = &self.dataplane else {
            return Vec::new();
        };
        taps.iter()
            .enumerate()
            .map(|(q, tap)| ExtraEvent {
                thread: self.layout.thread_of(q),
                fd: tap.fd(),
                events: EventSet::IN | EventSet::EDGE_TRIGGERED,
                device_event: self.layout.tap_event(q),
            })
            .collect()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) {
        log::trace!(
            "port {}: worker {thread_id} event {device_event}",
            self.port.id
        );
        if let Some(pair) = self.layout.tap_pair(device_event) {
            let rx = self
                .layout
                .slot_of(thread_id, 2 * pair)
                .and_then(|at| vrings.get(at));
            if let (Some(worker), Some(rx)) = (self.workers.get(pair), rx) {
                lock(worker).tap_readable(rx);
            }
            return;
        }
        let (Some(index), Some(vring)) = (
            self.layout.vring_of(thread_id, device_event),
            vrings.get(usize::from(device_event)),
        ) else {
            log::debug!("unexpected device event {device_event} on worker {thread_id}");
            return;
        };
        if index == self.ctrl_index() {
            self.process_ctrl(vring);
            return;
        }
        // Vring 2P while the control queue is vring 2 (no MQ) is not a queue of the device.
        let Some(worker) = self.workers.get(index / 2) else {
            return;
        };
        if index % 2 == 0 {
            lock(worker).rx_kick(vring);
        } else {
            let mut worker = lock(worker);
            worker.tx_kick(vring);
            let rx = self.layout.slot_of(thread_id, index - 1);
            if let Some(rx) = rx.and_then(|at| vrings.get(at)) {
                worker.tx_kicked_rx(rx);
            }
        }
    }

    fn disconnected(&self) {
        self.disconnect();
    }
}

/// A pair's worker, also after a worker thread panicked while holding it.
fn lock(worker: &Mutex<Worker>) -> MutexGuard<'_, Worker> {
    worker.lock().unwrap_or_else(|p| p.into_inner())
}
