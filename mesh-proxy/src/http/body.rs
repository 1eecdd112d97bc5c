//! The bodies the proxy forwards: streamed through frame by frame (data, then trailers), never
//! buffered, observed on the way. The response body records the request's gRPC status, latency
//! and size once it ends, and holds whatever guard the layer above gives it (the balancer's count
//! of the call as in flight on its endpoint) until then, as `hyper-balance`'s
//! `PendingUntilEosBody` does; the request body counts its bytes. A proxy-made error has no body
//! at all (trailers-only).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// Where a request body's bytes come from.
#[derive(Debug)]
pub(crate) enum Source {
    /// The connection's body, as sent.
    Plain(Incoming),
    /// A request from outside the mesh (at the gateway): capped in size, and decoded on the way
    /// for a gRPC-Web text call. Boxed: every call's future holds a `Source`, and only the
    /// gateway's calls need this one.
    Edge(Box<EdgeBody>),
}

impl From<Incoming> for Source {
    fn from(body: Incoming) -> Self {
        Self::Plain(body)
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The caller's connection or stream failed.
    #[error(transparent)]
    Read(#[from] hyper::Error),
    /// A gRPC-Web text body that is not base64.
    #[error("the gRPC-Web text body is not base64: {0}")]
    NotBase64(String),
    /// A body from outside the mesh over its route's `max_request_bytes`.
    #[error("the request body is over the route's {0}-byte limit")]
    TooLarge(u64),
}

/// A request body on its way through, counting its bytes into its request's [`Recorder`].
#[derive(Debug)]
pub(crate) struct RequestBody {
    inner: Source,
    bytes: Arc<AtomicU64>,
}

impl RequestBody {
    pub(crate) fn new(inner: impl Into<Source>, recorder: &Recorder) -> Self {
        Self { inner: inner.into(), bytes: recorder.request_bytes() }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let frame = match &mut self.inner {
            Source::Plain(inner) => ready!(Pin::new(inner).poll_frame(cx)).map(|f| f.map_err(BodyError::Read)),
            Source::Edge(inner) => ready!(inner.poll_frame(cx)),
        };
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Source::Plain(inner) => inner.is_end_stream(),
            Source::Edge(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::Plain(inner) => inner.size_hint(),
            Source::Edge(inner) => inner.size_hint(),
        }
    }
}

/// A request body from outside the mesh (at the gateway): its bytes as sent are counted against
/// the route's cap, and a gRPC-Web text body is decoded from base64 as it streams (a sender may
/// encode each chunk on its own, so a padded group, `xx==`, may end a segment mid-body).
#[derive(Debug)]
pub(crate) struct EdgeBody {
    inner: Incoming,
    /// Characters of a base64 group not complete yet (at most 3 after each chunk); `None`: the
    /// body is not base64.
    base64: Option<Vec<u8>>,
    /// The cap, and the bytes still allowed under it.
    limit: u64,
    left: u64,
    /// Set once the body went over the cap, for the gateway to say so in the response.
    over: Arc<AtomicBool>,
}

impl EdgeBody {
    /// `inner`, at most `limit` bytes of it, decoded from base64 if `base64`; `over` is set if the
    /// body goes over the limit.
    pub(crate) fn new(inner: Incoming, base64: bool, limit: u64, over: Arc<AtomicBool>) -> Self {
        Self { inner, base64: base64.then(Vec::new), limit, left: limit, over }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            let data = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                Some(Err(error)) => return Poll::Ready(Some(Err(BodyError::Read(error)))),
                None => return Poll::Ready(self.end()),
            };
            let Some(left) = self.left.checked_sub(data.len() as u64) else {
                self.over.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(BodyError::TooLarge(self.limit))));
            };
            self.left = left;
            let Some(pending) = &mut self.base64 else {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            };
            match decode_groups(pending, &data) {
                Ok(decoded) if decoded.is_empty() => {}
                Ok(decoded) => return Poll::Ready(Some(Ok(Frame::data(decoded)))),
                Err(error) => return Poll::Ready(Some(Err(error))),
            }
        }
    }

    /// The end of the body: an error if it ends inside a base64 group.
    fn end(&mut self) -> Option<Result<Frame<Bytes>, BodyError>> {
        let pending = self.base64.as_mut().filter(|p| !p.is_empty())?;
        let error = format!("it ends inside a group ({} characters left over)", pending.len());
        pending.clear();
        Some(Err(BodyError::NotBase64(error)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream() && self.base64.as_ref().is_none_or(Vec::is_empty)
    }

    fn size_hint(&self) -> SizeHint {
        if self.base64.is_some() { SizeHint::default() } else { self.inner.size_hint() }
    }
}

/// Decodes the whole 4-character groups of `pending` + `chunk` (whitespace ignored), keeping the
/// rest in `pending`.
pub(crate) fn decode_groups(pending: &mut Vec<u8>, chunk: &[u8]) -> Result<Bytes, BodyError> {
    use base64::Engine as _;
    pending.extend(chunk.iter().filter(|b| !b.is_ascii_whitespace()));
    let whole = pending.len() / 4 * 4;
    let mut out = Vec::with_capacity(whole / 4 * 3);
    let mut start = 0;
    let decode = |segment: &[u8], out: &mut Vec<u8>| {
        base64::engine::general_purpose::STANDARD
            .decode_vec(segment, out)
            .map_err(|e| BodyError::NotBase64(e.to_string()))
    };
    for group in (0..whole).step_by(4) {
        if pending[group + 3] == b'=' {
            decode(&pending[start..group + 4], &mut out)?;
            start = group + 4;
        }
    }
    if start < whole {
        decode(&pending[start..whole], &mut out)?;
    }
    pending.drain(..whole);
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_across_chunks_and_padded_segments() {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        // Two messages encoded on their own (each padded), cut at odd places.
        let text = format!("{}{}", b64(b"\x00\x00\x00\x00\x01a"), b64(b"\x00\x00\x00\x00\x02bc"));
        let mut pending = Vec::new();
        let mut out = Vec::new();
        for piece in text.as_bytes().chunks(3) {
            out.extend_from_slice(&decode_groups(&mut pending, piece).unwrap_or_else(|e| panic!("{e}")));
        }
        assert!(pending.is_empty());
        assert_eq!(out, b"\x00\x00\x00\x00\x01a\x00\x00\x00\x00\x02bc");
        assert!(decode_groups(&mut Vec::new(), b"a\r\nb=cd").is_err(), "padding inside a group");
        assert!(decode_groups(&mut Vec::new(), b"@@@@").is_err());
        let mut pending = Vec::new();
        assert_eq!(decode_groups(&mut pending, b"QU Jj\n").unwrap_or_default(), &b"ABc"[..], "whitespace is skipped");
    }
}
