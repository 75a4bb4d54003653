//! The response body of an HTTP/1.1 subscription: chunked framing, then SSE lines, scanned
//! without allocating in the common case.

/// The number after `"name": ` in `data`.
pub(crate) fn field(data: &[u8], name: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(data, name)? + name.len();
    let digits = &data[at..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Per-connection state of the response parser: HTTP/1.1 chunked framing, then SSE lines.
pub(crate) struct Reader {
    chunked: bool,
    /// Bytes left in the current chunk (chunked) .
    chunk_left: usize,
    /// Partial chunk-size line carried over between reads.
    line: Vec<u8>,
    /// Partial SSE line carried over between reads (and chunks).
    sse_line: Vec<u8>,
    in_size_line: bool,
    /// Bytes of the CRLF after a chunk still to skip.
    skip: usize,
}

impl Reader {
    /// The parser of a body that is `chunked`, or read as it comes.
    pub(crate) fn new(chunked: bool) -> Reader {
        Reader {
            chunked,
            chunk_left: 0,
            line: Vec::new(),
            sse_line: Vec::new(),
            in_size_line: true,
            skip: 0,
        }
    }

    /// Feeds response body bytes (after the head); calls `line` for each SSE line.
    pub(crate) fn feed(&mut self, mut bytes: &[u8], on_line: &mut impl FnMut(&[u8])) -> Result<(), String> {
        if !self.chunked {
            self.lines(bytes, on_line);
            return Ok(());
        }
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            if self.in_size_line {
                match memchr::memchr(b'\n', bytes) {
                    Some(end) => {
                        self.line.extend_from_slice(&bytes[..end]);
                        bytes = &bytes[end + 1..];
                        let text = std::str::from_utf8(&self.line).map_err(|e| e.to_string())?;
                        let hex = text.trim().split(';').next().unwrap_or("");
                        let size =
                            usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {text:?}"))?;
                        self.line.clear();
                        if size == 0 {
                            return Err("response ended".to_owned());
                        }
                        self.chunk_left = size;
                        self.in_size_line = false;
                    }
                    None => {
                        self.line.extend_from_slice(bytes);
                        return Ok(());
                    }
                }
            } else {
                let n = self.chunk_left.min(bytes.len());
                let (data, rest) = bytes.split_at(n);
                self.sse_lines(data, on_line);
                self.chunk_left -= n;
                bytes = rest;
                if self.chunk_left == 0 {
                    self.in_size_line = true;
                    self.skip = 2;
                }
            }
        }
        Ok(())
    }

    fn lines(&mut self, bytes: &[u8], on_line: &mut impl FnMut(&[u8])) {
        self.sse_lines(bytes, on_line);
    }

    /// SSE payload: complete lines go to `on_line` (LF-terminated; the upstreams here use LF).
    fn sse_lines(&mut self, mut bytes: &[u8], on_line: &mut impl FnMut(&[u8])) {
        while let Some(end) = memchr::memchr(b'\n', bytes) {
            if self.sse_line.is_empty() {
                on_line(&bytes[..end]);
            } else {
                self.sse_line.extend_from_slice(&bytes[..end]);
                on_line(&self.sse_line);
                self.sse_line.clear();
            }
            bytes = &bytes[end + 1..];
        }
        self.sse_line.extend_from_slice(bytes);
    }
}
