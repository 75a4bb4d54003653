//! The fuzz targets' bodies, shared by the AFL++ binaries (`fuzz/src/bin/*.rs`) and the test
//! that replays the seed corpus in every `cargo test` (`tests/fuzz_seeds.rs`).
//!
//! Each target takes arbitrary bytes and checks what the code promises beyond "no panic": the
//! lean head parser never accepts what it cannot serve and normalises to a fixed point; the SSE
//! parser never yields more than its limit and its events survive an encode/parse round trip;
//! the config loader either loads a config that prints and reloads to the same settings, or
//! names a line. Allocations are bounded by [`alloc_limit`] while a target runs (the binaries
//! install a counting allocator; the test does not).

use std::cell::Cell;
use std::sync::{Arc, OnceLock};

/// Largest SSE event the parser target accepts.
pub const SSE_MAX_EVENT: usize = 4096;

thread_local! {
    /// The largest single allocation allowed now; 0 outside a target.
    static LIMIT: Cell<usize> = const { Cell::new(0) };
}

/// The allocation limit in force on this thread (0: none).
pub fn alloc_limit() -> usize {
    LIMIT.with(Cell::get)
}

/// Runs `f` with single allocations limited to `limit` bytes.
fn bounded<T>(limit: usize, f: impl FnOnce() -> T) -> T {
    LIMIT.with(|l| l.set(limit));
    let out = f();
    LIMIT.with(|l| l.set(0));
    out
}

fn proxy() -> &'static (tokio::runtime::Runtime, ssegate::fuzzing::Proxy) {
    static PROXY: OnceLock<(tokio::runtime::Runtime, ssegate::fuzzing::Proxy)> = OnceLock::new();
    PROXY.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let config = ssegate::Config::from_toml(
            "[[route]]\npath = \"/events\"\nupstream = \"http://127.0.0.1:9\"\nsse = \"auto\"\n\
             [[route]]\npath = \"/files\"\nupstream = \"http://127.0.0.1:9\"\nsse = \"always\"\nallow_encoded_slashes = true\nmerge_slashes = false\n\
             [[route]]\npath = \"/\"\nupstream = \"http://127.0.0.1:9\"\n",
            "fuzz",
        )
        .expect("config");
        let metrics = Arc::new(ssegate::fuzzing::Metrics::new());
        let hub = ssegate::fuzzing::Hub::new(&config, metrics.clone());
        let proxy = ssegate::fuzzing::Proxy::new(&config, hub, metrics);
        (runtime, proxy)
    })
}

/// The lean HTTP/1.1 head reader (`sniff`), then the request-target checks and normalisation
/// on whatever it takes as a subscription.
pub fn head(data: &[u8]) {
    let (runtime, proxy) = proxy();
    let step = 1 + usize::from(data.first().copied().unwrap_or(0));
    let input = data.get(1..).unwrap_or_default();
    bounded(256 * 1024, || {
        let mut io = ssegate::fuzzing::Pieces::new(input, step);
        let is_lean = |head: &http::Request<()>| proxy.is_subscription_head(head);
        let sniffed = runtime.block_on(ssegate::fuzzing::sniff(&mut io, &is_lean));
        let Ok(ssegate::fuzzing::Sniffed::Subscription(request)) = sniffed else {
            return;
        };
        // The lean path only takes a GET without a body, that ssegate would route and serve.
        assert_eq!(request.method(), http::Method::GET);
        assert!(request
            .headers()
            .get_all(http::header::CONTENT_LENGTH)
            .iter()
            .all(|v| v == "0"));
        assert!(!request.headers().contains_key(http::header::TRANSFER_ENCODING));
        let target = ssegate::fuzzing::Target::of(&request).expect("a lean head passes the target checks");
        // Normal form is a fixed point, and has no dot-segments left.
        let again = ssegate::fuzzing::normalise_path(&target.path).expect("normal form parses");
        assert_eq!(again, target.path);
        assert!(!target.merged.contains("//"));
        assert!(target.path.starts_with('/'));
        for segment in target.path.split('/') {
            assert!(segment != "." && segment != "..", "{}", target.path);
        }
        let mut request = request;
        if let Ok(path) = target.path_for(&route_settings(proxy, &target.merged)) {
            target
                .apply(&mut request, path)
                .expect("a normal path is a valid URI");
            assert_eq!(request.uri().path(), path);
        }
    });
}

fn route_settings(proxy: &ssegate::fuzzing::Proxy, path: &str) -> ssegate::config::Settings {
    let router = proxy.router();
    let route = router.find(path).expect("the config has a root route");
    route.config.settings.clone()
}

/// The SSE parser, fed in chunks of a size the first byte chooses; every event within the
/// limit, and every event the same after encoding and parsing again.
pub fn sse(data: &[u8]) {
    let step = 1 + usize::from(data.first().copied().unwrap_or(0));
    let input = data.get(1..).unwrap_or_default();
    bounded(64 * 1024, || {
        let mut parser = ssegate::sse::Parser::new(SSE_MAX_EVENT);
        let mut events = Vec::new();
        for chunk in input.chunks(step) {
            parser.feed(chunk, |item| {
                if let ssegate::sse::Item::Event(event) = item {
                    events.push(event);
                }
            });
            for event in events.drain(..) {
                assert!(event.data.len() <= SSE_MAX_EVENT, "an event over the limit");
                let mut wire = bytes::BytesMut::new();
                ssegate::sse::encode_event(&event, None, &mut wire);
                let mut again = ssegate::sse::Parser::new(usize::MAX >> 1);
                let mut back = Vec::new();
                again.feed(&wire, |item| back.push(item));
                match back.as_slice() {
                    [ssegate::sse::Item::Event(parsed)] => {
                        assert_eq!(parsed.data, event.data);
                        assert_eq!(parsed.id, event.id);
                        let kind = |e: &ssegate::sse::Event| e.event.clone().filter(|t| !t.is_empty());
                        assert_eq!(kind(parsed), kind(&event));
                    }
                    other => panic!("{event:?} encoded as {wire:?} parsed as {other:?}"),
                }
            }
            assert!(parser.buffered_capacity() <= 4 * SSE_MAX_EVENT + 1024);
        }
        parser.finish();
    });
}

/// The config loader: an error names a line inside the text; a config prints as TOML that
/// loads again to the same settings.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    bounded(64 * 1024 + 64 * data.len(), || {
        match ssegate::Config::from_toml(text, "fuzz") {
            Err(ssegate::config::ConfigError::Invalid { line, .. }) => {
                assert!(
                    line >= 1 && line <= text.lines().count().max(1) + 1,
                    "line {line}"
                );
            }
            Err(other) => panic!("from_toml can only fail as Invalid: {other}"),
            Ok(config) => {
                let printed = config.to_string();
                let again = ssegate::Config::from_toml(&printed, "printed")
                    .unwrap_or_else(|e| panic!("the printed config does not load: {e}\n{printed}"));
                assert_eq!(again.to_string(), printed);
            }
        }
    });
}

/// A stream's reading of an app's response (its head, then its body: chunked, sized or until the
/// close), the bytes arriving in reads of a size the first byte chooses: whatever the split, the
/// same status, data and ending as in one read; never more data than bytes came.
pub fn upstream(data: &[u8]) {
    let step = 1 + usize::from(data.first().copied().unwrap_or(0));
    let input = data.get(1..).unwrap_or_default();
    bounded(256 * 1024, || {
        let split = ssegate::fuzzing::read_response(input, step);
        let whole = ssegate::fuzzing::read_response(input, input.len().max(1));
        if let Ok((_, body, _)) = &split {
            assert!(body.len() <= input.len(), "more data than bytes");
        }
        assert_eq!(split, whole, "the split into reads changed the outcome");
    });
}
