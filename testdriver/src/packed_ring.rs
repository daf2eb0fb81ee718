//! The packed virtqueue layout (virtio 1.1 §2.8): one descriptor ring plus the driver and device
//! event suppression structures.
//!
//! [`PackedRing`] is the packed half of [`DriverQueue`](crate::DriverQueue), following the
//! packed code of Linux's `virtio_ring.c`:
//!
//! * Both wrap counters start at 1. A chain of n descriptors takes n consecutive ring slots; a
//!   slot past the ring end is slot 0 of the next lap, with the avail wrap counter toggled. Every
//!   descriptor of a chain carries the chain's buffer id (from a free-id list, ids < size) and
//!   the AVAIL/USED bits of its own slot's lap.
//! * A chain's body is written when it is added; its head's flags (the only store the device
//!   polls) when it is published, with `Release`, the batch's first head last of all, so the
//!   device finds a published batch whole.
//! * A used descriptor is the one at the driver's used slot with AVAIL == USED == the used wrap
//!   counter (flags loaded with `Acquire`, then id and length read); consuming it steps over
//!   the slots its chain took, remembered per id, since the device writes one used descriptor
//!   per chain (or per batch, with `IN_ORDER`).
//! * Kicks and interrupts are asked for through the event suppression structures: ENABLE,
//!   DISABLE, or (with `EVENT_IDX`) DESC at a slot and wrap counter.

use std::io;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use super::memory::GuestRam;
use super::split_ring::{
    vring_need_event, Segment, UsedElem, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
};

/// Packed descriptor flag: available, when equal to the driver's wrap counter for that slot.
pub const VRING_PACKED_DESC_F_AVAIL: u16 = 1 << 7;
/// Packed descriptor flag: used, when equal to AVAIL and the wrap counter.
pub const VRING_PACKED_DESC_F_USED: u16 = 1 << 15;
/// Event suppression flags: notify on every buffer.
pub const VRING_PACKED_EVENT_FLAG_ENABLE: u16 = 0;
/// Event suppression flags: do not notify.
pub const VRING_PACKED_EVENT_FLAG_DISABLE: u16 = 1;
/// Event suppression flags: notify when the position in `off_wrap` is passed (`EVENT_IDX`).
pub const VRING_PACKED_EVENT_FLAG_DESC: u16 = 2;
/// The wrap counter bit of `off_wrap`, and of a packed ring's `SET/GET_VRING_BASE` position.
pub const VRING_PACKED_EVENT_F_WRAP_CTR: u16 = 1 << 15;

/// AVAIL/USED bits that make a descriptor available in a lap with wrap counter `wrap`.
pub fn packed_avail_flags(wrap: bool) -> u16 {
    if wrap {
        VRING_PACKED_DESC_F_AVAIL
    } else {
        VRING_PACKED_DESC_F_USED
    }
}

/// AVAIL/USED bits of a descriptor the device used in a lap with wrap counter `wrap`.
pub fn packed_used_flags(wrap: bool) -> u16 {
    if wrap {
        VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED
    } else {
        0
    }
}

/// Bytes of a packed descriptor ring of `size` entries.
pub fn packed_ring_size(size: u16) -> usize {
    16 * size as usize
}

/// Bytes of an event suppression structure.
pub const EVENT_SUPPRESS_SIZE: usize = 4;

/// One packed-ring descriptor, as laid out in guest memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackedDescriptor {
    pub addr: u64,
    pub len: u32,
    pub id: u16,
    pub flags: u16,
}

/// An event suppression structure (`struct pvirtq_event_suppress`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventSuppress {
    /// Slot (bits 0-14) and wrap counter (bit 15) of the event, for `VRING_PACKED_EVENT_FLAG_DESC`.
    pub off_wrap: u16,
    pub flags: u16,
}

impl EventSuppress {
    /// Notify when the other side passes `slot` in the lap with wrap counter `wrap`.
    pub fn at(slot: u16, wrap: bool) -> EventSuppress {
        EventSuppress {
            off_wrap: wrap_position(slot, wrap),
            flags: VRING_PACKED_EVENT_FLAG_DESC,
        }
    }
}

/// A slot and wrap counter as one value: bits 0-14 the slot, bit 15 the wrap counter.
pub fn wrap_position(slot: u16, wrap: bool) -> u16 {
    slot | if wrap {
        VRING_PACKED_EVENT_F_WRAP_CTR
    } else {
        0
    }
}

/// A chain added but not yet published.
struct Unpublished {
    head_slot: u16,
    head_flags: u16,
    slots: u16,
}

/// The packed-ring state of one driver queue. See the module documentation.
pub(crate) struct PackedRing {
    ram: Arc<GuestRam>,
    size: u16,
    ring_gpa: u64,
    driver_gpa: u64,
    device_gpa: u64,

    /// Free buffer ids; the next one is the last element.
    free_ids: Vec<u16>,
    /// Per buffer id: ring slots its in-flight chain took (0 = not in flight).
    chain_slots: Vec<u16>,
    /// Ring slots not taken by an in-flight chain.
    free_slots: u16,

    /// Where the next chain goes.
    next_avail: u16,
    avail_wrap: bool,
    unpublished: Vec<Unpublished>,
    /// Position after the last published chain (the spec's `new` for kick decisions).
    published: (u16, bool),
    /// Slots published since the last kick decision.
    kick_added: u16,

    /// Where the next used descriptor is expected.
    used_slot: u16,
    used_wrap: bool,
    /// Shadow of the driver event suppression flags.
    event_flags: u16,
}

impl PackedRing {
    /// Allocates the descriptor ring and both event structures in `ram` (page-aligned, then
    /// zeroed).
    pub(crate) fn new(ram: Arc<GuestRam>, size: u16) -> io::Result<PackedRing> {
        let oom = || io::Error::new(io::ErrorKind::OutOfMemory, "guest memory exhausted");
        let ring_gpa = ram.alloc(packed_ring_size(size), 4096).ok_or_else(oom)?;
        let driver_gpa = ram.alloc(EVENT_SUPPRESS_SIZE, 4096).ok_or_else(oom)?;
        let device_gpa = ram.alloc(EVENT_SUPPRESS_SIZE, 4096).ok_or_else(oom)?;
        let mut r = PackedRing {
            ram,
            size,
            ring_gpa,
            driver_gpa,
            device_gpa,
            free_ids: Vec::new(),
            chain_slots: Vec::new(),
            free_slots: 0,
            next_avail: 0,
            avail_wrap: true,
            unpublished: Vec::new(),
            published: (0, true),
            kick_added: 0,
            used_slot: 0,
            used_wrap: true,
            event_flags: VRING_PACKED_EVENT_FLAG_ENABLE,
        };
        r.reset();
        Ok(r)
    }

    pub(crate) fn reset(&mut self) {
        self.ram.fill(self.ring_gpa, packed_ring_size(self.size), 0);
        self.ram.fill(self.driver_gpa, EVENT_SUPPRESS_SIZE, 0);
        self.ram.fill(self.device_gpa, EVENT_SUPPRESS_SIZE, 0);
        self.free_ids = (0..self.size).rev().collect();
        self.chain_slots = vec![0; self.size as usize];
        self.free_slots = self.size;
        self.next_avail = 0;
        self.avail_wrap = true;
        self.unpublished.clear();
        self.published = (0, true);
        self.kick_added = 0;
        self.used_slot = 0;
        self.used_wrap = true;
        self.event_flags = VRING_PACKED_EVENT_FLAG_ENABLE;
    }

    pub(crate) fn ring(&self) -> u64 {
        self.ring_gpa
    }

    pub(crate) fn driver_event_area(&self) -> u64 {
        self.driver_gpa
    }

    pub(crate) fn device_event_area(&self) -> u64 {
        self.device_gpa
    }

    fn desc_gpa(&self, slot: u16) -> u64 {
        assert!(slot < self.size, "slot {slot} out of ring");
        self.ring_gpa + 16 * slot as u64
    }

    /// Address, length and id of the descriptor at `slot`, not its flags.
    fn write_body(&self, slot: u16, addr: u64, len: u32, id: u16) {
        let gpa = self.desc_gpa(slot);
        self.ram.write_obj(gpa, addr.to_le());
        self.ram.write_obj(gpa + 8, len.to_le());
        self.ram.write_obj(gpa + 12, id.to_le());
    }

    /// The flags of the descriptor at `slot`, ordered after everything written before.
    fn store_flags(&self, slot: u16, flags: u16) {
        self.ram
            .atomic_u16(self.desc_gpa(slot) + 14)
            .store(flags.to_le(), Ordering::Release);
    }

    fn load_flags(&self, slot: u16) -> u16 {
        u16::from_le(
            self.ram
                .atomic_u16(self.desc_gpa(slot) + 14)
                .load(Ordering::Acquire),
        )
    }

    // ----- managed posting -----

    pub(crate) fn free_descriptors(&self) -> usize {
        self.free_slots as usize
    }

    pub(crate) fn is_in_flight(&self, id: u32) -> bool {
        self.chain_slots(id) != 0
    }

    /// Ring slots of the in-flight chain with buffer `id` (0: not in flight).
    pub(crate) fn chain_slots(&self, id: u32) -> u16 {
        self.chain_slots.get(id as usize).copied().unwrap_or(0)
    }

    pub(crate) fn peek_head(&self) -> Option<u16> {
        // Chains never outnumber their slots, so a free slot implies a free id.
        (self.free_slots > 0).then(|| *self.free_ids.last().expect("ids <= slots"))
    }

    /// Takes the next slot for a descriptor; returns it and its AVAIL/USED bits.
    fn take_slot(&mut self) -> (u16, u16) {
        let taken = (self.next_avail, packed_avail_flags(self.avail_wrap));
        self.next_avail += 1;
        if self.next_avail == self.size {
            self.next_avail = 0;
            self.avail_wrap = !self.avail_wrap;
        }
        taken
    }

    /// Takes a buffer id for a chain of `slots` descriptors whose head is at `head_slot`.
    fn add(&mut self, head_slot: u16, head_flags: u16, slots: u16) -> u16 {
        let id = self.free_ids.pop().expect("checked free slots");
        self.chain_slots[id as usize] = slots;
        self.free_slots -= slots;
        self.unpublished.push(Unpublished {
            head_slot,
            head_flags,
            slots,
        });
        id
    }

    pub(crate) fn add_chain(&mut self, segs: &[Segment]) -> Option<u16> {
        let n = segs.len();
        if n == 0 || n > self.free_slots as usize {
            return None;
        }
        let id = *self.free_ids.last().expect("checked free slots");
        let mut head = (0, 0);
        for (k, seg) in segs.iter().enumerate() {
            let (slot, mut flags) = self.take_slot();
            if seg.writable {
                flags |= VRING_DESC_F_WRITE;
            }
            if k + 1 < n {
                flags |= VRING_DESC_F_NEXT;
            }
            self.write_body(slot, seg.addr, seg.len, id);
            if k == 0 {
                head = (slot, flags);
            } else {
                self.store_flags(slot, flags);
            }
        }
        Some(self.add(head.0, head.1, n as u16))
    }

    pub(crate) fn add_indirect(&mut self, table_gpa: u64, segs: &[Segment]) -> Option<u16> {
        let n = segs.len();
        if n == 0 || n > (u32::MAX / 16) as usize || self.free_slots == 0 {
            return None;
        }
        // Inside a table only WRITE means anything: the device reads len / 16 entries.
        for (k, seg) in segs.iter().enumerate() {
            let d = PackedDescriptor {
                addr: seg.addr.to_le(),
                len: seg.len.to_le(),
                id: 0,
                flags: if seg.writable { VRING_DESC_F_WRITE } else { 0 }.to_le(),
            };
            self.ram.write_obj(table_gpa + 16 * k as u64, d);
        }
        let id = *self.free_ids.last().expect("checked free slots");
        let (slot, flags) = self.take_slot();
        self.write_body(slot, table_gpa, (16 * n) as u32, id);
        Some(self.add(slot, flags | VRING_DESC_F_INDIRECT, 1))
    }

    pub(crate) fn unpublished(&self) -> u16 {
        self.unpublished.len() as u16
    }

    /// Stores the heads' flags, the first chain's last: the device then sees the batch whole.
    pub(crate) fn publish(&mut self) {
        if self.unpublished.is_empty() {
            return;
        }
        for c in self.unpublished.iter().rev() {
            self.store_flags(c.head_slot, c.head_flags);
            self.kick_added = self.kick_added.wrapping_add(c.slots);
        }
        self.unpublished.clear();
        self.published = (self.next_avail, self.avail_wrap);
    }

    /// Linux's `virtqueue_kick_prepare_packed`: DISABLE: no, ENABLE: yes, DESC: whether the
    /// device's event position lies in the slots published since the last decision.
    pub(crate) fn kick_needed(&mut self) -> bool {
        let added = std::mem::take(&mut self.kick_added);
        if added == 0 {
            return false;
        }
        // Order the head flag stores before reading the device's suppression structure.
        fence(Ordering::SeqCst);
        let ev = self.device_event();
        match ev.flags {
            VRING_PACKED_EVENT_FLAG_DESC => {
                // More than a lap published: whatever position the device waits at was passed.
                if added >= self.size {
                    return true;
                }
                let (new, wrap) = self.published;
                let old = new.wrapping_sub(added);
                let mut event = ev.off_wrap & !VRING_PACKED_EVENT_F_WRAP_CTR;
                // An event in the previous lap sits a ring below `new`'s lap.
                if (ev.off_wrap & VRING_PACKED_EVENT_F_WRAP_CTR != 0) != wrap {
                    event = event.wrapping_sub(self.size);
                }
                vring_need_event(event, new, old)
            }
            flags => flags != VRING_PACKED_EVENT_FLAG_DISABLE,
        }
    }

    /// Everything published so far counts as notified.
    pub(crate) fn mark_kicked(&mut self) {
        self.kick_added = 0;
    }

    // ----- managed completion -----

    /// The used descriptor at the driver's used position, if the device wrote it.
    pub(crate) fn next_used(&self) -> Option<UsedElem> {
        let flags = self.load_flags(self.used_slot);
        let avail = flags & VRING_PACKED_DESC_F_AVAIL != 0;
        let used = flags & VRING_PACKED_DESC_F_USED != 0;
        if avail != used || used != self.used_wrap {
            return None;
        }
        let gpa = self.desc_gpa(self.used_slot);
        Some(UsedElem {
            id: u16::from_le(self.ram.read_obj::<u16>(gpa + 12)) as u32,
            len: u32::from_le(self.ram.read_obj::<u32>(gpa + 8)),
        })
    }

    /// Steps the used position over `slots` ring slots (at most a ring's worth).
    pub(crate) fn consume(&mut self, slots: u16) {
        debug_assert!(slots <= self.size);
        self.used_slot += slots;
        if self.used_slot >= self.size {
            self.used_slot -= self.size;
            self.used_wrap = !self.used_wrap;
        }
    }

    /// Frees buffer `id` and its slots; false if it is not in flight.
    pub(crate) fn release(&mut self, id: u32) -> bool {
        let Some(slots) = self.chain_slots.get_mut(id as usize) else {
            return false;
        };
        let n = std::mem::take(slots);
        if n == 0 {
            return false;
        }
        self.free_slots += n;
        self.free_ids.push(id as u16);
        true
    }

    /// DISABLE when suppressed, else DESC at the used position under `EVENT_IDX`, else ENABLE.
    pub(crate) fn state_interrupt_wish(&mut self, event_idx: bool, suppressed: bool) {
        let flags = if suppressed {
            VRING_PACKED_EVENT_FLAG_DISABLE
        } else if event_idx {
            self.ram.atomic_u16(self.driver_gpa).store(
                wrap_position(self.used_slot, self.used_wrap).to_le(),
                Ordering::Relaxed,
            );
            VRING_PACKED_EVENT_FLAG_DESC
        } else {
            VRING_PACKED_EVENT_FLAG_ENABLE
        };
        if flags != self.event_flags {
            self.event_flags = flags;
            // Release: a device that sees DESC sees the `off_wrap` written before it.
            self.ram
                .atomic_u16(self.driver_gpa + 2)
                .store(flags.to_le(), Ordering::Release);
        }
    }

    // ----- raw access (hostile tests; see `DriverQueue`) -----

    pub(crate) fn write_desc(&mut self, slot: u16, d: PackedDescriptor) {
        self.write_body(slot, d.addr, d.len, d.id);
        self.store_flags(slot, d.flags);
    }

    pub(crate) fn read_desc(&self, slot: u16) -> PackedDescriptor {
        let flags = self.load_flags(slot);
        let gpa = self.desc_gpa(slot);
        PackedDescriptor {
            addr: u64::from_le(self.ram.read_obj(gpa)),
            len: u32::from_le(self.ram.read_obj(gpa + 8)),
            id: u16::from_le(self.ram.read_obj(gpa + 12)),
            flags,
        }
    }

    /// One 4-byte load, so `off_wrap` and `flags` come from the same moment (as Linux reads it).
    fn read_event(&self, gpa: u64) -> EventSuppress {
        let v = u32::from_le(self.ram.read_obj::<u32>(gpa));
        EventSuppress {
            off_wrap: v as u16,
            flags: (v >> 16) as u16,
        }
    }

    fn write_event(&self, gpa: u64, ev: EventSuppress) {
        self.ram
            .atomic_u16(gpa)
            .store(ev.off_wrap.to_le(), Ordering::Relaxed);
        self.ram
            .atomic_u16(gpa + 2)
            .store(ev.flags.to_le(), Ordering::Release);
    }

    pub(crate) fn driver_event(&self) -> EventSuppress {
        self.read_event(self.driver_gpa)
    }

    pub(crate) fn set_driver_event(&mut self, ev: EventSuppress) {
        self.event_flags = ev.flags;
        self.write_event(self.driver_gpa, ev);
    }

    pub(crate) fn device_event(&self) -> EventSuppress {
        self.read_event(self.device_gpa)
    }

    pub(crate) fn set_device_event(&mut self, ev: EventSuppress) {
        self.write_event(self.device_gpa, ev);
    }

    pub(crate) fn avail_position(&self) -> (u16, bool) {
        (self.next_avail, self.avail_wrap)
    }

    pub(crate) fn set_avail_position(&mut self, slot: u16, wrap: bool) {
        assert!(slot < self.size, "slot {slot} out of ring");
        self.next_avail = slot;
        self.avail_wrap = wrap;
        self.published = (slot, wrap);
    }

    pub(crate) fn used_position(&self) -> (u16, bool) {
        (self.used_slot, self.used_wrap)
    }

    pub(crate) fn set_used_position(&mut self, slot: u16, wrap: bool) {
        assert!(slot < self.size, "slot {slot} out of ring");
        self.used_slot = slot;
        self.used_wrap = wrap;
    }
}
