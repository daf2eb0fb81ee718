//! Frames and the frame pool.

use crossbeam_queue::ArrayQueue;

use super::net_header::NetHeader;

/// Room reserved in a fresh frame buffer: a full standard frame fits without growing.
const INITIAL_CAPACITY: usize = 2048;

/// One Ethernet frame inside vnic, without its virtio-net header.
#[derive(Debug)]
pub struct Frame {
    /// The Ethernet frame, from the destination MAC on.
    pub data: Vec<u8>,
    /// Offload state carried with the frame from its source (all zero: none).
    pub header: NetHeader,
    /// Flow hash computed once at the source, used to pick an RX queue at each destination.
    pub flow_hash: u32,
}

impl Frame {
    fn new() -> Self {
        Frame {
            data: Vec::with_capacity(INITIAL_CAPACITY),
            header: NetHeader::default(),
            flow_hash: 0,
        }
    }

    pub fn dst_mac(&self) -> [u8; 6] {
        self.data[0..6].try_into().unwrap()
    }

    pub fn src_mac(&self) -> [u8; 6] {
        self.data[6..12].try_into().unwrap()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A lock-free pool of frame buffers shared by every worker thread.
///
/// Buffers keep their capacity when they return, so after warm-up no frame allocates. When the
/// pool is empty a new buffer is allocated; when it is full a returned buffer is freed, which
/// bounds the memory parked in the pool.
pub struct FramePool {
    free: ArrayQueue<Frame>,
}

impl FramePool {
    pub fn new(capacity: usize) -> Self {
        FramePool {
            free: ArrayQueue::new(capacity),
        }
    }

    /// An empty frame.
    #[inline]
    pub fn get(&self) -> Frame {
        match self.free.pop() {
            Some(mut f) => {
                f.data.clear();
                f.header = NetHeader::default();
                f.flow_hash = 0;
                f
            }
            None => Frame::new(),
        }
    }

    /// A copy of `src` (data and metadata), for flooding.
    pub fn copy_of(&self, src: &Frame) -> Frame {
        let mut f = self.get();
        f.data.extend_from_slice(&src.data);
        f.header = src.header;
        f.flow_hash = src.flow_hash;
        f
    }

    #[inline]
    pub fn put(&self, frame: Frame) {
        let _ = self.free.push(frame);
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
        f.flow_hash = 5;
        pool.put(f);
        let g = pool.get();
        assert!(g.data.is_empty() && g.data.capacity() >= 9000 && g.flow_hash == 0);
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
