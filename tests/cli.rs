//! The `vnic` binary: clear one-line errors, `vnic stats`, clean shutdown on SIGTERM/SIGINT.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const VNIC: &str = env!("CARGO_BIN_EXE_vnic");

fn vnic(args: &[&str]) -> Output {
    Command::new(VNIC).args(args).output().expect("run vnic")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `vnic serve` with `args`, expecting it to fail; returns its one error line.
fn serve_error(args: &[&str]) -> String {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    let o = vnic(&all);
    assert!(!o.status.success(), "must fail: {args:?}");
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "one error line, got: {err}");
    lines[0].to_string()
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_serve(args: &[String]) -> Daemon {
    let mut cmd = Command::new(VNIC);
    cmd.arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Daemon(cmd.spawn().expect("spawn vnic serve"))
}

#[test]
fn bad_options_are_one_clear_line() {
    let e = serve_error(&["--port", "socket=/tmp/x.sock,queues=40"]);
    assert!(e.contains("queues=40") && e.contains("1 to 16"), "{e}");
    let e = serve_error(&["--port", "socket=/tmp/x.sock,mtu=10"]);
    assert!(e.contains("mtu=10"), "{e}");
    let e = serve_error(&["--port", "queues=2"]);
    assert!(e.contains("socket=PATH is required"), "{e}");
    let e = serve_error(&["--port", "socket=/tmp/x.sock,bogus=1"]);
    assert!(e.contains("unknown key 'bogus'"), "{e}");
    let o = vnic(&["serve"]);
    assert!(!o.status.success() && stderr(&o).contains("--port"));
    let e = serve_error(&["--poll-cpus", "4096", "--port", "socket=/tmp/x.sock"]);
    assert!(e.contains("CPU 4096 does not exist"), "{e}");
    let e = serve_error(&["--poll-cpus", "0,0", "--port", "socket=/tmp/x.sock"]);
    assert!(e.contains("CPU 0 is listed twice"), "{e}");
    let e = serve_error(&["--poll-cpus", "1-0", "--port", "socket=/tmp/x.sock"]);
    assert!(e.contains("goes backwards"), "{e}");
    let e = serve_error(&["--port", "socket=/tmp/x.sock,attach=loop"]);
    assert!(e.contains("'switch', 'tap:NAME' or 'loopback'"), "{e}");
}

#[test]
fn unusable_socket_paths_are_refused_and_nothing_is_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.sock");
    let control = dir.path().join("control.sock");
    let ctl = format!("--control={}", control.display());

    let e = serve_error(&[
        &ctl,
        "--port",
        &format!("socket={}", good.display()),
        "--port",
        "socket=/nonexistent/dir/a.sock",
    ]);
    assert!(
        e.contains("/nonexistent/dir") && e.contains("does not exist"),
        "{e}"
    );

    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let e = serve_error(&[&ctl, "--port", &format!("socket={}", file.display())]);
    assert!(e.contains("exists and is not a socket"), "{e}");
    assert!(file.exists(), "a non-socket file is never removed");

    let e = serve_error(&[
        &ctl,
        "--port",
        &format!("socket={}", good.display()),
        "--port",
        &format!("socket={}", good.display()),
    ]);
    assert!(e.contains("given for two ports"), "{e}");

    // A tap that cannot be created (the name belongs to a device that is not a tap).
    let e = serve_error(&[
        &ctl,
        "--port",
        &format!("socket={}", good.display()),
        "--port",
        &format!(
            "socket={},attach=tap:lo",
            dir.path().join("t.sock").display()
        ),
    ]);
    assert!(e.contains("tap lo"), "{e}");
    assert!(
        !good.exists() && !control.exists(),
        "nothing half-started is left behind"
    );
}

#[test]
fn serve_stats_and_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.sock");
    let b = dir.path().join("b.sock");
    let control = dir.path().join("control.sock");
    let mut d = spawn_serve(&[
        format!("--control={}", control.display()),
        "--port".into(),
        format!("socket={},queues=4", a.display()),
        "--port".into(),
        format!("socket={},queues=2,mac=02:00:00:00:00:0b", b.display()),
    ]);
    wait_for(&control);

    // A second daemon on a socket in use is refused.
    let e = serve_error(&[
        "--control",
        &dir.path().join("c2.sock").display().to_string(),
        "--port",
        &format!("socket={}", a.display()),
    ]);
    assert!(e.contains("in use"), "{e}");

    let ctl = format!("--control={}", control.display());
    let table = vnic(&["stats", &ctl]);
    assert!(table.status.success(), "{}", stderr(&table));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("port a.sock") && table.contains("port b.sock"),
        "{table}"
    );
    assert!(
        table.contains("02:00:00:00:00:0b") && table.contains("link down"),
        "{table}"
    );
    assert_eq!(
        table
            .lines()
            .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
            .count(),
        6,
        "a row per queue pair: {table}"
    );

    let json = vnic(&["stats", "--json", &ctl]);
    let snap: vnic::stats::StatsSnapshot =
        serde_json::from_slice(&json.stdout).expect("valid JSON");
    assert_eq!(snap.ports.len(), 2);
    assert_eq!(snap.ports[0].queue_pairs, 4);
    assert_eq!(snap.ports[1].queues.len(), 2);
    assert!(snap.ports[0].queues[0].drops.contains_key("rx_no_buffer"));

    // SIGTERM: exit 0, sockets removed.
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(d.0.id() as i32, libc::SIGTERM) };
    let status = d.0.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(
        !a.exists() && !b.exists() && !control.exists(),
        "sockets removed"
    );

    // No daemon: stats says so clearly.
    let o = vnic(&["stats", &ctl]);
    assert!(!o.status.success() && stderr(&o).contains("cannot reach the vnic daemon"));
}

#[test]
fn sigint_also_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.sock");
    let control = dir.path().join("control.sock");
    let mut d = spawn_serve(&[
        format!("--control={}", control.display()),
        "--port".into(),
        format!("socket={}", a.display()),
    ]);
    wait_for(&control);
    wait_for(&a);
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(d.0.id() as i32, libc::SIGINT) };
    assert!(d.0.wait().unwrap().success());
    assert!(!a.exists() && !control.exists());
}

#[test]
fn stale_sockets_from_a_killed_daemon_are_reused() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.sock");
    let control = dir.path().join("control.sock");
    let args = [
        format!("--control={}", control.display()),
        "--port".into(),
        format!("socket={}", a.display()),
    ];
    let mut d = spawn_serve(&args);
    wait_for(&control);
    d.0.kill().unwrap();
    d.0.wait().unwrap();
    assert!(a.exists(), "SIGKILL leaves the socket file");
    let _d2 = spawn_serve(&args);
    std::thread::sleep(Duration::from_millis(300));
    let o = vnic(&["stats", &format!("--control={}", control.display())]);
    assert!(
        o.status.success(),
        "restarted daemon serves: {}",
        stderr(&o)
    );
}
