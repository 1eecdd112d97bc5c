//! `mesh-demo hello`: calls a frontend and prints who answered. A quick way to watch the mesh
//! balance calls across backend instances; with `--every`, the demo's traffic generator; with
//! `--count`, a check: that many calls, a summary of who answered, and a failure exit status if
//! any call failed.

use std::path::PathBuf;
use std::time::Duration;

use mesh_proto::demo::v1::HelloRequest;
use mesh_proto::demo::v1::frontend_client::FrontendClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Uri};

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
    #[arg(long, env = "DEMO_EVERY", value_parser = mesh_common::cli::duration)]
    every: Option<Duration>,
    /// Make this many calls (one connection, `--every` apart, back to back without it), print
    /// how many failed and which backend instances answered, and exit non-zero if any failed.
    #[arg(long, env = "DEMO_COUNT")]
    count: Option<u32>,
    /// Print only the summary of a `--count` run, not every reply.
    #[arg(long, default_value_t = false)]
    quiet: bool,
    /// For an `https://` target (the ingress gateway): trust this CA certificate (PEM) instead
    /// of none.
    #[arg(long, env = "DEMO_CA_FILE")]
    ca_file: Option<PathBuf>,
}

pub(crate) async fn run(args: Args) -> Result<(), String> {
    let mut endpoint = Endpoint::from(args.target.clone()).timeout(Duration::from_secs(5));
    if let Some(authority) = &args.authority {
        endpoint = endpoint.origin(format!("http://{authority}").parse().map_err(|e| format!("--authority: {e}"))?);
    }
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
    }
    if let Some(count) = args.count {
        let channel = endpoint.connect().await.map_err(|e| format!("cannot connect to {}: {e}", args.target))?;
        return check(&mut FrontendClient::new(channel), &args, count).await;
    }
    let Some(every) = args.every else {
        let channel = endpoint.connect().await.map_err(|e| format!("cannot connect to {}: {e}", args.target))?;
        return hello(&mut FrontendClient::new(channel), &args.name).await;
    };
    let mut client = FrontendClient::new(endpoint.connect_lazy());
    let mut tick = tokio::time::interval(every);
    let mut stop = std::pin::pin!(mesh_common::cli::shutdown_signal());
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
    let reply = call(client, name).await?;
    println!("{} (frontend {}, backend {})", reply.message, reply.frontend_instance, reply.backend_instance);
    Ok(())
}

async fn call(
    client: &mut FrontendClient<tonic::transport::Channel>,
    name: &str,
) -> Result<mesh_proto::demo::v1::HelloReply, String> {
    let reply = client.hello(HelloRequest { name: name.to_string() }).await;
    Ok(reply.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?.into_inner())
}

/// `--count`: `count` calls, then one summary line: `calls=N failed=F backends=backend-1:n,...`.
async fn check(client: &mut FrontendClient<tonic::transport::Channel>, args: &Args, count: u32) -> Result<(), String> {
    let mut backends = std::collections::BTreeMap::<String, u32>::new();
    let mut failed = 0u32;
    for i in 0..count {
        if i > 0
            && let Some(every) = args.every
        {
            tokio::time::sleep(every).await;
        }
        match call(client, &args.name).await {
            Ok(reply) => {
                if !args.quiet {
                    println!(
                        "{} (frontend {}, backend {})",
                        reply.message, reply.frontend_instance, reply.backend_instance
                    );
                }
                *backends.entry(reply.backend_instance).or_default() += 1;
            }
            Err(error) => {
                eprintln!("call {i}: {error}");
                failed += 1;
            }
        }
    }
    let answered: Vec<String> = backends.iter().map(|(b, n)| format!("{b}:{n}")).collect();
    println!("calls={count} failed={failed} backends={}", answered.join(","));
    if failed > 0 { Err(format!("{failed} of {count} calls failed")) } else { Ok(()) }
}
