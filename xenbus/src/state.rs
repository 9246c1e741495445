//! XenbusState (Xen `xen/include/public/io/xenbus.h`), stored as decimal text in `state` nodes.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// The state of one side of a split device (`enum xenbus_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum XenbusState {
    /// 0: no `state` node, or an unreadable one.
    Unknown,
    /// 1: the side is being set up.
    Initialising,
    /// 2: the back end has published its details and waits for the front end.
    InitWait,
    /// 3: the front end has published its details (here: it is connected to the socket).
    Initialised,
    /// 4: the device is in use.
    Connected,
    /// 5: the side is shutting down.
    Closing,
    /// 6: the side is shut down.
    Closed,
    /// 7: reconfiguration requested (not used by pvio).
    Reconfiguring,
    /// 8: reconfiguration done (not used by pvio).
    Reconfigured,
}

/// A `state` node's value that is not a XenbusState.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{0:?} is not a XenbusState (0..=8)")]
pub struct BadState(pub String);

impl XenbusState {
    /// The numeric value of `enum xenbus_state`.
    pub fn number(self) -> u8 {
        match self {
            XenbusState::Unknown => 0,
            XenbusState::Initialising => 1,
            XenbusState::InitWait => 2,
            XenbusState::Initialised => 3,
            XenbusState::Connected => 4,
            XenbusState::Closing => 5,
            XenbusState::Closed => 6,
            XenbusState::Reconfiguring => 7,
            XenbusState::Reconfigured => 8,
        }
    }

    /// The state with numeric value `n`.
    pub fn from_number(n: u8) -> Option<Self> {
        const ALL: [XenbusState; 9] = [
            XenbusState::Unknown,
            XenbusState::Initialising,
            XenbusState::InitWait,
            XenbusState::Initialised,
            XenbusState::Connected,
            XenbusState::Closing,
            XenbusState::Closed,
            XenbusState::Reconfiguring,
            XenbusState::Reconfigured,
        ];
        ALL.get(usize::from(n)).copied()
    }

    /// The text written to a `state` node: the decimal number.
    pub fn as_node_value(self) -> String {
        self.number().to_string()
    }

    /// The name used in xenbus.h without the prefix, e.g. `InitWait`.
    pub fn name(self) -> &'static str {
        match self {
            XenbusState::Unknown => "Unknown",
            XenbusState::Initialising => "Initialising",
            XenbusState::InitWait => "InitWait",
            XenbusState::Initialised => "Initialised",
            XenbusState::Connected => "Connected",
            XenbusState::Closing => "Closing",
            XenbusState::Closed => "Closed",
            XenbusState::Reconfiguring => "Reconfiguring",
            XenbusState::Reconfigured => "Reconfigured",
        }
    }
}

impl FromStr for XenbusState {
    type Err = BadState;

    /// Parses a `state` node's value: decimal 0..=8, surrounding whitespace and a trailing
    /// NUL (written by some C tools) ignored.
    fn from_str(s: &str) -> Result<Self, BadState> {
        s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
            .parse::<u8>()
            .ok()
            .and_then(XenbusState::from_number)
            .ok_or_else(|| BadState(s.to_owned()))
    }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_values_round_trip_and_match_xenbus_h() {
        for n in 0..=8u8 {
            let s = XenbusState::from_number(n).unwrap();
            assert_eq!(s.number(), n);
            assert_eq!(s.as_node_value().parse::<XenbusState>(), Ok(s));
        }
        assert_eq!("2".parse(), Ok(XenbusState::InitWait));
        assert_eq!("4\0".parse(), Ok(XenbusState::Connected));
        assert_eq!(XenbusState::Closed.as_node_value(), "6");
        for bad in ["", "9", "-1", "InitWait", "2a", "256"] {
            assert!(bad.parse::<XenbusState>().is_err(), "{bad:?}");
        }
    }
}
