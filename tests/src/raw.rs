//! A raw HTTP/2 gRPC caller built on hyper: it sends exactly the headers it is given, enforces
//! no deadline of its own and reports what came back (headers, body, trailers) as it was, so
//! tests see the proxy's behaviour rather than a gRPC library's.

use bytes::{Buf, Bytes};
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;

/// What a call got back.
#[derive(Debug)]
pub struct RawReply {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// gRPC messages in the body (undecoded).
    pub messages: Vec<Bytes>,
    /// Trailers, if any (a trailers-only response has none: its status is in the headers).
    pub trailers: Option<HeaderMap>,
}

impl RawReply {
    fn get(&self, name: &str) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .or_else(|| self.headers.get(name))
            .and_then(|v| v.to_str().ok())
    }

    /// `grpc-status`, from the trailers or (trailers-only) the headers.
    pub fn grpc_status(&self) -> Option<i32> {
        self.get("grpc-status")?.parse().ok()
    }

    /// `grpc-message`, percent-decoded loosely (enough for ASCII messages).
    pub fn grpc_message(&self) -> String {
        self.get("grpc-message").unwrap_or("").replace("%25", "%")
    }

    /// A response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Calls `path` on `addr` (h2c) with `:authority` `authority`, one request message and `extra`
/// headers, and reads the whole response.
pub async fn grpc_call(
    addr: &str,
    authority: &str,
    path: &str,
    message: &impl Message,
    extra: &[(&str, &str)],
) -> RawReply {
    grpc_call_from(None, addr, authority, path, message, extra).await
}

/// [`grpc_call`] on a connection from source address `from` (a loopback address: 127.0.0.2 is
/// another client than 127.0.0.1).
pub async fn grpc_call_from(
    from: Option<std::net::IpAddr>,
    addr: &str,
    authority: &str,
    path: &str,
    message: &impl Message,
    extra: &[(&str, &str)],
) -> RawReply {
    let tcp = match from {
        Some(ip) => {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(std::net::SocketAddr::new(ip, 0)).unwrap();
            socket.connect(addr.parse().unwrap()).await.unwrap()
        }
        None => tokio::net::TcpStream::connect(addr).await.unwrap(),
    };
    // As gRPC clients do: without it, Nagle holds the DATA frame behind the HEADERS until the
    // peer's delayed ACK (~40 ms).
    tcp.set_nodelay(true).unwrap();
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let encoded = message.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + encoded.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(encoded.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&encoded);
    let mut builder = Request::post(format!("http://{authority}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in extra {
        builder = builder.header(*k, *v);
    }
    let response = sender.send_request(builder.body(Full::new(Bytes::from(frame))).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    let mut data = collected.to_bytes();
    let mut messages = Vec::new();
    while data.remaining() >= 5 {
        data.advance(1);
        let len = data.get_u32() as usize;
        messages.push(data.split_to(len));
    }
    RawReply { status: parts.status.as_u16(), headers: parts.headers, messages, trailers }
}
