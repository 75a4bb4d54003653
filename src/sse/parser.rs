//! An incremental event-stream parser.
//!
//! Bytes arrive in chunks of any size, split anywhere (inside a UTF-8 sequence, between the CR
//! and LF of a CRLF, inside the leading BOM). The parser keeps only the unfinished line and the
//! fields of the unfinished event between chunks, both bounded by `max_event_bytes`.

use memchr::memchr2;

use super::Event;

const BOM: &[u8] = b"\xEF\xBB\xBF";
/// Buffers grown past this by one large event are given back once it is done.
const KEEP_CAPACITY: usize = 64 * 1024;

/// What the parser produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A dispatched event.
    Event(Event),
    /// A valid `retry:` field: the reconnection time in milliseconds.
    Retry(u64),
    /// An event (or a line) longer than the limit was discarded, up to the next blank line.
    Dropped,
}

/// Incremental WHATWG event-stream parser. Feed it chunks with [`Parser::feed`].
#[derive(Debug)]
pub struct Parser {
    max_event_bytes: usize,
    /// The start of a line whose end has not arrived yet.
    line: Vec<u8>,
    /// The current line outgrew the limit: its bytes are being discarded until its end.
    line_overflow: bool,
    /// The previous chunk ended with CR: an LF at the start of the next one belongs to it.
    skip_lf: bool,
    /// How many bytes of a leading BOM have been seen, while the stream start is undecided;
    /// `None` once it is decided. Those bytes are held here, not in `line`.
    bom_matched: Option<usize>,
    data: String,
    event_type: String,
    block_id: Option<String>,
    last_event_id: String,
    /// Bytes of field lines in the current block, counted against the limit.
    block_bytes: usize,
    /// The current block outgrew the limit: everything up to the next blank line is discarded.
    dropping: bool,
    dropped_events: u64,
}

impl Parser {
    /// A parser that drops any event (or line) longer than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        Parser {
            max_event_bytes: max_event_bytes.max(1),
            line: Vec::new(),
            line_overflow: false,
            skip_lf: false,
            bom_matched: Some(0),
            data: String::new(),
            event_type: String::new(),
            block_id: None,
            last_event_id: String::new(),
            block_bytes: 0,
            dropping: false,
            dropped_events: 0,
        }
    }

    /// Changes the limit (a reloaded config); it applies from the next line on.
    pub fn set_max_event_bytes(&mut self, max_event_bytes: usize) {
        self.max_event_bytes = max_event_bytes.max(1);
    }

    /// The spec's "last event ID string": the id a browser would send as `Last-Event-ID` if the
    /// stream broke now. It carries over from event to event until an `id:` field changes it.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Takes `id` as the last event id, as if the stream so far had ended with it: what a reader
    /// that takes over a stream someone else was reading resumes from.
    pub fn set_last_event_id(&mut self, id: &str) {
        id.clone_into(&mut self.last_event_id);
    }

    /// How many events (or overlong lines) were dropped for exceeding the limit so far.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// Bytes the parser holds allocated between chunks (the unfinished line and event).
    pub fn buffered_capacity(&self) -> usize {
        self.line.capacity() + self.data.capacity() + self.event_type.capacity()
    }

    /// Parses `chunk`, calling `emit` for every item completed by it.
    pub fn feed(&mut self, chunk: &[u8], mut emit: impl FnMut(Item)) {
        let mut rest = chunk;
        if let Some(mut matched) = self.bom_matched {
            // "One leading U+FEFF BYTE ORDER MARK character must be ignored if any are present."
            // The BOM may arrive split over chunks, so its bytes are matched one at a time.
            while matched < BOM.len() && rest.first() == Some(&BOM[matched]) {
                matched += 1;
                rest = &rest[1..];
            }
            if matched < BOM.len() && rest.is_empty() {
                self.bom_matched = Some(matched);
                return;
            }
            self.bom_matched = None;
            if matched < BOM.len() {
                // Not a BOM after all: the bytes matched so far start the first line.
                self.append_partial(&BOM[..matched]);
            }
        }
        if self.skip_lf && !rest.is_empty() {
            // "Lines must be separated by either a U+000D CARRIAGE RETURN U+000A LINE FEED (CRLF)
            // character pair, a single U+000A LINE FEED (LF) character, or a single U+000D
            // CARRIAGE RETURN (CR) character." The line already ended at the CR; an LF right after
            // it is the second half of a CRLF, not an empty line.
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
            self.skip_lf = false;
        }
        while let Some(end) = memchr2(b'\r', b'\n', rest) {
            let terminator = rest[end];
            if self.line.is_empty() && !self.line_overflow {
                self.complete_line(&rest[..end], &mut emit);
            } else {
                self.append_partial(&rest[..end]);
                let line = std::mem::take(&mut self.line);
                self.complete_line(&line, &mut emit);
                self.line = line;
                self.line.clear();
                if self.line.capacity() > KEEP_CAPACITY {
                    self.line.shrink_to(KEEP_CAPACITY);
                }
            }
            rest = &rest[end + 1..];
            if terminator == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
        }
        if !rest.is_empty() {
            self.append_partial(rest);
        }
    }

    /// Ends the stream. "If the file ends in the middle of an event, before the final empty
    /// line, the incomplete event is not dispatched." The parser is ready for a new stream after
    /// this; the last event id carries over, as it does for a browser that reconnects.
    pub fn finish(&mut self) {
        self.line.clear();
        self.line_overflow = false;
        self.skip_lf = false;
        self.bom_matched = Some(0);
        self.reset_block();
    }

    /// Buffers the start of a line, switching to discard mode when it outgrows the limit.
    fn append_partial(&mut self, bytes: &[u8]) {
        if self.line_overflow {
            return;
        }
        if self.block_bytes + self.line.len() + bytes.len() > self.max_event_bytes {
            self.line_overflow = true;
            // A comment is not part of any event; dropping it costs no event.
            let first = self.line.first().or(bytes.first());
            if first != Some(&b':') {
                self.dropping = true;
            }
            self.line.clear();
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    fn complete_line(&mut self, line: &[u8], emit: &mut impl FnMut(Item)) {
        if std::mem::take(&mut self.line_overflow) {
            return;
        }
        // "If the line is empty (a blank line): Dispatch the event."
        if line.is_empty() {
            self.dispatch(emit);
            return;
        }
        // "If the line starts with a U+003A COLON character (:): Ignore the line."
        if line[0] == b':' {
            return;
        }
        self.block_bytes += line.len() + 1;
        if self.dropping {
            return;
        }
        if self.block_bytes > self.max_event_bytes {
            self.dropping = true;
            return;
        }
        // "If the line contains a U+003A COLON character (:): Collect the characters on the line
        // before the first U+003A COLON character (:), and let field be that string. Collect the
        // characters on the line after [it], and let value be that string. If value starts with a
        // U+0020 SPACE character, remove it from value." "Otherwise, the string is not empty but
        // does not contain a U+003A COLON character (:): [use] the whole line as the field name,
        // and the empty string as the field value."
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        // The stream is UTF-8; invalid sequences become U+FFFD, as a browser's decoder does. CR
        // and LF are ASCII, so decoding line by line equals decoding the whole stream.
        match field {
            // "Set the event type buffer to field value."
            b"event" => {
                self.event_type.clear();
                self.event_type.push_str(&String::from_utf8_lossy(value));
            }
            // "Append the field value to the data buffer, then append a single U+000A LINE FEED
            // (LF) character to the data buffer."
            b"data" => {
                let decoded = String::from_utf8_lossy(value);
                // The limit holds for the event as delivered too: an invalid byte decodes to
                // three (U+FFFD), so data within the limit on the wire can outgrow it here.
                if self.data.len() + decoded.len() + 1 > self.max_event_bytes {
                    self.dropping = true;
                    self.data.clear();
                    return;
                }
                self.data.push_str(&decoded);
                self.data.push('\n');
            }
            // "If the field value does not contain U+0000 NULL, then set the last event ID buffer
            // to the field value. Otherwise, ignore the field."
            b"id" if !value.contains(&0) => {
                self.block_id = Some(String::from_utf8_lossy(value).into_owned());
            }
            // "If the field value consists of only ASCII digits, then interpret the field value
            // as an integer in base ten, and set the event stream's reconnection time to that
            // integer. Otherwise, ignore the field." (A value too large for u64 is ignored too.)
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                if let Some(ms) = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()) {
                    emit(Item::Retry(ms));
                }
            }
            // "Otherwise: The field is ignored."
            _ => {}
        }
    }

    fn dispatch(&mut self, emit: &mut impl FnMut(Item)) {
        if self.dropping {
            self.dropped_events += 1;
            emit(Item::Dropped);
            self.reset_block();
            return;
        }
        // "1. Set the last event ID string of the event source to the value of the last event ID
        // buffer. The buffer does not get reset." The id buffer is kept per block here and
        // committed at dispatch, which is observably the same: only a dispatch reads it.
        let id = self.block_id.take();
        if let Some(id) = &id {
            self.last_event_id.clone_from(id);
        }
        // "2. If the data buffer is an empty string, set the data buffer and the event type
        // buffer to the empty string and return."
        if self.data.is_empty() {
            self.reset_block();
            return;
        }
        // "3. If the data buffer's last character is a U+000A LINE FEED (LF) character, then
        // remove the last character from the data buffer."
        if self.data.ends_with('\n') {
            self.data.pop();
        }
        let data = if self.data.capacity() > KEEP_CAPACITY {
            std::mem::take(&mut self.data)
        } else {
            // Move the bytes out but keep a right-sized buffer for the next event.
            let next = String::with_capacity(self.data.len());
            std::mem::replace(&mut self.data, next)
        };
        // "4. Initialize event's type attribute to "message" ... If the event type buffer has a
        // value other than the empty string, change the type of the newly created event to equal
        // the value of the event type buffer."
        let event = (!self.event_type.is_empty()).then(|| std::mem::take(&mut self.event_type));
        self.reset_block();
        emit(Item::Event(Event { event, data, id }));
    }

    /// "5. Set the data buffer and the event type buffer to the empty string."
    fn reset_block(&mut self) {
        self.data.clear();
        self.event_type.clear();
        self.block_id = None;
        self.block_bytes = 0;
        self.dropping = false;
    }
}
