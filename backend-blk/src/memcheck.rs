//! Checks of a memory table the front-end handed over (VHOST_USER_SET_MEM_TABLE,
//! VHOST_USER_ADD_MEM_REG): a region mapped past the end of its file would raise SIGBUS on the
//! first access there, so such a table is refused.

use std::io;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::worker::GuestRam;

/// Fails if a region backed by a regular file (memfd, tmpfs, hugetlbfs) reaches past the end
/// of that file. Regions on other files (a DAX device reports length 0) are not checked.
///
/// # Errors
/// `InvalidInput` naming the region, or the error of reading the file's metadata.
pub fn check_region_files(mem: &GuestRam) -> io::Result<()> {
    for region in mem.iter() {
        let Some(file_offset) = region.file_offset() else {
            continue;
        };
        let meta = file_offset.file().metadata()?;
        let end = file_offset.start().checked_add(region.len());
        if meta.is_file() && end.is_none_or(|end| end > meta.len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "memory region at guest address {:#x} ({} bytes from file offset {}) ends \
                     past its file ({} bytes)",
                    region.start_addr().0,
                    region.len(),
                    file_offset.start(),
                    meta.len()
                ),
            ));
        }
    }
    Ok(())
}
