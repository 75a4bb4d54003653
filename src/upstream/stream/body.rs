//! The app's response body, read without a buffer of its own: each poll reads into a
//! thread-local scratch buffer and hands out the data as `Bytes` of exactly its size. An idle
//! body holds its connection and its decoder, nothing else.
//!
//! The app's chunks are handed out one at a time (what a read holds past the first is kept
//! until the next polls), and when the next is already at hand the task reading yields to the
//! others first: the stream's subscribers, woken by the chunk, write it before the next one is
//! appended, as they did when hyper's connection task handed the chunks over one by one.
//! Otherwise a burst could push events out of a small buffer before any subscriber, however
//! fast, had sent them. When nothing more has come, there is nothing to yield for: the task
//! waits on the socket (a yield reschedules the task and wakes an idle worker thread, which
//! for a stream of one event at a time was a thread wake-up per event).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

use super::decode::{Decoder, Progress};
use crate::upstream::connect::Io;
use crate::upstream::BoxError;

/// Bytes one read takes from the connection: what a busy stream gets in one go (a read never
/// waits to fill it).
const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    /// Where every body on this thread reads into, within one poll: nothing is left in it
    /// between polls. Allocated on first use, so a thread that reads no body (a blocking
    /// thread resolving a name) does not pay for it.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Reading the app's response body failed (the connection broke).
#[derive(Debug, thiserror::Error)]
#[error("reading the app's response body failed")]
pub(crate) struct ReadError(#[source] io::Error);

/// The body of a stream's response (see the module's docs): an event stream, or the body of a
/// definitive answer on its way to the subscription that asked.
#[derive(Debug)]
pub(crate) struct StreamBody<IO = Io> {
    io: IO,
    decoder: Decoder,
    /// Bytes read and not decoded yet: what came with the response head, or the chunks after
    /// the first of one read. Empty (no allocation) when nothing is in hand.
    pending: Bytes,
    /// Data was just handed out: yield before handing out more (see the module's docs).
    handed: bool,
    /// What came next right after data was handed out, kept over the yield (boxed: a burst's
    /// rare case costs an idle body nothing).
    next: Option<Box<Option<Result<Bytes, BoxError>>>>,
}

impl<IO: AsyncRead + Unpin> StreamBody<IO> {
    /// The body after a response head, read on `io`; `rest` was read with the head.
    pub(crate) fn new(io: IO, decoder: Decoder, rest: Bytes) -> StreamBody<IO> {
        StreamBody {
            io,
            decoder,
            pending: rest,
            handed: false,
            next: None,
        }
    }

    /// The next data (never empty), the end (`None`), or an error: the body was malformed, cut
    /// short or its connection broke. Cancel-safe: nothing in progress lives outside `self`
    /// between polls.
    pub(crate) fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BoxError>>> {
        if std::mem::take(&mut self.handed) {
            // Only what is at hand already waits for the yield; otherwise the socket's waker
            // is registered and the task sleeps.
            let next = ready!(self.poll_next(cx));
            self.next = Some(Box::new(next));
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let next = match self.next.take() {
            Some(next) => *next,
            None => ready!(self.poll_next(cx)),
        };
        self.handed = matches!(next, Some(Ok(_)));
        Poll::Ready(next)
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BoxError>>> {
        loop {
            match self.decoder.progress() {
                Progress::More => {}
                Progress::Done => return Poll::Ready(None),
                Progress::Failed(error) => return Poll::Ready(Some(Err(error.into()))),
            }
            if !self.pending.is_empty() {
                let decoded = self.decoder.decode(&self.pending);
                let data = self.pending.slice(decoded.data);
                self.pending.advance(decoded.read);
                if self.pending.is_empty() || self.decoder.progress() != Progress::More {
                    // Let go of the read's allocation (and of anything after the body's end).
                    self.pending = Bytes::new();
                }
                if !data.is_empty() {
                    return Poll::Ready(Some(Ok(data)));
                }
                continue;
            }
            let read = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                if scratch.is_empty() {
                    scratch.resize(SCRATCH_BYTES, 0);
                }
                let mut buf = ReadBuf::new(&mut scratch[..]);
                ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
                let len = buf.filled().len();
                if len == 0 {
                    self.decoder.closed();
                    return Poll::Ready(Ok(None));
                }
                let mut rest = &scratch[..len];
                while !rest.is_empty() {
                    let decoded = self.decoder.decode(rest);
                    let data = &rest[decoded.data];
                    rest = &rest[decoded.read..];
                    if !data.is_empty() {
                        if self.decoder.progress() == Progress::More {
                            self.pending = Bytes::copy_from_slice(rest);
                        }
                        return Poll::Ready(Ok(Some(Bytes::copy_from_slice(data))));
                    }
                    if decoded.read == 0 {
                        break;
                    }
                }
                Poll::Ready(Ok(None))
            });
            match ready!(read) {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(data))),
                // Framing alone, or the close: the decoder says what comes next.
                Ok(None) => {}
                Err(error) => return Poll::Ready(Some(Err(Box::new(ReadError(error))))),
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> http_body::Body for StreamBody<IO> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut()
            .poll_data(cx)
            .map(|data| data.map(|data| data.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.progress() == Progress::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::stream::decode::Framing;
    use crate::upstream::stream::testing::Reads;
    use http_body_util::BodyExt;
    use std::sync::Arc;

    /// The data of a body whose head came with `first`, then `reads`; and how it ended.
    async fn collect(framing: Framing, first: &[u8], reads: &[&[u8]]) -> (Vec<u8>, Option<String>) {
        let (data, end) = chunks(framing, first, reads).await;
        (data.concat(), end)
    }

    /// The same, each piece of data as it was handed out.
    async fn chunks(framing: Framing, first: &[u8], reads: &[&[u8]]) -> (Vec<Vec<u8>>, Option<String>) {
        let rest = Bytes::copy_from_slice(first);
        let mut body = StreamBody::new(Reads::new(reads), Decoder::new(framing), rest);
        let mut data = Vec::new();
        loop {
            match std::future::poll_fn(|cx| body.poll_data(cx)).await {
                Some(Ok(chunk)) => {
                    assert!(!chunk.is_empty(), "never an empty chunk");
                    data.push(chunk.to_vec());
                }
                Some(Err(error)) => return (data, Some(error.to_string())),
                None => return (data, None),
            }
        }
    }

    #[tokio::test]
    async fn a_body_read_in_any_pieces_gives_the_same_data_and_end() {
        let input: &[u8] = b"7\r\ndata: 1\r\n2;x\r\n\n\n\r\n0\r\n\r\n";
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let reads = [&input[..i], &input[i..j], &input[j..]];
                assert_eq!(
                    collect(Framing::Chunked, b"", &reads).await,
                    (b"data: 1\n\n".to_vec(), None),
                    "split at {i}, {j}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_malformed_or_cut_body_ends_in_an_error_after_its_data() {
        let (data, error) = collect(Framing::Chunked, b"6\r\nfirst \r", &[b"\n3\r\nabc\r\nzz\r\n"]).await;
        assert_eq!(data, b"first abc");
        let error = error.expect("an error");
        assert!(error.contains("the app sent a malformed chunked body"), "{error}");
        let (data, error) = collect(Framing::Chunked, b"", &[b"5\r\nab"]).await;
        assert_eq!(data, b"ab");
        assert!(error.expect("an error").contains("closed the connection"));
        let (data, error) = collect(Framing::UntilClose, b"a", &[b"bc"]).await;
        assert_eq!((data.as_slice(), error), (&b"abc"[..], None));
    }

    #[tokio::test]
    async fn as_a_body_it_says_its_length_and_its_end() {
        let body = StreamBody::new(
            Reads::new(&[b"lo"]),
            Decoder::new(Framing::Length(5)),
            Bytes::from("hel"),
        );
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(5));
        let text = body.collect().await.expect("body").to_bytes();
        assert_eq!(&text[..], b"hello");
        let empty = StreamBody::new(Reads::new(&[]), Decoder::new(Framing::Empty), Bytes::new());
        assert!(http_body::Body::is_end_stream(&empty));
    }

    #[tokio::test]
    async fn the_chunks_of_one_read_come_one_by_one_with_a_yield_between() {
        let read: &[u8] = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let (data, end) = chunks(Framing::Chunked, b"", &[read]).await;
        assert_eq!((data, end), (vec![b"abc".to_vec(), b"de".to_vec()], None));
        let mut body = StreamBody::new(Reads::new(&[read]), Decoder::new(Framing::Chunked), Bytes::new());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut poll = || match body.poll_data(&mut cx) {
            Poll::Ready(Some(Ok(data))) => Some(data),
            Poll::Ready(other) => panic!("{other:?}"),
            Poll::Pending => None,
        };
        assert_eq!(poll().as_deref(), Some(&b"abc"[..]));
        assert_eq!(poll(), None, "the others run first");
        assert_eq!(poll().as_deref(), Some(&b"de"[..]));
    }

    #[tokio::test]
    async fn with_nothing_more_at_hand_the_body_waits_on_its_connection_without_a_yield() {
        // A stream of one event at a time: after each, the task sleeps until the app writes
        // again, rather than being woken to find nothing (which woke an idle thread per event).
        let (mut app, ours) = tokio::io::duplex(1024);
        let mut body = StreamBody::new(ours, Decoder::new(Framing::Chunked), Bytes::new());
        let woken = Arc::new(Woken::default());
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        tokio::io::AsyncWriteExt::write_all(&mut app, b"3\r\nabc\r\n")
            .await
            .expect("write");
        match body.poll_data(&mut cx) {
            Poll::Ready(Some(Ok(data))) => assert_eq!(&data[..], b"abc"),
            other => panic!("{other:?}"),
        }
        assert!(body.poll_data(&mut cx).is_pending());
        assert_eq!(woken.count(), 0, "no yield: nothing more had come");
        tokio::io::AsyncWriteExt::write_all(&mut app, b"2\r\nde\r\n")
            .await
            .expect("write");
        assert_eq!(woken.count(), 1, "the app's next bytes wake it");
        match body.poll_data(&mut cx) {
            Poll::Ready(Some(Ok(data))) => assert_eq!(&data[..], b"de"),
            other => panic!("{other:?}"),
        }
    }

    #[derive(Default)]
    struct Woken(std::sync::atomic::AtomicUsize);

    impl Woken {
        fn count(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn an_idle_body_holds_its_connection_and_a_few_words() {
        let size = size_of::<StreamBody>();
        assert!(size <= size_of::<Io>() + 72, "{size}");
    }
}
