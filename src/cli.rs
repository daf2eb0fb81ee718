//! The command line: `vnic serve --port socket=PATH[,key=value...]...` and `vnic stats`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

// The `--port` specification lives in `config` (below `port`, which keeps it); here for the
// command line and its callers.
pub use crate::config::{
    default_mac, format_mac, parse_mac, AttachSpec, PortConfig, DEFAULT_MTU, DEFAULT_SPEED_MBPS,
    MAX_QUEUE_PAIRS, MIN_MTU,
};

#[derive(Parser, Debug)]
#[command(
    name = "vnic",
    version,
    about = "A multiqueue virtio-net device for QEMU guests, over vhost-user"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve one or more ports (vhost-user sockets), each a virtio-net device.
    Serve(ServeArgs),
    /// Print the counters of a running daemon.
    Stats(StatsArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A port: socket=PATH (required), queues=N (1-16, default 1), mac=MAC (default derived from
    /// the socket path), mtu=N (68-65535, default 1500), speed=MBPS (default 10000),
    /// attach=switch (default), attach=tap:NAME or attach=loopback (what the port sends comes
    /// back on its own RX queues). May repeat.
    #[arg(long = "port", value_name = "SPEC", required = true)]
    pub ports: Vec<PortConfig>,
    /// Control socket that `vnic stats` talks to.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Seconds after which the switch forgets an idle MAC address.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub mac_aging: u64,
    /// Busy-poll mode: one poller thread pinned to each listed CPU (e.g. `2,3` or `1-3`)
    /// serves every port's queue pairs, spread over them; kicks stay off while they poll.
    /// Without it, each queue pair has its own event-driven worker.
    #[arg(long, value_name = "LIST", value_parser = parse_cpu_list)]
    pub poll_cpus: Option<CpuList>,
}

/// A list of CPU numbers, each given once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// Parses `0,2-3`: CPU numbers and ranges, each CPU at most once, every one online.
pub fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let num = |v: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("'{part}' in CPU list '{s}' is not a CPU number or range"))
        };
        let (lo, hi) = (num(lo)?, num(hi)?);
        if lo > hi {
            return Err(format!("CPU range '{part}' goes backwards"));
        }
        for cpu in lo..=hi {
            if cpu >= online || cpu >= libc::CPU_SETSIZE as usize {
                return Err(format!(
                    "CPU {cpu} does not exist (this machine has CPUs 0-{})",
                    online - 1
                ));
            }
            if cpus.contains(&cpu) {
                return Err(format!("CPU {cpu} is listed twice in '{s}'"));
            }
            cpus.push(cpu);
        }
    }
    Ok(CpuList(cpus))
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Control socket of the daemon.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
}
