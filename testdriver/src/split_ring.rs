//! The driver side of one virtio 1.x split virtqueue, in shared guest memory.
//!
//! [`DriverQueue`] owns a descriptor table, an available ring and a used ring, allocated in
//! [`GuestRam`], plus the queue's kick and call eventfds. It has two faces:
//!
//! * **Managed**: [`DriverQueue::add_chain`] / [`DriverQueue::add_indirect`] take descriptors from
//!   a free list and remember each in-flight chain; [`DriverQueue::pop_used`] returns used entries
//!   and frees their chains; [`DriverQueue::notify`] publishes the avail index and kicks only when
//!   the device asked for it (`EVENT_IDX` `avail_event`, or `VRING_USED_F_NO_NOTIFY`). The
//!   driver keeps its own shadow of every descriptor it wrote and never trusts device-writable
//!   memory to free chains, like Linux does.
//! * **Raw**, for hostile tests: [`DriverQueue::write_desc`], [`DriverQueue::push_avail_raw`],
//!   [`DriverQueue::set_avail_idx`], [`DriverQueue::used_elem`], ... read and write ring memory
//!   directly, bypassing all bookkeeping. Raw-posted heads are unknown to the managed side: read
//!   their completions with the raw accessors, not with `pop_used`.
//!
//! Memory ordering follows the virtio spec and Linux: descriptors and avail ring slots are plain
//! writes followed by a `Release` store of `avail.idx`; `used.idx` is loaded with `Acquire`
//! before used elements are read; a full fence separates publishing from reading the device's
//! suppression fields (`avail_event`, `used.flags`) and re-arming `used_event` from re-checking
//! `used.idx`.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

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

/// One used-ring element: the head id of a completed chain and the bytes the device wrote.
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

/// The driver side of one split virtqueue. See the module documentation.
pub struct DriverQueue {
    ram: Arc<GuestRam>,
    index: u16,
    size: u16,
    desc_gpa: u64,
    avail_gpa: u64,
    used_gpa: u64,
    event_idx: bool,

    /// What the driver wrote into each descriptor-table entry (managed chains only).
    shadow: Vec<Descriptor>,
    /// Free descriptor indices; the next head is the last element.
    free: Vec<u16>,
    /// Per head: descriptors in the in-flight chain (0 = not in flight).
    chain_len: Vec<u16>,
    in_flight: usize,

    /// Next avail index to fill (may be ahead of `published`).
    avail_idx: u16,
    /// Last value stored into `avail.idx`.
    published: u16,
    /// `avail.idx` at the last kick decision (the spec's `old`).
    kick_old: u16,
    /// Next used index the driver will consume.
    last_used: u16,
    /// Shadow of `avail.flags`.
    avail_flags: u16,
    interrupts_suppressed: bool,

    kick: EventFd,
    call: EventFd,
    interrupts: u64,
    kicks: u64,

    strict: bool,
    violations: u64,
}

impl DriverQueue {
    /// Allocates the three rings of a queue of `size` entries in `ram` (page-aligned, zeroed) and
    /// creates non-blocking kick and call eventfds. `index` is the virtqueue index used in
    /// vhost-user messages (RX of pair p = 2p, TX = 2p+1).
    pub fn new(
        ram: Arc<GuestRam>,
        index: u16,
        size: u16,
        event_idx: bool,
    ) -> io::Result<DriverQueue> {
        if size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "queue size must not be 0",
            ));
        }
        let oom = || io::Error::new(io::ErrorKind::OutOfMemory, "guest memory exhausted");
        let desc_gpa = ram.alloc(desc_table_size(size), 4096).ok_or_else(oom)?;
        let avail_gpa = ram.alloc(avail_ring_size(size), 4096).ok_or_else(oom)?;
        let used_gpa = ram.alloc(used_ring_size(size), 4096).ok_or_else(oom)?;
        let kick = EventFd::new(EFD_NONBLOCK)?;
        let call = EventFd::new(EFD_NONBLOCK)?;
        let mut q = DriverQueue {
            ram,
            index,
            size,
            desc_gpa,
            avail_gpa,
            used_gpa,
            event_idx,
            shadow: Vec::new(),
            free: Vec::new(),
            chain_len: Vec::new(),
            in_flight: 0,
            avail_idx: 0,
            published: 0,
            kick_old: 0,
            last_used: 0,
            avail_flags: 0,
            interrupts_suppressed: false,
            kick,
            call,
            interrupts: 0,
            kicks: 0,
            strict: true,
            violations: 0,
        };
        q.reset();
        Ok(q)
    }

    /// Zeroes the rings and forgets every in-flight chain and index, as after a device reset.
    /// Interrupt and kick counters are kept.
    pub fn reset(&mut self) {
        self.ram.fill(self.desc_gpa, desc_table_size(self.size), 0);
        self.ram.fill(self.avail_gpa, avail_ring_size(self.size), 0);
        self.ram.fill(self.used_gpa, used_ring_size(self.size), 0);
        let n = self.size as usize;
        self.shadow = vec![Descriptor::default(); n];
        self.free = (0..self.size).rev().collect();
        self.chain_len = vec![0; n];
        self.in_flight = 0;
        self.avail_idx = 0;
        self.published = 0;
        self.kick_old = 0;
        self.last_used = 0;
        self.avail_flags = 0;
        self.interrupts_suppressed = false;
    }

    // ----- identity and layout -----

    /// The virtqueue index (as used in vhost-user messages).
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest-physical address of the descriptor table.
    pub fn desc_table(&self) -> u64 {
        self.desc_gpa
    }

    /// Guest-physical address of the available ring.
    pub fn avail_ring(&self) -> u64 {
        self.avail_gpa
    }

    /// Guest-physical address of the used ring.
    pub fn used_ring(&self) -> u64 {
        self.used_gpa
    }

    /// The guest memory this queue lives in.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// Whether `VIRTIO_F_EVENT_IDX` rules are used for kicks and interrupts.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Switches `EVENT_IDX` rules on or off (e.g. after renegotiating features).
    pub fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    /// The eventfd the driver writes to kick the device (sent with `SET_VRING_KICK`).
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// The eventfd the device writes to interrupt the driver (sent with `SET_VRING_CALL`).
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// Replaces the call eventfd with a new one (the caller sends it with `SET_VRING_CALL`);
    /// interrupts on the old one are counted first and no longer seen after.
    pub fn renew_call_fd(&mut self) -> io::Result<&EventFd> {
        self.poll_interrupts();
        self.call = EventFd::new(EFD_NONBLOCK)?;
        Ok(&self.call)
    }

    /// In strict mode (the default) a device protocol violation seen by the managed side (a used
    /// id that is not an in-flight head, more pending used entries than the ring holds) panics
    /// with a description. Otherwise it is counted in [`DriverQueue::violations`] and skipped.
    pub fn set_strict(&mut self, strict: bool) {
        self.strict = strict;
    }

    /// Device protocol violations seen in non-strict mode.
    pub fn violations(&self) -> u64 {
        self.violations
    }

    pub(crate) fn violation(&mut self, what: String) {
        if self.strict {
            panic!(
                "virtqueue {}: device protocol violation: {}",
                self.index, what
            );
        }
        self.violations += 1;
    }

    // ----- managed posting -----

    /// Descriptors not currently in any managed chain.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Managed chains posted and not yet returned through the used ring.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether `head` is the head of an in-flight managed chain.
    pub fn is_in_flight(&self, head: u32) -> bool {
        (head as usize) < self.chain_len.len() && self.chain_len[head as usize] != 0
    }

    /// The descriptor index the next `add_chain`/`add_indirect` will use as its head.
    pub fn peek_head(&self) -> Option<u16> {
        self.free.last().copied()
    }

    /// What the driver last wrote into descriptor `index` through the managed side.
    pub fn shadow_desc(&self, index: u16) -> Descriptor {
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

    /// Posts `segs` as one descriptor chain (in order, `NEXT`-linked, `WRITE` where asked) and
    /// puts its head on the available ring (not yet published: see [`DriverQueue::notify`]).
    /// Returns the head, or `None` if `segs` is empty or there are not enough free descriptors.
    pub fn add_chain(&mut self, segs: &[Segment]) -> Option<u16> {
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
        self.in_flight += 1;
        self.put_avail(head);
        Some(head)
    }

    /// Writes `segs` as an indirect descriptor table at `table_gpa` (16 bytes per entry, entries
    /// linked 0→1→…), posts one ring descriptor with `VRING_DESC_F_INDIRECT` pointing at it and
    /// puts it on the available ring (unpublished). Returns the head, or `None` if `segs` is
    /// empty or no descriptor is free.
    pub fn add_indirect(&mut self, table_gpa: u64, segs: &[Segment]) -> Option<u16> {
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
        self.in_flight += 1;
        self.put_avail(head);
        Some(head)
    }

    /// Entries put on the avail ring but not yet published.
    pub fn unpublished(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.published)
    }

    /// Makes every added chain visible to the device: one `Release` store of `avail.idx`.
    pub fn publish(&mut self) {
        if self.avail_idx != self.published {
            self.ram
                .atomic_u16(self.avail_gpa + 2)
                .store(self.avail_idx.to_le(), Ordering::Release);
            self.published = self.avail_idx;
        }
    }

    /// Whether the device wants a kick for what was published since the last kick decision
    /// (`vring_need_event(avail_event, new, old)` under `EVENT_IDX`, otherwise the absence of
    /// `VRING_USED_F_NO_NOTIFY`). Records the decision point: call once per batch.
    pub fn kick_needed(&mut self) -> bool {
        let new = self.published;
        let old = self.kick_old;
        self.kick_old = new;
        if new == old {
            return false;
        }
        // Order the avail.idx store before reading the device's suppression fields.
        fence(Ordering::SeqCst);
        if self.event_idx {
            vring_need_event(self.avail_event(), new, old)
        } else {
            self.used_flags() & VRING_USED_F_NO_NOTIFY == 0
        }
    }

    /// Publishes and kicks if the device asked for it. Returns whether it kicked.
    pub fn notify(&mut self) -> io::Result<bool> {
        self.publish();
        if self.kick_needed() {
            self.kick()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Kicks unconditionally (writes 1 to the kick eventfd). Everything published so far counts
    /// as notified for the next [`DriverQueue::kick_needed`] decision.
    pub fn kick(&mut self) -> io::Result<()> {
        self.kick.write(1)?;
        self.kick_old = self.published;
        self.kicks += 1;
        Ok(())
    }

    /// Kicks sent so far.
    pub fn kicks(&self) -> u64 {
        self.kicks
    }

    // ----- managed completion -----

    /// Used entries the device published that the driver has not consumed yet.
    pub fn pending_used(&mut self) -> u16 {
        let pending = self.used_idx().wrapping_sub(self.last_used);
        if pending > self.size {
            self.violation(format!(
                "used.idx {} is {} entries ahead of the driver's last_used {} (ring size {})",
                self.used_idx(),
                pending,
                self.last_used,
                self.size
            ));
            return 0;
        }
        pending
    }

    /// The `n`-th pending used element (0 = next), without consuming it.
    pub fn peek_used(&mut self, n: u16) -> Option<UsedElem> {
        if n < self.pending_used() {
            Some(self.used_elem(self.last_used.wrapping_add(n)))
        } else {
            None
        }
    }

    /// Consumes the next used element and frees its chain. Returns `None` when nothing is
    /// pending. A used id that is not an in-flight head is a violation (see `set_strict`); in
    /// non-strict mode it is still returned.
    pub fn pop_used(&mut self) -> Option<UsedElem> {
        if self.pending_used() == 0 {
            return None;
        }
        let e = self.used_elem(self.last_used);
        self.last_used = self.last_used.wrapping_add(1);
        self.release(e.id);
        Some(e)
    }

    fn release(&mut self, id: u32) {
        if !self.is_in_flight(id) {
            self.violation(format!(
                "used id {id} is not the head of an in-flight chain"
            ));
            return;
        }
        let mut i = id as u16;
        let n = std::mem::take(&mut self.chain_len[id as usize]);
        for k in 0..n {
            self.free.push(i);
            if k + 1 < n {
                i = self.shadow[i as usize].next;
            }
        }
        self.in_flight -= 1;
    }

    /// The next used index the driver will consume.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    // ----- interrupts -----

    /// Asks the device for no interrupts (`used_event` parked half the index space away under
    /// `EVENT_IDX`, `VRING_AVAIL_F_NO_INTERRUPT` otherwise) or for an interrupt on the next
    /// used entry again. Suppression is a hint: devices may still interrupt.
    pub fn set_interrupts_suppressed(&mut self, suppressed: bool) {
        self.interrupts_suppressed = suppressed;
        self.rearm_interrupts();
    }

    /// Whether interrupts are currently suppressed by the driver.
    pub fn interrupts_suppressed(&self) -> bool {
        self.interrupts_suppressed
    }

    /// Re-states the driver's interrupt wish after consuming used entries: `used_event =
    /// last_used` (or parked, when suppressed) under `EVENT_IDX`, the avail flag otherwise.
    /// Then fences and returns whether used entries are already pending, which the caller must
    /// process since no interrupt will come for them.
    pub fn rearm_interrupts(&mut self) -> bool {
        if self.event_idx {
            let ev = if self.interrupts_suppressed {
                self.last_used.wrapping_add(PARKED_USED_EVENT_DISTANCE)
            } else {
                self.last_used
            };
            self.set_used_event(ev);
        } else {
            let flags = if self.interrupts_suppressed {
                self.avail_flags | VRING_AVAIL_F_NO_INTERRUPT
            } else {
                self.avail_flags & !VRING_AVAIL_F_NO_INTERRUPT
            };
            if flags != self.avail_flags {
                self.set_avail_flags(flags);
            }
        }
        fence(Ordering::SeqCst);
        self.pending_used() != 0
    }

    /// Reads the call eventfd without blocking and adds what it held to the interrupt count.
    /// Returns the total number of interrupts seen so far.
    pub fn poll_interrupts(&mut self) -> u64 {
        if let Ok(n) = self.call.read() {
            self.interrupts += n;
        }
        self.interrupts
    }

    /// Waits up to `timeout` for the call eventfd to become readable (`poll(2)`, no sleeping),
    /// then accumulates it. Returns whether an interrupt arrived.
    pub fn wait_interrupt(&mut self, timeout: Duration) -> io::Result<bool> {
        let before = self.interrupts;
        if poll_readable(self.call.as_raw_fd(), timeout)? {
            self.poll_interrupts();
        }
        Ok(self.interrupts != before)
    }

    // ----- raw access (hostile tests) -----

    /// Writes descriptor-table entry `index` (< size) directly. Bypasses all bookkeeping.
    pub fn write_desc(&mut self, index: u16, d: Descriptor) {
        assert!(index < self.size, "descriptor index {index} out of table");
        self.ram
            .write_obj(self.desc_gpa + 16 * index as u64, d.to_le());
    }

    /// Reads descriptor-table entry `index` (< size) from memory.
    pub fn read_desc(&self, index: u16) -> Descriptor {
        assert!(index < self.size, "descriptor index {index} out of table");
        Descriptor::from_le(self.ram.read_obj(self.desc_gpa + 16 * index as u64))
    }

    /// Writes avail ring slot `slot % size` directly.
    pub fn set_avail_entry(&mut self, slot: u16, head: u16) {
        let slot = slot % self.size;
        self.ram
            .write_obj(self.avail_gpa + 4 + 2 * slot as u64, head.to_le());
    }

    /// Puts an arbitrary head (any value, even out of range) on the next avail slot without
    /// any bookkeeping; publish with [`DriverQueue::notify`] or [`DriverQueue::publish`].
    pub fn push_avail_raw(&mut self, head: u16) {
        self.put_avail(head);
    }

    /// Stores `avail.idx = idx` (`Release`) directly; later managed posts continue from `idx`.
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.ram
            .atomic_u16(self.avail_gpa + 2)
            .store(idx.to_le(), Ordering::Release);
        self.avail_idx = idx;
        self.published = idx;
    }

    /// `avail.idx` as currently in memory.
    pub fn avail_idx(&self) -> u16 {
        u16::from_le(
            self.ram
                .atomic_u16(self.avail_gpa + 2)
                .load(Ordering::Relaxed),
        )
    }

    /// Writes `avail.flags`.
    pub fn set_avail_flags(&mut self, flags: u16) {
        self.avail_flags = flags;
        self.ram
            .atomic_u16(self.avail_gpa)
            .store(flags.to_le(), Ordering::Relaxed);
    }

    /// `avail.flags` as currently in memory.
    pub fn avail_flags(&self) -> u16 {
        u16::from_le(self.ram.atomic_u16(self.avail_gpa).load(Ordering::Relaxed))
    }

    fn used_event_gpa(&self) -> u64 {
        self.avail_gpa + 4 + 2 * self.size as u64
    }

    fn avail_event_gpa(&self) -> u64 {
        self.used_gpa + 4 + 8 * self.size as u64
    }

    /// Writes `used_event` (the avail ring's trailing field).
    pub fn set_used_event(&mut self, val: u16) {
        self.ram
            .atomic_u16(self.used_event_gpa())
            .store(val.to_le(), Ordering::Relaxed);
    }

    /// `used_event` as currently in memory.
    pub fn used_event(&self) -> u16 {
        u16::from_le(
            self.ram
                .atomic_u16(self.used_event_gpa())
                .load(Ordering::Relaxed),
        )
    }

    /// `used.idx`, loaded with `Acquire` (used elements below it may then be read).
    pub fn used_idx(&self) -> u16 {
        u16::from_le(
            self.ram
                .atomic_u16(self.used_gpa + 2)
                .load(Ordering::Acquire),
        )
    }

    /// `used.flags` as currently in memory.
    pub fn used_flags(&self) -> u16 {
        u16::from_le(self.ram.atomic_u16(self.used_gpa).load(Ordering::Relaxed))
    }

    /// `avail_event` (the used ring's trailing field) as currently in memory.
    pub fn avail_event(&self) -> u16 {
        u16::from_le(
            self.ram
                .atomic_u16(self.avail_event_gpa())
                .load(Ordering::Relaxed),
        )
    }

    /// Used ring element at slot `slot % size` (load `used_idx` first to order the read).
    pub fn used_elem(&self, slot: u16) -> UsedElem {
        let gpa = self.used_gpa + 4 + 8 * (slot % self.size) as u64;
        UsedElem {
            id: u32::from_le(self.ram.read_obj::<u32>(gpa)),
            len: u32::from_le(self.ram.read_obj::<u32>(gpa + 4)),
        }
    }

    /// Moves the driver's consumption point (raw; does not free anything).
    pub fn set_last_used(&mut self, idx: u16) {
        self.last_used = idx;
    }
}

impl std::fmt::Debug for DriverQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverQueue")
            .field("index", &self.index)
            .field("size", &self.size)
            .field("desc", &format_args!("{:#x}", self.desc_gpa))
            .field("avail", &format_args!("{:#x}", self.avail_gpa))
            .field("used", &format_args!("{:#x}", self.used_gpa))
            .field("avail_idx", &self.avail_idx)
            .field("last_used", &self.last_used)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

/// `poll(2)` one fd for readability. Returns whether it is readable.
pub(crate) fn poll_readable(fd: i32, timeout: Duration) -> io::Result<bool> {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // Round sub-millisecond waits up so a tiny positive timeout still waits.
    let ms = if ms == 0 && !timeout.is_zero() { 1 } else { ms };
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r >= 0 {
            return Ok(r > 0 && pfd.revents & libc::POLLIN != 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
