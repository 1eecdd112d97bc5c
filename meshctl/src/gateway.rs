//! `meshctl gateway ...`: the routes an ingress gateway service takes from etcd, after those of
//! each gateway's own file (`<prefix>/v1/gateways/<service>`). A file is checked before anything
//! is written (a YAML error names its line), so a document the gateways cannot use never
//! reaches them; the gateways check it again with their file's routes (names unique across both).

use std::path::PathBuf;

use etcd_client::Client;
use mesh_registry::gateway::{GatewayDocument, GatewayError, GatewayRoute};
use mesh_registry::{Layout, ServiceName};

use crate::output::{Format, print_json};

/// Gateway subcommands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum GatewayCommand {
    /// Check a routes file (`routes:` only) without storing it. Needs no etcd.
    Validate {
        /// The routes (YAML or JSON).
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Check and store the routes of a gateway service; its gateways follow within a second.
    Apply {
        /// The gateway's service (its `--service`, e.g. api-gateway).
        service: ServiceName,
        /// The routes (YAML or JSON).
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Show the routes stored for a gateway service.
    Show {
        /// The gateway's service.
        service: ServiceName,
    },
    /// Remove the routes stored for a gateway service (its files' routes stay).
    Remove {
        /// The gateway's service.
        service: ServiceName,
    },
}

impl GatewayCommand {
    /// Whether the command needs etcd.
    pub(crate) fn needs_etcd(&self) -> bool {
        !matches!(self, Self::Validate { .. })
    }
}

/// Why a gateway command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayCmdError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: GatewayError },
    #[error("no routes stored for gateway service {0}")]
    NotFound(ServiceName),
    #[error(transparent)]
    Etcd(#[from] etcd_client::Error),
}

fn load(file: &PathBuf) -> Result<(Vec<GatewayRoute>, Vec<u8>), GatewayCmdError> {
    let bytes = std::fs::read(file).map_err(|source| GatewayCmdError::Read { path: file.clone(), source })?;
    let routes = GatewayDocument::parse_routes(&bytes)
        .map_err(|source| GatewayCmdError::Invalid { path: file.clone(), source })?;
    Ok((routes, bytes))
}

/// Runs a command that needs no etcd.
pub(crate) fn validate(command: &GatewayCommand) -> Result<(), GatewayCmdError> {
    if let GatewayCommand::Validate { file } = command {
        let (routes, _) = load(file)?;
        println!("{}: valid ({} route(s))", file.display(), routes.len());
    }
    Ok(())
}

pub(crate) async fn run(
    client: &mut Client,
    layout: &Layout,
    command: GatewayCommand,
    format: Format,
) -> Result<(), GatewayCmdError> {
    match command {
        GatewayCommand::Validate { .. } => validate(&command)?,
        GatewayCommand::Apply { service, file } => {
            let (routes, bytes) = load(&file)?;
            // Stored as written (comments and all): what `show` prints and what the gateways parse.
            client.put(layout.gateway(&service), bytes, None).await?;
            let names: Vec<&str> = routes.iter().map(|r| &*r.name).collect();
            println!("applied {} route(s) for gateway service {service}: {}", routes.len(), names.join(", "));
        }
        GatewayCommand::Show { service } => {
            let resp = client.get(layout.gateway(&service), None).await?;
            let kv = resp.kvs().first().ok_or_else(|| GatewayCmdError::NotFound(service.clone()))?;
            match format {
                Format::Json => {
                    let routes = GatewayDocument::parse_routes(kv.value()).unwrap_or_default();
                    print_json(
                        &serde_json::json!({ "service": service.as_str(), "revision": kv.mod_revision(), "routes": routes }),
                    );
                }
                Format::Table => print!("{}", String::from_utf8_lossy(kv.value())),
            }
        }
        GatewayCommand::Remove { service } => {
            let resp = client.delete(layout.gateway(&service), None).await?;
            if resp.deleted() == 0 {
                return Err(GatewayCmdError::NotFound(service));
            }
            println!("removed the routes of gateway service {service}; its files' routes stay");
        }
    }
    Ok(())
}
