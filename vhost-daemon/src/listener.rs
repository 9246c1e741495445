//! The vhost-user listening socket, created at a path (`--socket-path`/`--socket`) or inherited
//! from the launcher (`--fd`), per vhost-user.rst "Back-end program conventions".
//!
//! A path that already exists is handled safely: a leftover socket that nobody listens on (a
//! daemon that was killed) is removed and replaced; a socket someone listens on is an error
//! (another daemon serves it); anything that is not a socket is never deleted and is an error.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{getsockopt, sockopt};
use vhost::vhost_user::Listener;

/// Where a vhost-user socket comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketSource {
    /// Create a listening socket at this path (a stale socket there is replaced).
    Path(PathBuf),
    /// Use this inherited, already listening socket file descriptor.
    Fd(RawFd),
}

impl std::fmt::Display for SocketSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketSource::Path(path) => write!(f, "{}", path.display()),
            SocketSource::Fd(fd) => write!(f, "fd {fd}"),
        }
    }
}

/// Why the socket cannot be listened on.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The path exists and is not a socket (it is never removed).
    #[error("cannot listen on {0}: the path exists and is not a socket")]
    NotASocket(PathBuf),
    /// A process listens on the socket at the path already.
    #[error("cannot listen on {0}: another process is listening on it")]
    InUse(PathBuf),
    /// The socket could not be probed, removed or created.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `--fd` is not an open, listening socket.
    #[error("--fd {fd} is not a listening socket: {reason}")]
    BadFd {
        /// The descriptor number.
        fd: RawFd,
        /// Why.
        reason: String,
    },
}

/// Opens the listening socket of `source`. A socket created at a path is removed when the
/// returned listener is dropped.
///
/// # Errors
/// [`ListenError`] as described in the module documentation.
pub fn listen(source: &SocketSource) -> Result<Listener, ListenError> {
    match source {
        SocketSource::Path(path) => listen_at(path),
        SocketSource::Fd(fd) => inherited(*fd),
    }
}

fn listen_at(path: &Path) -> Result<Listener, ListenError> {
    let os_error = |source: io::Error| ListenError::Listen {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ListenError::NotASocket(path.to_path_buf()))
        }
        Ok(_) => remove_stale(path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(os_error(e)),
    }
    // `unlink` is false: the path is free now (a socket found there was removed above), and
    // vhost's Listener only removes what it finds, whatever kind of file that is.
    Listener::new(path, false).map_err(|e| {
        os_error(match e {
            vhost::vhost_user::Error::SocketError(io) => io,
            other => io::Error::other(other.to_string()),
        })
    })
}

/// Removes the socket at `path` if nobody accepts connections on it.
fn remove_stale(path: &Path) -> Result<(), ListenError> {
    match UnixStream::connect(path) {
        Ok(_) => Err(ListenError::InUse(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("removing the stale socket {}", path.display());
            std::fs::remove_file(path).map_err(|source| ListenError::Listen {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(ListenError::Listen {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn inherited(fd: RawFd) -> Result<Listener, ListenError> {
    let bad = |reason: String| ListenError::BadFd { fd, reason };
    if fd < 0 {
        return Err(bad("not a descriptor number".to_string()));
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; an invalid number fails with EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(bad(io::Error::last_os_error().to_string()));
    }
    // SAFETY: `fd` was just checked to be open; the borrow ends within this function.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    match getsockopt(&borrowed, sockopt::AcceptConn) {
        Ok(true) => {}
        Ok(false) => return Err(bad("the socket is not listening".to_string())),
        Err(e) => return Err(bad(e.desc().to_string())),
    }
    // SAFETY: the launcher hands this open, listening socket to the daemon, which becomes its
    // only owner; nothing else in the process uses the number.
    let socket = unsafe { UnixListener::from_raw_fd(fd) };
    // SAFETY: F_SETFD with FD_CLOEXEC only changes the flags of the descriptor owned above.
    unsafe { libc::fcntl(socket.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(Listener::from(socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vhost-daemon-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn stale_socket_replaced_live_socket_and_files_refused() {
        let dir = temp("listen");
        let path = dir.join("s.sock");
        // A stale socket: bound, then its listener closed without removing the file.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = listen(&SocketSource::Path(path.clone())).unwrap();
        let e = listen(&SocketSource::Path(path.clone())).err().unwrap();
        assert!(matches!(e, ListenError::InUse(_)), "{e}");
        drop(live);
        assert!(!path.exists(), "the listener removes its socket");
        let file = dir.join("file");
        std::fs::write(&file, b"keep me").unwrap();
        let e = listen(&SocketSource::Path(file.clone())).err().unwrap();
        assert!(matches!(e, ListenError::NotASocket(_)), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn inherited_fd_must_listen() {
        let dir = temp("fd");
        let file = std::fs::File::create(dir.join("f")).unwrap();
        let e = listen(&SocketSource::Fd(file.as_raw_fd())).err().unwrap();
        assert!(matches!(e, ListenError::BadFd { .. }), "{e}");
        assert!(listen(&SocketSource::Fd(-1)).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
