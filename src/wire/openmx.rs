//! The Open-MX header (Open-MX 1.5, `common/omx_wire.h`), raw Ethernet after the EtherType:
//! the packet type and the fields vnic classifies on. Offsets here count from the end of the
//! EtherType (the reference gives them from the start of an untagged frame: 14 more). See
//! `shared/reference/homa-openmx-wire.md`.

use super::{be16, be32, Error, Result};

/// Open-MX's EtherType unless built otherwise (a port key changes it).
pub const DEFAULT_ETHERTYPE: u16 = 0x86df;
/// The packet type's byte; every packet has at least this much.
const PTYPE: usize = 2;
/// `dst_magic` of a PULL_REPLY is the destination endpoint XOR this.
pub const PULL_REPLY_MAGIC: u32 = 0x2107_1980;

/// Packet types (byte 16 of the frame).
pub mod kind {
    pub const NONE: u8 = 0;
    pub const RAW: u8 = 1;
    pub const HOST_QUERY: u8 = 3;
    pub const HOST_REPLY: u8 = 4;
    pub const TRUC: u8 = 35;
    pub const CONNECT: u8 = 36;
    pub const TINY: u8 = 37;
    pub const SMALL: u8 = 38;
    pub const MEDIUM_FRAG: u8 = 39;
    pub const RNDV: u8 = 40;
    pub const PULL: u8 = 41;
    pub const PULL_REPLY: u8 = 42;
    pub const NOTIFY: u8 = 43;
    pub const NACK_LIB: u8 = 44;
    pub const NACK_MCP: u8 = 45;
}

/// Bytes of header (after the EtherType) packet type `t` needs for what vnic reads of it; None
/// for a type Open-MX does not have.
fn needed(t: u8) -> Option<usize> {
    Some(match t {
        kind::NONE | kind::RAW | kind::HOST_QUERY | kind::HOST_REPLY => PTYPE + 1,
        kind::TRUC | kind::CONNECT | kind::PULL | kind::NOTIFY | kind::NACK_MCP => 4,
        kind::TINY | kind::SMALL | kind::RNDV => 4,
        kind::MEDIUM_FRAG => 30,
        kind::PULL_REPLY => 18,
        kind::NACK_LIB => 12,
        _ => return None,
    })
}

view! {
    /// An Open-MX packet, from just after the EtherType on.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view over a buffer that holds a known packet type and the fields vnic reads of it.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        let Some(&t) = b.get(PTYPE) else {
            return Err(Error::Truncated);
        };
        let need = needed(t).ok_or(Error::Malformed)?;
        if b.len() < need {
            return Err(Error::Truncated);
        }
        Ok(Packet { buffer })
    }

    #[inline]
    pub fn packet_type(&self) -> u8 {
        self.buffer.as_ref()[PTYPE]
    }

    /// The endpoint the packet is for, where its type says: byte 3 for most; for a
    /// PULL_REPLY recovered from `dst_magic`; byte 11 for a NACK_LIB; None for the types
    /// without one (host queries, raw, MCP nacks) or a PULL_REPLY whose magic names no
    /// endpoint (endpoint numbers are below 256).
    #[inline]
    pub fn dst_endpoint(&self) -> Option<u8> {
        let b = self.buffer.as_ref();
        match self.packet_type() {
            kind::PULL_REPLY => u8::try_from(be32(b, 14) ^ PULL_REPLY_MAGIC).ok(),
            kind::NACK_LIB => Some(b[11]),
            kind::TRUC
            | kind::CONNECT
            | kind::TINY
            | kind::SMALL
            | kind::MEDIUM_FRAG
            | kind::RNDV
            | kind::PULL
            | kind::NOTIFY => Some(b[3]),
            _ => None,
        }
    }

    /// MEDIUM_FRAG: whether this is the message's last fragment (its end, at
    /// `frag_seqnum << frag_pipeline` plus its length, reaches the message's length).
    #[inline]
    pub fn is_last_fragment(&self) -> Option<bool> {
        if self.packet_type() != kind::MEDIUM_FRAG {
            return None;
        }
        let b = self.buffer.as_ref();
        let msg_len = u64::from(be32(b, 6));
        let frag_len = u64::from(be16(b, 26));
        let (seq, pipeline) = (u64::from(b[28]), u32::from(b[29]));
        let start = seq.checked_shl(pipeline).unwrap_or(u64::MAX);
        Some(start.saturating_add(frag_len) >= msg_len)
    }

    /// Latency-critical (interrupt at once, high priority): TINY, SMALL, CONNECT, NOTIFY,
    /// TRUC, the NACKs and a medium's last fragment. Bulk: the other medium fragments and
    /// PULL_REPLY; RNDV and PULL (control for bulk transfers) count as latency-critical too,
    /// since a transfer waits for them.
    #[inline]
    pub fn is_latency_critical(&self) -> bool {
        match self.packet_type() {
            kind::MEDIUM_FRAG => self.is_last_fragment() == Some(true),
            kind::PULL_REPLY => false,
            kind::NONE | kind::RAW | kind::HOST_QUERY | kind::HOST_REPLY => false,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Open-MX header of type `t`, `len` bytes after the EtherType.
    fn header(t: u8, len: usize) -> Vec<u8> {
        let mut h = vec![0u8; len];
        h[PTYPE] = t;
        if len > 3 {
            h[3] = 9;
        }
        h
    }

    fn medium(msg_len: u32, seq: u8, pipeline: u8, frag_len: u16) -> Vec<u8> {
        let mut h = header(kind::MEDIUM_FRAG, 30);
        h[6..10].copy_from_slice(&msg_len.to_be_bytes());
        h[26..28].copy_from_slice(&frag_len.to_be_bytes());
        h[28] = seq;
        h[29] = pipeline;
        h
    }

    #[test]
    fn checked_constructor_types_and_endpoints() {
        assert_eq!(
            Packet::new_checked(&[0u8, 0][..]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Packet::new_checked(&header(99, 40)[..]).unwrap_err(),
            Error::Malformed
        );
        for t in [
            kind::TINY,
            kind::SMALL,
            kind::CONNECT,
            kind::NOTIFY,
            kind::TRUC,
        ] {
            let p = Packet::new_checked(header(t, 4)).unwrap();
            assert_eq!((p.packet_type(), p.dst_endpoint()), (t, Some(9)));
            assert!(p.is_latency_critical(), "type {t}");
        }
        let mut reply = header(kind::PULL_REPLY, 18);
        reply[14..18].copy_from_slice(&(5 ^ PULL_REPLY_MAGIC).to_be_bytes());
        let p = Packet::new_checked(&reply[..]).unwrap();
        assert_eq!(p.dst_endpoint(), Some(5));
        assert!(!p.is_latency_critical());
        assert_eq!(
            Packet::new_checked(&reply[..17]).unwrap_err(),
            Error::Truncated
        );
        // A magic that names no endpoint.
        reply[14..18].copy_from_slice(&0x0101_0101u32.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&reply[..]).unwrap().dst_endpoint(),
            None
        );
        let mut nack = header(kind::NACK_LIB, 12);
        nack[11] = 3;
        assert_eq!(
            Packet::new_checked(&nack[..]).unwrap().dst_endpoint(),
            Some(3)
        );
        let raw = Packet::new_checked(header(kind::RAW, 3)).unwrap();
        assert_eq!(raw.dst_endpoint(), None);
        assert!(!raw.is_latency_critical());
    }

    #[test]
    fn a_medium_s_last_fragment_is_latency_critical() {
        // 10000 bytes in 4 KiB fragments (pipeline 12): 0..4096, 4096..8192, 8192..10000.
        let first = medium(10000, 0, 12, 4096);
        let last = medium(10000, 2, 12, 1808);
        let p = Packet::new_checked(&first[..]).unwrap();
        assert_eq!(p.is_last_fragment(), Some(false));
        assert!(!p.is_latency_critical());
        let p = Packet::new_checked(&last[..]).unwrap();
        assert_eq!(p.is_last_fragment(), Some(true));
        assert!(p.is_latency_critical());
        // A shift past any length is the end, never an overflow.
        let odd = medium(10000, 255, 255, 0);
        assert_eq!(
            Packet::new_checked(&odd[..]).unwrap().is_last_fragment(),
            Some(true)
        );
        assert_eq!(
            Packet::new_checked(&first[..29]).unwrap_err(),
            Error::Truncated
        );
    }
}
