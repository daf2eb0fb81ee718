//! The queues in front of one RX queue: eight strict-priority classes, as a NIC has traffic
//! classes in front of a ring, so that a Homa GRANT or an Open-MX TINY never waits behind bulk
//! data that arrived before it.
//!
//! Producers (other ports' workers, the switch) push without a lock into the class of each
//! frame and publish the classes a batch touched once per batch ([`Pending`],
//! [`EgressQueue::publish`]); the worker pops the highest class that holds a frame. The class
//! bits are a hint kept exact enough never to lose a frame: the consumer clears a bit only after
//! finding its class empty, and looks once more afterwards, so a frame pushed before that
//! clearing is seen then and one pushed after it sets the bit again when its batch publishes.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use crossbeam_queue::ArrayQueue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use crate::frame::class::CLASSES;
use crate::frame::Frame;

/// What one batch queued on one port: for each RX queue, the classes it pushed frames into
/// (bits `8 * queue + class`); published and woken once per batch ([`super::Port::wake`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending(u128);

impl Pending {
    #[inline]
    pub fn add(&mut self, queue: usize, class: usize) {
        self.0 |= 1u128 << (queue * CLASSES + class);
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Each RX queue with something pending, with its class bits.
    pub fn queues(self) -> impl Iterator<Item = (usize, u8)> {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            if rest == 0 {
                return None;
            }
            let q = rest.trailing_zeros() as usize / CLASSES;
            let classes = (rest >> (q * CLASSES)) as u8;
            rest &= !(0xffu128 << (q * CLASSES));
            Some((q, classes))
        })
    }
}

/// Frames waiting for one RX queue, by class, and the eventfd that wakes its worker.
pub struct EgressQueue {
    classes: [ArrayQueue<Frame>; CLASSES],
    /// Bit c: class c may hold frames (see the module's notes).
    occupied: AtomicU8,
    wake: EventFd,
    wake_pending: AtomicBool,
    /// A poller serves this queue: it looks without being woken.
    polled: bool,
}

impl EgressQueue {
    /// Queues whose classes hold up to `depth` frames each.
    pub(super) fn new(depth: usize, polled: bool) -> io::Result<Self> {
        Ok(EgressQueue {
            classes: std::array::from_fn(|_| ArrayQueue::new(depth)),
            occupied: AtomicU8::new(0),
            wake: EventFd::new(EFD_NONBLOCK)?,
            wake_pending: AtomicBool::new(false),
            polled,
        })
    }

    /// Queues `frame` in `class`; gives it back if that class is full. Visible to the worker
    /// once the batch is published.
    #[inline]
    pub(super) fn push(&self, class: usize, frame: Frame) -> Result<(), Frame> {
        self.classes[class].push(frame)
    }

    /// Makes the classes in `classes` (bits) visible to the worker: after the batch's pushes.
    #[inline]
    pub(super) fn publish(&self, classes: u8) {
        self.occupied.fetch_or(classes, Ordering::AcqRel);
    }

    /// The next frame of the highest class that holds one.
    #[inline]
    pub fn pop(&self) -> Option<Frame> {
        self.pop_from(0)
    }

    /// The next frame of the highest class that holds one, among classes `floor` and above.
    #[inline]
    pub fn pop_from(&self, floor: usize) -> Option<Frame> {
        let classes = 0xffu8.checked_shl(floor as u32).unwrap_or(0);
        let mut bits = self.occupied.load(Ordering::Acquire) & classes;
        while bits != 0 {
            let class = top(bits);
            let bit = 1u8 << class;
            if let Some(f) = self.classes[class].pop() {
                return Some(f);
            }
            // Empty as far as this thread sees: clear the bit, then look again (a producer
            // that published before the clearing is visible now; one after it sets the bit).
            self.occupied.fetch_and(!bit, Ordering::AcqRel);
            if let Some(f) = self.classes[class].pop() {
                self.occupied.fetch_or(bit, Ordering::AcqRel);
                return Some(f);
            }
            bits &= !bit;
        }
        None
    }

    /// The highest class that may hold a frame, if any (a hint: it may be empty by now).
    #[inline]
    pub fn top_class(&self) -> Option<usize> {
        let bits = self.occupied.load(Ordering::Relaxed);
        (bits != 0).then(|| top(bits))
    }

    /// Frames waiting, over all classes.
    pub fn len(&self) -> usize {
        self.classes.iter().map(ArrayQueue::len).sum()
    }

    /// Frames waiting in each class.
    pub fn depths(&self) -> [usize; CLASSES] {
        std::array::from_fn(|c| self.classes[c].len())
    }

    pub fn is_empty(&self) -> bool {
        self.classes.iter().all(ArrayQueue::is_empty)
    }

    /// Wakes the worker unless a wake-up is already pending: one eventfd write per batch.
    pub fn wake(&self) {
        if !self.polled && !self.wake_pending.swap(true, Ordering::AcqRel) {
            let _ = self.wake.write(1);
        }
    }

    /// Called by the worker when woken, before it drains the queue: frames pushed after this
    /// wake it again. (Not needed when it drains for another reason: a wake-up still pending
    /// will come, so nothing waits unseen.)
    pub fn ack_wake(&self) {
        let _ = self.wake.read();
        self.wake_pending.store(false, Ordering::SeqCst);
    }

    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

/// The highest class whose bit is set in `bits` (not 0).
#[inline]
pub fn top(bits: u8) -> usize {
    7 - bits.leading_zeros() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FramePool;

    fn tagged(pool: &FramePool, tag: u8) -> Frame {
        let mut f = pool.get();
        f.data.push(tag);
        f
    }

    #[test]
    fn pending_names_each_queue_with_its_classes() {
        let mut p = Pending::default();
        assert!(p.is_empty());
        p.add(0, 0);
        p.add(0, 7);
        p.add(15, 3);
        p.add(2, 1);
        let got: Vec<_> = p.queues().collect();
        assert_eq!(got, vec![(0, 0x81), (2, 0x02), (15, 0x08)]);
    }

    #[test]
    fn the_highest_class_goes_first_and_each_class_in_order() {
        let pool = FramePool::new(32);
        let q = EgressQueue::new(4, true).unwrap();
        for (class, tag) in [(0, 1), (0, 2), (5, 3), (7, 4), (5, 5), (0, 6)] {
            q.push(class, tagged(&pool, tag)).unwrap();
        }
        assert_eq!(
            q.pop().map(|f| f.data[0]),
            None,
            "nothing is visible before publishing"
        );
        q.publish(0x01 | 0x20 | 0x80);
        assert_eq!(q.top_class(), Some(7));
        assert_eq!(q.depths(), [3, 0, 0, 0, 0, 2, 0, 1]);
        assert_eq!(q.pop_from(6).map(|f| f.data[0]), Some(4));
        assert_eq!(
            q.pop_from(6).map(|f| f.data[0]),
            None,
            "nothing above 5 left"
        );
        let order: Vec<u8> = std::iter::from_fn(|| q.pop()).map(|f| f.data[0]).collect();
        assert_eq!(order, vec![3, 5, 1, 2, 6]);
        assert_eq!(
            q.top_class(),
            None,
            "every bit cleared once its class ran dry"
        );
        assert!(q.is_empty());
    }

    #[test]
    fn each_class_has_its_own_depth() {
        let pool = FramePool::new(32);
        let q = EgressQueue::new(2, true).unwrap();
        q.push(0, tagged(&pool, 1)).unwrap();
        q.push(0, tagged(&pool, 2)).unwrap();
        assert!(q.push(0, tagged(&pool, 3)).is_err(), "class 0 is full");
        q.push(7, tagged(&pool, 4)).unwrap();
        assert_eq!(q.len(), 3);
    }

    /// A producer thread publishing batches while the consumer pops and clears bits: every
    /// frame is popped, none twice.
    #[test]
    fn no_frame_is_lost_between_a_clearing_and_a_publish() {
        let q = std::sync::Arc::new(EgressQueue::new(1024, true).unwrap());
        let pool = std::sync::Arc::new(FramePool::new(64));
        const N: u32 = 200_000;
        let producer = {
            let (q, pool) = (q.clone(), pool.clone());
            std::thread::spawn(move || {
                let mut i = 0u32;
                while i < N {
                    let mut bits = 0u8;
                    for _ in 0..(1 + i % 7) {
                        if i == N {
                            break;
                        }
                        let class = (i % 3) as usize * 3;
                        let mut f = pool.get();
                        f.data.clear();
                        f.data.extend_from_slice(&i.to_le_bytes());
                        match q.push(class, f) {
                            Ok(()) => {
                                bits |= 1 << class;
                                i += 1;
                            }
                            Err(f) => {
                                pool.put(f);
                                break;
                            }
                        }
                    }
                    q.publish(bits);
                }
            })
        };
        let mut seen = vec![false; N as usize];
        let mut count = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while count < N && std::time::Instant::now() < deadline {
            if let Some(f) = q.pop() {
                let i = u32::from_le_bytes(f.data[..4].try_into().unwrap()) as usize;
                assert!(!seen[i], "frame {i} twice");
                seen[i] = true;
                count += 1;
                pool.put(f);
            }
        }
        producer.join().unwrap();
        assert_eq!(count, N, "every frame published was popped");
    }
}
