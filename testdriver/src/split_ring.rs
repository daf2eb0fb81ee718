//! The split virtqueue layout (virtio 1.x §2.7): descriptor table, available ring, used ring.
//!
//! [`SplitRing`] is the split half of [`DriverQueue`](crate::DriverQueue): the ring memory, the
//! descriptor free list and the indices. It keeps its own shadow of every descriptor it wrote
//! and never trusts device-writable memory to free chains, like Linux does.
//!
//! Memory ordering follows the virtio spec and Linux: descriptors and avail ring slots are plain
//! writes followed by a `Release` store of `avail.idx`; `used.idx` is loaded with `Acquire`
//! before used elements are read; a full fence separates publishing from reading the device's
//! suppression fields (`avail_event`, `used.flags`).

use std::io;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use super::memory::GuestRam;

/// Descriptor flag: the chain continues in `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds an indirect descriptor table.
pub const VRING_DESC_F_INDIRECT: u16 = 4;
/// `avail.flags`: the driver does not want interrupts (used when `EVENT_IDX` is off).
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `used.flags`: the device does not want kicks (used when `EVENT_IDX` is off).
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// Distance at which a "suppressed" `used_event` is parked from `last_used`: half the index
/// space, so the device's window `[old, new)` (at most one ring's worth) never contains it.
const PARKED_USED_EVENT_DISTANCE: u16 = 0x8000;

/// One split-ring descriptor, as laid out in guest memory (little-endian on the hosts we run on).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Descriptor {
    pub fn new(addr: u64, len: u32, flags: u16, next: u16) -> Descriptor {
        Descriptor {
            addr,
            len,
            flags,
            next,
        }
    }

    fn to_le(self) -> Descriptor {
        Descriptor {
            addr: self.addr.to_le(),
            len: self.len.to_le(),
            flags: self.flags.to_le(),
            next: self.next.to_le(),
        }
    }

    fn from_le(d: Descriptor) -> Descriptor {
        Descriptor {
            addr: u64::from_le(d.addr),
            len: u32::from_le(d.len),
            flags: u16::from_le(d.flags),
            next: u16::from_le(d.next),
        }
    }
}

/// One buffer of a chain to post: where, how long, and whether the device may write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

impl Segment {
    /// A device-readable buffer.
    pub fn readable(addr: u64, len: u32) -> Segment {
        Segment {
            addr,
            len,
            writable: false,
        }
    }

    /// A device-writable buffer.
    pub fn writable(addr: u64, len: u32) -> Segment {
        Segment {
            addr,
            len,
            writable: true,
        }
    }
}

/// One completion: the head id (packed: buffer id) of a chain and the bytes the device wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsedElem {
    pub id: u32,
    pub len: u32,
}

/// The spec's `vring_need_event`: true if `event_idx` lies in `[old, new_idx)`, i.e. the other
/// side asked to be notified when the index moved past `event_idx`.
pub fn vring_need_event(event_idx: u16, new_idx: u16, old: u16) -> bool {
    new_idx.wrapping_sub(event_idx).wrapping_sub(1) < new_idx.wrapping_sub(old)
}

/// Bytes of a descriptor table for `size` entries.
pub fn desc_table_size(size: u16) -> usize {
    16 * size as usize
}

/// Bytes of an available ring for `size` entries, including `used_event`.
pub fn avail_ring_size(size: u16) -> usize {
    4 + 2 * size as usize + 2
}

/// Bytes of a used ring for `size` entries, including `avail_event`.
pub fn used_ring_size(size: u16) -> usize {
    4 + 8 * size as usize + 2
}

/// The split-ring state of one driver queue. See the module documentation.
pub(crate) struct SplitRing {
    ram: Arc<GuestRam>,
    size: u16,
    desc_gpa: u64,
    avail_gpa: u64,
    used_gpa: u64,

    /// What the driver wrote into each descriptor-table entry (managed chains only).
    shadow: Vec<Descriptor>,
    /// Free descriptor indices; the next head is the last element.
    free: Vec<u16>,
    /// Per head: descriptors in the in-flight chain (0 = not in flight).
    chain_len: Vec<u16>,

    /// Next avail index to fill (may be ahead of `published`).
    avail_idx: u16,
    /// Last value stored into `avail.idx`.
    published: u16,
    /// `avail.idx` at the last kick decision (the spec's `old`).
    kick_old: u16,
    /// Next used index the driver will read.
    last_used: u16,
    /// Shadow of `avail.flags`.
    avail_flags: u16,
}

impl SplitRing {
    /// Allocates the three rings of `size` entries in `ram` (page-aligned, then zeroed).
    pub(crate) fn new(ram: Arc<GuestRam>, size: u16) -> io::Result<SplitRing> {
        let oom = || io::Error::new(io::ErrorKind::OutOfMemory, "guest memory exhausted");
        let desc_gpa = ram.alloc(desc_table_size(size), 4096).ok_or_else(oom)?;
        let avail_gpa = ram.alloc(avail_ring_size(size), 4096).ok_or_else(oom)?;
        let used_gpa = ram.alloc(used_ring_size(size), 4096).ok_or_else(oom)?;
        let mut r = SplitRing {
            ram,
            size,
            desc_gpa,
            avail_gpa,
            used_gpa,
            shadow: Vec::new(),
            free: Vec::new(),
            chain_len: Vec::new(),
            avail_idx: 0,
            published: 0,
            kick_old: 0,
            last_used: 0,
            avail_flags: 0,
        };
        r.reset();
        Ok(r)
    }

    pub(crate) fn reset(&mut self) {
        self.ram.fill(self.desc_gpa, desc_table_size(self.size), 0);
        self.ram.fill(self.avail_gpa, avail_ring_size(self.size), 0);
        self.ram.fill(self.used_gpa, used_ring_size(self.size), 0);
        let n = self.size as usize;
        self.shadow = vec![Descriptor::default(); n];
        self.free = (0..self.size).rev().collect();
        self.chain_len = vec![0; n];
        self.avail_idx = 0;
        self.published = 0;
        self.kick_old = 0;
        self.last_used = 0;
        self.avail_flags = 0;
    }

    pub(crate) fn desc_table(&self) -> u64 {
        self.desc_gpa
    }

    pub(crate) fn avail_ring(&self) -> u64 {
        self.avail_gpa
    }

    pub(crate) fn used_ring(&self) -> u64 {
        self.used_gpa
    }

    // ----- managed posting -----

    pub(crate) fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    pub(crate) fn is_in_flight(&self, head: u32) -> bool {
        (head as usize) < self.chain_len.len() && self.chain_len[head as usize] != 0
    }

    pub(crate) fn peek_head(&self) -> Option<u16> {
        self.free.last().copied()
    }

    pub(crate) fn shadow_desc(&self, index: u16) -> Descriptor {
        self.shadow[index as usize]
    }

    fn write_desc_tracked(&mut self, index: u16, d: Descriptor) {
        self.shadow[index as usize] = d;
        self.ram
            .write_obj(self.desc_gpa + 16 * index as u64, d.to_le());
    }

    fn put_avail(&mut self, head: u16) {
        let slot = self.avail_idx % self.size;
        self.ram
            .write_obj(self.avail_gpa + 4 + 2 * slot as u64, head.to_le());
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    pub(crate) fn add_chain(&mut self, segs: &[Segment]) -> Option<u16> {
        let n = segs.len();
        if n == 0 || n > self.free.len() {
            return None;
        }
        let top = self.free.len();
        let head = self.free[top - 1];
        for (k, seg) in segs.iter().enumerate() {
            let i = self.free[top - 1 - k];
            let last = k + 1 == n;
            let next = if last { 0 } else { self.free[top - 2 - k] };
            let mut flags = if seg.writable { VRING_DESC_F_WRITE } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT;
            }
            self.write_desc_tracked(i, Descriptor::new(seg.addr, seg.len, flags, next));
        }
        self.free.truncate(top - n);
        self.chain_len[head as usize] = n as u16;
        self.put_avail(head);
        Some(head)
    }

    pub(crate) fn add_indirect(&mut self, table_gpa: u64, segs: &[Segment]) -> Option<u16> {
        let n = segs.len();
        if n == 0 || n > u16::MAX as usize || self.free.is_empty() {
            return None;
        }
        for (k, seg) in segs.iter().enumerate() {
            let last = k + 1 == n;
            let mut flags = if seg.writable { VRING_DESC_F_WRITE } else { 0 };
            let mut next = 0;
            if !last {
                flags |= VRING_DESC_F_NEXT;
                next = (k + 1) as u16;
            }
            self.ram.write_obj(
                table_gpa + 16 * k as u64,
                Descriptor::new(seg.addr, seg.len, flags, next).to_le(),
            );
        }
        let head = self.free.pop().expect("checked non-empty");
        self.write_desc_tracked(
            head,
            Descriptor::new(table_gpa, (16 * n) as u32, VRING_DESC_F_INDIRECT, 0),
        );
        self.chain_len[head as usize] = 1;
        self.put_avail(head);
        Some(head)
    }

    pub(crate) fn unpublished(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.published)
    }

    /// One `Release` store of `avail.idx` makes every added chain visible.
    pub(crate) fn publish(&mut self) {
        if self.avail_idx != self.published {
            self.ram
                .atomic_u16(self.avail_gpa + 2)
                .store(self.avail_idx.to_le(), Ordering::Release);
            self.published = self.avail_idx;
        }
    }

    /// `vring_need_event(avail_event, new, old)` under `EVENT_IDX`, otherwise the absence of
    /// `VRING_USED_F_NO_NOTIFY`, for what was published since the last decision.
    pub(crate) fn kick_needed(&mut self, event_idx: bool) -> bool {
        let new = self.published;
        let old = self.kick_old;
        self.kick_old = new;
        if new == old {
            return false;
        }
        // Order the avail.idx store before reading the device's suppression fields.
        fence(Ordering::SeqCst);
        if event_idx {
            vring_need_event(self.avail_event(), new, old)
        } else {
            self.used_flags() & VRING_USED_F_NO_NOTIFY == 0
        }
    }

    /// Everything published so far counts as notified.
    pub(crate) fn mark_kicked(&mut self) {
        self.kick_old = self.published;
    }

    // ----- managed completion -----

    /// The used entry at `last_used` and how many entries `used.idx` published from there, or
    /// `None` when there are none. A `used.idx` more than a ring ahead is an error.
    pub(crate) fn next_used(&self) -> Result<Option<(UsedElem, u16)>, String> {
        let used_idx = self.used_idx();
        let pending = used_idx.wrapping_sub(self.last_used);
        if pending > self.size {
            return Err(format!(
                "used.idx {used_idx} is {pending} entries ahead of the driver's last_used {} \
                 (ring size {})",
                self.last_used, self.size
            ));
        }
        Ok((pending > 0).then(|| (self.used_elem(self.last_used), pending)))
    }

    /// Steps past used entries (`IN_ORDER`: one entry can stand for several chains).
    pub(crate) fn consume(&mut self, entries: u16) {
        self.last_used = self.last_used.wrapping_add(entries);
    }

    /// Frees the chain at `head`; false if it is not in flight.
    pub(crate) fn release(&mut self, head: u32) -> bool {
        if !self.is_in_flight(head) {
            return false;
        }
        let mut i = head as u16;
        let n = std::mem::take(&mut self.chain_len[head as usize]);
        for k in 0..n {
            self.free.push(i);
            if k + 1 < n {
                i = self.shadow[i as usize].next;
            }
        }
        true
    }

    pub(crate) fn last_used(&self) -> u16 {
        self.last_used
    }

    /// `used_event = last_used` (or parked, when suppressed) under `EVENT_IDX`, the avail flag
    /// otherwise.
    pub(crate) fn state_interrupt_wish(&mut self, event_idx: bool, suppressed: bool) {
        if event_idx {
            let ev = if suppressed {
                self.last_used.wrapping_add(PARKED_USED_EVENT_DISTANCE)
            } else {
                self.last_used
            };
            self.set_used_event(ev);
        } else {
            let flags = if suppressed {
                self.avail_flags | VRING_AVAIL_F_NO_INTERRUPT
            } else {
                self.avail_flags & !VRING_AVAIL_F_NO_INTERRUPT
            };
            if flags != self.avail_flags {
                self.set_avail_flags(flags);
            }
        }
    }

    // ----- raw access (hostile tests; see `DriverQueue`) -----

    pub(crate) fn write_desc(&mut self, index: u16, d: Descriptor) {
        assert!(index < self.size, "descriptor index {index} out of table");
        self.ram
            .write_obj(self.desc_gpa + 16 * index as u64, d.to_le());
    }

    pub(crate) fn read_desc(&self, index: u16) -> Descriptor {
        assert!(index < self.size, "descriptor index {index} out of table");
        Descriptor::from_le(self.ram.read_obj(self.desc_gpa + 16 * index as u64))
    }

    pub(crate) fn set_avail_entry(&mut self, slot: u16, head: u16) {
        let slot = slot % self.size;
        self.ram
            .write_obj(self.avail_gpa + 4 + 2 * slot as u64, head.to_le());
    }

    pub(crate) fn push_avail_raw(&mut self, head: u16) {
        self.put_avail(head);
    }

    pub(crate) fn set_avail_idx(&mut self, idx: u16) {
        self.ram
            .atomic_u16(self.avail_gpa + 2)
            .store(idx.to_le(), Ordering::Release);
        self.avail_idx = idx;
        self.published = idx;
    }

    pub(crate) fn avail_idx(&self) -> u16 {
        u16::from_le(
            self.ram
                .atomic_u16(self.avail_gpa + 2)
                .load(Ordering::Relaxed),
        )
    }

    pub(crate) fn set_avail_flags(&mut self, flags: u16) {
        self.avail_flags = flags;
        self.ram
            .atomic_u16(self.avail_gpa)
            .store(flags.to_le(), Ordering::Relaxed);
    }

    pub(crate) fn avail_flags(&self) -> u16 {
        u16::from_le(self.ram.atomic_u16(self.avail_gpa).load(Ordering::Relaxed))
    }

    fn used_event_gpa(&self) -> u64 {
        self.avail_gpa + 4 + 2 * self.size as u64
    }

    fn avail_event_gpa(&self) -> u64 {
        self.used_gpa + 4 + 8 * self.size as u64
    }

    pub(crate) fn set_used_event(&mut self, val: u16) {
        self.ram
            .atomic_u16(self.used_event_gpa())
            .store(val.to_le(), Ordering::Relaxed);
    }

    pub(crate) fn used_event(&self) -> u16 {
        u16::from_le(
            self.ram
                .atomic_u16(self.used_event_gpa())
                .load(Ordering::Relaxed),
        )
    }

    pub(crate) fn used_idx(&self) -> u16 {
        u16::from_le(
            self.ram
                .atomic_u16(self.used_gpa + 2)
                .load(Ordering::Acquire),
        )
    }

    pub(crate) fn used_flags(&self) -> u16 {
        u16::from_le(self.ram.atomic_u16(self.used_gpa).load(Ordering::Relaxed))
    }

    pub(crate) fn avail_event(&self) -> u16 {
        u16::from_le(
            self.ram
                .atomic_u16(self.avail_event_gpa())
                .load(Ordering::Relaxed),
        )
    }

    pub(crate) fn used_elem(&self, slot: u16) -> UsedElem {
        let gpa = self.used_gpa + 4 + 8 * (slot % self.size) as u64;
        UsedElem {
            id: u32::from_le(self.ram.read_obj::<u32>(gpa)),
            len: u32::from_le(self.ram.read_obj::<u32>(gpa + 4)),
        }
    }

    pub(crate) fn set_last_used(&mut self, idx: u16) {
        self.last_used = idx;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DriverQueue;
    use std::time::Duration;

    fn queue(size: u16, event_idx: bool) -> DriverQueue {
        let ram = Arc::new(GuestRam::new(1 << 20, 0).unwrap());
        DriverQueue::new(ram, 0, size, event_idx).unwrap()
    }

    #[test]
    fn need_event_math() {
        // Event at old: the first new entry crosses it.
        assert!(vring_need_event(5, 6, 5));
        // Event already passed before this batch.
        assert!(!vring_need_event(4, 6, 5));
        // Event beyond the batch.
        assert!(!vring_need_event(6, 6, 5));
        assert!(vring_need_event(6, 7, 5));
        // Wrap-around.
        assert!(vring_need_event(0xffff, 1, 0xfffe));
        assert!(vring_need_event(0, 1, 0xffff));
        assert!(!vring_need_event(1, 1, 0xffff));
        // Nothing new: never.
        assert!(!vring_need_event(3, 3, 3));
    }

    #[test]
    fn rings_are_aligned_and_disjoint() {
        let q = queue(256, true);
        assert_eq!(q.desc_table() % 4096, 0);
        assert_eq!(q.avail_ring() % 4096, 0);
        assert_eq!(q.used_ring() % 4096, 0);
        assert!(q.desc_table() + desc_table_size(256) as u64 <= q.avail_ring());
        assert!(q.avail_ring() + avail_ring_size(256) as u64 <= q.used_ring());
        assert!(q.desc_table() > 0, "GPA 0 is never used for rings");
    }

    #[test]
    fn chains_link_free_descriptors_and_are_freed_on_use() {
        let mut q = queue(4, false);
        let h = q
            .add_chain(&[
                Segment::readable(0x1000, 12),
                Segment::readable(0x2000, 100),
            ])
            .unwrap();
        assert_eq!(h, 0);
        assert_eq!(
            q.read_desc(0),
            Descriptor::new(0x1000, 12, VRING_DESC_F_NEXT, 1)
        );
        assert_eq!(q.read_desc(1), Descriptor::new(0x2000, 100, 0, 0));
        assert_eq!(q.free_descriptors(), 2);
        assert!(q.add_chain(&[Segment::writable(0, 1); 3]).is_none());
        assert_eq!(q.unpublished(), 1);
        assert_eq!(q.avail_idx(), 0);
        q.publish();
        assert_eq!(q.avail_idx(), 1);

        // Play the device: complete head 0.
        let ram = q.ram().clone();
        ram.write_obj(q.used_ring() + 4, 0u32);
        ram.write_obj(q.used_ring() + 8, 7u32);
        ram.atomic_u16(q.used_ring() + 2)
            .store(1, Ordering::Release);
        assert_eq!(q.pending_used(), 1);
        assert_eq!(q.pop_used(), Some(UsedElem { id: 0, len: 7 }));
        assert_eq!(q.pop_used(), None);
        assert_eq!(q.free_descriptors(), 4);
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    #[should_panic(expected = "not the head of an in-flight chain")]
    fn bogus_used_id_panics_in_strict_mode() {
        let mut q = queue(4, false);
        q.add_chain(&[Segment::readable(0x1000, 1)]).unwrap();
        q.publish();
        let ram = q.ram().clone();
        ram.write_obj(q.used_ring() + 4, 3u32);
        ram.atomic_u16(q.used_ring() + 2)
            .store(1, Ordering::Release);
        q.pop_used();
    }

    #[test]
    fn bogus_used_id_is_counted_in_lenient_mode() {
        let mut q = queue(4, false);
        q.set_strict(false);
        q.add_chain(&[Segment::readable(0x1000, 1)]).unwrap();
        let ram = q.ram().clone();
        ram.write_obj(q.used_ring() + 4, 9u32);
        ram.atomic_u16(q.used_ring() + 2)
            .store(1, Ordering::Release);
        assert_eq!(q.pop_used(), Some(UsedElem { id: 9, len: 0 }));
        assert_eq!(q.violations(), 1);
        assert_eq!(q.in_flight(), 1);
        // used.idx far ahead of last_used.
        ram.atomic_u16(q.used_ring() + 2)
            .store(100, Ordering::Release);
        assert_eq!(q.pending_used(), 0);
        assert_eq!(q.violations(), 2);
    }

    #[test]
    fn kick_suppression_without_event_idx() {
        let mut q = queue(8, false);
        q.add_chain(&[Segment::readable(0x1000, 1)]).unwrap();
        assert!(q.notify().unwrap());
        // Nothing new: no kick.
        assert!(!q.notify().unwrap());
        // Device sets NO_NOTIFY.
        q.ram()
            .atomic_u16(q.used_ring())
            .store(VRING_USED_F_NO_NOTIFY, Ordering::Relaxed);
        q.add_chain(&[Segment::readable(0x1000, 1)]).unwrap();
        assert!(!q.notify().unwrap());
        assert_eq!(q.kicks(), 1);
        assert_eq!(q.kick_fd().read().unwrap(), 1);
    }

    #[test]
    fn kick_suppression_with_event_idx() {
        let mut q = queue(8, true);
        // avail_event = 0: the first entry (index 0) crosses it.
        q.add_chain(&[Segment::readable(0x1000, 1)]).unwrap();
        assert!(q.notify().unwrap());
        // avail_event still 0: entry 1 does not cross it.
        q.add_chain(&[Segment::readable(0x1000, 1)]).unwrap();
        assert!(!q.notify().unwrap());
        // Device asks to be kicked when entry 3 is published.
        let ae = q.used_ring() + 4 + 8 * 8;
        q.ram().atomic_u16(ae).store(3, Ordering::Relaxed);
        q.add_chain(&[Segment::readable(0x1000, 1)]).unwrap(); // idx 2
        assert!(!q.notify().unwrap());
        q.add_chain(&[Segment::readable(0x1000, 1)]).unwrap(); // idx 3
        q.add_chain(&[Segment::readable(0x1000, 1)]).unwrap(); // idx 4
        assert!(q.notify().unwrap(), "batch [3,5) contains avail_event 3");
        assert_eq!(q.kicks(), 2);
    }

    #[test]
    fn interrupt_suppression_fields() {
        let mut q = queue(8, true);
        assert!(!q.rearm_interrupts());
        assert_eq!(q.used_event(), 0);
        q.set_interrupts_suppressed(true);
        assert_eq!(q.used_event(), 0x8000);
        q.set_interrupts_suppressed(false);
        assert_eq!(q.used_event(), 0);

        let mut q = queue(8, false);
        q.set_interrupts_suppressed(true);
        assert_eq!(q.avail_flags(), VRING_AVAIL_F_NO_INTERRUPT);
        q.set_interrupts_suppressed(false);
        assert_eq!(q.avail_flags(), 0);
    }

    #[test]
    fn interrupts_accumulate_from_the_call_eventfd() {
        let mut q = queue(8, true);
        assert_eq!(q.poll_interrupts(), 0);
        q.call_fd().write(1).unwrap();
        q.call_fd().write(1).unwrap();
        assert_eq!(q.poll_interrupts(), 2);
        assert!(!q.wait_interrupt(Duration::from_millis(1)).unwrap());
        q.call_fd().write(1).unwrap();
        assert!(q.wait_interrupt(Duration::from_secs(5)).unwrap());
        assert_eq!(q.poll_interrupts(), 3);
    }

    #[test]
    fn indirect_table_layout() {
        let mut q = queue(4, false);
        let ram = q.ram().clone();
        let table = ram.alloc(48, 16).unwrap();
        let h = q
            .add_indirect(
                table,
                &[
                    Segment::readable(0x5000, 12),
                    Segment::readable(0x6000, 60),
                    Segment::writable(0x7000, 4),
                ],
            )
            .unwrap();
        assert_eq!(
            q.read_desc(h),
            Descriptor::new(table, 48, VRING_DESC_F_INDIRECT, 0)
        );
        let d1: Descriptor = ram.read_obj(table + 16);
        assert_eq!(d1, Descriptor::new(0x6000, 60, VRING_DESC_F_NEXT, 2));
        let d2: Descriptor = ram.read_obj(table + 32);
        assert_eq!(d2, Descriptor::new(0x7000, 4, VRING_DESC_F_WRITE, 0));
        assert_eq!(q.free_descriptors(), 3);
    }
}
