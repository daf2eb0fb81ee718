//! Property tests of the offload engines (`vnic::offload`), checked against etherparse: frames
//! are built by etherparse's `PacketBuilder`, and every checksum of every output is verified with
//! etherparse's own checksum code, independent of vnic's.
//!
//! - TCP GSO jobs (IPv4/IPv6 with extension headers, 0-2 VLAN tags, options, FIN/PSH/CWR/ECE):
//!   segmenting gives segments that parse strictly, fit `gso_size`, have contiguous sequence
//!   numbers, consecutive IPv4 IDs, flags in the right places and right checksums, whose payloads
//!   join into the original; coalescing those segments again gives the original payload back in
//!   as few frames as the 64 KiB limit and the CWR rule allow, with right checksums.
//! - UDP GSO (USO) jobs likewise, each segment its own datagram.
//! - Garbage headers and mutated frames never panic `validate_tx`, `adapt_for` or
//!   `Coalescer::push`, and what `validate_tx` accepts `adapt_for` never refuses.

use etherparse::checksum::Sum16BitWords;
use etherparse::{
    IpHeaders, IpNumber, Ipv4Header, Ipv6Extensions, Ipv6FlowLabel, Ipv6Header, Ipv6RawExtHeader,
    Ipv6RoutingExtensions, LaxSlicedPacket, NetSlice, PacketBuilder, PacketBuilderStep,
    SlicedPacket, TcpHeader, TransportSlice, VlanId,
};
use proptest::prelude::*;
use vnic::frame::net_header::{NetHeader, F_NEEDS_CSUM};
use vnic::frame::{Frame, FramePool};
use vnic::offload::{
    adapt_for, checksums_valid, validate_tx, Coalescer, RxCaps, TxCaps, GSO_ECN, GSO_TCPV4,
    GSO_TCPV6, GSO_UDP_L4,
};

const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const ECE: u8 = 0x40;
const CWR: u8 = 0x80;
const MAX_IP_LEN: usize = 65535;

#[derive(Clone, Debug)]
struct Job {
    v6: bool,
    vlans: usize,
    /// IPv6 extension headers: hop-by-hop, destination options, routing (no segments left).
    exts: (bool, bool, bool),
    seq: u32,
    ip_id: u16,
    /// Extra TCP flags: any of FIN, PSH, CWR, ECE.
    flags: u8,
    /// TCP timestamp option (with NOPs), or none.
    ts: Option<(u32, u32)>,
    mss: u16,
    payload: Vec<u8>,
}

fn job() -> impl Strategy<Value = Job> {
    (
        any::<bool>(),
        0..=2usize,
        (any::<bool>(), any::<bool>(), any::<bool>()),
        any::<u32>(),
        any::<u16>(),
        prop::sample::subsequence(vec![FIN, PSH, CWR, ECE], 0..=4),
        prop::option::of((any::<u32>(), any::<u32>())),
        20..4000u16,
        prop::collection::vec(any::<u8>(), 0..20_000),
    )
        .prop_map(
            |(v6, vlans, exts, seq, ip_id, flags, ts, mss, payload)| Job {
                v6,
                vlans,
                exts,
                seq,
                ip_id,
                flags: flags.iter().fold(0, |a, f| a | f),
                ts,
                mss,
                payload,
            },
        )
}

fn ip_step(job: &Job, protocol: IpNumber) -> PacketBuilderStep<IpHeaders> {
    let ip = if job.v6 {
        let raw = |payload: &[u8]| Ipv6RawExtHeader::new_raw(IpNumber(59), payload).unwrap();
        let mut srh = vec![4, 0, 0, 0, 0, 0];
        srh.extend_from_slice(&[0x20; 16]);
        let exts = Ipv6Extensions {
            hop_by_hop_options: job.exts.0.then(|| raw(&[1, 4, 0, 0, 0, 0])),
            destination_options: job
                .exts
                .1
                .then(|| raw(&[1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])),
            routing: job.exts.2.then(|| Ipv6RoutingExtensions {
                routing: raw(&srh),
                final_destination_options: None,
            }),
            fragment: None,
            auth: None,
        };
        let header = Ipv6Header {
            traffic_class: 0x28,
            flow_label: Ipv6FlowLabel::try_new(0x12345).unwrap(),
            payload_length: 0,
            next_header: protocol,
            hop_limit: 61,
            source: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            destination: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        };
        IpHeaders::Ipv6(header, exts)
    } else {
        let mut header = Ipv4Header::new(0, 64, protocol, [10, 1, 2, 3], [10, 4, 5, 6]).unwrap();
        header.identification = job.ip_id;
        header.dont_fragment = true;
        IpHeaders::Ipv4(header, Default::default())
    };
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    match job.vlans {
        0 => eth.ip(ip),
        1 => eth.single_vlan(VlanId::try_new(100).unwrap()).ip(ip),
        _ => eth
            .double_vlan(VlanId::try_new(10).unwrap(), VlanId::try_new(20).unwrap())
            .ip(ip),
    }
}

fn tcp_frame(job: &Job) -> Vec<u8> {
    let mut tcp = TcpHeader::new(40000, 80, job.seq, 1000);
    tcp.ack = true;
    tcp.acknowledgment_number = 12345;
    tcp.fin = job.flags & FIN != 0;
    tcp.psh = job.flags & PSH != 0;
    tcp.cwr = job.flags & CWR != 0;
    tcp.ece = job.flags & ECE != 0;
    if let Some((val, ecr)) = job.ts {
        let mut o = vec![1, 1, 8, 10];
        o.extend_from_slice(&val.to_be_bytes());
        o.extend_from_slice(&ecr.to_be_bytes());
        tcp.set_options_raw(&o).unwrap();
    }
    let mut v = Vec::new();
    ip_step(job, IpNumber::TCP)
        .tcp_header(tcp)
        .write(&mut v, &job.payload)
        .unwrap();
    v
}

fn udp_frame(job: &Job) -> Vec<u8> {
    let mut v = Vec::new();
    ip_step(job, IpNumber::UDP)
        .udp(5000, 443)
        .write(&mut v, &job.payload)
        .unwrap();
    v
}

/// (L4 offset, L4 header length) found by etherparse.
fn l4_layout(data: &[u8]) -> (usize, usize) {
    let p = LaxSlicedPacket::from_ethernet(data).unwrap();
    let at = |s: &[u8]| s.as_ptr() as usize - data.as_ptr() as usize;
    match p.transport.unwrap() {
        TransportSlice::Tcp(t) => (at(t.slice()), t.header_len()),
        TransportSlice::Udp(u) => (at(u.slice()), 8),
        _ => panic!("not TCP/UDP"),
    }
}

/// The frame as a guest hands it over for GSO: NEEDS_CSUM at the L4 checksum, which holds the
/// pseudo-header sum (what is left of a correct checksum once the L4 bytes are taken out).
fn gso_request(data: Vec<u8>, gso_type: u8, gso_size: u16) -> Frame {
    let (l4, l4_len) = l4_layout(&data);
    let field = l4 + if gso_type == GSO_UDP_L4 { 6 } else { 16 };
    let mut data = data;
    let c = u16::from_be_bytes([data[field], data[field + 1]]);
    data[field] = 0;
    data[field + 1] = 0;
    let l = !Sum16BitWords::new()
        .add_slice(&data[l4..])
        .ones_complement()
        .to_be();
    let mut s = (!c as u32) + (!l as u32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    data[field..field + 2].copy_from_slice(&(s as u16).to_be_bytes());
    let mut f = Frame::with_data(
        data,
        NetHeader {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: (l4 + l4_len) as u16,
            gso_size,
            csum_start: l4 as u16,
            csum_offset: (field - l4) as u16,
            num_buffers: 0,
        },
    );
    f.meta.flow_hash = 7;
    f
}

/// Completes a partial checksum the way the virtio spec says, with etherparse's sum.
fn complete(f: &mut Frame) {
    if f.header.flags & F_NEEDS_CSUM == 0 {
        return;
    }
    let start = f.header.csum_start as usize;
    let field = start + f.header.csum_offset as usize;
    let c = Sum16BitWords::new()
        .add_slice(&f.data[start..])
        .ones_complement()
        .to_be();
    // A receiver stores a zero result as 0xffff (Linux's skb_checksum_help), since 0 means
    // "no checksum" to UDP.
    let c = if c == 0 { 0xffff } else { c };
    f.data[field..field + 2].copy_from_slice(&c.to_be_bytes());
}

/// What one frame carries, after a strict parse and a check of every checksum by etherparse.
struct Parsed {
    ip_id: Option<u16>,
    ip_len: usize,
    seq: u32,
    flags: u8,
    payload: Vec<u8>,
}

fn parse_checked(data: &[u8]) -> Parsed {
    let p = SlicedPacket::from_ethernet(data).expect("strict parse");
    let (ip_id, ip_len, src, dst) = match p.net.as_ref().unwrap() {
        NetSlice::Ipv4(ip) => {
            let h = ip.header();
            assert_eq!(
                h.to_header().calc_header_checksum(),
                h.header_checksum(),
                "IPv4 header checksum"
            );
            (
                Some(h.identification()),
                h.total_len() as usize,
                h.source().to_vec(),
                h.destination().to_vec(),
            )
        }
        NetSlice::Ipv6(ip) => {
            let h = ip.header();
            (
                None,
                40 + h.payload_length() as usize,
                h.source().to_vec(),
                h.destination().to_vec(),
            )
        }
        _ => panic!("not IP"),
    };
    let c4 = |v: &[u8]| -> [u8; 4] { v.try_into().unwrap() };
    let c16 = |v: &[u8]| -> [u8; 16] { v.try_into().unwrap() };
    match p.transport.unwrap() {
        TransportSlice::Tcp(t) => {
            let want = if src.len() == 4 {
                t.calc_checksum_ipv4(c4(&src), c4(&dst))
            } else {
                t.calc_checksum_ipv6(c16(&src), c16(&dst))
            }
            .unwrap();
            // 0 and 0xffff are the same ones'-complement number.
            assert!(
                want == t.checksum() || (want == 0 && t.checksum() == 0xffff),
                "TCP checksum {:#x}, want {want:#x}",
                t.checksum()
            );
            Parsed {
                ip_id,
                ip_len,
                seq: t.sequence_number(),
                flags: t.slice()[13],
                payload: t.payload().to_vec(),
            }
        }
        TransportSlice::Udp(u) => {
            let h = u.to_header();
            let want = if src.len() == 4 {
                h.calc_checksum_ipv4_raw(c4(&src), c4(&dst), u.payload())
            } else {
                h.calc_checksum_ipv6_raw(c16(&src), c16(&dst), u.payload())
            }
            .unwrap();
            assert_eq!(want, u.checksum(), "UDP checksum");
            assert_eq!(u.length() as usize, 8 + u.payload().len());
            Parsed {
                ip_id,
                ip_len,
                seq: 0,
                flags: 0,
                payload: u.payload().to_vec(),
            }
        }
        _ => panic!("not TCP/UDP"),
    }
}

/// Cuts `f` for a destination that takes no GSO (with or without partial checksums) and checks
/// each segment's offload header. Segments are returned as cut (use [`completed`] to read them).
fn cut(f: Frame, partial_csum: bool, pool: &FramePool) -> Vec<Frame> {
    let caps = RxCaps {
        partial_csum,
        ..Default::default()
    };
    let mut out = Vec::new();
    let n = adapt_for(f, caps, pool, &mut out).expect("a valid job is cut");
    assert_eq!(n, out.len());
    for s in &out {
        assert_eq!(s.header.gso_type, 0);
        assert_eq!(s.flow_hash(), 7);
        if partial_csum {
            assert_eq!(s.header.flags, F_NEEDS_CSUM);
        } else {
            assert_eq!(s.header, NetHeader::default());
        }
    }
    out
}

/// A frame's bytes with its partial checksum (if any) completed.
fn completed(f: &Frame) -> Vec<u8> {
    let mut c = Frame::with_data(f.data.clone(), f.header);
    complete(&mut c);
    c.into_data()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn tso_cut_then_coalesced_gives_the_job_back(job in job(), partial_csum in any::<bool>()) {
        let pool = FramePool::new(1024);
        let gso = if job.v6 { GSO_TCPV6 } else { GSO_TCPV4 }
            | if job.flags & CWR != 0 { GSO_ECN } else { 0 };
        let request = gso_request(tcp_frame(&job), gso, job.mss);
        let (l4, l4_len) = l4_layout(&request.data);
        let l3 = 14 + 4 * job.vlans;
        prop_assert_eq!(validate_tx(&request, TxCaps::ALL), Ok(()));

        // Cut, as for a destination without TSO.
        let segs = cut(request, partial_csum, &pool);
        let mss = job.mss as usize;
        prop_assert_eq!(segs.len(), job.payload.len().div_ceil(mss).max(1));
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let p = parse_checked(&completed(s));
            let last = i + 1 == segs.len();
            prop_assert!(p.payload.len() <= mss);
            prop_assert!(last || p.payload.len() == mss);
            prop_assert_eq!(p.ip_len, s.data.len() - l3);
            prop_assert_eq!(p.seq, job.seq.wrapping_add(joined.len() as u32));
            if !job.v6 {
                prop_assert_eq!(p.ip_id, Some(job.ip_id.wrapping_add(i as u16)));
            }
            let want = ACK | (job.flags & ECE)
                | if last { job.flags & (FIN | PSH) } else { 0 }
                | if i == 0 { job.flags & CWR } else { 0 };
            prop_assert_eq!(p.flags, want, "segment {}", i);
            joined.extend_from_slice(&p.payload);
        }
        prop_assert_eq!(&joined, &job.payload);

        // Coalesce them again, as for a destination with TSO.
        let mut lro = Coalescer::new(4);
        let mut merged = Vec::new();
        for s in segs {
            lro.push(s, &pool, &mut merged);
        }
        lro.flush(&mut merged);
        let hdrs = l4 + l4_len - l3;
        let per_frame = ((MAX_IP_LEN - hdrs) / mss).max(1);
        let cwr = usize::from(job.flags & CWR != 0 && !job.payload.is_empty());
        let n = job.payload.len().div_ceil(mss);
        // LRO leaves IPv6 with extension headers alone.
        let mergeable = !(job.v6 && (job.exts.0 || job.exts.1 || job.exts.2));
        let expect = if n == 0 {
            1
        } else if !mergeable {
            n
        } else {
            cwr + (n - cwr).div_ceil(per_frame)
        };
        prop_assert_eq!(merged.len(), expect);
        let mut joined = Vec::new();
        let mut seq = job.seq;
        for m in merged {
            prop_assert!(m.data.len() - l3 <= MAX_IP_LEN);
            if m.header.gso_type != 0 {
                prop_assert_eq!(m.header.gso_type, if job.v6 { GSO_TCPV6 } else { GSO_TCPV4 });
                prop_assert_eq!(m.header.gso_size as usize, mss);
                prop_assert_eq!(m.header.hdr_len as usize, l4 + l4_len);
                prop_assert_eq!(m.header.flags, F_NEEDS_CSUM);
            }
            let p = parse_checked(&completed(&m));
            prop_assert_eq!(p.seq, seq);
            seq = seq.wrapping_add(p.payload.len() as u32);
            joined.extend_from_slice(&p.payload);
        }
        prop_assert_eq!(&joined, &job.payload);
    }

    #[test]
    fn uso_segments_are_datagrams_of_their_own(job in job(), partial_csum in any::<bool>()) {
        let pool = FramePool::new(1024);
        let request = gso_request(udp_frame(&job), GSO_UDP_L4, job.mss);
        prop_assert_eq!(validate_tx(&request, TxCaps::ALL), Ok(()));
        let segs = cut(request, partial_csum, &pool);
        let mss = job.mss as usize;
        prop_assert_eq!(segs.len(), job.payload.len().div_ceil(mss).max(1));
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let p = parse_checked(&completed(s));
            prop_assert!(p.payload.len() <= mss);
            prop_assert!(i + 1 == segs.len() || p.payload.len() == mss);
            if !job.v6 {
                prop_assert_eq!(p.ip_id, Some(job.ip_id.wrapping_add(i as u16)));
            }
            joined.extend_from_slice(&p.payload);
        }
        prop_assert_eq!(&joined, &job.payload);
    }

    #[test]
    fn garbage_never_panics_and_what_validates_is_delivered(
        job in job(),
        udp in any::<bool>(),
        mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        truncate in prop::option::of(any::<prop::sample::Index>()),
        header in (any::<u8>(), any::<u8>(), any::<u16>(), any::<u16>(), any::<u16>(), any::<u16>()),
        use_header in any::<bool>(),
        caps in (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
    ) {
        let job = Job { payload: job.payload[..job.payload.len().min(3000)].to_vec(), ..job };
        let data = if udp { udp_frame(&job) } else { tcp_frame(&job) };
        let gso = if udp { GSO_UDP_L4 } else if job.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
        let mut f = gso_request(data, gso, job.mss);
        for (i, x) in mutations {
            let i = i.index(f.data.len());
            f.data[i] = x;
        }
        if let Some(t) = truncate {
            let n = t.index(f.data.len() + 1);
            f.data.truncate(n);
        }
        if use_header {
            f.header = NetHeader {
                flags: header.0 & 7,
                gso_type: header.1,
                hdr_len: header.2 % 200,
                gso_size: header.3,
                csum_start: header.4 % 200,
                csum_offset: header.5 % 64,
                num_buffers: 0,
            };
        }
        let caps = RxCaps {
            partial_csum: caps.0,
            tso4: caps.1,
            tso6: caps.2,
            ecn: caps.3,
            uso4: caps.4,
            uso6: caps.5,
        };
        let pool = FramePool::new(1024);
        let valid = validate_tx(&f, TxCaps::ALL).is_ok();
        let was_gso = f.header.gso_type != 0;
        let copy = pool.copy_of(&f);
        let mut out = Vec::new();
        let result = adapt_for(f, caps, &pool, &mut out);
        if valid {
            prop_assert!(result.is_ok(), "validated but refused: {:?}", result);
        }
        if valid && was_gso && !caps.partial_csum {
            // Cut with complete checksums: every segment verifies.
            for s in &out {
                prop_assert!(checksums_valid(s), "a segment of a validated job");
            }
        }
        let mut lro = Coalescer::new(2);
        let mut merged = Vec::new();
        lro.push(copy, &pool, &mut merged);
        for s in out {
            lro.push(s, &pool, &mut merged);
        }
        lro.flush(&mut merged);
    }

    #[test]
    fn random_bytes_never_panic(
        data in prop::collection::vec(any::<u8>(), 0..300),
        ethertype in prop::sample::select(vec![0x0800u16, 0x86dd, 0x8100, 0x88a8, 0x0806]),
        header in (any::<u8>(), any::<u8>(), any::<u16>(), any::<u16>(), any::<u16>(), any::<u16>()),
    ) {
        let mut data = data;
        if data.len() >= 14 {
            data[12..14].copy_from_slice(&ethertype.to_be_bytes());
        }
        let f = Frame::with_data(
            data,
            NetHeader {
                flags: header.0,
                gso_type: header.1,
                hdr_len: header.2,
                gso_size: header.3,
                csum_start: header.4 % 320,
                csum_offset: header.5 % 64,
                num_buffers: 0,
            },
        );
        let pool = FramePool::new(64);
        let _ = validate_tx(&f, TxCaps::ALL);
        let _ = checksums_valid(&f);
        let copy = pool.copy_of(&f);
        let mut out = Vec::new();
        let _ = adapt_for(f, RxCaps::default(), &pool, &mut out);
        let mut lro = Coalescer::new(1);
        lro.push(copy, &pool, &mut out);
        lro.flush(&mut out);
    }
}
