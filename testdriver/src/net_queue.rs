//! virtio-net TX and RX queues on top of [`DriverQueue`]: frame buffers, the virtio-net header,
//! descriptor layouts, `MRG_RXBUF` merging and RX refilling.
//!
//! Buffer memory: every descriptor-table index owns one buffer area in guest memory (the
//! "area" of a head). A chain posted with head `h` keeps all its bytes contiguously in `h`'s
//! area, whatever the descriptor layout, so a TX frame is one copy in and an RX frame is read
//! back from one place. Areas start as one slab of `queue_size × buffer_size` bytes and a
//! head's area is re-allocated (bigger, from the bump allocator) the first time a larger chain
//! needs it; after warm-up the send path allocates nothing.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::memory::GuestRam;
use super::queue::DriverQueue;
use super::split_ring::Segment;

/// Size of `virtio_net_hdr_v1` (with `num_buffers`), used whenever `VERSION_1` or `MRG_RXBUF`
/// is negotiated.
pub const NET_HDR_LEN: usize = 12;
/// Size of the legacy `virtio_net_hdr` without `num_buffers`.
pub const NET_HDR_LEN_LEGACY: usize = 10;

/// How a TX frame is laid out in descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxLayout {
    /// The header gets a descriptor of its own (otherwise it shares the first one with the
    /// frame, as Linux does when it can push the header in front of the data).
    pub separate_header: bool,
    /// At most this many bytes per data descriptor (the byte stream is cut into pieces).
    /// `None`: one descriptor for everything after the header split.
    pub max_segment: Option<u32>,
    /// Put the chain in an indirect table behind a single `VRING_DESC_F_INDIRECT` descriptor.
    pub indirect: bool,
}

impl TxLayout {
    /// Header and frame in one descriptor.
    pub const COMBINED: TxLayout = TxLayout {
        separate_header: false,
        max_segment: None,
        indirect: false,
    };
    /// Two descriptors: header, then frame.
    pub const SPLIT_HEADER: TxLayout = TxLayout {
        separate_header: true,
        max_segment: None,
        indirect: false,
    };
    /// One indirect descriptor whose table holds header, then frame.
    pub const INDIRECT: TxLayout = TxLayout {
        separate_header: true,
        max_segment: None,
        indirect: true,
    };

    /// Same layout with the data cut into descriptors of at most `bytes` bytes.
    pub fn scattered(self, bytes: u32) -> TxLayout {
        TxLayout {
            max_segment: Some(bytes.max(1)),
            ..self
        }
    }

    /// Number of descriptors (inside the table, if indirect) for a header and frame.
    pub fn segments(&self, hdr_len: usize, frame_len: usize) -> usize {
        let pieces = |len: usize| match self.max_segment {
            _ if len == 0 => 0,
            None => 1,
            Some(m) => len.div_ceil(m as usize),
        };
        let n = if self.separate_header {
            pieces(hdr_len) + pieces(frame_len)
        } else {
            pieces(hdr_len + frame_len)
        };
        n.max(1)
    }

    /// Appends the segments for a header of `hdr_len` bytes at `base` followed by a frame of
    /// `frame_len` bytes at `base + hdr_len`.
    fn build(&self, base: u64, hdr_len: usize, frame_len: usize, out: &mut Vec<Segment>) {
        let cut = |off: usize, len: usize, out: &mut Vec<Segment>| {
            let max = self.max_segment.map_or(usize::MAX, |m| m as usize);
            let mut done = 0;
            while done < len {
                let n = (len - done).min(max);
                out.push(Segment::readable(base + (off + done) as u64, n as u32));
                done += n;
            }
        };
        let start = out.len();
        if self.separate_header {
            cut(0, hdr_len, out);
            cut(hdr_len, frame_len, out);
        } else {
            cut(0, hdr_len + frame_len, out);
        }
        if out.len() == start {
            out.push(Segment::readable(base, 0));
        }
    }
}

impl Default for TxLayout {
    fn default() -> TxLayout {
        TxLayout::COMBINED
    }
}

/// One received frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxFrame {
    /// The virtio-net header as the device wrote it (bytes 10..12 are 0 with a 10-byte header).
    pub hdr: [u8; 12],
    /// Buffers the frame used (`num_buffers` from the header under `MRG_RXBUF`, else 1).
    pub num_buffers: u16,
    /// The frame without the header.
    pub data: Vec<u8>,
}

impl RxFrame {
    /// `flags` field of the header.
    pub fn hdr_flags(&self) -> u8 {
        self.hdr[0]
    }

    /// `gso_type` field of the header.
    pub fn gso_type(&self) -> u8 {
        self.hdr[1]
    }
}

/// Per-head buffer areas (and indirect tables) in guest memory.
struct BufferAreas {
    ram: Arc<GuestRam>,
    areas: Vec<(u64, u32)>,
    tables: Vec<(u64, u32)>,
}

fn oom() -> io::Error {
    io::Error::new(io::ErrorKind::OutOfMemory, "guest memory exhausted")
}

impl BufferAreas {
    fn new(ram: Arc<GuestRam>, count: u16, initial: u32) -> io::Result<BufferAreas> {
        let initial = initial.max(16).next_multiple_of(16);
        let slab = ram
            .alloc(count as usize * initial as usize, 4096)
            .ok_or_else(oom)?;
        let areas = (0..count as u64)
            .map(|i| (slab + i * initial as u64, initial))
            .collect();
        Ok(BufferAreas {
            ram,
            areas,
            tables: vec![(0, 0); count as usize],
        })
    }

    /// The area of `head`, grown to at least `len` bytes.
    fn ensure(&mut self, head: u16, len: usize) -> io::Result<u64> {
        let (gpa, cap) = self.areas[head as usize];
        if len <= cap as usize {
            return Ok(gpa);
        }
        let want = len
            .checked_next_power_of_two()
            .filter(|&n| n <= u32::MAX as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffer too large"))?;
        let gpa = self.ram.alloc(want, 64).ok_or_else(oom)?;
        self.areas[head as usize] = (gpa, want as u32);
        Ok(gpa)
    }

    /// The indirect table of `head`, grown to at least `entries` entries.
    fn ensure_table(&mut self, head: u16, entries: usize) -> io::Result<u64> {
        let (gpa, cap) = self.tables[head as usize];
        if entries <= cap as usize {
            return Ok(gpa);
        }
        let want = entries.next_power_of_two().max(4);
        let gpa = self.ram.alloc(16 * want, 16).ok_or_else(oom)?;
        self.tables[head as usize] = (gpa, want as u32);
        Ok(gpa)
    }

    fn area(&self, head: u32) -> (u64, u32) {
        self.areas[head as usize]
    }
}

/// A transmit queue: the driver posts frames, the device consumes them.
pub struct TxQueue {
    q: DriverQueue,
    areas: BufferAreas,
    scratch: Vec<Segment>,
    hdr_len: usize,
    layout: TxLayout,
    sent: u64,
    completed: u64,
}

impl TxQueue {
    /// Wraps `q`, with `buffer_size` bytes of preallocated buffer per descriptor and a
    /// virtio-net header of `hdr_len` bytes.
    pub fn new(q: DriverQueue, buffer_size: u32, hdr_len: usize) -> io::Result<TxQueue> {
        let areas = BufferAreas::new(q.ram().clone(), q.size(), buffer_size)?;
        Ok(TxQueue {
            q,
            areas,
            scratch: Vec::new(),
            hdr_len,
            layout: TxLayout::default(),
            sent: 0,
            completed: 0,
        })
    }

    /// The underlying virtqueue.
    pub fn queue(&mut self) -> &mut DriverQueue {
        &mut self.q
    }

    /// The underlying virtqueue, read-only.
    pub fn queue_ref(&self) -> &DriverQueue {
        &self.q
    }

    /// Default layout used by [`TxQueue::send`] and [`TxQueue::enqueue_frame`].
    pub fn set_layout(&mut self, layout: TxLayout) {
        self.layout = layout;
    }

    /// The default layout.
    pub fn layout(&self) -> TxLayout {
        self.layout
    }

    /// Puts one frame with header bytes `hdr` (any length; normally the header length) on the
    /// ring without publishing it. Returns `Ok(false)` if the ring has no room now.
    pub fn enqueue(&mut self, hdr: &[u8], frame: &[u8], layout: TxLayout) -> io::Result<bool> {
        let n = layout.segments(hdr.len(), frame.len());
        let ring_descs = if layout.indirect { 1 } else { n };
        if ring_descs > self.q.size() as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "frame needs {n} descriptors, the queue has {}",
                    self.q.size()
                ),
            ));
        }
        if ring_descs > self.q.free_descriptors() {
            return Ok(false);
        }
        let head = self.q.peek_head().expect("free descriptors checked");
        let base = self.areas.ensure(head, hdr.len() + frame.len())?;
        let ram = self.q.ram();
        ram.write(base, hdr);
        ram.write(base + hdr.len() as u64, frame);
        self.scratch.clear();
        layout.build(base, hdr.len(), frame.len(), &mut self.scratch);
        let posted = if layout.indirect {
            let table = self.areas.ensure_table(head, n)?;
            self.q.add_indirect(table, &self.scratch)
        } else {
            self.q.add_chain(&self.scratch)
        };
        debug_assert_eq!(posted, Some(head));
        self.sent += 1;
        Ok(true)
    }

    /// [`TxQueue::enqueue`] with a zeroed header of the negotiated length and the default layout.
    pub fn enqueue_frame(&mut self, frame: &[u8]) -> io::Result<bool> {
        let zero = [0u8; NET_HDR_LEN];
        self.enqueue(&zero[..self.hdr_len], frame, self.layout)
    }

    /// Publishes what was enqueued and kicks if the device wants it. Returns whether it kicked.
    pub fn flush(&mut self) -> io::Result<bool> {
        self.q.notify()
    }

    /// Reclaims completed frames; returns how many were reclaimed now.
    pub fn reclaim(&mut self) -> usize {
        let mut n = 0;
        while self.q.pop_used().is_some() {
            n += 1;
        }
        if n > 0 {
            self.q.rearm_interrupts();
        }
        self.completed += n as u64;
        n
    }

    /// Reclaims, then queues as many of `frames` as fit with `layout` (zeroed headers), then
    /// publishes once and kicks at most once. Returns how many were queued.
    pub fn send_with(&mut self, frames: &[&[u8]], layout: TxLayout) -> io::Result<usize> {
        self.reclaim();
        let zero = [0u8; NET_HDR_LEN];
        let hdr_len = self.hdr_len;
        let mut queued = 0;
        for frame in frames {
            if !self.enqueue(&zero[..hdr_len], frame, layout)? {
                break;
            }
            queued += 1;
        }
        if queued > 0 {
            self.flush()?;
        }
        Ok(queued)
    }

    /// [`TxQueue::send_with`] with the default layout.
    pub fn send(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        self.send_with(frames, self.layout)
    }

    /// Frames posted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.q.in_flight()
    }

    /// Waits on the call eventfd until every posted frame completed, reclaiming them. Returns
    /// whether that happened before `timeout`.
    pub fn wait_idle(&mut self, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            self.q.poll_interrupts();
            self.reclaim();
            if self.in_flight() == 0 {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            self.q.wait_interrupt(wait_slice(&self.q, deadline - now))?;
        }
    }

    /// Frames queued so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Frames completed so far.
    pub fn completed(&self) -> u64 {
        self.completed
    }
}

/// A receive queue: the driver posts empty buffers, the device fills them.
pub struct RxQueue {
    q: DriverQueue,
    areas: BufferAreas,
    scratch: Vec<Segment>,
    hdr_len: usize,
    mrg_rxbuf: bool,
    /// Segment sizes of one posted buffer (chain), and whether it goes in an indirect table.
    layout: Vec<u32>,
    indirect: bool,
    /// Bytes posted per head (for checking `used.len`).
    posted_len: Vec<u32>,
    /// Buffers the driver keeps posted: refilled up to this after every receive.
    target: usize,
    frames: u64,
    bytes: u64,
}

/// What [`RxQueue`] learned about one received frame while consuming it.
struct PacketInfo {
    hdr: [u8; 12],
    num_buffers: u16,
}

impl RxQueue {
    /// Wraps `q`, with `buffer_size` bytes per buffer, a header of `hdr_len` bytes and
    /// `MRG_RXBUF` merging on or off. Posts nothing yet.
    pub fn new(
        q: DriverQueue,
        buffer_size: u32,
        hdr_len: usize,
        mrg_rxbuf: bool,
    ) -> io::Result<RxQueue> {
        let areas = BufferAreas::new(q.ram().clone(), q.size(), buffer_size)?;
        let n = q.size() as usize;
        Ok(RxQueue {
            q,
            areas,
            scratch: Vec::new(),
            hdr_len,
            mrg_rxbuf,
            layout: vec![buffer_size],
            indirect: false,
            posted_len: vec![0; n],
            target: 0,
            frames: 0,
            bytes: 0,
        })
    }

    /// The underlying virtqueue.
    pub fn queue(&mut self) -> &mut DriverQueue {
        &mut self.q
    }

    /// The underlying virtqueue, read-only.
    pub fn queue_ref(&self) -> &DriverQueue {
        &self.q
    }

    /// Sets the shape of buffers posted from now on (including refills): one writable
    /// descriptor per entry of `segments` (bytes each), optionally inside an indirect table.
    pub fn set_layout(&mut self, segments: &[u32], indirect: bool) {
        assert!(!segments.is_empty(), "an RX buffer needs a segment");
        self.layout.clear();
        self.layout.extend_from_slice(segments);
        self.indirect = indirect;
    }

    /// Posts up to `count` more buffers of the current layout (limited by free descriptors),
    /// raises the refill target by as many, publishes and kicks if wanted. Returns how many
    /// were posted.
    pub fn post(&mut self, count: u16) -> io::Result<u16> {
        let mut posted = 0;
        while posted < count && self.post_one()? {
            posted += 1;
        }
        self.target += posted as usize;
        self.q.notify()?;
        Ok(posted)
    }

    /// Like [`RxQueue::post`] but only publishes, never kicks (for rings the device does not
    /// watch yet).
    pub fn post_quiet(&mut self, count: u16) -> io::Result<u16> {
        let mut posted = 0;
        while posted < count && self.post_one()? {
            posted += 1;
        }
        self.target += posted as usize;
        self.q.publish();
        Ok(posted)
    }

    fn post_one(&mut self) -> io::Result<bool> {
        let n = self.layout.len();
        let ring_descs = if self.indirect { 1 } else { n };
        if ring_descs > self.q.free_descriptors() {
            return Ok(false);
        }
        let head = self.q.peek_head().expect("free descriptors checked");
        let total: u64 = self.layout.iter().map(|&l| l as u64).sum();
        let total = u32::try_from(total)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "RX buffer too large"))?;
        let base = self.areas.ensure(head, total as usize)?;
        self.scratch.clear();
        let mut off = 0u64;
        for &len in &self.layout {
            self.scratch.push(Segment::writable(base + off, len));
            off += len as u64;
        }
        let posted = if self.indirect {
            let table = self.areas.ensure_table(head, n)?;
            self.q.add_indirect(table, &self.scratch)
        } else {
            self.q.add_chain(&self.scratch)
        };
        debug_assert_eq!(posted, Some(head));
        self.posted_len[head as usize] = total;
        Ok(true)
    }

    /// Buffers currently posted.
    pub fn posted(&self) -> usize {
        self.q.in_flight()
    }

    /// Frames received so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Frame bytes (without headers) received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Checks one used element's id and length; returns (area gpa, usable length).
    fn check_elem(&mut self, id: u32, len: u32) -> Option<(u64, usize)> {
        if !self.q.is_in_flight(id) {
            self.q.violation(format!(
                "RX used id {id} is not the head of a posted buffer"
            ));
            return None;
        }
        let posted = self.posted_len[id as usize];
        let mut len = len;
        if len > posted {
            self.q.violation(format!(
                "RX used len {len} exceeds the {posted} bytes posted at head {id}"
            ));
            len = posted;
        }
        Some((self.areas.area(id).0, len as usize))
    }

    /// Consumes one complete frame (all its buffers), handing each piece of frame data to
    /// `sink(gpa, len)`. Returns `None` when no complete frame is pending.
    fn take_packet(&mut self, mut sink: impl FnMut(&GuestRam, u64, usize)) -> Option<PacketInfo> {
        let pending = self.q.pending_used();
        if pending == 0 {
            return None;
        }
        let first = self.q.peek_used(0)?;
        let Some((gpa, len)) = self.check_elem(first.id, first.len) else {
            // Lenient mode: drop the bogus element.
            self.q.pop_used();
            return Some(PacketInfo {
                hdr: [0; 12],
                num_buffers: 0,
            });
        };
        let mut hdr = [0u8; 12];
        let hdr_len = self.hdr_len;
        if len < hdr_len {
            self.q.violation(format!(
                "RX used len {len} is shorter than the {hdr_len}-byte header"
            ));
        }
        let copy = len.min(hdr_len);
        self.q.ram().read(gpa, &mut hdr[..copy]);
        let mut num_buffers = 1u16;
        if self.mrg_rxbuf {
            num_buffers = u16::from_le_bytes([hdr[10], hdr[11]]);
            if num_buffers == 0 {
                self.q
                    .violation(format!("RX num_buffers is 0 (head {})", first.id));
                num_buffers = 1;
            }
            if num_buffers > pending {
                if num_buffers as usize > self.q.in_flight() {
                    self.q.violation(format!(
                        "RX num_buffers {num_buffers} exceeds the {} buffers posted",
                        self.q.in_flight()
                    ));
                    num_buffers = pending;
                } else {
                    // The rest of the frame is not published yet.
                    return None;
                }
            }
        }
        self.q.pop_used();
        sink(self.q.ram(), gpa + copy as u64, len - copy);
        for _ in 1..num_buffers {
            // Check before popping: popping releases the head.
            let e = self.q.peek_used(0).expect("pending checked");
            let checked = self.check_elem(e.id, e.len);
            self.q.pop_used();
            if let Some((gpa, len)) = checked {
                sink(self.q.ram(), gpa, len);
            }
        }
        self.frames += 1;
        Some(PacketInfo { hdr, num_buffers })
    }

    /// Refills to the target, publishes, kicks if wanted, and re-arms interrupts. Returns
    /// whether used entries are already pending again.
    fn refill_and_rearm(&mut self) -> io::Result<bool> {
        while self.q.in_flight() < self.target && self.post_one()? {}
        self.q.notify()?;
        Ok(self.q.rearm_interrupts())
    }

    /// Collects every complete frame the device has published into `out` (without blocking),
    /// reposting the buffers. Returns how many frames were added.
    pub fn recv_into(&mut self, out: &mut Vec<RxFrame>) -> io::Result<usize> {
        let start = out.len();
        loop {
            loop {
                let mut data = Vec::new();
                let Some(info) = self.take_packet(|ram, gpa, len| {
                    ram.read_into_vec(gpa, len, &mut data);
                }) else {
                    break;
                };
                if info.num_buffers == 0 {
                    continue; // bogus element skipped in lenient mode
                }
                self.bytes += data.len() as u64;
                out.push(RxFrame {
                    hdr: info.hdr,
                    num_buffers: info.num_buffers,
                    data,
                });
            }
            if !self.refill_and_rearm()? || !self.has_complete_frame() {
                break;
            }
        }
        Ok(out.len() - start)
    }

    /// Waits until at least `count` frames were added to `out` or `timeout` passed; returns how
    /// many were added. Blocks in `poll(2)` on the call eventfd (in 1 ms slices while
    /// interrupts are suppressed on this queue), so a device that forgets to interrupt makes
    /// this time out.
    pub fn recv_wait_into(
        &mut self,
        out: &mut Vec<RxFrame>,
        count: usize,
        timeout: Duration,
    ) -> io::Result<usize> {
        let deadline = Instant::now() + timeout;
        let start = out.len();
        loop {
            // Drain the eventfd *before* looking at the ring: a signal for anything published
            // after this point keeps the fd readable for the poll below.
            self.q.poll_interrupts();
            self.recv_into(out)?;
            if out.len() - start >= count {
                return Ok(out.len() - start);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(out.len() - start);
            }
            self.q.wait_interrupt(wait_slice(&self.q, deadline - now))?;
        }
    }

    /// Like [`RxQueue::recv_into`] but only counts: returns (frames, frame bytes).
    pub fn recv_discard(&mut self) -> io::Result<(usize, u64)> {
        let (mut frames, mut bytes) = (0usize, 0u64);
        loop {
            loop {
                let mut len = 0u64;
                let Some(info) = self.take_packet(|_, _, l| len += l as u64) else {
                    break;
                };
                if info.num_buffers == 0 {
                    continue;
                }
                frames += 1;
                bytes += len;
            }
            if !self.refill_and_rearm()? || !self.has_complete_frame() {
                break;
            }
        }
        self.bytes += bytes;
        Ok((frames, bytes))
    }

    /// Whether at least one complete frame is pending.
    fn has_complete_frame(&mut self) -> bool {
        let pending = self.q.pending_used();
        if pending == 0 {
            return false;
        }
        if !self.mrg_rxbuf {
            return true;
        }
        let Some(first) = self.q.peek_used(0) else {
            return false;
        };
        if !self.q.is_in_flight(first.id) {
            return true; // let take_packet report it
        }
        let gpa = self.areas.area(first.id).0;
        let mut nb = [0u8; 2];
        self.q.ram().read(gpa + 10, &mut nb);
        u16::from_le_bytes(nb) <= pending
    }
}

/// How long to block on a call eventfd: everything left, or 1 ms while interrupts are
/// suppressed on that queue (no interrupt is expected then).
fn wait_slice(q: &DriverQueue, left: Duration) -> Duration {
    if q.interrupts_suppressed() {
        left.min(Duration::from_millis(1))
    } else {
        left
    }
}
