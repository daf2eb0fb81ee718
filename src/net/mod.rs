//! What a port is attached to: where the frames its guest sends go.
//!
//! - [`switch`]: the built-in L2 learning switch shared by every `attach=switch` port.
//! - [`tap`]: a host tap device, one tap queue per queue pair.

pub mod switch;
pub mod tap;

use std::sync::Arc;

use crate::frame::{Frame, FramePool};
use crate::port::{Pending, Port};
use crate::stats::DropReason;

pub use switch::{ForwardScratch, Switch};
pub use tap::Tap;

/// Where a port's transmitted frames go.
#[derive(Clone)]
pub enum Attachment {
    Switch(Arc<Switch>),
    /// A host tap, the port's own: queue pair `i` writes to and reads from tap queue `i`.
    Tap(Arc<Tap>),
    /// The port itself: what its guest sends comes back on its RX queues (steered as any
    /// arriving frame), a loopback plug for testing a driver's TX and RX paths alone.
    Loopback,
}

impl Attachment {
    /// The tap of a tap port (where its RX queues also read from), else None.
    pub fn tap(&self) -> Option<&Tap> {
        match self {
            Attachment::Tap(tap) => Some(tap),
            Attachment::Switch(_) | Attachment::Loopback => None,
        }
    }

    /// Sends a batch the guest transmitted on queue pair `pair` of `port`. Empties `batch`;
    /// every frame ends up delivered, queued, or dropped and counted, and back in `pool`, or
    /// in `own`: the frames for the sending pair's own RX queue, which a loopback port hands
    /// straight back to its caller (the same thread serves that queue next; no queue between).
    pub fn transmit(
        &self,
        port: &Port,
        pair: usize,
        batch: &mut Vec<Frame>,
        own: &mut Vec<Frame>,
        pool: &FramePool,
        scratch: &mut ForwardScratch,
    ) {
        match self {
            Attachment::Switch(sw) => sw.forward(port, pair, batch, pool, scratch),
            Attachment::Loopback => {
                let mut wake = Pending::default();
                for frame in batch.drain(..) {
                    match port.steer(&frame) {
                        Some(q) if q == pair => own.push(frame),
                        Some(q) => port.enqueue_to(q, frame, pool, &mut wake),
                        None => port.drop_unsteered(frame, pool),
                    }
                }
                port.wake(wake);
            }
            Attachment::Tap(tap) => {
                let counters = port.counters.pair(pair);
                let caps = tap.rx_caps();
                for frame in batch.drain(..) {
                    // Finish what the tap cannot take (checksums, segmentation) first.
                    scratch.adapted.clear();
                    port.adapt_counted(
                        frame,
                        caps,
                        pool,
                        &mut scratch.adapted,
                        pair,
                        &counters.tap_segments,
                    );
                    for f in scratch.adapted.drain(..) {
                        if let Err(e) = tap.write_frame(pair, &f.header, &f.data) {
                            counters.drop(DropReason::TapError);
                            crate::warn_ratelimited!("port {}: tap write failed: {e}", port.name);
                        }
                        pool.put(f);
                    }
                }
            }
        }
    }
}
