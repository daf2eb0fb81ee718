//! Copying frames out of and into guest descriptor chains.
//!
//! Every address and length comes from the guest and is checked by vm-memory on access; a
//! failed access fails the one frame, never the queue. Each descriptor is read exactly once
//! (its address and length are copied before use), so a guest that rewrites a descriptor
//! while we work cannot make us use two different values. Chains cut short (a loop caught by
//! the iterator's length limit, a `next` out of range, an unreadable indirect table) are
//! detected because their last descriptor still has NEXT set.

use std::ops::Deref;

use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::net_header::HEADER_LEN;
use super::GuestMem;
use crate::stats::DropReason;

/// Smallest frame accepted from a guest: an Ethernet header.
pub const MIN_FRAME: usize = 14;

/// Reads a TX chain: the virtio-net header (`hdr_len` bytes) into `hdr`, the frame into `data`.
pub fn read_tx_chain<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMem,
    hdr_len: usize,
    max_frame: usize,
    hdr: &mut [u8; HEADER_LEN],
    data: &mut Vec<u8>,
) -> Result<(), DropReason>
where
    M: Deref,
    M::Target: GuestMemory,
{
    data.clear();
    let mut got_hdr = 0;
    let mut last_has_next = false;
    let mut descriptors = 0usize;
    let mut oversize = false;
    for desc in chain {
        descriptors += 1;
        last_has_next = desc.has_next();
        if desc.is_write_only() {
            return Err(DropReason::TxBadDescriptor);
        }
        if oversize {
            // Keep walking (reading nothing) to tell a long chain from a loop.
            continue;
        }
        let mut addr = desc.addr();
        let mut len = desc.len() as usize;
        if got_hdr < hdr_len {
            let n = len.min(hdr_len - got_hdr);
            mem.read_slice(&mut hdr[got_hdr..got_hdr + n], addr)
                .map_err(|_| DropReason::TxBadDescriptor)?;
            got_hdr += n;
            len -= n;
            addr = addr
                .0
                .checked_add(n as u64)
                .map(GuestAddress)
                .ok_or(DropReason::TxBadDescriptor)?;
        }
        if len > 0 {
            let start = data.len();
            if start + len > max_frame {
                oversize = true;
                continue;
            }
            data.resize(start + len, 0);
            mem.read_slice(&mut data[start..], addr)
                .map_err(|_| DropReason::TxBadDescriptor)?;
        }
    }
    if descriptors == 0 || last_has_next {
        return Err(DropReason::TxBadDescriptor);
    }
    if oversize {
        return Err(DropReason::TxOversize);
    }
    if got_hdr < hdr_len || data.len() < MIN_FRAME {
        return Err(DropReason::TxShortFrame);
    }
    Ok(())
}

/// Guest memory refused a write into an RX buffer.
#[derive(Debug)]
pub struct GuestWriteError;

/// One RX chain taken from the avail ring: its head and its writable segments.
#[derive(Clone, Copy, Debug)]
pub struct RxChain {
    pub head: u16,
    first_seg: usize,
    end_seg: usize,
    pub capacity: usize,
}

/// Reusable space for the RX chains of one frame (no allocation per frame).
#[derive(Default)]
pub struct RxScratch {
    segs: Vec<(GuestAddress, u32)>,
    pub chains: Vec<RxChain>,
}

impl RxScratch {
    pub fn clear(&mut self) {
        self.segs.clear();
        self.chains.clear();
    }

    pub fn capacity(&self) -> usize {
        self.chains.iter().map(|c| c.capacity).sum()
    }

    /// Records a chain's writable segments. A chain with a device-readable descriptor or cut
    /// short is refused (the caller returns it unused with length 0).
    pub fn push_chain<M>(&mut self, chain: DescriptorChain<M>) -> Result<(), u16>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let head = chain.head_index();
        let first_seg = self.segs.len();
        let mut capacity = 0usize;
        let mut last_has_next = false;
        for desc in chain {
            last_has_next = desc.has_next();
            if !desc.is_write_only() {
                self.segs.truncate(first_seg);
                return Err(head);
            }
            capacity += desc.len() as usize;
            self.segs.push((desc.addr(), desc.len()));
        }
        if last_has_next || self.segs.len() == first_seg {
            self.segs.truncate(first_seg);
            return Err(head);
        }
        self.chains.push(RxChain {
            head,
            first_seg,
            end_seg: self.segs.len(),
            capacity,
        });
        Ok(())
    }

    /// Writes `hdr` then `data` across the recorded chains in order. Returns, per chain, how
    /// many bytes it received, through `used`, or an error if guest memory refused a write.
    pub fn write(
        &self,
        mem: &GuestMem,
        hdr: &[u8],
        data: &[u8],
        used: &mut Vec<(u16, u32)>,
    ) -> Result<(), GuestWriteError> {
        used.clear();
        let mut src = [hdr, data];
        let mut part = 0;
        for chain in &self.chains {
            let mut written = 0u32;
            for &(addr, len) in &self.segs[chain.first_seg..chain.end_seg] {
                let mut off = 0usize;
                let len = len as usize;
                while off < len && part < src.len() {
                    if src[part].is_empty() {
                        part += 1;
                        continue;
                    }
                    let n = (len - off).min(src[part].len());
                    let at = addr.0.checked_add(off as u64).ok_or(GuestWriteError)?;
                    mem.write_slice(&src[part][..n], GuestAddress(at))
                        .map_err(|_| GuestWriteError)?;
                    src[part] = &src[part][n..];
                    off += n;
                    written += n as u32;
                }
            }
            used.push((chain.head, written));
            if part >= src.len() || (src[0].is_empty() && src[1].is_empty()) {
                break;
            }
        }
        Ok(())
    }
}

/// Outcome of offering one frame to an RX queue.
#[derive(Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// Written and published on the used ring.
    Delivered,
    /// Not enough buffers posted now; nothing was consumed. Try again after a kick.
    NoBuffers,
    /// The frame cannot be delivered; it should be dropped and counted.
    Dropped(DropReason),
}

/// Writes one frame (with header `hdr`) into the RX queue `queue`, using as many chains as
/// MRG_RXBUF allows. `hdr` must already be in its on-ring form except for `num_buffers`,
/// which is filled here when the header has that field.
#[allow(clippy::too_many_arguments)]
pub fn deliver_frame<Q: QueueT + QueueOwnedT>(
    queue: &mut Q,
    mem: &GuestMem,
    hdr: &mut [u8; HEADER_LEN],
    hdr_len: usize,
    mrg_rxbuf: bool,
    data: &[u8],
    scratch: &mut RxScratch,
    used: &mut Vec<(u16, u32)>,
) -> RxOutcome {
    let total = hdr_len + data.len();
    scratch.clear();
    let mut capacity = 0;
    let mut bad_chains = 0;
    while capacity < total && (mrg_rxbuf || scratch.chains.is_empty()) {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        match scratch.push_chain(chain) {
            Ok(()) => capacity += scratch.chains.last().map_or(0, |c| c.capacity),
            Err(head) => {
                // A chain we cannot write to goes back empty; what we already hold cannot be
                // rewound past it, so the frame is given up and those go back empty too.
                let _ = queue.add_used(mem, head, 0);
                bad_chains += 1;
                break;
            }
        }
    }
    if bad_chains > 0 {
        for c in &scratch.chains {
            let _ = queue.add_used(mem, c.head, 0);
        }
        return RxOutcome::Dropped(DropReason::RxBadDescriptor);
    }
    if capacity < total {
        let popped = scratch.chains.len();
        for _ in 0..popped {
            queue.go_to_previous_position();
        }
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
    let result = scratch.write(mem, &hdr[..hdr_len], data, used);
    match result {
        Ok(()) => {
            for &(head, len) in used.iter() {
                let _ = queue.add_used(mem, head, len);
            }
            RxOutcome::Delivered
        }
        Err(GuestWriteError) => {
            for c in &scratch.chains {
                let _ = queue.add_used(mem, c.head, 0);
            }
            RxOutcome::Dropped(DropReason::RxBadDescriptor)
        }
    }
}
