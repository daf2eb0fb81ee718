//! IPv4 header (RFC 791), options included.

use super::{array, be16, set_be16, Error, Result};

/// The header without options.
pub const MIN_HEADER_LEN: usize = 20;
/// "Don't fragment", in the byte at offset 6.
pub const FLAG_DF: u8 = 0x40;
/// "More fragments", in the byte at offset 6.
pub const FLAG_MF: u8 = 0x20;

view! {
    /// An IPv4 packet, from its header on.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view over a buffer that holds the whole header (options included) of a version 4
    /// packet with an IHL of at least 5. The total length field is not checked (see
    /// [`Packet::total_len`]).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let p = Packet { buffer };
        if p.version() != 4 || p.header_len() < MIN_HEADER_LEN {
            return Err(Error::Malformed);
        }
        if p.buffer.as_ref().len() < p.header_len() {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// Header length in 32-bit words.
    #[inline]
    pub fn ihl(&self) -> u8 {
        self.buffer.as_ref()[0] & 0x0f
    }

    /// Header length in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        self.ihl() as usize * 4
    }

    /// The type-of-service byte (DSCP and ECN).
    #[inline]
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    #[inline]
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }

    #[inline]
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), 4)
    }

    /// The three flag bits (reserved, DF, MF) in place: compare with [`FLAG_DF`]/[`FLAG_MF`].
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[6] & 0xe0
    }

    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.flags() & FLAG_DF != 0
    }

    #[inline]
    pub fn more_frags(&self) -> bool {
        self.flags() & FLAG_MF != 0
    }

    /// Fragment offset in units of 8 bytes.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        be16(self.buffer.as_ref(), 6) & 0x1fff
    }

    /// A fragment of a larger packet: MF set or a non-zero offset.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        be16(self.buffer.as_ref(), 6) & 0x3fff != 0
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[8]
    }

    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[9]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), 10)
    }

    #[inline]
    pub fn src_addr(&self) -> [u8; 4] {
        array(self.buffer.as_ref(), 12)
    }

    #[inline]
    pub fn dst_addr(&self) -> [u8; 4] {
        array(self.buffer.as_ref(), 16)
    }

    /// The header, options included.
    #[inline]
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_total_len(&mut self, len: u16) {
        set_be16(self.buffer.as_mut(), 2, len);
    }

    #[inline]
    pub fn set_ident(&mut self, id: u16) {
        set_be16(self.buffer.as_mut(), 4, id);
    }

    #[inline]
    pub fn set_checksum(&mut self, csum: u16) {
        set_be16(self.buffer.as_mut(), 10, csum);
    }

    /// The header, options included, to write (e.g. its checksum over it).
    #[inline]
    pub fn header_mut(&mut self) -> &mut [u8] {
        let len = self.header_len();
        &mut self.buffer.as_mut()[..len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Vec<u8> {
        vec![
            0x46,
            0xb8,
            0x00,
            0x30,
            0x12,
            0x34,
            0x40 | 0x01,
            0x02,
            64,
            6,
            0xab,
            0xcd,
            10,
            0,
            0,
            1,
            10,
            0,
            0,
            2,
            1,
            1,
            1,
            0,
        ]
    }

    #[test]
    fn checked_constructor_rejects_short_and_bad_headers() {
        let h = header();
        assert_eq!(Packet::new_checked(&h[..19]).unwrap_err(), Error::Truncated);
        assert_eq!(
            Packet::new_checked(&h[..23]).unwrap_err(),
            Error::Truncated,
            "options cut"
        );
        let mut bad = h.clone();
        bad[0] = 0x65;
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::Malformed);
        bad[0] = 0x44;
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::Malformed);
        assert!(Packet::new_checked(&h[..]).is_ok());
    }

    #[test]
    fn accessors_and_setters() {
        let mut h = header();
        let p = Packet::new_checked(&h[..]).unwrap();
        assert_eq!((p.version(), p.ihl(), p.header_len()), (4, 6, 24));
        assert_eq!((p.tos(), p.total_len(), p.ident()), (0xb8, 0x30, 0x1234));
        assert!(p.dont_frag() && !p.more_frags() && p.is_fragment());
        assert_eq!(p.frag_offset(), 0x102);
        assert_eq!((p.ttl(), p.protocol(), p.checksum()), (64, 6, 0xabcd));
        assert_eq!((p.src_addr(), p.dst_addr()), ([10, 0, 0, 1], [10, 0, 0, 2]));
        assert_eq!(p.header().len(), 24);
        let mut p = Packet::new_checked(&mut h[..]).unwrap();
        p.set_total_len(1500);
        p.set_ident(7);
        p.set_checksum(0x1111);
        assert_eq!((p.total_len(), p.ident(), p.checksum()), (1500, 7, 0x1111));
        assert_eq!(p.header_mut().len(), 24);
    }
}
