//! Frames and the frame pool.
//!
//! - this module: a [`Frame`] with its metadata, and the [`FramePool`] that recycles frame
//!   buffers so the steady-state datapath allocates nothing.
//! - [`meta`]: a frame's headers (offsets, EtherType, VLAN tags, IP protocol) and flow hash,
//!   parsed once where it enters vnic.
//! - [`class`]: what a frame is for the priority classes and the Homa / Open-MX path
//!   (decided once at entry, carried in the meta).
//! - [`net_header`]: the virtio-net header that precedes every frame on a virtqueue.

pub mod class;
pub mod meta;
pub mod net_header;

use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_queue::ArrayQueue;

use meta::FrameMeta;
use net_header::NetHeader;

/// Room reserved in a fresh frame buffer: a full standard frame fits without growing.
const INITIAL_CAPACITY: usize = 2048;
/// A buffer above this size (a jumbo frame, a 64 KiB segmentation job) counts as large.
const LARGE: usize = 4096;
/// Large buffers the pool keeps parked; more are shrunk back when they return, so offloaded
/// traffic cannot pin `capacity x 64 KiB` of memory (here at most 32 MiB of large buffers).
pub const MAX_PARKED_LARGE: usize = 512;

/// One Ethernet frame inside vnic, without its virtio-net header.
///
/// Boxed: a frame changes hands many times per trip (ring to batch, switch, egress queue, RX
/// stage, pool) and each hand-over moves one pointer, not the buffer's bookkeeping and
/// metadata (moving those cost more than parsing the frame did).
#[derive(Debug)]
pub struct Frame(Box<FrameBuf>);

/// What a [`Frame`] holds.
#[derive(Debug)]
pub struct FrameBuf {
    /// The Ethernet frame, from the destination MAC on.
    pub data: Vec<u8>,
    /// Offload state carried with the frame from its source (all zero: none).
    pub header: NetHeader,
    /// Headers found and flow hash computed once where the frame entered vnic
    /// (`FrameMeta::parse`); unparsed in a fresh frame from the pool.
    pub meta: FrameMeta,
}

impl std::ops::Deref for Frame {
    type Target = FrameBuf;
    #[inline]
    fn deref(&self) -> &FrameBuf {
        &self.0
    }
}

impl std::ops::DerefMut for Frame {
    #[inline]
    fn deref_mut(&mut self) -> &mut FrameBuf {
        &mut self.0
    }
}

impl Frame {
    fn new() -> Self {
        Frame::with_data(Vec::with_capacity(INITIAL_CAPACITY), NetHeader::default())
    }

    /// A frame of `data` with `header`, not parsed yet.
    pub fn with_data(data: Vec<u8>, header: NetHeader) -> Self {
        Frame(Box::new(FrameBuf {
            data,
            header,
            meta: FrameMeta::default(),
        }))
    }

    /// The frame's bytes, the frame consumed.
    pub fn into_data(self) -> Vec<u8> {
        self.0.data
    }

    /// The flow hash computed at entry, used to pick an RX queue at each destination.
    #[inline]
    pub fn flow_hash(&self) -> u32 {
        self.meta.flow_hash
    }

    /// The frame's metadata: as parsed at entry, or parsed now if nobody did (a frame built
    /// outside the datapath). Parsing now finds the headers only; the flow hash and class stay
    /// what they were set to.
    #[inline]
    pub fn parsed_meta(&self) -> FrameMeta {
        if self.meta.is_parsed() {
            return self.meta;
        }
        let mut meta = FrameMeta::parse(&self.data);
        meta.flow_hash = self.meta.flow_hash;
        meta.class = self.meta.class;
        meta
    }

    /// The destination MAC (zeros for a frame too short to have one).
    #[inline]
    pub fn dst_mac(&self) -> [u8; 6] {
        self.data.first_chunk::<6>().copied().unwrap_or_default()
    }

    /// The source MAC (zeros for a frame too short to have one).
    #[inline]
    pub fn src_mac(&self) -> [u8; 6] {
        match self.data.first_chunk::<12>() {
            Some(h) => *h[6..].first_chunk::<6>().expect("6 of 12"),
            None => [0; 6],
        }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A recycled frame as a new one: no data, no offload state, not parsed (its buffer kept).
#[inline]
fn emptied(mut f: Frame) -> Frame {
    f.data.clear();
    f.header = NetHeader::default();
    f.meta = FrameMeta::default();
    f
}

/// Small frames a datapath thread keeps for itself in front of the shared pool.
const LOCAL_FRAMES: usize = 128;

thread_local! {
    /// This thread's frame cache: `None` until the thread asks for one
    /// ([`FramePool::use_local_cache`]); datapath threads do, others (tests) see the shared pool
    /// alone.
    static LOCAL: std::cell::RefCell<Option<Vec<Frame>>> = const { std::cell::RefCell::new(None) };
}

/// A lock-free pool of frame buffers shared by every worker thread.
///
/// Buffers keep their capacity when they return, so after warm-up no frame allocates. When the
/// pool is empty a new buffer is allocated; when it is full a returned buffer is freed, which
/// bounds the memory parked in the pool. A datapath thread keeps up to [`LOCAL_FRAMES`] small
/// buffers of its own in front of it (no atomic operation per frame while it has them); its
/// cache is freed when the thread ends.
pub struct FramePool {
    free: ArrayQueue<Frame>,
    /// Large buffers among the parked ones.
    parked_large: AtomicUsize,
}

impl FramePool {
    pub fn new(capacity: usize) -> Self {
        FramePool {
            free: ArrayQueue::new(capacity),
            parked_large: AtomicUsize::new(0),
        }
    }

    /// Gives the calling thread its own frame cache in front of the shared pool.
    pub fn use_local_cache() {
        LOCAL.with_borrow_mut(|l| {
            l.get_or_insert_with(|| Vec::with_capacity(LOCAL_FRAMES));
        });
    }

    /// An empty frame.
    #[inline]
    pub fn get(&self) -> Frame {
        if let Some(f) = LOCAL.with_borrow_mut(|l| l.as_mut().and_then(Vec::pop)) {
            return emptied(f);
        }
        match self.free.pop() {
            Some(f) => {
                if f.data.capacity() > LARGE {
                    self.parked_large.fetch_sub(1, Ordering::Relaxed);
                }
                emptied(f)
            }
            None => Frame::new(),
        }
    }

    /// Appends `n` empty frames to `out` with one look at the thread's cache: a burst's
    /// worth for a queue pair's stash.
    pub fn get_many(&self, n: usize, out: &mut Vec<Frame>) {
        let target = out.len() + n;
        LOCAL.with_borrow_mut(|l| {
            if let Some(l) = l {
                let take = n.min(l.len());
                out.extend(l.drain(l.len() - take..).map(emptied));
            }
        });
        while out.len() < target {
            out.push(self.get());
        }
    }

    /// A copy of `src` (data and metadata), for flooding.
    pub fn copy_of(&self, src: &Frame) -> Frame {
        let mut f = self.get();
        f.data.extend_from_slice(&src.data);
        f.header = src.header;
        f.meta = src.meta;
        f
    }

    #[inline]
    pub fn put(&self, mut frame: Frame) {
        let large = frame.data.capacity() > LARGE;
        if !large {
            let kept = LOCAL.with_borrow_mut(|l| match l {
                Some(l) if l.len() < LOCAL_FRAMES => {
                    l.push(frame);
                    None
                }
                _ => Some(frame),
            });
            match kept {
                None => return,
                Some(f) => frame = f,
            }
        }
        if large && self.parked_large.fetch_add(1, Ordering::Relaxed) >= MAX_PARKED_LARGE {
            self.parked_large.fetch_sub(1, Ordering::Relaxed);
            frame.data = Vec::with_capacity(INITIAL_CAPACITY);
            return self.park(frame, false);
        }
        self.park(frame, large);
    }

    /// Returns every frame of `frames` (leaving it empty) with one look at the thread's cache:
    /// for the frames a burst is done with.
    pub fn put_many(&self, frames: &mut Vec<Frame>) {
        if frames.is_empty() {
            return;
        }
        // Large buffers are rare; they go the long way (`put` decides what to keep).
        if frames.iter().all(|f| f.data.capacity() <= LARGE) {
            LOCAL.with_borrow_mut(|l| {
                if let Some(l) = l {
                    let keep = frames.len().min(LOCAL_FRAMES.saturating_sub(l.len()));
                    l.extend(frames.drain(frames.len() - keep..));
                }
            });
        }
        for frame in frames.drain(..) {
            self.put(frame);
        }
    }

    fn park(&self, frame: Frame, large: bool) {
        if self.free.push(frame).is_err() && large {
            self.parked_large.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Large buffers parked now.
    pub fn parked_large(&self) -> usize {
        self.parked_large.load(Ordering::Relaxed)
    }

    /// Frames parked in the pool now.
    pub fn parked(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycled_frames_keep_capacity_and_lose_content() {
        let pool = FramePool::new(4);
        let mut f = pool.get();
        f.data.resize(9000, 7);
        f.meta = FrameMeta::parse(&f.data);
        f.meta.flow_hash = 5;
        pool.put(f);
        let g = pool.get();
        assert!(g.data.is_empty() && g.data.capacity() >= 9000 && g.flow_hash() == 0);
        assert_eq!(g.meta, FrameMeta::default());
    }

    #[test]
    fn parked_large_buffers_are_bounded() {
        let pool = FramePool::new(MAX_PARKED_LARGE + 10);
        let big: Vec<Frame> = (0..MAX_PARKED_LARGE + 10)
            .map(|_| {
                let mut f = pool.get();
                f.data.resize(65_000, 0);
                f
            })
            .collect();
        for f in big {
            pool.put(f);
        }
        assert_eq!(pool.parked(), MAX_PARKED_LARGE + 10, "every frame is kept");
        assert_eq!(
            pool.parked_large(),
            MAX_PARKED_LARGE,
            "but only so many stay large"
        );
        let reused: Vec<Frame> = (0..MAX_PARKED_LARGE + 10).map(|_| pool.get()).collect();
        assert_eq!(
            reused.iter().filter(|f| f.data.capacity() > LARGE).count(),
            MAX_PARKED_LARGE
        );
        assert_eq!(pool.parked_large(), 0);
    }

    #[test]
    fn full_pool_frees_returned_frames() {
        let pool = FramePool::new(1);
        pool.put(pool.get());
        pool.put(pool.get());
        pool.put(Frame::new());
        assert_eq!(pool.parked(), 1);
    }
}
