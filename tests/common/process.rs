//! The real `ssegate` binary as a child process, for what an in-process [`super::Sidecar`]
//! cannot show: signals (KILL, STOP, TERM), exits, restarts, several instances side by side.
//! It learns its listeners' addresses from its log, and keeps reading the log in threads of its
//! own into a buffer the test can wait on (so the pipes never fill).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::redis::unique_dir;
use super::{get, metric_value, TIMEOUT};

/// A running `ssegate --config FILE`. Killed when dropped.
pub struct Instance {
    /// The config file it runs with.
    config: PathBuf,
    /// The test's config text, without `listen` and `admin_listen` (when this instance owns the
    /// file and so may rewrite them on a restart).
    text: Option<String>,
    /// A directory of this instance's own (its config file when owned), removed on drop.
    dir: PathBuf,
    env: Vec<(String, String)>,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    /// The index in `log` of the current process' first line.
    first_line: usize,
    pid: u32,
    exit: mpsc::Receiver<ExitStatus>,
    status: Option<ExitStatus>,
}

impl Instance {
    /// Runs ssegate with the config `toml`, its `listen` and `admin_listen` set to
    /// `127.0.0.1:0` (whatever the text says), and waits until it listens. The config file is
    /// written to a directory of the instance's own: files it names (`secret_file`) should be
    /// absolute paths.
    pub async fn start(toml: &str) -> Instance {
        Instance::start_with_env(toml, &[]).await
    }

    /// [`Instance::start`] with extra environment variables (`RUST_LOG` is `info` unless set).
    pub async fn start_with_env(toml: &str, env: &[(&str, &str)]) -> Instance {
        let dir = unique_dir("instance");
        let text = without_listeners(toml);
        let config = dir.join("ssegate.toml");
        write_config(&config, &text, "127.0.0.1:0", "127.0.0.1:0");
        Instance::spawn(config, Some(text), dir, env).await
    }

    /// Runs ssegate with the config file at `path` as it is (it must listen on port 0 or a free
    /// port; `admin_listen` is optional), e.g. for a test that rewrites it and sends SIGHUP.
    pub async fn start_file(path: &Path) -> Instance {
        Instance::spawn(path.to_path_buf(), None, unique_dir("instance"), &[]).await
    }

    async fn spawn(config: PathBuf, text: Option<String>, dir: PathBuf, env: &[(&str, &str)]) -> Instance {
        let mut instance = Instance {
            config,
            text,
            dir,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: None,
            log: Arc::default(),
            first_line: 0,
            pid: 0,
            exit: mpsc::channel().1,
            status: None,
        };
        instance.launch().await;
        instance
    }

    /// Starts the process and waits for its "ssegate listening" line.
    async fn launch(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ssegate"));
        command
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn ssegate");
        self.first_line = self.log.lock().expect("log").len();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        collect_lines(stdout, self.log.clone());
        collect_lines(stderr, self.log.clone());
        self.pid = child.id();
        let (tx, exit) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = tx.send(status);
            }
        });
        self.exit = exit;
        self.status = None;
        let line = self.wait_until_listening().await;
        self.addr = field(&line, "listen=")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no listen address in {line:?}"));
        // `admin=127.0.0.1:9901`, or `admin=off`, which parses as no address.
        self.admin = field(&line, "admin=").and_then(|addr| addr.parse().ok());
    }

    /// Waits for the current process' "ssegate listening" line; fails at once if it exits.
    async fn wait_until_listening(&mut self) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let found = self.log.lock().expect("log")[self.first_line..]
                .iter()
                .find(|line| line.contains("ssegate listening"))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            if self.try_status().is_some() || Instant::now() >= deadline {
                // Let the log threads catch the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                panic!(
                    "ssegate (pid {}) exited or did not listen within {TIMEOUT:?} ({:?}); config {}; its log:\n{}",
                    self.pid,
                    self.status,
                    self.config.display(),
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The public listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener.
    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("this instance has no admin listener")
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://ADMIN{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin(), path)
    }

    /// The process id of the current process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The config file it runs with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Sends a signal by name: `"KILL"`, `"STOP"`, `"CONT"`, `"TERM"`, `"HUP"`, `"INT"`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {}", self.pid);
    }

    /// Waits at most `within` for the process to exit; its exit status.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "ssegate (pid {}) did not exit within {within:?}; its log:\n{}",
                    self.pid,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the process has exited (reaped), without waiting.
    pub fn has_exited(&mut self) -> bool {
        self.try_status().is_some()
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.exit.try_recv().ok();
        }
        self.status
    }

    /// Kills the process if it runs (SIGKILL) and starts it again with the same config file.
    /// An instance that owns its config comes back on the same addresses, so a load balancer
    /// in front of it finds it again.
    pub async fn restart(&mut self) {
        self.kill();
        if let Some(text) = &self.text {
            let admin = self
                .admin
                .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
            write_config(&self.config, text, &self.addr.to_string(), &admin);
        }
        self.launch().await;
    }

    /// SIGKILL, and waits until the process is gone (a stopped process is killed too).
    pub fn kill(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-KILL".to_owned(), self.pid.to_string()])
            .status();
        self.status = self.exit.recv_timeout(TIMEOUT).ok();
    }

    /// Waits (at most [`TIMEOUT`]) until the current process logs a line containing `needle`;
    /// returns the first such line.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_log_since(self.first_line, needle).await
    }

    /// A mark in the log: [`Instance::wait_for_log_since`] with it looks only at later lines.
    pub fn log_mark(&self) -> usize {
        self.log.lock().expect("log").len()
    }

    /// Waits (at most [`TIMEOUT`]) for a line containing `needle` at or after `mark`.
    pub async fn wait_for_log_since(&self, mark: usize, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let found = self
                .log
                .lock()
                .expect("log")
                .iter()
                .skip(mark)
                .find(|line| line.contains(needle))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            if Instant::now() >= deadline {
                panic!(
                    "ssegate (pid {}) logged no line with {needle:?} within {TIMEOUT:?}; its log:\n{}",
                    self.pid,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How many lines of the current process contain `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        let log = self.log.lock().expect("log");
        log.iter()
            .skip(self.first_line)
            .filter(|line| line.contains(needle))
            .count()
    }

    /// Everything every process of this instance logged so far, a line each.
    pub fn log_text(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// The value of the metric line that starts with `series` (name and labels) on the admin
    /// listener's `/metrics`, 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = get(&self.admin_url("/metrics"), &[]).await.text();
        metric_value(&text, series)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads `pipe` line by line into `log` until it closes.
fn collect_lines(pipe: impl Read + Send + 'static, log: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Ok(mut log) = log.lock() {
                log.push(line);
            }
        }
    });
}

/// The value after `name` in a log line, up to the next space.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split(name).nth(1)?.split_whitespace().next()
}

/// `toml` without its top-level `listen` and `admin_listen` lines.
fn without_listeners(toml: &str) -> String {
    let mut top_level = true;
    let mut out = String::new();
    for line in toml.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            top_level = false;
        }
        let key = trimmed.split('=').next().unwrap_or("").trim();
        if top_level && (key == "listen" || key == "admin_listen") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn write_config(path: &Path, text: &str, listen: &str, admin: &str) {
    std::fs::write(
        path,
        format!("listen = \"{listen}\"\nadmin_listen = \"{admin}\"\n{text}"),
    )
    .expect("write the instance's config");
}
