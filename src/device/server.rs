//! A port's accept loop: serve one frontend at a time on the port's socket, and after it goes
//! away (QEMU quits, crashes, or reconnects) start over with fresh per-connection state.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::VhostUserDaemon;

use super::backend::PortBackend;
use super::relay::{self, Relay};
use crate::frame::FramePool;
use crate::net::Attachment;
use crate::port::Port;
use crate::virtq::{GuestMem, GuestMemAtomic};

/// Serves `port` on `listener` forever.
pub fn serve_port(
    port: Arc<Port>,
    attachment: Attachment,
    pool: Arc<FramePool>,
    listener: Listener,
) {
    loop {
        let mem = GuestMemAtomic::new(GuestMem::new());
        let backend = PortBackend::new(port.clone(), attachment.clone(), pool.clone(), mem.clone());
        let mut daemon =
            match VhostUserDaemon::new(format!("vnic-{}", port.name), backend.clone(), mem) {
                Ok(d) => d,
                Err(e) => {
                    log::error!("port {}: cannot start workers: {e}", port.name);
                    thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
        if let Err(e) = backend.attach_workers(daemon.get_epoll_handlers()) {
            log::error!("port {}: cannot watch egress queues: {e}", port.name);
            thread::sleep(Duration::from_secs(1));
            continue;
        }
        let frontend = loop {
            match listener.accept() {
                Ok(Some(stream)) => break Some(stream),
                Ok(None) => continue,
                Err(e) => {
                    log::warn!("port {}: accept failed: {e}", port.name);
                    thread::sleep(Duration::from_millis(100));
                    break None;
                }
            }
        };
        let Some(frontend) = frontend else { continue };
        // The library talks to the frontend through a relay (see `relay`): it fixes up QEMU's
        // SET_VRING_ENABLE before SET_FEATURES, which the library would refuse.
        let relay = match relay::library_end().and_then(|(mut inner, stream)| {
            daemon
                .start(&mut inner)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Relay::start(&port.name, frontend, stream)
        }) {
            Ok(relay) => relay,
            Err(e) => {
                log::error!("port {}: cannot start the connection: {e}", port.name);
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        port.on_connect();
        backend.set_polled(port.polled);
        log::info!("port {}: frontend connected", port.name);
        let result = daemon.wait();
        backend.set_polled(false);
        relay.stop();
        // Dropping the daemon stops and joins the workers before the port is reset.
        drop(daemon);
        drop(backend);
        port.on_disconnect(&pool);
        match result {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => log::info!("port {}: frontend disconnected", port.name),
            Err(e) => log::warn!("port {}: frontend connection ended: {e}", port.name),
        }
    }
}
