//! Moving frames between virtqueues and the network.
//!
//! - [`frame`]: a frame with its metadata, and the pool that recycles frame buffers so the
//!   steady-state datapath allocates nothing.
//! - [`meta`]: a frame's headers (offsets, EtherType, VLAN tags, IP protocol) and flow hash,
//!   parsed once where it enters vnic.
//! - [`net_header`]: the virtio-net header that precedes every frame on a virtqueue.
//! - [`guest_io`]: copying a frame out of a TX descriptor chain and into RX chains, validating
//!   every guest-provided address and length.
//! - [`queue_pair`]: the per-queue-pair worker: TX batches out to the attachment, RX from the
//!   egress queue (or tap) into the guest, interrupts once per batch.
//! - [`rx_stage`]: frames on their way into one RX queue: adapted to the guest's offloads,
//!   coalesced (LRO), waiting in order for buffers.
//! - [`steering`]: which RX queue of a port receives a frame.

pub mod frame;
pub mod guest_io;
pub mod meta;
pub mod net_header;
pub mod poller;
pub mod queue_pair;
pub mod rx_stage;
pub mod steering;

/// Frames handled per batch: per TX pass, per forwarding call, per RX interrupt.
pub const BATCH: usize = 64;

/// Guest memory as vnic maps it (no dirty-page bitmap: live migration is not offered).
pub type GuestMem = vm_memory::GuestMemoryMmap<()>;
/// Guest memory that the protocol thread can replace while workers run.
pub type GuestMemAtomic = vm_memory::GuestMemoryAtomic<GuestMem>;
/// One virtqueue with its kick/call eventfds, as vhost-user-backend keeps it.
pub type Vring = vhost_user_backend::VringRwLock<GuestMemAtomic>;
