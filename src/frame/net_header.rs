//! The virtio-net header that precedes every frame on a virtqueue: the `#[repr(C)]`
//! `virtio_net_hdr_v1` of [`crate::wire::virtio_net`], under the names the datapath uses.

pub use crate::wire::virtio_net::{
    NetHeader, F_DATA_VALID, F_NEEDS_CSUM, F_RSC_INFO, GSO_NONE, HEADER_LEN, LEGACY_HEADER_LEN,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = NetHeader {
            flags: 1,
            gso_type: 3,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 2,
        };
        assert_eq!(NetHeader::from_bytes(&h.to_bytes()), h);
        assert_eq!(h.to_bytes()[10], 2);
    }
}
