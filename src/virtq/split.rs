//! The split virtqueue (virtio 1.x, 2.7): the only code in vnic that knows its layout.
//!
//! Layout, all little-endian, in guest memory:
//! - descriptor table: `size` x 16 bytes `{ addr: u64, len: u32, flags: u16, next: u16 }`;
//! - avail ring: `flags: u16, idx: u16, ring: [u16; size], used_event: u16`;
//! - used ring: `flags: u16, idx: u16, ring: [{ id: u32, len: u32 }; size], avail_event: u16`.
//!
//! What makes it cheap (the way DPDK's vhost does it): `avail.idx` is read once per burst and
//! cached; used entries are written into their slots as chains complete and `used.idx` is
//! stored once per burst ([`SplitRing::publish`]); whether to interrupt is decided once per
//! burst; ring addresses are translated to host pointers once per ring setup, not per access.
//! What keeps it safe: every descriptor is read once (copied, then checked), every buffer is
//! checked against guest memory when its descriptor is read, and a bad chain fails that chain
//! only. A driver that moves `avail.idx` more than a ring ahead is not followed at all.

use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
};

use super::memory::{prefetch_line, read_desc_words, GuestRegions, Segment};
use super::GuestMem;
use super::{
    map_part, Access, AvailMark, BadChain, ChainError, Head, PoppedChain, RingConfig, RingError,
};

/// A descriptor as the driver wrote it (`struct virtq_desc`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

const DESC_SIZE: u64 = 16;

/// One split ring, as the device side drives it.
pub struct SplitRing {
    config: RingConfig,
    regions: Arc<GuestRegions>,
    desc: *const Desc,
    /// `avail.flags`; `idx` at +2, `ring` at +4, `used_event` at +4 + 2 * size.
    avail: *const u16,
    /// `used.flags`; `idx` at +2, `ring` at +4 (8-byte entries), `avail_event` at +4 + 8 * size.
    used: *mut u8,
    next_avail: u16,
    /// `avail.idx` as last read; chains up to it may be popped without reading it again.
    avail_seen: u16,
    /// `avail.idx` when `pop` last found nothing more: everything before it has been tried.
    exhausted_at: u16,
    /// The `avail.idx` of the last jump reported (see `available`).
    jumped_to: Option<u16>,
    next_used: u16,
    /// `used.idx` as last published.
    published: u16,
    /// With `batch_used`: the last chain completed since `published` and its length; its
    /// entry is written at `publish`.
    batch_last: Option<(u16, u32)>,
    /// `used.idx` at the last interrupt decision: EVENT_IDX asks whether the driver's event
    /// index was passed since then (as Linux and virtio-queue decide).
    checked: u16,
    /// Kicks are kept off for good (a poller reads the ring without being told).
    polling: bool,
}

// SAFETY: the pointers point into guest mappings kept alive by `regions` (see `GuestRegions`);
// a ring is used by one thread at a time (its worker holds the vring lock around each pass).
unsafe impl Send for SplitRing {}

/// The `VRING_DESC_F_WRITE` bit every buffer of a chain for `access` must have (or not).
#[inline]
fn write_flag(access: Access) -> u16 {
    match access {
        Access::Write => VRING_DESC_F_WRITE as u16,
        Access::Read => 0,
    }
}

/// `size` must be a power of two no larger than 32768 (virtio 1.x, 2.7).
pub(super) fn valid_size(size: u16) -> bool {
    size != 0 && size.is_power_of_two() && size <= 32768
}

impl SplitRing {
    /// Maps a ring configured as `config` in `regions`: each of its three parts must lie inside
    /// one region and be aligned as the spec requires (16, 2 and 4 bytes).
    pub fn new(
        config: RingConfig,
        regions: Arc<GuestRegions>,
        next_avail: u16,
        next_used: u16,
    ) -> Result<Self, RingError> {
        if !valid_size(config.size) {
            return Err(RingError::BadSize(config.size));
        }
        let n = config.size as u64;
        let map = |gpa, len, align| map_part(&regions, gpa, len, align);
        let desc = map(config.desc_table, DESC_SIZE * n, 16)? as *const Desc;
        let avail = map(config.avail_ring, 6 + 2 * n, 2)? as *const u16;
        let used = map(config.used_ring, 6 + 8 * n, 4)?;
        Ok(SplitRing {
            config,
            regions,
            desc,
            avail,
            used,
            next_avail,
            avail_seen: next_avail,
            exhausted_at: next_avail,
            jumped_to: None,
            next_used,
            published: next_used,
            batch_last: None,
            checked: next_used,
            polling: false,
        })
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

    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    /// Takes over ring positions set from outside (SET_VRING_BASE, a ring restart).
    pub fn reset_positions(&mut self, next_avail: u16, next_used: u16) {
        self.next_avail = next_avail;
        self.avail_seen = next_avail;
        self.exhausted_at = next_avail;
        self.next_used = next_used;
        self.published = next_used;
        self.batch_last = None;
        self.checked = next_used;
    }

    fn size(&self) -> u16 {
        self.config.size
    }

    /// SAFETY for the accessors below: offsets are within the ring parts mapped in `new`.
    #[inline]
    fn avail_field(&self, at: usize) -> &AtomicU16 {
        // SAFETY: 2-aligned, inside the mapped avail ring (at <= 2 + size).
        unsafe { AtomicU16::from_ptr(self.avail.add(at) as *mut u16) }
    }

    #[inline]
    fn used_u16(&self, byte_off: usize) -> &AtomicU16 {
        // SAFETY: 2-aligned, inside the mapped used ring.
        unsafe { AtomicU16::from_ptr(self.used.add(byte_off) as *mut u16) }
    }

    /// Reads `avail.idx` (acquire: the ring entries and descriptors before it are visible).
    #[inline]
    fn read_avail_idx(&self) -> u16 {
        u16::from_le(self.avail_field(1).load(Ordering::Acquire))
    }

    /// Chains made available and not popped yet, reading `avail.idx` only if the cached value
    /// says none. Err if the driver moved `avail.idx` more than a ring ahead of us (it is not
    /// followed: nothing there can be trusted), once per bogus value; after that, none
    /// available until the driver changes its index.
    #[inline]
    pub fn available(&mut self) -> Result<u16, ChainError> {
        let mut pending = self.avail_seen.wrapping_sub(self.next_avail);
        if pending == 0 {
            self.avail_seen = self.read_avail_idx();
            pending = self.avail_seen.wrapping_sub(self.next_avail);
            if pending == 0 {
                self.exhausted_at = self.avail_seen;
            }
        }
        if pending > self.size() {
            let bogus = self.avail_seen;
            self.avail_seen = self.next_avail;
            // Said once per bogus index: a poller asks many times a second, and one jump is
            // one fault (it is counted and logged once, not once per look).
            if self.jumped_to == Some(bogus) {
                return Ok(0);
            }
            self.jumped_to = Some(bogus);
            return Err(ChainError::AvailIndexJump(pending));
        }
        self.jumped_to = None;
        Ok(pending)
    }

    /// Chains made available beyond `next_avail` (and not more than a ring ahead).
    pub fn has_available(&self) -> bool {
        let pending = self.read_avail_idx().wrapping_sub(self.next_avail);
        pending > 0 && pending <= self.size()
    }

    #[inline]
    fn read_desc(&self, table: *const Desc, index: u16) -> Desc {
        // SAFETY: the caller checked `index` against the table's length.
        let (lo, hi) = unsafe { read_desc_words(table.add(index as usize).cast()) };
        Desc {
            addr: lo,
            len: hi as u32,
            flags: (hi >> 32) as u16,
            next: (hi >> 48) as u16,
        }
    }

    /// Pops the next available chain, appending its buffers to `segs`. Every buffer must be
    /// of kind `access` (device-readable for TX, device-writable for RX). `None`: nothing
    /// available. `Some(Err)`: the chain is unusable; the caller completes its head, if it has
    /// one, with length 0 ([`SplitRing::push_used`]). An `AvailIndexJump` comes back once per
    /// bogus index (then nothing is available until the driver moves it): the caller stops
    /// popping for this pass.
    // Always inline: it is most of a burst's loop, and the rare paths are in `pop_chain`.
    #[inline(always)]
    pub fn pop(
        &mut self,
        access: Access,
        segs: &mut Vec<Segment>,
    ) -> Option<Result<PoppedChain, BadChain>> {
        // Chains left from the last read of `avail.idx` need no look at it (it was checked
        // then, and nothing since can have moved `next_avail` past it).
        if self.avail_seen == self.next_avail {
            match self.available() {
                Ok(0) => return None,
                Ok(_) => {}
                Err(error) => return Some(Err(BadChain { head: None, error })),
            }
        }
        let slot = (self.next_avail & (self.size() - 1)) as usize;
        let id = u16::from_le(self.avail_field(2 + slot).load(Ordering::Relaxed));
        self.next_avail = self.next_avail.wrapping_add(1);
        if id >= self.size() {
            let error = ChainError::BadHead(id);
            return Some(Err(BadChain { head: None, error }));
        }
        let head = Head { id, slots: 1 };
        let mark = segs.len();
        let d = self.read_desc(self.desc, id);
        let want = write_flag(access);
        // The usual chain, one buffer of the right kind inside one region: straight through.
        let kind = VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT | VRING_DESC_F_WRITE;
        if d.flags & kind as u16 == want && d.len != 0 {
            if let Some(host) = self.regions.host_range(d.addr, d.len as u64) {
                segs.push(Segment { host, len: d.len });
                return Some(Ok(PoppedChain {
                    head,
                    segs: (mark, mark + 1),
                    bytes: d.len,
                }));
            }
        }
        Some(self.pop_chain(head, d, access, segs, mark))
    }

    /// Starts loading the first bytes of the buffer `ahead` chains past the next one to pop
    /// (if that chain is known to be available), so its cache miss overlaps the work on the
    /// chains before it: the driver's core has just written that line. A hint only: nothing is
    /// popped, and a descriptor the driver rewrites meanwhile is read again by `pop`.
    #[inline]
    pub fn prefetch(&self, ahead: u16) {
        if self.avail_seen.wrapping_sub(self.next_avail) <= ahead {
            return;
        }
        let slot = (self.next_avail.wrapping_add(ahead) & (self.size() - 1)) as usize;
        let head = u16::from_le(self.avail_field(2 + slot).load(Ordering::Relaxed));
        if head >= self.size() {
            return;
        }
        let d = self.read_desc(self.desc, head);
        if let Some(host) = self.regions.host_range(d.addr, 1) {
            prefetch_line(host);
        }
    }

    /// The rest of [`SplitRing::pop`]: chain `head`, whose first descriptor is `first`.
    #[inline(never)]
    fn pop_chain(
        &self,
        head: Head,
        first: Desc,
        access: Access,
        segs: &mut Vec<Segment>,
        mark: usize,
    ) -> Result<PoppedChain, BadChain> {
        match self.walk(first, access, segs) {
            Ok(bytes) => Ok(PoppedChain {
                head,
                segs: (mark, segs.len()),
                bytes,
            }),
            Err(error) => {
                segs.truncate(mark);
                Err(BadChain {
                    head: Some(head),
                    error,
                })
            }
        }
    }

    /// Where the next `pop` starts, to come back to with `rewind`.
    pub fn mark(&self) -> AvailMark {
        AvailMark {
            next: self.next_avail,
            wrap: false,
        }
    }

    /// Puts back every chain popped since `mark` (none of them completed): they will be
    /// popped again.
    pub fn rewind(&mut self, mark: AvailMark) {
        self.next_avail = mark.next;
    }

    /// Follows a chain from its first descriptor `first` (read from the ring's table), one
    /// descriptor after the other (at most a table's worth: a loop ends there), through at most
    /// one indirect table. Returns the chain's total length.
    fn walk(
        &self,
        first: Desc,
        access: Access,
        segs: &mut Vec<Segment>,
    ) -> Result<u32, ChainError> {
        let mut d = first;
        let want = write_flag(access);
        let mut table = self.desc;
        let mut table_len = self.size();
        // Descriptors this table may still give (the head was one).
        let mut ttl = table_len - 1;
        let mut indirect = false;
        let mut total: u32 = 0;
        loop {
            if d.flags & VRING_DESC_F_INDIRECT as u16 != 0 {
                if indirect {
                    return Err(ChainError::NestedIndirect);
                }
                if d.len == 0
                    || !(d.len as u64).is_multiple_of(DESC_SIZE)
                    || d.len as u64 / DESC_SIZE > 65535
                {
                    return Err(ChainError::BadIndirect);
                }
                let host = self
                    .regions
                    .host_range(d.addr, d.len as u64)
                    .ok_or(ChainError::BadIndirect)?;
                table = host as *const Desc;
                table_len = (d.len as u64 / DESC_SIZE) as u16;
                ttl = table_len - 1;
                indirect = true;
                d = self.read_desc(table, 0);
                continue;
            }
            if d.flags & VRING_DESC_F_WRITE as u16 != want {
                return Err(ChainError::WrongDirection);
            }
            total = total.checked_add(d.len).ok_or(ChainError::TooLong)?;
            if !self.regions.push_segments(d.addr, d.len, segs) {
                return Err(ChainError::OutsideMemory);
            }
            if d.flags & VRING_DESC_F_NEXT as u16 == 0 {
                return Ok(total);
            }
            if d.next >= table_len || ttl == 0 {
                return Err(ChainError::BadNext);
            }
            ttl -= 1;
            d = self.read_desc(table, d.next);
        }
    }

    /// Completes chain `head` with `len` bytes written. Visible to the driver after
    /// [`SplitRing::publish`].
    #[inline]
    pub fn push_used(&mut self, head: Head, len: u32) {
        if self.config.batch_used {
            self.batch_last = Some((head.id, len));
        } else {
            self.write_used(self.next_used, head.id, len);
        }
        self.next_used = self.next_used.wrapping_add(1);
    }

    #[inline]
    fn write_used(&mut self, at: u16, id: u16, len: u32) {
        let slot = (at & (self.size() - 1)) as usize;
        // SAFETY: slot < size: inside the mapped used ring; 4-aligned.
        unsafe {
            let elem = self.used.add(4 + 8 * slot) as *mut [u32; 2];
            std::ptr::write_volatile(elem, [(id as u32).to_le(), len.to_le()]);
        }
    }

    /// Makes every entry pushed since the last call visible with one store of `used.idx`.
    /// Returns how many were published. With `batch_used` (IN_ORDER, TX) the burst is one
    /// entry, in the slot where it begins, naming its last chain: the driver completes the
    /// chains before it in order (virtio 1.2, 2.7.9; DPDK's and Linux's in-order drivers read
    /// it there).
    #[inline]
    pub fn publish(&mut self) -> u16 {
        let n = self.next_used.wrapping_sub(self.published);
        if let Some((id, len)) = self.batch_last.take() {
            self.write_used(self.published, id, len);
        }
        if n != 0 {
            // Release: the entries (and the buffers they describe) before the index.
            self.used_u16(2)
                .store(self.next_used.to_le(), Ordering::Release);
            self.published = self.next_used;
        }
        n
    }

    /// Whether the driver wants an interrupt for what was published since the last decision:
    /// EVENT_IDX's `used_event`, else the NO_INTERRUPT flag. Call after `publish`.
    pub fn needs_interrupt(&mut self) -> bool {
        let new = self.published;
        let old = std::mem::replace(&mut self.checked, new);
        if old == new {
            return false;
        }
        // Our used.idx store before the driver's event/flag read (the driver orders the other
        // way round): without this an interrupt can be lost.
        fence(Ordering::SeqCst);
        if self.config.event_idx {
            let event = u16::from_le(
                self.avail_field(2 + self.size() as usize)
                    .load(Ordering::Acquire),
            );
            // vring_need_event: the driver's event index lies in [old, new).
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            u16::from_le(self.avail_field(0).load(Ordering::Acquire))
                & VRING_AVAIL_F_NO_INTERRUPT as u16
                == 0
        }
    }

    /// Tells the driver not to kick while we are busy with the ring (no-op with EVENT_IDX:
    /// there, not moving `avail_event` is what keeps kicks off).
    pub fn suppress_kicks(&mut self) {
        if !self.config.event_idx && !self.polling {
            self.used_u16(0)
                .store((VRING_USED_F_NO_NOTIFY as u16).to_le(), Ordering::Relaxed);
        }
    }

    /// Asks the driver to kick when it makes anything available beyond what it has made
    /// available now (`avail.idx`, not `next_avail`: after an RX frame put chains back, the
    /// two differ and an index at `next_avail` might never be crossed again). Returns true if
    /// the driver made chains available since `pop` last found none, so the caller must look
    /// again rather than sleep. A poller never arms (and is never told to look again: it will).
    pub fn arm_kicks(&mut self) -> bool {
        if self.polling {
            return false;
        }
        let seen = self.read_avail_idx();
        if self.config.event_idx {
            let at = 4 + 8 * self.size() as usize;
            self.used_u16(at).store(seen.to_le(), Ordering::Relaxed);
        } else {
            self.used_u16(0).store(0, Ordering::Relaxed);
        }
        // Our store before our re-read; the driver orders its idx store before its read.
        fence(Ordering::SeqCst);
        let now = self.read_avail_idx();
        if now.wrapping_sub(self.next_avail) > self.size() {
            // Not followed (see `available`): nothing to look at.
            return false;
        }
        self.avail_seen = now;
        now != self.exhausted_at
    }

    /// Keeps kicks off for good (`on`) or hands notification back to `arm_kicks`.
    pub fn set_polling(&mut self, on: bool) {
        self.polling = false;
        if on {
            self.suppress_kicks();
        }
        self.polling = on;
    }
}
