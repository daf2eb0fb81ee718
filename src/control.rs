//! The control socket: a Unix stream socket on which the daemon answers `vnic stats`.
//!
//! Protocol: the client sends one line (`stats`), the daemon answers with one line of JSON
//! (a [`StatsSnapshot`]) and closes the connection.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::port::Port;
use crate::stats::StatsSnapshot;

/// Where the control socket goes when `--control` is not given.
pub fn default_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("vnic.sock");
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if uid == 0 {
        PathBuf::from("/run/vnic.sock")
    } else {
        PathBuf::from(format!("/tmp/vnic-{uid}.sock"))
    }
}

/// Checks that a Unix socket can be created at `path`: its directory exists, and whatever is
/// there now is a stale socket (removed) rather than a live one or another kind of file.
pub fn prepare_socket_path(path: &Path, what: &str) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        bail!(
            "{what} {}: directory {} does not exist",
            path.display(),
            dir.display()
        );
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => bail!("{what} {}: {e}", path.display()),
        Ok(meta) if !meta.file_type().is_socket() => {
            bail!("{what} {}: exists and is not a socket", path.display())
        }
        Ok(_) => {
            if UnixStream::connect(path).is_ok() {
                bail!(
                    "{what} {}: in use by another running process",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("{what} {}: cannot remove stale socket", path.display()))
        }
    }
}

pub fn snapshot(ports: &[Arc<Port>]) -> StatsSnapshot {
    StatsSnapshot {
        ports: ports.iter().map(|p| p.snapshot()).collect(),
    }
}

/// Binds the control socket and answers requests on a thread of its own.
pub fn start_server(path: &Path, ports: Vec<Arc<Port>>) -> anyhow::Result<()> {
    prepare_socket_path(path, "control socket")?;
    let listener = UnixListener::bind(path)
        .with_context(|| format!("control socket {}: cannot bind", path.display()))?;
    thread::Builder::new()
        .name("vnic-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(conn) => {
                        if let Err(e) = answer(conn, &ports) {
                            log::debug!("control: {e}");
                        }
                    }
                    Err(e) => log::warn!("control: accept failed: {e}"),
                }
            }
        })?;
    Ok(())
}

fn answer(conn: UnixStream, ports: &[Arc<Port>]) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    // One request line, at most 256 bytes.
    let mut line = String::new();
    BufReader::new(io::Read::take(&conn, 256)).read_line(&mut line)?;
    let mut out = &conn;
    match line.trim() {
        "stats" => {
            let json = serde_json::to_string(&snapshot(ports)).map_err(io::Error::other)?;
            out.write_all(json.as_bytes())?;
            out.write_all(b"\n")
        }
        other => out.write_all(format!("{{\"error\":\"unknown request '{other}'\"}}\n").as_bytes()),
    }
}

/// Asks the daemon behind `path` for its counters.
pub fn query_stats(path: &Path) -> anyhow::Result<StatsSnapshot> {
    let conn = UnixStream::connect(path).with_context(|| {
        format!(
            "cannot reach the vnic daemon at {} (is `vnic serve` running? see --control)",
            path.display()
        )
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    (&conn).write_all(b"stats\n")?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    serde_json::from_str(&line).with_context(|| format!("bad answer from {}", path.display()))
}
