//! Malformed guest input: every bad chain is completed or dropped and counted, never a panic,
//! and the queue, the port and the other ports keep working. (See
//! shared/reference/hostile-guest.md; a later issue goes deeper, with fuzzing.)
//!
//! Every case runs on both ring kinds in every run, whatever `VNIC_TEST_RING` says: a chain is
//! described once ([`Chain`]), posted through the raw face of the ring it goes to ([`post`]) and
//! its completion read back raw ([`take_used`]), so the checks are shared. A case that means
//! something on one kind only (a split `next` that loops, `avail.idx` far ahead) is followed by
//! the packed case that plays its role. The `packed_*` tests are what only the packed ring has:
//! wrap counters, avail flags ahead of the avail position, chains across the ring end, its
//! indirect tables, a chain that never ends.

mod common;

use std::time::{Duration, Instant};

use common::*;
use vnic::stats::StatsSnapshot;
use vnic_testdriver::{
    packed_avail_flags, packed_used_flags, Descriptor, DriverQueue, GuestOptions, PackedDescriptor,
    RingKind, TestGuest, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    VRING_PACKED_DESC_F_AVAIL, VRING_PACKED_DESC_F_USED,
};

const TXQ: u16 = 1;
const RXQ: u16 = 0;
/// The head of every raw split chain (descriptor indices from here on are out of the managed
/// side's reach in these tests), and the buffer id of raw packed chains.
const RAW: u16 = 240;
const MEM: u64 = 64 << 20;
const NEXT: u16 = VRING_DESC_F_NEXT;
const WRITE: u16 = VRING_DESC_F_WRITE;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT;
const AVAIL: u16 = VRING_PACKED_DESC_F_AVAIL;
const USED: u16 = VRING_PACKED_DESC_F_USED;
const KINDS: [RingKind; 2] = [RingKind::Split, RingKind::Packed];
/// How long a test watches for something that must not happen.
const QUIET: Duration = Duration::from_millis(100);
/// A frame of [`good_buffer`]: 12 bytes of virtio-net header, then 60 bytes of Ethernet.
const GOOD_LEN: u32 = 72;

// ----- hand-made chains on either ring kind -----

/// One descriptor of a hand-made chain: address, length and flags (`WRITE`, `INDIRECT`; `NEXT`
/// where the [`Chain`] variant says so).
#[derive(Clone, Copy, Debug)]
struct Raw {
    addr: u64,
    len: u32,
    flags: u16,
}

fn raw(addr: u64, len: u32, flags: u16) -> Raw {
    Raw { addr, len, flags }
}

/// A hand-made chain, for [`post`].
enum Chain {
    /// Descriptors in chain order, linked by `post`: split, descriptors RAW, RAW + 1, ... with
    /// NEXT and `next` on all but the last; packed, consecutive slots from the avail position
    /// with NEXT on all but the last.
    Linear(Vec<Raw>),
    /// Split only: descriptor-table entries written as given; the head is RAW.
    Split(Vec<(u16, Descriptor)>),
    /// Packed only: consecutive slots from the avail position, flags (NEXT too) as given.
    Packed(Vec<Raw>),
}

/// A raw chain on a ring: the id its completion names (split: its head) and the slots it took
/// (packed; split: 1).
#[derive(Clone, Copy, Debug)]
struct Posted {
    id: u16,
    slots: u16,
}

/// Makes `chain` available on queue `q` through the raw face of the queue's ring kind and
/// kicks. The managed side goes on after it (packed: its avail position moves past the slots
/// the chain took).
fn post(g: &mut TestGuest, q: u16, chain: Chain) -> Posted {
    let dq = g.queue(q);
    let posted = match (dq.ring_kind(), chain) {
        (RingKind::Split, Chain::Linear(descs)) => {
            let n = descs.len() as u16;
            for (i, d) in (0..n).zip(descs) {
                let (flags, next) = if i + 1 < n {
                    (d.flags | NEXT, RAW + i + 1)
                } else {
                    (d.flags, 0)
                };
                dq.write_desc(RAW + i, Descriptor::new(d.addr, d.len, flags, next));
            }
            publish_split(dq)
        }
        (RingKind::Split, Chain::Split(table)) => {
            for (i, d) in table {
                dq.write_desc(i, d);
            }
            publish_split(dq)
        }
        (RingKind::Packed, Chain::Linear(descs)) => post_packed(dq, RAW, &linked(descs)),
        (RingKind::Packed, Chain::Packed(descs)) => post_packed(dq, RAW, &descs),
        (kind, _) => panic!("a chain for the other ring kind on a {kind:?} queue"),
    };
    dq.kick().unwrap();
    posted
}

/// `descs` with NEXT on all but the last.
fn linked(mut descs: Vec<Raw>) -> Vec<Raw> {
    let n = descs.len();
    for d in &mut descs[..n - 1] {
        d.flags |= NEXT;
    }
    descs
}

fn publish_split(dq: &mut DriverQueue) -> Posted {
    dq.push_avail_raw(RAW);
    dq.publish();
    Posted { id: RAW, slots: 1 }
}

/// Packed: makes `descs` available at the avail position as one chain with buffer id `id`
/// (no kick); the managed side goes on after it.
fn post_packed(dq: &mut DriverQueue, id: u16, descs: &[Raw]) -> Posted {
    let end = write_packed(dq, dq.avail_position(), id, descs);
    dq.set_avail_position(end.0, end.1);
    Posted {
        id,
        slots: descs.len() as u16,
    }
}

/// Packed: writes `descs` into consecutive slots from `at`, each with buffer id `id` and the
/// AVAIL/USED bits of its slot's lap, the first one last (the chain appears whole). Returns
/// the position after them.
fn write_packed(dq: &mut DriverQueue, at: (u16, bool), id: u16, descs: &[Raw]) -> (u16, bool) {
    let size = dq.size();
    for (i, d) in descs.iter().enumerate().rev() {
        let (slot, wrap) = advance(size, at, i as u16);
        dq.write_packed_desc(slot, d.addr, d.len, id, d.flags | packed_avail_flags(wrap));
    }
    advance(size, at, descs.len() as u16)
}

/// A packed ring position `n` (<= size) slots on.
fn advance(size: u16, (slot, wrap): (u16, bool), n: u16) -> (u16, bool) {
    let s = slot as u32 + n as u32;
    if s >= size as u32 {
        ((s - size as u32) as u16, !wrap)
    } else {
        (s as u16, wrap)
    }
}

/// The used entry at the driver's used position (split: `last_used`), if the device wrote it.
fn next_used(dq: &DriverQueue) -> Option<(u32, u32)> {
    match dq.ring_kind() {
        RingKind::Split => (dq.used_idx() != dq.last_used()).then(|| {
            let e = dq.used_elem(dq.last_used());
            (e.id, e.len)
        }),
        RingKind::Packed => {
            let (slot, wrap) = dq.used_position();
            let d = dq.read_packed_desc(slot);
            (d.flags & (AVAIL | USED) == packed_used_flags(wrap)).then_some((d.id as u32, d.len))
        }
    }
}

/// Waits for the used entries of the raw chains `posted` (in the order they were made
/// available) and consumes them, raw, so that the managed side reads on after them. Returns
/// each chain's (id, length). Under IN_ORDER one entry may stand for the chains before the one
/// it names, which then complete with length 0.
fn take_used(g: &mut TestGuest, q: u16, posted: &[Posted]) -> Vec<(u32, u32)> {
    let dq = g.queue(q);
    let deadline = Instant::now() + WAIT;
    let mut done = Vec::new();
    while done.len() < posted.len() {
        let rest = &posted[done.len()..];
        let Some((id, len)) = next_used(dq) else {
            assert!(
                Instant::now() < deadline,
                "queue {q}: the device did not complete the chains {rest:?} (completed: {done:?})"
            );
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        let k = rest
            .iter()
            .position(|p| p.id as u32 == id)
            .unwrap_or_else(|| panic!("queue {q}: used id {id} is none of the chains {rest:?}"));
        assert!(
            k == 0 || dq.in_order(),
            "queue {q}: chain {id} completed before {:?} without IN_ORDER",
            &rest[..k]
        );
        let covered = &rest[..=k];
        match dq.ring_kind() {
            RingKind::Split => {
                let at = dq.last_used().wrapping_add(covered.len() as u16);
                dq.set_last_used(at);
            }
            RingKind::Packed => {
                let slots = covered.iter().map(|p| p.slots).sum();
                let (slot, wrap) = advance(dq.size(), dq.used_position(), slots);
                dq.set_used_position(slot, wrap);
            }
        }
        done.extend(covered[..k].iter().map(|p| (p.id as u32, 0)));
        done.push((id, len));
    }
    done
}

// ----- shared checks -----

fn opts(kind: RingKind) -> GuestOptions {
    GuestOptions {
        ring: kind,
        ..GuestOptions::default()
    }
}

/// Drops of `reason` on `port` (0 when the reason is not listed).
fn drops(s: &StatsSnapshot, port: usize, reason: &str) -> u64 {
    s.ports[port]
        .total_drops()
        .get(reason)
        .copied()
        .unwrap_or(0)
}

/// A guest buffer holding a zeroed header and a 60-byte frame from mac(1) to mac(2) tagged
/// `seq` ([`GOOD_LEN`] bytes); returns its address.
fn good_buffer(g: &mut TestGuest, seq: u32) -> u64 {
    let mut buf = vec![0u8; 12];
    buf.extend(frame(mac(2), mac(1), 60, seq));
    let at = g.alloc(buf.len(), 16);
    g.write_mem(at, &buf);
    at
}

/// A packed indirect table of `entries` (address, length, flags) in fresh guest memory;
/// returns its address (its length is 16 bytes an entry).
fn packed_table(g: &mut TestGuest, entries: &[Raw]) -> u64 {
    let at = g.alloc(16 * entries.len(), 16);
    for (i, e) in entries.iter().enumerate() {
        let mut d = e.addr.to_le_bytes().to_vec();
        d.extend(e.len.to_le_bytes());
        d.extend(0u16.to_le_bytes());
        d.extend(e.flags.to_le_bytes());
        g.write_mem(at + 16 * i as u64, &d);
    }
    at
}

/// Waits for frames on `g` and checks they are the ones tagged `seqs`, in that order.
fn expect_seqs(g: &mut TestGuest, seqs: &[u32], what: &str) {
    let got = g.recv_wait(0, seqs.len(), WAIT);
    assert_eq!(
        got.iter().map(|f| seq_of(&f.data)).collect::<Vec<_>>(),
        seqs,
        "{what}"
    );
}

fn expect_nothing(g: &mut TestGuest, what: &str) {
    let got = g.recv_wait(0, 1, QUIET);
    assert!(got.is_empty(), "{what}: got {} frames", got.len());
}

/// A sends frame `seq` to B with the managed face: B gets it and A's queue completes it.
fn still_sends(a: &mut TestGuest, b: &mut TestGuest, seq: u32, what: &str) {
    a.send(0, &[&frame(mac(2), mac(1), 60, seq)]).unwrap();
    expect_seqs(b, &[seq], what);
    assert!(a.tx_wait_idle(0, WAIT).unwrap(), "{what}: completed");
}

/// Sends the raw chain `build` makes on A's TX queue (ring `kind`) and checks that it is
/// completed with length 0, counted once under `reason`, delivers nothing, and that A's queue
/// stays in step: a good frame sent after it arrives and is completed.
fn tx_case(kind: RingKind, reason: &str, build: impl FnOnce(&mut TestGuest) -> Chain) {
    let net = start(&["", ""]);
    let mut a = net.connect(0, opts(kind));
    let mut b = net.connect(1, opts(kind));
    let chain = build(&mut a);
    let posted = post(&mut a, TXQ, chain);
    let what = format!("{kind:?} ring, {reason}");
    assert_eq!(
        take_used(&mut a, TXQ, &[posted]),
        [(RAW as u32, 0)],
        "{what}: completed with length 0"
    );
    net.wait_stats(&what, |s| drops(s, 0, reason) == 1);
    expect_nothing(&mut b, &format!("{what}: nothing delivered"));
    still_sends(&mut a, &mut b, 5, &format!("{what}: the queue still works"));
    assert_eq!(drops(&net.stats(), 0, reason), 1, "{what}: counted once");
}

/// [`tx_case`] on both ring kinds, with a chain both have.
fn tx_case_both(reason: &str, build: impl Fn(&mut TestGuest) -> Chain) {
    for kind in KINDS {
        tx_case(kind, reason, &build);
    }
}

/// Sends the raw chain `build` makes on A's TX queue (ring `kind`): a good one, B gets frame
/// `seq`, A's queue completes it and stays in step.
fn tx_good_case(kind: RingKind, seq: u32, build: impl FnOnce(&mut TestGuest) -> Chain) {
    let net = start(&["", ""]);
    let mut a = net.connect(0, opts(kind));
    let mut b = net.connect(1, opts(kind));
    let chain = build(&mut a);
    let posted = post(&mut a, TXQ, chain);
    let what = format!("{kind:?} ring, good chain");
    expect_seqs(&mut b, &[seq], &what);
    assert_eq!(
        take_used(&mut a, TXQ, &[posted]),
        [(RAW as u32, 0)],
        "{what}"
    );
    still_sends(&mut a, &mut b, seq + 1, &what);
    assert!(net.port_stats(0).total_drops().values().all(|&n| n == 0));
}

/// B's RX queue (ring `kind`) gets the bad chain `build` makes and nothing else: a frame for B
/// is dropped and counted as rx_bad_descriptor, the chain returned with length 0, and good
/// buffers posted after it (packed: in the slots after the chain's) work.
fn rx_case(kind: RingKind, build: impl FnOnce(&mut TestGuest) -> Chain) {
    let net = start(&["", ""]);
    let mut a = net.connect(0, opts(kind));
    let mut b = net.connect(
        1,
        GuestOptions {
            rx_buffers: 0,
            ..opts(kind)
        },
    );
    let chain = build(&mut b);
    let posted = post(&mut b, RXQ, chain);
    net.wait_stats("RX enabled", |s| s.ports[1].queues[0].enabled);
    a.send(0, &[&frame(mac(2), mac(1), 60, 1)]).unwrap();
    let what = format!("{kind:?} ring, bad RX chain");
    assert_eq!(
        take_used(&mut b, RXQ, &[posted]),
        [(RAW as u32, 0)],
        "{what}: returned with length 0"
    );
    net.wait_stats(&what, |s| drops(s, 1, "rx_bad_descriptor") == 1);
    b.post_rx_buffers(0, 16, 2048).unwrap();
    a.send(0, &[&frame(mac(2), mac(1), 60, 2)]).unwrap();
    expect_seqs(&mut b, &[2], &format!("{what}: good buffers after it work"));
    assert_eq!(drops(&net.stats(), 1, "rx_bad_descriptor"), 1, "{what}");
}

fn rx_case_both(build: impl Fn(&mut TestGuest) -> Chain) {
    for kind in KINDS {
        rx_case(kind, &build);
    }
}

/// Packed: A makes a chain available that never ends: the ring's size of descriptors `build`
/// makes, NEXT on every one, from the avail position after `lead_in` good frames. It is counted
/// once as tx_bad_descriptor however often A kicks, nothing is taken or completed, the other
/// ports keep passing traffic both ways, and port 0 takes a fresh connection that works.
fn tx_endless_case(lead_in: u32, build: impl FnOnce(&mut TestGuest) -> Vec<Raw>) {
    let net = start(&["", "", ""]);
    let mut a = net.connect(0, opts(RingKind::Packed));
    let mut b = net.connect(1, opts(RingKind::Packed));
    let mut c = net.connect(2, GuestOptions::default());
    announce(&mut b, mac(2), &mut [&mut a, &mut c]);
    announce(&mut c, mac(3), &mut [&mut a, &mut b]);
    for seq in 0..lead_in {
        still_sends(&mut a, &mut b, seq, "lead-in");
    }
    let size = a.queue(TXQ).size();
    let mut descs = build(&mut a);
    assert_eq!(descs.len(), size as usize);
    for d in &mut descs {
        d.flags |= NEXT;
    }
    let head = a.queue(TXQ).avail_position();
    post(&mut a, TXQ, Chain::Packed(descs));
    net.wait_stats("the endless chain counted", |s| {
        drops(s, 0, "tx_bad_descriptor") == 1
    });
    for _ in 0..5 {
        a.queue(TXQ).kick().unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    expect_nothing(&mut b, "nothing from a chain that never ends");
    let dq = a.queue(TXQ);
    assert_eq!(next_used(dq), None, "nothing completed");
    assert_eq!(
        dq.read_packed_desc(head.0).flags,
        NEXT | packed_avail_flags(head.1)
    );
    assert_eq!(
        drops(&net.stats(), 0, "tx_bad_descriptor"),
        1,
        "counted once"
    );
    // The other ports never noticed.
    c.send(0, &[&frame(mac(2), mac(3), 60, 1000)]).unwrap();
    expect_seqs(&mut b, &[1000], "C to B");
    b.send(0, &[&frame(mac(3), mac(2), 60, 1001)]).unwrap();
    expect_seqs(&mut c, &[1001], "B to C");
    // A fresh connection on port 0 works both ways.
    a.disconnect();
    let mut a = net.connect(0, opts(RingKind::Packed));
    still_sends(
        &mut a,
        &mut b,
        1002,
        "a fresh connection after an endless chain",
    );
    b.send(0, &[&frame(mac(1), mac(2), 60, 1003)]).unwrap();
    expect_seqs(&mut a, &[1003], "B to the fresh connection");
    assert_eq!(drops(&net.stats(), 0, "tx_bad_descriptor"), 1);
}

/// Packed: B's RX ring holds a chain that never ends (every slot WRITE | NEXT and available):
/// frames for B are not delivered and nothing is completed, the others' traffic goes on, B
/// still sends, and port 1 takes a fresh connection that receives.
fn rx_endless_case() {
    let net = start(&["", "", ""]);
    let mut a = net.connect(0, opts(RingKind::Packed));
    let mut b = net.connect(
        1,
        GuestOptions {
            rx_buffers: 0,
            ..opts(RingKind::Packed)
        },
    );
    let mut c = net.connect(2, GuestOptions::default());
    announce(&mut a, mac(1), &mut [&mut c]);
    announce(&mut b, mac(2), &mut [&mut a, &mut c]);
    announce(&mut c, mac(3), &mut [&mut a]);
    let size = b.queue(RXQ).size();
    let buf = b.alloc(2048, 16);
    let descs = vec![raw(buf, 2048, WRITE | NEXT); size as usize];
    post(&mut b, RXQ, Chain::Packed(descs));
    net.wait_stats("RX enabled", |s| s.ports[1].queues[0].enabled);
    for seq in 0..3 {
        a.send(0, &[&frame(mac(2), mac(1), 60, seq)]).unwrap();
        b.queue(RXQ).kick().unwrap();
    }
    std::thread::sleep(QUIET);
    assert_eq!(next_used(b.queue(RXQ)), None, "nothing written");
    // Everyone else goes on, B's TX too.
    c.send(0, &[&frame(mac(1), mac(3), 60, 1000)]).unwrap();
    expect_seqs(&mut a, &[1000], "C to A");
    b.send(0, &[&frame(mac(3), mac(2), 60, 1001)]).unwrap();
    expect_seqs(&mut c, &[1001], "B to C");
    b.disconnect();
    let mut b = net.connect(1, opts(RingKind::Packed));
    a.send(0, &[&frame(mac(2), mac(1), 60, 1002)]).unwrap();
    // Frames that waited for the old connection may come first.
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while !seen.contains(&1002) {
        assert!(
            Instant::now() < deadline,
            "fresh connection got only {seen:?}"
        );
        seen.extend(b.recv_wait(0, 1, WAIT).iter().map(|f| seq_of(&f.data)));
    }
}

// ----- TX chains -----

#[test]
fn tx_address_outside_guest_memory() {
    tx_case_both("tx_bad_descriptor", |_| {
        Chain::Linear(vec![raw(MEM + 4096, 100, 0)])
    });
}

#[test]
fn tx_buffer_running_past_the_end_of_memory() {
    tx_case_both("tx_bad_descriptor", |_| {
        Chain::Linear(vec![raw(MEM - 50, 100, 0)])
    });
}

#[test]
fn tx_zero_length_self_loop() {
    // Split: a descriptor whose `next` is itself.
    tx_case(RingKind::Split, "tx_bad_descriptor", |_| {
        Chain::Split(vec![(RAW, Descriptor::new(0, 0, NEXT, RAW))])
    });
    // Packed chains have no `next`: they go on slot by slot, a ring's worth at most. The
    // longest that ends, every slot of the ring with nothing in it, is taken whole (and dropped
    // as empty); one that never ends is below (`tx_two_descriptor_loop_with_data`,
    // `packed_tx_chain_that_never_ends`).
    tx_case(RingKind::Packed, "tx_short_frame", |g| {
        let size = g.queue(TXQ).size() as usize;
        Chain::Linear(vec![raw(0, 0, 0); size])
    });
}

#[test]
fn tx_two_descriptor_loop_with_data() {
    // Split: two descriptors with data whose `next`s point at each other.
    tx_case(RingKind::Split, "tx_bad_descriptor", |g| {
        let at = good_buffer(g, 0);
        Chain::Split(vec![
            (RAW, Descriptor::new(at, 40, NEXT, RAW + 1)),
            (RAW + 1, Descriptor::new(at + 40, 32, NEXT, RAW)),
        ])
    });
    // Packed: the same two buffers in turn, on and on: every slot of the ring says NEXT.
    tx_endless_case(0, |g| {
        let at = good_buffer(g, 0);
        let size = g.queue(TXQ).size();
        (0..size)
            .map(|i| {
                if i % 2 == 0 {
                    raw(at, 40, 0)
                } else {
                    raw(at + 40, 32, 0)
                }
            })
            .collect()
    });
}

#[test]
fn tx_next_out_of_the_table() {
    tx_case(RingKind::Split, "tx_bad_descriptor", |g| {
        let at = good_buffer(g, 0);
        Chain::Split(vec![(RAW, Descriptor::new(at, 40, NEXT, 9999))])
    });
    // Packed: NEXT leads to the next slot whatever it holds; here nothing of guest memory.
    tx_case(RingKind::Packed, "tx_bad_descriptor", |g| {
        let at = good_buffer(g, 0);
        Chain::Packed(vec![raw(at, 40, NEXT), raw(MEM + 4096, 32, 0)])
    });
}

#[test]
fn tx_zero_length_chain() {
    tx_case_both("tx_short_frame", |_| Chain::Linear(vec![raw(0, 0, 0)]));
}

#[test]
fn tx_chain_no_longer_than_the_header() {
    tx_case_both("tx_short_frame", |g| {
        let at = good_buffer(g, 0);
        Chain::Linear(vec![raw(at, 12, 0)])
    });
}

#[test]
fn tx_header_split_over_descriptors_is_fine_but_a_runt_frame_is_not() {
    tx_case_both("tx_short_frame", |g| {
        let at = good_buffer(g, 0);
        Chain::Linear(vec![raw(at, 5, 0), raw(at + 5, 7 + 10, 0)])
    });
}

#[test]
fn tx_device_writable_descriptor() {
    tx_case_both("tx_bad_descriptor", |g| {
        let at = good_buffer(g, 0);
        Chain::Linear(vec![raw(at, GOOD_LEN, WRITE)])
    });
}

#[test]
fn tx_oversize_frame() {
    tx_case_both("tx_oversize", |g| {
        let at = g.alloc(4000, 16);
        Chain::Linear(vec![raw(at, 4000, 0)])
    });
}

#[test]
fn tx_offload_request_that_was_not_negotiated() {
    tx_case_both("tx_bad_offload", |g| {
        let at = good_buffer(g, 0);
        g.write_mem(at, &[1, 1]); // NEEDS_CSUM, GSO_TCPV4
        Chain::Linear(vec![raw(at, GOOD_LEN, 0)])
    });
}

#[test]
fn tx_indirect_table_of_bad_length() {
    tx_case_both("tx_bad_descriptor", |g| {
        let table = g.alloc(64, 16);
        g.write_mem(table, &[0u8; 64]);
        // Not a multiple of 16.
        Chain::Linear(vec![raw(table, 17, INDIRECT)])
    });
}

/// A's TX queue claims more than it made available, then repairs it: split, `avail.idx` a long
/// way past what was published; packed (no avail index), every slot but the avail position's
/// marked available. Nothing is taken meanwhile, the other ports are unaffected, and after the
/// repair A's queue works.
fn far_ahead_case(kind: RingKind) {
    let net = start(&["", "", ""]);
    let mut a = net.connect(0, opts(kind));
    let mut b = net.connect(1, opts(kind));
    let mut c = net.connect(2, opts(kind));
    let q = a.queue(TXQ);
    let size = q.size();
    let sane = match kind {
        RingKind::Split => {
            let sane = q.avail_idx();
            q.set_avail_idx(sane.wrapping_add(5000));
            sane
        }
        RingKind::Packed => {
            let at = q.avail_position();
            for i in 1..size {
                let (slot, wrap) = advance(size, at, i);
                q.write_packed_desc(slot, MEM + 4096, 100, RAW, packed_avail_flags(wrap));
            }
            0
        }
    };
    q.kick().unwrap();
    std::thread::sleep(QUIET);
    assert_eq!(next_used(a.queue(TXQ)), None, "{kind:?}: nothing taken");
    // Other ports are unaffected.
    c.send(0, &[&frame(mac(2), mac(3), 60, 9)]).unwrap();
    assert_eq!(b.recv_wait(0, 1, WAIT).len(), 1);
    // The guest repairs its ring: the queue works again.
    let q = a.queue(TXQ);
    match kind {
        RingKind::Split => q.set_avail_idx(sane),
        RingKind::Packed => {
            for slot in 1..size {
                q.write_packed_desc(slot, 0, 0, 0, 0);
            }
        }
    }
    a.send(0, &[&frame(mac(2), mac(1), 60, 10)]).unwrap();
    let got = b.recv_wait(0, 1, WAIT);
    assert_eq!(
        got.iter().map(|f| seq_of(&f.data)).collect::<Vec<_>>(),
        vec![10],
        "{kind:?}"
    );
    if kind == RingKind::Packed {
        assert_eq!(
            drops(&net.stats(), 0, "tx_bad_descriptor"),
            0,
            "nothing taken"
        );
    }
}

#[test]
fn avail_index_far_ahead_does_not_hurt_other_ports() {
    for kind in KINDS {
        far_ahead_case(kind);
    }
}

// ----- RX chains -----

#[test]
fn rx_device_readable_buffer() {
    rx_case_both(|g| Chain::Linear(vec![raw(g.alloc(2048, 16), 2048, 0)]));
}

#[test]
fn rx_buffer_outside_guest_memory() {
    rx_case_both(|_| Chain::Linear(vec![raw(MEM + 8192, 2048, WRITE)]));
}

#[test]
fn rx_buffer_loop() {
    rx_case(RingKind::Split, |_| {
        Chain::Split(vec![(RAW, Descriptor::new(0, 0, WRITE | NEXT, RAW))])
    });
    // Packed: no `next` to loop with; NEXT in every slot of the ring is the chain that never
    // ends.
    rx_endless_case();
}

// ----- the connection -----

#[test]
fn out_of_range_vring_index_ends_only_that_connection() {
    use std::io::{Read, Write};
    for kind in KINDS {
        let net = start(&["", ""]);
        let mut b = net.connect(1, opts(kind));
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
        let mut a = net.connect(0, opts(kind));
        a.send(0, &[&frame(mac(2), mac(1), 60, 3)]).unwrap();
        assert_eq!(b.recv_wait(0, 1, WAIT).len(), 1, "{kind:?}");
    }
}

#[test]
fn garbage_on_the_socket_ends_only_that_connection() {
    use std::io::Write;
    for kind in KINDS {
        let net = start(&["", ""]);
        let mut b = net.connect(1, opts(kind));
        let mut raw = std::os::unix::net::UnixStream::connect(net.socket(0)).unwrap();
        // A header claiming a huge payload, then noise.
        raw.write_all(&[0xff; 12]).unwrap();
        raw.write_all(&[0x5a; 300]).unwrap();
        let _ = raw.shutdown(std::net::Shutdown::Both);
        drop(raw);
        // Port 0 accepts a real frontend afterwards; port 1 never noticed.
        let mut a = net.connect(0, opts(kind));
        a.send(0, &[&frame(mac(2), mac(1), 60, 4)]).unwrap();
        assert_eq!(b.recv_wait(0, 1, WAIT).len(), 1, "{kind:?}");
    }
}

// ----- packed only -----

/// Managed frames from A to B, one at a time, until A's TX avail position is `to`.
fn send_until(a: &mut TestGuest, b: &mut TestGuest, to: (u16, bool), seq: &mut u32) {
    while a.queue(TXQ).avail_position() != to {
        still_sends(a, b, *seq, "filler");
        *seq += 1;
    }
}

/// A's TX descriptor at `slot` is as A wrote it: vnic neither took nor completed it.
fn untouched(a: &mut TestGuest, slot: u16, addr: u64, id: u16, flags: u16) {
    let want = PackedDescriptor {
        addr,
        len: GOOD_LEN,
        id,
        flags,
    };
    assert_eq!(
        a.queue(TXQ).read_packed_desc(slot),
        want,
        "slot {slot} taken"
    );
}

#[test]
fn packed_wrap_counter_confusion() {
    let net = start(&["", ""]);
    let small = GuestOptions {
        queue_size: 8,
        ..opts(RingKind::Packed)
    };
    let mut a = net.connect(0, small);
    let mut b = net.connect(1, opts(RingKind::Packed));
    let mut filler = 100;
    // In lap 1 (wrap counter 1) and lap 2 (0), at slot 0, the avail position: a good frame
    // with the bits of the other lap's "available", of this lap's "used" and of the other
    // lap's "used" is not available; vnic takes it once the driver sets this lap's bits.
    for (lap, wrap) in [(1, true), (2, false)] {
        send_until(&mut a, &mut b, (0, wrap), &mut filler);
        let at = good_buffer(&mut a, lap);
        for flags in [
            packed_avail_flags(!wrap),
            packed_used_flags(wrap),
            packed_used_flags(!wrap),
        ] {
            a.queue(TXQ).write_packed_desc(0, at, GOOD_LEN, RAW, flags);
            a.queue(TXQ).kick().unwrap();
            expect_nothing(&mut b, &format!("lap {lap}, flags {flags:#x}"));
            untouched(&mut a, 0, at, RAW, flags);
        }
        let posted = post(&mut a, TXQ, Chain::Linear(vec![raw(at, GOOD_LEN, 0)]));
        expect_seqs(&mut b, &[lap], &format!("lap {lap}, fixed"));
        assert_eq!(take_used(&mut a, TXQ, &[posted]), [(RAW as u32, 0)]);
    }
    // A driver that flips the bits for a later lap early: at slot 1 of lap 2 it makes slot 0
    // of lap 3 available before slots 1-7 of lap 2. Not taken until those are, then in ring
    // order.
    assert_eq!(a.queue(TXQ).avail_position(), (1, false));
    let early = good_buffer(&mut a, 30);
    let q = a.queue(TXQ);
    write_packed(q, (0, true), 30, &[raw(early, GOOD_LEN, 0)]);
    q.kick().unwrap();
    expect_nothing(&mut b, "lap 3 early");
    untouched(&mut a, 0, early, 30, AVAIL);
    let mut posted = Vec::new();
    for seq in 21..28u16 {
        let at = good_buffer(&mut a, seq as u32);
        posted.push(post_packed(a.queue(TXQ), seq, &[raw(at, GOOD_LEN, 0)]));
    }
    assert_eq!(a.queue(TXQ).avail_position(), (0, true));
    a.queue(TXQ).set_avail_position(1, true);
    posted.push(Posted { id: 30, slots: 1 });
    a.queue(TXQ).kick().unwrap();
    expect_seqs(
        &mut b,
        &[21, 22, 23, 24, 25, 26, 27, 30],
        "lap 2, then lap 3",
    );
    let ids: Vec<u32> = take_used(&mut a, TXQ, &posted)
        .iter()
        .map(|&(id, _)| id)
        .collect();
    assert_eq!(ids, [21, 22, 23, 24, 25, 26, 27, 30]);
    still_sends(&mut a, &mut b, 40, "after the early flip");
    assert!(net.port_stats(0).total_drops().values().all(|&n| n == 0));
}

#[test]
fn packed_avail_flag_ahead_of_the_avail_position() {
    // Slot 3 available, slots 0-2 not: nothing taken; slots 1 and 2 too: still nothing;
    // slot 0: all four, in ring order.
    let net = start(&["", ""]);
    let mut a = net.connect(0, opts(RingKind::Packed));
    let mut b = net.connect(1, opts(RingKind::Packed));
    let bufs: Vec<u64> = (0..4).map(|seq| good_buffer(&mut a, seq)).collect();
    let post_slot = |a: &mut TestGuest, slot: u16| {
        write_packed(
            a.queue(TXQ),
            (slot, true),
            slot,
            &[raw(bufs[slot as usize], GOOD_LEN, 0)],
        );
        a.queue(TXQ).kick().unwrap();
    };
    post_slot(&mut a, 3);
    expect_nothing(&mut b, "slot 3 ahead");
    untouched(&mut a, 3, bufs[3], 3, AVAIL);
    post_slot(&mut a, 1);
    post_slot(&mut a, 2);
    expect_nothing(&mut b, "slots 1-3 ahead");
    for slot in 1..4 {
        untouched(&mut a, slot, bufs[slot as usize], slot, AVAIL);
    }
    assert_eq!(next_used(a.queue(TXQ)), None);
    post_slot(&mut a, 0);
    a.queue(TXQ).set_avail_position(4, true);
    expect_seqs(&mut b, &[0, 1, 2, 3], "in ring order");
    let posted: Vec<Posted> = (0..4).map(|id| Posted { id, slots: 1 }).collect();
    let done = take_used(&mut a, TXQ, &posted);
    assert_eq!(
        done.iter().map(|&(id, _)| id).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    still_sends(&mut a, &mut b, 9, "after the slots ahead");
}

#[test]
fn packed_rx_buffer_ahead_of_the_avail_position() {
    // A buffer at slot 1, none at slot 0: the frame waits; slot 0 made available, the frame
    // goes there, and the next frame into slot 1.
    let net = start(&["", ""]);
    let mut a = net.connect(0, opts(RingKind::Packed));
    let mut b = net.connect(
        1,
        GuestOptions {
            rx_buffers: 0,
            ..opts(RingKind::Packed)
        },
    );
    let bufs = [b.alloc(2048, 16), b.alloc(2048, 16)];
    write_packed(b.queue(RXQ), (1, true), 1, &[raw(bufs[1], 2048, WRITE)]);
    b.queue(RXQ).kick().unwrap();
    net.wait_stats("RX enabled", |s| s.ports[1].queues[0].enabled);
    a.send(0, &[&frame(mac(2), mac(1), 60, 7)]).unwrap();
    std::thread::sleep(QUIET);
    assert_eq!(
        next_used(b.queue(RXQ)),
        None,
        "RX slot 1 ahead: nothing written"
    );
    assert_eq!(b.queue(RXQ).read_packed_desc(1).len, 2048);
    let q = b.queue(RXQ);
    write_packed(q, (0, true), 0, &[raw(bufs[0], 2048, WRITE)]);
    q.set_avail_position(2, true);
    q.kick().unwrap();
    let first = Posted { id: 0, slots: 1 };
    assert_eq!(take_used(&mut b, RXQ, &[first]), [(0, GOOD_LEN)]);
    a.send(0, &[&frame(mac(2), mac(1), 60, 8)]).unwrap();
    let second = Posted { id: 1, slots: 1 };
    assert_eq!(take_used(&mut b, RXQ, &[second]), [(1, GOOD_LEN)]);
    for (buf, seq) in bufs.into_iter().zip([7, 8]) {
        assert_eq!(seq_of(&b.read_mem(buf, GOOD_LEN as usize)[12..]), seq);
    }
}

#[test]
fn packed_chains_across_the_ring_end() {
    let net = start(&["", ""]);
    let small = GuestOptions {
        queue_size: 8,
        ..opts(RingKind::Packed)
    };
    let mut a = net.connect(0, small);
    let mut b = net.connect(1, opts(RingKind::Packed));
    let mut filler = 100;
    let bad = |net: &Net| drops(&net.stats(), 0, "tx_bad_descriptor");

    // Good: header, and the frame in two pieces, in slots 6, 7 and 0 (lap 2).
    send_until(&mut a, &mut b, (6, true), &mut filler);
    let at = good_buffer(&mut a, 1);
    let posted = post(
        &mut a,
        TXQ,
        Chain::Linear(vec![
            raw(at, 12, 0),
            raw(at + 12, 30, 0),
            raw(at + 42, 30, 0),
        ]),
    );
    let got = b.recv_wait(0, 1, WAIT);
    assert_eq!(got.len(), 1, "a chain across the ring end");
    assert_eq!(got[0].data, frame(mac(2), mac(1), 60, 1));
    assert_eq!(take_used(&mut a, TXQ, &[posted]), [(RAW as u32, 0)]);
    assert_eq!(a.queue(TXQ).avail_position(), (1, false));

    // Good: the longest chain, every slot of the ring, 9 bytes each (slots 1-7 of lap 2, 0 of
    // lap 3).
    let at = good_buffer(&mut a, 2);
    let pieces = (0..8).map(|i| raw(at + 9 * i, 9, 0)).collect();
    let posted = post(&mut a, TXQ, Chain::Linear(pieces));
    let got = b.recv_wait(0, 1, WAIT);
    assert_eq!(got.len(), 1, "a chain as long as the ring");
    assert_eq!(got[0].data, frame(mac(2), mac(1), 60, 2));
    assert_eq!(take_used(&mut a, TXQ, &[posted]), [(RAW as u32, 0)]);
    assert_eq!(a.queue(TXQ).avail_position(), (1, true));
    still_sends(&mut a, &mut b, 3, "after the ring-long chain");

    // A bad chain posted once the avail position is at `from`, with its buffers at `at` (from
    // `good_buffer(seq)`): it fails alone, completed in its first slot, and the avail position
    // moves on to `to`, where the next good chain is delivered.
    let mut bad_chain = |from, seq, chain: &dyn Fn(u64) -> Vec<Raw>, to, what: &str| {
        send_until(&mut a, &mut b, from, &mut filler);
        let at = good_buffer(&mut a, seq);
        let before = bad(&net);
        let posted = post(&mut a, TXQ, Chain::Linear(chain(at)));
        assert_eq!(take_used(&mut a, TXQ, &[posted]), [(RAW as u32, 0)]);
        net.wait_stats(what, |s| drops(s, 0, "tx_bad_descriptor") == before + 1);
        expect_nothing(&mut b, what);
        assert_eq!(a.queue(TXQ).avail_position(), to, "{what}");
        still_sends(&mut a, &mut b, seq + 1, what);
    };
    // Slots 6, 7 and 0 (lap 4), the one past the end outside guest memory.
    bad_chain(
        (6, true),
        4,
        &|at| vec![raw(at, 12, 0), raw(at + 12, 30, 0), raw(MEM + 4096, 30, 0)],
        (1, false),
        "a bad chain across the end",
    );
    // Bad from its head, in the last slot, device-writable; the good chain after it in slot 0
    // of the next lap.
    bad_chain(
        (7, false),
        6,
        &|at| vec![raw(at, 12, WRITE), raw(at + 12, 60, 0)],
        (1, true),
        "a bad chain from the last slot",
    );
    assert_eq!(bad(&net), 2);
}

#[test]
fn packed_indirect_tables() {
    let packed = RingKind::Packed;
    // Good: header and frame in a table of two.
    tx_good_case(packed, 20, |g| {
        let at = good_buffer(g, 20);
        let t = packed_table(g, &[raw(at, 12, 0), raw(at + 12, 60, 0)]);
        Chain::Linear(vec![raw(t, 32, INDIRECT)])
    });
    let bad = "tx_bad_descriptor";
    // A table of length 0, outside guest memory, running past its end.
    tx_case(packed, bad, |_| {
        Chain::Linear(vec![raw(0x1000, 0, INDIRECT)])
    });
    tx_case(packed, bad, |_| {
        Chain::Linear(vec![raw(MEM + 4096, 32, INDIRECT)])
    });
    tx_case(packed, bad, |_| {
        Chain::Linear(vec![raw(MEM - 16, 32, INDIRECT)])
    });
    // Entries: one outside guest memory, one device-writable, one INDIRECT again.
    let table = |entry: fn(u64) -> Raw| {
        move |g: &mut TestGuest| {
            let at = good_buffer(g, 21);
            let t = packed_table(g, &[raw(at, 12, 0), entry(at + 12)]);
            Chain::Linear(vec![raw(t, 32, INDIRECT)])
        }
    };
    tx_case(packed, bad, table(|_| raw(MEM + 4096, 60, 0)));
    tx_case(packed, bad, table(|at| raw(at, 60, WRITE)));
    tx_case(packed, bad, table(|at| raw(at, 60, INDIRECT)));
    // INDIRECT with NEXT (2.8.8: a table is a chain of its own), and INDIRECT after the first
    // descriptor: bad chains that still take both their slots.
    tx_case(packed, bad, |g| {
        let at = good_buffer(g, 22);
        let t = packed_table(g, &[raw(at, 12, 0)]);
        Chain::Packed(vec![raw(t, 16, INDIRECT | NEXT), raw(at + 12, 60, 0)])
    });
    tx_case(packed, bad, |g| {
        let at = good_buffer(g, 23);
        let t = packed_table(g, &[raw(at + 12, 60, 0)]);
        Chain::Packed(vec![raw(at, 12, NEXT), raw(t, 16, INDIRECT)])
    });
}

#[test]
fn packed_tx_chain_that_never_ends() {
    // Zero-length descriptors, every one NEXT and available, from slot 100: across the ring
    // end back to slot 99.
    tx_endless_case(100, |g| {
        let size = g.queue(TXQ).size();
        vec![raw(0, 0, 0); size as usize]
    });
}

#[test]
fn packed_rx_bad_chains_take_all_their_slots() {
    let packed = RingKind::Packed;
    // Three buffers, the middle one device-readable / outside guest memory: the chain is
    // returned empty in its first slot and the buffers posted after its third one work.
    for middle in [0, 1] {
        rx_case(packed, |g| {
            let bufs: Vec<u64> = (0..3).map(|_| g.alloc(1024, 16)).collect();
            let second = if middle == 0 {
                raw(bufs[1], 1024, 0)
            } else {
                raw(MEM + 8192, 1024, WRITE)
            };
            Chain::Linear(vec![
                raw(bufs[0], 1024, WRITE),
                second,
                raw(bufs[2], 1024, WRITE),
            ])
        });
    }
    // An indirect table with a device-readable entry, and one with INDIRECT | NEXT.
    rx_case(packed, |g| {
        let bufs = [g.alloc(1024, 16), g.alloc(1024, 16)];
        let t = packed_table(g, &[raw(bufs[0], 1024, WRITE), raw(bufs[1], 1024, 0)]);
        Chain::Linear(vec![raw(t, 32, INDIRECT)])
    });
    rx_case(packed, |g| {
        let bufs = [g.alloc(1024, 16), g.alloc(1024, 16)];
        let t = packed_table(g, &[raw(bufs[0], 1024, WRITE)]);
        Chain::Packed(vec![
            raw(t, 16, INDIRECT | NEXT | WRITE),
            raw(bufs[1], 1024, WRITE),
        ])
    });
}

#[test]
fn packed_bad_chain_amid_a_burst() {
    // Good (slots 5-6), bad (7, 0, 1: its middle outside guest memory), good (2), made
    // available at once: one burst, the bad chain failing alone in it. Without IN_ORDER each
    // is completed in its slot; with it one used entry may stand for the burst (2.8.11); either
    // way the driver's used position ends after the last chain.
    for in_order in [false, true] {
        let net = start(&["", ""]);
        let small = GuestOptions {
            queue_size: 8,
            in_order,
            ..opts(RingKind::Packed)
        };
        let mut a = net.connect(0, small);
        let mut b = net.connect(1, opts(RingKind::Packed));
        let mut filler = 100;
        send_until(&mut a, &mut b, (5, true), &mut filler);
        let bufs: Vec<u64> = (1..4).map(|seq| good_buffer(&mut a, seq)).collect();
        let chains = [
            vec![raw(bufs[0], 12, 0), raw(bufs[0] + 12, 60, 0)],
            vec![
                raw(bufs[1], 12, 0),
                raw(MEM + 4096, 30, 0),
                raw(bufs[1] + 42, 30, 0),
            ],
            vec![raw(bufs[2], GOOD_LEN, 0)],
        ];
        let q = a.queue(TXQ);
        let posted: Vec<Posted> = (1..)
            .zip(chains)
            .map(|(id, descs)| post_packed(q, id, &linked(descs)))
            .collect();
        q.kick().unwrap();
        let what = format!("IN_ORDER {in_order}");
        expect_seqs(&mut b, &[1, 3], &what);
        assert_eq!(
            take_used(&mut a, TXQ, &posted),
            [(1, 0), (2, 0), (3, 0)],
            "{what}"
        );
        assert_eq!(a.queue(TXQ).used_position(), (3, false), "{what}");
        net.wait_stats(&what, |s| drops(s, 0, "tx_bad_descriptor") == 1);
        still_sends(&mut a, &mut b, 4, &what);
    }
}

/// Sends the memory table again, the same memory (as QEMU does on memory hot-plug).
fn resend_mem_table(g: &mut TestGuest) {
    use std::os::fd::AsRawFd;
    use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
    let ram = g.ram().clone();
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: ram.gpa_base(),
        memory_size: ram.size() as u64,
        userspace_addr: ram.host_base(),
        mmap_offset: 0,
        mmap_handle: ram.file().as_raw_fd(),
    };
    g.frontend().set_mem_table(&[region]).unwrap();
}

#[test]
fn packed_memory_table_resent_with_a_slot_ahead() {
    // B's RX ring: slot 0 used, slot 2 made available ahead of slot 1 (hostile, or a chain
    // whose head is not written yet). The memory table comes again, so vnic builds its ring
    // anew: slot 2 must stay as the driver left it, and once slot 1 is made available the next
    // two frames go to slots 1 and 2.
    let net = start(&["", ""]);
    let mut a = net.connect(0, opts(RingKind::Packed));
    let mut b = net.connect(
        1,
        GuestOptions {
            rx_buffers: 0,
            ..opts(RingKind::Packed)
        },
    );
    let bufs: Vec<u64> = (0..3).map(|_| b.alloc(2048, 16)).collect();
    let posted: Vec<Posted> = (0..3).map(|id| Posted { id, slots: 1 }).collect();
    post_packed(b.queue(RXQ), 0, &[raw(bufs[0], 2048, WRITE)]);
    b.queue(RXQ).kick().unwrap();
    net.wait_stats("RX enabled", |s| s.ports[1].queues[0].enabled);
    a.send(0, &[&frame(mac(2), mac(1), 60, 1)]).unwrap();
    assert_eq!(take_used(&mut b, RXQ, &posted[..1]), [(0, GOOD_LEN)]);
    write_packed(b.queue(RXQ), (2, true), 2, &[raw(bufs[2], 2048, WRITE)]);
    resend_mem_table(&mut b);
    b.queue(RXQ).kick().unwrap();
    std::thread::sleep(QUIET);
    let slot2 = b.queue(RXQ).read_packed_desc(2);
    assert_eq!(
        (slot2.len, slot2.flags),
        (2048, WRITE | AVAIL),
        "slot 2 as the driver left it"
    );
    write_packed(b.queue(RXQ), (1, true), 1, &[raw(bufs[1], 2048, WRITE)]);
    b.queue(RXQ).set_avail_position(3, true);
    b.queue(RXQ).kick().unwrap();
    for (k, seq) in [(1, 2), (2, 3)] {
        a.send(0, &[&frame(mac(2), mac(1), 60, seq)]).unwrap();
        let what = format!("frame {seq} into slot {k}");
        assert_eq!(
            take_used(&mut b, RXQ, &posted[k..=k]),
            [(k as u32, GOOD_LEN)],
            "{what}"
        );
        assert_eq!(
            seq_of(&b.read_mem(bufs[k], GOOD_LEN as usize)[12..]),
            seq,
            "{what}"
        );
    }
}
