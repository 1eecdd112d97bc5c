//! `mesh-demo hello`: calls a frontend once and prints who answered. A quick way to watch the
//! mesh balance calls across backend instances.

use std::time::Duration;

use mesh_proto::demo::v1::HelloRequest;
use mesh_proto::demo::v1::frontend_client::FrontendClient;
use tonic::transport::{Endpoint, Uri};

/// Hello flags.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The frontend to call (directly, or a proxy's outbound port with --authority frontend).
    #[arg(long, env = "DEMO_TARGET", default_value = "http://127.0.0.1:7001")]
    target: Uri,
    /// `:authority` to send.
    #[arg(long, env = "DEMO_AUTHORITY")]
    authority: Option<String>,
    /// Who to greet.
    #[arg(long, default_value = "mesh")]
    name: String,
}

pub(crate) async fn run(args: Args) -> Result<(), String> {
    let mut endpoint = Endpoint::from(args.target.clone()).timeout(Duration::from_secs(5));
    if let Some(authority) = &args.authority {
        endpoint = endpoint.origin(format!("http://{authority}").parse().map_err(|e| format!("--authority: {e}"))?);
    }
    let channel = endpoint.connect().await.map_err(|e| format!("cannot connect to {}: {e}", args.target))?;
    let reply = FrontendClient::new(channel)
        .hello(HelloRequest { name: args.name })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    println!("{} (frontend {}, backend {})", reply.message, reply.frontend_instance, reply.backend_instance);
    Ok(())
}
