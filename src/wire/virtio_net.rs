//! The virtio-net header (`struct virtio_net_hdr_v1`, virtio 1.2 §5.1.6).
//!
//! With VERSION_1 or MRG_RXBUF the header is 12 bytes and ends with `num_buffers`; a legacy
//! frontend without either uses the 10-byte form. Fields are little-endian on the wire; the
//! struct keeps them in host order with the wire's layout (`#[repr(C)]`, no padding), so on a
//! little-endian host [`NetHeader::from_bytes`] and [`NetHeader::to_bytes`] are plain copies.

use virtio_bindings::virtio_net as vn;

/// Size of the header with `num_buffers`.
pub const HEADER_LEN: usize = 12;
/// Size of the legacy header without `num_buffers`.
pub const LEGACY_HEADER_LEN: usize = 10;

/// `flags`: the checksum from `csum_start` on is still to be computed.
pub const F_NEEDS_CSUM: u8 = vn::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
/// `flags`: the checksums were verified.
pub const F_DATA_VALID: u8 = vn::VIRTIO_NET_HDR_F_DATA_VALID as u8;
/// `flags`: RSC information in `csum_start`/`csum_offset` (never used by vnic).
pub const F_RSC_INFO: u8 = vn::VIRTIO_NET_HDR_F_RSC_INFO as u8;
/// `gso_type`: no segmentation job.
pub const GSO_NONE: u8 = vn::VIRTIO_NET_HDR_GSO_NONE as u8;

/// `struct virtio_net_hdr_v1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

const _: () = assert!(std::mem::size_of::<NetHeader>() == HEADER_LEN);

impl NetHeader {
    #[inline]
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        NetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }

    #[inline]
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_the_kernels() {
        use std::mem::{offset_of, size_of};
        assert_eq!(size_of::<NetHeader>(), size_of::<vn::virtio_net_hdr_v1>());
        assert_eq!(offset_of!(NetHeader, hdr_len), 2);
        assert_eq!(offset_of!(NetHeader, csum_start), 6);
        assert_eq!(offset_of!(NetHeader, num_buffers), 10);
    }

    #[test]
    fn little_endian_on_the_wire() {
        let h = NetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: 4,
            hdr_len: 0x0102,
            gso_size: 1448,
            csum_start: 54,
            csum_offset: 16,
            num_buffers: 3,
        };
        let b = h.to_bytes();
        assert_eq!(&b[..4], &[1, 4, 0x02, 0x01]);
        assert_eq!(NetHeader::from_bytes(&b), h);
    }
}
