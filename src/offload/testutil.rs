//! Test frames built by hand, their checksums computed with etherparse's checksum code (an
//! implementation independent of `offload::checksum`).

use etherparse::checksum::Sum16BitWords;
use etherparse::{LaxSlicedPacket, TransportSlice};

use crate::frame::net_header::{NetHeader, F_NEEDS_CSUM};
use crate::frame::Frame;

pub use crate::wire::ip::HOMA as PROTO_HOMA;
pub use crate::wire::tcp::{
    ACK as TCP_ACK, CWR as TCP_CWR, ECE as TCP_ECE, FIN as TCP_FIN, PSH as TCP_PSH, RST as TCP_RST,
    SYN as TCP_SYN, URG as TCP_URG,
};

/// One IPv6 extension header: its type and its bytes (byte 0, the next header, is filled in).
#[derive(Clone, Debug)]
pub struct Ext {
    pub kind: u8,
    pub bytes: Vec<u8>,
    /// The final destination, for a routing header with segments left.
    pub final_dst: Option<[u8; 16]>,
}

pub fn hop_by_hop() -> Ext {
    Ext {
        kind: 0,
        bytes: vec![0, 0, 1, 4, 0, 0, 0, 0],
        final_dst: None,
    }
}

pub fn dest_options() -> Ext {
    let mut bytes = vec![0, 1, 1, 12];
    bytes.resize(16, 0);
    Ext {
        kind: 60,
        bytes,
        final_dst: None,
    }
}

/// A segment routing header (type 4) with two segments, `last` being Segment List[0].
pub fn routing_srh(segments_left: u8, last: [u8; 16]) -> Ext {
    let mut bytes = vec![0, 4, 4, segments_left, 1, 0, 0, 0];
    bytes.extend_from_slice(&last);
    bytes.extend_from_slice(&[0xaa; 16]);
    Ext {
        kind: 43,
        bytes,
        final_dst: (segments_left > 0).then_some(last),
    }
}

/// A type 2 routing header (Mobile IPv6): one address, the final destination.
pub fn routing_type2(home: [u8; 16]) -> Ext {
    let mut bytes = vec![0, 2, 2, 1, 0, 0, 0, 0];
    bytes.extend_from_slice(&home);
    Ext {
        kind: 43,
        bytes,
        final_dst: Some(home),
    }
}

/// A type 0 routing header with segments left: the last address is the final destination.
pub fn routing_type0(addresses: &[[u8; 16]]) -> Ext {
    let mut bytes = vec![0, 2 * addresses.len() as u8, 0, addresses.len() as u8];
    bytes.extend_from_slice(&[0; 4]);
    for a in addresses {
        bytes.extend_from_slice(a);
    }
    Ext {
        kind: 43,
        bytes,
        final_dst: addresses.last().copied(),
    }
}

pub fn fragment(more: bool) -> Ext {
    Ext {
        kind: 44,
        bytes: vec![0, 0, 0, more as u8, 1, 2, 3, 4],
        final_dst: None,
    }
}

/// What a test frame looks like.
#[derive(Clone, Debug)]
pub struct Spec {
    pub v6: bool,
    pub vlans: usize,
    pub v4_options: Vec<u8>,
    pub v6_exts: Vec<Ext>,
    /// IP protocol of the "TCP" builder (6, or 146 for Homa-like frames).
    pub protocol: u8,
    pub tcp_flags: u8,
    pub tcp_options: Vec<u8>,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub ip_id: u16,
    pub df: bool,
    pub tos: u8,
    pub ttl: u8,
    pub src4: [u8; 4],
    pub dst4: [u8; 4],
    pub src6: [u8; 16],
    pub dst6: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            v6: false,
            vlans: 0,
            v4_options: Vec::new(),
            v6_exts: Vec::new(),
            protocol: 6,
            tcp_flags: TCP_ACK,
            tcp_options: Vec::new(),
            seq: 0xfffff000,
            ack: 77,
            window: 500,
            ip_id: 0xfffe,
            df: true,
            tos: 0,
            ttl: 64,
            src4: [10, 0, 0, 1],
            dst4: [10, 0, 0, 2],
            src6: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            dst6: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            sport: 40000,
            dport: 5201,
        }
    }
}

/// Timestamp option (with two NOPs in front), as Linux sends it.
pub fn ts_option(val: u32, ecr: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&val.to_be_bytes());
    o.extend_from_slice(&ecr.to_be_bytes());
    o
}

pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + (i >> 8) * 3 + 1) as u8).collect()
}

pub fn build_tcp(spec: &Spec, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&spec.sport.to_be_bytes());
    l4.extend_from_slice(&spec.dport.to_be_bytes());
    l4.extend_from_slice(&spec.seq.to_be_bytes());
    l4.extend_from_slice(&spec.ack.to_be_bytes());
    assert_eq!(spec.tcp_options.len() % 4, 0);
    l4.push((((20 + spec.tcp_options.len()) / 4) as u8) << 4);
    l4.push(spec.tcp_flags);
    l4.extend_from_slice(&spec.window.to_be_bytes());
    l4.extend_from_slice(&[0, 0, 0, 0]);
    l4.extend_from_slice(&spec.tcp_options);
    l4.extend_from_slice(payload);
    build(spec, spec.protocol, l4, 16)
}

pub fn build_udp(spec: &Spec, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&spec.sport.to_be_bytes());
    l4.extend_from_slice(&spec.dport.to_be_bytes());
    l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    build(spec, 17, l4, 6)
}

fn build(spec: &Spec, proto: u8, mut l4: Vec<u8>, csum_field: usize) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    for i in 0..spec.vlans {
        let tpid: u16 = if i + 1 < spec.vlans { 0x88a8 } else { 0x8100 };
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    let mut sum = Sum16BitWords::new();
    if spec.v6 {
        f.extend_from_slice(&0x86ddu16.to_be_bytes());
        let mut exts = Vec::new();
        let mut final_dst = spec.dst6;
        for (i, e) in spec.v6_exts.iter().enumerate() {
            let mut b = e.bytes.clone();
            b[0] = spec.v6_exts.get(i + 1).map_or(proto, |n| n.kind);
            exts.extend_from_slice(&b);
            if let Some(d) = e.final_dst {
                final_dst = d;
            }
        }
        let first = spec.v6_exts.first().map_or(proto, |e| e.kind);
        f.extend_from_slice(&[0x60 | (spec.tos >> 4), spec.tos << 4, 0x12, 0x34]);
        f.extend_from_slice(&((exts.len() + l4.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[first, spec.ttl]);
        f.extend_from_slice(&spec.src6);
        f.extend_from_slice(&spec.dst6);
        f.extend_from_slice(&exts);
        sum = sum
            .add_16bytes(spec.src6)
            .add_16bytes(final_dst)
            .add_4bytes((l4.len() as u32).to_be_bytes())
            .add_4bytes([0, 0, 0, proto]);
    } else {
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(spec.v4_options.len() % 4, 0);
        let ihl = 20 + spec.v4_options.len();
        let mut ip = vec![0x40 | (ihl / 4) as u8, spec.tos];
        ip.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&spec.ip_id.to_be_bytes());
        ip.extend_from_slice(&[if spec.df { 0x40 } else { 0 }, 0, spec.ttl, proto, 0, 0]);
        ip.extend_from_slice(&spec.src4);
        ip.extend_from_slice(&spec.dst4);
        ip.extend_from_slice(&spec.v4_options);
        let c = Sum16BitWords::new()
            .add_slice(&ip)
            .ones_complement()
            .to_be();
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        sum = sum
            .add_4bytes(spec.src4)
            .add_4bytes(spec.dst4)
            .add_2bytes([0, proto])
            .add_2bytes((l4.len() as u16).to_be_bytes());
    }
    let sum = sum.add_slice(&l4);
    let c = if proto == 17 {
        sum.to_ones_complement_with_no_zero().to_be()
    } else {
        sum.ones_complement().to_be()
    };
    l4[csum_field..csum_field + 2].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&l4);
    f
}

pub fn frame_of(data: Vec<u8>) -> Frame {
    let mut f = Frame::with_data(data, NetHeader::default());
    f.meta.flow_hash = 0x1234;
    f
}

/// L4 offset, L4 header length and checksum field offset of a TCP or UDP frame, found with
/// etherparse.
pub fn l4_layout(data: &[u8]) -> (usize, usize, usize) {
    let p = LaxSlicedPacket::from_ethernet(data).unwrap();
    match p.transport.unwrap() {
        TransportSlice::Tcp(t) => (
            t.slice().as_ptr() as usize - data.as_ptr() as usize,
            t.header_len(),
            16,
        ),
        TransportSlice::Udp(u) => (u.slice().as_ptr() as usize - data.as_ptr() as usize, 8, 6),
        _ => panic!("not TCP/UDP"),
    }
}

/// Turns a fully checksummed TCP/UDP frame into the partial form a guest sends: the checksum
/// field holds the pseudo-header sum, NEEDS_CSUM points at it. The seed is derived from the
/// correct checksum C and the sum L of the L4 bytes: seed = ~C - L in ones' complement.
pub fn partial(mut f: Frame) -> Frame {
    let (l4_off, _, field) = partial_layout(&f.data);
    let at = l4_off + field;
    let c = u16::from_be_bytes([f.data[at], f.data[at + 1]]);
    f.data[at] = 0;
    f.data[at + 1] = 0;
    let l = !Sum16BitWords::new()
        .add_slice(&f.data[l4_off..])
        .ones_complement()
        .to_be();
    let mut s = (!c as u32) + (!l as u32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    f.data[at..at + 2].copy_from_slice(&(s as u16).to_be_bytes());
    f.header.flags = F_NEEDS_CSUM;
    f.header.csum_start = l4_off as u16;
    f.header.csum_offset = field as u16;
    f
}

/// Like [`l4_layout`], but also for protocol 146 (read as TCP).
fn partial_layout(data: &[u8]) -> (usize, usize, usize) {
    let h = crate::frame::meta::FrameMeta::parse(data);
    if h.proto() == PROTO_HOMA {
        let t = crate::wire::tcp::Packet::new_checked(&data[h.l4_off()..]).unwrap();
        return (h.l4_off(), t.header_len(), 16);
    }
    l4_layout(data)
}

/// A GSO frame as a guest sends it.
pub fn tso_frame(data: Vec<u8>, gso_type: u8, gso_size: u16) -> Frame {
    let (l4_off, l4_len, _) = partial_layout(&data);
    let mut f = partial(frame_of(data));
    f.header.gso_type = gso_type;
    f.header.gso_size = gso_size;
    f.header.hdr_len = (l4_off + l4_len) as u16;
    f
}
