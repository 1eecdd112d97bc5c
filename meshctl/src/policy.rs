//! `meshctl policy ...`: authorization policies. Files are validated before anything is written,
//! so a malformed policy never reaches the proxies.

use std::path::PathBuf;

use etcd_client::Client;
use mesh_registry::authz::{DefaultMode, MeshDefault, Policy, PolicyError};
use mesh_registry::{Layout, ServiceName};

use crate::output::{Format, print_json};

/// Policy subcommands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum PolicyCommand {
    /// Check a policy file without applying it.
    Validate {
        /// The policy (JSON).
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Validate and apply a policy for a service; proxies follow it on the next call.
    Set {
        /// The service the policy protects.
        service: ServiceName,
        /// The policy (JSON).
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Show a service's policy.
    Get {
        /// The service.
        service: ServiceName,
    },
    /// Remove a service's policy (the mesh default applies again).
    Delete {
        /// The service.
        service: ServiceName,
    },
    /// Show or set the mesh-wide default for services without a policy.
    Default {
        /// `allow-authenticated` or `deny`; omit to show the current default.
        #[arg(value_parser = parse_mode)]
        mode: Option<DefaultMode>,
    },
}

fn parse_mode(s: &str) -> Result<DefaultMode, String> {
    match s {
        "allow-authenticated" => Ok(DefaultMode::AllowAuthenticated),
        "deny" => Ok(DefaultMode::Deny),
        _ => Err("use allow-authenticated or deny".into()),
    }
}

/// Why a policy command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PolicyCmdError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: PolicyError },
    #[error("no policy for {0}")]
    NotFound(ServiceName),
    #[error(transparent)]
    Etcd(#[from] etcd_client::Error),
}

fn load(file: &PathBuf) -> Result<(Policy, Vec<u8>), PolicyCmdError> {
    let bytes = std::fs::read(file).map_err(|source| PolicyCmdError::Read { path: file.clone(), source })?;
    let policy = Policy::parse(&bytes).map_err(|source| PolicyCmdError::Invalid { path: file.clone(), source })?;
    Ok((policy, bytes))
}

pub(crate) async fn run(
    client: &mut Client,
    layout: &Layout,
    command: PolicyCommand,
    format: Format,
) -> Result<(), PolicyCmdError> {
    match command {
        PolicyCommand::Validate { file } => {
            let (policy, _) = load(&file)?;
            println!("{}: valid ({} rule(s))", file.display(), policy.rules.len());
        }
        PolicyCommand::Set { service, file } => {
            let (policy, _) = load(&file)?;
            let value = serde_json::to_vec(&policy).unwrap_or_default();
            client.put(layout.authz_policy(&service), value, None).await?;
            println!("applied the policy for {service} ({} rule(s))", policy.rules.len());
        }
        PolicyCommand::Get { service } => {
            let resp = client.get(layout.authz_policy(&service), None).await?;
            let kv = resp.kvs().first().ok_or_else(|| PolicyCmdError::NotFound(service.clone()))?;
            let value: serde_json::Value = serde_json::from_slice(kv.value()).unwrap_or(serde_json::Value::Null);
            match format {
                Format::Json => print_json(&value),
                Format::Table => println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default()),
            }
        }
        PolicyCommand::Delete { service } => {
            let resp = client.delete(layout.authz_policy(&service), None).await?;
            if resp.deleted() == 0 {
                return Err(PolicyCmdError::NotFound(service));
            }
            println!("removed the policy for {service}; the mesh default applies");
        }
        PolicyCommand::Default { mode: Some(mode) } => {
            let value = serde_json::to_vec(&MeshDefault { default: mode }).unwrap_or_default();
            client.put(layout.authz_default(), value, None).await?;
            println!("mesh default for services without a policy: {}", mode_name(mode));
        }
        PolicyCommand::Default { mode: None } => {
            let resp = client.get(layout.authz_default(), None).await?;
            let mode = resp
                .kvs()
                .first()
                .and_then(|kv| serde_json::from_slice::<MeshDefault>(kv.value()).ok())
                .map_or(DefaultMode::default(), |d| d.default);
            println!("{}", mode_name(mode));
        }
    }
    Ok(())
}

fn mode_name(mode: DefaultMode) -> &'static str {
    match mode {
        DefaultMode::AllowAuthenticated => "allow-authenticated",
        DefaultMode::Deny => "deny",
    }
}
