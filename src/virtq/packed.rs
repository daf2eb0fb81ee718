//! The packed virtqueue (virtio 1.1+, 2.8): vnic's own, as virtio-queue has none.
//!
//! Layout, all little-endian, in guest memory:
//! - descriptor ring: `size` x 16 bytes `{ addr: u64, len: u32, id: u16, flags: u16 }`, where
//!   the driver makes descriptors available and the device writes used ones back in place;
//! - driver event suppression (the "avail" address of `SET_VRING_ADDR`): `{ off_wrap, flags }`,
//!   how the driver wants interrupts;
//! - device event suppression (the "used" address): the same, how vnic wants kicks.
//!
//! A descriptor at slot `i` is available when its AVAIL bit equals the driver's wrap counter
//! for that lap and its USED bit does not; a used descriptor has both equal to the device's.
//! Both counters start at 1 and flip each time their position passes the ring's end. A chain
//! of n descriptors takes n consecutive slots (its buffer id is in the last one); completing
//! it writes one used descriptor in the slot where it began and moves the used position on by
//! n, so positions here are slots, and a [`Head`] carries its slot count.
//!
//! What makes it cheap, as for the split ring: ring parts translated once per setup, used
//! descriptors written as chains complete but the first one's flags (what the driver polls)
//! stored once per burst ([`PackedRing::publish`]), the interrupt decided once per burst. What
//! keeps it safe: each descriptor read once and checked, every buffer checked against guest
//! memory, a chain no longer than the ring, a bad chain failing alone and still completed
//! with the slots it took, so the ring never goes out of step with the driver.

use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_PACKED_DESC_F_AVAIL,
    VRING_PACKED_DESC_F_USED, VRING_PACKED_EVENT_FLAG_DESC, VRING_PACKED_EVENT_FLAG_DISABLE,
    VRING_PACKED_EVENT_FLAG_ENABLE, VRING_PACKED_EVENT_F_WRAP_CTR,
};

use super::memory::{prefetch_line, read_desc_words, GuestRegions, Segment};
use super::split::valid_size;
use super::{
    map_part, Access, AvailMark, BadChain, ChainError, GuestMem, Head, PoppedChain, RingConfig,
    RingError,
};

const AVAIL: u16 = 1 << VRING_PACKED_DESC_F_AVAIL;
const USED: u16 = 1 << VRING_PACKED_DESC_F_USED;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
const DESC_SIZE: u64 = 16;
const EVENT_ENABLE: u16 = VRING_PACKED_EVENT_FLAG_ENABLE as u16;
const EVENT_DISABLE: u16 = VRING_PACKED_EVENT_FLAG_DISABLE as u16;
const EVENT_DESC: u16 = VRING_PACKED_EVENT_FLAG_DESC as u16;
const WRAP_BIT: u16 = 1 << VRING_PACKED_EVENT_F_WRAP_CTR;

/// A descriptor as the driver wrote it (`struct pvirtq_desc`).
#[derive(Clone, Copy, Debug)]
struct Desc {
    addr: u64,
    len: u32,
    id: u16,
    flags: u16,
}

/// A ring position: a slot and the wrap counter of its lap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pos {
    slot: u16,
    wrap: bool,
}

impl Pos {
    const START: Pos = Pos {
        slot: 0,
        wrap: true,
    };

    /// As `GET_VRING_BASE` / `SET_VRING_BASE` carry it: bits 0-14 the slot, bit 15 the wrap
    /// counter (QEMU and DPDK alike).
    fn encode(self) -> u16 {
        self.slot | if self.wrap { WRAP_BIT } else { 0 }
    }

    fn decode(v: u16) -> Pos {
        Pos {
            slot: v & !WRAP_BIT,
            wrap: v & WRAP_BIT != 0,
        }
    }

    /// `n` slots on (n <= size).
    #[inline]
    fn advance(self, n: u16, size: u16) -> Pos {
        let s = self.slot as u32 + n as u32;
        if s >= size as u32 {
            Pos {
                slot: (s - size as u32) as u16,
                wrap: !self.wrap,
            }
        } else {
            Pos {
                slot: s as u16,
                wrap: self.wrap,
            }
        }
    }

    /// The position counted over two laps, `[0, 2 * size)`: what event offsets are compared
    /// in (a lap's wrap counter tells the two laps apart).
    fn linear(self, size: u16) -> u32 {
        self.slot as u32 + if self.wrap { 0 } else { size as u32 }
    }
}

/// Whether descriptor flags `flags` mark it available in a lap with driver wrap counter `wrap`.
#[inline]
fn is_avail(flags: u16, wrap: bool) -> bool {
    (flags & AVAIL != 0) == wrap && (flags & USED != 0) != wrap
}

/// The flags of a used descriptor written in a lap with device wrap counter `wrap`.
#[inline]
fn used_flags(wrap: bool) -> u16 {
    if wrap {
        AVAIL | USED
    } else {
        0
    }
}

/// One packed ring, as the device side drives it.
pub struct PackedRing {
    config: RingConfig,
    regions: Arc<GuestRegions>,
    desc: *mut u8,
    /// Driver event suppression: `off_wrap` at +0, `flags` at +2 (u16 each).
    driver_event: *const u16,
    /// Device event suppression, written by vnic.
    device_event: *mut u16,
    /// What vnic last wrote there (flags, off_wrap): stored again only when it changes, as the
    /// driver reads that line before every kick and a store per pass would take it away.
    device_event_now: Option<(u16, u16)>,
    next_avail: Pos,
    /// Where `pop` last found no descriptor available, until a chain is popped there: what
    /// `arm_kicks` waits for (None: the avail position).
    exhausted_at: Option<Pos>,
    /// A chain that never ended was found (its NEXT flags ran past a ring's worth of
    /// descriptors): the ring is not followed until the frontend sets it up again.
    broken: bool,
    next_used: Pos,
    /// The used position as last published; the first used descriptor after it has had
    /// everything but its flags written.
    published: Pos,
    /// Chains completed since `published`.
    unpublished: u16,
    /// The used descriptors of the burst (slot position, id, length), written at `publish`
    /// (as DPDK's shadow used ring): until then nothing of the burst is in the ring, so a
    /// daemon killed in the middle of a burst leaves the ring as it was before it (see
    /// `scan_position`). With `batch_used` only the burst's last chain is kept.
    shadow: Vec<(Pos, u16, u32)>,
    /// The used position at the last interrupt decision.
    checked: Pos,
    polling: bool,
}

// SAFETY: as `SplitRing`: pointers into guest mappings kept alive by `regions`, one thread at a
// time.
unsafe impl Send for PackedRing {}

impl PackedRing {
    /// Maps a ring configured as `config` in `regions` at position `at` (as `SET_VRING_BASE`
    /// carries it). Completion is in order and nothing is left in flight between passes, so
    /// the used position starts where the avail position does.
    pub fn new(config: RingConfig, regions: Arc<GuestRegions>, at: u16) -> Result<Self, RingError> {
        if !valid_size(config.size) {
            return Err(RingError::BadSize(config.size));
        }
        let map = |gpa, len, align| map_part(&regions, gpa, len, align);
        let desc = map(config.desc_table, DESC_SIZE * config.size as u64, 16)?;
        let driver_event = map(config.avail_ring, 4, 4)? as *const u16;
        let device_event = map(config.used_ring, 4, 4)? as *mut u16;
        let mut ring = PackedRing {
            config,
            regions,
            desc,
            driver_event,
            device_event,
            device_event_now: None,
            next_avail: Pos::START,
            exhausted_at: None,
            broken: false,
            next_used: Pos::START,
            published: Pos::START,
            unpublished: 0,
            shadow: Vec::with_capacity(64),
            checked: Pos::START,
            polling: false,
        };
        ring.reset_position(at);
        Ok(ring)
    }

    pub fn config(&self) -> RingConfig {
        self.config
    }

    pub fn regions(&self) -> &Arc<GuestRegions> {
        &self.regions
    }

    pub fn is_of(&self, mem: &GuestMem) -> bool {
        self.regions.is_of(mem)
    }

    fn size(&self) -> u16 {
        self.config.size
    }

    /// The avail position, encoded as `GET_VRING_BASE` answers it.
    pub fn position(&self) -> u16 {
        self.next_avail.encode()
    }

    /// Takes over a position set from outside (`SET_VRING_BASE`, encoded); a slot beyond the
    /// ring is taken modulo its size.
    pub fn reset_position(&mut self, at: u16) {
        let mut p = Pos::decode(at);
        p.slot %= self.size();
        self.next_avail = p;
        self.exhausted_at = None;
        self.broken = false;
        self.next_used = p;
        self.published = p;
        self.unpublished = 0;
        self.shadow.clear();
        self.checked = p;
    }

    #[inline]
    fn desc_flags(&self, slot: u16) -> &AtomicU16 {
        // SAFETY: slot < size: inside the mapped ring; 2-aligned (the ring is 16-aligned).
        unsafe { AtomicU16::from_ptr(self.desc.add(16 * slot as usize + 14) as *mut u16) }
    }

    /// Descriptor `index` of `table` (the ring, or an indirect table).
    #[inline]
    fn read_desc(table: *const u8, index: u16) -> Desc {
        // SAFETY: the caller checked `index` against the table's length.
        let (lo, hi) = unsafe { read_desc_words(table.add(16 * index as usize)) };
        Desc {
            addr: lo,
            len: hi as u32,
            id: (hi >> 32) as u16,
            flags: (hi >> 48) as u16,
        }
    }

    /// The descriptor at `p` if the driver made it available (flags read with Acquire: what
    /// the driver wrote before them is visible).
    #[inline]
    fn avail_desc(&self, p: Pos) -> Option<Desc> {
        let flags = u16::from_le(self.desc_flags(p.slot).load(Ordering::Acquire));
        if !is_avail(flags, p.wrap) {
            return None;
        }
        let mut d = Self::read_desc(self.desc, p.slot);
        // The flags that were checked, not a second read of them.
        d.flags = flags;
        Some(d)
    }

    /// Whether a chain is available at the avail position (a hint without the vring lock).
    pub fn has_available(&self) -> bool {
        !self.broken && self.avail_desc(self.next_avail).is_some()
    }

    /// Pops the next available chain, as [`super::SplitRing::pop`] does. The error for a chain
    /// that never ends (`EndlessChain`, no head to complete) comes once; the ring then gives
    /// nothing until it is set up again.
    #[inline(always)]
    pub fn pop(
        &mut self,
        access: Access,
        segs: &mut Vec<Segment>,
    ) -> Option<Result<PoppedChain, BadChain>> {
        if self.broken {
            return None;
        }
        let Some(d) = self.avail_desc(self.next_avail) else {
            self.exhausted_at = Some(self.next_avail);
            return None;
        };
        if self.exhausted_at == Some(self.next_avail) {
            self.exhausted_at = None;
        }
        let want = match access {
            Access::Write => WRITE,
            Access::Read => 0,
        };
        let mark = segs.len();
        // The usual chain, one buffer of the right kind inside one region: straight through.
        if d.flags & (INDIRECT | NEXT | WRITE) == want && d.len != 0 {
            if let Some(host) = self.regions.host_range(d.addr, d.len as u64) {
                segs.push(Segment { host, len: d.len });
                self.next_avail = self.next_avail.advance(1, self.size());
                return Some(Ok(PoppedChain {
                    head: Head { id: d.id, slots: 1 },
                    segs: (mark, mark + 1),
                    bytes: d.len,
                }));
            }
        }
        Some(self.pop_chain(d, want, segs, mark))
    }

    /// The rest of `pop`: the chain whose first descriptor is `first`. Its descriptors are
    /// followed to its end even when one is bad, so that the chain is completed with the slots
    /// it took.
    #[inline(never)]
    fn pop_chain(
        &mut self,
        first: Desc,
        want: u16,
        segs: &mut Vec<Segment>,
        mark: usize,
    ) -> Result<PoppedChain, BadChain> {
        let size = self.size();
        let mut d = first;
        let mut at = self.next_avail;
        let mut slots: u16 = 1;
        let mut total: u32 = 0;
        let mut error = None;
        loop {
            if error.is_none() {
                let r = if d.flags & INDIRECT != 0 {
                    if d.flags & NEXT != 0 || slots > 1 {
                        // An indirect table is a chain of its own (2.8.8).
                        Err(ChainError::BadIndirect)
                    } else {
                        self.walk_indirect(d, want, segs)
                    }
                } else if d.flags & WRITE != want {
                    Err(ChainError::WrongDirection)
                } else if !self.regions.push_segments(d.addr, d.len, segs) {
                    Err(ChainError::OutsideMemory)
                } else {
                    Ok(d.len)
                };
                match r.and_then(|n| total.checked_add(n).ok_or(ChainError::TooLong)) {
                    Ok(t) => total = t,
                    Err(e) => error = Some(e),
                }
            }
            if d.flags & NEXT == 0 {
                break;
            }
            if slots == size {
                // A ring's worth of descriptors, every one saying "more": no end to complete.
                self.broken = true;
                segs.truncate(mark);
                let error = ChainError::EndlessChain;
                return Err(BadChain { head: None, error });
            }
            at = at.advance(1, size);
            slots += 1;
            d = Self::read_desc(self.desc, at.slot);
        }
        // The buffer id is the last descriptor's (2.8.6).
        let head = Head { id: d.id, slots };
        self.next_avail = self.next_avail.advance(slots, size);
        match error {
            None => Ok(PoppedChain {
                head,
                segs: (mark, segs.len()),
                bytes: total,
            }),
            Some(error) => {
                segs.truncate(mark);
                Err(BadChain {
                    head: Some(head),
                    error,
                })
            }
        }
    }

    /// The buffers of an indirect table: `len / 16` descriptors, in order (only WRITE means
    /// anything in them, 2.8.8). Returns their total length.
    fn walk_indirect(
        &self,
        d: Desc,
        want: u16,
        segs: &mut Vec<Segment>,
    ) -> Result<u32, ChainError> {
        if d.len == 0
            || !(d.len as u64).is_multiple_of(DESC_SIZE)
            || d.len as u64 / DESC_SIZE > 65535
        {
            return Err(ChainError::BadIndirect);
        }
        let table = self
            .regions
            .host_range(d.addr, d.len as u64)
            .ok_or(ChainError::BadIndirect)?;
        let mut total: u32 = 0;
        for i in 0..(d.len as u64 / DESC_SIZE) as u16 {
            let e = Self::read_desc(table, i);
            if e.flags & INDIRECT != 0 {
                return Err(ChainError::NestedIndirect);
            }
            if e.flags & WRITE != want {
                return Err(ChainError::WrongDirection);
            }
            total = total.checked_add(e.len).ok_or(ChainError::TooLong)?;
            if !self.regions.push_segments(e.addr, e.len, segs) {
                return Err(ChainError::OutsideMemory);
            }
        }
        Ok(total)
    }

    /// Starts loading the buffer of the descriptor `ahead` slots past the avail position, if
    /// it is available (a hint, as for the split ring: nothing is popped). Only when that
    /// descriptor shares its cache line with the one just popped (four to a line): one on the
    /// next line would be a load to wait for, the miss the hint is there to hide, so that line
    /// is only asked for.
    #[inline]
    pub fn prefetch(&self, ahead: u16) {
        let size = self.size();
        if self.broken || ahead >= size {
            return;
        }
        let p = self.next_avail.advance(ahead, size);
        let last = (self.next_avail.slot + size - 1) % size;
        if p.slot / 4 != last / 4 {
            // SAFETY: p.slot < size: inside the mapped ring (a hint never faults anyway).
            prefetch_line(unsafe { self.desc.add(16 * p.slot as usize) });
            return;
        }
        if let Some(d) = self.avail_desc(p) {
            if let Some(host) = self.regions.host_range(d.addr, 1) {
                prefetch_line(host);
            }
        }
    }

    pub fn mark(&self) -> AvailMark {
        AvailMark {
            next: self.next_avail.slot,
            wrap: self.next_avail.wrap,
        }
    }

    /// Puts back every chain popped since `mark` (none completed).
    pub fn rewind(&mut self, mark: AvailMark) {
        self.next_avail = Pos {
            slot: mark.next,
            wrap: mark.wrap,
        };
    }

    /// Writes a used descriptor's id and length at `p` (not its flags).
    #[inline]
    fn write_used(&self, p: Pos, id: u16, len: u32) {
        // SAFETY: p.slot < size: inside the mapped ring, 16-aligned; the 6 bytes from +8 are
        // len and id. The address stays as the driver wrote it (the device leaves it).
        unsafe {
            let at = self.desc.add(16 * p.slot as usize + 8);
            std::ptr::write_volatile(at as *mut u32, len.to_le());
            std::ptr::write_volatile(at.add(4) as *mut u16, id.to_le());
        }
    }

    /// Completes chain `head` with `len` bytes written; visible after `publish`.
    #[inline]
    pub fn push_used(&mut self, head: Head, len: u32) {
        if self.config.batch_used {
            // One entry for the burst: at its first slot, naming its last chain.
            self.shadow.clear();
            self.shadow.push((self.published, head.id, len));
        } else {
            self.shadow.push((self.next_used, head.id, len));
        }
        self.unpublished += 1;
        self.next_used = self.next_used.advance(head.slots, self.size());
    }

    /// Makes the burst visible: its used descriptors' ids and lengths, then their flags, the
    /// first one's last with Release (the driver polls that one and reads the others only
    /// after it). With `batch_used` (IN_ORDER, TX) the burst is that one descriptor, naming its
    /// last chain and standing for all its slots (2.8.11). Returns how many chains were
    /// published.
    #[inline]
    pub fn publish(&mut self) -> u16 {
        let n = std::mem::take(&mut self.unpublished);
        if n == 0 {
            return 0;
        }
        for &(p, id, len) in &self.shadow {
            self.write_used(p, id, len);
        }
        for &(p, _, _) in self.shadow.iter().skip(1) {
            self.desc_flags(p.slot)
                .store(used_flags(p.wrap).to_le(), Ordering::Relaxed);
        }
        let first = self.shadow[0].0;
        self.desc_flags(first.slot)
            .store(used_flags(first.wrap).to_le(), Ordering::Release);
        self.shadow.clear();
        self.published = self.next_used;
        n
    }

    /// Where the ring stands by its contents, for a frontend that cannot know: QEMU keeps no
    /// packed ring position of its own, so after vnic was killed (no `GET_VRING_BASE` answered)
    /// it sends the one of the ring's last start again. The slot flags tell: a slot's AVAIL bit
    /// is the wrap counter of the lap the driver last made it available in, so the slot where
    /// that bit changes is where the driver will post next (D); from D on, around the ring,
    /// come the slots the device used (USED bit equal to AVAIL; a never-used zeroed slot looks
    /// the same) and then those it has not taken yet. The device stands after the last used
    /// one. None if the slot found there is neither available in that lap nor waiting for the
    /// driver (a driver that made slots available out of order: nothing to go by).
    ///
    /// Exact when every chain takes one slot (Linux with INDIRECT_DESC, DPDK). After a chain
    /// of several slots, or an IN_ORDER batch, it stands inside it, takes the rest of it as a
    /// chain of its own and is back in step after it (a TX frame sent twice). A daemon killed
    /// inside `publish` (a few stores) may leave the burst's first entry without its flags:
    /// the driver then waits for it.
    pub fn scan_position(&self) -> Option<u16> {
        let size = self.size();
        // One read per slot: what follows is computed from one picture of the ring.
        let flags: Vec<u16> = (0..size)
            .map(|slot| u16::from_le(self.desc_flags(slot).load(Ordering::Acquire)))
            .collect();
        let avail_bit = |slot: u16| flags[slot as usize] & AVAIL != 0;
        let used = |slot: u16| avail_bit(slot) == (flags[slot as usize] & USED != 0);
        let d = (1..size)
            .find(|&i| avail_bit(i) != avail_bit(i - 1))
            .unwrap_or(0);
        let order = |k: u16| (d as u32 + k as u32) as u16 % size;
        let at = match (0..size).rev().find(|&k| used(order(k))) {
            // Nothing used: the device stands at the oldest slot made available.
            None => Pos {
                slot: d,
                wrap: avail_bit(d),
            },
            // After the last used slot, in that slot's lap (flipping at the ring's end).
            Some(k) => Pos {
                slot: order(k),
                wrap: avail_bit(order(k)),
            }
            .advance(1, size),
        };
        let f = flags[at.slot as usize];
        let waiting = (f & AVAIL != 0) != at.wrap && (f & USED != 0) != at.wrap;
        (is_avail(f, at.wrap) || waiting).then_some(at.encode())
    }

    /// Whether the driver wants an interrupt for what was published since the last decision:
    /// its event suppression flags, and with EVENT_IDX (flag DESC) whether the used position
    /// passed its event offset.
    pub fn needs_interrupt(&mut self) -> bool {
        let new = self.published;
        let old = std::mem::replace(&mut self.checked, new);
        if old == new {
            return false;
        }
        // Our used stores before the driver's event read (it orders the other way round).
        fence(Ordering::SeqCst);
        // SAFETY: inside the mapped 4-byte structure, 2-aligned.
        let field = |i| unsafe { AtomicU16::from_ptr(self.driver_event.add(i) as *mut u16) };
        let flags = u16::from_le(field(1).load(Ordering::Acquire));
        match flags {
            EVENT_DISABLE => false,
            EVENT_DESC if self.config.event_idx => {
                let off_wrap = u16::from_le(field(0).load(Ordering::Acquire));
                let size = self.size();
                let mut ev = Pos::decode(off_wrap);
                ev.slot %= size;
                let two_laps = 2 * size as u32;
                let (new, old, ev) = (new.linear(size), old.linear(size), ev.linear(size));
                // The event offset lies in [old, new): vring_need_event over two laps.
                (new + two_laps - ev - 1) % two_laps < (new + two_laps - old) % two_laps
            }
            // ENABLE; DESC without EVENT_IDX and reserved values as ENABLE (a driver that
            // wrote nonsense gets interrupts rather than a hang).
            _ => true,
        }
    }

    fn set_device_event(&mut self, flags: u16, off_wrap: u16) {
        if self.device_event_now == Some((flags, off_wrap)) {
            return;
        }
        self.device_event_now = Some((flags, off_wrap));
        // SAFETY: inside the mapped 4-byte structure, 2-aligned.
        let field = |i| unsafe { AtomicU16::from_ptr(self.device_event.add(i)) };
        field(0).store(off_wrap.to_le(), Ordering::Relaxed);
        field(1).store(flags.to_le(), Ordering::Relaxed);
    }

    /// Tells the driver not to kick while we are busy with the ring (with EVENT_IDX, not
    /// moving the event offset is what keeps kicks off, as for the split ring).
    pub fn suppress_kicks(&mut self) {
        if !self.config.event_idx && !self.polling {
            self.set_device_event(EVENT_DISABLE, 0);
        }
    }

    /// Asks the driver to kick when it makes the descriptor at the avail position (or, after
    /// RX chains were put back, the first one `pop` did not find) available; true if it
    /// already did, so the caller must look again rather than sleep.
    pub fn arm_kicks(&mut self) -> bool {
        if self.polling || self.broken {
            return false;
        }
        let at = self.exhausted_at.unwrap_or(self.next_avail);
        if self.config.event_idx {
            self.set_device_event(EVENT_DESC, at.encode());
        } else {
            self.set_device_event(EVENT_ENABLE, 0);
        }
        // Our store before our re-read; the driver orders its descriptor store before its read.
        fence(Ordering::SeqCst);
        self.avail_desc(at).is_some()
    }

    /// Keeps kicks off for good (`on`) or hands notification back to `arm_kicks`.
    pub fn set_polling(&mut self, on: bool) {
        self.polling = false;
        if on {
            self.set_device_event(EVENT_DISABLE, 0);
        }
        self.polling = on;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Address, Bytes, GuestAddress};

    const RING: u64 = 0x1000;
    const DRIVER_EVENT: u64 = 0x3000;
    const DEVICE_EVENT: u64 = 0x3100;
    const BUFS: u64 = 0x10000;

    /// A driver that writes the ring as Linux does: every descriptor of a chain with the
    /// chain's buffer id and its slot's avail/used bits, the head's flags last.
    struct Driver {
        mem: Arc<GuestMem>,
        size: u16,
        avail: Pos,
        used: Pos,
    }

    impl Driver {
        fn new(size: u16) -> Driver {
            let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x100000)]).unwrap();
            Driver {
                mem: Arc::new(mem),
                size,
                avail: Pos::START,
                used: Pos::START,
            }
        }

        fn ring(&self, event_idx: bool, batch_used: bool) -> PackedRing {
            let config = RingConfig {
                size: self.size,
                desc_table: RING,
                avail_ring: DRIVER_EVENT,
                used_ring: DEVICE_EVENT,
                event_idx,
                packed: true,
                batch_used,
            };
            let regions = Arc::new(GuestRegions::new(self.mem.clone()));
            PackedRing::new(config, regions, Pos::START.encode()).unwrap()
        }

        fn write(&self, slot: u16, addr: u64, len: u32, id: u16, flags: u16) {
            let at = GuestAddress(RING + 16 * slot as u64);
            self.mem.write_obj(addr, at).unwrap();
            self.mem.write_obj(len, at.unchecked_add(8)).unwrap();
            self.mem.write_obj(id, at.unchecked_add(12)).unwrap();
            self.mem.write_obj(flags, at.unchecked_add(14)).unwrap();
        }

        fn read(&self, slot: u16) -> (u32, u16, u16) {
            let at = GuestAddress(RING + 16 * slot as u64);
            (
                self.mem.read_obj(at.unchecked_add(8)).unwrap(),
                self.mem.read_obj(at.unchecked_add(12)).unwrap(),
                self.mem.read_obj(at.unchecked_add(14)).unwrap(),
            )
        }

        fn avail_bits(wrap: bool) -> u16 {
            if wrap {
                AVAIL
            } else {
                USED
            }
        }

        /// Makes a chain of `lens.len()` buffers available (flags: WRITE or 0 for each).
        fn add(&mut self, id: u16, lens: &[u32], extra: u16) {
            let head = self.avail;
            let mut p = head;
            for (i, &len) in lens.iter().enumerate() {
                let next = if i + 1 < lens.len() { NEXT } else { 0 };
                let flags = Self::avail_bits(p.wrap) | next | extra;
                let addr = BUFS + 0x1000 * id as u64 + 0x100 * i as u64;
                if p != head {
                    self.write(p.slot, addr, len, id, flags);
                }
                p = p.advance(1, self.size);
            }
            let next = if lens.len() > 1 { NEXT } else { 0 };
            self.write(
                head.slot,
                BUFS + 0x1000 * id as u64,
                lens[0],
                id,
                Self::avail_bits(head.wrap) | next | extra,
            );
            self.avail = p;
        }

        /// The next used descriptor, if the device wrote one; `slots`: what the driver knows
        /// that buffer took.
        fn take_used(&mut self, slots: u16) -> Option<(u16, u32)> {
            let (len, id, flags) = self.read(self.used.slot);
            if flags != used_flags(self.used.wrap) {
                return None;
            }
            self.used = self.used.advance(slots, self.size);
            Some((id, len))
        }

        fn set_driver_event(&self, flags: u16, off_wrap: u16) {
            self.mem
                .write_obj(off_wrap, GuestAddress(DRIVER_EVENT))
                .unwrap();
            self.mem
                .write_obj(flags, GuestAddress(DRIVER_EVENT + 2))
                .unwrap();
        }

        fn device_event(&self) -> (u16, u16) {
            (
                self.mem.read_obj(GuestAddress(DEVICE_EVENT + 2)).unwrap(),
                self.mem.read_obj(GuestAddress(DEVICE_EVENT)).unwrap(),
            )
        }
    }

    fn pop(ring: &mut PackedRing) -> Option<Result<PoppedChain, BadChain>> {
        ring.pop(Access::Read, &mut Vec::new())
    }

    #[test]
    fn chains_over_many_laps_are_taken_and_completed_in_their_slots() {
        let mut d = Driver::new(8);
        let mut ring = d.ring(false, false);
        let lens_of = |i: u16| (0..1 + i % 3).map(|k| 60 + k as u32).collect::<Vec<_>>();
        for i in 0..100u16 {
            let lens = lens_of(i);
            d.add(i % 8, &lens, 0);
            let mut segs = Vec::new();
            let chain = ring.pop(Access::Read, &mut segs).unwrap().unwrap();
            assert_eq!(
                chain.head,
                Head {
                    id: i % 8,
                    slots: lens.len() as u16
                }
            );
            assert_eq!(chain.bytes, lens.iter().sum::<u32>());
            assert_eq!(segs.len(), lens.len());
            assert!(pop(&mut ring).is_none());
            ring.push_used(chain.head, 7);
            assert_eq!(
                d.take_used(chain.head.slots),
                None,
                "visible before publish"
            );
            assert_eq!(ring.publish(), 1);
            assert_eq!(d.take_used(chain.head.slots), Some((i % 8, 7)));
        }
        // 199 slots taken: 24 laps (the wrap counter flipped an even number of times) and 7.
        assert_eq!(
            d.avail,
            Pos {
                slot: 7,
                wrap: true
            }
        );
        assert_eq!(ring.position(), 7 | WRAP_BIT);
    }

    #[test]
    fn a_burst_is_published_by_its_first_flags_and_in_order_by_one_entry() {
        for batch in [false, true] {
            let mut d = Driver::new(16);
            let mut ring = d.ring(false, batch);
            for id in 0..5 {
                d.add(id, &[64, 64], 0);
            }
            let heads: Vec<Head> = (0..5)
                .map(|_| pop(&mut ring).unwrap().unwrap().head)
                .collect();
            for &h in &heads {
                ring.push_used(h, 0);
            }
            assert_eq!(d.take_used(2), None);
            assert_eq!(ring.publish(), 5);
            if batch {
                // One used descriptor at the burst's first slot, naming its last buffer.
                assert_eq!(d.take_used(10), Some((4, 0)));
            } else {
                for id in 0..5 {
                    assert_eq!(d.take_used(2), Some((id, 0)));
                }
            }
            assert_eq!(d.take_used(1), None);
            assert_eq!(d.used, d.avail);
        }
    }

    #[test]
    fn a_chain_across_the_ring_end_and_an_indirect_table() {
        let mut d = Driver::new(4);
        let mut ring = d.ring(false, false);
        d.add(0, &[10, 10, 10], 0);
        let c = pop(&mut ring).unwrap().unwrap();
        ring.push_used(c.head, 0);
        ring.publish();
        d.take_used(3).unwrap();
        // Slots 3, 0, 1: the last two in the next lap.
        d.add(1, &[1, 2, 3], 0);
        let c = pop(&mut ring).unwrap().unwrap();
        assert_eq!((c.head, c.bytes), (Head { id: 1, slots: 3 }, 6));
        ring.push_used(c.head, 0);
        ring.publish();
        assert_eq!(d.take_used(3), Some((1, 0)));
        // An indirect table of three buffers in one slot.
        let table = 0x8000u64;
        for i in 0..3u64 {
            d.mem
                .write_obj(BUFS + 0x100 * i, GuestAddress(table + 16 * i))
                .unwrap();
            d.mem
                .write_obj(100u32, GuestAddress(table + 16 * i + 8))
                .unwrap();
            d.mem
                .write_obj(0u32, GuestAddress(table + 16 * i + 12))
                .unwrap();
        }
        let p = d.avail;
        d.write(p.slot, table, 48, 2, Driver::avail_bits(p.wrap) | INDIRECT);
        d.avail = p.advance(1, 4);
        let mut segs = Vec::new();
        let c = ring.pop(Access::Read, &mut segs).unwrap().unwrap();
        assert_eq!(
            (c.head, c.bytes, segs.len()),
            (Head { id: 2, slots: 1 }, 300, 3)
        );
        // Device-writable buffers in a TX table: a bad chain, still completed.
        let p = d.avail;
        d.write(
            p.slot,
            table,
            48,
            3,
            Driver::avail_bits(p.wrap) | INDIRECT | WRITE,
        );
        d.mem.write_obj(WRITE, GuestAddress(table + 14)).unwrap();
        let bad = pop(&mut ring).unwrap().unwrap_err();
        assert_eq!(bad.head, Some(Head { id: 3, slots: 1 }));
        assert_eq!(bad.error, ChainError::WrongDirection);
    }

    #[test]
    fn a_bad_buffer_fails_its_chain_which_still_takes_all_its_slots() {
        let mut d = Driver::new(8);
        let mut ring = d.ring(false, false);
        d.add(5, &[10, 10, 10], 0);
        // The middle buffer outside guest memory.
        d.write(1, 1 << 40, 10, 5, Driver::avail_bits(true) | NEXT);
        d.add(6, &[10], 0);
        let mut segs = Vec::new();
        let bad = ring.pop(Access::Read, &mut segs).unwrap().unwrap_err();
        assert_eq!(bad.head, Some(Head { id: 5, slots: 3 }));
        assert_eq!(bad.error, ChainError::OutsideMemory);
        assert!(segs.is_empty());
        let good = pop(&mut ring).unwrap().unwrap();
        assert_eq!(good.head, Head { id: 6, slots: 1 });
        ring.push_used(bad.head.unwrap(), 0);
        ring.push_used(good.head, 0);
        ring.publish();
        assert_eq!(d.take_used(3), Some((5, 0)));
        assert_eq!(d.take_used(1), Some((6, 0)));
    }

    #[test]
    fn only_the_avail_position_counts_and_only_with_the_right_wrap_bits() {
        let d = Driver::new(8);
        let mut ring = d.ring(false, false);
        // An avail flag set on a slot ahead of the avail position: not looked at.
        d.write(3, BUFS, 64, 3, Driver::avail_bits(true));
        assert!(pop(&mut ring).is_none());
        assert!(!ring.has_available());
        // The avail position marked with the next lap's bits (wrap-counter confusion), then
        // with both bits set (a used descriptor): neither is available.
        d.write(0, BUFS, 64, 0, Driver::avail_bits(false));
        assert!(pop(&mut ring).is_none());
        d.write(0, BUFS, 64, 0, AVAIL | USED);
        assert!(pop(&mut ring).is_none());
        d.write(0, BUFS, 64, 0, Driver::avail_bits(true));
        assert_eq!(pop(&mut ring).unwrap().unwrap().head.id, 0);
    }

    #[test]
    fn a_chain_that_never_ends_stops_the_ring_until_it_is_set_up_again() {
        let d = Driver::new(8);
        let mut ring = d.ring(false, false);
        for slot in 0..8 {
            d.write(slot, BUFS, 64, 0, Driver::avail_bits(true) | NEXT);
        }
        let bad = pop(&mut ring).unwrap().unwrap_err();
        assert_eq!((bad.head, bad.error), (None, ChainError::EndlessChain));
        assert!(pop(&mut ring).is_none(), "said once");
        assert!(!ring.has_available() && !ring.arm_kicks());
        d.write(0, BUFS, 64, 0, Driver::avail_bits(true));
        ring.reset_position(Pos::START.encode());
        assert_eq!(pop(&mut ring).unwrap().unwrap().head.slots, 1);
    }

    #[test]
    fn chains_put_back_are_popped_again() {
        let mut d = Driver::new(8);
        let mut ring = d.ring(false, false);
        d.add(0, &[64, 64], WRITE);
        d.add(1, &[64], WRITE);
        let mark = ring.mark();
        let mut segs = Vec::new();
        assert!(ring.pop(Access::Write, &mut segs).unwrap().is_ok());
        assert!(ring.pop(Access::Write, &mut segs).unwrap().is_ok());
        assert!(ring.pop(Access::Write, &mut segs).is_none());
        ring.rewind(mark);
        let again = ring.pop(Access::Write, &mut segs).unwrap().unwrap();
        assert_eq!(again.head, Head { id: 0, slots: 2 });
    }

    #[test]
    fn interrupts_follow_the_driver_event_suppression() {
        let mut d = Driver::new(4);
        let mut ring = d.ring(true, false);
        let complete = |d: &mut Driver, ring: &mut PackedRing, id| {
            d.add(id, &[64], 0);
            let c = pop(ring).unwrap().unwrap();
            ring.push_used(c.head, 0);
            ring.publish();
            d.take_used(1).unwrap();
        };
        d.set_driver_event(EVENT_DISABLE, 0);
        complete(&mut d, &mut ring, 0);
        assert!(!ring.needs_interrupt());
        d.set_driver_event(EVENT_ENABLE, 0);
        complete(&mut d, &mut ring, 1);
        assert!(ring.needs_interrupt());
        assert!(!ring.needs_interrupt(), "nothing new since");
        // DESC: an interrupt when the used position passes slot 1 of the next lap (wrap 0).
        d.set_driver_event(
            EVENT_DESC,
            Pos {
                slot: 1,
                wrap: false,
            }
            .encode(),
        );
        let mut fired = Vec::new();
        for id in 2..10 {
            complete(&mut d, &mut ring, id);
            fired.push(ring.needs_interrupt());
        }
        // Used entries in slots 2, 3, 0 (lap 2), 1 (lap 2: the event), 2, ... 1 (lap 3).
        assert_eq!(
            fired,
            [false, false, false, true, false, false, false, false]
        );
    }

    #[test]
    fn kicks_are_asked_for_where_the_ring_was_found_empty() {
        for event_idx in [false, true] {
            let mut d = Driver::new(8);
            let mut ring = d.ring(event_idx, false);
            d.add(0, &[64], 0);
            ring.suppress_kicks();
            if !event_idx {
                assert_eq!(d.device_event().0, EVENT_DISABLE);
            }
            assert!(pop(&mut ring).unwrap().is_ok());
            assert!(pop(&mut ring).is_none());
            assert!(!ring.arm_kicks());
            let (flags, off_wrap) = d.device_event();
            if event_idx {
                assert_eq!((flags, off_wrap), (EVENT_DESC, 1 | WRAP_BIT));
            } else {
                assert_eq!(flags, EVENT_ENABLE);
            }
            d.add(1, &[64], 0);
            assert!(ring.arm_kicks(), "arrived meanwhile: look again");
            ring.set_polling(true);
            assert_eq!(d.device_event().0, EVENT_DISABLE);
            assert!(!ring.arm_kicks());
        }
    }

    #[test]
    fn a_ring_s_contents_say_where_the_device_stands() {
        // Fresh: nothing used, some buffers made available.
        let mut d = Driver::new(8);
        let mut ring = d.ring(false, false);
        assert_eq!(ring.scan_position(), Some(Pos::START.encode()));
        for id in 0..3 {
            d.add(id, &[64], WRITE);
        }
        assert_eq!(ring.scan_position(), Some(Pos::START.encode()));
        // Laps of single-slot chains, the ring kept full as an RX ring is, the device some way
        // behind: at every point the scan finds the device's position.
        let mut id = 3;
        for round in 0..40u16 {
            while d.avail.linear(8) != (ring.next_avail.linear(8) + 8) % 16 {
                d.add(id % 8, &[64], WRITE);
                id += 1;
            }
            for _ in 0..1 + round % 5 {
                let c = ring.pop(Access::Write, &mut Vec::new()).unwrap().unwrap();
                ring.push_used(c.head, 10);
            }
            ring.publish();
            while d.take_used(1).is_some() {}
            let at = ring.position();
            assert_eq!(
                d.ring(false, false).scan_position(),
                Some(at),
                "round {round}"
            );
        }
    }

    #[test]
    fn slots_made_available_out_of_order_give_the_scan_nothing_to_go_by() {
        let d = Driver::new(8);
        // Slot 1 made available before slot 0: the change of AVAIL bit is not where the driver
        // posts next.
        d.write(1, BUFS, 64, 1, Driver::avail_bits(true));
        assert_eq!(d.ring(false, false).scan_position(), None);
    }
}
