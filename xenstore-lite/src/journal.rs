//! Durable store: an append-only journal of committed changes plus a snapshot that compacts
//! it. Xen's xenstored keeps its tree in memory only; this is pvio's addition.
//!
//! Files in the data directory:
//! - `journal-<epoch>`: records, each `{len: u32 LE, crc32: u32 LE, payload[len]}`; a payload
//!   is one commit: `count: u32` then `count` changes (see [`encode_changes`]).
//! - `snapshot`: magic `PVXSSNAP`, `epoch: u64 LE`, then records in the same format holding
//!   the whole tree. It covers every journal before `journal-<epoch>`.
//!
//! Loading reads the snapshot (or starts from the initial tree), then replays
//! `journal-<epoch>`. A record cut short by a crash, or whose checksum fails, at the end of
//! the journal is a torn write: it was never acknowledged, so it is dropped and the file is
//! truncated before it. A bad record followed by more data is corruption and refuses the
//! load.
//!
//! Compaction writes `snapshot.tmp` for epoch `e + 1`, fsyncs it, renames it over
//! `snapshot`, creates `journal-<e+1>` and deletes `journal-<e>`. A crash at any point
//! leaves either the old snapshot with the old journal or the new snapshot with an empty or
//! missing new journal, so no change is lost or replayed twice.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;

use crate::perms::{NodePerms, PermEntry, PermKind};
use crate::tree::{Change, Node, Tree, NO_GENERATION};

const SNAPSHOT_MAGIC: &[u8; 8] = b"PVXSSNAP";
const RECORD_HEADER: usize = 8;
/// Largest record accepted on load, in bytes (a whole-tree snapshot record holds one node).
const MAX_RECORD: usize = 64 << 20;

/// Errors of the journal.
#[derive(Debug, Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error("journal I/O on {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A record in the middle of a file is damaged.
    #[error("{path} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Offset of the bad record.
        offset: u64,
        /// What was wrong.
        reason: &'static str,
    },
}

/// Result type of the journal.
pub type Result<T> = std::result::Result<T, JournalError>;

/// When appended records reach the disk (`--sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// fdatasync after every record, before its reply.
    Always,
    /// One fdatasync for all records of a poll round, before any of its replies (group
    /// commit).
    Batch,
    /// Never sync; the OS writes back when it likes (a host crash may lose acknowledged
    /// writes, a daemon crash does not).
    Never,
}

impl FromStr for SyncMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "always" => Ok(SyncMode::Always),
            "batch" => Ok(SyncMode::Batch),
            "never" => Ok(SyncMode::Never),
            other => Err(format!(
                "unknown sync mode {other:?} (always, batch, never)"
            )),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

fn put_u32(out: &mut Vec<u8>, v: usize) {
    out.extend_from_slice(&u32::try_from(v).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len());
    out.extend_from_slice(b);
}

/// Children list encodings of a put.
const CHILDREN_FULL: u8 = 0;
const CHILDREN_SAME: u8 = 1;
const CHILDREN_APPENDED: u8 = 2;

/// How to encode `new` given the node's children before the commit: unchanged, the old
/// list plus names at the end (a child created), or the whole list.
fn children_delta<'a>(old: Option<&[String]>, new: &'a [String]) -> (u8, &'a [String]) {
    match old {
        Some(old) if old == new => (CHILDREN_SAME, &[]),
        Some(old) if new.len() > old.len() && new.starts_with(old) => {
            (CHILDREN_APPENDED, &new[old.len()..])
        }
        _ => (CHILDREN_FULL, new),
    }
}

/// Encodes one commit as a record payload: `count: u32`, then per change `kind: u8` (0
/// remove, 1 put), `path`, and for a put `value`, `nperms: u32` with `(domid: u32,
/// letter: u8)` each, then the children as `mode: u8` (0 the whole list, 1 unchanged, 2
/// appended to the old list), `n: u32` and `n` names. Byte strings are `len: u32` then the
/// bytes. `before` is the tree the commit applies to (`None`: encode every list whole), so
/// creating a child of a large directory does not journal the directory's whole list.
pub fn encode_changes(changes: &[Change], before: Option<&Tree>) -> Vec<u8> {
    let mut out = Vec::new();
    put_u32(&mut out, changes.len());
    for c in changes {
        out.push(u8::from(c.node.is_some()));
        put_bytes(&mut out, c.path.as_bytes());
        if let Some(n) = &c.node {
            put_bytes(&mut out, &n.value);
            put_u32(&mut out, n.perms.entries().len());
            for e in n.perms.entries() {
                out.extend_from_slice(&e.domid.to_le_bytes());
                out.push(e.kind.letter() as u8);
            }
            let old = before
                .and_then(|t| t.get(&c.path))
                .map(|o| o.children.as_slice());
            let (mode, names) = children_delta(old, &n.children);
            out.push(mode);
            put_u32(&mut out, names.len());
            for child in names {
                put_bytes(&mut out, child.as_bytes());
            }
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }

    fn len(&mut self) -> Option<usize> {
        let n = usize::try_from(self.u32()?).ok()?;
        (n <= self.0.len()).then_some(n)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.len()?;
        self.take(n)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

fn decode_node(r: &mut Reader<'_>, old: Option<&Node>) -> Option<Node> {
    let value = r.bytes()?.to_vec();
    let nperms = r.len()?;
    let mut entries = Vec::with_capacity(nperms);
    for _ in 0..nperms {
        let domid = r.u32()?;
        let kind = PermKind::from_letter(char::from(r.u8()?))?;
        entries.push(PermEntry { domid, kind });
    }
    let perms = NodePerms::from_entries(entries).ok()?;
    let mode = r.u8()?;
    let n = r.len()?;
    let mut names = Vec::with_capacity(n);
    for _ in 0..n {
        names.push(r.string()?);
    }
    let children = match mode {
        CHILDREN_FULL => names,
        CHILDREN_SAME => old?.children.clone(),
        CHILDREN_APPENDED => old?.children.iter().cloned().chain(names).collect(),
        _ => return None,
    };
    Some(Node {
        value,
        perms,
        children,
        generation: NO_GENERATION,
    })
}

/// Decodes a record payload made by [`encode_changes`] with the same `before` tree; `None`
/// when malformed.
pub fn decode_changes(payload: &[u8], before: Option<&Tree>) -> Option<Vec<Change>> {
    let mut r = Reader(payload);
    let count = r.len()?;
    let mut changes = Vec::with_capacity(count);
    for _ in 0..count {
        let put = match r.u8()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let path = r.string()?;
        let node = if put {
            let old = before.and_then(|t| t.get(&path));
            Some(decode_node(&mut r, old)?)
        } else {
            None
        };
        changes.push(Change { path, node });
    }
    r.0.is_empty().then_some(changes)
}

/// Frames a payload as a record.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER + payload.len());
    put_u32(&mut out, payload.len());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Outcome of scanning a file of records.
enum Scan {
    /// Every record was whole and applied; how many.
    Clean(usize),
    /// This many records were whole and applied; a torn tail starts at the offset.
    Torn(usize, u64),
}

/// Whether `data` begins with a whole record whose checksum holds.
fn starts_valid_record(data: &[u8]) -> bool {
    let Some(h) = data.get(..RECORD_HEADER) else {
        return false;
    };
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    data.get(RECORD_HEADER..RECORD_HEADER.saturating_add(len))
        .is_some_and(|p| crc32fast::hash(p) == crc)
}

/// Applies the records in `data` (starting at `base` within the file named `path`) to
/// `tree`, each decoded against the tree as it was before it.
fn scan(path: &Path, data: &[u8], base: usize, tree: &mut Tree) -> Result<Scan> {
    let mut commits = 0;
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        let offset = (base + pos) as u64;
        let header = rest.get(..RECORD_HEADER);
        let len = header.map(|h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize);
        let Some(len) = len.filter(|&l| l <= MAX_RECORD && RECORD_HEADER + l <= rest.len()) else {
            return Ok(Scan::Torn(commits, offset));
        };
        let h = &rest[..RECORD_HEADER];
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let payload = &rest[RECORD_HEADER..RECORD_HEADER + len];
        let end = pos + RECORD_HEADER + len;
        let decoded = (crc32fast::hash(payload) == crc)
            .then(|| decode_changes(payload, Some(tree)))
            .flatten();
        match decoded {
            Some(c) => {
                tree.apply(&c);
                commits += 1;
            }
            None if !starts_valid_record(&data[end..]) => return Ok(Scan::Torn(commits, offset)),
            None => {
                return Err(JournalError::Corrupt {
                    path: path.to_owned(),
                    offset,
                    reason: "bad record followed by valid records",
                })
            }
        }
        pos = end;
    }
    Ok(Scan::Clean(commits))
}

fn read_file(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The open journal of a data directory.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: File,
    epoch: u64,
    mode: SyncMode,
    dirty: bool,
    bytes: u64,
    compact_after: u64,
}

impl Journal {
    /// Opens (creating if needed) the data directory and loads the tree it holds.
    /// `compact_after` is the journal size in bytes that triggers a snapshot.
    ///
    /// # Errors
    /// I/O errors, or [`JournalError::Corrupt`] for damage other than a torn tail.
    pub fn open(dir: &Path, mode: SyncMode, compact_after: u64) -> Result<(Journal, Tree)> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let (mut tree, epoch) = Self::load_snapshot(dir)?;
        let path = Self::journal_path(dir, epoch);
        let mut valid_len = 0u64;
        if let Some(data) = read_file(&path)? {
            let commits = match scan(&path, &data, 0, &mut tree)? {
                Scan::Clean(c) => {
                    valid_len = data.len() as u64;
                    c
                }
                Scan::Torn(c, at) => {
                    log::warn!(
                        "{}: dropping torn record at byte {at} ({} bytes)",
                        path.display(),
                        data.len() as u64 - at
                    );
                    valid_len = at;
                    c
                }
            };
            log::info!("{}: replayed {commits} commits", path.display());
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.set_len(valid_len).map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
        sync_dir(dir)?;
        Self::remove_old_journals(dir, epoch);
        let journal = Journal {
            dir: dir.to_owned(),
            file,
            epoch,
            mode,
            dirty: false,
            bytes: valid_len,
            compact_after,
        };
        Ok((journal, tree))
    }

    fn journal_path(dir: &Path, epoch: u64) -> PathBuf {
        dir.join(format!("journal-{epoch}"))
    }

    fn load_snapshot(dir: &Path) -> Result<(Tree, u64)> {
        let path = dir.join("snapshot");
        let Some(data) = read_file(&path)? else {
            return Ok((Tree::new(), 0));
        };
        let corrupt = |reason| JournalError::Corrupt {
            path: path.clone(),
            offset: 0,
            reason,
        };
        if data.len() < 16 || &data[..8] != SNAPSHOT_MAGIC {
            return Err(corrupt("bad snapshot header"));
        }
        let epoch = u64::from_le_bytes(data[8..16].try_into().map_err(|_| corrupt("short"))?);
        let mut tree = Tree::empty();
        let Scan::Clean(_) = scan(&path, &data[16..], 16, &mut tree)? else {
            return Err(corrupt("truncated snapshot"));
        };
        tree.check()
            .map_err(|_| corrupt("snapshot tree is inconsistent"))?;
        Ok((tree, epoch))
    }

    fn remove_old_journals(dir: &Path, epoch: u64) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let old = name
                .to_str()
                .and_then(|n| n.strip_prefix("journal-"))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n < epoch);
            if old {
                if let Err(err) = fs::remove_file(e.path()) {
                    log::warn!("cannot remove {}: {err}", e.path().display());
                }
            }
        }
    }

    /// Appends one commit that is about to be applied to `tree`. With [`SyncMode::Always`] it is on disk when this returns; with
    /// `Batch` after the next [`Journal::sync`].
    ///
    /// # Errors
    /// The write or sync failed; the caller must not apply or acknowledge the commit.
    pub fn append(&mut self, changes: &[Change], tree: &Tree) -> Result<()> {
        let record = frame(&encode_changes(changes, Some(tree)));
        let path = Self::journal_path(&self.dir, self.epoch);
        if let Err(e) = self.file.write_all(&record) {
            // Cut off whatever part of the record reached the file.
            let _ = self.file.set_len(self.bytes);
            return Err(io_err(&path)(e));
        }
        self.bytes += record.len() as u64;
        match self.mode {
            SyncMode::Always => self.file.sync_data().map_err(io_err(&path))?,
            SyncMode::Batch => self.dirty = true,
            SyncMode::Never => {}
        }
        Ok(())
    }

    /// Makes every appended record durable (the group commit of [`SyncMode::Batch`]).
    ///
    /// # Errors
    /// fdatasync failed: appended records may be lost, so their replies must not be sent.
    pub fn sync(&mut self) -> Result<()> {
        if self.dirty {
            let path = Self::journal_path(&self.dir, self.epoch);
            self.file.sync_data().map_err(io_err(&path))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Size of the current journal file in bytes.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    /// Whether the current journal file is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Whether the journal has grown past the compaction threshold.
    pub fn wants_compaction(&self) -> bool {
        self.bytes >= self.compact_after
    }

    /// Writes a snapshot of `tree` (which must hold every appended change) and starts a new,
    /// empty journal.
    ///
    /// # Errors
    /// I/O errors; the old snapshot and journal then stay in force.
    pub fn compact(&mut self, tree: &Tree) -> Result<()> {
        self.sync()?;
        let next = self.epoch + 1;
        let tmp = self.dir.join("snapshot.tmp");
        let mut data = Vec::new();
        data.extend_from_slice(SNAPSHOT_MAGIC);
        data.extend_from_slice(&next.to_le_bytes());
        for change in tree.snapshot_changes() {
            data.extend_from_slice(&frame(&encode_changes(std::slice::from_ref(&change), None)));
        }
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&data).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        let snap = self.dir.join("snapshot");
        fs::rename(&tmp, &snap).map_err(io_err(&snap))?;
        sync_dir(&self.dir)?;
        let path = Self::journal_path(&self.dir, next);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.set_len(0).map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        self.file = file;
        self.epoch = next;
        self.bytes = 0;
        Self::remove_old_journals(&self.dir, next);
        log::info!(
            "snapshot of {} nodes written, journal epoch {next}",
            tree.len()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use proptest::prelude::*;

    use super::*;
    use crate::perms::PermKind;

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    fn tempdir() -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let d = std::env::temp_dir().join(format!("xs-journal-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn put(tree: &Tree, path: &str, value: &[u8]) -> Vec<Change> {
        let parent = crate::path::parent(path).unwrap();
        let mut p = tree.get(parent).unwrap().clone();
        let name = crate::path::basename(path).to_owned();
        if !p.children.contains(&name) {
            p.children.push(name);
        }
        let mut node = tree
            .get(path)
            .cloned()
            .unwrap_or_else(|| Node::empty(NodePerms::new(0, PermKind::Read)));
        node.value = value.to_vec();
        vec![
            Change {
                path: parent.into(),
                node: Some(p),
            },
            Change {
                path: path.into(),
                node: Some(node),
            },
        ]
    }

    #[test]
    fn changes_roundtrip() {
        let t = Tree::new();
        let mut c = put(&t, "/x", b"\0bin\xff");
        for change in &mut c {
            // Generations are not journaled: a replay assigns fresh ones.
            change.node.as_mut().unwrap().generation = NO_GENERATION;
        }
        assert_eq!(
            decode_changes(&encode_changes(&c, Some(&t)), Some(&t)).unwrap(),
            c
        );
        assert_eq!(decode_changes(&encode_changes(&c, None), None).unwrap(), c);
        let rm = vec![Change {
            path: "/x".into(),
            node: None,
        }];
        assert_eq!(
            decode_changes(&encode_changes(&rm, None), None).unwrap(),
            rm
        );
        assert!(decode_changes(&encode_changes(&rm, None)[..5], None).is_none());
    }

    #[test]
    fn creating_a_child_journals_only_the_new_name() {
        let mut t = Tree::new();
        for i in 0..100 {
            let c = put(&t, &format!("/child-{i}"), b"");
            t.apply(&c);
        }
        let mut c = put(&t, "/new", b"v");
        for change in &mut c {
            change.node.as_mut().unwrap().generation = NO_GENERATION;
        }
        let delta = encode_changes(&c, Some(&t));
        let full = encode_changes(&c, None);
        assert!(
            delta.len() * 10 < full.len(),
            "{} vs {}",
            delta.len(),
            full.len()
        );
        assert_eq!(decode_changes(&delta, Some(&t)).unwrap(), c);
        // A delta cannot be decoded without its base.
        assert!(decode_changes(&delta, None).is_none());
    }

    #[test]
    fn reopen_replays_and_compaction_keeps_everything() {
        let dir = tempdir();
        let (mut j, mut tree) = Journal::open(&dir, SyncMode::Always, 1 << 20).unwrap();
        for i in 0..20 {
            let c = put(&tree, &format!("/k{i}"), format!("v{i}").as_bytes());
            j.append(&c, &tree).unwrap();
            tree.apply(&c);
        }
        j.compact(&tree).unwrap();
        let c = put(&tree, "/after", b"snap");
        j.append(&c, &tree).unwrap();
        tree.apply(&c);
        drop(j);
        let (_, loaded) = Journal::open(&dir, SyncMode::Always, 1 << 20).unwrap();
        loaded.check().unwrap();
        for i in 0..20 {
            assert_eq!(
                loaded.get(&format!("/k{i}")).unwrap().value,
                format!("v{i}").as_bytes()
            );
        }
        assert_eq!(loaded.get("/after").unwrap().value, b"snap");
        assert!(!dir.join("journal-0").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corruption_before_the_tail_is_refused() {
        let dir = tempdir();
        let (mut j, mut tree) = Journal::open(&dir, SyncMode::Never, 1 << 20).unwrap();
        for i in 0..3 {
            let c = put(&tree, &format!("/k{i}"), b"v");
            j.append(&c, &tree).unwrap();
            tree.apply(&c);
        }
        drop(j);
        let path = dir.join("journal-0");
        let mut data = fs::read(&path).unwrap();
        data[RECORD_HEADER + 2] ^= 0xff;
        fs::write(&path, &data).unwrap();
        assert!(matches!(
            Journal::open(&dir, SyncMode::Never, 1 << 20),
            Err(JournalError::Corrupt { offset: 0, .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Cutting the journal at any byte (a torn last write) or flipping a byte of the last
        /// record loses exactly the damaged record and keeps every one before it.
        #[test]
        fn torn_tail_is_dropped(n in 1usize..8, cut_back in 1usize..60, flip in any::<bool>()) {
            let dir = tempdir();
            let (mut j, mut tree) = Journal::open(&dir, SyncMode::Never, 1 << 20).unwrap();
            let mut ends = Vec::new();
            for i in 0..n {
                let c = put(&tree, &format!("/k{i}"), b"value");
                j.append(&c, &tree).unwrap();
                tree.apply(&c);
                ends.push(j.len());
            }
            drop(j);
            let path = dir.join("journal-0");
            let mut data = fs::read(&path).unwrap();
            let last_start = if n > 1 { ends[n - 2] as usize } else { 0 };
            if flip {
                let i = last_start + (cut_back % (data.len() - last_start));
                data[i] ^= 0x5a;
            } else {
                let keep = data.len() - cut_back.min(data.len() - last_start);
                data.truncate(keep);
            }
            fs::write(&path, &data).unwrap();
            let (j2, loaded) = Journal::open(&dir, SyncMode::Never, 1 << 20).unwrap();
            prop_assert_eq!(j2.len(), last_start as u64);
            for i in 0..n - 1 {
                let key = format!("/k{i}");
                prop_assert!(loaded.get(&key).is_some(), "{} lost", key);
            }
            let torn = format!("/k{}", n - 1);
            prop_assert!(loaded.get(&torn).is_none(), "{} kept", torn);
            loaded.check().unwrap();
            fs::remove_dir_all(&dir).unwrap();
        }
    }
}
