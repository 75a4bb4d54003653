//! The naive SSE app of `ssegate demo`, on its own: bare `data:` lines from one global ticker, a
//! stream that ends after a while, `/stats` with its open streams. Put ssegate in front of it:
//!
//! ```sh
//! cargo run --example naive_app -- --listen 127.0.0.1:3000 --interval 1s --lifetime 20s
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use ssegate::config::parse_duration;
use ssegate::demo::NaiveApp;

/// A deliberately naive SSE app.
#[derive(Debug, Parser)]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Time between events.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// How long each response lasts before the app ends it ("off": forever).
    #[arg(long, default_value = "20s")]
    lifetime: String,
    /// Bytes of padding per event.
    #[arg(long, default_value_t = 0)]
    payload: usize,
    /// A ticker per response, from when it was asked for, numbered from 1 (streams tick at
    /// different moments, as different users' do), instead of one global ticker.
    #[arg(long)]
    stagger: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.interval < ssegate::demo::MIN_INTERVAL {
        return Err(format!("--interval must be at least {:?}", ssegate::demo::MIN_INTERVAL).into());
    }
    let lifetime = match args.lifetime.as_str() {
        "off" => None,
        text => Some(parse_duration(text)?),
    };
    let app = NaiveApp {
        interval: args.interval,
        lifetime,
        payload: args.payload,
        quiet: None,
        stagger: args.stagger,
    };
    let addr = app.spawn(args.listen).await?;
    println!("naive SSE app on http://{addr}: /events (SSE), /stats (JSON)");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
