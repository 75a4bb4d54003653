//! What the fuzz target `upstream` (`fuzz/harness.rs`) drives: an app's response read as a
//! stream's exchange reads it, from bytes that arrive in reads of a given size.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use super::body::StreamBody;
use super::head::read_head;

/// A connection whose reads give `data` `step` bytes at a time, then its close; never waits.
/// The fuzz targets read their input through it, so that every split gets tried. Not an API.
pub struct Pieces<'a> {
    data: &'a [u8],
    step: usize,
}

impl<'a> Pieces<'a> {
    /// `data` in reads of `step` bytes (at least one).
    pub fn new(data: &'a [u8], step: usize) -> Pieces<'a> {
        Pieces {
            data,
            step: step.max(1),
        }
    }
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// The app's response `input`, read in reads of `step` bytes: its status, its body's data, and
/// the error that ended the body, if one did; or why the head was refused. Not an API.
pub fn read_response(input: &[u8], step: usize) -> Result<(u16, Vec<u8>, Option<String>), String> {
    let mut io = Pieces::new(input, step);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let head = {
        let mut reading = std::pin::pin!(read_head(&mut io));
        match reading.as_mut().poll(&mut cx) {
            Poll::Ready(head) => head.map_err(|error| error.to_string())?,
            Poll::Pending => return Err("the head reader waited on reads that never wait".to_owned()),
        }
    };
    let status = head.response.status().as_u16();
    let mut body = StreamBody::new(io, head.decoder, head.rest);
    let mut data = Vec::new();
    // Each poll hands out data (a byte at least), ends the body, or yields once after data.
    for _ in 0..=2 * input.len() + 2 {
        match body.poll_data(&mut cx) {
            Poll::Ready(Some(Ok(bytes))) => data.extend_from_slice(&bytes),
            Poll::Ready(Some(Err(error))) => return Ok((status, data, Some(error.to_string()))),
            Poll::Ready(None) => return Ok((status, data, None)),
            Poll::Pending => {}
        }
    }
    Err("the body neither ended nor failed".to_owned())
}
