//! First run: `lumen up` (what `scripts/up.sh` runs after building) from a clean environment —
//! no provider keys, no admin token. Every catalog provider is served by the bundled mock, so
//! `model: "auto"` answers with no fallbacks and every upstream request lands in the mock's
//! request log; nothing is configured that could reach a real provider. An operator-set admin
//! token is never printed.

mod common;

use common::repo;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A `lumen up` child process, killed on drop.
struct Up {
    child: Child,
    lines: Vec<String>,
    addr: SocketAddr,
    stderr: std::thread::JoinHandle<String>,
    _state: PathBufGuard,
}

struct PathBufGuard(std::path::PathBuf);
impl Drop for PathBufGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sigterm(child: &Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
}

/// Waits up to 15 s for the child to exit.
fn wait_exit(child: &mut Child) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

impl Drop for Up {
    fn drop(&mut self) {
        // SIGTERM first, so that lumen stops its mock child too; SIGKILL if it hangs.
        if let Ok(None) = self.child.try_wait() {
            sigterm(&self.child);
            if wait_exit(&mut self.child).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

impl Up {
    /// Starts `lumen up` with only PATH and HOME from this environment, plus `env`; returns once
    /// it prints `Serving http://ADDR` (at most 240 s: the first start may compile components).
    fn start(tag: &str, env: &[(&str, &str)]) -> Up {
        let bin = common::lumen_bin();
        let state = common::procs::temp_dir(&format!("first-run-{tag}"));
        let mut cmd = Command::new(bin);
        cmd.args(["up", "--listen", "127.0.0.1:0", "--manifest"])
            .arg(repo().join("spin.toml"))
            .arg("--state-dir")
            .arg(&state)
            .arg("--cache-dir")
            .arg(repo().join("target/lumen-cache"))
            .env_clear()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in ["PATH", "HOME"] {
            if let Ok(v) = std::env::var(var) {
                cmd.env(var, v);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("lumen up starts");
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let addr = loop {
            match rx.recv_timeout(Duration::from_secs(240)) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("Serving http://") {
                        break a.parse().expect("address");
                    }
                    lines.push(line);
                }
                Err(_) => {
                    sigterm(&child);
                    if wait_exit(&mut child).is_none() {
                        let _ = child.kill();
                    }
                    let err = stderr.join().unwrap_or_default();
                    panic!("lumen up did not serve:\n{}\n{err}", lines.join("\n"));
                }
            }
        };
        // Keep draining stdout.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Up {
            child,
            lines,
            addr,
            stderr,
            _state: PathBufGuard(state),
        }
    }

    /// The value after a summary label (`  admin token    adm_…  (generated …)`).
    fn summary(&self, label: &str) -> Option<String> {
        self.lines.iter().find_map(|l| {
            l.strip_prefix("  ")
                .and_then(|l| l.strip_prefix(label))
                .map(|v| v.trim().to_string())
        })
    }

    /// Stops it with SIGTERM and returns everything it wrote to stderr.
    fn stop(mut self) -> String {
        sigterm(&self.child);
        let status = wait_exit(&mut self.child).expect("lumen up stops within 15 s of SIGTERM");
        // The stderr pipe closes once lumen and its mock child have both exited.
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        let err = stderr.join().unwrap_or_default();
        assert!(status.success(), "lumen up exited {status:?}: {err}");
        err
    }
}

fn catalog() -> toml::Table {
    toml::from_str(&std::fs::read_to_string(repo().join("config/catalog.toml")).unwrap()).unwrap()
}

async fn mock_log(mock: &str) -> Vec<Value> {
    let addr: SocketAddr = mock.trim_start_matches("http://").parse().unwrap();
    let r = common::send(addr, "GET", "/mock/requests?full=1", None, None).await;
    assert_eq!(r.status, 200);
    r.json().as_array().cloned().unwrap()
}

/// Log entries whose body carries `nonce` (in any message).
fn with_nonce<'a>(log: &'a [Value], nonce: &str) -> Vec<&'a Value> {
    log.iter()
        .filter(|r| r["body"].to_string().contains(nonce))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_start_serves_auto_from_the_mock_with_no_fallbacks() {
    let up = Up::start("fresh", &[]);

    // The summary: a generated token, every catalog provider with a URL on the mock.
    let token_line = up.summary("admin token").expect("admin token line");
    assert!(
        token_line.contains("(generated for this run"),
        "{token_line}"
    );
    let token = token_line.split_whitespace().next().unwrap().to_string();
    assert!(token.starts_with("adm_") && token.len() > 40, "{token}");
    let mock = up.summary("mock upstream").expect("a mock upstream");
    assert!(mock.starts_with("http://127.0.0.1:"), "{mock}");
    let on_mock: BTreeSet<String> = up
        .summary("on the mock")
        .unwrap()
        .split(", ")
        .map(str::to_string)
        .collect();
    let providers = catalog()["providers"].as_table().unwrap().clone();
    let with_url: BTreeSet<String> = providers
        .iter()
        .filter(|(_, p)| p.get("base_url_variable").is_some())
        .map(|(n, _)| n.clone())
        .collect();
    assert!(with_url.contains("together"), "{with_url:?}");
    assert_eq!(on_mock, with_url, "{}", up.lines.join("\n"));
    assert!(
        up.summary("real upstreams").unwrap().starts_with("none"),
        "{}",
        up.lines.join("\n")
    );
    assert!(
        up.lines.iter().any(|l| l
            == &format!(
                "  export LUMEN_URL=http://{} LUMEN_ADMIN_TOKEN={token}",
                up.addr
            )),
        "{}",
        up.lines.join("\n")
    );

    // The admin API takes the generated token; make a key.
    let r = common::send(
        up.addr,
        "POST",
        "/admin/keys",
        Some(&token),
        Some(json!({"name": "first"}).to_string().into_bytes()),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let key = r.json()["key"].as_str().unwrap().to_string();

    // model "auto": one clean try, served by the mock.
    for stream in [false, true] {
        let nonce = format!("first-run-nonce-{stream}");
        let body = json!({"model": "auto", "stream": stream,
                          "messages": [{"role": "user", "content": format!("hello {nonce}")}]});
        let planned = common::send(
            up.addr,
            "POST",
            "/v1/route",
            Some(&key),
            Some(body.to_string().into_bytes()),
        )
        .await;
        assert_eq!(
            planned.status,
            200,
            "{}",
            String::from_utf8_lossy(&planned.body)
        );
        let winner = planned.json()["candidates"][0].clone();
        let r = common::send(
            up.addr,
            "POST",
            "/v1/chat/completions",
            Some(&key),
            Some(body.to_string().into_bytes()),
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.header("x-lumen-fallbacks"),
            None,
            "auto fell back on a fresh start: {:?}",
            r.header("x-lumen-fallbacks")
        );
        let provider = r.header("x-lumen-provider").unwrap().to_string();
        assert_eq!(provider, winner["provider"]["name"].as_str().unwrap());
        assert_eq!(r.header("x-lumen-model"), winner["model"].as_str());
        if !stream {
            let attempts = r.json()["lumen"]["attempts"].clone();
            assert_eq!(attempts.as_array().map(Vec::len), Some(1), "{attempts}");
            assert_eq!(attempts[0]["outcome"], "ok");
        } else {
            let text = String::from_utf8_lossy(&r.body);
            assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        }
        // The mock saw exactly this request, for the winner's upstream model.
        let log = mock_log(&mock).await;
        let seen = with_nonce(&log, &nonce);
        assert_eq!(seen.len(), 1, "upstream requests for {nonce}: {seen:?}");
        let upstream = winner["upstream_model"].as_str().unwrap();
        // The upstream id travels in the body (or, for Gemini, the path).
        assert!(
            seen[0].to_string().contains(upstream),
            "{upstream} not in {}",
            seen[0]
        );
    }

    // Every chat model of the catalog answers from the mock without a fallback, and each of its
    // other offers from the mock too. Spin's LLM interface has no URL: not here.
    let models = common::send(up.addr, "GET", "/v1/models", Some(&key), None)
        .await
        .json();
    let mut served = BTreeSet::new();
    for m in models["data"].as_array().unwrap() {
        let chat = m["capabilities"]
            .as_array()
            .is_some_and(|c| c.contains(&json!("chat")));
        if m["virtual"] == true || !chat || m["dialect"] == "spin-llm" {
            continue;
        }
        let id = m["id"].as_str().unwrap();
        let owner = m["owned_by"].as_str().unwrap_or_default().to_string();
        // The model's own provider, then each other offer: an offer serves when the providers
        // before it fail, so the mock fails the owner for those (a fault directive).
        let mut legs = vec![(owner.clone(), String::new())];
        legs.extend(
            m["offers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o["provider"].as_str())
                .map(|p| (p.to_string(), format!(" [mock status=503 only={owner}]"))),
        );
        for (provider, fault) in legs {
            if !with_url.contains(&provider) {
                continue;
            }
            let nonce = format!("pin-{provider}-{id}");
            let body = json!({"model": id, "max_tokens": 16, "lumen": {"retries": 0},
                              "messages": [{"role": "user", "content": format!("hi {nonce}{fault}")}]});
            let r = common::send(
                up.addr,
                "POST",
                "/v1/chat/completions",
                Some(&key),
                Some(body.to_string().into_bytes()),
            )
            .await;
            assert_eq!(
                r.status,
                200,
                "{provider}/{id}: {}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(
                r.header("x-lumen-provider"),
                Some(provider.as_str()),
                "{provider}/{id}"
            );
            if fault.is_empty() {
                assert_eq!(r.header("x-lumen-fallbacks"), None, "{provider}/{id}");
            }
            let log = mock_log(&mock).await;
            assert!(
                !with_nonce(&log, &nonce).is_empty(),
                "the mock never saw {provider}/{id}"
            );
            served.insert(provider);
        }
    }
    let runtime_only: BTreeSet<String> = providers
        .iter()
        .filter(|(_, p)| p.get("base_url_variable").is_none())
        .map(|(n, _)| n.clone())
        .collect();
    let unused: Vec<&String> = with_url.difference(&served).collect();
    // Every provider with a URL serves some catalog model, so each was reached on the mock.
    assert!(
        unused.is_empty(),
        "providers never exercised: {unused:?} (runtime-only: {runtime_only:?})"
    );

    let err = up.stop();
    assert!(err.contains("lumen: shutting down"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_token_is_never_printed_and_a_keyed_provider_stays_real() {
    let secret = "operator-chosen-admin-token-4f1c";
    // A key for together: it stays on its real base URL (nothing is sent in this test), the rest
    // go to the mock.
    let up = Up::start(
        "operator",
        &[
            ("SPIN_VARIABLE_ADMIN_TOKEN", secret),
            ("SPIN_VARIABLE_TOGETHER_API_KEY", "tk-test"),
        ],
    );
    let all = up.lines.join("\n");
    assert!(
        !all.contains(secret),
        "the operator's token was printed:\n{all}"
    );
    assert_eq!(
        up.summary("admin token").as_deref(),
        Some("set by you (not shown)")
    );
    assert_eq!(
        up.summary("real upstreams").as_deref(),
        Some("together (SPIN_VARIABLE_TOGETHER_API_KEY set)")
    );
    let on_mock = up.summary("on the mock").unwrap();
    assert!(
        !on_mock.split(", ").any(|p| p == "together") && on_mock.contains("openai"),
        "{on_mock}"
    );
    // The token works.
    let r = common::send(up.addr, "GET", "/admin/keys", Some(secret), None).await;
    assert_eq!(r.status, 200);
    let err = up.stop();
    assert!(
        !err.contains(secret),
        "the operator's token was printed on stderr:\n{err}"
    );
}
