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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers)
        .thread_name("mesh-proxy")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(error) = runtime.block_on(mesh_proxy::run(config)) {
        tracing::error!(%error, "mesh-proxy failed");
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}
