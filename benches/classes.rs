//! Short messages under bulk load: the latency of single-packet Homa messages and Open-MX TINY
//! packets to a guest whose link (`speed=1000,shape=on`) another guest saturates with bulk
//! data, with the eight priority classes on and with `classes=off` (first come, first served),
//! interleaved rounds in the same run. Prints per round and as medians: the p50/p99/max
//! latency of the short messages, the bulk throughput, the receiver's interrupts per second
//! and vnic's CPU time.
//!
//!     cargo bench --bench classes               # 5 rounds of 2 s per setting
//!     VNIC_BENCH_SECS=5 VNIC_BENCH_ROUNDS=7 cargo bench --bench classes
//!
//! The guests are test-driver guests in this process (TCG guests are too noisy for a tail);
//! the receiver waits for its interrupts, as a driver does, so the interrupt policy is in the
//! measurement too. A benchmark, not a test: it asserts nothing. Figures go to
//! docs/performance.md.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use vnic_testdriver::frames::{self, HomaWire};
use vnic_testdriver::{GuestOptions, TestGuest};

mod common;
use common::{seconds_per_case, start_vnic, Daemon};

const BULK: [u8; 6] = [2, 0, 0, 0, 0, 1];
const SHORT: [u8; 6] = [2, 0, 0, 0, 0, 3];
const RX: [u8; 6] = [2, 0, 0, 0, 0, 2];
/// A short message every this often, alternately Homa and Open-MX.
const SHORT_EVERY: Duration = Duration::from_micros(200);
/// Where a short message carries its number: Homa's RPC id; Open-MX TINY's match info.
const HOMA_ID_AT: usize = 14 + 20 + 20;
const OMX_ID_AT: usize = 28;

struct Round {
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    short: usize,
    lost: usize,
    bulk_gbps: f64,
    irq_per_s: f64,
    vnic_cpu: f64,
}

fn short_frame(n: u64) -> Vec<u8> {
    if n.is_multiple_of(2) {
        let wire = HomaWire {
            precedence: 7,
            ..HomaWire::default()
        };
        // A single-packet message: 100 bytes of a 100-byte message.
        let mut f = frames::homa_frame(RX, SHORT, wire, frames::HOMA_DATA, 0, 100, 100);
        f[HOMA_ID_AT..HOMA_ID_AT + 8].copy_from_slice(&n.to_be_bytes());
        f
    } else {
        let mut f = frames::openmx_frame(
            RX,
            SHORT,
            frames::OMX_ETHERTYPE,
            frames::OMX_TINY,
            1,
            None,
            64,
        );
        f[OMX_ID_AT..OMX_ID_AT + 8].copy_from_slice(&n.to_be_bytes());
        f
    }
}

/// The number a short message carries, if `f` is one.
fn short_id(f: &[u8]) -> Option<u64> {
    let at = match f.get(12..14)? {
        [0x86, 0xdf] => OMX_ID_AT,
        [0x08, 0x00] if f.get(23) == Some(&146) => HOMA_ID_AT,
        _ => return None,
    };
    Some(u64::from_be_bytes(f.get(at..at + 8)?.try_into().ok()?))
}

fn run_round(classes: bool, secs: f64) -> Round {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("bulk.sock"),
        dir.path().join("rx.sock"),
        dir.path().join("short.sock"),
    );
    let onoff = if classes { "on" } else { "off" };
    let daemon: Daemon = start_vnic(
        &dir.path().join("control.sock"),
        &[
            (&a, format!("mac={}", fmt(BULK))),
            (
                &b,
                format!(
                    "mac={},speed={},shape=on,classes={onoff}",
                    fmt(RX),
                    std::env::var("VNIC_BENCH_MBPS").unwrap_or("1000".into())
                ),
            ),
            (&c, format!("mac={}", fmt(SHORT))),
        ],
    );
    let connect = |p: &std::path::Path| {
        TestGuest::connect(
            p,
            GuestOptions {
                connect_timeout: Duration::from_secs(10),
                ..GuestOptions::default()
            },
        )
        .expect("connect")
    };
    let mut bulk = connect(&a);
    let mut rx = connect(&b);
    let mut short = connect(&c);
    // Learned by the switch: the receiver, then the senders (their frames to nobody).
    rx.send(0, &[&frames::frame(frames::BCAST, RX, 60, 0)])
        .unwrap();
    bulk.send(0, &[&frames::frame(frames::BCAST, BULK, 60, 0)])
        .unwrap();
    short
        .send(0, &[&frames::frame(frames::BCAST, SHORT, 60, 0)])
        .unwrap();
    thread::sleep(Duration::from_millis(200));
    let _ = rx.recv(0);

    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let sent_at: Arc<Mutex<Vec<Option<Instant>>>> = Arc::default();
    let bulk_bytes = Arc::new(AtomicU64::new(0));

    let bulk_thread = {
        let stop = stop.clone();
        thread::spawn(move || {
            let f = frames::frame(RX, BULK, 1514, 7);
            let burst: Vec<&[u8]> = vec![&f; 32];
            // As fast as the ring takes them; a short sleep when it is full (this machine has
            // few cores: a spinning sender would starve vnic and the receiver).
            while !stop.load(Ordering::Relaxed) {
                if bulk.send(0, &burst).unwrap() == 0 {
                    bulk.tx_completed(0);
                    thread::sleep(Duration::from_micros(20));
                }
            }
        })
    };
    let short_thread = {
        let (stop, counting, sent_at) = (stop.clone(), counting.clone(), sent_at.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(SHORT_EVERY);
                short.tx_completed(0);
                if !counting.load(Ordering::Relaxed) {
                    continue;
                }
                let n = {
                    let mut s = sent_at.lock().unwrap();
                    s.push(Some(Instant::now()));
                    s.len() as u64 - 1
                };
                let _ = short.send(0, &[&short_frame(n)]);
            }
        })
    };
    let rx_thread = {
        let (stop, counting, sent_at, bulk_bytes) = (
            stop.clone(),
            counting.clone(),
            sent_at.clone(),
            bulk_bytes.clone(),
        );
        thread::spawn(move || {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for f in rx.recv_wait(0, 1, Duration::from_millis(2)) {
                    let now = Instant::now();
                    match short_id(&f.data) {
                        Some(n) => {
                            let at = sent_at
                                .lock()
                                .unwrap()
                                .get_mut(n as usize)
                                .and_then(Option::take);
                            if let Some(at) = at {
                                latencies.push(now - at);
                            }
                        }
                        None if counting.load(Ordering::Relaxed) => {
                            bulk_bytes.fetch_add(f.data.len() as u64, Ordering::Relaxed);
                        }
                        None => {}
                    }
                }
            }
            (latencies, rx.interrupts(0))
        })
    };

    thread::sleep(Duration::from_millis(500));
    let cpu0 = daemon.cpu_seconds();
    let t0 = Instant::now();
    counting.store(true, Ordering::Relaxed);
    thread::sleep(Duration::from_secs_f64(secs));
    counting.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let vnic_cpu = (daemon.cpu_seconds() - cpu0) / elapsed;
    // Let the last short messages arrive (or count as lost).
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    bulk_thread.join().unwrap();
    short_thread.join().unwrap();
    let (mut lat, irqs) = rx_thread.join().unwrap();
    let short_sent = sent_at.lock().unwrap().len();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
    };
    drop(daemon);
    Round {
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        max_us: lat.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e6),
        short: lat.len(),
        lost: short_sent - lat.len(),
        bulk_gbps: bulk_bytes.load(Ordering::Relaxed) as f64 * 8.0 / elapsed / 1e9,
        // (Interrupts over the whole round, warm-up included: a rate, roughly.)
        irq_per_s: irqs as f64 / (elapsed + 0.6),
        vnic_cpu,
    }
}

fn fmt(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let secs = seconds_per_case().max(0.3) * 2.0 / 3.0;
    let rounds: usize = std::env::var("VNIC_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if std::env::args().any(|a| a == "--bench") {
            5
        } else {
            1
        });
    println!(
        "short messages (Homa single-packet DATA and Open-MX TINY at precedence 7, one per {:?}) \
         to a 1 Gbit/s shaped port saturated with 1514-byte bulk; {rounds} rounds of {secs:.1} s",
        SHORT_EVERY
    );
    let mut all: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    for r in 0..rounds {
        for (i, classes) in [true, false].into_iter().enumerate() {
            let x = run_round(classes, secs);
            println!(
                "round {r} classes={:<3} p50 {:8.1} us  p99 {:8.1} us  max {:8.1} us  ({} short, {} lost)  bulk {:.3} Gbit/s  {:.0} irq/s  vnic {:.2} cores",
                if classes { "on" } else { "off" },
                x.p50_us, x.p99_us, x.max_us, x.short, x.lost, x.bulk_gbps, x.irq_per_s, x.vnic_cpu
            );
            all[i].push(x);
        }
    }
    let med = |i: usize, f: fn(&Round) -> f64| median(all[i].iter().map(f).collect());
    for (i, name) in ["on", "off"].iter().enumerate() {
        println!(
            "median classes={name:<3} p50 {:8.1} us  p99 {:8.1} us  bulk {:.3} Gbit/s  {:.0} irq/s  vnic {:.2} cores",
            med(i, |r| r.p50_us),
            med(i, |r| r.p99_us),
            med(i, |r| r.bulk_gbps),
            med(i, |r| r.irq_per_s),
            med(i, |r| r.vnic_cpu)
        );
    }
    println!(
        "p99 classes=off / classes=on: {:.1}x; bulk on / off: {:.3}",
        med(1, |r| r.p99_us) / med(0, |r| r.p99_us),
        med(0, |r| r.bulk_gbps) / med(1, |r| r.bulk_gbps)
    );
}
