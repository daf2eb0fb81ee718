//! Typed, zero-copy views of the headers vnic reads and writes: Ethernet with its VLAN tags,
//! IPv4, IPv6 with its extension headers, TCP, UDP, Homa, Open-MX, and the virtio-net header.
//!
//! Each view wraps a buffer (`Packet<T: AsRef<[u8]>>`, setters where `T: AsMut<[u8]>`) that
//! starts at its header. `new_checked` refuses a buffer too short for the header or with a
//! header length field that does not fit; after that every accessor reads the field where it
//! is, big-endian, without copying the header anywhere.
//!
//! Why our own rather than etherparse's slices (etherparse stays, as the independent oracle of
//! the tests): these run on the datapath for every frame, so they must be zero-copy, allocate
//! nothing, decode only the fields that are asked for (etherparse's lax slicer walks and
//! validates every layer, and was 23% of vnic's CPU per 64-byte frame), and let the offload
//! engines write fields in place through the same names they read them by, instead of raw
//! offsets spread over the engines. The style follows smoltcp's `wire` module.

/// Declares a view type `$name<T: AsRef<[u8]>>` over a buffer that starts at its header, with
/// `new_unchecked` and `into_inner`; each header's file adds `new_checked` and the fields.
macro_rules! view {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// A view without any check: accessors panic on a buffer shorter than the header.
            #[inline]
            pub fn new_unchecked(buffer: T) -> Self {
                $name { buffer }
            }

            /// The buffer the view wraps.
            pub fn into_inner(self) -> T {
                self.buffer
            }
        }
    };
}

pub mod ethernet;
pub mod homa;
pub mod ipv4;
pub mod ipv6;
pub mod openmx;
pub mod tcp;
pub mod udp;
pub mod virtio_net;

/// Why a view could not be made over a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The buffer ends before the header (or a header it names) does.
    Truncated,
    /// A field makes the header impossible: wrong version, a length below the minimum, a
    /// hop-by-hop header that is not first...
    Malformed,
    /// Well-formed but beyond what vnic walks (a third VLAN tag, too many extension headers).
    Unsupported,
}

pub type Result<T> = core::result::Result<T, Error>;

/// The IP version of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

/// IP protocol numbers (IPv4 protocol, IPv6 next header).
pub mod ip {
    pub const HOP_BY_HOP: u8 = 0;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTH: u8 = 51;
    pub const DEST_OPTIONS: u8 = 60;
    /// Homa (IANA 2024). Its packets look like TCP to a GSO engine and must not be treated as such.
    pub const HOMA: u8 = 146;
}

#[inline(always)]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline(always)]
pub(crate) fn set_be16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline(always)]
pub(crate) fn set_be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// `N` bytes at `at` as an array.
#[inline(always)]
pub(crate) fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b[at..at + N].try_into().unwrap()
}
