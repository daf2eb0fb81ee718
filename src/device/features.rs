//! Feature bits: what vnic offers a frontend, and names for `vnic stats`.
//!
//! Offload bits are not offered yet: a bit is offered only once it is honoured.

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// VHOST_USER_F_PROTOCOL_FEATURES: the frontend may ask for protocol features.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;

pub const fn bit(b: u32) -> u64 {
    1 << b
}

/// Every virtio feature vnic offers.
pub const OFFERED: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_MTU)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MQ)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_RING_F_INDIRECT_DESC)
    | bit(VIRTIO_NET_F_SPEED_DUPLEX)
    | bit(VHOST_USER_F_PROTOCOL_FEATURES);

/// Protocol features offered (REPLY_ACK is added by vhost-user-backend).
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::RESET_DEVICE
}

const NAMES: &[(u32, &str)] = &[
    (VIRTIO_NET_F_CSUM, "CSUM"),
    (VIRTIO_NET_F_GUEST_CSUM, "GUEST_CSUM"),
    (VIRTIO_NET_F_MTU, "MTU"),
    (VIRTIO_NET_F_MAC, "MAC"),
    (VIRTIO_NET_F_GUEST_TSO4, "GUEST_TSO4"),
    (VIRTIO_NET_F_GUEST_TSO6, "GUEST_TSO6"),
    (VIRTIO_NET_F_HOST_TSO4, "HOST_TSO4"),
    (VIRTIO_NET_F_HOST_TSO6, "HOST_TSO6"),
    (VIRTIO_NET_F_MRG_RXBUF, "MRG_RXBUF"),
    (VIRTIO_NET_F_STATUS, "STATUS"),
    (VIRTIO_NET_F_CTRL_VQ, "CTRL_VQ"),
    (VIRTIO_NET_F_MQ, "MQ"),
    (VIRTIO_RING_F_INDIRECT_DESC, "INDIRECT_DESC"),
    (VIRTIO_RING_F_EVENT_IDX, "EVENT_IDX"),
    (VHOST_USER_F_PROTOCOL_FEATURES, "PROTOCOL_FEATURES"),
    (VIRTIO_F_VERSION_1, "VERSION_1"),
    (VIRTIO_NET_F_SPEED_DUPLEX, "SPEED_DUPLEX"),
];

/// Names of the set bits, known ones by name and others as `bit<N>`.
pub fn names(features: u64) -> Vec<String> {
    (0..64u32)
        .filter(|b| features & bit(*b) != 0)
        .map(|b| match NAMES.iter().find(|(n, _)| *n == b) {
            Some((_, name)) => name.to_string(),
            None => format!("bit{b}"),
        })
        .collect()
}

pub fn has(features: u64, b: u32) -> bool {
    features & bit(b) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offered_set_is_the_documented_one_and_has_no_offload() {
        let n = names(OFFERED);
        for want in [
            "VERSION_1",
            "MAC",
            "MTU",
            "STATUS",
            "MQ",
            "MRG_RXBUF",
            "EVENT_IDX",
            "INDIRECT_DESC",
            "SPEED_DUPLEX",
        ] {
            assert!(n.iter().any(|x| x == want), "{want} missing");
        }
        assert!(!has(OFFERED, VIRTIO_NET_F_CSUM) && !has(OFFERED, VIRTIO_NET_F_HOST_TSO4));
        assert!(!has(OFFERED, 34), "packed ring must not be offered");
    }
}
