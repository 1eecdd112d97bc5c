//! The backend role: answers `Greet` and says which instance answered.

use std::net::SocketAddr;

use mesh_proto::demo::v1::backend_server::{Backend, BackendServer};
use mesh_proto::demo::v1::{GreetReply, GreetRequest};
use tonic::{Request, Response, Status};

use crate::registration::RegisterArgs;

/// Backend flags.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Address to serve h2c on.
    #[arg(long, env = "DEMO_LISTEN_ADDR", default_value = "127.0.0.1:7002")]
    listen: SocketAddr,
    #[command(flatten)]
    register: RegisterArgs,
}

struct BackendService {
    instance: String,
}

#[tonic::async_trait]
impl Backend for BackendService {
    async fn greet(&self, request: Request<GreetRequest>) -> Result<Response<GreetReply>, Status> {
        let name = request.into_inner().name;
        if name.len() > 256 {
            return Err(Status::invalid_argument("name is longer than 256 bytes"));
        }
        Ok(Response::new(GreetReply { greeting: format!("hello, {name}"), instance: self.instance.clone() }))
    }
}

pub(crate) async fn run(args: Args) -> Result<(), String> {
    let instance_id = args.register.instance_id();
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<BackendServer<BackendService>>().await;
    let service = BackendServer::new(BackendService { instance: instance_id.to_string() });
    let router = crate::serve::builder().add_service(health_service).add_service(service);
    crate::serve::serve("backend", args.listen, router, &args.register, instance_id).await
}
