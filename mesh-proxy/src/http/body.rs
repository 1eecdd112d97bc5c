//! The bodies the proxy forwards: streamed through frame by frame (data, then trailers), never
//! buffered, observed on the way. The response body records the request's gRPC status, latency
//! and size once it ends, and holds whatever guard the layer above gives it (the balancer's count
//! of the call as in flight on its endpoint) until then, as `hyper-balance`'s
//! `PendingUntilEosBody` does; the request body counts its bytes. A proxy-made error has no body
//! at all (trailers-only).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::headers::GRPC_STATUS;
use crate::telemetry::Recorder;
use crate::telemetry::labels::{STATUS_CANCELLED, STATUS_NONE, STATUS_RESET, grpc_status};

/// A streamed response body, recorded when it ends, holding a `G` until it is dropped.
#[derive(Debug)]
pub(crate) struct ResponseBody<G = ()> {
    inner: Option<Incoming>,
    recorder: Option<Recorder>,
    /// The status known so far: from trailers-only headers, or from trailers once seen.
    status: Option<&'static str>,
    /// Data bytes passed so far.
    bytes: u64,
    /// Dropped with the body: after the response ended, or the caller went away.
    _guard: Option<G>,
}

impl<G> ResponseBody<G> {
    /// No body: the headers end the stream.
    pub(crate) fn empty() -> Self {
        Self { inner: None, recorder: None, status: None, bytes: 0, _guard: None }
    }

    /// `inner`, recorded by `recorder` when it ends, holding `guard` until then. `headers` are the
    /// response headers (a trailers-only response carries its `grpc-status` there).
    pub(crate) fn observed(inner: Incoming, headers: &http::HeaderMap, recorder: Recorder, guard: G) -> Self {
        let status = headers.get(GRPC_STATUS).map(|v| grpc_status(v.as_bytes()));
        Self { inner: Some(inner), recorder: Some(recorder), status, bytes: 0, _guard: Some(guard) }
    }

    fn finish(&mut self, status: &'static str) {
        if let Some(recorder) = self.recorder.take() {
            recorder.finish(status, self.bytes);
        }
    }
}

impl<G: Unpin> Body for ResponseBody<G> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.status = trailers.get(GRPC_STATUS).map(|v| grpc_status(v.as_bytes()));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                this.finish(STATUS_RESET);
                Poll::Ready(Some(Err(error)))
            }
            None => {
                let status = this.status.unwrap_or(STATUS_NONE);
                this.finish(status);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<G> Drop for ResponseBody<G> {
    fn drop(&mut self) {
        // Dropped before its end: a trailers-only response (its status was in the headers), or
        // the caller went away mid-stream.
        let status = self.status.unwrap_or(STATUS_CANCELLED);
        self.finish(status);
    }
}

/// A request body on its way through, counting its bytes into its request's [`Recorder`].
#[derive(Debug)]
pub(crate) struct RequestBody {
    inner: Incoming,
    bytes: Arc<AtomicU64>,
}

impl RequestBody {
    pub(crate) fn new(inner: Incoming, recorder: &Recorder) -> Self {
        Self { inner, bytes: recorder.request_bytes() }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
