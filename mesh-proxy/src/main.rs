//! `mesh-proxy`: parses its configuration, starts logging, builds the proxy and serves until
//! SIGTERM or Ctrl-C.

use mesh_common::cli;

fn main() {
    let args: mesh_proxy::config::Args = cli::parse_or_exit();
    let config = match args.into_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(cli::EXIT_USAGE);
        }
    };
    cli::init_logging("info");
    let runtime = cli::runtime_or_exit(config.workers, "mesh-proxy");
    let result = runtime.block_on(async { mesh_proxy::build(config).await?.serve(cli::shutdown_signal()).await });
    if let Err(error) = result {
        tracing::error!(%error, "mesh-proxy failed");
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}
