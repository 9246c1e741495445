//! Xen-style event channels and shared-memory request/response rings between processes
