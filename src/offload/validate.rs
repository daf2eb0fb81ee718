//! A source's virtio-net header checked against its frame (hostile-guest class 8): every
//! offset and size the header names must lie within the frame and agree with the headers
//! actually found, before anything acts on it.

use super::checksum::check_partial_bounds;
use super::{GsoKind, GsoType, OffloadError, TxCaps, MAX_IP_LEN, MAX_SEGMENTS};
use crate::frame::meta::{FrameMeta, L3};
use crate::frame::net_header::{F_DATA_VALID, F_NEEDS_CSUM};
use crate::frame::Frame;
use crate::wire::{homa, ip, tcp, udp, IpVersion};

/// Checks a frame's header (as the guest sent it) against the frame and what was negotiated.
///
/// Refused, each with its own reason: flags other than NEEDS_CSUM; a partial checksum not
/// negotiated or reaching past the frame; `hdr_len` past the frame; an unknown, unnegotiated
/// or UFO `gso_type`; and every GSO frame that [`plan_gso`] refuses (gso_size 0 or too large,
/// type not matching the headers, Homa, fragments, too many segments...).
///
/// This is for guests. A host tap's frames (from a trusted kernel, which marks frames it
/// verified `F_DATA_VALID`, also GSO frames its GRO built) need no `validate_tx`:
/// [`adapt_for`](super::adapt_for) checks every offload request it acts on or passes on.
#[inline]
pub fn validate_tx(frame: &Frame, caps: TxCaps) -> Result<(), OffloadError> {
    // Most frames ask for nothing, and that is always fine.
    if frame.header.flags == 0 && frame.header.gso_type == 0 {
        return Ok(());
    }
    validate_request(frame, caps)
}

/// [`validate_tx`] for a frame whose header asks for something.
fn validate_request(frame: &Frame, caps: TxCaps) -> Result<(), OffloadError> {
    let h = &frame.header;
    let len = frame.data.len();
    if h.flags & !F_NEEDS_CSUM != 0 {
        return Err(OffloadError::BadFlags);
    }
    let needs_csum = h.flags & F_NEEDS_CSUM != 0;
    if needs_csum {
        if !caps.csum {
            return Err(OffloadError::CsumNotNegotiated);
        }
        check_partial_bounds(len, h.csum_start, h.csum_offset)?;
        if h.hdr_len as usize > len {
            return Err(OffloadError::HdrLenBeyondFrame);
        }
    }
    let Some(gso) = GsoType::decode(h.gso_type).map_err(|e| match e {
        // UFO is a type vnic never offers.
        OffloadError::GsoUnsupported => OffloadError::GsoNotNegotiated,
        e => e,
    })?
    else {
        return Ok(());
    };
    let negotiated = match (gso.kind, gso.ip) {
        // (A Homa job names a TCP type: `decode` never says Homa.)
        (GsoKind::Tcp | GsoKind::Homa, Some(IpVersion::V4)) => caps.tso4,
        (GsoKind::Tcp | GsoKind::Homa, _) => caps.tso6,
        (GsoKind::Udp, _) => caps.uso,
    };
    if !negotiated || (gso.ecn && !caps.ecn) {
        return Err(OffloadError::GsoNotNegotiated);
    }
    if !needs_csum {
        // virtio 1.2 §5.1.6.2.1: a GSO frame MUST carry NEEDS_CSUM.
        return Err(OffloadError::GsoWithoutCsum);
    }
    plan_gso(frame, gso).map(|_| ())
}

/// Everything segmentation needs, found once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GsoPlan {
    /// The frame's headers (what segments carry too: they have the same headers).
    pub meta: FrameMeta,
    pub ip: IpVersion,
    pub kind: GsoKind,
    /// TCP header with options (Homa: its replicated header), or 8 for UDP.
    pub l4_hdr_len: usize,
    /// Bytes replicated in front of every segment: Ethernet through L4 header.
    pub hdr_len: usize,
    pub mss: usize,
    /// Payload bytes after `hdr_len`, to the end of the frame.
    pub payload_len: usize,
    pub segments: usize,
}

/// Checks a GSO frame against its headers and works out how it is cut. The frame's end is the
/// end of the job (as for Linux GSO): the IP length fields are rewritten per segment anyway,
/// and some drivers leave them unset on GSO frames.
pub(crate) fn plan_gso(frame: &Frame, gso: GsoType) -> Result<GsoPlan, OffloadError> {
    let h = &frame.header;
    let data = &frame.data;
    let len = data.len();
    if h.gso_size == 0 {
        return Err(OffloadError::GsoSizeZero);
    }
    if h.hdr_len as usize > len {
        return Err(OffloadError::HdrLenBeyondFrame);
    }
    let needs_csum = h.flags & F_NEEDS_CSUM != 0;
    if !needs_csum && h.flags & F_DATA_VALID == 0 {
        return Err(OffloadError::GsoWithoutCsum);
    }
    if needs_csum {
        check_partial_bounds(len, h.csum_start, h.csum_offset)?;
    }
    let meta = frame.parsed_meta();
    let version = match meta.l3() {
        L3::Ipv4 => IpVersion::V4,
        L3::Ipv6 => IpVersion::V6,
        L3::Malformed => return Err(OffloadError::Unparseable),
        L3::NotIp | L3::Unparsed => return Err(OffloadError::GsoTypeMismatch),
    };
    if gso.ip.is_some_and(|ip| ip != version) {
        return Err(OffloadError::GsoTypeMismatch);
    }
    // Homa claims TCP GSO; its header has TCP's shape (the length in `doff`, the checksum at 16).
    let kind = match gso.kind {
        GsoKind::Tcp if meta.proto() == ip::HOMA => GsoKind::Homa,
        kind => kind,
    };
    if meta.proto() != kind.protocol() {
        return Err(OffloadError::GsoTypeMismatch);
    }
    if meta.has_frag_header() {
        return Err(OffloadError::GsoFragment);
    }
    if meta.has_auth() || meta.pseudo_addresses(data).is_none() {
        return Err(OffloadError::UnsupportedHeaders);
    }
    let l4 = data.get(meta.l4_off()..).ok_or(OffloadError::Unparseable)?;
    let l4_hdr_len = match kind {
        GsoKind::Tcp | GsoKind::Homa => tcp::Packet::new_checked(l4).map(|t| t.header_len()),
        GsoKind::Udp => udp::Packet::new_checked(l4).map(|_| udp::HEADER_LEN),
    }
    .map_err(|_| OffloadError::Unparseable)?;
    if needs_csum && (h.csum_start as usize != meta.l4_off() || h.csum_offset != kind.csum_offset())
    {
        return Err(OffloadError::GsoCsumMismatch);
    }
    if len - meta.l3_off() > MAX_IP_LEN {
        return Err(OffloadError::GsoTooLong);
    }
    let hdr_len = meta.l4_off() + l4_hdr_len;
    let mss = h.gso_size as usize;
    if mss + (hdr_len - meta.l3_off()) > MAX_IP_LEN {
        return Err(OffloadError::GsoSizeTooLarge);
    }
    let payload_len = len - hdr_len;
    let segments = payload_len.div_ceil(mss).max(1);
    if segments > MAX_SEGMENTS {
        return Err(OffloadError::GsoTooManySegments);
    }
    match kind {
        GsoKind::Homa => check_native_homa(l4, mss, payload_len)?,
        GsoKind::Tcp if is_homa_over_tcp(l4) => check_homa_over_tcp(l4)?,
        _ => {}
    }
    Ok(GsoPlan {
        meta,
        ip: version,
        kind,
        l4_hdr_len,
        hdr_len,
        mss,
        payload_len,
        segments,
    })
}

/// A native Homa job (HomaModule's `homa_tx_data_pkt_alloc`): a DATA packet whose 52-byte
/// header is replicated, each `mss` chunk of the payload opening with its own 4-byte
/// `seg.offset`, so every chunk (the last one too) must hold at least that.
fn check_native_homa(l4: &[u8], mss: usize, payload_len: usize) -> Result<(), OffloadError> {
    let h = homa::Packet::new_checked(l4).map_err(|_| OffloadError::HomaGso)?;
    let last_chunk = payload_len - (payload_len.saturating_sub(1) / mss) * mss;
    if h.packet_type() != homa::kind::DATA
        || h.doff_bytes() != homa::NATIVE_GSO_HEADER_LEN
        || mss <= SEG_OFFSET_LEN
        || last_chunk < SEG_OFFSET_LEN
    {
        return Err(OffloadError::HomaGso);
    }
    Ok(())
}

/// Bytes of `seg.offset` at the start of every chunk of a native Homa job.
const SEG_OFFSET_LEN: usize = homa::DATA_HEADER_LEN - homa::NATIVE_GSO_HEADER_LEN;

/// True if the TCP header `l4` is Homa's (SYN|RST with Homa's urgent pointer).
fn is_homa_over_tcp(l4: &[u8]) -> bool {
    let t = tcp::Packet::new_unchecked(l4);
    t.flags() == homa::TCP_FLAGS && t.urgent_at() == homa::TCP_URGENT
}

/// A Homa-over-TCP job is cut as TCP: a DATA packet whose receiver takes each segment's offset
/// from its (advanced) sequence, so its `seg.offset` must say so.
fn check_homa_over_tcp(l4: &[u8]) -> Result<(), OffloadError> {
    match homa::Packet::new_checked(l4).map(|h| h.seg_offset()) {
        Ok(Some(homa::SEG_OFFSET_FROM_SEQUENCE)) => Ok(()),
        _ => Err(OffloadError::HomaGso),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;
    use super::*;
    use crate::frame::net_header::NetHeader;
    use vnic_testdriver::frames::{homa_gso_job, mac, HomaJob, HomaWire};

    fn tcp4_job() -> Frame {
        tso_frame(build_tcp(&Spec::default(), &pattern(4000)), GSO_TCPV4, 1448)
    }

    fn check(f: &Frame) -> Result<(), OffloadError> {
        validate_tx(f, TxCaps::ALL)
    }

    #[test]
    fn good_requests_pass() {
        let plain = frame_of(build_tcp(&Spec::default(), b"x"));
        assert_eq!(validate_tx(&plain, TxCaps::default()), Ok(()));
        let p = partial(frame_of(build_udp(&Spec::default(), b"xyz")));
        assert_eq!(check(&p), Ok(()));
        assert_eq!(check(&tcp4_job()), Ok(()));
        let v6 = Spec {
            v6: true,
            vlans: 1,
            v6_exts: vec![hop_by_hop(), routing_srh(1, [3; 16])],
            ..Spec::default()
        };
        assert_eq!(
            check(&tso_frame(build_tcp(&v6, &pattern(3000)), GSO_TCPV6, 1000)),
            Ok(())
        );
        assert_eq!(
            check(&tso_frame(build_udp(&v6, &pattern(3000)), GSO_UDP_L4, 1000)),
            Ok(())
        );
        // A job no bigger than one segment is still fine.
        let small = tso_frame(build_tcp(&Spec::default(), b"tiny"), GSO_TCPV4, 1448);
        assert_eq!(check(&small), Ok(()));
    }

    #[test]
    fn flags_a_guest_may_not_set() {
        let mut f = frame_of(build_tcp(&Spec::default(), b"x"));
        f.header.flags = F_DATA_VALID;
        assert_eq!(check(&f), Err(OffloadError::BadFlags));
        f.header.flags = 4; // RSC_INFO
        assert_eq!(check(&f), Err(OffloadError::BadFlags));
    }

    #[test]
    fn partial_checksum_requests() {
        let p = partial(frame_of(build_tcp(&Spec::default(), b"x")));
        assert_eq!(
            validate_tx(&p, TxCaps::default()),
            Err(OffloadError::CsumNotNegotiated)
        );
        let len = p.data.len() as u16;
        let mut f = p;
        f.header.csum_start = len;
        assert_eq!(check(&f), Err(OffloadError::CsumStartBeyondFrame));
        f.header.csum_start = len - 2;
        f.header.csum_offset = 1;
        assert_eq!(check(&f), Err(OffloadError::CsumOffsetBeyondFrame));
        f.header.csum_start = 34;
        f.header.csum_offset = 16;
        f.header.hdr_len = len + 1;
        assert_eq!(check(&f), Err(OffloadError::HdrLenBeyondFrame));
    }

    #[test]
    fn gso_type_and_negotiation() {
        let mut f = tcp4_job();
        assert_eq!(
            validate_tx(
                &f,
                TxCaps {
                    csum: true,
                    tso6: true,
                    ..Default::default()
                }
            ),
            Err(OffloadError::GsoNotNegotiated)
        );
        f.header.gso_type = GSO_TCPV4 | GSO_ECN;
        assert_eq!(
            validate_tx(
                &f,
                TxCaps {
                    csum: true,
                    tso4: true,
                    ..Default::default()
                }
            ),
            Err(OffloadError::GsoNotNegotiated)
        );
        f.header.gso_type = GSO_UDP;
        assert_eq!(check(&f), Err(OffloadError::GsoNotNegotiated));
        f.header.gso_type = 7;
        assert_eq!(check(&f), Err(OffloadError::GsoUnknownType));
        f.header.gso_type = GSO_ECN;
        assert_eq!(check(&f), Err(OffloadError::GsoUnknownType));
        f.header.gso_type = GSO_TCPV4;
        f.header.flags = 0;
        assert_eq!(check(&f), Err(OffloadError::GsoWithoutCsum));
    }

    #[test]
    fn gso_size_zero_and_too_large() {
        let mut f = tcp4_job();
        f.header.gso_size = 0;
        assert_eq!(check(&f), Err(OffloadError::GsoSizeZero));
        f.header.gso_size = 65535 - 40 + 1;
        assert_eq!(check(&f), Err(OffloadError::GsoSizeTooLarge));
        f.header.gso_size = 65535 - 40;
        assert_eq!(check(&f), Ok(()));
        f.header.gso_size = 3; // 4000 / 3 segments
        assert_eq!(check(&f), Err(OffloadError::GsoTooManySegments));
    }

    #[test]
    fn hdr_len_beyond_frame() {
        let mut f = tcp4_job();
        f.header.hdr_len = f.data.len() as u16 + 1;
        assert_eq!(check(&f), Err(OffloadError::HdrLenBeyondFrame));
        // hdr_len is a hint: smaller or bigger than the real headers is fine.
        f.header.hdr_len = 0;
        assert_eq!(check(&f), Ok(()));
    }

    #[test]
    fn gso_type_not_matching_the_headers() {
        let v6 = Spec {
            v6: true,
            ..Spec::default()
        };
        // TCPV4 on IPv6, TCPV6 on IPv4.
        let f = tso_frame(build_tcp(&v6, &pattern(3000)), GSO_TCPV4, 1000);
        assert_eq!(check(&f), Err(OffloadError::GsoTypeMismatch));
        let f = tso_frame(build_tcp(&Spec::default(), &pattern(3000)), GSO_TCPV6, 1000);
        assert_eq!(check(&f), Err(OffloadError::GsoTypeMismatch));
        // TCPV4 on UDP, USO on TCP.
        let f = tso_frame(build_udp(&Spec::default(), &pattern(3000)), GSO_TCPV4, 1000);
        assert_eq!(check(&f), Err(OffloadError::GsoTypeMismatch));
        let f = tso_frame(
            build_tcp(&Spec::default(), &pattern(3000)),
            GSO_UDP_L4,
            1000,
        );
        assert_eq!(check(&f), Err(OffloadError::GsoTypeMismatch));
        // Not IP at all.
        let mut f = tcp4_job();
        f.data[12] = 0x08;
        f.data[13] = 0x06;
        assert_eq!(check(&f), Err(OffloadError::GsoTypeMismatch));
    }

    /// A Homa job as HomaModule builds it: 5000 bytes at offset 1424 of a 100 000-byte message,
    /// in packets of 1424 bytes of message.
    fn homa_job(wire: HomaWire) -> Frame {
        let job = HomaJob {
            rpc_id: 0x42,
            message_length: 100_000,
            offset: 1424,
            data: &pattern(5000),
            max_seg_data: 1424,
        };
        let (data, gso_size) = homa_gso_job(mac(2), mac(1), wire, &job);
        let gso = if wire.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
        tso_frame(data, gso, gso_size)
    }

    const NATIVE6: HomaWire = HomaWire {
        v6: true,
        vlan: false,
        v6_dest_opts: false,
        over_tcp: false,
        precedence: 0,
    };

    #[test]
    fn homa_jobs_in_both_formats_pass() {
        for wire in [
            HomaWire::default(),
            NATIVE6,
            HomaWire {
                over_tcp: true,
                ..HomaWire::default()
            },
            HomaWire {
                over_tcp: true,
                ..NATIVE6
            },
        ] {
            let f = homa_job(wire);
            assert_eq!(check(&f), Ok(()), "{wire:?}");
            let plan = plan_gso(&f, GsoType::decode(f.header.gso_type).unwrap().unwrap());
            let plan = plan.unwrap();
            let native = !wire.over_tcp;
            assert_eq!(plan.kind == GsoKind::Homa, native);
            assert_eq!(plan.l4_hdr_len, if native { 52 } else { 56 });
        }
    }

    #[test]
    fn homa_jobs_in_neither_format_are_refused() {
        let refused = |f: &Frame| assert_eq!(check(f), Err(OffloadError::HomaGso));
        // Not a DATA packet: a TCP-shaped header on protocol 146.
        let homa = Spec {
            protocol: PROTO_HOMA,
            ..Spec::default()
        };
        refused(&tso_frame(
            build_tcp(&homa, &pattern(3000)),
            GSO_TCPV4,
            1000,
        ));
        // Native with the 56-byte header: every segment would carry the same offset.
        let mut f = homa_job(HomaWire::default());
        f.data[34 + 12] = 14 << 4;
        f.header.hdr_len += 4;
        refused(&f);
        // Native with chunks too short for their seg.offset.
        let mut f = homa_job(HomaWire::default());
        f.data.truncate(34 + 52 + 400);
        f.header.gso_size = 4;
        refused(&f);
        // ... or a last chunk that is: 5000 bytes in packets of 1424 leave 728 for the last
        // chunk, after its 4-byte seg.offset.
        let mut f = homa_job(HomaWire::default());
        let n = f.data.len();
        f.data.truncate(n - 729);
        refused(&f);
        f.data.push(0);
        assert_eq!(check(&f), Ok(()), "4 bytes: a seg.offset and no data");
        // Over TCP with a seg.offset of its own.
        let mut f = homa_job(HomaWire {
            over_tcp: true,
            ..HomaWire::default()
        });
        f.data[34 + 52..34 + 56].copy_from_slice(&1424u32.to_be_bytes());
        refused(&f);
        // A job of 146 that names TCPV6 on IPv4 is the usual mismatch.
        let mut f = homa_job(HomaWire::default());
        f.header.gso_type = GSO_TCPV6;
        assert_eq!(check(&f), Err(OffloadError::GsoTypeMismatch));
    }

    #[test]
    fn csum_fields_must_name_the_l4_checksum() {
        let mut f = tcp4_job();
        f.header.csum_offset = 6;
        assert_eq!(check(&f), Err(OffloadError::GsoCsumMismatch));
        f.header.csum_offset = 16;
        f.header.csum_start = 30;
        assert_eq!(check(&f), Err(OffloadError::GsoCsumMismatch));
    }

    #[test]
    fn fragments_auth_and_truncation() {
        let frag = Spec {
            v6: true,
            v6_exts: vec![fragment(false)],
            ..Spec::default()
        };
        let f = tso_frame(build_udp(&frag, &pattern(3000)), GSO_UDP_L4, 1000);
        assert_eq!(check(&f), Err(OffloadError::GsoFragment));
        let mut f = tcp4_job();
        f.data[14 + 6] = 0x20; // MF
        assert_eq!(check(&f), Err(OffloadError::GsoFragment));
        // A TCP header that claims more than the frame holds.
        let mut f = tso_frame(build_tcp(&Spec::default(), b""), GSO_TCPV4, 1000);
        f.data[34 + 12] = 0xf0;
        assert_eq!(check(&f), Err(OffloadError::Unparseable));
        // Truncated IPv4 header.
        let mut f = tcp4_job();
        f.data.truncate(30);
        f.header.hdr_len = 0;
        f.header.csum_start = 20;
        f.header.csum_offset = 0;
        assert_eq!(check(&f), Err(OffloadError::Unparseable));
    }

    #[test]
    fn too_long() {
        let mut f = tso_frame(
            build_tcp(&Spec::default(), &pattern(65000)),
            GSO_TCPV4,
            1000,
        );
        f.data.extend_from_slice(&[0; 1000]);
        assert_eq!(check(&f), Err(OffloadError::GsoTooLong));
    }

    #[test]
    fn garbage_headers_never_panic() {
        let data = build_tcp(&Spec::default(), &pattern(200));
        let mut x: u32 = 12345;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..20000 {
            let r = next();
            let header = NetHeader {
                flags: (r & 7) as u8,
                gso_type: [0, 1, 3, 4, 5, 0x81, 0x85, 2][(r >> 3) as usize & 7],
                hdr_len: (next() % 300) as u16,
                gso_size: (next() % 300) as u16,
                csum_start: (next() % 300) as u16,
                csum_offset: (next() % 40) as u16,
                num_buffers: 0,
            };
            let len = (next() as usize) % (data.len() + 1);
            let f = Frame::with_data(data[..len].to_vec(), header);
            let _ = validate_tx(&f, TxCaps::ALL);
        }
    }
}
