//! Proves the test driver against the rust-vmm device side, without the vnic device:
//!
//! * ring level: the driver's rings shared (through a second mapping of the same memfd) with a
//!   device-side `virtio_queue::Queue`: descriptor layouts, used entries, `EVENT_IDX` kick and
//!   interrupt suppression, `MRG_RXBUF` merging, indirect tables, index wrap-around;
//! * end to end: `TestGuest::connect` against a small echo device served by
//!   `vhost_user_backend::VhostUserDaemon` (TX frames of a pair come back on its RX queue).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vnic_testdriver::{
    features::*, packed_avail_flags, packed_used_flags, Descriptor, DriverQueue, EventSuppress,
    GuestOptions, GuestRam, PackedDescriptor, RingKind, RingOptions, RxQueue, Segment, TestGuest,
    TxLayout, TxQueue, UsedElem, DRIVER_FEATURES, VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_PACKED_DESC_F_AVAIL,
    VRING_PACKED_DESC_F_USED, VRING_PACKED_EVENT_FLAG_DISABLE,
};

// ---------------------------------------------------------------------------------------------
// Ring level: driver rings + virtio_queue::Queue over the same memory
// ---------------------------------------------------------------------------------------------

/// A popped chain: head and (addr, len, writable) per descriptor.
type Chain = (u16, Vec<(u64, u32, bool)>);

struct Bench {
    ram: Arc<GuestRam>,
    mem: GuestMemoryMmap,
}

impl Bench {
    fn new(gpa_base: u64) -> Bench {
        let ram = Arc::new(GuestRam::new(8 << 20, gpa_base).unwrap());
        let mem = ram.backend_mapping().unwrap();
        Bench { ram, mem }
    }

    fn driver_queue(&self, index: u16, size: u16, event_idx: bool) -> DriverQueue {
        DriverQueue::new(self.ram.clone(), index, size, event_idx).unwrap()
    }

    /// The device side of `q`, configured like a vhost-user backend would after SET_VRING_*.
    fn device_queue(&self, q: &DriverQueue) -> Queue {
        let mut dq = Queue::new(q.size()).unwrap();
        dq.try_set_desc_table_address(GuestAddress(q.desc_table()))
            .unwrap();
        dq.try_set_avail_ring_address(GuestAddress(q.avail_ring()))
            .unwrap();
        dq.try_set_used_ring_address(GuestAddress(q.used_ring()))
            .unwrap();
        dq.set_event_idx(q.event_idx());
        dq.set_ready(true);
        assert!(dq.is_valid(&self.mem));
        dq
    }

    /// Pops one chain: (head, [(addr, len, writable)]).
    fn pop(&self, dq: &mut Queue) -> Option<Chain> {
        let chain = dq.pop_descriptor_chain(&self.mem)?;
        let head = chain.head_index();
        let descs = chain
            .map(|d| (d.addr().0, d.len(), d.is_write_only()))
            .collect();
        Some((head, descs))
    }

    fn gather(&self, descs: &[(u64, u32, bool)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(addr, len, writable) in descs {
            assert!(!writable, "TX descriptors must be device-readable");
            let mut b = vec![0u8; len as usize];
            self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
            out.extend_from_slice(&b);
        }
        out
    }

    /// Writes `data` across the writable descriptors; returns bytes written.
    fn scatter(&self, descs: &[(u64, u32, bool)], data: &[u8]) -> u32 {
        let mut off = 0;
        for &(addr, len, writable) in descs {
            assert!(writable, "RX descriptors must be device-writable");
            let n = (len as usize).min(data.len() - off);
            self.mem
                .write_slice(&data[off..off + n], GuestAddress(addr))
                .unwrap();
            off += n;
        }
        off as u32
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn net_hdr(num_buffers: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = 0x01; // NEEDS_CSUM, just to see it come through
    h[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    h
}

fn check_tx_layouts(gpa_base: u64) {
    let b = Bench::new(gpa_base);
    let mut tx = TxQueue::new(b.driver_queue(1, 16, true), 2048, 12).unwrap();
    let mut dq = b.device_queue(tx.queue_ref());
    let hdr: Vec<u8> = (1..=12).collect();
    let layouts = [
        TxLayout::COMBINED,
        TxLayout::SPLIT_HEADER,
        TxLayout::INDIRECT,
        TxLayout::COMBINED.scattered(100),
        TxLayout::SPLIT_HEADER.scattered(1000),
        TxLayout::INDIRECT.scattered(64),
    ];
    for (i, layout) in layouts.into_iter().enumerate() {
        let frame = pattern(300, i as u8);
        assert!(tx.enqueue(&hdr, &frame, layout).unwrap());
        tx.flush().unwrap();
        let head = tx.queue_ref().peek_head();
        let (h, descs) = b.pop(&mut dq).expect("device sees the chain");
        assert_ne!(Some(h), head);
        assert_eq!(descs.len(), layout.segments(12, 300), "{layout:?}");
        for &(addr, len, _) in &descs {
            assert!(addr >= gpa_base && addr + len as u64 <= gpa_base + b.ram.size() as u64);
        }
        if layout.separate_header {
            assert_eq!(descs[0].1, 12, "{layout:?}: header descriptor");
        }
        let raw = tx.queue_ref().read_desc(h);
        assert_eq!(
            raw.flags & VRING_DESC_F_INDIRECT != 0,
            layout.indirect,
            "{layout:?}"
        );
        let bytes = b.gather(&descs);
        assert_eq!(&bytes[..12], &hdr[..]);
        assert_eq!(&bytes[12..], &frame[..], "{layout:?}");
        dq.add_used(&b.mem, h, 0).unwrap();
        assert_eq!(tx.reclaim(), 1);
        assert_eq!(tx.in_flight(), 0);
        assert_eq!(tx.queue_ref().free_descriptors(), 16);
    }
}

#[test]
fn tx_layouts_reach_the_device_intact() {
    check_tx_layouts(0);
}

#[test]
fn tx_layouts_with_nonzero_gpa_base() {
    check_tx_layouts(0x1_0000_0000);
}

#[test]
fn tx_empty_and_oversized_frames() {
    let b = Bench::new(0);
    let mut tx = TxQueue::new(b.driver_queue(1, 4, false), 2048, 12).unwrap();
    let mut dq = b.device_queue(tx.queue_ref());
    // Empty frame, combined: one 12-byte descriptor.
    assert_eq!(tx.send(&[&[]]).unwrap(), 1);
    let (_, descs) = b.pop(&mut dq).unwrap();
    assert_eq!(descs.len(), 1);
    assert_eq!(descs[0].1, 12);
    // A frame needing more descriptors than the ring has is an error, not "ring full".
    let big = vec![0u8; 1000];
    assert!(tx
        .send_with(&[&big], TxLayout::COMBINED.scattered(10))
        .is_err());
}

#[test]
fn tx_big_frames_grow_buffers_once() {
    let b = Bench::new(0);
    let mut tx = TxQueue::new(b.driver_queue(1, 8, true), 2048, 12).unwrap();
    let mut dq = b.device_queue(tx.queue_ref());
    let frame = pattern(9000, 7);
    let mut round = |tx: &mut TxQueue| {
        let frames: Vec<&[u8]> = vec![&frame; 8];
        assert_eq!(tx.send(&frames).unwrap(), 8);
        assert_eq!(tx.send(&frames).unwrap(), 0, "ring is full");
        while let Some((h, descs)) = b.pop(&mut dq) {
            assert_eq!(&b.gather(&descs)[12..], &frame[..]);
            dq.add_used(&b.mem, h, 0).unwrap();
        }
        assert_eq!(tx.reclaim(), 8);
    };
    round(&mut tx);
    let remaining = b.ram.remaining();
    round(&mut tx);
    round(&mut tx);
    assert_eq!(b.ram.remaining(), remaining, "no allocation after warm-up");
}

#[test]
fn tx_index_wraparound() {
    let b = Bench::new(0);
    let mut tx = TxQueue::new(b.driver_queue(1, 4, true), 256, 12).unwrap();
    let mut dq = b.device_queue(tx.queue_ref());
    let mut sent = 0u32;
    let mut seen = 0u32;
    while sent < 70_000 {
        let f0 = sent.to_le_bytes();
        let f1 = (sent + 1).to_le_bytes();
        let f2 = (sent + 2).to_le_bytes();
        let n = tx.send(&[&f0, &f1, &f2]).unwrap() as u32;
        sent += n;
        loop {
            dq.disable_notification(&b.mem).unwrap();
            while let Some((h, descs)) = b.pop(&mut dq) {
                let bytes = b.gather(&descs);
                assert_eq!(u32::from_le_bytes(bytes[12..16].try_into().unwrap()), seen);
                seen += 1;
                dq.add_used(&b.mem, h, 0).unwrap();
            }
            if !dq.enable_notification(&b.mem).unwrap() {
                break;
            }
        }
    }
    tx.reclaim();
    assert_eq!(tx.in_flight(), 0);
    assert_eq!(seen, sent);
    assert_eq!(tx.completed(), sent as u64);
    assert_eq!(tx.queue_ref().avail_idx(), (sent % 65536) as u16);
    assert_eq!(tx.queue_ref().used_idx(), (sent % 65536) as u16);
}

#[test]
fn rx_single_buffers_are_read_back_and_refilled() {
    let b = Bench::new(0);
    let mut rx = RxQueue::new(b.driver_queue(0, 8, true), 2048, 12, false).unwrap();
    assert_eq!(rx.post(4).unwrap(), 4);
    let mut dq = b.device_queue(rx.queue_ref());
    for i in 0..3u8 {
        let (h, descs) = b.pop(&mut dq).unwrap();
        assert_eq!(descs, vec![(descs[0].0, 2048, true)]);
        let mut pkt = net_hdr(1).to_vec();
        pkt.extend(pattern(100 + i as usize, i));
        let n = b.scatter(&descs, &pkt);
        dq.add_used(&b.mem, h, n).unwrap();
    }
    let mut out = Vec::new();
    assert_eq!(rx.recv_into(&mut out).unwrap(), 3);
    for (i, f) in out.iter().enumerate() {
        assert_eq!(f.hdr, net_hdr(1));
        assert_eq!(f.num_buffers, 1);
        assert_eq!(f.data, pattern(100 + i, i as u8));
    }
    assert_eq!(rx.posted(), 4, "consumed buffers are reposted");
    assert_eq!(rx.frames(), 3);
    // The refills are visible to the device.
    let mut more = 0;
    while b.pop(&mut dq).is_some() {
        more += 1;
    }
    assert_eq!(more, 4);
}

#[test]
fn rx_mergeable_buffers_are_merged_by_num_buffers() {
    let b = Bench::new(0x8000_0000);
    let mut rx = RxQueue::new(b.driver_queue(0, 16, true), 256, 12, true).unwrap();
    assert_eq!(rx.post(16).unwrap(), 16);
    let mut dq = b.device_queue(rx.queue_ref());

    // A 600-byte frame: 612 bytes with the header = 256 + 256 + 100.
    let frame = pattern(600, 3);
    let mut pkt = net_hdr(3).to_vec();
    pkt.extend(&frame);
    let mut off = 0;
    let mut out = Vec::new();
    for k in 0..3 {
        let (h, descs) = b.pop(&mut dq).unwrap();
        let n = b.scatter(&descs, &pkt[off..]);
        off += n as usize;
        dq.add_used(&b.mem, h, n).unwrap();
        // Partially published frames are not delivered.
        let got = rx.recv_into(&mut out).unwrap();
        assert_eq!(got, if k < 2 { 0 } else { 1 }, "after buffer {k}");
    }
    assert_eq!(out[0].num_buffers, 3);
    assert_eq!(out[0].hdr, net_hdr(3));
    assert_eq!(out[0].data, frame);

    // Then a one-buffer frame and another three-buffer frame in one go.
    let small = pattern(50, 9);
    let mut pkt2 = net_hdr(1).to_vec();
    pkt2.extend(&small);
    let (h, descs) = b.pop(&mut dq).unwrap();
    let n = b.scatter(&descs, &pkt2);
    dq.add_used(&b.mem, h, n).unwrap();
    let mut off = 0;
    for _ in 0..3 {
        let (h, descs) = b.pop(&mut dq).unwrap();
        let n = b.scatter(&descs, &pkt[off..]);
        off += n as usize;
        dq.add_used(&b.mem, h, n).unwrap();
    }
    out.clear();
    assert_eq!(rx.recv_into(&mut out).unwrap(), 2);
    assert_eq!(out[0].data, small);
    assert_eq!(out[0].num_buffers, 1);
    assert_eq!(out[1].data, frame);
    assert_eq!(rx.posted(), 16);
}

#[test]
fn rx_chain_and_indirect_layouts() {
    for indirect in [false, true] {
        let b = Bench::new(0);
        let mut rx = RxQueue::new(b.driver_queue(0, 8, true), 2048, 12, false).unwrap();
        rx.set_layout(&[12, 500, 1500], indirect);
        assert_eq!(rx.post(2).unwrap(), 2);
        if indirect {
            assert_eq!(rx.queue_ref().free_descriptors(), 6);
        } else {
            assert_eq!(rx.queue_ref().free_descriptors(), 2);
        }
        let mut dq = b.device_queue(rx.queue_ref());
        let (h, descs) = b.pop(&mut dq).unwrap();
        assert_eq!(
            descs.iter().map(|d| d.1).collect::<Vec<_>>(),
            vec![12, 500, 1500]
        );
        let frame = pattern(1400, 1);
        let mut pkt = net_hdr(1).to_vec();
        pkt.extend(&frame);
        let n = b.scatter(&descs, &pkt);
        dq.add_used(&b.mem, h, n).unwrap();
        let mut out = Vec::new();
        assert_eq!(rx.recv_into(&mut out).unwrap(), 1);
        assert_eq!(out[0].data, frame, "indirect={indirect}");
    }
}

#[test]
fn event_idx_kicks_follow_avail_event() {
    let b = Bench::new(0);
    let mut tx = TxQueue::new(b.driver_queue(1, 8, true), 256, 12).unwrap();
    let mut dq = b.device_queue(tx.queue_ref());
    let f = [0u8; 60];

    // avail_event starts at 0: the first entry crosses it.
    tx.send(&[&f]).unwrap();
    assert_eq!(tx.queue_ref().kicks(), 1);
    // The device has not re-armed: no kick for more entries.
    tx.send(&[&f, &f]).unwrap();
    assert_eq!(tx.queue_ref().kicks(), 1);

    // Device drains and re-enables: avail_event = next_avail = 3.
    while let Some((h, _)) = b.pop(&mut dq) {
        dq.add_used(&b.mem, h, 0).unwrap();
    }
    assert!(!dq.enable_notification(&b.mem).unwrap());
    assert_eq!(tx.queue_ref().avail_event(), 3);
    tx.send(&[&f]).unwrap();
    assert_eq!(tx.queue_ref().kicks(), 2);

    // Device re-arms *before* consuming: the pending entry makes enable_notification say so.
    assert!(dq.enable_notification(&b.mem).unwrap());
    // One kick for a whole batch.
    while let Some((h, _)) = b.pop(&mut dq) {
        dq.add_used(&b.mem, h, 0).unwrap();
    }
    dq.enable_notification(&b.mem).unwrap();
    assert_eq!(tx.send(&[&f, &f, &f]).unwrap(), 3);
    assert_eq!(tx.queue_ref().kicks(), 3);
    assert_eq!(tx.queue().kick_fd().read().unwrap(), 3);
}

#[test]
fn event_idx_interrupts_follow_used_event() {
    let b = Bench::new(0);
    let mut tx = TxQueue::new(b.driver_queue(1, 8, true), 256, 12).unwrap();
    let mut dq = b.device_queue(tx.queue_ref());
    let f = [0u8; 60];
    assert_eq!(tx.send(&[&f, &f, &f, &f, &f]).unwrap(), 5);
    let heads: Vec<u16> = std::iter::from_fn(|| b.pop(&mut dq).map(|(h, _)| h)).collect();
    assert_eq!(heads.len(), 5);

    // used_event = 0: completing entry 0 interrupts.
    dq.add_used(&b.mem, heads[0], 0).unwrap();
    assert!(dq.needs_notification(&b.mem).unwrap());
    // The driver has not consumed: no interrupt for entry 1.
    dq.add_used(&b.mem, heads[1], 0).unwrap();
    assert!(!dq.needs_notification(&b.mem).unwrap());
    // The driver consumes and re-arms (used_event = 2).
    assert_eq!(tx.reclaim(), 2);
    assert_eq!(tx.queue_ref().used_event(), 2);
    dq.add_used(&b.mem, heads[2], 0).unwrap();
    assert!(dq.needs_notification(&b.mem).unwrap());
    // Suppressed: nothing interrupts.
    tx.queue().set_interrupts_suppressed(true);
    dq.add_used(&b.mem, heads[3], 0).unwrap();
    assert!(!dq.needs_notification(&b.mem).unwrap());
    // Consuming while suppressed keeps it parked.
    assert_eq!(tx.reclaim(), 2);
    assert_ne!(tx.queue_ref().used_event(), 4);
    dq.add_used(&b.mem, heads[4], 0).unwrap();
    assert!(!dq.needs_notification(&b.mem).unwrap());
    // Un-suppressing re-arms at last_used and reports the entry that is already pending.
    tx.queue().set_interrupts_suppressed(false);
    assert_eq!(tx.queue_ref().used_event(), 4);
    assert!(tx.queue().rearm_interrupts(), "entry 4 is pending");
    assert_eq!(tx.reclaim(), 1);
}

#[test]
fn without_event_idx_flags_are_used() {
    let b = Bench::new(0);
    let mut tx = TxQueue::new(b.driver_queue(1, 8, false), 256, 12).unwrap();
    let mut dq = b.device_queue(tx.queue_ref());
    let f = [0u8; 60];
    tx.send(&[&f]).unwrap();
    assert_eq!(tx.queue_ref().kicks(), 1);
    tx.send(&[&f]).unwrap();
    assert_eq!(
        tx.queue_ref().kicks(),
        2,
        "kick per batch without NO_NOTIFY"
    );
    dq.disable_notification(&b.mem).unwrap(); // VRING_USED_F_NO_NOTIFY
    tx.send(&[&f]).unwrap();
    assert_eq!(tx.queue_ref().kicks(), 2);
    assert!(dq.enable_notification(&b.mem).unwrap());
    tx.send(&[&f]).unwrap();
    assert_eq!(tx.queue_ref().kicks(), 3);

    tx.queue().set_interrupts_suppressed(true);
    let mut flags = [0u8; 2];
    b.mem
        .read_slice(&mut flags, GuestAddress(tx.queue_ref().avail_ring()))
        .unwrap();
    assert_eq!(u16::from_le_bytes(flags), VRING_AVAIL_F_NO_INTERRUPT);
    tx.queue().set_interrupts_suppressed(false);
    assert_eq!(tx.queue_ref().avail_flags(), 0);
}

#[test]
fn raw_access_reaches_the_device() {
    let b = Bench::new(0);
    let mut q = b.driver_queue(0, 8, false);
    let mut dq = b.device_queue(&q);
    let buf = b.ram.alloc(64, 64).unwrap();
    b.ram.write(buf, b"raw!");
    // A chain that loops on itself: the device must stop after at most `size` descriptors.
    q.write_desc(5, Descriptor::new(buf, 4, VRING_DESC_F_NEXT, 5));
    q.push_avail_raw(5);
    q.publish();
    let (h, descs) = b.pop(&mut dq).unwrap();
    assert_eq!(h, 5);
    assert!(descs.len() <= 8);
    assert_eq!(&b.gather(&descs[..1]), b"raw!");
    // An out-of-range head: virtio-queue hands out a chain that yields no descriptors (and
    // refuses to put that head on the used ring); devices must cope with both.
    q.push_avail_raw(200);
    q.publish();
    let (h, descs) = b.pop(&mut dq).unwrap();
    assert_eq!(h, 200);
    assert!(descs.is_empty());
    assert!(dq.add_used(&b.mem, 200, 0).is_err());
    // Arbitrary avail idx.
    q.set_avail_idx(1000);
    assert_eq!(dq.avail_idx(&b.mem, Ordering::Acquire).unwrap().0, 1000);
    // Used entries written by the device are visible raw.
    dq.add_used(&b.mem, 5, 77).unwrap();
    assert_eq!(q.used_idx(), 1);
    assert_eq!(q.used_elem(0).id, 5);
    assert_eq!(q.used_elem(0).len, 77);
}

// ---------------------------------------------------------------------------------------------
// Ring level, packed: the driver against a device-side model written here (virtio-queue has no
// packed ring), and IN_ORDER batched completions on both ring kinds
// ---------------------------------------------------------------------------------------------

/// A chain the packed device model took: buffer id, ring slots, (addr, len, writable) per
/// buffer.
#[derive(Debug)]
struct PackedChain {
    id: u16,
    slots: u16,
    descs: Vec<(u64, u32, bool)>,
}

/// The device side of a packed ring, per virtio 1.1 §2.8: takes descriptors whose AVAIL/USED
/// bits say "available in my lap" and writes used descriptors, one per chain or (IN_ORDER) one
/// per batch.
struct PackedDevice {
    mem: GuestMemoryMmap,
    ring: u64,
    driver_event: u64,
    device_event: u64,
    size: u16,
    /// Next slot to read and its wrap counter.
    avail: (u16, bool),
    /// Next slot to write a used descriptor at and its wrap counter.
    used: (u16, bool),
}

fn advance(pos: &mut (u16, bool), slots: u16, size: u16) {
    pos.0 += slots;
    if pos.0 >= size {
        pos.0 -= size;
        pos.1 = !pos.1;
    }
}

impl PackedDevice {
    fn new(b: &Bench, q: &DriverQueue) -> PackedDevice {
        assert_eq!(q.ring_kind(), RingKind::Packed);
        assert_eq!(q.initial_vring_base(), 0x8000, "slot 0, wrap counter 1");
        PackedDevice {
            mem: b.mem.clone(),
            ring: q.desc_table(),
            driver_event: q.driver_area(),
            device_event: q.device_area(),
            size: q.size(),
            avail: (0, true),
            used: (0, true),
        }
    }

    fn flags(&self, slot: u16) -> u16 {
        self.mem
            .load(
                GuestAddress(self.ring + 16 * slot as u64 + 14),
                Ordering::Acquire,
            )
            .unwrap()
    }

    fn desc(&self, slot: u16) -> (u64, u32, u16) {
        let at = self.ring + 16 * slot as u64;
        (
            self.mem.read_obj(GuestAddress(at)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 8)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 12)).unwrap(),
        )
    }

    fn is_avail(&self, slot: u16, wrap: bool) -> bool {
        let f = self.flags(slot);
        (f & VRING_PACKED_DESC_F_AVAIL != 0) == wrap && (f & VRING_PACKED_DESC_F_USED != 0) != wrap
    }

    /// Takes the next available chain, checking that every descriptor carries the head's id.
    fn pop(&mut self) -> Option<PackedChain> {
        let (head, wrap) = self.avail;
        if !self.is_avail(head, wrap) {
            return None;
        }
        let (mut pos, mut descs, mut slots) = (self.avail, Vec::new(), 0);
        let id = self.desc(head).2;
        loop {
            assert!(self.is_avail(pos.0, pos.1), "chain continues into {pos:?}");
            let flags = self.flags(pos.0);
            let (addr, len, did) = self.desc(pos.0);
            assert_eq!(did, id, "every descriptor of a chain carries its buffer id");
            advance(&mut pos, 1, self.size);
            slots += 1;
            if flags & VRING_DESC_F_INDIRECT != 0 {
                assert_eq!(len % 16, 0);
                for k in 0..(len / 16) as u64 {
                    let e = addr + 16 * k;
                    let flags: u16 = self.mem.read_obj(GuestAddress(e + 14)).unwrap();
                    assert_eq!(flags & !VRING_DESC_F_WRITE, 0, "only WRITE inside a table");
                    descs.push((
                        self.mem.read_obj(GuestAddress(e)).unwrap(),
                        self.mem.read_obj(GuestAddress(e + 8)).unwrap(),
                        flags & VRING_DESC_F_WRITE != 0,
                    ));
                }
            } else {
                descs.push((addr, len, flags & VRING_DESC_F_WRITE != 0));
            }
            if flags & VRING_DESC_F_NEXT == 0 {
                break;
            }
        }
        self.avail = pos;
        Some(PackedChain { id, slots, descs })
    }

    /// Writes one used descriptor for `id` at the used position (flags last) and moves that
    /// position over `slots` slots.
    fn push_used(&mut self, id: u16, len: u32, slots: u16) {
        let at = self.ring + 16 * self.used.0 as u64;
        self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        self.mem.write_obj(id, GuestAddress(at + 12)).unwrap();
        let flags = packed_used_flags(self.used.1);
        self.mem
            .store(flags, GuestAddress(at + 14), Ordering::Release)
            .unwrap();
        advance(&mut self.used, slots, self.size);
    }

    /// Completes `chain` on its own.
    fn complete(&mut self, chain: &PackedChain, len: u32) {
        self.push_used(chain.id, len, chain.slots);
    }

    /// IN_ORDER: one used descriptor for `batch`, naming its last chain.
    fn complete_batch(&mut self, batch: &[PackedChain]) {
        let slots = batch.iter().map(|c| c.slots).sum();
        self.push_used(batch.last().unwrap().id, 0, slots);
    }

    fn event(&self, gpa: u64) -> EventSuppress {
        EventSuppress {
            off_wrap: self.mem.load(GuestAddress(gpa), Ordering::Acquire).unwrap(),
            flags: self
                .mem
                .load(GuestAddress(gpa + 2), Ordering::Acquire)
                .unwrap(),
        }
    }

    fn driver_event(&self) -> EventSuppress {
        self.event(self.driver_event)
    }

    fn set_device_event(&self, ev: EventSuppress) {
        let gpa = self.device_event;
        self.mem
            .store(ev.off_wrap, GuestAddress(gpa), Ordering::Relaxed)
            .unwrap();
        self.mem
            .store(ev.flags, GuestAddress(gpa + 2), Ordering::Release)
            .unwrap();
    }
}

impl Bench {
    fn queue_with(&self, index: u16, size: u16, kind: RingKind, in_order: bool) -> DriverQueue {
        let opts = RingOptions {
            kind,
            event_idx: true,
            in_order,
        };
        DriverQueue::with_options(self.ram.clone(), index, size, opts).unwrap()
    }

    fn packed_queue(&self, index: u16, size: u16, event_idx: bool) -> DriverQueue {
        let opts = RingOptions {
            kind: RingKind::Packed,
            event_idx,
            in_order: false,
        };
        DriverQueue::with_options(self.ram.clone(), index, size, opts).unwrap()
    }
}

fn readable(addr: u64, len: u32) -> Segment {
    Segment::readable(addr, len)
}

#[test]
fn packed_chains_wrap_the_ring_end_and_keep_their_id() {
    let b = Bench::new(0);
    let mut q = b.packed_queue(1, 8, false);
    let mut dev = PackedDevice::new(&b, &q);
    let three = [
        readable(0x10000, 1),
        readable(0x20000, 2),
        readable(0x30000, 3),
    ];
    let a = q.add_chain(&three).unwrap();
    let c = q.add_chain(&three).unwrap();
    assert_ne!(a, c);
    assert_eq!(q.free_descriptors(), 2);
    assert!(dev.pop().is_none(), "nothing is visible before publishing");
    q.publish();
    let (ca, cc) = (dev.pop().unwrap(), dev.pop().unwrap());
    assert_eq!((ca.id, ca.slots, cc.id, cc.slots), (a, 3, c, 3));
    assert_eq!(
        ca.descs,
        vec![
            (0x10000, 1, false),
            (0x20000, 2, false),
            (0x30000, 3, false)
        ]
    );
    dev.complete(&ca, 0);
    assert_eq!(q.pop_used().map(|e| e.id), Some(a as u32));
    assert_eq!(q.used_position(), (3, true));

    // Slots 6, 7 in lap 1 and 0 in lap 2: the avail wrap counter toggles for the last one.
    let d = q.add_chain(&three).unwrap();
    assert_eq!(q.avail_position(), (1, false));
    q.publish();
    let flags: Vec<u16> = [6, 7, 0].map(|s| q.read_packed_desc(s).flags).to_vec();
    assert_eq!(
        flags,
        vec![
            VRING_PACKED_DESC_F_AVAIL | VRING_DESC_F_NEXT,
            VRING_PACKED_DESC_F_AVAIL | VRING_DESC_F_NEXT,
            VRING_PACKED_DESC_F_USED,
        ]
    );
    assert!([6, 7, 0].iter().all(|&s| q.read_packed_desc(s).id == d));
    let cd = dev.pop().unwrap();
    assert_eq!((cd.id, cd.slots, cd.descs.len()), (d, 3, 3));
    dev.complete(&cc, 0);
    dev.complete(&cd, 0);
    assert_eq!(q.pending_used(), 2);
    assert_eq!(q.pop_used().map(|e| e.id), Some(c as u32));
    assert_eq!(q.pop_used().map(|e| e.id), Some(d as u32));
    assert_eq!(
        q.used_position(),
        (1, false),
        "past the ring end: used wrap toggled"
    );
    assert_eq!((q.in_flight(), q.free_descriptors()), (0, 8));
}

#[test]
fn packed_indirect_chain_takes_one_slot() {
    let b = Bench::new(0);
    let mut rx = RxQueue::new(b.packed_queue(0, 4, true), 2048, 12, false).unwrap();
    rx.set_layout(&[12, 1000, 1036], true);
    assert_eq!(rx.post(4).unwrap(), 4, "one slot per indirect buffer");
    let mut dev = PackedDevice::new(&b, rx.queue_ref());
    let d = rx.queue_ref().read_packed_desc(0);
    assert_eq!(d.flags, VRING_DESC_F_INDIRECT | VRING_PACKED_DESC_F_AVAIL);
    assert_eq!(d.len, 48);
    let chain = dev.pop().unwrap();
    assert_eq!(chain.slots, 1);
    assert_eq!(
        chain
            .descs
            .iter()
            .map(|&(_, l, w)| (l, w))
            .collect::<Vec<_>>(),
        vec![(12, true), (1000, true), (1036, true)]
    );
    let mut pkt = net_hdr(1).to_vec();
    pkt.extend(pattern(1500, 3));
    let n = b.scatter(&chain.descs, &pkt);
    dev.complete(&chain, n);
    let mut out = Vec::new();
    assert_eq!(rx.recv_into(&mut out).unwrap(), 1);
    assert_eq!(out[0].data, pattern(1500, 3));
    assert_eq!(rx.queue_ref().used_position(), (1, true));
    assert_eq!(rx.posted(), 4, "refilled");
}

#[test]
fn packed_used_position_steps_over_each_completed_chain() {
    let b = Bench::new(0);
    let mut q = b.packed_queue(1, 16, false);
    let mut dev = PackedDevice::new(&b, &q);
    let lens = [1usize, 3, 2];
    let ids: Vec<u16> = lens
        .iter()
        .map(|&n| q.add_chain(&vec![readable(0x10000, 60); n]).unwrap())
        .collect();
    q.publish();
    let chains: Vec<PackedChain> = std::iter::from_fn(|| dev.pop()).collect();
    assert_eq!(
        chains.iter().map(|c| c.slots).collect::<Vec<_>>(),
        [1, 3, 2]
    );
    // Out of order: the device writes at its used position whatever completes first.
    for (k, want) in [(1, (3, true)), (0, (4, true)), (2, (6, true))] {
        dev.complete(&chains[k], 0);
        assert_eq!(q.pop_used().unwrap().id, ids[k] as u32);
        assert_eq!(q.used_position(), want);
    }
    assert_eq!(q.free_descriptors(), 16);
}

#[test]
fn packed_wrap_counters_over_many_laps() {
    let b = Bench::new(0);
    let mut tx = TxQueue::new(b.packed_queue(1, 8, true), 256, 12).unwrap();
    let mut dev = PackedDevice::new(&b, tx.queue_ref());
    // 12-byte header + frame cut at 20 bytes: frames of 8, 28, 48 bytes take 1, 2, 3 slots.
    let layout = TxLayout::COMBINED.scattered(20);
    let slots_of = |i: u32| (i % 3 + 1) as u16;
    let (mut sent, mut seen, mut slots) = (0u32, 0u32, 0u32);
    while seen < 100 {
        if sent < 100 {
            let mut frame = pattern(8 + 20 * (sent % 3) as usize, 0);
            frame[..4].copy_from_slice(&sent.to_le_bytes());
            if tx.send_with(&[&frame], layout).unwrap() == 1 {
                slots += slots_of(sent) as u32;
                sent += 1;
                continue;
            }
        }
        // Ring full (or all sent): the device takes everything, completes it newest first.
        let chains: Vec<PackedChain> = std::iter::from_fn(|| dev.pop()).collect();
        assert!(!chains.is_empty());
        for c in &chains {
            let bytes = b.gather(&c.descs);
            assert_eq!(u32::from_le_bytes(bytes[12..16].try_into().unwrap()), seen);
            assert_eq!(c.slots, slots_of(seen));
            seen += 1;
        }
        for c in chains.iter().rev() {
            dev.complete(c, 0);
        }
        assert_eq!(tx.reclaim(), chains.len());
    }
    assert_eq!((tx.in_flight(), tx.queue_ref().free_descriptors()), (0, 8));
    assert!(slots > 20 * 8, "many laps");
    let end = ((slots % 8) as u16, (slots / 8) % 2 == 0);
    assert_eq!(tx.queue_ref().avail_position(), end);
    assert_eq!(tx.queue_ref().used_position(), end);
    assert_eq!((dev.avail, dev.used), (end, end));
}

/// Posts `n` one-descriptor chains and notifies; then the device takes and completes them and
/// the driver reclaims. Returns whether the driver kicked.
fn post_and_complete(q: &mut DriverQueue, dev: &mut PackedDevice, n: usize) -> bool {
    for _ in 0..n {
        q.add_chain(&[readable(0x10000, 60)]).unwrap();
    }
    let kicked = q.notify().unwrap();
    while let Some(c) = dev.pop() {
        dev.complete(&c, 0);
    }
    while q.pop_used().is_some() {}
    kicked
}

#[test]
fn packed_kicks_follow_the_device_event_structure() {
    let b = Bench::new(0);
    let mut q = b.packed_queue(1, 8, true);
    let mut dev = PackedDevice::new(&b, &q);
    // ENABLE (all zero at start): every batch kicks; nothing new: no kick.
    assert!(post_and_complete(&mut q, &mut dev, 1));
    assert!(!q.notify().unwrap());
    dev.set_device_event(EventSuppress {
        off_wrap: 0,
        flags: VRING_PACKED_EVENT_FLAG_DISABLE,
    });
    assert!(!post_and_complete(&mut q, &mut dev, 2));
    // The device wants a kick once slot 5 (lap 1) is published; the driver is at slot 3.
    dev.set_device_event(EventSuppress::at(5, true));
    assert!(!post_and_complete(&mut q, &mut dev, 2), "slots 3, 4");
    assert!(post_and_complete(&mut q, &mut dev, 1), "slot 5");
    assert!(!post_and_complete(&mut q, &mut dev, 1), "slot 6");
    // An event in the previous lap, inside a batch that wraps the ring end: slots 7, 0, 1.
    dev.set_device_event(EventSuppress::at(7, true));
    assert!(post_and_complete(&mut q, &mut dev, 3), "7 lies in [7, 8+2)");
    assert_eq!(q.avail_position(), (2, false));
    // Slot 4 of lap 2: not in slots 2, 3; in slot 4.
    dev.set_device_event(EventSuppress::at(4, false));
    assert!(!post_and_complete(&mut q, &mut dev, 2), "slots 2, 3");
    assert!(post_and_complete(&mut q, &mut dev, 1), "slot 4");
    // The other wrap counter than the driver's: the previous lap, long passed.
    dev.set_device_event(EventSuppress::at(5, true));
    assert!(!post_and_complete(&mut q, &mut dev, 2), "slots 5, 6");
    assert_eq!(q.kicks(), 4);
    assert_eq!(q.device_event(), EventSuppress::at(5, true));
}

#[test]
fn packed_interrupt_suppression_uses_the_driver_event_structure() {
    for event_idx in [false, true] {
        let b = Bench::new(0);
        let mut q = b.packed_queue(1, 4, event_idx);
        let mut dev = PackedDevice::new(&b, &q);
        let armed = |slot, wrap| {
            if event_idx {
                EventSuppress::at(slot, wrap)
            } else {
                EventSuppress::default()
            }
        };
        q.set_interrupts_suppressed(true);
        assert_eq!(dev.driver_event().flags, VRING_PACKED_EVENT_FLAG_DISABLE);
        q.set_interrupts_suppressed(false);
        assert_eq!(dev.driver_event(), armed(0, true));
        // Three laps of two-slot chains: DESC follows the used position and its wrap counter.
        for lap in 0..6u16 {
            q.add_chain(&[readable(0x10000, 1), readable(0x20000, 1)])
                .unwrap();
            q.publish();
            let c = dev.pop().unwrap();
            dev.complete(&c, 0);
            assert!(q.rearm_interrupts(), "the completion is pending");
            assert!(q.pop_used().is_some());
            assert!(!q.rearm_interrupts());
            let done = 2 * (lap + 1); // slots used so far
            let (slot, wrap) = (done % 4, done / 4 % 2 == 0);
            assert_eq!(dev.driver_event(), armed(slot, wrap), "lap {lap}");
            assert_eq!(q.driver_event(), dev.driver_event());
        }
        q.set_interrupts_suppressed(true);
        assert_eq!(q.driver_event().flags, VRING_PACKED_EVENT_FLAG_DISABLE);
    }
}

#[test]
fn packed_rx_mergeable_buffers_one_used_descriptor_each() {
    let b = Bench::new(0);
    let mut rx = RxQueue::new(b.packed_queue(0, 8, true), 1024, 12, true).unwrap();
    rx.post(8).unwrap();
    let mut dev = PackedDevice::new(&b, rx.queue_ref());
    let mut pkt = net_hdr(3).to_vec();
    pkt.extend(pattern(2500, 9));
    let chains: Vec<PackedChain> = (0..3).map(|_| dev.pop().unwrap()).collect();
    let mut off = 0;
    for c in &chains {
        let n = b.scatter(&c.descs, &pkt[off..]);
        off += n as usize;
        dev.complete(c, n);
    }
    let mut out = Vec::new();
    assert_eq!(rx.recv_into(&mut out).unwrap(), 1);
    assert_eq!(out[0].num_buffers, 3);
    assert_eq!(out[0].data, pattern(2500, 9));
    assert_eq!(rx.posted(), 8, "refilled behind the ring end");
    assert_eq!(rx.queue_ref().avail_position(), (3, false));
}

/// IN_ORDER on a split ring: the device writes one used entry for a batch, at the slot where it
/// begins, naming its last chain, and moves `used.idx` over the whole batch.
fn split_batch_used(b: &Bench, q: &DriverQueue, heads: &[u16], len: u32) {
    let used = q.used_ring();
    let idx: u16 = b
        .mem
        .load(GuestAddress(used + 2), Ordering::Acquire)
        .unwrap();
    let slot = (idx % q.size()) as u64;
    let at = used + 4 + 8 * slot;
    let head = *heads.last().unwrap() as u32;
    b.mem.write_obj(head, GuestAddress(at)).unwrap();
    b.mem.write_obj(len, GuestAddress(at + 4)).unwrap();
    let idx = idx.wrapping_add(heads.len() as u16);
    b.mem
        .store(idx, GuestAddress(used + 2), Ordering::Release)
        .unwrap();
}

#[test]
fn in_order_batched_completions_on_a_split_ring() {
    let b = Bench::new(0);
    let mut q = b.queue_with(1, 8, RingKind::Split, true);
    let mut dq = b.device_queue(&q);
    let f = [readable(0x10000, 60)];
    for round in 0..5 {
        let heads: Vec<u16> = (0..5).map(|_| q.add_chain(&f).unwrap()).collect();
        q.publish();
        let popped: Vec<u16> = std::iter::from_fn(|| b.pop(&mut dq).map(|(h, _)| h)).collect();
        assert_eq!(popped, heads);
        // Two batches (2 + 3 chains), the later one published first: it waits for its turn.
        split_batch_used(&b, &q, &heads[..2], 7);
        split_batch_used(&b, &q, &heads[2..], 9);
        assert_eq!(q.pending_used(), 5, "round {round}");
        let got: Vec<(u32, u32)> =
            std::iter::from_fn(|| q.pop_used().map(|e| (e.id, e.len))).collect();
        let want: Vec<(u32, u32)> = heads
            .iter()
            .enumerate()
            .map(|(k, &h)| (h as u32, [0, 7, 0, 0, 9][k]))
            .collect();
        assert_eq!(got, want);
        assert_eq!((q.in_flight(), q.free_descriptors()), (0, 8));
        assert_eq!(q.last_used(), q.used_idx());
    }
    // One entry per chain is in order too.
    let h = q.add_chain(&f).unwrap();
    q.publish();
    split_batch_used(&b, &q, &[h], 3);
    assert_eq!(
        q.pop_used(),
        Some(UsedElem {
            id: h as u32,
            len: 3
        })
    );
}

#[test]
fn in_order_batched_completions_on_a_packed_ring() {
    let b = Bench::new(0);
    let mut tx = TxQueue::new(b.queue_with(1, 8, RingKind::Packed, true), 256, 12).unwrap();
    let mut dev = PackedDevice::new(&b, tx.queue_ref());
    let layout = TxLayout::COMBINED.scattered(40);
    let (small, big) = ([0u8; 20], [0u8; 60]); // 1 and 2 slots
    for _ in 0..10 {
        assert_eq!(tx.send_with(&[&small, &big, &small], layout).unwrap(), 3);
        let batch: Vec<PackedChain> = std::iter::from_fn(|| dev.pop()).collect();
        assert_eq!(batch.iter().map(|c| c.slots).collect::<Vec<_>>(), [1, 2, 1]);
        dev.complete_batch(&batch);
        let ids: Vec<u32> = std::iter::from_fn(|| tx.queue().pop_used().map(|e| e.id)).collect();
        assert_eq!(ids, batch.iter().map(|c| c.id as u32).collect::<Vec<_>>());
        assert_eq!(tx.queue_ref().used_position(), dev.used);
        assert_eq!(tx.in_flight(), 0);
    }
    assert_eq!(dev.used, (0, false), "40 slots: five laps");
}

#[test]
fn batching_without_in_order_is_a_violation() {
    let b = Bench::new(0);
    // Split: the entry names the batch's last head; the slots after it hold nothing valid.
    let mut q = b.queue_with(1, 8, RingKind::Split, false);
    q.set_strict(false);
    let heads: Vec<u16> = (0..3)
        .map(|_| q.add_chain(&[readable(0x10000, 60)]).unwrap())
        .collect();
    q.publish();
    split_batch_used(&b, &q, &heads, 0);
    while q.pop_used().is_some() {}
    assert!(q.violations() > 0);
    assert_ne!(q.in_flight(), 0, "the batch is not taken as complete");

    // Packed: chains the entry does not name stay in flight; the next slot is not used.
    let mut q = b.queue_with(1, 8, RingKind::Packed, false);
    let mut dev = PackedDevice::new(&b, &q);
    for _ in 0..3 {
        q.add_chain(&[readable(0x10000, 60)]).unwrap();
    }
    q.publish();
    let batch: Vec<PackedChain> = std::iter::from_fn(|| dev.pop()).collect();
    dev.complete_batch(&batch);
    assert_eq!(q.pop_used().map(|e| e.id), Some(batch[2].id as u32));
    assert_eq!(q.pop_used(), None);
    assert_eq!(q.in_flight(), 2);
    assert_eq!(
        q.used_position(),
        (1, true),
        "stepped over the named chain only"
    );
}

#[test]
fn packed_bogus_ids_are_violations() {
    for in_order in [false, true] {
        let b = Bench::new(0);
        let mut q = b.queue_with(1, 8, RingKind::Packed, in_order);
        q.set_strict(false);
        let mut dev = PackedDevice::new(&b, &q);
        let id = q.add_chain(&[readable(0x10000, 60)]).unwrap();
        q.publish();
        let c = dev.pop().unwrap();
        dev.push_used(5, 0, 1); // never posted
        assert_eq!(q.pop_used().map(|e| e.id), Some(5));
        assert_eq!(q.violations(), 1, "in_order {in_order}");
        assert_eq!(q.in_flight(), 1);
        // The real completion still works after the bad one.
        dev.complete(&c, 0);
        assert_eq!(q.pop_used().map(|e| e.id), Some(id as u32));
        assert_eq!((q.violations(), q.in_flight()), (1, 0));
        // Completing it a second time is a violation too.
        dev.complete(&c, 0);
        assert!(q.pop_used().is_some());
        assert_eq!(q.violations(), 2);
    }
}

#[test]
#[should_panic(expected = "not the head of an in-flight chain")]
fn packed_bogus_id_panics_in_strict_mode() {
    let b = Bench::new(0);
    let mut q = b.packed_queue(1, 8, true);
    let mut dev = PackedDevice::new(&b, &q);
    q.add_chain(&[readable(0x10000, 60)]).unwrap();
    q.publish();
    dev.pop().unwrap();
    dev.push_used(7, 0, 1);
    q.pop_used();
}

#[test]
fn packed_raw_descriptors_reach_the_device() {
    let b = Bench::new(0);
    let mut q = b.packed_queue(1, 4, false);
    let mut dev = PackedDevice::new(&b, &q);
    let (slot, wrap) = q.avail_position();
    q.write_packed_desc(slot, 0x4000, 33, 3, packed_avail_flags(wrap));
    assert_eq!(
        q.read_packed_desc(slot),
        PackedDescriptor {
            addr: 0x4000,
            len: 33,
            id: 3,
            flags: VRING_PACKED_DESC_F_AVAIL,
        }
    );
    let c = dev.pop().unwrap();
    assert_eq!((c.id, &c.descs[..]), (3, &[(0x4000, 33, false)][..]));
    // Managed posting continues behind the raw slot.
    q.set_avail_position(slot + 1, wrap);
    let id = q.add_chain(&[readable(0x5000, 1)]).unwrap();
    q.publish();
    assert_eq!(dev.pop().unwrap().id, id);
    dev.complete(&c, 0);
    assert_eq!(q.read_packed_desc(0).flags, packed_used_flags(true));
    q.set_used_position(1, true);
    assert_eq!(q.pending_used(), 0);
    // Both event structures are plain memory to the raw face.
    q.set_device_event(EventSuppress::at(2, false));
    assert_eq!(q.device_event(), EventSuppress::at(2, false));
    q.set_driver_event(EventSuppress::at(3, true));
    assert_eq!(dev.driver_event(), EventSuppress::at(3, true));
}

// ---------------------------------------------------------------------------------------------
// End to end: TestGuest against an echo device on vhost-user-backend
// ---------------------------------------------------------------------------------------------

mod echo {
    use super::*;
    use std::io;
    use vhost::vhost_user::message::VhostUserProtocolFeatures;
    use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
    use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
    use vmm_sys_util::epoll::EventSet;
    use vmm_sys_util::event::EventNotifier;
    use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag};

    pub const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    /// Echoes every TX frame of a pair back on that pair's RX queue.
    pub struct Echo {
        pairs: usize,
        mem: Mutex<Option<GuestMemoryAtomic<GuestMemoryMmap>>>,
        acked: AtomicU64,
        backlog: Vec<Mutex<VecDeque<Vec<u8>>>>,
        pub tx_frames: AtomicUsize,
        pub dropped: AtomicBool,
    }

    impl Echo {
        pub fn new(pairs: usize) -> Echo {
            Echo {
                pairs,
                mem: Mutex::new(None),
                acked: AtomicU64::new(0),
                backlog: (0..pairs).map(|_| Mutex::new(VecDeque::new())).collect(),
                tx_frames: AtomicUsize::new(0),
                dropped: AtomicBool::new(false),
            }
        }

        fn hdr_len(&self) -> usize {
            if self.acked.load(Ordering::Relaxed) & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF)
                != 0
            {
                12
            } else {
                10
            }
        }

        fn mrg(&self) -> bool {
            self.acked.load(Ordering::Relaxed) & VIRTIO_NET_F_MRG_RXBUF != 0
        }

        fn process_tx(&self, mem: &GuestMemoryMmap, vring: &VringRwLock) -> Vec<Vec<u8>> {
            let hdr_len = self.hdr_len();
            let mut frames = Vec::new();
            let mut st = vring.get_mut();
            loop {
                st.disable_notification().unwrap();
                while let Some(chain) = st.get_queue_mut().pop_descriptor_chain(mem) {
                    let head = chain.head_index();
                    let mut bytes = Vec::new();
                    for d in chain.readable() {
                        let mut b = vec![0u8; d.len() as usize];
                        mem.read_slice(&mut b, d.addr()).unwrap();
                        bytes.extend_from_slice(&b);
                    }
                    st.add_used(head, 0).unwrap();
                    frames.push(bytes.get(hdr_len..).unwrap_or_default().to_vec());
                }
                if !st.enable_notification().unwrap() {
                    break;
                }
            }
            if st.needs_notification().unwrap() {
                st.signal_used_queue().unwrap();
            }
            self.tx_frames.fetch_add(frames.len(), Ordering::Relaxed);
            frames
        }

        fn deliver(&self, mem: &GuestMemoryMmap, pair: usize, vring: &VringRwLock) {
            let hdr_len = self.hdr_len();
            let mrg = self.mrg();
            let mut backlog = self.backlog[pair].lock().unwrap();
            let mut st = vring.get_mut();
            if !st.is_enabled() {
                return;
            }
            let mut delivered = false;
            'frames: while let Some(frame) = backlog.front() {
                let total = hdr_len + frame.len();
                let mut chains = Vec::new();
                let mut cap = 0usize;
                while cap < total && (mrg || chains.is_empty()) {
                    let Some(chain) = st.get_queue_mut().pop_descriptor_chain(mem) else {
                        break;
                    };
                    let descs: Vec<_> = chain.clone().writable().collect();
                    cap += descs.iter().map(|d| d.len() as usize).sum::<usize>();
                    chains.push((chain.head_index(), descs));
                }
                if cap < total {
                    for _ in &chains {
                        st.get_queue_mut().go_to_previous_position();
                    }
                    if !mrg && !chains.is_empty() {
                        // Can never fit a non-mergeable buffer: drop the frame.
                        backlog.pop_front();
                        self.dropped.store(true, Ordering::Relaxed);
                        continue 'frames;
                    }
                    // Out of buffers: ask for a kick when more are posted, unless some
                    // arrived meanwhile. Not `Queue::enable_notification`: it sets
                    // avail_event = next_avail, which (after putting chains back) is an entry
                    // already published, so the driver would never kick again. Like Linux
                    // vhost, ask for the next entry after the current avail.idx instead.
                    let q = st.get_queue();
                    let seen = q.avail_idx(mem, Ordering::Acquire).unwrap();
                    let avail_event = q.used_ring() + 4 + 8 * q.size() as u64;
                    mem.store(seen.0.to_le(), GuestAddress(avail_event), Ordering::Relaxed)
                        .unwrap();
                    std::sync::atomic::fence(Ordering::SeqCst);
                    if q.avail_idx(mem, Ordering::Acquire).unwrap() != seen {
                        continue 'frames;
                    }
                    break;
                }
                let mut pkt = vec![0u8; hdr_len];
                if hdr_len == 12 {
                    let nb = chains.len() as u16;
                    pkt[10..12].copy_from_slice(&nb.to_le_bytes());
                }
                pkt.extend_from_slice(frame);
                let mut off = 0;
                for (head, descs) in &chains {
                    let start = off;
                    for d in descs {
                        let n = (d.len() as usize).min(pkt.len() - off);
                        mem.write_slice(&pkt[off..off + n], d.addr()).unwrap();
                        off += n;
                    }
                    st.add_used(*head, (off - start) as u32).unwrap();
                }
                backlog.pop_front();
                delivered = true;
            }
            if delivered && st.needs_notification().unwrap() {
                st.signal_used_queue().unwrap();
            }
        }
    }

    impl VhostUserBackend for Echo {
        type Bitmap = ();
        type Vring = VringRwLock;

        fn num_queues(&self) -> usize {
            2 * self.pairs
        }

        fn max_queue_size(&self) -> usize {
            1024
        }

        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1
                | VIRTIO_NET_F_MAC
                | VIRTIO_NET_F_MTU
                | VIRTIO_NET_F_STATUS
                | VIRTIO_NET_F_MQ
                | VIRTIO_NET_F_MRG_RXBUF
                | VIRTIO_RING_F_EVENT_IDX
                | VIRTIO_RING_F_INDIRECT_DESC
                | VIRTIO_NET_F_CSUM
                | VHOST_USER_F_PROTOCOL_FEATURES
        }

        fn acked_features(&self, features: u64) {
            self.acked.store(features, Ordering::Relaxed);
        }

        fn protocol_features(&self) -> VhostUserProtocolFeatures {
            VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG
        }

        fn set_event_idx(&self, _enabled: bool) {}

        fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
            let mut c = [0u8; 24];
            c[0..6].copy_from_slice(&MAC);
            c[6..8].copy_from_slice(&1u16.to_le_bytes());
            c[8..10].copy_from_slice(&(self.pairs as u16).to_le_bytes());
            c[10..12].copy_from_slice(&1500u16.to_le_bytes());
            c[12..16].copy_from_slice(&10_000u32.to_le_bytes());
            c[16] = 1;
            let start = (offset as usize).min(c.len());
            let end = (offset as usize + size as usize).min(c.len());
            c[start..end].to_vec()
        }

        fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
            *self.mem.lock().unwrap() = Some(mem);
            Ok(())
        }

        fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
            Some(new_event_consumer_and_notifier(EventFlag::NONBLOCK).unwrap())
        }

        fn handle_event(
            &self,
            device_event: u16,
            _evset: EventSet,
            vrings: &[VringRwLock],
            _thread_id: usize,
        ) -> io::Result<()> {
            let idx = device_event as usize;
            if idx >= vrings.len() {
                return Ok(());
            }
            let atomic = self.mem.lock().unwrap().clone().expect("memory table set");
            let mem = atomic.memory();
            let pair = idx / 2;
            if idx % 2 == 1 {
                let frames = self.process_tx(&mem, &vrings[idx]);
                self.backlog[pair].lock().unwrap().extend(frames);
            }
            self.deliver(&mem, pair, &vrings[2 * pair]);
            Ok(())
        }
    }
}

static SOCKET_SEQ: AtomicUsize = AtomicUsize::new(0);

struct EchoDevice {
    path: PathBuf,
    backend: Arc<echo::Echo>,
    server: Option<thread::JoinHandle<()>>,
}

impl EchoDevice {
    fn start(pairs: usize) -> EchoDevice {
        let path = std::env::temp_dir().join(format!(
            "vnic-testdriver-{}-{}.sock",
            std::process::id(),
            SOCKET_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let backend = Arc::new(echo::Echo::new(pairs));
        let mut daemon = vhost_user_backend::VhostUserDaemon::new(
            "echo".into(),
            backend.clone(),
            vm_memory::GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .unwrap();
        let p = path.clone();
        let server = thread::spawn(move || {
            daemon.serve(&p).expect("echo device served one connection");
        });
        EchoDevice {
            path,
            backend,
            server: Some(server),
        }
    }

    /// Waits for the device to see the disconnect.
    fn join(mut self) {
        self.server.take().unwrap().join().unwrap();
    }
}

impl Drop for EchoDevice {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

const WAIT: Duration = Duration::from_secs(10);

/// The echo device runs virtio-queue, split rings only: these tests ignore `VNIC_TEST_RING` and
/// `VNIC_TEST_IN_ORDER`.
fn split(opts: GuestOptions) -> GuestOptions {
    GuestOptions {
        ring: RingKind::Split,
        in_order: false,
        ..opts
    }
}

fn roundtrip(guest: &mut TestGuest, pair: u16, frames: &[Vec<u8>]) {
    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
    let mut sent = 0;
    let mut got = Vec::new();
    while sent < refs.len() {
        sent += guest.send(pair, &refs[sent..]).unwrap();
        got.extend(guest.recv(pair));
        if sent < refs.len() {
            assert!(guest.tx_wait_idle(pair, WAIT).unwrap());
        }
    }
    let want = frames.len() - got.len();
    got.extend(guest.recv_wait(pair, want, WAIT));
    assert_eq!(got.len(), frames.len());
    for (f, want) in got.iter().zip(frames) {
        assert_eq!(&f.data, want);
        assert_eq!(f.hdr[..10], [0u8; 10]);
    }
}

#[test]
fn connect_refuses_ring_features_the_device_does_not_offer() {
    let packed = GuestOptions {
        ring: RingKind::Packed,
        ..split(GuestOptions::default())
    };
    let in_order = GuestOptions {
        in_order: true,
        ..split(GuestOptions::default())
    };
    for (opts, name) in [
        (packed, "VIRTIO_F_RING_PACKED"),
        (in_order, "VIRTIO_F_IN_ORDER"),
    ] {
        let dev = EchoDevice::start(1);
        let err = TestGuest::connect(&dev.path, opts)
            .err()
            .expect("must fail");
        assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn connect_negotiates_like_qemu() {
    let dev = EchoDevice::start(2);
    let mut g = TestGuest::connect(&dev.path, split(GuestOptions::with_pairs(2))).unwrap();
    assert_eq!(g.offered_features() & VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CSUM);
    assert_eq!(g.acked_features(), g.offered_features() & DRIVER_FEATURES);
    assert_eq!(g.acked_features() & VIRTIO_NET_F_CSUM, 0);
    // MQ | CONFIG offered by the device, REPLY_ACK added by the library.
    assert_eq!(g.protocol_features(), 0x1 | 0x200 | 0x8);
    assert_eq!(g.queue_num(), 4);
    assert_eq!(g.hdr_len(), 12);
    let c = g.config().unwrap();
    assert_eq!(c.mac, echo::MAC);
    assert_eq!(c.status, 1);
    assert_eq!(c.max_virtqueue_pairs, 2);
    assert_eq!(c.mtu, 1500);
    assert_eq!(c.speed, 10_000);
    assert_eq!(c.duplex, 1);
    g.disconnect();
    dev.join();
}

#[test]
fn echo_small_frames_with_every_layout() {
    let dev = EchoDevice::start(1);
    let mut g = TestGuest::connect(&dev.path, split(GuestOptions::default())).unwrap();
    let frames: Vec<Vec<u8>> = (0..600).map(|i| pattern(60 + i % 1455, i as u8)).collect();
    roundtrip(&mut g, 0, &frames);
    for layout in [
        TxLayout::SPLIT_HEADER,
        TxLayout::INDIRECT,
        TxLayout::COMBINED.scattered(256),
    ] {
        let refs: Vec<&[u8]> = frames[..50].iter().map(|f| f.as_slice()).collect();
        assert_eq!(g.send_with_layout(0, &refs, layout).unwrap(), 50);
        let got = g.recv_wait(0, 50, WAIT);
        assert_eq!(got.len(), 50, "{layout:?}");
        assert!(got.iter().zip(&frames).all(|(g, f)| &g.data == f));
    }
    assert!(g.interrupts(0) > 0, "RX interrupts were counted");
    assert!(g.kicks(1) > 0);
    assert_eq!(dev.backend.tx_frames.load(Ordering::Relaxed), 750);
    g.disconnect();
    dev.join();
}

#[test]
fn echo_big_frames_use_mergeable_buffers() {
    let dev = EchoDevice::start(1);
    let mut g = TestGuest::connect(&dev.path, split(GuestOptions::default())).unwrap();
    let frames: Vec<Vec<u8>> = (0..20).map(|i| pattern(5000 + i * 3000, i as u8)).collect();
    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
    assert_eq!(g.send(0, &refs).unwrap(), 20);
    let got = g.recv_wait(0, 20, WAIT);
    assert_eq!(got.len(), 20);
    for (f, want) in got.iter().zip(&frames) {
        assert_eq!(f.data, *want);
        assert_eq!(f.num_buffers as usize, (want.len() + 12).div_ceil(2048));
    }
    g.disconnect();
    dev.join();
}

#[test]
fn echo_on_every_pair_with_nonzero_gpa_base() {
    let dev = EchoDevice::start(3);
    let opts = GuestOptions {
        gpa_base: 0x7f00_0000_0000,
        queue_size: 128,
        rx_buffers: 128,
        ..GuestOptions::with_pairs(3)
    };
    let mut g = TestGuest::connect(&dev.path, split(opts)).unwrap();
    for pair in 0..3u16 {
        let frames: Vec<Vec<u8>> = (0..300).map(|i| pattern(64 + i, pair as u8)).collect();
        roundtrip(&mut g, pair, &frames);
    }
    g.disconnect();
    dev.join();
}

#[test]
fn echo_without_event_idx_or_mergeable_buffers() {
    let dev = EchoDevice::start(1);
    let opts = GuestOptions {
        features: Some(
            VIRTIO_F_VERSION_1
                | VIRTIO_NET_F_MAC
                | VIRTIO_NET_F_MQ
                | VHOST_USER_F_PROTOCOL_FEATURES,
        ),
        ..GuestOptions::default()
    };
    let mut g = TestGuest::connect(&dev.path, split(opts)).unwrap();
    assert!(!g.queue(0).event_idx());
    let frames: Vec<Vec<u8>> = (0..400).map(|i| pattern(100 + i, i as u8)).collect();
    roundtrip(&mut g, 0, &frames);
    g.disconnect();
    dev.join();
}

#[test]
fn disabled_pair_is_served_once_enabled() {
    let dev = EchoDevice::start(2);
    let opts = GuestOptions {
        enabled_pairs: 1,
        ..GuestOptions::with_pairs(2)
    };
    let mut g = TestGuest::connect(&dev.path, split(opts)).unwrap();
    let f = pattern(100, 1);
    assert_eq!(g.send(1, &[&f]).unwrap(), 1);
    assert!(g.recv_wait(1, 1, Duration::from_millis(200)).is_empty());
    assert_eq!(g.tx_in_flight(1), 1);
    g.set_pair_enabled(1, true).unwrap();
    let got = g.recv_wait(1, 1, WAIT);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, f);
    g.disconnect();
    dev.join();
}

#[test]
fn suppressed_rx_interrupts_still_deliver_by_polling() {
    let dev = EchoDevice::start(1);
    let mut g = TestGuest::connect(&dev.path, split(GuestOptions::default())).unwrap();
    let frames: Vec<Vec<u8>> = (0..10).map(|i| pattern(100, i)).collect();
    roundtrip(&mut g, 0, &frames);
    let before = g.interrupts(0);
    g.suppress_interrupts(0, true);
    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
    g.send(0, &refs).unwrap();
    let got = g.recv_wait(0, 10, WAIT);
    assert_eq!(got.len(), 10);
    assert_eq!(g.interrupts(0), before, "no RX interrupt while suppressed");
    g.suppress_interrupts(0, false);
    roundtrip(&mut g, 0, &frames);
    assert!(g.interrupts(0) > before);
    g.disconnect();
    dev.join();
}

#[test]
fn rx_buffers_posted_later_receive_the_backlog() {
    let dev = EchoDevice::start(1);
    let opts = GuestOptions {
        rx_buffers: 0,
        ..GuestOptions::default()
    };
    let mut g = TestGuest::connect(&dev.path, split(opts)).unwrap();
    let f = pattern(3000, 5);
    assert_eq!(g.send(0, &[&f, &f]).unwrap(), 2);
    assert!(g.tx_wait_idle(0, WAIT).unwrap());
    assert!(g.recv(0).is_empty());
    assert_eq!(g.post_rx_buffers(0, 4, 4096).unwrap(), 4);
    let got = g.recv_wait(0, 2, WAIT);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|r| r.data == f && r.num_buffers == 1));
    g.disconnect();
    dev.join();
}

#[test]
fn guest_memory_helpers() {
    let dev = EchoDevice::start(1);
    let opts = GuestOptions {
        gpa_base: 0x10_0000,
        ..GuestOptions::default()
    };
    let mut g = TestGuest::connect(&dev.path, split(opts)).unwrap();
    let gpa = g.alloc(100, 64);
    assert_eq!(gpa % 64, 0);
    assert!(gpa >= 0x10_0000);
    g.write_mem(gpa, b"guest");
    assert_eq!(g.read_mem(gpa, 5), b"guest");
    g.disconnect();
    dev.join();
}

#[test]
fn connect_times_out_without_a_device() {
    let path =
        std::env::temp_dir().join(format!("vnic-testdriver-{}-none.sock", std::process::id()));
    let opts = GuestOptions {
        connect_timeout: Duration::from_millis(50),
        ..GuestOptions::default()
    };
    let start = std::time::Instant::now();
    assert!(TestGuest::connect(&path, opts).is_err());
    assert!(start.elapsed() >= Duration::from_millis(50));
}

#[test]
fn mergeable_frame_waits_for_enough_rx_buffers() {
    let dev = EchoDevice::start(1);
    let opts = GuestOptions {
        rx_buffers: 2,
        ..GuestOptions::default()
    };
    let mut g = TestGuest::connect(&dev.path, split(opts)).unwrap();
    let f = pattern(5000, 9); // 5012 bytes with the header: three 2048-byte buffers
    assert_eq!(g.send(0, &[&f]).unwrap(), 1);
    assert!(g.tx_wait_idle(0, WAIT).unwrap());
    assert!(g.recv_wait(0, 1, Duration::from_millis(100)).is_empty());
    let kicks = g.kicks(0);
    assert_eq!(g.post_rx_buffers(0, 2, 2048).unwrap(), 2);
    assert_eq!(
        g.kicks(0),
        kicks + 1,
        "the device asked for a kick on new buffers"
    );
    let got = g.recv_wait(0, 1, WAIT);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].num_buffers, 3);
    assert_eq!(got[0].data, f);
    g.disconnect();
    dev.join();
}

#[test]
fn legacy_header_without_version_1() {
    let dev = EchoDevice::start(1);
    let opts = GuestOptions {
        features: Some(VIRTIO_NET_F_MAC | VIRTIO_NET_F_MQ | VHOST_USER_F_PROTOCOL_FEATURES),
        ..GuestOptions::default()
    };
    let mut g = TestGuest::connect(&dev.path, split(opts)).unwrap();
    assert_eq!(g.hdr_len(), 10);
    let frames: Vec<Vec<u8>> = (0..50).map(|i| pattern(200 + i, i as u8)).collect();
    roundtrip(&mut g, 0, &frames);
    g.disconnect();
    dev.join();
}

#[test]
fn pairs_can_be_driven_from_their_own_threads() {
    let dev = EchoDevice::start(2);
    let g = TestGuest::connect(&dev.path, split(GuestOptions::with_pairs(2))).unwrap();
    let (frontend, _ram, pairs) = g.into_parts();
    let workers: Vec<_> = pairs
        .into_iter()
        .enumerate()
        .map(|(p, (mut rx, mut tx))| {
            thread::spawn(move || {
                let frames: Vec<Vec<u8>> =
                    (0..1000).map(|i| pattern(64 + i % 700, p as u8)).collect();
                let mut got = Vec::new();
                let mut sent = 0;
                while sent < frames.len() {
                    let refs: Vec<&[u8]> = frames[sent..(sent + 64).min(frames.len())]
                        .iter()
                        .map(|f| f.as_slice())
                        .collect();
                    sent += tx.send(&refs).unwrap();
                    let want = sent - got.len();
                    rx.recv_wait_into(&mut got, want, WAIT).unwrap();
                }
                assert_eq!(got.len(), frames.len());
                assert!(got.iter().zip(&frames).all(|(g, f)| &g.data == f));
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    drop(frontend);
    dev.join();
}
