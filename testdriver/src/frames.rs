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
/// headers; or a Homa one, which claims TCP segmentation) into a segmentation job of
/// `mss`-byte segments: the checksum field holds the pseudo-header sum and the header asks for
/// NEEDS_CSUM. Returns (virtio-net header, frame).
pub fn tso_job(mut frame: Vec<u8>, v6: bool, mss: u16) -> ([u8; 12], Vec<u8>) {
    let l3 = 14usize;
    let l4 = l3 + if v6 { 40 } else { 20 };
    let tcp_len = frame.len() - l4;
    let proto = frame[if v6 { l3 + 6 } else { l3 + 9 }];
    let pseudo = if v6 {
        let acc = ones_sum(&frame[l3 + 8..l3 + 40], 0);
        ones_sum(&[0, proto], ones_sum(&(tcp_len as u32).to_be_bytes(), acc))
    } else {
        let acc = ones_sum(&frame[l3 + 12..l3 + 20], 0);
        ones_sum(&[0, proto], ones_sum(&(tcp_len as u16).to_be_bytes(), acc))
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

/// How a Homa test packet is carried (see [`homa_frame`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct HomaWire {
    pub v6: bool,
    /// One 802.1Q tag (VLAN 7, PCP 0).
    pub vlan: bool,
    /// IPv6 only: a destination-options extension header before the Homa header.
    pub v6_dest_opts: bool,
    /// Sent TCP-shaped (IP protocol 6, Homa's flags and urgent pointer) instead of as 146.
    pub over_tcp: bool,
    /// The IP precedence (TOS / traffic class >> 5) Homa gives the packet.
    pub precedence: u8,
}

/// Homa packet types (HomaModule).
pub const HOMA_DATA: u8 = 0x10;
pub const HOMA_GRANT: u8 = 0x11;
pub const HOMA_RESEND: u8 = 0x12;

/// A Homa packet of type `kind` for RPC `rpc_id`, laid out by hand from HomaModule's header
/// (independently of vnic's `wire::homa`): DATA carries `payload` bytes of a message
/// `message_length` long. Ports 4000 -> 99, from 10.0.0.1 (or fd00::1) to 10.0.0.2 (fd00::2).
pub fn homa_frame(
    dst: [u8; 6],
    src: [u8; 6],
    wire: HomaWire,
    kind: u8,
    rpc_id: u64,
    message_length: u32,
    payload: usize,
) -> Vec<u8> {
    let mut l4 = homa_header(kind, rpc_id, message_length);
    l4.extend((0..payload).map(|i| i as u8));
    homa_packet(dst, src, wire, &l4)
}

/// The Homa header of a packet of type `kind` (DATA: `seg.offset` -1, sequence 0).
fn homa_header(kind: u8, rpc_id: u64, message_length: u32) -> Vec<u8> {
    let header_len = match kind {
        0x10 => 56,
        0x11 => 33,
        0x12 => 37,
        0x15 => 62,
        0x18 => 80,
        _ => 28,
    };
    let mut h = vec![0u8; header_len];
    h[0..2].copy_from_slice(&4000u16.to_be_bytes());
    h[2..4].copy_from_slice(&99u16.to_be_bytes());
    h[11] = kind;
    h[12] = if kind == 0x10 { 14 << 4 } else { 5 << 4 };
    h[13] = 0x06;
    h[18..20].copy_from_slice(&0xb97du16.to_be_bytes());
    h[20..28].copy_from_slice(&rpc_id.to_be_bytes());
    if kind == 0x10 {
        h[28..32].copy_from_slice(&message_length.to_be_bytes());
        h[52..56].copy_from_slice(&u32::MAX.to_be_bytes());
    }
    h
}

/// Part of a Homa message, as one DATA segmentation job carries it (see [`homa_gso_job`]).
#[derive(Clone, Copy, Debug)]
pub struct HomaJob<'a> {
    pub rpc_id: u64,
    pub message_length: u32,
    /// Where `data` starts in the message.
    pub offset: u32,
    pub data: &'a [u8],
    /// Bytes of the message per packet once cut (1424 for IPv4 at MTU 1500).
    pub max_seg_data: usize,
}

/// A Homa DATA segmentation job as HomaModule builds one (`homa_tx_data_pkt_alloc`). Native
/// (IP protocol 146): a 52-byte header (`doff` 13) and every chunk opening with its own
/// `seg.offset`, `gso_size` = `max_seg_data` + 4. Over TCP: the 56-byte header with
/// `seg.offset` = -1 and the offset in `sequence`, advanced per segment like TCP's,
/// `gso_size` = `max_seg_data`. Returns (frame, gso_size); [`tso_job`] makes it a job.
pub fn homa_gso_job(dst: [u8; 6], src: [u8; 6], wire: HomaWire, job: &HomaJob) -> (Vec<u8>, u16) {
    let mut l4 = homa_header(0x10, job.rpc_id, job.message_length);
    l4[4..8].copy_from_slice(&job.offset.to_be_bytes());
    let gso_size = if wire.over_tcp {
        l4.extend_from_slice(job.data);
        job.max_seg_data
    } else {
        l4[12] = 13 << 4;
        l4.truncate(52);
        for (i, chunk) in job.data.chunks(job.max_seg_data).enumerate() {
            let at = job.offset + (i * job.max_seg_data) as u32;
            l4.extend_from_slice(&at.to_be_bytes());
            l4.extend_from_slice(chunk);
        }
        job.max_seg_data + 4
    };
    (homa_packet(dst, src, wire, &l4), gso_size as u16)
}

/// What a Homa receiver (HomaModule's `homa_gro_receive` / `homa_data_pkt`) takes from a DATA
/// packet carried as [`homa_frame`] carries it: (RPC id, offset in the message, the data). The
/// offset is `seg.offset`, or the sequence where that is -1. None if it is not a DATA packet
/// whose IP length is right.
pub fn homa_data_of(frame: &[u8]) -> Option<(u64, u32, Vec<u8>)> {
    let mut l3 = 14;
    if frame.get(12..14)? == [0x81, 0x00] {
        l3 += 4;
    }
    let (l4, end) = match frame.get(l3)? >> 4 {
        4 => {
            let ihl = (frame[l3] & 0x0f) as usize * 4;
            let total = u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]]) as usize;
            (l3 + ihl, l3 + total)
        }
        6 => {
            let payload = u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]) as usize;
            let ext = if frame[l3 + 6] == 60 { 8 } else { 0 };
            (l3 + 40 + ext, l3 + 40 + payload)
        }
        _ => return None,
    };
    if end != frame.len() || frame.get(l4 + 11) != Some(&0x10) || end < l4 + 56 {
        return None;
    }
    let h = &frame[l4..];
    let be32 = |at: usize| u32::from_be_bytes(h[at..at + 4].try_into().unwrap());
    let rpc = u64::from_be_bytes(h[20..28].try_into().unwrap());
    let offset = match be32(52) {
        u32::MAX => be32(4),
        at => at,
    };
    Some((rpc, offset, frame[l4 + 56..end].to_vec()))
}

/// `l4` (a Homa header and what follows it) carried in Ethernet and IP as `wire` says.
fn homa_packet(dst: [u8; 6], src: [u8; 6], wire: HomaWire, l4: &[u8]) -> Vec<u8> {
    let proto = if wire.over_tcp { 6 } else { 146 };
    let tos = wire.precedence << 5;
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if wire.vlan {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    }
    if wire.v6 {
        let mut ext = Vec::new();
        let mut first = proto;
        if wire.v6_dest_opts {
            ext = vec![proto, 0, 1, 4, 0, 0, 0, 0];
            first = 60;
        }
        f.extend_from_slice(&[0x86, 0xdd, 0x60 | (tos >> 4), tos << 4, 0, 0]);
        f.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[first, 64]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&ext);
    } else {
        let mut ip = vec![0x45, tos];
        ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        let c = !(ones_sum(&ip, 0) as u16);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&ip);
    }
    f.extend_from_slice(l4);
    f
}

/// Open-MX's EtherType.
pub const OMX_ETHERTYPE: u16 = 0x86df;
/// Open-MX packet types (`omx_wire.h`).
pub const OMX_TINY: u8 = 37;
pub const OMX_MEDIUM_FRAG: u8 = 39;
pub const OMX_PULL_REPLY: u8 = 42;

/// An Open-MX frame of EtherType `ethertype`: packet type `ptype` for endpoint `dst_ep`
/// (PULL_REPLY: in `dst_magic`), the header padded to `len` bytes after the EtherType. For a
/// medium fragment, `medium` is (message length, fragment seqnum, pipeline, fragment length).
pub fn openmx_frame(
    dst: [u8; 6],
    src: [u8; 6],
    ethertype: u16,
    ptype: u8,
    dst_ep: u8,
    medium: Option<(u32, u8, u8, u16)>,
    len: usize,
) -> Vec<u8> {
    let mut h = vec![0u8; len.max(32)];
    h[2] = ptype;
    if ptype == OMX_PULL_REPLY {
        h[14..18].copy_from_slice(&(u32::from(dst_ep) ^ 0x2107_1980).to_be_bytes());
    } else {
        h[3] = dst_ep;
    }
    if let Some((msg_len, seq, pipeline, frag_len)) = medium {
        h[6..10].copy_from_slice(&msg_len.to_be_bytes());
        h[26..28].copy_from_slice(&frag_len.to_be_bytes());
        h[28] = seq;
        h[29] = pipeline;
    }
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(&h);
    f
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
