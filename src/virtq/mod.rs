//! The ring layer: the only code that knows how a virtqueue is laid out in guest memory.
//!
//! The datapath drives a ring through a small burst API, the same whatever the ring type:
//! - [`SplitRing::pop`] takes the next available chain (`avail.idx` read once per burst) as
//!   checked [`Segment`]s of guest memory; a bad chain fails alone ([`ChainError`]);
//! - [`SplitRing::push_used`] completes a chain, [`SplitRing::publish`] makes a burst of them
//!   visible with one `used.idx` store, [`SplitRing::needs_interrupt`] decides once per burst;
//! - [`SplitRing::suppress_kicks`] / [`SplitRing::arm_kicks`] / [`SplitRing::set_polling`]
//!   switch the driver's notifications.
//!
//! The control path (vhost-user messages, `GET_VRING_BASE`) stays with vhost-user-backend and
//! virtio-queue's `Queue`; [`RingCache`] keeps our ring in step with it: rebuilt when the
//! frontend moves the ring or sends new memory, its positions written back after each pass.
//! The packed ring (a later issue) slots in beside [`split`] behind the same calls; completion
//! is in order already, which is what `VIRTIO_F_IN_ORDER` needs.

pub mod memory;
pub mod split;

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

pub use memory::{
    append_from_guest, copy_from_guest, copy_to_guest, split_from_guest, GuestRegions, Segment,
};
pub use split::{RingConfig, SplitRing};

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

/// A chain taken from the avail ring: its head, its buffers (`segs[start..end]` of the
/// caller's segment list) and their total length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoppedChain {
    pub head: u16,
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
}

/// A chain that cannot be used: the head to complete with length 0 (None when there is no
/// valid one: a bad head, or no entry taken at all) and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadChain {
    pub head: Option<u16>,
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

/// One queue's ring, kept across passes and kept in step with virtio-queue's `Queue` (which
/// the vhost-user control path owns).
#[derive(Default)]
pub struct RingCache {
    ring: Option<SplitRing>,
    polling: bool,
}

impl RingCache {
    /// The ring for a pass over `queue` (call with the vring lock held): rebuilt if the
    /// frontend changed its addresses, size or memory; positions taken from `queue` if they
    /// were set from outside (SET_VRING_BASE, SET_VRING_ADDR).
    pub fn begin(
        &mut self,
        queue: &Queue,
        mem: &Arc<GuestMem>,
    ) -> Result<&mut SplitRing, RingError> {
        let config = RingConfig {
            size: queue.size(),
            desc_table: queue.desc_table(),
            avail_ring: queue.avail_ring(),
            used_ring: queue.used_ring(),
            event_idx: queue.event_idx_enabled(),
        };
        let (next_avail, next_used) = (queue.next_avail(), queue.next_used());
        let reusable = self
            .ring
            .as_ref()
            .is_some_and(|r| r.config() == config && r.is_of(mem));
        if !reusable {
            let regions = match self.ring.take() {
                Some(r) if r.is_of(mem) => r.regions().clone(),
                _ => Arc::new(GuestRegions::new(mem.clone())),
            };
            let mut ring = SplitRing::new(config, regions, next_avail, next_used)?;
            ring.set_polling(self.polling);
            self.ring = Some(ring);
        }
        let ring = self.ring.as_mut().expect("set above");
        if ring.next_avail() != next_avail || ring.next_used() != next_used {
            ring.reset_positions(next_avail, next_used);
        }
        Ok(ring)
    }

    /// Writes the ring's positions back to `queue` after a pass, for GET_VRING_BASE.
    pub fn end(&mut self, queue: &mut Queue) {
        if let Some(r) = &self.ring {
            queue.set_next_avail(r.next_avail());
            queue.set_next_used(r.next_used());
        }
    }

    /// Whether the driver has made chains available that were not popped yet, as far as a
    /// look at `avail.idx` without the vring lock can tell (a hint: the pass decides).
    pub fn has_available(&self) -> bool {
        self.ring.as_ref().is_some_and(SplitRing::has_available)
    }

    /// Keeps the driver's kicks off for good (a poller serves this ring) or not.
    pub fn set_polling(&mut self, on: bool) {
        self.polling = on;
        if let Some(r) = &mut self.ring {
            r.set_polling(on);
        }
    }
}
