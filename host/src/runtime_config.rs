//! Spin's `runtime-config.toml`: which backend serves each key-value store label.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use wasmtime::{bail, format_err, Result};

/// A key-value store backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvStoreConfig {
    /// SQLite file at this path.
    Sqlite(PathBuf),
    /// In memory, lost on exit.
    Memory,
    /// A Redis server at this URL (`redis://host:port/db`, `redis+unix:///path/to.sock`).
    Redis(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    key_value_store: BTreeMap<String, RawStore>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

/// Store labels configured by a runtime config file (relative paths resolve against its folder).
pub fn load(path: &Path) -> Result<BTreeMap<String, KvStoreConfig>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format_err!("cannot read runtime config {}: {e}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    parse(&text, dir).map_err(|e| format_err!("{}: {e}", path.display()))
}

/// Parses runtime config text.
pub fn parse(text: &str, dir: &Path) -> Result<BTreeMap<String, KvStoreConfig>> {
    let raw: Raw = toml::from_str(text).map_err(|e| format_err!("{e}"))?;
    let mut out = BTreeMap::new();
    for (label, s) in raw.key_value_store {
        let cfg = match s.kind.as_str() {
            "spin" => {
                if s.url.is_some() {
                    bail!(
                        "key_value_store.{label}: `url` is not used by type \"spin\"; use `path`"
                    );
                }
                match s.path {
                    Some(p) => KvStoreConfig::Sqlite(dir.join(p)),
                    None => KvStoreConfig::Memory,
                }
            }
            "redis" => {
                if s.path.is_some() {
                    bail!(
                        "key_value_store.{label}: `path` is not used by type \"redis\"; use `url`"
                    );
                }
                match s.url {
                    Some(u) if !u.trim().is_empty() => KvStoreConfig::Redis(u),
                    _ => bail!("key_value_store.{label}: type \"redis\" needs `url` (e.g. \"redis://localhost:6379\")"),
                }
            }
            other => bail!(
                "key_value_store.{label}: unknown type {other:?}; supported: \"spin\", \"redis\""
            ),
        };
        out.insert(label, cfg);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_sqlite_and_memory() {
        let m = parse("[key_value_store.default]\ntype = \"spin\"\npath = \"kv.db\"\n[key_value_store.cache]\ntype = \"spin\"\n", Path::new("/tmp")).unwrap();
        assert_eq!(
            m["default"],
            KvStoreConfig::Sqlite(PathBuf::from("/tmp/kv.db"))
        );
        assert_eq!(m["cache"], KvStoreConfig::Memory);
        assert!(parse(
            "[key_value_store.default]\ntype = \"mongo\"\n",
            Path::new(".")
        )
        .unwrap_err()
        .to_string()
        .contains("mongo"));
        let r = parse(
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(
            r["default"],
            KvStoreConfig::Redis("redis://127.0.0.1:6379".into())
        );
        for bad in [
            "[key_value_store.default]\ntype = \"redis\"\n",
            "[key_value_store.default]\ntype = \"redis\"\npath = \"x\"\n",
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://x\"\nuser = \"u\"\n",
        ] {
            assert!(parse(bad, Path::new(".")).is_err(), "{bad}");
        }
        assert!(parse(
            "[sqlite_database.default]\ntype = \"spin\"\n",
            Path::new(".")
        )
        .unwrap_err()
        .to_string()
        .contains("sqlite_database"));
    }
}
