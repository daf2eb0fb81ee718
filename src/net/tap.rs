//! A host tap device with one queue per queue pair.
//!
//! Opened with IFF_MULTI_QUEUE (one fd per queue, each polled by its pair's worker), IFF_NO_PI
//! and IFF_VNET_HDR (every frame is preceded by a 12-byte virtio-net header, so offload state
//! passes through unchanged both ways). With offloads on (TUNSETOFFLOAD), the kernel may hand us
//! frames with partial checksums and TCP (and, where the kernel can, UDP) segmentation jobs, and
//! takes the same from us; with them off, it hands us finished frames only and vnic finishes
//! frames before writing them. Written on raw ioctls, as Cloud
//! Hypervisor's net_util does, because the tap crates do not expose multiqueue + vnet headers
//! with raw fds for our own epoll.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::config::validate_tap_name;
use crate::frame::net_header::{NetHeader, HEADER_LEN};
use crate::frame::Frame;
use crate::offload::RxCaps;

const TUNSETOFFLOAD: libc::Ioctl = 0x4004_54d0;
/// TUNSETOFFLOAD flags (linux/if_tun.h).
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;
pub const TUN_F_USO4: u32 = 0x20;
pub const TUN_F_USO6: u32 = 0x40;

pub struct Tap {
    name: String,
    queues: Vec<File>,
    /// TUN_F_* flags in force: what the kernel may hand us, and what we may hand it.
    offloads: u32,
}

#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[repr(C)]
struct IfReqMtu {
    name: [u8; libc::IFNAMSIZ],
    mtu: libc::c_int,
    _pad: [u8; 20],
}

fn ifname(name: &str) -> [u8; libc::IFNAMSIZ] {
    let mut n = [0u8; libc::IFNAMSIZ];
    n[..name.len()].copy_from_slice(name.as_bytes());
    n
}

fn ioctl_err(what: &str, name: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("tap {name}: {what}: {e}"))
}

impl Tap {
    /// Opens (creating if missing) tap `name` with `queues` queues, sets its MTU and brings it
    /// up. With `offloads`, enables checksum and segmentation offloads (UDP segmentation only
    /// where the kernel knows it).
    pub fn open(name: &str, queues: u16, mtu: u16, offloads: bool) -> io::Result<Tap> {
        validate_tap_name(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut files = Vec::with_capacity(queues as usize);
        for _ in 0..queues {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open("/dev/net/tun")
                .map_err(|e| io::Error::new(e.kind(), format!("open /dev/net/tun: {e}")))?;
            let mut req = IfReqFlags {
                name: ifname(name),
                flags: (libc::IFF_TAP
                    | libc::IFF_NO_PI
                    | libc::IFF_VNET_HDR
                    | libc::IFF_MULTI_QUEUE) as libc::c_short,
                _pad: [0; 22],
            };
            // SAFETY: valid fd and a properly sized ifreq that outlives the call.
            if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
                let e = io::Error::last_os_error();
                let hint = if e.raw_os_error() == Some(libc::EINVAL) {
                    " (does it exist already as a non-tap or without multi_queue?)"
                } else if e.raw_os_error() == Some(libc::EPERM) {
                    " (creating a tap needs CAP_NET_ADMIN)"
                } else {
                    ""
                };
                return Err(io::Error::new(
                    e.kind(),
                    format!("tap {name}: cannot attach queue: {e}{hint}"),
                ));
            }
            let hdr_len: libc::c_int = HEADER_LEN as libc::c_int;
            // SAFETY: valid fd, pointer to an int.
            if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
                return Err(ioctl_err("TUNSETVNETHDRSZ", name));
            }
            files.push(file);
        }
        let wanted = if offloads {
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6
        } else {
            0
        };
        let offloads = set_offloads(&files, wanted)
            .or_else(|_| set_offloads(&files, wanted & !(TUN_F_USO4 | TUN_F_USO6)))
            .map_err(|_| ioctl_err("TUNSETOFFLOAD", name))?;
        let tap = Tap {
            name: name.to_string(),
            queues: files,
            offloads,
        };
        tap.set_mtu_and_up(mtu)?;
        Ok(tap)
    }

    fn set_mtu_and_up(&self, mtu: u16) -> io::Result<()> {
        // SAFETY: plain socket(2) call.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(ioctl_err("socket", &self.name));
        }
        // SAFETY: sock is a fresh fd we own.
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
        let mut m = IfReqMtu {
            name: ifname(&self.name),
            mtu: mtu as libc::c_int,
            _pad: [0; 20],
        };
        // SAFETY: valid fd and ifreq.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &mut m) } < 0 {
            return Err(ioctl_err("set MTU", &self.name));
        }
        let mut f = IfReqFlags {
            name: ifname(&self.name),
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: valid fd and ifreq.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut f) } < 0 {
            return Err(ioctl_err("get flags", &self.name));
        }
        f.flags |= libc::IFF_UP as libc::c_short;
        // SAFETY: valid fd and ifreq.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut f) } < 0 {
            return Err(ioctl_err("bring up", &self.name));
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// TUN_F_* offload flags in force.
    pub fn offloads(&self) -> u32 {
        self.offloads
    }

    /// What vnic may write to the tap: the offloads in force (the same both ways).
    pub fn rx_caps(&self) -> RxCaps {
        let on = |f: u32| self.offloads & f != 0;
        RxCaps {
            partial_csum: on(TUN_F_CSUM),
            tso4: on(TUN_F_CSUM) && on(TUN_F_TSO4),
            tso6: on(TUN_F_CSUM) && on(TUN_F_TSO6),
            ecn: on(TUN_F_TSO_ECN),
            uso4: on(TUN_F_CSUM) && on(TUN_F_USO4),
            uso6: on(TUN_F_CSUM) && on(TUN_F_USO6),
        }
    }

    pub fn queue_fd(&self, queue: usize) -> RawFd {
        self.queues[queue].as_raw_fd()
    }

    /// Writes one frame with its virtio-net header to tap queue `queue`. The header must only
    /// ask for offloads in [`Tap::offloads`].
    pub fn write_frame(&self, queue: usize, header: &NetHeader, data: &[u8]) -> io::Result<()> {
        let hdr = NetHeader {
            num_buffers: 0,
            ..*header
        }
        .to_bytes();
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut _,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: data.as_ptr() as *mut _,
                iov_len: data.len(),
            },
        ];
        // SAFETY: the iovecs point to live buffers of the given lengths.
        let n = unsafe { libc::writev(self.queue_fd(queue), iov.as_ptr(), 2) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one frame from tap queue `queue` into `frame` (at most `max_len` bytes of frame).
    /// Returns false when nothing is waiting.
    pub fn read_frame(&self, queue: usize, frame: &mut Frame, max_len: usize) -> io::Result<bool> {
        let mut hdr = [0u8; HEADER_LEN];
        frame.data.clear();
        frame.data.reserve(max_len);
        let spare = frame.data.spare_capacity_mut();
        let iov = [
            libc::iovec {
                iov_base: hdr.as_mut_ptr() as *mut _,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: spare.as_mut_ptr() as *mut _,
                iov_len: max_len.min(spare.len()),
            },
        ];
        // SAFETY: the iovecs point to writable buffers of the given lengths.
        let n = unsafe { libc::readv(self.queue_fd(queue), iov.as_ptr(), 2) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(false),
                _ => Err(e),
            };
        }
        let payload = (n as usize).saturating_sub(HEADER_LEN);
        // SAFETY: readv initialised `payload` bytes of the spare capacity.
        unsafe { frame.data.set_len(payload) };
        frame.header = NetHeader {
            num_buffers: 0,
            ..NetHeader::from_bytes(&hdr)
        };
        Ok(true)
    }
}

/// Applies TUNSETOFFLOAD `flags` to every queue; returns the flags on success.
fn set_offloads(queues: &[File], flags: u32) -> io::Result<u32> {
    for q in queues {
        // SAFETY: valid fd, integer argument.
        if unsafe { libc::ioctl(q.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(flags)
}
