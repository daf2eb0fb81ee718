//! RX steering: which of a port's RX queues receives a frame.
//!
//! A frame's flow hash is computed once, with the rest of its metadata (`FrameMeta`), where it
//! enters vnic; each destination then maps the hash onto its own enabled RX queues, so one
//! flow always lands on one queue (no reordering) and many flows spread over all of them. [`RxSteering`] is the seam where other policies
//! (Homa RPC ids, Open-MX endpoints) plug in.

use crate::frame::Frame;

/// Chooses an RX queue for a frame among the enabled ones (`enabled`: bit i = pair i).
pub trait RxSteering: Send + Sync {
    fn select(&self, frame: &Frame, enabled: u32) -> Option<usize>;
}

/// Spreads flows over the enabled queues by their flow hash.
pub struct FlowHashSteering;

impl RxSteering for FlowHashSteering {
    #[inline]
    fn select(&self, frame: &Frame, enabled: u32) -> Option<usize> {
        nth_enabled(enabled, frame.meta.flow_hash)
    }
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

    #[test]
    fn garbage_does_not_panic() {
        for len in 0..64 {
            flow_hash(&vec![0x45; len]);
        }
    }
}
