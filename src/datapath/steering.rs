//! RX steering: which of a port's RX queues receives a frame.
//!
//! A frame's flow hash is computed once, where it enters vnic; each destination then maps the
//! hash onto its own enabled RX queues, so one flow always lands on one queue (no reordering)
//! and many flows spread over all of them. [`RxSteering`] is the seam where other policies
//! (Homa RPC ids, Open-MX endpoints) plug in.

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};

use super::frame::Frame;

/// Chooses an RX queue for a frame among the enabled ones (`enabled`: bit i = pair i).
pub trait RxSteering: Send + Sync {
    fn select(&self, frame: &Frame, enabled: u32) -> Option<usize>;
}

/// Spreads flows over the enabled queues by their flow hash.
pub struct FlowHashSteering;

impl RxSteering for FlowHashSteering {
    #[inline]
    fn select(&self, frame: &Frame, enabled: u32) -> Option<usize> {
        nth_enabled(enabled, frame.flow_hash)
    }
}

/// The `hash % count`-th set bit of `enabled`, or None if no bit is set.
#[inline]
pub fn nth_enabled(enabled: u32, hash: u32) -> Option<usize> {
    let count = enabled.count_ones();
    if count == 0 {
        return None;
    }
    let mut n = hash % count;
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

/// FNV-1a: a tiny, stable, well-spread hash over a handful of header bytes. Written here
/// because the input is a few dozen bytes and steering only needs spread, not secrecy.
struct Fnv(u32);

impl Fnv {
    fn new() -> Self {
        Fnv(0x811c_9dc5)
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ x as u32).wrapping_mul(0x0100_0193);
        }
    }
}

/// Hash of a frame's flow: addresses, protocol and ports for IP; MACs and EtherType otherwise.
/// Never fails: a frame that does not parse hashes by its Ethernet header.
pub fn flow_hash(data: &[u8]) -> u32 {
    let mut h = Fnv::new();
    let parsed = LaxSlicedPacket::from_ethernet(data).ok();
    let net = parsed.as_ref().and_then(|p| p.net.as_ref());
    match net {
        Some(LaxNetSlice::Ipv4(ip)) => {
            let hdr = ip.header();
            h.bytes(&hdr.source());
            h.bytes(&hdr.destination());
            h.bytes(&[hdr.protocol().0]);
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            let hdr = ip.header();
            h.bytes(&hdr.source());
            h.bytes(&hdr.destination());
            h.bytes(&[hdr.next_header().0]);
        }
        _ => h.bytes(&data[..data.len().min(14)]),
    }
    match parsed.as_ref().and_then(|p| p.transport.as_ref()) {
        Some(TransportSlice::Tcp(t)) => {
            h.bytes(&t.source_port().to_be_bytes());
            h.bytes(&t.destination_port().to_be_bytes());
        }
        Some(TransportSlice::Udp(u)) => {
            h.bytes(&u.source_port().to_be_bytes());
            h.bytes(&u.destination_port().to_be_bytes());
        }
        _ => {}
    }
    // Final avalanche so that `hash % small_n` uses all input bits.
    let mut x = h.0;
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

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
