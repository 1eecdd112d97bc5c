//! `mesh-demo hello`: calls a frontend and prints who answered. A quick way to watch the mesh
//! balance calls across backend instances; with `--every`, the demo's traffic generator.

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
    /// Call again at this interval until stopped (failures are printed, not fatal).
    #[arg(long, env = "DEMO_EVERY", value_parser = mesh_registry::cli::duration)]
    every: Option<Duration>,
}

pub(crate) async fn run(args: Args) -> Result<(), String> {
    let mut endpoint = Endpoint::from(args.target.clone()).timeout(Duration::from_secs(5));
    if let Some(authority) = &args.authority {
        endpoint = endpoint.origin(format!("http://{authority}").parse().map_err(|e| format!("--authority: {e}"))?);
    }
    let Some(every) = args.every else {
        let channel = endpoint.connect().await.map_err(|e| format!("cannot connect to {}: {e}", args.target))?;
        return hello(&mut FrontendClient::new(channel), &args.name).await;
    };
    let mut client = FrontendClient::new(endpoint.connect_lazy());
    let mut tick = tokio::time::interval(every);
    let mut stop = std::pin::pin!(mesh_registry::cli::shutdown_signal());
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(error) = hello(&mut client, &args.name).await {
                    eprintln!("{error}");
                }
            }
            _ = &mut stop => return Ok(()),
        }
    }
}

async fn hello(client: &mut FrontendClient<tonic::transport::Channel>, name: &str) -> Result<(), String> {
    let reply = client
        .hello(HelloRequest { name: name.to_string() })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    println!("{} (frontend {}, backend {})", reply.message, reply.frontend_instance, reply.backend_instance);
    Ok(())
}
