//! `lumen`: run the gateway (`lumen up`) and administer a running one through its admin API
//! (`keys`, `tenants`, `usage`, `audit`, `route`), as tables or `--json`.

// The subcommands live in host/src/cli/, beside this crate's library rather than in it: the
// library is the runtime, the CLI is a client of it.
#[path = "../cli/mod.rs"]
mod cli;

use clap::{Args, Parser, Subcommand};
use cli::client::Client;
use cli::commands::{self as cmd, Budget, NewKey, Out, UsageFilter};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "lumen",
    version,
    about = "Run Lumen and administer it: keys, tenants, usage, audit, routing",
    after_help = "Environment: LUMEN_URL (default http://127.0.0.1:3000), LUMEN_ADMIN_TOKEN, LUMEN_API_KEY (for `route`)."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// The gateway's URL [env: LUMEN_URL; default http://127.0.0.1:3000].
    #[arg(long, global = true, value_name = "URL")]
    url: Option<String>,
    /// The gateway's admin token [env: LUMEN_ADMIN_TOKEN].
    #[arg(long, global = true, value_name = "TOKEN")]
    admin_token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for an answer.
    #[arg(long, global = true, default_value_t = 30, value_name = "S")]
    timeout: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway here: the bundled mock answers for every provider without a key.
    Up {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
        /// The application manifest [default: ./spin.toml, else this checkout's].
        #[arg(long, short = 'f')]
        manifest: Option<PathBuf>,
        /// The model catalog [default: <manifest dir>/config/catalog.toml].
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// Spin runtime config file (key-value backends, e.g. Redis).
        #[arg(long)]
        runtime_config_file: Option<PathBuf>,
        /// Application state directory [default: .spin next to the manifest].
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Directory for compiled components [default: <state dir>/cache].
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// The bundled mock upstream [default: lumen-mock next to this binary].
        #[arg(long)]
        mock_bin: Option<PathBuf>,
    },
    /// API keys.
    #[command(subcommand)]
    Keys(Keys),
    /// Tenants: monthly budget, prepaid credits, this month's ledger.
    #[command(subcommand)]
    Tenants(Tenants),
    /// Usage (requests, tokens, cost) of a key, a tenant or everyone.
    Usage {
        /// One key.
        #[arg(long)]
        key_id: Option<String>,
        /// One tenant.
        #[arg(long, conflicts_with = "key_id")]
        tenant: Option<String>,
        /// First day (YYYY-MM-DD, UTC).
        #[arg(long)]
        from: Option<String>,
        /// Last day (YYYY-MM-DD, UTC).
        #[arg(long)]
        to: Option<String>,
        /// One model.
        #[arg(long)]
        model: Option<String>,
        /// day, model or key.
        #[arg(long, value_parser = ["day", "model", "key"])]
        group_by: Option<String>,
        /// The key's newest usage records instead of totals (needs --key-id).
        #[arg(long, requires = "key_id")]
        records: bool,
        /// How many records.
        #[arg(long, requires = "records")]
        limit: Option<u32>,
    },
    /// The audit chain.
    #[command(subcommand)]
    Audit(Audit),
    /// The routing plan for a prompt, without calling a model (needs an API key).
    Route {
        /// The user message.
        prompt: String,
        /// Model, alias or tier.
        #[arg(long, default_value = "auto")]
        model: String,
        /// API key [env: LUMEN_API_KEY].
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
    },
    /// Prepare the SQLite key-value file of a plain `spin up` before its first start: WAL
    /// journal (one sync per write instead of a rollback journal's several; Spin keeps the
    /// mode the file has) and Spin's table. Idempotent; `lumen up` leaves the file so too.
    SpinKv {
        /// Spin's state directory (`spin up --state-dir`) [default: .spin].
        #[arg(long, default_value = ".spin")]
        state_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum Keys {
    /// Create a key (its secret is shown once).
    Create {
        /// A name for people.
        #[arg(long)]
        name: String,
        /// Requests per minute [default: the plan's, else 600].
        #[arg(long)]
        rpm: Option<u32>,
        /// A model the key may use (repeat; default: all, or the plan's).
        #[arg(long = "model", value_name = "MODEL")]
        models: Vec<String>,
        /// Tenant [default: the key is its own tenant].
        #[arg(long)]
        tenant: Option<String>,
        /// Plan from config/plans.toml.
        #[arg(long)]
        plan: Option<String>,
        /// Expiry, unix seconds.
        #[arg(long, value_name = "UNIX_SECONDS")]
        expires_at: Option<i64>,
        /// The model `lumen.saved` is priced against [default: the plan's, else the route's].
        #[arg(long, value_name = "MODEL")]
        reference_model: Option<String>,
    },
    /// List keys (never their secrets).
    List,
    /// New secret for a key; the old one stops working at once.
    Rotate {
        /// Key id (key_…).
        id: String,
    },
    /// Revoke a key.
    Revoke {
        /// Key id (key_…).
        id: String,
    },
}

#[derive(Subcommand)]
enum Tenants {
    /// This month's ledger: budget, committed, held, settled, credits.
    Get {
        /// Tenant.
        tenant: String,
    },
    /// Set the monthly budget and/or prepaid mode (what you leave out keeps its value).
    Set {
        /// Tenant.
        tenant: String,
        /// Monthly cap in US dollars.
        #[arg(long, value_name = "USD")]
        budget: Option<f64>,
        /// No monthly cap.
        #[arg(long, conflicts_with = "budget")]
        no_budget: bool,
        /// Prepaid: spend only granted credits.
        #[arg(long, value_name = "true|false")]
        prepaid: Option<bool>,
    },
    /// Grant prepaid credits (a negative amount withdraws).
    Credit {
        /// Tenant.
        tenant: String,
        /// US dollars.
        #[arg(allow_negative_numbers = true)]
        amount_usd: f64,
    },
}

#[derive(Subcommand)]
enum Audit {
    /// The chain's head {seq, hash}, to anchor elsewhere.
    Head,
    /// Re-walk the chain from the head to genesis; exit status 1 when it is broken.
    Verify,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = cli.global;
    let out = Out { json: g.json };
    let client = || {
        Client::new(
            &g.url
                .clone()
                .or_else(|| env("LUMEN_URL"))
                .unwrap_or_else(|| "http://127.0.0.1:3000".into()),
            g.admin_token.clone().or_else(|| env("LUMEN_ADMIN_TOKEN")),
            Duration::from_secs(g.timeout.max(1)),
        )
    };
    match cli.command {
        Command::Up {
            listen,
            manifest,
            catalog,
            runtime_config_file,
            state_dir,
            cache_dir,
            mock_bin,
        } => {
            cli::up::run(cli::up::UpOptions {
                listen,
                manifest,
                catalog,
                runtime_config_file,
                state_dir,
                cache_dir,
                mock_bin,
            })
            .await
        }
        Command::Keys(k) => {
            let c = client()?;
            match k {
                Keys::Create {
                    name,
                    rpm,
                    models,
                    tenant,
                    plan,
                    expires_at,
                    reference_model,
                } => {
                    cmd::keys_create(
                        &c,
                        out,
                        NewKey {
                            name,
                            rpm,
                            models,
                            tenant,
                            plan,
                            expires_at,
                            reference_model,
                        },
                    )
                    .await
                }
                Keys::List => cmd::keys_list(&c, out).await,
                Keys::Rotate { id } => cmd::keys_rotate(&c, out, &id).await,
                Keys::Revoke { id } => cmd::keys_revoke(&c, out, &id).await,
            }
        }
        Command::Tenants(t) => {
            let c = client()?;
            match t {
                Tenants::Get { tenant } => cmd::tenants_get(&c, out, &tenant).await,
                Tenants::Set {
                    tenant,
                    budget,
                    no_budget,
                    prepaid,
                } => {
                    let budget = match (budget, no_budget) {
                        (Some(x), _) => Budget::Usd(x),
                        (None, true) => Budget::Unlimited,
                        (None, false) => Budget::Keep,
                    };
                    cmd::tenants_set(&c, out, &tenant, budget, prepaid).await
                }
                Tenants::Credit { tenant, amount_usd } => {
                    cmd::tenants_credit(&c, out, &tenant, amount_usd).await
                }
            }
        }
        Command::Usage {
            key_id,
            tenant,
            from,
            to,
            model,
            group_by,
            records,
            limit,
        } => {
            let c = client()?;
            match (records, key_id) {
                (true, Some(id)) => cmd::usage_records(&c, out, &id, limit).await,
                (_, key_id) => {
                    let f = UsageFilter {
                        key_id,
                        tenant,
                        from,
                        to,
                        model,
                        group_by,
                    };
                    cmd::usage(&c, out, &f).await
                }
            }
        }
        Command::Audit(a) => {
            let c = client()?;
            match a {
                Audit::Head => cmd::audit_head(&c, out).await,
                Audit::Verify => cmd::audit_verify(&c, out).await,
            }
        }
        Command::Route { prompt, model, key } => {
            let c = client()?;
            let key = key.or_else(|| env("LUMEN_API_KEY"));
            cmd::route(&c, out, key.as_deref(), &model, &prompt).await
        }
        Command::SpinKv { state_dir } => {
            let path = state_dir.join("sqlite_key_value.db");
            lumen_host::kv::SqliteKv::open(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "{}: SQLite key-value store in WAL mode; start Spin with `spin up --state-dir {}`",
                path.display(),
                state_dir.display()
            );
            Ok(())
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `lumen up` serves on this thread and the worker threads lumen-host starts (one per CPU),
    // each with a single-threaded runtime.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lumen: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lumen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
