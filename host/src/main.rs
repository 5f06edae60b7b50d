//! `lumen-host up`: run the Spin app of a `spin.toml` on wasmtime, like `spin up`.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

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
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
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
    } = cli.command;
    let mut opts = lumen_host::HostOptions::new(manifest);
    opts.listen = listen;
    opts.runtime_config = runtime_config_file;
    opts.state_dir = state_dir;
    opts.cache_dir = cache_dir;
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
