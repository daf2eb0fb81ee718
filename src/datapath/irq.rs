//! When an RX queue's interrupt is raised: at once for a latency-critical frame (a Homa GRANT or
//! control packet, a single-packet message, an Open-MX TINY...); for bulk, once `rx_frames`
//! frames wait unannounced or `rx_usecs` after the first of them, whichever comes first, like a
//! NIC's `rx-frames` / `rx-usecs` (QEMU keeps `ethtool -C` to itself with vhost-user, so these
//! are port keys). Used entries are published at once either way: a driver that polls (NAPI
//! busy, DPDK) sees them without waiting; only the interrupt waits.
//!
//! The window's end is a deadline: event mode arms the pair's [`RxTimer`] (a timerfd its worker
//! watches), poll mode looks at the clock on each pass while a window is open.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

pub use crate::stats::IrqCause as Raise;

/// What the policy says after frames were delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Raise(Raise),
    /// Not yet; a window is open until this instant. `opened`: it opened now (arm the timer).
    Wait {
        until: Instant,
        opened: bool,
    },
}

/// The coalescing state of one RX queue.
#[derive(Debug)]
pub struct RxIrq {
    window: Duration,
    frames: u32,
    /// Frames delivered since the last interrupt decision.
    pending: u32,
    deadline: Option<Instant>,
}

impl RxIrq {
    /// `rx_usecs` 0: every pass decides at once (no coalescing).
    pub fn new(rx_usecs: u32, rx_frames: u32) -> Self {
        RxIrq {
            window: Duration::from_micros(rx_usecs as u64),
            frames: rx_frames.max(1),
            pending: 0,
            deadline: None,
        }
    }

    /// `delivered` frames were published (`urgent`: one of them is latency-critical);
    /// `others`: entries that are not frames were published too.
    #[inline]
    pub fn on_published(&mut self, delivered: u32, urgent: bool, others: bool) -> Decision {
        let why = if self.window.is_zero() || others {
            Some(Raise::Always)
        } else if urgent {
            Some(Raise::Urgent)
        } else if self.pending + delivered >= self.frames {
            Some(Raise::Frames)
        } else if self.due(Instant::now()) {
            // (The clock is read only while a window is open.)
            Some(Raise::Timer)
        } else {
            None
        };
        if let Some(why) = why {
            self.reset();
            return Decision::Raise(why);
        }
        self.pending += delivered;
        match self.deadline {
            Some(until) => Decision::Wait {
                until,
                opened: false,
            },
            None if self.pending == 0 => Decision::Raise(Raise::Always),
            None => {
                let until = Instant::now() + self.window;
                self.deadline = Some(until);
                Decision::Wait {
                    until,
                    opened: true,
                }
            }
        }
    }

    /// A window is open (frames wait for an interrupt).
    #[inline]
    pub fn open(&self) -> bool {
        self.deadline.is_some()
    }

    /// When the open window ends.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The window is open and has ended by `now`.
    #[inline]
    pub fn due(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// The window's end, from its timer: true if one was open (now closed).
    pub fn expire(&mut self) -> bool {
        let open = self.open();
        self.reset();
        open
    }

    /// An interrupt was decided (or the queue stopped): the window closes.
    #[inline]
    pub fn reset(&mut self) {
        self.pending = 0;
        self.deadline = None;
    }
}

/// An RX queue's timer in event mode and the instant it is armed for: the earliest of the
/// interrupt window's end and, with `shape=on`, the link's next room. (One timerfd per queue:
/// a firing that finds nothing due costs one look.)
pub struct RxDeadline {
    timer: Option<RxTimer>,
    at: Option<Instant>,
}

impl RxDeadline {
    /// `timer`: None in poll mode (the poller looks at the clock) or without a timerfd.
    pub fn new(timer: Option<RxTimer>) -> Self {
        RxDeadline { timer, at: None }
    }

    pub fn available(&self) -> bool {
        self.timer.is_some()
    }

    pub fn fd(&self) -> Option<RawFd> {
        self.timer.as_ref().map(RxTimer::fd)
    }

    /// Makes the timer fire at `at` or earlier. (An instant armed for that has passed counts
    /// as nothing armed: its firing may have been handled, or folded into a later arming,
    /// without `fired`.)
    #[inline]
    pub fn arm(&mut self, at: Instant) {
        if let Some(t) = &self.timer {
            if self
                .at
                .is_none_or(|armed| at < armed || armed <= Instant::now())
            {
                t.arm(at);
                self.at = Some(at);
            }
        }
    }

    /// The worker was woken by the timer: it is armed for nothing now.
    pub fn fired(&mut self) {
        if let Some(t) = &self.timer {
            t.ack();
        }
        self.at = None;
    }
}

/// A non-blocking timerfd that ends an RX queue's coalescing window in event mode. Our own
/// wrapper: vmm-sys-util's `TimerFd` is blocking, and a worker must never block on a read.
pub struct RxTimer(OwnedFd);

impl RxTimer {
    pub fn new() -> io::Result<Self> {
        // SAFETY: no pointers; the fd is checked and then owned.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd nobody else owns.
        Ok(RxTimer(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Fires once at `until` (at once if that has passed).
    pub fn arm(&self, until: Instant) {
        let left = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        self.set(left);
    }

    pub fn disarm(&self) {
        self.set(Duration::ZERO);
    }

    /// Consumes an expiry (after the worker was woken for it); false if there was none.
    pub fn ack(&self) -> bool {
        let mut n = 0u64;
        // SAFETY: reads 8 bytes into `n`; a non-blocking fd.
        let r = unsafe { libc::read(self.0.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
        r == 8
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    fn set(&self, after: Duration) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: valid fd and spec; the old value is not asked for.
        unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_window_raises_every_time() {
        let mut irq = RxIrq::new(0, 32);
        assert_eq!(
            irq.on_published(1, false, false),
            Decision::Raise(Raise::Always)
        );
        assert!(!irq.open());
    }

    #[test]
    fn urgent_frames_raise_at_once_and_bulk_waits_for_frames_or_the_window() {
        let mut irq = RxIrq::new(50, 8);
        let Decision::Wait { until, opened } = irq.on_published(3, false, false) else {
            panic!("bulk waits");
        };
        assert!(opened && irq.open() && !irq.due(until - Duration::from_micros(1)));
        assert!(irq.due(until));
        assert!(irq.expire() && !irq.open() && !irq.expire());
        let Decision::Wait { until, .. } = irq.on_published(3, false, false) else {
            panic!("a new window");
        };
        assert_eq!(
            irq.on_published(2, false, false),
            Decision::Wait {
                until,
                opened: false
            },
            "the same window"
        );
        assert_eq!(
            irq.on_published(3, false, false),
            Decision::Raise(Raise::Frames)
        );
        assert!(!irq.open(), "an interrupt closes the window");
        irq.on_published(1, false, false);
        assert_eq!(
            irq.on_published(1, true, false),
            Decision::Raise(Raise::Urgent)
        );
        assert!(!irq.open());
        // Returned bad chains are no frames to hold back.
        irq.on_published(1, false, false);
        assert_eq!(
            irq.on_published(0, false, true),
            Decision::Raise(Raise::Always)
        );
        // Nothing new and no window: nothing to wait for.
        assert_eq!(
            irq.on_published(0, false, false),
            Decision::Raise(Raise::Always)
        );
        // A window that ended is closed by the next pass, with or without new frames.
        let mut irq = RxIrq::new(1, 8);
        irq.on_published(1, false, false);
        std::thread::sleep(Duration::from_millis(1));
        assert_eq!(
            irq.on_published(0, false, false),
            Decision::Raise(Raise::Timer)
        );
    }

    #[test]
    fn the_timer_fires_once_and_never_blocks() {
        let t = RxTimer::new().unwrap();
        assert!(!t.ack(), "not armed: nothing to read, and no block");
        t.arm(Instant::now() + Duration::from_micros(200));
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.ack());
        assert!(!t.ack());
        t.arm(Instant::now() + Duration::from_millis(200));
        t.disarm();
        std::thread::sleep(Duration::from_millis(1));
        assert!(!t.ack());
    }
}
