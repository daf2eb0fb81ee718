//! RX steering: which of a port's RX queues receives a frame.
//!
//! A frame's flow hash and class are computed once, with the rest of its metadata
//! (`FrameMeta`), where it enters vnic; each destination then maps a key onto its own enabled
//! RX queues, so one flow (one Homa RPC, one Open-MX endpoint) always lands on one queue (no
//! reordering) and many of them spread over all the queues. The key is the port's
//! `steer=` policy ([`SteerPolicy`]): the flow hash, a Homa packet's RPC id, an Open-MX
//! packet's destination endpoint (endpoint `e` on the `e mod n`-th of `n` queues, as Myri-10G
//! firmware did), or by what the frame is (`auto`, the default). Without their own keys all
//! of one host's Homa packets (no ports the flow hash sees) and all Open-MX packets (not IP)
//! would share one queue.

use crate::config::SteerPolicy;
use crate::frame::class::{OpenMxInfo, Transport};
use crate::frame::Frame;

/// The key `policy` spreads `frame` by.
#[inline]
fn steering_key(policy: SteerPolicy, frame: &Frame) -> u32 {
    use SteerPolicy::{Auto, Homa, OpenMx};
    match (policy, frame.meta.class.transport) {
        (Homa | Auto, Transport::Homa(h)) => rpc_key(h.rpc_id),
        (
            OpenMx | Auto,
            Transport::OpenMx(OpenMxInfo {
                dst_endpoint: Some(ep),
                ..
            }),
        ) => u32::from(ep),
        _ => frame.meta.flow_hash,
    }
}

/// The RX queue `policy` picks for `frame` among the enabled ones (`enabled`: bit i = pair i).
#[inline]
pub fn select(policy: SteerPolicy, frame: &Frame, enabled: u32) -> Option<usize> {
    nth_enabled(enabled, steering_key(policy, frame))
}

/// A Homa RPC's key: its id without the low bit (which only says who sent the packet), mixed
/// so that consecutive ids (Homa hands them out in steps of 2) spread over any queue count.
#[inline]
fn rpc_key(id: u64) -> u32 {
    let mut x = (id >> 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 32;
    x as u32
}

/// The `hash % count`-th set bit of `enabled`, or None if no bit is set.
#[inline]
pub fn nth_enabled(enabled: u32, hash: u32) -> Option<usize> {
    let count = enabled.count_ones();
    if count == 0 {
        return None;
    }
    // Per frame: no division where the count is a power of two (1, 2, 4, 8, 16 queues), the
    // same result as `%` there.
    let mut n = if count.is_power_of_two() {
        hash & (count - 1)
    } else {
        hash % count
    };
    let mut bits = enabled;
    loop {
        let q = bits.trailing_zeros();
        if n == 0 {
            return Some(q as usize);
        }
        n -= 1;
        bits &= bits - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::meta::FrameMeta;
    use etherparse::PacketBuilder;
    use std::collections::HashSet;

    /// The flow hash as parsed at entry.
    fn flow_hash(data: &[u8]) -> u32 {
        FrameMeta::parse(data).flow_hash
    }

    fn udp(sport: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(sport, 9);
        let mut v = Vec::new();
        b.write(&mut v, &[0u8; 8]).unwrap();
        v
    }

    #[test]
    fn nth_enabled_picks_only_enabled_queues() {
        assert_eq!(nth_enabled(0, 7), None);
        assert_eq!(nth_enabled(0b1010, 0), Some(1));
        assert_eq!(nth_enabled(0b1010, 1), Some(3));
        assert_eq!(nth_enabled(0b1010, 2), Some(1));
    }

    #[test]
    fn same_flow_same_hash_and_flows_spread() {
        assert_eq!(flow_hash(&udp(1000)), flow_hash(&udp(1000)));
        let mut seen = [false; 4];
        for sport in 1000..1064 {
            seen[nth_enabled(0b1111, flow_hash(&udp(sport))).unwrap()] = true;
        }
        assert!(seen.iter().all(|s| *s), "64 flows must reach all 4 queues");
    }

    fn frame_of(data: Vec<u8>) -> Frame {
        let mut f = Frame::with_data(data, Default::default());
        let buf = &mut *f;
        buf.meta
            .parse_and_classify(&buf.data, crate::wire::openmx::DEFAULT_ETHERTYPE);
        f
    }

    fn homa(rpc_id: u64) -> Frame {
        use vnic_testdriver::frames::*;
        frame_of(homa_frame(
            mac(2),
            mac(1),
            HomaWire::default(),
            HOMA_GRANT,
            rpc_id,
            0,
            0,
        ))
    }

    fn omx(endpoint: u8) -> Frame {
        use vnic_testdriver::frames::*;
        frame_of(openmx_frame(
            mac(2),
            mac(1),
            OMX_ETHERTYPE,
            OMX_TINY,
            endpoint,
            None,
            40,
        ))
    }

    #[test]
    fn homa_rpcs_spread_and_each_stays_on_one_queue() {
        for policy in [SteerPolicy::Homa, SteerPolicy::Auto] {
            let mut seen = [false; 4];
            for id in (0..64u64).map(|i| 1000 + 2 * i) {
                let q = select(policy, &homa(id), 0b1111).unwrap();
                // Both directions of one RPC (the low bit) and every packet: one queue.
                assert_eq!(select(policy, &homa(id | 1), 0b1111), Some(q));
                seen[q] = true;
            }
            assert!(
                seen.iter().all(|s| *s),
                "{policy:?}: 64 RPCs reach all 4 queues"
            );
        }
        // By flow, one host's Homa packets all share a queue.
        let qs: HashSet<_> = (0..64u64)
            .map(|i| select(SteerPolicy::Flow, &homa(1000 + 2 * i), 0b1111))
            .collect();
        assert_eq!(qs.len(), 1);
        assert_eq!(
            select(SteerPolicy::OpenMx, &homa(7), 0b1111),
            select(SteerPolicy::Flow, &homa(9), 0b1111)
        );
    }

    #[test]
    fn openmx_endpoints_map_onto_queues_in_turn() {
        for policy in [SteerPolicy::OpenMx, SteerPolicy::Auto] {
            for ep in 0..8u8 {
                assert_eq!(select(policy, &omx(ep), 0b1111), Some(ep as usize % 4));
                // Over the enabled queues only.
                assert_eq!(
                    select(policy, &omx(ep), 0b1010),
                    Some([1, 3][ep as usize % 2])
                );
            }
        }
        let qs: HashSet<_> = (0..8u8)
            .map(|ep| select(SteerPolicy::Homa, &omx(ep), 0b1111))
            .collect();
        assert_eq!(qs.len(), 1, "not by endpoint unless asked");
    }

    #[test]
    fn plain_frames_go_by_flow_under_every_policy() {
        for sport in 1000..1016 {
            let f = frame_of(udp(sport));
            let q = select(SteerPolicy::Flow, &f, 0b1111);
            for policy in [SteerPolicy::Homa, SteerPolicy::OpenMx, SteerPolicy::Auto] {
                assert_eq!(select(policy, &f, 0b1111), q);
            }
        }
    }

    #[test]
    fn garbage_does_not_panic() {
        for len in 0..64 {
            flow_hash(&vec![0x45; len]);
        }
    }
}
