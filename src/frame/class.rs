//! What a frame is for vnic's priority classes, RX steering and interrupt policy: Homa,
//! Open-MX or plain traffic, its priority (0-7) and whether it is latency-critical. Decided
//! once where the frame enters (guest TX, tap read), after its headers were parsed, and
//! carried in its [`FrameMeta`].
//!
//! - Homa: IP protocol 146 (after IPv6 extension headers and VLAN tags too), or TCP with
//!   Homa's flags and urgent pointer. Priority from the IP precedence (the top three bits of
//!   the TOS or traffic class), as Homa sets it. Latency-critical: every control packet (GRANT,
//!   RESEND, ...) and a DATA packet that is a whole message (its payload is the message).
//! - Open-MX: its EtherType (0x86DF unless the port says otherwise). Latency-critical types
//!   (TINY, SMALL, CONNECT, NOTIFY, TRUC, NACKs, RNDV, PULL, a medium's last fragment) get
//!   priority 7; bulk (other medium fragments, PULL_REPLY) the VLAN PCP.
//! - Plain: priority from the IP precedence, or the VLAN PCP for a tagged frame that is not IP.
//!
//! A frame that claims to be Homa or Open-MX but whose header is cut short or names a type
//! the protocol does not have is [`Transport::Malformed`] (counted) and otherwise plain.

use super::meta::{FrameMeta, L3};
use crate::wire::{homa, ip, ipv6, openmx, tcp};

/// Homa or Open-MX, with what was found in its header; or neither.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    #[default]
    Plain,
    Homa(HomaInfo),
    OpenMx(OpenMxInfo),
    /// Looked like `Proto` but its header is broken: handled as plain.
    Malformed(Proto),
}

/// The protocols vnic accelerates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Homa,
    OpenMx,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HomaInfo {
    /// `homa::kind::*`.
    pub packet_type: u8,
    /// Sent TCP-shaped (IP protocol 6) rather than as protocol 146.
    pub over_tcp: bool,
    /// A DATA packet carrying its whole message.
    pub whole_message: bool,
    pub rpc_id: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenMxInfo {
    /// `openmx::kind::*`.
    pub packet_type: u8,
    pub dst_endpoint: Option<u8>,
}

/// A frame's class: see the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Class {
    pub transport: Transport,
    /// Strict-priority class, 0 (lowest) to 7.
    pub priority: u8,
    /// Worth an interrupt at once rather than a coalesced one.
    pub latency_critical: bool,
}

/// The highest priority, given to latency-critical Open-MX packets.
pub const TOP_PRIORITY: u8 = 7;
/// Priority classes (0 to [`TOP_PRIORITY`]): Homa's eight levels, the IP precedence, the PCP.
pub const CLASSES: usize = TOP_PRIORITY as usize + 1;

impl Class {
    /// Classifies the frame `data` whose headers `meta` describes; `omx_ethertype` is the
    /// EtherType Open-MX uses on this port. Never fails, never panics, allocates nothing.
    /// (The datapath calls it through `FrameMeta::parse_and_classify`, which settles the
    /// commonest frames itself.)
    pub fn of(meta: &FrameMeta, data: &[u8], omx_ethertype: u16) -> Class {
        let precedence = ip_precedence(meta, data);
        let pcp = meta.vlan_tci().first().map_or(0, |tci| (tci >> 13) as u8);
        if meta.ip().is_some() && !meta.is_fragment() {
            if let Some(class) = homa_class(meta, data, precedence.unwrap_or(0)) {
                return class;
            }
        } else if meta.l3() == L3::NotIp && meta.ethertype() == omx_ethertype {
            return openmx_class(meta, data, pcp);
        }
        Class {
            transport: Transport::Plain,
            priority: precedence.unwrap_or(pcp),
            latency_critical: false,
        }
    }

    /// A well-formed Homa packet (either way it is carried).
    #[inline]
    pub fn is_homa(&self) -> bool {
        matches!(self.transport, Transport::Homa(_))
    }
}

/// The IP precedence (the top three bits of the IPv4 TOS or IPv6 traffic class) of an IP frame.
#[inline]
fn ip_precedence(meta: &FrameMeta, data: &[u8]) -> Option<u8> {
    let l3 = meta.l3_off();
    match meta.l3() {
        L3::Ipv4 => data.get(l3 + 1).map(|tos| tos >> 5),
        L3::Ipv6 => ipv6::Packet::new_checked(&data[l3..])
            .ok()
            .map(|p| p.traffic_class() >> 5),
        _ => None,
    }
}

/// The L4 bytes of an IP frame: from its L4 offset to where the IP length says the packet
/// ends (the frame's end if that length is not consistent).
fn l4_bytes<'a>(meta: &FrameMeta, data: &'a [u8]) -> &'a [u8] {
    let end = meta.ip_end(data).unwrap_or(data.len());
    data.get(meta.l4_off()..end).unwrap_or_default()
}

/// Homa's class for an IP frame, or None if it is not Homa.
fn homa_class(meta: &FrameMeta, data: &[u8], precedence: u8) -> Option<Class> {
    let over_tcp = match meta.proto() {
        ip::HOMA => false,
        ip::TCP => {
            // Homa over TCP: SYN|RST with Homa's urgent pointer; anything else is TCP.
            let t = tcp::Packet::new_checked(data.get(meta.l4_off()..)?).ok()?;
            if t.flags() != homa::TCP_FLAGS || t.urgent_at() != homa::TCP_URGENT {
                return None;
            }
            true
        }
        _ => return None,
    };
    let l4 = l4_bytes(meta, data);
    let Ok(h) = homa::Packet::new_checked(l4) else {
        return Some(Class {
            transport: Transport::Malformed(Proto::Homa),
            priority: precedence,
            latency_critical: false,
        });
    };
    let packet_type = h.packet_type();
    let whole_message = h
        .message_length()
        .is_some_and(|len| l4.len().checked_sub(homa::DATA_HEADER_LEN) == Some(len as usize));
    Some(Class {
        transport: Transport::Homa(HomaInfo {
            packet_type,
            over_tcp,
            whole_message,
            rpc_id: h.sender_id(),
        }),
        priority: precedence,
        latency_critical: packet_type != homa::kind::DATA || whole_message,
    })
}

/// Open-MX's class for a frame of its EtherType.
fn openmx_class(meta: &FrameMeta, data: &[u8], pcp: u8) -> Class {
    let Some(Ok(p)) = data.get(meta.l3_off()..).map(openmx::Packet::new_checked) else {
        return Class {
            transport: Transport::Malformed(Proto::OpenMx),
            priority: pcp,
            latency_critical: false,
        };
    };
    let latency_critical = p.is_latency_critical();
    Class {
        transport: Transport::OpenMx(OpenMxInfo {
            packet_type: p.packet_type(),
            dst_endpoint: p.dst_endpoint(),
        }),
        priority: if latency_critical { TOP_PRIORITY } else { pcp },
        latency_critical,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::openmx::DEFAULT_ETHERTYPE;
    use proptest::prelude::*;
    use vnic_testdriver::frames::*;

    fn class_of(data: &[u8]) -> Class {
        Class::of(&FrameMeta::parse(data), data, DEFAULT_ETHERTYPE)
    }

    fn homa(wire: HomaWire, kind: u8, msg: u32, payload: usize) -> Vec<u8> {
        homa_frame(mac(2), mac(1), wire, kind, 0xabcd_0001, msg, payload)
    }

    #[test]
    fn homa_wherever_it_is_carried() {
        let wires = [
            HomaWire::default(),
            HomaWire {
                v6: true,
                ..HomaWire::default()
            },
            HomaWire {
                v6: true,
                v6_dest_opts: true,
                ..HomaWire::default()
            },
            HomaWire {
                vlan: true,
                ..HomaWire::default()
            },
            HomaWire {
                vlan: true,
                v6: true,
                v6_dest_opts: true,
                ..HomaWire::default()
            },
            HomaWire {
                over_tcp: true,
                ..HomaWire::default()
            },
            HomaWire {
                over_tcp: true,
                v6: true,
                ..HomaWire::default()
            },
        ];
        for (i, wire) in wires.into_iter().enumerate() {
            let wire = HomaWire {
                precedence: (i % 8) as u8,
                ..wire
            };
            let c = class_of(&homa(wire, HOMA_DATA, 5000, 1400));
            assert_eq!(
                c.transport,
                Transport::Homa(HomaInfo {
                    packet_type: HOMA_DATA,
                    over_tcp: wire.over_tcp,
                    whole_message: false,
                    rpc_id: 0xabcd_0001,
                }),
                "{wire:?}"
            );
            assert_eq!(c.priority, (i % 8) as u8, "{wire:?}");
            assert!(!c.latency_critical, "part of a message is bulk: {wire:?}");
        }
    }

    #[test]
    fn homa_control_and_whole_messages_are_latency_critical() {
        let w = HomaWire {
            precedence: 7,
            ..HomaWire::default()
        };
        for kind in [HOMA_GRANT, HOMA_RESEND, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18] {
            let c = class_of(&homa(w, kind, 0, 0));
            assert!(matches!(c.transport, Transport::Homa(h) if h.packet_type == kind));
            assert!(c.latency_critical, "type {kind:#x}");
            assert_eq!(c.priority, 7);
        }
        let whole = class_of(&homa(w, HOMA_DATA, 300, 300));
        assert!(matches!(whole.transport, Transport::Homa(h) if h.whole_message));
        assert!(whole.latency_critical);
        // Ethernet padding after a short IP packet is not payload.
        let mut padded = homa(w, HOMA_DATA, 0, 0);
        padded.resize(padded.len() + 20, 0);
        let c = class_of(&padded);
        assert!(matches!(c.transport, Transport::Homa(h) if h.whole_message));
    }

    #[test]
    fn broken_homa_is_counted_and_plain() {
        let mut cut = homa(HomaWire::default(), HOMA_DATA, 5000, 0);
        cut.truncate(14 + 20 + 40);
        fix_ipv4_length(&mut cut);
        assert_eq!(class_of(&cut).transport, Transport::Malformed(Proto::Homa));
        let mut odd = homa(HomaWire::default(), HOMA_GRANT, 0, 0);
        odd[14 + 20 + 11] = 0x42;
        let c = class_of(&odd);
        assert_eq!(c.transport, Transport::Malformed(Proto::Homa));
        assert!(!c.latency_critical);
    }

    /// Sets an IPv4 frame's total length to what the frame holds.
    fn fix_ipv4_length(f: &mut [u8]) {
        let len = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&len.to_be_bytes());
    }

    #[test]
    fn tcp_is_tcp_unless_it_carries_homa_s_marks() {
        let plain = tcp4(mac(1), mac(2), 1, &[0; 100], false);
        assert_eq!(class_of(&plain).transport, Transport::Plain);
        // Homa's flags without its urgent pointer, and the other way round: TCP.
        let mut f = homa(
            HomaWire {
                over_tcp: true,
                ..HomaWire::default()
            },
            HOMA_GRANT,
            0,
            0,
        );
        f[14 + 20 + 18] = 0;
        assert_eq!(class_of(&f).transport, Transport::Plain);
        let mut f = homa(
            HomaWire {
                over_tcp: true,
                ..HomaWire::default()
            },
            HOMA_GRANT,
            0,
            0,
        );
        f[14 + 20 + 13] = 0x10;
        assert_eq!(class_of(&f).transport, Transport::Plain);
    }

    #[test]
    fn plain_priority_from_ip_precedence_or_vlan_pcp() {
        let mut f = udp_frame(mac(2), mac(1), 5, 10);
        f[15] = 5 << 5;
        let c = class_of(&f);
        assert_eq!(
            (c.transport, c.priority, c.latency_critical),
            (Transport::Plain, 5, false)
        );
        let mut tagged = frame(mac(2), mac(1), 60, 1);
        tagged.splice(12..12, [0x81, 0x00, 0xa0, 0x07]);
        assert_eq!(class_of(&tagged).priority, 5, "PCP 5");
        assert_eq!(class_of(&frame(mac(2), mac(1), 60, 1)).priority, 0);
    }

    #[test]
    fn openmx_types_endpoints_and_priorities() {
        let tiny = openmx_frame(mac(2), mac(1), OMX_ETHERTYPE, OMX_TINY, 4, None, 40);
        let c = class_of(&tiny);
        assert_eq!(
            c.transport,
            Transport::OpenMx(OpenMxInfo {
                packet_type: OMX_TINY,
                dst_endpoint: Some(4)
            })
        );
        assert_eq!((c.priority, c.latency_critical), (TOP_PRIORITY, true));
        let reply = openmx_frame(mac(2), mac(1), OMX_ETHERTYPE, OMX_PULL_REPLY, 9, None, 40);
        let c = class_of(&reply);
        assert!(matches!(c.transport, Transport::OpenMx(o) if o.dst_endpoint == Some(9)));
        assert_eq!((c.priority, c.latency_critical), (0, false));
        let first = Some((10000, 0, 12, 4096));
        let last = Some((10000, 2, 12, 1808));
        let f = openmx_frame(mac(2), mac(1), OMX_ETHERTYPE, OMX_MEDIUM_FRAG, 1, first, 40);
        assert!(!class_of(&f).latency_critical);
        let f = openmx_frame(mac(2), mac(1), OMX_ETHERTYPE, OMX_MEDIUM_FRAG, 1, last, 40);
        assert!(class_of(&f).latency_critical);
        // Cut short, or a type Open-MX does not have: counted, plain.
        let mut cut = f.clone();
        cut.truncate(14 + 20);
        assert_eq!(
            class_of(&cut).transport,
            Transport::Malformed(Proto::OpenMx)
        );
        let odd = openmx_frame(mac(2), mac(1), OMX_ETHERTYPE, 99, 1, None, 40);
        assert_eq!(
            class_of(&odd).transport,
            Transport::Malformed(Proto::OpenMx)
        );
        // Another EtherType on this port.
        let moved = openmx_frame(mac(2), mac(1), 0x88b6, OMX_TINY, 4, None, 40);
        assert_eq!(class_of(&moved).transport, Transport::Plain);
        let c = Class::of(&FrameMeta::parse(&moved), &moved, 0x88b6);
        assert!(matches!(c.transport, Transport::OpenMx(_)));
    }

    proptest! {
        /// Any bytes after a Homa or Open-MX frame's start: a class, never a panic.
        #[test]
        fn never_panics(
            mut bytes in proptest::collection::vec(any::<u8>(), 0..200),
            shape in 0usize..4,
            cut in 0usize..200,
        ) {
            let base = match shape {
                0 => homa(HomaWire::default(), HOMA_DATA, 100, 100),
                1 => homa(HomaWire { v6: true, v6_dest_opts: true, ..HomaWire::default() }, HOMA_GRANT, 0, 0),
                2 => homa(HomaWire { over_tcp: true, ..HomaWire::default() }, HOMA_DATA, 0, 0),
                _ => openmx_frame(mac(2), mac(1), OMX_ETHERTYPE, OMX_MEDIUM_FRAG, 1, None, 40),
            };
            let keep = cut.min(base.len());
            let mut f = base[..keep].to_vec();
            f.append(&mut bytes);
            let c = class_of(&f);
            prop_assert!(c.priority <= TOP_PRIORITY);
            // The datapath's way (plain IPv4 settled during the parse) gives the same.
            let mut m = FrameMeta::parse(&[0xff; 80]);
            m.class.priority = 6;
            m.parse_and_classify(&f, DEFAULT_ETHERTYPE);
            prop_assert_eq!(m.class, c);
            let mut parsed = FrameMeta::parse(&f);
            parsed.class = c;
            prop_assert_eq!(m, parsed);
        }

        /// The same on plain IPv4 (the parse's own fast path), whatever the TOS and protocol.
        #[test]
        fn plain_ipv4_settled_in_the_parse_is_classified_alike(
            tos in any::<u8>(),
            proto in prop_oneof![Just(6u8), Just(17u8), Just(146u8), any::<u8>()],
            payload in 0usize..80,
        ) {
            let mut f = udp_frame(mac(2), mac(1), 5, payload);
            f[15] = tos;
            f[23] = proto;
            let mut m = FrameMeta::default();
            m.parse_and_classify(&f, DEFAULT_ETHERTYPE);
            prop_assert_eq!(m.class, class_of(&f));
        }
    }
}
