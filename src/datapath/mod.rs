//! Moving frames between virtqueues and the network.
//!
//! - [`guest_io`]: copying a frame out of a TX descriptor chain and into RX chains, validating
//!   every guest-provided address and length.
//! - [`queue_pair`]: the per-queue-pair worker: TX batches out to the attachment, RX from the
//!   egress queue (or tap) into the guest, interrupts once per batch.
//! - [`irq`]: when an RX interrupt is raised (at once for latency-critical frames, bulk
//!   coalesced by `rx_usecs=`/`rx_frames=`).
//! - [`rx_stage`]: frames on their way into one RX queue: adapted to the guest's offloads,
//!   coalesced (LRO), waiting by class for buffers.
//!
//! Frames themselves are [`crate::frame`]; RX steering is [`crate::port::steering`]; busy-poll
//! mode is [`crate::poller`].

pub mod guest_io;
pub mod irq;
pub mod queue_pair;
pub mod rx_stage;

pub use crate::virtq::{GuestMem, GuestMemAtomic};

/// Frames handled per batch: per TX pass, per forwarding call, per RX interrupt.
pub const BATCH: usize = 64;

/// One virtqueue with its kick/call eventfds, as vhost-user-backend keeps it.
pub type Vring = vhost_user_backend::VringRwLock<GuestMemAtomic>;
