//! Offload throughput: a test-driver guest sends 64 KiB TCP segmentation jobs (MSS 1448, partial
//! checksum, as Linux with TSO does) through the switch to a second guest that either takes
//! them as they are (GUEST_CSUM + GUEST_TSO4: vnic passes them through) or does not (vnic cuts
//! each job into 46 segments and completes their checksums in software). Prints TCP payload
//! Gbit/s delivered and vnic's CPU time.
//!
//!     cargo bench --bench offload           # VNIC_BENCH_SECS=10 for longer runs

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{measure, seconds_per_case, start_vnic};
use vnic::device::features::{offered, ALL_OFFLOADS};
use vnic_testdriver::features::*;
use vnic_testdriver::frames::{tcp4, tso_job};
use vnic_testdriver::{GuestOptions, TestGuest, DRIVER_FEATURES};

const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const B: [u8; 6] = [2, 0, 0, 0, 0, 2];
/// TCP payload per job: 45 full segments and a short one, under 64 KiB of IP packet.
const PAYLOAD: usize = 65_000;
const MSS: u16 = 1448;

struct Figures {
    /// Drops at the receiving port, by reason.
    drops: String,
    gbps: f64,
    frames_per_s: f64,
    vnic_cpu: f64,
}

fn run(secs: f64, receiver_takes_tso: bool) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let (a_sock, b_sock) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let daemon = start_vnic(
        &dir.path().join("c.sock"),
        &[(&a_sock, String::new()), (&b_sock, String::new())],
    );
    let plain = offered(ALL_OFFLOADS, 0) & DRIVER_FEATURES;
    let sender = GuestOptions {
        features: Some(plain | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4),
        queue_size: 256,
        tx_buffer_size: 66_000,
        ..GuestOptions::default()
    };
    let takes = VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4;
    let receiver = GuestOptions {
        features: Some(if receiver_takes_tso {
            plain | takes
        } else {
            plain
        }),
        queue_size: 1024,
        rx_buffer_size: 4096,
        ..GuestOptions::default()
    };
    let mut a = TestGuest::connect(&a_sock, sender).expect("connect A");
    let mut b = TestGuest::connect(&b_sock, receiver).expect("connect B");
    // The switch learns B, so A's jobs are unicast.
    let mut hello = tcp4(B, [0xff; 6], 0, &[0; 10], false);
    hello[6..12].copy_from_slice(&B);
    b.send(0, &[&hello]).unwrap();
    thread::sleep(Duration::from_millis(200));

    let payload: Vec<u8> = (0..PAYLOAD).map(|i| i as u8).collect();
    let (hdr, job) = tso_job(tcp4(A, B, 1, &payload, false), false, MSS);
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let send = {
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut queued = 0;
                while a.send_with_header(0, &hdr, &job).unwrap() {
                    queued += 1;
                    if queued == 32 {
                        break;
                    }
                }
                a.tx_completed(0);
                if queued == 0 {
                    let _ = a.queue(1).wait_interrupt(Duration::from_millis(1));
                }
            }
        })
    };
    let recv = {
        let (stop, counting) = (stop.clone(), counting.clone());
        thread::spawn(move || {
            let (mut frames, mut bytes) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let (n, by) = b.rx(0).recv_discard().unwrap();
                if counting.load(Ordering::Relaxed) {
                    frames += n as u64;
                    bytes += by;
                }
                if n == 0 {
                    let _ = b.queue(0).wait_interrupt(Duration::from_millis(1));
                }
            }
            (frames, bytes)
        })
    };
    let (elapsed, vnic_cpu) = measure(&daemon, &counting, secs);
    let stats = vnic::control::query_stats(&dir.path().join("c.sock")).expect("stats");
    let drops: Vec<String> = stats.ports[1]
        .total_drops()
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    stop.store(true, Ordering::Relaxed);
    send.join().unwrap();
    let (frames, bytes) = recv.join().unwrap();
    // Frame bytes include Ethernet/IP/TCP headers (54 per frame): count TCP payload only.
    let payload_bytes = bytes.saturating_sub(frames * 54);
    Figures {
        drops: drops.join(" "),
        gbps: payload_bytes as f64 * 8.0 / elapsed / 1e9,
        frames_per_s: frames as f64 / elapsed,
        vnic_cpu,
    }
}

fn main() {
    let secs = seconds_per_case();
    println!(
        "vnic offload benchmark: 64 KiB TCP segmentation jobs between two ports, {secs} s per case"
    );
    println!(
        "{:>34} {:>12} {:>14} {:>12}",
        "receiver", "TCP Gbit/s", "frames/s", "vnic CPU"
    );
    for (takes_tso, what) in [
        (true, "takes TSO (passed through)"),
        (false, "no offloads (segmented by vnic)"),
    ] {
        let f = run(secs, takes_tso);
        let drops = if f.drops.is_empty() { "none" } else { &f.drops };
        println!(
            "{:>34} {:>12.2} {:>14.0} {:>12.2}   drops: {drops}",
            what, f.gbps, f.frames_per_s, f.vnic_cpu
        );
    }
}
