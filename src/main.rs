//! The `ssegate` command: parses arguments, starts logging, loads the config, wires signals.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use ssegate::demo::{self, NaiveApp};
use ssegate::{App, Config};

/// A reverse-proxy sidecar that makes a naive Server-Sent Events endpoint production-ready.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The config file.
    #[arg(long, short, global = true, default_value = "ssegate.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config file and print the effective settings of each route.
    Check,
    /// Start a deliberately naive SSE app and ssegate in front of it; no config needed.
    Demo {
        /// Where ssegate listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Some(Command::Check) => check(&cli.config),
        Some(Command::Demo { listen }) => serve(None, Some(listen)),
        None => serve(Some(&cli.config), None),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            use std::io::Write;
            // A closed stdout (`| head`) is not an error of the config.
            let mut out = std::io::stdout().lock();
            let _ = write!(
                out,
                "# {}: valid. Effective settings:\n\n{config}",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

/// Runs ssegate with the config at `path`, or (demo) with the naive app behind it.
fn serve(path: Option<&std::path::Path>, demo_listen: Option<std::net::SocketAddr>) -> ExitCode {
    let config = match path.map(Config::load) {
        Some(Ok(config)) => Some(config),
        Some(Err(error)) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
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
        let (config, demo_app) = match (config, demo_listen) {
            (Some(config), _) => (config, None),
            (None, listen) => {
                let listen = listen.unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 8080)));
                let app = match NaiveApp::default()
                    .spawn(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
                    .await
                {
                    Ok(addr) => addr,
                    Err(error) => {
                        eprintln!("error: cannot start the demo app: {error}");
                        return ExitCode::FAILURE;
                    }
                };
                match demo::config(listen, app) {
                    Ok(config) => (config, Some(app)),
                    Err(error) => {
                        eprintln!("error: {error}");
                        return ExitCode::FAILURE;
                    }
                }
            }
        };
        let app = match App::bind(config).await {
            Ok(app) => app,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(naive) = demo_app {
            println!("{}", demo::banner(app.local_addr(), naive));
        }
        app.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("stop signal received");
}
