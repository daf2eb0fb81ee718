//! Copying frames out of TX chains and into RX chains, on the ring layer ([`crate::virtq`]).
//!
//! Chains arrive as checked segments of guest memory (every descriptor was read once and its
//! buffer checked against the memory table when it was popped), so what is left here is the
//! virtio-net part: the header in front of each frame, frame length limits, and spreading a
//! frame over several RX chains with MRG_RXBUF.

use crate::frame::net_header::HEADER_LEN;
use crate::stats::DropReason;
use crate::virtq::{
    append_from_guest, copy_from_guest, copy_to_guest, split_from_guest, Access, BadChain,
    ChainError, Head, PoppedChain, Ring, Segment,
};

/// Smallest frame accepted from a guest: an Ethernet header.
pub const MIN_FRAME: usize = 14;

/// Reads a popped TX chain: the virtio-net header (`hdr_len` bytes) into `hdr`, the frame into
/// `data`.
#[inline]
pub fn read_tx_chain(
    segs: &[Segment],
    bytes: u32,
    hdr_len: usize,
    max_frame: usize,
    hdr: &mut [u8; HEADER_LEN],
    data: &mut Vec<u8>,
) -> Result<(), DropReason> {
    data.clear();
    let bytes = bytes as usize;
    if bytes < hdr_len + MIN_FRAME {
        return Err(DropReason::TxShortFrame);
    }
    let len = bytes - hdr_len;
    if len > max_frame {
        return Err(DropReason::TxOversize);
    }
    if let ([seg], HEADER_LEN) = (segs, hdr_len) {
        // The usual chain (DPDK's and Linux's drivers put the header in front of the frame,
        // one buffer): fixed-size header read and one copy, no segment walk.
        split_from_guest(*seg, hdr, data);
        return Ok(());
    }
    copy_from_guest(segs, 0, &mut hdr[..hdr_len]);
    let got = append_from_guest(segs, hdr_len, len, data);
    // The segments hold exactly `bytes`: anything else is a bug here, not the guest's doing.
    debug_assert_eq!(got, len);
    Ok(())
}

/// One RX chain held for the frame being delivered.
#[derive(Clone, Copy, Debug)]
struct RxChain {
    head: Head,
    segs: (usize, usize),
}

/// Reusable space for the RX chains of one frame (no allocation per frame).
#[derive(Default)]
pub struct RxScratch {
    segs: Vec<Segment>,
    chains: Vec<RxChain>,
}

/// Outcome of offering one frame to an RX queue.
#[derive(Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// Written; its chains are completed (visible after the ring's next `publish`).
    Delivered,
    /// Not enough buffers posted now; nothing was consumed. Try again after a kick.
    NoBuffers,
    /// The driver's ring is not followed (its avail index jumped); nothing was consumed.
    RingBroken(ChainError),
    /// The frame cannot be delivered; it should be dropped and counted.
    Dropped(DropReason),
}

/// Writes one frame (with header `hdr`) into RX ring `ring`, using as many chains as
/// MRG_RXBUF allows. `hdr` must already be in its on-ring form except for `num_buffers`,
/// which is filled here when the header has that field.
pub fn deliver_frame(
    ring: &mut Ring,
    hdr: &mut [u8; HEADER_LEN],
    hdr_len: usize,
    mrg_rxbuf: bool,
    data: &[u8],
    scratch: &mut RxScratch,
) -> RxOutcome {
    let total = hdr_len + data.len();
    scratch.segs.clear();
    scratch.chains.clear();
    let mut capacity = 0;
    let start = ring.mark();
    while capacity < total && (mrg_rxbuf || scratch.chains.is_empty()) {
        match ring.pop(Access::Write, &mut scratch.segs) {
            None => break,
            Some(Ok(PoppedChain { head, segs, bytes })) => {
                capacity += bytes as usize;
                scratch.chains.push(RxChain { head, segs });
            }
            Some(Err(BadChain {
                error: error @ (ChainError::AvailIndexJump(_) | ChainError::EndlessChain),
                ..
            })) => {
                ring.rewind(start);
                return RxOutcome::RingBroken(error);
            }
            Some(Err(bad)) => {
                // A chain we cannot write to goes back empty; what we already hold cannot be
                // rewound past it, so the frame is given up and those go back empty too.
                // In the order they were popped (IN_ORDER).
                for c in &scratch.chains {
                    ring.push_used(c.head, 0);
                }
                if let Some(head) = bad.head {
                    ring.push_used(head, 0);
                }
                return RxOutcome::Dropped(DropReason::RxBadDescriptor);
            }
        }
    }
    if capacity < total {
        let popped = scratch.chains.len() as u16;
        ring.rewind(start);
        return if !mrg_rxbuf && popped == 1 {
            // Without MRG_RXBUF one chain must hold the frame; a guest that posts smaller ones
            // keeps them for frames that fit.
            RxOutcome::Dropped(DropReason::RxBufferTooSmall)
        } else {
            RxOutcome::NoBuffers
        };
    }
    if hdr_len == HEADER_LEN {
        let n = scratch.chains.len() as u16;
        hdr[10..12].copy_from_slice(&n.to_le_bytes());
    }
    // Fill the chains in order: each gets as much of header + frame as it holds.
    let mut offset = 0usize;
    for c in &scratch.chains {
        let segs = &scratch.segs[c.segs.0..c.segs.1];
        let written = write_at(segs, &hdr[..hdr_len], data, offset);
        offset += written;
        ring.push_used(c.head, written as u32);
    }
    debug_assert_eq!(offset, total);
    RxOutcome::Delivered
}

/// Writes header + data, from byte `offset` of their concatenation on, into `segs`.
fn write_at(segs: &[Segment], hdr: &[u8], data: &[u8], offset: usize) -> usize {
    if offset < hdr.len() {
        copy_to_guest(segs, &[&hdr[offset..], data])
    } else {
        copy_to_guest(segs, &[&data[offset - hdr.len()..]])
    }
}
