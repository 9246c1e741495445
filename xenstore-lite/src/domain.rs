//! The registry of introduced domains (C xenstored `domain.c`: XS_INTRODUCE, XS_RELEASE,
//! XS_IS_DOMAIN_INTRODUCED, XS_RESUME, XS_SET_TARGET).
//!
//! Introducing records the domain's store ring frame (`gfn`) and event-channel port; the
//! shared-ring transport that uses them is the event-channel layer's job. Domain 0 is always
//! introduced.

use std::collections::HashMap;

use crate::wire::Errno;

/// `DOMID_SELF` (xen.h): "the calling domain", always introduced.
pub const DOMID_SELF: u32 = 0x7ff0;

/// What the toolstack told us about a guest domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainInfo {
    /// Guest frame number of the domain's xenstore ring page.
    pub gfn: u64,
    /// Event-channel port of the ring (never 0).
    pub port: u32,
    /// The domain whose rights this one also has (XS_SET_TARGET, device models).
    pub target: Option<u32>,
}

/// A change a transport must follow: map a guest's ring, or drop it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainEvent {
    /// XS_INTRODUCE of a guest (again: its ring or port may have changed).
    Introduced {
        /// The guest.
        domid: u32,
        /// Its xenstore ring frame (here: the grant reference of the ring page).
        gfn: u64,
        /// Its event-channel port for the ring.
        port: u32,
    },
    /// XS_RELEASE of a guest: its connection and watches are gone.
    Released(u32),
}

/// Introduced domains by id.
#[derive(Debug, Default)]
pub struct Domains {
    map: HashMap<u32, DomainInfo>,
}

impl Domains {
    /// No domain introduced yet (besides dom0).
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `domid`; returns true when it was not introduced before. Introducing again
    /// updates the ring and port (C xenstored rebinds the event channel).
    pub fn introduce(&mut self, domid: u32, gfn: u64, port: u32) -> bool {
        match self.map.get_mut(&domid) {
            Some(d) => {
                d.gfn = gfn;
                d.port = port;
                false
            }
            None => {
                self.map.insert(
                    domid,
                    DomainInfo {
                        gfn,
                        port,
                        target: None,
                    },
                );
                true
            }
        }
    }

    /// Whether `domid` is introduced (dom0 and `DOMID_SELF` always are).
    pub fn is_introduced(&self, domid: u32) -> bool {
        domid == 0 || domid == DOMID_SELF || self.map.contains_key(&domid)
    }

    /// Information on an introduced guest.
    pub fn get(&self, domid: u32) -> Option<&DomainInfo> {
        self.map.get(&domid)
    }

    /// Forgets `domid`.
    ///
    /// # Errors
    /// `EINVAL` for dom0, `ENOENT` when not introduced.
    pub fn release(&mut self, domid: u32) -> Result<DomainInfo, Errno> {
        if domid == 0 {
            return Err(Errno::EINVAL);
        }
        let info = self.map.remove(&domid).ok_or(Errno::ENOENT)?;
        for d in self.map.values_mut() {
            if d.target == Some(domid) {
                d.target = None;
            }
        }
        Ok(info)
    }

    /// Gives `domid` the rights of `target`.
    ///
    /// # Errors
    /// `ENOENT` when either domain is not an introduced guest.
    pub fn set_target(&mut self, domid: u32, target: u32) -> Result<(), Errno> {
        if !self.map.contains_key(&target) {
            return Err(Errno::ENOENT);
        }
        let d = self.map.get_mut(&domid).ok_or(Errno::ENOENT)?;
        d.target = Some(target);
        Ok(())
    }

    /// The target of `domid`, if any.
    pub fn target_of(&self, domid: u32) -> Option<u32> {
        self.map.get(&domid).and_then(|d| d.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn introduce_release_and_target() {
        let mut d = Domains::new();
        assert!(d.is_introduced(0));
        assert!(!d.is_introduced(1));
        assert!(d.introduce(1, 0x1000, 5));
        assert!(!d.introduce(1, 0x1000, 6));
        assert_eq!(d.get(1).unwrap().port, 6);
        assert_eq!(d.set_target(2, 1), Err(Errno::ENOENT));
        d.introduce(2, 0, 7);
        d.set_target(2, 1).unwrap();
        assert_eq!(d.target_of(2), Some(1));
        d.release(1).unwrap();
        assert_eq!(d.target_of(2), None);
        assert_eq!(d.release(1), Err(Errno::ENOENT));
        assert_eq!(d.release(0), Err(Errno::EINVAL));
    }
}
