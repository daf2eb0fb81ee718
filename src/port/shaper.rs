//! `shape=on`: a port's `speed=` enforced on what it delivers to its guest, so that queues build
//! inside vnic, in the priority classes, where they build in a real NIC, and a transport that
//! paces itself against the reported link speed (Homa's pacer) is told the truth.
//!
//! One token bucket per port, shared by its RX queues, kept as GCRA's single "theoretical
//! arrival time" in an atomic: taking a frame's worth is one compare-and-swap, and a worker
//! that finds the bucket empty learns when it will hold enough. Off by default, so that
//! benchmarks measure vnic, not a link.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a frame costs on an Ethernet link beyond its bytes: preamble and start delimiter (8),
/// FCS (4), the inter-frame gap (12).
pub const WIRE_OVERHEAD: usize = 24;

/// The longest the bucket lets a burst run ahead of the rate (and at least
/// [`MIN_BURST_FRAMES`] full-size frames): what a worker woken late (a timer's slack, a busy
/// CPU) may catch up, so that the link's capacity is not lost to the scheduler.
const BURST: Duration = Duration::from_millis(1);
const MIN_BURST_FRAMES: u64 = 8;

pub struct Shaper {
    /// Picoseconds a byte takes on the link.
    ps_per_byte: u64,
    /// How far (ps) the arrival time may run ahead of now.
    burst_ps: u64,
    /// When (ps after `epoch`) the link is free again: the bucket is empty up to there.
    tat: AtomicU64,
    epoch: Instant,
}

impl Shaper {
    /// A link of `speed_mbps` carrying frames of up to `mtu` bytes of payload.
    pub fn new(speed_mbps: u32, mtu: u16) -> Self {
        let ps_per_byte = (8_000_000 / speed_mbps.max(1) as u64).max(1);
        let frame_ps = (mtu as u64 + 18 + WIRE_OVERHEAD as u64) * ps_per_byte;
        Shaper {
            ps_per_byte,
            burst_ps: (BURST.as_nanos() as u64 * 1000).max(MIN_BURST_FRAMES * frame_ps),
            tat: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Takes a frame of `len` bytes at `now`: Ok if the link has room for it, else the instant
    /// it will (nothing taken).
    #[inline]
    pub fn take(&self, len: usize, now: Instant) -> Result<(), Instant> {
        let now_ps = self.ps(now);
        let cost = (len + WIRE_OVERHEAD) as u64 * self.ps_per_byte;
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now_ps) + cost;
            if next > now_ps + self.burst_ps + cost {
                // Room once the arrival time is back within the burst.
                let wait = next - cost - self.burst_ps - now_ps;
                return Err(now + Duration::from_nanos(wait.div_ceil(1000)));
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }

    /// Gives back what [`Shaper::take`] took for a frame of `len` bytes that was not delivered
    /// after all.
    pub fn give_back(&self, len: usize) {
        let cost = (len + WIRE_OVERHEAD) as u64 * self.ps_per_byte;
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(cost))
            });
    }

    fn ps(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64 * 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_holds_beyond_the_burst() {
        // 100 Mbit/s: a 1514-byte frame (plus 24 on the wire) takes 123 us.
        let s = Shaper::new(100, 1500);
        let t0 = Instant::now();
        let mut taken = 0;
        while s.take(1514, t0).is_ok() {
            taken += 1;
        }
        assert_eq!(
            taken,
            MIN_BURST_FRAMES as usize + 1,
            "a burst, then the rate"
        );
        let Err(until) = s.take(1514, t0) else {
            unreachable!()
        };
        let wait = until - t0;
        assert!(
            wait > Duration::from_micros(100) && wait <= Duration::from_micros(124),
            "{wait:?}"
        );
        assert!(s.take(1514, until).is_ok(), "room at the instant it said");
        assert!(s.take(1514, until).is_err());
        // Over a simulated second, about 100 Mbit get through.
        let mut t = until;
        let mut bytes = 0u64;
        while t < until + Duration::from_secs(1) {
            match s.take(1514, t) {
                Ok(()) => bytes += 1538,
                Err(next) => t = next,
            }
        }
        let mbps = bytes as f64 * 8.0 / 1e6;
        assert!((99.0..101.5).contains(&mbps), "{mbps} Mbit/s");
    }

    #[test]
    fn what_was_not_delivered_is_given_back() {
        let s = Shaper::new(10, 1500);
        let t0 = Instant::now();
        while s.take(1514, t0).is_ok() {}
        let before = s.take(1514, t0).unwrap_err();
        s.give_back(1514);
        assert!(s.take(1514, t0).is_ok());
        assert_eq!(s.take(1514, t0).unwrap_err(), before);
    }

    #[test]
    fn an_idle_link_saves_no_more_than_a_burst() {
        let s = Shaper::new(1000, 1500);
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut taken = 0;
        while s.take(1514, t0).is_ok() {
            taken += 1;
        }
        // 1 ms at 1 Gbit/s: 125 000 bytes, 81 frames (+1 at the edge).
        assert!((81..=82).contains(&taken), "{taken}");
    }
}
