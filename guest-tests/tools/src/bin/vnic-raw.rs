//! vnic-raw: sends Homa and Open-MX packets from a test guest, through the guest kernel's own
//! stack and its virtio_net driver, for tests of vnic's classification (no Homa module or
//! Open-MX library in the guest image: the packets are laid out here).
//!
//!   vnic-raw homa DST_IP COUNT PRECEDENCE
//!       COUNT GRANTs and COUNT single-packet DATA messages (IP protocol 146, a raw IPv4
//!       socket: the kernel writes the IP header) with that IP precedence (0-7)
//!   vnic-raw omx IFACE DST_MAC COUNT
//!       COUNT Open-MX TINY packets for endpoints 0, 1, 2, 3, 0, ... in turn (EtherType
//!       0x86df, an AF_PACKET socket)
//!
//! Last line: "VNIC-RAW sent=N" (exit 0 only if every packet was sent).
//!
//! No dependencies: the few libc calls are declared here (the binary is linked statically).

use std::ffi::CString;
use std::process::ExitCode;

const AF_INET: i32 = 2;
const AF_PACKET: i32 = 17;
const SOCK_RAW: i32 = 3;
const SOCK_DGRAM: i32 = 2;
const IPPROTO_IP: i32 = 0;
const IP_TOS: i32 = 1;
const HOMA: i32 = 146;
const OMX_ETHERTYPE: u16 = 0x86df;

#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: [u8; 4],
    zero: [u8; 8],
}

#[repr(C)]
struct SockaddrLl {
    family: u16,
    protocol: u16,
    ifindex: i32,
    hatype: u16,
    pkttype: u8,
    halen: u8,
    addr: [u8; 8],
}

extern "C" {
    fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const u8, len: u32) -> i32;
    fn sendto(fd: i32, buf: *const u8, len: usize, flags: i32, to: *const u8, tolen: u32) -> isize;
    fn if_nametoindex(name: *const i8) -> u32;
}

fn fail(what: &str) -> ExitCode {
    eprintln!("vnic-raw: {what}: {}", std::io::Error::last_os_error());
    ExitCode::FAILURE
}

/// A Homa packet of type `kind` (HomaModule's header: ports, type at 11, doff, flags 0x06,
/// the RPC id at 20; DATA: message length at 28, `payload` bytes after the 56-byte header).
fn homa_packet(kind: u8, rpc_id: u64, payload: usize) -> Vec<u8> {
    let len = if kind == 0x10 { 56 } else { 33 };
    let mut p = vec![0u8; len];
    p[0..2].copy_from_slice(&4000u16.to_be_bytes());
    p[2..4].copy_from_slice(&99u16.to_be_bytes());
    p[11] = kind;
    p[12] = if kind == 0x10 { 14 << 4 } else { 5 << 4 };
    p[13] = 0x06;
    p[20..28].copy_from_slice(&rpc_id.to_be_bytes());
    if kind == 0x10 {
        p[28..32].copy_from_slice(&(payload as u32).to_be_bytes());
        p[52..56].copy_from_slice(&u32::MAX.to_be_bytes());
        p.extend((0..payload).map(|i| i as u8));
    }
    p
}

fn homa(dst: &str, count: usize, precedence: u8) -> ExitCode {
    let Ok(ip) = dst.parse::<std::net::Ipv4Addr>() else {
        eprintln!("vnic-raw: '{dst}' is not an IPv4 address");
        return ExitCode::FAILURE;
    };
    // SAFETY: plain syscalls on a socket this function owns; buffers outlive the calls.
    unsafe {
        let fd = socket(AF_INET, SOCK_RAW, HOMA);
        if fd < 0 {
            return fail("socket(AF_INET, SOCK_RAW, 146)");
        }
        let tos: i32 = i32::from(precedence) << 5;
        if setsockopt(fd, IPPROTO_IP, IP_TOS, (&tos as *const i32).cast(), 4) != 0 {
            return fail("IP_TOS");
        }
        let to = SockaddrIn {
            family: AF_INET as u16,
            port: 0,
            addr: ip.octets(),
            zero: [0; 8],
        };
        let mut sent = 0;
        for i in 0..count as u64 {
            for p in [
                homa_packet(0x11, 2 * i, 0),
                homa_packet(0x10, 2 * i + 1, 200),
            ] {
                let to_ptr = (&to as *const SockaddrIn).cast();
                if sendto(fd, p.as_ptr(), p.len(), 0, to_ptr, 16) != p.len() as isize {
                    return fail("sendto");
                }
                sent += 1;
            }
        }
        println!("VNIC-RAW sent={sent}");
    }
    ExitCode::SUCCESS
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

fn omx(iface: &str, dst: &str, count: usize) -> ExitCode {
    let Some(mac) = parse_mac(dst) else {
        eprintln!("vnic-raw: '{dst}' is not a MAC address");
        return ExitCode::FAILURE;
    };
    let name = CString::new(iface).expect("no NUL in an interface name");
    // SAFETY: as in `homa`.
    unsafe {
        let ifindex = if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            return fail(iface);
        }
        let fd = socket(AF_PACKET, SOCK_DGRAM, i32::from(OMX_ETHERTYPE.to_be()));
        if fd < 0 {
            return fail("socket(AF_PACKET)");
        }
        let mut addr = [0u8; 8];
        addr[..6].copy_from_slice(&mac);
        let to = SockaddrLl {
            family: AF_PACKET as u16,
            protocol: OMX_ETHERTYPE.to_be(),
            ifindex: ifindex as i32,
            hatype: 0,
            pkttype: 0,
            halen: 6,
            addr,
        };
        // TINY (37): ptype at 2, dst_ep at 3 (after the EtherType).
        let mut p = [0u8; 46];
        p[2] = 37;
        let mut sent = 0;
        for i in 0..count {
            p[3] = (i % 4) as u8;
            let to_ptr = (&to as *const SockaddrLl).cast();
            let n = std::mem::size_of::<SockaddrLl>() as u32;
            if sendto(fd, p.as_ptr(), p.len(), 0, to_ptr, n) != p.len() as isize {
                return fail("sendto");
            }
            sent += 1;
        }
        println!("VNIC-RAW sent={sent}");
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args[..] {
        ["homa", dst, count, prec] => match (count.parse(), prec.parse::<u8>()) {
            (Ok(n), Ok(p)) if p < 8 => homa(dst, n, p),
            _ => {
                eprintln!("vnic-raw: homa DST_IP COUNT PRECEDENCE(0-7)");
                ExitCode::FAILURE
            }
        },
        ["omx", iface, dst, count] => match count.parse() {
            Ok(n) => omx(iface, dst, n),
            _ => {
                eprintln!("vnic-raw: omx IFACE DST_MAC COUNT");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!(
                "usage: vnic-raw homa DST_IP COUNT PRECEDENCE | vnic-raw omx IFACE DST_MAC COUNT"
            );
            ExitCode::FAILURE
        }
    }
}
