//! The lean HTTP/1.1 path: the first request of every connection is read here, and an SSE
//! subscription is served here, without hyper; anything else is handed to hyper untouched.
//!
//! Why: hyper gives every HTTP/1.1 connection an 8 KiB read buffer and an 8 KiB write buffer
//! for its whole life. An SSE connection lives for hours and is idle almost always, so those
//! buffers would be most of what a client costs (16 KiB of the 22 KiB measured per idle
//! client). Here a connection holds its socket, its response body (a cursor into the stream's
//! ring) and a small write batch; the request head is parsed by `httparse` (hyper's own parser)
//! from a buffer freed as soon as it is parsed.
//!
//! The path is taken only for a GET over HTTP/1.1 with no body, no `Upgrade` or `Expect`, and
//! nothing sent after the head; the connection closes when the response ends (SSE responses end
//! only when their stream does, and an EventSource reconnects on a new connection anyway).
//! Everything else, including HTTP/2 and malformed requests, goes to hyper with the bytes read
//! so far replayed first.

//! - `lean/sniff.rs` reads and parses the first head and decides which path serves it;
//! - `lean/writer.rs` writes the response of a lean subscription (the writer task);
//! - `lean/prefixed.rs` replays the bytes read so far to hyper.

mod prefixed;
mod sniff;
mod writer;

pub(super) use prefixed::Prefixed;
pub use sniff::{sniff, Sniffed};
pub(super) use writer::Writer;
