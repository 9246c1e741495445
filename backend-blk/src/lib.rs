//! vhost-user-blk back-end daemon serving virtio-blk with io_uring
