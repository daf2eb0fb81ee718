//! vnic-stream: TCP streams whose every byte is checked at the far end.
//!
//! iperf3 measures throughput but never looks at the bytes it receives, so a datapath that
//! damages payload while segmenting or coalescing (and then computes a checksum over the
//! damage) would pass it. vnic-stream sends a pseudo-random byte stream derived from a seed;
//! the receiver regenerates it and compares every byte, reporting the first mismatch.
//!
//!   vnic-stream serve [--listen ADDR:PORT]
//!       accept connections until killed, one thread per connection
//!   vnic-stream run --to HOST:PORT [--bytes N] [--streams K] [--dir send|recv|both]
//!       K connections per direction, N bytes each (suffixes k, M, G); `send` = this side
//!       sends and the server verifies, `recv` = the server sends and this side verifies
//!
//! Last line of `run`: "VNIC-STREAM ok|bad streams=.. bytes=.. mbit=.." (exit 0 only if ok).
//!
//! Wire format: the client opens with "VNS1", a direction byte (b'S': client sends,
//! b'R': server sends), the seed and the length (both u64, big endian). After a b'S' stream
//! the server answers with the number of bytes it received and the offset of the first
//! mismatch (u64::MAX if none).
//!
//! No dependencies (not even for argument parsing): the binary is linked statically and
//! copied into a busybox initramfs.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

const MAGIC: &[u8; 4] = b"VNS1";
const DEFAULT_PORT: u16 = 5310;
const CHUNK: usize = 64 * 1024;
/// A stream that makes no progress for this long fails instead of hanging the test.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const NO_MISMATCH: u64 = u64::MAX;

/// xorshift64*: cheap, and every seed gives a different stream.
struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    fn new(seed: u64) -> Self {
        Pattern {
            state: seed | 1, // never 0 (xorshift would stay 0); seeds differ above bit 0
            word: [0; 8],
            used: 8,
        }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                self.word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

fn send_pattern(sock: &mut TcpStream, seed: u64, len: u64) -> io::Result<()> {
    let mut pat = Pattern::new(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        pat.fill(&mut buf[..n]);
        sock.write_all(&buf[..n])?;
        left -= n as u64;
    }
    sock.flush()
}

/// Reads `len` bytes and compares them with the pattern. Returns (bytes read, first bad offset).
fn verify_pattern(sock: &mut TcpStream, seed: u64, len: u64) -> io::Result<(u64, u64)> {
    let mut pat = Pattern::new(seed);
    let mut got = vec![0u8; CHUNK];
    let mut want = vec![0u8; CHUNK];
    let (mut pos, mut bad) = (0u64, NO_MISMATCH);
    while pos < len {
        let n = (len - pos).min(CHUNK as u64) as usize;
        let n = sock.read(&mut got[..n])?;
        if n == 0 {
            break; // the peer closed early: pos < len tells the caller
        }
        pat.fill(&mut want[..n]);
        if bad == NO_MISMATCH {
            if let Some(i) = got[..n].iter().zip(&want[..n]).position(|(a, b)| a != b) {
                bad = pos + i as u64;
                eprintln!(
                    "vnic-stream: seed {seed:#x}: byte {bad} is {:#04x}, expected {:#04x}",
                    got[i], want[i]
                );
            }
        }
        pos += n as u64;
    }
    Ok((pos, bad))
}

fn configure(sock: &TcpStream) -> io::Result<()> {
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    sock.set_nodelay(true)
}

fn serve_one(mut sock: TcpStream) -> io::Result<()> {
    configure(&sock)?;
    let peer = sock.peer_addr()?;
    let mut hdr = [0u8; 21];
    sock.read_exact(&mut hdr)?;
    if &hdr[..4] != MAGIC {
        return Err(io::Error::other("not a vnic-stream client"));
    }
    let seed = u64::from_be_bytes(hdr[5..13].try_into().unwrap());
    let len = u64::from_be_bytes(hdr[13..21].try_into().unwrap());
    match hdr[4] {
        b'S' => {
            let (read, bad) = verify_pattern(&mut sock, seed, len)?;
            let mut reply = [0u8; 16];
            reply[..8].copy_from_slice(&read.to_be_bytes());
            reply[8..].copy_from_slice(&bad.to_be_bytes());
            sock.write_all(&reply)?;
            let verdict = if read == len && bad == NO_MISMATCH {
                "ok"
            } else {
                "BAD"
            };
            eprintln!("vnic-stream: from {peer}: {read} of {len} bytes, {verdict}");
        }
        b'R' => {
            send_pattern(&mut sock, seed, len)?;
            sock.shutdown(Shutdown::Write)?;
            // Wait for the client to close, so that the last bytes are not reset away.
            let _ = sock.read(&mut [0u8; 1]);
            eprintln!("vnic-stream: to {peer}: {len} bytes sent");
        }
        d => return Err(io::Error::other(format!("unknown direction {d:#x}"))),
    }
    Ok(())
}

fn serve(listen: &str) -> Result<(), String> {
    let l = TcpListener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    eprintln!("vnic-stream: listening on {listen}");
    for sock in l.incoming() {
        match sock {
            Ok(s) => {
                thread::spawn(move || {
                    if let Err(e) = serve_one(s) {
                        eprintln!("vnic-stream: connection failed: {e}");
                    }
                });
            }
            Err(e) => eprintln!("vnic-stream: accept: {e}"),
        }
    }
    Ok(())
}

/// One client stream. Returns an error message when the bytes did not all arrive intact.
fn run_one(to: &str, send: bool, seed: u64, len: u64) -> Result<(), String> {
    let addr = to
        .to_socket_addrs()
        .map_err(|e| format!("{to}: {e}"))?
        .next()
        .ok_or(format!("{to}: no address"))?;
    let io =
        |what: &str, e: io::Error| format!("{what} ({}): {e}", if send { "send" } else { "recv" });
    // The server may still be starting: retry a refused connection for a while.
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut sock = loop {
        match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(500))
            }
            r => break r.map_err(|e| io("connect", e))?,
        }
    };
    configure(&sock).map_err(|e| io("socket options", e))?;
    let mut hdr = Vec::with_capacity(21);
    hdr.extend_from_slice(MAGIC);
    hdr.push(if send { b'S' } else { b'R' });
    hdr.extend_from_slice(&seed.to_be_bytes());
    hdr.extend_from_slice(&len.to_be_bytes());
    sock.write_all(&hdr).map_err(|e| io("header", e))?;
    let (read, bad) = if send {
        send_pattern(&mut sock, seed, len).map_err(|e| io("sending", e))?;
        let mut reply = [0u8; 16];
        sock.read_exact(&mut reply)
            .map_err(|e| io("reading the verdict", e))?;
        (
            u64::from_be_bytes(reply[..8].try_into().unwrap()),
            u64::from_be_bytes(reply[8..].try_into().unwrap()),
        )
    } else {
        verify_pattern(&mut sock, seed, len).map_err(|e| io("receiving", e))?
    };
    let who = if send { "the server" } else { "this side" };
    if read != len {
        return Err(format!("{who} received {read} of {len} bytes"));
    }
    if bad != NO_MISMATCH {
        return Err(format!(
            "{who} found a wrong byte at offset {bad} (seed {seed:#x})"
        ));
    }
    Ok(())
}

fn run(to: &str, bytes: u64, streams: u32, dirs: &[bool]) -> bool {
    let start = Instant::now();
    let mut jobs = Vec::new();
    for (d, &send) in dirs.iter().enumerate() {
        for i in 0..streams {
            let to = to.to_string();
            let seed =
                0x766e_6963_0000_0000 ^ (u64::from(i) << 8) ^ ((d as u64) << 4) ^ start_nanos();
            jobs.push((
                send,
                i,
                thread::spawn(move || run_one(&to, send, seed, bytes)),
            ));
        }
    }
    let mut ok = true;
    for (send, i, job) in jobs {
        let dir = if send { "send" } else { "recv" };
        match job.join().unwrap_or_else(|_| Err("thread panicked".into())) {
            Ok(()) => eprintln!("vnic-stream: {dir} stream {i}: {bytes} bytes verified"),
            Err(e) => {
                eprintln!("vnic-stream: {dir} stream {i}: FAILED: {e}");
                ok = false;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let total = bytes * u64::from(streams) * dirs.len() as u64;
    println!(
        "VNIC-STREAM {} streams={} bytes={total} secs={secs:.2} mbit={:.0}",
        if ok { "ok" } else { "bad" },
        streams as usize * dirs.len(),
        total as f64 * 8.0 / secs / 1e6
    );
    ok
}

fn start_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        << 16
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or(format!(
            "bad size '{s}' (a positive number, optionally with k, M or G)"
        ))
}

const USAGE: &str = "usage: vnic-stream serve [--listen ADDR:PORT]\n       \
     vnic-stream run --to HOST:PORT [--bytes N] [--streams K] [--dir send|recv|both]";

fn main_inner() -> Result<bool, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = args.split_first().ok_or(USAGE)?;
    let mut opts = std::collections::HashMap::new();
    let mut it = rest.iter();
    while let Some(k) = it.next() {
        let name = k
            .strip_prefix("--")
            .filter(|n| ["listen", "to", "bytes", "streams", "dir"].contains(n))
            .ok_or(format!("unknown option '{k}'\n{USAGE}"))?;
        let v = it.next().ok_or(format!("--{name} needs a value"))?;
        opts.insert(name, v.as_str());
    }
    match cmd.as_str() {
        "serve" => {
            let listen = opts.get("listen").map(|s| s.to_string());
            serve(&listen.unwrap_or(format!("[::]:{DEFAULT_PORT}")))?;
            Ok(true)
        }
        "run" => {
            let to = opts
                .get("to")
                .ok_or(format!("run needs --to HOST:PORT\n{USAGE}"))?;
            let bytes = parse_size(opts.get("bytes").unwrap_or(&"16M"))?;
            let streams: u32 = opts
                .get("streams")
                .unwrap_or(&"1")
                .parse()
                .ok()
                .filter(|&k| (1..=64).contains(&k))
                .ok_or("--streams must be 1..64")?;
            let dirs: &[bool] = match *opts.get("dir").unwrap_or(&"both") {
                "send" => &[true],
                "recv" => &[false],
                "both" => &[true, false],
                d => return Err(format!("--dir must be send, recv or both, not '{d}'")),
            };
            Ok(run(to, bytes, streams, dirs))
        }
        _ => Err(USAGE.to_string()),
    }
}

fn main() -> ExitCode {
    match main_inner() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vnic-stream: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_does_not_depend_on_chunking() {
        let mut whole = vec![0u8; 1000];
        Pattern::new(7).fill(&mut whole);
        let mut p = Pattern::new(7);
        let mut pieces = Vec::new();
        for n in [1, 3, 8, 13, 975] {
            let mut b = vec![0u8; n];
            p.fill(&mut b);
            pieces.extend(b);
        }
        assert_eq!(whole, pieces);
        let mut other = vec![0u8; 1000];
        Pattern::new(8).fill(&mut other);
        assert_ne!(whole, other);
    }

    #[test]
    fn streams_verify_both_ways_and_a_wrong_byte_is_found() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        thread::spawn(move || {
            for s in l.incoming().flatten() {
                thread::spawn(move || serve_one(s));
            }
        });
        assert!(run(&addr, 300_000, 2, &[true, false]));
        assert_eq!(run_one(&addr, true, 5, 1 << 20), Ok(()));

        // A client whose stream differs from its seed at one byte: the server must say where.
        let mut sock = TcpStream::connect(&addr).unwrap();
        let mut hdr = MAGIC.to_vec();
        hdr.push(b'S');
        hdr.extend_from_slice(&9u64.to_be_bytes());
        hdr.extend_from_slice(&1000u64.to_be_bytes());
        sock.write_all(&hdr).unwrap();
        let mut data = vec![0u8; 1000];
        Pattern::new(9).fill(&mut data);
        data[777] ^= 0x20;
        sock.write_all(&data).unwrap();
        let mut reply = [0u8; 16];
        sock.read_exact(&mut reply).unwrap();
        assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), 1000);
        assert_eq!(u64::from_be_bytes(reply[8..].try_into().unwrap()), 777);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("3k"), Ok(3072));
        assert_eq!(parse_size("12"), Ok(12));
        assert!(parse_size("0").is_err());
        assert!(parse_size("x").is_err());
    }
}
