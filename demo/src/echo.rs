//! The echo role: `mesh.demo.v1.Echo`, every gRPC call shape, for the proxy's fidelity tests and
//! the load generator.
//!
//! Request metadata is echoed in the reply body, and entries named `x-echo-*` are also returned
//! as response headers (and with a failure status, which travels in the trailers once messages
//! were sent), so tests can see metadata cross the mesh both ways.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh_proto::demo::v1::echo_client::EchoClient;
use mesh_proto::demo::v1::echo_server::{Echo, EchoServer};
use mesh_proto::demo::v1::{EchoReply, EchoRequest, StatsReply, StatsRequest};
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::registration::RegisterArgs;

/// Largest reply payload the echo server will make up (`reply_size`).
const MAX_REPLY_SIZE: u32 = 16 * 1024 * 1024;
/// Most replies one `ServerStream` call may ask for.
const MAX_COUNT: u32 = 1_000_000;

/// Echo flags.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Address to serve h2c on.
    #[arg(long, env = "DEMO_LISTEN_ADDR", default_value = "127.0.0.1:7003")]
    listen: SocketAddr,
    /// Unary calls are passed on to this address first (e.g. the local proxy's outbound port),
    /// with their trace context: a chain of echo services for tests and demos.
    #[arg(long = "next-addr", env = "DEMO_NEXT_ADDR")]
    next_addr: Option<tonic::transport::Uri>,
    /// `:authority` for the next hop; through the mesh this names the service.
    #[arg(long = "next-authority", env = "DEMO_NEXT_AUTHORITY", requires = "next_addr")]
    next_authority: Option<String>,
    /// Copy every request header into the reply's `metadata` field (what tests look at). The
    /// benchmark turns it off so that replies do not grow with each header a hop adds.
    #[arg(long = "echo-metadata", env = "DEMO_ECHO_METADATA", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    echo_metadata: bool,
    /// Work on at most this many unary calls at once and line up the rest, as a thread pool
    /// does: an app with a fixed capacity, for overload tests. Unbounded when absent.
    #[arg(long = "max-concurrency", env = "DEMO_MAX_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_concurrency: Option<u32>,
    /// This percentage of unary calls waits `--slow-ms` more: a replica with a slow tail, for
    /// hedging tests.
    #[arg(long = "slow-percent", env = "DEMO_SLOW_PERCENT", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    slow_percent: u8,
    /// How much longer a slow call takes, milliseconds.
    #[arg(long = "slow-ms", env = "DEMO_SLOW_MS", default_value_t = 500)]
    slow_ms: u32,
    /// This percentage of unary calls fails with INTERNAL (after any slowness): a broken
    /// replica or shadow, for tests.
    #[arg(long = "fail-percent", env = "DEMO_FAIL_PERCENT", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    fail_percent: u8,
    /// Append the `x-request-id` of each unary call to this file as it arrives, one per line,
    /// written at once (it survives a SIGKILL): tests count calls processed twice.
    #[arg(long = "request-log", env = "DEMO_REQUEST_LOG", value_name = "PATH")]
    request_log: Option<std::path::PathBuf>,
    #[command(flatten)]
    register: RegisterArgs,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    cancelled: AtomicU64,
}

struct EchoService {
    instance: String,
    counters: Arc<Counters>,
    next: Option<EchoClient<tonic::transport::Channel>>,
    echo_metadata: bool,
    /// Present with `--max-concurrency`: a unary call works only while it holds a permit.
    workers: Option<Arc<tokio::sync::Semaphore>>,
    /// `--slow-percent` and `--slow-ms`.
    slow: (u8, u32),
    /// `--fail-percent`.
    fail_percent: u8,
    /// `--request-log`.
    request_log: Option<Arc<parking_lot::Mutex<std::fs::File>>>,
}

/// Counts a call as cancelled if it is dropped before it completes.
struct CallGuard {
    counters: Arc<Counters>,
    done: bool,
}

impl CallGuard {
    fn new(counters: &Arc<Counters>) -> Self {
        counters.calls.fetch_add(1, Ordering::Relaxed);
        Self { counters: counters.clone(), done: false }
    }

    /// The call completed (successfully or with a status it chose to send).
    fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if !self.done {
            self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

impl EchoService {
    fn reply(&self, req: &EchoRequest, metadata: &MetadataMap, seq: u64) -> Result<EchoReply, Status> {
        if req.fail_code != 0 {
            // The failure carries the `x-echo-*` metadata too: in the headers of a trailers-only
            // response, or in the trailers after a stream's messages.
            let mut metadata = echoed(metadata);
            if let Some(Ok(pushback)) = (!req.pushback_ms.is_empty()).then(|| req.pushback_ms.parse()) {
                metadata.insert("grpc-retry-pushback-ms", pushback);
            }
            return Err(Status::with_metadata(Code::from(req.fail_code), req.fail_message.clone(), metadata));
        }
        let payload = match req.reply_size {
            0 => req.payload.clone(),
            n if n <= MAX_REPLY_SIZE => vec![b'x'; n as usize],
            n => return Err(Status::invalid_argument(format!("reply_size {n} over {MAX_REPLY_SIZE}"))),
        };
        let metadata = metadata
            .iter()
            .filter(|_| self.echo_metadata)
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => Some((k.to_string(), v.to_str().ok()?.to_string())),
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        Ok(EchoReply { payload, instance: self.instance.clone(), metadata, seq, ..EchoReply::default() })
    }
}

/// The request's `x-echo-*` entries, to send back as headers and trailers.
fn echoed(metadata: &MetadataMap) -> MetadataMap {
    let mut out = MetadataMap::new();
    for kv in metadata.iter() {
        if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv
            && k.as_str().starts_with("x-echo-")
        {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

fn with_metadata<T>(body: T, metadata: &MetadataMap) -> Response<T> {
    let mut response = Response::new(body);
    *response.metadata_mut() = echoed(metadata);
    response
}

async fn delay(ms: u32) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
    }
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let started = std::time::Instant::now();
        let guard = CallGuard::new(&self.counters);
        let _worker = match &self.workers {
            Some(workers) => Some(workers.acquire().await.map_err(|_| Status::unavailable("shutting down"))?),
            None => None,
        };
        if let (Some(log), Some(id)) = (&self.request_log, request.metadata().get("x-request-id")) {
            use std::io::Write as _;
            let line = [id.as_bytes(), b"\n"].concat();
            log.lock().write_all(&line).map_err(|e| Status::internal(format!("request log: {e}")))?;
        }
        let req = request.get_ref();
        // In a chain, the last link waits `delay_ms`; each link's reply carries what the next
        // one saw, under `next/`.
        let mut next_seen = Vec::new();
        if let Some(next) = &self.next {
            let call = crate::propagate::propagate(request.metadata(), started, Request::new(req.clone()));
            let reply = next
                .clone()
                .unary(call)
                .await
                .map_err(|s| Status::new(s.code(), format!("next hop: {}", s.message())))?;
            next_seen = reply.into_inner().metadata.into_iter().map(|(k, v)| (format!("next/{k}"), v)).collect();
        } else {
            delay(req.delay_ms).await;
        }
        if self.slow.0 > 0 && fastrand::u8(..100) < self.slow.0 {
            delay(self.slow.1).await;
        }
        if self.fail_percent > 0 && fastrand::u8(..100) < self.fail_percent {
            guard.finish();
            return Err(Status::internal(format!("{} failed on purpose (--fail-percent)", self.instance)));
        }
        let reply = self.reply(req, request.metadata(), 0).map(|mut reply| {
            if self.echo_metadata {
                reply.metadata.extend(next_seen);
            }
            reply
        });
        guard.finish();
        Ok(with_metadata(reply?, request.metadata()))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(&self, request: Request<EchoRequest>) -> Result<Response<ReplyStream>, Status> {
        let guard = CallGuard::new(&self.counters);
        let req = request.get_ref().clone();
        if req.count > MAX_COUNT {
            guard.finish();
            return Err(Status::invalid_argument(format!("count {} over {MAX_COUNT}", req.count)));
        }
        let first = match self.reply(&req, request.metadata(), 0) {
            Ok(first) => first,
            Err(status) => {
                guard.finish();
                return Err(status);
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            for seq in 0..u64::from(req.count) {
                delay(req.delay_ms).await;
                let reply = EchoReply { seq, ..first.clone() };
                if tx.send(Ok(reply)).await.is_err() {
                    return; // The caller went away: the guard counts a cancellation.
                }
            }
            guard.finish();
        });
        Ok(with_metadata(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)), request.metadata()))
    }

    async fn client_stream(&self, request: Request<Streaming<EchoRequest>>) -> Result<Response<EchoReply>, Status> {
        let guard = CallGuard::new(&self.counters);
        let metadata = request.metadata().clone();
        let mut stream = request.into_inner();
        let (mut messages, mut bytes) = (0u64, 0u64);
        while let Some(req) = stream.next().await {
            let req = req?;
            if req.fail_code != 0 {
                guard.finish();
                return Err(Status::new(Code::from(req.fail_code), req.fail_message));
            }
            messages += 1;
            bytes += req.payload.len() as u64;
        }
        guard.finish();
        let reply = EchoReply { instance: self.instance.clone(), messages, bytes, ..EchoReply::default() };
        Ok(with_metadata(reply, &metadata))
    }

    type BidiStream = ReplyStream;

    async fn bidi(&self, request: Request<Streaming<EchoRequest>>) -> Result<Response<ReplyStream>, Status> {
        let guard = CallGuard::new(&self.counters);
        let metadata = request.metadata().clone();
        let mut stream = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let service = EchoService {
            instance: self.instance.clone(),
            counters: self.counters.clone(),
            next: None,
            echo_metadata: self.echo_metadata,
            workers: None,
            slow: (0, 0),
            fail_percent: 0,
            request_log: None,
        };
        let md = metadata.clone();
        tokio::spawn(async move {
            let mut seq = 0;
            while let Some(req) = stream.next().await {
                let reply = req.and_then(|req| service.reply(&req, &md, seq));
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() {
                    return;
                }
                if failed {
                    break;
                }
                seq += 1;
            }
            guard.finish();
        });
        Ok(with_metadata(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)), &metadata))
    }

    async fn stats(&self, _: Request<StatsRequest>) -> Result<Response<StatsReply>, Status> {
        Ok(Response::new(StatsReply {
            calls: self.counters.calls.load(Ordering::Relaxed),
            cancelled: self.counters.cancelled.load(Ordering::Relaxed),
            instance: self.instance.clone(),
        }))
    }
}

pub(crate) async fn run(args: Args) -> Result<(), String> {
    let instance_id = args.register.instance_id();
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<EchoServer<EchoService>>().await;
    let next = match &args.next_addr {
        None => None,
        Some(addr) => {
            let mut endpoint = tonic::transport::Endpoint::from(addr.clone()).connect_timeout(Duration::from_secs(1));
            if let Some(authority) = &args.next_authority {
                let origin = format!("http://{authority}")
                    .parse()
                    .map_err(|e| format!("--next-authority (DEMO_NEXT_AUTHORITY) {authority:?}: {e}"))?;
                endpoint = endpoint.origin(origin);
            }
            Some(EchoClient::new(endpoint.connect_lazy()))
        }
    };
    let service = EchoService {
        instance: instance_id.to_string(),
        counters: Arc::default(),
        next,
        echo_metadata: args.echo_metadata,
        workers: args.max_concurrency.map(|n| Arc::new(tokio::sync::Semaphore::new(n as usize))),
        slow: (args.slow_percent, args.slow_ms),
        fail_percent: args.fail_percent,
        request_log: match &args.request_log {
            Some(path) => Some(Arc::new(parking_lot::Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("--request-log {}: {e}", path.display()))?,
            ))),
            None => None,
        },
    };
    let service = EchoServer::new(service)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let router = crate::serve::builder().add_service(health_service).add_service(service);
    crate::serve::serve("echo", args.listen, router, &args.register, instance_id).await
}
