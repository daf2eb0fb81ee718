//! Counters kept by the datapath and the snapshot `vnic stats` prints.
//!
//! Counters are per queue pair, relaxed atomics in their own cache lines: each is written mostly
//! by the worker thread of its pair, so counting costs no lock and no shared-line bouncing. A
//! drop is always counted on the queue pair whose traffic it was: TX drops on the sender's pair,
//! RX drops on the receiver's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use serde::{Deserialize, Serialize};

use crate::frame::class::{Class, Proto, Transport, CLASSES};
use crate::offload::OffloadError;

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// A TX chain whose descriptors could not be read (bad address, loop, device-writable).
    TxBadDescriptor,
    /// A TX chain not longer than the virtio-net header, or a frame shorter than an Ethernet header.
    TxShortFrame,
    /// A TX frame longer than the port's MTU allows.
    TxOversize,
    /// The destination RX queue had no free guest buffers and its egress queue was full.
    RxNoBuffer,
    /// The frame did not fit in the guest's RX buffers.
    RxBufferTooSmall,
    /// An RX chain whose descriptors could not be written.
    RxBadDescriptor,
    /// The destination port has no frontend or no enabled RX queue.
    PortDown,
    /// The frame was queued for an RX queue that was disabled and no other queue could take it.
    QueueDisabled,
    /// The host tap refused the frame.
    TapError,
    /// A unicast frame addressed to a MAC learned on the port it came from.
    SamePort,
    /// A TX offload request (checksum, segmentation) inconsistent with the frame or with what
    /// was negotiated; the precise reason is counted under `offload_<reason>`.
    TxBadOffload,
    /// A frame whose offload request cannot be carried out for this destination (UFO, Homa
    /// segmentation, a malformed job from a tap); see `offload_<reason>`.
    RxBadOffload,
}

impl DropReason {
    pub const COUNT: usize = 12;
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::TxBadDescriptor,
        DropReason::TxShortFrame,
        DropReason::TxOversize,
        DropReason::RxNoBuffer,
        DropReason::RxBufferTooSmall,
        DropReason::RxBadDescriptor,
        DropReason::PortDown,
        DropReason::QueueDisabled,
        DropReason::TapError,
        DropReason::SamePort,
        DropReason::TxBadOffload,
        DropReason::RxBadOffload,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::TxBadDescriptor => "tx_bad_descriptor",
            DropReason::TxShortFrame => "tx_short_frame",
            DropReason::TxOversize => "tx_oversize",
            DropReason::RxNoBuffer => "rx_no_buffer",
            DropReason::RxBufferTooSmall => "rx_buffer_too_small",
            DropReason::RxBadDescriptor => "rx_bad_descriptor",
            DropReason::PortDown => "port_down",
            DropReason::QueueDisabled => "queue_disabled",
            DropReason::TapError => "tap_error",
            DropReason::SamePort => "same_port",
            DropReason::TxBadOffload => "tx_bad_offload",
            DropReason::RxBadOffload => "rx_bad_offload",
        }
    }
}

/// Counters of one queue pair. "rx" is the guest's receive queue (frames vnic delivers to the
/// guest), "tx" its transmit queue (frames the guest sends), as in the virtio spec.
#[derive(Default)]
pub struct PairCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub rx_kicks: AtomicU64,
    pub rx_interrupts: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_kicks: AtomicU64,
    pub tx_interrupts: AtomicU64,
    /// Segmentation jobs (GSO frames) the guest sent.
    pub tx_gso: AtomicU64,
    /// Of those, Homa jobs (cut by vnic for every destination).
    pub tx_homa_gso: AtomicU64,
    /// GSO frames delivered to the guest as such (passed through or coalesced).
    pub rx_gso: AtomicU64,
    /// Frames vnic cut in software for this guest, which could not take a job as is.
    pub rx_segments: AtomicU64,
    /// Segments merged into larger frames by receive coalescing (LRO).
    pub rx_coalesced: AtomicU64,
    /// Frames vnic cut in software from the guest's jobs for the port's tap, whose offloads
    /// could not take them.
    pub tap_segments: AtomicU64,
    /// Frames that entered here (from the guest, or from the port's tap) by class.
    class: [AtomicU64; 4],
    /// RX interrupts by why they were raised: a latency-critical frame, `rx_frames` frames, the
    /// `rx_usecs` window's end (also counted in `rx_interrupts`).
    rx_irq: [AtomicU64; 3],
    /// Frames dropped because their priority class in front of the RX queue was full (also
    /// counted as `rx_no_buffer`), by class.
    class_drops: [AtomicU64; CLASSES],
    drops: [AtomicU64; DropReason::COUNT],
    /// Offload refusals by precise reason (also counted under a [`DropReason`]).
    offload_drops: [AtomicU64; OffloadError::COUNT],
}

/// Adds `n` to a counter. Relaxed: counters order nothing.
#[inline]
pub fn add(counter: &AtomicU64, n: u64) {
    // Most bursts leave most counters alone: no locked instruction for those.
    if n != 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Slots of the class counters (`PairCounters::class`, [`ClassTotals`]).
const HOMA: usize = 0;
const OPENMX: usize = 1;
const MALFORMED_HOMA: usize = 2;
const MALFORMED_OPENMX: usize = 3;

/// Frames of one burst by class, added to a pair's counters once per burst.
#[derive(Default)]
pub struct ClassTotals([u64; 4]);

impl ClassTotals {
    #[inline]
    pub fn count(&mut self, class: &Class) {
        let slot = match class.transport {
            Transport::Plain => return,
            Transport::Homa(_) => HOMA,
            Transport::OpenMx(_) => OPENMX,
            Transport::Malformed(Proto::Homa) => MALFORMED_HOMA,
            Transport::Malformed(Proto::OpenMx) => MALFORMED_OPENMX,
        };
        self.0[slot] += 1;
    }

    /// Frames whose Homa or Open-MX header was broken.
    pub fn malformed(&self) -> u64 {
        self.0[MALFORMED_HOMA] + self.0[MALFORMED_OPENMX]
    }
}

impl PairCounters {
    /// Adds a burst's class totals.
    #[inline]
    pub fn add_classes(&self, totals: &ClassTotals) {
        for (counter, n) in self.class.iter().zip(totals.0) {
            add(counter, n);
        }
    }

    #[inline]
    pub fn drop(&self, reason: DropReason) {
        self.drops_n(reason, 1);
    }

    #[inline]
    pub fn drops_n(&self, reason: DropReason, n: u64) {
        add(&self.drops[reason as usize], n);
    }

    /// Counts an RX interrupt raised for `why`.
    #[inline]
    pub fn rx_interrupt(&self, why: IrqCause) {
        add(&self.rx_interrupts, 1);
        if why != IrqCause::Always {
            add(&self.rx_irq[why as usize - 1], 1);
        }
    }

    /// Counts a frame dropped because priority class `class` of the RX queue was full.
    pub fn class_drop(&self, class: usize) {
        self.drop(DropReason::RxNoBuffer);
        add(&self.class_drops[class], 1);
    }

    /// Counts a refused offload request under `reason` and its precise cause.
    pub fn offload_drop(&self, reason: DropReason, cause: OffloadError) {
        self.drop(reason);
        add(&self.offload_drops[cause as usize], 1);
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    fn snapshot(&self, index: u16, enabled: bool, depth: [usize; CLASSES]) -> PairSnapshot {
        let ld = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PairSnapshot {
            index,
            enabled,
            rx: DirectionSnapshot {
                packets: ld(&self.rx_packets),
                bytes: ld(&self.rx_bytes),
                kicks: ld(&self.rx_kicks),
                interrupts: ld(&self.rx_interrupts),
            },
            tx: DirectionSnapshot {
                packets: ld(&self.tx_packets),
                bytes: ld(&self.tx_bytes),
                kicks: ld(&self.tx_kicks),
                interrupts: ld(&self.tx_interrupts),
            },
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.name().to_string(), self.drops(*r)))
                .chain(OffloadError::ALL.iter().map(|e| {
                    (
                        format!("offload_{}", e.name()),
                        ld(&self.offload_drops[*e as usize]),
                    )
                }))
                .collect(),
            offload: OffloadSnapshot {
                tx_gso: ld(&self.tx_gso),
                tx_homa_gso: ld(&self.tx_homa_gso),
                rx_gso: ld(&self.rx_gso),
                rx_segments: ld(&self.rx_segments),
                rx_coalesced: ld(&self.rx_coalesced),
                tap_segments: ld(&self.tap_segments),
            },
            class: ClassSnapshot {
                homa: ld(&self.class[HOMA]),
                openmx: ld(&self.class[OPENMX]),
                malformed_homa: ld(&self.class[MALFORMED_HOMA]),
                malformed_openmx: ld(&self.class[MALFORMED_OPENMX]),
            },
            rx_irq: IrqSnapshot {
                urgent: ld(&self.rx_irq[0]),
                frames: ld(&self.rx_irq[1]),
                timer: ld(&self.rx_irq[2]),
            },
            egress: EgressSnapshot {
                depth: depth.map(|d| d as u64),
                drops: std::array::from_fn(|c| ld(&self.class_drops[c])),
            },
        }
    }
}

/// The counters of every queue pair of one port.
pub struct PortCounters {
    pairs: Vec<CachePadded<PairCounters>>,
}

impl PortCounters {
    pub fn new(pairs: u16) -> Self {
        PortCounters {
            pairs: (0..pairs).map(|_| CachePadded::default()).collect(),
        }
    }

    /// Counters of queue pair `pair`. Panics on an index the port does not have: callers pass
    /// indexes the device itself chose, never guest input.
    #[inline]
    pub fn pair(&self, pair: usize) -> &PairCounters {
        &self.pairs[pair]
    }

    /// Every pair's counters; `depth(i)`: the frames waiting in each priority class of pair
    /// i's RX queue now.
    pub fn snapshot(
        &self,
        enabled_mask: u32,
        depth: impl Fn(usize) -> [usize; CLASSES],
    ) -> Vec<PairSnapshot> {
        self.pairs
            .iter()
            .enumerate()
            .map(|(i, c)| c.snapshot(i as u16, enabled_mask & (1 << i) != 0, depth(i)))
            .collect()
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DirectionSnapshot {
    pub packets: u64,
    pub bytes: u64,
    pub kicks: u64,
    pub interrupts: u64,
}

/// What the offload engines did on a queue pair.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct OffloadSnapshot {
    pub tx_gso: u64,
    pub tx_homa_gso: u64,
    pub rx_gso: u64,
    pub rx_segments: u64,
    pub rx_coalesced: u64,
    pub tap_segments: u64,
}

/// Frames that entered a queue pair (from its guest or its tap) by what they are (see
/// `frame::class`): Homa, Open-MX, and frames claiming to be one of them whose header is broken
/// (handled as plain traffic).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ClassSnapshot {
    pub homa: u64,
    pub openmx: u64,
    pub malformed_homa: u64,
    pub malformed_openmx: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PairSnapshot {
    pub index: u16,
    pub enabled: bool,
    pub rx: DirectionSnapshot,
    pub tx: DirectionSnapshot,
    pub drops: BTreeMap<String, u64>,
    pub offload: OffloadSnapshot,
    #[serde(default)]
    pub class: ClassSnapshot,
    #[serde(default)]
    pub egress: EgressSnapshot,
    #[serde(default)]
    pub rx_irq: IrqSnapshot,
}

/// Why a pair's RX interrupts were raised (`rx_usecs=`/`rx_frames=` coalescing): at once for a
/// latency-critical frame, once `rx_frames` bulk frames waited, or at the end of the window.
/// Interrupts without coalescing (`rx_usecs=0`) count in `rx.interrupts` only.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct IrqSnapshot {
    pub urgent: u64,
    pub frames: u64,
    pub timer: u64,
}

/// Why an RX interrupt is raised (see [`IrqSnapshot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqCause {
    /// No coalescing, or entries that are not frames.
    Always = 0,
    Urgent = 1,
    Frames = 2,
    Timer = 3,
}

/// The eight strict-priority classes in front of a pair's RX queue (index: the priority, 0
/// lowest): the frames waiting in each now, and the frames each dropped because it was full.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EgressSnapshot {
    pub depth: [u64; CLASSES],
    pub drops: [u64; CLASSES],
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PortSnapshot {
    pub name: String,
    pub socket: String,
    pub mac: String,
    pub mtu: u16,
    pub speed_mbps: u32,
    pub attach: String,
    /// The RX steering policy (`steer=`).
    #[serde(default)]
    pub steer: String,
    pub link_up: bool,
    pub connections: u64,
    pub features: u64,
    pub feature_names: Vec<String>,
    pub queue_pairs: u16,
    pub queues: Vec<PairSnapshot>,
}

impl PortSnapshot {
    /// Drops of all queue pairs, by reason.
    pub fn total_drops(&self) -> BTreeMap<String, u64> {
        let mut total = BTreeMap::new();
        for q in &self.queues {
            for (k, v) in &q.drops {
                *total.entry(k.clone()).or_insert(0) += v;
            }
        }
        total
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatsSnapshot {
    pub ports: Vec<PortSnapshot>,
}

impl StatsSnapshot {
    pub fn port(&self, name: &str) -> Option<&PortSnapshot> {
        self.ports
            .iter()
            .find(|p| p.name == name || p.socket == name)
    }

    /// The human-readable table `vnic stats` prints.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        for p in &self.ports {
            let _ = writeln!(
                out,
                "port {}  mac {}  mtu {}  {} Mb/s  attach {}  link {}  connections {}",
                p.name,
                p.mac,
                p.mtu,
                p.speed_mbps,
                p.attach,
                if p.link_up { "up" } else { "down" },
                p.connections
            );
            let _ = writeln!(
                out,
                "  features {:#018x} [{}]",
                p.features,
                p.feature_names.join(" ")
            );
            let _ = writeln!(
                out,
                "  {:>5} {:>3} {:>12} {:>14} {:>9} {:>9} {:>12} {:>14} {:>9} {:>9} {:>9}",
                "queue",
                "on",
                "rx_packets",
                "rx_bytes",
                "rx_kicks",
                "rx_irqs",
                "tx_packets",
                "tx_bytes",
                "tx_kicks",
                "tx_irqs",
                "drops"
            );
            for q in &p.queues {
                let drops: u64 = q.drops.values().sum();
                let _ = writeln!(
                    out,
                    "  {:>5} {:>3} {:>12} {:>14} {:>9} {:>9} {:>12} {:>14} {:>9} {:>9} {:>9}",
                    q.index,
                    if q.enabled { "yes" } else { "no" },
                    q.rx.packets,
                    q.rx.bytes,
                    q.rx.kicks,
                    q.rx.interrupts,
                    q.tx.packets,
                    q.tx.bytes,
                    q.tx.kicks,
                    q.tx.interrupts,
                    drops
                );
            }
            let o = p
                .queues
                .iter()
                .fold(OffloadSnapshot::default(), |mut a, q| {
                    a.tx_gso += q.offload.tx_gso;
                    a.tx_homa_gso += q.offload.tx_homa_gso;
                    a.rx_gso += q.offload.rx_gso;
                    a.rx_segments += q.offload.rx_segments;
                    a.rx_coalesced += q.offload.rx_coalesced;
                    a.tap_segments += q.offload.tap_segments;
                    a
                });
            if o != OffloadSnapshot::default() {
                let _ = writeln!(
                    out,
                    "  offload: tx_gso={} tx_homa_gso={} rx_gso={} rx_segments={} rx_coalesced={} tap_segments={}",
                    o.tx_gso, o.tx_homa_gso, o.rx_gso, o.rx_segments, o.rx_coalesced, o.tap_segments
                );
            }
            let c = p.queues.iter().fold(ClassSnapshot::default(), |mut a, q| {
                a.homa += q.class.homa;
                a.openmx += q.class.openmx;
                a.malformed_homa += q.class.malformed_homa;
                a.malformed_openmx += q.class.malformed_openmx;
                a
            });
            if c != ClassSnapshot::default() {
                let _ = writeln!(
                    out,
                    "  classified: homa={} openmx={} malformed_homa={} malformed_openmx={}",
                    c.homa, c.openmx, c.malformed_homa, c.malformed_openmx
                );
            }
            let e = p.queues.iter().fold(EgressSnapshot::default(), |mut a, q| {
                for c in 0..CLASSES {
                    a.depth[c] += q.egress.depth[c];
                    a.drops[c] += q.egress.drops[c];
                }
                a
            });
            if e != EgressSnapshot::default() {
                let list =
                    |v: &[u64; CLASSES]| v.iter().map(u64::to_string).collect::<Vec<_>>().join("/");
                let _ = writeln!(
                    out,
                    "  priority classes 0-7: waiting={} dropped={}",
                    list(&e.depth),
                    list(&e.drops)
                );
            }
            let i = p.queues.iter().fold(IrqSnapshot::default(), |mut a, q| {
                a.urgent += q.rx_irq.urgent;
                a.frames += q.rx_irq.frames;
                a.timer += q.rx_irq.timer;
                a
            });
            if i != IrqSnapshot::default() {
                let _ = writeln!(
                    out,
                    "  rx interrupts: urgent={} rx_frames={} rx_usecs={}",
                    i.urgent, i.frames, i.timer
                );
            }
            let nonzero: Vec<String> = p
                .total_drops()
                .into_iter()
                .filter(|(_, v)| *v > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if !nonzero.is_empty() {
                let _ = writeln!(out, "  drops: {}", nonzero.join(" "));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_counted_by_reason_and_named() {
        let c = PortCounters::new(2);
        c.pair(1).drop(DropReason::RxNoBuffer);
        c.pair(1).drops_n(DropReason::RxNoBuffer, 2);
        let snap = c.snapshot(0b10, |_| [0; CLASSES]);
        assert_eq!(snap[1].drops["rx_no_buffer"], 3);
        assert_eq!(snap[0].drops["rx_no_buffer"], 0);
        assert!(snap[1].enabled && !snap[0].enabled);
        assert_eq!(snap[0].drops.len(), DropReason::COUNT + OffloadError::COUNT);
    }

    #[test]
    fn the_table_shows_classes_and_interrupt_causes_when_there_are_any() {
        let c = PortCounters::new(1);
        let port = |queues| PortSnapshot {
            name: "a".into(),
            socket: "/a".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1500,
            speed_mbps: 1000,
            attach: "switch".into(),
            steer: "auto".into(),
            link_up: true,
            connections: 1,
            features: 0,
            feature_names: vec![],
            queue_pairs: 1,
            queues,
        };
        let quiet = StatsSnapshot {
            ports: vec![port(c.snapshot(1, |_| [0; CLASSES]))],
        }
        .render_table();
        assert!(!quiet.contains("priority classes") && !quiet.contains("rx interrupts"));
        c.pair(0).class_drop(7);
        c.pair(0).rx_interrupt(IrqCause::Urgent);
        c.pair(0).rx_interrupt(IrqCause::Timer);
        c.pair(0).rx_interrupt(IrqCause::Timer);
        let table = StatsSnapshot {
            ports: vec![port(c.snapshot(1, |_| [3, 0, 0, 0, 0, 0, 0, 1]))],
        }
        .render_table();
        assert!(
            table.contains("priority classes 0-7: waiting=3/0/0/0/0/0/0/1 dropped=0/0/0/0/0/0/0/1"),
            "{table}"
        );
        assert!(
            table.contains("rx interrupts: urgent=1 rx_frames=0 rx_usecs=2"),
            "{table}"
        );
        let q = &c.snapshot(1, |_| [0; CLASSES])[0];
        assert_eq!((q.rx.interrupts, q.drops["rx_no_buffer"]), (3, 1));
    }
}
