//! Command-line conventions shared by every mesh binary: every setting is a flag and a
//! `MESH_<NAME>` environment variable, a bad setting fails at start with one line naming it and
//! exit code 64; logging, the runtime, listeners and shutdown.

use std::time::Duration;

use clap::Parser;

/// Exit code for a bad setting (`EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;

/// Parses the command line; on a bad setting prints one line naming it (the flag, and its
/// environment variable) and exits 64.
pub fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(t) => t,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("{}", one_line(&e, &T::command()));
            std::process::exit(EXIT_USAGE)
        }
    }
}

/// The first line of a clap error, with the environment variable of the setting it names.
pub fn one_line(error: &clap::Error, command: &clap::Command) -> String {
    let rendered = error.render().to_string();
    let mut lines = rendered.lines();
    let mut line = lines.next().unwrap_or("error: bad command line").to_string();
    // "the following required arguments were not provided:" lists them on the lines below.
    if line.ends_with(':') {
        let listed: Vec<&str> = lines.map(str::trim).take_while(|l| !l.is_empty()).collect();
        line = format!("{line} {}", listed.join(", "));
    }
    let Some(clap::error::ContextValue::String(arg)) = error.get(clap::error::ContextKind::InvalidArg) else {
        return line;
    };
    let long = arg.split_whitespace().next().unwrap_or("").trim_start_matches('-');
    match env_of(command, long) {
        Some(env) => line.replacen(&format!("'{arg}'"), &format!("'{arg}' ({env})"), 1),
        None => line,
    }
}

/// The environment variable of the flag `--long`, in `command` or its subcommands.
fn env_of(command: &clap::Command, long: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .or_else(|| command.get_subcommands().find_map(|sub| env_of(sub, long)))
}

/// A clap value parser for a number within `range`, whose error names the range.
pub fn within<T>(
    range: std::ops::RangeInclusive<T>,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    move |s: &str| {
        let v: T = s.trim().parse().map_err(|e| format!("{e}"))?;
        if range.contains(&v) { Ok(v) } else { Err(format!("must be between {} and {}", range.start(), range.end())) }
    }
}

/// A clap value parser for a duration of at least `min`.
pub fn duration_at_least(min: Duration) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let d = duration(s)?;
        if d >= min { Ok(d) } else { Err(format!("must be at least {}", humantime::format_duration(min))) }
    }
}

/// Starts logging to stderr: `MESH_LOG` is the filter (default `default_filter`),
/// `MESH_LOG_FORMAT` is `text` (default) or `json`. Colours only on a terminal.
pub fn init_logging(default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match std::env::var("MESH_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().init(),
        Ok("text") | Err(_) => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        Ok(other) => {
            eprintln!("error: invalid value {other:?} for MESH_LOG_FORMAT: use text or json");
            std::process::exit(EXIT_USAGE)
        }
    }
}

/// A tokio runtime with `workers` threads named `name`; if it cannot start, says so and exits 1.
///
/// One worker is a current-thread runtime on the calling thread: the same single thread of
/// work as a one-worker multi-threaded runtime, without its work-stealing queues and without
/// waking a second thread.
pub fn runtime_or_exit(workers: usize, name: &str) -> tokio::runtime::Runtime {
    let mut builder = match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
    };
    match builder.thread_name(name).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    }
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    /// The address.
    pub addr: std::net::SocketAddr,
    /// Which listener.
    pub what: &'static str,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// Binds the `what` listener on `addr`, naming both if it cannot.
pub async fn bind(addr: std::net::SocketAddr, what: &'static str) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| BindError { addr, what, source })
}

/// Resolves on SIGTERM or Ctrl-C: when a mesh binary should begin its orderly shutdown.
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Parses a duration such as `500ms`, `3s` or `5m`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 500ms, 3s, 5m)"))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Parser, Debug)]
    struct Args {
        /// Worker threads.
        #[arg(long, env = "TEST_WORKERS", value_parser = within(1usize..=64))]
        workers: usize,
        /// A share.
        #[arg(long, env = "TEST_SHARE", default_value_t = 0.5, value_parser = within(0.0f64..=1.0))]
        share: f64,
        /// A period.
        #[arg(long, default_value = "1s", value_parser = duration_at_least(Duration::from_millis(100)))]
        every: Duration,
    }

    fn error(argv: &[&str]) -> String {
        let e = Args::try_parse_from(argv).err().map(|e| one_line(&e, &Args::command()));
        e.unwrap_or_default()
    }

    #[test]
    fn a_missing_argument_is_named_on_the_same_line() {
        let e = error(&["t"]);
        assert!(e.contains("not provided: --workers"), "{e}");
        assert_eq!(e.lines().count(), 1);
    }

    #[test]
    fn a_bad_value_names_its_flag_its_variable_and_its_range() {
        let e = error(&["t", "--workers", "0"]);
        assert!(e.contains("--workers") && e.contains("(TEST_WORKERS)") && e.contains("between 1 and 64"), "{e}");
        let e = error(&["t", "--workers", "2", "--share", "1.5"]);
        assert!(e.contains("(TEST_SHARE)") && e.contains("between 0 and 1"), "{e}");
        let e = error(&["t", "--workers", "2", "--every", "10ms"]);
        assert!(e.contains("--every") && e.contains("at least 100ms"), "{e}");
        assert!(Args::try_parse_from(["t", "--workers", "64", "--share", "1", "--every", "100ms"]).is_ok());
    }
}
