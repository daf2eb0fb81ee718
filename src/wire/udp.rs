//! UDP header (RFC 768).

use super::{be16, set_be16, Error, Result};

pub const HEADER_LEN: usize = 8;
/// Offset of the checksum field.
pub const CHECKSUM_OFFSET: usize = 6;

view! {
    /// A UDP datagram, from its header on.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view over a buffer that holds the header (the length field is not checked).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Packet { buffer })
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 0)
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }

    /// Header plus payload, as the header says.
    #[inline]
    pub fn length(&self) -> u16 {
        be16(self.buffer.as_ref(), 4)
    }

    /// 0 means "no checksum" (IPv4 only).
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), CHECKSUM_OFFSET)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_length(&mut self, len: u16) {
        set_be16(self.buffer.as_mut(), 4, len);
    }

    #[inline]
    pub fn set_checksum(&mut self, csum: u16) {
        set_be16(self.buffer.as_mut(), CHECKSUM_OFFSET, csum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_constructor_accessors_and_setters() {
        let mut d = vec![0x13, 0x88, 0x00, 0x35, 0x00, 0x0c, 0xbe, 0xef, 1, 2, 3, 4];
        assert_eq!(Packet::new_checked(&d[..7]).unwrap_err(), Error::Truncated);
        let p = Packet::new_checked(&d[..]).unwrap();
        assert_eq!(
            (p.src_port(), p.dst_port(), p.length(), p.checksum()),
            (5000, 53, 12, 0xbeef)
        );
        let mut p = Packet::new_checked(&mut d[..]).unwrap();
        p.set_length(9);
        p.set_checksum(0);
        assert_eq!((p.length(), p.checksum()), (9, 0));
    }
}
