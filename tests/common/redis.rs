//! A real `redis-server` of the test's own, on a free loopback port (and a unix socket), with its
//! files in a temporary directory: killed, restarted on the same port and directory, and asked
//! directly for assertions.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::TIMEOUT;

/// How a [`RedisServer`] runs; [`RedisOptions::start`] starts it.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    password: Option<String>,
    persistent: bool,
}

impl RedisOptions {
    /// Clients must `AUTH` with `password` (`requirepass`).
    pub fn password(mut self, password: &str) -> RedisOptions {
        self.password = Some(password.to_owned());
        self
    }

    /// Everything written survives a kill and restart (`appendonly yes`, `appendfsync always`);
    /// by default nothing does (`save ''`, `appendonly no`).
    pub fn persistent(mut self) -> RedisOptions {
        self.persistent = true;
        self
    }

    /// Starts the server on a free loopback port and waits until it answers PING.
    pub async fn start(self) -> RedisServer {
        let dir = unique_dir("redis");
        let mut last_log = String::new();
        // A free port may be taken between our probe and redis' bind: try another.
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                options: self.clone(),
                port,
                dir: dir.clone(),
                child: None,
            };
            match server.spawn_and_wait().await {
                Ok(()) => return server,
                Err(log) => last_log = log,
            }
        }
        panic!("redis-server did not start on any of 5 ports; its log:\n{last_log}");
    }
}

/// A running `redis-server`. Killed (and its directory removed) when dropped.
pub struct RedisServer {
    options: RedisOptions,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// A server without persistence or password.
    pub async fn start() -> RedisServer {
        RedisOptions::default().start().await
    }

    /// Options for a server with a password or persistence.
    pub fn options() -> RedisOptions {
        RedisOptions::default()
    }

    /// `redis://127.0.0.1:PORT` (without the password).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `unix:///DIR/redis.sock`: the same server over its unix socket.
    pub fn unix_url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    pub fn password(&self) -> Option<&str> {
        self.options.password.as_deref()
    }

    /// The server's directory (its log, `redis.log`, and any append-only files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SIGKILL, and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal by name (`"STOP"`, `"CONT"`, `"TERM"`, ...) to the running server.
    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("redis-server is not running");
        let status = Command::new("kill")
            .args([format!("-{name}"), child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} redis-server");
    }

    /// Kills the server if it runs, and starts it again on the same port and directory (with
    /// persistence, with what it had written); waits until it answers PING.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.spawn_and_wait().await {
                Ok(()) => return,
                // The port may still be held by the dying process' sockets for a moment.
                Err(log) if Instant::now() >= deadline => {
                    panic!(
                        "redis-server did not restart on port {}; its log:\n{log}",
                        self.port
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// A connection for the test's own commands (authenticated when the server has a password).
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        let mut info = redis::IntoConnectionInfo::into_connection_info(self.url()).expect("redis url");
        if let Some(password) = &self.options.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).expect("redis client");
        tokio::time::timeout(TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .expect("connect to redis-server within the timeout")
            .expect("connect to redis-server")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// Starts redis-server on `self.port` and waits until it answers PING; `Err(its log)` if it
    /// exits first (the port was taken) or does not answer in time.
    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).expect("create redis-server's directory");
        let log = self.dir.join("redis.log");
        let mut command = Command::new("redis-server");
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .arg("--unixsocket")
            .arg(self.socket())
            .args(["--unixsocketperm", "700"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(["--daemonize", "no", "--save", ""]);
        if self.options.persistent {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        if let Some(password) = &self.options.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (is it installed? .ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if self.answers_ping().await {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|child| child.try_wait().ok().flatten().is_some());
            if exited || Instant::now() >= deadline {
                self.kill();
                return Err(std::fs::read_to_string(&log).unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the server answers PING with PONG (not `-LOADING`, not an auth error).
    async fn answers_ping(&self) -> bool {
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect(self.addr()).await.ok()?;
            let mut request = Vec::new();
            if let Some(password) = &self.options.password {
                request.extend_from_slice(
                    format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n", password.len()).as_bytes(),
                );
            }
            request.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
            stream.write_all(&request).await.ok()?;
            let mut answer = Vec::new();
            let mut buf = [0u8; 256];
            // One answer line per command sent.
            let expected = 1 + usize::from(self.options.password.is_some());
            while answer.windows(2).filter(|pair| pair == b"\r\n").count() < expected {
                let n = stream.read(&mut buf).await.ok()?;
                if n == 0 {
                    return None;
                }
                answer.extend_from_slice(&buf[..n]);
            }
            Some(String::from_utf8_lossy(&answer).contains("+PONG"))
        };
        matches!(
            tokio::time::timeout(Duration::from_millis(500), attempt).await,
            Ok(Some(true))
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind a free port")
        .port()
}

/// A new, empty directory under the temp dir, unique in this run.
pub fn unique_dir(what: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ssegate-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}
