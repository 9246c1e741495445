//! The network workload (stub until the net job lands).

use crate::args::{Args, NetJob};
use crate::ram::{Heap, Ram};
use crate::rt::boot_info::BootInfo;
use crate::Fail;

/// Runs one network job.
pub fn run(
    _info: &BootInfo,
    _ram: &Ram,
    _heap: &mut Heap,
    _args: &Args,
    _job: NetJob,
) -> Result<(), Fail> {
    Err(Fail::new("net jobs are not implemented", 0))
}
