//! Offload engines: checksum and segmentation offloads carried across vnic, and receive
//! coalescing. Pure functions on [`Frame`]s; no I/O, no locks.
//!
//! A frame keeps the offload state its source gave it (`Frame::header`: a partial checksum to
//! complete, a GSO job to cut) while it crosses vnic. Each destination then gets what it
//! negotiated:
//!
//! - [`validate_tx`] checks, where a frame enters vnic, that its header is consistent with the
//!   frame and with what the source negotiated. A frame that fails is dropped with a named
//!   [`OffloadError`]; nothing downstream ever cuts or checksums a malformed request.
//! - [`adapt_for`] prepares a frame for one destination ([`RxCaps`]): passed through as is when the
//!   destination takes its offload state, otherwise the checksum is completed and/or the frame is
//!   segmented in software (TCP: TSO; UDP: USO), each segment a frame from the pool.
//! - [`checksums_valid`] / [`verify_checksums`] verify a plain frame's IPv4/TCP/UDP checksums, so
//!   the destination can be told `F_DATA_VALID`.
//! - [`Coalescer`] merges in-order TCP segments of a flow into one GSO frame (LRO) for a
//!   destination that negotiated GUEST_TSO4/6.
//!
//! Files: [`checksum`] (ones'-complement arithmetic), `validate` (a header against its frame),
//! `segment` (software TSO/USO), `coalesce` (LRO). Where a frame's headers are comes from its
//! [`FrameMeta`](crate::frame::meta::FrameMeta), parsed once where it entered vnic (or here,
//! for a frame nobody parsed); the headers are read and written through the
//! [`wire`](crate::wire) views.
//!
//! Homa frames claim to be TCP GSO jobs (see `shared/reference/homa-openmx-wire.md`), in two
//! formats; Homa packets are never merged by LRO.
//! - Native (IP protocol 146, `GsoKind::Homa`): cut the way Homa means for every destination
//!   (none takes a protocol-146 job as such: a guest or tap with TSO would take it for TCP).
//!   The 52-byte DATA header is replicated, every `gso_size` chunk of payload starts with its
//!   own 4-byte `seg.offset`, the sequence is not advanced, and the checksum sits in TCP's slot
//!   with protocol 146 in the pseudo-header.
//! - Homa over TCP (IP protocol 6 with Homa's flags and urgent pointer): TCP-shaped by design
//!   so that TCP offloads carry it. A destination that takes TSO gets the job whole (a Linux
//!   guest running HomaModule with `hijack_tcp` takes it as one packet: `guest-tests/homa`);
//!   others get it cut as TCP (the sequence advanced, from which the receiver takes the offset).
//!
//! A job in neither shape is refused with [`OffloadError::HomaGso`].

pub mod checksum;
mod coalesce;
mod segment;
mod validate;

pub use coalesce::Coalescer;
pub use validate::validate_tx;

use crate::frame::net_header::{F_DATA_VALID, F_NEEDS_CSUM, GSO_NONE};
use crate::frame::{Frame, FrameBuf, FramePool};
use crate::wire::{ip, tcp, udp, IpVersion};
use virtio_bindings::virtio_net as vn;

/// `gso_type` values (virtio 1.2 §5.1.6). `GSO_NONE` and the flags live in `net_header`.
pub const GSO_TCPV4: u8 = vn::VIRTIO_NET_HDR_GSO_TCPV4 as u8;
/// UDP fragmentation offload (UFO): accepted from nobody, delivered to nobody.
pub const GSO_UDP: u8 = vn::VIRTIO_NET_HDR_GSO_UDP as u8;
pub const GSO_TCPV6: u8 = vn::VIRTIO_NET_HDR_GSO_TCPV6 as u8;
/// UDP segmentation offload (USO): each segment its own UDP datagram.
pub const GSO_UDP_L4: u8 = vn::VIRTIO_NET_HDR_GSO_UDP_L4 as u8;
/// Flag on a TCP `gso_type`: the first segment carries CWR.
pub const GSO_ECN: u8 = vn::VIRTIO_NET_HDR_GSO_ECN as u8;

/// Offset of the checksum field in a TCP header.
pub const TCP_CSUM_OFFSET: u16 = tcp::CHECKSUM_OFFSET as u16;
/// Offset of the checksum field in a UDP header.
pub const UDP_CSUM_OFFSET: u16 = udp::CHECKSUM_OFFSET as u16;

/// The most segments one GSO frame may be cut into. Linux TCP never goes below an MSS of 88
/// (745 segments for 64 KiB) and Linux UDP GSO stops at 256 segments; beyond this a tiny
/// `gso_size` would only turn one guest frame into tens of thousands.
pub const MAX_SEGMENTS: usize = 1024;

/// The largest IP packet (header included) a GSO frame or a coalesced frame may carry: vnic does
/// not do IPv6 jumbograms or IPv4 "BIG TCP".
pub const MAX_IP_LEN: usize = 65535;

/// What a destination accepts (from its negotiated virtio features or tap offload flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxCaps {
    /// GUEST_CSUM: takes partial checksums (`F_NEEDS_CSUM`) and may be told `F_DATA_VALID`.
    pub partial_csum: bool,
    /// GUEST_TSO4.
    pub tso4: bool,
    /// GUEST_TSO6.
    pub tso6: bool,
    /// GUEST_ECN: takes TCP GSO frames with `GSO_ECN` (CWR set).
    pub ecn: bool,
    /// GUEST_USO4.
    pub uso4: bool,
    /// GUEST_USO6.
    pub uso6: bool,
}

impl RxCaps {
    /// Everything: a host tap with a vnet header takes any offload state from vnic.
    pub const ALL: RxCaps = RxCaps {
        partial_csum: true,
        tso4: true,
        tso6: true,
        ecn: true,
        uso4: true,
        uso6: true,
    };

    /// What a guest accepts, from the virtio features it negotiated. A GSO feature without
    /// GUEST_CSUM (which the spec forbids) counts as absent: a GSO frame always carries a partial
    /// checksum.
    pub fn from_features(features: u64) -> Self {
        let has = |b: u32| features & (1u64 << b) != 0;
        let csum = has(vn::VIRTIO_NET_F_GUEST_CSUM);
        RxCaps {
            partial_csum: csum,
            tso4: csum && has(vn::VIRTIO_NET_F_GUEST_TSO4),
            tso6: csum && has(vn::VIRTIO_NET_F_GUEST_TSO6),
            ecn: csum && has(vn::VIRTIO_NET_F_GUEST_ECN),
            uso4: csum && has(vn::VIRTIO_NET_F_GUEST_USO4),
            uso6: csum && has(vn::VIRTIO_NET_F_GUEST_USO6),
        }
    }

    /// True if the destination takes a TCP GSO frame of this IP version as is (so LRO output
    /// may go to it).
    pub fn takes_tso(self, ip: IpVersion) -> bool {
        self.partial_csum
            && match ip {
                IpVersion::V4 => self.tso4,
                IpVersion::V6 => self.tso6,
            }
    }

    /// True if a GSO frame of `kind` over `ip` can be delivered without cutting it.
    fn takes_gso(self, kind: GsoKind, ecn: bool, ip: IpVersion) -> bool {
        self.partial_csum
            && match (kind, ip) {
                (GsoKind::Tcp, IpVersion::V4) => self.tso4 && (!ecn || self.ecn),
                (GsoKind::Tcp, IpVersion::V6) => self.tso6 && (!ecn || self.ecn),
                (GsoKind::Udp, IpVersion::V4) => self.uso4,
                (GsoKind::Udp, IpVersion::V6) => self.uso6,
                // No destination takes Homa jobs as such.
                (GsoKind::Homa, _) => false,
            }
    }
}

/// What a source may ask for (HOST_* features it negotiated).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxCaps {
    /// CSUM: may send partial checksums.
    pub csum: bool,
    /// HOST_TSO4.
    pub tso4: bool,
    /// HOST_TSO6.
    pub tso6: bool,
    /// HOST_ECN: TCP GSO frames with `GSO_ECN`.
    pub ecn: bool,
    /// HOST_USO (IPv4 and IPv6).
    pub uso: bool,
}

impl TxCaps {
    /// Everything vnic can take.
    pub const ALL: TxCaps = TxCaps {
        csum: true,
        tso4: true,
        tso6: true,
        ecn: true,
        uso: true,
    };

    /// What a guest may send, from the virtio features it negotiated.
    pub fn from_features(features: u64) -> Self {
        let has = |b: u32| features & (1u64 << b) != 0;
        TxCaps {
            csum: has(vn::VIRTIO_NET_F_CSUM),
            tso4: has(vn::VIRTIO_NET_F_HOST_TSO4),
            tso6: has(vn::VIRTIO_NET_F_HOST_TSO6),
            ecn: has(vn::VIRTIO_NET_F_HOST_ECN),
            uso: has(vn::VIRTIO_NET_F_HOST_USO),
        }
    }
}

/// Why a frame's offload request was refused. Each has a stable [`name`](Self::name) for logs and
/// counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// A TX header with flags other than `F_NEEDS_CSUM` (the driver must not set `F_DATA_VALID`
    /// or `F_RSC_INFO`: a guest must not vouch for its own checksums).
    BadFlags,
    /// `F_NEEDS_CSUM` from a source that did not negotiate CSUM.
    CsumNotNegotiated,
    /// `csum_start` at or beyond the end of the frame.
    CsumStartBeyondFrame,
    /// `csum_start + csum_offset + 2` beyond the end of the frame.
    CsumOffsetBeyondFrame,
    /// A `gso_type` that does not exist (or `GSO_ECN` on something other than TCP).
    GsoUnknownType,
    /// A GSO type the source did not negotiate (UFO is never negotiated).
    GsoNotNegotiated,
    /// A GSO type vnic cannot deliver to a destination that does not take it as is (UFO).
    GsoUnsupported,
    /// A GSO frame without `F_NEEDS_CSUM` (or, from a tap, `F_DATA_VALID`).
    GsoWithoutCsum,
    /// `gso_size` 0.
    GsoSizeZero,
    /// `gso_size` plus the IP and L4 headers over 65535.
    GsoSizeTooLarge,
    /// `hdr_len` larger than the frame.
    HdrLenBeyondFrame,
    /// The `gso_type` does not match the headers found (TCPV4 on IPv6 or UDP, not IP at all...).
    GsoTypeMismatch,
    /// A GSO frame whose `csum_start`/`csum_offset` do not point at its L4 checksum field.
    GsoCsumMismatch,
    /// A GSO frame that is an IP fragment or has an IPv6 fragment header.
    GsoFragment,
    /// A GSO frame whose IP packet is over 65535 bytes.
    GsoTooLong,
    /// A GSO frame that would make more than [`MAX_SEGMENTS`] segments.
    GsoTooManySegments,
    /// A Homa segmentation job in neither of Homa's formats: not a DATA packet; native (IP
    /// protocol 146) without the 52-byte header or with a chunk too short for its `seg.offset`;
    /// over TCP with a `seg.offset` of its own (every segment would claim the same offset).
    HomaGso,
    /// Headers that must be read (IP, TCP/UDP) are truncated or malformed.
    Unparseable,
    /// Headers vnic does not cut through: IPsec AH, an IPv6 routing header of an unknown type.
    UnsupportedHeaders,
}

impl OffloadError {
    pub const COUNT: usize = 19;
    pub const ALL: [OffloadError; Self::COUNT] = [
        OffloadError::BadFlags,
        OffloadError::CsumNotNegotiated,
        OffloadError::CsumStartBeyondFrame,
        OffloadError::CsumOffsetBeyondFrame,
        OffloadError::GsoUnknownType,
        OffloadError::GsoNotNegotiated,
        OffloadError::GsoUnsupported,
        OffloadError::GsoWithoutCsum,
        OffloadError::GsoSizeZero,
        OffloadError::GsoSizeTooLarge,
        OffloadError::HdrLenBeyondFrame,
        OffloadError::GsoTypeMismatch,
        OffloadError::GsoCsumMismatch,
        OffloadError::GsoFragment,
        OffloadError::GsoTooLong,
        OffloadError::GsoTooManySegments,
        OffloadError::HomaGso,
        OffloadError::Unparseable,
        OffloadError::UnsupportedHeaders,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OffloadError::BadFlags => "bad_flags",
            OffloadError::CsumNotNegotiated => "csum_not_negotiated",
            OffloadError::CsumStartBeyondFrame => "csum_start_beyond_frame",
            OffloadError::CsumOffsetBeyondFrame => "csum_offset_beyond_frame",
            OffloadError::GsoUnknownType => "gso_unknown_type",
            OffloadError::GsoNotNegotiated => "gso_not_negotiated",
            OffloadError::GsoUnsupported => "gso_unsupported",
            OffloadError::GsoWithoutCsum => "gso_without_csum",
            OffloadError::GsoSizeZero => "gso_size_zero",
            OffloadError::GsoSizeTooLarge => "gso_size_too_large",
            OffloadError::HdrLenBeyondFrame => "hdr_len_beyond_frame",
            OffloadError::GsoTypeMismatch => "gso_type_mismatch",
            OffloadError::GsoCsumMismatch => "gso_csum_mismatch",
            OffloadError::GsoFragment => "gso_fragment",
            OffloadError::GsoTooLong => "gso_too_long",
            OffloadError::GsoTooManySegments => "gso_too_many_segments",
            OffloadError::HomaGso => "homa_gso",
            OffloadError::Unparseable => "unparseable",
            OffloadError::UnsupportedHeaders => "unsupported_headers",
        }
    }
}

impl std::fmt::Display for OffloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for OffloadError {}

/// The L4 protocol a GSO job cuts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GsoKind {
    Tcp,
    Udp,
    /// Homa DATA in its native format (IP protocol 146; a `gso_type` of TCP names it): TCP's
    /// header shape, but nothing per segment beyond lengths, IDs and the checksum.
    Homa,
}

impl GsoKind {
    /// IP protocol number of the L4 this kind cuts.
    pub(crate) fn protocol(self) -> u8 {
        match self {
            GsoKind::Tcp => ip::TCP,
            GsoKind::Udp => ip::UDP,
            GsoKind::Homa => ip::HOMA,
        }
    }

    /// Writes the checksum field of this kind's L4 header (`l4`: from the header on).
    pub(crate) fn set_checksum(self, l4: &mut [u8], csum: u16) {
        match self {
            // Homa's checksum is in TCP's slot.
            GsoKind::Tcp | GsoKind::Homa => tcp::Packet::new_unchecked(l4).set_checksum(csum),
            GsoKind::Udp => udp::Packet::new_unchecked(l4).set_checksum(csum),
        }
    }

    pub(crate) fn csum_offset(self) -> u16 {
        match self {
            GsoKind::Tcp | GsoKind::Homa => TCP_CSUM_OFFSET,
            GsoKind::Udp => UDP_CSUM_OFFSET,
        }
    }
}

/// A decoded `gso_type` other than NONE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GsoType {
    pub kind: GsoKind,
    /// The IP version a TCP type names; None for USO (either).
    pub ip: Option<IpVersion>,
    pub ecn: bool,
}

impl GsoType {
    /// Decodes a `gso_type`; `Ok(None)` for NONE, `GsoUnsupported` for UFO.
    pub(crate) fn decode(gso_type: u8) -> Result<Option<GsoType>, OffloadError> {
        let ecn = gso_type & GSO_ECN != 0;
        let (kind, ip) = match gso_type & !GSO_ECN {
            GSO_NONE if !ecn => return Ok(None),
            GSO_TCPV4 => (GsoKind::Tcp, Some(IpVersion::V4)),
            GSO_TCPV6 => (GsoKind::Tcp, Some(IpVersion::V6)),
            GSO_UDP_L4 if !ecn => (GsoKind::Udp, None),
            GSO_UDP if !ecn => return Err(OffloadError::GsoUnsupported),
            _ => return Err(OffloadError::GsoUnknownType),
        };
        Ok(Some(GsoType { kind, ip, ecn }))
    }
}

/// Prepares `frame` for a destination with `caps`: passes it through when the destination takes
/// its offload state as is; otherwise completes the checksum and/or segments it in software.
/// Pushes the resulting frame(s) (from `pool`) to `out`; never allocates outside the pool in
/// steady state; returns the number pushed. The input frame is consumed (returned to the pool or
/// pushed).
///
/// What the destination gets:
/// - a plain frame: as is; `F_DATA_VALID` kept only if the destination has GUEST_CSUM (a
///   frame is never checksummed here: call [`checksums_valid`] to earn `F_DATA_VALID`);
/// - a partial checksum: as is with GUEST_CSUM, else completed in place (flags cleared);
/// - a GSO frame the destination takes: as is (a GSO frame from a tap that carries
///   `F_DATA_VALID` instead of a partial checksum is turned into the partial form the virtio
///   spec asks for: header fields only);
/// - a GSO frame it does not take, and every native Homa job: cut into segments with correct IP IDs,
///   lengths, sequence numbers, flags and checksums; each segment carries a partial checksum
///   (`F_NEEDS_CSUM`) when the destination has GUEST_CSUM (no pass over the payload), else a
///   complete one.
///
/// Every GSO frame is checked against its headers here too, so a frame that skipped
/// [`validate_tx`] still cannot reach a destination malformed.
pub fn adapt_for(
    mut frame: Frame,
    caps: RxCaps,
    pool: &FramePool,
    out: &mut Vec<Frame>,
) -> Result<usize, OffloadError> {
    let result = match GsoType::decode(frame.header.gso_type) {
        Ok(None) => prepare_plain(&mut frame, caps),
        Ok(Some(gso)) => return adapt_gso(frame, gso, caps, pool, out),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            out.push(frame);
            Ok(1)
        }
        Err(e) => {
            pool.put(frame);
            Err(e)
        }
    }
}

/// A frame without GSO: complete its partial checksum if the destination cannot, and clear what
/// the destination may not be told.
fn prepare_plain(frame: &mut Frame, caps: RxCaps) -> Result<(), OffloadError> {
    let FrameBuf { data, header, .. } = &mut **frame;
    let h = header;
    if h.flags & F_NEEDS_CSUM != 0 {
        checksum::check_partial_bounds(data.len(), h.csum_start, h.csum_offset)?;
    }
    if caps.partial_csum {
        h.flags &= F_NEEDS_CSUM | F_DATA_VALID;
        return Ok(());
    }
    if h.flags & F_NEEDS_CSUM != 0 {
        checksum::complete_partial(data, h.csum_start, h.csum_offset)?;
    }
    // Without GUEST_CSUM the device must leave flags zero (virtio 1.2 §5.1.6.4.1).
    h.flags = 0;
    h.csum_start = 0;
    h.csum_offset = 0;
    h.hdr_len = 0;
    h.gso_size = 0;
    Ok(())
}

fn adapt_gso(
    mut frame: Frame,
    gso: GsoType,
    caps: RxCaps,
    pool: &FramePool,
    out: &mut Vec<Frame>,
) -> Result<usize, OffloadError> {
    let plan = match validate::plan_gso(&frame, gso) {
        Ok(plan) => plan,
        Err(e) => {
            pool.put(frame);
            return Err(e);
        }
    };
    // (`takes_gso` is false for native Homa: no destination takes those as such.)
    if caps.takes_gso(plan.kind, gso.ecn, plan.ip) {
        frame.meta = plan.meta;
        if frame.header.flags & F_NEEDS_CSUM == 0 {
            segment::make_partial(&mut frame, &plan);
        }
        frame.header.flags &= F_NEEDS_CSUM;
        out.push(frame);
        return Ok(1);
    }
    let n = segment::segment(&frame, &plan, caps.partial_csum, pool, out);
    pool.put(frame);
    Ok(n)
}

/// The verdict of [`verify_checksums`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CsumVerdict {
    /// An IPv4/IPv6 TCP or UDP packet whose checksums (IPv4 header, L4) all verify.
    Valid,
    /// A checksum that is present is wrong.
    Invalid,
    /// Nothing vnic can vouch for: not IP, not TCP/UDP, a fragment, truncated, or a partial
    /// checksum still to be completed.
    NotApplicable,
}

/// Verifies the checksums of a plain frame (no `F_NEEDS_CSUM`): the IPv4 header checksum and the
/// TCP or UDP checksum with its pseudo-header (a UDP-over-IPv4 checksum of 0 means "none").
pub fn verify_checksums(frame: &Frame) -> CsumVerdict {
    if frame.header.flags & F_NEEDS_CSUM != 0 || frame.header.gso_type != GSO_NONE {
        return CsumVerdict::NotApplicable;
    }
    checksum::verify_parsed(&frame.data, &frame.parsed_meta())
}

/// Verifies the L3/L4 checksums of a plain frame (no NEEDS_CSUM); true if all present checksums
/// are right, for `F_DATA_VALID`. False when there is nothing to vouch for (not TCP/UDP over IP,
/// a fragment): `F_DATA_VALID` would promise a check that was not made.
pub fn checksums_valid(frame: &Frame) -> bool {
    verify_checksums(frame) == CsumVerdict::Valid
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::frame::net_header::NetHeader;

    #[test]
    fn caps_from_features() {
        let f = |bits: &[u32]| bits.iter().fold(0u64, |a, b| a | 1 << b);
        let rx = RxCaps::from_features(f(&[
            vn::VIRTIO_NET_F_GUEST_CSUM,
            vn::VIRTIO_NET_F_GUEST_TSO4,
            vn::VIRTIO_NET_F_GUEST_USO6,
        ]));
        assert!(rx.partial_csum && rx.tso4 && rx.uso6 && !rx.tso6 && !rx.uso4 && !rx.ecn);
        // GSO without GUEST_CSUM is not a thing.
        assert_eq!(
            RxCaps::from_features(f(&[vn::VIRTIO_NET_F_GUEST_TSO4])),
            RxCaps::default()
        );
        let tx = TxCaps::from_features(f(&[
            vn::VIRTIO_NET_F_CSUM,
            vn::VIRTIO_NET_F_HOST_TSO6,
            vn::VIRTIO_NET_F_HOST_USO,
        ]));
        assert!(tx.csum && tx.tso6 && tx.uso && !tx.tso4 && !tx.ecn);
    }

    #[test]
    fn error_names_are_distinct() {
        let mut names: Vec<_> = OffloadError::ALL.iter().map(|e| e.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), OffloadError::COUNT);
    }

    #[test]
    fn gso_type_decoding() {
        assert_eq!(GsoType::decode(0), Ok(None));
        assert_eq!(GsoType::decode(GSO_ECN), Err(OffloadError::GsoUnknownType));
        assert_eq!(GsoType::decode(GSO_UDP), Err(OffloadError::GsoUnsupported));
        assert_eq!(GsoType::decode(2), Err(OffloadError::GsoUnknownType));
        assert_eq!(
            GsoType::decode(GSO_UDP_L4 | GSO_ECN),
            Err(OffloadError::GsoUnknownType)
        );
        let t = GsoType::decode(GSO_TCPV6 | GSO_ECN).unwrap().unwrap();
        assert_eq!(
            (t.kind, t.ip, t.ecn),
            (GsoKind::Tcp, Some(IpVersion::V6), true)
        );
    }

    #[test]
    fn plain_frame_passes_and_data_valid_needs_guest_csum() {
        let pool = FramePool::new(8);
        let mut out = Vec::new();
        let mut f = frame_of(build_tcp(&Spec::default(), b"hello"));
        f.header.flags = F_DATA_VALID;
        let copy = f.data.clone();
        assert_eq!(adapt_for(f, RxCaps::ALL, &pool, &mut out), Ok(1));
        assert_eq!(out[0].header.flags, F_DATA_VALID);
        assert_eq!(out[0].data, copy);
        let f = out.pop().unwrap();
        assert_eq!(adapt_for(f, RxCaps::default(), &pool, &mut out), Ok(1));
        assert_eq!(out[0].header, NetHeader::default());
        assert_eq!(out[0].data, copy);
    }

    #[test]
    fn partial_checksum_completed_only_for_destinations_without_guest_csum() {
        let pool = FramePool::new(8);
        let mut out = Vec::new();
        let spec = Spec::default();
        let f = partial(frame_of(build_tcp(&spec, b"some payload")));
        let seeded = f.data.clone();
        adapt_for(f, RxCaps::ALL, &pool, &mut out).unwrap();
        assert_eq!(out[0].header.flags, F_NEEDS_CSUM);
        assert_eq!(out[0].data, seeded, "passed as is");
        let f = out.pop().unwrap();
        adapt_for(f, RxCaps::default(), &pool, &mut out).unwrap();
        assert_eq!(out[0].header.flags, 0);
        assert_eq!(out[0].data, build_tcp(&spec, b"some payload"));
        assert!(checksums_valid(&out[0]));
    }

    #[test]
    fn wrong_checksum_is_delivered_as_is_and_not_vouched_for() {
        let pool = FramePool::new(8);
        let mut out = Vec::new();
        let mut data = build_tcp(&Spec::default(), b"payload");
        let n = data.len();
        data[n - 1] ^= 0x40;
        let f = frame_of(data.clone());
        assert_eq!(verify_checksums(&f), CsumVerdict::Invalid);
        assert!(!checksums_valid(&f));
        adapt_for(f, RxCaps::ALL, &pool, &mut out).unwrap();
        assert_eq!(out[0].data, data);
        assert_eq!(out[0].header.flags, 0);
    }

    #[test]
    fn gso_frame_passes_to_a_destination_that_takes_it() {
        let pool = FramePool::new(8);
        let mut out = Vec::new();
        let spec = Spec::default();
        let f = tso_frame(build_tcp(&spec, &pattern(5000)), GSO_TCPV4, 1448);
        let copy = f.data.clone();
        let caps = RxCaps {
            partial_csum: true,
            tso4: true,
            ..Default::default()
        };
        assert_eq!(adapt_for(f, caps, &pool, &mut out), Ok(1));
        assert_eq!(out[0].data, copy);
        assert_eq!(out[0].header.gso_type, GSO_TCPV4);
        // The same to a destination with TSO6 only: cut.
        let f = out.pop().unwrap();
        let caps = RxCaps {
            partial_csum: true,
            tso6: true,
            ..Default::default()
        };
        assert_eq!(adapt_for(f, caps, &pool, &mut out), Ok(4));
    }

    #[test]
    fn ecn_job_is_cut_for_a_destination_without_guest_ecn() {
        let pool = FramePool::new(8);
        let mut out = Vec::new();
        let spec = Spec {
            tcp_flags: TCP_ACK | TCP_CWR,
            ..Spec::default()
        };
        let f = tso_frame(build_tcp(&spec, &pattern(3000)), GSO_TCPV4 | GSO_ECN, 1000);
        let caps = RxCaps {
            partial_csum: true,
            tso4: true,
            ..Default::default()
        };
        assert_eq!(adapt_for(f, caps, &pool, &mut out), Ok(3));
        let f = tso_frame(build_tcp(&spec, &pattern(3000)), GSO_TCPV4 | GSO_ECN, 1000);
        out.clear();
        assert_eq!(adapt_for(f, RxCaps::ALL, &pool, &mut out), Ok(1));
        assert_eq!(out[0].header.gso_type, GSO_TCPV4 | GSO_ECN);
    }

    #[test]
    fn gso_with_data_valid_from_a_tap_becomes_partial_when_passed() {
        let pool = FramePool::new(8);
        let mut out = Vec::new();
        let spec = Spec::default();
        let mut f = tso_frame(build_tcp(&spec, &pattern(4000)), GSO_TCPV4, 1448);
        f.header.flags = F_DATA_VALID;
        f.header.csum_start = 0;
        f.header.csum_offset = 0;
        adapt_for(f, RxCaps::ALL, &pool, &mut out).unwrap();
        let h = out[0].header;
        assert_eq!(h.flags, F_NEEDS_CSUM);
        assert_eq!((h.csum_start, h.csum_offset), (34, 16));
        // Completing the partial checksum gives the right one.
        let mut data = out[0].data.clone();
        checksum::complete_partial(&mut data, 34, 16).unwrap();
        assert_eq!(checksum::verify_packet(&data), CsumVerdict::Valid);
    }

    #[test]
    fn native_homa_jobs_are_always_cut_and_homa_over_tcp_is_a_tcp_job() {
        // (How they are cut: `segment`'s tests.)
        let pool = FramePool::new(8);
        let mut out = Vec::new();
        for over_tcp in [false, true] {
            let wire = vnic_testdriver::frames::HomaWire {
                over_tcp,
                ..Default::default()
            };
            let job = vnic_testdriver::frames::HomaJob {
                rpc_id: 1,
                message_length: 4000,
                offset: 0,
                data: &pattern(4000),
                max_seg_data: 1424,
            };
            let (data, gso_size) =
                vnic_testdriver::frames::homa_gso_job([2; 6], [4; 6], wire, &job);
            let f = tso_frame(data, GSO_TCPV4, gso_size);
            let copy = f.data.clone();
            out.clear();
            if over_tcp {
                assert_eq!(adapt_for(f, RxCaps::ALL, &pool, &mut out), Ok(1));
                assert_eq!((out[0].header.gso_type, &out[0].data), (GSO_TCPV4, &copy));
            } else {
                assert_eq!(
                    adapt_for(f, RxCaps::ALL, &pool, &mut out),
                    Ok(3),
                    "no one takes it"
                );
                assert!(out.iter().all(|s| s.header.gso_type == GSO_NONE));
            }
        }
        // A Homa job in neither of its formats reaches nobody.
        let spec = Spec {
            protocol: PROTO_HOMA,
            ..Spec::default()
        };
        let f = tso_frame(build_tcp(&spec, &pattern(4000)), GSO_TCPV4, 1448);
        assert_eq!(
            adapt_for(f, RxCaps::ALL, &pool, &mut out),
            Err(OffloadError::HomaGso)
        );
    }

    #[test]
    fn uso_passes_by_ip_version() {
        let pool = FramePool::new(8);
        let mut out = Vec::new();
        let v6 = Spec {
            v6: true,
            ..Spec::default()
        };
        let job = || tso_frame(build_udp(&v6, &pattern(3000)), GSO_UDP_L4, 1200);
        let uso4 = RxCaps {
            partial_csum: true,
            uso4: true,
            ..Default::default()
        };
        assert_eq!(adapt_for(job(), uso4, &pool, &mut out), Ok(3));
        let uso6 = RxCaps {
            partial_csum: true,
            uso6: true,
            ..Default::default()
        };
        out.clear();
        assert_eq!(adapt_for(job(), uso6, &pool, &mut out), Ok(1));
        assert_eq!(out[0].header.gso_type, GSO_UDP_L4);
    }

    #[test]
    fn malformed_jobs_are_refused_even_without_validate_tx() {
        let pool = FramePool::new(8);
        let mut out = Vec::new();
        let spec = Spec::default();
        let mut f = tso_frame(build_tcp(&spec, &pattern(3000)), GSO_TCPV4, 0);
        assert_eq!(
            adapt_for(f, RxCaps::default(), &pool, &mut out),
            Err(OffloadError::GsoSizeZero)
        );
        f = tso_frame(build_tcp(&spec, &pattern(3000)), GSO_TCPV4, 1000);
        f.header.gso_type = GSO_TCPV6;
        assert_eq!(
            adapt_for(f, RxCaps::ALL, &pool, &mut out),
            Err(OffloadError::GsoTypeMismatch),
            "not even passed to a destination that takes TSO"
        );
        let mut f = partial(frame_of(build_tcp(&spec, b"abc")));
        f.header.csum_offset = 100;
        assert_eq!(
            adapt_for(f, RxCaps::ALL, &pool, &mut out),
            Err(OffloadError::CsumOffsetBeyondFrame)
        );
        assert!(out.is_empty());
        assert_eq!(pool.parked(), 3);
    }

    #[test]
    fn ufo_is_delivered_to_nobody() {
        let pool = FramePool::new(8);
        let mut out = Vec::new();
        let mut f = frame_of(build_udp(&Spec::default(), &pattern(3000)));
        f.header.gso_type = GSO_UDP;
        f.header.gso_size = 1000;
        assert_eq!(
            adapt_for(f, RxCaps::ALL, &pool, &mut out),
            Err(OffloadError::GsoUnsupported)
        );
    }
}
