//! `meshctl token create|list|revoke`: join tokens, each bound to one service.

use std::time::Duration;

use etcd_client::Client;
use mesh_registry::tokens::{self, TokenError};
use mesh_registry::{Layout, ServiceName};
use serde::Serialize;

use crate::output::{Format, Table, print_json};

/// Token subcommands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum TokenCommand {
    /// Create a join token for a service; prints the token once (it is stored only as a hash).
    Create {
        /// The service the token may obtain an identity for, and no other.
        service: ServiceName,
        /// How long the token may be used.
        #[arg(long, default_value = "24h", value_parser = mesh_common::cli::duration)]
        ttl: Duration,
    },
    /// List tokens (ids, services, expiry; never secrets).
    List,
    /// Revoke a token by id: the CA refuses it from now on.
    Revoke {
        /// The token's id (the part after `mesh1.`).
        id: String,
    },
}

#[derive(Serialize)]
struct TokenView {
    id: String,
    service: String,
    created_at: String,
    expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

pub(crate) async fn run(
    client: &mut Client,
    layout: &Layout,
    command: TokenCommand,
    format: Format,
) -> Result<(), TokenError> {
    match command {
        TokenCommand::Create { service, ttl } => {
            let created = tokens::create(client, layout, &service, ttl).await?;
            match format {
                Format::Json => print_json(&TokenView {
                    id: created.id,
                    service: service.to_string(),
                    created_at: created.record.created_at,
                    expires_at: created.record.expires_at,
                    token: Some(created.token),
                }),
                Format::Table => {
                    println!("{}", created.token);
                    eprintln!("token {} for {service}, expires {}", created.id, created.record.expires_at);
                }
            }
        }
        TokenCommand::List => {
            let all = tokens::list(client, layout).await?;
            let views: Vec<TokenView> = all
                .into_iter()
                .map(|(id, r)| TokenView {
                    id,
                    service: r.service.to_string(),
                    created_at: r.created_at,
                    expires_at: r.expires_at,
                    token: None,
                })
                .collect();
            match format {
                Format::Json => print_json(&views),
                Format::Table => {
                    let mut table = Table::new(vec!["ID", "SERVICE", "CREATED", "EXPIRES"]);
                    for v in views {
                        table.row(vec![v.id, v.service, v.created_at, v.expires_at]);
                    }
                    print!("{}", table.render());
                }
            }
        }
        TokenCommand::Revoke { id } => {
            if tokens::revoke(client, layout, &id).await? {
                println!("revoked token {id}");
            } else {
                return Err(TokenError::Unknown);
            }
        }
    }
    Ok(())
}
