//! A port attached to a host tap exchanges frames with the host side of the tap. The host
//! side is an AF_PACKET socket bound to the tap interface. Needs root: fails loudly without.

mod common;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use vnic_testdriver::frames::{homa_data_of, homa_gso_job, tcp4, tso_job, HomaJob, HomaWire};
use vnic_testdriver::GuestOptions;

fn require_root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "tap tests need root (CAP_NET_ADMIN); run as root"
    );
}

fn tap_name(tag: &str) -> String {
    format!("vt{}{tag}", std::process::id() % 100_000)
}

/// A raw packet socket on one interface: the host's view of the tap.
struct HostSide(OwnedFd);

impl HostSide {
    fn bind(ifname: &str) -> HostSide {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
        assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: fd is fresh and ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = CString::new(ifname).unwrap();
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0, "interface {ifname} exists");
        // SAFETY: zeroed sockaddr_ll is a valid starting point.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: sll is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: valid option value.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        HostSide(fd)
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: buffer valid for its length.
        let n = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                frame.as_ptr() as *const _,
                frame.len(),
                0,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            io::Error::last_os_error()
        );
    }

    /// Frames with the test EtherType seen on the interface, until `count` or the wait ends.
    fn recv_test_frames(&self, count: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        while out.len() < count && Instant::now() < deadline {
            // SAFETY: buffer valid for its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len(), 0) };
            if n >= 18 && buf[12..14] == ETH_TEST.to_be_bytes() {
                out.push(buf[..n as usize].to_vec());
            }
        }
        out
    }
}

#[test]
fn tap_port_exchanges_frames_with_the_host() {
    require_root();
    let tap = tap_name("a");
    let net = start(&[&format!("queues=2,attach=tap:{tap},mtu=9000")]);
    let host = HostSide::bind(&tap);
    let mut g = net.connect(
        0,
        GuestOptions {
            tx_buffer_size: 9100,
            ..GuestOptions::with_pairs(2)
        },
    );

    // Guest to host, on both queue pairs, including a jumbo frame.
    g.send(0, &[&frame(BCAST, mac(1), 60, 1)]).unwrap();
    g.send(1, &[&frame(BCAST, mac(1), 9014, 2)]).unwrap();
    let got = host.recv_test_frames(2);
    let mut seqs: Vec<u32> = got.iter().map(|f| seq_of(f)).collect();
    seqs.sort();
    assert_eq!(seqs, vec![1, 2], "the host sees what the guest sent");
    assert_eq!(got.iter().map(|f| f.len()).max(), Some(9014));

    // Host to guest: the kernel spreads flows over the tap queues, so look at every pair.
    for i in 0..20 {
        host.send(&frame(mac(1), mac(9), 60 + i, 100 + i as u32));
    }
    let deadline = Instant::now() + WAIT;
    let mut received = Vec::new();
    while received.len() < 20 && Instant::now() < deadline {
        for p in 0..2 {
            received.extend(
                g.recv(p)
                    .into_iter()
                    .filter(|f| f.data[12..14] == ETH_TEST.to_be_bytes()),
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(received.len(), 20, "the guest gets what the host sent");
    let s = net.port_stats(0);
    assert_eq!(s.attach, format!("tap:{tap}"));
    assert_eq!(s.queues.iter().map(|q| q.tx.packets).sum::<u64>(), 2);
    assert!(s.queues.iter().map(|q| q.rx.packets).sum::<u64>() >= 20);
}

/// Frames entering vnic from the tap are classified there too: Homa, Open-MX and broken ones
/// counted on the queue pair that read them, each delivered as usual.
#[test]
fn frames_from_the_tap_are_classified() {
    require_root();
    let tap = tap_name("k");
    let net = start(&[&format!("attach=tap:{tap}")]);
    let host = HostSide::bind(&tap);
    let mut g = net.connect(0, GuestOptions::default());
    // A packet type Open-MX does not have.
    let broken = openmx_frame(mac(1), mac(9), OMX_ETHERTYPE, 99, 0, None, 46);
    let frames = [
        homa_frame(mac(1), mac(9), HomaWire::default(), HOMA_GRANT, 5, 0, 0),
        homa_frame(mac(1), mac(9), HomaWire::default(), HOMA_DATA, 7, 100, 100),
        openmx_frame(mac(1), mac(9), OMX_ETHERTYPE, OMX_TINY, 2, None, 46),
        broken,
    ];
    for f in &frames {
        host.send(f);
    }
    let counts = |s: &vnic::stats::StatsSnapshot| {
        let c = &s.ports[0].queues[0].class;
        (c.homa, c.openmx, c.malformed_homa, c.malformed_openmx)
    };
    net.wait_stats("classified", |s| counts(s) == (2, 1, 0, 1));
    let deadline = Instant::now() + WAIT;
    let mut got = 0;
    while got < frames.len() && Instant::now() < deadline {
        got += g
            .recv(0)
            .iter()
            .filter(|f| frames.contains(&f.data))
            .count();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(got, frames.len(), "every frame delivered");
}

#[test]
fn tap_keeps_queued_host_frames_while_the_guest_has_no_buffers() {
    require_root();
    let tap = tap_name("b");
    let net = start(&[&format!("attach=tap:{tap}")]);
    let host = HostSide::bind(&tap);
    let mut g = net.connect(
        0,
        GuestOptions {
            rx_buffers: 0,
            ..GuestOptions::default()
        },
    );
    for i in 0..10 {
        host.send(&frame(mac(1), mac(9), 60, i));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(g.recv(0).is_empty());
    // Buffers arrive: the frames the tap held back are delivered (backpressure, not loss).
    g.post_rx_buffers(0, 64, 2048).unwrap();
    let got: Vec<u32> = g
        .recv_wait(0, 10, WAIT)
        .iter()
        .filter(|f| f.data[12..14] == ETH_TEST.to_be_bytes())
        .map(|f| seq_of(&f.data))
        .collect();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
}

/// Strict priority on the tap path too: Homa GRANTs the host sends behind 20 bulk frames,
/// while the guest has no buffers, overtake the bulk vnic read with them once buffers come
/// (the kernel's tap queue ahead of vnic stays first come, first served); with `classes=off`
/// they come last.
#[test]
fn grants_from_the_tap_overtake_the_bulk_read_with_them() {
    require_root();
    for (tag, classes, early) in [("p", "on", true), ("f", "off", false)] {
        let tap = tap_name(tag);
        let net = start(&[&format!("attach=tap:{tap},classes={classes}")]);
        let host = HostSide::bind(&tap);
        let mut g = net.connect(
            0,
            GuestOptions {
                rx_buffers: 0,
                ..GuestOptions::default()
            },
        );
        for i in 0..20 {
            host.send(&frame(mac(1), mac(9), 1000, i));
        }
        let grant = HomaWire {
            precedence: 7,
            ..HomaWire::default()
        };
        for rpc in 0..3 {
            host.send(&homa_frame(mac(1), mac(9), grant, HOMA_GRANT, rpc, 0, 0));
        }
        std::thread::sleep(Duration::from_millis(200));
        g.post_rx_buffers(0, 64, 2048).unwrap();
        let deadline = Instant::now() + WAIT;
        let mut order = Vec::new();
        while order.len() < 23 && Instant::now() < deadline {
            for f in g.recv(0) {
                if f.data[12..14] == ETH_TEST.to_be_bytes() {
                    order.push('b');
                } else if f.data.len() > 45 && f.data[23] == 146 {
                    order.push('G');
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let order: String = order.into_iter().collect();
        assert_eq!(order.len(), 23, "classes={classes}: {order}");
        let last_grant = order.rfind('G').unwrap();
        if early {
            // vnic may have read a few bulk frames alone before it saw the guest had no
            // buffers; the rest came in one batch with the GRANTs and went behind them.
            assert!(last_grant < 13, "classes=on: {order}");
        } else {
            assert!(order.ends_with("GGG"), "classes=off: {order}");
        }
    }
}

#[test]
fn existing_tap_without_multiqueue_is_a_clear_error() {
    require_root();
    let tap = tap_name("c");
    let ok = Command::new("ip")
        .args(["tuntap", "add", "dev", &tap, "mode", "tap"])
        .status();
    assert!(
        ok.map(|s| s.success()).unwrap_or(false),
        "ip tuntap add (iproute2 needed)"
    );
    let err = match try_start(&[&format!("queues=2,attach=tap:{tap}")]) {
        Ok(_) => panic!("must refuse a single-queue tap"),
        Err(e) => format!("{e:#}"),
    };
    let _ = Command::new("ip").args(["link", "del", &tap]).status();
    assert!(err.contains(&tap) && err.contains("multi_queue"), "{err}");
}

/// A guest's TCP segmentation job reaches the host through the tap: as one large frame when the
/// tap's offloads are on, cut into MTU-sized segments by vnic when they are off. A Homa job
/// (`homa`: native format, 1424 bytes of message per packet) is cut either way.
fn tso_job_through_tap(tap_offloads: bool, homa: bool) -> Vec<usize> {
    use vnic_testdriver::features::*;
    require_root();
    let onoff = if tap_offloads { "on" } else { "off" };
    let tap = tap_name(&format!("{}{onoff}", if homa { "h" } else { "" }));
    let net = start(&[&format!("attach=tap:{tap},tap_offloads={onoff}")]);
    let host = HostSide::bind(&tap);
    use vnic::device::features as offer;
    let rings = offer::RING_PACKED | offer::IN_ORDER;
    let plain = offer::offered(offer::ALL_OFFLOADS, rings) & vnic_testdriver::DRIVER_FEATURES;
    let mut g = net.connect(
        0,
        GuestOptions {
            features: Some(plain | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4),
            tx_buffer_size: 65600,
            ..GuestOptions::default()
        },
    );
    // 20000 bytes of TCP payload, MSS 1448, partial checksum as a Linux guest sends it.
    let payload: Vec<u8> = (0..20_000).map(|i| i as u8).collect();
    let (hdr, f) = if homa {
        let job = HomaJob {
            rpc_id: 5,
            message_length: 20_000,
            offset: 0,
            data: &payload,
            max_seg_data: 1424,
        };
        let (f, gso_size) = homa_gso_job(mac(9), mac(1), HomaWire::default(), &job);
        tso_job(f, false, gso_size)
    } else {
        tso_job(tcp4(mac(1), mac(9), 1, &payload, false), false, 1448)
    };
    assert!(g.send_with_header(0, &hdr, &f).unwrap());

    // The host sees TCP frames of that flow; collect their sizes until the payload is there.
    let deadline = Instant::now() + WAIT;
    let (mut sizes, mut got) = (Vec::new(), 0usize);
    let mut buf = vec![0u8; 65536];
    while got < payload.len() && Instant::now() < deadline {
        // SAFETY: buffer valid for its length.
        let n = unsafe { libc::recv(host.0.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len(), 0) };
        if n <= 54 {
            continue;
        }
        if homa {
            // Reassembled as Homa's receiver does, by each packet's offset.
            if let Some((5, at, data)) = homa_data_of(&buf[..n as usize]) {
                assert_eq!(at as usize, got, "packets in order, each at its offset");
                assert_eq!(data, payload[got..got + data.len()]);
                sizes.push(n as usize);
                got += data.len();
            }
        } else if buf[23] == 6 && buf[26..30] == [10, 0, 0, 1] {
            sizes.push(n as usize);
            got += n as usize - 54;
        }
    }
    assert_eq!(
        got,
        payload.len(),
        "all the payload reached the host: {sizes:?}"
    );
    let cut = net.stats().ports[0].queues[0].offload.tap_segments;
    let want = if tap_offloads && !homa {
        0
    } else {
        sizes.len() as u64
    };
    assert_eq!(
        cut, want,
        "tap_segments counts the segments vnic cut for the tap"
    );
    sizes
}

#[test]
fn tso_job_reaches_the_host_whole_with_tap_offloads() {
    let sizes = tso_job_through_tap(true, false);
    assert_eq!(sizes, vec![20_054], "one large frame");
}

#[test]
fn tso_job_is_segmented_for_a_tap_without_offloads() {
    let sizes = tso_job_through_tap(false, false);
    assert_eq!(sizes.len(), 20_000usize.div_ceil(1448));
    assert!(sizes.iter().all(|s| *s <= 1514), "MTU-sized: {sizes:?}");
}

/// The host's kernel would take a Homa job as TCP: vnic cuts it as Homa for the tap even with
/// the tap's offloads on.
#[test]
fn homa_job_is_cut_for_a_tap_even_with_its_offloads() {
    for tap_offloads in [true, false] {
        let sizes = tso_job_through_tap(tap_offloads, true);
        assert_eq!(sizes.len(), 20_000usize.div_ceil(1424));
        assert!(sizes.iter().all(|s| *s <= 1514), "MTU-sized: {sizes:?}");
    }
}
