//! `lumen-host up`: run the Spin app of a `spin.toml` on wasmtime, like `spin up`.

use clap::{Args, Parser, Subcommand};
use lumen_host::limits::parse_duration;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "lumen-host",
    version,
    about = "Runs Lumen's Spin app on wasmtime without the spin CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the application (like `spin up`).
    Up {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
        /// The application manifest.
        #[arg(long, short = 'f', default_value = "spin.toml")]
        manifest: PathBuf,
        /// Spin runtime config file (key-value store backends).
        #[arg(long)]
        runtime_config_file: Option<PathBuf>,
        /// Application state directory (default: .spin next to the manifest).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Directory for compiled components (default: <state dir>/cache).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Threads serving connections, each with the requests it accepted start to end
        /// (default: the CPUs this process may use)
        #[arg(long, env = "LUMEN_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: Option<u16>,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

/// Timeouts and caps of the listener; each flag also reads the environment variable named.
/// Defaults are `lumen_host::Limits::default()` (README, "Security").
#[derive(Args)]
#[command(next_help_heading = "Timeouts and caps")]
struct LimitArgs {
    /// Open client connections in all (more get 503)
    #[arg(long, env = "LUMEN_MAX_CONNECTIONS", default_value_t = Self::d().max_connections)]
    max_connections: usize,
    /// Open connections per client IP, IPv6 per /64 (more get 429)
    #[arg(long, env = "LUMEN_MAX_CONNECTIONS_PER_IP", default_value_t = Self::d().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// Requests in flight whose credential has not been accepted yet, in all (503)
    #[arg(long, env = "LUMEN_MAX_UNAUTHENTICATED_REQUESTS", default_value_t = Self::d().max_unauthenticated_requests)]
    max_unauthenticated_requests: usize,
    /// The same per client IP (429)
    #[arg(long, env = "LUMEN_MAX_UNAUTHENTICATED_REQUESTS_PER_IP", default_value_t = Self::d().max_unauthenticated_requests_per_ip)]
    max_unauthenticated_requests_per_ip: usize,
    /// Requests in flight per credential (Authorization / x-api-key value) (429)
    #[arg(long, env = "LUMEN_MAX_REQUESTS_PER_CREDENTIAL", default_value_t = Self::d().max_requests_per_credential)]
    max_requests_per_credential: usize,
    /// Time for a request head to arrive (408)
    #[arg(long, env = "LUMEN_HEADER_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    header_timeout: Duration,
    /// Keep-alive connections with no request are closed after this
    #[arg(long, env = "LUMEN_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    idle_timeout: Duration,
    /// Grace for a request body before --body-min-rate applies (408)
    #[arg(long, env = "LUMEN_BODY_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    body_timeout: Duration,
    /// Minimum average request body rate after the grace, bytes per second
    #[arg(long, env = "LUMEN_BODY_MIN_RATE", default_value_t = Self::d().body_min_rate)]
    body_min_rate: u64,
    /// A response write without progress for this long closes the connection
    #[arg(long, env = "LUMEN_WRITE_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    write_timeout: Duration,
    /// Bytes of an unread request body discarded after the answer so the client can read it
    #[arg(long, env = "LUMEN_DRAIN_MAX_BYTES", default_value_t = Self::d().drain_max_bytes)]
    drain_max_bytes: u64,
    /// Longest such drain
    #[arg(long, env = "LUMEN_DRAIN_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    drain_timeout: Duration,
    /// Component instances alive at once (the instance pool; a request finding none gets 503)
    #[arg(long, env = "LUMEN_MAX_INSTANCES", default_value_t = Self::d().max_instances)]
    max_instances: u32,
    /// KiB of a freed instance's memory kept warm for the next request (0: all given back)
    #[arg(long, env = "LUMEN_INSTANCE_KEEP_KIB", default_value_t = Self::d().instance_keep_kib)]
    instance_keep_kib: u32,
}

impl LimitArgs {
    fn d() -> lumen_host::Limits {
        lumen_host::Limits::default()
    }

    fn limits(self) -> lumen_host::Limits {
        lumen_host::Limits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_unauthenticated_requests: self.max_unauthenticated_requests,
            max_unauthenticated_requests_per_ip: self.max_unauthenticated_requests_per_ip,
            max_requests_per_credential: self.max_requests_per_credential,
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            body_timeout: self.body_timeout,
            body_min_rate: self.body_min_rate,
            write_timeout: self.write_timeout,
            drain_max_bytes: self.drain_max_bytes,
            drain_timeout: self.drain_timeout,
            max_instances: self.max_instances,
            instance_keep_kib: self.instance_keep_kib,
        }
    }
}

fn main() -> std::process::ExitCode {
    lumen_host::sys::tune_allocator();
    let cli = Cli::parse();
    // The main thread is the first worker; `lumen_host::start` starts the others, each on a
    // single-threaded runtime of its own.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lumen-host: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> wasmtime::Result<()> {
    let Command::Up {
        listen,
        manifest,
        runtime_config_file,
        state_dir,
        cache_dir,
        workers,
        limits,
    } = cli.command;
    let fds = lumen_host::sys::raise_fd_limit();
    if let Some(fds) = fds.filter(|&n| n < limits.max_connections as u64 + 256) {
        eprintln!(
            "lumen-host: warning: the open-file limit is {fds}, below --max-connections ({}) plus room for upstream connections and files; raise it (ulimit -n) or lower --max-connections",
            limits.max_connections
        );
    }
    let mut opts = lumen_host::HostOptions::new(manifest);
    opts.listen = listen;
    opts.runtime_config = runtime_config_file;
    opts.state_dir = state_dir;
    opts.cache_dir = cache_dir;
    opts.limits = limits.limits();
    if let Some(n) = workers {
        opts.workers = n.into();
    }
    opts.variables = lumen_host::variables::from_env(std::env::vars());
    opts.kv_log = std::env::var_os("LUMEN_HOST_KV_LOG").map(std::path::PathBuf::from);
    let host = lumen_host::start(opts).await?;
    // Listen for signals before announcing the address: a supervisor (or a test) may send
    // SIGTERM as soon as it has read the route table.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| wasmtime::format_err!("{e}"))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| wasmtime::format_err!("{e}"))?;
    println!("Serving {}", host.base_url());
    println!("Available Routes:");
    for line in host.describe_routes() {
        println!("  {line}");
    }
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    eprintln!("lumen-host: shutting down");
    host.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_defaults_are_the_libraries() {
        let cli = Cli::try_parse_from(["lumen-host", "up"]).expect("parses");
        let Command::Up { limits, .. } = cli.command;
        assert_eq!(limits.limits(), lumen_host::Limits::default());
        let cli = Cli::try_parse_from([
            "lumen-host",
            "up",
            "--header-timeout",
            "500ms",
            "--max-connections-per-ip",
            "7",
        ])
        .expect("parses");
        let Command::Up { limits, .. } = cli.command;
        let limits = limits.limits();
        assert_eq!(limits.header_timeout, Duration::from_millis(500));
        let workers = |n: &str| match Cli::try_parse_from(["lumen-host", "up", "--workers", n]) {
            Ok(Cli {
                command: Command::Up { workers, .. },
            }) => Ok(workers),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(workers("3"), Ok(Some(3)));
        assert!(workers("0").unwrap_err().contains("--workers"));
        assert_eq!(limits.max_connections_per_ip, 7);
    }
}
