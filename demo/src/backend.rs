//! The backend role: answers `Greet` and says which instance answered; with `--store-addr`, each
//! greeting is first recorded in a store service (an echo server), trace context passed on.

use std::net::SocketAddr;
use std::time::Duration;

use mesh_proto::demo::v1::backend_server::{Backend, BackendServer};
use mesh_proto::demo::v1::echo_client::EchoClient;
use mesh_proto::demo::v1::{EchoRequest, GreetReply, GreetRequest};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};

use crate::registration::RegisterArgs;

/// Backend flags.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Address to serve h2c on.
    #[arg(long, env = "DEMO_LISTEN_ADDR", default_value = "127.0.0.1:7002")]
    listen: SocketAddr,
    /// Record each greeting in this store (an echo service): the store itself, or the local
    /// proxy's outbound port.
    #[arg(long = "store-addr", env = "DEMO_STORE_ADDR")]
    store_addr: Option<Uri>,
    /// `:authority` for the store; through the mesh this names the service.
    #[arg(long = "store-authority", env = "DEMO_STORE_AUTHORITY", requires = "store_addr")]
    store_authority: Option<String>,
    #[command(flatten)]
    register: RegisterArgs,
}

struct BackendService {
    instance: String,
    store: Option<EchoClient<Channel>>,
}

#[tonic::async_trait]
impl Backend for BackendService {
    async fn greet(&self, request: Request<GreetRequest>) -> Result<Response<GreetReply>, Status> {
        let started = std::time::Instant::now();
        let (metadata, _, greet) = request.into_parts();
        let name = greet.name;
        if name.len() > 256 {
            return Err(Status::invalid_argument("name is longer than 256 bytes"));
        }
        if let Some(store) = &self.store {
            let record = EchoRequest { payload: name.clone().into_bytes(), ..Default::default() };
            store
                .clone()
                .unary(crate::propagate::propagate(&metadata, started, Request::new(record)))
                .await
                .map_err(|s| Status::new(s.code(), format!("store: {}", s.message())))?;
        }
        Ok(Response::new(GreetReply { greeting: format!("hello, {name}"), instance: self.instance.clone() }))
    }
}

pub(crate) async fn run(args: Args) -> Result<(), String> {
    let instance_id = args.register.instance_id();
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<BackendServer<BackendService>>().await;
    let store = match &args.store_addr {
        None => None,
        Some(addr) => {
            let mut endpoint = Endpoint::from(addr.clone()).connect_timeout(Duration::from_secs(1));
            if let Some(authority) = &args.store_authority {
                let origin: Uri = format!("http://{authority}")
                    .parse()
                    .map_err(|e| format!("--store-authority (DEMO_STORE_AUTHORITY) {authority:?}: {e}"))?;
                endpoint = endpoint.origin(origin);
            }
            Some(EchoClient::new(endpoint.connect_lazy()))
        }
    };
    let service = BackendServer::new(BackendService { instance: instance_id.to_string(), store });
    let router = crate::serve::builder().add_service(health_service).add_service(service);
    crate::serve::serve("backend", args.listen, router, &args.register, instance_id).await
}
