//! `lumen up`: serve the gateway on this machine the way a first run should go. Every catalog
//! provider whose key (or base URL) the operator did not set is pointed at the bundled mock
//! upstream, so nothing is sent to a real provider unless its key is set; an admin token is
//! generated unless one is set (and only a generated one is printed).

use anyhow::{anyhow, bail, Context as _, Result};
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Options of `lumen up`.
pub struct UpOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// `spin.toml`; `None`: `./spin.toml`, else the one of the checkout this binary was built in.
    pub manifest: Option<PathBuf>,
    /// The model catalog (default `<manifest dir>/config/catalog.toml`).
    pub catalog: Option<PathBuf>,
    /// Spin runtime config (key-value backends).
    pub runtime_config_file: Option<PathBuf>,
    /// State directory.
    pub state_dir: Option<PathBuf>,
    /// Compiled-component cache.
    pub cache_dir: Option<PathBuf>,
    /// The `lumen-mock` binary (default: next to this one).
    pub mock_bin: Option<PathBuf>,
}

/// Where a catalog provider's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// The bundled mock, at this base URL.
    Mock(String),
    /// The operator configured it (the named variable is set).
    Real(String),
    /// No URL: served by the runtime (Spin's LLM interface).
    Runtime,
}

/// One catalog provider and its variables.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Catalog name.
    pub name: String,
    dialect: String,
    deployment_path: bool,
    base_url_variable: Option<String>,
    api_key_variable: Option<String>,
}

/// Reads `[providers.*]` of the catalog (only what `lumen up` needs; the router checks the rest).
pub fn catalog_providers(path: &Path) -> Result<Vec<Provider>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the catalog {}", path.display()))?;
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let Some(providers) = doc.get("providers").and_then(toml::Value::as_table) else {
        bail!("{} has no [providers.*] tables", path.display());
    };
    let s = |t: &toml::Table, k: &str| t.get(k).and_then(toml::Value::as_str).map(str::to_string);
    Ok(providers
        .iter()
        .filter_map(|(name, v)| {
            let t = v.as_table()?;
            Some(Provider {
                name: name.clone(),
                dialect: s(t, "dialect").unwrap_or_default(),
                deployment_path: t.get("deployment_path").and_then(toml::Value::as_bool)
                    == Some(true),
                base_url_variable: s(t, "base_url_variable"),
                api_key_variable: s(t, "api_key_variable"),
            })
        })
        .collect())
}

/// The mock's base URL for a provider of this dialect (the mock serves each dialect on its own
/// routes, as the tests' harness uses them).
fn mock_base(origin: &str, p: &Provider) -> String {
    match p.dialect.as_str() {
        "openai" if p.deployment_path => origin.to_string(),
        "gemini" => format!("{origin}/v1beta"),
        "queue" => format!("{origin}/v2/{}", p.name),
        // openai, anthropic, and any dialect this binary does not know: still the mock.
        _ => format!("{origin}/v1"),
    }
}

/// `scheme://host[:port]` of a URL (what Spin's `allowed_outbound_hosts` takes).
fn origin_of(url: &str) -> String {
    match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            let end = rest.find('/').unwrap_or(rest.len());
            format!("{}{}", &url[..i + 3], &rest[..end])
        }
        None => url.to_string(),
    }
}

fn env_name(var: &str) -> String {
    format!("SPIN_VARIABLE_{}", var.to_ascii_uppercase())
}

/// The upstream plan: for each provider where it goes, and the variable values that make it so.
/// `set` holds the operator's variables (lower-case names, `SPIN_VARIABLE_*` without the
/// prefix); `declared` the manifest's application variables. A provider is configured when its
/// key or its base URL is set; every other provider and every `*_allowed_host` variable of an
/// unconfigured prefix go to the mock (`origin`), so no request can leave for a real provider.
pub fn plan_upstreams(
    providers: &[Provider],
    declared: &[String],
    set: &HashMap<String, String>,
    origin: &str,
) -> (Vec<(String, Upstream)>, BTreeMap<String, String>) {
    let is_set = |var: &str| set.get(var).is_some_and(|v| !v.is_empty());
    let mut vars = BTreeMap::new();
    let mut plan = Vec::new();
    let mut configured_prefixes = Vec::new();
    for p in providers {
        let Some(base_var) = &p.base_url_variable else {
            plan.push((p.name.clone(), Upstream::Runtime));
            continue;
        };
        let prefix = base_var.strip_suffix("_base_url").unwrap_or(base_var);
        let host_var = format!("{prefix}_allowed_host");
        let key_var = p.api_key_variable.as_deref();
        let configured = key_var
            .filter(|k| is_set(k))
            .or_else(|| is_set(base_var).then_some(base_var.as_str()));
        match configured {
            Some(var) => {
                configured_prefixes.push(prefix.to_string());
                if is_set(base_var) && !is_set(&host_var) && declared.contains(&host_var) {
                    vars.insert(host_var, origin_of(&set[base_var.as_str()]));
                }
                plan.push((p.name.clone(), Upstream::Real(env_name(var))));
            }
            None => {
                let base = mock_base(origin, p);
                vars.insert(base_var.clone(), base.clone());
                if declared.contains(&host_var) {
                    vars.insert(host_var, origin.to_string());
                }
                plan.push((p.name.clone(), Upstream::Mock(base)));
            }
        }
    }
    // Allowed hosts of providers the catalog does not name: the mock too, unless configured.
    for var in declared {
        if let Some(prefix) = var.strip_suffix("_allowed_host") {
            let operator = ["_api_key", "_base_url", "_allowed_host"]
                .iter()
                .any(|s| is_set(&format!("{prefix}{s}")));
            if !operator && !configured_prefixes.iter().any(|p| p == prefix) {
                vars.entry(var.clone())
                    .or_insert_with(|| origin.to_string());
            }
        }
    }
    (plan, vars)
}

fn default_manifest() -> PathBuf {
    let here = PathBuf::from("spin.toml");
    if here.is_file() {
        return here;
    }
    // target/release/lumen → the checkout's spin.toml.
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("spin.toml")))
        .filter(|p| p.is_file())
        .unwrap_or(here)
}

fn generate_token() -> Result<String> {
    let mut bytes = [0u8; 24];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("cannot open /dev/urandom")?,
        &mut bytes,
    )
    .context("cannot read /dev/urandom")?;
    Ok(format!("adm_{}", hex::encode(bytes)))
}

fn step(n: u32, text: &str) {
    println!("[{n}/4] {text}");
    let _ = std::io::stdout().flush();
}

/// The bundled mock upstream as a child process (killed when dropped).
struct Mock {
    child: tokio::process::Child,
    addr: String,
}

async fn start_mock(bin: &Path) -> Result<Mock> {
    let mut child = tokio::process::Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--token-delay-ms", "20"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start the bundled mock {}", bin.display()))?;
    let stdout = child.stdout.take().context("mock stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .map_err(|_| anyhow!("the bundled mock did not start within 15 s"))??
        .unwrap_or_default();
    let addr = first
        .strip_prefix("Serving http://")
        .ok_or_else(|| anyhow!("the bundled mock printed {first:?} instead of its address"))?
        .to_string();
    // Keep its stdout drained.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Mock { child, addr })
}

/// Runs `lumen up` until SIGINT or SIGTERM.
pub async fn run(opts: UpOptions) -> Result<()> {
    let manifest_path = opts.manifest.clone().unwrap_or_else(default_manifest);
    step(1, &format!("reading {}", manifest_path.display()));
    let manifest =
        lumen_host::manifest::Manifest::load(&manifest_path).map_err(|e| anyhow!("{e:#}"))?;
    for c in manifest.components.values() {
        if !c.source.is_file() {
            bail!(
                "component {}: {} is missing: build it first with scripts/build.sh (scripts/up.sh builds and then runs `lumen up`)",
                c.id,
                c.source.display()
            );
        }
    }
    let catalog = opts
        .catalog
        .clone()
        .unwrap_or_else(|| manifest.dir.join("config/catalog.toml"));
    let providers = catalog_providers(&catalog)?;
    let declared: Vec<String> = manifest.variables.keys().cloned().collect();
    let mut set = lumen_host::variables::from_env(std::env::vars());
    set.retain(|_, v| !v.is_empty());

    // Upstreams: the mock for every provider without a key.
    let probe = plan_upstreams(&providers, &declared, &set, "http://mock");
    let needs_mock = probe.0.iter().any(|(_, u)| matches!(u, Upstream::Mock(_)))
        || probe.1.values().any(|v| v.starts_with("http://mock"));
    let mock = if needs_mock {
        let bin = match &opts.mock_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()
                .context("cannot locate the lumen binary")?
                .with_file_name("lumen-mock"),
        };
        if !bin.is_file() {
            bail!(
                "{} is missing: build it with scripts/build.sh (it answers for every provider whose key is not set), or pass --mock-bin",
                bin.display()
            );
        }
        step(
            2,
            "starting the bundled mock upstream for the providers without a key",
        );
        Some(start_mock(&bin).await?)
    } else {
        step(2, "every provider has a key or a base URL: no mock needed");
        None
    };
    let origin = mock
        .as_ref()
        .map(|m| format!("http://{}", m.addr))
        .unwrap_or_default();
    let (plan, vars) = plan_upstreams(&providers, &declared, &set, &origin);
    let mut variables = set.clone();
    variables.extend(vars);

    // Admin token: the operator's (never printed), else a generated one (printed once).
    let (token, generated) = match set.get("admin_token") {
        Some(t) => (t.clone(), false),
        None => match std::env::var("LUMEN_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
        {
            Some(t) => (t, false),
            None => (generate_token()?, true),
        },
    };
    variables.insert("admin_token".into(), token.clone());

    let state = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| manifest.dir.join(".spin"));
    let cache = opts
        .cache_dir
        .clone()
        .unwrap_or_else(|| state.join("cache"));
    step(
        3,
        &format!(
            "loading {} component(s); the first start compiles them to native code, later starts read {}",
            manifest.components.len(),
            cache.display()
        ),
    );
    let started = Instant::now();
    let mut host_opts = lumen_host::HostOptions::new(&manifest_path);
    host_opts.listen = opts.listen;
    host_opts.runtime_config = opts.runtime_config_file.clone();
    host_opts.state_dir = opts.state_dir.clone();
    host_opts.cache_dir = opts.cache_dir.clone();
    host_opts.variables = variables;
    let host = lumen_host::start(host_opts)
        .await
        .map_err(|e| anyhow!("{e:#}"))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    step(
        4,
        &format!("ready in {:.1} s", started.elapsed().as_secs_f64()),
    );
    let url = host.base_url();
    print_summary(
        &url,
        &plan,
        mock.as_ref().map(|m| m.addr.as_str()),
        generated.then_some(token.as_str()),
        &opts,
        &state,
    );
    println!("Serving {url}");
    let _ = std::io::stdout().flush();

    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    eprintln!("lumen: shutting down");
    host.shutdown().await;
    if let Some(mut m) = mock {
        let _ = m.child.start_kill();
        let _ = m.child.wait().await;
    }
    Ok(())
}

fn print_summary(
    url: &str,
    plan: &[(String, Upstream)],
    mock: Option<&str>,
    generated_token: Option<&str>,
    opts: &UpOptions,
    state: &Path,
) {
    let names = |f: &dyn Fn(&Upstream) -> bool| {
        plan.iter()
            .filter(|(_, u)| f(u))
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
    };
    let on_mock = names(&|u| matches!(u, Upstream::Mock(_)));
    let real: Vec<String> = plan
        .iter()
        .filter_map(|(n, u)| match u {
            Upstream::Real(var) => Some(format!("{n} ({var} set)")),
            _ => None,
        })
        .collect();
    let runtime = names(&|u| matches!(u, Upstream::Runtime));
    println!();
    println!("Lumen is up at {url}");
    match generated_token {
        Some(t) => println!(
            "  admin token    {t}  (generated for this run; set SPIN_VARIABLE_ADMIN_TOKEN to choose one)"
        ),
        None => println!("  admin token    set by you (not shown)"),
    }
    match &opts.runtime_config_file {
        Some(rc) => println!("  key-value      as {} says", rc.display()),
        None => println!("  key-value      SQLite in {}", state.display()),
    }
    if let Some(addr) = mock {
        println!("  mock upstream  http://{addr}");
    }
    println!(
        "  on the mock    {}",
        if on_mock.is_empty() {
            "none".into()
        } else {
            on_mock.join(", ")
        }
    );
    println!(
        "  real upstreams {}",
        if real.is_empty() {
            "none (set SPIN_VARIABLE_<PROVIDER>_API_KEY to use one; nothing leaves this machine until you do)".into()
        } else {
            real.join(", ")
        }
    );
    if !runtime.is_empty() {
        println!(
            "  runtime models {} (Spin's LLM interface; lumen-host answers it with 502)",
            runtime.join(", ")
        );
    }
    println!();
    println!("Next, in another shell:");
    match generated_token {
        Some(t) => println!("  export LUMEN_URL={url} LUMEN_ADMIN_TOKEN={t}"),
        None => println!("  export LUMEN_URL={url} LUMEN_ADMIN_TOKEN=<your admin token>"),
    }
    // The way this binary was invoked (target/release/lumen from up.sh), so the line works as is.
    let me = std::env::args()
        .next()
        .filter(|a| a.contains('/'))
        .unwrap_or_else(|| "lumen".into());
    println!("  {me} keys create --name me            # the key is shown once");
    println!("  curl -s {url}/v1/chat/completions -H \"Authorization: Bearer <key>\" \\");
    println!("       -H 'content-type: application/json' -d '{{\"model\":\"auto\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'");
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(name: &str, dialect: &str) -> Provider {
        Provider {
            name: name.into(),
            dialect: dialect.into(),
            deployment_path: name == "azure",
            base_url_variable: (dialect != "spin-llm").then(|| format!("{name}_base_url")),
            api_key_variable: (dialect != "spin-llm").then(|| format!("{name}_api_key")),
        }
    }

    #[test]
    fn every_provider_without_a_key_goes_to_the_mock() {
        let providers = vec![
            provider("openai", "openai"),
            provider("azure", "openai"),
            provider("gemini", "gemini"),
            provider("runpod", "queue"),
            provider("together", "openai"),
            provider("fermyon", "spin-llm"),
        ];
        let mut declared: Vec<String> =
            ["openai", "azure", "gemini", "runpod", "together", "extra"]
                .iter()
                .flat_map(|p| {
                    [
                        format!("{p}_base_url"),
                        format!("{p}_allowed_host"),
                        format!("{p}_api_key"),
                    ]
                })
                .collect();
        declared.push("admin_token".into());
        let set = HashMap::from([
            ("together_api_key".to_string(), "tk".to_string()),
            (
                "gemini_base_url".to_string(),
                "http://10.0.0.5:8080/v1beta".to_string(),
            ),
        ]);
        let (plan, vars) = plan_upstreams(&providers, &declared, &set, "http://127.0.0.1:9");
        let plan: BTreeMap<_, _> = plan.into_iter().collect();
        assert_eq!(
            plan["openai"],
            Upstream::Mock("http://127.0.0.1:9/v1".into())
        );
        assert_eq!(plan["azure"], Upstream::Mock("http://127.0.0.1:9".into()));
        assert_eq!(
            plan["runpod"],
            Upstream::Mock("http://127.0.0.1:9/v2/runpod".into())
        );
        assert_eq!(
            plan["together"],
            Upstream::Real("SPIN_VARIABLE_TOGETHER_API_KEY".into())
        );
        assert_eq!(
            plan["gemini"],
            Upstream::Real("SPIN_VARIABLE_GEMINI_BASE_URL".into())
        );
        assert_eq!(plan["fermyon"], Upstream::Runtime);
        assert_eq!(vars["openai_allowed_host"], "http://127.0.0.1:9");
        assert_eq!(vars["gemini_allowed_host"], "http://10.0.0.5:8080");
        // A provider the catalog does not name is fenced to the mock too.
        assert_eq!(vars["extra_allowed_host"], "http://127.0.0.1:9");
        assert!(!vars.contains_key("together_base_url"));
        assert!(!vars.contains_key("together_allowed_host"));
    }

    #[test]
    fn origins() {
        assert_eq!(origin_of("https://api.x.ai/v1"), "https://api.x.ai");
        assert_eq!(origin_of("http://127.0.0.1:8000"), "http://127.0.0.1:8000");
    }
}
