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
                    bail!("key_value_store.{label}: `url` is not used by type \"spin\"; use `path`");
                }
                match s.path {
                    Some(p) => KvStoreConfig::Sqlite(dir.join(p)),
                    None => KvStoreConfig::Memory,
                }
            }
            "redis" => bail!("key_value_store.{label}: type \"redis\" is not supported by this lumen-host build yet; use type \"spin\" with a `path`"),
            other => bail!("key_value_store.{label}: unknown type {other:?}; supported: \"spin\""),
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
        assert!(parse(
            "[sqlite_database.default]\ntype = \"spin\"\n",
            Path::new(".")
        )
        .unwrap_err()
        .to_string()
        .contains("sqlite_database"));
    }
}
