//! `lumen-mock`: runs the mock OpenAI-compatible upstream as a standalone process.
//!
//! Prints exactly one line, `Serving http://ADDR`, to stdout once the socket is bound, then serves
//! until SIGINT or SIGTERM. Used by `scripts/up.sh` demos, the Python SDK tests and the bench.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use lumen_tests::mock::{MockConfig, MockUpstream};
use tokio::signal::unix::{signal, SignalKind};

/// Mock OpenAI-compatible upstream for Lumen tests and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "lumen-mock", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Require `Authorization: Bearer <KEY>` on `/v1/*` requests.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Default delay before each streamed token chunk, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 0)]
    token_delay_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mock = MockUpstream::start(MockConfig {
        api_key: args.api_key,
        token_delay: Duration::from_millis(args.token_delay_ms),
        listen: Some(args.listen),
        ..MockConfig::default()
    })
    .await?;

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "Serving http://{}", mock.addr())?;
    stdout.flush()?;
    drop(stdout);

    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!(
        "lumen-mock: shutting down after {} requests ({} client disconnects)",
        mock.request_count(),
        mock.disconnects()
    );
    mock.shutdown().await;
    Ok(())
}
