//! Frames on their way into one RX queue.
//!
//! Taken from the egress queue (or the port's tap queue), each frame is adapted to what this
//! guest negotiated (`offload::adapt_for`: checksum completed, segmentation job passed or cut),
//! merged with its flow's neighbours when the guest takes TSO (LRO), and then waits, in order,
//! for guest buffers. Per batch: frames are pulled in batches and the coalescer is flushed at the
//! end of each, so LRO never holds a frame past the batch it arrived in.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;

use super::frame::{Frame, FramePool};
use super::meta::FrameMeta;
use super::BATCH;
use crate::offload::{adapt_for, Coalescer, RxCaps};
use crate::port::Port;
use crate::stats::{add, DropReason};
use crate::warn_ratelimited;
use crate::wire::IpVersion;

/// Flows the coalescer tracks at once per RX queue.
const LRO_FLOWS: usize = 8;

pub struct RxStage {
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
            ready: VecDeque::with_capacity(2 * BATCH),
            adapted: Vec::with_capacity(BATCH),
            merged: Vec::with_capacity(BATCH),
            coalescer: Coalescer::new(LRO_FLOWS),
        }
    }
}

impl RxStage {
    /// The next frame for the guest of `port`'s queue pair `pair`, pulling a new batch from the
    /// port's sources when none is ready. `tap_max` bounds a frame read from the tap.
    pub fn next(
        &mut self,
        port: &Port,
        pair: usize,
        pool: &FramePool,
        caps: RxCaps,
        tap_max: usize,
    ) -> Option<Frame> {
        if self.ready.is_empty() {
            self.pull_batch(port, pair, pool, caps, tap_max);
        }
        self.ready.pop_front()
    }

    /// No frame waits here (the coalescer holds none between batches).
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.coalescer.held() == 0
    }

    /// A frame that found no guest buffers goes back to the front.
    pub fn put_back(&mut self, frame: Frame) {
        self.ready.push_front(frame);
    }

    /// Takes every frame waiting here (the coalescer's too), in order.
    pub fn take_all(&mut self) -> impl Iterator<Item = Frame> + '_ {
        self.coalescer.flush(&mut self.merged);
        self.ready.extend(self.merged.drain(..));
        self.ready.drain(..)
    }

    fn pull_batch(
        &mut self,
        port: &Port,
        pair: usize,
        pool: &FramePool,
        caps: RxCaps,
        tap_max: usize,
    ) {
        let counters = port.counters.pair(pair);
        let lro = caps.takes_tso(IpVersion::V4) || caps.takes_tso(IpVersion::V6);
        let (mut pushed, mut emitted) = (0u64, 0u64);
        for _ in 0..BATCH {
            let Some(frame) = next_source_frame(port, pair, pool, tap_max) else {
                break;
            };
            self.adapted.clear();
            adapt_counted(
                frame,
                caps,
                pool,
                &mut self.adapted,
                port,
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
            emitted += self.merged.len() as u64;
            self.ready.extend(self.merged.drain(..));
        }
        if lro {
            self.coalescer.flush(&mut self.merged);
            emitted += self.merged.len() as u64;
            self.ready.extend(self.merged.drain(..));
            add(&counters.rx_coalesced, pushed.saturating_sub(emitted));
        }
    }
}

/// Adapts `frame` for a destination of queue pair `pair` of `port` (its guest's RX queue or its
/// tap) with `caps`, into `out`. Counts the segments vnic cut in `cut`; a frame that cannot be
/// delivered is dropped, counted as `rx_bad_offload` with its cause, and logged (rate-limited).
pub fn adapt_counted(
    frame: Frame,
    caps: RxCaps,
    pool: &FramePool,
    out: &mut Vec<Frame>,
    port: &Port,
    pair: usize,
    cut: &AtomicU64,
) {
    let was_gso = frame.header.gso_type != 0;
    match adapt_for(frame, caps, pool, out) {
        Ok(n) if was_gso && n > 1 => add(cut, n as u64),
        Ok(_) => {}
        Err(e) => {
            port.counters
                .pair(pair)
                .offload_drop(DropReason::RxBadOffload, e);
            warn_ratelimited!(
                "port {} queue {pair}: cannot deliver an offloaded frame: {}",
                port.name,
                e.name()
            );
        }
    }
}

/// The next frame for queue pair `pair` of `port`: from its egress queue, else its tap queue.
fn next_source_frame(port: &Port, pair: usize, pool: &FramePool, tap_max: usize) -> Option<Frame> {
    if let Some(f) = port.egress[pair].pop() {
        return Some(f);
    }
    let tap = port.tap.as_ref()?;
    let mut frame = pool.get();
    match tap.read_frame(pair, &mut frame, tap_max) {
        Ok(true) => {
            frame.meta = FrameMeta::parse(&frame.data);
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
