//! `lumen spin-kv`: prepares the SQLite key-value file of a plain `spin up` in WAL mode (one
//! sync per write instead of a rollback journal's several; Spin keeps the mode a file has). The
//! gateway then serves on that file: under lumen-host, and on the spin-sqlite leg under real
//! Spin, which must neither reject the file nor change its mode.

mod common;

use common::{chat_body, lumen_bin, Gateway, ADMIN};
use lumen_tests::mock::MockConfig;
use std::path::Path;
use std::process::Command;

fn spin_kv(state: &Path) -> String {
    let out = Command::new(lumen_bin())
        .args(["spin-kv", "--state-dir"])
        .arg(state)
        .output()
        .expect("lumen runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lumen spin-kv failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn journal_mode(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).expect("open the store");
    conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_store_is_wal_and_the_gateway_serves_on_it() {
    let dir = common::procs::temp_dir("spin-kv");
    // `lumen spin-kv` makes the state directory itself.
    let state = dir.join("state");
    let db = state.join("sqlite_key_value.db");
    let said = spin_kv(&state);
    assert!(said.contains("WAL"), "{said}");
    // Idempotent: a second run on the same file changes nothing and succeeds.
    spin_kv(&state);
    assert_eq!(journal_mode(&db), "wal");
    let tables: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'spin_key_value'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 1, "Spin's table is there");

    let gw = Gateway::start_with(
        MockConfig {
            api_key: Some(common::UPSTREAM_KEY.into()),
            ..MockConfig::default()
        },
        |o| {
            o.state_dir = Some(state.clone());
            o.memory_kv = false;
        },
    )
    .await;
    let (key, _) = gw.create_key(600, &[]).await;
    for i in 0..3 {
        let r = gw
            .chat(&key, chat_body("gpt-4o-mini", &format!("hello {i}")))
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let verify = gw
        .call("GET", "/admin/audit/verify", Some(ADMIN), None)
        .await;
    assert_eq!(
        verify.status,
        200,
        "{}",
        String::from_utf8_lossy(&verify.body)
    );
    assert_eq!(
        verify.json()["ok"],
        true,
        "{}",
        String::from_utf8_lossy(&verify.body)
    );
    if !common::runtime::Runtime::current().name().contains("redis") {
        // The gateway's writes went to this file, and it is still in WAL mode.
        let rows: i64 = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM spin_key_value", [], |r| r.get(0))
            .unwrap();
        assert!(rows > 0, "the gateway wrote to the prepared file");
        assert_eq!(journal_mode(&db), "wal");
    }
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}
