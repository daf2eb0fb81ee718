//! The virtio-net device configuration space (virtio spec 5.1.4, `struct virtio_net_config`).

use crate::config::PortConfig;

/// Bytes of config space vnic serves: up to and including `supported_hash_types`.
pub const CONFIG_LEN: usize = 24;
const VIRTIO_NET_S_LINK_UP: u16 = 1;
const DUPLEX_FULL: u8 = 1;

/// The config space of a port with `link_up` as given.
pub fn config_bytes(port: &PortConfig, link_up: bool) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    c[0..6].copy_from_slice(&port.mac);
    let status = if link_up { VIRTIO_NET_S_LINK_UP } else { 0 };
    c[6..8].copy_from_slice(&status.to_le_bytes());
    c[8..10].copy_from_slice(&port.queues.to_le_bytes());
    c[10..12].copy_from_slice(&port.mtu.to_le_bytes());
    c[12..16].copy_from_slice(&port.speed.to_le_bytes());
    c[16] = DUPLEX_FULL;
    // rss_max_key_size, rss_max_indirection_table_length, supported_hash_types: 0 (no RSS).
    c
}

/// The `size` bytes at `offset`, or nothing if the range is outside the config space (a
/// frontend asking for that gets an empty answer, not a panic).
pub fn read(space: &[u8; CONFIG_LEN], offset: u32, size: u32) -> Vec<u8> {
    let start = offset as usize;
    match start.checked_add(size as usize) {
        Some(end) if end <= CONFIG_LEN => space[start..end].to_vec(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_reads_are_empty() {
        let space = [7u8; CONFIG_LEN];
        assert_eq!(read(&space, 0, 24).len(), 24);
        assert!(read(&space, 20, 8).is_empty());
        assert!(read(&space, u32::MAX, 2).is_empty());
    }
}
