//! Frames as a guest driver hands them to its NIC, for tests and benchmarks (the one set of
//! frame builders): raw test frames tagged with a sequence number, UDP flows, and TCP
//! segmentation jobs with a partial checksum, the way Linux sends them with TSO.
//!
//! The pseudo-header sum is computed here independently of vnic's own offload code, so tests
//! that use these frames check vnic against a second implementation.

use etherparse::PacketBuilder;

pub const F_NEEDS_CSUM: u8 = 1;
pub const F_DATA_VALID: u8 = 2;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const BCAST: [u8; 6] = [0xff; 6];
/// IEEE "local experimental" EtherType: no host stack reacts to it.
pub const ETH_TEST: u16 = 0x88b5;

/// A raw Ethernet frame with the test EtherType, `len` bytes long, payload tagged by `seq`.
pub fn frame(dst: [u8; 6], src: [u8; 6], len: usize, seq: u32) -> Vec<u8> {
    assert!(len >= 18);
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETH_TEST.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    while f.len() < len {
        f.push((f.len() as u32 ^ seq) as u8);
    }
    f
}

/// The `seq` tag of a frame built by [`frame`].
pub fn seq_of(f: &[u8]) -> u32 {
    u32::from_be_bytes(f[14..18].try_into().unwrap())
}

/// A UDP/IPv4 frame of flow `sport -> 9`, `payload` bytes of payload.
pub fn udp_frame(dst: [u8; 6], src: [u8; 6], sport: u16, payload: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src, dst)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(sport, 9);
    let mut v = Vec::new();
    b.write(&mut v, &vec![0xab; payload]).unwrap();
    v
}

pub fn mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, n]
}

/// Folded (not complemented) ones'-complement sum of big-endian 16-bit words.
pub fn ones_sum(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// A complete TCP/IPv4 frame (ACK set, PSH if asked) from 10.0.0.1:40000 to 10.0.0.2:5201.
pub fn tcp4(src: [u8; 6], dst: [u8; 6], seq: u32, payload: &[u8], psh: bool) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(src, dst)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(40000, 5201, seq, 64000)
        .ack(1);
    if psh {
        b = b.psh();
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("build TCP/IPv4 frame");
    v
}

/// A complete TCP/IPv6 frame from fdfd::.. to fefe::.., port 40000 to 5201.
pub fn tcp6(src: [u8; 6], dst: [u8; 6], seq: u32, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src, dst)
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .tcp(40000, 5201, seq, 64000)
        .ack(1);
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("build TCP/IPv6 frame");
    v
}

/// Turns a complete, untagged TCP frame (IPv4 without options, or IPv6 without extension
/// headers) into a segmentation job of `mss`-byte segments: the checksum field holds the
/// pseudo-header sum and the header asks for NEEDS_CSUM. Returns (virtio-net header, frame).
pub fn tso_job(mut frame: Vec<u8>, v6: bool, mss: u16) -> ([u8; 12], Vec<u8>) {
    let l3 = 14usize;
    let l4 = l3 + if v6 { 40 } else { 20 };
    let tcp_len = frame.len() - l4;
    let pseudo = if v6 {
        let acc = ones_sum(&frame[l3 + 8..l3 + 40], 0);
        ones_sum(&[0, 6], ones_sum(&(tcp_len as u32).to_be_bytes(), acc))
    } else {
        let acc = ones_sum(&frame[l3 + 12..l3 + 20], 0);
        ones_sum(&[0, 6], ones_sum(&(tcp_len as u16).to_be_bytes(), acc))
    };
    frame[l4 + 16..l4 + 18].copy_from_slice(&(pseudo as u16).to_be_bytes());
    let tcp_hdr = ((frame[l4 + 12] >> 4) as usize) * 4;
    let mut h = [0u8; 12];
    h[0] = F_NEEDS_CSUM;
    h[1] = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
    h[2..4].copy_from_slice(&((l4 + tcp_hdr) as u16).to_le_bytes());
    h[4..6].copy_from_slice(&mss.to_le_bytes());
    h[6..8].copy_from_slice(&(l4 as u16).to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
    (h, frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_checksum_field_completes_to_the_real_checksum() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let full = tcp4([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], 7, &payload, false);
        let (h, job) = tso_job(full.clone(), false, 1448);
        // Completing the partial checksum over the TCP segment gives etherparse's checksum.
        let start = u16::from_le_bytes([h[6], h[7]]) as usize;
        let done = !(ones_sum(&job[start..], 0) as u16);
        assert_eq!(done.to_be_bytes(), [full[start + 16], full[start + 17]]);
    }
}
