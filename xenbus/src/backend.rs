//! The back end's side of the XenBus handshake as a pure state machine
//! (`xen/include/public/io/xenbus.h`; the order of Linux's xen-blkback / xen-netback):
//!
//! 1. Toolstack wrote the device, back-end `state` Initialising: [`DeviceActions::prepare`]
//!    opens the image or joins the switch and creates the vhost-user socket; the socket and
//!    device facts are published with state InitWait.
//! 2. Front end Initialised (connected to the socket): [`DeviceActions::connect`]; Connected.
//! 3. Toolstack sets `online` = 0 / `state` = Closing, or the front end closes: Closing while
//!    the front end still uses the device or is Closing; once it is Closed (or gone, or never
//!    connected), [`DeviceActions::drain`]; Closed.
//! 4. Closed, still online, front end Initialising again: back to step 1 (reconnect).
//! 5. The toolstack removes the nodes: the manager calls [`DeviceActions::remove`].
//!
//! Bad configuration or a failed action: state Closed with an `error` node saying why.
//! [`BackendMachine::step`] is level-triggered: it looks at a snapshot of both sides
//! ([`DeviceView`]) and says what to write next, so a daemon restarted in the middle finds
//! its way from whatever the store holds.

use std::fmt::Display;

use crate::config::{DeviceConfig, Published};
use crate::layout::node;
use crate::state::XenbusState;

/// What a back end does to the device itself; one value per device.
pub trait DeviceActions {
    /// Why an action failed (written to the `error` node).
    type Error: Display;

    /// Opens what the device needs (image, switch, TAP) and creates the vhost-user socket;
    /// returns what to publish.
    ///
    /// # Errors
    /// The device cannot be served with `config` (e.g. the image does not exist).
    fn prepare(&mut self, config: &DeviceConfig) -> Result<Published, Self::Error>;

    /// The front end is ready: serve it.
    ///
    /// # Errors
    /// Serving could not start.
    fn connect(&mut self) -> Result<(), Self::Error>;

    /// Stops serving once requests in flight have completed.
    fn drain(&mut self);

    /// Drops everything local to the device (serving, the socket). Called when the
    /// toolstack removed the nodes, or when the daemon stops.
    fn remove(&mut self);
}

/// A snapshot of one device in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    /// The back-end `state` node.
    pub backend_state: XenbusState,
    /// The front-end `state` node (Unknown when absent).
    pub frontend_state: XenbusState,
    /// The `online` node (absent counts as online).
    pub online: bool,
    /// The toolstack's description, or why it is unusable.
    pub config: Result<DeviceConfig, String>,
}

/// What to write to the back-end directory, in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The new `state`.
    pub state: XenbusState,
    /// Other nodes to write (name, value), before `state`.
    pub nodes: Vec<(&'static str, String)>,
    /// Nodes to remove (a stale `error` on a fresh start).
    pub remove: Vec<&'static str>,
}

impl Update {
    fn state(state: XenbusState) -> Self {
        Update {
            state,
            nodes: Vec::new(),
            remove: Vec::new(),
        }
    }

    fn failed(why: String) -> Self {
        Update {
            state: XenbusState::Closed,
            nodes: vec![(node::ERROR, why)],
            remove: Vec::new(),
        }
    }
}

/// What this process holds for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing (new device, or a restarted daemon).
    Idle,
    /// Socket created and published; waiting for the front end.
    Ready,
    /// Serving the front end.
    Serving,
    /// Drained after a close.
    Stopped,
    /// Gave up (Closed with `error`) until the toolstack resets `state` to Initialising.
    Failed,
}

/// The back-end state machine of one device.
#[derive(Debug, Clone)]
pub struct BackendMachine {
    phase: Phase,
}

impl Default for BackendMachine {
    fn default() -> Self {
        Self::new()
    }
}

fn front_uses(s: XenbusState) -> bool {
    matches!(s, XenbusState::Initialised | XenbusState::Connected)
}

impl BackendMachine {
    /// A machine holding nothing yet.
    pub fn new() -> Self {
        BackendMachine { phase: Phase::Idle }
    }

    /// What the machine holds.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Looks at `view`, runs the actions it calls for, and returns what to write (None: the
    /// store already says what it should).
    pub fn step<A: DeviceActions>(&mut self, view: &DeviceView, actions: &mut A) -> Option<Update> {
        let wants_close = !view.online || view.backend_state == XenbusState::Closing;
        match self.phase {
            Phase::Failed if view.online && view.backend_state == XenbusState::Initialising => {
                self.prepare(view, actions)
            }
            Phase::Failed => None,
            Phase::Idle | Phase::Stopped if wants_close => (view.backend_state
                != XenbusState::Closed)
                .then(|| Update::state(XenbusState::Closed)),
            Phase::Idle | Phase::Stopped => self.start(view, actions),
            Phase::Ready if wants_close => self.close(view, actions),
            Phase::Ready if front_uses(view.frontend_state) => self.connect(actions),
            Phase::Ready => None,
            Phase::Serving if wants_close || !front_uses(view.frontend_state) => {
                self.close(view, actions)
            }
            Phase::Serving => None,
        }
    }

    /// Idle or Stopped, online: prepare when the store says the device should be served.
    fn start<A: DeviceActions>(&mut self, view: &DeviceView, actions: &mut A) -> Option<Update> {
        let restart = self.phase == Phase::Idle
            && matches!(
                view.backend_state,
                XenbusState::InitWait | XenbusState::Initialised | XenbusState::Connected
            );
        let reconnect = view.backend_state == XenbusState::Closed
            && view.frontend_state == XenbusState::Initialising;
        if view.backend_state == XenbusState::Initialising || restart || reconnect {
            self.prepare(view, actions)
        } else {
            None
        }
    }

    fn prepare<A: DeviceActions>(&mut self, view: &DeviceView, actions: &mut A) -> Option<Update> {
        let config = match &view.config {
            Ok(c) => c,
            Err(why) => return Some(self.fail(why.clone())),
        };
        match actions.prepare(config) {
            Ok(published) => {
                self.phase = Phase::Ready;
                let mut update = match front_uses(view.frontend_state) {
                    // A restarted daemon whose front end is still there serves at once.
                    true => match self.connect(actions) {
                        Some(u) if u.state == XenbusState::Connected => u,
                        other => return other,
                    },
                    false => Update::state(XenbusState::InitWait),
                };
                update.nodes = published.nodes();
                update.remove = vec![node::ERROR];
                Some(update)
            }
            Err(e) => Some(self.fail(e.to_string())),
        }
    }

    fn connect<A: DeviceActions>(&mut self, actions: &mut A) -> Option<Update> {
        match actions.connect() {
            Ok(()) => {
                self.phase = Phase::Serving;
                Some(Update::state(XenbusState::Connected))
            }
            Err(e) => {
                actions.drain();
                Some(self.fail(e.to_string()))
            }
        }
    }

    /// Closing until the front end has let go (Closed, or it never connected); then drain
    /// and Closed. A front end in Closing is still quiescing: its last write, Closed, must
    /// come before the toolstack (waiting for the back end's Closed) removes its directory.
    fn close<A: DeviceActions>(&mut self, view: &DeviceView, actions: &mut A) -> Option<Update> {
        if front_uses(view.frontend_state) || view.frontend_state == XenbusState::Closing {
            return (view.backend_state != XenbusState::Closing)
                .then(|| Update::state(XenbusState::Closing));
        }
        actions.drain();
        self.phase = Phase::Stopped;
        Some(Update::state(XenbusState::Closed))
    }

    fn fail(&mut self, why: String) -> Update {
        self.phase = Phase::Failed;
        Update::failed(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VbdConfig;
    use XenbusState::*;

    /// Records the actions; fails `prepare` or `connect` on request.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<&'static str>,
        fail_prepare: bool,
        fail_connect: bool,
    }

    impl DeviceActions for Recorder {
        type Error = String;
        fn prepare(&mut self, _: &DeviceConfig) -> Result<Published, String> {
            self.calls.push("prepare");
            if self.fail_prepare {
                return Err("cannot open /nope.raw".into());
            }
            Ok(Published {
                socket: "/run/s.sock".into(),
                facts: vec![(node::SECTORS, "8".into())],
            })
        }
        fn connect(&mut self) -> Result<(), String> {
            self.calls.push("connect");
            if self.fail_connect {
                return Err("accept failed".into());
            }
            Ok(())
        }
        fn drain(&mut self) {
            self.calls.push("drain");
        }
        fn remove(&mut self) {
            self.calls.push("remove");
        }
    }

    fn view(backend: XenbusState, frontend: XenbusState, online: bool) -> DeviceView {
        DeviceView {
            backend_state: backend,
            frontend_state: frontend,
            online,
            config: Ok(DeviceConfig::Vbd(VbdConfig {
                image: "/img".into(),
                readonly: false,
                num_queues: 1,
            })),
        }
    }

    /// Steps, and returns the new state (or the old one when nothing is written).
    fn run(m: &mut BackendMachine, a: &mut Recorder, v: &DeviceView) -> XenbusState {
        m.step(v, a).map_or(v.backend_state, |u| u.state)
    }

    #[test]
    fn full_life_initwait_connected_closing_closed() {
        let (mut m, mut a) = (BackendMachine::new(), Recorder::default());
        let u = m
            .step(&view(Initialising, Initialising, true), &mut a)
            .unwrap();
        assert_eq!(u.state, InitWait);
        assert_eq!(u.nodes[0], (node::VHOST_USER_SOCKET, "/run/s.sock".into()));
        assert_eq!(u.remove, vec![node::ERROR]);
        // Nothing to do until the front end is Initialised.
        assert!(m
            .step(&view(InitWait, Initialising, true), &mut a)
            .is_none());
        assert_eq!(
            run(&mut m, &mut a, &view(InitWait, Initialised, true)),
            Connected
        );
        assert!(m.step(&view(Connected, Connected, true), &mut a).is_none());
        // Toolstack detaches: Closing while the front end is connected; no drain yet.
        assert_eq!(
            run(&mut m, &mut a, &view(Connected, Connected, false)),
            Closing
        );
        assert!(m.step(&view(Closing, Connected, false), &mut a).is_none());
        assert!(m.step(&view(Closing, Closing, false), &mut a).is_none());
        assert_eq!(a.calls, ["prepare", "connect"]);
        // The front end lets go: drain, Closed.
        assert_eq!(run(&mut m, &mut a, &view(Closing, Closed, false)), Closed);
        assert_eq!(a.calls, ["prepare", "connect", "drain"]);
        assert!(m.step(&view(Closed, Closed, false), &mut a).is_none());
        assert_eq!(m.phase(), Phase::Stopped);
    }

    #[test]
    fn toolstack_closing_state_without_front_end_closes_at_once() {
        let (mut m, mut a) = (BackendMachine::new(), Recorder::default());
        run(&mut m, &mut a, &view(Initialising, Unknown, true));
        assert_eq!(run(&mut m, &mut a, &view(Closing, Unknown, true)), Closed);
        assert_eq!(a.calls, ["prepare", "drain"]);
    }

    #[test]
    fn bad_params_close_with_an_error_and_stay_closed() {
        let (mut m, mut a) = (BackendMachine::new(), Recorder::default());
        a.fail_prepare = true;
        let u = m
            .step(&view(Initialising, Initialising, true), &mut a)
            .unwrap();
        assert_eq!(u.state, Closed);
        assert_eq!(u.nodes, vec![(node::ERROR, "cannot open /nope.raw".into())]);
        assert!(m.step(&view(Closed, Initialised, true), &mut a).is_none());
        // A malformed config fails without calling the actions.
        let (mut m2, mut a2) = (BackendMachine::new(), Recorder::default());
        let mut v = view(Initialising, Initialising, true);
        v.config = Err("mode: \"x\" is not r or w".into());
        assert_eq!(m2.step(&v, &mut a2).unwrap().state, Closed);
        assert!(a2.calls.is_empty());
        // The toolstack may reset the state to retry.
        a.fail_prepare = false;
        assert_eq!(
            run(&mut m, &mut a, &view(Initialising, Initialising, true)),
            InitWait
        );
    }

    #[test]
    fn a_failed_connect_drains_and_closes_with_an_error() {
        let (mut m, mut a) = (BackendMachine::new(), Recorder::default());
        a.fail_connect = true;
        run(&mut m, &mut a, &view(Initialising, Initialising, true));
        let u = m.step(&view(InitWait, Initialised, true), &mut a).unwrap();
        assert_eq!((u.state, u.nodes[0].0), (Closed, node::ERROR));
        assert_eq!(a.calls, ["prepare", "connect", "drain"]);
    }

    #[test]
    fn a_restarted_daemon_serves_again() {
        // The store says Connected with a connected front end: prepare and connect at once.
        let (mut m, mut a) = (BackendMachine::new(), Recorder::default());
        let u = m.step(&view(Connected, Connected, true), &mut a).unwrap();
        assert_eq!(u.state, Connected);
        assert_eq!(u.nodes[0].0, node::VHOST_USER_SOCKET);
        assert_eq!(a.calls, ["prepare", "connect"]);
        // InitWait with a front end not yet there: publish again, wait.
        let (mut m, mut a) = (BackendMachine::new(), Recorder::default());
        assert_eq!(
            run(&mut m, &mut a, &view(InitWait, Initialising, true)),
            InitWait
        );
        // Closing found after a restart: nothing to drain, Closed.
        let (mut m, mut a) = (BackendMachine::new(), Recorder::default());
        assert_eq!(run(&mut m, &mut a, &view(Closing, Closed, false)), Closed);
        assert!(a.calls.is_empty());
    }

    #[test]
    fn front_end_close_then_reconnect() {
        let (mut m, mut a) = (BackendMachine::new(), Recorder::default());
        run(&mut m, &mut a, &view(Initialising, Initialising, true));
        run(&mut m, &mut a, &view(InitWait, Initialised, true));
        // The guest unplugs on its own: Closing while it quiesces, Closed once it is Closed.
        assert_eq!(
            run(&mut m, &mut a, &view(Connected, Closing, true)),
            Closing
        );
        assert!(m.step(&view(Closing, Closing, true), &mut a).is_none());
        assert_eq!(a.calls, ["prepare", "connect"]);
        assert_eq!(run(&mut m, &mut a, &view(Closing, Closed, true)), Closed);
        assert!(m.step(&view(Closed, Closed, true), &mut a).is_none());
        // It comes back: prepare for reconnect.
        assert_eq!(
            run(&mut m, &mut a, &view(Closed, Initialising, true)),
            InitWait
        );
        assert_eq!(a.calls, ["prepare", "connect", "drain", "prepare"]);
    }

    #[test]
    fn a_vanished_front_end_while_serving_closes() {
        let (mut m, mut a) = (BackendMachine::new(), Recorder::default());
        run(&mut m, &mut a, &view(Initialising, Initialising, true));
        run(&mut m, &mut a, &view(InitWait, Connected, true));
        assert_eq!(run(&mut m, &mut a, &view(Connected, Unknown, true)), Closed);
    }
}
