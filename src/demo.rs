//! `ssegate demo`: a deliberately naive SSE app, ssegate in front of it, and a page that shows
//! the difference.
//!
//! The app is what ssegate is for: bare `data:` lines (no ids, no retry, no heartbeats), a
//! response that ends after a while as a worker timeout would, and one upstream connection per
//! client. It numbers events from one global ticker and counts its open streams on `/stats`, so
//! the difference ssegate makes can be seen (and measured: each event carries its send time).
//!
//! The demo page (`/`, served by the app through ssegate) reads the app through ssegate and
//! directly, side by side. It reaches ssegate over a wire (`wire`) that its "cut my
//! connection" button drops, and stops the app for a few seconds with the other button.

mod app;
mod wire;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

pub use app::{NaiveApp, Quiet, MIN_INTERVAL, STOP_FOR};

use crate::config::{Config, ConfigError};
use crate::{App, AppError, ReloadError};

/// The naive app of the demo: an event a second, a stream that ends every 20 s, and 5 s of
/// silence after every 25 s of events (so heartbeats show).
pub fn demo_app() -> NaiveApp {
    NaiveApp {
        quiet: Some(Quiet {
            after: Duration::from_secs(25),
            length: Duration::from_secs(5),
        }),
        ..NaiveApp::default()
    }
}

/// The config `ssegate demo` runs: every path of ssegate on `listen` goes to the app at
/// `upstream`; every GET of `/events` is one shared subscription (so a plain `curl` is one),
/// with ids, retry, heartbeats and gap events. With `admin`, `/streams` is ssegate's own admin
/// answer, for the demo page.
pub fn config(
    listen: SocketAddr,
    upstream: SocketAddr,
    admin: Option<SocketAddr>,
) -> Result<Config, ConfigError> {
    let admin_route = admin.map_or(String::new(), |admin| {
        format!("[[route]]\npath = \"/streams\"\nupstream = \"http://{admin}\"\n")
    });
    let text = format!(
        "listen = \"{listen}\"\n\
         admin_listen = \"{admin_listen}\"\n\
         [defaults]\nheartbeat = \"2s\"\nretry = \"1s\"\non_gap = \"event\"\nreconnect_max = \"1s\"\n\
         [[route]]\npath = \"/events\"\nupstream = \"http://{upstream}\"\nsse = \"always\"\nstream_key = [\"path\"]\n\
         {admin_route}\
         [[route]]\npath = \"/\"\nupstream = \"http://{upstream}\"\n",
        admin_listen = SocketAddr::new(loopback(listen.ip()), 0),
    );
    Config::from_toml(&text, "embedded demo config")
}

/// The loopback address of `ip`'s family.
fn loopback(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// The demo page, pointed at the app's and the wire's ports.
fn page(app_port: u16, wire_port: u16) -> String {
    include_str!("demo/page.html")
        .replace("{{APP_PORT}}", &app_port.to_string())
        .replace("{{WIRE_PORT}}", &wire_port.to_string())
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The naive app or the page's wire could not listen.
    #[error("cannot start the demo's {what} on {addr}: {source}")]
    Listen {
        /// `app` or `wire`.
        what: &'static str,
        /// Where it tried.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The embedded config was refused (a bug).
    #[error("the embedded demo config is invalid: {0}")]
    Config(#[from] ConfigError),
    /// ssegate could not start.
    #[error(transparent)]
    App(#[from] AppError),
    /// The config with the admin route was refused (a bug).
    #[error("the embedded demo config cannot be applied: {0}")]
    Apply(#[from] ReloadError),
}

/// `ssegate demo`, ready to run: ssegate, and what to print.
#[derive(Debug)]
pub struct Demo {
    /// ssegate, listening on the demo's address.
    pub app: App,
    /// What `ssegate demo` prints once up.
    pub banner: String,
}

/// Starts the naive app and the page's wire (on `listen`'s address, ports of their own) and
/// binds ssegate on `listen` in front of the app.
pub async fn start(listen: SocketAddr) -> Result<Demo, DemoError> {
    let beside = SocketAddr::new(listen.ip(), 0);
    let (wire, wire_listener) = wire::Wire::bind(beside)
        .await
        .map_err(|source| DemoError::Listen {
            what: "wire",
            addr: beside,
            source,
        })?;
    let page = app::Page { wire: wire.clone() };
    let upstream = demo_app()
        .serve(beside, Some(page))
        .await
        .map_err(|source| DemoError::Listen {
            what: "app",
            addr: beside,
            source,
        })?;
    let upstream = SocketAddr::new(reachable(upstream.ip()), upstream.port());
    let app = App::bind(config(listen, upstream, None)?).await?;
    let admin = app.admin_addr();
    // The admin port is known once bound: route `/streams` to it.
    app.control().apply(config(listen, upstream, admin)?)?;
    let proxy = app.local_addr();
    wire.connect_to(
        wire_listener,
        SocketAddr::new(reachable(proxy.ip()), proxy.port()),
    );
    let banner = banner(proxy, upstream, wire.port(), admin);
    Ok(Demo { app, banner })
}

/// An address to connect to for one bound to `ip` (the unspecified address is every address,
/// loopback included).
fn reachable(ip: IpAddr) -> IpAddr {
    if ip.is_unspecified() {
        loopback(ip)
    } else {
        ip
    }
}

/// What `ssegate demo` prints once everything is up.
pub fn banner(proxy: SocketAddr, app: SocketAddr, wire_port: u16, admin: Option<SocketAddr>) -> String {
    let admin = admin.map_or("off".to_owned(), |admin| admin.to_string());
    format!(
        "ssegate demo\n\
         \n\
         open http://{proxy}/ in a browser: the app through ssegate and directly, side by side\n\
         \n\
         naive app: http://{app}  (bare `data:` lines, one event a second, ends its stream every 20 s,\n\
         \x20          quiet for 5 s after every 25 s of events)\n\
         ssegate:   http://{proxy}  (in front of it; admin http://{admin})\n\
         the page reaches ssegate through port {wire_port}, a relay its \"cut my connection\" button drops\n\
         \n\
         Try:\n\
         \x20 curl -N http://{proxy}/events\n\
         \x20     retry first, an id on every event, heartbeats; the app's 20 s drops never show\n\
         \x20 curl -N -H 'Last-Event-ID: <an id you saw>' http://{proxy}/events\n\
         \x20     resumes exactly after that id, from ssegate's buffer\n\
         \x20 curl -N http://{app}/events\n\
         \x20     the app itself: no ids, no retry, ends after 20 s\n\
         \x20 curl http://{app}/stats\n\
         \x20     the app holds one stream however many clients watch through ssegate\n\
         \n\
         Ctrl-C stops both.\n"
    )
}
