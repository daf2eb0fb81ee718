//! TCP header (RFC 9293), options included.

use super::{be16, be32, set_be16, set_be32, Error, Result};

/// The header without options.
pub const MIN_HEADER_LEN: usize = 20;
/// Offset of the checksum field.
pub const CHECKSUM_OFFSET: usize = 16;

/// Flags (byte 13 of the header).
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
pub const ECE: u8 = 0x40;
pub const CWR: u8 = 0x80;

/// Option kinds.
pub const OPT_END: u8 = 0;
pub const OPT_NOP: u8 = 1;
pub const OPT_TIMESTAMP: u8 = 8;

view! {
    /// A TCP segment, from its header on.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view over a buffer that holds the whole header, options included, with a data offset
    /// of at least 5.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let p = Packet { buffer };
        if p.header_len() < MIN_HEADER_LEN {
            return Err(Error::Malformed);
        }
        if p.buffer.as_ref().len() < p.header_len() {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 0)
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }

    #[inline]
    pub fn seq_number(&self) -> u32 {
        be32(self.buffer.as_ref(), 4)
    }

    #[inline]
    pub fn ack_number(&self) -> u32 {
        be32(self.buffer.as_ref(), 8)
    }

    /// Data offset in 32-bit words.
    #[inline]
    pub fn data_offset(&self) -> u8 {
        self.buffer.as_ref()[12] >> 4
    }

    /// Header length in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        self.data_offset() as usize * 4
    }

    /// The four bits after the data offset (reserved; the lowest is AE, accurate ECN).
    #[inline]
    pub fn reserved_bits(&self) -> u8 {
        self.buffer.as_ref()[12] & 0x0f
    }

    /// FIN..CWR (byte 13).
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[13]
    }

    #[inline]
    pub fn window_len(&self) -> u16 {
        be16(self.buffer.as_ref(), 14)
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), CHECKSUM_OFFSET)
    }

    #[inline]
    pub fn urgent_at(&self) -> u16 {
        be16(self.buffer.as_ref(), 18)
    }

    /// The options (and their padding).
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[MIN_HEADER_LEN..self.header_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_seq_number(&mut self, seq: u32) {
        set_be32(self.buffer.as_mut(), 4, seq);
    }

    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[13] = flags;
    }

    #[inline]
    pub fn set_checksum(&mut self, csum: u16) {
        set_be16(self.buffer.as_mut(), CHECKSUM_OFFSET, csum);
    }

    /// Writes a 32-bit field at `at` bytes into the header (an option's value).
    #[inline]
    pub fn set_u32_at(&mut self, at: usize, v: u32) {
        set_be32(self.buffer.as_mut(), at, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Vec<u8> {
        let mut h = vec![
            0x04,
            0xd2,
            0x00,
            0x50,
            0,
            0,
            0,
            7,
            0,
            0,
            0,
            9,
            0x60,
            ACK | PSH,
        ];
        h.extend_from_slice(&[0xff, 0xf0, 0xab, 0xcd, 0, 3, 1, 1, 1, 0]);
        h
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
        bad[12] = 0x40;
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::Malformed);
        assert!(Packet::new_checked(&h[..]).is_ok());
    }

    #[test]
    fn header_length_bounds() {
        let mut h = header();
        h[12] = 0x80; // 32 bytes
        h.resize(32, 1);
        assert_eq!(Packet::new_checked(&h[..]).unwrap().header_len(), 32);
        assert_eq!(Packet::new_checked(&h[..31]).unwrap_err(), Error::Truncated);
        h[12] = 0xf0; // 60 bytes claimed
        assert_eq!(Packet::new_checked(&h[..]).unwrap_err(), Error::Truncated);
    }

    #[test]
    fn accessors_and_setters() {
        let mut h = header();
        let p = Packet::new_checked(&h[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (1234, 80));
        assert_eq!((p.seq_number(), p.ack_number()), (7, 9));
        assert_eq!(
            (p.data_offset(), p.header_len(), p.flags()),
            (6, 24, ACK | PSH)
        );
        assert_eq!(
            (p.window_len(), p.checksum(), p.urgent_at()),
            (0xfff0, 0xabcd, 3)
        );
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        let mut p = Packet::new_checked(&mut h[..]).unwrap();
        p.set_seq_number(0xdead_beef);
        p.set_flags(FIN);
        p.set_checksum(0x1234);
        p.set_u32_at(20, 0x0101_0101);
        assert_eq!(
            (p.seq_number(), p.flags(), p.checksum()),
            (0xdead_beef, FIN, 0x1234)
        );
        assert_eq!(p.options(), &[1, 1, 1, 1]);
    }
}
