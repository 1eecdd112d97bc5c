//! `mesh-registry`, the mesh's control plane: the certificate authority that issues and rotates
//! workload identities (and, next, the policies proxies watch in etcd).
//!
//! - `mesh-registry init --ca-dir DIR`: creates a root CA (`root.pem`, `root.key.pem`, `bundle.pem`).
//! - `mesh-registry serve --ca-dir DIR`: serves `mesh.identity.v1.Identity/Certify` over TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mesh_proto::identity::v1::identity_server::IdentityServer;
use mesh_registry::cli::{EtcdArgs, duration, init_logging, parse_or_exit};
use mesh_registry::identity::TrustDomain;

mod ca;
mod certify;

/// The mesh's control plane.
#[derive(Parser, Debug)]
#[command(name = "mesh-registry", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new root CA in --ca-dir (refuses to overwrite one).
    Init {
        /// Where the CA's files go.
        #[arg(long = "ca-dir", env = "MESH_CA_DIR")]
        ca_dir: PathBuf,
        /// The trust domain every identity belongs to.
        #[arg(long = "trust-domain", env = "MESH_TRUST_DOMAIN", default_value = mesh_registry::identity::DEFAULT_TRUST_DOMAIN)]
        trust_domain: TrustDomain,
        /// How long the root is valid.
        #[arg(long = "root-lifetime", env = "MESH_ROOT_LIFETIME", default_value = "3650days", value_parser = duration, value_name = "DURATION")]
        root_lifetime: Duration,
    },
    /// Serve the Certify API over TLS.
    Serve(Box<ServeArgs>),
}

/// `mesh-registry serve` flags.
#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// The CA directory (`root.pem`, `root.key.pem`, `bundle.pem`).
    #[arg(long = "ca-dir", env = "MESH_CA_DIR")]
    ca_dir: PathBuf,
    /// The trust domain.
    #[arg(long = "trust-domain", env = "MESH_TRUST_DOMAIN", default_value = mesh_registry::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: TrustDomain,
    /// Where to serve Certify.
    #[arg(long, env = "MESH_CA_LISTEN_ADDR", default_value = "0.0.0.0:4150")]
    listen: SocketAddr,
    /// Names (DNS or IP) the CA's TLS certificate is valid for.
    #[arg(
        long = "server-names",
        env = "MESH_CA_SERVER_NAMES",
        value_delimiter = ',',
        default_value = "localhost,mesh-registry,127.0.0.1"
    )]
    server_names: Vec<String>,
    /// Lifetime of issued leaf certificates.
    #[arg(long = "leaf-lifetime", env = "MESH_LEAF_LIFETIME", default_value = "24h", value_parser = duration, value_name = "DURATION")]
    leaf_lifetime: Duration,
    #[command(flatten)]
    etcd: EtcdArgs,
}

fn main() {
    let cli: Cli = parse_or_exit();
    init_logging("info");
    let result = match cli.command {
        Command::Init { ca_dir, trust_domain, root_lifetime } => ca::init(&ca_dir, &trust_domain, root_lifetime)
            .map(|()| println!("created a root CA for {trust_domain} in {}", ca_dir.display()))
            .map_err(|e| e.to_string()),
        Command::Serve(args) => {
            match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(rt) => rt.block_on(serve(*args)),
                Err(e) => Err(format!("cannot start the runtime: {e}")),
            }
        }
    };
    if let Err(error) = result {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let ServeArgs { ca_dir, trust_domain, listen, server_names, leaf_lifetime, etcd } = args;
    let ca = ca::Ca::load(&ca_dir, trust_domain.clone(), leaf_lifetime).map_err(|e| e.to_string())?;
    let (cert, key) = ca.serving_identity(&server_names).map_err(|e| e.to_string())?;
    let client = etcd.config().connect().await.map_err(|e| e.to_string())?;
    let certify =
        certify::Certify { ca: Arc::new(ca), etcd: client, layout: etcd.prefix.clone(), outcomes: Default::default() };
    let tls = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key));
    tracing::info!(%listen, %trust_domain, ?leaf_lifetime, "serving Certify");
    tonic::transport::Server::builder()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .max_concurrent_streams(Some(100))
        .http2_max_header_list_size(Some(16 * 1024))
        .timeout(Duration::from_secs(10))
        .add_service(IdentityServer::new(certify))
        .serve_with_shutdown(listen, shutdown_signal())
        .await
        .map_err(|e| format!("serving on {listen}: {e}"))
}

async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
