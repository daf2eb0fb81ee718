//! The worker of one queue pair: TX from the guest out to the attachment, RX from the egress
//! queue (or the port's tap queue) into the guest.
//!
//! Each pair is served by one thread at a time (its own worker, or a poller with `--poll-cpus`;
//! see `device::backend`), so this code runs without any lock shared with other pairs. Rings
//! are driven through the ring layer ([`crate::virtq`]) a burst at a time: one `avail.idx`
//! read, one `used.idx` store and one interrupt decision per burst, counters added per burst.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost_user_backend::{VringState, VringT};
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;

use super::guest_io::{deliver_frame, read_tx_chain, RxOutcome, RxScratch};
use super::irq::{Decision, Raise, RxDeadline, RxIrq, RxTimer};
use super::rx_stage::RxStage;
use super::{GuestMem, GuestMemAtomic, Vring, BATCH};
use crate::frame::net_header::{NetHeader, HEADER_LEN};
use crate::frame::{Frame, FramePool};
use crate::net::{Attachment, ForwardScratch};
use crate::offload::{validate_tx, RxCaps, TxCaps};
use crate::port::{EgressQueue, Pending, Port};
use crate::stats::{add, ClassTotals, DropReason, PairCounters};
use crate::virtq::{Access, BadChain, ChainError, Ring, RingCache, RingKind, Segment};
use crate::warn_ratelimited;

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
    /// VIRTIO_F_RING_PACKED.
    pub packed: bool,
    /// VIRTIO_F_IN_ORDER: TX bursts are completed with one used entry.
    pub in_order: bool,
}

/// Whether the worker should watch the port's tap queue (it stops while the guest has no RX
/// buffers, so a readable tap does not spin the worker).
pub trait TapWatch {
    fn watch_tap(&self, pair: usize, on: bool);
}

/// Totals of one burst (TX or RX), added to the shared counters once per burst.
#[derive(Default)]
struct BurstTotals {
    packets: u64,
    bytes: u64,
    gso: u64,
    /// TX only: the GSO frames that are Homa jobs.
    homa_gso: u64,
}

pub struct QueuePair {
    pub index: usize,
    /// Guest memory as of generation `mem_gen` (reloaded only when the frontend sends a new
    /// table: no shared-pointer load per pass).
    mem: Option<Arc<GuestMem>>,
    mem_gen: u64,
    /// What was negotiated, for the feature bits `acked`.
    neg: Negotiated,
    acked: Option<u64>,
    port: Arc<Port>,
    attachment: Attachment,
    pool: Arc<FramePool>,
    tx_ring: RingCache,
    rx_ring: RingCache,
    /// Served by a poller: one burst per call, kicks kept off, no eventfd wake-ups.
    polling: bool,
    tx_scratch: TxScratch,
    tx_batch: Vec<Frame>,
    /// Frames of the TX batch for this pair's own RX queue (see `Attachment::transmit`).
    tx_own: Vec<Frame>,
    forward: ForwardScratch,
    /// Frames adapted for this guest, waiting for its buffers.
    rx_stage: RxStage,
    rx_scratch: RxScratch,
    /// Frames delivered in this RX pass, returned to the pool together at its end.
    rx_spent: Vec<Frame>,
    tap_watched: bool,
    /// Poll passes that found nothing for the RX queue.
    idle_polls: u32,
    /// Event mode: how long to keep looking for work before sleeping (see [`QueuePair::spin`]).
    spin: Duration,
    /// Event mode: the TX ring asks the driver for kicks again (a TX pass turns them off; they
    /// stay off while the worker keeps looking, and [`QueuePair::finish_tx`] turns them on).
    tx_armed: bool,
    /// The call eventfd of the RX and TX rings at the last pass (see [`CallWatch`]).
    rx_call: CallWatch,
    tx_call: CallWatch,
    /// When the RX interrupt is raised (coalescing of bulk frames).
    rx_irq: RxIrq,
    /// Event mode: wakes the worker when a coalescing window ends or the link has room again
    /// (it watches the timer). No timer in poll mode, or if no timerfd could be had (then
    /// nothing is coalesced).
    rx_deadline: RxDeadline,
    /// `shape=on`: frames wait until then for room on the link.
    link_wait: Option<Instant>,
}

/// Which call eventfd a ring had when its pair last looked.
///
/// A frontend may set a ring's call eventfd after the ring started (QEMU sends
/// `SET_VRING_CALL` after the kick) or replace it; an interrupt signalled before that went
/// nowhere, and a driver still waiting for it (with EVENT_IDX it asked for one at an index the
/// device has passed since) would wait forever. So the first pass after the eventfd changed
/// signals once: at worst a spurious interrupt, which drivers must tolerate.
#[derive(Default)]
struct CallWatch(Option<i32>);

impl CallWatch {
    /// Whether `state`'s call eventfd is a new one since an earlier look (not the first).
    #[inline]
    fn changed(&mut self, state: &VringState<GuestMemAtomic>) -> bool {
        let fd = state.get_call().as_ref().map_or(-1, |c| c.as_raw_fd());
        let before = self.0.replace(fd);
        before.is_some_and(|b| b != fd) && fd >= 0
    }
}

/// Event mode's spin after a pass that moved frames: between these, doubled when it found more
/// work, halved when it did not (so a pair whose traffic stopped spins 2 us per event).
const SPIN_MIN: Duration = Duration::from_micros(2);
const SPIN_MAX: Duration = Duration::from_micros(50);
/// Longest a spin keeps a pair (and its worker) before returning to the event loop.
const SPIN_HOLD: Duration = Duration::from_millis(1);

/// RX entries are published (`used.idx` stored) at least every this many frames; the interrupt
/// is still decided once per burst.
const RX_PUBLISH_EVERY: usize = 8;

/// A poll session ends after this many passes in a row that moved nothing, or after
/// `SESSION_PASSES` in all (so that the poller's other pairs and the control path get in).
const SESSION_IDLE: u32 = 8;
const SESSION_PASSES: u32 = 64;

/// A poller with nothing to deliver looks at the RX ring once per this many passes.
const IDLE_POLLS_PER_LOOK: u32 = 256;

impl QueuePair {
    pub fn new(
        index: usize,
        port: Arc<Port>,
        attachment: Attachment,
        pool: Arc<FramePool>,
        neg: Negotiated,
    ) -> Self {
        let polling = port.polled;
        let mut tx_ring = RingCache::default();
        let mut rx_ring = RingCache::default();
        tx_ring.set_polling(polling);
        rx_ring.set_polling(polling);
        let rx_timer = if polling {
            None
        } else {
            RxTimer::new()
                .map_err(|e| {
                    warn_ratelimited!(
                        "port {} queue {index}: no timerfd ({e}): RX interrupts not coalesced",
                        port.name
                    )
                })
                .ok()
        };
        let rx_usecs = if polling || rx_timer.is_some() {
            port.config.rx_usecs
        } else {
            0
        };
        let rx_irq = RxIrq::new(rx_usecs, port.config.rx_frames);
        QueuePair {
            index,
            mem: None,
            mem_gen: 0,
            neg,
            acked: None,
            port,
            attachment,
            pool,
            tx_ring,
            rx_ring,
            polling,
            tx_scratch: TxScratch::default(),
            tx_batch: Vec::with_capacity(BATCH),
            tx_own: Vec::with_capacity(BATCH),
            forward: ForwardScratch::default(),
            rx_stage: RxStage::default(),
            rx_scratch: RxScratch::default(),
            rx_spent: Vec::with_capacity(BATCH),
            tap_watched: false,
            idle_polls: 0,
            spin: SPIN_MIN,
            tx_armed: true,
            rx_call: CallWatch::default(),
            tx_call: CallWatch::default(),
            rx_irq,
            rx_deadline: RxDeadline::new(rx_timer),
            link_wait: None,
        }
    }

    /// Brings the pass's view up to date: guest memory if the frontend sent a new table
    /// (`mem_gen` moved), what was negotiated if the feature bits changed.
    pub fn prepare(
        &mut self,
        mem_gen: u64,
        mem: &GuestMemAtomic,
        acked: u64,
        negotiated: impl FnOnce(u64) -> Negotiated,
    ) {
        if self.mem.is_none() || self.mem_gen != mem_gen {
            FramePool::use_local_cache();
            self.mem = Some(mem.memory().into_inner());
            self.mem_gen = mem_gen;
        }
        if self.acked != Some(acked) {
            self.neg = negotiated(acked);
            self.acked = Some(acked);
            let packed = self.neg.packed;
            self.tx_ring.set_kind(RingKind {
                packed,
                batch_used: self.neg.in_order,
            });
            self.rx_ring.set_kind(RingKind {
                packed,
                batch_used: false,
            });
        }
    }

    /// Frames moved so far each way (this pair's counters).
    pub fn moved(&self) -> u64 {
        let c = self.port.counters.pair(self.index);
        c.tx_packets.load(Ordering::Relaxed) + c.rx_packets.load(Ordering::Relaxed)
    }

    /// Event mode, after a pass that moved frames: keeps looking for more (chains on the TX
    /// ring, frames for the RX queue) for a short while before the worker sleeps in epoll
    /// again, so a burst that follows closely costs no wake-up. Adaptive: the window doubles
    /// when it finds work and halves when it does not.
    pub fn spin(&mut self, rx: &Vring, tx: &Vring, tap_watch: &dyn TapWatch) {
        let window = self.spin;
        let start = Instant::now();
        let mut deadline = start + window;
        let mut found = false;
        let mut looks = 0u32;
        loop {
            let rx_waiting = self.rx_waiting();
            if self.tx_ring.has_available() || rx_waiting {
                let before = self.moved();
                self.process_tx(tx);
                if rx_waiting || self.rx_waiting() {
                    self.process_rx(rx, tap_watch);
                }
                if self.moved() != before {
                    found = true;
                    // However busy the rings, back to the event loop now and then: its exit
                    // event and the control path (`stop_vring` takes this pair) must get in.
                    deadline = (Instant::now() + window).min(start + SPIN_HOLD);
                    continue;
                }
            }
            // The clock every few looks only: reading it costs more than a look (a tenth of
            // a switch's worker went to `clock_gettime`).
            looks += 1;
            if looks.is_multiple_of(8) && Instant::now() >= deadline {
                break;
            }
            // Mostly spin, but yield now and then: the thread whose frames this pair waits for
            // may share this CPU (the other worker of a switch, a tap's kernel thread) and
            // must get to run within microseconds, not at the end of a time slice.
            if looks.is_multiple_of(32) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        self.spin = if found {
            (window * 2).min(SPIN_MAX)
        } else {
            (window / 2).max(SPIN_MIN)
        };
    }

    /// Takes what the guest made available on the TX queue, a burst at a time, and hands each
    /// burst to the attachment. Every chain goes back on the used ring, dropped or not. An
    /// event-driven worker goes on until the ring is empty (and must call
    /// [`QueuePair::finish_tx`] before it sleeps); a poller takes one burst.
    pub fn process_tx(&mut self, vring: &Vring) {
        while self.tx_pass(&mut vring.get_mut()) && !self.polling {}
    }

    /// Event mode, before the worker sleeps: asks the driver for TX kicks again, and takes
    /// what it made available meanwhile. Kicks stay off from the first TX pass of an event to
    /// here, through the spin: a driver that sends while the worker is looking anyway pays no
    /// kick (a syscall for a frontend like DPDK's `virtio_user`).
    pub fn finish_tx(&mut self, rx: &Vring, tx: &Vring, tap_watch: &dyn TapWatch) {
        while !self.tx_armed {
            let arrived = {
                let mut state = tx.get_mut();
                self.arm_tx(&mut state)
            };
            if !arrived {
                return;
            }
            self.process_tx(tx);
            // What a loopback port sent itself goes in now (nobody wakes this pair for it).
            if self.rx_waiting() {
                self.process_rx(rx, tap_watch);
            }
        }
    }

    /// Re-enables TX kicks; true if chains arrived since the ring was last found empty.
    fn arm_tx(&mut self, state: &mut VringState<GuestMemAtomic>) -> bool {
        let Some(mem) = &self.mem else {
            return false;
        };
        self.tx_armed = true;
        if !(state.get_queue().ready() && state.is_enabled()) {
            return false;
        }
        let Ok(ring) = self.tx_ring.begin(state.get_queue(), mem) else {
            return false;
        };
        let arrived = ring.arm_kicks();
        self.tx_ring.end(state.get_queue_mut());
        if arrived {
            self.tx_armed = false;
        }
        arrived
    }

    /// One TX burst on the ring `state` holds, leaving kicks off. Returns whether to look
    /// again (a full burst).
    fn tx_pass(&mut self, state: &mut VringState<GuestMemAtomic>) -> bool {
        let (Some(mem), neg) = (&self.mem, &self.neg) else {
            return false;
        };
        if !(state.get_queue().ready() && state.is_enabled()) {
            return false;
        }
        let ring = match self.tx_ring.begin(state.get_queue(), mem) {
            Ok(ring) => ring,
            Err(e) => {
                warn_ratelimited!("port {} queue {}: TX ring: {e}", self.port.name, self.index);
                return false;
            }
        };
        ring.suppress_kicks();
        if self.tx_call.changed(state) {
            let _ = state.signal_used_queue();
            add(&self.port.counters.pair(self.index).tx_interrupts, 1);
        }
        self.tx_armed = self.polling;
        let taken = tx_burst(
            ring,
            &self.port,
            self.index,
            &self.pool,
            neg,
            &mut self.tx_scratch,
            &mut self.tx_batch,
        );
        ring.publish();
        if taken > 0 && ring.needs_interrupt() {
            let _ = state.signal_used_queue();
            add(&self.port.counters.pair(self.index).tx_interrupts, 1);
        }
        // A full burst: look again. Otherwise the ring is empty for now (kicks are re-enabled
        // by `finish_tx`, or never while polling).
        let more = taken == BATCH;
        self.tx_ring.end(state.get_queue_mut());
        if let Some(capture) = &self.port.capture {
            capture.flush();
        }
        if !self.tx_batch.is_empty() {
            self.attachment.transmit(
                &self.port,
                self.index,
                &mut self.tx_batch,
                &mut self.tx_own,
                &self.pool,
                &mut self.forward,
            );
            self.take_own();
        }
        more
    }

    /// Frames this pair sent to its own RX queue go into its RX stage, as far as the egress
    /// queue they skipped would have taken them.
    fn take_own(&mut self) {
        for frame in self.tx_own.drain(..) {
            if self.rx_stage.len() < self.port.config.class_depth as usize {
                self.rx_stage.hand_over(frame);
            } else {
                self.port
                    .counters
                    .pair(self.index)
                    .drop(DropReason::RxNoBuffer);
                self.pool.put(frame);
            }
        }
    }

    /// Frames wait for this pair's RX queue (in its egress queue or its RX stage).
    pub fn rx_waiting(&self) -> bool {
        !self.port.egress[self.index].is_empty() || !self.rx_stage.is_empty()
    }

    /// Poll mode: TX and RX passes over this pair with its two rings locked once, until
    /// [`SESSION_IDLE`] passes in a row find nothing or [`SESSION_PASSES`] have run. Taking
    /// the locks once per session rather than per pass saves the poller a handful of atomic
    /// read-modify-writes per pass, each of which waits for its earlier stores (used entries
    /// the frontend's core holds) to drain.
    pub fn poll_session(&mut self, rx: &Vring, tx: &Vring, tap_watch: &dyn TapWatch) {
        let mut tx_state = tx.get_mut();
        let mut rx_state = rx.get_mut();
        let mut idle = 0;
        for _ in 0..SESSION_PASSES {
            let before = self.moved();
            self.tx_pass(&mut tx_state);
            self.rx_pass(&mut rx_state, tap_watch);
            if self.moved() == before {
                idle += 1;
                if idle == SESSION_IDLE {
                    break;
                }
            } else {
                idle = 0;
            }
        }
    }

    /// Moves waiting frames into the guest's RX buffers until either runs out.
    pub fn process_rx(&mut self, vring: &Vring, tap_watch: &dyn TapWatch) {
        self.rx_pass(&mut vring.get_mut(), tap_watch);
    }

    /// One RX pass on the ring `state` holds.
    fn rx_pass(&mut self, state: &mut VringState<GuestMemAtomic>, tap_watch: &dyn TapWatch) {
        let steered_here = self.port.rx_enabled_mask() & (1 << self.index) != 0;
        if self.polling
            && steered_here
            && !self.rx_irq.open()
            && self.rx_stage.is_empty()
            && self.port.egress[self.index].is_empty()
        {
            // Nothing to deliver: a poller skips the ring, but looks at it now and then to
            // keep the port's view of it (enabled or not) up to date. (Until frames are steered
            // here it looks every time, so the first ones are not lost as `port_down`.)
            self.idle_polls = self.idle_polls.wrapping_add(1);
            if self.attachment.tap().is_none()
                && !self.idle_polls.is_multiple_of(IDLE_POLLS_PER_LOOK)
            {
                return;
            }
        }
        if !(state.get_queue().ready() && state.is_enabled()) {
            self.on_rx_disabled(tap_watch);
            return;
        }
        // A load, not a read-modify-write, on every pass: the bit is rarely wrong.
        if !steered_here {
            self.port.set_rx_enabled(self.index, true);
        }
        if self.attachment.tap().is_some() && !self.tap_watched {
            tap_watch.watch_tap(self.index, true);
            self.tap_watched = true;
        }
        let (Some(mem), neg) = (&self.mem, &self.neg) else {
            return;
        };
        let ring = match self.rx_ring.begin(state.get_queue(), mem) {
            Ok(ring) => ring,
            Err(e) => {
                warn_ratelimited!("port {} queue {}: RX ring: {e}", self.port.name, self.index);
                return;
            }
        };
        ring.suppress_kicks();
        let counters = self.port.counters.pair(self.index);
        if self.rx_call.changed(state) {
            let _ = state.signal_used_queue();
            add(&counters.rx_interrupts, 1);
        }
        let mut totals = BurstTotals::default();
        let mut unsignalled = 0;
        // Since the last interrupt decision: a latency-critical frame delivered; entries that
        // are not frames (returned bad chains) published.
        let (mut urgent, mut others) = (false, false);
        // `shape=on`: the clock, read once per pass.
        let mut now = None;
        self.link_wait = None;
        while let Some(mut frame) = self.rx_stage.next(
            &self.port,
            self.attachment.tap(),
            self.index,
            &self.pool,
            neg.rx_caps,
            neg.tap_max_frame,
        ) {
            if let Some(shaper) = &self.port.shaper {
                let at = *now.get_or_insert_with(Instant::now);
                if let Err(room) = shaper.take(frame.data.len(), at) {
                    self.rx_stage.put_back(&self.port, frame);
                    self.link_wait = Some(room);
                    self.rx_deadline.arm(room);
                    break;
                }
            }
            let mut hdr = frame.header.to_bytes();
            ring.prefetch(RX_PREFETCH_AHEAD);
            let outcome = deliver_frame(
                ring,
                &mut hdr,
                neg.hdr_len,
                neg.mrg_rxbuf,
                &frame.data,
                &mut self.rx_scratch,
            );
            match outcome {
                RxOutcome::Delivered => {
                    if let Some(capture) = &self.port.capture {
                        capture.record(&frame.data);
                    }
                    totals.packets += 1;
                    totals.bytes += frame.data.len() as u64;
                    totals.gso += (frame.header.gso_type != 0) as u64;
                    urgent |= frame.meta.class.latency_critical;
                    self.rx_spent.push(frame);
                    unsignalled += 1;
                    if unsignalled >= BATCH {
                        let d = self.rx_irq.on_published(unsignalled as u32, urgent, others);
                        decide_rx(ring, state, counters, d, &mut self.rx_deadline);
                        (unsignalled, urgent, others) = (0, false, false);
                    } else if unsignalled.is_multiple_of(RX_PUBLISH_EVERY) {
                        // Hand the driver what it can have already (a plain store): a polling
                        // driver starts on these while the rest are copied, so the two sides
                        // work in parallel rather than in turn.
                        ring.publish();
                    }
                }
                RxOutcome::Dropped(reason) => {
                    others = true;
                    counters.drop(reason);
                    warn_ratelimited!(
                        "port {} queue {}: dropped an RX frame: {}",
                        self.port.name,
                        self.index,
                        reason.name()
                    );
                    frame.data.clear();
                    self.pool.put(frame);
                }
                RxOutcome::RingBroken(error) => {
                    // Not followed: the frame waits until the driver repairs its ring.
                    warn_ratelimited!(
                        "port {} queue {}: RX ring: {error:?}, not followed",
                        self.port.name,
                        self.index
                    );
                    self.rx_stage.put_back(&self.port, frame);
                    break;
                }
                RxOutcome::NoBuffers => {
                    self.rx_stage.put_back(&self.port, frame);
                    // Ask for a kick when buffers come; if some came meanwhile, go on.
                    if ring.arm_kicks() {
                        continue;
                    }
                    if self.tap_watched && !self.polling {
                        tap_watch.watch_tap(self.index, false);
                        self.tap_watched = false;
                    }
                    break;
                }
            }
        }
        // Entries of dropped frames (bad chains) are published too.
        let d = self.rx_irq.on_published(unsignalled as u32, urgent, others);
        decide_rx(ring, state, counters, d, &mut self.rx_deadline);
        self.rx_ring.end(state.get_queue_mut());
        self.pool.put_many(&mut self.rx_spent);
        add(&counters.rx_packets, totals.packets);
        add(&counters.rx_bytes, totals.bytes);
        add(&counters.rx_gso, totals.gso);
        if let Some(capture) = &self.port.capture {
            capture.flush();
        }
    }

    /// The fd of the timer that ends this pair's RX coalescing windows and link waits (event
    /// mode).
    pub fn rx_timer_fd(&self) -> Option<RawFd> {
        self.rx_deadline.fd()
    }

    /// Event mode: the RX timer fired. A coalescing window that ended gets the interrupt its
    /// frames wait for (if the guest still wants it); frames that waited for the link are
    /// delivered. The timer is armed again for what is still ahead.
    pub fn on_rx_timer(&mut self, vring: &Vring, tap_watch: &dyn TapWatch) {
        self.rx_deadline.fired();
        let now = Instant::now();
        if self.rx_irq.due(now) {
            self.rx_irq.expire();
            self.raise_rx_timer(vring);
        }
        if self.link_wait.is_some_and(|t| now >= t) {
            self.process_rx(vring, tap_watch);
        }
        for at in [self.rx_irq.deadline(), self.link_wait]
            .into_iter()
            .flatten()
        {
            self.rx_deadline.arm(at);
        }
    }

    /// Raises the interrupt a window's frames waited for.
    fn raise_rx_timer(&mut self, vring: &Vring) {
        let mut guard = vring.get_mut();
        let state = &mut *guard;
        let Some(mem) = &self.mem else {
            return;
        };
        if !(state.get_queue().ready() && state.is_enabled()) {
            return;
        }
        let Ok(ring) = self.rx_ring.begin(state.get_queue(), mem) else {
            return;
        };
        let counters = self.port.counters.pair(self.index);
        let decision = Decision::Raise(Raise::Timer);
        decide_rx(ring, state, counters, decision, &mut self.rx_deadline);
        self.rx_ring.end(state.get_queue_mut());
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
        self.rx_irq.reset();
        if self.port.rx_enabled_mask() & (1 << self.index) != 0 {
            self.port.set_rx_enabled(self.index, false);
        }
        if self.tap_watched {
            tap_watch.watch_tap(self.index, false);
            self.tap_watched = false;
        }
        let egress = &self.port.egress[self.index];
        if !self.polling {
            egress.ack_wake();
        }
        let mut wake = Pending::default();
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

/// Publishes what was completed on RX ring `ring` and, as the interrupt policy decided, raises
/// the interrupt now if the guest wants one for it (counted by why), or leaves it to the end of
/// the coalescing window (arming `timer` when the window opened).
fn decide_rx(
    ring: &mut Ring,
    state: &mut VringState<GuestMemAtomic>,
    counters: &PairCounters,
    decision: Decision,
    deadline: &mut RxDeadline,
) {
    // Not "if anything was published now": entries published earlier in the burst (every
    // `RX_PUBLISH_EVERY`) still wait for this decision; `needs_interrupt` knows what is new.
    ring.publish();
    match decision {
        // (A timer still armed for a window closed early is not disarmed: its one stale
        // expiry finds no window open, which costs less than a syscall per interrupt.)
        Decision::Raise(why) => {
            if ring.needs_interrupt() {
                let _ = state.signal_used_queue();
                counters.rx_interrupt(why);
            }
        }
        Decision::Wait { until, opened } => {
            if opened {
                deadline.arm(until);
            }
        }
    }
}

/// Reusable space of a pair's TX bursts.
#[derive(Default)]
struct TxScratch {
    /// The buffers of the chain being read.
    segs: Vec<Segment>,
    /// Empty frames for the next chains, taken from the pool a burst's worth at a time (one
    /// look at the thread's frame cache per burst instead of one per frame).
    stash: Vec<Frame>,
}

/// How many chains past the next one a TX burst starts loading a buffer (see
/// [`Ring::prefetch`]): the next one, while the frame just popped is copied and checked.
/// (1 and 2 measured no better.)
const TX_PREFETCH_AHEAD: u16 = 0;
/// The same for RX, where the next chain is popped by the delivery that follows the prefetch:
/// the one after it.
const RX_PREFETCH_AHEAD: u16 = 1;

/// Takes up to [`BATCH`] chains from TX ring `ring` of queue pair `pair` of `port`: each is
/// copied into a frame, checked, and completed (length 0) on the used ring, not yet published.
/// Good frames go to `batch`. Returns the chains taken.
fn tx_burst(
    ring: &mut Ring,
    port: &Port,
    pair: usize,
    pool: &FramePool,
    neg: &Negotiated,
    scratch: &mut TxScratch,
    batch: &mut Vec<Frame>,
) -> usize {
    let TxScratch { segs, stash } = scratch;
    let counters = port.counters.pair(pair);
    let mut totals = BurstTotals::default();
    let mut classes = ClassTotals::default();
    let mut taken = 0;
    while taken < BATCH {
        segs.clear();
        let popped = match ring.pop(Access::Read, segs) {
            None => break,
            Some(Err(BadChain {
                error: error @ (ChainError::AvailIndexJump(_) | ChainError::EndlessChain),
                ..
            })) => {
                // Nothing on this ring can be trusted until the driver repairs its index (or,
                // packed, sets the ring up again): count it once and stop (the next kick or
                // poll looks again).
                counters.drop(DropReason::TxBadDescriptor);
                warn_ratelimited!(
                    "port {} queue {pair}: TX ring: {error:?}, not followed",
                    port.name
                );
                break;
            }
            Some(popped) => popped,
        };
        taken += 1;
        ring.prefetch(TX_PREFETCH_AHEAD);
        let (head, result) = match popped {
            Ok(chain) => {
                if stash.is_empty() {
                    pool.get_many(BATCH, stash);
                }
                let mut frame = stash.pop().expect("just filled");
                let mut hdr = [0u8; HEADER_LEN];
                let result = read_tx_chain(
                    segs,
                    chain.bytes,
                    neg.hdr_len,
                    neg.tx_max_frame,
                    &mut hdr,
                    &mut frame.data,
                )
                .and_then(|()| check_tx_offload(&mut frame, &hdr, neg, port, pair));
                match result {
                    Ok(()) => {
                        totals.packets += 1;
                        totals.bytes += frame.data.len() as u64;
                        if frame.header.gso_type != 0 {
                            totals.gso += 1;
                            totals.homa_gso += frame.meta.class.is_homa() as u64;
                        }
                        classes.count(&frame.meta.class);
                        if let Some(capture) = &port.capture {
                            capture.record(&frame.data);
                        }
                        batch.push(frame);
                    }
                    Err(_) => pool.put(frame),
                }
                (Some(chain.head), result)
            }
            Err(bad) => (bad.head, Err(DropReason::TxBadDescriptor)),
        };
        if let Err(reason) = result {
            // Offload refusals were counted with their cause already.
            if reason != DropReason::TxBadOffload {
                counters.drop(reason);
                warn_ratelimited!(
                    "port {} queue {pair}: dropped a TX frame: {}",
                    port.name,
                    reason.name()
                );
            }
        }
        if let Some(head) = head {
            ring.push_used(head, 0);
        }
    }
    add(&counters.tx_packets, totals.packets);
    add(&counters.tx_bytes, totals.bytes);
    add(&counters.tx_gso, totals.gso);
    add(&counters.tx_homa_gso, totals.homa_gso);
    counters.add_classes(&classes);
    if classes.malformed() > 0 {
        warn_ratelimited!(
            "port {} queue {pair}: {} TX frames with a broken Homa or Open-MX header (carried as plain traffic)",
            port.name,
            classes.malformed()
        );
    }
    taken
}

/// Parses a TX frame's headers and checks its virtio-net header against the frame and the
/// negotiated offloads, and keeps both with the frame. A refused request is counted under its
/// precise reason.
fn check_tx_offload(
    frame: &mut Frame,
    hdr: &[u8; HEADER_LEN],
    neg: &Negotiated,
    port: &Port,
    pair: usize,
) -> Result<(), DropReason> {
    frame.header = NetHeader {
        num_buffers: 0,
        ..NetHeader::from_bytes(hdr)
    };
    if frame.header.gso_type == 0 && frame.data.len() > neg.max_frame {
        return Err(DropReason::TxOversize);
    }
    // The frame's headers, parsed once here at entry, for everything after.
    let buf = &mut **frame;
    buf.meta
        .parse_and_classify(&buf.data, port.config.omx_ethertype);
    validate_tx(frame, neg.tx_caps).map_err(|e| {
        port.counters
            .pair(pair)
            .offload_drop(DropReason::TxBadOffload, e);
        warn_ratelimited!(
            "port {} queue {pair}: refused a TX offload request: {}",
            port.name,
            e.name()
        );
        // Counted above with its cause; the caller must not count it again.
        DropReason::TxBadOffload
    })
}
