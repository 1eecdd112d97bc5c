//! `mesh-collector`: parses its configuration, starts logging, runs until SIGTERM.

fn main() {
    let config: mesh_collector::config::Config = mesh_common::cli::parse_or_exit();
    if let Err(error) = config.validate() {
        eprintln!("error: {error}");
        std::process::exit(mesh_common::cli::EXIT_USAGE);
    }
    mesh_common::cli::init_logging("info");
    let runtime = mesh_common::cli::runtime_or_exit(2, "mesh-collector");
    if let Err(error) = runtime.block_on(mesh_collector::run(config)) {
        tracing::error!(%error, "mesh-collector failed");
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}
