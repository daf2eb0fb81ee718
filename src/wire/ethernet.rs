//! Ethernet II header and the 802.1Q / 802.1ad VLAN tags after it.

use super::{array, be16, set_be16, Error, Result};

/// Destination MAC, source MAC, EtherType.
pub const HEADER_LEN: usize = 14;
/// One VLAN tag: TPID (where the EtherType was) and TCI, then the next EtherType.
pub const VLAN_TAG_LEN: usize = 4;
/// Tags walked through: one 802.1Q tag or a QinQ pair.
pub const MAX_VLAN_TAGS: usize = 2;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// 802.1Q.
pub const TPID_8021Q: u16 = 0x8100;
/// 802.1ad (QinQ outer tag).
pub const TPID_8021AD: u16 = 0x88a8;
/// The pre-standard QinQ TPID.
pub const TPID_QINQ: u16 = 0x9100;

/// True for an EtherType that introduces a VLAN tag.
#[inline]
pub fn is_vlan_tpid(ethertype: u16) -> bool {
    matches!(ethertype, TPID_8021Q | TPID_8021AD | TPID_QINQ)
}

view! {
    /// An Ethernet frame, from the destination MAC on.
    Frame
}

/// The VLAN tags of a frame and what follows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VlanTags {
    /// Tags found (0 to [`MAX_VLAN_TAGS`]).
    pub count: u8,
    /// Their TCIs, outermost first (priority, DEI, VLAN ID).
    pub tci: [u16; MAX_VLAN_TAGS],
    /// The EtherType after the last tag.
    pub ethertype: u16,
    /// Where the L3 header starts.
    pub payload_offset: usize,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// A view over a buffer that holds at least the Ethernet header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Frame { buffer })
    }

    #[inline]
    pub fn dst_addr(&self) -> [u8; 6] {
        array(self.buffer.as_ref(), 0)
    }

    #[inline]
    pub fn src_addr(&self) -> [u8; 6] {
        array(self.buffer.as_ref(), 6)
    }

    /// The EtherType field right after the addresses (a TPID if the frame is tagged).
    #[inline]
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), 12)
    }

    /// Walks up to [`MAX_VLAN_TAGS`] VLAN tags (802.1Q, 802.1ad, 0x9100). `Truncated` if a tag
    /// runs past the buffer, `Unsupported` for a third tag.
    #[inline]
    pub fn vlan_tags(&self) -> Result<VlanTags> {
        let b = self.buffer.as_ref();
        let mut tags = VlanTags::default();
        let mut at = 12;
        loop {
            let ethertype = be16(b, at);
            if !is_vlan_tpid(ethertype) {
                tags.ethertype = ethertype;
                tags.payload_offset = at + 2;
                return Ok(tags);
            }
            if tags.count as usize == MAX_VLAN_TAGS {
                return Err(Error::Unsupported);
            }
            // TPID, TCI, then the next EtherType.
            if b.len() < at + 2 + VLAN_TAG_LEN {
                return Err(Error::Truncated);
            }
            tags.tci[tags.count as usize] = be16(b, at + 2);
            tags.count += 1;
            at += VLAN_TAG_LEN;
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn set_dst_addr(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[0..6].copy_from_slice(&mac);
    }

    pub fn set_src_addr(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[6..12].copy_from_slice(&mac);
    }

    pub fn set_ethertype(&mut self, ethertype: u16) {
        set_be16(self.buffer.as_mut(), 12, ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(types: &[u16]) -> Vec<u8> {
        let mut v = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        for (i, t) in types.iter().enumerate() {
            v.extend_from_slice(&t.to_be_bytes());
            if i + 1 < types.len() {
                v.extend_from_slice(&(100 + i as u16).to_be_bytes());
            }
        }
        v.extend_from_slice(&[0; 20]);
        v
    }

    #[test]
    fn checked_constructor_and_accessors() {
        assert_eq!(
            Frame::new_checked(&[0u8; 13][..]).unwrap_err(),
            Error::Truncated
        );
        let data = frame(&[ETHERTYPE_IPV4]);
        let f = Frame::new_checked(&data[..]).unwrap();
        assert_eq!(f.dst_addr(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(f.src_addr(), [2, 0, 0, 0, 0, 2]);
        assert_eq!(f.ethertype(), ETHERTYPE_IPV4);
        let mut owned = data.clone();
        let mut f = Frame::new_checked(&mut owned[..]).unwrap();
        f.set_dst_addr([1; 6]);
        f.set_src_addr([3; 6]);
        f.set_ethertype(ETHERTYPE_IPV6);
        assert_eq!(
            (f.dst_addr(), f.src_addr(), f.ethertype()),
            ([1; 6], [3; 6], ETHERTYPE_IPV6)
        );
    }

    #[test]
    fn vlan_walk() {
        let tags = |types: &[u16]| Frame::new_checked(frame(types)).unwrap().vlan_tags();
        let t = tags(&[ETHERTYPE_IPV6]).unwrap();
        assert_eq!(
            (t.count, t.ethertype, t.payload_offset),
            (0, ETHERTYPE_IPV6, 14)
        );
        let t = tags(&[TPID_8021Q, ETHERTYPE_IPV4]).unwrap();
        assert_eq!(
            (t.count, t.tci[0], t.ethertype, t.payload_offset),
            (1, 100, ETHERTYPE_IPV4, 18)
        );
        let t = tags(&[TPID_8021AD, TPID_8021Q, ETHERTYPE_ARP]).unwrap();
        assert_eq!(
            (t.count, t.tci, t.ethertype, t.payload_offset),
            (2, [100, 101], ETHERTYPE_ARP, 22)
        );
        let t = tags(&[TPID_QINQ, ETHERTYPE_IPV4]).unwrap();
        assert_eq!(t.count, 1);
        assert_eq!(
            tags(&[TPID_8021AD, TPID_8021Q, TPID_8021Q, ETHERTYPE_IPV4]).unwrap_err(),
            Error::Unsupported
        );
        let mut short = frame(&[TPID_8021Q, ETHERTYPE_IPV4]);
        short.truncate(17);
        assert_eq!(
            Frame::new_checked(short).unwrap().vlan_tags().unwrap_err(),
            Error::Truncated
        );
    }
}
