//! `pcap=PATH` on a port: every frame that crosses the port, both ways, as vnic carries it
//! (large offloaded frames stay large), written to a classic pcap file tcpdump and Wireshark
//! read. Frames sent by the guest are recorded once accepted; frames for the guest once
//! delivered. A debugging aid: recording takes a per-port lock, so it costs speed.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use byteorder::NativeEndian;
use pcap_file::pcap::{PcapHeader, PcapPacket};
use pcap_file::{DataLink, Endianness, TsResolution};

/// Longest frame recorded whole by default (tcpdump's default); a 64 KiB offloaded frame fits.
pub const SNAPLEN: u32 = 262_144;

pub struct Capture {
    path: PathBuf,
    /// Bytes of each frame recorded (its full length is recorded too).
    snaplen: u32,
    /// The file behind a buffer of our own, so that it can be flushed per batch.
    writer: Mutex<BufWriter<File>>,
}

impl Capture {
    /// Creates (or truncates) the file at `path` and writes the pcap header. Each frame is
    /// recorded up to `snaplen` bytes.
    pub fn create(path: &Path, snaplen: u32) -> io::Result<Capture> {
        let file = File::create(path)
            .map_err(|e| io::Error::new(e.kind(), format!("pcap file {}: {e}", path.display())))?;
        let header = PcapHeader {
            snaplen,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::MicroSecond,
            endianness: Endianness::native(),
            ..PcapHeader::default()
        };
        let mut writer = BufWriter::with_capacity(1 << 16, file);
        header
            .write_to(&mut writer)
            .map_err(|e| io::Error::other(format!("pcap file {}: {e}", path.display())))?;
        // A reader started before the first frame must find a valid file.
        writer.flush()?;
        Ok(Capture {
            path: path.to_path_buf(),
            snaplen,
            writer: Mutex::new(writer),
        })
    }

    /// Records one Ethernet frame.
    pub fn record(&self, frame: &[u8]) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let keep = frame.len().min(self.snaplen as usize);
        let packet = PcapPacket::new(now, frame.len() as u32, &frame[..keep]);
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) =
            packet.write_to::<_, NativeEndian>(&mut *w, TsResolution::MicroSecond, self.snaplen)
        {
            crate::warn_ratelimited!("pcap {}: {e}", self.path.display());
        }
    }

    /// Pushes buffered records to the file (after each batch, and at shutdown).
    pub fn flush(&self) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = w.flush() {
            crate::warn_ratelimited!("pcap {}: {e}", self.path.display());
        }
    }
}
