//! Finding a frame's headers once: L2 (Ethernet, up to two VLAN tags), L3 (IPv4 with options,
//! IPv6 with its extension headers) and where L4 starts.
//!
//! The IP layer is parsed by etherparse (zero-copy, no allocation), which walks IPv4 AH and the
//! IPv6 extension header chain; offsets are taken from the slices it returns. The Ethernet and
//! VLAN headers are walked here: it is two fields per header, and this way the EtherType (not
//! the IP version nibble) decides between IPv4 and IPv6, as a receiving stack does.

use etherparse::{Ipv6ExtensionSlice, LaxIpv4Slice, LaxIpv6Slice};

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// Homa (IANA 2024). Its packets look like TCP to a GSO engine and must not be treated as such.
pub const PROTO_HOMA: u8 = 146;

/// TCP flags (byte 13 of the TCP header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;

pub const ETH_HLEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// 802.1Q, 802.1ad (QinQ outer tag) and the pre-standard QinQ TPID.
const VLAN_TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
/// Tags walked through: one 802.1Q tag or a QinQ pair. A frame with more is not parsed as IP.
pub const MAX_VLAN_TAGS: u8 = 2;

const IPV6_HLEN: usize = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not an IPv4/IPv6 frame (other EtherType, too many tags, shorter than an Ethernet header).
    NotIp,
    /// An IP frame whose IP headers are truncated or malformed.
    Malformed,
}

/// Where a frame's headers are. All offsets are from the start of the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    pub vlan_tags: u8,
    pub l3_off: usize,
    pub ip: IpVersion,
    /// The IP header proper: IPv4 with its options, 40 for IPv6 (extension headers not included).
    pub l3_hdr_len: usize,
    /// After IPv4 AH or the last IPv6 extension header.
    pub l4_off: usize,
    /// IPv4 protocol, or the next header after the IPv6 extension chain.
    pub proto: u8,
    /// End of the IP packet by its length field, when that field is consistent (covers the IP
    /// headers and fits in the frame; anything after it is Ethernet padding). None otherwise,
    /// e.g. an IPv6 payload length of 0.
    pub ip_end: Option<usize>,
    /// A fragment of a larger packet (IPv4 MF or offset, or an IPv6 fragment header that is not
    /// atomic): its L4 header and checksum cannot be handled on their own.
    pub fragmented: bool,
    /// An IPv6 fragment header, even an atomic one.
    pub has_frag_header: bool,
    /// IPsec AH (IPv4 or IPv6): integrity over the payload, which cutting would break.
    pub has_auth: bool,
    /// Anything beyond the basic IP header: IPv4 options or AH, any IPv6 extension header.
    pub ip_extras: bool,
    /// Offset of the destination address used in the TCP/UDP pseudo-header (the final one when
    /// an IPv6 routing header has segments left); None if it cannot be found.
    pseudo_dst: Option<usize>,
}

impl Headers {
    /// The IPv4 header with its options (call only for IPv4).
    pub fn ipv4_header<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        &data[self.l3_off..self.l3_off + self.l3_hdr_len]
    }

    /// Source and (final) destination addresses for the pseudo-header.
    pub fn pseudo_addresses<'a>(&self, data: &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
        let dst = self.pseudo_dst?;
        let (src, alen) = match self.ip {
            IpVersion::V4 => (self.l3_off + 12, 4),
            IpVersion::V6 => (self.l3_off + 8, 16),
        };
        Some((&data[src..src + alen], &data[dst..dst + alen]))
    }
}

/// Length of the TCP header at `l4_off` if it is well-formed (data offset at least 5) and lies
/// within `data[..end]`.
pub fn tcp_header_len(data: &[u8], l4_off: usize, end: usize) -> Option<usize> {
    if l4_off + 20 > end.min(data.len()) {
        return None;
    }
    let len = (data[l4_off + 12] >> 4) as usize * 4;
    (len >= 20 && l4_off + len <= end.min(data.len())).then_some(len)
}

/// Finds the headers of an Ethernet frame.
pub fn parse(data: &[u8]) -> Result<Headers, ParseError> {
    let (ethertype, l3_off, vlan_tags) = walk_l2(data)?;
    match ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(data, l3_off, vlan_tags),
        ETHERTYPE_IPV6 => parse_ipv6(data, l3_off, vlan_tags),
        _ => Err(ParseError::NotIp),
    }
}

/// The EtherType after the VLAN tags, the offset of L3 and the number of tags.
fn walk_l2(data: &[u8]) -> Result<(u16, usize, u8), ParseError> {
    if data.len() < ETH_HLEN {
        return Err(ParseError::NotIp);
    }
    let mut off = 12;
    let mut tags = 0;
    loop {
        let Some(b) = data.get(off..off + 2) else {
            return Err(ParseError::Malformed);
        };
        let ethertype = u16::from_be_bytes([b[0], b[1]]);
        if !VLAN_TPIDS.contains(&ethertype) {
            return Ok((ethertype, off + 2, tags));
        }
        if tags == MAX_VLAN_TAGS {
            return Err(ParseError::NotIp);
        }
        tags += 1;
        // TPID, TCI, then the next EtherType.
        off += 4;
    }
}

/// Offset of `inner` (a subslice of `outer`) within `outer`.
fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    inner.as_ptr() as usize - outer.as_ptr() as usize
}

fn parse_ipv4(data: &[u8], l3_off: usize, vlan_tags: u8) -> Result<Headers, ParseError> {
    let (ip, auth_err) =
        LaxIpv4Slice::from_slice(&data[l3_off..]).map_err(|_| ParseError::Malformed)?;
    if auth_err.is_some() {
        return Err(ParseError::Malformed);
    }
    let hdr = ip.header();
    let l3_hdr_len = hdr.slice().len();
    let has_auth = ip.extensions().auth.is_some();
    let payload = ip.payload();
    let l4_off = offset_in(data, payload.payload);
    let total = hdr.total_len() as usize;
    let ip_end =
        (total >= l4_off - l3_off && l3_off + total <= data.len()).then_some(l3_off + total);
    Ok(Headers {
        vlan_tags,
        l3_off,
        ip: IpVersion::V4,
        l3_hdr_len,
        l4_off,
        proto: payload.ip_number.0,
        ip_end,
        fragmented: payload.fragmented,
        has_frag_header: payload.fragmented,
        has_auth,
        ip_extras: l3_hdr_len > 20 || has_auth,
        pseudo_dst: Some(l3_off + 16),
    })
}

fn parse_ipv6(data: &[u8], l3_off: usize, vlan_tags: u8) -> Result<Headers, ParseError> {
    let (ip, stop) =
        LaxIpv6Slice::from_slice(&data[l3_off..]).map_err(|_| ParseError::Malformed)?;
    if stop.is_some() {
        return Err(ParseError::Malformed);
    }
    let exts = ip.extensions();
    let mut pseudo_dst = Some(l3_off + 24);
    let mut routing_headers = 0;
    let mut has_frag_header = false;
    let mut has_auth = false;
    for ext in exts.clone() {
        match ext {
            Ipv6ExtensionSlice::Routing(rh) => {
                routing_headers += 1;
                let rh = rh.slice();
                if rh[3] != 0 {
                    pseudo_dst = routing_final_destination(rh).map(|o| offset_in(data, rh) + o);
                }
            }
            Ipv6ExtensionSlice::Fragment(_) => has_frag_header = true,
            Ipv6ExtensionSlice::Authentication(_) => has_auth = true,
            Ipv6ExtensionSlice::HopByHop(_) | Ipv6ExtensionSlice::DestinationOptions(_) => {}
        }
    }
    if routing_headers > 1 {
        pseudo_dst = None;
    }
    let payload = ip.payload();
    let l4_off = offset_in(data, payload.payload);
    let payload_len = ip.header().payload_length() as usize;
    let ip_end = (payload_len > 0 && l3_off + IPV6_HLEN + payload_len <= data.len())
        .then_some(l3_off + IPV6_HLEN + payload_len);
    Ok(Headers {
        vlan_tags,
        l3_off,
        ip: IpVersion::V6,
        l3_hdr_len: IPV6_HLEN,
        l4_off,
        proto: payload.ip_number.0,
        ip_end,
        fragmented: payload.fragmented,
        has_frag_header,
        has_auth,
        ip_extras: !exts.is_empty(),
        pseudo_dst,
    })
}

/// Offset within a routing header (with segments left) of the final destination, which the
/// TCP/UDP pseudo-header uses (RFC 8200 §8.1). Types whose address list vnic knows: 0 (the last
/// address), 2 (the home address), 4 (SRH: Segment List[0] is the last segment, RFC 8754 §2).
fn routing_final_destination(rh: &[u8]) -> Option<usize> {
    let addresses = rh[1] as usize / 2;
    let offset = match rh[2] {
        0 if addresses > 0 => 8 + 16 * (addresses - 1),
        2 | 4 => 8,
        _ => return None,
    };
    (offset + 16 <= rh.len()).then_some(offset)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn plain_vlan_and_qinq() {
        for vlans in 0..=2usize {
            for v6 in [false, true] {
                let spec = Spec {
                    v6,
                    vlans,
                    ..Spec::default()
                };
                let data = build_tcp(&spec, b"hello");
                let h = parse(&data).unwrap();
                let l3 = 14 + 4 * vlans;
                let l4 = l3 + if v6 { 40 } else { 20 };
                assert_eq!(h.vlan_tags as usize, vlans);
                assert_eq!((h.l3_off, h.l4_off, h.proto), (l3, l4, PROTO_TCP));
                assert_eq!(h.ip_end, Some(data.len()));
                assert!(!h.fragmented && !h.ip_extras && !h.has_auth);
                assert_eq!(tcp_header_len(&data, l4, data.len()), Some(20));
            }
        }
    }

    #[test]
    fn three_tags_are_not_ip() {
        let spec = Spec {
            vlans: 3,
            ..Spec::default()
        };
        assert_eq!(
            parse(&build_tcp(&spec, b"x")).unwrap_err(),
            ParseError::NotIp
        );
    }

    #[test]
    fn ethertype_decides_the_ip_version() {
        let mut data = build_tcp(&Spec::default(), b"x");
        data[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        assert_eq!(parse(&data).unwrap_err(), ParseError::Malformed);
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
        let h = parse(&data).unwrap();
        assert_eq!((h.l3_hdr_len, h.l4_off, h.proto), (24, 38, PROTO_UDP));
        assert_eq!(h.ip_end, Some(len));
        assert!(h.ip_extras);
    }

    #[test]
    fn ipv6_extension_headers() {
        let spec = Spec {
            v6: true,
            v6_exts: vec![hop_by_hop(), dest_options(), routing_srh(0, [9; 16])],
            ..Spec::default()
        };
        let data = build_tcp(&spec, b"hello");
        let h = parse(&data).unwrap();
        assert_eq!(h.l4_off, 14 + 40 + 8 + 16 + 40);
        assert_eq!(h.proto, PROTO_TCP);
        assert!(h.ip_extras && !h.fragmented && !h.has_frag_header);
        // No segments left: the pseudo-header uses the IPv6 destination.
        let (_, dst) = h.pseudo_addresses(&data).unwrap();
        assert_eq!(dst, &data[14 + 24..14 + 40]);
    }

    #[test]
    fn routing_header_with_segments_left_names_the_final_destination() {
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
            let h = parse(&data).unwrap();
            assert_eq!(h.pseudo_addresses(&data).unwrap().1, &fin);
        }
        // An unknown routing type (RPL, 3) with segments left: no pseudo-header.
        let mut rh = routing_type2([5; 16]);
        rh.bytes[2] = 3;
        let spec = Spec {
            v6: true,
            v6_exts: vec![rh],
            ..Spec::default()
        };
        let data = build_udp(&spec, b"hello");
        assert_eq!(parse(&data).unwrap().pseudo_addresses(&data), None);
    }

    #[test]
    fn fragments() {
        let frag = |more| Spec {
            v6: true,
            v6_exts: vec![fragment(more)],
            ..Spec::default()
        };
        let h = parse(&build_udp(&frag(true), b"x")).unwrap();
        assert!(h.fragmented && h.has_frag_header);
        let h = parse(&build_udp(&frag(false), b"x")).unwrap();
        assert!(!h.fragmented && h.has_frag_header, "atomic fragment");
        let mut data = build_udp(&Spec::default(), b"x");
        data[14 + 6] |= 0x20; // MF
        assert!(parse(&data).unwrap().fragmented);
    }

    #[test]
    fn inconsistent_lengths() {
        let mut data = build_tcp(&Spec::default(), b"hello");
        data[14 + 2..14 + 4].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(parse(&data).unwrap().ip_end, None);
        data[14 + 2..14 + 4].copy_from_slice(&0u16.to_be_bytes());
        let h = parse(&data).unwrap();
        assert_eq!((h.ip_end, h.l4_off), (None, 34));
        let mut data6 = build_tcp(
            &Spec {
                v6: true,
                ..Spec::default()
            },
            b"hello",
        );
        data6[14 + 4..14 + 6].copy_from_slice(&0u16.to_be_bytes());
        assert_eq!(parse(&data6).unwrap().ip_end, None);
    }

    #[test]
    fn tcp_header_len_bounds() {
        let spec = Spec {
            tcp_options: vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
            ..Spec::default()
        };
        let mut data = build_tcp(&spec, b"");
        let n = data.len();
        assert_eq!(tcp_header_len(&data, 34, n), Some(32));
        assert_eq!(tcp_header_len(&data, 34, n - 1), None);
        data[34 + 12] = 0x40; // data offset 4
        assert_eq!(tcp_header_len(&data, 34, n), None);
        assert_eq!(tcp_header_len(&data, 34, 40), None);
        assert_eq!(tcp_header_len(&data, 1000, 2000), None);
    }

    #[test]
    fn garbage_never_panics() {
        let mut data = build_tcp(
            &Spec {
                v6: true,
                v6_exts: vec![hop_by_hop(), routing_srh(1, [1; 16])],
                ..Spec::default()
            },
            b"abc",
        );
        for len in 0..data.len() {
            let _ = parse(&data[..len]);
        }
        for i in 0..data.len() {
            for x in [0u8, 0xff, 0x55] {
                let keep = data[i];
                data[i] = x;
                if let Ok(h) = parse(&data) {
                    let _ = h.pseudo_addresses(&data);
                    let _ = tcp_header_len(&data, h.l4_off, data.len());
                }
                data[i] = keep;
            }
        }
    }
}
