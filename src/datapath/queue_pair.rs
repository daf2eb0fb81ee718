//! The worker of one queue pair: TX from the guest out to the attachment, RX from the egress
//! queue (or the port's tap queue) into the guest.
//!
//! Each pair has its own worker thread (see `device::backend`), so this code runs without any
//! lock shared with other pairs. Interrupts are raised once per batch and only when the guest
//! asked for them ([`guest_wants_interrupt`]: EVENT_IDX's `used_event`, or NO_INTERRUPT).

use std::sync::Arc;

use std::sync::atomic::{fence, Ordering};
use vhost_user_backend::{VringState, VringT};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// `VRING_AVAIL_F_NO_INTERRUPT`: the driver asks for no interrupts (without EVENT_IDX).
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

use super::frame::{Frame, FramePool};
use super::guest_io::{deliver_frame, read_tx_chain, RxOutcome, RxScratch};
use super::meta::FrameMeta;
use super::net_header::{NetHeader, HEADER_LEN};
use super::rx_stage::RxStage;
use super::{GuestMem, GuestMemAtomic, Vring, BATCH};
use crate::net::{Attachment, ForwardScratch};
use crate::offload::{validate_tx, RxCaps, TxCaps};
use crate::port::{EgressQueue, Port};
use crate::stats::{add, DropReason, PairCounters};
use crate::warn_ratelimited;

/// Whether the guest wants an interrupt for the entries added to the used ring since the last
/// call: EVENT_IDX's `used_event` when negotiated, else the avail ring's NO_INTERRUPT flag
/// (virtio-queue's `needs_notification` ignores that flag).
pub fn guest_wants_interrupt(queue: &mut Queue, mem: &GuestMem) -> bool {
    if queue.event_idx_enabled() {
        return queue.needs_notification(mem).unwrap_or(true);
    }
    // Order our used-ring writes before reading the driver's flag.
    fence(Ordering::SeqCst);
    let flags: u16 = mem
        .load(GuestAddress(queue.avail_ring()), Ordering::Acquire)
        .unwrap_or(0);
    u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT == 0
}

/// Asks the guest to kick when it publishes RX buffers beyond those it has published now, and
/// returns true if it published some meanwhile. Unlike `Queue::enable_notification`, which
/// arms at `next_avail`, this arms at the current `avail.idx`: after an MRG_RXBUF frame found
/// too few buffers and put them back, `next_avail` is behind `avail.idx`, and an event index
/// there would never be crossed again, so the guest would never kick (Linux vhost does the
/// same).
pub fn arm_rx_kick(queue: &mut Queue, mem: &GuestMem) -> bool {
    let Ok(seen) = queue.avail_idx(mem, Ordering::Acquire) else {
        return false;
    };
    if queue.event_idx_enabled() {
        let avail_event = queue.used_ring() + 4 + 8 * queue.size() as u64;
        let _ = mem.store(seen.0.to_le(), GuestAddress(avail_event), Ordering::Release);
    } else {
        let _ = queue.enable_notification(mem);
    }
    fence(Ordering::SeqCst);
    queue
        .avail_idx(mem, Ordering::Acquire)
        .is_ok_and(|now| now != seen)
}

/// Every frame waiting for an RX queue: those already staged, then its egress queue.
fn waiting<'a>(
    stage: &'a mut RxStage,
    egress: &'a EgressQueue,
) -> impl Iterator<Item = Frame> + 'a {
    stage.take_all().chain(std::iter::from_fn(|| egress.pop()))
}

/// What the frontend negotiated that the datapath needs, fixed for a pass over a queue.
#[derive(Clone, Copy, Debug)]
pub struct Negotiated {
    /// virtio-net header length on the rings: 12 with VERSION_1 or MRG_RXBUF, else 10.
    pub hdr_len: usize,
    pub mrg_rxbuf: bool,
    /// Longest plain Ethernet frame (no segmentation job) accepted from the guest.
    pub max_frame: usize,
    /// Longest frame accepted from the guest's TX queue: a segmentation job if it negotiated
    /// HOST_TSO/USO, else `max_frame`.
    pub tx_max_frame: usize,
    /// Longest frame read from the port's tap (larger with tap offloads).
    pub tap_max_frame: usize,
    /// Offloads the guest may ask for on TX.
    pub tx_caps: TxCaps,
    /// Offloads the guest takes on RX.
    pub rx_caps: RxCaps,
}

/// Whether the worker should watch the port's tap queue (it stops while the guest has no RX
/// buffers, so a readable tap does not spin the worker).
pub trait TapWatch {
    fn watch_tap(&self, pair: usize, on: bool);
}

pub struct QueuePair {
    pub index: usize,
    port: Arc<Port>,
    attachment: Attachment,
    pool: Arc<FramePool>,
    tx_batch: Vec<Frame>,
    forward: ForwardScratch,
    /// Frames adapted for this guest, waiting for its buffers.
    rx_stage: RxStage,
    rx_scratch: RxScratch,
    rx_used: Vec<(u16, u32)>,
    tap_watched: bool,
}

impl QueuePair {
    pub fn new(
        index: usize,
        port: Arc<Port>,
        attachment: Attachment,
        pool: Arc<FramePool>,
    ) -> Self {
        QueuePair {
            index,
            port,
            attachment,
            pool,
            tx_batch: Vec::with_capacity(BATCH),
            forward: ForwardScratch::default(),
            rx_stage: RxStage::default(),
            rx_scratch: RxScratch::default(),
            rx_used: Vec::with_capacity(8),
            tap_watched: false,
        }
    }

    fn counters(&self) -> &PairCounters {
        self.port.counters.pair(self.index)
    }

    /// Takes every frame the guest made available on the TX queue, in batches, and hands each
    /// batch to the attachment. Every chain goes back on the used ring, dropped or not.
    pub fn process_tx(&mut self, vring: &Vring, mem: &GuestMem, neg: &Negotiated) {
        loop {
            let more = {
                let mut state = vring.get_mut();
                if !(state.get_queue().ready() && state.is_enabled()) {
                    return;
                }
                let _ = state.disable_notification();
                let mut taken = 0;
                while taken < BATCH {
                    let Some(chain) = state.get_queue_mut().pop_descriptor_chain(mem) else {
                        break;
                    };
                    let head = chain.head_index();
                    let mut frame = self.pool.get();
                    let mut hdr = [0u8; HEADER_LEN];
                    let result = read_tx_chain(
                        chain,
                        mem,
                        neg.hdr_len,
                        neg.tx_max_frame,
                        &mut hdr,
                        &mut frame.data,
                    )
                    .and_then(|()| self.check_tx_offload(&mut frame, &hdr, neg));
                    match result {
                        Ok(()) => {
                            let c = self.port.counters.pair(self.index);
                            add(&c.tx_packets, 1);
                            add(&c.tx_bytes, frame.data.len() as u64);
                            if frame.header.gso_type != 0 {
                                add(&c.tx_gso, 1);
                            }
                            frame.meta = FrameMeta::parse(&frame.data);
                            if let Some(capture) = &self.port.capture {
                                capture.record(&frame.data);
                            }
                            self.tx_batch.push(frame);
                        }
                        Err(reason) => {
                            // Offload refusals were counted with their cause already.
                            if reason != DropReason::TxBadOffload {
                                self.counters().drop(reason);
                                warn_ratelimited!(
                                    "port {} queue {}: dropped a TX frame: {}",
                                    self.port.name,
                                    self.index,
                                    reason.name()
                                );
                            }
                            self.pool.put(frame);
                        }
                    }
                    if let Err(e) = state.add_used(head, 0) {
                        warn_ratelimited!("port {}: TX add_used failed: {e}", self.port.name);
                    }
                    taken += 1;
                }
                if taken > 0 && guest_wants_interrupt(state.get_queue_mut(), mem) {
                    let _ = state.signal_used_queue();
                    add(&self.counters().tx_interrupts, 1);
                }
                // A full batch: look again. Otherwise re-enable kicks; if buffers arrived
                // meanwhile (EVENT_IDX race), look again too.
                taken == BATCH || state.enable_notification().unwrap_or(false)
            };
            if let Some(capture) = &self.port.capture {
                capture.flush();
            }
            if !self.tx_batch.is_empty() {
                self.attachment.transmit(
                    &self.port,
                    self.index,
                    &mut self.tx_batch,
                    &self.pool,
                    &mut self.forward,
                );
            }
            if !more {
                return;
            }
        }
    }

    /// Moves waiting frames into the guest's RX buffers until either runs out.
    pub fn process_rx(
        &mut self,
        vring: &Vring,
        mem: &GuestMem,
        neg: &Negotiated,
        tap_watch: &dyn TapWatch,
    ) {
        let mut state = vring.get_mut();
        if !(state.get_queue().ready() && state.is_enabled()) {
            drop(state);
            self.on_rx_disabled(tap_watch);
            return;
        }
        self.port.set_rx_enabled(self.index, true);
        self.port.egress[self.index].ack_wake();
        if self.port.tap.is_some() && !self.tap_watched {
            tap_watch.watch_tap(self.index, true);
            self.tap_watched = true;
        }
        let _ = state.disable_notification();
        let mut unsignalled = 0;
        while let Some(mut frame) = self.rx_stage.next(
            &self.port,
            self.index,
            &self.pool,
            neg.rx_caps,
            neg.tap_max_frame,
        ) {
            let mut hdr = frame.header.to_bytes();
            let outcome = deliver_frame(
                state.get_queue_mut(),
                mem,
                &mut hdr,
                neg.hdr_len,
                neg.mrg_rxbuf,
                &frame.data,
                &mut self.rx_scratch,
                &mut self.rx_used,
            );
            match outcome {
                RxOutcome::Delivered => {
                    if let Some(capture) = &self.port.capture {
                        capture.record(&frame.data);
                    }
                    let c = self.port.counters.pair(self.index);
                    add(&c.rx_packets, 1);
                    add(&c.rx_bytes, frame.data.len() as u64);
                    if frame.header.gso_type != 0 {
                        add(&c.rx_gso, 1);
                    }
                    self.pool.put(frame);
                    unsignalled += 1;
                    if unsignalled >= BATCH {
                        self.signal_rx(&mut state, mem);
                        unsignalled = 0;
                    }
                }
                RxOutcome::Dropped(reason) => {
                    self.counters().drop(reason);
                    warn_ratelimited!(
                        "port {} queue {}: dropped an RX frame: {}",
                        self.port.name,
                        self.index,
                        reason.name()
                    );
                    frame.data.clear();
                    self.pool.put(frame);
                }
                RxOutcome::NoBuffers => {
                    self.rx_stage.put_back(frame);
                    // Ask for a kick when buffers come; if some came meanwhile, go on.
                    if arm_rx_kick(state.get_queue_mut(), mem) {
                        continue;
                    }
                    if self.tap_watched {
                        tap_watch.watch_tap(self.index, false);
                        self.tap_watched = false;
                    }
                    break;
                }
            }
        }
        if unsignalled > 0 {
            self.signal_rx(&mut state, mem);
        }
        if let Some(capture) = &self.port.capture {
            capture.flush();
        }
    }

    /// Checks a TX frame's virtio-net header against the frame and the negotiated offloads,
    /// and keeps it with the frame. A refused request is counted under its precise reason.
    fn check_tx_offload(
        &self,
        frame: &mut Frame,
        hdr: &[u8; HEADER_LEN],
        neg: &Negotiated,
    ) -> Result<(), DropReason> {
        frame.header = NetHeader {
            num_buffers: 0,
            ..NetHeader::from_bytes(hdr)
        };
        if frame.header.gso_type == 0 && frame.data.len() > neg.max_frame {
            return Err(DropReason::TxOversize);
        }
        validate_tx(frame, neg.tx_caps).map_err(|e| {
            self.counters().offload_drop(DropReason::TxBadOffload, e);
            warn_ratelimited!(
                "port {} queue {}: refused a TX offload request: {}",
                self.port.name,
                self.index,
                e.name()
            );
            // Counted above with its cause; the caller must not count it again.
            DropReason::TxBadOffload
        })
    }

    /// Raises the RX interrupt if the guest wants one for what was just published.
    fn signal_rx(&self, state: &mut VringState<GuestMemAtomic>, mem: &GuestMem) {
        if guest_wants_interrupt(state.get_queue_mut(), mem) {
            let _ = state.signal_used_queue();
            add(&self.counters().rx_interrupts, 1);
        }
    }

    /// The RX ring was stopped: drop (and count) every frame waiting for it.
    pub fn discard_rx(&mut self) {
        let counters = self.port.counters.pair(self.index);
        for frame in waiting(&mut self.rx_stage, &self.port.egress[self.index]) {
            counters.drop(DropReason::QueueDisabled);
            self.pool.put(frame);
        }
    }

    /// The RX queue is not usable (disabled, reset, or not set up yet): stop steering to it
    /// and hand what waits for it to the port's other RX queues.
    fn on_rx_disabled(&mut self, tap_watch: &dyn TapWatch) {
        self.port.set_rx_enabled(self.index, false);
        if self.tap_watched {
            tap_watch.watch_tap(self.index, false);
            self.tap_watched = false;
        }
        let egress = &self.port.egress[self.index];
        egress.ack_wake();
        let mut wake = 0u32;
        for frame in waiting(&mut self.rx_stage, egress) {
            if self.port.rx_enabled_mask() == 0 {
                self.port
                    .counters
                    .pair(self.index)
                    .drop(DropReason::QueueDisabled);
                self.pool.put(frame);
            } else {
                self.port.enqueue(frame, &self.pool, &mut wake);
            }
        }
        self.port.wake(wake);
    }
}
