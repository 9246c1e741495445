//! The `xenstore-lite` command line: `serve` runs the daemon; `read`, `write`, `ls`, `list`,
//! `rm`, `mkdir`, `chmod`, `watch` and `exists` take the same arguments and print the same
//! output as the xenstore-utils programs of the same names (Xen
//! `tools/xs-clients/xenstore_client.c`), reaching the daemon through `XENSTORED_PATH`.
//!
//! As there, `read` of several keys, `write` of several pairs, and `rm`, `list`, `exists`,
//! `chmod` and `mkdir` run in one transaction, retried from the start on `EAGAIN`; values are
//! shown with non-printable bytes escaped (`\n`, `\t`, `\r`, `\\`, `\ooo`, `\xHH`), and
//! `write` takes values in that escaped form unless `-R`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::client::{Client, ClientError, XsOps};
use crate::error_chain;
use crate::journal::SyncMode;
use crate::perms::{NodePerms, PermEntry, PermKind};
use crate::quota::Quotas;
use crate::server::{Server, ServerConfig, DEFAULT_COMPACT_AFTER};
use crate::wire::Errno;

/// Program name in messages.
const PROG: &str = "xenstore-lite";
/// `TAG` of xenstore-ls: the room a value takes at least.
const TAG_LEN: usize = " = \"...\"".len();
/// Path buffer of xenstore-ls (`XENSTORE_ABS_PATH_MAX + 1024`).
const LS_PATH_MAX: usize = 3072 + 1024;
/// Path buffer of `xenstore-chmod -r` (`MAX_PATH_LEN`).
const CHMOD_PATH_MAX: usize = 256;

/// xenstore-lite: a XenStore-compatible store daemon and its client commands.
#[derive(Debug, Parser)]
#[command(name = PROG, version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Print the values of keys.
    Read {
        /// Prefix each value with its key.
        #[arg(short = 'p', long)]
        prefix: bool,
        /// Print raw values, without escaping.
        #[arg(short = 'R', long)]
        raw: bool,
        /// Keys to read.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Write values: key value [key value ...].
    Write {
        /// Take values literally, without unescaping.
        #[arg(short = 'R', long)]
        raw: bool,
        /// Pairs of key and value.
        #[arg(required = true, allow_hyphen_values = true)]
        pairs: Vec<String>,
    },
    /// Print a subtree with values (xenstore-ls).
    Ls {
        /// Print whole paths, no indentation or truncation.
        #[arg(short = 'f', long)]
        flat: bool,
        /// Show permissions.
        #[arg(short = 'p', long)]
        perms: bool,
        /// Top of the subtree (default `/`).
        path: Option<String>,
    },
    /// Print the children of keys.
    List {
        /// Prefix each child with its parent.
        #[arg(short = 'p', long)]
        prefix: bool,
        /// Keys to list.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Remove keys and their subtrees.
    Rm {
        /// Also remove parents left empty and without value.
        #[arg(short = 't', long)]
        tidy: bool,
        /// Keys to remove.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Create empty keys.
    Mkdir {
        /// Keys to create.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Set permissions: key mode [mode ...], modes like n0 r1 w2 b3 (owner first).
    Chmod {
        /// Also set them on every ancestor.
        #[arg(short = 'u', long)]
        upto: bool,
        /// Also set them on every descendant.
        #[arg(short = 'r', long)]
        recurse: bool,
        /// The key.
        key: String,
        /// Permission entries.
        #[arg(required = true)]
        modes: Vec<String>,
    },
    /// Print the path of each watch event.
    Watch {
        /// Stop after this many events (the first comes right away).
        #[arg(short = 'n', long = "number")]
        number: Option<i64>,
        /// Only events up to this many levels below the key.
        #[arg(short = 'd', long)]
        depth: Option<u32>,
        /// Keys to watch.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Exit 0 if every key exists, 1 otherwise.
    Exists {
        /// Keys to test.
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

/// Options of `serve`.
#[derive(Debug, Args)]
struct ServeArgs {
    /// Unix socket for clients, who act as domain 0.
    #[arg(long)]
    socket: PathBuf,
    /// Extra socket whose clients act as an unprivileged domain: DOMID:PATH (repeatable).
    #[arg(long = "domain-socket", value_parser = parse_domain_socket)]
    domain_sockets: Vec<(u32, PathBuf)>,
    /// Serve introduced guests over their xenstore rings through the evtchn broker at this
    /// socket (the daemon connects as domain 0).
    #[arg(long)]
    evtchn_broker: Option<PathBuf>,
    /// Keep the store durable in this directory (journal and snapshot).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// When journal records reach the disk: always, batch (one fdatasync per poll round) or
    /// never.
    #[arg(long, default_value = "batch")]
    sync: SyncMode,
    /// Journal size in bytes that triggers a snapshot.
    #[arg(long, default_value_t = DEFAULT_COMPACT_AFTER)]
    compact_after: u64,
    /// Nodes a guest domain may own.
    #[arg(long, default_value_t = Quotas::default().nodes)]
    quota_nodes: usize,
    /// Size limit of a guest's node in bytes (header, permissions, value, child names).
    #[arg(long, default_value_t = Quotas::default().node_size)]
    quota_node_size: usize,
    /// Watches per guest domain.
    #[arg(long, default_value_t = Quotas::default().watches)]
    quota_watches: usize,
    /// Open transactions per guest domain.
    #[arg(long, default_value_t = Quotas::default().transactions)]
    quota_transactions: usize,
    /// Nodes one guest transaction may access.
    #[arg(long, default_value_t = Quotas::default().transaction_nodes)]
    quota_transaction_nodes: usize,
    /// Replies a guest connection may have waiting before the daemon stops reading it.
    #[arg(long, default_value_t = Quotas::default().outstanding)]
    quota_outstanding: usize,
    /// Permission entries per guest node.
    #[arg(long, default_value_t = Quotas::default().perms_per_node)]
    quota_perms: usize,
    /// Path length below a guest's home, in bytes.
    #[arg(long, default_value_t = Quotas::default().path_max)]
    quota_path_max: usize,
    /// Memory per unprivileged domain in bytes: nodes, transactions, watches, queued output.
    #[arg(long, default_value_t = Quotas::default().memory)]
    quota_memory: usize,
    /// Connections an unprivileged domain may have open at once.
    #[arg(long, default_value_t = Quotas::default().connections)]
    quota_connections: usize,
}

fn parse_domain_socket(s: &str) -> Result<(u32, PathBuf), String> {
    let (d, p) = s.split_once(':').ok_or("expected DOMID:PATH")?;
    let domid: u32 = d.parse().map_err(|_| format!("bad domain id {d:?}"))?;
    if domid == 0 || domid > 0xffff {
        return Err(format!(
            "domain id {domid} is not an unprivileged domain (1..=65535)"
        ));
    }
    Ok((domid, PathBuf::from(p)))
}

impl ServeArgs {
    fn config(&self) -> ServerConfig {
        ServerConfig {
            socket: self.socket.clone(),
            domain_sockets: self.domain_sockets.clone(),
            evtchn_broker: self.evtchn_broker.clone(),
            data_dir: self.data_dir.clone(),
            sync: self.sync,
            compact_after: self.compact_after,
            quotas: Quotas {
                nodes: self.quota_nodes,
                node_size: self.quota_node_size,
                watches: self.quota_watches,
                transactions: self.quota_transactions,
                transaction_nodes: self.quota_transaction_nodes,
                outstanding: self.quota_outstanding,
                perms_per_node: self.quota_perms,
                path_max: self.quota_path_max,
                memory: self.quota_memory,
                connections: self.quota_connections,
            },
        }
    }
}

/// Escapes a value as xenstore-utils print it.
pub fn sanitise(value: &[u8]) -> String {
    let mut s = String::with_capacity(value.len());
    for &c in value {
        match c {
            b'\t' => s.push_str("\\t"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\\' => s.push_str("\\\\"),
            b' '..=b'~' => s.push(char::from(c)),
            0..=7 => s.push_str(&format!("\\{c:03o}")),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}

/// Reverses [`sanitise`] for `write` arguments (unknown escapes keep the letter).
pub fn unsanitise(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 == b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let c = b[i + 1];
        i += 2;
        let digits = |i: usize, max: usize, radix: u32| {
            let n = b[i..]
                .iter()
                .take(max)
                .take_while(|d| char::from(**d).is_digit(radix))
                .count();
            let v = std::str::from_utf8(&b[i..i + n])
                .ok()
                .and_then(|s| u32::from_str_radix(s, radix).ok());
            (v, n)
        };
        match c {
            b't' => out.push(b'\t'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let (v, n) = digits(i, 2, 16);
                out.push(v.map_or(b'x', |v| v as u8));
                i += n;
            }
            b'0'..=b'7' => {
                let (v, n) = digits(i - 1, 3, 8);
                out.push(v.map_or(c, |v| v as u8));
                i += n - 1;
            }
            other => out.push(other),
        }
    }
    out
}

/// What a command printed and its exit status.
struct Outcome {
    out: Vec<u8>,
    status: u8,
}

fn warn(msg: &str) {
    eprintln!("{PROG}: {msg}");
}

/// Runs the command line; the exit code is 0 on success, 1 on failure.
pub fn run(cli: Cli) -> ExitCode {
    if let Command::Serve(args) = &cli.command {
        return serve(args);
    }
    let mut client = match Client::from_env() {
        Ok(c) => c,
        Err(e) => {
            warn(&format!("xs_open: {}", error_text(&e)));
            return ExitCode::from(1);
        }
    };
    let result = match &cli.command {
        Command::Ls { flat, perms, path } => {
            ls(&mut client, path.as_deref().unwrap_or("/"), *flat, *perms)
        }
        Command::Watch {
            number,
            depth,
            keys,
        } => watch(&mut client, keys, *number, *depth),
        cmd => in_transaction(&mut client, cmd),
    };
    match result {
        Ok(o) => {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(&o.out).and_then(|()| stdout.flush());
            ExitCode::from(o.status)
        }
        Err(msg) => {
            warn(&msg);
            ExitCode::from(1)
        }
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut server = match Server::bind(&args.config()) {
        Ok(s) => s,
        Err(e) => {
            warn(&error_chain(&e));
            return ExitCode::from(1);
        }
    };
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            warn(&error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// The strerror-like text of a client error.
fn error_text(e: &ClientError) -> String {
    match e {
        ClientError::Xs(errno) => std::io::Error::from_raw_os_error(errno.raw()).to_string(),
        other => error_chain(other),
    }
}

fn needs_transaction(cmd: &Command) -> bool {
    match cmd {
        Command::Read { keys, .. } => keys.len() > 1,
        Command::Write { pairs, .. } => pairs.len() > 2,
        _ => true,
    }
}

/// Runs a command, in a transaction where xenstore-utils use one.
fn in_transaction(client: &mut Client, cmd: &Command) -> Result<Outcome, String> {
    if let Command::Write { pairs, .. } = cmd {
        if pairs.len() % 2 == 1 {
            return Err("write needs pairs of key and value".into());
        }
    }
    if !needs_transaction(cmd) {
        return perform(client, cmd);
    }
    loop {
        let id = client
            .transaction_start()
            .map_err(|_| "couldn't start transaction".to_owned())?;
        let outcome = perform(&mut client.in_transaction(id), cmd)?;
        match client.transaction_end(id, outcome.status == 0) {
            Ok(()) => return Ok(outcome),
            Err(ClientError::Xs(Errno::EAGAIN)) if outcome.status == 0 => continue,
            Err(_) => return Err("couldn't end transaction".into()),
        }
    }
}

/// One pass of a command; a failed key ends it with status 1 after a warning.
fn perform(ops: &mut dyn XsOps, cmd: &Command) -> Result<Outcome, String> {
    let mut out = Vec::new();
    let status = match cmd {
        Command::Read { prefix, raw, keys } => read(ops, keys, *prefix, *raw, &mut out),
        Command::Write { raw, pairs } => write(ops, pairs, *raw),
        Command::List { prefix, keys } => list(ops, keys, *prefix, &mut out),
        Command::Rm { tidy, keys } => keys.iter().try_fold((), |(), k| rm(ops, k, *tidy)).is_err(),
        Command::Mkdir { keys } => keys.iter().any(|k| {
            let failed = ops.mkdir(k).is_err();
            if failed {
                warn(&format!("could not create path {k}"));
            }
            failed
        }),
        Command::Exists { keys } => keys.iter().any(|k| ops.read(k).is_err()),
        Command::Chmod {
            upto,
            recurse,
            key,
            modes,
        } => {
            let perms = parse_modes(modes)?;
            chmod(ops, key, &perms, *upto, *recurse)?;
            false
        }
        Command::Serve(_) | Command::Ls { .. } | Command::Watch { .. } => {
            return Err("not a transactional command".into())
        }
    };
    Ok(Outcome {
        out,
        status: u8::from(status),
    })
}

fn read(ops: &mut dyn XsOps, keys: &[String], prefix: bool, raw: bool, out: &mut Vec<u8>) -> bool {
    for k in keys {
        let Ok(v) = ops.read(k) else {
            warn(&format!("couldn't read path {k}"));
            return true;
        };
        if prefix {
            out.extend_from_slice(format!("{k}: ").as_bytes());
        }
        if raw {
            out.extend_from_slice(&v);
        } else {
            out.extend_from_slice(sanitise(&v).as_bytes());
            out.push(b'\n');
        }
    }
    false
}

fn write(ops: &mut dyn XsOps, pairs: &[String], raw: bool) -> bool {
    for kv in pairs.chunks(2) {
        let value = if raw {
            kv[1].as_bytes().to_vec()
        } else {
            unsanitise(&kv[1])
        };
        if ops.write(&kv[0], &value).is_err() {
            warn(&format!("could not write path {}", kv[0]));
            return true;
        }
    }
    false
}

fn list(ops: &mut dyn XsOps, keys: &[String], prefix: bool, out: &mut Vec<u8>) -> bool {
    for k in keys {
        let Ok(children) = ops.directory(k) else {
            warn(&format!("could not list path {k}"));
            return true;
        };
        for c in children {
            // Like xenstore-list 4.17 (Debian 12): the key and a slash, even for `/`.
            if prefix {
                out.extend_from_slice(format!("{k}/").as_bytes());
            }
            out.extend_from_slice(format!("{c}\n").as_bytes());
        }
    }
    false
}

/// Removes `key`; with `tidy`, then its ancestors while they are empty and valueless.
fn rm(ops: &mut dyn XsOps, key: &str, tidy: bool) -> Result<(), ()> {
    let mut path = key.to_owned();
    loop {
        if ops.rm(&path).is_err() {
            warn(&format!("could not remove path {path}"));
            return Err(());
        }
        if !tidy {
            return Ok(());
        }
        let Some(slash) = path.rfind('/') else {
            return Ok(());
        };
        path.truncate(slash);
        let empty_value = ops.read(&path).is_ok_and(|v| v.is_empty());
        if !(empty_value && ops.directory(&path).is_ok_and(|c| c.is_empty())) {
            return Ok(());
        }
    }
}

fn parse_modes(modes: &[String]) -> Result<NodePerms, String> {
    let entries = modes
        .iter()
        .map(|m| {
            let mut chars = m.chars();
            let letter = chars.next().unwrap_or('\0');
            let kind = PermKind::from_letter(letter)
                .ok_or_else(|| format!("Invalid permission specification: '{letter}'"))?;
            // Like atoi: leading digits, 0 when there are none.
            let digits: String = chars.take_while(char::is_ascii_digit).collect();
            let domid = digits.parse().unwrap_or(0);
            Ok(PermEntry { domid, kind })
        })
        .collect::<Result<Vec<_>, String>>()?;
    NodePerms::from_entries(entries).map_err(|e| e.to_string())
}

fn chmod(
    ops: &mut dyn XsOps,
    path: &str,
    perms: &NodePerms,
    upto: bool,
    recurse: bool,
) -> Result<(), String> {
    if path.is_empty() {
        return Ok(());
    }
    ops.set_perms(path, perms).map_err(|e| {
        format!(
            "Error occurred setting permissions on '{path}': {}",
            error_text(&e)
        )
    })?;
    if upto {
        let slash = path
            .rfind('/')
            .ok_or_else(|| format!("Unable to locate path separator '/' in '{path}'"))?;
        chmod(ops, &path[..slash], perms, true, false)?;
    }
    if recurse {
        if let Ok(children) = ops.directory(path) {
            for c in children {
                let mut child = format!("{path}/{c}");
                truncate_at_char(&mut child, CHMOD_PATH_MAX - 1);
                chmod(ops, &child, perms, false, true)?;
            }
        }
    }
    Ok(())
}

fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

fn watch(
    client: &mut Client,
    keys: &[String],
    number: Option<i64>,
    depth: Option<u32>,
) -> Result<Outcome, String> {
    for k in keys {
        let r = match depth {
            Some(d) => client.watch_depth(k, k, d),
            None => client.watch(k, k),
        };
        r.map_err(|_| format!("Unable to add watch on {k}"))?;
    }
    let mut stdout = std::io::stdout().lock();
    let mut seen = 0i64;
    while number.is_none_or(|n| seen < n) {
        let ev = client.next_event().map_err(|e| error_text(&e))?;
        writeln!(stdout, "{}", ev.path)
            .and_then(|()| stdout.flush())
            .map_err(|e| e.to_string())?;
        seen += 1;
    }
    Ok(Outcome {
        out: Vec::new(),
        status: 0,
    })
}

/// Layout of xenstore-ls output.
struct LsLayout {
    max_width: usize,
    desired_width: usize,
    whole_path: bool,
    show_perms: bool,
}

fn terminal_columns() -> Option<usize> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which points to a live,
    // properly aligned local; fd 1 is only queried.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0).then_some(usize::from(ws.ws_col))
}

fn ls(client: &mut Client, path: &str, flat: bool, perms: bool) -> Result<Outcome, String> {
    let layout = if flat {
        LsLayout {
            max_width: usize::MAX / 4,
            desired_width: 0,
            whole_path: true,
            show_perms: perms,
        }
    } else {
        LsLayout {
            max_width: terminal_columns().map_or(80, |c| c.saturating_sub(2)),
            desired_width: 60,
            whole_path: false,
            show_perms: perms,
        }
    };
    let mut out = Vec::new();
    ls_level(client, path, 0, &layout, &mut out)?;
    Ok(Outcome { out, status: 0 })
}

fn ls_level(
    client: &mut Client,
    path: &str,
    depth: usize,
    layout: &LsLayout,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let children = match client.directory(path) {
        Ok(c) => c,
        Err(ClientError::Xs(Errno::ENOENT)) if depth > 0 => return Ok(()),
        Err(e) => {
            // Print what was gathered before failing, as xenstore-ls does.
            let _ = std::io::stdout().write_all(out);
            out.clear();
            return Err(format!("xs_directory ({path}): {}", error_text(&e)));
        }
    };
    for name in children {
        let sep = if path.ends_with('/') { "" } else { "/" };
        let child = format!("{path}{sep}{name}");
        let mut line = String::new();
        if layout.whole_path {
            line.push_str(&child);
        } else {
            line.push_str(&" ".repeat(depth));
            let room = layout.max_width.saturating_sub(TAG_LEN + depth);
            line.push_str(&name[..name.len().min(room)]);
        }
        let width = if layout.whole_path { 0 } else { line.len() };
        let value = if child.len() < LS_PATH_MAX {
            client.read(&child).ok()
        } else {
            None
        };
        match value {
            None => line.push_str(":\n"),
            Some(v) => {
                let shown = sanitise(&v);
                if layout.max_width < width + v.len() + TAG_LEN {
                    let room = layout.max_width.saturating_sub(TAG_LEN + width);
                    line.push_str(&format!(" = \"{}\\...\"", &shown[..shown.len().min(room)]));
                } else {
                    line.push_str(&format!(" = \"{shown}\""));
                    if layout.show_perms {
                        let mut w = width + shown.len() + 5;
                        line.push(' ');
                        w += 1;
                        while w < layout.desired_width.min(layout.max_width) {
                            line.push(if w % 2 == 1 { '.' } else { ' ' });
                            w += 1;
                        }
                    }
                }
            }
        }
        if layout.show_perms {
            match client.get_perms(&child) {
                Ok(p) => line.push_str(&format!("  ({p})")),
                Err(e) => warn(&format!(
                    "\ncould not access permissions for {name}: {}",
                    error_text(&e)
                )),
            }
        }
        line.push('\n');
        out.extend_from_slice(line.as_bytes());
        ls_level(client, &child, depth + 1, layout, out)?;
    }
    Ok(())
}
