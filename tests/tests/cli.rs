//! The `lumen-host` binary: `up` prints where it listens and the route table, stops cleanly on
//! SIGINT and SIGTERM, and refuses a bad manifest with a message naming the problem.

mod common;

use common::{release_bin, repo};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn up(state: &std::path::Path) -> std::process::Child {
    Command::new(release_bin("lumen-host"))
        .args(["up", "--listen", "127.0.0.1:0", "--manifest"])
        .arg(repo().join("spin.toml"))
        .arg("--state-dir")
        .arg(state)
        .arg("--cache-dir")
        .arg(repo().join("target/lumen-cache"))
        .env("SPIN_VARIABLE_ADMIN_TOKEN", "t")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lumen-host starts")
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "lumen-host did not stop within 15 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn up_prints_routes_and_stops_cleanly_on_signals() {
    for signal in ["-TERM", "-INT"] {
        let state = std::env::temp_dir().join(format!("lumen-cli-{}{signal}", std::process::id()));
        let mut child = up(&state);
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        for _ in 0..4 {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            lines.push(line.trim_end().to_string());
        }
        assert!(
            lines[0].starts_with("Serving http://127.0.0.1:"),
            "{lines:?}"
        );
        let addr = lines[0].trim_start_matches("Serving http://").to_string();
        assert_eq!(lines[1], "Available Routes:");
        // Routes in name order, as Spin prints them.
        assert_eq!(
            lines[2],
            format!("  dashboard: http://{addr}/app (wildcard)")
        );
        assert_eq!(lines[3], format!("  gateway: http://{addr} (wildcard)"));
        // It serves.
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        std::io::Write::write_all(
            &mut s,
            format!("GET /v1/models HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let mut resp = String::new();
        std::io::Read::read_to_string(&mut s, &mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
        let killed = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(killed.success());
        let status = wait_exit(&mut child);
        assert!(status.success(), "{signal}: exit {status:?}");
        std::fs::remove_dir_all(&state).ok();
    }
}

#[test]
fn a_bad_manifest_is_refused_naming_the_problem() {
    let dir = std::env::temp_dir().join(format!("lumen-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("spin.toml");
    std::fs::write(
        &manifest,
        "spin_manifest_version = 2\n[application]\nname = \"x\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\nai_models = [\"llama2-chat\"]\n",
    )
    .unwrap();
    let out = Command::new(release_bin("lumen-host"))
        .args(["up", "--listen", "127.0.0.1:0", "--manifest"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ai_models") && err.contains("not supported"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
