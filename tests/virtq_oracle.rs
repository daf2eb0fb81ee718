//! vnic's split-ring layer (`src/virtq`) against rust-vmm's `virtio-queue` as an independent
//! oracle: the same ring bytes go into both, the same chains and used entries must come out.
//!
//! # What is compared, exactly
//!
//! For every avail entry the oracle (`Queue::pop_descriptor_chain`, then the chain's iterator)
//! yields a head and a list of descriptors. The chain is *complete* when that list ends with a
//! descriptor without `NEXT`; otherwise the oracle *cut it short* (a loop, a `next` outside its
//! table, a bad or nested indirect table, an unreadable indirect entry, or 4 GiB in total).
//! [`spec_walk`] re-walks the chain with the oracle's rules, step by step, to say *why* it ended;
//! its descriptors are asserted equal to the oracle's, so it adds a reason and nothing else.
//!
//! vnic's `pop(access)` must then return exactly [`expected_chain`]:
//! - head `>= size`: `Err(BadChain { head: None, error: BadHead(head) })` (the oracle hands out a
//!   chain with that head and no descriptors; `add_used` refuses such a head).
//! - otherwise, going through the chain in order, the first of these decides:
//!   - an indirect descriptor whose table has length 0 or does not lie wholly inside one memory
//!     region: `BadIndirect`. *By design*: vnic maps an indirect table to one host pointer when
//!     it reaches the indirect descriptor; the oracle reads entries one at a time, so it follows
//!     a table that crosses into an adjacent region, and yields the entries of a table running
//!     off memory up to the first unreadable one;
//!   - a yielded descriptor of the wrong direction (`WRITE` set for `Access::Read`, clear for
//!     `Access::Write`; zero-length ones included): `WrongDirection`;
//!   - a yielded descriptor of non-zero length for which `GuestMemoryBackend::check_range`
//!     fails: `OutsideMemory` (zero-length descriptors are never outside memory);
//!   - the end of the oracle's chain: complete: `Ok`, with one segment per region piece of each
//!     non-zero-length descriptor (zero-length ones produce no segment, by design), converted
//!     back to guest addresses through the regions' host bases; cut short: `BadNext` (loop or
//!     `next` out of its table), `NestedIndirect`, `BadIndirect` (table length not a multiple of
//!     16 or over 65535 entries), or for the 4 GiB limit `TooLong`, or `WrongDirection` if the
//!     descriptor that crossed it has the wrong direction (vnic checks direction first). (An
//!     unreadable indirect entry cannot come up here: its table was not inside one region, so
//!     the first rule already applied.)
//! - a bad chain leaves the caller's segment list as it was; a good one appends exactly its
//!   segments and reports their range and total.
//!
//! `avail.idx` more than `size` ahead of `next_avail`: the oracle pops nothing
//! (`InvalidAvailRingIndex`); vnic returns `Err(BadChain { head: None, AvailIndexJump(n) })`
//! once per bogus index without moving (then `None` until the driver moves its index), and
//! follows again once repaired. (The last test checks the datapath counts a jump once.)
//!
//! Generated rings ([`scenario`]): size 1..=256, one region or two (adjacent or with a hole),
//! base 0, 1 MiB or just below 4 GiB; descriptors inside, across and outside regions, lengths
//! 0 to 4 GiB - 1, any NEXT/WRITE/INDIRECT, `next` in and out of range; indirect tables inside,
//! ending at, straddling and outside regions, of good and bad lengths, nested; heads in and out
//! of range; `avail.idx` 0..=size ahead, size + 1, far ahead (then repaired); any `next_avail`
//! and `next_used` (wrapping). The hostile cases of `tests/hostile_guest.rs` follow, one test
//! each, with and without EVENT_IDX, each also checked against the oracle.
//!
//! Used side: the same completions (`push_used` + `publish` vs `add_used`) give byte-identical
//! used rings after each publish (vnic stores `used.idx` once per publish, the oracle per
//! entry). `needs_interrupt` equals the oracle's `needs_notification` with EVENT_IDX; without
//! it the oracle always says yes (it ignores `VRING_AVAIL_F_NO_INTERRUPT`), and vnic says yes iff
//! something was published since the last decision and the flag is clear. `suppress_kicks` and
//! `arm_kicks` write the same bytes as the oracle's `disable_notification`/
//! `enable_notification`, except that with EVENT_IDX vnic arms at `avail.idx`, not at
//! `next_avail` (equal unless chains were put back); both say "look again" iff the driver made
//! chains available after the last empty pop.

mod common;

use std::sync::Arc;
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use virtio_queue::desc::split::Descriptor as OracleDesc;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vnic::virtq::{
    Access, AvailMark, BadChain, ChainError, GuestRegions, Head, RingConfig, RingError, Segment,
    SplitRing,
};

type Mem = GuestMemoryMmap<()>;

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;
const NO_INTERRUPT: u16 = 1;
const NO_NOTIFY: u16 = 1;

// ---------------------------------------------------------------------------------------------
// Guest memory and ring layout
// ---------------------------------------------------------------------------------------------

/// Region 0 holds the ring parts in its first `RING_AREA` bytes, then data.
const RING_AREA: u64 = 0x2000;
const R0_LEN: u64 = 0x10000;
const R1_LEN: u64 = 0x8000;
const GAP: u64 = 0x4000;

#[derive(Clone, Copy, Debug)]
enum Second {
    None,
    Adjacent,
    Gap,
}

/// The guest memory map: `(start, len)` per region, sorted.
#[derive(Clone, Debug)]
struct Layout {
    regions: Vec<(u64, u64)>,
}

impl Layout {
    fn new(base: u64, second: Second) -> Layout {
        let mut regions = vec![(base, R0_LEN)];
        match second {
            Second::None => {}
            Second::Adjacent => regions.push((base + R0_LEN, R1_LEN)),
            Second::Gap => regions.push((base + R0_LEN + GAP, R1_LEN)),
        }
        Layout { regions }
    }

    fn single(base: u64, len: u64) -> Layout {
        Layout {
            regions: vec![(base, len)],
        }
    }

    fn mem(&self) -> Mem {
        let ranges: Vec<_> = self
            .regions
            .iter()
            .map(|&(s, l)| (GuestAddress(s), l as usize))
            .collect();
        Mem::from_ranges(&ranges).expect("guest memory")
    }

    /// A second memory with the same bytes.
    fn copy(&self, mem: &Mem) -> Mem {
        let other = self.mem();
        for &(s, l) in &self.regions {
            let mut buf = vec![0u8; l as usize];
            mem.read_slice(&mut buf, GuestAddress(s)).unwrap();
            other.write_slice(&buf, GuestAddress(s)).unwrap();
        }
        other
    }

    fn end(&self) -> u64 {
        let &(s, l) = self.regions.last().unwrap();
        s + l
    }

    /// Where buffers and tables go in region `r`: `(start, len)`.
    fn data(&self, r: usize) -> (u64, u64) {
        let (s, l) = self.regions[r];
        if r == 0 {
            (s + RING_AREA, l - RING_AREA)
        } else {
            (s, l)
        }
    }

    fn in_one_region(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        self.regions.iter().any(|&(s, l)| gpa >= s && end <= s + l)
    }

    /// `[gpa, gpa + len)` cut at region boundaries; None if any byte is outside memory.
    fn pieces(&self, mut gpa: u64, len: u32) -> Option<Vec<(u64, u32)>> {
        let mut out = Vec::new();
        let mut left = len as u64;
        while left > 0 {
            let &(s, l) = self
                .regions
                .iter()
                .find(|&&(s, l)| gpa >= s && gpa - s < l)?;
            let n = left.min(s + l - gpa);
            out.push((gpa, n as u32));
            gpa += n;
            left -= n;
        }
        Some(out)
    }

    /// The guest address of host pointer `host` (inside one of `mem`'s regions).
    fn host_to_gpa(&self, mem: &Mem, host: *mut u8) -> u64 {
        for &(s, l) in &self.regions {
            let h = mem.get_host_address(GuestAddress(s)).unwrap() as usize;
            let p = host as usize;
            if p >= h && p < h + l as usize {
                return s + (p - h) as u64;
            }
        }
        panic!("segment at {host:p} is not in guest memory");
    }

    /// An address outside memory, chosen by `v`.
    fn outside(&self, v: u32) -> u64 {
        let base = self.regions[0].0;
        match v % 4 {
            0 => self.end() + (v as u64 >> 2) % 0x1000,
            1 if base > 0 => base - 1 - (v as u64 >> 2) % 0x100,
            2 if self.regions.len() == 2 && self.regions[1].0 > base + R0_LEN => {
                base + R0_LEN + (v as u64 >> 2) % GAP
            }
            _ => u64::MAX - (v as u64 >> 2) % 0x100,
        }
    }
}

/// Writes `bytes` at `gpa`, skipping the bytes that fall outside memory.
fn write_lenient(mem: &Mem, gpa: u64, bytes: &[u8]) {
    if mem.write_slice(bytes, GuestAddress(gpa)).is_ok() {
        return;
    }
    for (i, b) in bytes.iter().enumerate() {
        if let Some(a) = gpa.checked_add(i as u64) {
            let _ = mem.write_obj(*b, GuestAddress(a));
        }
    }
}

/// A descriptor as the driver wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct D {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl D {
    fn new(addr: u64, len: u32, flags: u16, next: u16) -> D {
        D {
            addr,
            len,
            flags,
            next,
        }
    }

    fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8; 16]) -> D {
        D {
            addr: u64::from_le_bytes(b[0..8].try_into().unwrap()),
            len: u32::from_le_bytes(b[8..12].try_into().unwrap()),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }

    fn from_oracle(d: &OracleDesc) -> D {
        D::new(d.addr().0, d.len(), d.flags(), d.next())
    }

    fn wrong_direction(&self, access: Access) -> bool {
        (self.flags & WRITE != 0) != (access == Access::Write)
    }
}

/// Where one split ring lies: desc table at `base`, avail ring at +0x1000, used at +0x1400.
#[derive(Clone, Copy, Debug)]
struct Ring {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

impl Ring {
    fn at(base: u64, size: u16) -> Ring {
        Ring {
            size,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x1400,
        }
    }

    fn config(&self, event_idx: bool) -> RingConfig {
        RingConfig {
            size: self.size,
            desc_table: self.desc,
            avail_ring: self.avail,
            used_ring: self.used,
            event_idx,
            packed: false,
            batch_used: false,
        }
    }

    fn write_desc(&self, mem: &Mem, i: u16, d: D) {
        mem.write_slice(&d.bytes(), GuestAddress(self.desc + 16 * i as u64))
            .unwrap();
    }

    fn u16_at(mem: &Mem, gpa: u64) -> u16 {
        u16::from_le(mem.read_obj(GuestAddress(gpa)).unwrap())
    }

    fn set_u16(mem: &Mem, gpa: u64, v: u16) {
        mem.write_obj(v.to_le(), GuestAddress(gpa)).unwrap();
    }

    /// Avail ring entry for position `pos` (taken modulo the size).
    fn set_avail_entry(&self, mem: &Mem, pos: u16, head: u16) {
        let slot = (pos & (self.size - 1)) as u64;
        Self::set_u16(mem, self.avail + 4 + 2 * slot, head);
    }

    fn avail_idx(&self, mem: &Mem) -> u16 {
        Self::u16_at(mem, self.avail + 2)
    }

    fn set_avail_idx(&self, mem: &Mem, v: u16) {
        Self::set_u16(mem, self.avail + 2, v);
    }

    fn set_avail_flags(&self, mem: &Mem, v: u16) {
        Self::set_u16(mem, self.avail, v);
    }

    fn set_used_event(&self, mem: &Mem, v: u16) {
        Self::set_u16(mem, self.avail + 4 + 2 * self.size as u64, v);
    }

    /// Appends `head` to the avail ring and publishes it.
    fn offer(&self, mem: &Mem, head: u16) {
        let idx = self.avail_idx(mem);
        self.set_avail_entry(mem, idx, head);
        self.set_avail_idx(mem, idx.wrapping_add(1));
    }

    /// The whole used ring: flags, idx, entries, avail_event.
    fn used_area(&self, mem: &Mem) -> Vec<u8> {
        let mut b = vec![0u8; 6 + 8 * self.size as usize];
        mem.read_slice(&mut b, GuestAddress(self.used)).unwrap();
        b
    }

    fn used_entries(&self, mem: &Mem) -> Vec<u8> {
        self.used_area(mem)[4..4 + 8 * self.size as usize].to_vec()
    }

    fn used_flags(&self, mem: &Mem) -> u16 {
        Self::u16_at(mem, self.used)
    }

    fn used_idx(&self, mem: &Mem) -> u16 {
        Self::u16_at(mem, self.used + 2)
    }

    fn avail_event(&self, mem: &Mem) -> u16 {
        Self::u16_at(mem, self.used + 4 + 8 * self.size as u64)
    }

    fn vnic(&self, mem: &Arc<Mem>, event_idx: bool, next_avail: u16, next_used: u16) -> SplitRing {
        let regions = Arc::new(GuestRegions::new(mem.clone()));
        SplitRing::new(self.config(event_idx), regions, next_avail, next_used).expect("ring maps")
    }

    fn oracle(&self, mem: &Mem, event_idx: bool, next_avail: u16, next_used: u16) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.try_set_size(self.size).unwrap();
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used))
            .unwrap();
        q.set_event_idx(event_idx);
        q.set_next_avail(next_avail);
        q.set_next_used(next_used);
        q.set_ready(true);
        assert!(q.is_valid(mem));
        q
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle's chains, why they end, and what vnic must make of them
// ---------------------------------------------------------------------------------------------

/// One chain as the oracle yields it.
type OracleChain = (u16, Vec<D>);

fn oracle_pop(q: &mut Queue, mem: &Mem) -> Option<OracleChain> {
    let chain = q.pop_descriptor_chain(mem)?;
    let head = chain.head_index();
    Some((head, chain.map(|d| D::from_oracle(&d)).collect()))
}

fn oracle_pop_all(q: &mut Queue, mem: &Mem) -> Vec<OracleChain> {
    std::iter::from_fn(|| oracle_pop(q, mem)).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    /// A buffer descriptor, yielded.
    Buf(D),
    /// An indirect descriptor, followed (not yielded).
    Indirect(D),
}

/// Why a chain ended (in `DescriptorChain::next`'s terms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// The last descriptor has no `NEXT`.
    End,
    /// `next` outside the table, or the table's worth of descriptors used up.
    BadNext,
    /// A descriptor (of an indirect table) not readable from memory.
    Unreadable,
    /// An indirect descriptor inside an indirect table.
    Nested,
    /// An indirect table length not a multiple of 16, or over 65535 entries.
    BadIndirectLen,
    /// This descriptor would take the chain past 4 GiB.
    Overflow(D),
}

/// The oracle's chain walk (virtio-queue 0.18 `DescriptorChain::next`), step for step,
/// reporting what it followed and why it stopped.
fn spec_walk(mem: &Mem, ring: &Ring, head: u16) -> (Vec<Event>, Stop) {
    let mut events = Vec::new();
    let (mut table, mut table_len, mut next, mut ttl) = (ring.desc, ring.size, head, ring.size);
    let mut indirect = false;
    let mut total: u32 = 0;
    loop {
        if ttl == 0 || next >= table_len {
            return (events, Stop::BadNext);
        }
        let mut b = [0u8; 16];
        let readable = table
            .checked_add(16 * next as u64)
            .is_some_and(|a| mem.read_slice(&mut b, GuestAddress(a)).is_ok());
        if !readable {
            return (events, Stop::Unreadable);
        }
        let d = D::from_bytes(&b);
        if d.flags & INDIRECT != 0 {
            if indirect {
                return (events, Stop::Nested);
            }
            if !d.len.is_multiple_of(16) || d.len / 16 > u16::MAX as u32 {
                return (events, Stop::BadIndirectLen);
            }
            events.push(Event::Indirect(d));
            table = d.addr;
            table_len = (d.len / 16) as u16;
            next = 0;
            ttl = table_len;
            indirect = true;
            continue;
        }
        match total.checked_add(d.len) {
            Some(t) => total = t,
            None => return (events, Stop::Overflow(d)),
        }
        events.push(Event::Buf(d));
        if d.flags & NEXT == 0 {
            return (events, Stop::End);
        }
        next = d.next;
        ttl -= 1;
    }
}

/// One pop of vnic's, with segments turned back into guest ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Got {
    Chain {
        head: u16,
        bufs: Vec<(u64, u32)>,
        bytes: u32,
    },
    Bad(BadChain),
}

impl Got {
    /// The head the caller completes (with length 0 if the chain is bad).
    fn completes(&self) -> Option<u16> {
        match self {
            Got::Chain { head, .. } => Some(*head),
            Got::Bad(b) => b.head.map(|h| h.id),
        }
    }
}

/// What vnic's `pop(access)` must return for the oracle's chain `(head, descs)` (see the file's
/// header for the rule).
fn expected_chain(
    layout: &Layout,
    mem: &Mem,
    ring: &Ring,
    (head, descs): &OracleChain,
    access: Access,
) -> Got {
    let head = *head;
    if head >= ring.size {
        assert!(
            descs.is_empty(),
            "the oracle yields nothing for head {head}"
        );
        return Got::Bad(BadChain {
            head: None,
            error: ChainError::BadHead(head),
        });
    }
    let (events, stop) = spec_walk(mem, ring, head);
    let walked: Vec<D> = events
        .iter()
        .filter_map(|e| match e {
            Event::Buf(d) => Some(*d),
            Event::Indirect(_) => None,
        })
        .collect();
    assert_eq!(&walked, descs, "spec_walk follows the oracle (head {head})");
    assert_eq!(
        stop == Stop::End,
        descs.last().is_some_and(|d| d.flags & NEXT == 0),
        "complete iff the oracle's last descriptor has no NEXT"
    );
    let bad = |error| {
        Got::Bad(BadChain {
            head: Some(Head { id: head, slots: 1 }),
            error,
        })
    };
    let mut bufs = Vec::new();
    let mut bytes = 0u32;
    for e in &events {
        match *e {
            Event::Indirect(d) => {
                if d.len == 0 || !layout.in_one_region(d.addr, d.len as u64) {
                    return bad(ChainError::BadIndirect);
                }
            }
            Event::Buf(d) => {
                if d.wrong_direction(access) {
                    return bad(ChainError::WrongDirection);
                }
                let inside = d.len == 0
                    || GuestMemoryBackend::check_range(mem, GuestAddress(d.addr), d.len as usize);
                let pieces = layout.pieces(d.addr, d.len);
                assert_eq!(
                    inside,
                    pieces.is_some(),
                    "region split agrees with vm-memory"
                );
                let Some(pieces) = pieces else {
                    return bad(ChainError::OutsideMemory);
                };
                bufs.extend(pieces);
                bytes += d.len; // no overflow: the oracle yielded it
            }
        }
    }
    match stop {
        Stop::End => Got::Chain { head, bufs, bytes },
        Stop::BadNext => bad(ChainError::BadNext),
        Stop::Nested => bad(ChainError::NestedIndirect),
        Stop::BadIndirectLen => bad(ChainError::BadIndirect),
        Stop::Overflow(d) if d.wrong_direction(access) => bad(ChainError::WrongDirection),
        Stop::Overflow(_) => bad(ChainError::TooLong),
        Stop::Unreadable => {
            unreachable!("a table inside one region is readable (head {head}, {events:?})")
        }
    }
}

/// One `pop` of vnic's on `ring`, segments appended to `segs` (kept across pops, as RX does).
fn vnic_pop(
    ring: &mut SplitRing,
    layout: &Layout,
    mem: &Mem,
    access: Access,
    segs: &mut Vec<Segment>,
) -> Option<Got> {
    let mark = segs.len();
    // A prefetch is a hint: on any ring, hostile ones included, it changes nothing that the
    // pop after it (checked against the oracle) returns.
    for ahead in [0, 1, 7, u16::MAX] {
        ring.prefetch(ahead);
    }
    Some(match ring.pop(access, segs)? {
        Ok(c) => {
            assert_eq!(
                c.segs,
                (mark, segs.len()),
                "the chain's segments are the new ones"
            );
            let bufs: Vec<_> = segs[mark..]
                .iter()
                .map(|s| (layout.host_to_gpa(mem, s.host), s.len))
                .collect();
            assert!(bufs.iter().all(|b| b.1 > 0), "no empty segments");
            assert_eq!(c.head.slots, 1, "a split chain takes one avail entry");
            Got::Chain {
                head: c.head.id,
                bufs,
                bytes: c.bytes,
            }
        }
        Err(b) => {
            assert_eq!(segs.len(), mark, "a bad chain leaves no segments");
            Got::Bad(b)
        }
    })
}

/// Everything both sides need for one ring.
struct World {
    layout: Layout,
    ring: Ring,
    /// vnic's memory.
    mem_v: Arc<Mem>,
    /// The oracle's (same bytes at the start).
    mem_o: Mem,
}

impl World {
    fn new(layout: Layout, ring: Ring, mem: Mem) -> World {
        let mem_o = layout.copy(&mem);
        World {
            layout,
            ring,
            mem_v: Arc::new(mem),
            mem_o,
        }
    }

    /// Applies `f` to both memories.
    fn both(&self, f: impl Fn(&Mem)) {
        f(&self.mem_v);
        f(&self.mem_o);
    }

    /// Pops everything from vnic ring `v` and checks it against the oracle's chains `oracle`
    /// (popped from the same bytes, from the same position) under the rule above. Returns
    /// what vnic popped.
    fn check_pops(&self, v: &mut SplitRing, access: Access, oracle: &[OracleChain]) -> Vec<Got> {
        self.check_pops_marked(v, access, oracle).0
    }

    /// `check_pops`, with the ring's mark before each pop.
    fn check_pops_marked(
        &self,
        v: &mut SplitRing,
        access: Access,
        oracle: &[OracleChain],
    ) -> (Vec<Got>, Vec<AvailMark>) {
        let mut marks = Vec::new();
        let start = v.next_avail();
        let pending = self.ring.avail_idx(&self.mem_v).wrapping_sub(start);
        let mut segs = Vec::new();
        if pending > self.ring.size {
            // Both refuse to follow the index; vnic says so once (a poller must not count one
            // jump a million times), then has nothing to pop, and stays put.
            assert!(oracle.is_empty(), "the oracle pops nothing past a jump");
            assert_eq!(
                vnic_pop(v, &self.layout, &self.mem_v, access, &mut segs),
                Some(Got::Bad(BadChain {
                    head: None,
                    error: ChainError::AvailIndexJump(pending),
                }))
            );
            assert_eq!(v.next_avail(), start);
            assert_eq!(
                vnic_pop(v, &self.layout, &self.mem_v, access, &mut segs),
                None
            );
            assert_eq!(v.next_avail(), start);
            return (Vec::new(), marks);
        }
        assert_eq!(
            oracle.len(),
            pending as usize,
            "the oracle pops every entry"
        );
        let mut got = Vec::new();
        for chain in oracle {
            let want = expected_chain(&self.layout, &self.mem_o, &self.ring, chain, access);
            marks.push(v.mark());
            let g = vnic_pop(v, &self.layout, &self.mem_v, access, &mut segs)
                .expect("vnic pops as many chains as the oracle");
            assert_eq!(g, want, "{access:?}, oracle chain {chain:?}");
            got.push(g);
        }
        assert_eq!(
            vnic_pop(v, &self.layout, &self.mem_v, access, &mut segs),
            None
        );
        assert_eq!(v.next_avail(), start.wrapping_add(pending));
        (got, marks)
    }

    fn used_equal(&self, what: &str) {
        assert_eq!(
            self.ring.used_area(&self.mem_v),
            self.ring.used_area(&self.mem_o),
            "used ring bytes after {what}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Property: generated rings
// ---------------------------------------------------------------------------------------------

/// A descriptor before placement: kinds pick a class of value, the raw values pick one in it.
#[derive(Clone, Debug)]
struct GenDesc {
    addr_kind: u8,
    addr: u32,
    len_kind: u8,
    len: u32,
    flags: u8,
    next_kind: u8,
    next: u16,
}

fn gen_desc() -> impl Strategy<Value = GenDesc> {
    (
        0u8..16,
        any::<u32>(),
        0u8..16,
        any::<u32>(),
        any::<u8>(),
        0u8..16,
        any::<u16>(),
    )
        .prop_map(
            |(addr_kind, addr, len_kind, len, flags, next_kind, next)| GenDesc {
                addr_kind,
                addr,
                len_kind,
                len,
                flags,
                next_kind,
                next,
            },
        )
}

/// An indirect table: where it goes and its entries.
#[derive(Clone, Debug)]
struct GenTable {
    place: u8,
    off: u32,
    entries: Vec<GenDesc>,
}

fn gen_table() -> impl Strategy<Value = GenTable> {
    (0u8..8, any::<u32>(), vec(gen_desc(), 1..8)).prop_map(|(place, off, entries)| GenTable {
        place,
        off,
        entries,
    })
}

/// A publish/decide round: `k` more used entries, then the driver's `used_event` (relative to
/// `used.idx` or anywhere) and `NO_INTERRUPT` flag, then both decide.
#[derive(Clone, Debug)]
struct GenRound {
    k: u8,
    event_kind: u8,
    delta: i8,
    event_any: u16,
    no_interrupt: bool,
}

fn gen_round() -> impl Strategy<Value = GenRound> {
    (0u8..=4, 0u8..16, -6i8..=6, any::<u16>(), any::<bool>()).prop_map(
        |(k, event_kind, delta, event_any, no_interrupt)| GenRound {
            k,
            event_kind,
            delta,
            event_any,
            no_interrupt,
        },
    )
}

#[derive(Clone, Debug)]
struct Scenario {
    size_log2: u8,
    base: u8,
    second: u8,
    event_idx: bool,
    /// How often buffers are device-writable: never, always, half, rarely, mostly.
    write_bias: u8,
    descs: Vec<GenDesc>,
    tables: Vec<GenTable>,
    /// Avail ring entries: (kind, value): kinds 14 (`size`) and 15 are heads outside the table.
    heads: Vec<(u8, u16)>,
    next_avail: u16,
    /// `avail.idx - next_avail`: kinds 12 and 13 are exactly `size` and `size + 1`, kinds 14
    /// and 15 further ahead.
    ahead_kind: u8,
    ahead: u16,
    next_used: u16,
    used_lens: Vec<u32>,
    bursts: Vec<u8>,
    rounds: Vec<GenRound>,
    unpop: u8,
    extra: u8,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (0u8..=8)
        .prop_flat_map(|size_log2| {
            let n = 1usize << size_log2;
            (
                (Just(size_log2), 0u8..3, 0u8..3, any::<bool>(), 0u8..5),
                vec(gen_desc(), n),
                vec(gen_table(), 0..4),
                vec((0u8..16, any::<u16>()), n),
                (any::<u16>(), 0u8..16, any::<u16>(), any::<u16>()),
                (
                    vec(any::<u32>(), 1..8),
                    vec(1u8..=8, 1..6),
                    vec(gen_round(), 0..6),
                    any::<u8>(),
                    any::<u8>(),
                ),
            )
        })
        .prop_map(
            |(
                (size_log2, base, second, event_idx, write_bias),
                descs,
                tables,
                heads,
                (next_avail, ahead_kind, ahead, next_used),
                (used_lens, bursts, rounds, unpop, extra),
            )| Scenario {
                size_log2,
                base,
                second,
                event_idx,
                write_bias,
                descs,
                tables,
                heads,
                next_avail,
                ahead_kind,
                ahead,
                next_used,
                used_lens,
                bursts,
                rounds,
                unpop,
                extra,
            },
        )
}

/// Turns generated descriptors into bytes.
struct Placer<'a> {
    layout: &'a Layout,
    write_bias: u8,
    /// The indirect tables: (guest address, entries).
    tables: Vec<(u64, u64)>,
}

impl Placer<'_> {
    fn addr(&self, g: &GenDesc) -> u64 {
        let nreg = self.layout.regions.len();
        let r = (g.addr as usize >> 28) % nreg;
        let v = g.addr & 0x0fff_ffff;
        match g.addr_kind {
            0..=9 => {
                let (s, l) = self.layout.data(r);
                s + v as u64 % l
            }
            // Near a region's end: buffers run into the next region or off memory.
            10 | 11 => {
                let (s, l) = self.layout.regions[r];
                s + l - 1 - (v as u64 % 128)
            }
            // Just before a region's start.
            12 => self.layout.regions[r].0.wrapping_sub(1 + v as u64 % 64),
            13 | 14 => self.layout.outside(v),
            _ => g.addr as u64,
        }
    }

    fn len(&self, g: &GenDesc) -> u32 {
        match g.len_kind {
            0 | 1 => 0,
            2..=10 => 1 + g.len % 256,
            11..=13 => g.len % 0x4000,
            14 => [u32::MAX, 0x8000_0000, 0xffff_0000, 0x1_0000][(g.len % 4) as usize],
            _ => g.len,
        }
    }

    fn flags(&self, g: &GenDesc) -> u16 {
        let f = g.flags;
        let mut flags = (f & 1) as u16 * NEXT;
        let r = (f >> 1) & 7;
        let write = match self.write_bias {
            0 => false,
            1 => true,
            2 => r & 1 == 0,
            3 => r == 0,
            _ => r != 0,
        };
        if write {
            flags |= WRITE;
        }
        if (f >> 4) & 7 == 0 {
            flags |= INDIRECT;
        }
        flags
    }

    /// The descriptor, for a table of `table_len` entries.
    fn desc(&self, g: &GenDesc, table_len: u64) -> D {
        let flags = self.flags(g);
        let next = if g.next_kind < 14 {
            (g.next as u64 % table_len) as u16
        } else {
            (table_len + g.next as u64 % (65536 - table_len)) as u16
        };
        let (addr, len) = if flags & INDIRECT != 0 && !self.tables.is_empty() && g.addr_kind < 12 {
            let (at, n) = self.tables[g.addr as usize % self.tables.len()];
            let len = match g.len_kind {
                0..=9 => 16 * n,
                10 => 0,
                11 => 16 * n + 1 + g.len as u64 % 15,
                12 => 16 * (65536 + g.len as u64 % 16),
                _ => 16 * (n + 1 + g.len as u64 % 4),
            };
            (at, len as u32)
        } else {
            (self.addr(g), self.len(g))
        };
        D::new(addr, len, flags, next)
    }

    /// Where table `t` goes.
    fn place(&self, t: &GenTable) -> u64 {
        let bytes = 16 * t.entries.len() as u64;
        let nreg = self.layout.regions.len();
        let r = (t.off as usize >> 24) % nreg;
        match t.place {
            0..=4 => {
                let (s, l) = self.layout.data(r);
                let at = s + (t.off & 0xff_ffff) as u64 % (l - bytes);
                if t.place.is_multiple_of(2) {
                    at & !15
                } else {
                    at
                }
            }
            // Ending exactly at a region's end.
            5 => {
                let (s, l) = self.layout.regions[r];
                s + l - bytes
            }
            // Straddling the end of region 0: into region 1 (adjacent) or off memory.
            6 => {
                let (s, l) = self.layout.regions[0];
                s + l - 1 - t.off as u64 % (bytes - 1).max(1)
            }
            _ => self.layout.outside(t.off),
        }
    }
}

/// Builds the memory and ring of `s` (`avail.idx` set; positions are the caller's).
fn build(s: &Scenario) -> World {
    let base = [0, 0x10_0000, 0x1_0000_0000 - R0_LEN][s.base as usize % 3];
    let second = [Second::None, Second::Adjacent, Second::Gap][s.second as usize % 3];
    let layout = Layout::new(base, second);
    let mem = layout.mem();
    let size = 1u16 << s.size_log2;
    let ring = Ring::at(base, size);
    let mut placer = Placer {
        layout: &layout,
        write_bias: s.write_bias,
        tables: Vec::new(),
    };
    placer.tables = s
        .tables
        .iter()
        .map(|t| (placer.place(t), t.entries.len() as u64))
        .collect();
    for (t, &(at, n)) in s.tables.iter().zip(&placer.tables) {
        for (i, g) in t.entries.iter().enumerate() {
            let d = placer.desc(g, n);
            write_lenient(&mem, at.wrapping_add(16 * i as u64), &d.bytes());
        }
    }
    for (i, g) in s.descs.iter().enumerate() {
        ring.write_desc(&mem, i as u16, placer.desc(g, size as u64));
    }
    for (i, &(kind, v)) in s.heads.iter().enumerate() {
        let head = if kind < 14 {
            v % size
        } else if kind == 14 {
            size
        } else {
            (size as u32 + v as u32 % (65536 - size as u32)) as u16
        };
        ring.set_avail_entry(&mem, i as u16, head);
    }
    let pending = if s.ahead_kind < 12 {
        s.ahead % (size + 1)
    } else if s.ahead_kind < 14 {
        // Exactly a ring's worth, and one more.
        size + (s.ahead_kind - 12) as u16
    } else {
        (size as u32 + 1 + s.ahead as u32 % (65535 - size as u32)) as u16
    };
    ring.set_avail_idx(&mem, s.next_avail.wrapping_add(pending));
    World::new(layout, ring, mem)
}

fn run(s: &Scenario) {
    let w = build(s);
    let ring = w.ring;
    let (na, nu, ei) = (s.next_avail, s.next_used, s.event_idx);
    let mut q = ring.oracle(&w.mem_o, ei, na, nu);
    let mut rd = ring.vnic(&w.mem_v, ei, na, nu);
    let mut wr = ring.vnic(&w.mem_v, ei, na, nu);

    // Pops, both directions, against the same oracle chains.
    let mut oracle = oracle_pop_all(&mut q, &w.mem_o);
    let mut got_rd = w.check_pops(&mut rd, Access::Read, &oracle);
    let (mut got_wr, mut marks) = w.check_pops_marked(&mut wr, Access::Write, &oracle);
    let pending = ring.avail_idx(&w.mem_v).wrapping_sub(na);
    if pending > ring.size {
        // The driver repairs its index: both follow again from where they were.
        let repaired = na.wrapping_add(pending % (ring.size + 1));
        w.both(|m| ring.set_avail_idx(m, repaired));
        assert_eq!(q.next_avail(), na);
        oracle = oracle_pop_all(&mut q, &w.mem_o);
        got_rd = w.check_pops(&mut rd, Access::Read, &oracle);
        (got_wr, marks) = w.check_pops_marked(&mut wr, Access::Write, &oracle);
    }

    // Rewinding to the mark before the last n chains: they pop again, the same (the oracle goes
    // back as far).
    let n = s.unpop as usize % (got_wr.len() + 1);
    if n > 0 {
        wr.rewind(marks[marks.len() - n]);
    }
    for _ in 0..n {
        q.go_to_previous_position();
    }
    let again = oracle_pop_all(&mut q, &w.mem_o);
    assert_eq!(again, oracle[oracle.len() - n..]);
    let redo = w.check_pops(&mut wr, Access::Write, &again);
    assert_eq!(redo, got_wr[got_wr.len() - n..]);

    // Completions: the heads the caller completes are the oracle's valid heads, in order.
    let heads: Vec<u16> = got_rd.iter().filter_map(Got::completes).collect();
    let oracle_heads: Vec<u16> = oracle
        .iter()
        .map(|c| c.0)
        .filter(|&h| h < ring.size)
        .collect();
    assert_eq!(heads, oracle_heads);
    let mut lens = s.used_lens.iter().cycle();
    let mut bursts = s.bursts.iter().cycle();
    let mut rest = &heads[..];
    while !rest.is_empty() {
        let k = (*bursts.next().unwrap() as usize).min(rest.len());
        let before = ring.used_idx(&w.mem_v);
        for &h in &rest[..k] {
            let len = *lens.next().unwrap();
            rd.push_used(Head { id: h, slots: 1 }, len);
            q.add_used(&w.mem_o, h, len).unwrap();
        }
        rest = &rest[k..];
        // Entries are in place before the publish; used.idx moves only with it.
        assert_eq!(ring.used_entries(&w.mem_v), ring.used_entries(&w.mem_o));
        assert_eq!(ring.used_idx(&w.mem_v), before);
        assert_eq!(rd.publish(), k as u16);
        w.used_equal("publish");
    }
    assert_eq!(rd.next_used(), q.next_used());

    // Interrupt decisions, round by round.
    let mut decided_at = nu;
    for (i, r) in s.rounds.iter().enumerate() {
        for j in 0..r.k as u16 {
            let (h, len) = ((i as u16 * 7 + j) % ring.size, j as u32 * 100);
            rd.push_used(Head { id: h, slots: 1 }, len);
            q.add_used(&w.mem_o, h, len).unwrap();
        }
        rd.publish();
        w.used_equal("a round's publish");
        let idx = rd.next_used();
        let event = if r.event_kind < 12 {
            idx.wrapping_add(r.delta as u16)
        } else {
            r.event_any
        };
        let flags = if r.no_interrupt { NO_INTERRUPT } else { 0 };
        w.both(|m| {
            ring.set_used_event(m, event);
            ring.set_avail_flags(m, flags);
        });
        let ours = rd.needs_interrupt();
        let theirs = q.needs_notification(&w.mem_o).unwrap();
        if ei {
            assert_eq!(ours, theirs, "round {i}: used_event {event}, idx {idx}");
        } else {
            // virtio-queue ignores NO_INTERRUPT and always notifies; vnic honours the flag
            // and does not interrupt for nothing.
            assert!(theirs);
            assert_eq!(ours, idx != decided_at && !r.no_interrupt, "round {i}");
        }
        decided_at = idx;
    }

    // Kicks: off, then the driver publishes `extra` more chains, then on again.
    rd.suppress_kicks();
    q.disable_notification(&w.mem_o).unwrap();
    w.used_equal("suppress_kicks");
    if !ei {
        assert_eq!(ring.used_flags(&w.mem_v), NO_NOTIFY);
    }
    let idx = ring.avail_idx(&w.mem_v);
    let extra = s.extra as u16 % (ring.size.min(2) + 1);
    w.both(|m| ring.set_avail_idx(m, idx.wrapping_add(extra)));
    let ours = rd.arm_kicks();
    let theirs = q.enable_notification(&w.mem_o).unwrap();
    assert_eq!(
        ours,
        extra != 0,
        "look again iff chains came after the empty pop"
    );
    assert_eq!(theirs, ours);
    if ei {
        assert_eq!(ring.avail_event(&w.mem_v), idx.wrapping_add(extra));
        assert_eq!(ring.avail_event(&w.mem_o), q.next_avail());
        if extra == 0 {
            w.used_equal("arm_kicks");
        }
    } else {
        assert_eq!(ring.used_flags(&w.mem_v), 0);
        w.used_equal("arm_kicks");
    }
    // What came after the empty pop pops the same on both.
    let oracle = oracle_pop_all(&mut q, &w.mem_o);
    w.check_pops(&mut rd, Access::Read, &oracle);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn ring_layer_matches_virtio_queue(s in scenario()) {
        run(&s);
    }
}

// ---------------------------------------------------------------------------------------------
// The hostile cases of tests/hostile_guest.rs, on the ring layer directly, in both modes
// ---------------------------------------------------------------------------------------------

/// End of guest memory in these cases (one region from 0, as the test guests have).
const MEM: u64 = 0x10_0000;
/// The hand-made chain.
const RAW: u16 = 240;
/// A good chain published after it.
const GOOD: u16 = 0;
const BUF: u64 = 0x8000;

/// A 256-entry ring at 0 in one region `[0, MEM)`.
fn fixture() -> World {
    let layout = Layout::single(0, MEM);
    let mem = layout.mem();
    World::new(layout, Ring::at(0, 256), mem)
}

/// Publishes chain RAW (written by `build`) and then a good 72-byte chain at GOOD on a fresh
/// ring, pops both with `access`: RAW must come out as `want`, GOOD as a good chain; both are
/// checked against the oracle too, and so are their completions.
fn case(access: Access, want: Result<(Vec<(u64, u32)>, u32), ChainError>, build: impl Fn(&World)) {
    for event_idx in [false, true] {
        let w = fixture();
        build(&w);
        let good = if access == Access::Write { WRITE } else { 0 };
        w.both(|m| {
            w.ring.write_desc(m, GOOD, D::new(BUF, 72, good, 0));
            w.ring.offer(m, RAW);
            w.ring.offer(m, GOOD);
        });
        let mut q = w.ring.oracle(&w.mem_o, event_idx, 0, 0);
        let mut v = w.ring.vnic(&w.mem_v, event_idx, 0, 0);
        let oracle = oracle_pop_all(&mut q, &w.mem_o);
        let got = w.check_pops(&mut v, access, &oracle);
        let raw = match &want {
            Ok((bufs, bytes)) => Got::Chain {
                head: RAW,
                bufs: bufs.clone(),
                bytes: *bytes,
            },
            Err(error) => Got::Bad(BadChain {
                head: Some(Head { id: RAW, slots: 1 }),
                error: *error,
            }),
        };
        let good = Got::Chain {
            head: GOOD,
            bufs: vec![(BUF, 72)],
            bytes: 72,
        };
        assert_eq!(got, [raw, good], "event_idx {event_idx}");
        for (h, len) in [(RAW, 0), (GOOD, 72)] {
            v.push_used(Head { id: h, slots: 1 }, len);
            q.add_used(&w.mem_o, h, len).unwrap();
        }
        v.publish();
        w.used_equal("completing both");
        assert_eq!(v.needs_interrupt(), q.needs_notification(&w.mem_o).unwrap());
    }
}

fn raw_desc(w: &World, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    w.both(|m| w.ring.write_desc(m, i, D::new(addr, len, flags, next)));
}

#[test]
fn tx_address_outside_guest_memory() {
    case(Access::Read, Err(ChainError::OutsideMemory), |w| {
        raw_desc(w, RAW, MEM + 4096, 100, 0, 0)
    });
}

#[test]
fn tx_buffer_running_past_the_end_of_memory() {
    case(Access::Read, Err(ChainError::OutsideMemory), |w| {
        raw_desc(w, RAW, MEM - 50, 100, 0, 0)
    });
}

#[test]
fn tx_zero_length_self_loop() {
    case(Access::Read, Err(ChainError::BadNext), |w| {
        raw_desc(w, RAW, 0, 0, NEXT, RAW)
    });
}

#[test]
fn tx_two_descriptor_loop_with_data() {
    case(Access::Read, Err(ChainError::BadNext), |w| {
        raw_desc(w, RAW, BUF, 40, NEXT, RAW + 1);
        raw_desc(w, RAW + 1, BUF + 40, 32, NEXT, RAW);
    });
}

#[test]
fn tx_next_out_of_the_table() {
    case(Access::Read, Err(ChainError::BadNext), |w| {
        raw_desc(w, RAW, BUF, 40, NEXT, 9999)
    });
}

/// Not the ring layer's to refuse (the datapath counts it as a short frame): an empty chain.
#[test]
fn tx_zero_length_chain() {
    case(Access::Read, Ok((vec![], 0)), |w| {
        raw_desc(w, RAW, 0, 0, 0, 0)
    });
}

#[test]
fn tx_chain_no_longer_than_the_header() {
    case(Access::Read, Ok((vec![(BUF, 12)], 12)), |w| {
        raw_desc(w, RAW, BUF, 12, 0, 0)
    });
}

#[test]
fn tx_header_split_over_descriptors() {
    case(Access::Read, Ok((vec![(BUF, 5), (BUF + 5, 17)], 22)), |w| {
        raw_desc(w, RAW, BUF, 5, NEXT, RAW + 1);
        raw_desc(w, RAW + 1, BUF + 5, 17, 0, 0);
    });
}

#[test]
fn tx_device_writable_descriptor() {
    case(Access::Read, Err(ChainError::WrongDirection), |w| {
        raw_desc(w, RAW, BUF, 72, WRITE, 0)
    });
}

/// Also not the ring layer's to refuse (the datapath drops it as oversize).
#[test]
fn tx_oversize_frame() {
    case(Access::Read, Ok((vec![(BUF, 4000)], 4000)), |w| {
        raw_desc(w, RAW, BUF, 4000, 0, 0)
    });
}

#[test]
fn tx_indirect_table_of_bad_length() {
    case(Access::Read, Err(ChainError::BadIndirect), |w| {
        w.both(|m| {
            m.write_slice(&[0u8; 64], GuestAddress(BUF + 0x1000))
                .unwrap()
        });
        raw_desc(w, RAW, BUF + 0x1000, 17, INDIRECT, 0);
    });
}

#[test]
fn rx_device_readable_buffer() {
    case(Access::Write, Err(ChainError::WrongDirection), |w| {
        raw_desc(w, RAW, BUF + 0x1000, 2048, 0, 0)
    });
}

#[test]
fn rx_buffer_outside_guest_memory() {
    case(Access::Write, Err(ChainError::OutsideMemory), |w| {
        raw_desc(w, RAW, MEM + 8192, 2048, WRITE, 0)
    });
}

#[test]
fn rx_buffer_loop() {
    case(Access::Write, Err(ChainError::BadNext), |w| {
        raw_desc(w, RAW, 0, 0, WRITE | NEXT, RAW)
    });
}

#[test]
fn avail_index_far_ahead_then_repaired() {
    for event_idx in [false, true] {
        let w = fixture();
        let sane = 7u16;
        w.both(|m| {
            w.ring.write_desc(m, GOOD, D::new(BUF, 72, 0, 0));
            w.ring.set_avail_entry(m, sane, GOOD);
            w.ring.set_avail_idx(m, sane.wrapping_add(5000));
        });
        let mut q = w.ring.oracle(&w.mem_o, event_idx, sane, 0);
        let mut v = w.ring.vnic(&w.mem_v, event_idx, sane, 0);
        let mut segs = Vec::new();
        for round in 0..3 {
            assert!(oracle_pop(&mut q, &w.mem_o).is_none());
            // Said once, then nothing to pop until the driver moves its index.
            let want = (round == 0).then_some(Err(BadChain {
                head: None,
                error: ChainError::AvailIndexJump(5000),
            }));
            assert_eq!(v.pop(Access::Read, &mut segs), want);
            assert_eq!((v.next_avail(), q.next_avail()), (sane, sane));
            assert!(segs.is_empty());
        }
        // Kicks are not armed into a jump: nothing there is followed.
        assert!(!v.arm_kicks());
        // Repaired: the good chain pops.
        w.both(|m| w.ring.set_avail_idx(m, sane + 1));
        let oracle = oracle_pop_all(&mut q, &w.mem_o);
        let got = w.check_pops(&mut v, Access::Read, &oracle);
        assert_eq!(
            got,
            [Got::Chain {
                head: GOOD,
                bufs: vec![(BUF, 72)],
                bytes: 72
            }]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// More bad chains, and the designed differences, one each
// ---------------------------------------------------------------------------------------------

#[test]
fn head_outside_the_table_has_no_head_to_complete() {
    for event_idx in [false, true] {
        let w = fixture();
        w.both(|m| {
            w.ring.write_desc(m, GOOD, D::new(BUF, 72, 0, 0));
            w.ring.offer(m, 300);
            w.ring.offer(m, GOOD);
        });
        let mut q = w.ring.oracle(&w.mem_o, event_idx, 0, 0);
        let mut v = w.ring.vnic(&w.mem_v, event_idx, 0, 0);
        let oracle = oracle_pop_all(&mut q, &w.mem_o);
        assert_eq!(oracle[0], (300, vec![]), "the oracle yields an empty chain");
        let got = w.check_pops(&mut v, Access::Read, &oracle);
        assert_eq!(
            got[0],
            Got::Bad(BadChain {
                head: None,
                error: ChainError::BadHead(300)
            })
        );
        assert_eq!(got[1].completes(), Some(GOOD));
    }
}

#[test]
fn nested_indirect_table() {
    case(Access::Read, Err(ChainError::NestedIndirect), |w| {
        let table = BUF + 0x1000;
        w.both(|m| {
            write_lenient(m, table, &D::new(BUF, 10, NEXT, 1).bytes());
            write_lenient(m, table + 16, &D::new(table, 32, INDIRECT, 0).bytes());
        });
        raw_desc(w, RAW, table, 32, INDIRECT, 0);
    });
}

#[test]
fn indirect_table_outside_memory() {
    case(Access::Read, Err(ChainError::BadIndirect), |w| {
        raw_desc(w, RAW, MEM + 0x1000, 32, INDIRECT, 0)
    });
}

#[test]
fn indirect_table_of_length_zero() {
    case(Access::Read, Err(ChainError::BadIndirect), |w| {
        raw_desc(w, RAW, BUF, 0, INDIRECT, 0)
    });
}

/// A good two-entry indirect chain whose table is at `table`.
fn good_indirect_table_at(table: u64) {
    case(
        Access::Read,
        Ok((vec![(BUF + 100, 10), (BUF + 200, 20)], 30)),
        |w| {
            w.both(|m| {
                write_lenient(m, table, &D::new(BUF + 100, 10, NEXT, 1).bytes());
                write_lenient(m, table + 16, &D::new(BUF + 200, 20, 0, 0).bytes());
            });
            raw_desc(w, RAW, table, 32, INDIRECT, 0);
        },
    );
}

/// A good indirect chain; the table need not be aligned.
#[test]
fn good_indirect_table() {
    good_indirect_table_at(BUF + 0x1003);
}

/// An indirect table ending exactly at the end of memory is inside it.
#[test]
fn indirect_table_ending_at_the_end_of_memory() {
    good_indirect_table_at(MEM - 32);
}

/// An indirect table of 65536 entries (1 MiB, inside memory here) is one too many.
#[test]
fn indirect_table_of_65536_entries() {
    case(Access::Read, Err(ChainError::BadIndirect), |w| {
        raw_desc(w, RAW, 0, 0x10_0000, INDIRECT, 0)
    });
}

/// Past 4 GiB in total: the oracle stops before the descriptor that crosses it.
#[test]
fn chain_longer_than_4_gib() {
    case(Access::Read, Err(ChainError::TooLong), |w| {
        raw_desc(w, RAW, BUF, 100, NEXT, RAW + 1);
        raw_desc(w, RAW + 1, BUF, u32::MAX, 0, 0);
    });
    // vnic checks the direction of that descriptor first.
    case(Access::Read, Err(ChainError::WrongDirection), |w| {
        raw_desc(w, RAW, BUF, 100, NEXT, RAW + 1);
        raw_desc(w, RAW + 1, BUF, u32::MAX, WRITE, 0);
    });
}

/// A buffer across two adjacent regions: one segment per region.
#[test]
fn buffer_across_adjacent_regions() {
    let layout = Layout::new(0x10_0000, Second::Adjacent);
    let mem = layout.mem();
    let w = World::new(layout, Ring::at(0x10_0000, 16), mem);
    let at = 0x10_0000 + R0_LEN - 10;
    w.both(|m| {
        w.ring.write_desc(m, 3, D::new(at, 30, WRITE, 0));
        w.ring.offer(m, 3);
    });
    let mut q = w.ring.oracle(&w.mem_o, false, 0, 0);
    let mut v = w.ring.vnic(&w.mem_v, false, 0, 0);
    let oracle = oracle_pop_all(&mut q, &w.mem_o);
    let got = w.check_pops(&mut v, Access::Write, &oracle);
    assert_eq!(
        got,
        [Got::Chain {
            head: 3,
            bufs: vec![(at, 10), (at + 10, 20)],
            bytes: 30
        }]
    );
}

/// Designed difference: an indirect table must lie inside one region. The oracle follows one
/// that crosses into an adjacent region (and yields a good chain); vnic refuses it. (The spec
/// does not forbid such a table; Linux allocates indirect tables with kmalloc, which never
/// crosses a memory-backend boundary.)
#[test]
fn indirect_table_across_adjacent_regions_is_refused() {
    let layout = Layout::new(0x10_0000, Second::Adjacent);
    let mem = layout.mem();
    let w = World::new(layout, Ring::at(0x10_0000, 16), mem);
    let table = 0x10_0000 + R0_LEN - 24;
    w.both(|m| {
        write_lenient(m, table, &D::new(0x10_4000, 10, NEXT, 1).bytes());
        write_lenient(m, table + 16, &D::new(0x10_5000, 20, 0, 0).bytes());
        w.ring.write_desc(m, 3, D::new(table, 32, INDIRECT, 0));
        w.ring.offer(m, 3);
    });
    let mut q = w.ring.oracle(&w.mem_o, false, 0, 0);
    let mut v = w.ring.vnic(&w.mem_v, false, 0, 0);
    let oracle = oracle_pop_all(&mut q, &w.mem_o);
    assert_eq!(oracle[0].1.len(), 2, "the oracle yields both entries");
    assert_eq!(oracle[0].1[1].flags & NEXT, 0, "a complete chain");
    let got = w.check_pops(&mut v, Access::Read, &oracle);
    assert_eq!(
        got,
        [Got::Bad(BadChain {
            head: Some(Head { id: 3, slots: 1 }),
            error: ChainError::BadIndirect
        })]
    );
}

/// Designed difference: an indirect table running off memory is refused whole, even where the
/// oracle would yield a complete chain from its readable entries.
#[test]
fn indirect_table_running_off_memory_is_refused_whole() {
    case(Access::Read, Err(ChainError::BadIndirect), |w| {
        let table = MEM - 16;
        w.both(|m| write_lenient(m, table, &D::new(BUF, 10, 0, 0).bytes()));
        raw_desc(w, RAW, table, 32, INDIRECT, 0);
    });
}

// ---------------------------------------------------------------------------------------------
// Notifications
// ---------------------------------------------------------------------------------------------

/// Without EVENT_IDX vnic honours VRING_AVAIL_F_NO_INTERRUPT (virtio-queue ignores it), and
/// never interrupts when nothing was published since the last decision.
#[test]
fn no_interrupt_flag_is_honoured() {
    let w = fixture();
    let mut q = w.ring.oracle(&w.mem_o, false, 0, 0);
    let mut v = w.ring.vnic(&w.mem_v, false, 0, 0);
    for (no_interrupt, push, want) in [
        (false, 1, true),
        (true, 1, false),
        (false, 0, false),
        (false, 3, true),
        (true, 0, false),
    ] {
        w.both(|m| {
            w.ring
                .set_avail_flags(m, if no_interrupt { NO_INTERRUPT } else { 0 })
        });
        for _ in 0..push {
            v.push_used(Head { id: GOOD, slots: 1 }, 1);
            q.add_used(&w.mem_o, GOOD, 1).unwrap();
        }
        v.publish();
        assert_eq!(v.needs_interrupt(), want);
        assert!(q.needs_notification(&w.mem_o).unwrap());
    }
    w.used_equal("the rounds");
}

/// EVENT_IDX: an interrupt iff `used_event` was passed since the last decision, as the oracle
/// decides, including around the wrap of the 16-bit indices.
#[test]
fn used_event_decides_like_the_oracle() {
    for start in [0u16, 65530] {
        let w = fixture();
        let mut q = w.ring.oracle(&w.mem_o, true, 0, start);
        let mut v = w.ring.vnic(&w.mem_v, true, 0, start);
        for round in 0u16..40 {
            let k = round % 4;
            for _ in 0..k {
                v.push_used(Head { id: GOOD, slots: 1 }, 0);
                q.add_used(&w.mem_o, GOOD, 0).unwrap();
            }
            v.publish();
            let event = start.wrapping_add(round * 3 / 2).wrapping_sub(2);
            w.both(|m| w.ring.set_used_event(m, event));
            assert_eq!(
                v.needs_interrupt(),
                q.needs_notification(&w.mem_o).unwrap(),
                "start {start} round {round}"
            );
        }
        w.used_equal("the rounds");
    }
}

/// `arm_kicks` arms at `avail.idx` (EVENT_IDX) or clears NO_NOTIFY, and says "look again" iff
/// the driver published after the last empty pop; after chains were put back (an RX frame
/// that did not fit) it arms at `avail.idx`, where the oracle would arm at `next_avail`.
#[test]
fn arm_kicks_after_a_rewind_arms_at_avail_idx() {
    for event_idx in [false, true] {
        let w = fixture();
        w.both(|m| {
            for h in 0..3 {
                w.ring.write_desc(m, h, D::new(BUF, 100, WRITE, 0));
                w.ring.offer(m, h);
            }
        });
        let mut v = w.ring.vnic(&w.mem_v, event_idx, 0, 0);
        let mut segs = Vec::new();
        let start = v.mark();
        for _ in 0..3 {
            assert!(matches!(v.pop(Access::Write, &mut segs), Some(Ok(_))));
        }
        assert!(v.pop(Access::Write, &mut segs).is_none());
        v.rewind(start);
        v.suppress_kicks();
        let flags = if event_idx { 0 } else { NO_NOTIFY };
        assert_eq!(w.ring.used_flags(&w.mem_v), flags);
        assert!(!v.arm_kicks(), "nothing new since the empty pop");
        assert_eq!(w.ring.used_flags(&w.mem_v), 0);
        if event_idx {
            assert_eq!(
                w.ring.avail_event(&w.mem_v),
                3,
                "at avail.idx, not next_avail (0)"
            );
        }
        // The driver adds one: look again.
        w.both(|m| {
            w.ring.write_desc(m, 3, D::new(BUF, 100, WRITE, 0));
            w.ring.offer(m, 3);
        });
        assert!(v.arm_kicks());
        if event_idx {
            assert_eq!(w.ring.avail_event(&w.mem_v), 4);
        }
        // The chains put back, then the new one.
        let heads: Vec<_> = std::iter::from_fn(|| v.pop(Access::Write, &mut segs))
            .map(|r| r.unwrap().head.id)
            .collect();
        assert_eq!(heads, [0, 1, 2, 3]);
    }
}

/// A poller keeps kicks off for good: `arm_kicks` writes nothing and never says "look again".
#[test]
fn polling_keeps_kicks_off() {
    for event_idx in [false, true] {
        let w = fixture();
        let mut v = w.ring.vnic(&w.mem_v, event_idx, 0, 0);
        v.set_polling(true);
        let flags = if event_idx { 0 } else { NO_NOTIFY };
        assert_eq!(w.ring.used_flags(&w.mem_v), flags);
        let before = w.ring.used_area(&w.mem_v);
        w.both(|m| {
            w.ring.write_desc(m, 0, D::new(BUF, 100, 0, 0));
            w.ring.offer(m, 0);
        });
        assert!(!v.arm_kicks());
        v.suppress_kicks();
        assert_eq!(w.ring.used_area(&w.mem_v), before, "nothing written");
        v.set_polling(false);
        assert!(v.arm_kicks(), "published since the (initial) empty state");
        assert_eq!(w.ring.used_flags(&w.mem_v), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Designed differences outside the chains
// ---------------------------------------------------------------------------------------------

/// vnic reads `avail.idx` once per burst: a driver that lowers it meanwhile still has the
/// entries it had published popped (they were its to give) until the burst's index is used
/// up; the oracle reads it on every pop.
#[test]
fn avail_idx_is_read_once_per_burst() {
    let w = fixture();
    w.both(|m| {
        for h in 0..3 {
            w.ring.write_desc(m, h, D::new(BUF, 100, 0, 0));
            w.ring.offer(m, h);
        }
    });
    let mut q = w.ring.oracle(&w.mem_o, false, 0, 0);
    let mut v = w.ring.vnic(&w.mem_v, false, 0, 0);
    let mut segs = Vec::new();
    assert_eq!(v.pop(Access::Read, &mut segs).unwrap().unwrap().head.id, 0);
    assert_eq!(oracle_pop(&mut q, &w.mem_o).unwrap().0, 0);
    w.both(|m| w.ring.set_avail_idx(m, 1));
    assert!(oracle_pop(&mut q, &w.mem_o).is_none());
    for h in [1, 2] {
        assert_eq!(v.pop(Access::Read, &mut segs).unwrap().unwrap().head.id, h);
    }
    // Then it reads the index again: now behind it, which is a jump (as the oracle would see
    // it from there).
    assert_eq!(
        v.pop(Access::Read, &mut segs),
        Some(Err(BadChain {
            head: None,
            error: ChainError::AvailIndexJump(1u16.wrapping_sub(3)),
        }))
    );
    q.set_next_avail(3);
    assert!(oracle_pop(&mut q, &w.mem_o).is_none());
}

/// vnic maps each ring part to one host pointer, so a part must lie inside one region; the
/// oracle accepts a ring part across two adjacent regions.
#[test]
fn ring_part_across_adjacent_regions_is_refused() {
    let layout = Layout::new(0x10_0000, Second::Adjacent);
    let mem = Arc::new(layout.mem());
    let ring = Ring {
        size: 256,
        desc: 0x10_0000 + R0_LEN - 0x800,
        avail: 0x10_0000 + 0x1000,
        used: 0x10_0000 + 0x1400,
    };
    assert!(ring.oracle(&mem, false, 0, 0).is_valid(&*mem));
    let regions = Arc::new(GuestRegions::new(mem.clone()));
    assert_eq!(
        SplitRing::new(ring.config(false), regions, 0, 0).err(),
        Some(RingError::OutsideMemory(ring.desc))
    );
}

// ---------------------------------------------------------------------------------------------
// Found here: the jump as the datapath sees it
// ---------------------------------------------------------------------------------------------

/// A jump, as the datapath sees it: once counted an answer per pop as a chain (64 "chains" a
/// burst, so the event worker looked again at once, one core spinning and `tx_bad_descriptor`
/// counting about two million drops a second), and a poller counted one per pass. One jump,
/// one kick: a handful of drops at most, and none more while the guest does nothing, in both
/// modes.
#[test]
fn avail_index_jump_does_not_spin_the_tx_worker() {
    use common::*;
    use vnic_testdriver::GuestOptions;
    const TXQ: u16 = 1;
    let net = start(&["", ""]);
    let mut a = net.connect(0, GuestOptions::default());
    let _b = net.connect(1, GuestOptions::default());
    let sane = a.queue(TXQ).avail_idx();
    a.queue(TXQ).set_avail_idx(sane.wrapping_add(5000));
    a.queue(TXQ).kick().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let first = net.drops(0, "tx_bad_descriptor");
    std::thread::sleep(Duration::from_millis(200));
    let later = net.drops(0, "tx_bad_descriptor");
    a.queue(TXQ).set_avail_idx(sane);
    assert!(
        first <= 64,
        "{first} drops counted for one jump and one kick"
    );
    assert_eq!(
        later, first,
        "drops go on being counted while the guest does nothing"
    );
}
