//! The driver side of one virtio 1.x virtqueue, split or packed, in shared guest memory.
//!
//! [`DriverQueue`] owns a ring ([`SplitRing`] or [`PackedRing`], by [`RingKind`]) allocated in
//! [`GuestRam`], plus the queue's kick and call eventfds. It has two faces:
//!
//! * **Managed**, the same for both ring kinds: [`DriverQueue::add_chain`] /
//!   [`DriverQueue::add_indirect`] post a chain and return its head (packed: its buffer id);
//!   [`DriverQueue::pop_used`] returns one completion per chain and frees it;
//!   [`DriverQueue::notify`] publishes and kicks only when the device asked for it. With
//!   `VIRTIO_F_IN_ORDER` one used entry may stand for every chain up to the one it names (a
//!   device's batched TX completion): the older chains complete with length 0.
//! * **Raw**, for hostile tests: [`DriverQueue::write_desc`], [`DriverQueue::push_avail_raw`],
//!   ... (split) and [`DriverQueue::write_packed_desc`], [`DriverQueue::set_avail_position`],
//!   ... (packed) read and write ring memory directly, bypassing all bookkeeping; the raw face of
//!   the other ring kind panics. Raw-posted chains are unknown to the managed side: read their
//!   completions with the raw accessors, not with `pop_used`.
//!
//! Used entries are read from the ring once, in order, into a queue of completions that
//! [`DriverQueue::pop_used`] hands out; a chain is freed when its completion is popped.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::features::{VIRTIO_F_IN_ORDER, VIRTIO_F_RING_PACKED, VIRTIO_RING_F_EVENT_IDX};
use super::memory::GuestRam;
use super::packed_ring::{wrap_position, EventSuppress, PackedDescriptor, PackedRing};
use super::split_ring::{Descriptor, Segment, SplitRing, UsedElem};

/// Which virtqueue layout a queue uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RingKind {
    /// Descriptor table, avail ring, used ring (virtio 1.0).
    #[default]
    Split,
    /// One descriptor ring plus event suppression structures (`VIRTIO_F_RING_PACKED`).
    Packed,
}

/// The negotiated features that shape a queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingOptions {
    pub kind: RingKind,
    /// `VIRTIO_RING_F_EVENT_IDX` rules for kicks and interrupts.
    pub event_idx: bool,
    /// `VIRTIO_F_IN_ORDER`: the device completes chains in the order they were made available.
    pub in_order: bool,
}

impl RingOptions {
    /// What the acked feature bits `features` ask of a queue.
    pub fn from_features(features: u64) -> RingOptions {
        RingOptions {
            kind: if features & VIRTIO_F_RING_PACKED != 0 {
                RingKind::Packed
            } else {
                RingKind::Split
            },
            event_idx: features & VIRTIO_RING_F_EVENT_IDX != 0,
            in_order: features & VIRTIO_F_IN_ORDER != 0,
        }
    }
}

enum Ring {
    Split(SplitRing),
    Packed(PackedRing),
}

/// Dispatches one call to whichever ring `$self.ring` holds.
macro_rules! ring {
    ($self:expr, $r:ident => $e:expr) => {
        match &$self.ring {
            Ring::Split($r) => $e,
            Ring::Packed($r) => $e,
        }
    };
    (mut $self:expr, $r:ident => $e:expr) => {
        match &mut $self.ring {
            Ring::Split($r) => $e,
            Ring::Packed($r) => $e,
        }
    };
}

/// The driver side of one virtqueue. See the module documentation.
pub struct DriverQueue {
    ram: Arc<GuestRam>,
    index: u16,
    size: u16,
    event_idx: bool,
    in_order: bool,
    ring: Ring,

    in_flight: usize,
    /// Completions read from the ring and not yet popped, oldest first.
    ready: VecDeque<UsedElem>,
    /// `IN_ORDER`: heads of in-flight chains no used entry has covered yet, oldest first.
    order: VecDeque<u16>,
    interrupts_suppressed: bool,

    kick: EventFd,
    call: EventFd,
    interrupts: u64,
    kicks: u64,

    strict: bool,
    violations: u64,
}

impl DriverQueue {
    /// A split queue of `size` entries without `IN_ORDER`: see [`DriverQueue::with_options`].
    pub fn new(
        ram: Arc<GuestRam>,
        index: u16,
        size: u16,
        event_idx: bool,
    ) -> io::Result<DriverQueue> {
        let opts = RingOptions {
            event_idx,
            ..RingOptions::default()
        };
        DriverQueue::with_options(ram, index, size, opts)
    }

    /// Allocates the ring of a queue of `size` entries in `ram` (page-aligned, zeroed) and
    /// creates non-blocking kick and call eventfds. `index` is the virtqueue index used in
    /// vhost-user messages (RX of pair p = 2p, TX = 2p+1).
    pub fn with_options(
        ram: Arc<GuestRam>,
        index: u16,
        size: u16,
        opts: RingOptions,
    ) -> io::Result<DriverQueue> {
        if size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "queue size must not be 0",
            ));
        }
        let ring = match opts.kind {
            RingKind::Split => Ring::Split(SplitRing::new(ram.clone(), size)?),
            RingKind::Packed if size > 1 << 15 => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a packed queue has at most 32768 entries",
                ))
            }
            RingKind::Packed => Ring::Packed(PackedRing::new(ram.clone(), size)?),
        };
        Ok(DriverQueue {
            ram,
            index,
            size,
            event_idx: opts.event_idx,
            in_order: opts.in_order,
            ring,
            in_flight: 0,
            ready: VecDeque::new(),
            order: VecDeque::new(),
            interrupts_suppressed: false,
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
            interrupts: 0,
            kicks: 0,
            strict: true,
            violations: 0,
        })
    }

    /// Zeroes the ring and forgets every in-flight chain and position, as after a device reset.
    /// Interrupt and kick counters are kept.
    pub fn reset(&mut self) {
        ring!(mut self, r => r.reset());
        self.in_flight = 0;
        self.ready.clear();
        self.order.clear();
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

    /// Split or packed.
    pub fn ring_kind(&self) -> RingKind {
        match self.ring {
            Ring::Split(_) => RingKind::Split,
            Ring::Packed(_) => RingKind::Packed,
        }
    }

    /// Guest-physical address of the descriptor area: the descriptor table (split) or ring
    /// (packed). `SET_VRING_ADDR`'s `desc_user_addr`.
    pub fn desc_table(&self) -> u64 {
        match &self.ring {
            Ring::Split(r) => r.desc_table(),
            Ring::Packed(r) => r.ring(),
        }
    }

    /// Guest-physical address of the driver area: the avail ring (split) or the driver event
    /// suppression structure (packed). `SET_VRING_ADDR`'s `avail_user_addr`.
    pub fn driver_area(&self) -> u64 {
        match &self.ring {
            Ring::Split(r) => r.avail_ring(),
            Ring::Packed(r) => r.driver_event_area(),
        }
    }

    /// Guest-physical address of the device area: the used ring (split) or the device event
    /// suppression structure (packed). `SET_VRING_ADDR`'s `used_user_addr`.
    pub fn device_area(&self) -> u64 {
        match &self.ring {
            Ring::Split(r) => r.used_ring(),
            Ring::Packed(r) => r.device_event_area(),
        }
    }

    /// What `SET_VRING_BASE` carries for a fresh or reset queue: avail index 0 (split), or slot
    /// 0 with wrap counter 1 (packed: bits 0-14 slot, bit 15 wrap counter, as DPDK's
    /// `virtio_user` sends it).
    pub fn initial_vring_base(&self) -> u16 {
        match self.ring {
            Ring::Split(_) => 0,
            Ring::Packed(_) => wrap_position(0, true),
        }
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

    /// Whether completions are read under `VIRTIO_F_IN_ORDER` rules.
    pub fn in_order(&self) -> bool {
        self.in_order
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
    /// id that is not an in-flight chain, more pending used entries than the ring holds) panics
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

    /// Descriptors (packed: ring slots) not currently in any managed chain.
    pub fn free_descriptors(&self) -> usize {
        ring!(self, r => r.free_descriptors())
    }

    /// Managed chains posted and not yet returned by [`DriverQueue::pop_used`].
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether `head` is the head (packed: buffer id) of an in-flight managed chain.
    pub fn is_in_flight(&self, head: u32) -> bool {
        ring!(self, r => r.is_in_flight(head))
    }

    /// The head (packed: buffer id) the next `add_chain`/`add_indirect` will use.
    pub fn peek_head(&self) -> Option<u16> {
        ring!(self, r => r.peek_head())
    }

    /// Posts `segs` as one descriptor chain (in order, `NEXT`-linked, `WRITE` where asked) and
    /// makes it available, not yet published: see [`DriverQueue::notify`]. Returns the head
    /// (packed: buffer id), or `None` if `segs` is empty or there are not enough free
    /// descriptors.
    pub fn add_chain(&mut self, segs: &[Segment]) -> Option<u16> {
        let head = ring!(mut self, r => r.add_chain(segs))?;
        self.added(head);
        Some(head)
    }

    /// Writes `segs` as an indirect descriptor table at `table_gpa` (16 bytes per entry; split:
    /// linked 0→1→…, packed: `len / 16` entries, no `NEXT`), posts one ring descriptor with
    /// `VRING_DESC_F_INDIRECT` pointing at it and makes it available (unpublished). Returns the
    /// head, or `None` if `segs` is empty or no descriptor is free.
    pub fn add_indirect(&mut self, table_gpa: u64, segs: &[Segment]) -> Option<u16> {
        let head = ring!(mut self, r => r.add_indirect(table_gpa, segs))?;
        self.added(head);
        Some(head)
    }

    fn added(&mut self, head: u16) {
        self.in_flight += 1;
        if self.in_order {
            self.order.push_back(head);
        }
    }

    /// Chains added but not yet published.
    pub fn unpublished(&self) -> u16 {
        ring!(self, r => r.unpublished())
    }

    /// Makes every added chain visible to the device: one `Release` store of `avail.idx`
    /// (split), or the chains' head flags, the first chain's last (packed).
    pub fn publish(&mut self) {
        ring!(mut self, r => r.publish())
    }

    /// Whether the device wants a kick for what was published since the last kick decision.
    /// Split: `vring_need_event(avail_event, new, old)` under `EVENT_IDX`, otherwise the absence
    /// of `VRING_USED_F_NO_NOTIFY`. Packed: the device event suppression structure (ENABLE,
    /// DISABLE, or DESC within the published slots). Records the decision point: call once per
    /// batch.
    pub fn kick_needed(&mut self) -> bool {
        match &mut self.ring {
            Ring::Split(r) => r.kick_needed(self.event_idx),
            Ring::Packed(r) => r.kick_needed(),
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
        ring!(mut self, r => r.mark_kicked());
        self.kicks += 1;
        Ok(())
    }

    /// Kicks sent so far.
    pub fn kicks(&self) -> u64 {
        self.kicks
    }

    // ----- managed completion -----

    /// Reads every used entry the device has written into `ready`.
    fn collect_used(&mut self) {
        // No more completions than chains can be in flight: a runaway device stops here.
        while self.ready.len() < self.size as usize {
            // Split: also how many entries `used.idx` published from there.
            let entry = match &self.ring {
                Ring::Split(r) => r.next_used().map(|e| e.map(|(e, n)| (e, Some(n)))),
                Ring::Packed(r) => Ok(r.next_used().map(|e| (e, None))),
            };
            let (e, published) = match entry {
                Ok(Some(entry)) => entry,
                Ok(None) => return,
                Err(what) => return self.violation(what),
            };
            // Chains the entry completes: its own, and with IN_ORDER every older one.
            let covered = if self.in_order {
                self.order.iter().position(|&h| h as u32 == e.id)
            } else {
                None
            };
            let Some(k) = covered else {
                // Not covering anything it does not name; `pop_used` reports a bogus id.
                let slots = match &self.ring {
                    Ring::Split(_) => 1,
                    Ring::Packed(r) => r.chain_slots(e.id).max(1),
                };
                self.step_used(1, slots);
                self.ready.push_back(e);
                continue;
            };
            let mut slots = 0;
            for head in self.order.drain(..=k) {
                slots += match &self.ring {
                    Ring::Split(_) => 0,
                    Ring::Packed(r) => r.chain_slots(head as u32),
                };
                self.ready.push_back(UsedElem {
                    id: head as u32,
                    len: 0,
                });
            }
            self.ready.back_mut().expect("covers its own chain").len = e.len;
            let mut chains = k as u16 + 1;
            if let Some(published) = published.filter(|&n| n < chains) {
                self.violation(format!(
                    "used entry for head {} stands for {chains} chains but used.idx moved by \
                     {published}",
                    e.id
                ));
                chains = published;
            }
            self.step_used(chains, slots);
        }
    }

    /// Moves the ring's used position past one entry standing for `chains` chains (split) that
    /// took `slots` ring slots (packed).
    fn step_used(&mut self, chains: u16, slots: u16) {
        match &mut self.ring {
            Ring::Split(r) => r.consume(chains),
            Ring::Packed(r) => r.consume(slots),
        }
    }

    /// Completions the device published that the driver has not consumed yet (one per chain,
    /// also where an `IN_ORDER` entry stands for several).
    pub fn pending_used(&mut self) -> u16 {
        self.collect_used();
        self.ready.len() as u16
    }

    /// The `n`-th pending completion (0 = next), without consuming it.
    pub fn peek_used(&mut self, n: u16) -> Option<UsedElem> {
        self.collect_used();
        self.ready.get(n as usize).copied()
    }

    /// Consumes the next completion and frees its chain. Returns `None` when nothing is
    /// pending. A used id that is not an in-flight chain is a violation (see `set_strict`); in
    /// non-strict mode it is still returned.
    pub fn pop_used(&mut self) -> Option<UsedElem> {
        self.collect_used();
        let e = self.ready.pop_front()?;
        if ring!(mut self, r => r.release(e.id)) {
            self.in_flight -= 1;
        } else {
            self.violation(format!(
                "used id {} is not the head of an in-flight chain",
                e.id
            ));
        }
        Some(e)
    }

    // ----- interrupts -----

    /// Asks the device for no interrupts or for an interrupt on the next used entry again.
    /// Split: `used_event` parked half the index space away under `EVENT_IDX`,
    /// `VRING_AVAIL_F_NO_INTERRUPT` otherwise. Packed: the driver event suppression structure
    /// set to DISABLE. Suppression is a hint: devices may still interrupt.
    pub fn set_interrupts_suppressed(&mut self, suppressed: bool) {
        self.interrupts_suppressed = suppressed;
        self.rearm_interrupts();
    }

    /// Whether interrupts are currently suppressed by the driver.
    pub fn interrupts_suppressed(&self) -> bool {
        self.interrupts_suppressed
    }

    /// Re-states the driver's interrupt wish after consuming used entries. Split: `used_event =
    /// last_used` (or parked, when suppressed) under `EVENT_IDX`, the avail flag otherwise.
    /// Packed: DISABLE when suppressed, DESC at the used position under `EVENT_IDX`, ENABLE
    /// otherwise. Then fences and returns whether completions are already pending, which the
    /// caller must process since no interrupt will come for them.
    pub fn rearm_interrupts(&mut self) -> bool {
        let (event_idx, suppressed) = (self.event_idx, self.interrupts_suppressed);
        ring!(mut self, r => r.state_interrupt_wish(event_idx, suppressed));
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

    // ----- raw access, split ring (hostile tests) -----

    fn split(&self, what: &str) -> &SplitRing {
        match &self.ring {
            Ring::Split(r) => r,
            Ring::Packed(_) => panic!(
                "virtqueue {}: {what} is split-ring access, but the queue is packed",
                self.index
            ),
        }
    }

    fn split_mut(&mut self, what: &str) -> &mut SplitRing {
        let index = self.index;
        match &mut self.ring {
            Ring::Split(r) => r,
            Ring::Packed(_) => {
                panic!("virtqueue {index}: {what} is split-ring access, but the queue is packed")
            }
        }
    }

    /// Guest-physical address of the available ring (split only; see
    /// [`DriverQueue::driver_area`]).
    pub fn avail_ring(&self) -> u64 {
        self.split("avail_ring").avail_ring()
    }

    /// Guest-physical address of the used ring (split only; see [`DriverQueue::device_area`]).
    pub fn used_ring(&self) -> u64 {
        self.split("used_ring").used_ring()
    }

    /// What the driver last wrote into descriptor `index` through the managed side (split).
    pub fn shadow_desc(&self, index: u16) -> Descriptor {
        self.split("shadow_desc").shadow_desc(index)
    }

    /// Writes descriptor-table entry `index` (< size) directly. Bypasses all bookkeeping.
    pub fn write_desc(&mut self, index: u16, d: Descriptor) {
        self.split_mut("write_desc").write_desc(index, d)
    }

    /// Reads descriptor-table entry `index` (< size) from memory.
    pub fn read_desc(&self, index: u16) -> Descriptor {
        self.split("read_desc").read_desc(index)
    }

    /// Writes avail ring slot `slot % size` directly.
    pub fn set_avail_entry(&mut self, slot: u16, head: u16) {
        self.split_mut("set_avail_entry")
            .set_avail_entry(slot, head)
    }

    /// Puts an arbitrary head (any value, even out of range) on the next avail slot without
    /// any bookkeeping; publish with [`DriverQueue::notify`] or [`DriverQueue::publish`].
    pub fn push_avail_raw(&mut self, head: u16) {
        self.split_mut("push_avail_raw").push_avail_raw(head)
    }

    /// Stores `avail.idx = idx` (`Release`) directly; later managed posts continue from `idx`.
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.split_mut("set_avail_idx").set_avail_idx(idx)
    }

    /// `avail.idx` as currently in memory.
    pub fn avail_idx(&self) -> u16 {
        self.split("avail_idx").avail_idx()
    }

    /// Writes `avail.flags`.
    pub fn set_avail_flags(&mut self, flags: u16) {
        self.split_mut("set_avail_flags").set_avail_flags(flags)
    }

    /// `avail.flags` as currently in memory.
    pub fn avail_flags(&self) -> u16 {
        self.split("avail_flags").avail_flags()
    }

    /// Writes `used_event` (the avail ring's trailing field).
    pub fn set_used_event(&mut self, val: u16) {
        self.split_mut("set_used_event").set_used_event(val)
    }

    /// `used_event` as currently in memory.
    pub fn used_event(&self) -> u16 {
        self.split("used_event").used_event()
    }

    /// `used.idx`, loaded with `Acquire` (used elements below it may then be read).
    pub fn used_idx(&self) -> u16 {
        self.split("used_idx").used_idx()
    }

    /// `used.flags` as currently in memory.
    pub fn used_flags(&self) -> u16 {
        self.split("used_flags").used_flags()
    }

    /// `avail_event` (the used ring's trailing field) as currently in memory.
    pub fn avail_event(&self) -> u16 {
        self.split("avail_event").avail_event()
    }

    /// Used ring element at slot `slot % size` (load `used_idx` first to order the read).
    pub fn used_elem(&self, slot: u16) -> UsedElem {
        self.split("used_elem").used_elem(slot)
    }

    /// The next used index the driver will read from the ring.
    pub fn last_used(&self) -> u16 {
        self.split("last_used").last_used()
    }

    /// Moves the driver's reading point in the used ring (raw; frees nothing, and completions
    /// already read stay pending).
    pub fn set_last_used(&mut self, idx: u16) {
        self.split_mut("set_last_used").set_last_used(idx)
    }

    // ----- raw access, packed ring (hostile tests) -----

    fn packed(&self, what: &str) -> &PackedRing {
        match &self.ring {
            Ring::Packed(r) => r,
            Ring::Split(_) => panic!(
                "virtqueue {}: {what} is packed-ring access, but the queue is split",
                self.index
            ),
        }
    }

    fn packed_mut(&mut self, what: &str) -> &mut PackedRing {
        let index = self.index;
        match &mut self.ring {
            Ring::Packed(r) => r,
            Ring::Split(_) => {
                panic!("virtqueue {index}: {what} is packed-ring access, but the queue is split")
            }
        }
    }

    /// Writes the descriptor at ring slot `slot` (< size) with any fields, `flags` last
    /// (`Release`): with AVAIL/USED bits for the current lap ([`packed_avail_flags`](
    /// crate::packed_avail_flags)) the device may take it at once. Bypasses all bookkeeping.
    pub fn write_packed_desc(&mut self, slot: u16, addr: u64, len: u32, id: u16, flags: u16) {
        let d = PackedDescriptor {
            addr,
            len,
            id,
            flags,
        };
        self.packed_mut("write_packed_desc").write_desc(slot, d)
    }

    /// Reads the descriptor at ring slot `slot` (< size), flags first (`Acquire`).
    pub fn read_packed_desc(&self, slot: u16) -> PackedDescriptor {
        self.packed("read_packed_desc").read_desc(slot)
    }

    /// The driver event suppression structure as currently in memory.
    pub fn driver_event(&self) -> EventSuppress {
        self.packed("driver_event").driver_event()
    }

    /// Writes the driver event suppression structure (`flags` last); managed re-arming starts
    /// from these flags.
    pub fn set_driver_event(&mut self, ev: EventSuppress) {
        self.packed_mut("set_driver_event").set_driver_event(ev)
    }

    /// The device event suppression structure as currently in memory (one 4-byte load).
    pub fn device_event(&self) -> EventSuppress {
        self.packed("device_event").device_event()
    }

    /// Writes the device event suppression structure (for tests that play the device).
    pub fn set_device_event(&mut self, ev: EventSuppress) {
        self.packed_mut("set_device_event").set_device_event(ev)
    }

    /// The slot and avail wrap counter the next managed chain will start at.
    pub fn avail_position(&self) -> (u16, bool) {
        self.packed("avail_position").avail_position()
    }

    /// Moves where managed chains are posted (e.g. past raw-posted slots), as published; frees
    /// and takes nothing.
    pub fn set_avail_position(&mut self, slot: u16, wrap: bool) {
        self.packed_mut("set_avail_position")
            .set_avail_position(slot, wrap)
    }

    /// The slot and used wrap counter where the driver expects the next used descriptor.
    pub fn used_position(&self) -> (u16, bool) {
        self.packed("used_position").used_position()
    }

    /// Moves where the driver reads the next used descriptor (raw; frees nothing, and
    /// completions already read stay pending).
    pub fn set_used_position(&mut self, slot: u16, wrap: bool) {
        self.packed_mut("set_used_position")
            .set_used_position(slot, wrap)
    }
}

impl std::fmt::Debug for DriverQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("DriverQueue");
        d.field("index", &self.index)
            .field("size", &self.size)
            .field("kind", &self.ring_kind())
            .field("in_order", &self.in_order)
            .field("desc", &format_args!("{:#x}", self.desc_table()))
            .field("driver", &format_args!("{:#x}", self.driver_area()))
            .field("device", &format_args!("{:#x}", self.device_area()));
        match &self.ring {
            Ring::Split(r) => d
                .field("avail_idx", &r.avail_idx())
                .field("last_used", &r.last_used()),
            Ring::Packed(r) => d
                .field("avail_position", &r.avail_position())
                .field("used_position", &r.used_position()),
        };
        d.field("in_flight", &self.in_flight)
            .field("ready", &self.ready.len())
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
