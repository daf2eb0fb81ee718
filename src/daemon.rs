//! `vnic serve`: check the command line, build the ports and their attachments, bind every
//! socket, then run until SIGINT/SIGTERM and remove the sockets on the way out.
//!
//! Everything that can fail is done before anything starts: a bad port, an unusable socket
//! path or a tap that cannot be created ends start-up with one error line and leaves nothing
//! behind (bound sockets are removed, taps we created vanish when their fds close).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use vhost::vhost_user::Listener;

use crate::capture::Capture;
use crate::cli::ServeArgs;
use crate::config::{format_mac, AttachSpec};
use crate::control;
use crate::device::server::serve_port;
use crate::frame::FramePool;
use crate::net::{Attachment, Switch, Tap};
use crate::poller::Pollers;
use crate::port::Port;

/// Frame buffers kept for reuse.
pub const POOL_FRAMES: usize = 8192;

/// Socket files this process created; removed when dropped (on error or at shutdown).
#[derive(Default)]
struct CreatedSockets(Vec<PathBuf>);

impl Drop for CreatedSockets {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A started daemon: its ports and the files to remove when it stops.
pub struct Running {
    pub ports: Vec<Arc<Port>>,
    pub control_path: PathBuf,
    /// Poll mode's threads (stopped and joined when dropped).
    _pollers: Option<Pollers>,
    _sockets: CreatedSockets,
}

/// Validates `args` and starts every port. Returns once all sockets accept connections.
pub fn start(args: &ServeArgs) -> anyhow::Result<Running> {
    let mut seen_sockets = HashSet::new();
    let mut seen_taps = HashSet::new();
    for p in &args.ports {
        if !seen_sockets.insert(p.socket.clone()) {
            bail!("socket {} is given for two ports", p.socket.display());
        }
        if let AttachSpec::Tap(name) = &p.attach {
            if !seen_taps.insert(name.clone()) {
                bail!("tap {name} is given for two ports");
            }
        }
    }
    let control_path = match &args.control {
        Some(p) => std::path::absolute(p)?,
        None => control::default_path(),
    };
    if seen_sockets.contains(&control_path) {
        bail!(
            "control socket {} is also a port socket",
            control_path.display()
        );
    }
    for p in &args.ports {
        control::prepare_socket_path(&p.socket, &format!("port {}: socket", p.name()))?;
    }

    let pool = Arc::new(FramePool::new(POOL_FRAMES));
    let switch = Arc::new(Switch::new(Duration::from_secs(args.mac_aging)));
    let mut pollers = args.poll_cpus.as_ref().map(|c| Pollers::new(c.0.clone()));
    let mut ports = Vec::new();
    // Each port's attachment (a tap port's tap is opened here and owned by it).
    let mut attachments = Vec::new();
    for (id, cfg) in args.ports.iter().enumerate() {
        let attachment = match &cfg.attach {
            AttachSpec::Tap(name) => Attachment::Tap(Arc::new(
                Tap::open(name, cfg.queues, cfg.mtu, cfg.tap_offloads)
                    .with_context(|| format!("port {}", cfg.name()))?,
            )),
            AttachSpec::Switch => Attachment::Switch(switch.clone()),
            AttachSpec::Loopback => Attachment::Loopback,
        };
        let capture = match &cfg.pcap {
            Some(path) => Some(
                Capture::create(path, cfg.pcap_snaplen)
                    .with_context(|| format!("port {}", cfg.name()))?,
            ),
            None => None,
        };
        let poll_slots = match &mut pollers {
            Some(p) => (0..cfg.queues as usize).map(|pair| p.slot(pair)).collect(),
            None => Vec::new(),
        };
        let port = Port::new(id, cfg.clone(), capture, poll_slots)
            .with_context(|| format!("port {}: cannot create eventfds", cfg.name()))?;
        ports.push(Arc::new(port));
        attachments.push(attachment);
    }

    let mut sockets = CreatedSockets::default();
    let mut listeners = Vec::new();
    for port in &ports {
        let listener = Listener::new(&port.config.socket, true).map_err(|e| {
            anyhow::anyhow!(
                "port {}: socket {}: {e}",
                port.name,
                port.config.socket.display()
            )
        })?;
        sockets.0.push(port.config.socket.clone());
        listeners.push(listener);
    }
    control::start_server(&control_path, ports.clone())?;
    sockets.0.push(control_path.clone());

    switch.set_ports(
        ports
            .iter()
            .map(|p| (p.config.attach == AttachSpec::Switch).then(|| p.clone()))
            .collect(),
    );
    for ((port, listener), attachment) in ports.iter().zip(listeners).zip(attachments) {
        let (port, pool) = (port.clone(), pool.clone());
        thread::Builder::new()
            .name(format!("vnic-{}", port.name))
            .spawn(move || serve_port(port, attachment, pool, listener))?;
    }
    if let Some(p) = &mut pollers {
        p.start().context("cannot start the pollers")?;
    }
    Ok(Running {
        ports,
        control_path,
        _pollers: pollers,
        _sockets: sockets,
    })
}

/// `vnic serve`: start, print where things are, wait for SIGINT/SIGTERM, clean up.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Signals first, so an early Ctrl-C still removes what was created.
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    let running = start(&args)?;
    for p in &running.ports {
        println!(
            "vnic: port {} socket {} queues {} mac {} mtu {} attach {}",
            p.name,
            p.config.socket.display(),
            p.config.queues,
            format_mac(&p.config.mac),
            p.config.mtu,
            p.config.attach
        );
    }
    println!("vnic: control socket {}", running.control_path.display());
    let signal = signals.forever().next().unwrap_or(SIGTERM);
    log::info!("signal {signal}: shutting down");
    println!("vnic: shutting down");
    for port in &running.ports {
        if let Some(capture) = &port.capture {
            capture.flush();
        }
    }
    // Dropping `running` removes the sockets; worker threads end with the process.
    drop(running);
    Ok(())
}
