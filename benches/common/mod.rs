//! What the benchmarks share: running a switch as its own process and reading its CPU time.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const VNIC: &str = env!("CARGO_BIN_EXE_vnic");

/// A switch process, stopped (SIGTERM) and reaped when dropped.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

impl Daemon {
    /// CPU seconds (user + system) the process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat: 12 and 13 after the command name.
        let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        // SAFETY: sysconf has no preconditions.
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }
}

/// `vnic serve` with one port per entry of `ports` (`socket=...,` is prepended).
pub fn start_vnic(control: &Path, ports: &[(&Path, String)]) -> Daemon {
    let mut c = Command::new(VNIC);
    c.env("RUST_LOG", "warn")
        .arg("serve")
        .arg(format!("--control={}", control.display()));
    for (sock, extra) in ports {
        c.arg("--port");
        if extra.is_empty() {
            c.arg(format!("socket={}", sock.display()));
        } else {
            c.arg(format!("socket={},{extra}", sock.display()));
        }
    }
    Daemon(c.stdout(Stdio::null()).spawn().expect("start vnic"))
}

/// Seconds per case: VNIC_BENCH_SECS, else 3 under `cargo bench`, 0.3 as a smoke run under
/// `cargo test --benches`.
pub fn seconds_per_case() -> f64 {
    std::env::var("VNIC_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if std::env::args().any(|a| a == "--bench") {
            3.0
        } else {
            0.3
        })
}

/// Runs the measuring window: half a second of warm-up, then `secs` with `counting` set, and
/// returns (seconds measured, CPU cores the switch used meanwhile).
pub fn measure(daemon: &Daemon, counting: &std::sync::atomic::AtomicBool, secs: f64) -> (f64, f64) {
    use std::sync::atomic::Ordering;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let cpu0 = daemon.cpu_seconds();
    let t0 = std::time::Instant::now();
    counting.store(true, Ordering::Relaxed);
    std::thread::sleep(std::time::Duration::from_secs_f64(secs));
    counting.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    (elapsed, (daemon.cpu_seconds() - cpu0) / elapsed)
}
