//! A test driver that plays both QEMU (the vhost-user frontend) and a guest's virtio-net driver.
//!
//! [`TestGuest::connect`] connects to a vhost-user socket and configures the device the way QEMU
//! does; the guest side then sends and receives frames through virtio 1.x rings (split, or
//! packed with `VIRTIO_F_RING_PACKED`) in a shared memfd ([`GuestRam`]). Lower layers are
//! public for tests that need more control: [`TxQueue`] / [`RxQueue`] (frames, layouts,
//! refilling), [`DriverQueue`] (one virtqueue, including raw descriptor and index access for
//! hostile tests) and the `vhost` [`Frontend`] itself.
//!
//! Ring kind and in-order completion come from [`GuestOptions::ring`] and
//! [`GuestOptions::in_order`], whose defaults the environment sets, so that one test binary runs
//! against every ring flavour:
//!
//! * `VNIC_TEST_RING=packed` acks `VIRTIO_F_RING_PACKED` (unset, empty or `split`: split rings);
//! * `VNIC_TEST_IN_ORDER=1` acks `VIRTIO_F_IN_ORDER` (unset, empty or `0`: not).
//!
//! Asking for a feature the device does not offer makes `connect` fail, naming it. Any other
//! value of either variable panics.
//!
//! Addresses: the memory table carries one region, `guest_phys_addr = gpa_base`,
//! `userspace_addr = ` this process's mapping; `SET_VRING_ADDR` carries *frontend virtual
//! addresses* (like QEMU), which the device must translate through the memory table.
//! Descriptor addresses are guest-physical.

pub mod frames;
mod memory;
mod net_queue;
mod packed_ring;
mod queue;
mod split_ring;

pub use memory::GuestRam;
pub use net_queue::{RxFrame, RxQueue, TxLayout, TxQueue, NET_HDR_LEN, NET_HDR_LEN_LEGACY};
pub use packed_ring::{
    packed_avail_flags, packed_ring_size, packed_used_flags, wrap_position, EventSuppress,
    PackedDescriptor, EVENT_SUPPRESS_SIZE, VRING_PACKED_DESC_F_AVAIL, VRING_PACKED_DESC_F_USED,
    VRING_PACKED_EVENT_FLAG_DESC, VRING_PACKED_EVENT_FLAG_DISABLE, VRING_PACKED_EVENT_FLAG_ENABLE,
    VRING_PACKED_EVENT_F_WRAP_CTR,
};
pub use queue::{DriverQueue, RingKind, RingOptions};
pub use split_ring::{
    avail_ring_size, desc_table_size, used_ring_size, vring_need_event, Descriptor, Segment,
    UsedElem, VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
pub use vhost::vhost_user::Frontend;

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
};
use vhost::vhost_user::VhostUserFrontend;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};

/// virtio-net feature bits the driver understands (see [`DRIVER_FEATURES`]).
pub mod features {
    pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
    pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
    pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
    pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
    pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
    pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
    pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
    pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
    pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
    pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
    pub const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;
    pub const VIRTIO_NET_F_MQ: u64 = 1 << 22;
    pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
    pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
    pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
    pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
    pub const VIRTIO_F_RING_PACKED: u64 = 1 << 34;
    pub const VIRTIO_F_IN_ORDER: u64 = 1 << 35;
    pub const VIRTIO_NET_F_SPEED_DUPLEX: u64 = 1 << 63;
}
use features::*;

/// Features acked by default (intersected with what the device offers).
pub const DRIVER_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_NET_F_MAC
    | VIRTIO_NET_F_MTU
    | VIRTIO_NET_F_STATUS
    | VIRTIO_NET_F_MQ
    | VIRTIO_NET_F_MRG_RXBUF
    | VIRTIO_RING_F_EVENT_IDX
    | VIRTIO_RING_F_INDIRECT_DESC
    | VIRTIO_NET_F_SPEED_DUPLEX
    | VHOST_USER_F_PROTOCOL_FEATURES;

/// Protocol features acked by default (intersected with what the device offers).
pub const DRIVER_PROTOCOL_FEATURES: u64 = VhostUserProtocolFeatures::MQ.bits()
    | VhostUserProtocolFeatures::CONFIG.bits()
    | VhostUserProtocolFeatures::REPLY_ACK.bits()
    | VhostUserProtocolFeatures::RESET_DEVICE.bits();

/// Size of `struct virtio_net_config` up to and including `supported_hash_types`.
pub const NET_CONFIG_LEN: u32 = 24;

/// How [`TestGuest::connect`] sets up the device and the guest.
#[derive(Clone, Debug)]
pub struct GuestOptions {
    /// Queue pairs to set up.
    pub queue_pairs: u16,
    /// Pairs to `SET_VRING_ENABLE(1)` at connect (the first ones; capped at `queue_pairs`).
    /// The default is 1, like `queue_pairs`: set both, or use [`GuestOptions::with_pairs`].
    pub enabled_pairs: u16,
    /// Entries per virtqueue.
    pub queue_size: u16,
    /// Bytes of guest memory.
    pub mem_size: usize,
    /// Guest-physical address where memory starts (DPDK's virtio_user uses non-zero ones).
    pub gpa_base: u64,
    /// Features to ack, sent verbatim but for `VIRTIO_F_RING_PACKED` and `VIRTIO_F_IN_ORDER`,
    /// which `ring` and `in_order` decide. `None`: offered & [`DRIVER_FEATURES`].
    pub features: Option<u64>,
    /// Ring layout to ack and drive. Default: `VNIC_TEST_RING` (see the crate documentation).
    pub ring: RingKind,
    /// Ack `VIRTIO_F_IN_ORDER` and read completions by its rules. Default: `VNIC_TEST_IN_ORDER`.
    pub in_order: bool,
    /// Protocol features to ack, sent verbatim. `None`: offered & [`DRIVER_PROTOCOL_FEATURES`].
    pub protocol_features: Option<u64>,
    /// Bytes per posted RX buffer, header included.
    pub rx_buffer_size: u32,
    /// RX buffers posted per RX queue at connect (capped at `queue_size`; the default,
    /// `u16::MAX`, fills the ring).
    pub rx_buffers: u16,
    /// Bytes of preallocated TX buffer per descriptor (bigger frames grow their area once).
    pub tx_buffer_size: u32,
    /// Default TX descriptor layout.
    pub tx_layout: TxLayout,
    /// Kick every RX queue once after enabling, as a Linux guest does when it opens the
    /// interface. `false` tests that the device finds pre-posted buffers by itself.
    pub kick_rx_on_connect: bool,
    /// Keep retrying the connection (socket missing or refusing) for this long.
    pub connect_timeout: Duration,
    /// Give up on a reply from the device after this long (socket receive timeout).
    pub reply_timeout: Option<Duration>,
}

impl Default for GuestOptions {
    fn default() -> GuestOptions {
        GuestOptions {
            queue_pairs: 1,
            enabled_pairs: 1,
            queue_size: 256,
            mem_size: 64 << 20,
            gpa_base: 0,
            features: None,
            ring: env_ring(),
            in_order: env_in_order(),
            protocol_features: None,
            rx_buffer_size: 2048,
            rx_buffers: u16::MAX,
            tx_buffer_size: 2048,
            tx_layout: TxLayout::COMBINED,
            kick_rx_on_connect: true,
            connect_timeout: Duration::from_secs(5),
            reply_timeout: Some(Duration::from_secs(10)),
        }
    }
}

impl GuestOptions {
    /// Defaults with `pairs` queue pairs, all enabled.
    pub fn with_pairs(pairs: u16) -> GuestOptions {
        GuestOptions {
            queue_pairs: pairs,
            enabled_pairs: pairs,
            ..GuestOptions::default()
        }
    }
}

/// `VNIC_TEST_RING`: the ring kind tests use by default.
fn env_ring() -> RingKind {
    match std::env::var("VNIC_TEST_RING").as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("" | "split") => RingKind::Split,
        Ok("packed") => RingKind::Packed,
        other => panic!("VNIC_TEST_RING must be split or packed, not {other:?}"),
    }
}

/// `VNIC_TEST_IN_ORDER`: whether tests ack `VIRTIO_F_IN_ORDER` by default.
fn env_in_order() -> bool {
    match std::env::var("VNIC_TEST_IN_ORDER").as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("" | "0") => false,
        Ok("1") => true,
        other => panic!("VNIC_TEST_IN_ORDER must be 0 or 1, not {other:?}"),
    }
}

/// The ring feature bits `opts` asks for, checked against what the device offered.
fn ring_features(opts: &GuestOptions, offered: u64) -> io::Result<u64> {
    let mut bits = 0;
    if opts.ring == RingKind::Packed {
        bits |= VIRTIO_F_RING_PACKED;
    }
    if opts.in_order {
        bits |= VIRTIO_F_IN_ORDER;
    }
    let missing = bits & !offered;
    for (bit, name, env) in [
        (
            VIRTIO_F_RING_PACKED,
            "VIRTIO_F_RING_PACKED",
            "VNIC_TEST_RING=packed",
        ),
        (
            VIRTIO_F_IN_ORDER,
            "VIRTIO_F_IN_ORDER",
            "VNIC_TEST_IN_ORDER=1",
        ),
    ] {
        if missing & bit != 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "the device does not offer {name}, which the test asks for \
                     (GuestOptions, default from {env})"
                ),
            ));
        }
    }
    Ok(bits)
}

/// The parsed `virtio_net_config`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    pub mac: [u8; 6],
    pub status: u16,
    pub max_virtqueue_pairs: u16,
    pub mtu: u16,
    pub speed: u32,
    pub duplex: u8,
}

impl NetConfig {
    /// Parses the first bytes of a `virtio_net_config` (missing fields read as 0).
    pub fn parse(raw: &[u8]) -> NetConfig {
        let mut b = [0u8; NET_CONFIG_LEN as usize];
        let n = raw.len().min(b.len());
        b[..n].copy_from_slice(&raw[..n]);
        NetConfig {
            mac: b[0..6].try_into().unwrap(),
            status: u16::from_le_bytes([b[6], b[7]]),
            max_virtqueue_pairs: u16::from_le_bytes([b[8], b[9]]),
            mtu: u16::from_le_bytes([b[10], b[11]]),
            speed: u32::from_le_bytes(b[12..16].try_into().unwrap()),
            duplex: b[16],
        }
    }
}

struct Pair {
    rx: RxQueue,
    tx: TxQueue,
}

/// A connected fake VMM + guest driver. See the module documentation.
pub struct TestGuest {
    frontend: Frontend,
    ram: Arc<GuestRam>,
    pairs: Vec<Pair>,
    offered_features: u64,
    acked_features: u64,
    offered_protocol_features: u64,
    acked_protocol_features: u64,
    queue_num: u64,
    hdr_len: usize,
}

fn vhost_err(what: &str) -> impl FnOnce(vhost::Error) -> io::Error + '_ {
    move |e| io::Error::other(format!("vhost-user {what}: {e}"))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Connects to a Unix socket, retrying while it is missing or refusing until `timeout`.
fn connect_retrying(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

impl TestGuest {
    /// Connects to the vhost-user socket at `socket` and sets the device up like QEMU:
    /// `SET_OWNER`, `GET_FEATURES`, `GET_PROTOCOL_FEATURES`, `SET_PROTOCOL_FEATURES`,
    /// `GET_QUEUE_NUM`, `SET_FEATURES`, `SET_MEM_TABLE`, then for every queue `SET_VRING_NUM`,
    /// `SET_VRING_ADDR`, `SET_VRING_BASE 0`, `SET_VRING_CALL`, `SET_VRING_KICK`, and finally
    /// `SET_VRING_ENABLE(1)` for the first `enabled_pairs` pairs. RX buffers are posted into the
    /// rings before the vring messages, like a guest that filled its rings before `DRIVER_OK`.
    pub fn connect(socket: impl AsRef<Path>, opts: GuestOptions) -> io::Result<TestGuest> {
        if opts.queue_pairs == 0 {
            return Err(invalid("queue_pairs must be at least 1".into()));
        }
        let num_queues = 2 * opts.queue_pairs as u64;
        let stream = connect_retrying(socket.as_ref(), opts.connect_timeout)?;
        stream.set_read_timeout(opts.reply_timeout)?;
        let mut frontend = Frontend::from_stream(stream, num_queues);

        frontend.set_owner().map_err(vhost_err("SET_OWNER"))?;
        let offered_features = frontend.get_features().map_err(vhost_err("GET_FEATURES"))?;
        let acked_features = opts.features.unwrap_or(offered_features & DRIVER_FEATURES)
            & !(VIRTIO_F_RING_PACKED | VIRTIO_F_IN_ORDER)
            | ring_features(&opts, offered_features)?;

        let mut offered_protocol_features = 0;
        let mut acked_protocol_features = 0;
        if offered_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            offered_protocol_features = frontend
                .get_protocol_features()
                .map_err(vhost_err("GET_PROTOCOL_FEATURES"))?
                .bits();
            acked_protocol_features = opts
                .protocol_features
                .unwrap_or(offered_protocol_features & DRIVER_PROTOCOL_FEATURES);
            frontend
                .set_protocol_features(VhostUserProtocolFeatures::from_bits_retain(
                    acked_protocol_features,
                ))
                .map_err(vhost_err("SET_PROTOCOL_FEATURES"))?;
            if acked_protocol_features & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0 {
                // Like QEMU: every request that has no reply of its own asks for an ack, so a
                // device-side failure surfaces as an error of that request.
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }

        let mut queue_num = 0;
        if acked_protocol_features & VhostUserProtocolFeatures::MQ.bits() != 0 {
            queue_num = frontend
                .get_queue_num()
                .map_err(vhost_err("GET_QUEUE_NUM"))?;
            if queue_num < num_queues {
                return Err(io::Error::other(format!(
                    "device supports {queue_num} queues, {num_queues} needed for {} pairs",
                    opts.queue_pairs
                )));
            }
        } else if opts.queue_pairs > 1 {
            return Err(io::Error::other(
                "more than one queue pair needs the MQ protocol feature",
            ));
        }

        frontend
            .set_features(acked_features)
            .map_err(vhost_err("SET_FEATURES"))?;

        let ram = Arc::new(GuestRam::new(opts.mem_size, opts.gpa_base)?);
        frontend
            .set_mem_table(&[VhostUserMemoryRegionInfo {
                guest_phys_addr: ram.gpa_base(),
                memory_size: ram.size() as u64,
                userspace_addr: ram.host_base(),
                mmap_offset: 0,
                mmap_handle: ram.file().as_raw_fd(),
            }])
            .map_err(vhost_err("SET_MEM_TABLE"))?;

        let ring = RingOptions::from_features(acked_features);
        let mrg_rxbuf = acked_features & VIRTIO_NET_F_MRG_RXBUF != 0;
        let hdr_len = if acked_features & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF) != 0 {
            NET_HDR_LEN
        } else {
            NET_HDR_LEN_LEGACY
        };

        let mut pairs = Vec::with_capacity(opts.queue_pairs as usize);
        for p in 0..opts.queue_pairs {
            let rxq = DriverQueue::with_options(ram.clone(), 2 * p, opts.queue_size, ring)?;
            let txq = DriverQueue::with_options(ram.clone(), 2 * p + 1, opts.queue_size, ring)?;
            let mut rx = RxQueue::new(rxq, opts.rx_buffer_size, hdr_len, mrg_rxbuf)?;
            let mut tx = TxQueue::new(txq, opts.tx_buffer_size, hdr_len)?;
            tx.set_layout(opts.tx_layout);
            // Fill the RX ring and publish, without kicking: the device is not set up yet.
            let want = opts.rx_buffers.min(opts.queue_size);
            let posted = rx.post_quiet(want)?;
            if posted < want {
                return Err(io::Error::other("could not post the initial RX buffers"));
            }
            pairs.push(Pair { rx, tx });
        }

        let mut guest = TestGuest {
            frontend,
            ram,
            pairs,
            offered_features,
            acked_features,
            offered_protocol_features,
            acked_protocol_features,
            queue_num,
            hdr_len,
        };
        for index in 0..2 * opts.queue_pairs {
            let base = guest.queue_ref(index).initial_vring_base();
            guest.setup_vring(index, base)?;
        }
        if acked_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            for p in 0..opts.enabled_pairs.min(opts.queue_pairs) {
                guest.set_pair_enabled(p, true)?;
            }
        }
        if opts.kick_rx_on_connect {
            for pair in &mut guest.pairs {
                if pair.rx.posted() > 0 {
                    pair.rx.queue().kick()?;
                }
            }
        }
        Ok(guest)
    }

    /// Sends the vring setup messages for queue `index`: `SET_VRING_NUM`, `SET_VRING_ADDR`,
    /// `SET_VRING_BASE base`, `SET_VRING_CALL`, `SET_VRING_KICK`. `base` is
    /// [`DriverQueue::initial_vring_base`] for a fresh or reset queue, or the low 16 bits of what
    /// [`TestGuest::get_vring_base`] returned, to resume a stopped one as QEMU does (the message
    /// carries 16 bits: a packed ring's avail slot and wrap counter).
    pub fn setup_vring(&mut self, index: u16, base: u16) -> io::Result<()> {
        let ram = self.ram.clone();
        let q = self.queue(index);
        let size = q.size();
        let host = |gpa: u64| ram.gpa_to_host(gpa).expect("rings are inside guest memory");
        let config = VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: 0,
            desc_table_addr: host(q.desc_table()),
            used_ring_addr: host(q.device_area()),
            avail_ring_addr: host(q.driver_area()),
            log_addr: None,
        };
        let i = index as usize;
        let q = self.queue_ref(index);
        let f = &self.frontend;
        f.set_vring_num(i, size)
            .map_err(vhost_err("SET_VRING_NUM"))?;
        f.set_vring_addr(i, &config)
            .map_err(vhost_err("SET_VRING_ADDR"))?;
        f.set_vring_base(i, base)
            .map_err(vhost_err("SET_VRING_BASE"))?;
        f.set_vring_call(i, q.call_fd())
            .map_err(vhost_err("SET_VRING_CALL"))?;
        f.set_vring_kick(i, q.kick_fd())
            .map_err(vhost_err("SET_VRING_KICK"))?;
        Ok(())
    }

    // ----- negotiation results -----

    /// Features the device offered (`GET_FEATURES`).
    pub fn offered_features(&self) -> u64 {
        self.offered_features
    }

    /// Features sent with `SET_FEATURES`.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Protocol features the device offered (0 if `VHOST_USER_F_PROTOCOL_FEATURES` was not).
    pub fn offered_protocol_features(&self) -> u64 {
        self.offered_protocol_features
    }

    /// Protocol features sent with `SET_PROTOCOL_FEATURES`.
    pub fn protocol_features(&self) -> u64 {
        self.acked_protocol_features
    }

    /// The `GET_QUEUE_NUM` answer (0 if the MQ protocol feature was not negotiated).
    pub fn queue_num(&self) -> u64 {
        self.queue_num
    }

    /// Length of the virtio-net header in use (12 with `VERSION_1` or `MRG_RXBUF`, else 10).
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// Number of queue pairs set up.
    pub fn queue_pairs(&self) -> u16 {
        self.pairs.len() as u16
    }

    // ----- control plane -----

    /// `GET_CONFIG` of the 24-byte `virtio_net_config`, parsed.
    pub fn config(&mut self) -> io::Result<NetConfig> {
        Ok(NetConfig::parse(&self.config_raw(0, NET_CONFIG_LEN)?))
    }

    /// `GET_CONFIG` of `size` bytes at `offset`, unparsed.
    pub fn config_raw(&mut self, offset: u32, size: u32) -> io::Result<Vec<u8>> {
        let buf = vec![0u8; size as usize];
        let (_, payload) = self
            .frontend
            .get_config(offset, size, VhostUserConfigFlags::empty(), &buf)
            .map_err(vhost_err("GET_CONFIG"))?;
        Ok(payload)
    }

    /// `SET_VRING_ENABLE` on both queues of `pair` (RX = 2p, TX = 2p+1).
    pub fn set_pair_enabled(&mut self, pair: u16, enabled: bool) -> io::Result<()> {
        self.check_pair(pair)?;
        for i in [2 * pair, 2 * pair + 1] {
            self.frontend
                .set_vring_enable(i as usize, enabled)
                .map_err(vhost_err("SET_VRING_ENABLE"))?;
        }
        Ok(())
    }

    /// `GET_VRING_BASE`: stops the queue in the device and returns its next avail index (what
    /// QEMU does when the guest stops or migrates). Packed: bits 0-14 the avail slot, bit 15 its
    /// wrap counter; a device may put its used position in bits 16-31 the same way.
    pub fn get_vring_base(&mut self, queue_index: u16) -> io::Result<u32> {
        self.frontend
            .get_vring_base(queue_index as usize)
            .map_err(vhost_err("GET_VRING_BASE"))
    }

    /// The vhost-user frontend, for requests this type does not wrap.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.frontend
    }

    /// Closes the socket, like QEMU quitting. The guest memory goes away with `self` (the
    /// device keeps its own mapping until it drops it).
    pub fn disconnect(self) {
        let fd = self.frontend.as_raw_fd();
        // SAFETY: shutting down a socket we own; it is closed when `self` drops right after.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        drop(self);
    }

    // ----- data plane -----

    fn check_pair(&self, pair: u16) -> io::Result<()> {
        if (pair as usize) < self.pairs.len() {
            Ok(())
        } else {
            Err(invalid(format!(
                "queue pair {pair} does not exist ({} set up)",
                self.pairs.len()
            )))
        }
    }

    fn pair(&mut self, pair: u16) -> &mut Pair {
        let n = self.pairs.len();
        self.pairs
            .get_mut(pair as usize)
            .unwrap_or_else(|| panic!("queue pair {pair} does not exist ({n} set up)"))
    }

    /// The TX queue of `pair`. Panics if the pair does not exist.
    pub fn tx(&mut self, pair: u16) -> &mut TxQueue {
        &mut self.pair(pair).tx
    }

    /// The RX queue of `pair`. Panics if the pair does not exist.
    pub fn rx(&mut self, pair: u16) -> &mut RxQueue {
        &mut self.pair(pair).rx
    }

    /// Sends `frames` on `pair`, each behind a zeroed virtio-net header, in the default layout
    /// ([`GuestOptions::tx_layout`]). Reclaims completed buffers first, queues as many frames as
    /// fit, publishes the avail index once and kicks at most once (respecting the device's
    /// suppression). Returns how many frames were queued.
    pub fn send(&mut self, pair: u16, frames: &[&[u8]]) -> io::Result<usize> {
        self.check_pair(pair)?;
        self.tx(pair).send(frames)
    }

    /// [`TestGuest::send`] with an explicit descriptor layout.
    pub fn send_with_layout(
        &mut self,
        pair: u16,
        frames: &[&[u8]],
        layout: TxLayout,
    ) -> io::Result<usize> {
        self.check_pair(pair)?;
        self.tx(pair).send_with(frames, layout)
    }

    /// Sends one frame behind the given header bytes (any length) in the default layout.
    /// Returns whether it was queued (false: ring full).
    pub fn send_with_header(&mut self, pair: u16, hdr: &[u8], frame: &[u8]) -> io::Result<bool> {
        self.check_pair(pair)?;
        let tx = self.tx(pair);
        tx.reclaim();
        let layout = tx.layout();
        let queued = tx.enqueue(hdr, frame, layout)?;
        if queued {
            tx.flush()?;
        }
        Ok(queued)
    }

    /// Reclaims used TX entries of `pair`; returns how many were reclaimed now.
    pub fn tx_completed(&mut self, pair: u16) -> usize {
        self.tx(pair).reclaim()
    }

    /// TX frames of `pair` posted and not yet reclaimed.
    pub fn tx_in_flight(&self, pair: u16) -> usize {
        self.pairs[pair as usize].tx.in_flight()
    }

    /// Waits (on the TX call eventfd) until every TX frame of `pair` completed, reclaiming them.
    /// Returns whether that happened before `timeout`.
    pub fn tx_wait_idle(&mut self, pair: u16, timeout: Duration) -> io::Result<bool> {
        self.check_pair(pair)?;
        self.tx(pair).wait_idle(timeout)
    }

    /// Collects the frames the device delivered on `pair` (non-blocking), merging `MRG_RXBUF`
    /// buffers by `num_buffers` and reposting buffers. Panics on a device protocol violation
    /// (see [`DriverQueue::set_strict`]) and on I/O errors of the kick eventfd.
    pub fn recv(&mut self, pair: u16) -> Vec<RxFrame> {
        let mut out = Vec::new();
        self.rx(pair)
            .recv_into(&mut out)
            .expect("reposting RX buffers");
        out
    }

    /// Waits until at least `count` frames arrived on `pair` or `timeout` passed, and returns
    /// what arrived. Waits on the RX call eventfd with `poll(2)` (in 1 ms slices while the test
    /// suppressed interrupts on that queue), so a device that forgets to interrupt makes this
    /// time out.
    pub fn recv_wait(&mut self, pair: u16, count: usize, timeout: Duration) -> Vec<RxFrame> {
        let mut out = Vec::new();
        self.rx(pair)
            .recv_wait_into(&mut out, count, timeout)
            .expect("reposting RX buffers / polling the call eventfd");
        out
    }

    /// Total interrupts seen on queue `queue_index`'s call eventfd so far.
    pub fn interrupts(&mut self, queue_index: u16) -> u64 {
        self.queue(queue_index).poll_interrupts()
    }

    /// Gives queue `queue_index` a new call eventfd (`SET_VRING_CALL`), as QEMU does when it
    /// sets up or changes its interrupt routing; [`TestGuest::interrupts`] reads the new one.
    pub fn renew_call_fd(&mut self, queue_index: u16) -> io::Result<()> {
        let fd = self.queue(queue_index).renew_call_fd()?.try_clone()?;
        self.frontend
            .set_vring_call(queue_index as usize, &fd)
            .map_err(vhost_err("SET_VRING_CALL"))
    }

    /// Kicks sent on queue `queue_index` so far.
    pub fn kicks(&mut self, queue_index: u16) -> u64 {
        self.queue(queue_index).kicks()
    }

    /// Suppresses interrupts on a queue (`used_event` parked far away under `EVENT_IDX`,
    /// `VRING_AVAIL_F_NO_INTERRUPT` otherwise) or asks for them again.
    pub fn suppress_interrupts(&mut self, queue_index: u16, suppress: bool) {
        self.queue(queue_index).set_interrupts_suppressed(suppress);
    }

    /// Posts up to `count` more RX buffers of `size` bytes on `pair` and kicks if wanted; later
    /// refills use that size too. Returns how many were posted.
    pub fn post_rx_buffers(&mut self, pair: u16, count: u16, size: u32) -> io::Result<u16> {
        self.check_pair(pair)?;
        let rx = self.rx(pair);
        rx.set_layout(&[size], false);
        rx.post(count)
    }

    /// Raw access to virtqueue `queue_index` (RX of pair p = 2p, TX = 2p+1).
    pub fn queue(&mut self, queue_index: u16) -> &mut DriverQueue {
        let p = self.pair(queue_index / 2);
        if queue_index.is_multiple_of(2) {
            p.rx.queue()
        } else {
            p.tx.queue()
        }
    }

    fn queue_ref(&self, queue_index: u16) -> &DriverQueue {
        let p = &self.pairs[queue_index as usize / 2];
        if queue_index.is_multiple_of(2) {
            p.rx.queue_ref()
        } else {
            p.tx.queue_ref()
        }
    }

    // ----- memory -----

    /// The guest memory.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// Splits the guest into its parts, e.g. to drive each pair from its own thread. The
    /// connection stays up as long as the returned [`Frontend`] lives.
    pub fn into_parts(self) -> (Frontend, Arc<GuestRam>, Vec<(RxQueue, TxQueue)>) {
        let pairs = self.pairs.into_iter().map(|p| (p.rx, p.tx)).collect();
        (self.frontend, self.ram, pairs)
    }

    /// Guest-physical address of `len` fresh bytes aligned to `align`. Panics when guest memory
    /// is exhausted.
    pub fn alloc(&mut self, len: usize, align: usize) -> u64 {
        self.ram
            .alloc(len, align)
            .unwrap_or_else(|| panic!("guest memory exhausted allocating {len} bytes"))
    }

    /// Writes guest memory. Panics if the range is outside it.
    pub fn write_mem(&self, gpa: u64, data: &[u8]) {
        self.ram.write(gpa, data)
    }

    /// Reads guest memory. Panics if the range is outside it.
    pub fn read_mem(&self, gpa: u64, len: usize) -> Vec<u8> {
        self.ram.read_vec(gpa, len)
    }
}
