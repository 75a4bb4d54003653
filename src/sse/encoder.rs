//! The canonical encoder: events back to LF-terminated wire bytes.
//!
//! Whatever the values hold, the output parses back to the same event: multi-line data becomes
//! one `data:` line per line, and single-line fields (`id`, `event`) lose any CR or LF, so no
//! value can ever inject a field or end an event early.

use bytes::{BufMut, BytesMut};

use super::Event;

/// Appends `event` to `out`: `id`, `event`, then one `data:` line per line of data, then the
/// blank line that dispatches it. `id` overrides the event's own id when given.
pub fn encode_event(event: &Event, id: Option<&str>, out: &mut BytesMut) {
    out.reserve(event.data.len() + 16 + id.or(event.id.as_deref()).map_or(0, str::len));
    if let Some(id) = id.or(event.id.as_deref()) {
        // An id holding NUL is ignored by the parser, so NUL is dropped here like CR and LF.
        if id.contains('\0') {
            single_line_field(out, b"id", &id.replace('\0', ""));
        } else {
            single_line_field(out, b"id", id);
        }
    }
    if let Some(kind) = &event.event {
        single_line_field(out, b"event", kind);
    }
    // A browser splits data on CR, LF and CRLF alike, so each becomes a line of its own.
    let mut rest = event.data.as_bytes();
    loop {
        let end = memchr::memchr2(b'\r', b'\n', rest);
        out.put_slice(b"data: ");
        out.put_slice(&rest[..end.unwrap_or(rest.len())]);
        out.put_u8(b'\n');
        match end {
            Some(i) => {
                let crlf = rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n');
                rest = &rest[i + if crlf { 2 } else { 1 }..];
            }
            None => break,
        }
    }
    out.put_u8(b'\n');
}

/// Appends a `retry:` field line.
pub fn encode_retry(ms: u64, out: &mut BytesMut) {
    out.put_slice(b"retry: ");
    out.put_slice(ms.to_string().as_bytes());
    out.put_u8(b'\n');
}

/// Appends a comment line (`:` then `text`), with any CR or LF in `text` removed.
pub fn encode_comment(text: &str, out: &mut BytesMut) {
    out.put_u8(b':');
    if !text.is_empty() {
        out.put_u8(b' ');
        put_single_line(out, text);
    }
    out.put_u8(b'\n');
}

fn single_line_field(out: &mut BytesMut, name: &[u8], value: &str) {
    out.put_slice(name);
    out.put_slice(b": ");
    put_single_line(out, value);
    out.put_u8(b'\n');
}

/// Writes `value` without its CR and LF characters: in a single-line field they would end the
/// line and let the rest of the value be read as a field of its own.
fn put_single_line(out: &mut BytesMut, value: &str) {
    for part in value.split(['\r', '\n']) {
        out.put_slice(part.as_bytes());
    }
}
