//! A frame's metadata, parsed once where the frame enters vnic (guest TX, tap read) and carried
//! with it: where its headers are, what they are, and its flow hash. Steering and the offload
//! engines read it instead of parsing the frame again.
//!
//! [`FrameMeta::parse`] walks the headers with the [`wire`](crate::wire) views: Ethernet, up to
//! two VLAN tags, IPv4 (options, AH) or IPv6 (hop-by-hop, routing, fragment, destination
//! options, AH), and finds where L4 starts. It never fails: a frame that is not IP, or whose IP
//! headers are broken, gets a meta that says so ([`L3::NotIp`], [`L3::Malformed`]) and a flow
//! hash of its Ethernet header. The EtherType, not the IP version nibble, decides between IPv4
//! and IPv6, as a receiving stack does.
//!
//! The offsets stay true while the headers' bytes do: the offload engines rewrite lengths,
//! IDs, sequence numbers and checksums in place, append payload (LRO) or copy the headers into
//! new frames (segmentation, which copies the meta too), none of which moves a header.

use super::class::Class;
use crate::wire::{ethernet, ip, ipv4, ipv6, tcp, udp, Error, IpVersion};

/// What a frame's L3 is, as far as vnic looks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum L3 {
    /// Nobody parsed the frame yet (a fresh frame from the pool).
    #[default]
    Unparsed,
    /// Not IPv4/IPv6: another EtherType, a third VLAN tag, shorter than an Ethernet header.
    NotIp,
    /// An IP EtherType whose headers are truncated or malformed (a VLAN tag cut short too).
    Malformed,
    Ipv4,
    Ipv6,
}

/// Where a frame's headers are and what they are (all offsets from the start of the frame),
/// plus what vnic decided about it at entry (flow hash, class: what RX steering keys on).
/// Small and `Copy`: it travels inside [`Frame`](super::Frame).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameMeta {
    l3: L3,
    vlan_count: u8,
    /// IPv4 protocol, or the next header after the IPv6 extension chain.
    proto: u8,
    /// The IP header proper: IPv4 with its options, 40 for IPv6.
    l3_hdr_len: u8,
    fragmented: bool,
    has_frag_header: bool,
    has_auth: bool,
    ip_extras: bool,
    ethertype: u16,
    vlan_tci: [u16; ethernet::MAX_VLAN_TAGS],
    l3_off: u16,
    l4_off: u16,
    /// Offset of the pseudo-header's destination address; 0: none.
    pseudo_dst: u16,
    /// Flow hash: addresses, protocol and TCP/UDP ports for IP; MACs and EtherType otherwise.
    pub flow_hash: u32,
    /// What the frame is for priority, steering and interrupts ([`Class::of`], at entry).
    pub class: Class,
}

impl FrameMeta {
    /// Parses an Ethernet frame's headers. Never fails, never panics, allocates nothing.
    #[inline]
    pub fn parse(data: &[u8]) -> FrameMeta {
        let mut m = FrameMeta::default();
        m.parse_into(data);
        m
    }

    /// [`FrameMeta::parse`] written in place: the datapath's way, because building the meta
    /// on the stack and copying it into the frame costs more than the parse (the copy's
    /// wide loads cannot be forwarded from the parse's narrow stores).
    #[inline]
    pub fn parse_into(&mut self, data: &[u8]) {
        if !self.parse_plain_ipv4(data) {
            *self = Self::parse_any(data);
        }
    }

    /// [`FrameMeta::parse_into`], then the frame's [`Class`] (Open-MX frames being those of
    /// `omx_ethertype`): what the datapath does where a frame enters.
    #[inline]
    pub fn parse_and_classify(&mut self, data: &[u8], omx_ethertype: u16) {
        if self.parse_plain_ipv4(data) {
            // Neither Homa nor TCP (which may be Homa over TCP): the class is the precedence,
            // read while the header is at hand.
            if !matches!(self.proto, ip::HOMA | ip::TCP) {
                self.class.priority = data[ethernet::HEADER_LEN + 1] >> 5;
                return;
            }
        } else {
            *self = Self::parse_any(data);
        }
        self.class = Class::of(self, data, omx_ethertype);
    }

    /// Any frame: VLAN tags, IPv4 options and AH, IPv6 extension headers.
    #[inline]
    fn parse_any(data: &[u8]) -> FrameMeta {
        let mut m = FrameMeta {
            l3: L3::NotIp,
            ..FrameMeta::default()
        };
        if let Ok(eth) = ethernet::Frame::new_checked(data) {
            match eth.vlan_tags() {
                Ok(tags) => {
                    m.vlan_count = tags.count;
                    m.vlan_tci = tags.tci;
                    m.ethertype = tags.ethertype;
                    m.l3_off = tags.payload_offset as u16;
                    match tags.ethertype {
                        ethernet::ETHERTYPE_IPV4 => m.parse_ipv4(data),
                        ethernet::ETHERTYPE_IPV6 => m.parse_ipv6(data),
                        _ => {}
                    }
                }
                Err(Error::Truncated) => m.l3 = L3::Malformed,
                Err(_) => {}
            }
        }
        m.flow_hash = m.hash(data);
        m
    }

    /// The common case straight through: untagged IPv4 without options or AH, TCP/UDP ports
    /// read in place. Exactly what the general path gives for such a frame (a test checks
    /// that), without walking tags and options.
    #[inline]
    fn parse_plain_ipv4(&mut self, data: &[u8]) -> bool {
        const L3: usize = ethernet::HEADER_LEN;
        const L4: usize = L3 + ipv4::MIN_HEADER_LEN;
        let Some(head) = data.first_chunk::<L4>() else {
            return false;
        };
        let proto = head[L3 + 9];
        // EtherType IPv4, then version 4 with a 20-byte header, in one compare.
        if u32::from_be_bytes([head[12], head[13], head[L3], 0]) != 0x0800_4500 || proto == ip::AUTH
        {
            return false;
        }
        let fragmented = u16::from_be_bytes([head[L3 + 6], head[L3 + 7]]) & 0x3fff != 0;
        let whole_l4 = match proto {
            ip::TCP => data.get(L4 + 12).is_some_and(|&off| {
                let len = (off >> 4) as usize * 4;
                len >= tcp::MIN_HEADER_LEN && data.len() >= L4 + len
            }),
            ip::UDP => data.len() >= L4 + udp::HEADER_LEN,
            _ => false,
        };
        let ports = match data[L4..].first_chunk::<4>() {
            Some(p) if whole_l4 && !fragmented => Some((
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            )),
            _ => None,
        };
        // Field by field into place (see `parse_into`).
        *self = FrameMeta::default();
        self.l3 = L3::Ipv4;
        self.proto = proto;
        self.l3_hdr_len = ipv4::MIN_HEADER_LEN as u8;
        self.fragmented = fragmented;
        self.has_frag_header = fragmented;
        self.ethertype = ethernet::ETHERTYPE_IPV4;
        self.l3_off = L3 as u16;
        self.l4_off = L4 as u16;
        self.pseudo_dst = (L3 + 16) as u16;
        let mut h = Fnv64::new();
        h.word(ipv4_addresses(data));
        self.flow_hash = h.finish_with(proto, ports);
        true
    }

    fn parse_ipv4(&mut self, data: &[u8]) {
        let l3 = self.l3_off as usize;
        let Ok(p) = ipv4::Packet::new_checked(&data[l3..]) else {
            self.l3 = L3::Malformed;
            return;
        };
        let hl = p.header_len();
        // The IP packet ends where its length says if that is consistent, else at the frame's end.
        let total = p.total_len() as usize;
        let end = if total >= hl && l3 + total <= data.len() {
            l3 + total
        } else {
            data.len()
        };
        let mut l4 = l3 + hl;
        let mut proto = p.protocol();
        if proto == ip::AUTH {
            match ipv6::ExtHeaders::new(&data[l4..end], ip::AUTH).next() {
                Some(Ok(ah)) => {
                    l4 += ah.data.len();
                    proto = ah.next_header();
                    self.has_auth = true;
                }
                _ => {
                    self.l3 = L3::Malformed;
                    return;
                }
            }
        }
        self.l3 = L3::Ipv4;
        self.l3_hdr_len = hl as u8;
        self.l4_off = l4 as u16;
        self.proto = proto;
        self.fragmented = p.is_fragment();
        self.has_frag_header = self.fragmented;
        self.ip_extras = hl > ipv4::MIN_HEADER_LEN || self.has_auth;
        self.pseudo_dst = (l3 + 16) as u16;
    }

    fn parse_ipv6(&mut self, data: &[u8]) {
        let l3 = self.l3_off as usize;
        let Ok(p) = ipv6::Packet::new_checked(&data[l3..]) else {
            self.l3 = L3::Malformed;
            return;
        };
        let base = l3 + ipv6::HEADER_LEN;
        let mut pseudo_dst = Some(l3 + 24);
        let mut routing_headers = 0;
        let mut walk = p.ext_headers();
        for h in walk.by_ref() {
            let Ok(h) = h else {
                self.l3 = L3::Malformed;
                return;
            };
            self.ip_extras = true;
            match h.kind {
                ip::ROUTING => {
                    routing_headers += 1;
                    if h.segments_left() != 0 {
                        pseudo_dst = h.routing_final_destination().map(|o| base + h.offset + o);
                    }
                }
                ip::FRAGMENT => {
                    self.has_frag_header = true;
                    self.fragmented |= h.is_fragmenting();
                }
                ip::AUTH => self.has_auth = true,
                _ => {}
            }
        }
        if routing_headers > 1 {
            pseudo_dst = None;
        }
        let Ok(l4) = u16::try_from(base + walk.offset()) else {
            self.l3 = L3::Malformed;
            return;
        };
        self.l3 = L3::Ipv6;
        self.l3_hdr_len = ipv6::HEADER_LEN as u8;
        self.l4_off = l4;
        self.proto = walk.next_header();
        // Fits: it is before l4_off.
        self.pseudo_dst = pseudo_dst.unwrap_or(0) as u16;
    }

    /// FNV-1a over 64-bit words of the flow's fields, then a 64-bit finalizer so that
    /// `hash % small_n` uses every input bit. Stable and well spread; steering needs no secrecy.
    #[inline]
    fn hash(&self, data: &[u8]) -> u32 {
        let mut h = Fnv64::new();
        match self.ip() {
            Some(IpVersion::V4) => {
                let l3 = self.l3_off as usize;
                h.word(u64::from_be_bytes(
                    data[l3 + 12..l3 + 20].try_into().unwrap(),
                ));
            }
            Some(IpVersion::V6) => {
                let l3 = self.l3_off as usize;
                for at in [8, 16, 24, 32] {
                    h.word(u64::from_be_bytes(
                        data[l3 + at..l3 + at + 8].try_into().unwrap(),
                    ));
                }
            }
            None => {
                let n = data.len().min(ethernet::HEADER_LEN);
                let mut b = [0u8; 16];
                b[..n].copy_from_slice(&data[..n]);
                h.word(u64::from_be_bytes(b[..8].try_into().unwrap()));
                h.word(u64::from_be_bytes(b[8..].try_into().unwrap()) | n as u64);
                return h.finish();
            }
        }
        h.finish_with(self.proto, self.ports(data))
    }

    /// True once [`FrameMeta::parse`] filled this in.
    #[inline]
    pub fn is_parsed(&self) -> bool {
        self.l3 != L3::Unparsed
    }

    #[inline]
    pub fn l3(&self) -> L3 {
        self.l3
    }

    /// The IP version, for an IP frame whose headers parsed.
    #[inline]
    pub fn ip(&self) -> Option<IpVersion> {
        match self.l3 {
            L3::Ipv4 => Some(IpVersion::V4),
            L3::Ipv6 => Some(IpVersion::V6),
            _ => None,
        }
    }

    /// Where L2 starts: always the start of the frame.
    #[inline]
    pub fn l2_off(&self) -> usize {
        0
    }

    /// Where L3 starts (after the VLAN tags); meaningful for [`L3::Ipv4`]/[`L3::Ipv6`] and for
    /// other EtherTypes.
    #[inline]
    pub fn l3_off(&self) -> usize {
        self.l3_off as usize
    }

    /// The IP header proper: IPv4 with its options, 40 for IPv6 (extension headers not included).
    #[inline]
    pub fn l3_hdr_len(&self) -> usize {
        self.l3_hdr_len as usize
    }

    /// Where L4 starts: after IPv4 AH or the last IPv6 extension header (IP frames only).
    #[inline]
    pub fn l4_off(&self) -> usize {
        self.l4_off as usize
    }

    /// The EtherType after the VLAN tags.
    #[inline]
    pub fn ethertype(&self) -> u16 {
        self.ethertype
    }

    /// VLAN tags found (0-2).
    #[inline]
    pub fn vlan_count(&self) -> usize {
        self.vlan_count as usize
    }

    /// The TCIs of the tags found, outermost first.
    #[inline]
    pub fn vlan_tci(&self) -> &[u16] {
        &self.vlan_tci[..self.vlan_count as usize]
    }

    /// IPv4 protocol, or the next header after the IPv6 extension chain (0 if not IP).
    #[inline]
    pub fn proto(&self) -> u8 {
        self.proto
    }

    /// A fragment of a larger packet (IPv4 MF or offset, or an IPv6 fragment header that is
    /// not atomic): its L4 header and checksum cannot be handled on their own.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.fragmented
    }

    /// An IPv4 fragment or an IPv6 fragment header, even an atomic one.
    #[inline]
    pub fn has_frag_header(&self) -> bool {
        self.has_frag_header
    }

    /// IPsec AH (IPv4 or IPv6): integrity over the payload, which cutting would break.
    #[inline]
    pub fn has_auth(&self) -> bool {
        self.has_auth
    }

    /// Anything beyond the basic IP header: IPv4 options or AH, any IPv6 extension header.
    #[inline]
    pub fn ip_extras(&self) -> bool {
        self.ip_extras
    }

    /// End of the IP packet by its length field, when that field is consistent (covers the IP
    /// headers and fits in `data`; anything after it is Ethernet padding). None otherwise, e.g.
    /// an IPv6 payload length of 0, or not IP.
    #[inline]
    pub fn ip_end(&self, data: &[u8]) -> Option<usize> {
        let l3 = self.l3_off();
        match self.ip()? {
            IpVersion::V4 => {
                let total = ipv4::Packet::new_checked(data.get(l3..)?).ok()?.total_len() as usize;
                (total >= self.l4_off() - l3 && l3 + total <= data.len()).then_some(l3 + total)
            }
            IpVersion::V6 => {
                let len = ipv6::Packet::new_checked(data.get(l3..)?)
                    .ok()?
                    .payload_len() as usize;
                let end = l3 + ipv6::HEADER_LEN + len;
                (len > 0 && end <= data.len()).then_some(end)
            }
        }
    }

    /// The IPv4 header with its options (IPv4 frames only).
    #[inline]
    pub fn ipv4_header<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        &data[self.l3_off()..self.l3_off() + self.l3_hdr_len()]
    }

    /// Source and (final) destination addresses for the TCP/UDP pseudo-header: the final one
    /// when an IPv6 routing header has segments left; None if it cannot be found.
    #[inline]
    pub fn pseudo_addresses<'a>(&self, data: &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
        let (src, alen) = match self.ip()? {
            IpVersion::V4 => (self.l3_off() + 12, 4),
            IpVersion::V6 => (self.l3_off() + 8, 16),
        };
        let dst = self.pseudo_dst as usize;
        if dst == 0 {
            return None;
        }
        Some((data.get(src..src + alen)?, data.get(dst..dst + alen)?))
    }

    /// TCP or UDP source and destination ports, if the frame is an unfragmented TCP/UDP packet
    /// whose L4 header is whole.
    #[inline]
    pub fn ports(&self, data: &[u8]) -> Option<(u16, u16)> {
        if self.ip().is_none() || self.fragmented {
            return None;
        }
        let l4 = data.get(self.l4_off()..)?;
        match self.proto {
            ip::TCP => tcp::Packet::new_checked(l4)
                .ok()
                .map(|t| (t.src_port(), t.dst_port())),
            ip::UDP => udp::Packet::new_checked(l4)
                .ok()
                .map(|u| (u.src_port(), u.dst_port())),
            _ => None,
        }
    }
}

/// The source and destination addresses of an untagged IPv4 frame (bytes 26..34), as one
/// big-endian word. Read as the two 8-byte words at offsets 24 and 32 where the frame has them:
/// the frame was just copied in, and a load is forwarded from the copy's stores (rather than
/// waiting for them to reach the cache) only if one store holds all of it; the copy stores the
/// frame's first 64 bytes in aligned 8-, 16- or 32-byte pieces (`split_from_guest`), which hold
/// these two words, not the 4-byte addresses at 26 and 30.
#[inline(always)]
fn ipv4_addresses(data: &[u8]) -> u64 {
    let word = |at: usize| {
        data[at..]
            .first_chunk::<8>()
            .map(|w| u64::from_be_bytes(*w))
    };
    match (word(24), word(32)) {
        (Some(a), Some(b)) => (a << 16) | (b >> 48),
        _ => u64::from_be_bytes(*data[26..].first_chunk::<8>().expect("an IPv4 header")),
    }
}

struct Fnv64(u64);

impl Fnv64 {
    #[inline(always)]
    fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }

    #[inline(always)]
    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(0x0000_0100_0000_01b3);
    }

    /// Adds the protocol and ports (if any) and finishes.
    #[inline(always)]
    fn finish_with(mut self, proto: u8, ports: Option<(u16, u16)>) -> u32 {
        let ports = match ports {
            Some((s, d)) => (s as u64) << 16 | d as u64 | 1 << 32,
            None => 0,
        };
        self.word((proto as u64) << 40 | ports);
        self.finish()
    }

    #[inline(always)]
    fn finish(&self) -> u32 {
        let mut x = self.0;
        x ^= x >> 30;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 27;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        x as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::testutil::*;
    use etherparse::{LaxSlicedPacket, TransportSlice};
    use proptest::prelude::*;

    fn ah() -> Ext {
        Ext {
            kind: ip::AUTH,
            bytes: vec![0, 1, 0, 0, 1, 2, 3, 4, 0, 0, 0, 9],
            final_dst: None,
        }
    }

    #[test]
    fn plain_vlan_and_qinq_offsets() {
        for vlans in 0..=2usize {
            for v6 in [false, true] {
                let spec = Spec {
                    v6,
                    vlans,
                    ..Spec::default()
                };
                let data = build_udp(&spec, b"hello");
                let m = FrameMeta::parse(&data);
                let l3 = 14 + 4 * vlans;
                assert_eq!(m.vlan_count(), vlans);
                assert_eq!(m.vlan_tci(), &[100, 101][..vlans]);
                assert_eq!(
                    (m.l3_off(), m.l4_off(), m.proto()),
                    (l3, l3 + if v6 { 40 } else { 20 }, ip::UDP)
                );
                assert_eq!(m.ethertype(), if v6 { 0x86dd } else { 0x0800 });
                assert_eq!(m.ports(&data), Some((40000, 5201)));
                assert_eq!(m.ip_end(&data), Some(data.len()));
                assert!(!m.is_fragment() && !m.ip_extras() && !m.has_auth());
            }
        }
    }

    #[test]
    fn not_ip_and_malformed() {
        let arp = {
            let mut d = build_udp(&Spec::default(), b"x");
            d[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
            d
        };
        let m = FrameMeta::parse(&arp);
        assert_eq!((m.l3(), m.ethertype(), m.l3_off()), (L3::NotIp, 0x0806, 14));
        assert_eq!(m.ports(&arp), None);
        assert_eq!(FrameMeta::parse(&arp[..13]).l3(), L3::NotIp);
        let three = build_udp(
            &Spec {
                vlans: 3,
                ..Spec::default()
            },
            b"x",
        );
        assert_eq!(FrameMeta::parse(&three).l3(), L3::NotIp);
        let mut v6_on_v4 = build_udp(&Spec::default(), b"x");
        v6_on_v4[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(FrameMeta::parse(&v6_on_v4).l3(), L3::Malformed);
        let tagged = build_udp(
            &Spec {
                vlans: 1,
                ..Spec::default()
            },
            b"x",
        );
        assert_eq!(FrameMeta::parse(&tagged[..16]).l3(), L3::Malformed);
        assert_eq!(FrameMeta::parse(&tagged[..30]).l3(), L3::Malformed);
        assert!(!FrameMeta::default().is_parsed() && FrameMeta::parse(&[]).is_parsed());
    }

    #[test]
    fn extension_headers_ah_and_fragments() {
        let spec = Spec {
            v6: true,
            v6_exts: vec![hop_by_hop(), dest_options(), routing_srh(1, [9; 16]), ah()],
            ..Spec::default()
        };
        let data = build_tcp(&spec, b"hello");
        let m = FrameMeta::parse(&data);
        assert_eq!(
            (m.l4_off(), m.proto()),
            (14 + 40 + 8 + 16 + 40 + 12, ip::TCP)
        );
        assert!(m.ip_extras() && m.has_auth() && !m.has_frag_header());
        assert_eq!(m.pseudo_addresses(&data).unwrap().1, &[9; 16]);
        let frag = |more| Spec {
            v6: true,
            v6_exts: vec![fragment(more)],
            ..Spec::default()
        };
        let m = FrameMeta::parse(&build_udp(&frag(true), b"x"));
        assert!(m.is_fragment() && m.has_frag_header());
        let d = build_udp(&frag(false), b"x");
        let m = FrameMeta::parse(&d);
        assert!(!m.is_fragment() && m.has_frag_header(), "atomic fragment");
        assert_eq!(m.ports(&d), Some((40000, 5201)));
        let mut d = build_udp(&Spec::default(), b"x");
        d[14 + 6] |= 0x20; // MF
        let m = FrameMeta::parse(&d);
        assert!(m.is_fragment() && m.ports(&d).is_none());
        // IPv4 AH: protocol 51, then the AH (12 bytes), then UDP.
        let mut d = build_udp(&Spec::default(), b"x");
        d[14 + 9] = ip::AUTH;
        let udp = d.split_off(34);
        d.extend_from_slice(&[ip::UDP, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]);
        d.extend_from_slice(&udp);
        let total = (d.len() - 14) as u16;
        d[16..18].copy_from_slice(&total.to_be_bytes());
        let m = FrameMeta::parse(&d);
        assert_eq!(
            (m.l3(), m.l4_off(), m.proto(), m.has_auth()),
            (L3::Ipv4, 46, ip::UDP, true)
        );
        d.truncate(40);
        assert_eq!(FrameMeta::parse(&d).l3(), L3::Malformed, "AH cut short");
    }

    #[test]
    fn flows_hash_apart_and_alike() {
        let h = |spec: &Spec| FrameMeta::parse(&build_tcp(spec, b"abc")).flow_hash;
        let s = Spec::default();
        assert_eq!(
            h(&s),
            h(&Spec {
                seq: 5,
                ..s.clone()
            }),
            "per flow, not per segment"
        );
        assert_ne!(
            h(&s),
            h(&Spec {
                sport: 1,
                ..s.clone()
            })
        );
        assert_ne!(
            h(&s),
            h(&Spec {
                dst4: [10, 0, 0, 3],
                ..s.clone()
            })
        );
        let v6 = Spec {
            v6: true,
            ..s.clone()
        };
        assert_ne!(
            h(&v6),
            h(&Spec {
                src6: [7; 16],
                ..v6.clone()
            })
        );
        let a = FrameMeta::parse(&[1; 60]).flow_hash;
        let mut other = [1; 60];
        other[3] = 9;
        assert_ne!(a, FrameMeta::parse(&other).flow_hash, "not IP: by MACs");
    }

    #[test]
    fn ipv4_options_and_padding() {
        let spec = Spec {
            v4_options: vec![1, 1, 1, 0],
            ..Spec::default()
        };
        let mut data = build_udp(&spec, b"x");
        let len = data.len();
        data.resize(64, 0);
        let h = FrameMeta::parse(&data);
        assert_eq!((h.l3_hdr_len(), h.l4_off(), h.proto()), (24, 38, ip::UDP));
        assert_eq!(h.ip_end(&data), Some(len));
        assert!(h.ip_extras());
        assert_eq!(h.ipv4_header(&data).len(), 24);
    }

    #[test]
    fn pseudo_header_destination() {
        // No segments left: the IPv6 destination.
        let spec = Spec {
            v6: true,
            v6_exts: vec![hop_by_hop(), dest_options(), routing_srh(0, [9; 16])],
            ..Spec::default()
        };
        let data = build_tcp(&spec, b"hello");
        let (_, dst) = FrameMeta::parse(&data).pseudo_addresses(&data).unwrap();
        assert_eq!(dst, &data[14 + 24..14 + 40]);
        // Segments left: the final destination the routing header names.
        for (rh, fin) in [
            (routing_srh(1, [7; 16]), [7u8; 16]),
            (routing_type2([5; 16]), [5; 16]),
            (routing_type0(&[[1; 16], [2; 16], [3; 16]]), [3; 16]),
        ] {
            let spec = Spec {
                v6: true,
                v6_exts: vec![rh],
                ..Spec::default()
            };
            let data = build_udp(&spec, b"hello");
            let h = FrameMeta::parse(&data);
            assert_eq!(h.pseudo_addresses(&data).unwrap().1, &fin);
        }
        // An unknown routing type (RPL, 3) with segments left, or two routing headers: none.
        let mut rh = routing_type2([5; 16]);
        rh.bytes[2] = 3;
        for exts in [
            vec![rh],
            vec![routing_srh(0, [1; 16]), routing_srh(0, [2; 16])],
        ] {
            let spec = Spec {
                v6: true,
                v6_exts: exts,
                ..Spec::default()
            };
            let data = build_udp(&spec, b"hello");
            assert_eq!(FrameMeta::parse(&data).pseudo_addresses(&data), None);
        }
        // IPv4: the header's addresses.
        let data = build_udp(&Spec::default(), b"x");
        let (src, dst) = FrameMeta::parse(&data).pseudo_addresses(&data).unwrap();
        assert_eq!((src, dst), (&[10, 0, 0, 1][..], &[10, 0, 0, 2][..]));
    }

    #[test]
    fn inconsistent_lengths() {
        let mut data = build_tcp(&Spec::default(), b"hello");
        data[14 + 2..14 + 4].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(FrameMeta::parse(&data).ip_end(&data), None);
        data[14 + 2..14 + 4].copy_from_slice(&0u16.to_be_bytes());
        let h = FrameMeta::parse(&data);
        assert_eq!((h.ip_end(&data), h.l4_off()), (None, 34));
        let v6 = Spec {
            v6: true,
            ..Spec::default()
        };
        let mut data6 = build_tcp(&v6, b"hello");
        data6[14 + 4..14 + 6].copy_from_slice(&0u16.to_be_bytes());
        assert_eq!(FrameMeta::parse(&data6).ip_end(&data6), None);
    }

    fn ext() -> impl Strategy<Value = Ext> {
        prop_oneof![
            Just(dest_options()),
            (0..=1u8, any::<[u8; 16]>()).prop_map(|(left, a)| routing_srh(left, a)),
            any::<[u8; 16]>().prop_map(routing_type2),
            any::<bool>().prop_map(fragment),
            Just(ah()),
        ]
    }

    fn spec() -> impl Strategy<Value = (Spec, bool, usize)> {
        (
            any::<bool>(),
            0..=2usize,
            prop_oneof![Just(vec![]), Just(vec![1, 1, 1, 0]), Just(vec![1; 12])],
            any::<bool>(),
            prop::collection::vec(ext(), 0..4),
            (
                any::<u16>(),
                any::<u16>(),
                any::<[u8; 4]>(),
                any::<[u8; 16]>(),
            ),
            any::<bool>(),
            0..100usize,
        )
            .prop_map(|(v6, vlans, v4_options, hbh, mut exts, addr, udp, len)| {
                if hbh {
                    exts.insert(0, hop_by_hop());
                }
                let spec = Spec {
                    v6,
                    vlans,
                    v4_options,
                    v6_exts: exts,
                    sport: addr.0,
                    dport: addr.1,
                    src4: addr.2,
                    src6: addr.3,
                    ..Spec::default()
                };
                (spec, udp, len)
            })
    }

    fn offset(data: &[u8], inner: &[u8]) -> usize {
        inner.as_ptr() as usize - data.as_ptr() as usize
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Offsets, EtherType, VLAN IDs, protocol, fragment and ports agree with etherparse.
        #[test]
        fn agrees_with_etherparse((spec, udp, len) in spec()) {
            let payload = pattern(len);
            let data = if udp { build_udp(&spec, &payload) } else { build_tcp(&spec, &payload) };
            let m = FrameMeta::parse(&data);
            let p = LaxSlicedPacket::from_ethernet(&data).unwrap();
            prop_assert!(p.stop_err.is_none());
            let eth = p.ether_payload().unwrap();
            prop_assert_eq!(m.ethertype(), eth.ether_type.0);
            prop_assert_eq!(m.l3_off(), offset(&data, eth.payload));
            let ids: Vec<u16> = p.vlan_ids().iter().map(|v| v.value()).collect();
            let tcis: Vec<u16> = m.vlan_tci().iter().map(|t| t & 0xfff).collect();
            prop_assert_eq!(tcis, ids);
            let ipp = p.ip_payload().unwrap();
            prop_assert_eq!(m.ip(), Some(if spec.v6 { IpVersion::V6 } else { IpVersion::V4 }));
            prop_assert_eq!(m.proto(), ipp.ip_number.0);
            prop_assert_eq!(m.l4_off(), offset(&data, ipp.payload));
            prop_assert_eq!(m.is_fragment(), ipp.fragmented);
            let ports = match &p.transport {
                Some(TransportSlice::Tcp(t)) => Some((t.source_port(), t.destination_port())),
                Some(TransportSlice::Udp(u)) => Some((u.source_port(), u.destination_port())),
                _ => None,
            };
            prop_assert_eq!(m.ports(&data), ports);
            prop_assert_eq!(m.ip_end(&data), Some(data.len()));
            if let Some(fin) = spec.v6_exts.iter().rev().find_map(|e| e.final_dst) {
                if spec.v6 && spec.v6_exts.iter().filter(|e| e.kind == ip::ROUTING).count() == 1 {
                    prop_assert_eq!(m.pseudo_addresses(&data).unwrap().1, &fin[..]);
                }
            }
        }

        /// Arbitrary bytes, and real frames cut short or with a byte changed, never panic, and
        /// every accessor stays within the frame.
        #[test]
        fn never_panics(
            bytes in prop::collection::vec(any::<u8>(), 0..200),
            (spec, udp, len) in spec(),
            cut in any::<prop::sample::Index>(),
            poke in any::<(prop::sample::Index, u8)>(),
        ) {
            let payload = pattern(len);
            let mut data = if udp { build_udp(&spec, &payload) } else { build_tcp(&spec, &payload) };
            let at = poke.0.index(data.len());
            data[at] = poke.1;
            let n = cut.index(data.len() + 1);
            for d in [&bytes[..], &data[..], &data[..n]] {
                let m = FrameMeta::parse(d);
                let _ = (m.ports(d), m.ip_end(d), m.pseudo_addresses(d));
                if m.ip().is_some() {
                    prop_assert!(m.l4_off() <= d.len());
                    prop_assert!(m.l3_off() + m.l3_hdr_len() <= d.len());
                }
            }
        }
    }

    /// The old flow hash: etherparse's lax slicer, then FNV-1a byte by byte.
    fn etherparse_flow_hash(data: &[u8]) -> u32 {
        use etherparse::LaxNetSlice;
        let mut h: u32 = 0x811c_9dc5;
        let mut bytes = |b: &[u8]| {
            for &x in b {
                h = (h ^ x as u32).wrapping_mul(0x0100_0193);
            }
        };
        let parsed = LaxSlicedPacket::from_ethernet(data).ok();
        match parsed.as_ref().and_then(|p| p.net.as_ref()) {
            Some(LaxNetSlice::Ipv4(ip)) => {
                bytes(&ip.header().source());
                bytes(&ip.header().destination());
                bytes(&[ip.header().protocol().0]);
            }
            Some(LaxNetSlice::Ipv6(ip)) => {
                bytes(&ip.header().source());
                bytes(&ip.header().destination());
                bytes(&[ip.header().next_header().0]);
            }
            _ => bytes(&data[..data.len().min(14)]),
        }
        match parsed.as_ref().and_then(|p| p.transport.as_ref()) {
            Some(TransportSlice::Tcp(t)) => {
                bytes(&t.source_port().to_be_bytes());
                bytes(&t.destination_port().to_be_bytes());
            }
            Some(TransportSlice::Udp(u)) => {
                bytes(&u.source_port().to_be_bytes());
                bytes(&u.destination_port().to_be_bytes());
            }
            _ => {}
        }
        let mut x = h;
        x ^= x >> 16;
        x = x.wrapping_mul(0x7feb_352d);
        x ^= x >> 15;
        x
    }

    proptest! {
        /// The fast path for plain IPv4 gives exactly what the general path gives, on real
        /// frames (any protocol, fragments, cut short) and on bytes made to look like them.
        #[test]
        fn plain_ipv4_fast_path_equals_the_general_path(
            proto in prop_oneof![Just(ip::TCP), Just(ip::UDP), Just(ip::AUTH), any::<u8>()],
            frag in prop_oneof![Just(0u16), Just(0x2000u16), any::<u16>()],
            tcp_off in any::<u8>(),
            len in 34usize..80,
            fill in any::<u8>(),
        ) {
            let mut d = vec![fill; len];
            d[12..14].copy_from_slice(&ethernet::ETHERTYPE_IPV4.to_be_bytes());
            d[14] = 0x45;
            d[14 + 6..14 + 8].copy_from_slice(&frag.to_be_bytes());
            d[14 + 9] = proto;
            if len > 34 + 12 {
                d[34 + 12] = tcp_off;
            }
            // Whatever the meta held before (a reused frame's), the fast path leaves exactly
            // what the general one gives.
            let mut fast = FrameMeta::parse(&[0xff; 80]);
            fast.class.priority = 3;
            let taken = fast.parse_plain_ipv4(&d);
            prop_assert_eq!(taken, proto != ip::AUTH);
            if taken {
                prop_assert_eq!(fast, FrameMeta::parse_any(&d));
            }
        }
    }

    /// Parse cost per frame, against the etherparse flow hash it replaces. Run with
    /// `cargo test --release --lib parse_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn parse_cost() {
        use std::hint::black_box;
        use std::time::Instant;
        let frames: Vec<(&str, Vec<u8>)> = vec![
            ("udp4 64B", {
                let mut d = build_udp(&Spec::default(), &[0; 18]);
                d.resize(64, 0);
                d
            }),
            ("tcp4 1514B", build_tcp(&Spec::default(), &pattern(1460))),
            (
                "udp6 vlan 64B+",
                build_udp(
                    &Spec {
                        v6: true,
                        vlans: 1,
                        ..Spec::default()
                    },
                    &[0; 4],
                ),
            ),
            (
                "tcp6 qinq 3 exts",
                build_tcp(
                    &Spec {
                        v6: true,
                        vlans: 2,
                        v6_exts: vec![hop_by_hop(), dest_options(), routing_srh(0, [1; 16])],
                        ..Spec::default()
                    },
                    &pattern(100),
                ),
            ),
        ];
        // The best of many short rounds: the machine is shared, and a round that was not
        // interrupted shows what parsing costs.
        fn best(f: impl Fn()) -> f64 {
            const ROUND: u32 = 50_000;
            (0..40)
                .map(|_| {
                    let t = Instant::now();
                    for _ in 0..ROUND {
                        f();
                    }
                    t.elapsed().as_nanos() as f64 / ROUND as f64
                })
                .fold(f64::MAX, f64::min)
        }
        for (name, data) in &frames {
            let new = best(|| {
                black_box(FrameMeta::parse(black_box(data)));
            });
            let old = best(|| {
                black_box(etherparse_flow_hash(black_box(data)));
            });
            println!("{name:>18}: FrameMeta::parse {new:6.1} ns/frame, etherparse flow_hash {old:6.1} ns/frame");
        }
    }
}
