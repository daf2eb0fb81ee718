//! The Homa header (HomaModule, main branch), as a NIC sees it: the 28-byte common header every
//! packet starts with and the type-specific fields vnic classifies on. See
//! `shared/reference/homa-openmx-wire.md` for the layout.
//!
//! Homa is IP protocol 146, or TCP-shaped ("Homa over TCP": IP protocol 6 with the otherwise
//! impossible flags SYN|RST and the urgent pointer 0xb97d), with the same header either way:
//! ports where TCP has them, the sequence in TCP's, the type in the last byte of TCP's ack.

use super::{be16, be32, Error, Result};

/// Every Homa packet starts with this much.
pub const COMMON_LEN: usize = 28;
/// The full DATA header of a packet on the wire (with its `seg.offset`).
pub const DATA_HEADER_LEN: usize = 56;

/// The header a DATA segmentation job in Homa's native format replicates (`doff` 13): the DATA
/// header without `seg.offset`, which starts every chunk of the payload instead.
pub const NATIVE_GSO_HEADER_LEN: usize = DATA_HEADER_LEN - 4;
/// `seg.offset` of a DATA packet whose offset is its `sequence` (Homa over TCP, where the
/// segmenter advances the sequence as TCP's).
pub const SEG_OFFSET_FROM_SEQUENCE: u32 = u32::MAX;

/// The TCP flags byte of every HomaModule packet (SYN|RST: no real TCP segment has it).
pub const TCP_FLAGS: u8 = 0x06;
/// The TCP urgent pointer that marks Homa over TCP.
pub const TCP_URGENT: u16 = 0xb97d;

/// Packet types (byte 11).
pub mod kind {
    pub const DATA: u8 = 0x10;
    pub const GRANT: u8 = 0x11;
    pub const RESEND: u8 = 0x12;
    pub const RPC_UNKNOWN: u8 = 0x13;
    pub const BUSY: u8 = 0x14;
    pub const CUTOFFS: u8 = 0x15;
    pub const FREEZE: u8 = 0x16;
    pub const NEED_ACK: u8 = 0x17;
    pub const ACK: u8 = 0x18;
}

/// The header length of packet type `t` on the wire; None for a type Homa does not have.
pub fn header_len(t: u8) -> Option<usize> {
    Some(match t {
        kind::DATA => DATA_HEADER_LEN,
        kind::GRANT => 33,
        kind::RESEND => 37,
        kind::CUTOFFS => 62,
        kind::ACK => 80,
        kind::RPC_UNKNOWN | kind::BUSY | kind::FREEZE | kind::NEED_ACK => COMMON_LEN,
        _ => return None,
    })
}

view! {
    /// A Homa packet, from its header on.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view over a buffer that holds the whole header of a known packet type. A DATA packet
    /// whose header says 52 bytes (`doff` 13: a segmentation job in Homa's native format, each
    /// chunk carrying its own `seg.offset`) needs only those 52.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < COMMON_LEN {
            return Err(Error::Truncated);
        }
        let p = Packet { buffer };
        let need = match p.packet_type() {
            kind::DATA if p.doff_bytes() == NATIVE_GSO_HEADER_LEN => NATIVE_GSO_HEADER_LEN,
            t => header_len(t).ok_or(Error::Malformed)?,
        };
        if p.buffer.as_ref().len() < need {
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
    pub fn sequence(&self) -> u32 {
        be32(self.buffer.as_ref(), 4)
    }

    #[inline]
    pub fn packet_type(&self) -> u8 {
        self.buffer.as_ref()[11]
    }

    /// The header length the `doff` nibble gives, in bytes.
    #[inline]
    pub fn doff_bytes(&self) -> usize {
        (self.buffer.as_ref()[12] >> 4) as usize * 4
    }

    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[13]
    }

    #[inline]
    pub fn urgent(&self) -> u16 {
        be16(self.buffer.as_ref(), 18)
    }

    /// The RPC id (low bit set: sent by the server).
    #[inline]
    pub fn sender_id(&self) -> u64 {
        u64::from_be_bytes(super::array(self.buffer.as_ref(), 20))
    }

    /// DATA: the length of the whole message.
    #[inline]
    pub fn message_length(&self) -> Option<u32> {
        (self.packet_type() == kind::DATA).then(|| be32(self.buffer.as_ref(), 28))
    }

    /// DATA with its whole 56-byte header: where the packet's data sits in the message
    /// ([`SEG_OFFSET_FROM_SEQUENCE`]: take it from `sequence`). None for other types and for a
    /// 52-byte header (a native segmentation job, whose chunks carry their own).
    #[inline]
    pub fn seg_offset(&self) -> Option<u32> {
        (self.packet_type() == kind::DATA && self.doff_bytes() != NATIVE_GSO_HEADER_LEN)
            .then(|| be32(self.buffer.as_ref(), NATIVE_GSO_HEADER_LEN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(t: u8, len: usize) -> Vec<u8> {
        let mut h = vec![0u8; len];
        h[0..2].copy_from_slice(&4000u16.to_be_bytes());
        h[2..4].copy_from_slice(&500u16.to_be_bytes());
        h[4..8].copy_from_slice(&77u32.to_be_bytes());
        h[11] = t;
        h[12] = ((len / 4) as u8) << 4;
        h[13] = TCP_FLAGS;
        h[18..20].copy_from_slice(&TCP_URGENT.to_be_bytes());
        h[20..28].copy_from_slice(&0x1234_5678_9abc_def1u64.to_be_bytes());
        if t == kind::DATA {
            h[28..32].copy_from_slice(&1000u32.to_be_bytes());
        }
        h
    }

    #[test]
    fn checked_constructor_and_fields() {
        let d = header(kind::DATA, DATA_HEADER_LEN);
        let p = Packet::new_checked(&d[..]).unwrap();
        assert_eq!(
            (p.src_port(), p.dst_port(), p.sequence(), p.packet_type()),
            (4000, 500, 77, kind::DATA)
        );
        assert_eq!((p.doff_bytes(), p.flags(), p.urgent()), (56, 0x06, 0xb97d));
        assert_eq!(p.sender_id(), 0x1234_5678_9abc_def1);
        assert_eq!(p.message_length(), Some(1000));
        let g = header(kind::GRANT, 33);
        assert_eq!(Packet::new_checked(&g[..]).unwrap().message_length(), None);
        assert_eq!(Packet::new_checked(&g[..]).unwrap().seg_offset(), None);
        let mut d = d;
        d[52..56].copy_from_slice(&2848u32.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&d[..]).unwrap().seg_offset(),
            Some(2848)
        );
    }

    #[test]
    fn every_type_needs_its_whole_header() {
        for t in kind::DATA..=kind::ACK {
            let len = header_len(t).unwrap();
            let d = header(t, len);
            assert!(Packet::new_checked(&d[..]).is_ok(), "type {t:#x}");
            assert_eq!(
                Packet::new_checked(&d[..len - 1]).unwrap_err(),
                Error::Truncated,
                "type {t:#x}"
            );
        }
        assert_eq!(
            Packet::new_checked(&header(kind::DATA, 56)[..20]).unwrap_err(),
            Error::Truncated
        );
        // A type Homa does not have.
        assert_eq!(
            Packet::new_checked(&header(0x42, 80)[..]).unwrap_err(),
            Error::Malformed
        );
        // A native-format segmentation job's DATA header is 52 bytes.
        let mut job = header(kind::DATA, 52);
        job[12] = 13 << 4;
        let p = Packet::new_checked(&job[..]).unwrap();
        assert_eq!(p.seg_offset(), None, "its chunks carry their offsets");
    }
}
