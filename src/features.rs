//! Feature bits: what vnic offers a frontend, and names for `vnic stats`.
//!
//! Every port offers [`BASE`]. Offload bits are switchable per port (`csum=off`, ...) and offered
//! only when enabled, honoured by the datapath ([`HONOURED_OFFLOADS`]) and their prerequisites
//! are offered too (virtio 1.2, 5.1.3.1).

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// VHOST_USER_F_PROTOCOL_FEATURES: the frontend may ask for protocol features.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;

pub const fn bit(b: u32) -> u64 {
    1 << b
}

/// The features every port offers.
pub const BASE: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_MTU)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MQ)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_RING_F_INDIRECT_DESC)
    | bit(VIRTIO_NET_F_SPEED_DUPLEX)
    | bit(VHOST_USER_F_PROTOCOL_FEATURES);

/// The ring formats a port offers unless switched off (`packed=off`, `in_order=off`). Both
/// are vnic's own ring code (`virtq::packed`, `RingConfig::batch_used`). IN_ORDER costs
/// nothing: the datapath completes every chain in the order it was made available (TX and RX,
/// dropped chains too); a frontend that knows it (DPDK's virtio_user) takes its cheaper
/// in-order path, and vnic then completes a TX burst with one used entry.
pub const RING_PACKED: u64 = bit(VIRTIO_F_RING_PACKED);
pub const IN_ORDER: u64 = bit(VIRTIO_F_IN_ORDER);

/// Offload features, with the port key that switches each off (`KEY=off`).
pub const OFFLOADS: &[(u32, &str)] = &[
    (VIRTIO_NET_F_CSUM, "csum"),
    (VIRTIO_NET_F_GUEST_CSUM, "guest_csum"),
    (VIRTIO_NET_F_HOST_TSO4, "host_tso4"),
    (VIRTIO_NET_F_HOST_TSO6, "host_tso6"),
    (VIRTIO_NET_F_HOST_ECN, "host_ecn"),
    (VIRTIO_NET_F_HOST_USO, "host_uso"),
    (VIRTIO_NET_F_GUEST_TSO4, "guest_tso4"),
    (VIRTIO_NET_F_GUEST_TSO6, "guest_tso6"),
    (VIRTIO_NET_F_GUEST_ECN, "guest_ecn"),
    (VIRTIO_NET_F_GUEST_USO4, "guest_uso4"),
    (VIRTIO_NET_F_GUEST_USO6, "guest_uso6"),
];

/// All offload bits.
pub const ALL_OFFLOADS: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_HOST_ECN)
    | bit(VIRTIO_NET_F_HOST_USO)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_ECN)
    | bit(VIRTIO_NET_F_GUEST_USO4)
    | bit(VIRTIO_NET_F_GUEST_USO6);

/// Offload bits the datapath honours today; the others are never offered.
pub const HONOURED_OFFLOADS: u64 = ALL_OFFLOADS;

/// Each offload bit and the bits it needs (virtio 1.2, 5.1.3.1).
const PREREQUISITES: &[(u32, u64)] = &[
    (VIRTIO_NET_F_HOST_TSO4, bit(VIRTIO_NET_F_CSUM)),
    (VIRTIO_NET_F_HOST_TSO6, bit(VIRTIO_NET_F_CSUM)),
    (VIRTIO_NET_F_HOST_USO, bit(VIRTIO_NET_F_CSUM)),
    (VIRTIO_NET_F_GUEST_TSO4, bit(VIRTIO_NET_F_GUEST_CSUM)),
    (VIRTIO_NET_F_GUEST_TSO6, bit(VIRTIO_NET_F_GUEST_CSUM)),
    (VIRTIO_NET_F_GUEST_USO4, bit(VIRTIO_NET_F_GUEST_CSUM)),
    (VIRTIO_NET_F_GUEST_USO6, bit(VIRTIO_NET_F_GUEST_CSUM)),
    (
        VIRTIO_NET_F_HOST_ECN,
        bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO6),
    ),
    (
        VIRTIO_NET_F_GUEST_ECN,
        bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6),
    ),
];

/// `bits` without the offloads whose prerequisites are missing. The ECN bits need either TSO
/// bit; the others need all of theirs.
pub fn with_prerequisites(mut bits: u64) -> u64 {
    // Two passes settle chains (ECN needs TSO, which needs CSUM).
    for _ in 0..2 {
        for &(b, needs) in PREREQUISITES {
            let ecn = b == VIRTIO_NET_F_HOST_ECN || b == VIRTIO_NET_F_GUEST_ECN;
            let met = if ecn {
                bits & needs != 0
            } else {
                bits & needs == needs
            };
            if !met {
                bits &= !bit(b);
            }
        }
    }
    bits
}

/// What a port with the offloads `enabled` (a subset of [`ALL_OFFLOADS`]) and the ring formats
/// `rings` (of [`RING_PACKED`] | [`IN_ORDER`]) offers.
pub fn offered(enabled: u64, rings: u64) -> u64 {
    BASE | (rings & (RING_PACKED | IN_ORDER)) | with_prerequisites(enabled & HONOURED_OFFLOADS)
}

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
    (VIRTIO_NET_F_GUEST_ECN, "GUEST_ECN"),
    (VIRTIO_NET_F_HOST_ECN, "HOST_ECN"),
    (VIRTIO_NET_F_GUEST_UFO, "GUEST_UFO"),
    (VIRTIO_NET_F_HOST_UFO, "HOST_UFO"),
    (VIRTIO_NET_F_GUEST_USO4, "GUEST_USO4"),
    (VIRTIO_NET_F_GUEST_USO6, "GUEST_USO6"),
    (VIRTIO_NET_F_HOST_USO, "HOST_USO"),
    (VIRTIO_NET_F_MRG_RXBUF, "MRG_RXBUF"),
    (VIRTIO_NET_F_STATUS, "STATUS"),
    (VIRTIO_NET_F_CTRL_VQ, "CTRL_VQ"),
    (VIRTIO_NET_F_MQ, "MQ"),
    (VIRTIO_RING_F_INDIRECT_DESC, "INDIRECT_DESC"),
    (VIRTIO_RING_F_EVENT_IDX, "EVENT_IDX"),
    (VHOST_USER_F_PROTOCOL_FEATURES, "PROTOCOL_FEATURES"),
    (VIRTIO_F_VERSION_1, "VERSION_1"),
    (VIRTIO_F_RING_PACKED, "RING_PACKED"),
    (VIRTIO_F_IN_ORDER, "IN_ORDER"),
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
    fn base_set_is_the_documented_one_and_has_no_offload() {
        let n = names(BASE);
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
        assert!(!has(BASE, VIRTIO_NET_F_CSUM) && !has(BASE, VIRTIO_NET_F_HOST_TSO4));
        assert!(!has(BASE, 34), "packed ring must not be offered");
    }

    #[test]
    fn offloads_without_prerequisites_are_not_offered() {
        let all = with_prerequisites(ALL_OFFLOADS);
        assert_eq!(all, ALL_OFFLOADS);
        let no_csum = with_prerequisites(ALL_OFFLOADS & !bit(VIRTIO_NET_F_CSUM));
        for b in [
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_HOST_USO,
            VIRTIO_NET_F_HOST_ECN,
        ] {
            assert!(!has(no_csum, b), "bit {b} needs CSUM");
        }
        assert!(
            has(no_csum, VIRTIO_NET_F_GUEST_TSO4),
            "guest side unaffected"
        );
        let only_tso6 = with_prerequisites(
            bit(VIRTIO_NET_F_GUEST_CSUM)
                | bit(VIRTIO_NET_F_GUEST_TSO6)
                | bit(VIRTIO_NET_F_GUEST_ECN),
        );
        assert!(
            has(only_tso6, VIRTIO_NET_F_GUEST_ECN),
            "ECN needs either TSO bit"
        );
        assert_eq!(
            offered(ALL_OFFLOADS, 0) & !BASE,
            ALL_OFFLOADS & HONOURED_OFFLOADS
        );
    }
}
