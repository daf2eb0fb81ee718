//! A port: one vhost-user socket, one virtio-net device, and the state that outlives any one
//! frontend connection (counters, egress queues, link state).
//!
//! Frames reach a port's guest through its **egress queues**, one per RX queue: whoever
//! forwards a frame (another port's worker, the switch) steers it to one RX queue, pushes it
//! there without a lock and wakes that queue's worker through an eventfd, once per batch. The
//! worker copies it into the guest. A full egress queue drops and counts, so a guest that does
//! not post RX buffers never holds up the sender. (Room to grow: per-class queues for strict
//! priority egress go here.)
//!
//! - [`steering`]: which of a port's RX queues receives a frame.
//!
//! A tap port's tap belongs to its attachment (`net::Attachment::Tap`), not to the port.

pub mod steering;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::capture::Capture;
use crate::config::PortConfig;
use crate::features;
use crate::frame::{Frame, FramePool};
use crate::offload::{adapt_for, RxCaps};
use crate::poller::PollSlot;
use crate::stats::{add, DropReason, PortCounters, PortSnapshot};
use crate::warn_ratelimited;

/// Frames an RX queue can hold while its guest has no free buffers.
pub const EGRESS_QUEUE_LEN: usize = 1024;

/// Frames waiting for one RX queue, and the eventfd that wakes its worker.
pub struct EgressQueue {
    frames: ArrayQueue<Frame>,
    wake: EventFd,
    wake_pending: AtomicBool,
    /// A poller serves this queue: it looks without being woken.
    polled: bool,
}

impl EgressQueue {
    fn new(polled: bool) -> io::Result<Self> {
        Ok(EgressQueue {
            frames: ArrayQueue::new(EGRESS_QUEUE_LEN),
            wake: EventFd::new(EFD_NONBLOCK)?,
            wake_pending: AtomicBool::new(false),
            polled,
        })
    }

    pub fn pop(&self) -> Option<Frame> {
        self.frames.pop()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Wakes the worker unless a wake-up is already pending: one eventfd write per batch.
    pub fn wake(&self) {
        if !self.polled && !self.wake_pending.swap(true, Ordering::AcqRel) {
            let _ = self.wake.write(1);
        }
    }

    /// Called by the worker when woken, before it drains the queue: frames pushed after this
    /// wake it again. (Not needed when it drains for another reason: a wake-up still pending
    /// will come, so nothing waits unseen.)
    pub fn ack_wake(&self) {
        let _ = self.wake.read();
        self.wake_pending.store(false, Ordering::SeqCst);
    }

    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

pub struct Port {
    /// Index in the daemon's port list.
    pub id: usize,
    /// Short name for logs and stats: the socket's file name.
    pub name: String,
    pub config: PortConfig,
    pub counters: PortCounters,
    pub egress: Vec<EgressQueue>,
    /// `pcap=PATH`: where frames crossing the port are recorded.
    pub capture: Option<Capture>,
    /// Served by pollers (`--poll-cpus`) rather than event-driven workers.
    pub polled: bool,
    /// With pollers: the slot of each queue pair (which poller serves it).
    pub poll_slots: Vec<Arc<PollSlot>>,
    /// Bit i: RX queue of pair i is ready and enabled, as its worker last saw it.
    rx_enabled: AtomicU32,
    connected: AtomicBool,
    connections: AtomicU64,
    features: AtomicU64,
}

impl Port {
    pub fn new(
        id: usize,
        config: PortConfig,
        capture: Option<Capture>,
        poll_slots: Vec<Arc<PollSlot>>,
    ) -> io::Result<Port> {
        let polled = !poll_slots.is_empty();
        let egress = (0..config.queues)
            .map(|_| EgressQueue::new(polled))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Port {
            id,
            name: config.name(),
            counters: PortCounters::new(config.queues),
            egress,
            capture,
            polled,
            poll_slots,
            rx_enabled: AtomicU32::new(0),
            connected: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            features: AtomicU64::new(0),
            config,
        })
    }

    pub fn queue_pairs(&self) -> usize {
        self.config.queues as usize
    }

    /// Steers `frame` to one of this port's RX queues and queues it there. Sets the queue's bit
    /// in `wake` so the caller wakes it once for the whole batch (see [`Port::wake`]).
    #[inline]
    pub fn enqueue(&self, frame: Frame, pool: &FramePool, wake: &mut u32) {
        match self.steer(&frame) {
            Some(q) => self.enqueue_to(q, frame, pool, wake),
            None => self.drop_unsteered(frame, pool),
        }
    }

    /// The RX queue `frame` is steered to among the enabled ones; None if none is.
    #[inline]
    pub fn steer(&self, frame: &Frame) -> Option<usize> {
        let enabled = self.rx_enabled.load(Ordering::Acquire);
        // One queue enabled: nothing to choose (and no call through the policy per frame).
        if enabled.is_power_of_two() {
            Some(enabled.trailing_zeros() as usize)
        } else {
            steering::select(self.config.steer, frame, enabled)
        }
    }

    /// Queues `frame` for RX queue `q` (see [`Port::enqueue`]).
    #[inline]
    pub fn enqueue_to(&self, q: usize, frame: Frame, pool: &FramePool, wake: &mut u32) {
        match self.egress[q].frames.push(frame) {
            Ok(()) => *wake |= 1 << q,
            Err(frame) => {
                self.counters.pair(q).drop(DropReason::RxNoBuffer);
                pool.put(frame);
            }
        }
    }

    /// Drops (and counts) a frame for this port while no RX queue is enabled.
    pub fn drop_unsteered(&self, frame: Frame, pool: &FramePool) {
        self.counters.pair(0).drop(DropReason::PortDown);
        pool.put(frame);
    }

    /// Adapts `frame` for a destination of queue pair `pair` of this port (its guest's RX queue
    /// or its tap) with `caps`, into `out`. Counts the segments vnic cut in `cut`; a frame that
    /// cannot be delivered is dropped, counted as `rx_bad_offload` with its cause, and logged
    /// (rate-limited).
    pub fn adapt_counted(
        &self,
        frame: Frame,
        caps: RxCaps,
        pool: &FramePool,
        out: &mut Vec<Frame>,
        pair: usize,
        cut: &AtomicU64,
    ) {
        let was_gso = frame.header.gso_type != 0;
        match adapt_for(frame, caps, pool, out) {
            Ok(n) if was_gso && n > 1 => add(cut, n as u64),
            Ok(_) => {}
            Err(e) => {
                self.counters
                    .pair(pair)
                    .offload_drop(DropReason::RxBadOffload, e);
                warn_ratelimited!(
                    "port {} queue {pair}: cannot deliver an offloaded frame: {}",
                    self.name,
                    e.name()
                );
            }
        }
    }

    /// Wakes the workers of the RX queues whose bits are set.
    pub fn wake(&self, mut queues: u32) {
        while queues != 0 {
            let q = queues.trailing_zeros() as usize;
            self.egress[q].wake();
            queues &= queues - 1;
        }
    }

    pub fn rx_enabled_mask(&self) -> u32 {
        self.rx_enabled.load(Ordering::Acquire)
    }

    pub fn set_rx_enabled(&self, pair: usize, enabled: bool) {
        if enabled {
            self.rx_enabled.fetch_or(1 << pair, Ordering::AcqRel);
        } else {
            self.rx_enabled.fetch_and(!(1 << pair), Ordering::AcqRel);
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn on_connect(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connected.store(true, Ordering::Release);
    }

    /// The frontend went away: nothing may be steered here until a new one enables queues,
    /// and what waits in the egress queues is dropped and counted.
    pub fn on_disconnect(&self, pool: &FramePool) {
        self.connected.store(false, Ordering::Release);
        self.rx_enabled.store(0, Ordering::Release);
        self.features.store(0, Ordering::Release);
        for (q, egress) in self.egress.iter().enumerate() {
            while let Some(frame) = egress.pop() {
                self.counters.pair(q).drop(DropReason::PortDown);
                pool.put(frame);
            }
        }
    }

    pub fn set_features(&self, features: u64) {
        self.features.store(features, Ordering::Release);
    }

    pub fn features(&self) -> u64 {
        self.features.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> PortSnapshot {
        let features = self.features();
        PortSnapshot {
            name: self.name.clone(),
            socket: self.config.socket.display().to_string(),
            mac: crate::config::format_mac(&self.config.mac),
            mtu: self.config.mtu,
            speed_mbps: self.config.speed,
            attach: self.config.attach.to_string(),
            steer: self.config.steer.name().to_string(),
            link_up: self.is_connected(),
            connections: self.connections.load(Ordering::Relaxed),
            features,
            feature_names: features::names(features),
            queue_pairs: self.config.queues,
            queues: self.counters.snapshot(self.rx_enabled_mask()),
        }
    }
}
