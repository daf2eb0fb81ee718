//! Frames on their way into one RX queue.
//!
//! Taken from the egress queue (or the tap queue of a tap port's attachment), each frame is adapted to what this
//! guest negotiated (`offload::adapt_for`: checksum completed, segmentation job passed or cut),
//! merged with its flow's neighbours when the guest takes TSO (LRO), and then waits, in order,
//! for guest buffers. Per batch: frames are pulled in batches and the coalescer is flushed at the
//! end of each, so LRO never holds a frame past the batch it arrived in.

use std::collections::VecDeque;

use super::BATCH;
use crate::frame::net_header::NetHeader;
use crate::frame::{Frame, FramePool};
use crate::net::tap::Tap;
use crate::offload::{Coalescer, RxCaps};
use crate::port::Port;
use crate::stats::{add, ClassTotals};
use crate::warn_ratelimited;
use crate::wire::IpVersion;

/// Flows the coalescer tracks at once per RX queue.
const LRO_FLOWS: usize = 8;

pub struct RxStage {
    /// Frames handed over by this queue pair's own TX (a loopback port), not adapted yet:
    /// the first source of the next batch.
    inbox: VecDeque<Frame>,
    /// Adapted frames waiting for guest buffers, in delivery order.
    ready: VecDeque<Frame>,
    /// Scratch for `adapt_for` and the coalescer (no allocation per frame).
    adapted: Vec<Frame>,
    merged: Vec<Frame>,
    coalescer: Coalescer,
}

impl Default for RxStage {
    fn default() -> Self {
        RxStage {
            inbox: VecDeque::with_capacity(BATCH),
            ready: VecDeque::with_capacity(2 * BATCH),
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
        if self.ready.is_empty() {
            self.pull_batch(port, tap, pair, pool, caps, tap_max);
        }
        self.ready.pop_front()
    }

    /// No frame waits here (the coalescer holds none between batches).
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.inbox.is_empty() && self.coalescer.held() == 0
    }

    /// Frames waiting here (adapted or not).
    pub fn len(&self) -> usize {
        self.ready.len() + self.inbox.len() + self.coalescer.held()
    }

    /// Takes a frame handed over without a queue (see `inbox`).
    pub fn hand_over(&mut self, frame: Frame) {
        self.inbox.push_back(frame);
    }

    /// A frame that found no guest buffers goes back to the front.
    pub fn put_back(&mut self, frame: Frame) {
        self.ready.push_front(frame);
    }

    /// Takes every frame waiting here (the coalescer's too), in order.
    pub fn take_all(&mut self) -> impl Iterator<Item = Frame> + '_ {
        self.coalescer.flush(&mut self.merged);
        self.ready.extend(self.merged.drain(..));
        self.ready.extend(self.inbox.drain(..));
        self.ready.drain(..)
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
        // Frames entering vnic here (from the tap), by class.
        let mut classes = ClassTotals::default();
        for _ in 0..BATCH {
            let Some(frame) = self
                .inbox
                .pop_front()
                .or_else(|| next_source_frame(port, tap, pair, pool, tap_max, &mut classes))
            else {
                break;
            };
            // Nothing to adapt in a frame without offload state, and no LRO to offer it to:
            // straight in (what `adapt_for` would leave of it is the frame unchanged).
            if !lro && frame.header == NetHeader::default() {
                self.ready.push_back(frame);
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
            for f in self.adapted.drain(..) {
                if lro {
                    pushed += 1;
                    self.coalescer.push(f, pool, &mut self.merged);
                } else {
                    self.ready.push_back(f);
                }
            }
            if !self.merged.is_empty() {
                emitted += self.merged.len() as u64;
                self.ready.extend(self.merged.drain(..));
            }
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
            emitted += self.merged.len() as u64;
            self.ready.extend(self.merged.drain(..));
            add(&counters.rx_coalesced, pushed.saturating_sub(emitted));
        }
    }
}

/// The next frame for queue pair `pair` of `port`: from its egress queue, else its tap queue.
fn next_source_frame(
    port: &Port,
    tap: Option<&Tap>,
    pair: usize,
    pool: &FramePool,
    tap_max: usize,
    classes: &mut ClassTotals,
) -> Option<Frame> {
    if let Some(f) = port.egress[pair].pop() {
        return Some(f);
    }
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
