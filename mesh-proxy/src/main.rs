//! `mesh-proxy`: parses its configuration, starts logging, runs the proxy until SIGTERM.

fn main() {
    let config: mesh_proxy::config::Args = mesh_registry::cli::parse_or_exit();
    let config = match config.into_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(mesh_registry::cli::EXIT_USAGE);
        }
    };
    mesh_registry::cli::init_logging("info");
    let runtime = mesh_registry::cli::runtime_or_exit(config.workers, "mesh-proxy");
    if let Err(error) = runtime.block_on(mesh_proxy::run(config)) {
        tracing::error!(%error, "mesh-proxy failed");
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}
