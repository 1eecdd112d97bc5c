//! `mesh-demo`: the demo application the mesh carries, one binary with a role per subcommand.
//!
//! - `mesh-demo backend`: serves `mesh.demo.v1.Backend`.
//! - `mesh-demo frontend`: serves `mesh.demo.v1.Frontend`; each call calls the backend.
//! - `mesh-demo echo`: serves `mesh.demo.v1.Echo`, every call shape, for tests and benchmarks.
//! - `mesh-demo load`: the load generator for the benchmark (closed or open loop, HdrHistogram).
//! - `mesh-demo hello`: calls a frontend once and prints which instances answered.
//!
//! Both serve plaintext h2c and `grpc.health.v1`, and know nothing about the mesh: they take
//! their listen address and the address to call from flags or `DEMO_*` variables. With
//! `--register` a role registers itself in etcd through `mesh-registry` (before the proxy does
//! that for it), which exercises the registry end to end.

use clap::{Parser, Subcommand};
use mesh_common::cli::parse_or_exit;

mod backend;
mod echo;
mod frontend;
mod hello;
mod load;
mod propagate;
mod registration;
mod serve;

/// The mesh's demo application.
#[derive(Parser, Debug)]
#[command(name = "mesh-demo", version, about)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Serve mesh.demo.v1.Backend.
    Backend(backend::Args),
    /// Serve mesh.demo.v1.Frontend, calling the backend for each request.
    Frontend(frontend::Args),
    /// Serve mesh.demo.v1.Echo, the test and benchmark service.
    Echo(echo::Args),
    /// Generate load: Echo/Unary calls, closed or open loop, with latency percentiles.
    Load(load::Args),
    /// Call a frontend once and print who answered.
    Hello(hello::Args),
}

fn main() {
    let cli: Cli = parse_or_exit();
    mesh_common::cli::init_logging("info");
    let runtime = mesh_common::cli::runtime_or_exit(2, "mesh-demo");
    let result = runtime.block_on(async {
        match cli.role {
            Role::Backend(args) => backend::run(args).await,
            Role::Frontend(args) => frontend::run(args).await,
            Role::Echo(args) => echo::run(args).await,
            Role::Load(args) => load::run(args).await,
            Role::Hello(args) => hello::run(args).await,
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
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
