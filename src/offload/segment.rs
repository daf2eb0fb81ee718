//! Software segmentation: one GSO frame cut into frames of at most `gso_size` payload bytes,
//! as a NIC's TSO/USO would (and as Linux's `tcp_gso_segment`/`__udp_gso_segment` do).
//!
//! Each segment is written once: the replicated headers, then its slice of the payload, into a
//! frame from the pool; then its header fields are patched in place. Per segment:
//! - IPv4: total length, ID = first ID + index (wrapping), header checksum;
//!   IPv6: payload length (extension headers replicated as they are);
//! - TCP: sequence number advanced by the payload before it; FIN and PSH only on the last
//!   segment, CWR only on the first; UDP: its own length; native Homa: nothing (every chunk
//!   starts with its own `seg.offset`);
//! - L4 checksum: a partial one (pseudo-header sum, `F_NEEDS_CSUM`) for a destination with
//!   GUEST_CSUM, which costs no pass over the payload; else a complete one, summed over the
//!   segment just written (still in cache).

use super::checksum::{self, add, finish, fold, pseudo_rest};
use super::validate::GsoPlan;
use super::GsoKind;
use crate::frame::net_header::{NetHeader, F_NEEDS_CSUM};
use crate::frame::{Frame, FramePool};
use crate::wire::{ipv4, ipv6, tcp, udp, IpVersion};

/// Cuts `src` (checked by `plan_gso`) into `plan.segments` frames pushed to `out`; returns how
/// many. `src` itself is left untouched.
pub(crate) fn segment(
    src: &Frame,
    plan: &GsoPlan,
    partial: bool,
    pool: &FramePool,
    out: &mut Vec<Frame>,
) -> usize {
    let data = &src.data;
    let headers = &data[..plan.hdr_len];
    let payload = &data[plan.hdr_len..plan.hdr_len + plan.payload_len];
    let first = Originals::read(data, plan);
    // The addresses of the pseudo-header are the same for every segment: sum them once.
    let (src_addr, dst_addr) = plan
        .meta
        .pseudo_addresses(data)
        .expect("plan_gso checked the pseudo-header addresses");
    let addresses = add(add(0, src_addr), dst_addr);
    out.reserve(plan.segments);
    for i in 0..plan.segments {
        let start = i * plan.mss;
        let end = (start + plan.mss).min(payload.len());
        let mut seg = pool.get();
        seg.data.reserve(plan.hdr_len + (end - start));
        seg.data.extend_from_slice(headers);
        seg.data.extend_from_slice(&payload[start..end]);
        // Same headers: the same metadata (and the flow hash the job was given at entry).
        seg.meta = plan.meta;
        let position = Position {
            index: i,
            last: i + 1 == plan.segments,
            payload_offset: start,
            payload_len: end - start,
        };
        patch_ip(&mut seg.data, plan, &first, &position);
        patch_l4(&mut seg.data, plan, &first, &position);
        seg.header = fill_l4_checksum(&mut seg.data, plan, addresses, partial);
        out.push(seg);
    }
    plan.segments
}

/// Header fields of the GSO frame that segments derive theirs from.
struct Originals {
    ip_id: u16,
    tcp_seq: u32,
    tcp_flags: u8,
}

impl Originals {
    fn read(data: &[u8], plan: &GsoPlan) -> Self {
        let ip_id = match plan.ip {
            IpVersion::V4 => ipv4::Packet::new_unchecked(&data[plan.meta.l3_off()..]).ident(),
            IpVersion::V6 => 0,
        };
        let (tcp_seq, tcp_flags) = match plan.kind {
            GsoKind::Tcp => {
                let t = tcp::Packet::new_unchecked(&data[plan.meta.l4_off()..]);
                (t.seq_number(), t.flags())
            }
            GsoKind::Udp | GsoKind::Homa => (0, 0),
        };
        Originals {
            ip_id,
            tcp_seq,
            tcp_flags,
        }
    }
}

/// Where a segment sits in the job.
struct Position {
    index: usize,
    last: bool,
    payload_offset: usize,
    payload_len: usize,
}

fn patch_ip(seg: &mut [u8], plan: &GsoPlan, first: &Originals, pos: &Position) {
    let l3 = plan.meta.l3_off();
    let ip_len = seg.len() - l3;
    match plan.ip {
        IpVersion::V4 => {
            let mut p = ipv4::Packet::new_unchecked(&mut seg[l3..]);
            p.set_total_len(ip_len as u16);
            p.set_ident(first.ip_id.wrapping_add(pos.index as u16));
            checksum::set_ipv4_header_checksum(p.header_mut());
        }
        IpVersion::V6 => ipv6::Packet::new_unchecked(&mut seg[l3..])
            .set_payload_len((ip_len - plan.meta.l3_hdr_len()) as u16),
    }
}

fn patch_l4(seg: &mut [u8], plan: &GsoPlan, first: &Originals, pos: &Position) {
    let l4 = &mut seg[plan.meta.l4_off()..];
    match plan.kind {
        GsoKind::Tcp => {
            let mut t = tcp::Packet::new_unchecked(l4);
            t.set_seq_number(first.tcp_seq.wrapping_add(pos.payload_offset as u32));
            let mut flags = first.tcp_flags;
            if !pos.last {
                flags &= !(tcp::FIN | tcp::PSH);
            }
            if pos.index != 0 {
                flags &= !tcp::CWR;
            }
            t.set_flags(flags);
        }
        GsoKind::Udp => {
            udp::Packet::new_unchecked(l4).set_length((plan.l4_hdr_len + pos.payload_len) as u16)
        }
        // Native Homa: each chunk carries its own offset; the header stays as it is.
        GsoKind::Homa => {}
    }
}

/// Writes the segment's L4 checksum (partial or complete) and returns its virtio-net header.
fn fill_l4_checksum(seg: &mut [u8], plan: &GsoPlan, addresses: u64, partial: bool) -> NetHeader {
    let l4_off = plan.meta.l4_off();
    let l4 = &mut seg[l4_off..];
    let pseudo = addresses + pseudo_rest(plan.kind.protocol(), l4.len() as u32);
    if partial {
        // The field holds the folded pseudo-header sum; the receiver adds the rest.
        plan.kind.set_checksum(l4, fold(pseudo));
        return partial_header(l4_off, plan.kind);
    }
    plan.kind.set_checksum(l4, 0);
    let mut csum = finish(add(pseudo, l4));
    if csum == 0 && plan.kind == GsoKind::Udp {
        // 0 means "no checksum" to UDP; 0xffff is the same sum.
        csum = 0xffff;
    }
    plan.kind.set_checksum(l4, csum);
    NetHeader::default()
}

/// The virtio-net header of a partial checksum of `kind` at `l4_off`.
fn partial_header(l4_off: usize, kind: GsoKind) -> NetHeader {
    NetHeader {
        flags: F_NEEDS_CSUM,
        csum_start: l4_off as u16,
        csum_offset: kind.csum_offset(),
        ..NetHeader::default()
    }
}

/// Turns a GSO frame that carries `F_DATA_VALID` (a host tap's GRO output) into the partial form
/// a virtio driver expects with `gso_type`: NEEDS_CSUM at the L4 checksum, seeded with the
/// pseudo-header of the whole packet (as Linux's own TSO frames are).
pub(crate) fn make_partial(frame: &mut Frame, plan: &GsoPlan) {
    let l4 = plan.meta.l4_off();
    let l4_len = frame.data.len() - l4;
    let seed = checksum::pseudo_for(&frame.data, &plan.meta, plan.kind.protocol(), l4_len)
        .expect("plan_gso checked the pseudo-header addresses");
    plan.kind.set_checksum(&mut frame.data[l4..], fold(seed));
    let h = partial_header(l4, plan.kind);
    frame.header.flags = h.flags;
    frame.header.csum_start = h.csum_start;
    frame.header.csum_offset = h.csum_offset;
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;
    use crate::frame::net_header::NetHeader;
    use etherparse::{LaxSlicedPacket, NetSlice, SlicedPacket, TransportSlice};
    use proptest::prelude::*;
    use vnic_testdriver::frames::{homa_data_of, homa_gso_job, mac, ones_sum, HomaJob, HomaWire};

    /// Cuts with `adapt_for` for a destination without any offload (complete checksums) or with
    /// GUEST_CSUM only (partial ones, then completed here to check them).
    fn cut(f: Frame, partial_csum: bool) -> Vec<Frame> {
        let pool = FramePool::new(64);
        let mut out = Vec::new();
        let caps = RxCaps {
            partial_csum,
            ..Default::default()
        };
        let n = adapt_for(f, caps, &pool, &mut out).unwrap();
        assert_eq!(n, out.len());
        if partial_csum {
            for s in &mut out {
                assert_eq!(s.header.flags, F_NEEDS_CSUM);
                let (start, offset) = (s.header.csum_start, s.header.csum_offset);
                checksum::complete_partial(&mut s.data, start, offset).unwrap();
            }
        } else {
            assert!(out.iter().all(|s| s.header == NetHeader::default()));
        }
        out
    }

    struct Seg {
        ip_id: Option<u16>,
        seq: u32,
        flags: u8,
        payload: Vec<u8>,
    }

    /// Reads a segment with etherparse (strict: lengths must agree) and checks its checksums
    /// with etherparse's checksum code.
    fn read(data: &[u8]) -> Seg {
        let p = SlicedPacket::from_ethernet(data).expect("segment parses strictly");
        let (ip_id, src, dst) = match p.net.as_ref().unwrap() {
            NetSlice::Ipv4(ip) => {
                let h = ip.header();
                assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
                (
                    Some(h.identification()),
                    h.source().to_vec(),
                    h.destination().to_vec(),
                )
            }
            NetSlice::Ipv6(ip) => {
                let h = ip.header();
                (None, h.source().to_vec(), h.destination().to_vec())
            }
            _ => panic!(),
        };
        let final_dst = final_destination(data).unwrap_or(dst);
        match p.transport.unwrap() {
            TransportSlice::Tcp(t) => {
                let c = if src.len() == 4 {
                    t.calc_checksum_ipv4(
                        src.as_slice().try_into().unwrap(),
                        final_dst.as_slice().try_into().unwrap(),
                    )
                } else {
                    t.calc_checksum_ipv6(
                        src.as_slice().try_into().unwrap(),
                        final_dst.as_slice().try_into().unwrap(),
                    )
                }
                .unwrap();
                assert!(c == t.checksum() || (c == 0 && t.checksum() == 0xffff));
                Seg {
                    ip_id,
                    seq: t.sequence_number(),
                    flags: t.slice()[13],
                    payload: t.payload().to_vec(),
                }
            }
            TransportSlice::Udp(u) => {
                let hdr = u.to_header();
                let c = if src.len() == 4 {
                    hdr.calc_checksum_ipv4_raw(
                        src.as_slice().try_into().unwrap(),
                        final_dst.as_slice().try_into().unwrap(),
                        u.payload(),
                    )
                } else {
                    hdr.calc_checksum_ipv6_raw(
                        src.as_slice().try_into().unwrap(),
                        final_dst.as_slice().try_into().unwrap(),
                        u.payload(),
                    )
                }
                .unwrap();
                assert_eq!(c, u.checksum());
                assert_eq!(u.length() as usize, 8 + u.payload().len());
                Seg {
                    ip_id,
                    seq: 0,
                    flags: 0,
                    payload: u.payload().to_vec(),
                }
            }
            _ => panic!(),
        }
    }

    /// The final destination named by a routing header with segments left, as the test
    /// builders lay them out.
    fn final_destination(data: &[u8]) -> Option<Vec<u8>> {
        let p = LaxSlicedPacket::from_ethernet(data).ok()?;
        let etherparse::LaxNetSlice::Ipv6(ip) = p.net? else {
            return None;
        };
        for e in ip.extensions().clone() {
            if let etherparse::Ipv6ExtensionSlice::Routing(r) = e {
                let b = r.slice();
                if b[3] > 0 {
                    let at = if b[2] == 0 {
                        8 + 16 * (b[1] as usize / 2 - 1)
                    } else {
                        8
                    };
                    return Some(b[at..at + 16].to_vec());
                }
            }
        }
        None
    }

    fn check_tcp_job(spec: &Spec, payload_len: usize, mss: u16, partial: bool) -> Vec<Seg> {
        let payload = pattern(payload_len);
        let gso = if spec.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
        let f = tso_frame(build_tcp(spec, &payload), gso, mss);
        let segs: Vec<Seg> = cut(f, partial).iter().map(|s| read(&s.data)).collect();
        assert_eq!(segs.len(), payload_len.div_ceil(mss as usize).max(1));
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(s.payload.len() <= mss as usize);
            if i + 1 < segs.len() {
                assert_eq!(s.payload.len(), mss as usize);
            }
            assert_eq!(s.seq, spec.seq.wrapping_add(joined.len() as u32));
            if !spec.v6 {
                assert_eq!(s.ip_id, Some(spec.ip_id.wrapping_add(i as u16)));
            }
            joined.extend_from_slice(&s.payload);
        }
        assert_eq!(joined, payload);
        segs
    }

    #[test]
    fn tcp_v4_ids_sequence_and_tiny_last_segment() {
        let segs = check_tcp_job(&Spec::default(), 3 * 1448 + 1, 1448, false);
        assert_eq!(segs.len(), 4);
        assert_eq!(segs[3].payload.len(), 1);
        // IDs wrap: 0xfffe, 0xffff, 0, 1.
        assert_eq!(segs[2].ip_id, Some(0));
    }

    #[test]
    fn payload_an_exact_multiple_of_gso_size() {
        for partial in [false, true] {
            let segs = check_tcp_job(&Spec::default(), 4 * 1000, 1000, partial);
            assert_eq!(segs.len(), 4);
            assert!(segs.iter().all(|s| s.payload.len() == 1000));
        }
    }

    #[test]
    fn fin_psh_only_on_the_last_cwr_only_on_the_first() {
        let spec = Spec {
            tcp_flags: TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR | TCP_ECE,
            ..Spec::default()
        };
        let segs = check_tcp_job(&spec, 5000, 1200, false);
        let n = segs.len();
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(s.flags & (TCP_PSH | TCP_FIN) != 0, i + 1 == n, "seg {i}");
            let end = if i + 1 == n { TCP_PSH | TCP_FIN } else { 0 };
            assert_eq!(s.flags & (TCP_PSH | TCP_FIN), end);
            assert_eq!(s.flags & TCP_CWR != 0, i == 0, "seg {i}");
            // ACK and ECE stay on every segment.
            assert_eq!(s.flags & (TCP_ACK | TCP_ECE), TCP_ACK | TCP_ECE);
        }
    }

    #[test]
    fn vlan_qinq_ipv4_options_and_tcp_options() {
        for vlans in 0..=2 {
            let spec = Spec {
                vlans,
                v4_options: vec![1, 1, 1, 0],
                tcp_options: ts_option(1, 2),
                ..Spec::default()
            };
            check_tcp_job(&spec, 7000, 1400, false);
            check_tcp_job(&spec, 7000, 1400, true);
        }
    }

    #[test]
    fn tcp_v6_with_extension_headers() {
        for exts in [
            vec![],
            vec![hop_by_hop()],
            vec![hop_by_hop(), dest_options(), routing_srh(0, [4; 16])],
            vec![hop_by_hop(), routing_srh(1, [4; 16])],
            vec![routing_type2([6; 16]), dest_options()],
        ] {
            for vlans in [0, 1] {
                let spec = Spec {
                    v6: true,
                    vlans,
                    v6_exts: exts.clone(),
                    ..Spec::default()
                };
                check_tcp_job(&spec, 9000, 1220, false);
                check_tcp_job(&spec, 9000, 1220, true);
            }
        }
    }

    #[test]
    fn a_job_no_bigger_than_one_segment_is_one_frame() {
        let segs = check_tcp_job(&Spec::default(), 100, 1448, false);
        assert_eq!(segs.len(), 1);
        let segs = check_tcp_job(&Spec::default(), 0, 1448, false);
        assert_eq!(segs.len(), 1);
    }

    #[test]
    fn uso_odd_sizes_each_segment_its_own_datagram() {
        for v6 in [false, true] {
            for (len, mss) in [(1001, 333), (999, 333), (7, 2), (2999, 1472), (1, 1)] {
                let spec = Spec {
                    v6,
                    vlans: 1,
                    ..Spec::default()
                };
                let payload = pattern(len);
                let f = tso_frame(build_udp(&spec, &payload), GSO_UDP_L4, mss);
                for partial in [false, true] {
                    let out = cut(Frame::with_data(f.data.clone(), f.header), partial);
                    assert_eq!(out.len(), len.div_ceil(mss as usize));
                    let mut joined = Vec::new();
                    for (i, s) in out.iter().enumerate() {
                        let seg = read(&s.data);
                        assert!(seg.payload.len() <= mss as usize);
                        if !v6 {
                            assert_eq!(seg.ip_id, Some(spec.ip_id.wrapping_add(i as u16)));
                        }
                        joined.extend_from_slice(&seg.payload);
                    }
                    assert_eq!(joined, payload);
                }
            }
        }
    }

    #[test]
    fn segments_keep_the_flow_hash_and_recycle_the_job() {
        let pool = FramePool::new(64);
        let mut out = Vec::new();
        let f = tso_frame(build_tcp(&Spec::default(), &pattern(3000)), GSO_TCPV4, 1000);
        adapt_for(f, RxCaps::default(), &pool, &mut out).unwrap();
        assert!(out.iter().all(|s| s.flow_hash() == 0x1234));
        assert_eq!(pool.parked(), 1, "the job's buffer went back to the pool");
    }

    /// The ones'-complement sum over the L4 bytes of an untagged IP frame and its pseudo-header
    /// (with the frame's own protocol), computed with the test driver's arithmetic: 0xffff when
    /// the L4 checksum is right.
    fn l4_sum(data: &[u8]) -> u16 {
        let v6 = data[14] >> 4 == 6;
        let (l4, addrs, proto) = if v6 {
            (54, &data[22..54], data[20])
        } else {
            (34, &data[26..34], data[23])
        };
        let len = (data.len() - l4) as u32;
        let acc = ones_sum(
            addrs,
            ones_sum(&[0, proto], ones_sum(&len.to_be_bytes(), 0)),
        );
        let mut sum = ones_sum(&data[l4..], acc);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// Cuts a HomaModule-shaped job of `len` bytes at `offset` of a message (packets of
    /// `max_seg` bytes of it) for `caps`, and checks every segment the way Homa's receiver reads
    /// it: one RPC, offsets where the data belongs, the message whole; IP lengths, IDs and
    /// checksums right; nothing else of the header changed.
    fn check_homa_job(wire: HomaWire, len: usize, offset: u32, max_seg: usize, caps: RxCaps) {
        let message = pattern(len);
        let job = HomaJob {
            rpc_id: 0x77,
            message_length: 1 << 20,
            offset,
            data: &message,
            max_seg_data: max_seg,
        };
        let (data, gso_size) = homa_gso_job(mac(2), mac(1), wire, &job);
        let gso = if wire.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
        let job = tso_frame(data, gso, gso_size);
        let l4 = if wire.v6 { 54 } else { 34 };
        let job_header = job.data[l4..l4 + if wire.over_tcp { 56 } else { 52 }].to_vec();
        let pool = FramePool::new(64);
        let mut out = Vec::new();
        let n = adapt_for(job, caps, &pool, &mut out).unwrap();
        assert_eq!(
            n,
            len.div_ceil(max_seg),
            "{wire:?} len {len} max_seg {max_seg}"
        );
        let mut joined = Vec::new();
        for (i, seg) in out.iter_mut().enumerate() {
            assert_eq!(seg.header.gso_type, 0, "a segment is no job");
            if caps.partial_csum {
                let h = seg.header;
                assert_eq!(
                    (h.flags, h.csum_start, h.csum_offset),
                    (F_NEEDS_CSUM, l4 as u16, 16)
                );
                checksum::complete_partial(&mut seg.data, h.csum_start, h.csum_offset).unwrap();
            } else {
                assert_eq!(seg.header, NetHeader::default());
            }
            let d = &seg.data;
            assert_eq!(l4_sum(d), 0xffff, "segment {i}: Homa's checksum");
            if !wire.v6 {
                assert_eq!(
                    ones_sum(&d[14..34], 0),
                    0xffff,
                    "segment {i}: IPv4 header checksum"
                );
                assert_eq!(u16::from_be_bytes([d[18], d[19]]), 1 + i as u16, "IPv4 ID");
            }
            let (rpc, at, data) = homa_data_of(d).expect("a Homa DATA packet, its lengths right");
            assert_eq!(rpc, 0x77);
            assert_eq!(
                at as usize,
                offset as usize + joined.len(),
                "segment {i}'s offset"
            );
            assert!(data.len() <= max_seg && !data.is_empty());
            joined.extend_from_slice(&data);
            let mut header = d[l4..l4 + job_header.len()].to_vec();
            header[16..18].copy_from_slice(&job_header[16..18]);
            if wire.over_tcp {
                // TCP's rule, which Homa over TCP relies on: the sequence says the offset.
                let seq = u32::from_be_bytes(header[4..8].try_into().unwrap());
                assert_eq!(seq, at);
                header[4..8].copy_from_slice(&job_header[4..8]);
            }
            assert_eq!(header, job_header, "segment {i}: the replicated header");
        }
        assert_eq!(joined, message);
    }

    const OVER_TCP: HomaWire = HomaWire {
        v6: false,
        vlan: false,
        v6_dest_opts: false,
        over_tcp: true,
        precedence: 0,
    };

    #[test]
    fn homa_jobs_are_cut_as_homa_means() {
        let csum_only = RxCaps {
            partial_csum: true,
            ..RxCaps::default()
        };
        // (A destination that takes TSO gets a Homa-over-TCP job whole: `adapt_for`'s tests.)
        let tso6_only = RxCaps {
            partial_csum: true,
            tso6: true,
            ..RxCaps::default()
        };
        for caps in [tso6_only, csum_only, RxCaps::default()] {
            for wire in [
                HomaWire::default(),
                HomaWire {
                    v6: true,
                    ..HomaWire::default()
                },
                OVER_TCP,
                HomaWire {
                    v6: true,
                    ..OVER_TCP
                },
            ] {
                // MTU 1500: 1424 bytes of message per IPv4 packet.
                if wire.v6 && caps == tso6_only {
                    continue;
                }
                check_homa_job(wire, 60_000, 1424 * 10, 1424, caps);
                check_homa_job(wire, 1425, 0, 1424, caps);
                check_homa_job(wire, 2848, 2848, 1424, caps);
            }
        }
    }

    proptest! {
        #[test]
        fn any_homa_job_cut_gives_its_message_back(
            len in 1usize..30_000,
            max_seg in 16usize..9000,
            offset in 0u32..1_000_000,
            v6: bool,
            over_tcp: bool,
            partial_csum: bool,
        ) {
            let wire = HomaWire { v6, over_tcp, ..HomaWire::default() };
            prop_assume!(len.div_ceil(max_seg) <= MAX_SEGMENTS);
            let caps = RxCaps { partial_csum, ..RxCaps::default() };
            check_homa_job(wire, len, offset, max_seg, caps);
        }
    }
}
