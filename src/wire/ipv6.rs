//! IPv6 header (RFC 8200) and a walker over its extension headers: hop-by-hop, routing,
//! fragment, destination options and AH (RFC 4302).

use super::{array, be16, be32, ip, set_be16, Error, Result};

pub const HEADER_LEN: usize = 40;
/// Extension headers walked at most; a packet with more is not looked into.
pub const MAX_EXT_HEADERS: usize = 16;

view! {
    /// An IPv6 packet, from its header on.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view over a buffer that holds the fixed header of a version 6 packet.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let p = Packet { buffer };
        if p.version() != 6 {
            return Err(Error::Malformed);
        }
        Ok(p)
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (be16(self.buffer.as_ref(), 0) >> 4) as u8
    }

    #[inline]
    pub fn flow_label(&self) -> u32 {
        be32(self.buffer.as_ref(), 0) & 0x000f_ffff
    }

    #[inline]
    pub fn payload_len(&self) -> u16 {
        be16(self.buffer.as_ref(), 4)
    }

    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[6]
    }

    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[7]
    }

    #[inline]
    pub fn src_addr(&self) -> [u8; 16] {
        array(self.buffer.as_ref(), 8)
    }

    #[inline]
    pub fn dst_addr(&self) -> [u8; 16] {
        array(self.buffer.as_ref(), 24)
    }

    /// What follows the fixed header: `payload_len` bytes when they fit in the buffer, else
    /// (a payload length of 0, as jumbograms have, or a truncated packet) the rest of it.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let rest = &self.buffer.as_ref()[HEADER_LEN..];
        let len = self.payload_len() as usize;
        if len != 0 && len <= rest.len() {
            &rest[..len]
        } else {
            rest
        }
    }

    /// The extension headers, from the start of [`Packet::payload`].
    #[inline]
    pub fn ext_headers(&self) -> ExtHeaders<'_> {
        ExtHeaders::new(self.payload(), self.next_header())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_payload_len(&mut self, len: u16) {
        set_be16(self.buffer.as_mut(), 4, len);
    }
}

/// True for the next-header values [`ExtHeaders`] walks through.
#[inline]
pub fn is_ext_header(next_header: u8) -> bool {
    matches!(
        next_header,
        ip::HOP_BY_HOP | ip::ROUTING | ip::FRAGMENT | ip::DEST_OPTIONS | ip::AUTH
    )
}

/// One extension header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtHeader<'a> {
    /// Which header this is (the next-header value that named it).
    pub kind: u8,
    /// Its offset in the walked buffer.
    pub offset: usize,
    /// Its bytes.
    pub data: &'a [u8],
}

impl ExtHeader<'_> {
    /// The header after this one.
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.data[0]
    }

    /// A fragment header that fragments (offset or M set): not an atomic fragment.
    #[inline]
    pub fn is_fragmenting(&self) -> bool {
        self.kind == ip::FRAGMENT && be16(self.data, 2) & 0xfff9 != 0
    }

    /// Routing header: its type.
    #[inline]
    pub fn routing_type(&self) -> u8 {
        self.data[2]
    }

    /// Routing header: segments left.
    #[inline]
    pub fn segments_left(&self) -> u8 {
        self.data[3]
    }

    /// Routing header: the offset within it of the final destination, which the TCP/UDP
    /// pseudo-header uses (RFC 8200 §8.1). Types whose address list vnic knows: 0 (the last
    /// address), 2 (the home address), 4 (SRH: Segment List[0] is the last segment, RFC 8754
    /// §2). None for other types or a list that does not fit.
    pub fn routing_final_destination(&self) -> Option<usize> {
        let addresses = self.data[1] as usize / 2;
        let offset = match self.routing_type() {
            0 if addresses > 0 => 8 + 16 * (addresses - 1),
            2 | 4 => 8,
            _ => return None,
        };
        (offset + 16 <= self.data.len()).then_some(offset)
    }
}

/// Walks the extension headers at the start of a buffer (an IPv6 payload). Yields each header,
/// or one error and then nothing: `Truncated` for a header that runs past the buffer,
/// `Malformed` for a hop-by-hop header that is not first or an AH with a zero length,
/// `Unsupported` past [`MAX_EXT_HEADERS`]. Stops at the first next-header value that is not an
/// extension header: then [`ExtHeaders::next_header`] is the upper-layer protocol and
/// [`ExtHeaders::offset`] where it starts.
#[derive(Clone, Debug)]
pub struct ExtHeaders<'a> {
    buf: &'a [u8],
    next_header: u8,
    offset: usize,
    count: usize,
    failed: bool,
}

impl<'a> ExtHeaders<'a> {
    pub fn new(buf: &'a [u8], first: u8) -> Self {
        ExtHeaders {
            buf,
            next_header: first,
            offset: 0,
            count: 0,
            failed: false,
        }
    }

    /// The next-header value after the headers walked so far.
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.next_header
    }

    /// The offset in the buffer after the headers walked so far.
    #[inline]
    pub fn offset(&self) -> usize {
        self.offset
    }

    fn header_len(&self, kind: u8, rest: &[u8]) -> Result<usize> {
        let len = match kind {
            ip::HOP_BY_HOP if self.count > 0 => return Err(Error::Malformed),
            ip::FRAGMENT => 8,
            ip::AUTH => {
                if rest.len() < 12 {
                    return Err(Error::Truncated);
                }
                if rest[1] == 0 {
                    return Err(Error::Malformed);
                }
                (rest[1] as usize + 2) * 4
            }
            // Hop-by-hop, routing, destination options: length in 8 octets, the first not
            // counted.
            _ => match rest.get(1) {
                Some(&l) => (l as usize + 1) * 8,
                None => return Err(Error::Truncated),
            },
        };
        if rest.len() < len {
            return Err(Error::Truncated);
        }
        Ok(len)
    }
}

impl<'a> Iterator for ExtHeaders<'a> {
    type Item = Result<ExtHeader<'a>>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let kind = self.next_header;
        if self.failed || !is_ext_header(kind) {
            return None;
        }
        let rest = &self.buf[self.offset..];
        let len = if self.count == MAX_EXT_HEADERS {
            Err(Error::Unsupported)
        } else {
            self.header_len(kind, rest)
        };
        let len = match len {
            Ok(len) => len,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        };
        let h = ExtHeader {
            kind,
            offset: self.offset,
            data: &rest[..len],
        };
        self.offset += len;
        self.count += 1;
        self.next_header = h.next_header();
        Some(Ok(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(next: u8, exts: &[u8], payload_len: u16) -> Vec<u8> {
        let mut v = vec![0x6a, 0xb1, 0x23, 0x45];
        v.extend_from_slice(&payload_len.to_be_bytes());
        v.extend_from_slice(&[next, 64]);
        v.extend_from_slice(&[0x20; 16]);
        v.extend_from_slice(&[0x30; 16]);
        v.extend_from_slice(exts);
        v
    }

    #[test]
    fn checked_constructor_and_accessors() {
        let mut p = packet(ip::UDP, &[0; 8], 8);
        assert_eq!(Packet::new_checked(&p[..39]).unwrap_err(), Error::Truncated);
        let mut bad = p.clone();
        bad[0] = 0x4a;
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::Malformed);
        let v = Packet::new_checked(&p[..]).unwrap();
        assert_eq!(
            (v.version(), v.traffic_class(), v.flow_label()),
            (6, 0xab, 0x12345)
        );
        assert_eq!(
            (v.payload_len(), v.next_header(), v.hop_limit()),
            (8, ip::UDP, 64)
        );
        assert_eq!((v.src_addr(), v.dst_addr()), ([0x20; 16], [0x30; 16]));
        assert_eq!(v.payload().len(), 8);
        let mut v = Packet::new_checked(&mut p[..]).unwrap();
        v.set_payload_len(0);
        assert_eq!(v.payload_len(), 0);
        p.extend_from_slice(&[0; 4]);
        let v = Packet::new_checked(&p[..]).unwrap();
        assert_eq!(
            v.payload().len(),
            12,
            "payload length 0: the rest of the buffer"
        );
    }

    #[test]
    fn extension_header_walk() {
        let mut exts = vec![ip::ROUTING, 0, 0, 0, 0, 0, 0, 0]; // hop-by-hop, 8 bytes
        exts.extend_from_slice(&[ip::FRAGMENT, 2, 4, 1]); // routing type 4, 1 segment left
        exts.extend_from_slice(&[0; 4]);
        exts.extend_from_slice(&[7; 16]);
        exts.extend_from_slice(&[ip::AUTH, 0, 0, 1, 0, 0, 0, 0]); // fragment, M set
        exts.extend_from_slice(&[ip::DEST_OPTIONS, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // AH 12
        exts.extend_from_slice(&[ip::TCP, 0, 0, 0, 0, 0, 0, 0]); // destination options
        let p = packet(ip::HOP_BY_HOP, &exts, exts.len() as u16);
        let v = Packet::new_checked(&p[..]).unwrap();
        let mut walk = v.ext_headers();
        let found: Vec<_> = walk.by_ref().map(|h| h.unwrap()).collect();
        let kinds: Vec<u8> = found.iter().map(|h| h.kind).collect();
        assert_eq!(
            kinds,
            [
                ip::HOP_BY_HOP,
                ip::ROUTING,
                ip::FRAGMENT,
                ip::AUTH,
                ip::DEST_OPTIONS
            ]
        );
        assert_eq!((walk.next_header(), walk.offset()), (ip::TCP, exts.len()));
        assert_eq!(found[1].routing_final_destination(), Some(8));
        assert_eq!(found[1].segments_left(), 1);
        assert!(found[2].is_fragmenting());
        // Truncated anywhere: one error, then nothing.
        for cut in [1, 9, 30, 40, 52, 58] {
            let p = packet(ip::HOP_BY_HOP, &exts[..cut], exts.len() as u16);
            let v = Packet::new_checked(&p[..]).unwrap();
            let mut walk = v.ext_headers();
            assert!(
                walk.by_ref().any(|h| h == Err(Error::Truncated)),
                "cut {cut}"
            );
            assert!(walk.next().is_none());
        }
        // Hop-by-hop not first; AH with length 0.
        let p = packet(
            ip::DEST_OPTIONS,
            &[0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0],
            0,
        );
        let v = Packet::new_checked(&p[..]).unwrap();
        assert_eq!(v.ext_headers().last(), Some(Err(Error::Malformed)));
        let p = packet(ip::AUTH, &[6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0);
        let v = Packet::new_checked(&p[..]).unwrap();
        assert_eq!(v.ext_headers().next(), Some(Err(Error::Malformed)));
        // Too many.
        let many: Vec<u8> = (0..20)
            .flat_map(|_| [ip::DEST_OPTIONS, 0, 0, 0, 0, 0, 0, 0])
            .collect();
        let p = packet(ip::DEST_OPTIONS, &many, 0);
        let v = Packet::new_checked(&p[..]).unwrap();
        assert_eq!(v.ext_headers().last(), Some(Err(Error::Unsupported)));
        // An atomic fragment does not fragment.
        let p = packet(ip::FRAGMENT, &[ip::UDP, 0, 0, 0, 0, 0, 0, 1], 0);
        let v = Packet::new_checked(&p[..]).unwrap();
        assert!(!v.ext_headers().next().unwrap().unwrap().is_fragmenting());
    }
}
