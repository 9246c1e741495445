//! Typed contents of the device directories: what the toolstack asks for ([`DeviceConfig`],
//! in the back-end directory), and what a back end publishes when it is ready ([`Published`]).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use xenstore_lite::{ClientError, Errno, XsOps};

use crate::error::{Result, XenbusError};
use crate::layout::{node, DeviceId, DeviceKind};

/// Default MTU of a vif in bytes.
pub const DEFAULT_MTU: u16 = 1500;
/// Xen's OUI for generated guest MACs (00:16:3e).
pub const XEN_OUI: [u8; 3] = [0x00, 0x16, 0x3e];

/// An Ethernet MAC address, `xx:xx:xx:xx:xx:xx` in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The address Xen's toolstack style would generate for device `devid` of `domid`:
    /// 00:16:3e followed by the 16-bit domid and the low byte of devid.
    pub fn generated(domid: u32, devid: u32) -> Mac {
        let [_, _, d1, d0] = domid.to_be_bytes();
        let [.., v] = devid.to_be_bytes();
        Mac([XEN_OUI[0], XEN_OUI[1], XEN_OUI[2], d1, d0, v])
    }
}

impl FromStr for Mac {
    type Err = String;

    /// Parses six `:`-separated hex bytes; multicast addresses are refused.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{s:?} is not a MAC address like 00:16:3e:00:00:01");
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (b, p) in mac.iter_mut().zip(&parts) {
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if mac[0] & 1 != 0 {
            return Err(format!("{s} is a multicast address"));
        }
        Ok(Mac(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A virtual disk as the toolstack describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VbdConfig {
    /// The raw image or block device (`params`).
    pub image: PathBuf,
    /// Read-only (`mode` = `r`) or writable (`w`).
    pub readonly: bool,
    /// Virtqueues to offer (`num-queues`), at least 1.
    pub num_queues: u16,
}

/// Where a vif's frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetLink {
    /// A named L2 switch between guests (`switch`).
    Switch(String),
    /// An existing TAP device (`tap`).
    Tap(String),
}

/// A virtual NIC as the toolstack describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VifConfig {
    /// The guest's MAC address (`mac`).
    pub mac: Mac,
    /// MTU in bytes (`mtu`).
    pub mtu: u16,
    /// Switch or TAP.
    pub link: NetLink,
    /// Queue pairs to offer (`num-queue-pairs`), at least 1.
    pub num_queue_pairs: u16,
}

/// What the toolstack asks of a back end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceConfig {
    /// A disk.
    Vbd(VbdConfig),
    /// A NIC.
    Vif(VifConfig),
}

impl DeviceConfig {
    /// The device kind.
    pub fn kind(&self) -> DeviceKind {
        match self {
            DeviceConfig::Vbd(_) => DeviceKind::Vbd,
            DeviceConfig::Vif(_) => DeviceKind::Vif,
        }
    }

    /// The kind-specific back-end nodes (name, value).
    pub fn backend_nodes(&self) -> Vec<(&'static str, String)> {
        match self {
            DeviceConfig::Vbd(c) => vec![
                (node::PARAMS, c.image.display().to_string()),
                (node::MODE, if c.readonly { "r" } else { "w" }.to_owned()),
                (node::NUM_QUEUES, c.num_queues.to_string()),
            ],
            DeviceConfig::Vif(c) => {
                let link = match &c.link {
                    NetLink::Switch(name) => (node::SWITCH, name.clone()),
                    NetLink::Tap(name) => (node::TAP, name.clone()),
                };
                vec![
                    (node::MAC, c.mac.to_string()),
                    (node::MTU, c.mtu.to_string()),
                    link,
                    (node::NUM_QUEUE_PAIRS, c.num_queue_pairs.to_string()),
                ]
            }
        }
    }

    /// The kind-specific front-end nodes (name, value): the vif's `mac`.
    pub fn frontend_nodes(&self) -> Vec<(&'static str, String)> {
        match self {
            DeviceConfig::Vbd(_) => Vec::new(),
            DeviceConfig::Vif(c) => vec![(node::MAC, c.mac.to_string())],
        }
    }

    /// Reads the toolstack's description of `dev` from its back-end directory.
    ///
    /// # Errors
    /// [`XenbusError::Missing`] or [`XenbusError::BadNode`] for absent or malformed nodes;
    /// store errors.
    pub fn read<O: XsOps + ?Sized>(ops: &mut O, dev: &DeviceId) -> Result<Self> {
        let mut r = NodeReader { ops, dev };
        Ok(match dev.kind {
            DeviceKind::Vbd => DeviceConfig::Vbd(VbdConfig {
                image: PathBuf::from(r.required(node::PARAMS)?),
                readonly: match r.required(node::MODE)?.as_str() {
                    "r" => true,
                    "w" => false,
                    other => return Err(r.bad(node::MODE, format!("{other:?} is not r or w"))),
                },
                num_queues: r.count(node::NUM_QUEUES, 1)?,
            }),
            DeviceKind::Vif => DeviceConfig::Vif(VifConfig {
                mac: r
                    .required(node::MAC)?
                    .parse()
                    .map_err(|why| r.bad(node::MAC, why))?,
                mtu: r.optional_parse(node::MTU)?.unwrap_or(DEFAULT_MTU),
                link: r.link()?,
                num_queue_pairs: r.count(node::NUM_QUEUE_PAIRS, 1)?,
            }),
        })
    }
}

/// Reads nodes of one back-end directory.
struct NodeReader<'a, O: ?Sized> {
    ops: &'a mut O,
    dev: &'a DeviceId,
}

impl<O: XsOps + ?Sized> NodeReader<'_, O> {
    fn bad(&self, name: &str, why: String) -> XenbusError {
        XenbusError::BadNode {
            path: self.dev.backend_node(name),
            why,
        }
    }

    fn optional(&mut self, name: &str) -> Result<Option<String>> {
        read_optional(self.ops, &self.dev.backend_node(name))
    }

    fn required(&mut self, name: &str) -> Result<String> {
        self.optional(name)?
            .ok_or_else(|| XenbusError::Missing(self.dev.backend_node(name)))
    }

    fn optional_parse<T: FromStr>(&mut self, name: &str) -> Result<Option<T>> {
        match self.optional(name)? {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| self.bad(name, format!("{v:?} is not a valid number"))),
        }
    }

    fn count(&mut self, name: &str, default: u16) -> Result<u16> {
        match self.optional_parse::<u16>(name)?.unwrap_or(default) {
            0 => Err(self.bad(name, "must be at least 1".into())),
            n => Ok(n),
        }
    }

    fn link(&mut self) -> Result<NetLink> {
        match (self.optional(node::SWITCH)?, self.optional(node::TAP)?) {
            (Some(s), None) => Ok(NetLink::Switch(s)),
            (None, Some(t)) => Ok(NetLink::Tap(t)),
            (Some(_), Some(_)) => Err(self.bad(node::TAP, "both switch and tap are set".into())),
            (None, None) => Err(XenbusError::Missing(self.dev.backend_node(node::SWITCH))),
        }
    }
}

/// Reads `path`; `None` when it does not exist.
///
/// # Errors
/// Store errors other than `ENOENT`.
pub fn read_optional<O: XsOps + ?Sized>(ops: &mut O, path: &str) -> Result<Option<String>> {
    match ops.read_string(path) {
        Ok(v) => Ok(Some(v)),
        Err(ClientError::Xs(Errno::ENOENT)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What a back end publishes in its directory when it moves to InitWait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The vhost-user socket the front end connects to (`vhost-user-socket`).
    pub socket: PathBuf,
    /// Device facts (name, value), e.g. `sectors`, `sector-size`, `info`, `feature-*`.
    pub facts: Vec<(&'static str, String)>,
}

impl Published {
    /// Every node to write, the socket first.
    pub fn nodes(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![(node::VHOST_USER_SOCKET, self.socket.display().to_string())];
        v.extend(self.facts.iter().cloned());
        v
    }

    /// The facts of a vbd of `bytes` bytes: capacity in 512-byte sectors, sector size 512,
    /// `info` with VDISK_READONLY when read-only, flush and discard offered.
    pub fn vbd_facts(bytes: u64, readonly: bool) -> Vec<(&'static str, String)> {
        let info = if readonly {
            crate::layout::VDISK_READONLY
        } else {
            0
        };
        vec![
            (node::SECTORS, (bytes / 512).to_string()),
            (node::SECTOR_SIZE, "512".to_owned()),
            (node::INFO, info.to_string()),
            (node::FEATURE_FLUSH_CACHE, "1".to_owned()),
            (node::FEATURE_DISCARD, u8::from(!readonly).to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_print_and_generate() {
        let m: Mac = "00:16:3e:0a:0B:ff".parse().unwrap();
        assert_eq!(m.to_string(), "00:16:3e:0a:0b:ff");
        assert_eq!(Mac::generated(0x1234, 2).to_string(), "00:16:3e:12:34:02");
        for bad in [
            "",
            "00:16:3e:0a:0b",
            "00:16:3e:0a:0b:fff",
            "0g:16:3e:0a:0b:ff",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?}");
        }
        assert!("01:00:5e:00:00:01"
            .parse::<Mac>()
            .unwrap_err()
            .contains("multicast"));
    }

    #[test]
    fn configs_become_libxl_named_nodes() {
        let vbd = DeviceConfig::Vbd(VbdConfig {
            image: "/img/a.raw".into(),
            readonly: true,
            num_queues: 2,
        });
        assert_eq!(
            vbd.backend_nodes(),
            vec![
                ("params", "/img/a.raw".to_owned()),
                ("mode", "r".to_owned()),
                ("num-queues", "2".to_owned())
            ]
        );
        let vif = DeviceConfig::Vif(VifConfig {
            mac: Mac::generated(1, 0),
            mtu: DEFAULT_MTU,
            link: NetLink::Tap("tap0".into()),
            num_queue_pairs: 1,
        });
        assert!(vif.backend_nodes().contains(&("tap", "tap0".to_owned())));
        assert_eq!(
            vif.frontend_nodes(),
            vec![("mac", "00:16:3e:00:01:00".to_owned())]
        );
        let facts = Published::vbd_facts(1 << 20, true);
        assert!(facts.contains(&("sectors", "2048".to_owned())));
        assert!(facts.contains(&("info", "4".to_owned())));
    }
}
