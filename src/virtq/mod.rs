//! The ring layer: the only code that knows how a virtqueue is laid out in guest memory.
//!
//! The datapath drives a [`Ring`] (a split or a packed ring, as negotiated) through a small
//! burst API, the same whatever the ring type:
//! - [`Ring::pop`] takes the next available chain as checked [`Segment`]s of guest memory; a
//!   bad chain fails alone ([`ChainError`]); [`Ring::mark`] / [`Ring::rewind`] put chains back;
//! - [`Ring::push_used`] completes a chain, [`Ring::publish`] makes a burst of them visible
//!   with one store, [`Ring::needs_interrupt`] decides once per burst;
//! - [`Ring::suppress_kicks`] / [`Ring::arm_kicks`] / [`Ring::set_polling`] switch the
//!   driver's notifications.
//!
//! Completion is always in the order chains were made available, which is what
//! `VIRTIO_F_IN_ORDER` needs; with it, a TX ring publishes one used entry per burst
//! (`RingConfig::batch_used`).
//!
//! The control path (vhost-user messages, `GET_VRING_BASE`) stays with vhost-user-backend and
//! virtio-queue's `Queue`; [`RingCache`] keeps our ring in step with it: rebuilt when the
//! frontend moves the ring or sends new memory, its positions written back after each pass.
//! virtio-queue only knows split rings, but its addresses and its 16-bit `next_avail` carry a
//! packed ring's too (`SET_VRING_BASE`'s bit 15 is the wrap counter, and survives in it).

pub mod memory;
pub mod packed;
pub mod split;

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

pub use memory::{
    append_from_guest, copy_from_guest, copy_to_guest, split_from_guest, GuestRegions, Segment,
};
pub use packed::PackedRing;
pub use split::SplitRing;

/// Guest memory as vnic maps it (no dirty-page bitmap: live migration is not offered).
pub type GuestMem = vm_memory::GuestMemoryMmap<()>;
/// Guest memory that the protocol thread can replace while workers run.
pub type GuestMemAtomic = vm_memory::GuestMemoryAtomic<GuestMem>;

/// Which buffers a chain must have: device-readable (a TX chain) or device-writable (RX).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Where a queue is, as the frontend configured it (guest-physical addresses), and how it is
/// driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    pub size: u16,
    pub desc_table: u64,
    /// Split: the avail ring. Packed: the driver event suppression structure.
    pub avail_ring: u64,
    /// Split: the used ring. Packed: the device event suppression structure.
    pub used_ring: u64,
    pub event_idx: bool,
    /// VIRTIO_F_RING_PACKED.
    pub packed: bool,
    /// VIRTIO_F_IN_ORDER on a TX queue: one used entry per published burst (RX entries each
    /// carry their own length, so they are never batched).
    pub batch_used: bool,
}

/// What completes a chain: the id the driver gave it (split: its head descriptor; packed: its
/// buffer id) and the ring slots it took (packed: its descriptors in the ring; split: 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub id: u16,
    pub slots: u16,
}

/// A ring's avail position, to come back to ([`Ring::rewind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvailMark {
    next: u16,
    wrap: bool,
}

/// A chain taken from the ring: its head, its buffers (`segs[start..end]` of the caller's
/// segment list) and their total length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoppedChain {
    pub head: Head,
    pub segs: (usize, usize),
    pub bytes: u32,
}

/// Why a chain could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// The avail entry names no descriptor of the table (no used entry can name it either).
    BadHead(u16),
    /// The driver published more chains than the ring holds: `avail.idx` is not followed.
    AvailIndexJump(u16),
    /// A `next` outside the table, or a chain longer than its table (a loop).
    BadNext,
    /// An indirect descriptor inside an indirect table.
    NestedIndirect,
    /// An indirect table of a bad length or outside guest memory.
    BadIndirect,
    /// A device-writable buffer in a TX chain, or a device-readable one in an RX chain.
    WrongDirection,
    /// A buffer not inside guest memory.
    OutsideMemory,
    /// Longer than 4 GiB in total.
    TooLong,
    /// Packed: a chain whose descriptors all say "more" for a whole ring (it is not followed).
    EndlessChain,
}

/// A chain that cannot be used: the head to complete with length 0 (None when there is no
/// valid one: a bad head, or no entry taken at all) and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadChain {
    pub head: Option<Head>,
    pub error: ChainError,
}

/// Why a ring cannot be used as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("ring size {0} is not a power of two up to 32768")]
    BadSize(u16),
    #[error("ring part at {0:#x} is not inside guest memory")]
    OutsideMemory(u64),
    #[error("ring part at {0:#x} is misaligned")]
    Misaligned(u64),
}

/// The host address of ring part `[gpa, gpa + len)`: it must lie inside one region and be
/// `align`-aligned (the split and packed layouts' rules differ only in their numbers).
fn map_part(
    regions: &GuestRegions,
    gpa: u64,
    len: u64,
    align: usize,
) -> Result<*mut u8, RingError> {
    let host = regions
        .host_range(gpa, len)
        .ok_or(RingError::OutsideMemory(gpa))?;
    if !(host as usize).is_multiple_of(align) || !gpa.is_multiple_of(align as u64) {
        return Err(RingError::Misaligned(gpa));
    }
    Ok(host)
}

/// One queue's ring, of the type negotiated. Calls go straight to the ring (a branch the CPU
/// predicts: a queue never changes type while it runs).
pub enum Ring {
    Split(SplitRing),
    Packed(PackedRing),
}

macro_rules! each {
    ($self:expr, $r:ident => $e:expr) => {
        match $self {
            Ring::Split($r) => $e,
            Ring::Packed($r) => $e,
        }
    };
}

impl Ring {
    fn new(
        config: RingConfig,
        regions: Arc<GuestRegions>,
        at: Positions,
    ) -> Result<Ring, RingError> {
        Ok(if config.packed {
            Ring::Packed(PackedRing::new(config, regions, at.avail)?)
        } else {
            Ring::Split(SplitRing::new(config, regions, at.avail, at.used)?)
        })
    }

    pub fn config(&self) -> RingConfig {
        each!(self, r => r.config())
    }

    fn regions(&self) -> &Arc<GuestRegions> {
        each!(self, r => r.regions())
    }

    fn is_of(&self, mem: &GuestMem) -> bool {
        each!(self, r => r.is_of(mem))
    }

    /// The positions to write back to virtio-queue's `Queue` (packed: the encoded avail
    /// position in both; used is always there too between passes).
    fn positions(&self) -> Positions {
        match self {
            Ring::Split(r) => Positions {
                avail: r.next_avail(),
                used: r.next_used(),
            },
            Ring::Packed(r) => Positions {
                avail: r.position(),
                used: r.position(),
            },
        }
    }

    /// Takes over positions set from outside.
    fn reset_positions(&mut self, at: Positions) {
        match self {
            Ring::Split(r) => r.reset_positions(at.avail, at.used),
            Ring::Packed(r) => r.reset_position(at.avail),
        }
    }

    /// A connection's first look at a packed ring: where its descriptors say it stands, if
    /// that differs from what the frontend said (see [`PackedRing::scan_position`]: QEMU's
    /// position after vnic was killed is stale). The split ring's `used.idx` is in guest
    /// memory, where QEMU reads it back itself.
    fn resume(&mut self, at: Positions) {
        if let Ring::Packed(r) = self {
            if let Some(found) = r.scan_position().filter(|&p| p != at.avail) {
                crate::warn_ratelimited!(
                    "packed ring: the frontend resumes it at {:#06x}, its descriptors stand at \
                     {found:#06x} (vnic restarted?): resuming at {found:#06x}",
                    at.avail
                );
                r.reset_position(found);
            }
        }
    }

    /// The next available chain (see [`SplitRing::pop`]).
    #[inline(always)]
    pub fn pop(
        &mut self,
        access: Access,
        segs: &mut Vec<Segment>,
    ) -> Option<Result<PoppedChain, BadChain>> {
        each!(self, r => r.pop(access, segs))
    }

    #[inline]
    pub fn prefetch(&self, ahead: u16) {
        each!(self, r => r.prefetch(ahead))
    }

    #[inline]
    pub fn mark(&self) -> AvailMark {
        each!(self, r => r.mark())
    }

    #[inline]
    pub fn rewind(&mut self, mark: AvailMark) {
        each!(self, r => r.rewind(mark))
    }

    #[inline]
    pub fn push_used(&mut self, head: Head, len: u32) {
        each!(self, r => r.push_used(head, len))
    }

    #[inline]
    pub fn publish(&mut self) -> u16 {
        each!(self, r => r.publish())
    }

    pub fn needs_interrupt(&mut self) -> bool {
        each!(self, r => r.needs_interrupt())
    }

    pub fn suppress_kicks(&mut self) {
        each!(self, r => r.suppress_kicks())
    }

    pub fn arm_kicks(&mut self) -> bool {
        each!(self, r => r.arm_kicks())
    }

    pub fn set_polling(&mut self, on: bool) {
        each!(self, r => r.set_polling(on))
    }

    pub fn has_available(&self) -> bool {
        each!(self, r => r.has_available())
    }
}

/// A queue's positions as virtio-queue's `Queue` holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Positions {
    avail: u16,
    used: u16,
}

/// How the negotiated features lay out and drive a queue's ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingKind {
    pub packed: bool,
    pub batch_used: bool,
}

/// One queue's ring, kept across passes and kept in step with virtio-queue's `Queue` (which
/// the vhost-user control path owns).
#[derive(Default)]
pub struct RingCache {
    ring: Option<Ring>,
    kind: RingKind,
    polling: bool,
    /// A ring was built in this connection already (`Ring::resume` is for the first).
    resumed: bool,
}

impl RingCache {
    /// Sets the ring type the negotiated features ask for (taken at the next `begin`).
    pub fn set_kind(&mut self, kind: RingKind) {
        self.kind = kind;
    }

    /// The ring for a pass over `queue` (call with the vring lock held): rebuilt if the
    /// frontend changed its addresses, size, memory or ring type; positions taken from
    /// `queue` if they were set from outside (SET_VRING_BASE, SET_VRING_ADDR).
    pub fn begin(&mut self, queue: &Queue, mem: &Arc<GuestMem>) -> Result<&mut Ring, RingError> {
        let config = RingConfig {
            size: queue.size(),
            desc_table: queue.desc_table(),
            avail_ring: queue.avail_ring(),
            used_ring: queue.used_ring(),
            event_idx: queue.event_idx_enabled(),
            packed: self.kind.packed,
            batch_used: self.kind.batch_used,
        };
        let at = Positions {
            avail: queue.next_avail(),
            used: queue.next_used(),
        };
        let reusable = self
            .ring
            .as_ref()
            .is_some_and(|r| r.config() == config && r.is_of(mem));
        if !reusable {
            let regions = match self.ring.take() {
                Some(r) if r.is_of(mem) => r.regions().clone(),
                _ => Arc::new(GuestRegions::new(mem.clone())),
            };
            let mut ring = Ring::new(config, regions, at)?;
            if !std::mem::replace(&mut self.resumed, true) {
                ring.resume(at);
            }
            ring.set_polling(self.polling);
            return Ok(self.ring.insert(ring));
        }
        let ring = self.ring.as_mut().expect("reusable");
        if ring.positions() != at {
            ring.reset_positions(at);
        }
        Ok(ring)
    }

    /// Writes the ring's positions back to `queue` after a pass, for GET_VRING_BASE.
    pub fn end(&mut self, queue: &mut Queue) {
        if let Some(r) = &self.ring {
            let at = r.positions();
            queue.set_next_avail(at.avail);
            queue.set_next_used(at.used);
        }
    }

    /// Whether the driver has made chains available that were not popped yet, as far as a
    /// look without the vring lock can tell (a hint: the pass decides).
    pub fn has_available(&self) -> bool {
        self.ring.as_ref().is_some_and(Ring::has_available)
    }

    /// Keeps the driver's kicks off for good (a poller serves this ring) or not.
    pub fn set_polling(&mut self, on: bool) {
        self.polling = on;
        if let Some(r) = &mut self.ring {
            r.set_polling(on);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_PACKED_DESC_F_AVAIL, VRING_PACKED_DESC_F_USED};
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn a_connection_s_first_packed_ring_resumes_where_its_descriptors_stand() {
        let mem = Arc::new(GuestMem::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
        // Slots 0-3 used in the first lap (AVAIL and USED set), the rest never made available.
        let used = (1u16 << VRING_PACKED_DESC_F_AVAIL) | (1 << VRING_PACKED_DESC_F_USED);
        for slot in 0..4u64 {
            mem.write_obj(used, GuestAddress(0x1000 + 16 * slot + 14))
                .unwrap();
        }
        let mut queue = Queue::new(8).unwrap();
        queue.set_size(8);
        queue.set_desc_table_address(Some(0x1000), Some(0));
        queue.set_avail_ring_address(Some(0x2000), Some(0));
        queue.set_used_ring_address(Some(0x3000), Some(0));
        // What QEMU sends after vnic was killed: the position of the ring's start.
        queue.set_next_avail(0x8000);
        let mut cache = RingCache::default();
        cache.set_kind(RingKind {
            packed: true,
            batch_used: false,
        });
        let ring = cache.begin(&queue, &mem).unwrap();
        assert_eq!(ring.positions().avail, 0x8004);
        cache.end(&mut queue);
        assert_eq!(queue.next_avail(), 0x8004, "what GET_VRING_BASE answers");
        // Later positions set from outside are taken as they are.
        queue.set_next_avail(0x8001);
        let ring = cache.begin(&queue, &mem).unwrap();
        assert_eq!(ring.positions().avail, 0x8001);
    }
}
