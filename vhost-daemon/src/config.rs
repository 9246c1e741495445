//! The configuration-space window of VHOST_USER_GET_CONFIG (vhost-user.rst): the front-end
//! names an offset and a length; both are untrusted.

/// `size` bytes of `space` from byte `offset`; bytes past the end of `space` read as zero, so
/// any offset and size are answered without panicking. `size` is capped by the vhost crate
/// (VHOST_USER_CONFIG_SIZE, 256 bytes) before it reaches a back-end.
pub fn window(space: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let start = offset as usize;
    (start..start.saturating_add(size as usize))
        .map(|i| space.get(i).copied().unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_never_panics() {
        let space = [1u8, 2, 3, 4];
        assert_eq!(window(&space, 0, 4), vec![1, 2, 3, 4]);
        assert_eq!(window(&space, 2, 4), vec![3, 4, 0, 0]);
        assert_eq!(window(&space, 4, 2), vec![0, 0]);
        assert_eq!(window(&space, u32::MAX, 3), vec![0; 3]);
        assert!(window(&space, 1, 0).is_empty());
    }
}
