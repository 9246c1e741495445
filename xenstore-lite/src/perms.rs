//! Node permissions as in Xen (xs_wire.h `XS_PERM_*`, xenstore.txt "Permissions").
//!
//! A node's permissions are a non-empty list. The first entry names the owner domain (who
//! always has full access) and the access of every domain not listed later; the later
//! entries grant one domain `n`one, `r`ead, `w`rite or `b`oth. The text form of an entry is
//! its letter followed by the decimal domain id: `n0`, `r1`, `b2`. Privileged domains (dom0)
//! bypass every check.

use std::fmt;

use thiserror::Error;

/// Errors parsing the text form of permissions.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PermsError {
    /// An entry was not `[nrwb]<domid>` with a domid in 0..=65535.
    #[error("invalid permission entry {0:?}")]
    BadEntry(String),
    /// The list was empty.
    #[error("empty permission list")]
    Empty,
}

/// Access granted by one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PermKind {
    /// `n`: no access.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

impl PermKind {
    /// The letter of the text form.
    pub fn letter(self) -> char {
        match self {
            PermKind::None => 'n',
            PermKind::Read => 'r',
            PermKind::Write => 'w',
            PermKind::Both => 'b',
        }
    }

    /// The kind for a letter.
    pub fn from_letter(c: char) -> Option<Self> {
        Some(match c {
            'n' => PermKind::None,
            'r' => PermKind::Read,
            'w' => PermKind::Write,
            'b' => PermKind::Both,
            _ => return None,
        })
    }

    fn access(self) -> Access {
        match self {
            PermKind::None => Access::NONE,
            PermKind::Read => Access::READ,
            PermKind::Write => Access::WRITE,
            PermKind::Both => Access::READ.union(Access::WRITE),
        }
    }
}

/// A set of access rights (`XS_PERM_READ`, `XS_PERM_WRITE`, `XS_PERM_OWNER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(u8);

impl Access {
    /// Nothing.
    pub const NONE: Access = Access(0);
    /// Read the value, children and permissions.
    pub const READ: Access = Access(1);
    /// Write the value, create children, remove.
    pub const WRITE: Access = Access(2);
    /// Change permissions.
    pub const OWNER: Access = Access(4);
    /// Everything.
    pub const ALL: Access = Access(7);

    /// Both sets.
    pub const fn union(self, other: Access) -> Access {
        Access(self.0 | other.0)
    }

    /// Whether `self` and `other` share a right.
    pub fn intersects(self, other: Access) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether every right in `needed` is in `self`.
    pub fn contains(self, needed: Access) -> bool {
        self.0 & needed.0 == needed.0
    }
}

/// One entry: a domain and what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PermEntry {
    /// Domain id.
    pub domid: u32,
    /// Access given.
    pub kind: PermKind,
}

impl PermEntry {
    /// Parses `n0`, `r1`, `w2`, `b3`.
    ///
    /// # Errors
    /// [`PermsError::BadEntry`] for anything else, or a domid above 65535 (`domid_t` is 16
    /// bits).
    pub fn parse(s: &str) -> Result<Self, PermsError> {
        let bad = || PermsError::BadEntry(s.to_owned());
        let mut chars = s.chars();
        let kind = chars
            .next()
            .and_then(PermKind::from_letter)
            .ok_or_else(bad)?;
        let digits = chars.as_str();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let domid: u32 = digits.parse().map_err(|_| bad())?;
        if domid > 0xffff {
            return Err(bad());
        }
        Ok(PermEntry { domid, kind })
    }
}

impl fmt::Display for PermEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.kind.letter(), self.domid)
    }
}

/// Who is asking, for permission checks (C xenstored `perm_for_conn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The caller's domain id.
    pub domid: u32,
    /// Privileged callers (dom0) bypass every check and every quota.
    pub privileged: bool,
    /// XS_SET_TARGET: the domain whose rights this caller also has (a device model's guest).
    pub target: Option<u32>,
}

impl Caller {
    /// The privileged domain 0 (every unix-socket client).
    pub const DOM0: Caller = Caller {
        domid: 0,
        privileged: true,
        target: None,
    };

    /// An unprivileged guest domain.
    pub fn guest(domid: u32) -> Caller {
        Caller {
            domid,
            privileged: false,
            target: None,
        }
    }

    fn is(&self, domid: u32) -> bool {
        self.domid == domid || self.target == Some(domid)
    }
}

/// A node's permission list (never empty).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodePerms(Vec<PermEntry>);

impl NodePerms {
    /// Owner `owner`, everyone else `default`.
    pub fn new(owner: u32, default: PermKind) -> Self {
        NodePerms(vec![PermEntry {
            domid: owner,
            kind: default,
        }])
    }

    /// From entries.
    ///
    /// # Errors
    /// [`PermsError::Empty`] for an empty list.
    pub fn from_entries(entries: Vec<PermEntry>) -> Result<Self, PermsError> {
        if entries.is_empty() {
            return Err(PermsError::Empty);
        }
        Ok(NodePerms(entries))
    }

    /// Parses the list of text entries (`["b0", "r1"]`).
    ///
    /// # Errors
    /// [`PermsError`] for an empty list or a bad entry.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, PermsError> {
        let parsed = entries
            .iter()
            .map(|e| PermEntry::parse(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_entries(parsed)
    }

    /// The entries, owner first.
    pub fn entries(&self) -> &[PermEntry] {
        &self.0
    }

    /// The owner domain.
    pub fn owner(&self) -> u32 {
        self.0[0].domid
    }

    /// The same permissions with another owner (new nodes of unprivileged writers).
    pub fn with_owner(&self, owner: u32) -> Self {
        let mut p = self.clone();
        p.0[0].domid = owner;
        p
    }

    /// The wire form: each entry NUL-terminated (`"b0\0r1\0"`).
    pub fn to_payload(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.0 {
            out.extend_from_slice(e.to_string().as_bytes());
            out.push(0);
        }
        out
    }

    /// What `caller` may do on a node with these permissions.
    pub fn access(&self, caller: &Caller) -> Access {
        if caller.privileged || caller.is(self.owner()) {
            return Access::ALL;
        }
        self.0[1..]
            .iter()
            .find(|e| caller.is(e.domid))
            .unwrap_or(&self.0[0])
            .kind
            .access()
    }
}

impl fmt::Display for NodePerms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let p = NodePerms::parse(&["b0", "r1", "n65535"]).unwrap();
        assert_eq!(p.owner(), 0);
        assert_eq!(p.to_payload(), b"b0\0r1\0n65535\0");
        assert_eq!(p.to_string(), "b0,r1,n65535");
        for bad in ["", "x1", "r", "r-1", "r65536", "r1a", "R1"] {
            assert!(PermEntry::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(NodePerms::parse::<&str>(&[]), Err(PermsError::Empty));
    }

    #[test]
    fn access_rules_follow_xen() {
        // Owner 1, default none, domain 2 may read, domain 3 may write.
        let p = NodePerms::parse(&["n1", "r2", "w3"]).unwrap();
        assert_eq!(p.access(&Caller::guest(1)), Access::ALL);
        assert_eq!(p.access(&Caller::guest(2)), Access::READ);
        assert_eq!(p.access(&Caller::guest(3)), Access::WRITE);
        assert_eq!(p.access(&Caller::guest(4)), Access::NONE);
        assert_eq!(p.access(&Caller::DOM0), Access::ALL);
        // The default applies to unlisted domains.
        let q = NodePerms::parse(&["r5"]).unwrap();
        assert_eq!(q.access(&Caller::guest(6)), Access::READ);
        assert!(!q.access(&Caller::guest(6)).contains(Access::WRITE));
        // A device model with target 1 gets domain 1's rights.
        let dm = Caller {
            domid: 7,
            privileged: false,
            target: Some(1),
        };
        assert_eq!(p.access(&dm), Access::ALL);
        // An explicit later entry for the owner does not reduce the owner's rights.
        let r = NodePerms::parse(&["b1", "n1"]).unwrap();
        assert_eq!(r.access(&Caller::guest(1)), Access::ALL);
    }
}
