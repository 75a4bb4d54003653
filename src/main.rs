//! The `ssegate` command: parses arguments, starts logging, loads the config, wires signals.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use ssegate::config::ConfigError;
use ssegate::demo::{self, DemoError};
use ssegate::{App, AppError, Config};

/// A reverse-proxy sidecar that makes a naive Server-Sent Events endpoint production-ready.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The config file [default: ssegate.toml in the current directory].
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config file and print the effective settings of each route.
    Check {
        /// Also connect to the `[cluster]` Redis: authenticate, report its version, and prove
        /// that it runs scripts and stream commands.
        #[arg(long)]
        connect: bool,
    },
    /// Start a deliberately naive SSE app and ssegate in front of it; no config needed.
    Demo {
        /// Where ssegate listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let given = cli.config.is_some();
    let path = cli.config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    match cli.command {
        Some(Command::Check { connect }) => check(&path, given, connect),
        Some(Command::Demo { listen }) => serve(None, Some(listen)),
        None => serve(Some((&path, given)), None),
    }
}

/// The config file read when `--config` is not given, from the current directory.
const DEFAULT_CONFIG: &str = "ssegate.toml";

/// Loads the config at `path`, or says why not; `given` tells whether the user named the file
/// (`--config`) or ssegate looked for its default, so a first run without one learns what to do.
fn load(path: &std::path::Path, given: bool) -> Option<Config> {
    match Config::load(path) {
        Ok(config) => Some(config),
        Err(ConfigError::Read { source, .. }) if !given && source.kind() == std::io::ErrorKind::NotFound => {
            let dir =
                std::env::current_dir().map_or_else(|_| ".".to_owned(), |dir| dir.display().to_string());
            eprintln!(
                "error: no config file: --config was not given and there is no {DEFAULT_CONFIG} in {dir}\n\
                 \x20 run with --config FILE (config.example.toml documents every key),\n\
                 \x20 or try `ssegate demo`, which needs no config and shows ssegate in front of a sample app"
            );
            None
        }
        Err(error @ ConfigError::Read { .. }) => {
            eprintln!("error: {error}\n  (`ssegate demo` runs without a config file)");
            None
        }
        Err(error) => {
            eprintln!("error: {error}");
            None
        }
    }
}

fn check(path: &std::path::Path, given: bool, connect: bool) -> ExitCode {
    let Some(config) = load(path, given) else {
        return ExitCode::from(2);
    };
    let certificate = match config.tls.as_ref().map(ssegate::load_certificate) {
        Some(Err(error)) => {
            eprintln!("error: [tls]: {error}");
            return ExitCode::from(2);
        }
        Some(Ok(loaded)) => Some(loaded),
        None => None,
    };
    use std::io::Write;
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    // https:// upstreams without upstream_ca are checked against the system's roots.
    let system_roots = config
        .routes
        .iter()
        .any(|route| route.upstream_tls.as_ref().is_some_and(|tls| tls.ca.is_none()))
        .then(ssegate::system_roots);
    if let Some(roots) = system_roots.filter(|roots| roots.count == 0) {
        eprintln!(
            "warning: no system root certificates found{}: the https:// upstreams without upstream_ca will fail every handshake; install the ca-certificates package, or set upstream_ca",
            if roots.errors.is_empty() {
                String::new()
            } else {
                format!(" ({})", roots.errors.join("; "))
            }
        );
    }
    // A closed stdout (`| head`) is not an error of the config.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "# {}: valid. Effective settings:", path.display());
    if let Some(loaded) = certificate {
        let _ = writeln!(
            out,
            "# TLS certificate: {}, valid until {}",
            loaded.subject, loaded.not_after
        );
    }
    if let Some(roots) = system_roots.filter(|roots| roots.count > 0) {
        let _ = writeln!(
            out,
            "# System root certificates: {}, for the https:// upstreams without upstream_ca",
            roots.count
        );
    }
    let _ = write!(out, "\n{config}");
    drop(out);
    if connect {
        return check_connect(&config);
    }
    ExitCode::SUCCESS
}

/// How long each step of `check --connect` may take.
const CHECK_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `check --connect`: connects to the `[cluster]` Redis and reports what it found. Exits 2 for
/// a URL that is no URL (the config's fault), 1 for a server that fails the check.
fn check_connect(config: &Config) -> ExitCode {
    use std::io::Write;
    let Some(cluster) = &config.cluster else {
        let _ = writeln!(
            std::io::stdout(),
            "# --connect: no [cluster] section, nothing to connect to"
        );
        return ExitCode::SUCCESS;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ssegate::check_redis(cluster, CHECK_CONNECT_TIMEOUT)) {
        Ok(connected) => {
            for warning in &connected.warnings {
                eprintln!("warning: {warning}");
            }
            let _ = writeln!(
                std::io::stdout(),
                "redis: connected to {}, Redis {}",
                connected.url,
                connected.version
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(if error.is_config() { 2 } else { 1 })
        }
    }
}

/// Runs ssegate with the config at `path`, or (demo) with the naive app behind it.
fn serve(file: Option<(&std::path::Path, bool)>, demo_listen: Option<std::net::SocketAddr>) -> ExitCode {
    let path = file.map(|(path, _)| path);
    let config = match file {
        Some((path, given)) => match load(path, given) {
            Some(config) => Some(config),
            None => return ExitCode::from(2),
        },
        None => None,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let mut signals = match Signals::register() {
            Ok(signals) => signals,
            Err(error) => {
                eprintln!("error: cannot listen for signals: {error}");
                return ExitCode::FAILURE;
            }
        };
        let (app, banner) = match (config, demo_listen) {
            (Some(config), _) => match App::bind_from(config, path).await {
                Ok(app) => (app, None),
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::FAILURE;
                }
            },
            (None, listen) => {
                let listen = listen.unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 8080)));
                match demo::start(listen).await {
                    Ok(demo) => (demo.app, Some(demo.banner)),
                    Err(error) => {
                        eprintln!("error: {error}");
                        if let DemoError::App(AppError::Bind { key: "listen", .. }) = error {
                            eprintln!("  (the demo has no config file: choose its address with `ssegate demo --listen 127.0.0.1:8081`)");
                        }
                        return ExitCode::FAILURE;
                    }
                }
            }
        };
        if let Some(banner) = banner {
            println!("{banner}");
        }
        signals.reload_on_hangup(app.control());
        app.run(signals.shutdown()).await;
        ExitCode::SUCCESS
    })
}

/// The process's signals, registered before ssegate reports that it listens, so a signal sent
/// the moment it is up is never met by the default action (which would kill it uncleanly).
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn register() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
                hangup: signal(SignalKind::hangup()).ok(),
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next SIGINT or SIGTERM.
    async fn stop(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }

    /// Resolves on the first stop signal; a second one exits at once.
    async fn shutdown(mut self) {
        self.stop().await;
        tracing::info!("stop signal received; draining (a second signal exits at once)");
        tokio::spawn(async move {
            self.stop().await;
            tracing::warn!("second stop signal: exiting now");
            std::process::exit(1);
        });
    }

    /// Reloads the config file on every SIGHUP.
    fn reload_on_hangup(&mut self, control: ssegate::Control) {
        #[cfg(unix)]
        match self.hangup.take() {
            Some(mut hangup) => {
                tokio::spawn(async move {
                    while hangup.recv().await.is_some() {
                        tracing::info!("SIGHUP: reloading the config");
                        // A refused reload is logged by `reload` itself; the old config stays.
                        let _ = control.reload();
                    }
                });
            }
            None => tracing::warn!("cannot listen for SIGHUP; reload through the admin port only"),
        }
        #[cfg(not(unix))]
        let _ = control;
    }
}
