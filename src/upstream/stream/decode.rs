//! The framing of the app's response body (RFC 9112 §6.3): a length, chunked, or until the
//! connection closes. A byte-by-byte state machine over whatever each read gave, so it keeps
//! no buffer: how the bytes were split across reads never changes what it decodes.

use std::fmt;
use std::ops::Range;

/// Bytes a chunk-size line may hold, extensions included (hyper has no such bound per line,
/// but 16 KiB of extensions per body): an app sends a few hex digits.
const MAX_SIZE_LINE: u16 = 4 * 1024;

/// Bytes of trailer fields after the last chunk, skipped (they are not passed on).
const MAX_TRAILERS: u16 = 16 * 1024;

/// How the body of a response is delimited, as its head says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: …, chunked`.
    Chunked,
    /// Everything until the app closes the connection.
    UntilClose,
}

/// The app's body could not be read as its head framed it: the app's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyError {
    /// Chunked framing broken (the reason says where).
    #[error("the app sent a malformed chunked body: {0}")]
    Malformed(&'static str),
    /// The connection closed before the body's end.
    #[error("the app closed the connection before the end of its {0} body")]
    Truncated(Kind),
}

/// A body's framing, named in an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Chunked,
    Sized,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Chunked => "chunked",
            Kind::Sized => "Content-Length",
        })
    }
}

/// Where a body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// More is to come.
    More,
    /// The body ended as framed.
    Done,
    /// The body is broken; nothing more is read.
    Failed(BodyError),
}

/// What one [`Decoder::decode`] found in its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decoded {
    /// Bytes of the input used; the rest is for the next call.
    pub(crate) read: usize,
    /// Where the body's data is in the input (empty when there was none).
    pub(crate) data: Range<usize>,
}

/// Decodes one body (see the module's docs). Small: an idle stream holds it for hours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Content-Length: bytes still to come.
    Length(u64),
    /// Until the connection closes.
    UntilClose,
    // Chunked (RFC 9112 §7.1):
    //   chunked-body = *chunk last-chunk trailer-section CRLF
    //   chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
    //   chunk-size   = 1*HEXDIG
    //   last-chunk   = 1*("0") [ chunk-ext ] CRLF
    //   chunk-ext    = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
    /// In a chunk-size's digits: the size so far, and the line's bytes (0: no digit yet).
    Size {
        size: u64,
        line: u16,
    },
    /// Whitespace after the size (BWS before a `;`).
    SizeSpace {
        size: u64,
        line: u16,
    },
    /// In chunk extensions, which are skipped.
    Extension {
        size: u64,
        line: u16,
    },
    /// The size line's CR came; its LF must follow.
    SizeLf {
        size: u64,
    },
    /// Chunk data: bytes still to come.
    Data(u64),
    /// The CR after a chunk's data must come.
    DataCr,
    /// The LF after a chunk's data must come.
    DataLf,
    /// At the start of a trailer line (or the final CRLF), `seen` trailer bytes so far.
    TrailerStart {
        seen: u16,
    },
    /// In a trailer field, skipped.
    Trailer {
        seen: u16,
    },
    /// A trailer line's CR came; its LF must follow.
    TrailerLf {
        seen: u16,
    },
    /// The final CR came; its LF ends the body.
    EndLf,
    Done,
    Failed(BodyError),
}

impl Decoder {
    /// A decoder for a body framed so.
    pub(crate) fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Size { size: 0, line: 0 },
            Framing::UntilClose => State::UntilClose,
        };
        Decoder { state }
    }

    /// Where the body stands.
    pub(crate) fn progress(&self) -> Progress {
        match self.state {
            State::Done => Progress::Done,
            State::Failed(error) => Progress::Failed(error),
            _ => Progress::More,
        }
    }

    /// Body bytes still announced by a Content-Length (`None`: unknown).
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Decodes from `buf`, bytes read from the connection, up to the end of the first run of
    /// body data: all of it for a length or the close, else the rest of one chunk, so the app's
    /// chunks are handed out one by one, as they were written. Call again with the rest for
    /// more. What follows the body's end is ignored (the connection is not used again). On
    /// malformed framing the decoder fails, after the data before it.
    pub(crate) fn decode(&mut self, buf: &[u8]) -> Decoded {
        let mut read = 0;
        while read < buf.len() {
            let available = buf.len() - read;
            match &mut self.state {
                State::Done | State::Failed(_) => break,
                State::UntilClose => {
                    return Decoded {
                        read: buf.len(),
                        data: read..buf.len(),
                    }
                }
                State::Length(left) | State::Data(left) => {
                    let n = usize::try_from(*left).map_or(available, |left| left.min(available));
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = match self.state {
                            State::Data(_) => State::DataCr,
                            _ => State::Done,
                        };
                    }
                    return Decoded {
                        read: read + n,
                        data: read..read + n,
                    };
                }
                _ => {
                    self.state = chunk_framing(self.state, buf[read]);
                    read += 1;
                }
            }
        }
        Decoded {
            read,
            data: read..read,
        }
    }

    /// The connection closed: the end of a body read until then, else a truncated one.
    pub(crate) fn closed(&mut self) {
        self.state = match self.state {
            State::UntilClose | State::Done => State::Done,
            State::Failed(error) => State::Failed(error),
            State::Length(_) => State::Failed(BodyError::Truncated(Kind::Sized)),
            _ => State::Failed(BodyError::Truncated(Kind::Chunked)),
        };
    }
}

/// The state after one byte of chunked framing (anything but chunk data) in `state`.
fn chunk_framing(state: State, byte: u8) -> State {
    use State::*;
    let malformed = |why| Failed(BodyError::Malformed(why));
    // Every byte of a size line counts against its bound, whichever part it is in.
    let line_over = |line: u16| line >= MAX_SIZE_LINE;
    match (state, byte) {
        (Size { line, .. } | SizeSpace { line, .. } | Extension { line, .. }, _) if line_over(line) => {
            malformed("a chunk-size line over 4 KiB")
        }
        (Size { size, line }, _) if byte.is_ascii_hexdigit() => {
            // The digit is a hex digit: it has a value below 16.
            let digit = u64::from(char::from(byte).to_digit(16).unwrap_or(0));
            match size.checked_mul(16).and_then(|size| size.checked_add(digit)) {
                Some(size) => Size { size, line: line + 1 },
                None => malformed("a chunk size over 2^64"),
            }
        }
        (Size { line: 0, .. }, _) => malformed("a chunk size that is not hexadecimal"),
        (Size { size, line } | SizeSpace { size, line }, b' ' | b'\t') => SizeSpace { size, line: line + 1 },
        (Size { size, line } | SizeSpace { size, line }, b';') => Extension { size, line: line + 1 },
        (Size { size, .. } | SizeSpace { size, .. } | Extension { size, .. }, b'\r') => SizeLf { size },
        (Size { .. } | SizeSpace { .. }, b'\n') => malformed("a chunk-size line not ended by CRLF"),
        (Size { .. } | SizeSpace { .. }, _) => malformed("a chunk size that is not hexadecimal"),
        (Extension { .. }, b'\n') => malformed("a bare LF in a chunk extension"),
        (Extension { size, line }, _) => Extension { size, line: line + 1 },
        (SizeLf { size: 0 }, b'\n') => TrailerStart { seen: 0 },
        (SizeLf { size }, b'\n') => Data(size),
        (SizeLf { .. }, _) => malformed("a chunk-size line not ended by CRLF"),
        (DataCr, b'\r') => DataLf,
        (DataLf, b'\n') => Size { size: 0, line: 0 },
        (DataCr | DataLf, _) => malformed("chunk data not followed by CRLF"),
        (TrailerStart { .. }, b'\r') => EndLf,
        (TrailerStart { seen } | Trailer { seen }, _) if seen >= MAX_TRAILERS => {
            malformed("trailer fields over 16 KiB")
        }
        (Trailer { seen }, b'\r') => TrailerLf { seen: seen + 1 },
        (TrailerStart { .. } | Trailer { .. }, b'\n') => malformed("a bare LF in the trailer section"),
        (TrailerStart { seen } | Trailer { seen }, _) => Trailer { seen: seen + 1 },
        (TrailerLf { seen }, b'\n') => TrailerStart { seen: seen + 1 },
        (TrailerLf { .. }, _) => malformed("a trailer line not ended by CRLF"),
        (EndLf, b'\n') => Done,
        (EndLf, _) => malformed("the chunked body not ended by CRLF"),
        // Data, lengths and ends are not framing bytes: `decode` handles them.
        (other, _) => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What decoding `input` in one go gives: the data, and how it ended (`None`: more to come
    /// when the input ends, or how the connection's close ends it when `close`).
    fn decode_whole(framing: Framing, input: &[u8], close: bool) -> (Vec<u8>, Progress) {
        decode_split(framing, &[input], close)
    }

    fn decode_split(framing: Framing, reads: &[&[u8]], close: bool) -> (Vec<u8>, Progress) {
        let mut decoder = Decoder::new(framing);
        let mut out = Vec::new();
        for read in reads {
            let mut rest = *read;
            while !rest.is_empty() {
                let decoded = decoder.decode(rest);
                out.extend_from_slice(&rest[decoded.data]);
                if decoded.read == 0 {
                    break;
                }
                rest = &rest[decoded.read..];
            }
        }
        if close {
            decoder.closed();
        }
        (out, decoder.progress())
    }

    const CHUNKED: &[u8] = b"5\r\nhello\r\n1;name=\"v\";x\r\n \r\nA \t;ext\r\n0123456789\r\n\
        0000;last\r\nx-trailer: 1\r\nother: 2\r\n\r\nGET /after HTTP/1.1\r\n";

    /// Every split of a body into two or three reads gives what one read gives.
    #[test]
    fn every_split_decodes_the_same() {
        let cases: &[(Framing, &[u8])] = &[
            (Framing::Chunked, CHUNKED),
            (Framing::Chunked, b"3\r\nabc\r\n3\r\nde"),
            (Framing::Chunked, b"3\r\nabc\r\nz\r\n"),
            (Framing::Chunked, b"3\r\nabcX\r\n"),
            (Framing::Length(7), b"1234567 and more"),
            (Framing::Length(9), b"1234567"),
            (Framing::UntilClose, b"data: x\n\n"),
        ];
        for (framing, input) in cases {
            for close in [false, true] {
                let whole = decode_whole(*framing, input, close);
                for i in 0..=input.len() {
                    for j in i..=input.len() {
                        let split = decode_split(*framing, &[&input[..i], &input[i..j], &input[j..]], close);
                        assert_eq!(
                            split,
                            whole,
                            "{framing:?} split at {i}, {j}: {:?}",
                            String::from_utf8_lossy(input)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_and_end_at_the_last_chunk() {
        let (data, end) = decode_whole(Framing::Chunked, CHUNKED, false);
        assert_eq!(data, b"hello 0123456789");
        assert_eq!(end, Progress::Done, "ends without waiting for the close");
        assert_eq!(
            decode_whole(Framing::Chunked, b"0\r\n\r\n", false),
            (vec![], Progress::Done)
        );
        // The stream goes on: more to come.
        let (data, end) = decode_whole(Framing::Chunked, b"6\r\ndata: \r\n", false);
        assert_eq!((data.as_slice(), end), (&b"data: "[..], Progress::More));
    }

    #[test]
    fn each_chunk_is_handed_out_on_its_own() {
        let mut decoder = Decoder::new(Framing::Chunked);
        let input = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let first = decoder.decode(input);
        assert_eq!((first.read, &input[first.data]), (6, &b"abc"[..]));
        let second = decoder.decode(&input[6..]);
        assert_eq!((second.read, &input[6..][second.data]), (7, &b"de"[..]));
        let end = decoder.decode(&input[13..]);
        assert_eq!((end.read, end.data.is_empty()), (7, true));
        assert_eq!(decoder.progress(), Progress::Done);
    }

    #[test]
    fn a_length_or_the_close_ends_a_body() {
        assert_eq!(
            decode_whole(Framing::Length(3), b"abcdef", false),
            (b"abc".to_vec(), Progress::Done)
        );
        assert_eq!(
            decode_whole(Framing::Length(0), b"", false),
            (vec![], Progress::Done)
        );
        assert_eq!(
            decode_whole(Framing::Empty, b"junk", false),
            (vec![], Progress::Done)
        );
        assert_eq!(
            decode_whole(Framing::UntilClose, b"abc", true),
            (b"abc".to_vec(), Progress::Done)
        );
        assert_eq!(
            decode_whole(Framing::UntilClose, b"abc", false),
            (b"abc".to_vec(), Progress::More)
        );
        assert_eq!(
            Decoder::new(Framing::Length(u64::MAX)).remaining(),
            Some(u64::MAX)
        );
    }

    /// Hostile or broken bodies: each fails (after the data before the fault), never panics.
    #[test]
    fn malformed_bodies_fail_with_the_apps_fault() {
        let malformed = |why| Progress::Failed(BodyError::Malformed(why));
        let long_extension = format!("1;{}\r\nx\r\n", "e".repeat(5000));
        let long_size = format!("{}1\r\nx\r\n", "0".repeat(5000));
        let long_trailer = format!("0\r\nx: {}\r\n\r\n", "t".repeat(20_000));
        let many_trailers = format!("0\r\n{}\r\n", "a: b\r\n".repeat(3000));
        let cases: Vec<(&[u8], &[u8], Progress)> = vec![
            (
                b"1\r\na\r\n\r\n",
                b"a",
                malformed("a chunk size that is not hexadecimal"),
            ),
            (b"g\r\n", b"", malformed("a chunk size that is not hexadecimal")),
            (b"-1\r\n", b"", malformed("a chunk size that is not hexadecimal")),
            (
                b"0x10\r\n",
                b"",
                malformed("a chunk size that is not hexadecimal"),
            ),
            (b" 1\r\n", b"", malformed("a chunk size that is not hexadecimal")),
            (b"1 2\r\n", b"", malformed("a chunk size that is not hexadecimal")),
            (b"10000000000000000\r\n", b"", malformed("a chunk size over 2^64")),
            (b"ffffffffffffffff0\r\n", b"", malformed("a chunk size over 2^64")),
            (
                long_extension.as_bytes(),
                b"",
                malformed("a chunk-size line over 4 KiB"),
            ),
            (
                long_size.as_bytes(),
                b"",
                malformed("a chunk-size line over 4 KiB"),
            ),
            (b"1\nx\r\n", b"", malformed("a chunk-size line not ended by CRLF")),
            (b"1;a\nx\r\n", b"", malformed("a bare LF in a chunk extension")),
            (b"1\r\nxy\r\n", b"x", malformed("chunk data not followed by CRLF")),
            (
                b"1\r\nx\n1\r\n",
                b"x",
                malformed("chunk data not followed by CRLF"),
            ),
            (
                b"1\r\nx\r1\r\n",
                b"x",
                malformed("chunk data not followed by CRLF"),
            ),
            (
                long_trailer.as_bytes(),
                b"",
                malformed("trailer fields over 16 KiB"),
            ),
            (
                many_trailers.as_bytes(),
                b"",
                malformed("trailer fields over 16 KiB"),
            ),
            (
                b"0\r\nx: 1\n\r\n",
                b"",
                malformed("a bare LF in the trailer section"),
            ),
            (
                b"0\r\nx: 1\rz",
                b"",
                malformed("a trailer line not ended by CRLF"),
            ),
            (b"0\r\n\rz", b"", malformed("the chunked body not ended by CRLF")),
        ];
        for (input, data, end) in cases {
            let shown = String::from_utf8_lossy(&input[..input.len().min(40)]).into_owned();
            assert_eq!(
                decode_whole(Framing::Chunked, input, true),
                (data.to_vec(), end),
                "{shown:?}"
            );
        }
    }

    #[test]
    fn a_body_cut_short_is_an_error_not_an_end() {
        let truncated = |kind| Progress::Failed(BodyError::Truncated(kind));
        for cut in [
            &b"5\r\nhel"[..],
            b"5\r\nhello",
            b"5\r\nhello\r\n",
            b"5",
            b"0\r\n",
            b"0\r\nx: 1\r\n",
        ] {
            let (_, end) = decode_whole(Framing::Chunked, cut, true);
            assert_eq!(
                end,
                truncated(Kind::Chunked),
                "{:?}",
                String::from_utf8_lossy(cut)
            );
        }
        assert_eq!(
            decode_whole(Framing::Length(10), b"short", true),
            (b"short".to_vec(), truncated(Kind::Sized))
        );
        let error = BodyError::Truncated(Kind::Chunked).to_string();
        assert!(error.starts_with("the app closed"), "{error}");
        let error = BodyError::Malformed("x").to_string();
        assert!(error.starts_with("the app sent"), "{error}");
    }

    #[test]
    fn the_decoder_is_small() {
        assert!(size_of::<Decoder>() <= 24, "{}", size_of::<Decoder>());
    }
}
