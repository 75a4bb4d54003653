//! The I/O of a client connection: a write deadline, and read activity for the watchdog.
//!
//! A client that stops reading is disconnected.
//! An SSE response never ends, so a client that stops reading leaves its socket unwritable for
//! good. hyper then stops polling the response body, so the body cannot notice; the I/O layer
//! can. While a write is pending, a timer runs; any progress stops it; when it fires, the write
//! fails with `TimedOut`, which makes hyper close the connection. Memory stays bounded either
//! way: hyper buffers at most its write buffer, and the body is a cursor.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep, Instant, Sleep};

use prometheus_client::metrics::counter::Counter;

use super::conn::ConnState;

pin_project! {
    /// An I/O stream whose writes fail after being blocked for `limit`, and whose reads are
    /// reported to the connection's state.
    pub struct ConnIo<IO> {
        #[pin]
        io: IO,
        conn: Arc<ConnState>,
        limit: Duration,
        // Allocated at the first stall and reused: no cost for clients that keep up.
        timer: Option<Pin<Box<Sleep>>>,
        armed: bool,
        stalls: Counter,
    }
}

impl<IO> ConnIo<IO> {
    /// Wraps `io`; `stalls` counts the connections closed for not reading.
    pub(crate) fn new(io: IO, conn: Arc<ConnState>, limit: Duration, stalls: Counter) -> Self {
        ConnIo {
            io,
            conn,
            limit,
            timer: None,
            armed: false,
            stalls,
        }
    }
}

impl<IO: AsyncWrite> ConnIo<IO> {
    /// Runs one write-side operation under the deadline.
    fn guard<T>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut IO>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let this = self.project();
        match op(this.io, cx) {
            Poll::Ready(result) => {
                *this.armed = false;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let deadline = Instant::now() + *this.limit;
                let timer = this.timer.get_or_insert_with(|| Box::pin(sleep(*this.limit)));
                if !*this.armed {
                    timer.as_mut().reset(deadline);
                    *this.armed = true;
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.stalls.inc();
                        tracing::info!(limit = ?this.limit, "client stopped reading; closing its connection");
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "client write timed out",
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

use std::future::Future as _;

impl<IO: AsyncRead> AsyncRead for ConnIo<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.io.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.conn.on_read();
        }
        result
    }
}

impl<IO: AsyncWrite> AsyncWrite for ConnIo<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.guard(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.guard(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.guard(cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
