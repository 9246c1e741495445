//! Ethernet MAC addresses (IEEE 802): parsing, printing and the unicast / multicast / broadcast
//! classification the switch and the receive filter use.

use std::fmt;
use std::str::FromStr;

/// Bytes of an Ethernet header: destination, source, EtherType.
pub const ETH_HLEN: usize = 14;

/// Bytes of an Ethernet header's two addresses (destination, then source).
pub const ETH_ADDRS_LEN: usize = 12;

/// A 48-bit Ethernet MAC address in transmission order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// A MAC address on the command line or in a control command that is not six hex octets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address: give six hex octets such as 52:54:00:12:34:56")]
pub struct MacParseError(pub String);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// The destination address of an Ethernet frame (its first 6 bytes), if it has them.
    pub fn destination(frame: &[u8]) -> Option<MacAddr> {
        frame.get(0..6).and_then(|b| b.try_into().ok()).map(MacAddr)
    }

    /// The destination and source addresses of an Ethernet header's first [`ETH_ADDRS_LEN`] bytes.
    #[inline]
    pub fn pair(addrs: [u8; ETH_ADDRS_LEN]) -> (MacAddr, MacAddr) {
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&addrs[..6]);
        src.copy_from_slice(&addrs[6..]);
        (MacAddr(dst), MacAddr(src))
    }

    /// Group address (I/G bit set): multicast or broadcast.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// ff:ff:ff:ff:ff:ff.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// An individual (unicast) address that is not all zeroes: one a station can own.
    pub fn is_station(&self) -> bool {
        !self.is_multicast() && self.0 != [0; 6]
    }

    /// This address with `n` added to its last three octets (wrapping within them), e.g. to
    /// give each switch port its own address from one base.
    pub fn offset(&self, n: u32) -> MacAddr {
        let low = u32::from_be_bytes([0, self.0[3], self.0[4], self.0[5]]).wrapping_add(n);
        let [_, a, b, c] = low.to_be_bytes();
        MacAddr([self.0[0], self.0[1], self.0[2], a, b, c])
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parse_and_print() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!("52-54-00-ab-cd-0f".parse::<MacAddr>().unwrap(), m);
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "5:54:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn classification() {
        assert!(MacAddr::BROADCAST.is_broadcast() && MacAddr::BROADCAST.is_multicast());
        let mcast = MacAddr([0x01, 0x00, 0x5e, 0, 0, 1]);
        assert!(mcast.is_multicast() && !mcast.is_broadcast() && !mcast.is_station());
        assert!(MacAddr([0x52, 0x54, 0, 0, 0, 1]).is_station());
        assert!(!MacAddr([0; 6]).is_station());
        let frame = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x08, 0];
        assert_eq!(
            MacAddr::destination(&frame),
            Some(MacAddr([1, 2, 3, 4, 5, 6]))
        );
        assert_eq!(MacAddr::destination(&frame[..5]), None);
        let addrs: [u8; ETH_ADDRS_LEN] = frame[..ETH_ADDRS_LEN].try_into().unwrap();
        assert_eq!(
            MacAddr::pair(addrs),
            (MacAddr([1, 2, 3, 4, 5, 6]), MacAddr([7, 8, 9, 10, 11, 12]))
        );
    }

    #[test]
    fn offset_wraps_in_the_low_half() {
        let m = MacAddr([0x52, 0x54, 0, 0xff, 0xff, 0xff]);
        assert_eq!(m.offset(1), MacAddr([0x52, 0x54, 0, 0, 0, 0]));
        assert_eq!(
            MacAddr([2, 0, 0, 0, 0, 9]).offset(3),
            MacAddr([2, 0, 0, 0, 0, 12])
        );
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(b in any::<[u8; 6]>()) {
            let m = MacAddr(b);
            prop_assert_eq!(m.to_string().parse::<MacAddr>().unwrap(), m);
        }
    }
}
