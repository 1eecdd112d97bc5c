//! gRPC-Web at the gateway: a browser's call made a gRPC call towards the service, and its
//! response made a gRPC-Web one on the way back (the gRPC-Web protocol, `PROTOCOL-WEB.md`).
//!
//! - `application/grpc-web[+proto]`: the body is gRPC's own framing, passed as is.
//! - `application/grpc-web-text[+proto]`: the same, base64; decoded on the way in
//!   (`http::body::EdgeBody`), and each frame encoded on its own on the way out.
//!
//! The response's trailers become its last frame (flag `0x80`, then `name: value\r\n` lines), since
//! a browser's `fetch` cannot read HTTP trailers. A trailers-only response (an error before any
//! message) keeps its status in the headers, where gRPC-Web clients read it.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, Response};
use http_body::{Body, Frame};

use crate::outbound::OutboundBody;

/// Which gRPC-Web encoding a call uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `application/grpc-web`: binary frames.
    Binary,
    /// `application/grpc-web-text`: base64 frames.
    Text,
}

impl Mode {
    /// The call's mode, if it is a gRPC-Web call.
    pub(crate) fn of(headers: &HeaderMap) -> Option<Self> {
        let content_type = headers.get(CONTENT_TYPE)?.to_str().ok()?;
        let rest = content_type.strip_prefix("application/grpc-web")?;
        match rest.strip_prefix("-text").unwrap_or(rest) {
            "" | "+proto" if rest.starts_with("-text") => Some(Self::Text),
            "" | "+proto" => Some(Self::Binary),
            _ => None,
        }
    }

    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Binary => "application/grpc-web+proto",
            Self::Text => "application/grpc-web-text+proto",
        })
    }
}

/// Makes a gRPC-Web request's headers a gRPC request's (its body is decoded on the way if
/// `mode` is text: `EdgeBody`).
pub(crate) fn request(headers: &mut HeaderMap) {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    // The length changes with base64, and gRPC does not need it.
    headers.remove(CONTENT_LENGTH);
    headers.remove("x-grpc-web");
}

/// Makes the service's gRPC response a gRPC-Web one.
pub(crate) fn response(response: Response<OutboundBody>, mode: Mode) -> Response<WebBody> {
    let (mut parts, body) = response.into_parts();
    let grpc = parts.headers.get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        parts.headers.insert(CONTENT_TYPE, mode.content_type());
    }
    parts.headers.remove(CONTENT_LENGTH);
    Response::from_parts(parts, WebBody { inner: body, mode, ended: false, trailers: None })
}

/// A gRPC response body as gRPC-Web: data frames as they come (base64 in text mode), trailers
/// as the last frame.
#[derive(Debug)]
pub(crate) struct WebBody {
    inner: OutboundBody,
    mode: Mode,
    ended: bool,
    /// The service's trailers, once sent as the last frame (for the gateway's telemetry).
    trailers: Option<HeaderMap>,
}

impl WebBody {
    /// The service's trailers, once the frame that carries them has gone out.
    pub(crate) fn take_trailers(&mut self) -> Option<HeaderMap> {
        self.trailers.take()
    }

    fn encode(&self, bytes: Bytes) -> Bytes {
        match self.mode {
            Mode::Binary => bytes,
            Mode::Text => Bytes::from(base64::engine::general_purpose::STANDARD.encode(&bytes)),
        }
    }
}

/// The trailer frame: flag `0x80`, the length, then each trailer as `name: value\r\n`.
pub(crate) fn trailer_frame(trailers: &HeaderMap) -> Bytes {
    let mut block = Vec::new();
    for (name, value) in trailers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    let mut frame = BytesMut::with_capacity(5 + block.len());
    frame.put_u8(0x80);
    frame.put_u32(u32::try_from(block.len()).unwrap_or(u32::MAX));
    frame.extend_from_slice(&block);
    frame.freeze()
}

impl Body for WebBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => return Poll::Ready(Some(Err(error))),
            None => {
                self.ended = true;
                return Poll::Ready(None);
            }
        };
        let bytes = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    self.ended = true;
                    let frame = trailer_frame(&trailers);
                    self.trailers = Some(trailers);
                    frame
                }
                Err(_) => return Poll::Ready(Some(Ok(Frame::data(Bytes::new())))),
            },
        };
        let encoded = self.encode(bytes);
        Poll::Ready(Some(Ok(Frame::data(encoded))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_come_from_the_content_type() {
        let mode = |ct: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap_or_else(|e| panic!("{e}")));
            Mode::of(&headers)
        };
        assert_eq!(mode("application/grpc-web"), Some(Mode::Binary));
        assert_eq!(mode("application/grpc-web+proto"), Some(Mode::Binary));
        assert_eq!(mode("application/grpc-web-text"), Some(Mode::Text));
        assert_eq!(mode("application/grpc-web-text+proto"), Some(Mode::Text));
        assert_eq!(mode("application/grpc"), None);
        assert_eq!(mode("application/grpc-web+json"), None, "only protobuf");
        assert_eq!(mode("application/grpc-webx"), None);
    }

    #[test]
    fn trailers_become_the_last_frame() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("x-echo-trace", HeaderValue::from_static("t-1"));
        let frame = trailer_frame(&trailers);
        assert_eq!(frame[0], 0x80);
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(&frame[5..], b"grpc-status: 0\r\nx-echo-trace: t-1\r\n");
        assert_eq!(len, frame.len() - 5);
    }
}
