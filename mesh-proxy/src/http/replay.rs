//! A request body that can be sent again. The first attempt streams the caller's body through as
//! usual (nothing waits for the whole body), keeping a copy of what passed while it stays under a
//! cap (64 KiB by default); a later attempt replays the copy and then goes on reading the caller's
//! body where the first left off. A body that outgrows the cap stops being replayable, and the
//! copy is dropped at once, so memory stays bounded per call.
//!
//! Attempts share one buffer: each remembers how far it has read, and whichever is furthest along
//! reads the caller's body for all. (Reading the caller's body from two attempts at once is not
//! supported; attempts here are sequential.)

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// The default replay cap: bodies larger than this are never sent twice.
pub(crate) const DEFAULT_CAP: usize = 64 * 1024;

#[derive(Debug)]
struct Shared<B> {
    /// The caller's body, until it ends.
    source: Option<B>,
    /// Data read from the source so far (while replayable).
    chunks: Vec<Bytes>,
    len: usize,
    cap: usize,
    /// More than `cap` was read: the copy is gone, no new attempt can replay.
    overflowed: bool,
    trailers: Option<HeaderMap>,
    /// The source has ended (trailers or end of stream).
    ended: bool,
    /// The source failed.
    broken: bool,
    /// Woken when the body is settled (ended, outgrown or broken), for [`ReplayBody::settled`].
    settled: Option<Arc<Notify>>,
}

impl<B> Shared<B> {
    fn is_settled(&self) -> bool {
        self.ended || self.overflowed || self.broken
    }

    /// Wakes whoever waits for the body to settle.
    fn settle(&mut self) {
        if let Some(settled) = &self.settled {
            settled.notify_waiters();
        }
    }
}

/// One attempt's view of a replayable request body.
#[derive(Debug)]
pub(crate) struct ReplayBody<B> {
    shared: Arc<Mutex<Shared<B>>>,
    /// The next chunk of the copy this attempt yields.
    pos: usize,
    /// This attempt has yielded the trailers (or the end).
    done: bool,
}

impl<B> ReplayBody<B> {
    /// Wraps `source`, keeping a copy of up to `cap` bytes for replays.
    pub(crate) fn new(source: B, cap: usize) -> Self {
        let shared = Shared {
            source: Some(source),
            chunks: Vec::new(),
            len: 0,
            cap,
            overflowed: false,
            trailers: None,
            ended: false,
            broken: false,
            settled: None,
        };
        Self { shared: Arc::new(Mutex::new(shared)), pos: 0, done: false }
    }

    /// A body for another attempt, from the start, unless the body outgrew the cap.
    pub(crate) fn replay(&self) -> Option<Self> {
        let shared = self.shared.lock();
        (!shared.overflowed).then(|| Self { shared: self.shared.clone(), pos: 0, done: false })
    }

    /// Waits until the attempts have read the whole body, and says whether it is all in the copy
    /// (then a [`Self::replay`] never touches the caller's body: a mirror can send it alongside).
    /// `false`: it outgrew the cap or failed, or every attempt is gone without reading it all (the
    /// call failed early): nobody else will read it.
    pub(crate) async fn settled(&self) -> bool {
        loop {
            let notify = {
                let mut shared = self.shared.lock();
                if shared.is_settled() {
                    return shared.ended && !shared.overflowed && !shared.broken;
                }
                if Arc::strong_count(&self.shared) == 1 {
                    return false;
                }
                shared.settled.get_or_insert_with(Arc::default).clone()
            };
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.shared.lock().is_settled() || Arc::strong_count(&self.shared) == 1 {
                continue;
            }
            woken.await;
        }
    }
}

impl<B> Drop for ReplayBody<B> {
    fn drop(&mut self) {
        // Whoever waits in `settled` looks again: this may have been the last other attempt.
        if let Some(settled) = &self.shared.lock().settled {
            settled.notify_waiters();
        }
    }
}

/// A replay that fell behind the copy after the body outgrew the cap.
#[derive(Debug, thiserror::Error)]
#[error("the request body outgrew the replay buffer while a retry was reading it")]
pub(crate) struct Outgrown;

/// The error of a replayable body: the source's, or [`Outgrown`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplayError<E> {
    /// The caller's body failed.
    #[error(transparent)]
    Source(E),
    /// See [`Outgrown`].
    #[error(transparent)]
    Outgrown(#[from] Outgrown),
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = ReplayError<B::Error>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let mut shared = this.shared.lock();
        // First what an earlier attempt already read.
        if this.pos < shared.chunks.len() {
            let chunk = shared.chunks[this.pos].clone();
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if shared.overflowed && this.pos > 0 && this.pos != usize::MAX {
            // This attempt was replaying and the copy is gone under it.
            this.done = true;
            return Poll::Ready(Some(Err(Outgrown.into())));
        }
        if shared.ended {
            this.done = true;
            return Poll::Ready(shared.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        let Some(source) = shared.source.as_mut() else {
            this.done = true;
            return Poll::Ready(None);
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.ended = true;
                shared.source = None;
                shared.settle();
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                shared.broken = true;
                shared.settle();
                this.done = true;
                Poll::Ready(Some(Err(ReplayError::Source(error))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if shared.overflowed || shared.len + data.len() > shared.cap {
                        // Too big to send twice: drop the copy, keep streaming.
                        shared.overflowed = true;
                        shared.chunks = Vec::new();
                        shared.settle();
                        this.pos = usize::MAX;
                    } else {
                        shared.len += data.len();
                        shared.chunks.push(data.clone());
                        this.pos = shared.chunks.len();
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    shared.trailers = Some(trailers.clone());
                    shared.ended = true;
                    shared.source = None;
                    this.done = true;
                }
                // The end known now, not at the next poll: the data frame just read then carries
                // END_STREAM (an extra empty DATA frame per call is what HTTP/2 peers count as a
                // flood and answer with GOAWAY ENHANCE_YOUR_CALM).
                if !shared.ended && shared.source.as_ref().is_some_and(Body::is_end_stream) {
                    shared.ended = true;
                    shared.source = None;
                }
                if shared.ended {
                    shared.settle();
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.done {
            return true;
        }
        let shared = self.shared.lock();
        let copy_left = self.pos != usize::MAX && self.pos < shared.chunks.len();
        if copy_left {
            return false;
        }
        match &shared.source {
            _ if shared.ended => shared.trailers.is_none(),
            Some(source) => source.is_end_stream(),
            None => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        let shared = self.shared.lock();
        match (&shared.source, shared.ended) {
            (_, true) if self.pos != usize::MAX => {
                let left: usize = shared.chunks.iter().skip(self.pos).map(Bytes::len).sum();
                SizeHint::with_exact(left as u64)
            }
            (Some(source), false) if self.pos == shared.chunks.len() || self.pos == usize::MAX => source.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    type Source =
        StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>>;

    fn source(chunks: &[&'static [u8]], trailers: bool) -> Source {
        let mut frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            chunks.iter().map(|c| Ok(Frame::data(Bytes::from_static(c)))).collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("x-end", "1".parse().unwrap_or_else(|_| unreachable!()));
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn collect<B: Body<Data = Bytes> + Unpin>(body: B) -> (Vec<u8>, Option<HeaderMap>)
    where
        B::Error: std::fmt::Debug,
    {
        let collected = body.collect().await.unwrap_or_else(|e| panic!("{e:?}"));
        let trailers = collected.trailers().cloned();
        (collected.to_bytes().to_vec(), trailers)
    }

    #[tokio::test]
    async fn a_small_body_is_sent_again_whole_with_its_trailers() {
        let first = ReplayBody::new(source(&[b"hello ", b"mesh"], true), DEFAULT_CAP);
        let second = first.replay().unwrap_or_else(|| panic!("replayable"));
        let (data, trailers) = collect(first).await;
        assert_eq!(data, b"hello mesh");
        assert!(trailers.is_some_and(|t| t.contains_key("x-end")));
        let third = second.replay().unwrap_or_else(|| panic!("replayable"));
        assert_eq!(collect(second).await.0, b"hello mesh");
        assert_eq!(collect(third).await.0, b"hello mesh");
    }

    #[tokio::test]
    async fn settled_waits_for_the_first_attempt_and_says_whether_the_copy_is_whole() {
        let first = ReplayBody::new(source(&[b"hello ", b"mesh"], true), DEFAULT_CAP);
        let mirror = first.replay().unwrap_or_else(|| panic!("replayable"));
        let waiting = tokio::spawn(async move {
            let whole = mirror.settled().await;
            (whole, collect(mirror.replay().unwrap_or_else(|| panic!("replayable"))).await.0)
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "nothing read yet");
        assert_eq!(collect(first).await.0, b"hello mesh");
        let (whole, copy) = waiting.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(whole);
        assert_eq!(copy, b"hello mesh", "replayed from the copy alone");

        let big = ReplayBody::new(source(&[b"0123456789"], false), 4);
        let watcher = big.replay().unwrap_or_else(|| panic!("replayable"));
        collect(big).await;
        assert!(!watcher.settled().await, "outgrown: not whole");

        // The call failed before reading its body: once its attempts are gone, nobody will.
        let unread = ReplayBody::new(source(&[b"hello"], false), DEFAULT_CAP);
        let waiter = unread.replay().unwrap_or_else(|| panic!("replayable"));
        let waiting = tokio::spawn(async move { waiter.settled().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(unread);
        assert!(!waiting.await.unwrap_or_else(|e| panic!("{e}")), "given up, not whole");
    }

    #[tokio::test]
    async fn a_replay_picks_up_where_the_first_attempt_stopped_reading() {
        let mut first = ReplayBody::new(source(&[b"a", b"b", b"c"], false), DEFAULT_CAP);
        // The first attempt reads one chunk and fails.
        let frame = first.frame().await.and_then(Result::ok).and_then(|f| f.into_data().ok());
        assert_eq!(frame.as_deref(), Some(&b"a"[..]));
        let second = first.replay().unwrap_or_else(|| panic!("replayable"));
        drop(first);
        assert_eq!(collect(second).await.0, b"abc");
    }

    #[tokio::test]
    async fn the_end_of_the_body_is_known_with_its_last_data_frame() {
        // A source that knows it has ended once its one chunk is read (as h2's request bodies do).
        let mut first = ReplayBody::new(Full::new(Bytes::from_static(b"one frame")), DEFAULT_CAP);
        assert!(!first.is_end_stream());
        let replay = first.replay().unwrap_or_else(|| panic!("replayable"));
        assert!(first.frame().await.is_some_and(|f| f.is_ok_and(|f| f.is_data())));
        assert!(first.is_end_stream(), "no empty DATA frame needed to end the stream");
        let mut replay = replay;
        assert!(!replay.is_end_stream(), "a replay has its copy to send first");
        assert!(replay.frame().await.is_some());
        assert!(replay.is_end_stream(), "and ends with it");
    }

    #[tokio::test]
    async fn a_body_over_the_cap_streams_through_and_cannot_be_replayed() {
        let first = ReplayBody::new(source(&[b"12345", b"67890"], false), 8);
        let (data, _) = collect(first.replay().unwrap_or_else(|| panic!("not read yet: replayable"))).await;
        assert_eq!(data, b"1234567890", "streams through whole");
        assert!(first.replay().is_none(), "but keeps no copy to send again");
        assert!(ReplayBody::new(Full::new(Bytes::from_static(b"small")), 8).replay().is_some());
    }
}
