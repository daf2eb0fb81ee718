//! Receive coalescing (LRO) for one RX queue of a destination that negotiated GUEST_TSO4/6.
//!
//! Consecutive in-order TCP segments of one flow are merged into one frame that the guest
//! receives as a GSO frame, so its stack handles one 64 KiB packet instead of 45. The rules are
//! Linux GRO's (`tcp_gro_receive`), kept simple:
//!
//! - only plain TCP (IP protocol 6) over IPv4 without options or IPv6 without extension
//!   headers, not fragmented, no Ethernet padding, with payload; Homa (146) and everything
//!   else passes untouched;
//! - a segment merges when its sequence number is the next expected, its payload is at most the
//!   flow's MSS (the first segment's payload), its IPv4 ID the next one, and IP TOS/TTL/DF (IPv6
//!   traffic class, flow label, hop limit), TCP ACK, window, flags and options are those of the
//!   flow's first segment, except the timestamp option, whose TSval and TSecr may grow but
//!   never go backwards (the merged frame carries the latest);
//! - SYN, RST, URG and CWR segments are never merged; PSH and FIN are merged as the last
//!   segment and end the frame, as does a short segment, reaching 64 KiB of IP packet, an
//!   out-of-order or retransmitted segment (which starts a new frame), or [`Coalescer::flush`]
//!   at the end of a batch.
//!
//! Checksums: a segment is merged only if its checksum is known good: vnic verifies it here, or
//! its source vouched (`F_DATA_VALID` from a host tap) or it is a local partial checksum
//! (`F_NEEDS_CSUM`, not yet computed, trusted like Linux trusts CHECKSUM_PARTIAL). A segment
//! with a wrong checksum ends its flow's frame and is delivered as it is, so the guest's stack
//! drops it: merging it would launder the error.
//!
//! Output header of a merged frame: `gso_type` TCPV4/TCPV6, `gso_size` = the MSS, `hdr_len` =
//! the exact length of the Ethernet, IP and TCP headers (what VIRTIO_NET_F_GUEST_HDRLEN
//! promises), and a *partial* checksum: `F_NEEDS_CSUM` with `csum_start` at TCP and
//! `csum_offset` 16, the field seeded with the pseudo-header sum of the whole packet (as Linux's
//! own TSO frames are). A partial checksum rather than a complete one because every byte was
//! already verified, a complete sum would be one more pass over 64 KiB for nothing, and a
//! virtio driver must accept NEEDS_CSUM on a GSO frame (it is how Linux hosts deliver them);
//! should the guest forward the frame, its stack or NIC computes correct checksums from the
//! seed. IPv4 header checksum, total length / payload length are rewritten; the IPv4 ID is the
//! first segment's. A segment left alone keeps its header, plus `F_DATA_VALID` if vnic verified
//! it (the destination has GUEST_CSUM, implied by GUEST_TSO).

use super::checksum::{self, fold};
use super::{CsumVerdict, GSO_TCPV4, GSO_TCPV6, MAX_IP_LEN, TCP_CSUM_OFFSET};
use crate::frame::meta::FrameMeta;
use crate::frame::net_header::{NetHeader, F_DATA_VALID, F_NEEDS_CSUM, GSO_NONE};
use crate::frame::{Frame, FramePool};
use crate::wire::tcp::{self, CWR, FIN, PSH, RST, SYN, URG};
use crate::wire::{ip, ipv4, ipv6, IpVersion};

/// Flags that keep a segment out of any merge.
const NEVER_MERGED: u8 = SYN | RST | URG | CWR;
/// Flags merged as the last segment of a frame.
const ENDS_FRAME: u8 = PSH | FIN;

/// LRO for one RX queue: feed frames in arrival order, get merged frames out.
pub struct Coalescer {
    /// Flows holding a frame, oldest first. Never longer than `max_flows`.
    flows: Vec<Flow>,
    max_flows: usize,
}

/// One flow's frame under construction: its first segment with later payloads appended.
struct Flow {
    frame: Frame,
    hdrs: FrameMeta,
    /// Ethernet + IP + TCP headers.
    hdr_len: usize,
    mss: usize,
    segments: usize,
    next_seq: u32,
    next_ip_id: u16,
    /// The first segment's IPv4 ID, and how the IDs of this flow go on (decided by the second
    /// segment): incrementing, or, with DF set, fixed, as Linux GRO accepts ("atomic"
    /// datagrams from stacks that do not number DF packets).
    first_ip_id: u16,
    ip_ids: IpIds,
    /// Latest timestamp values, and where TSval sits in the frame.
    ts: Option<Timestamp>,
    /// PSH/FIN of the last segment.
    end_flags: u8,
    /// vnic verified the first segment's checksums (worth `F_DATA_VALID` if left alone).
    verified: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IpIds {
    Unknown,
    Increment,
    Fixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Timestamp {
    /// Offset of TSval from the start of the TCP header.
    at: usize,
    val: u32,
    ecr: u32,
}

/// A TCP segment that may be merged.
struct Segment {
    hdrs: FrameMeta,
    tcp_hdr_len: usize,
    seq: u32,
    flags: u8,
    payload_len: usize,
    ip_id: u16,
    ts: Option<Timestamp>,
}

/// What a frame is to the coalescer.
enum Class {
    /// Not a TCP flow's frame: passes, no flow is touched.
    Other,
    /// A TCP frame that is not merged; the flow it belongs to (if held) is flushed first, to
    /// keep the flow's order.
    Unmergeable(FrameMeta),
    /// A mergeable segment; `verified`: vnic checked its checksums.
    Candidate { seg: Segment, verified: bool },
}

impl Coalescer {
    /// A coalescer holding at most `max_flows` frames under construction (0: never holds).
    pub fn new(max_flows: usize) -> Self {
        Coalescer {
            flows: Vec::with_capacity(max_flows),
            max_flows,
        }
    }

    /// Frames held now.
    pub fn held(&self) -> usize {
        self.flows.len()
    }

    /// Takes the next frame of the queue. Frames that cannot be merged go to `out` at once
    /// (after their own flow's held frame); merged-away frames return to `pool`.
    pub fn push(&mut self, frame: Frame, pool: &FramePool, out: &mut Vec<Frame>) {
        match classify(&frame) {
            Class::Other => out.push(frame),
            Class::Unmergeable(hdrs) => {
                if let Some(i) = self.find(&frame.data, &hdrs) {
                    out.push(self.flows.remove(i).finish());
                }
                out.push(frame);
            }
            Class::Candidate { seg, verified } => {
                self.push_segment(frame, seg, verified, pool, out)
            }
        }
    }

    /// Delivers every held frame (end of a batch).
    pub fn flush(&mut self, out: &mut Vec<Frame>) {
        out.extend(self.flows.drain(..).map(Flow::finish));
    }

    fn push_segment(
        &mut self,
        frame: Frame,
        seg: Segment,
        verified: bool,
        pool: &FramePool,
        out: &mut Vec<Frame>,
    ) {
        if let Some(i) = self.find(&frame.data, &seg.hdrs) {
            let flow = &mut self.flows[i];
            if flow.can_merge(&frame.data, &seg) {
                flow.merge(&frame.data, &seg);
                pool.put(frame);
                if flow.is_complete(seg.payload_len) {
                    out.push(self.flows.remove(i).finish());
                }
                return;
            }
            out.push(self.flows.remove(i).finish());
        }
        if seg.flags & ENDS_FRAME != 0 || self.max_flows == 0 {
            out.push(lone(frame, verified));
            return;
        }
        if self.flows.len() == self.max_flows {
            out.push(self.flows.remove(0).finish());
        }
        self.flows.push(Flow::start(frame, seg, verified));
    }

    /// The held flow `data` (parsed as `hdrs`) belongs to: same L2 header, addresses, ports.
    fn find(&self, data: &[u8], hdrs: &FrameMeta) -> Option<usize> {
        self.flows.iter().position(|f| same_flow(f, data, hdrs))
    }
}

fn same_flow(flow: &Flow, data: &[u8], hdrs: &FrameMeta) -> bool {
    let held = &flow.frame.data;
    let (a, b) = (&flow.hdrs, hdrs);
    if a.ip() != b.ip() || a.l3_off() != b.l3_off() {
        return false;
    }
    let (l3, l4) = (a.l3_off(), a.l4_off());
    let addresses_same = match a.ip() {
        Some(IpVersion::V4) => {
            let (x, y) = (ipv4(held, l3), ipv4(data, l3));
            x.src_addr() == y.src_addr() && x.dst_addr() == y.dst_addr()
        }
        _ => {
            let (x, y) = (ipv6(held, l3), ipv6(data, l3));
            x.src_addr() == y.src_addr() && x.dst_addr() == y.dst_addr()
        }
    };
    let (x, y) = (tcp(held, l4), tcp(data, b.l4_off()));
    held[..l3] == data[..l3]
        && addresses_same
        && x.src_port() == y.src_port()
        && x.dst_port() == y.dst_port()
}

/// Views of headers that [`classify`] found whole.
fn ipv4(d: &[u8], l3: usize) -> ipv4::Packet<&[u8]> {
    ipv4::Packet::new_unchecked(&d[l3..])
}

fn ipv6(d: &[u8], l3: usize) -> ipv6::Packet<&[u8]> {
    ipv6::Packet::new_unchecked(&d[l3..])
}

fn tcp(d: &[u8], l4: usize) -> tcp::Packet<&[u8]> {
    tcp::Packet::new_unchecked(&d[l4..])
}

/// A segment delivered on its own: as it came, vouched for if vnic verified it.
fn lone(mut frame: Frame, verified: bool) -> Frame {
    if verified {
        frame.header.flags |= F_DATA_VALID;
    }
    frame
}

/// `a` is not before `b` in sequence-space arithmetic (RFC 1982), as TCP compares timestamps.
fn not_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

fn classify(frame: &Frame) -> Class {
    let data = &frame.data;
    let hdrs = frame.parsed_meta();
    if hdrs.ip().is_none()
        || hdrs.proto() != ip::TCP
        || hdrs.is_fragment()
        || hdrs.l4_off() + 4 > data.len()
    {
        return Class::Other;
    }
    match candidate(frame, &hdrs) {
        Some((seg, verified)) => Class::Candidate { seg, verified },
        None => Class::Unmergeable(hdrs),
    }
}

/// The segment, if `frame` (TCP, parsed as `hdrs`) may be merged, and whether vnic verified it.
fn candidate(frame: &Frame, hdrs: &FrameMeta) -> Option<(Segment, bool)> {
    let data = &frame.data;
    let h = &frame.header;
    if h.gso_type != GSO_NONE
        || hdrs.ip_extras()
        || hdrs.has_frag_header()
        || hdrs.ip_end(data) != Some(data.len())
    {
        return None;
    }
    let l4 = hdrs.l4_off();
    let t = tcp::Packet::new_checked(&data[l4..]).ok()?;
    let tcp_hdr_len = t.header_len();
    let payload_len = data.len() - l4 - tcp_hdr_len;
    let flags = t.flags();
    if payload_len == 0 || flags & NEVER_MERGED != 0 {
        return None;
    }
    let ts = find_timestamp(t.options()).ok()?.map(|o| {
        let at = tcp::MIN_HEADER_LEN + o;
        Timestamp {
            at,
            val: u32::from_be_bytes(t.options()[o..o + 4].try_into().unwrap()),
            ecr: u32::from_be_bytes(t.options()[o + 4..o + 8].try_into().unwrap()),
        }
    });
    let verified = match h.flags {
        F_NEEDS_CSUM if h.csum_start as usize == l4 && h.csum_offset == TCP_CSUM_OFFSET => false,
        F_DATA_VALID => false,
        0 if checksum::verify_parsed(data, hdrs) == CsumVerdict::Valid => true,
        _ => return None,
    };
    let ip_id = match hdrs.ip() {
        Some(IpVersion::V4) => ipv4(data, hdrs.l3_off()).ident(),
        _ => 0,
    };
    let seg = Segment {
        hdrs: *hdrs,
        tcp_hdr_len,
        seq: t.seq_number(),
        flags,
        payload_len,
        ip_id,
        ts,
    };
    Some((seg, verified))
}

/// Offset within the TCP options of the timestamp option's TSval; `Err` for malformed options
/// (never merged).
fn find_timestamp(opts: &[u8]) -> Result<Option<usize>, ()> {
    let mut i = 0;
    let mut found = None;
    while i < opts.len() {
        match opts[i] {
            tcp::OPT_END => break, // the rest is padding (compared byte for byte)
            tcp::OPT_NOP => i += 1,
            kind => {
                let len = *opts.get(i + 1).ok_or(())? as usize;
                if len < 2 || i + len > opts.len() {
                    return Err(());
                }
                if kind == tcp::OPT_TIMESTAMP {
                    if len != 10 || found.is_some() {
                        return Err(());
                    }
                    found = Some(i + 2);
                }
                i += len;
            }
        }
    }
    Ok(found)
}

impl Flow {
    fn start(mut frame: Frame, seg: Segment, verified: bool) -> Flow {
        // Merging appends payload only: the first segment's metadata stays true.
        frame.meta = seg.hdrs;
        Flow {
            frame,
            hdrs: seg.hdrs,
            hdr_len: seg.hdrs.l4_off() + seg.tcp_hdr_len,
            mss: seg.payload_len,
            segments: 1,
            next_seq: seg.seq.wrapping_add(seg.payload_len as u32),
            next_ip_id: seg.ip_id.wrapping_add(1),
            first_ip_id: seg.ip_id,
            ip_ids: IpIds::Unknown,
            ts: seg.ts,
            end_flags: 0,
            verified,
        }
    }

    fn can_merge(&self, data: &[u8], seg: &Segment) -> bool {
        let held = &self.frame.data;
        let (l3, l4) = (self.hdrs.l3_off(), self.hdrs.l4_off());
        if seg.hdrs.l4_off() != l4
            || seg.tcp_hdr_len + l4 != self.hdr_len
            || seg.seq != self.next_seq
            || seg.payload_len > self.mss
            || held.len() - l3 + seg.payload_len > MAX_IP_LEN
        {
            return false;
        }
        let ip_same = match self.hdrs.ip() {
            // TOS; flags (DF); TTL. The ID must follow on (or stay fixed, with DF).
            Some(IpVersion::V4) => {
                let (x, y) = (ipv4(held, l3), ipv4(data, l3));
                self.ip_id_mode(x.dont_frag(), seg.ip_id).is_some()
                    && x.tos() == y.tos()
                    && x.flags() == y.flags()
                    && x.ttl() == y.ttl()
            }
            // Version, traffic class, flow label; hop limit.
            _ => {
                let (x, y) = (ipv6(held, l3), ipv6(data, l3));
                x.traffic_class() == y.traffic_class()
                    && x.flow_label() == y.flow_label()
                    && x.hop_limit() == y.hop_limit()
            }
        };
        // ACK number, data offset (checked above) and reserved bits, flags but PSH/FIN, window,
        // urgent pointer.
        let (x, y) = (tcp(held, l4), tcp(data, l4));
        ip_same
            && x.ack_number() == y.ack_number()
            && x.reserved_bits() == y.reserved_bits()
            && (x.flags() ^ seg.flags) & !ENDS_FRAME == 0
            && x.window_len() == y.window_len()
            && x.urgent_at() == y.urgent_at()
            && self.options_match(data, seg)
    }

    /// Options byte for byte, except timestamps, which may only move forward.
    fn options_match(&self, data: &[u8], seg: &Segment) -> bool {
        let held = &self.frame.data;
        let opts = self.hdrs.l4_off() + tcp::MIN_HEADER_LEN;
        let end = self.hdr_len;
        match (self.ts, seg.ts) {
            (None, None) => held[opts..end] == data[opts..end],
            (Some(a), Some(b)) if a.at == b.at => {
                let ts = self.hdrs.l4_off() + a.at;
                held[opts..ts] == data[opts..ts]
                    && held[ts + 8..end] == data[ts + 8..end]
                    && not_before(b.val, a.val)
                    && not_before(b.ecr, a.ecr)
            }
            _ => false,
        }
    }

    /// How the flow's IPv4 IDs go on if `id` is the next one, or None if it cannot.
    fn ip_id_mode(&self, df: bool, id: u16) -> Option<IpIds> {
        let follows = id == self.next_ip_id;
        let fixed = df && id == self.first_ip_id;
        match self.ip_ids {
            IpIds::Increment if follows => Some(IpIds::Increment),
            IpIds::Fixed if fixed => Some(IpIds::Fixed),
            IpIds::Unknown if follows => Some(IpIds::Increment),
            IpIds::Unknown if fixed => Some(IpIds::Fixed),
            _ => None,
        }
    }

    fn merge(&mut self, data: &[u8], seg: &Segment) {
        if self.hdrs.ip() == Some(IpVersion::V4) {
            let df = ipv4(&self.frame.data, self.hdrs.l3_off()).dont_frag();
            self.ip_ids = self.ip_id_mode(df, seg.ip_id).unwrap_or(IpIds::Increment);
        }
        self.frame
            .data
            .extend_from_slice(&data[self.hdr_len..self.hdr_len + seg.payload_len]);
        self.segments += 1;
        self.next_seq = self.next_seq.wrapping_add(seg.payload_len as u32);
        self.next_ip_id = self.next_ip_id.wrapping_add(1);
        self.ts = seg.ts;
        self.end_flags = seg.flags & ENDS_FRAME;
    }

    /// True once nothing more may follow: PSH/FIN, a short segment, or no room for another.
    fn is_complete(&self, last_payload: usize) -> bool {
        self.end_flags != 0
            || last_payload < self.mss
            || self.frame.data.len() - self.hdrs.l3_off() + self.mss > MAX_IP_LEN
    }

    /// The frame to deliver: the first segment as it was if nothing merged, else the merged
    /// GSO frame with its headers rewritten.
    fn finish(self) -> Frame {
        if self.segments == 1 {
            return lone(self.frame, self.verified);
        }
        let mut frame = self.frame;
        let d = &mut frame.data;
        let (l3, l4) = (self.hdrs.l3_off(), self.hdrs.l4_off());
        let ip_len = d.len() - l3;
        let gso_type = match self.hdrs.ip() {
            Some(IpVersion::V4) => {
                let mut p = ipv4::Packet::new_unchecked(&mut d[l3..]);
                p.set_total_len(ip_len as u16);
                checksum::set_ipv4_header_checksum(p.header_mut());
                GSO_TCPV4
            }
            _ => {
                let payload_len = (ip_len - self.hdrs.l3_hdr_len()) as u16;
                ipv6::Packet::new_unchecked(&mut d[l3..]).set_payload_len(payload_len);
                GSO_TCPV6
            }
        };
        let seed = checksum::pseudo_for(d, &self.hdrs, ip::TCP, d.len() - l4)
            .expect("no extension headers: the addresses are in the IP header");
        let mut t = tcp::Packet::new_unchecked(&mut d[l4..]);
        t.set_flags(t.flags() | self.end_flags);
        if let Some(ts) = self.ts {
            t.set_u32_at(ts.at, ts.val);
            t.set_u32_at(ts.at + 4, ts.ecr);
        }
        t.set_checksum(fold(seed));
        frame.header = NetHeader {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: self.hdr_len as u16,
            gso_size: self.mss as u16,
            csum_start: l4 as u16,
            csum_offset: TCP_CSUM_OFFSET,
            num_buffers: 0,
        };
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;
    use super::*;
    use crate::wire::be32;

    struct Run {
        pool: FramePool,
        lro: Coalescer,
        out: Vec<Frame>,
    }

    impl Run {
        fn new(max_flows: usize) -> Self {
            Run {
                pool: FramePool::new(256),
                lro: Coalescer::new(max_flows),
                out: Vec::new(),
            }
        }
        fn push(&mut self, data: Vec<u8>) {
            self.lro.push(frame_of(data), &self.pool, &mut self.out);
        }
        fn push_frame(&mut self, f: Frame) {
            self.lro.push(f, &self.pool, &mut self.out);
        }
        fn flush(&mut self) -> Vec<Frame> {
            self.lro.flush(&mut self.out);
            std::mem::take(&mut self.out)
        }
    }

    /// `n` consecutive segments of `mss` bytes of a flow, starting at `spec.seq`/`spec.ip_id`.
    fn train(spec: &Spec, n: usize, mss: usize) -> Vec<Vec<u8>> {
        let payload = pattern(n * mss);
        (0..n)
            .map(|i| {
                let s = Spec {
                    seq: spec.seq.wrapping_add((i * mss) as u32),
                    ip_id: spec.ip_id.wrapping_add(i as u16),
                    ..spec.clone()
                };
                build_tcp(&s, &payload[i * mss..(i + 1) * mss])
            })
            .collect()
    }

    /// Checks a merged frame: GSO header, lengths, partial checksum that completes right.
    fn check_merged(f: &Frame, spec: &Spec, payload: &[u8], mss: usize) {
        let l3 = 14 + 4 * spec.vlans;
        let l4 = l3 + if spec.v6 { 40 } else { 20 };
        let hdr_len = l4 + 20 + spec.tcp_options.len();
        let h = f.header;
        assert_eq!(h.flags, F_NEEDS_CSUM);
        assert_eq!(h.gso_type, if spec.v6 { GSO_TCPV6 } else { GSO_TCPV4 });
        assert_eq!(h.gso_size as usize, mss);
        assert_eq!(h.hdr_len as usize, hdr_len);
        assert_eq!((h.csum_start as usize, h.csum_offset), (l4, 16));
        assert_eq!(&f.data[hdr_len..], payload);
        let mut d = f.data.clone();
        checksum::complete_partial(&mut d, h.csum_start, h.csum_offset).unwrap();
        // etherparse agrees on lengths and checksums.
        let p = etherparse::SlicedPacket::from_ethernet(&d).unwrap();
        let Some(etherparse::TransportSlice::Tcp(t)) = p.transport else {
            panic!()
        };
        let c = match p.net.unwrap() {
            etherparse::NetSlice::Ipv4(ip) => {
                let ih = ip.header();
                assert_eq!(ih.to_header().calc_header_checksum(), ih.header_checksum());
                assert_eq!(ih.identification(), spec.ip_id);
                t.calc_checksum_ipv4(ih.source(), ih.destination())
            }
            etherparse::NetSlice::Ipv6(ip) => {
                t.calc_checksum_ipv6(ip.header().source(), ip.header().destination())
            }
            _ => panic!(),
        }
        .unwrap();
        assert!(c == t.checksum() || (c == 0 && t.checksum() == 0xffff));
        assert_eq!(t.sequence_number(), spec.seq);
    }

    #[test]
    fn in_order_segments_merge_v4_v6_vlan() {
        for v6 in [false, true] {
            for vlans in 0..=2 {
                let spec = Spec {
                    v6,
                    vlans,
                    ..Spec::default()
                };
                let mut run = Run::new(4);
                for d in train(&spec, 10, 1000) {
                    run.push(d);
                }
                assert!(run.out.is_empty(), "held until the end of the batch");
                let out = run.flush();
                assert_eq!(out.len(), 1);
                check_merged(&out[0], &spec, &pattern(10_000), 1000);
            }
        }
    }

    #[test]
    fn psh_merges_as_last_and_ends_the_frame() {
        let spec = Spec::default();
        let mut segs = train(&spec, 4, 500);
        segs[2][14 + 20 + 13] |= TCP_PSH;
        fix(&mut segs[2]);
        let mut run = Run::new(4);
        for d in segs {
            run.push(d);
        }
        assert_eq!(run.out.len(), 1, "PSH ended the first frame");
        assert_eq!(run.out[0].data[14 + 20 + 13] & TCP_PSH, TCP_PSH);
        assert_eq!(run.out[0].header.gso_type, GSO_TCPV4);
        assert_eq!(run.out[0].data.len(), 54 + 1500);
        let out = run.flush();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].header.flags, F_DATA_VALID, "a lone verified segment");
    }

    /// Recomputes the checksums of a test frame after editing it.
    fn fix(d: &mut [u8]) {
        let h = FrameMeta::parse(d);
        if h.ip() == Some(IpVersion::V4) {
            let (l3, len) = (h.l3_off(), h.l3_hdr_len());
            checksum::set_ipv4_header_checksum(&mut d[l3..l3 + len]);
        }
        let field = h.l4_off() + if h.proto() == 17 { 6 } else { 16 };
        d[field] = 0;
        d[field + 1] = 0;
        let p = checksum::pseudo_for(d, &h, h.proto(), d.len() - h.l4_off()).unwrap();
        let c = checksum::finish(checksum::add(p, &d[h.l4_off()..]));
        d[field..field + 2].copy_from_slice(&c.to_be_bytes());
    }

    fn edit(mut d: Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        f(&mut d);
        fix(&mut d);
        d
    }

    #[test]
    fn syn_rst_urg_cwr_fin_and_short_segments() {
        let spec = Spec::default();
        for (flag, merged_first, delivered_alone) in [
            (TCP_SYN, 2, true),
            (TCP_RST, 2, true),
            (TCP_URG, 2, true),
            (TCP_CWR, 2, true),
            (TCP_FIN, 3, false),
        ] {
            let mut segs = train(&spec, 4, 500);
            segs[2] = edit(segs[2].clone(), |d| d[14 + 20 + 13] |= flag);
            let mut run = Run::new(4);
            for d in segs {
                run.push(d);
            }
            let out = run.flush();
            assert_eq!(out[0].data.len(), 54 + 500 * merged_first, "flag {flag:#x}");
            if delivered_alone {
                assert_eq!(out.len(), 3, "flag {flag:#x}");
                assert_eq!(out[1].data[14 + 20 + 13] & flag, flag);
                assert_eq!(out[1].header.gso_type, GSO_NONE);
            } else {
                assert_eq!(out[0].data[14 + 20 + 13] & TCP_FIN, TCP_FIN);
                assert_eq!(out.len(), 2);
            }
        }
        // A short segment ends the frame; a bigger one after it starts another.
        let mut run = Run::new(4);
        let payload = pattern(3000);
        let mut seq = spec.seq;
        for (i, len) in [1000usize, 1000, 300, 1000].iter().enumerate() {
            let s = Spec {
                seq,
                ip_id: spec.ip_id.wrapping_add(i as u16),
                ..spec.clone()
            };
            run.push(build_tcp(&s, &payload[..*len]));
            seq = seq.wrapping_add(*len as u32);
        }
        assert_eq!(run.out.len(), 1);
        assert_eq!(run.out[0].data.len(), 54 + 2300);
        assert_eq!(run.flush().len(), 2);
    }

    #[test]
    fn out_of_order_and_retransmitted_data_are_not_merged() {
        let spec = Spec::default();
        let segs = train(&spec, 4, 500);
        let mut run = Run::new(4);
        for i in [0, 1, 3, 2] {
            run.push(segs[i].clone());
        }
        let out = run.flush();
        let lens: Vec<usize> = out.iter().map(|f| f.data.len() - 54).collect();
        assert_eq!(lens, vec![1000, 500, 500]);
        let mut run = Run::new(4);
        for i in [0, 1, 1, 2] {
            run.push(segs[i].clone());
        }
        let lens: Vec<usize> = run.flush().iter().map(|f| f.data.len() - 54).collect();
        assert_eq!(
            lens,
            vec![1000, 1000],
            "the retransmission starts a new frame"
        );
    }

    #[test]
    fn fixed_ip_ids_merge_only_with_df() {
        let spec = Spec::default();
        let fixed = |segs: Vec<Vec<u8>>| -> Vec<Vec<u8>> {
            segs.into_iter()
                .map(|s| {
                    edit(s, |d| {
                        d[14 + 4] = 0;
                        d[14 + 5] = 7;
                    })
                })
                .collect()
        };
        // With DF (the default here): one frame.
        let mut run = Run::new(4);
        for d in fixed(train(&spec, 3, 500)) {
            run.push(d);
        }
        assert_eq!(run.flush().len(), 1);
        // Without DF: fixed IDs end the frame at every segment.
        let mut run = Run::new(4);
        for d in fixed(train(&spec, 3, 500)) {
            run.push(edit(d, |d| d[14 + 6] &= !0x40));
        }
        assert_eq!(run.flush().len(), 3);
    }

    #[test]
    fn ip_ids_must_follow_on() {
        let spec = Spec::default();
        let mut segs = train(&spec, 3, 500);
        segs[1] = edit(segs[1].clone(), |d| d[14 + 5] ^= 0x10);
        let mut run = Run::new(4);
        for d in segs {
            run.push(d);
        }
        assert_eq!(run.flush().len(), 3);
    }

    #[test]
    fn timestamps_may_grow_but_not_go_back_other_options_must_match() {
        let mss = 500;
        let payload = pattern(4 * mss);
        let seg = |i: usize, val: u32, ecr: u32| {
            let s = Spec {
                seq: (i * mss) as u32,
                ip_id: i as u16,
                tcp_options: ts_option(val, ecr),
                ..Spec::default()
            };
            build_tcp(&s, &payload[i * mss..(i + 1) * mss])
        };
        let mut run = Run::new(4);
        run.push(seg(0, 100, 50));
        run.push(seg(1, 100, 50));
        run.push(seg(2, 101, 52));
        run.push(seg(3, 105, 52));
        let out = run.flush();
        assert_eq!(out.len(), 1);
        // The merged frame carries the latest timestamps.
        let ts = 14 + 20 + 20 + 4;
        assert_eq!(be32(&out[0].data, ts), 105);
        assert_eq!(be32(&out[0].data, ts + 4), 52);
        let spec = Spec {
            seq: 0,
            ip_id: 0,
            tcp_options: ts_option(100, 50),
            ..Spec::default()
        };
        check_merged(&out[0], &spec, &payload, mss);
        // TSval going back, TSecr going back: not merged.
        for (val, ecr) in [(99, 50), (100, 49)] {
            let mut run = Run::new(4);
            run.push(seg(0, 100, 50));
            run.push(seg(1, val, ecr));
            assert_eq!(run.flush().len(), 2, "{val} {ecr}");
        }
        // Timestamps wrapping around still move forward.
        let mut run = Run::new(4);
        run.push(seg(0, u32::MAX, 50));
        run.push(seg(1, 3, 50));
        assert_eq!(run.flush().len(), 1);
        // Different options (a SACK block) or options on one side only: not merged.
        let mut sack = vec![1, 1, 5, 10];
        sack.extend_from_slice(&[0; 8]);
        let mut run = Run::new(4);
        run.push(seg(0, 100, 50));
        let s = Spec {
            seq: mss as u32,
            ip_id: 1,
            tcp_options: sack,
            ..Spec::default()
        };
        run.push(build_tcp(&s, &payload[mss..2 * mss]));
        assert_eq!(run.flush().len(), 2);
    }

    #[test]
    fn differing_ack_window_tos_ttl_are_not_merged() {
        let spec = Spec::default();
        for (at, what) in [
            (14 + 20 + 8, "ack"),
            (14 + 20 + 14, "window"),
            (14 + 1, "tos"),
            (14 + 8, "ttl"),
        ] {
            let mut segs = train(&spec, 2, 500);
            segs[1] = edit(segs[1].clone(), |d| d[at] ^= 0x04);
            let mut run = Run::new(4);
            for d in segs {
                run.push(d);
            }
            assert_eq!(run.flush().len(), 2, "{what}");
        }
    }

    #[test]
    fn wrong_checksum_is_never_merged_nor_fixed() {
        let spec = Spec::default();
        let mut segs = train(&spec, 3, 500);
        let n = segs[1].len();
        segs[1][n - 1] ^= 0xff;
        let bad = segs[1].clone();
        let mut run = Run::new(4);
        for d in segs {
            run.push(d);
        }
        let out = run.flush();
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].data, bad);
        assert_eq!(out[1].header.flags, 0, "not vouched for");
        assert_eq!(out[0].header.flags, F_DATA_VALID);
    }

    #[test]
    fn partial_and_data_valid_segments_are_trusted() {
        let spec = Spec::default();
        let segs = train(&spec, 3, 500);
        let mut run = Run::new(4);
        run.push_frame(partial(frame_of(segs[0].clone())));
        let mut f = frame_of(segs[1].clone());
        f.header.flags = F_DATA_VALID;
        run.push_frame(f);
        run.push(segs[2].clone());
        let out = run.flush();
        assert_eq!(out.len(), 1);
        check_merged(&out[0], &spec, &pattern(1500), 500);
    }

    #[test]
    fn homa_udp_and_gso_frames_pass_untouched() {
        let homa = Spec {
            protocol: PROTO_HOMA,
            ..Spec::default()
        };
        let mut run = Run::new(4);
        let segs = train(&homa, 3, 500);
        for d in &segs {
            run.push(d.clone());
        }
        assert_eq!(run.out.len(), 3, "not even held");
        for (o, d) in run.out.iter().zip(&segs) {
            assert_eq!(&o.data, d);
            assert_eq!(o.header, NetHeader::default());
        }
        // Homa over TCP (its SYN|RST flags): never merged either.
        let hijacked = Spec {
            tcp_flags: TCP_SYN | TCP_RST,
            ..Spec::default()
        };
        let mut run = Run::new(4);
        let segs = train(&hijacked, 3, 500);
        for d in &segs {
            run.push(d.clone());
        }
        assert_eq!(run.out.len(), 3, "Homa over TCP is not merged");
        for (o, d) in run.out.iter().zip(&segs) {
            assert_eq!(&o.data, d);
        }
        let mut run = Run::new(4);
        run.push(build_udp(&Spec::default(), b"x"));
        run.push_frame(tso_frame(
            build_tcp(&Spec::default(), &pattern(3000)),
            GSO_TCPV4,
            1000,
        ));
        assert_eq!(run.out.len(), 2);
    }

    #[test]
    fn flows_interleave_and_the_oldest_is_evicted() {
        let a = Spec::default();
        let b = Spec {
            sport: 1,
            ..Spec::default()
        };
        let c = Spec {
            sport: 2,
            ..Spec::default()
        };
        let (ta, tb, tc) = (train(&a, 2, 500), train(&b, 2, 500), train(&c, 2, 500));
        let mut run = Run::new(2);
        run.push(ta[0].clone());
        run.push(tb[0].clone());
        run.push(ta[1].clone());
        run.push(tb[1].clone());
        assert!(run.out.is_empty());
        run.push(tc[0].clone()); // evicts a
        assert_eq!(run.out.len(), 1);
        assert_eq!(run.out[0].data.len(), 54 + 1000);
        run.push(tc[1].clone());
        let out = run.flush();
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|f| f.data.len() == 54 + 1000));
    }

    #[test]
    fn a_pure_ack_of_a_held_flow_flushes_it_first() {
        let spec = Spec::default();
        let segs = train(&spec, 2, 500);
        let mut run = Run::new(4);
        run.push(segs[0].clone());
        run.push(segs[1].clone());
        let ack = build_tcp(
            &Spec {
                seq: spec.seq.wrapping_add(1000),
                ..spec.clone()
            },
            b"",
        );
        run.push(ack.clone());
        assert_eq!(run.out.len(), 2);
        assert_eq!(run.out[0].data.len(), 54 + 1000);
        assert_eq!(run.out[1].data, ack);
        assert_eq!(run.lro.held(), 0);
    }

    #[test]
    fn size_limit_64k() {
        let spec = Spec::default();
        let mut run = Run::new(4);
        for d in train(&spec, 50, 1448) {
            run.push(d);
        }
        let out = run.flush();
        assert!(out.len() >= 2);
        for f in &out {
            assert!(f.data.len() - 14 <= MAX_IP_LEN);
        }
        assert_eq!(out[0].data.len() - 14 - 40, 45 * 1448);
        let total: usize = out.iter().map(|f| f.data.len() - 54).sum();
        assert_eq!(total, 50 * 1448);
    }

    #[test]
    fn zero_flows_never_holds() {
        let mut run = Run::new(0);
        for d in train(&Spec::default(), 3, 500) {
            run.push(d);
        }
        assert_eq!(run.out.len(), 3);
        assert!(run.out.iter().all(|f| f.header.flags == F_DATA_VALID));
    }

    #[test]
    fn timestamp_option_parsing() {
        assert_eq!(find_timestamp(&[]), Ok(None));
        assert_eq!(find_timestamp(&ts_option(1, 2)), Ok(Some(4)));
        assert_eq!(find_timestamp(&[0, 8, 10]), Ok(None), "after EOL");
        assert_eq!(find_timestamp(&[8, 10, 0]), Err(()));
        assert_eq!(find_timestamp(&[5, 1, 0, 0]), Err(()));
        assert_eq!(find_timestamp(&[3]), Err(()));
        let mut two = ts_option(1, 2);
        two.extend_from_slice(&ts_option(1, 2));
        assert_eq!(find_timestamp(&two), Err(()));
    }

    #[test]
    fn garbage_never_panics() {
        let base = train(&Spec::default(), 2, 100);
        let mut run = Run::new(2);
        let mut x: u32 = 99;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as usize
        };
        for _ in 0..20000 {
            let mut d = base[next() % 2].clone();
            for _ in 0..next() % 4 {
                let i = next() % d.len();
                d[i] = next() as u8;
            }
            d.truncate(next() % (d.len() + 1));
            let mut f = frame_of(d);
            f.header.flags = (next() % 4) as u8;
            f.header.csum_start = (next() % 80) as u16;
            f.header.csum_offset = (next() % 20) as u16;
            run.push_frame(f);
            if next() % 8 == 0 {
                run.flush();
            }
            run.out.clear();
        }
    }
}
