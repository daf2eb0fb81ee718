//! vnic: a multiqueue virtio-net device for QEMU guests, served over vhost-user.
//!
//! Where things live:
//! - [`cli`]: the command line (`vnic serve`, `vnic stats`) and port specifications.
//! - [`device`]: the vhost-user side of a port: features, config space, the per-connection
//!   backend and the accept/reconnect loop.
//! - [`datapath`]: moving frames between virtqueues and the network: frames and their pool,
//!   the virtio-net header, per-queue-pair TX/RX processing, RX queue steering.
//! - [`net`]: what a port is attached to: the built-in learning switch or a host tap.
//! - [`port`]: the state of a port that outlives a connection (egress queues, counters, link).
//! - [`capture`]: `pcap=PATH`, a pcap file of what crosses a port.
//! - [`stats`], [`control`]: counters and the control socket `vnic stats` reads them through.
//! - [`wire`]: typed zero-copy views of Ethernet, IPv4, IPv6, TCP, UDP and virtio-net headers.

pub mod capture;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod device;
pub mod net;
pub mod offload;
pub mod port;
pub mod ratelimit;
pub mod stats;
pub mod virtq;
pub mod wire;
