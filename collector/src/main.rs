//! `mesh-collector`: parses its configuration, starts logging, runs until SIGTERM.

fn main() {
    let config: mesh_collector::config::Config = mesh_registry::cli::parse_or_exit();
    if let Err(error) = config.validate() {
        eprintln!("error: {error}");
        std::process::exit(mesh_registry::cli::EXIT_USAGE);
    }
    mesh_registry::cli::init_logging("info");
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(error) = runtime.block_on(mesh_collector::run(config)) {
        tracing::error!(%error, "mesh-collector failed");
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}
