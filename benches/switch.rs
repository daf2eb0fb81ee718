//! Switch throughput: two ports on the built-in switch, one test-driver guest sending as fast
//! as it can, the other receiving. vnic runs as its own process (release build), so its CPU
//! time is read from /proc. Prints packets/s, Gbit/s and vnic CPU time per frame size.
//!
//! The peer, when `dpdk-testpmd` is installed: DPDK's vhost library (testpmd with two
//! `net_vhost` ports, io forwarding between them, busy polling) driven by the same test-driver
//! guests in the same run, so both figures come from the same machine state.
//!
//!     cargo bench --bench switch              # 3 s per case
//!     VNIC_BENCH_SECS=10 cargo bench --bench switch
//!
//! A benchmark, not a test: it asserts nothing about speed. Figures go to docs/performance.md.
//! The test driver's guest side is the bottleneck here (DPDK's vhost reaches 2.6 Mpps behind it,
//! 11 behind DPDK's virtio_user): this says what the switch path costs, not how fast vnic is
//! against DPDK; that is `scripts/bench-dpdk`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use vnic_testdriver::{frames, GuestOptions, TestGuest};

mod common;
use common::{measure, seconds_per_case, start_vnic, Daemon};

/// A test frame of `len` bytes from guest 1 to guest 2, tagged with `flow`.
fn frame(len: usize, flow: u16) -> Vec<u8> {
    frames::frame(frames::mac(2), frames::mac(1), len, flow as u32)
}

struct Result {
    pps: f64,
    gbps: f64,
    /// CPU time of the switch process, in cores.
    vnic_cpu: f64,
    sent: u64,
}

/// The vhost-user switch under test.
#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Vnic,
    /// DPDK's vhost library: testpmd, two net_vhost ports, io forwarding.
    DpdkVhost,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Vnic => "vnic",
            Backend::DpdkVhost => "dpdk-vhost",
        }
    }

    fn start(self, a: &Path, b: &Path, control: &Path, pairs: u16) -> Daemon {
        let mut cmd = match self {
            Backend::Vnic => {
                return start_vnic(
                    control,
                    &[
                        (a, format!("queues={pairs}")),
                        (b, format!("queues={pairs}")),
                    ],
                )
            }
            Backend::DpdkVhost => {
                let mut c = Command::new("dpdk-testpmd");
                c.args(["--no-huge", "-m", "1024", "--no-pci", "-l", "0-1"])
                    .arg(format!("--file-prefix=vnicbench{}", std::process::id()))
                    .arg(format!(
                        "--vdev=net_vhost0,iface={},queues={pairs}",
                        a.display()
                    ))
                    .arg(format!(
                        "--vdev=net_vhost1,iface={},queues={pairs}",
                        b.display()
                    ))
                    .arg("--")
                    .args([
                        "--forward-mode=io",
                        "-a",
                        "--stats-period",
                        "0",
                        "--total-num-mbufs=16384",
                    ])
                    .arg(format!("--rxq={pairs}"))
                    .arg(format!("--txq={pairs}"))
                    // testpmd quits at the end of its input: keep stdin open.
                    .stdin(Stdio::piped());
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start backend");
        Daemon(child)
    }
}

fn run_case(backend: Backend, dir: &Path, pairs: u16, frame_len: usize, secs: f64) -> Result {
    let tag = format!("{}-{frame_len}-{pairs}", backend.name());
    let a_sock = dir.join(format!("a-{tag}.sock"));
    let b_sock = dir.join(format!("b-{tag}.sock"));
    let control = dir.join(format!("c-{tag}.sock"));
    let daemon = backend.start(&a_sock, &b_sock, &control, pairs);
    let opts = GuestOptions {
        queue_size: 1024,
        rx_buffers: 1024,
        rx_buffer_size: 2048,
        connect_timeout: Duration::from_secs(20),
        ..GuestOptions::with_pairs(pairs)
    };
    let mut a = TestGuest::connect(&a_sock, opts.clone()).expect("connect A");
    let mut b = TestGuest::connect(&b_sock, opts).expect("connect B");
    // Let the switch learn B, so A's frames are unicast.
    b.send(
        0,
        &[&{
            let mut f = frame(64, 0);
            f[0..6].copy_from_slice(&[0xff; 6]);
            f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
            f
        }],
    )
    .unwrap();
    thread::sleep(Duration::from_millis(200));

    let stop = Arc::new(AtomicBool::new(false));
    let frames: Vec<Vec<u8>> = (0..64).map(|i| frame(frame_len, i)).collect();
    let sender = {
        let stop = stop.clone();
        thread::spawn(move || {
            let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
            let mut sent = 0u64;
            let mut pair = 0;
            while !stop.load(Ordering::Relaxed) {
                let n = a.send(pair, &refs).unwrap();
                sent += n as u64;
                if n == 0 {
                    let _ = a
                        .queue(2 * pair + 1)
                        .wait_interrupt(Duration::from_millis(1));
                }
                pair = (pair + 1) % pairs;
            }
            sent
        })
    };
    let counting = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (stop, counting) = (stop.clone(), counting.clone());
        thread::spawn(move || {
            let (mut frames, mut bytes) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let mut got = 0;
                for p in 0..pairs {
                    let (n, by) = b.rx(p).recv_discard().unwrap();
                    if counting.load(Ordering::Relaxed) {
                        frames += n as u64;
                        bytes += by;
                    }
                    got += n;
                }
                if got == 0 {
                    let _ = b.queue(0).wait_interrupt(Duration::from_millis(1));
                }
            }
            (frames, bytes)
        })
    };
    let (elapsed, vnic_cpu) = measure(&daemon, &counting, secs);
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let (frames, bytes) = receiver.join().unwrap();
    Result {
        pps: frames as f64 / elapsed,
        gbps: bytes as f64 * 8.0 / elapsed / 1e9,
        vnic_cpu,
        sent,
    }
}

fn main() {
    let secs = seconds_per_case();
    let dir: PathBuf = tempfile::tempdir().unwrap().keep();
    println!(
        "vnic switch benchmark: 2 ports, test-driver guests, {secs} s per case, {} CPUs",
        thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let mut backends = vec![Backend::Vnic];
    let have_dpdk = Command::new("dpdk-testpmd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if have_dpdk {
        backends.push(Backend::DpdkVhost);
    } else {
        println!("(dpdk-testpmd not installed: no peer figures; `apt-get install dpdk` adds them)");
    }
    println!(
        "{:>11} {:>6} {:>6} {:>12} {:>9} {:>12}",
        "switch", "pairs", "bytes", "Mpps", "Gbit/s", "CPU (cores)"
    );
    for (pairs, len) in [(1u16, 64usize), (1, 1500), (2, 64), (2, 1500)] {
        for &backend in &backends {
            let r = run_case(backend, &dir, pairs, len, secs);
            println!(
                "{:>11} {:>6} {:>6} {:>12.3} {:>9.2} {:>12.2}   (sender queued {} frames)",
                backend.name(),
                pairs,
                len,
                r.pps / 1e6,
                r.gbps,
                r.vnic_cpu,
                r.sent
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
