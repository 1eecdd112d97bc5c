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
use mesh_common::cli::{duration, init_logging, parse_or_exit};
use mesh_proto::identity::v1::identity_server::IdentityServer;
use mesh_registry::cli::EtcdArgs;
use mesh_registry::identity::TrustDomain;

mod ca;
mod certify;
mod devcert;
mod rotate;

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
    Init(NewRootArgs),
    /// Serve the Certify API over TLS.
    Serve(Box<ServeArgs>),
    /// Rotate the root: add, then promote, then retire (see the README).
    #[command(subcommand)]
    Root(RootStep),
    /// Make a development CA and a serving certificate it signs, for the gateway's TLS listener
    /// (existing files are kept; the CA is the edge's own, not the mesh's root).
    DevCert(DevCertArgs),
}

/// `mesh-registry dev-cert` flags.
#[derive(clap::Args, Debug)]
struct DevCertArgs {
    /// Where the files go: dev-ca.crt (what clients trust), dev-ca.key, <file>.crt, <file>.key.
    #[arg(long)]
    out: PathBuf,
    /// The serving certificate's files' name.
    #[arg(long, default_value = "gateway")]
    file: String,
    /// A DNS name or IP address the certificate is for (repeat, or separate with commas).
    #[arg(long = "name", value_delimiter = ',', default_value = "localhost,127.0.0.1")]
    names: Vec<String>,
    /// How long the serving certificate is valid.
    #[arg(long, default_value = "365days", value_parser = duration, value_name = "DURATION")]
    lifetime: Duration,
    /// Sign the serving certificate again even if it exists (the CA is kept).
    #[arg(long)]
    renew: bool,
}

#[derive(Subcommand, Debug)]
enum RootStep {
    /// Step 1: create the next root and add it to the trust bundle.
    Add(NewRootArgs),
    /// Step 2: issue from the next root from now on (restart the CA afterwards so its own TLS
    /// certificate comes from the new root too).
    Promote {
        /// The CA directory.
        #[arg(long = "ca-dir", env = "MESH_CA_DIR")]
        ca_dir: PathBuf,
    },
    /// Step 3: trust only the current root.
    Retire {
        /// The CA directory.
        #[arg(long = "ca-dir", env = "MESH_CA_DIR")]
        ca_dir: PathBuf,
    },
}

/// Flags of the commands that create a root (`init`, `root add`).
#[derive(clap::Args, Debug)]
struct NewRootArgs {
    /// The CA directory.
    #[arg(long = "ca-dir", env = "MESH_CA_DIR")]
    ca_dir: PathBuf,
    /// The trust domain every identity belongs to.
    #[arg(long = "trust-domain", env = "MESH_TRUST_DOMAIN", default_value = mesh_registry::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: TrustDomain,
    /// How long the root is valid.
    #[arg(long = "root-lifetime", env = "MESH_ROOT_LIFETIME", default_value = "3650days", value_parser = duration, value_name = "DURATION")]
    root_lifetime: Duration,
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
        Command::Init(NewRootArgs { ca_dir, trust_domain, root_lifetime }) => {
            ca::init(&ca_dir, &trust_domain, root_lifetime)
                .map(|()| println!("created a root CA for {trust_domain} in {}", ca_dir.display()))
                .map_err(|e| e.to_string())
        }
        Command::Root(RootStep::Add(NewRootArgs { ca_dir, trust_domain, root_lifetime })) => {
            rotate::add(&ca_dir, &trust_domain, root_lifetime)
                .map(|()| {
                    println!("added a new root to the trust bundle; wait for every proxy to renew, then `root promote`")
                })
                .map_err(|e| e.to_string())
        }
        Command::Root(RootStep::Promote { ca_dir }) => rotate::promote(&ca_dir)
            .map(|()| {
                println!("the new root now issues; restart the CA, wait for every proxy to renew, then `root retire`")
            })
            .map_err(|e| e.to_string()),
        Command::Root(RootStep::Retire { ca_dir }) => rotate::retire(&ca_dir)
            .map(|()| println!("the trust bundle now holds only the current root"))
            .map_err(|e| e.to_string()),
        Command::DevCert(DevCertArgs { out, file, names, lifetime, renew }) => {
            devcert::dev_cert(&out, &file, &names, lifetime, renew).map(|outcome| {
                let ca = if outcome.created_ca { "created" } else { "kept" };
                let leaf = if outcome.signed { "signed" } else { "kept" };
                println!(
                    "{}/dev-ca.crt: {ca}; {}/{file}.crt for {}: {leaf}",
                    out.display(),
                    out.display(),
                    names.join(", ")
                );
            })
        }
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
    let ca = Arc::new(parking_lot::RwLock::new(Arc::new(ca)));
    tokio::spawn(reload_on_change(ca_dir.clone(), trust_domain.clone(), leaf_lifetime, ca.clone()));
    let certify =
        certify::Certify { ca: ca.clone(), etcd: client, layout: etcd.prefix.clone(), outcomes: Default::default() };
    let tls = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key));
    tracing::info!(%listen, %trust_domain, ?leaf_lifetime, "serving Certify");
    tonic::transport::Server::builder()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .max_concurrent_streams(Some(100))
        .http2_max_header_list_size(Some(16 * 1024))
        .timeout(Duration::from_secs(10))
        .add_service(IdentityServer::new(certify))
        .serve_with_shutdown(listen, mesh_common::cli::shutdown_signal())
        .await
        .map_err(|e| format!("serving on {listen}: {e}"))
}

/// Reloads the CA's files within a second of a change (root rotation steps).
async fn reload_on_change(
    dir: PathBuf,
    trust_domain: TrustDomain,
    leaf_lifetime: Duration,
    ca: Arc<parking_lot::RwLock<Arc<ca::Ca>>>,
) {
    let files = ca::CaFiles::in_dir(&dir);
    let stamp = || {
        [&files.root_cert, &files.root_key, &files.bundle].map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    };
    let mut last = stamp();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = stamp();
        if now == last {
            continue;
        }
        match ca::Ca::load(&dir, trust_domain.clone(), leaf_lifetime) {
            Ok(loaded) => {
                *ca.write() = Arc::new(loaded);
                last = now;
                tracing::info!(dir = %dir.display(), "reloaded the CA's root and trust bundle");
            }
            Err(error) => tracing::warn!(%error, "CA files changed but cannot be loaded; keeping the previous ones"),
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
