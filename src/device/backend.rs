//! The `VhostUserBackend` of one frontend connection to a port.
//!
//! One worker thread per queue pair (`queues_per_thread`), each owning that pair's RX and TX
//! rings and its [`QueuePair`] state, so pairs run in parallel with no shared lock. Besides the
//! two kick eventfds, each worker's epoll watches its pair's egress-queue eventfd and, for a tap
//! port, its tap queue while the guest has RX buffers.
//!
//! A backend lives for one connection; the [`Port`] it serves outlives it.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringEpollHandler};
use virtio_bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::{config_space, features};
use crate::datapath::queue_pair::{Negotiated, QueuePair, TapWatch};
use crate::datapath::{GuestMemAtomic, Vring};
use crate::frame::net_header::{HEADER_LEN, LEGACY_HEADER_LEN};
use crate::frame::FramePool;
use crate::net::{Attachment, Tap};
use crate::offload::{RxCaps, TxCaps, MAX_IP_LEN};
use crate::poller::Pollable;
use crate::port::Port;
use crate::stats::add;

/// Largest ring size accepted (QEMU allows up to 1024 for virtio-net).
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Room for link-layer headers beyond the MTU: Ethernet plus two VLAN tags.
pub const L2_OVERHEAD: usize = 14 + 8;

/// Index of the RX and TX ring among a worker's two vrings.
const RX: u16 = 0;
const TX: u16 = 1;

#[derive(Clone)]
pub struct PortBackend {
    inner: Arc<Inner>,
}

struct Inner {
    port: Arc<Port>,
    /// The tap of a tap port's attachment.
    tap: Option<Arc<Tap>>,
    mem: GuestMemAtomic,
    /// Moves each time the frontend sends a new memory table (workers reload it then).
    mem_gen: AtomicU64,
    acked: AtomicU64,
    pairs: Vec<Mutex<QueuePair>>,
    /// Each pair's (RX, TX) vrings, known once its worker has seen an event (for pollers).
    rings: Vec<OnceLock<(Vring, Vring)>>,
    /// The worker of each pair, to (un)register its tap queue. Weak: workers own backends.
    workers: OnceLock<Vec<Weak<VringEpollHandler<PortBackend>>>>,
}

impl PortBackend {
    pub fn new(
        port: Arc<Port>,
        attachment: Attachment,
        pool: Arc<FramePool>,
        mem: GuestMemAtomic,
    ) -> Self {
        let tap = match &attachment {
            Attachment::Tap(tap) => Some(tap.clone()),
            Attachment::Switch(_) | Attachment::Loopback => None,
        };
        let pairs = (0..port.queue_pairs())
            .map(|i| {
                Mutex::new(QueuePair::new(
                    i,
                    port.clone(),
                    attachment.clone(),
                    pool.clone(),
                    negotiated(&port, tap.as_deref(), 0),
                ))
            })
            .collect();
        let rings = (0..port.queue_pairs()).map(|_| OnceLock::new()).collect();
        PortBackend {
            inner: Arc::new(Inner {
                port,
                tap,
                mem,
                mem_gen: AtomicU64::new(1),
                acked: AtomicU64::new(0),
                rings,
                pairs,
                workers: OnceLock::new(),
            }),
        }
    }

    /// Hands this connection's pairs to the port's pollers (poll mode) or takes them back.
    pub fn set_polled(&self, on: bool) {
        for slot in &self.inner.port.poll_slots {
            slot.set(on.then(|| Arc::new(self.clone()) as Arc<dyn Pollable>));
        }
    }

    fn egress_token(&self) -> u64 {
        self.num_queues() as u64 + 1
    }

    fn tap_token(&self) -> u64 {
        self.num_queues() as u64 + 2
    }

    fn rx_timer_token(&self) -> u64 {
        self.num_queues() as u64 + 3
    }

    /// Registers each pair's egress eventfd with its worker. Call once, before accepting.
    pub fn attach_workers(
        &self,
        workers: Vec<Arc<VringEpollHandler<PortBackend>>>,
    ) -> io::Result<()> {
        for (pair, worker) in workers.iter().enumerate() {
            let fd = self.inner.port.egress[pair].wake_fd();
            worker.register_listener(fd, EventSet::IN, self.egress_token())?;
            let timer = self
                .inner
                .pairs
                .get(pair)
                .and_then(|p| p.lock().unwrap_or_else(|e| e.into_inner()).rx_timer_fd());
            if let Some(fd) = timer {
                worker.register_listener(fd, EventSet::IN, self.rx_timer_token())?;
            }
        }
        let _ = self
            .inner
            .workers
            .set(workers.iter().map(Arc::downgrade).collect());
        Ok(())
    }

    /// Brings a pair's view of memory and features up to date before a pass.
    fn prepare(&self, pair: &mut QueuePair) {
        let acked = self.inner.acked.load(Ordering::Acquire);
        let (port, tap) = (&self.inner.port, self.inner.tap.as_deref());
        pair.prepare(
            self.inner.mem_gen.load(Ordering::Acquire),
            &self.inner.mem,
            acked,
            |acked| negotiated(port, tap, acked),
        );
    }
}

/// What the datapath of `port` (with `tap`, its attachment's tap if any) needs to know of
/// feature bits `acked`.
fn negotiated(port: &Port, tap: Option<&Tap>, acked: u64) -> Negotiated {
    {
        let mrg_rxbuf = features::has(acked, VIRTIO_NET_F_MRG_RXBUF);
        let hdr_len = if mrg_rxbuf || features::has(acked, VIRTIO_F_VERSION_1) {
            HEADER_LEN
        } else {
            LEGACY_HEADER_LEN
        };
        let tx_caps = TxCaps::from_features(acked);
        let max_frame = port.config.mtu as usize + L2_OVERHEAD;
        let job_frame = MAX_IP_LEN + L2_OVERHEAD;
        let tap_offloads = tap.is_some_and(|t| t.offloads() != 0);
        Negotiated {
            hdr_len,
            mrg_rxbuf,
            max_frame,
            tx_max_frame: if tx_caps.tso4 || tx_caps.tso6 || tx_caps.uso {
                job_frame
            } else {
                max_frame
            },
            tap_max_frame: if tap_offloads { job_frame } else { max_frame },
            tx_caps,
            rx_caps: RxCaps::from_features(acked),
            packed: features::has(acked, VIRTIO_F_RING_PACKED),
            in_order: features::has(acked, VIRTIO_F_IN_ORDER),
        }
    }
}

impl Pollable for PortBackend {
    fn poll(&self, pair: usize) {
        let (Some(qp), Some((rx, tx))) = (
            self.inner.pairs.get(pair),
            self.inner.rings.get(pair).and_then(OnceLock::get),
        ) else {
            return;
        };
        let mut qp = qp.lock().unwrap_or_else(|e| e.into_inner());
        self.prepare(&mut qp);
        qp.poll_session(rx, tx, self);
    }
}

impl TapWatch for PortBackend {
    fn watch_tap(&self, pair: usize, on: bool) {
        // A poller reads the tap on every pass: no epoll (a readable tap would spin it).
        let Some(tap) = self.inner.tap.as_ref().filter(|_| !self.inner.port.polled) else {
            return;
        };
        let worker = self
            .inner
            .workers
            .get()
            .and_then(|w| w.get(pair))
            .and_then(Weak::upgrade);
        if let Some(worker) = worker {
            let fd = tap.queue_fd(pair);
            let result = if on {
                worker.register_listener(fd, EventSet::IN, self.tap_token())
            } else {
                worker.unregister_listener(fd, EventSet::IN, self.tap_token())
            };
            if let Err(e) = result {
                log::warn!(
                    "port {}: tap queue {pair} watch={on}: {e}",
                    self.inner.port.name
                );
            }
        }
    }
}

impl VhostUserBackend for PortBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        2 * self.inner.port.queue_pairs()
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let c = &self.inner.port.config;
        let rings =
            (c.packed as u64 * features::RING_PACKED) | (c.in_order as u64 * features::IN_ORDER);
        features::offered(c.offloads, rings)
    }

    fn acked_features(&self, features: u64) {
        self.inner.acked.store(features, Ordering::Release);
        self.inner.port.set_features(features);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        features::protocol_features()
    }

    fn reset_device(&self) {
        for pair in 0..self.inner.port.queue_pairs() {
            self.inner.port.set_rx_enabled(pair, false);
        }
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The vrings themselves apply EVENT_IDX (vhost-user-backend sets it on each queue).
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let port = &self.inner.port;
        let space = config_space::config_bytes(&port.config, port.is_connected());
        config_space::read(&space, offset, size)
    }

    fn update_memory(&self, _mem: GuestMemAtomic) -> io::Result<()> {
        // The handler has updated the GuestMemoryAtomic we were created with; tell the
        // workers to load it again.
        self.inner.mem_gen.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.inner.port.queue_pairs())
            .map(|pair| 0b11u64 << (2 * pair))
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE: the ring stops now; stop steering frames to it.
        // What waits for it belongs to the driver that is going away (a reset or reboot
        // keeps the connection): drop and count it, as a NIC does on reset.
        if queue_index.is_multiple_of(2) {
            let pair = (queue_index / 2) as usize;
            if let Some(qp) = self.inner.pairs.get(pair) {
                self.inner.port.set_rx_enabled(pair, false);
                qp.lock().unwrap_or_else(|e| e.into_inner()).discard_rx();
            }
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        let (Some(pair), [rx, tx]) = (self.inner.pairs.get(thread_id), vrings) else {
            return Ok(());
        };
        let counters = self.inner.port.counters.pair(thread_id);
        if self.inner.port.polled {
            // A poller does the work; the worker only tells it where the rings are.
            let _ = self.inner.rings[thread_id].get_or_init(|| (rx.clone(), tx.clone()));
            match device_event {
                RX => add(&counters.rx_kicks, 1),
                TX => add(&counters.tx_kicks, 1),
                _ => {}
            }
            return Ok(());
        }
        let mut pair = pair.lock().unwrap_or_else(|e| e.into_inner());
        self.prepare(&mut pair);
        let before = pair.moved();
        let token = device_event as u64;
        if device_event == RX {
            add(&counters.rx_kicks, 1);
            pair.process_rx(rx, self);
        } else if device_event == TX {
            add(&counters.tx_kicks, 1);
            pair.process_tx(tx);
            // Frames this pass sent to its own RX queue (a loopback port) go in now, without
            // a wake-up through the eventfd and epoll (they were handed over, not queued).
            if pair.rx_waiting() {
                pair.process_rx(rx, self);
            }
        } else if token == self.egress_token() {
            self.inner.port.egress[thread_id].ack_wake();
            pair.process_rx(rx, self);
        } else if token == self.tap_token() {
            pair.process_rx(rx, self);
        } else if token == self.rx_timer_token() {
            pair.on_rx_timer(rx, self);
        }
        if pair.moved() != before {
            pair.spin(rx, tx, self);
        }
        pair.finish_tx(rx, tx, self);
        // Never an error: an error would stop this worker for good.
        Ok(())
    }
}
