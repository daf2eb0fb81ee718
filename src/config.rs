//! A port's configuration: one `--port socket=PATH[,key=value...]` specification, parsed and
//! validated, and the helpers it needs (MACs, tap names). A leaf under `port`, which keeps its
//! [`PortConfig`]; [`crate::cli`] re-exports it for the command line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::features;

/// Most queue pairs a port may have.
pub const MAX_QUEUE_PAIRS: u16 = 16;
pub const DEFAULT_MTU: u16 = 1500;
/// Smallest MTU an IPv4 host must support (RFC 791).
pub const MIN_MTU: u16 = 68;
pub const DEFAULT_SPEED_MBPS: u32 = 10_000;
/// Frames each priority class of an RX queue holds by default (`class_depth=`).
pub const DEFAULT_CLASS_DEPTH: u32 = 1024;
/// The most `class_depth=` may say.
pub const MAX_CLASS_DEPTH: u32 = 65536;
/// `rx_usecs=` by default: how long bulk frames may wait for their interrupt.
pub const DEFAULT_RX_USECS: u32 = 20;
/// `rx_frames=` by default: how many bulk frames may wait for their interrupt.
pub const DEFAULT_RX_FRAMES: u32 = 32;

/// What a port is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachSpec {
    Switch,
    Tap(String),
    /// A loopback plug: the port's TX comes back on its own RX queues.
    Loopback,
}

impl fmt::Display for AttachSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachSpec::Switch => write!(f, "switch"),
            AttachSpec::Tap(name) => write!(f, "tap:{name}"),
            AttachSpec::Loopback => write!(f, "loopback"),
        }
    }
}

/// One `--port` specification, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// Absolute path of the vhost-user socket.
    pub socket: PathBuf,
    pub queues: u16,
    pub mac: [u8; 6],
    pub mtu: u16,
    pub speed: u32,
    pub attach: AttachSpec,
    /// Write what crosses the port to this pcap file.
    pub pcap: Option<PathBuf>,
    /// Bytes of each frame the pcap file keeps.
    pub pcap_snaplen: u32,
    /// Offload feature bits enabled on the port (`features::ALL_OFFLOADS` unless switched off).
    pub offloads: u64,
    /// For `attach=tap:`: enable the tap's checksum and segmentation offloads.
    pub tap_offloads: bool,
    /// The EtherType of Open-MX frames on this port (`omx_ethertype=`, 0x86DF by default).
    pub omx_ethertype: u16,
    /// How frames for this port are spread over its RX queues (`steer=`).
    pub steer: SteerPolicy,
    /// `classes=`: strict priority between the eight classes in front of each RX queue (off:
    /// every frame in class 0, first come first served).
    pub classes: bool,
    /// `class_depth=`: frames each class of an RX queue holds before it drops.
    pub class_depth: u32,
    /// `rx_usecs=`: the longest bulk frames wait for an RX interrupt (0: no coalescing).
    pub rx_usecs: u32,
    /// `rx_frames=`: the most bulk frames that wait for an RX interrupt.
    pub rx_frames: u32,
    /// `shape=on`: deliver to the guest no faster than `speed` (a token bucket).
    pub shape: bool,
    /// `packed=`: offer the packed ring (VIRTIO_F_RING_PACKED).
    pub packed: bool,
    /// `in_order=`: offer VIRTIO_F_IN_ORDER.
    pub in_order: bool,
}

/// `steer=`: what a port spreads arriving frames over its RX queues by (`port::steering`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SteerPolicy {
    /// The flow hash (addresses, protocol, TCP/UDP ports) for every frame.
    Flow,
    /// Homa by RPC id (one RPC on one queue, many RPCs spread), the rest by flow.
    Homa,
    /// Open-MX by destination endpoint (as Myri-10G firmware did), the rest by flow.
    OpenMx,
    /// By what the frame is: Homa by RPC id, Open-MX by endpoint, the rest by flow.
    #[default]
    Auto,
}

impl SteerPolicy {
    pub const ALL: [SteerPolicy; 4] = [
        SteerPolicy::Flow,
        SteerPolicy::Homa,
        SteerPolicy::OpenMx,
        SteerPolicy::Auto,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SteerPolicy::Flow => "flow",
            SteerPolicy::Homa => "homa",
            SteerPolicy::OpenMx => "omx",
            SteerPolicy::Auto => "auto",
        }
    }

    fn parse(key: &str, value: &str) -> Result<Self, String> {
        SteerPolicy::ALL
            .into_iter()
            .find(|p| p.name() == value)
            .ok_or_else(|| format!("{key}={value}: expected flow, homa, omx or auto"))
    }
}

impl PortConfig {
    /// The port's name in logs and stats: its socket's file name.
    pub fn name(&self) -> String {
        self.socket
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.socket.display().to_string())
    }
}

const PORT_KEYS: &str =
    "socket, queues, mac, mtu, speed, attach, tap_offloads, pcap, pcap_snaplen, omx_ethertype, steer, classes, class_depth, rx_usecs, rx_frames, shape, packed, in_order, offloads, or an offload (csum, host_tso4, ...)";

impl FromStr for PortConfig {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut socket = None;
        let mut queues = 1;
        let mut mac = None;
        let mut mtu = DEFAULT_MTU;
        let mut speed = DEFAULT_SPEED_MBPS;
        let mut attach = AttachSpec::Switch;
        let mut pcap = None;
        let mut pcap_snaplen = crate::capture::SNAPLEN;
        let mut offloads = features::ALL_OFFLOADS;
        let mut tap_offloads = true;
        let mut omx_ethertype = crate::wire::openmx::DEFAULT_ETHERTYPE;
        let mut steer = SteerPolicy::default();
        let mut classes = true;
        let (mut packed, mut in_order) = (true, true);
        let mut class_depth = DEFAULT_CLASS_DEPTH;
        let mut rx_usecs = DEFAULT_RX_USECS;
        let mut rx_frames = DEFAULT_RX_FRAMES;
        let mut shape = false;
        let mut seen: Vec<&str> = Vec::new();
        for item in spec.split(',') {
            let Some((key, value)) = item.split_once('=') else {
                return Err(format!("'{item}' is not key=value (keys: {PORT_KEYS})"));
            };
            if seen.contains(&key) {
                return Err(format!("'{key}' given twice"));
            }
            seen.push(key);
            match key {
                "socket" => {
                    if value.is_empty() {
                        return Err("socket path is empty".into());
                    }
                    socket = Some(
                        std::path::absolute(value)
                            .map_err(|e| format!("socket path '{value}': {e}"))?,
                    );
                }
                "queues" => {
                    queues = parse_range(key, value, 1, MAX_QUEUE_PAIRS as u64)? as u16;
                }
                "mac" => mac = Some(parse_mac(value)?),
                "mtu" => mtu = parse_range(key, value, MIN_MTU as u64, 65535)? as u16,
                "speed" => speed = parse_range(key, value, 1, u32::MAX as u64 - 1)? as u32,
                "attach" => {
                    attach = match value.split_once(':') {
                        None if value == "switch" => AttachSpec::Switch,
                        None if value == "loopback" => AttachSpec::Loopback,
                        Some(("tap", name)) => {
                            validate_tap_name(name)?;
                            AttachSpec::Tap(name.to_string())
                        }
                        _ => {
                            return Err(format!(
                                "attach '{value}' is not 'switch', 'tap:NAME' or 'loopback'"
                            ))
                        }
                    }
                }
                "pcap" => {
                    if value.is_empty() {
                        return Err("pcap path is empty".into());
                    }
                    pcap = Some(
                        std::path::absolute(value)
                            .map_err(|e| format!("pcap path '{value}': {e}"))?,
                    );
                }
                "tap_offloads" => tap_offloads = parse_on_off(key, value)?,
                "omx_ethertype" => omx_ethertype = parse_ethertype(key, value)?,
                "steer" => steer = SteerPolicy::parse(key, value)?,
                "classes" => classes = parse_on_off(key, value)?,
                "packed" => packed = parse_on_off(key, value)?,
                "in_order" => in_order = parse_on_off(key, value)?,
                "shape" => shape = parse_on_off(key, value)?,
                "rx_usecs" => rx_usecs = parse_range(key, value, 0, 1_000_000)? as u32,
                "rx_frames" => rx_frames = parse_range(key, value, 1, 4096)? as u32,
                "class_depth" => {
                    class_depth = parse_range(key, value, 1, MAX_CLASS_DEPTH as u64)? as u32
                }
                "pcap_snaplen" => {
                    pcap_snaplen =
                        parse_range(key, value, 64, crate::capture::SNAPLEN as u64)? as u32
                }
                "offloads" => {
                    if !parse_on_off(key, value)? {
                        offloads = 0;
                    }
                }
                _ => match features::OFFLOADS.iter().find(|(_, name)| *name == key) {
                    Some(&(b, _)) => {
                        if parse_on_off(key, value)? {
                            offloads |= features::bit(b);
                        } else {
                            offloads &= !features::bit(b);
                        }
                    }
                    None => return Err(format!("unknown key '{key}' (keys: {PORT_KEYS})")),
                },
            }
        }
        let socket = socket.ok_or_else(|| "socket=PATH is required".to_string())?;
        let mac = mac.unwrap_or_else(|| default_mac(&socket));
        Ok(PortConfig {
            socket,
            queues,
            mac,
            mtu,
            speed,
            attach,
            pcap,
            pcap_snaplen,
            offloads,
            tap_offloads,
            omx_ethertype,
            steer,
            classes,
            packed,
            in_order,
            class_depth,
            rx_usecs,
            rx_frames,
            shape,
        })
    }
}

fn parse_on_off(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{key}={value}: expected on or off")),
    }
}

/// An EtherType in hex (`0x86df`) or decimal, one that is not a length (below 0x0600) and
/// not one vnic parses as something else (IPv4, IPv6, ARP, VLAN tags).
fn parse_ethertype(key: &str, value: &str) -> Result<u16, String> {
    use crate::wire::ethernet::{
        ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, TPID_8021AD, TPID_8021Q,
    };
    let n = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => value.parse::<u16>(),
    }
    .map_err(|_| format!("{key}={value}: expected an EtherType like 0x86df"))?;
    if n < 0x0600 {
        return Err(format!(
            "{key}={value}: below 0x0600 is a length, not an EtherType"
        ));
    }
    if [
        ETHERTYPE_IPV4,
        ETHERTYPE_IPV6,
        ETHERTYPE_ARP,
        TPID_8021Q,
        TPID_8021AD,
    ]
    .contains(&n)
    {
        return Err(format!(
            "{key}={value}: that EtherType is IPv4, IPv6, ARP or a VLAN tag"
        ));
    }
    Ok(n)
}

fn parse_range(key: &str, value: &str, min: u64, max: u64) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{key}={value}: expected a number from {min} to {max}"
        )),
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (or `-` separated). A port MAC must be unicast and not zero.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let bad = || format!("mac '{s}' is not six hex bytes like 02:00:00:00:00:01");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || p.len() > 2 {
            return Err(bad());
        }
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("mac '{s}' is a multicast address"));
    }
    if mac == [0; 6] {
        return Err(format!("mac '{s}' is all zeros"));
    }
    Ok(mac)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A stable, locally administered unicast MAC derived from the socket path (FNV-1a 64).
pub fn default_mac(socket: &Path) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in socket.as_os_str().as_encoded_bytes() {
        h = (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// Checks a Linux interface name (a tap's): 1 to 15 bytes, no '/', ':' or whitespace.
pub fn validate_tap_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(format!(
            "tap name '{name}' must be 1 to {} characters",
            libc::IFNAMSIZ - 1
        ));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || !c.is_ascii())
    {
        return Err(format!("tap name '{name}' contains an invalid character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_spec_parses() {
        let p: PortConfig = "socket=/tmp/a.sock,queues=4,mac=02:aa:bb:cc:dd:ee,mtu=9000,speed=25000,attach=tap:vnic0"
            .parse()
            .unwrap();
        assert_eq!(p.socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!((p.queues, p.mtu, p.speed), (4, 9000, 25000));
        assert_eq!(p.mac, [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]);
        assert_eq!(p.attach, AttachSpec::Tap("vnic0".into()));
        assert_eq!(p.name(), "a.sock");
    }

    #[test]
    fn defaults_and_stable_mac() {
        let a: PortConfig = "socket=/tmp/a.sock".parse().unwrap();
        let b: PortConfig = "socket=/tmp/a.sock".parse().unwrap();
        let c: PortConfig = "socket=/tmp/b.sock".parse().unwrap();
        assert_eq!(
            (a.queues, a.mtu, a.speed, a.attach.clone()),
            (1, 1500, 10000, AttachSpec::Switch)
        );
        assert_eq!(a.mac, b.mac);
        assert_ne!(a.mac, c.mac);
        assert_eq!(a.mac[0], 0x02, "locally administered unicast");
    }

    #[test]
    fn bad_specs_name_the_problem() {
        let err = |s: &str| s.parse::<PortConfig>().unwrap_err();
        assert!(err("queues=2").contains("socket=PATH is required"));
        assert!(err("socket=/x,queues=17").contains("queues=17"));
        assert!(err("socket=/x,queues=0").contains("queues=0"));
        assert!(err("socket=/x,mtu=67").contains("mtu=67"));
        assert!(err("socket=/x,mac=01:00:00:00:00:01").contains("multicast"));
        assert!(err("socket=/x,mac=zz").contains("mac 'zz'"));
        assert!(err("socket=/x,colour=red").contains("unknown key 'colour'"));
        assert!(err("socket=/x,attach=bridge").contains("attach 'bridge'"));
        assert!(err("socket=/x,attach=tap:waytoolongname0123").contains("1 to 15"));
        assert!(err("socket=/x,socket=/y").contains("given twice"));
        assert!(err("socket=/x,queues").contains("not key=value"));
        assert!(err("socket=/x,csum=maybe").contains("csum=maybe: expected on or off"));
        assert!(err("socket=/x,omx_ethertype=0x5dc").contains("is a length"));
        assert!(err("socket=/x,omx_ethertype=0x0800").contains("IPv4, IPv6, ARP or a VLAN"));
        assert!(err("socket=/x,omx_ethertype=0x8100").contains("IPv4, IPv6, ARP or a VLAN"));
        assert!(err("socket=/x,omx_ethertype=0x1ffff").contains("like 0x86df"));
        assert!(err("socket=/x,omx_ethertype=omx").contains("like 0x86df"));
        assert!(err("socket=/x,steer=rss").contains("steer=rss: expected flow, homa, omx or auto"));
        assert!(err("socket=/x,classes=8").contains("classes=8: expected on or off"));
        assert!(err("socket=/x,class_depth=0").contains("class_depth=0"));
        assert!(err("socket=/x,class_depth=65537").contains("class_depth=65537"));
        assert!(err("socket=/x,rx_usecs=-1").contains("rx_usecs=-1: expected a number from 0"));
        assert!(err("socket=/x,rx_frames=0").contains("rx_frames=0"));
    }

    #[test]
    fn packed_ring_and_in_order_offered_unless_switched_off() {
        let c: PortConfig = "socket=/x".parse().unwrap();
        assert_eq!((c.packed, c.in_order), (true, true));
        let c: PortConfig = "socket=/x,packed=off,in_order=off".parse().unwrap();
        assert_eq!((c.packed, c.in_order), (false, false));
        let err = "socket=/x,packed=yes".parse::<PortConfig>().unwrap_err();
        assert!(err.contains("packed=yes: expected on or off"), "{err}");
    }

    #[test]
    fn priority_classes_on_by_default_and_their_depth() {
        let c: PortConfig = "socket=/x".parse().unwrap();
        assert_eq!((c.classes, c.class_depth), (true, DEFAULT_CLASS_DEPTH));
        let c: PortConfig = "socket=/x,classes=off,class_depth=64".parse().unwrap();
        assert_eq!((c.classes, c.class_depth), (false, 64));
        assert_eq!(
            (c.rx_usecs, c.rx_frames),
            (DEFAULT_RX_USECS, DEFAULT_RX_FRAMES)
        );
        let c: PortConfig = "socket=/x,rx_usecs=0,rx_frames=1".parse().unwrap();
        assert_eq!((c.rx_usecs, c.rx_frames), (0, 1));
        assert!(!c.shape);
        let c: PortConfig = "socket=/x,shape=on,speed=100".parse().unwrap();
        assert!(c.shape && c.speed == 100);
    }

    #[test]
    fn openmx_ethertype_in_hex_or_decimal() {
        let at = |s: &str| s.parse::<PortConfig>().unwrap().omx_ethertype;
        assert_eq!(at("socket=/x"), 0x86df);
        assert_eq!(at("socket=/x,omx_ethertype=0x88B6"), 0x88b6);
        assert_eq!(at("socket=/x,omx_ethertype=34997"), 0x88b5);
    }

    #[test]
    fn steering_policies() {
        let steer = |s: &str| s.parse::<PortConfig>().unwrap().steer;
        assert_eq!(steer("socket=/x"), SteerPolicy::Auto);
        for p in SteerPolicy::ALL {
            assert_eq!(steer(&format!("socket=/x,steer={}", p.name())), p);
        }
    }

    #[test]
    fn offloads_switch_off_one_by_one_or_all() {
        use virtio_bindings::virtio_net::{VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_TSO4};
        let all: PortConfig = "socket=/x".parse().unwrap();
        assert_eq!(all.offloads, features::ALL_OFFLOADS);
        let some: PortConfig = "socket=/x,csum=off,guest_tso4=off".parse().unwrap();
        assert!(!features::has(some.offloads, VIRTIO_NET_F_CSUM));
        assert!(!features::has(some.offloads, VIRTIO_NET_F_GUEST_TSO4));
        let none: PortConfig = "socket=/x,offloads=off,guest_csum=on".parse().unwrap();
        assert_eq!(
            none.offloads,
            features::bit(virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_CSUM)
        );
    }
}
