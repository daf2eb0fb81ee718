//! The built-in L2 learning switch.
//!
//! Forwarding takes no lock: the MAC table is an immutable map behind an `ArcSwap`, loaded once
//! per batch. Known stations only refresh an atomic timestamp. New or moved stations are
//! learned by copying the table under a writer lock, once per batch that has any, which is
//! rare after the first frames of each guest. The table is bounded so a guest that invents
//! source MACs cannot grow it without limit; past the bound it simply stops learning (frames
//! still flood, nothing is lost).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::frame::{Frame, FramePool};
use crate::port::{Pending, Port};
use crate::stats::DropReason;

/// Upper bound on learned stations.
pub const MAX_STATIONS: usize = 8192;
/// Default age after which an idle station is forgotten.
pub const DEFAULT_AGING: Duration = Duration::from_secs(300);

type Mac = [u8; 6];

struct Station {
    port: usize,
    /// Seconds since the switch started, when a frame from this station was last seen.
    last_seen: AtomicU32,
}

#[derive(Clone, Default)]
struct MacTable {
    stations: HashMap<Mac, Arc<Station>>,
}

/// Per-caller scratch space so that forwarding allocates nothing.
#[derive(Default)]
pub struct ForwardScratch {
    /// Per port index: what the batch queued there, to publish and wake after it.
    wake: Vec<Pending>,
    learn: Vec<Mac>,
    /// Frames adapted for a destination that is not a guest (a tap).
    pub(crate) adapted: Vec<Frame>,
    /// Frames the batch dropped, returned to the pool together at its end.
    spent: Vec<Frame>,
}

pub struct Switch {
    /// Ports on this switch, indexed by `Port::id` (None for ports attached elsewhere).
    ports: OnceLock<Vec<Option<Arc<Port>>>>,
    table: ArcSwap<MacTable>,
    learn_lock: Mutex<()>,
    aging_secs: u32,
    epoch: Instant,
    /// Seconds added to the clock: lets tests age stations without waiting.
    skew_secs: AtomicU32,
}

fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

impl Switch {
    pub fn new(aging: Duration) -> Switch {
        Switch {
            ports: OnceLock::new(),
            table: ArcSwap::from_pointee(MacTable::default()),
            learn_lock: Mutex::new(()),
            aging_secs: aging.as_secs().max(1) as u32,
            epoch: Instant::now(),
            skew_secs: AtomicU32::new(0),
        }
    }

    /// Sets the ports once, at start-up. `ports` is the daemon's full list; only those
    /// `attach`ed to this switch are given here as `Some`.
    pub fn set_ports(&self, ports: Vec<Option<Arc<Port>>>) {
        let _ = self.ports.set(ports);
    }

    fn ports(&self) -> &[Option<Arc<Port>>] {
        self.ports.get().map(|v| v.as_slice()).unwrap_or(&[])
    }

    fn now(&self) -> u32 {
        (self.epoch.elapsed().as_secs() as u32).wrapping_add(self.skew_secs.load(Ordering::Relaxed))
    }

    /// Moves the switch's clock forward (for tests of aging).
    pub fn advance_clock(&self, secs: u32) {
        self.skew_secs.fetch_add(secs, Ordering::Relaxed);
    }

    /// Number of stations currently learned (including ones aged but not yet purged).
    pub fn stations(&self) -> usize {
        self.table.load().stations.len()
    }

    /// The port a MAC was learned on, if it is known and not aged out.
    pub fn lookup(&self, mac: &Mac) -> Option<usize> {
        let now = self.now();
        let table = self.table.load();
        table
            .stations
            .get(mac)
            .filter(|s| now.wrapping_sub(s.last_seen.load(Ordering::Relaxed)) <= self.aging_secs)
            .map(|s| s.port)
    }

    /// Forwards a batch sent by `src` on queue pair `pair`. Empties `batch`.
    pub fn forward(
        &self,
        src: &Port,
        pair: usize,
        batch: &mut Vec<Frame>,
        pool: &FramePool,
        scratch: &mut ForwardScratch,
    ) {
        let ports = self.ports();
        scratch.wake.clear();
        scratch.wake.resize(ports.len(), Pending::default());
        scratch.learn.clear();
        let now = self.now();
        let table = self.table.load();

        // Bursts are mostly one flow: the previous frame's source and destination decisions
        // are kept, so such a burst costs one lookup of each, not one per frame.
        let mut last_src: Option<Mac> = None;
        let mut last_dst: Option<(Mac, Option<&Arc<Station>>)> = None;
        for frame in batch.drain(..) {
            let src_mac = frame.src_mac();
            if last_src != Some(src_mac) && !is_multicast(&src_mac) {
                last_src = Some(src_mac);
                match table.stations.get(&src_mac) {
                    Some(st) if st.port == src.id => {
                        if st.last_seen.load(Ordering::Relaxed) != now {
                            st.last_seen.store(now, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        if !scratch.learn.contains(&src_mac) {
                            scratch.learn.push(src_mac);
                        }
                    }
                }
            }

            let dst_mac = frame.dst_mac();
            let known = match last_dst {
                Some((mac, known)) if mac == dst_mac => known,
                _ => {
                    let known = if is_multicast(&dst_mac) {
                        None
                    } else {
                        table.stations.get(&dst_mac).filter(|st| {
                            now.wrapping_sub(st.last_seen.load(Ordering::Relaxed))
                                <= self.aging_secs
                        })
                    };
                    last_dst = Some((dst_mac, known));
                    known
                }
            };
            match known {
                Some(st) if st.port == src.id => {
                    src.counters.pair(pair).drop(DropReason::SamePort);
                    scratch.spent.push(frame);
                }
                Some(st) => match ports.get(st.port).and_then(|p| p.as_ref()) {
                    Some(dst) => dst.enqueue(frame, pool, &mut scratch.wake[st.port]),
                    None => scratch.spent.push(frame),
                },
                None => self.flood(src.id, frame, ports, pool, scratch),
            }
        }
        drop(table);
        pool.put_many(&mut scratch.spent);

        if !scratch.learn.is_empty() {
            self.learn(src.id, &scratch.learn, now);
        }
        for (id, pending) in scratch.wake.iter().enumerate() {
            if !pending.is_empty() {
                if let Some(p) = &ports[id] {
                    p.wake(*pending);
                }
            }
        }
    }

    /// Sends a copy of `frame` to every port of the switch except its source.
    fn flood(
        &self,
        src: usize,
        frame: Frame,
        ports: &[Option<Arc<Port>>],
        pool: &FramePool,
        scratch: &mut ForwardScratch,
    ) {
        let mut targets = ports
            .iter()
            .enumerate()
            .filter_map(|(id, p)| p.as_ref().filter(|_| id != src).map(|p| (id, p)))
            .peekable();
        let mut frame = Some(frame);
        while let Some((id, port)) = targets.next() {
            // The last target gets the original: n targets cost n-1 copies.
            let f = if targets.peek().is_some() {
                pool.copy_of(frame.as_ref().unwrap())
            } else {
                frame.take().unwrap()
            };
            port.enqueue(f, pool, &mut scratch.wake[id]);
        }
        if let Some(f) = frame {
            scratch.spent.push(f);
        }
    }

    fn learn(&self, port: usize, macs: &[Mac], now: u32) {
        let _guard = self.learn_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.table.load();
        let mut table = MacTable::clone(&current);
        let aging = self.aging_secs;
        table
            .stations
            .retain(|_, st| now.wrapping_sub(st.last_seen.load(Ordering::Relaxed)) <= aging);
        for mac in macs {
            if table.stations.len() >= MAX_STATIONS && !table.stations.contains_key(mac) {
                crate::warn_ratelimited!("switch: MAC table full ({MAX_STATIONS}), not learning");
                continue;
            }
            table.stations.insert(
                *mac,
                Arc::new(Station {
                    port,
                    last_seen: AtomicU32::new(now),
                }),
            );
        }
        self.table.store(Arc::new(table));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PortConfig;

    const A: Mac = [2, 0, 0, 0, 0, 0xa];
    const B: Mac = [2, 0, 0, 0, 0, 0xb];
    const BCAST: Mac = [0xff; 6];

    fn setup(n: usize, aging: u64) -> (Arc<Switch>, Vec<Arc<Port>>, FramePool) {
        let sw = Arc::new(Switch::new(Duration::from_secs(aging)));
        let ports: Vec<Arc<Port>> = (0..n)
            .map(|i| {
                let cfg: PortConfig = format!("socket=/tmp/sw{i}.sock").parse().unwrap();
                let p = Arc::new(Port::new(i, cfg, None, Vec::new()).unwrap());
                p.set_rx_enabled(0, true);
                p
            })
            .collect();
        sw.set_ports(ports.iter().cloned().map(Some).collect());
        (sw, ports, FramePool::new(64))
    }

    fn send(sw: &Switch, pool: &FramePool, src: &Port, dst: Mac, from: Mac) {
        let mut f = pool.get();
        f.data.extend_from_slice(&dst);
        f.data.extend_from_slice(&from);
        f.data.extend_from_slice(&[0x88, 0xb5, 1, 2, 3, 4]);
        let mut batch = vec![f];
        sw.forward(src, 0, &mut batch, pool, &mut ForwardScratch::default());
    }

    fn drain(p: &Port) -> usize {
        std::iter::from_fn(|| p.egress[0].pop()).count()
    }

    #[test]
    fn unknown_unicast_and_broadcast_flood_to_all_but_the_source() {
        let (sw, ports, pool) = setup(3, 300);
        send(&sw, &pool, &ports[0], B, A);
        send(&sw, &pool, &ports[0], BCAST, A);
        assert_eq!(drain(&ports[0]), 0, "never back to the source port");
        assert_eq!(drain(&ports[1]), 2);
        assert_eq!(drain(&ports[2]), 2);
    }

    #[test]
    fn learned_station_gets_unicast_only() {
        let (sw, ports, pool) = setup(3, 300);
        send(&sw, &pool, &ports[1], BCAST, B); // learn B on port 1
        drain(&ports[0]);
        drain(&ports[2]);
        assert_eq!(sw.lookup(&B), Some(1));
        send(&sw, &pool, &ports[0], B, A);
        assert_eq!((drain(&ports[1]), drain(&ports[2])), (1, 0));
    }

    #[test]
    fn station_moves_and_ages_out() {
        let (sw, ports, pool) = setup(3, 10);
        send(&sw, &pool, &ports[1], BCAST, B);
        send(&sw, &pool, &ports[2], BCAST, B);
        assert_eq!(sw.lookup(&B), Some(2), "a MAC seen on another port moves");
        sw.advance_clock(11);
        assert_eq!(sw.lookup(&B), None, "idle stations are forgotten");
        for p in &ports {
            drain(p);
        }
        send(&sw, &pool, &ports[0], B, A);
        assert_eq!(
            (drain(&ports[1]), drain(&ports[2])),
            (1, 1),
            "aged: flooded again"
        );
    }

    #[test]
    fn unicast_to_own_port_is_dropped_and_counted() {
        let (sw, ports, pool) = setup(2, 300);
        send(&sw, &pool, &ports[0], BCAST, A);
        send(&sw, &pool, &ports[0], A, A);
        assert_eq!(drain(&ports[1]), 1);
        assert_eq!(ports[0].counters.pair(0).drops(DropReason::SamePort), 1);
    }

    #[test]
    fn full_egress_queue_drops_and_counts_at_the_receiver() {
        let (sw, ports, pool) = setup(2, 300);
        let n = crate::config::DEFAULT_CLASS_DEPTH as usize + 5;
        for _ in 0..n {
            send(&sw, &pool, &ports[0], BCAST, A);
        }
        assert_eq!(
            ports[1].egress[0].len(),
            crate::config::DEFAULT_CLASS_DEPTH as usize
        );
        assert_eq!(ports[1].counters.pair(0).drops(DropReason::RxNoBuffer), 5);
    }

    #[test]
    fn port_without_enabled_queue_counts_port_down() {
        let (sw, ports, pool) = setup(2, 300);
        ports[1].set_rx_enabled(0, false);
        send(&sw, &pool, &ports[0], BCAST, A);
        assert_eq!(ports[1].counters.pair(0).drops(DropReason::PortDown), 1);
    }

    #[test]
    fn invented_source_macs_stop_at_the_table_bound() {
        let (sw, ports, pool) = setup(2, 300);
        let mut scratch = ForwardScratch::default();
        for chunk in 0..(MAX_STATIONS / 64 + 4) {
            let mut batch: Vec<Frame> = (0..64)
                .map(|i| {
                    let n = (chunk * 64 + i) as u32;
                    let mut f = pool.get();
                    f.data.extend_from_slice(&BCAST);
                    f.data
                        .extend_from_slice(&[2, 1, 0, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
                    f.data.extend_from_slice(&[0x88, 0xb5]);
                    f
                })
                .collect();
            sw.forward(&ports[0], 0, &mut batch, &pool, &mut scratch);
            drain(&ports[1]);
        }
        assert_eq!(sw.stations(), MAX_STATIONS);
    }
}
