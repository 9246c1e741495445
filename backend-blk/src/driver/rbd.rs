//! The RBD driver: a Ceph RBD image through librbd's aio API
//! (`rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=USER][:OPTION=VALUE...]`, QEMU's `rbd:` filename
//! syntax; other options are librados configuration options).
//!
//! The cluster configuration comes from `conf=` or librados' defaults (`CEPH_CONF`,
//! `/etc/ceph/ceph.conf`), the user from `id=` (default `admin`, with its keyring as the
//! configuration names it). Reads and writes go straight between guest memory and librbd
//! (`rbd_aio_readv`/`rbd_aio_writev` on the request's iovecs); discard, write zeroes and flush
//! map to `rbd_aio_discard`, `rbd_aio_write_zeroes` and `rbd_aio_flush`. librbd calls the
//! completion callback on its own thread: it queues `(key, result)` and signals the queue's
//! eventfd, which the worker's epoll watches. A snapshot is served read-only. A resize of the
//! image (`rbd resize`) is noticed through `rbd_update_watch`, which raises SIGHUP so the
//! daemon takes the same path as for a resized file. Cluster errors fail the request with
//! VIRTIO_BLK_S_IOERR (logged by the worker); when the cluster goes away, requests wait up to
//! `rados_osd_op_timeout` ([`DEFAULT_TIMEOUT_SECS`] unless given) and then fail. For live
//! migration between two back-ends on one image, a front-end that leaves makes this back-end
//! flush and release the image's exclusive lock, and one that connects drops librbd's cache.

use std::ffi::{c_void, CString};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use log::{debug, info, warn};
use rados_sys as rados;
use rbd_sys as rbd;
use vhost_daemon::uring::Completion;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{done_bytes, Capabilities, Op, QueueDriver, QueueError};
use crate::image::ImageError;

/// Seconds an operation, a monitor request or the connection waits for the cluster before
/// failing, unless the image spec sets `rados_osd_op_timeout`, `rados_mon_op_timeout` or
/// `client_mount_timeout`.
pub const DEFAULT_TIMEOUT_SECS: u32 = 30;

/// `rbd:` image spec, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdSpec {
    /// Pool name.
    pub pool: String,
    /// Image name.
    pub image: String,
    /// Snapshot name (served read-only).
    pub snap: Option<String>,
    /// Configuration file (`conf=`).
    pub conf: Option<String>,
    /// Ceph user without `client.` (`id=`).
    pub id: Option<String>,
    /// Other `key=value` pairs: librados configuration options.
    pub options: Vec<(String, String)>,
}

impl RbdSpec {
    /// Parses what follows `rbd:`: `POOL/IMAGE[@SNAP][:key=value...]`.
    ///
    /// # Errors
    /// A message naming what is missing or malformed.
    pub fn parse(text: &str) -> Result<RbdSpec, String> {
        let mut parts = text.split(':');
        let name = parts.next().unwrap_or_default();
        let (pool, rest) = name
            .split_once('/')
            .ok_or("give rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=USER]")?;
        let (image, snap) = match rest.split_once('@') {
            Some((image, snap)) => (image, Some(snap.to_string())),
            None => (rest, None),
        };
        if pool.is_empty() || image.is_empty() || snap.as_deref() == Some("") {
            return Err("empty pool, image or snapshot name".to_string());
        }
        let mut spec = RbdSpec {
            pool: pool.to_string(),
            image: image.to_string(),
            snap,
            conf: None,
            id: None,
            options: Vec::new(),
        };
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("option {part:?} is not key=value"))?;
            match key {
                "conf" => spec.conf = Some(value.to_string()),
                "id" => spec.id = Some(value.to_string()),
                _ => spec.options.push((key.to_string(), value.to_string())),
            }
        }
        Ok(spec)
    }
}

/// A C string for librados/librbd; names with NUL bytes cannot exist there.
fn c_string(text: &str) -> Result<CString, String> {
    CString::new(text).map_err(|_| format!("{text:?} contains a NUL byte"))
}

/// librados/librbd error `-errno` as text.
fn errno_text(ret: i64) -> String {
    let errno = i32::try_from(-ret).unwrap_or(libc::EIO);
    io::Error::from_raw_os_error(errno).to_string()
}

/// The cluster connection, pool context and open image.
struct Handles {
    cluster: rados::rados_t,
    ioctx: rados::rados_ioctx_t,
    image: rbd::rbd_image_t,
    watch: Option<u64>,
}

// SAFETY: librados and librbd handles may be used from any thread; librbd serializes what
// needs it inside the image handle.
unsafe impl Send for Handles {}
// SAFETY: as above; concurrent aio calls on one image handle are supported by librbd.
unsafe impl Sync for Handles {}

impl Handles {
    /// Connects and opens the image of `spec`; on failure closes what was opened.
    fn open(spec: &RbdSpec, read_only: bool) -> Result<Handles, String> {
        let mut handles = Handles {
            cluster: std::ptr::null_mut(),
            ioctx: std::ptr::null_mut(),
            image: std::ptr::null_mut(),
            watch: None,
        };
        let id = spec.id.as_deref().map(c_string).transpose()?;
        let check = |what: &str, ret: libc::c_int| {
            if ret < 0 {
                Err(format!("{what}: {}", errno_text(i64::from(ret))))
            } else {
                Ok(())
            }
        };
        // SAFETY: `cluster` is a valid out-pointer; `id` is NULL or a NUL-terminated string
        // that outlives the call.
        let ret = unsafe {
            rados::rados_create(
                &mut handles.cluster,
                id.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            )
        };
        check("rados_create", ret)?;
        let conf = spec.conf.as_deref().map(c_string).transpose()?;
        // SAFETY: the cluster handle is live; `conf` is NULL (librados' default search,
        // CEPH_CONF included) or a NUL-terminated path that outlives the call.
        let ret = unsafe {
            rados::rados_conf_read_file(
                handles.cluster,
                conf.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            )
        };
        let conf_name = spec.conf.as_deref().unwrap_or("the default ceph.conf");
        check(&format!("reading {conf_name}"), ret)?;
        let timeout = DEFAULT_TIMEOUT_SECS.to_string();
        let defaults = [
            "rados_osd_op_timeout",
            "rados_mon_op_timeout",
            "client_mount_timeout",
        ]
        .map(|k| (k.to_string(), timeout.clone()));
        for (key, value) in defaults.iter().chain(&spec.options) {
            let (k, v) = (c_string(key)?, c_string(value)?);
            // SAFETY: the cluster handle is live and not connected yet; both strings are
            // NUL-terminated and outlive the call.
            let ret = unsafe { rados::rados_conf_set(handles.cluster, k.as_ptr(), v.as_ptr()) };
            check(&format!("option {key}={value}"), ret)?;
        }
        // SAFETY: the cluster handle is live and configured.
        check("connecting to the cluster", unsafe {
            rados::rados_connect(handles.cluster)
        })?;
        let pool = c_string(&spec.pool)?;
        // SAFETY: the cluster is connected; `ioctx` is a valid out-pointer; the pool name is
        // NUL-terminated and outlives the call.
        let ret = unsafe {
            rados::rados_ioctx_create(handles.cluster, pool.as_ptr(), &mut handles.ioctx)
        };
        check(&format!("pool {}", spec.pool), ret)?;
        let image = c_string(&spec.image)?;
        let snap = spec.snap.as_deref().map(c_string).transpose()?;
        let snap_ptr = snap.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: the pool context is live; `image` is a valid out-pointer; the names are
        // NUL-terminated (or NULL for no snapshot) and outlive the call.
        let ret = unsafe {
            if read_only || snap.is_some() {
                rbd::rbd_open_read_only(handles.ioctx, image.as_ptr(), &mut handles.image, snap_ptr)
            } else {
                rbd::rbd_open(handles.ioctx, image.as_ptr(), &mut handles.image, snap_ptr)
            }
        };
        check(&format!("image {}/{}", spec.pool, spec.image), ret)?;
        Ok(handles)
    }

    fn size(&self) -> Result<u64, String> {
        let mut size = 0u64;
        // SAFETY: the image is open; `size` is a valid out-pointer.
        let ret = unsafe { rbd::rbd_get_size(self.image, &mut size) };
        if ret < 0 {
            return Err(errno_text(i64::from(ret)));
        }
        Ok(size)
    }
}

impl Drop for Handles {
    fn drop(&mut self) {
        // SAFETY: each handle is closed once, after everything that uses it (the queues hold
        // an `Arc` of the disk, so none is left), in the reverse order of opening.
        unsafe {
            if let Some(handle) = self.watch {
                rbd::rbd_update_unwatch(self.image, handle);
            }
            if !self.image.is_null() {
                rbd::rbd_close(self.image);
            }
            if !self.ioctx.is_null() {
                rados::rados_ioctx_destroy(self.ioctx);
            }
            if !self.cluster.is_null() {
                rados::rados_shutdown(self.cluster);
            }
        }
    }
}

/// librbd's resize (header update) notice: SIGHUP to this process, whose handler re-reads the
/// size and tells the front-end, as for a resized file.
unsafe extern "C" fn header_updated(_arg: *mut c_void) {
    // SAFETY: kill with our own pid and a valid signal number has no memory effects.
    unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
}

/// An RBD image as the device serves it.
pub struct RbdDisk {
    name: String,
    handles: Arc<Handles>,
    size: AtomicU64,
    read_only: bool,
}

impl RbdDisk {
    /// Connects to the cluster and opens the image of `spec` (the text after `rbd:`).
    ///
    /// # Errors
    /// [`ImageError::Network`] for a malformed spec, an unreadable configuration, a cluster
    /// that refuses or cannot be reached within the timeout, a missing pool, image or
    /// snapshot.
    pub fn open(spec: &str, read_only: bool) -> Result<RbdDisk, ImageError> {
        let name = format!("rbd:{spec}");
        let err = |reason| ImageError::Network {
            spec: name.clone(),
            reason,
        };
        let parsed = RbdSpec::parse(spec).map_err(err)?;
        let mut handles = Handles::open(&parsed, read_only).map_err(err)?;
        let size = handles.size().map_err(err)?;
        let mut watch = 0u64;
        // SAFETY: the image is open; `watch` is a valid out-pointer; the callback takes no
        // argument and stays valid for the program's life.
        let ret = unsafe {
            rbd::rbd_update_watch(
                handles.image,
                &mut watch,
                Some(header_updated),
                std::ptr::null_mut(),
            )
        };
        if ret < 0 {
            warn!(
                "{name}: resizes will not be noticed: rbd_update_watch: {}",
                errno_text(i64::from(ret))
            );
        } else {
            handles.watch = Some(watch);
        }
        let read_only = read_only || parsed.snap.is_some();
        info!(
            "{name}: RBD image of {size} bytes{}",
            if read_only { ", read-only" } else { "" }
        );
        Ok(RbdDisk {
            name,
            handles: Arc::new(handles),
            size: AtomicU64::new(size),
            read_only,
        })
    }

    /// The spec as given.
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// Image size in bytes, as last read.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// RBD does everything; a snapshot or `--readonly` only reads.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            read_only: self.read_only,
            flush: true,
            discard: !self.read_only,
            write_zeroes: !self.read_only,
            zeroes_may_unmap: true,
        }
    }

    /// Reads the image size again and serves it from now on.
    ///
    /// # Errors
    /// [`ImageError::Network`] when librbd cannot tell it; the old size stays.
    pub fn reread_size(&self) -> Result<u64, ImageError> {
        let size = self.handles.size().map_err(|reason| ImageError::Network {
            spec: self.name.clone(),
            reason,
        })?;
        self.size.store(size, Ordering::Release);
        Ok(size)
    }

    /// A new front-end: `rbd_invalidate_cache`, so that nothing another client wrote since
    /// (a live migration's source) is read from an old cache entry.
    pub fn front_end_connected(&self) {
        // SAFETY: the image is open.
        let ret = unsafe { rbd::rbd_invalidate_cache(self.handles.image) };
        if ret < 0 {
            warn!(
                "{}: rbd_invalidate_cache: {}",
                self.name,
                errno_text(i64::from(ret))
            );
        }
    }

    /// The front-end left: flush, then release the image's exclusive lock if this client
    /// holds it (the `exclusive-lock` feature, on by default), so that another back-end on
    /// the image (a live migration's destination) takes it at once instead of asking this
    /// one for it. librbd takes the lock again at this client's next write.
    pub fn front_end_left(&self) {
        if self.read_only {
            return;
        }
        if let Err(e) = self.sync() {
            warn!("{}: flush after the front-end left: {e}", self.name);
        }
        let mut owner = 0;
        // SAFETY: the image is open; `owner` is a valid out-pointer.
        let ret = unsafe { rbd::rbd_is_exclusive_lock_owner(self.handles.image, &mut owner) };
        if ret < 0 || owner == 0 {
            return;
        }
        // SAFETY: the image is open and this client owns its exclusive lock.
        let ret = unsafe { rbd::rbd_lock_release(self.handles.image) };
        if ret < 0 {
            warn!(
                "{}: releasing the exclusive lock: {}",
                self.name,
                errno_text(i64::from(ret))
            );
        } else {
            info!("{}: exclusive lock released", self.name);
        }
    }

    /// `rbd_flush`: everything written is durable.
    ///
    /// # Errors
    /// librbd's error.
    pub fn sync(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        // SAFETY: the image is open.
        let ret = unsafe { rbd::rbd_flush(self.handles.image) };
        if ret < 0 {
            return Err(io::Error::from_raw_os_error(-ret));
        }
        Ok(())
    }

    /// A queue's engine: an eventfd and the completions librbd's callbacks leave for it.
    ///
    /// # Errors
    /// [`QueueError::Network`] when the eventfd cannot be created.
    pub fn queue_io(&self) -> Result<RbdQueue, QueueError> {
        let event =
            EventFd::new(EFD_NONBLOCK).map_err(|e| QueueError::Network(format!("eventfd: {e}")))?;
        Ok(RbdQueue {
            handles: self.handles.clone(),
            sink: Arc::new(Sink {
                event,
                done: Mutex::new(Vec::new()),
            }),
        })
    }
}

/// Where librbd's callbacks leave completions for one queue.
struct Sink {
    event: EventFd,
    done: Mutex<Vec<Completion>>,
}

/// What one aio operation's callback needs.
struct Pending {
    sink: Arc<Sink>,
    key: usize,
    /// Bytes the operation moves.
    bytes: u64,
}

/// librbd's completion callback: records the result for the queue and signals it.
unsafe extern "C" fn aio_done(completion: rbd::rbd_completion_t, arg: *mut c_void) {
    // SAFETY: `arg` is the `Box<Pending>` leaked when the operation was issued; librbd calls
    // this exactly once per completion.
    let pending = unsafe { Box::from_raw(arg.cast::<Pending>()) };
    // SAFETY: the completion is live until released here, once.
    let ret = unsafe {
        let ret = rbd::rbd_aio_get_return_value(completion);
        rbd::rbd_aio_release(completion);
        ret
    };
    let result = if ret < 0 {
        i32::try_from(ret).unwrap_or(-libc::EIO)
    } else {
        done_bytes(pending.bytes)
    };
    pending
        .sink
        .done
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Completion {
            key: pending.key as u64,
            result,
        });
    if let Err(e) = pending.sink.event.write(1) {
        warn!("cannot signal an RBD completion: {e}");
    }
}

/// One queue's access to the image.
pub struct RbdQueue {
    handles: Arc<Handles>,
    sink: Arc<Sink>,
}

impl QueueDriver for RbdQueue {
    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.sink.event.as_raw_fd())
    }

    fn on_event(&mut self) {
        // Nothing to read just means the completions were taken already.
        let _ = self.sink.event.read();
    }

    unsafe fn push(&mut self, key: usize, op: &Op) -> io::Result<()> {
        let bytes = match op {
            Op::Transfer { remaining, .. } => *remaining,
            _ => 0,
        };
        let arg = Box::into_raw(Box::new(Pending {
            sink: self.sink.clone(),
            key,
            bytes,
        }));
        let mut completion: rbd::rbd_completion_t = std::ptr::null_mut();
        // SAFETY: `completion` is a valid out-pointer; `arg` stays valid until the callback
        // takes it back.
        let ret =
            unsafe { rbd::rbd_aio_create_completion(arg.cast(), Some(aio_done), &mut completion) };
        if ret < 0 {
            // SAFETY: the callback was never registered: the box is still ours.
            drop(unsafe { Box::from_raw(arg) });
            return Err(io::Error::from_raw_os_error(-ret));
        }
        let image = self.handles.image;
        // SAFETY: the image is open; the iovecs (libc's `struct iovec`, the layout librbd's
        // header declares) and the guest memory behind them stay valid until the completion
        // (the caller's guarantee); lengths are bounded by the parser.
        let ret = unsafe {
            match op {
                Op::Transfer {
                    write,
                    iovecs,
                    next,
                    offset,
                    ..
                } => {
                    let iov = iovecs.0.get(*next..).unwrap_or_default();
                    let count = libc::c_int::try_from(iov.len()).unwrap_or(libc::c_int::MAX);
                    let ptr = iov.as_ptr().cast::<rbd::iovec>();
                    if *write {
                        rbd::rbd_aio_writev(image, ptr, count, *offset, completion)
                    } else {
                        rbd::rbd_aio_readv(image, ptr, count, *offset, completion)
                    }
                }
                Op::Flush => rbd::rbd_aio_flush(image, completion),
                Op::Discard { offset, len } => {
                    rbd::rbd_aio_discard(image, *offset, *len, completion)
                }
                Op::WriteZeroes { offset, len, .. } => {
                    let len = usize::try_from(*len).unwrap_or(usize::MAX);
                    rbd::rbd_aio_write_zeroes(image, *offset, len, completion, 0, 0)
                }
            }
        };
        if ret < 0 {
            // SAFETY: the operation was refused, so the callback will not run: release the
            // completion and take the box back.
            unsafe {
                rbd::rbd_aio_release(completion);
                drop(Box::from_raw(arg));
            }
            return Err(io::Error::from_raw_os_error(-ret));
        }
        Ok(())
    }

    fn submit(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        out.append(
            &mut self
                .sink
                .done
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
    }

    fn wait_one(&mut self) -> io::Result<()> {
        if !self
            .sink
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
        {
            return Ok(());
        }
        let mut fd = libc::pollfd {
            fd: self.sink.event.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut fd, 1, -1) } < 0 {
            return Err(io::Error::last_os_error());
        }
        debug!("RBD completion while draining");
        let _ = self.sink.event.read();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_like_qemu() {
        let s = RbdSpec::parse("rbd/disk").unwrap();
        assert_eq!(
            (s.pool.as_str(), s.image.as_str(), s.snap),
            ("rbd", "disk", None)
        );
        let s =
            RbdSpec::parse("p/i@snap1:conf=/etc/c.conf:id=user:rados_osd_op_timeout=5").unwrap();
        assert_eq!(s.snap.as_deref(), Some("snap1"));
        assert_eq!(s.conf.as_deref(), Some("/etc/c.conf"));
        assert_eq!(s.id.as_deref(), Some("user"));
        assert_eq!(s.options, vec![("rados_osd_op_timeout".into(), "5".into())]);
        assert!(RbdSpec::parse("noslash").is_err());
        assert!(RbdSpec::parse("/i").is_err());
        assert!(RbdSpec::parse("p/i@").is_err());
        assert!(RbdSpec::parse("p/i:novalue").is_err());
    }
}
