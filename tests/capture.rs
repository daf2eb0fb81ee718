//! `pcap=PATH` records what crosses a port, both ways, in a file pcap readers understand.

mod common;

use common::*;
use pcap_file::pcap::PcapReader;
use pcap_file::DataLink;
use vnic_testdriver::GuestOptions;

#[test]
fn pcap_records_both_directions_of_a_port() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("a.pcap");
    let net = start(&[&format!("pcap={}", pcap.display()), ""]);
    let mut a = net.connect(0, GuestOptions::default());
    let mut b = net.connect(1, GuestOptions::default());
    let out = frame(mac(2), mac(1), 1000, 1);
    let back = frame(mac(1), mac(2), 70, 2);
    a.send(0, &[&out]).unwrap();
    assert_eq!(b.recv_wait(0, 1, WAIT).len(), 1);
    b.send(0, &[&back]).unwrap();
    assert_eq!(a.recv_wait(0, 1, WAIT).len(), 1);

    // Records are flushed per batch: the file is readable while the daemon runs.
    let deadline = std::time::Instant::now() + WAIT;
    let frames = loop {
        let mut reader = PcapReader::new(std::fs::File::open(&pcap).unwrap()).unwrap();
        assert_eq!(reader.header().datalink, DataLink::ETHERNET);
        let mut frames = Vec::new();
        while let Some(p) = reader.next_packet() {
            let p = p.unwrap();
            assert_eq!(p.orig_len as usize, p.data.len());
            frames.push(p.data.into_owned());
        }
        if frames.len() >= 2 || std::time::Instant::now() > deadline {
            break frames;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(frames, vec![out, back], "what A sent, then what A received");
}

#[test]
fn pcap_snaplen_keeps_headers_and_full_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("a.pcap");
    let net = start(&[&format!("pcap={},pcap_snaplen=64", pcap.display()), ""]);
    let mut a = net.connect(0, GuestOptions::default());
    let mut b = net.connect(1, GuestOptions::default());
    let big = frame(mac(2), mac(1), 1400, 9);
    a.send(0, &[&big]).unwrap();
    assert_eq!(b.recv_wait(0, 1, WAIT).len(), 1);
    // Read the file's bytes directly: pcap-file's reader refuses records cut at the snaplen,
    // which tcpdump and Wireshark take (and tcpdump -r is checked in the guest tests).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let bytes = std::fs::read(&pcap).unwrap();
        let u32_at = |i: usize| u32::from_ne_bytes(bytes[i..i + 4].try_into().unwrap());
        assert_eq!(u32_at(16), 64, "snaplen in the file header");
        if bytes.len() >= 24 + 16 + 64 {
            let (incl, orig) = (u32_at(24 + 8), u32_at(24 + 12));
            assert_eq!(
                (incl, orig),
                (64, 1400),
                "64 bytes kept, full length recorded"
            );
            assert_eq!(&bytes[40..104], &big[..64]);
            assert_eq!(bytes.len(), 104, "nothing more recorded");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no record");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn unwritable_pcap_path_is_a_clear_error() {
    let err = match try_start(&["pcap=/nonexistent/dir/x.pcap"]) {
        Ok(_) => panic!("must fail"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("/nonexistent/dir/x.pcap"), "{err}");
}
