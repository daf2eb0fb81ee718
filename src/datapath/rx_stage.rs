//! Frames on their way into one RX queue.
//!
//! Taken from the egress queue (highest class first) and the tap queue of a tap port's
//! attachment, each frame is adapted to what this guest negotiated (`offload::adapt_for`:
//! checksum completed, segmentation job passed or cut), merged with its flow's neighbours when
//! the guest takes TSO (LRO), and then waits for guest buffers in its priority class, in order
//! within the class. Strict priority holds here too: a frame waiting for buffers never keeps a
//! higher class back, and a new batch is pulled as soon as the egress queue holds a class above
//! every one waiting here. Frames are pulled in batches and the coalescer is flushed at the end
//! of each, so LRO never holds a frame past the batch it arrived in.

use std::collections::VecDeque;

use super::BATCH;
use crate::frame::class::CLASSES;
use crate::frame::net_header::NetHeader;
use crate::frame::{Frame, FramePool};
use crate::net::tap::Tap;
use crate::offload::{Coalescer, RxCaps};
use crate::port::{egress, Port};
use crate::stats::{add, ClassTotals};
use crate::warn_ratelimited;
use crate::wire::IpVersion;

/// Flows the coalescer tracks at once per RX queue.
const LRO_FLOWS: usize = 8;

pub struct RxStage {
    /// Frames handed over by this queue pair's own TX (a loopback port), not adapted yet:
    /// the first source of the next batch.
    inbox: VecDeque<Frame>,
    /// Adapted frames waiting for guest buffers, by class, each in delivery order.
    ready: [VecDeque<Frame>; CLASSES],
    /// Bit c: `ready[c]` is not empty.
    ready_bits: u8,
    /// Scratch for `adapt_for` and the coalescer (no allocation per frame).
    adapted: Vec<Frame>,
    merged: Vec<Frame>,
    coalescer: Coalescer,
}

impl Default for RxStage {
    fn default() -> Self {
        RxStage {
            inbox: VecDeque::with_capacity(BATCH),
            ready: std::array::from_fn(|c| {
                VecDeque::with_capacity(if c == 0 { 2 * BATCH } else { 0 })
            }),
            ready_bits: 0,
            adapted: Vec::with_capacity(BATCH),
            merged: Vec::with_capacity(BATCH),
            coalescer: Coalescer::new(LRO_FLOWS),
        }
    }
}

impl RxStage {
    /// The next frame for the guest of `port`'s queue pair `pair`, pulling a new batch from the
    /// port's sources (its egress queue, then `tap`, the tap of its attachment if any) when none
    /// is ready. `tap_max` bounds a frame read from the tap.
    pub fn next(
        &mut self,
        port: &Port,
        tap: Option<&Tap>,
        pair: usize,
        pool: &FramePool,
        caps: RxCaps,
        tap_max: usize,
    ) -> Option<Frame> {
        let above_ready = match (port.egress[pair].top_class(), self.ready_bits) {
            (_, 0) => true,
            (Some(c), bits) => c > egress::top(bits),
            (None, _) => false,
        };
        if above_ready {
            self.pull_batch(port, tap, pair, pool, caps, tap_max);
        }
        self.pop_ready()
    }

    /// No frame waits here (the coalescer holds none between batches).
    pub fn is_empty(&self) -> bool {
        self.ready_bits == 0 && self.inbox.is_empty() && self.coalescer.held() == 0
    }

    /// Frames waiting here (adapted or not).
    pub fn len(&self) -> usize {
        self.ready.iter().map(VecDeque::len).sum::<usize>()
            + self.inbox.len()
            + self.coalescer.held()
    }

    fn push_ready(&mut self, port: &Port, frame: Frame) {
        let class = port.class_of(&frame);
        self.ready[class].push_back(frame);
        self.ready_bits |= 1 << class;
    }

    /// The first frame of the highest class waiting.
    fn pop_ready(&mut self) -> Option<Frame> {
        if self.ready_bits == 0 {
            return None;
        }
        let class = egress::top(self.ready_bits);
        let frame = self.ready[class].pop_front();
        if self.ready[class].is_empty() {
            self.ready_bits &= !(1 << class);
        }
        frame
    }

    /// Takes a frame handed over without a queue (see `inbox`).
    pub fn hand_over(&mut self, frame: Frame) {
        self.inbox.push_back(frame);
    }

    /// A frame that found no guest buffers goes back to the front of its class.
    pub fn put_back(&mut self, port: &Port, frame: Frame) {
        let class = port.class_of(&frame);
        self.ready[class].push_front(frame);
        self.ready_bits |= 1 << class;
    }

    /// Takes every frame waiting here (the coalescer's too), the highest class first.
    pub fn take_all(&mut self) -> impl Iterator<Item = Frame> + '_ {
        self.coalescer.flush(&mut self.merged);
        self.ready_bits = 0;
        let merged = self.merged.drain(..);
        let inbox = self.inbox.drain(..);
        self.ready
            .iter_mut()
            .rev()
            .flat_map(|q| q.drain(..))
            .chain(merged)
            .chain(inbox)
    }

    fn pull_batch(
        &mut self,
        port: &Port,
        tap: Option<&Tap>,
        pair: usize,
        pool: &FramePool,
        caps: RxCaps,
        tap_max: usize,
    ) {
        let counters = port.counters.pair(pair);
        let lro = caps.takes_tso(IpVersion::V4) || caps.takes_tso(IpVersion::V6);
        let (mut pushed, mut emitted) = (0u64, 0u64);
        let mut pulled = 0;
        // Frames entering vnic here (from the tap), by class.
        let mut classes = ClassTotals::default();
        // A batch from each source: the inbox and the egress queue, then the tap (every batch
        // looks at it, so a busy egress queue does not starve it; classes order what came).
        // With frames waiting here already (for buffers), only classes above theirs are
        // pulled, so what waits here stays bounded by the class depths.
        let (floor, tap) = match self.ready_bits {
            0 => (0, tap),
            bits => (egress::top(bits) + 1, None),
        };
        let mut from_tap = 0;
        while from_tap < BATCH {
            let queued = if pulled < BATCH {
                self.inbox
                    .pop_front()
                    .or_else(|| port.egress[pair].pop_from(floor))
            } else {
                None
            };
            let frame = match queued {
                Some(f) => {
                    pulled += 1;
                    f
                }
                None => match tap_frame(port, tap, pair, pool, tap_max, &mut classes) {
                    Some(f) => {
                        from_tap += 1;
                        f
                    }
                    None => break,
                },
            };
            // Nothing to adapt in a frame without offload state, and no LRO to offer it to:
            // straight in (what `adapt_for` would leave of it is the frame unchanged).
            if !lro && frame.header == NetHeader::default() {
                self.push_ready(port, frame);
                continue;
            }
            self.adapted.clear();
            port.adapt_counted(
                frame,
                caps,
                pool,
                &mut self.adapted,
                pair,
                &counters.rx_segments,
            );
            for f in std::mem::take(&mut self.adapted) {
                if lro {
                    pushed += 1;
                    self.coalescer.push(f, pool, &mut self.merged);
                } else {
                    self.push_ready(port, f);
                }
            }
            self.ready_merged(port, &mut emitted);
        }
        counters.add_classes(&classes);
        if classes.malformed() > 0 {
            warn_ratelimited!(
                "port {} queue {pair}: {} frames from the tap with a broken Homa or Open-MX header (carried as plain traffic)",
                port.name,
                classes.malformed()
            );
        }
        if lro {
            self.coalescer.flush(&mut self.merged);
            self.ready_merged(port, &mut emitted);
            add(&counters.rx_coalesced, pushed.saturating_sub(emitted));
        }
    }

    /// Moves what the coalescer emitted to the ready classes, counting it in `emitted`.
    fn ready_merged(&mut self, port: &Port, emitted: &mut u64) {
        *emitted += self.merged.len() as u64;
        let mut merged = std::mem::take(&mut self.merged);
        for f in merged.drain(..) {
            self.push_ready(port, f);
        }
        self.merged = merged;
    }
}

/// The next frame from the tap queue of queue pair `pair` of `port`, classified.
fn tap_frame(
    port: &Port,
    tap: Option<&Tap>,
    pair: usize,
    pool: &FramePool,
    tap_max: usize,
    classes: &mut ClassTotals,
) -> Option<Frame> {
    let tap = tap?;
    let mut frame = pool.get();
    match tap.read_frame(pair, &mut frame, tap_max) {
        Ok(true) => {
            let buf = &mut *frame;
            buf.meta
                .parse_and_classify(&buf.data, port.config.omx_ethertype);
            classes.count(&buf.meta.class);
            Some(frame)
        }
        Ok(false) => {
            pool.put(frame);
            None
        }
        Err(e) => {
            warn_ratelimited!("port {}: tap read failed: {e}", port.name);
            pool.put(frame);
            None
        }
    }
}
