//! Busy-poll mode (`vnic serve --poll-cpus LIST`): one poller thread per listed CPU, pinned
//! to it, serving a fixed share of every port's queue pairs (as DPDK's lcores or Open vSwitch's
//! PMD threads do).
//!
//! A poller loops over its slots and runs each connected pair's TX and RX pass, one burst
//! each, without sleeping. While it polls, the pair's rings keep the driver's kicks off and the
//! egress queues skip their eventfd, so a polling frontend (DPDK's `virtio_user`) and vnic
//! exchange frames without a single syscall. Interrupts still go to a guest that asks for them.
//! Pinning is not optional: unpinned, a poller shares a core with the frontend's own spinning
//! thread and both crawl.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

/// Something a poller can serve: one connection's queue pairs.
pub trait Pollable: Send + Sync {
    /// One TX and one RX pass over queue pair `pair`.
    fn poll(&self, pair: usize);
}

/// What a slot is serving now.
pub struct PollTarget(pub Arc<dyn Pollable>);

/// One queue pair of one port, as a poller sees it: empty while no frontend is connected.
pub struct PollSlot {
    pub pair: usize,
    target: ArcSwapOption<PollTarget>,
    /// Rounds its poller has finished (see [`PollSlot::set`]).
    rounds: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl PollSlot {
    /// Starts (Some) or stops (None) serving a connection. Stopping returns once the poller
    /// is no longer inside the old one: a pass that began before may still be running when the
    /// slot is emptied, and what it does (steer frames to the ring, say) must be over before
    /// the port is reset.
    pub fn set(&self, target: Option<Arc<dyn Pollable>>) {
        let stopping = target.is_none();
        self.target.store(target.map(|t| Arc::new(PollTarget(t))));
        if stopping {
            let seen = self.rounds.load(Ordering::Acquire);
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.rounds.load(Ordering::Acquire) == seen
                && !self.stop.load(Ordering::Relaxed)
                && Instant::now() < deadline
            {
                thread::yield_now();
            }
        }
    }
}

/// The poller threads and the slots each of them serves.
pub struct Pollers {
    cpus: Vec<usize>,
    slots: Vec<Vec<Arc<PollSlot>>>,
    /// Per poller: rounds finished.
    rounds: Vec<Arc<AtomicU64>>,
    next: usize,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Pollers {
    pub fn new(cpus: Vec<usize>) -> Self {
        Pollers {
            slots: vec![Vec::new(); cpus.len()],
            rounds: cpus.iter().map(|_| Arc::new(AtomicU64::new(0))).collect(),
            cpus,
            next: 0,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    /// A slot for queue pair `pair` of some port, given to the pollers in turn, so that every
    /// port's pairs spread over all of them.
    pub fn slot(&mut self, pair: usize) -> Arc<PollSlot> {
        let slot = Arc::new(PollSlot {
            pair,
            target: ArcSwapOption::empty(),
            rounds: self.rounds[self.next].clone(),
            stop: self.stop.clone(),
        });
        self.slots[self.next].push(slot.clone());
        self.next = (self.next + 1) % self.cpus.len();
        slot
    }

    /// Starts one thread per CPU, pinned to it.
    pub fn start(&mut self) -> io::Result<()> {
        for ((&cpu, slots), rounds) in self.cpus.iter().zip(&self.slots).zip(&self.rounds) {
            let slots = slots.clone();
            let stop = self.stop.clone();
            let rounds = rounds.clone();
            let handle = thread::Builder::new()
                .name(format!("vnic-poll{cpu}"))
                .spawn(move || {
                    if let Err(e) = pin_to(cpu) {
                        log::warn!("poller on CPU {cpu}: cannot pin: {e}");
                    }
                    run(&slots, &stop, &rounds);
                })?;
            self.threads.push(handle);
        }
        Ok(())
    }
}

impl Drop for Pollers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn run(slots: &[Arc<PollSlot>], stop: &AtomicBool, rounds: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        for slot in slots {
            if let Some(target) = slot.target.load().as_ref() {
                target.0.poll(slot.pair);
            }
        }
        // This thread alone writes it: a plain store, no read-modify-write.
        rounds.store(rounds.load(Ordering::Relaxed) + 1, Ordering::Release);
        if slots.is_empty() {
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it (cpu was
    // checked against CPU_SETSIZE by the command line); sched_setaffinity(0) is this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
