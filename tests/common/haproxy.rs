//! A real HAProxy of the test's own in front of several backends: round-robin, no stickiness,
//! long timeouts for event streams, and TCP health checks every 500 ms so that a killed backend
//! is skipped quickly.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::{free_port, unique_dir};
use super::TIMEOUT;

/// A running `haproxy -db`. Killed (and its directory removed) when dropped.
pub struct Haproxy {
    addr: SocketAddr,
    dir: PathBuf,
    child: Child,
}

impl Haproxy {
    /// Starts HAProxy on a free loopback port in front of `backends`, and waits until it
    /// accepts connections.
    pub async fn start(backends: &[SocketAddr]) -> Haproxy {
        assert!(!backends.is_empty(), "HAProxy needs at least one backend");
        let dir = unique_dir("haproxy");
        let mut last_log = String::new();
        for _ in 0..5 {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            let config = dir.join("haproxy.cfg");
            std::fs::write(&config, config_text(addr, backends)).expect("write haproxy.cfg");
            let log = dir.join("haproxy.log");
            let child = Command::new(program())
                .arg("-f")
                .arg(&config)
                .arg("-db")
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).map(Stdio::from).expect("log file"))
                .stderr(
                    std::fs::File::create(dir.join("haproxy.err"))
                        .map(Stdio::from)
                        .expect("log file"),
                )
                .spawn()
                .expect("start haproxy (is it installed? .ci/run installs it)");
            let mut haproxy = Haproxy {
                addr,
                dir: dir.clone(),
                child,
            };
            match haproxy.wait_ready().await {
                Ok(()) => return haproxy,
                Err(log) => {
                    last_log = log;
                    // Keep the directory for the next attempt.
                    haproxy.dir = PathBuf::new();
                }
            }
        }
        panic!("haproxy did not start on any of 5 ports; it said:\n{last_log}");
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// What HAProxy wrote to stdout and stderr so far (its alerts and warnings).
    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("{}{}", read("haproxy.log"), read("haproxy.err"))
    }

    /// Waits until HAProxy accepts a connection; `Err(what it said)` if it exits first or does
    /// not in time (it is then killed).
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            let exited = self.child.try_wait().ok().flatten().is_some();
            if exited || Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(self.log());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `haproxy` from the PATH, else Debian's `/usr/sbin/haproxy` (sbin is not on every PATH).
fn program() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("haproxy"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/haproxy"))
}

/// The configuration: HTTP mode, round-robin without cookies or stickiness, an hour for an
/// idle stream either side, a connection that fails retried on another backend, and backends
/// checked by a TCP connect every 500 ms (one failure marks one down, one success up again).
/// The checks are plain TCP because ssegate's `/healthz` is on its admin port; a stopped
/// (SIGSTOP) backend still completes TCP handshakes in its kernel, so it stays "up".
fn config_text(listen: SocketAddr, backends: &[SocketAddr]) -> String {
    let mut text = format!(
        "global\n    # maxconn: derived from the file limit\n\n\
         defaults\n    mode http\n    option http-no-delay\n    timeout connect 2s\n    timeout client 1h\n    timeout server 1h\n    timeout tunnel 1h\n    timeout check 1s\n    option redispatch\n    retries 3\n\n\
         frontend in\n    bind {listen}\n    default_backend ssegate\n\n\
         backend ssegate\n    balance roundrobin\n"
    );
    for (i, backend) in backends.iter().enumerate() {
        text.push_str(&format!(
            "    server s{i} {backend} check inter 500ms fall 1 rise 1\n"
        ));
    }
    text
}
