//! vnic: a multiqueue virtio-net device for QEMU guests, served over vhost-user.
//!
//! Where things live (bottom layer first: a module uses only modules listed before it; see
//! `docs/architecture.md`, checked by `scripts/check-layers`):
//! - [`ratelimit`]: rate-limited warnings for guest-triggered events.
//! - [`wire`]: typed zero-copy views of Ethernet, IPv4, IPv6, TCP, UDP and virtio-net headers.
//! - [`features`]: the virtio feature bits vnic offers and their names.
//! - [`frame`]: frames, their pool, their parsed metadata and the virtio-net header.
//! - [`virtq`]: the ring layer (split virtqueues in guest memory).
//! - [`offload`]: checksum, segmentation and coalescing engines, pure functions on frames.
//! - [`stats`], [`capture`]: counters and snapshots; `pcap=PATH`, a pcap file of what crosses a
//!   port.
//! - [`poller`]: busy-poll threads and their slots.
//! - [`config`]: a port's configuration (`--port` specifications, validated).
//! - [`port`]: the state of a port that outlives a connection (egress queues, counters, link)
//!   and RX steering.
//! - [`net`]: what a port is attached to: the built-in learning switch, a host tap, loopback.
//! - [`datapath`]: moving frames between virtqueues and the network: per-queue-pair TX/RX
//!   processing, guest memory copies, the RX stage.
//! - [`device`]: the vhost-user side of a port: config space, the per-connection backend and
//!   the accept/reconnect loop.
//! - [`control`]: the control socket `vnic stats` reads counters through.
//! - [`cli`], [`daemon`]: the command line (`vnic serve`, `vnic stats`); `vnic serve` itself.

pub mod capture;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod device;
pub mod features;
pub mod frame;
pub mod net;
pub mod offload;
pub mod poller;
pub mod port;
pub mod ratelimit;
pub mod stats;
pub mod virtq;
pub mod wire;
