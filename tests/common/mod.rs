//! Shared set-up for the integration tests: an in-process vnic daemon on sockets in a fresh
//! directory (frame builders come from `vnic_testdriver::frames`).
//!
//! The environment picks what the same tests exercise: `VNIC_TEST_POLL_CPUS=LIST` runs vnic in
//! busy-poll mode (below); `VNIC_TEST_RING=packed` and `VNIC_TEST_IN_ORDER=1` make every test
//! guest ack `VIRTIO_F_RING_PACKED` / `VIRTIO_F_IN_ORDER` and drive its rings accordingly (the
//! defaults of `GuestOptions::ring` and `GuestOptions::in_order`; see `vnic_testdriver`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vnic::cli::{PortConfig, ServeArgs};
use vnic::daemon::{self, Running};
use vnic::stats::{PortSnapshot, StatsSnapshot};
use vnic_testdriver::{GuestOptions, TestGuest};

pub const WAIT: Duration = Duration::from_secs(5);
// The frame builders (`frame`, `seq_of`, `udp_frame`, `mac`, `BCAST`, ...) are the test
// driver's, the one set for tests and benchmarks.
pub use vnic_testdriver::frames::*;

/// A running in-process daemon whose ports are named p0.sock, p1.sock, ...
pub struct Net {
    pub running: Running,
    pub dir: tempfile::TempDir,
}

/// Starts a daemon with one port per entry of `ports` (extra port keys, without socket=).
pub fn start(ports: &[&str]) -> Net {
    try_start(ports).expect("daemon must start")
}

pub fn try_start(ports: &[&str]) -> anyhow::Result<Net> {
    let dir = tempfile::tempdir().unwrap();
    let ports = ports
        .iter()
        .enumerate()
        .map(|(i, extra)| {
            let sock = dir.path().join(format!("p{i}.sock"));
            let spec = if extra.is_empty() {
                format!("socket={}", sock.display())
            } else {
                format!("socket={},{extra}", sock.display())
            };
            spec.parse::<PortConfig>().map_err(anyhow::Error::msg)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let args = ServeArgs {
        ports,
        control: Some(dir.path().join("control.sock")),
        mac_aging: 300,
        poll_cpus: poll_cpus(),
    };
    let running = daemon::start(&args)?;
    Ok(Net { running, dir })
}

/// `VNIC_TEST_POLL_CPUS=LIST` runs the daemons of these tests in busy-poll mode on those CPUs
/// (`scripts/test` runs the device and hostile-guest tests once in each mode).
fn poll_cpus() -> Option<vnic::cli::CpuList> {
    if !polling() {
        return None;
    }
    let list = std::env::var("VNIC_TEST_POLL_CPUS").ok()?;
    Some(vnic::cli::parse_cpu_list(&list).expect("VNIC_TEST_POLL_CPUS is not a CPU list"))
}

/// Whether these tests run vnic in busy-poll mode (`VNIC_TEST_POLL_CPUS`).
pub fn polling() -> bool {
    std::env::var_os("VNIC_TEST_POLL_CPUS").is_some_and(|v| !v.is_empty())
}

impl Net {
    pub fn socket(&self, port: usize) -> PathBuf {
        self.dir.path().join(format!("p{port}.sock"))
    }

    /// Connects a test guest and waits until the device has seen its enabled RX queues, as a
    /// guest waits for link-up before it counts on traffic.
    pub fn connect(&self, port: usize, opts: GuestOptions) -> TestGuest {
        let enabled = opts.enabled_pairs as usize;
        let posts_rx = opts.rx_buffers > 0;
        let g = TestGuest::connect(self.socket(port), opts).expect("frontend must connect");
        if posts_rx {
            self.wait_stats("RX queues enabled", |s| {
                s.ports[port].link_up && s.ports[port].queues[..enabled].iter().all(|q| q.enabled)
            });
        }
        g
    }

    /// Counters as `vnic stats --json` sees them, through the control socket.
    pub fn stats(&self) -> StatsSnapshot {
        vnic::control::query_stats(&self.running.control_path).expect("stats")
    }

    pub fn port_stats(&self, port: usize) -> PortSnapshot {
        self.stats().ports[port].clone()
    }

    /// Sum of one drop reason over a port's queue pairs.
    pub fn drops(&self, port: usize, reason: &str) -> u64 {
        self.port_stats(port).total_drops()[reason]
    }

    /// Waits until `cond` holds on the stats, or panics with `what`.
    pub fn wait_stats(&self, what: &str, cond: impl Fn(&StatsSnapshot) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.stats();
            if cond(&s) {
                return;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; stats: {s:#?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Makes the switch learn `guest`'s MAC on its port by sending one broadcast from it, and
/// drains that broadcast from every other guest in `others`.
pub fn announce(guest: &mut TestGuest, src: [u8; 6], others: &mut [&mut TestGuest]) {
    guest.send(0, &[&frame(BCAST, src, 60, u32::MAX)]).unwrap();
    for o in others.iter_mut() {
        let got = o.recv_wait(0, 1, WAIT);
        assert_eq!(got.len(), 1, "announcement must flood");
    }
}

/// A raw vhost-user request: header (request, flags = version 1 without NEED_REPLY, size) and
/// body, for tests that must send what a well-behaved frontend library would not.
pub fn vhost_msg(request: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(12 + body.len());
    m.extend_from_slice(&request.to_le_bytes());
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&(body.len() as u32).to_le_bytes());
    m.extend_from_slice(body);
    m
}
