//! `meshctl`, the operator's CLI: what is registered, where, and whether the registry is healthy.
//!
//! Exit codes: 0 success; 1 the command ran and found a problem (etcd unreachable, check
//! failed); 64 bad command line.

use clap::{Parser, Subcommand};
use mesh_common::cli::parse_or_exit;
use mesh_registry::ServiceName;
use mesh_registry::cli::EtcdArgs;

mod apply;
mod check;
mod endpoints;
mod gateway;
mod identity;
mod output;
mod policy;
mod probe;
mod services;
mod status;
mod token;

use output::Format;

/// Inspect and operate the mesh.
#[derive(Parser, Debug)]
#[command(name = "meshctl", version, about)]
struct Cli {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Output format.
    #[arg(long, short = 'o', env = "MESH_OUTPUT", value_enum, default_value = "table", global = true)]
    output: Format,
    /// Who makes a policy change, recorded in its history (default: the OS user and host).
    #[arg(long = "as", env = "MESH_OPERATOR", global = true)]
    operator: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List services and how many instances each has.
    Services,
    /// List one service's instances: address, labels, weight, lease TTL remaining.
    Endpoints {
        /// The service.
        service: ServiceName,
    },
    /// Check that etcd is reachable and the mesh prefix readable (and, given a trust bundle,
    /// that no root expires soon).
    Check {
        /// A trust bundle (the CA's bundle.pem) whose roots to check.
        #[arg(long = "ca-bundle", env = "MESH_IDENTITY_TRUST_BUNDLE")]
        ca_bundle: Option<std::path::PathBuf>,
        /// Warn about certificates expiring within this long.
        #[arg(long = "warn-within", default_value = "720h", value_parser = mesh_common::cli::duration)]
        warn_within: std::time::Duration,
    },
    /// Show a proxy's identity and certificate expiry (from its admin port).
    Identity {
        /// The proxy's admin address.
        #[arg(long, default_value = "127.0.0.1:4191")]
        admin: String,
        /// Warn (and exit 1) when the certificate expires within this long.
        #[arg(long = "warn-within", default_value = "1h", value_parser = mesh_common::cli::duration)]
        warn_within: std::time::Duration,
    },
    /// Create, list and revoke join tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Validate, apply and inspect authorization policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Validate, apply and inspect the routes an ingress gateway service takes from etcd.
    #[command(subcommand)]
    Gateway(gateway::GatewayCommand),
    /// Check a service policy file (timeouts, retries, subsets, routes) without applying it.
    /// Needs no etcd.
    Validate {
        /// The document (JSON, or YAML if named .yaml/.yml; docs/policy.md).
        #[arg(long, short = 'f')]
        file: std::path::PathBuf,
    },
    /// Check and store a service policy as a new version; callers' proxies follow it within a
    /// second.
    Apply {
        /// The destination service the policy is for.
        service: ServiceName,
        /// The document (JSON, or YAML if named .yaml/.yml).
        #[arg(long, short = 'f')]
        file: std::path::PathBuf,
        /// Store it even if a split or mirror names a subset that has no instance yet.
        #[arg(long = "allow-empty-subsets")]
        allow_empty_subsets: bool,
    },
    /// Show what applying a file would change in a service's live policy (exit 1 if anything).
    Diff {
        /// The destination service.
        service: ServiceName,
        /// The document (JSON, or YAML if named .yaml/.yml).
        #[arg(long, short = 'f')]
        file: std::path::PathBuf,
    },
    /// List a service policy's versions (the last 50): who applied each, and when.
    History {
        /// The service.
        service: ServiceName,
    },
    /// Make an earlier version's document live again, as a new version.
    Rollback {
        /// The service.
        service: ServiceName,
        /// The version to restore (default: the one before the live one).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Which policy version each proxy runs, per service: a rollout's convergence.
    Status,
    /// Show a service's policy.
    Show {
        /// The service.
        service: ServiceName,
    },
    /// Remove a service's policy (the built-in defaults apply again).
    Remove {
        /// The service.
        service: ServiceName,
    },
    /// Probe an endpoint (for container healthchecks): `http://host:port/path` must answer 2xx,
    /// `tcp://host:port` must accept a connection. Needs no etcd.
    Probe {
        /// `http://host:port/path` or `tcp://host:port`.
        target: String,
        /// Give up after this long.
        #[arg(long, default_value = "2s", value_parser = mesh_common::cli::duration)]
        timeout: std::time::Duration,
    },
}

/// A failure that ends the command with exit code 1.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(
        "cannot reach etcd at {endpoints}: {source}\nhint: is etcd running there? Point --etcd-endpoints (or MESH_ETCD_ENDPOINTS) at its client URL"
    )]
    Unreachable { endpoints: String, source: etcd_client::Error },
    #[error("{0}")]
    Connect(#[from] mesh_registry::etcd::ConnectError),
    #[error("check failed")]
    CheckFailed,
    #[error("{0}")]
    Token(#[from] mesh_registry::tokens::TokenError),
    #[error("{0}")]
    Policy(#[from] policy::PolicyCmdError),
    #[error("{0}")]
    Apply(#[from] apply::ApplyError),
    #[error("{0}")]
    Identity(#[from] identity::IdentityCmdError),
    #[error("{0}")]
    Probe(#[from] probe::ProbeError),
    #[error("{0}")]
    Gateway(#[from] gateway::GatewayCmdError),
}

async fn show_identity(admin: &str, warn_within: std::time::Duration, format: Format) -> Result<(), Error> {
    let id = identity::fetch(admin).await?;
    if format == Format::Json {
        output::print_json(&id);
    } else if !id.mtls {
        println!("proxy at {admin}: no identity (mTLS off)");
    } else {
        let left = id.expires_in_seconds.unwrap_or(0);
        println!(
            "proxy at {admin}: {} (certificate expires in {})",
            id.identity.as_deref().unwrap_or("?"),
            humantime::format_duration(std::time::Duration::from_secs(u64::try_from(left.max(0)).unwrap_or(0)))
        );
    }
    let left = id.expires_in_seconds.unwrap_or(i64::MAX);
    if id.mtls && left < i64::try_from(warn_within.as_secs()).unwrap_or(i64::MAX) {
        eprintln!(
            "WARN certificate expires within {}: is the proxy's CA reachable?",
            humantime::format_duration(warn_within)
        );
        return Err(Error::CheckFailed);
    }
    Ok(())
}

fn main() {
    let cli: Cli = parse_or_exit();
    mesh_common::cli::init_logging("error");
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(error) = runtime.block_on(run(cli)) {
        if !matches!(error, Error::CheckFailed | Error::Apply(apply::ApplyError::Differs)) {
            eprintln!("error: {error}");
        }
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    // A probe and a validation need no etcd.
    match &cli.command {
        Command::Probe { target, timeout } => return Ok(probe::run(target, *timeout).await?),
        Command::Validate { file } => return Ok(apply::validate(file)?),
        Command::Gateway(command) if !command.needs_etcd() => return Ok(gateway::validate(command)?),
        _ => {}
    }
    let config = cli.etcd.config();
    let mut client = config.connect().await?;
    let layout = &cli.etcd.prefix;
    let unreachable = |source| Error::Unreachable { endpoints: config.endpoints_display(), source };
    let by = cli.operator.clone().unwrap_or_else(mesh_registry::versions::local_user);
    match cli.command {
        Command::Services => services::run(&mut client, layout, cli.output).await.map_err(unreachable),
        Command::Endpoints { service } => {
            endpoints::run(&mut client, layout, &service, cli.output).await.map_err(unreachable)
        }
        Command::Check { ca_bundle, warn_within } => {
            check::run(&mut client, &config, layout, cli.output, ca_bundle.as_deref(), warn_within).await
        }
        Command::Identity { admin, warn_within } => show_identity(&admin, warn_within, cli.output).await,
        Command::Token(command) => Ok(token::run(&mut client, layout, command, cli.output).await?),
        Command::Policy(command) => Ok(policy::run(&mut client, layout, command, cli.output).await?),
        Command::Gateway(command) => Ok(gateway::run(&mut client, layout, command, cli.output).await?),
        Command::Apply { service, file, allow_empty_subsets } => {
            Ok(apply::apply(&mut client, layout, &service, &file, &by, allow_empty_subsets).await?)
        }
        Command::Diff { service, file } => Ok(apply::diff(&mut client, layout, &service, &file).await?),
        Command::History { service } => Ok(apply::history(&mut client, layout, &service, cli.output).await?),
        Command::Rollback { service, to } => Ok(apply::rollback(&mut client, layout, &service, to, &by).await?),
        Command::Status => status::run(&mut client, layout, cli.output).await.map_err(unreachable),
        Command::Show { service } => Ok(apply::show(&mut client, layout, &service, cli.output).await?),
        Command::Remove { service } => Ok(apply::remove(&mut client, layout, &service, &by).await?),
        Command::Probe { .. } | Command::Validate { .. } => unreachable!("handled before connecting"),
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
