//! The vhost-user side of a port.
//!
//! - [`features`]: the virtio feature bits vnic offers and their names (the leaf module
//!   [`crate::features`], re-exported here).
//! - [`config_space`]: the virtio-net configuration space (MAC, status, MTU, speed, ...).
//! - [`backend`]: the `VhostUserBackend` of one connection: one worker thread per queue pair.
//! - [`relay`]: passes a connection's messages to the library, fixing up QEMU's early
//!   SET_VRING_ENABLE.
//! - [`server`]: a port's accept loop: a fresh backend per frontend connection, reconnects.

pub mod backend;
pub mod config_space;
pub use crate::features;
pub mod relay;
pub mod server;
