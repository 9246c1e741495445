//! guest-side virtio driver core and a vhost-user front-end host that runs it without a VM
