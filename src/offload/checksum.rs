//! The Internet checksum (RFC 1071): ones'-complement sums, pseudo-headers, completing a partial
//! checksum, verifying a packet's checksums.
//!
//! Written here rather than taken from a crate because the datapath needs an unfolded running
//! sum it can carry across pieces (pseudo-header, then headers and payload of a segment just
//! written) and fold once, summing 8 bytes per step; `etherparse::checksum` (used by the tests
//! as the independent reference) folds per call and works 2 bytes at a time.
//!
//! A sum is a `u64` of 32-bit big-endian words: since 2^16 = 1 (mod 2^16 - 1), adding 32-bit
//! words and folding at the end gives the same ones'-complement sum as adding 16-bit words. A
//! `u64` holds 2^32 such words, far beyond any frame. Every piece added must start at an even
//! offset from the start of the checksummed region (all pieces here do).

use super::{CsumVerdict, OffloadError};
use crate::frame::meta::FrameMeta;
use crate::wire::{ip, tcp, udp, IpVersion};

/// Adds `data` to the running sum `acc`.
#[inline]
pub fn add(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let mut rest = chunks.remainder();
    if rest.len() >= 4 {
        acc += u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as u64;
        rest = &rest[4..];
    }
    if rest.len() >= 2 {
        acc += u16::from_be_bytes([rest[0], rest[1]]) as u64;
        rest = &rest[2..];
    }
    if let Some(&b) = rest.first() {
        // An odd last byte is the high byte of a word padded with zero.
        acc += (b as u64) << 8;
    }
    acc
}

/// Folds a running sum to 16 bits (end-around carry).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value for a region whose running sum (field counted as zero) is `acc`.
#[inline]
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// The running sum of a TCP/UDP pseudo-header. The same formula serves IPv4 (zero, protocol,
/// 16-bit length) and IPv6 (32-bit length, zeros, next header): both add up to
/// `src + dst + protocol + length`.
#[inline]
pub fn pseudo_header(src: &[u8], dst: &[u8], protocol: u8, l4_len: u32) -> u64 {
    add(add(0, src), dst) + pseudo_rest(protocol, l4_len)
}

/// The pseudo-header without its addresses, for a caller that summed those once.
#[inline]
pub fn pseudo_rest(protocol: u8, l4_len: u32) -> u64 {
    protocol as u64 + (l4_len >> 16) as u64 + (l4_len & 0xffff) as u64
}

/// Checks that a partial checksum's `csum_start`/`csum_offset` fit in a frame of `len` bytes.
pub fn check_partial_bounds(len: usize, start: u16, offset: u16) -> Result<(), OffloadError> {
    let start = start as usize;
    if start >= len {
        return Err(OffloadError::CsumStartBeyondFrame);
    }
    if start + offset as usize + 2 > len {
        return Err(OffloadError::CsumOffsetBeyondFrame);
    }
    Ok(())
}

/// Completes a partial checksum as the virtio spec says (§5.1.6.2): the ones'-complement sum
/// from `start` to the end of the frame (the field holds the source's pseudo-header seed and is
/// included), complemented, stored at `start + offset`. A result of 0 is stored as 0xffff, which
/// means the same to TCP and keeps UDP from reading "no checksum" (Linux's `skb_checksum_help`).
pub fn complete_partial(data: &mut [u8], start: u16, offset: u16) -> Result<(), OffloadError> {
    check_partial_bounds(data.len(), start, offset)?;
    let start = start as usize;
    let field = start + offset as usize;
    let mut csum = finish(add(0, &data[start..]));
    if csum == 0 {
        csum = 0xffff;
    }
    data[field..field + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

/// Recomputes an IPv4 header checksum in place (`hdr` is the whole header, options included).
#[inline]
pub fn set_ipv4_header_checksum(hdr: &mut [u8]) {
    hdr[10] = 0;
    hdr[11] = 0;
    let csum = finish(add(0, hdr));
    hdr[10..12].copy_from_slice(&csum.to_be_bytes());
}

/// The pseudo-header sum of a packet parsed as `h`, for an L4 of `l4_len` bytes; None if the
/// final destination cannot be found (an IPv6 routing header of an unknown type).
#[inline]
pub fn pseudo_for(data: &[u8], h: &FrameMeta, protocol: u8, l4_len: usize) -> Option<u64> {
    let (src, dst) = h.pseudo_addresses(data)?;
    Some(pseudo_header(src, dst, protocol, l4_len as u32))
}

/// Verifies every checksum of an IP packet in an Ethernet frame (see [`CsumVerdict`]).
pub fn verify_packet(data: &[u8]) -> CsumVerdict {
    verify_parsed(data, &FrameMeta::parse(data))
}

/// [`verify_packet`] for a frame already parsed as `h`.
pub fn verify_parsed(data: &[u8], h: &FrameMeta) -> CsumVerdict {
    let (Some(version), Some(end)) = (h.ip(), h.ip_end(data)) else {
        return CsumVerdict::NotApplicable;
    };
    if version == IpVersion::V4 && fold(add(0, h.ipv4_header(data))) != 0xffff {
        return CsumVerdict::Invalid;
    }
    if h.is_fragment() {
        return CsumVerdict::NotApplicable;
    }
    let min_len = match h.proto() {
        ip::TCP => tcp::MIN_HEADER_LEN,
        ip::UDP => udp::HEADER_LEN,
        _ => return CsumVerdict::NotApplicable,
    };
    if h.l4_off() + min_len > end {
        return CsumVerdict::NotApplicable;
    }
    let l4 = &data[h.l4_off()..end];
    if h.proto() == ip::UDP && udp::Packet::new_unchecked(l4).checksum() == 0 {
        // No checksum: allowed over IPv4 only (RFC 768; RFC 8200 §8.1).
        return match version {
            IpVersion::V4 => CsumVerdict::Valid,
            IpVersion::V6 => CsumVerdict::Invalid,
        };
    }
    let Some(pseudo) = pseudo_for(data, h, h.proto(), l4.len()) else {
        return CsumVerdict::NotApplicable;
    };
    if fold(add(pseudo, l4)) == 0xffff {
        CsumVerdict::Valid
    } else {
        CsumVerdict::Invalid
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use etherparse::checksum::Sum16BitWords;

    fn reference(data: &[u8]) -> u16 {
        Sum16BitWords::new()
            .add_slice(data)
            .ones_complement()
            .to_be()
    }

    #[test]
    fn sum_matches_reference_for_every_length_and_content() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 37 + 11) as u8).collect();
        for len in 0..data.len() {
            assert_eq!(
                finish(add(0, &data[..len])),
                reference(&data[..len]),
                "len {len}"
            );
        }
        let ones = vec![0xffu8; 1001];
        assert_eq!(finish(add(0, &ones)), reference(&ones));
    }

    #[test]
    fn sums_of_pieces_at_even_offsets_add_up() {
        let data: Vec<u8> = (0..97u8).collect();
        let whole = add(0, &data);
        for cut in (0..data.len()).step_by(2) {
            assert_eq!(fold(add(add(0, &data[..cut]), &data[cut..])), fold(whole));
        }
    }

    #[test]
    fn pseudo_header_matches_reference() {
        let src = [10, 0, 0, 1];
        let dst = [192, 168, 7, 200];
        let r = Sum16BitWords::new()
            .add_4bytes(src)
            .add_4bytes(dst)
            .add_2bytes([0, 6])
            .add_2bytes(1234u16.to_be_bytes())
            .ones_complement()
            .to_be();
        assert_eq!(finish(pseudo_header(&src, &dst, 6, 1234)), r);
        let src6 = [0xfe; 16];
        let dst6 = [0x20; 16];
        let r = Sum16BitWords::new()
            .add_16bytes(src6)
            .add_16bytes(dst6)
            .add_4bytes(70000u32.to_be_bytes())
            .add_4bytes([0, 0, 0, 17])
            .ones_complement()
            .to_be();
        assert_eq!(finish(pseudo_header(&src6, &dst6, 17, 70000)), r);
    }

    #[test]
    fn partial_bounds() {
        assert_eq!(check_partial_bounds(100, 34, 16), Ok(()));
        assert_eq!(check_partial_bounds(52, 34, 16), Ok(()));
        assert_eq!(
            check_partial_bounds(51, 34, 16),
            Err(OffloadError::CsumOffsetBeyondFrame)
        );
        assert_eq!(
            check_partial_bounds(34, 34, 0),
            Err(OffloadError::CsumStartBeyondFrame)
        );
        assert_eq!(
            check_partial_bounds(100, 0xffff, 0xffff),
            Err(OffloadError::CsumStartBeyondFrame)
        );
        assert_eq!(
            check_partial_bounds(100, 90, 0xffff),
            Err(OffloadError::CsumOffsetBeyondFrame)
        );
    }

    /// NEEDS_CSUM completion for TCP and UDP over IPv4 and IPv6 gives the checksum an
    /// independent implementation computes.
    #[test]
    fn completing_partial_checksums() {
        let payload = pattern(333);
        for v6 in [false, true] {
            for udp in [false, true] {
                for vlans in [0, 1, 2] {
                    let spec = Spec {
                        v6,
                        vlans,
                        ..Spec::default()
                    };
                    let good = if udp {
                        build_udp(&spec, &payload)
                    } else {
                        build_tcp(&spec, &payload)
                    };
                    let f = partial(frame_of(good.clone()));
                    assert_ne!(f.data, good);
                    let mut data = f.data.clone();
                    complete_partial(&mut data, f.header.csum_start, f.header.csum_offset).unwrap();
                    assert_eq!(data, good, "v6 {v6} udp {udp} vlans {vlans}");
                    assert_eq!(verify_packet(&data), CsumVerdict::Valid);
                }
            }
        }
    }

    #[test]
    fn udp_zero_result_is_sent_as_ffff() {
        // Find a payload whose UDP checksum computes to 0 (stored as 0xffff).
        let spec = Spec::default();
        for x in 0..=0xffffu16 {
            let good = build_udp(&spec, &x.to_be_bytes());
            let f = partial(frame_of(good.clone()));
            let mut data = f.data.clone();
            complete_partial(&mut data, f.header.csum_start, f.header.csum_offset).unwrap();
            let field = f.header.csum_start as usize + 6;
            if data[field..field + 2] == [0xff, 0xff] {
                assert_eq!(verify_packet(&data), CsumVerdict::Valid);
                return;
            }
        }
        panic!("no payload sums to zero");
    }

    #[test]
    fn verify_packet_verdicts() {
        let spec = Spec::default();
        let good = build_tcp(&spec, b"abc");
        assert_eq!(verify_packet(&good), CsumVerdict::Valid);
        // A wrong IPv4 header checksum.
        let mut bad = good.clone();
        bad[14 + 10] ^= 1;
        assert_eq!(verify_packet(&bad), CsumVerdict::Invalid);
        // A wrong TCP checksum.
        let mut bad = good.clone();
        bad[14 + 20 + 16] ^= 1;
        assert_eq!(verify_packet(&bad), CsumVerdict::Invalid);
        // Ethernet padding after the IP packet does not count.
        let mut padded = build_udp(&spec, b"x");
        padded.resize(60, 0xaa);
        assert_eq!(verify_packet(&padded), CsumVerdict::Valid);
        // UDP without checksum: fine over IPv4, not over IPv6.
        let mut nocsum = build_udp(&spec, b"hello");
        nocsum[14 + 20 + 6] = 0;
        nocsum[14 + 20 + 7] = 0;
        assert_eq!(verify_packet(&nocsum), CsumVerdict::Valid);
        let spec6 = Spec {
            v6: true,
            ..Spec::default()
        };
        let mut nocsum6 = build_udp(&spec6, b"hello");
        nocsum6[14 + 40 + 6] = 0;
        nocsum6[14 + 40 + 7] = 0;
        assert_eq!(verify_packet(&nocsum6), CsumVerdict::Invalid);
        // Not IP, truncated, other protocols: nothing to vouch for.
        assert_eq!(verify_packet(&[0u8; 60]), CsumVerdict::NotApplicable);
        assert_eq!(
            verify_packet(&good[..good.len() - 1]),
            CsumVerdict::NotApplicable
        );
        let homa = build_tcp(
            &Spec {
                protocol: PROTO_HOMA,
                ..Spec::default()
            },
            b"abc",
        );
        assert_eq!(verify_packet(&homa), CsumVerdict::NotApplicable);
    }

    #[test]
    fn verify_ipv6_with_extension_headers_and_routing_final_destination() {
        let payload = pattern(100);
        for exts in [
            vec![hop_by_hop()],
            vec![hop_by_hop(), routing_srh(0, [9; 16])],
            vec![dest_options(), routing_srh(1, [7; 16])],
            vec![routing_type2([5; 16])],
        ] {
            let spec = Spec {
                v6: true,
                v6_exts: exts.clone(),
                ..Spec::default()
            };
            assert_eq!(
                verify_packet(&build_tcp(&spec, &payload)),
                CsumVerdict::Valid,
                "{exts:?}"
            );
            assert_eq!(
                verify_packet(&build_udp(&spec, &payload)),
                CsumVerdict::Valid
            );
        }
        // A fragment: the L4 checksum cannot be checked.
        let spec = Spec {
            v6: true,
            v6_exts: vec![fragment(true)],
            ..Spec::default()
        };
        assert_eq!(
            verify_packet(&build_tcp(&spec, &payload)),
            CsumVerdict::NotApplicable
        );
    }
}
