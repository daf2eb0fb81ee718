//! A port: one vhost-user socket, one virtio-net device, and the state that outlives any one
//! frontend connection (counters, egress queues, link state).
//!
//! Frames reach a port's guest through its **egress queues**, one per RX queue: whoever
//! forwards a frame (another port's worker, the switch) steers it to one RX queue, pushes it
//! into the class of its priority there without a lock and wakes that queue's worker through an
//! eventfd, once per batch. The worker copies it into the guest, the highest class first. A full
//! class drops and counts, so a guest that does not post RX buffers never holds up the sender.
//!
//! - [`steering`]: which of a port's RX queues receives a frame.
//! - [`egress`]: the eight strict-priority classes in front of each RX queue.
//! - [`shaper`]: `shape=on`, the port's `speed=` enforced on what it delivers.
//!
//! A tap port's tap belongs to its attachment (`net::Attachment::Tap`), not to the port.

pub mod egress;
pub mod shaper;
pub mod steering;

pub use egress::{EgressQueue, Pending, CLASSES};

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::capture::Capture;
use crate::config::PortConfig;
use crate::features;
use crate::frame::{Frame, FramePool};
use crate::offload::{adapt_for, RxCaps};
use crate::poller::PollSlot;
use crate::stats::{add, DropReason, PortCounters, PortSnapshot};
use crate::warn_ratelimited;

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
    /// `shape=on`: the link's token bucket, shared by the RX queues.
    pub shaper: Option<shaper::Shaper>,
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
            .map(|_| EgressQueue::new(config.class_depth as usize, polled))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Port {
            id,
            name: config.name(),
            counters: PortCounters::new(config.queues),
            egress,
            capture,
            polled,
            poll_slots,
            shaper: config
                .shape
                .then(|| shaper::Shaper::new(config.speed, config.mtu)),
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

    /// Steers `frame` to one of this port's RX queues and queues it there, in the class of its
    /// priority. Notes the queue and class in `pending` so the caller publishes and wakes them
    /// once for the whole batch (see [`Port::wake`]).
    #[inline]
    pub fn enqueue(&self, frame: Frame, pool: &FramePool, pending: &mut Pending) {
        match self.steer(&frame) {
            Some(q) => self.enqueue_to(q, frame, pool, pending),
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

    /// The class `frame` waits in on this port: its priority, or 0 for all with `classes=off`.
    #[inline]
    pub fn class_of(&self, frame: &Frame) -> usize {
        if self.config.classes {
            frame.meta.class.priority as usize % CLASSES
        } else {
            0
        }
    }

    /// Queues `frame` for RX queue `q` (see [`Port::enqueue`]).
    #[inline]
    pub fn enqueue_to(&self, q: usize, frame: Frame, pool: &FramePool, pending: &mut Pending) {
        let class = self.class_of(&frame);
        match self.egress[q].push(class, frame) {
            Ok(()) => pending.add(q, class),
            Err(frame) => {
                self.counters.pair(q).class_drop(class);
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

    /// Publishes what a batch queued (`pending`) and wakes the workers of those RX queues.
    pub fn wake(&self, pending: Pending) {
        for (q, classes) in pending.queues() {
            self.egress[q].publish(classes);
            self.egress[q].wake();
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
            queues: self
                .counters
                .snapshot(self.rx_enabled_mask(), |q| self.egress[q].depths()),
        }
    }
}
