//! Guest memory as the ring layer sees it: a small table of the frontend's regions, each a
//! guest-physical range and the host address it is mapped at.
//!
//! Why not vm-memory's `read_slice`/`write_slice` on the hot path: every call looks the region
//! up again, goes through its volatile-slice machinery and bitmap hooks, and a 64-byte frame
//! paid more for that than for the copy itself. Here a guest range is checked against the
//! table once (when a descriptor is read) and becomes a host pointer plus a length; the copy
//! is then a plain `memcpy`. The table holds the `Arc` of the memory it was built from, so the
//! mappings stay valid for as long as the table (and any pointer it handed out) lives, even if
//! the frontend sends a new memory table meanwhile.

use std::sync::Arc;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use super::GuestMem;

/// One frontend region: guest-physical `[start, start + len)` mapped at `host`.
#[derive(Clone, Copy, Debug)]
struct Region {
    start: u64,
    len: u64,
    host: *mut u8,
}

/// A checked piece of guest memory: `len` bytes at host address `host`, all inside one region.
/// Valid while the [`GuestRegions`] it came from lives: the ring layer hands segments out for
/// one pass over a ring, which holds that table.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub host: *mut u8,
    pub len: u32,
}

// SAFETY: a segment is plain data (an address and a length); it is dereferenced only by the
// thread running the pass that made it, while the ring's table keeps the mapping alive.
// Segment lists kept for reuse across passes are cleared before they are filled again.
unsafe impl Send for Segment {}

/// The regions of one guest memory table.
pub struct GuestRegions {
    regions: Vec<Region>,
    /// Keeps the mappings alive: every host pointer below points into them.
    mem: Arc<GuestMem>,
}

// SAFETY: the raw pointers point into the mappings owned by `mem` (an `Arc`, itself Send and
// Sync); the table is only read after construction. Accesses through them go to memory the
// guest shares with us and may change at any time, which every user is written to tolerate
// (values are copied once, then checked).
unsafe impl Send for GuestRegions {}
unsafe impl Sync for GuestRegions {}

impl GuestRegions {
    pub fn new(mem: Arc<GuestMem>) -> Self {
        let regions = mem
            .iter()
            .filter_map(|r| {
                let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                Some(Region {
                    start: r.start_addr().0,
                    len: r.len(),
                    host,
                })
            })
            .collect();
        GuestRegions { regions, mem }
    }

    /// Whether this table was built from `mem`.
    pub fn is_of(&self, mem: &GuestMem) -> bool {
        std::ptr::eq(Arc::as_ptr(&self.mem), mem)
    }

    /// The host address of guest range `[gpa, gpa + len)`, if all of it lies in one region.
    #[inline]
    pub fn host_range(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        let end = gpa.checked_add(len)?;
        for r in &self.regions {
            if gpa >= r.start && end <= r.start + r.len {
                // In bounds of the mapping: just checked.
                return Some(r.host.wrapping_add((gpa - r.start) as usize));
            }
        }
        None
    }

    /// Appends the segments covering guest range `[gpa, gpa + len)` to `out` (more than one
    /// only where the range crosses from one region into an adjacent one). False, with `out`
    /// unchanged, if any byte of it is outside guest memory.
    pub fn push_segments(&self, gpa: u64, len: u32, out: &mut Vec<Segment>) -> bool {
        if len == 0 {
            return true;
        }
        if let Some(host) = self.host_range(gpa, len as u64) {
            out.push(Segment { host, len });
            return true;
        }
        self.push_split(gpa, len, out)
    }

    #[cold]
    fn push_split(&self, mut gpa: u64, len: u32, out: &mut Vec<Segment>) -> bool {
        let mark = out.len();
        let mut left = len as u64;
        while left > 0 {
            let Some(r) = self
                .regions
                .iter()
                .find(|r| gpa >= r.start && gpa - r.start < r.len)
            else {
                out.truncate(mark);
                return false;
            };
            let n = left.min(r.start + r.len - gpa);
            out.push(Segment {
                host: r.host.wrapping_add((gpa - r.start) as usize),
                len: n as u32,
            });
            gpa += n;
            left -= n;
        }
        true
    }
}

/// Reads the 16 bytes of a descriptor at `at` once (the guest may rewrite it meanwhile), as two
/// little-endian words: bytes 0-7 (the address) and 8-15 (length and the layout's two 16-bit
/// fields). Both ring layouts share this size. Two 8-byte loads where `at` is 8-aligned (a
/// ring's own table is 16-aligned); an indirect table need not be aligned at all and is then
/// read as bytes (a volatile 16-byte array read compiles to 16 byte loads).
///
/// # Safety
/// `at..at + 16` must lie inside a guest mapping that stays mapped for the call.
#[inline]
pub unsafe fn read_desc_words(at: *const u8) -> (u64, u64) {
    let (lo, hi) = if (at as usize).is_multiple_of(8) {
        let words = at as *const u64;
        // SAFETY: the caller's range, 8-aligned.
        unsafe {
            (
                std::ptr::read_volatile(words),
                std::ptr::read_volatile(words.add(1)),
            )
        }
    } else {
        // SAFETY: the caller's range.
        let b: [u8; 16] = unsafe { std::ptr::read_volatile(at.cast()) };
        (
            u64::from_ne_bytes(b[..8].try_into().expect("8 bytes")),
            u64::from_ne_bytes(b[8..].try_into().expect("8 bytes")),
        )
    };
    (u64::from_le(lo), u64::from_le(hi))
}

/// Asks the CPU to bring the cache line at `at` in (a hint: it never faults).
#[inline]
pub fn prefetch_line(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch does not access memory architecturally; any address is allowed.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Copies guest bytes out of `segs`, skipping the first `skip` bytes, into `dst` until `dst` is
/// full or the segments end. Returns the bytes copied.
///
/// Every segment was checked against guest memory when it was made. The guest may write the
/// same bytes meanwhile; what we copy is then whatever the guest left, which is its problem,
/// never ours: nothing read here is used as an address or length without a later check.
#[inline]
pub fn copy_from_guest(segs: &[Segment], skip: usize, dst: &mut [u8]) -> usize {
    // SAFETY: `dst` is valid for `dst.len()` bytes of writes.
    unsafe { copy_from_guest_raw(segs, skip, dst.as_mut_ptr(), dst.len()) }
}

/// Appends guest bytes from `segs` (after the first `skip`) to `data`, up to `len` of them,
/// without zeroing the room first. Returns the bytes appended.
#[inline]
pub fn append_from_guest(segs: &[Segment], skip: usize, len: usize, data: &mut Vec<u8>) -> usize {
    data.reserve(len);
    let start = data.len();
    // SAFETY: `reserve` made room for `len` bytes after `start`; exactly the bytes written
    // (`n <= len`) become part of the vector.
    unsafe {
        let n = copy_from_guest_raw(segs, skip, data.as_mut_ptr().add(start), len);
        data.set_len(start + n);
        n
    }
}

/// Bytes at the start of a frame that [`split_from_guest`] copies apart from the rest.
const FIRST: usize = 64;

/// Reads one segment as a fixed-size head (into `head`) and the rest (appended to `data`),
/// the common TX chain's shape: a virtio-net header and a frame in one buffer. Reads as much
/// of each as the segment holds.
#[inline]
pub fn split_from_guest<const N: usize>(seg: Segment, head: &mut [u8; N], data: &mut Vec<u8>) {
    let len = seg.len as usize;
    if len < N {
        copy_from_guest(&[seg], 0, head);
        return;
    }
    let rest = len - N;
    data.reserve(rest);
    let start = data.len();
    // SAFETY: `seg` lies inside a live mapping (see `GuestRegions`) and holds `N + rest`
    // bytes; `reserve` made room for `rest` bytes after `start`, all of which are written.
    unsafe {
        *head = std::ptr::read_unaligned(seg.host as *const [u8; N]);
        let (src, dst) = (seg.host.add(N), data.as_mut_ptr().add(start));
        if rest >= FIRST {
            // The frame's first bytes in fixed-size pieces, aligned to the frame: the headers
            // parsed next are read from them (see `FrameMeta`'s IPv4 fast path).
            std::ptr::write_unaligned(
                dst as *mut [u8; FIRST],
                std::ptr::read_unaligned(src as *const [u8; FIRST]),
            );
            copy_chunks(src.add(FIRST), dst.add(FIRST), rest - FIRST);
        } else {
            std::ptr::copy_nonoverlapping(src, dst, rest);
        }
        data.set_len(start + rest);
    }
}

/// Copies `len` bytes from `src` to `dst` in 64-byte chunks of 16-byte moves, the rest with
/// `copy_nonoverlapping`: the TX copy of a frame out of guest memory.
///
/// Why not `copy_nonoverlapping` (glibc's memcpy) for all of it: on the AMD Zen 1 machines
/// vnic is measured on, glibc picks 32-byte AVX2 moves with the stores aligned, so with a
/// 64-aligned source (DPDK's mbufs) and a 16-aligned destination (our frame buffers) every
/// other load straddles two cache lines. Copying 1488 bytes out of an L3-resident buffer took
/// 110 ns with glibc's and 98 ns with these, whatever the destination's alignment; at 1500 B
/// the sink ran 3-4 % faster in its fast spells. (RX, into guest buffers, measured no better.)
///
/// SAFETY: as `copy_nonoverlapping`.
#[inline]
unsafe fn copy_chunks(src: *const u8, dst: *mut u8, len: usize) {
    let mut at = 0;
    // Elsewhere the chunks are left to `copy_nonoverlapping` below, with the rest.
    #[cfg(target_arch = "x86_64")]
    while at + 64 <= len {
        unsafe {
            use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_storeu_si128};
            let s = src.add(at) as *const __m128i;
            let d = dst.add(at) as *mut __m128i;
            let (a, b, c, e) = (
                _mm_loadu_si128(s),
                _mm_loadu_si128(s.add(1)),
                _mm_loadu_si128(s.add(2)),
                _mm_loadu_si128(s.add(3)),
            );
            _mm_storeu_si128(d, a);
            _mm_storeu_si128(d.add(1), b);
            _mm_storeu_si128(d.add(2), c);
            _mm_storeu_si128(d.add(3), e);
        }
        at += 64;
    }
    unsafe { std::ptr::copy_nonoverlapping(src.add(at), dst.add(at), len - at) };
}

/// SAFETY: `dst` must be valid for `cap` bytes of writes.
#[inline]
unsafe fn copy_from_guest_raw(
    segs: &[Segment],
    mut skip: usize,
    dst: *mut u8,
    cap: usize,
) -> usize {
    let mut done = 0;
    for s in segs {
        let len = s.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(cap - done);
        // SAFETY: `s` lies inside a live mapping (see `GuestRegions`) and `skip + n <= len`;
        // `dst + done .. + n` is within `cap`; guest memory never overlaps our heap.
        unsafe { std::ptr::copy_nonoverlapping(s.host.add(skip), dst.add(done), n) };
        done += n;
        skip = 0;
        if done == cap {
            break;
        }
    }
    done
}

/// Copies `parts` one after another into the guest segments `segs`, from their start.
/// Returns the bytes written (less than the parts' total if the segments are too short).
#[inline]
pub fn copy_to_guest(segs: &[Segment], parts: &[&[u8]]) -> usize {
    if let [s] = segs {
        // The usual RX chain: one buffer, large enough for everything.
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total <= s.len as usize {
            let mut at = s.host;
            for part in parts {
                // SAFETY: as below; the parts fit in `s` (checked above).
                unsafe {
                    std::ptr::copy_nonoverlapping(part.as_ptr(), at, part.len());
                    at = at.add(part.len());
                }
            }
            return total;
        }
    }
    let mut written = 0;
    let mut seg = 0;
    let mut off = 0usize;
    for part in parts {
        let mut src = *part;
        while !src.is_empty() {
            let Some(s) = segs.get(seg) else {
                return written;
            };
            let room = s.len as usize - off;
            if room == 0 {
                seg += 1;
                off = 0;
                continue;
            }
            let n = room.min(src.len());
            // SAFETY: as in `copy_from_guest`; `off + n <= s.len`.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), s.host.add(off), n) };
            off += n;
            written += n;
            src = &src[n..];
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn two_regions() -> GuestRegions {
        let mem = GuestMem::from_ranges(&[
            (GuestAddress(0x1000), 0x1000),
            (GuestAddress(0x2000), 0x1000),
            (GuestAddress(0x10000), 0x1000),
        ])
        .unwrap();
        GuestRegions::new(Arc::new(mem))
    }

    #[test]
    fn ranges_inside_one_region_only() {
        let r = two_regions();
        assert!(r.host_range(0x1000, 0x1000).is_some());
        assert!(r.host_range(0x1800, 0x1000).is_none(), "crosses regions");
        assert!(r.host_range(0x3000, 1).is_none());
        assert!(r.host_range(u64::MAX, 2).is_none(), "wraps");
        assert!(r.host_range(0xfff, 1).is_none());
    }

    #[test]
    fn segments_split_at_adjacent_regions_and_refuse_holes() {
        let r = two_regions();
        let mut out = Vec::new();
        assert!(r.push_segments(0x1ff0, 0x20, &mut out));
        assert_eq!(out.iter().map(|s| s.len).collect::<Vec<_>>(), [0x10, 0x10]);
        out.clear();
        assert!(
            !r.push_segments(0x2ff0, 0x20, &mut out),
            "hole after 0x3000"
        );
        assert!(out.is_empty());
        assert!(
            r.push_segments(0x5000, 0, &mut out),
            "empty is fine anywhere"
        );
    }

    #[test]
    fn copies_round_trip_across_segments() {
        let r = two_regions();
        let mut segs = Vec::new();
        assert!(r.push_segments(0x1ffa, 12, &mut segs));
        assert!(r.push_segments(0x10000, 5, &mut segs));
        let n = copy_to_guest(&segs, &[b"hello", b" world, again"]);
        assert_eq!(n, 17, "room for 17 of 18 bytes");
        let mut back = [0u8; 11];
        assert_eq!(copy_from_guest(&segs, 6, &mut back), 11);
        assert_eq!(&back, b"world, agai");
    }

    #[test]
    fn split_reads_head_and_rest_of_every_length() {
        let r = two_regions();
        let bytes: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        let mut segs = Vec::new();
        assert!(r.push_segments(0x1100, bytes.len() as u32, &mut segs));
        copy_to_guest(&segs, &[&bytes]);
        // Around the fixed-size first piece (64 bytes after the head) and well past it.
        for len in (0..100).chain([150, 299, 300]) {
            let seg = Segment {
                host: segs[0].host,
                len: len as u32,
            };
            let mut head = [0xaau8; 12];
            let mut data = vec![7u8; 3];
            split_from_guest(seg, &mut head, &mut data);
            if len < 12 {
                assert_eq!(&head[..len], &bytes[..len], "len {len}");
                assert_eq!(data, [7, 7, 7], "len {len}: nothing appended");
            } else {
                assert_eq!(head, bytes[..12], "len {len}");
                assert_eq!(
                    data[..3],
                    [7, 7, 7],
                    "len {len}: appended after what was there"
                );
                assert_eq!(data[3..], bytes[12..len], "len {len}");
            }
        }
    }
}
