//! The Server-Sent Events wire format: an incremental parser and a canonical encoder.
//!
//! Pure code: bytes in, events out, and events in, bytes out. It knows nothing of HTTP, sockets
//! or tokio, which makes it the easiest part of ssegate to test exhaustively.
//!
//! The rules are those of the WHATWG HTML standard, section 9.2.6 "Interpreting an event stream"
//! (<https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation>).
//! The parser quotes them beside the lines that implement them.

mod encoder;
mod event;
mod parser;

pub use encoder::{encode_comment, encode_event, encode_retry};
pub use event::Event;
pub use parser::{Item, Parser};

#[cfg(test)]
mod tests;
