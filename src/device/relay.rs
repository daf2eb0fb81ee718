//! A relay between a frontend's connection and vhost-user-backend, for QEMU's early
//! `SET_VRING_ENABLE`.
//!
//! QEMU's virtio-net sends `VHOST_USER_SET_VRING_ENABLE` as soon as it is connected (from
//! `peer_attach`/`peer_detach`: at device realize, after every reconnect, after a device reset),
//! before any `VHOST_USER_SET_FEATURES`. vhost 0.18 and vhost-user-backend 0.24 both refuse that
//! message unless `VHOST_USER_F_PROTOCOL_FEATURES` was acked by a `SET_FEATURES` ("inactive
//! feature"), and end the connection; QEMU reconnects a second later and does the same again, so
//! no QEMU guest ever got a working NIC. (The spec asks for the message only once the feature is
//! "negotiated"; QEMU reads that as "offered by the backend".)
//!
//! The relay sits between the frontend's socket and the library's: every message goes through
//! unchanged, with its file descriptors. In front of a `SET_VRING_ENABLE` that the library would
//! refuse (no `SET_FEATURES` since the connection or the last reset), it inserts a `SET_FEATURES`
//! carrying only `VHOST_USER_F_PROTOCOL_FEATURES`, without `NEED_REPLY`, so nothing comes back.
//! That changes nothing else: with that bit acked the library leaves the rings as they are, and
//! the frontend's own `SET_FEATURES` replaces the value before any ring starts. Replies and
//! anything the library sends go back to the frontend as they are.

use std::fs::DirBuilder;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};

use libc::{c_void, iovec};
use vhost::vhost_user::Listener;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::features::VHOST_USER_F_PROTOCOL_FEATURES;

/// vhost-user message header: request, flags, payload size (u32 each, little endian).
const HEADER_LEN: usize = 12;
/// Largest payload vhost accepts (its `MAX_MSG_SIZE`); a larger size is passed on raw.
const MAX_PAYLOAD: usize = 0x1000;
/// Most file descriptors one message may carry (vhost's `MAX_ATTACHED_FD_ENTRIES`).
const MAX_FDS: usize = 32;
const SET_FEATURES: u32 = 2;
const RESET_OWNER: u32 = 4;
const SET_VRING_ENABLE: u32 = 18;
const RESET_DEVICE: u32 = 34;
/// Header flags of a frontend request: protocol version 1, no NEED_REPLY.
const FLAGS_VERSION_1: u32 = 0x1;

/// A connected pair for the library: a listener holding one pending connection (give it to
/// `VhostUserDaemon::start`) and the relay's end of that connection.
///
/// The listener is bound in a fresh mode-0700 directory that is removed again at once, so no
/// other process can connect to it.
pub fn library_end() -> io::Result<(Listener, UnixStream)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    let mut tries = 0;
    let dir = loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("vnic-relay-{}-{n}", std::process::id()));
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => break dir,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 100 => tries += 1,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("relay directory {}: {e}", dir.display()),
                ))
            }
        }
    };
    let path = dir.join("s");
    let result = UnixListener::bind(&path).and_then(|l| Ok((l, UnixStream::connect(&path)?)));
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    let (listener, stream) = result?;
    Ok((Listener::from(listener), stream))
}

/// The two relay threads of one connection.
pub struct Relay {
    frontend: UnixStream,
    library: UnixStream,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Starts relaying between `frontend` (QEMU's connection) and `library` (from
    /// [`library_end`], after the daemon accepted it).
    pub fn start(name: &str, frontend: UnixStream, library: UnixStream) -> io::Result<Relay> {
        let (f1, l1) = (frontend.try_clone()?, library.try_clone()?);
        let (f2, l2) = (frontend.try_clone()?, library.try_clone()?);
        let port = name.to_string();
        let forward = thread::Builder::new()
            .name(format!("vnic-relay-{name}"))
            .spawn(move || match forward(&port, &f1, &l1) {
                // The frontend closed its side: pass that on; the library then ends the
                // connection, which ends the other thread.
                Ok(()) => {
                    let _ = l1.shutdown(Shutdown::Write);
                }
                Err(e) => {
                    log::debug!("port {port}: relay to the library ended: {e}");
                    shutdown(&f1, &l1);
                }
            })?;
        let backward = thread::Builder::new()
            .name(format!("vnic-relay-{name}"))
            .spawn(move || {
                let _ = copy_with_fds(&l2, &f2);
                shutdown(&f2, &l2);
            })?;
        Ok(Relay {
            frontend,
            library,
            threads: vec![forward, backward],
        })
    }

    /// Closes both connections and waits for the threads.
    pub fn stop(self) {
        shutdown(&self.frontend, &self.library);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn shutdown(a: &UnixStream, b: &UnixStream) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

/// Receives into `buf`, appending any file descriptors to `fds`. Returns the byte count (0 at
/// end of stream).
fn recv_some(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut raw: [RawFd; MAX_FDS] = [-1; MAX_FDS];
    let mut iov = [iovec {
        iov_base: buf.as_mut_ptr() as *mut c_void,
        iov_len: buf.len(),
    }];
    loop {
        // SAFETY: the iovec points into `buf`, which we borrow mutably for the call.
        match unsafe { sock.recv_with_fds(&mut iov, &mut raw) } {
            Ok((n, nfds)) => {
                for fd in &raw[..nfds] {
                    // SAFETY: the kernel just gave us these descriptors; nothing else owns them.
                    fds.push(unsafe { OwnedFd::from_raw_fd(*fd) });
                }
                return Ok(n);
            }
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    }
}

/// Fills `buf` completely. `Ok(false)`: the stream ended before the first byte.
fn recv_exact(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let n = recv_some(sock, &mut buf[got..], fds)?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(true)
}

/// Sends `parts` with `fds` attached to the first byte.
fn send_all(sock: &UnixStream, parts: &[&[u8]], fds: &[OwnedFd]) -> io::Result<()> {
    let data: Vec<u8> = parts.concat();
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let sent = loop {
        match sock.send_with_fds(&[&data[..]], &raw) {
            Ok(n) => break n,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    };
    let mut w = sock;
    w.write_all(&data[sent..])
}

/// Passes bytes and descriptors from `from` to `to` as they come, until `from` ends.
fn copy_with_fds(from: &UnixStream, to: &UnixStream) -> io::Result<()> {
    let mut buf = vec![0u8; HEADER_LEN + MAX_PAYLOAD];
    loop {
        let mut fds = Vec::new();
        let n = recv_some(from, &mut buf, &mut fds)?;
        if n == 0 {
            return Ok(());
        }
        send_all(to, &[&buf[..n]], &fds)?;
    }
}

/// Frontend to library, message by message, inserting `SET_FEATURES(PROTOCOL_FEATURES)` in
/// front of a `SET_VRING_ENABLE` that comes before any `SET_FEATURES`.
fn forward(port: &str, frontend: &UnixStream, library: &UnixStream) -> io::Result<()> {
    // Whether the library has seen a SET_FEATURES since the connection or the last reset.
    let mut features_set = false;
    let mut payload = vec![0u8; MAX_PAYLOAD];
    loop {
        let mut fds = Vec::new();
        let mut hdr = [0u8; HEADER_LEN];
        if !recv_exact(frontend, &mut hdr, &mut fds)? {
            return Ok(());
        }
        let word = |i: usize| u32::from_le_bytes(hdr[4 * i..4 * i + 4].try_into().unwrap());
        let (request, size) = (word(0), word(2) as usize);
        if size > MAX_PAYLOAD {
            // Not a message the library accepts: pass everything on and let it decide.
            send_all(library, &[&hdr], &fds)?;
            return copy_with_fds(frontend, library);
        }
        let body = &mut payload[..size];
        recv_exact(frontend, body, &mut fds)?;
        match request {
            SET_FEATURES => features_set = true,
            RESET_OWNER | RESET_DEVICE => features_set = false,
            SET_VRING_ENABLE if !features_set => {
                log::debug!(
                    "port {port}: SET_VRING_ENABLE before SET_FEATURES: \
                     acking PROTOCOL_FEATURES to the library first"
                );
                send_all(library, &[&protocol_features_message()], &[])?;
                features_set = true;
            }
            _ => {}
        }
        send_all(library, &[&hdr, body], &fds)?;
    }
}

/// `SET_FEATURES` with only `VHOST_USER_F_PROTOCOL_FEATURES`, no reply wanted.
fn protocol_features_message() -> [u8; HEADER_LEN + 8] {
    let mut m = [0u8; HEADER_LEN + 8];
    m[0..4].copy_from_slice(&SET_FEATURES.to_le_bytes());
    m[4..8].copy_from_slice(&FLAGS_VERSION_1.to_le_bytes());
    m[8..12].copy_from_slice(&8u32.to_le_bytes());
    m[12..20].copy_from_slice(&(1u64 << VHOST_USER_F_PROTOCOL_FEATURES).to_le_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn msg(request: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&request.to_le_bytes());
        m.extend_from_slice(&FLAGS_VERSION_1.to_le_bytes());
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(body);
        m
    }

    fn read_msg(s: &mut UnixStream) -> (u32, Vec<u8>) {
        let mut hdr = [0u8; HEADER_LEN];
        s.read_exact(&mut hdr).unwrap();
        let req = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
        let mut body = vec![0u8; size];
        s.read_exact(&mut body).unwrap();
        (req, body)
    }

    #[test]
    fn early_vring_enable_gets_protocol_features_first_and_only_once() {
        let (mut qemu, frontend) = UnixStream::pair().unwrap();
        let (library, mut lib) = UnixStream::pair().unwrap();
        let relay = Relay::start("t", frontend, library).unwrap();
        let enable = [0u8, 0, 0, 0, 1, 0, 0, 0];
        qemu.write_all(&msg(1, &[])).unwrap(); // GET_FEATURES
        qemu.write_all(&msg(SET_VRING_ENABLE, &enable)).unwrap();
        qemu.write_all(&msg(SET_VRING_ENABLE, &enable)).unwrap();
        assert_eq!(read_msg(&mut lib).0, 1);
        let (req, body) = read_msg(&mut lib);
        assert_eq!(req, SET_FEATURES);
        assert_eq!(u64::from_le_bytes(body[..].try_into().unwrap()), 1 << 30);
        assert_eq!(read_msg(&mut lib).0, SET_VRING_ENABLE);
        assert_eq!(read_msg(&mut lib).0, SET_VRING_ENABLE);
        // After the frontend's own SET_FEATURES nothing is inserted, until a reset.
        qemu.write_all(&msg(SET_FEATURES, &[0; 8])).unwrap();
        qemu.write_all(&msg(SET_VRING_ENABLE, &enable)).unwrap();
        qemu.write_all(&msg(RESET_DEVICE, &[])).unwrap();
        qemu.write_all(&msg(SET_VRING_ENABLE, &enable)).unwrap();
        assert_eq!(read_msg(&mut lib).0, SET_FEATURES);
        assert_eq!(read_msg(&mut lib).0, SET_VRING_ENABLE);
        assert_eq!(read_msg(&mut lib).0, RESET_DEVICE);
        assert_eq!(read_msg(&mut lib).0, SET_FEATURES);
        assert_eq!(read_msg(&mut lib).0, SET_VRING_ENABLE);
        // Replies go back unchanged, also after the frontend closed its writing side; when
        // the library ends the connection, the frontend sees it end.
        qemu.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        lib.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        lib.write_all(&msg(1, &[7; 8])).unwrap();
        assert_eq!(read_msg(&mut qemu), (1, vec![7; 8]));
        drop(lib);
        qemu.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        relay.stop();
    }

    #[test]
    fn file_descriptors_travel_with_their_message() {
        let (qemu, frontend) = UnixStream::pair().unwrap();
        let (library, lib) = UnixStream::pair().unwrap();
        let relay = Relay::start("t", frontend, library).unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        let m = msg(13, &[0u8; 8]); // SET_VRING_CALL with an fd
        qemu.send_with_fds(&[&m[..]], &[a.as_raw_fd()]).unwrap();
        let mut buf = vec![0u8; m.len()];
        let mut fds = Vec::new();
        assert!(recv_exact(&lib, &mut buf, &mut fds).unwrap());
        assert_eq!(buf, m);
        assert_eq!(fds.len(), 1);
        relay.stop();
    }

    #[test]
    fn library_end_is_a_connected_pair() {
        let (listener, mut ours) = library_end().unwrap();
        let mut theirs = listener.accept().unwrap().unwrap();
        ours.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        theirs.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
    }
}
