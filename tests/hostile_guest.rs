//! Malformed guest input: every bad chain is completed or dropped and counted, never a panic,
//! and the queue, the port and the other ports keep working. (See
//! shared/reference/hostile-guest.md; a later issue goes deeper, with fuzzing.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use vnic_testdriver::{Descriptor, GuestOptions, TestGuest, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

const TXQ: u16 = 1;
const RXQ: u16 = 0;
/// Descriptor indices the managed side of the driver does not reach in these tests.
const RAW: u16 = 240;
const MEM: u64 = 64 << 20;

/// Publishes a hand-made chain at head `head` on queue `q` and kicks.
fn publish_raw(g: &mut TestGuest, q: u16, head: u16) {
    let dq = g.queue(q);
    dq.set_strict(false);
    dq.push_avail_raw(head);
    dq.publish();
    dq.kick().unwrap();
}

/// Waits until the device has returned `n` more used entries on queue `q` than `before`.
fn wait_used(g: &mut TestGuest, q: u16, before: u16, n: u16) {
    let deadline = Instant::now() + WAIT;
    while g.queue(q).used_idx().wrapping_sub(before) < n {
        assert!(
            Instant::now() < deadline,
            "device did not complete the chain"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A guest buffer holding a valid header and Ethernet frame; returns its address.
fn good_buffer(g: &mut TestGuest) -> u64 {
    let mut buf = vec![0u8; 12];
    buf.extend(frame(mac(2), mac(1), 60, 77));
    let at = g.alloc(buf.len(), 16);
    g.write_mem(at, &buf);
    at
}

/// Sends the raw chain built by `build` on A's TX queue and checks it is completed, counted
/// under `reason`, delivers nothing, and that A still sends good frames afterwards.
fn tx_case(reason: &str, build: impl FnOnce(&mut TestGuest) -> u16) {
    let net = start(&["", ""]);
    let mut a = net.connect(0, GuestOptions::default());
    let mut b = net.connect(1, GuestOptions::default());
    let head = build(&mut a);
    let before = a.queue(TXQ).used_idx();
    publish_raw(&mut a, TXQ, head);
    wait_used(&mut a, TXQ, before, 1);
    assert_eq!(
        a.queue(TXQ).peek_used(0).map(|e| (e.id, e.len)),
        Some((head as u32, 0))
    );
    net.wait_stats(reason, |s| s.ports[0].total_drops()[reason] == 1);
    assert!(
        b.recv_wait(0, 1, Duration::from_millis(100)).is_empty(),
        "nothing delivered"
    );
    a.send(0, &[&frame(mac(2), mac(1), 60, 5)]).unwrap();
    let got = b.recv_wait(0, 1, WAIT);
    assert_eq!(got.len(), 1, "the queue still works after {reason}");
    assert_eq!(seq_of(&got[0].data), 5);
}

#[test]
fn tx_address_outside_guest_memory() {
    tx_case("tx_bad_descriptor", |g| {
        g.queue(TXQ)
            .write_desc(RAW, Descriptor::new(MEM + 4096, 100, 0, 0));
        RAW
    });
}

#[test]
fn tx_buffer_running_past_the_end_of_memory() {
    tx_case("tx_bad_descriptor", |g| {
        g.queue(TXQ)
            .write_desc(RAW, Descriptor::new(MEM - 50, 100, 0, 0));
        RAW
    });
}

#[test]
fn tx_zero_length_self_loop() {
    tx_case("tx_bad_descriptor", |g| {
        g.queue(TXQ)
            .write_desc(RAW, Descriptor::new(0, 0, VRING_DESC_F_NEXT, RAW));
        RAW
    });
}

#[test]
fn tx_two_descriptor_loop_with_data() {
    tx_case("tx_bad_descriptor", |g| {
        let at = good_buffer(g);
        let q = g.queue(TXQ);
        q.write_desc(RAW, Descriptor::new(at, 40, VRING_DESC_F_NEXT, RAW + 1));
        q.write_desc(
            RAW + 1,
            Descriptor::new(at + 40, 32, VRING_DESC_F_NEXT, RAW),
        );
        RAW
    });
}

#[test]
fn tx_next_out_of_the_table() {
    tx_case("tx_bad_descriptor", |g| {
        let at = good_buffer(g);
        g.queue(TXQ)
            .write_desc(RAW, Descriptor::new(at, 40, VRING_DESC_F_NEXT, 9999));
        RAW
    });
}

#[test]
fn tx_zero_length_chain() {
    tx_case("tx_short_frame", |g| {
        g.queue(TXQ).write_desc(RAW, Descriptor::new(0, 0, 0, 0));
        RAW
    });
}

#[test]
fn tx_chain_no_longer_than_the_header() {
    tx_case("tx_short_frame", |g| {
        let at = good_buffer(g);
        g.queue(TXQ).write_desc(RAW, Descriptor::new(at, 12, 0, 0));
        RAW
    });
}

#[test]
fn tx_header_split_over_descriptors_is_fine_but_a_runt_frame_is_not() {
    tx_case("tx_short_frame", |g| {
        let at = good_buffer(g);
        let q = g.queue(TXQ);
        q.write_desc(RAW, Descriptor::new(at, 5, VRING_DESC_F_NEXT, RAW + 1));
        q.write_desc(RAW + 1, Descriptor::new(at + 5, 7 + 10, 0, 0));
        RAW
    });
}

#[test]
fn tx_device_writable_descriptor() {
    tx_case("tx_bad_descriptor", |g| {
        let at = good_buffer(g);
        g.queue(TXQ)
            .write_desc(RAW, Descriptor::new(at, 72, VRING_DESC_F_WRITE, 0));
        RAW
    });
}

#[test]
fn tx_oversize_frame() {
    tx_case("tx_oversize", |g| {
        let at = g.alloc(4000, 16);
        g.queue(TXQ)
            .write_desc(RAW, Descriptor::new(at, 4000, 0, 0));
        RAW
    });
}

#[test]
fn tx_offload_request_that_was_not_negotiated() {
    tx_case("tx_bad_offload", |g| {
        let at = good_buffer(g);
        g.write_mem(at, &[1, 1]); // NEEDS_CSUM, GSO_TCPV4
        g.queue(TXQ).write_desc(RAW, Descriptor::new(at, 72, 0, 0));
        RAW
    });
}

#[test]
fn tx_indirect_table_of_bad_length() {
    tx_case("tx_bad_descriptor", |g| {
        let at = good_buffer(g);
        let table = g.alloc(64, 16);
        g.write_mem(table, &[0u8; 64]);
        // VRING_DESC_F_INDIRECT = 4, table length not a multiple of 16.
        g.queue(TXQ)
            .write_desc(RAW, Descriptor::new(table, 17, 4, 0));
        let _ = at;
        RAW
    });
}

#[test]
fn avail_index_far_ahead_does_not_hurt_other_ports() {
    let net = start(&["", "", ""]);
    let mut a = net.connect(0, GuestOptions::default());
    let mut b = net.connect(1, GuestOptions::default());
    let mut c = net.connect(2, GuestOptions::default());
    let sane = a.queue(TXQ).avail_idx();
    a.queue(TXQ).set_avail_idx(sane.wrapping_add(5000));
    a.queue(TXQ).kick().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // Other ports are unaffected.
    c.send(0, &[&frame(mac(2), mac(3), 60, 9)]).unwrap();
    assert_eq!(b.recv_wait(0, 1, WAIT).len(), 1);
    // The guest repairs its index: the queue works again.
    a.queue(TXQ).set_avail_idx(sane);
    a.send(0, &[&frame(mac(2), mac(1), 60, 10)]).unwrap();
    let got = b.recv_wait(0, 1, WAIT);
    assert_eq!(
        got.iter().map(|f| seq_of(&f.data)).collect::<Vec<_>>(),
        vec![10]
    );
}

/// B's RX queue gets a bad chain first; the frame is dropped and counted, the chain returned
/// empty, and good buffers posted after it work.
fn rx_case(build: impl FnOnce(&mut TestGuest) -> Descriptor) {
    let net = start(&["", ""]);
    let mut a = net.connect(0, GuestOptions::default());
    let mut b = net.connect(
        1,
        GuestOptions {
            rx_buffers: 0,
            ..GuestOptions::default()
        },
    );
    let d = build(&mut b);
    b.queue(RXQ).write_desc(RAW, d);
    let before = b.queue(RXQ).used_idx();
    publish_raw(&mut b, RXQ, RAW);
    net.wait_stats("RX enabled", |s| s.ports[1].queues[0].enabled);
    a.send(0, &[&frame(mac(2), mac(1), 60, 1)]).unwrap();
    wait_used(&mut b, RXQ, before, 1);
    assert_eq!(
        b.queue(RXQ).peek_used(0).map(|e| (e.id, e.len)),
        Some((RAW as u32, 0))
    );
    net.wait_stats("rx_bad_descriptor", |s| {
        s.ports[1].total_drops()["rx_bad_descriptor"] == 1
    });
    b.queue(RXQ).pop_used();
    b.post_rx_buffers(0, 16, 2048).unwrap();
    a.send(0, &[&frame(mac(2), mac(1), 60, 2)]).unwrap();
    let got = b.recv_wait(0, 1, WAIT);
    assert_eq!(
        got.iter().map(|f| seq_of(&f.data)).collect::<Vec<_>>(),
        vec![2]
    );
}

#[test]
fn rx_device_readable_buffer() {
    rx_case(|g| Descriptor::new(g.alloc(2048, 16), 2048, 0, 0));
}

#[test]
fn rx_buffer_outside_guest_memory() {
    rx_case(|_| Descriptor::new(MEM + 8192, 2048, VRING_DESC_F_WRITE, 0));
}

#[test]
fn rx_buffer_loop() {
    rx_case(|_| Descriptor::new(0, 0, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, RAW));
}

#[test]
fn out_of_range_vring_index_ends_only_that_connection() {
    use std::io::{Read, Write};
    let net = start(&["", ""]);
    let mut b = net.connect(1, GuestOptions::default());
    // Sent raw: the vhost crate's frontend would refuse to send such an index itself.
    let mut raw = std::os::unix::net::UnixStream::connect(net.socket(0)).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    raw.write_all(&vhost_msg(3, &[])).unwrap(); // SET_OWNER
    let mut body = 99u32.to_le_bytes().to_vec();
    body.extend_from_slice(&256u32.to_le_bytes());
    raw.write_all(&vhost_msg(8, &body)).unwrap(); // SET_VRING_NUM, vring 99
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "the device closes the connection without answering"
    );
    // The port takes the next frontend; the other port never noticed.
    let mut a = net.connect(0, GuestOptions::default());
    a.send(0, &[&frame(mac(2), mac(1), 60, 3)]).unwrap();
    assert_eq!(b.recv_wait(0, 1, WAIT).len(), 1);
}

#[test]
fn garbage_on_the_socket_ends_only_that_connection() {
    use std::io::Write;
    let net = start(&["", ""]);
    let mut b = net.connect(1, GuestOptions::default());
    let mut raw = std::os::unix::net::UnixStream::connect(net.socket(0)).unwrap();
    // A header claiming a huge payload, then noise.
    raw.write_all(&[0xff; 12]).unwrap();
    raw.write_all(&[0x5a; 300]).unwrap();
    let _ = raw.shutdown(std::net::Shutdown::Both);
    drop(raw);
    // Port 0 accepts a real frontend afterwards; port 1 never noticed.
    let mut a = net.connect(0, GuestOptions::default());
    a.send(0, &[&frame(mac(2), mac(1), 60, 4)]).unwrap();
    assert_eq!(b.recv_wait(0, 1, WAIT).len(), 1);
}
