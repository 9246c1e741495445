//! XenStore-compatible hierarchical configuration store speaking xs_wire
