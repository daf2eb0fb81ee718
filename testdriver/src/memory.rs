//! Guest memory for the test driver: one memfd-backed shared mapping plus a bump allocator.
//!
//! The mapping is what a VMM would hand to a vhost-user backend with `SET_MEM_TABLE`: the
//! memfd is sent over the socket and the backend maps it itself. Guest-physical addresses
//! (GPAs) start at `gpa_base`; the frontend's own virtual address of a GPA is
//! `host_base() + (gpa - gpa_base)`.
//!
//! All accessors take `&self`: the memory is shared with the device, which writes to it
//! concurrently, so nothing here hands out Rust references into it (except the atomics used for
//! ring indices). Bulk data is copied with `ptr::copy_nonoverlapping`, ring fields with volatile
//! or atomic accesses.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// The first page is never handed out by the allocator, so that GPA `gpa_base` (often 0) never
/// holds a ring: `virtio_queue::Queue` treats an avail ring at GPA 0 as "not configured".
const RESERVED_PREFIX: usize = 4096;

/// A memfd-backed, shared, read-write mapping that plays the guest's RAM.
pub struct GuestRam {
    file: File,
    host: *mut u8,
    size: usize,
    gpa_base: u64,
    /// Bump pointer: offset of the first free byte.
    next: AtomicUsize,
}

// SAFETY: the mapping lives as long as the struct; all accesses go through raw pointers with
// bounds checks, and concurrent access by the device is the whole point of shared guest memory.
unsafe impl Send for GuestRam {}
// SAFETY: see above; the allocator is an atomic bump pointer.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// Creates `size` bytes of zeroed shared memory whose guest-physical addresses start at
    /// `gpa_base` (page-aligned). `size` is rounded up to a whole page.
    pub fn new(size: usize, gpa_base: u64) -> io::Result<GuestRam> {
        let page = 4096usize;
        let size = size
            .checked_add(page - 1)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "memory size overflow"))?
            & !(page - 1);
        if size <= RESERVED_PREFIX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "guest memory must be larger than one page",
            ));
        }
        if !gpa_base.is_multiple_of(page as u64) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "gpa_base must be page-aligned",
            ));
        }
        if gpa_base.checked_add(size as u64).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "gpa_base + mem_size overflows",
            ));
        }
        // SAFETY: plain syscall with a valid NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"vnic-testdriver-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a freshly created descriptor we own.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size as u64)?;
        // SAFETY: mapping a file we own, with a size we just set; the result is checked.
        let host = unsafe {
            libc::mmap(
                ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if host == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(GuestRam {
            file,
            host: host as *mut u8,
            size,
            gpa_base,
            next: AtomicUsize::new(RESERVED_PREFIX),
        })
    }

    /// Size of the memory in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Guest-physical address of the first byte.
    pub fn gpa_base(&self) -> u64 {
        self.gpa_base
    }

    /// The frontend's (this process's) virtual address of the first byte, as sent in
    /// `SET_MEM_TABLE`'s `userspace_addr` and used for `SET_VRING_ADDR`.
    pub fn host_base(&self) -> u64 {
        self.host as u64
    }

    /// The memfd backing the memory.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Translates a guest-physical address into the frontend's virtual address space.
    pub fn gpa_to_host(&self, gpa: u64) -> Option<u64> {
        self.offset(gpa, 0).map(|off| self.host as u64 + off as u64)
    }

    /// Bytes still available to [`GuestRam::alloc`].
    pub fn remaining(&self) -> usize {
        self.size - self.next.load(Ordering::Relaxed).min(self.size)
    }

    /// Allocates `len` bytes aligned to `align` (a power of two, at least 1) and returns their
    /// guest-physical address, or `None` when memory is exhausted. Memory is never freed.
    pub fn alloc(&self, len: usize, align: usize) -> Option<u64> {
        let align = align.max(1);
        assert!(align.is_power_of_two(), "alignment must be a power of two");
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let gpa = self.gpa_base.checked_add(cur as u64)?;
            let aligned = gpa.checked_add(align as u64 - 1)? & !(align as u64 - 1);
            let start = (aligned - self.gpa_base) as usize;
            let end = start.checked_add(len.max(1))?;
            if end > self.size {
                return None;
            }
            match self
                .next
                .compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(aligned),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Offset of `gpa..gpa+len` inside the mapping, if it is entirely inside.
    fn offset(&self, gpa: u64, len: usize) -> Option<usize> {
        let off = gpa.checked_sub(self.gpa_base)?;
        let end = off.checked_add(len as u64)?;
        if end > self.size as u64 {
            return None;
        }
        Some(off as usize)
    }

    /// Raw pointer to `gpa` after checking that `len` bytes from there are inside the memory.
    pub fn ptr(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        // SAFETY: offset is within the mapping.
        self.offset(gpa, len)
            .map(|off| unsafe { self.host.add(off) })
    }

    fn ptr_or_panic(&self, gpa: u64, len: usize) -> *mut u8 {
        self.ptr(gpa, len).unwrap_or_else(|| {
            panic!(
                "guest memory access out of range: gpa {gpa:#x} len {len} (memory is {:#x}..{:#x})",
                self.gpa_base,
                self.gpa_base + self.size as u64
            )
        })
    }

    /// Copies `data` into guest memory at `gpa`. Panics if the range is outside the memory.
    pub fn write(&self, gpa: u64, data: &[u8]) {
        let p = self.ptr_or_panic(gpa, data.len());
        // SAFETY: bounds checked; `data` cannot overlap the mapping's pages we own exclusively.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
    }

    /// Copies guest memory at `gpa` into `buf`. Panics if the range is outside the memory.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) {
        let p = self.ptr_or_panic(gpa, buf.len());
        // SAFETY: bounds checked.
        unsafe { ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
    }

    /// Appends `len` bytes of guest memory at `gpa` to `out`. Panics if out of range.
    pub fn read_into_vec(&self, gpa: u64, len: usize, out: &mut Vec<u8>) {
        let p = self.ptr_or_panic(gpa, len);
        out.reserve(len);
        let old = out.len();
        // SAFETY: bounds checked; we reserved `len` bytes and set the length after the copy.
        unsafe {
            ptr::copy_nonoverlapping(p, out.as_mut_ptr().add(old), len);
            out.set_len(old + len);
        }
    }

    /// Reads `len` bytes at `gpa` into a new vector. Panics if out of range.
    pub fn read_vec(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        self.read_into_vec(gpa, len, &mut v);
        v
    }

    /// Fills `len` bytes at `gpa` with `byte`. Panics if out of range.
    pub fn fill(&self, gpa: u64, len: usize, byte: u8) {
        let p = self.ptr_or_panic(gpa, len);
        // SAFETY: bounds checked.
        unsafe { ptr::write_bytes(p, byte, len) };
    }

    /// Stores a plain value (volatile when aligned). Panics if out of range.
    pub(crate) fn write_obj<T: Copy>(&self, gpa: u64, val: T) {
        let p = self.ptr_or_panic(gpa, std::mem::size_of::<T>()) as *mut T;
        // SAFETY: bounds checked; misaligned addresses (hostile layouts) use an unaligned write.
        unsafe {
            if p.is_aligned() {
                ptr::write_volatile(p, val)
            } else {
                ptr::write_unaligned(p, val)
            }
        }
    }

    /// Loads a plain value (volatile when aligned). Panics if out of range.
    pub(crate) fn read_obj<T: Copy>(&self, gpa: u64) -> T {
        let p = self.ptr_or_panic(gpa, std::mem::size_of::<T>()) as *const T;
        // SAFETY: bounds checked; see `write_obj`.
        unsafe {
            if p.is_aligned() {
                ptr::read_volatile(p)
            } else {
                ptr::read_unaligned(p)
            }
        }
    }

    /// The 16-bit ring index at `gpa` as an atomic. Panics if out of range or misaligned.
    pub(crate) fn atomic_u16(&self, gpa: u64) -> &AtomicU16 {
        let p = self.ptr_or_panic(gpa, 2);
        assert!(
            (p as usize).is_multiple_of(2),
            "misaligned ring index at {gpa:#x}"
        );
        // SAFETY: in bounds, aligned, and the mapping outlives `&self`.
        unsafe { &*(p as *const AtomicU16) }
    }

    /// Maps the same memfd a second time as a `vm_memory::GuestMemoryMmap` at `gpa_base`, the way
    /// a vhost-user backend does after `SET_MEM_TABLE`. Used by tests that run the device side
    /// (`virtio_queue::Queue`) over the driver's rings.
    pub fn backend_mapping(&self) -> io::Result<GuestMemoryMmap> {
        let file = self.file.try_clone()?;
        GuestMemoryMmap::from_ranges_with_files(&[(
            GuestAddress(self.gpa_base),
            self.size,
            Some(FileOffset::new(file, 0)),
        )])
        .map_err(io::Error::other)
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.host as *mut libc::c_void, self.size) };
    }
}

impl std::fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestRam")
            .field("gpa_base", &format_args!("{:#x}", self.gpa_base))
            .field("size", &self.size)
            .field("host_base", &format_args!("{:#x}", self.host as u64))
            .field("used", &self.next.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn alloc_is_aligned_and_bounded() {
        let ram = GuestRam::new(64 * 1024, 0x1000_0000).unwrap();
        let a = ram.alloc(10, 1).unwrap();
        assert!(a >= 0x1000_0000 + RESERVED_PREFIX as u64);
        let b = ram.alloc(100, 4096).unwrap();
        assert_eq!(b % 4096, 0);
        assert!(b >= a + 10);
        assert!(ram.alloc(1 << 20, 8).is_none());
        let rest = ram.remaining();
        assert!(ram.alloc(rest, 1).is_some());
        assert!(ram.alloc(1, 1).is_none());
    }

    #[test]
    fn backend_mapping_sees_driver_writes() {
        let ram = GuestRam::new(1 << 20, 0x4000_0000).unwrap();
        let gpa = ram.alloc(64, 64).unwrap();
        ram.write(gpa, b"hello");
        let mem = ram.backend_mapping().unwrap();
        let mut buf = [0u8; 5];
        mem.read_slice(&mut buf, GuestAddress(gpa)).unwrap();
        assert_eq!(&buf, b"hello");
        mem.write_slice(b"world", GuestAddress(gpa + 8)).unwrap();
        assert_eq!(ram.read_vec(gpa + 8, 5), b"world");
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(
            ram.gpa_to_host(gpa),
            Some(ram.host_base() + (gpa - 0x4000_0000))
        );
        assert_eq!(ram.gpa_to_host(0x3fff_ffff), None);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn out_of_range_write_panics() {
        let ram = GuestRam::new(8192, 0).unwrap();
        ram.write(8190, b"abcd");
    }
}
