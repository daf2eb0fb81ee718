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
//!   vnic-raw omx-types IFACE DST_MAC bulk|urgent ROUNDS
//!       per round and endpoint 0-7, Open-MX's bulk packets (three medium fragments that are
//!       not a message's last, a PULL_REPLY: 4 per endpoint) or its latency-critical ones
//!       (CONNECT, TINY, SMALL, a medium's last fragment, RNDV, PULL, NOTIFY, TRUC, NACK_LIB,
//!       NACK_MCP: 10 per endpoint), each with a payload the receiver can check
//!   vnic-raw omx-recv IFACE EXPECTED SECS
//!       receives Open-MX packets until EXPECTED arrived or SECS passed; checks each payload;
//!       prints "VNIC-RAW type=T n=N" per type, then "VNIC-RAW received=N bad=B" (exit 0 only
//!       if exactly EXPECTED arrived, all intact)
//!
//! Last line of the senders: "VNIC-RAW sent=N" (exit 0 only if every packet was sent).
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
    fn bind(fd: i32, addr: *const u8, len: u32) -> i32;
    fn recv(fd: i32, buf: *mut u8, len: usize, flags: i32) -> isize;
}

const SOL_SOCKET: i32 = 1;
const SO_RCVTIMEO: i32 = 20;
/// SO_RCVBUF past `net.core.rmem_max` (root): a burst of hundreds of packets must fit while a
/// TCG guest's process is slow to read them.
const SO_RCVBUFFORCE: i32 = 33;

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

/// An AF_PACKET socket for Open-MX's EtherType and the address of `dst` on `iface` (a zero
/// MAC for a receiver); Err: what failed.
fn omx_socket(iface: &str, dst: [u8; 6]) -> Result<(i32, SockaddrLl), ExitCode> {
    let name = CString::new(iface).expect("no NUL in an interface name");
    // SAFETY: plain syscalls; the name outlives the call.
    unsafe {
        let ifindex = if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            return Err(fail(iface));
        }
        let fd = socket(AF_PACKET, SOCK_DGRAM, i32::from(OMX_ETHERTYPE.to_be()));
        if fd < 0 {
            return Err(fail("socket(AF_PACKET)"));
        }
        let mut addr = [0u8; 8];
        addr[..6].copy_from_slice(&dst);
        let to = SockaddrLl {
            family: AF_PACKET as u16,
            protocol: OMX_ETHERTYPE.to_be(),
            ifindex: ifindex as i32,
            hatype: 0,
            pkttype: 0,
            halen: 6,
            addr,
        };
        Ok((fd, to))
    }
}

/// [`omx_socket`] for sending to the MAC address `dst`.
fn omx_sender(iface: &str, dst: &str) -> Result<(i32, SockaddrLl), ExitCode> {
    let Some(mac) = parse_mac(dst) else {
        eprintln!("vnic-raw: '{dst}' is not a MAC address");
        return Err(ExitCode::FAILURE);
    };
    omx_socket(iface, mac)
}

/// Sends `p` (an Open-MX packet from after the EtherType) to `to` on `fd`.
fn omx_send(fd: i32, to: &SockaddrLl, p: &[u8]) -> Result<(), ExitCode> {
    let to_ptr = (to as *const SockaddrLl).cast();
    let n = std::mem::size_of::<SockaddrLl>() as u32;
    // SAFETY: the buffer and the address outlive the call.
    if unsafe { sendto(fd, p.as_ptr(), p.len(), 0, to_ptr, n) } != p.len() as isize {
        return Err(fail("sendto"));
    }
    Ok(())
}

fn omx(iface: &str, dst: &str, count: usize) -> ExitCode {
    let (fd, to) = match omx_sender(iface, dst) {
        Ok(s) => s,
        Err(e) => return e,
    };
    // TINY (37): ptype at 2, dst_ep at 3 (after the EtherType).
    let mut p = [0u8; 46];
    p[2] = 37;
    for i in 0..count {
        p[3] = (i % 4) as u8;
        if let Err(e) = omx_send(fd, &to, &p) {
            return e;
        }
    }
    println!("VNIC-RAW sent={count}");
    ExitCode::SUCCESS
}

// Open-MX packet types (`omx_wire.h`).
const TRUC: u8 = 35;
const CONNECT: u8 = 36;
const TINY: u8 = 37;
const SMALL: u8 = 38;
const MEDIUM_FRAG: u8 = 39;
const RNDV: u8 = 40;
const PULL: u8 = 41;
const PULL_REPLY: u8 = 42;
const NOTIFY: u8 = 43;
const NACK_LIB: u8 = 44;
const NACK_MCP: u8 = 45;
const PULL_REPLY_MAGIC: u32 = 0x2107_1980;
/// Where the test's own fields sit (after every header field vnic reads): the endpoint, the
/// round, then the payload.
const TEST_EP: usize = 43;
const TEST_ROUND: usize = 44;
const PAYLOAD: usize = 48;
/// A medium of four 1 KiB fragments (`frag_pipeline` 10).
const MEDIUM_LEN: u32 = 4096;

/// The payload byte `k` of a test packet of type `t` for endpoint `ep` in round `round`.
fn pattern(t: u8, ep: u8, round: u32, k: usize) -> u8 {
    (t as usize + ep as usize * 7 + round as usize * 13 + k) as u8
}

/// An Open-MX packet of type `t` for endpoint `ep`, laid out as `omx_wire.h` does (offsets
/// after the EtherType); `frag`: a medium fragment's sequence number.
fn omx_packet(t: u8, ep: u8, round: u32, frag: u8) -> Vec<u8> {
    let bulk = t == MEDIUM_FRAG || t == PULL_REPLY;
    let mut p = vec![0u8; PAYLOAD + if bulk { 1024 } else { 64 }];
    p[2] = t;
    match t {
        PULL_REPLY => {
            p[3] = frag;
            p[4..6].copy_from_slice(&1024u16.to_be_bytes());
            p[14..18].copy_from_slice(&(u32::from(ep) ^ PULL_REPLY_MAGIC).to_be_bytes());
        }
        NACK_LIB => p[11] = ep,
        NACK_MCP => {}
        _ => p[3] = ep,
    }
    if t == MEDIUM_FRAG {
        p[6..10].copy_from_slice(&MEDIUM_LEN.to_be_bytes());
        p[26..28].copy_from_slice(&1024u16.to_be_bytes());
        p[28] = frag;
        p[29] = 10;
    }
    p[TEST_EP] = ep;
    p[TEST_ROUND..PAYLOAD].copy_from_slice(&round.to_be_bytes());
    for (k, b) in p.iter_mut().enumerate().skip(PAYLOAD) {
        *b = pattern(t, ep, round, k);
    }
    p
}

fn omx_types(iface: &str, dst: &str, phase: &str, rounds: u32) -> ExitCode {
    let (fd, to) = match omx_sender(iface, dst) {
        Ok(s) => s,
        Err(e) => return e,
    };
    // (type, medium fragment or pull reply frame) per endpoint and round.
    let kinds: &[(u8, u8)] = match phase {
        "bulk" => &[
            (MEDIUM_FRAG, 0),
            (MEDIUM_FRAG, 1),
            (MEDIUM_FRAG, 2),
            (PULL_REPLY, 0),
        ],
        "urgent" => &[
            (CONNECT, 0),
            (TINY, 0),
            (SMALL, 0),
            (MEDIUM_FRAG, 3),
            (RNDV, 0),
            (PULL, 0),
            (NOTIFY, 0),
            (TRUC, 0),
            (NACK_LIB, 0),
            (NACK_MCP, 0),
        ],
        _ => {
            eprintln!("vnic-raw: omx-types phase '{phase}' is not bulk or urgent");
            return ExitCode::FAILURE;
        }
    };
    let mut sent = 0;
    for round in 0..rounds {
        for ep in 0..8u8 {
            for &(t, frag) in kinds {
                if let Err(e) = omx_send(fd, &to, &omx_packet(t, ep, round, frag)) {
                    return e;
                }
                sent += 1;
            }
        }
    }
    println!("VNIC-RAW sent={sent}");
    ExitCode::SUCCESS
}

fn omx_recv(iface: &str, expected: usize, secs: u64) -> ExitCode {
    let (fd, me) = match omx_socket(iface, [0; 6]) {
        Ok(s) => s,
        Err(e) => return e,
    };
    // SAFETY: plain syscalls on our socket; the buffers outlive them.
    unsafe {
        let len = std::mem::size_of::<SockaddrLl>() as u32;
        if bind(fd, (&me as *const SockaddrLl).cast(), len) != 0 {
            return fail("bind");
        }
        let rcvbuf: i32 = 16 << 20;
        if setsockopt(
            fd,
            SOL_SOCKET,
            SO_RCVBUFFORCE,
            (&rcvbuf as *const i32).cast(),
            4,
        ) != 0
        {
            return fail("SO_RCVBUFFORCE");
        }
        let tv = [1i64, 0]; // 1 s: look at the clock at least that often
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, tv.as_ptr().cast(), 16);
    }
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let (mut per_type, mut bad, mut got) = ([0usize; 64], 0, 0);
    let mut buf = vec![0u8; 65536];
    while got < expected && std::time::Instant::now() < end {
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { recv(fd, buf.as_mut_ptr(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let p = &buf[..n as usize];
        got += 1;
        // Intact: the very packet its type, endpoint, round and fragment say was sent.
        let intact = p.len() > PAYLOAD && {
            let (t, ep) = (p[2], p[TEST_EP]);
            let round = u32::from_be_bytes(p[TEST_ROUND..PAYLOAD].try_into().unwrap());
            let frag = match t {
                MEDIUM_FRAG => p[28],
                PULL_REPLY => p[3],
                _ => 0,
            };
            p == omx_packet(t, ep, round, frag)
        };
        if intact {
            per_type[p[2] as usize % 64] += 1;
        } else {
            bad += 1;
        }
    }
    for (t, n) in per_type.iter().enumerate().filter(|(_, n)| **n > 0) {
        println!("VNIC-RAW type={t} n={n}");
    }
    println!("VNIC-RAW received={got} bad={bad}");
    if got == expected && bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
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
        ["omx-types", iface, dst, phase, rounds] => match rounds.parse() {
            Ok(n) => omx_types(iface, dst, phase, n),
            _ => {
                eprintln!("vnic-raw: omx-types IFACE DST_MAC bulk|urgent ROUNDS");
                ExitCode::FAILURE
            }
        },
        ["omx-recv", iface, expected, secs] => match (expected.parse(), secs.parse()) {
            (Ok(n), Ok(s)) => omx_recv(iface, n, s),
            _ => {
                eprintln!("vnic-raw: omx-recv IFACE EXPECTED SECS");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!(
                "usage: vnic-raw homa DST_IP COUNT PRECEDENCE | omx IFACE DST_MAC COUNT | \
                 omx-types IFACE DST_MAC bulk|urgent ROUNDS | omx-recv IFACE EXPECTED SECS"
            );
            ExitCode::FAILURE
        }
    }
}
