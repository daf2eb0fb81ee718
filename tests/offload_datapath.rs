//! Offloads end to end through the switch: each destination gets what it negotiated. Checksums
//! are verified with etherparse, independently of vnic's own checksum code.

mod common;

use common::*;
use etherparse::{SlicedPacket, TransportSlice};
use vnic::device::features::{offered, ALL_OFFLOADS};
use vnic_testdriver::features::*;
use vnic_testdriver::frames::{self, F_DATA_VALID, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6};
use vnic_testdriver::{GuestOptions, RxFrame, TestGuest, DRIVER_FEATURES};

const MSS: usize = 1448;

fn plain() -> u64 {
    offered(ALL_OFFLOADS, 0) & DRIVER_FEATURES
}

/// A guest that sends with checksum and TCP segmentation offload.
fn tso_sender() -> GuestOptions {
    GuestOptions {
        features: Some(
            plain() | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6,
        ),
        tx_buffer_size: 65600,
        ..GuestOptions::default()
    }
}

/// A guest that takes partial checksums and TCP segmentation jobs (LRO output too).
fn tso_receiver() -> GuestOptions {
    GuestOptions {
        features: Some(
            plain() | VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6,
        ),
        ..GuestOptions::default()
    }
}

fn tcp4(seq: u32, payload: &[u8], psh: bool) -> Vec<u8> {
    frames::tcp4(mac(1), mac(2), seq, payload, psh)
}

fn tcp6(seq: u32, payload: &[u8]) -> Vec<u8> {
    frames::tcp6(mac(1), mac(2), seq, payload)
}

fn as_tso_job(f: Vec<u8>, v6: bool) -> ([u8; 12], Vec<u8>) {
    frames::tso_job(f, v6, MSS as u16)
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// Checks a delivered TCP frame's checksums with etherparse; returns (seq, payload, psh).
fn check_tcp(f: &RxFrame) -> (u32, Vec<u8>, bool) {
    let p = SlicedPacket::from_ethernet(&f.data).expect("parses");
    let Some(TransportSlice::Tcp(tcp)) = p.transport else {
        panic!("not TCP")
    };
    let ok = match &p.net {
        Some(etherparse::NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            assert_eq!(
                h.header_checksum,
                h.calc_header_checksum(),
                "IPv4 header checksum"
            );
            tcp.to_header()
                .calc_checksum_ipv4(&h, tcp.payload())
                .unwrap()
                == tcp.checksum()
        }
        Some(etherparse::NetSlice::Ipv6(ip)) => {
            let h = ip.header().to_header();
            tcp.to_header()
                .calc_checksum_ipv6(&h, tcp.payload())
                .unwrap()
                == tcp.checksum()
        }
        _ => panic!("not IP"),
    };
    assert!(ok, "TCP checksum verifies");
    (tcp.sequence_number(), tcp.payload().to_vec(), tcp.psh())
}

fn recv_n(g: &mut TestGuest, n: usize) -> Vec<RxFrame> {
    let got = g.recv_wait(0, n, WAIT);
    assert_eq!(got.len(), n, "expected {n} frames");
    got
}

#[test]
fn offloads_are_offered_and_switchable_per_port() {
    let net = start(&["", "csum=off,guest_tso4=off", "offloads=off"]);
    let a = net.connect(0, GuestOptions::default());
    let b = net.connect(1, GuestOptions::default());
    let c = net.connect(2, GuestOptions::default());
    let all = VIRTIO_NET_F_CSUM
        | VIRTIO_NET_F_GUEST_CSUM
        | VIRTIO_NET_F_HOST_TSO4
        | VIRTIO_NET_F_GUEST_TSO4;
    assert_eq!(a.offered_features() & all, all);
    assert_eq!(b.offered_features() & VIRTIO_NET_F_CSUM, 0);
    assert_eq!(
        b.offered_features() & VIRTIO_NET_F_HOST_TSO4,
        0,
        "TSO needs CSUM"
    );
    assert_eq!(b.offered_features() & VIRTIO_NET_F_GUEST_TSO4, 0);
    assert_ne!(b.offered_features() & VIRTIO_NET_F_GUEST_TSO6, 0);
    assert_eq!(c.offered_features() & all, 0);
}

#[test]
fn tso_job_is_segmented_for_a_guest_without_offloads() {
    let net = start(&["", ""]);
    let mut a = net.connect(0, tso_sender());
    let mut b = net.connect(1, GuestOptions::default());
    let data = payload(20_000);
    let (hdr, job) = as_tso_job(tcp4(1000, &data, true), false);
    assert!(a.send_with_header(0, &hdr, &job).unwrap());
    let n = 20_000usize.div_ceil(MSS);
    let got = recv_n(&mut b, n);
    let mut joined = Vec::new();
    for (i, f) in got.iter().enumerate() {
        assert_eq!(f.hdr[0], 0, "no flags for a guest without GUEST_CSUM");
        assert_eq!(f.hdr[1], 0, "not a GSO frame");
        assert!(f.data.len() <= 1514, "fits the MTU");
        let (seq, p, psh) = check_tcp(f);
        assert_eq!(
            seq as usize,
            1000 + joined.len(),
            "contiguous sequence numbers"
        );
        assert_eq!(psh, i == n - 1, "PSH only on the last segment");
        joined.extend(p);
    }
    assert_eq!(joined, data);
    let s = net.stats();
    assert_eq!(s.ports[0].queues[0].offload.tx_gso, 1);
    assert_eq!(s.ports[1].queues[0].offload.rx_segments, n as u64);
}

#[test]
fn tso_job_passes_as_is_to_a_guest_that_takes_it() {
    let net = start(&["", ""]);
    let mut a = net.connect(0, tso_sender());
    let mut b = net.connect(1, tso_receiver());
    for v6 in [false, true] {
        let data = payload(30_000);
        let f = if v6 {
            tcp6(5, &data)
        } else {
            tcp4(5, &data, false)
        };
        let (hdr, job) = as_tso_job(f, v6);
        assert!(a.send_with_header(0, &hdr, &job).unwrap());
        let got = recv_n(&mut b, 1);
        assert_eq!(got[0].data, job, "delivered untouched");
        assert_eq!(got[0].hdr[1], if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
        assert_eq!(got[0].hdr[0] & F_NEEDS_CSUM, F_NEEDS_CSUM);
        assert_eq!(
            u16::from_le_bytes([got[0].hdr[4], got[0].hdr[5]]) as usize,
            MSS
        );
    }
    assert_eq!(net.stats().ports[1].queues[0].offload.rx_gso, 2);
}

/// A Homa message of 60 000 bytes sent as one segmentation job (as a Linux guest running
/// HomaModule with TSO sends it), in both of Homa's formats over IPv4 and IPv6. Native
/// (protocol 146): cut as Homa even for a guest that takes TSO, into packets of at most 1424
/// bytes of message, each at its offset. Homa over TCP: a TCP job by design, whole for a guest
/// that takes TSO, cut as TCP (each packet's offset in its sequence) for one that does not.
#[test]
fn homa_jobs_reach_guests_as_homa_packets_or_whole_tcp_shaped_jobs() {
    let net = start(&["", "", ""]);
    let mut a = net.connect(0, tso_sender());
    let mut b = net.connect(1, tso_receiver());
    let mut c = net.connect(
        2,
        GuestOptions {
            features: Some(plain()),
            ..GuestOptions::default()
        },
    );
    announce(&mut b, mac(2), &mut [&mut a, &mut c]);
    announce(&mut c, mac(3), &mut [&mut a, &mut b]);
    let message = payload(60_000);
    let n = 60_000usize.div_ceil(1424);
    let (mut jobs, mut cut_b, mut cut_c) = (0, 0, 0);
    let mut rpc = 0x100;
    for (v6, over_tcp) in [(false, false), (true, false), (false, true), (true, true)] {
        let wire = frames::HomaWire {
            v6,
            over_tcp,
            ..frames::HomaWire::default()
        };
        for (to, guest, port) in [(mac(2), &mut b, 1), (mac(3), &mut c, 2)] {
            rpc += 1;
            let job = frames::HomaJob {
                rpc_id: rpc,
                message_length: 60_000,
                offset: 0,
                data: &message,
                max_seg_data: 1424,
            };
            let (f, gso_size) = frames::homa_gso_job(to, mac(1), wire, &job);
            let (hdr, job) = frames::tso_job(f, v6, gso_size);
            assert!(a.send_with_header(0, &hdr, &job).unwrap());
            jobs += 1;
            if over_tcp && port == 1 {
                let got = recv_n(guest, 1);
                assert_eq!(got[0].data, job, "{wire:?}: the TCP-shaped job, whole");
                assert_eq!(got[0].hdr[1], hdr[1]);
                continue;
            }
            *(if port == 1 { &mut cut_b } else { &mut cut_c }) += n as u64;
            let mut joined = Vec::new();
            for f in recv_n(guest, n) {
                assert_eq!(f.hdr[1], 0, "{wire:?}: a Homa packet, not a job");
                let (id, at, data) = frames::homa_data_of(&f.data).expect("a Homa DATA packet");
                assert_eq!((id, at as usize), (rpc, joined.len()), "{wire:?}");
                joined.extend(data);
            }
            assert_eq!(joined, message, "{wire:?}");
        }
    }
    let s = net.stats();
    let tx = &s.ports[0].queues[0].offload;
    assert_eq!((tx.tx_gso, tx.tx_homa_gso), (jobs, jobs));
    let (rx_b, rx_c) = (&s.ports[1].queues[0].offload, &s.ports[2].queues[0].offload);
    assert_eq!(
        (rx_b.rx_segments, rx_b.rx_gso),
        (cut_b, 2),
        "native cut, over TCP whole"
    );
    assert_eq!((rx_c.rx_segments, rx_c.rx_gso), (cut_c, 0));
}

#[test]
fn lro_merges_in_order_segments_for_a_tso_guest() {
    let net = start(&["", ""]);
    let mut a = net.connect(0, GuestOptions::default());
    let mut b = net.connect(1, tso_receiver());
    let data = payload(MSS * 10);
    let frames: Vec<Vec<u8>> = data
        .chunks(MSS)
        .enumerate()
        .map(|(i, c)| tcp4(1 + (i * MSS) as u32, c, i == 9))
        .collect();
    assert_eq!(
        a.send(0, &frames.iter().map(|f| f.as_slice()).collect::<Vec<_>>())
            .unwrap(),
        10
    );
    let deadline = std::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    let mut bytes = 0;
    while bytes < data.len() && std::time::Instant::now() < deadline {
        for f in b.recv(0) {
            if let Ok(SlicedPacket {
                transport: Some(TransportSlice::Tcp(t)),
                ..
            }) = SlicedPacket::from_ethernet(&f.data)
            {
                bytes += t.payload().len();
            }
            got.push(f);
        }
    }
    assert!(
        got.len() < 10,
        "segments were merged: {} frames for 10",
        got.len()
    );
    let mut joined = Vec::new();
    for f in &got {
        let p = SlicedPacket::from_ethernet(&f.data).unwrap();
        let Some(TransportSlice::Tcp(t)) = p.transport else {
            panic!()
        };
        assert_eq!(t.sequence_number() as usize, 1 + joined.len(), "in order");
        if f.data.len() > 1514 {
            assert_eq!(f.hdr[1], GSO_TCPV4, "a merged frame is a GSO frame");
            assert!(
                f.hdr[0] & (F_NEEDS_CSUM | F_DATA_VALID) != 0,
                "partial or verified"
            );
        }
        joined.extend_from_slice(t.payload());
    }
    assert_eq!(joined, data, "payload intact");
    assert!(net.stats().ports[1].queues[0].offload.rx_coalesced > 0);
}

#[test]
fn nothing_is_merged_for_a_guest_without_tso() {
    let net = start(&["", ""]);
    let mut a = net.connect(0, GuestOptions::default());
    let mut b = net.connect(1, GuestOptions::default());
    let data = payload(MSS * 5);
    let frames: Vec<Vec<u8>> = data
        .chunks(MSS)
        .enumerate()
        .map(|(i, c)| tcp4((i * MSS) as u32, c, false))
        .collect();
    a.send(0, &frames.iter().map(|f| f.as_slice()).collect::<Vec<_>>())
        .unwrap();
    let got = recv_n(&mut b, 5);
    for (f, sent) in got.iter().zip(&frames) {
        assert_eq!(&f.data, sent);
    }
}

#[test]
fn wrong_checksums_are_delivered_as_they_are_never_fixed_or_merged() {
    let net = start(&["", ""]);
    let mut a = net.connect(0, GuestOptions::default());
    let mut b = net.connect(1, tso_receiver());
    let mut bad = tcp4(1, &payload(MSS), false);
    let l = bad.len();
    bad[l - 1] ^= 0xff; // payload no longer matches the checksum
    let good = tcp4(1 + MSS as u32, &payload(MSS), false);
    a.send(0, &[&bad, &good]).unwrap();
    let got = recv_n(&mut b, 2);
    assert_eq!(got[0].data, bad, "delivered as it is");
    assert_eq!(got[0].hdr[0] & F_DATA_VALID, 0, "never marked valid");
}

#[test]
fn partial_checksum_is_completed_for_a_guest_without_guest_csum() {
    let net = start(&["", "", ""]);
    let mut a = net.connect(0, tso_sender());
    let mut b = net.connect(1, GuestOptions::default());
    let mut c = net.connect(2, tso_receiver());
    let (mut hdr, f) = as_tso_job(tcp4(9, &payload(500), false), false);
    hdr[1] = 0; // checksum offload only, no segmentation
    hdr[4] = 0;
    hdr[5] = 0;
    a.send_with_header(0, &hdr, &f).unwrap();
    let got = recv_n(&mut b, 1);
    assert_eq!(got[0].hdr[0], 0);
    check_tcp(&got[0]);
    let got = recv_n(&mut c, 1);
    assert_eq!(
        got[0].hdr[0], F_NEEDS_CSUM,
        "passed as partial to a GUEST_CSUM guest"
    );
    assert_eq!(got[0].data, f);
}

#[test]
fn malformed_offload_requests_are_dropped_by_reason() {
    let net = start(&["", ""]);
    let mut a = net.connect(0, tso_sender());
    let mut b = net.connect(1, GuestOptions::default());
    let (hdr, job) = as_tso_job(tcp4(1, &payload(5000), false), false);
    let cases: Vec<(&str, [u8; 12], Vec<u8>)> = vec![
        (
            "gso_size_zero",
            {
                let mut h = hdr;
                h[4] = 0;
                h[5] = 0;
                h
            },
            job.clone(),
        ),
        (
            "csum_start_beyond_frame",
            {
                let mut h = hdr;
                h[6..8].copy_from_slice(&9000u16.to_le_bytes());
                h
            },
            job.clone(),
        ),
        (
            "hdr_len_beyond_frame",
            {
                let mut h = hdr;
                h[2..4].copy_from_slice(&9000u16.to_le_bytes());
                h
            },
            job.clone(),
        ),
        (
            "gso_type_mismatch",
            {
                let mut h = hdr;
                h[1] = GSO_TCPV6;
                h
            },
            job.clone(),
        ),
    ];
    for (reason, h, f) in &cases {
        assert!(a.send_with_header(0, h, f).unwrap());
        let key = format!("offload_{reason}");
        net.wait_stats(&key, |s| s.ports[0].total_drops().get(&key) == Some(&1));
    }
    assert_eq!(net.drops(0, "tx_bad_offload"), cases.len() as u64);
    assert!(
        b.recv_wait(0, 1, std::time::Duration::from_millis(200))
            .is_empty(),
        "nothing delivered"
    );
}

#[test]
fn a_job_from_a_guest_that_did_not_negotiate_tso_is_refused() {
    let net = start(&["", ""]);
    let mut a = net.connect(0, GuestOptions::default());
    let _b = net.connect(1, GuestOptions::default());
    // A job that fits the MTU reaches validation and is refused as not negotiated.
    let (hdr, job) = as_tso_job(tcp4(1, &payload(1000), false), false);
    assert!(a.send_with_header(0, &hdr, &job).unwrap());
    net.wait_stats("refused", |s| {
        s.ports[0].total_drops()["tx_bad_offload"] == 1
    });
    // A larger one is an oversize frame for a guest without TSO.
    let (hdr, job) = as_tso_job(tcp4(1, &payload(3000), false), false);
    assert!(a.send_with_header(0, &hdr, &job).unwrap());
    net.wait_stats("oversize", |s| s.ports[0].total_drops()["tx_oversize"] == 1);
}
