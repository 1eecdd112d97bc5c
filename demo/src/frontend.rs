//! The frontend role: each `Hello` calls a backend's `Greet`.

use std::net::SocketAddr;
use std::time::Duration;

use mesh_proto::demo::v1::backend_client::BackendClient;
use mesh_proto::demo::v1::frontend_server::{Frontend, FrontendServer};
use mesh_proto::demo::v1::{GreetRequest, HelloReply, HelloRequest};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};

use crate::registration::RegisterArgs;

/// Frontend flags.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Address to serve h2c on.
    #[arg(long, env = "DEMO_LISTEN_ADDR", default_value = "127.0.0.1:7001")]
    listen: SocketAddr,
    /// Where to call the backend: the backend itself, or the local proxy's outbound port.
    #[arg(long = "backend-addr", env = "DEMO_BACKEND_ADDR", default_value = "http://127.0.0.1:7002")]
    backend_addr: Uri,
    /// `:authority` to send to the backend address; through the mesh this names the service.
    #[arg(long = "backend-authority", env = "DEMO_BACKEND_AUTHORITY")]
    backend_authority: Option<String>,
    /// Deadline for each backend call.
    #[arg(long = "backend-timeout", env = "DEMO_BACKEND_TIMEOUT", default_value = "2s", value_parser = mesh_common::cli::duration)]
    backend_timeout: Duration,
    #[command(flatten)]
    register: RegisterArgs,
}

struct FrontendService {
    instance: String,
    backend: BackendClient<Channel>,
}

#[tonic::async_trait]
impl Frontend for FrontendService {
    async fn hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let started = std::time::Instant::now();
        let (metadata, _, hello) = request.into_parts();
        let call = crate::propagate::propagate(&metadata, started, Request::new(GreetRequest { name: hello.name }));
        let reply = self
            .backend
            .clone()
            .greet(call)
            .await
            .map_err(|s| Status::new(s.code(), format!("backend: {}", s.message())))?
            .into_inner();
        Ok(Response::new(HelloReply {
            message: reply.greeting,
            frontend_instance: self.instance.clone(),
            backend_instance: reply.instance,
        }))
    }
}

pub(crate) async fn run(args: Args) -> Result<(), String> {
    let instance_id = args.register.instance_id();
    let mut endpoint =
        Endpoint::from(args.backend_addr.clone()).connect_timeout(Duration::from_secs(1)).timeout(args.backend_timeout);
    if let Some(authority) = &args.backend_authority {
        let origin: Uri = format!("http://{authority}")
            .parse()
            .map_err(|e| format!("--backend-authority (DEMO_BACKEND_AUTHORITY) {authority:?}: {e}"))?;
        endpoint = endpoint.origin(origin);
    }
    let backend = BackendClient::new(endpoint.connect_lazy());
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<FrontendServer<FrontendService>>().await;
    let service = FrontendServer::new(FrontendService { instance: instance_id.to_string(), backend });
    let router = crate::serve::builder().add_service(health_service).add_service(service);
    crate::serve::serve("frontend", args.listen, router, &args.register, instance_id).await
}
