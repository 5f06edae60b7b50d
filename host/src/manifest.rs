//! Reads a Spin manifest v2 (`spin.toml`): the subset Lumen's host runs, with every key it does
//! not support rejected by name instead of silently ignored.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use wasmtime::{bail, format_err, Result};

/// The parsed, checked manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Directory of the manifest; relative paths resolve against it.
    pub dir: PathBuf,
    /// Application name.
    pub name: String,
    /// Application variables.
    pub variables: BTreeMap<String, Variable>,
    /// HTTP triggers in manifest order.
    pub triggers: Vec<HttpTrigger>,
    /// Components by id.
    pub components: BTreeMap<String, Component>,
}

/// An application variable.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    /// Default value.
    #[serde(default)]
    pub default: Option<String>,
    /// Must be set when there is no default.
    #[serde(default)]
    pub required: bool,
    /// Never printed.
    #[serde(default)]
    pub secret: bool,
    /// Description (informational).
    #[serde(default)]
    pub description: Option<String>,
}

/// Where a trigger routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Reachable only through `http://<id>.spin.internal`.
    Private,
    /// A path: exact (`/foo`), wildcard (`/foo/...`), with `:name` segments allowed.
    Path(String),
}

/// An HTTP trigger.
#[derive(Debug, Clone)]
pub struct HttpTrigger {
    /// The route.
    pub route: Route,
    /// The component id.
    pub component: String,
}

/// A `files` mount: a host directory seen by the guest at `destination`.
#[derive(Debug, Clone)]
pub struct Mount {
    /// Host directory (absolute).
    pub source: PathBuf,
    /// Guest path.
    pub destination: String,
}

/// A component.
#[derive(Debug, Clone)]
pub struct Component {
    /// Id.
    pub id: String,
    /// Path to the `.wasm` (absolute).
    pub source: PathBuf,
    /// Mounted directories.
    pub files: Vec<Mount>,
    /// KV store labels the component may open.
    pub key_value_stores: Vec<String>,
    /// Outbound rules, templates unresolved.
    pub allowed_outbound_hosts: Vec<String>,
    /// Component variables (templates over application variables).
    pub variables: BTreeMap<String, String>,
    /// Environment variables.
    pub environment: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    spin_manifest_version: toml::Value,
    application: RawApplication,
    #[serde(default)]
    variables: BTreeMap<String, Variable>,
    #[serde(default)]
    trigger: BTreeMap<String, Vec<RawTrigger>>,
    #[serde(default)]
    component: BTreeMap<String, RawComponent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApplication {
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    authors: Vec<String>,
    #[serde(default)]
    trigger: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    route: toml::Value,
    component: toml::Value,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    executor: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    source: toml::Value,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    files: Vec<toml::Value>,
    #[serde(default)]
    exclude_files: Vec<String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    allowed_http_hosts: Vec<String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    sqlite_databases: Vec<String>,
    #[serde(default)]
    ai_models: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    build: Option<toml::Table>,
    #[serde(default)]
    dependencies: Option<toml::Table>,
    #[serde(default)]
    dependencies_inherit_configuration: Option<bool>,
    #[serde(default)]
    tool: Option<toml::Table>,
}

fn is_spin_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_kebab_id(s: &str) -> bool {
    !s.is_empty()
        && s.split('-').all(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
        && s.starts_with(|c: char| c.is_ascii_lowercase())
}

impl Manifest {
    /// Reads and checks the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format_err!("cannot read manifest {}: {e}", path.display()))?;
        let dir = path
            .canonicalize()
            .map_err(|e| format_err!("cannot resolve {}: {e}", path.display()))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Self::parse(&text, &dir).map_err(|e| format_err!("{}: {e}", path.display()))
    }

    /// Parses manifest text; relative paths resolve against `dir`.
    pub fn parse(text: &str, dir: &Path) -> Result<Manifest> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| format_err!("{e}"))?;
        if raw.spin_manifest_version.as_integer() != Some(2) {
            bail!("spin_manifest_version must be 2; lumen-host reads manifest v2 only");
        }
        if let Some(t) = &raw.application.trigger {
            if !t.is_empty() {
                bail!(
                    "[application.trigger] settings are not supported by lumen-host (found {:?})",
                    t.keys().collect::<Vec<_>>()
                );
            }
        }
        let _ = (
            &raw.application.version,
            &raw.application.description,
            &raw.application.authors,
        );
        for name in raw.variables.keys() {
            if !is_spin_name(name) {
                bail!("variable name {name:?} is invalid: use lowercase letters, digits and '_', starting with a letter");
            }
        }
        for (name, v) in &raw.variables {
            if v.required && v.default.is_some() {
                bail!("variable {name:?} cannot be both required and have a default");
            }
        }

        let mut triggers = Vec::new();
        for (kind, list) in &raw.trigger {
            if kind != "http" {
                bail!(
                    "trigger type {kind:?} is not supported by lumen-host; only [[trigger.http]]"
                );
            }
            for t in list {
                if let Some(e) = &t.executor {
                    if e.get("type").and_then(toml::Value::as_str) != Some("spin") {
                        bail!("trigger executor {e} is not supported by lumen-host; only the default spin executor");
                    }
                }
                let _ = &t.id;
                let component = t
                    .component
                    .as_str()
                    .ok_or_else(|| format_err!("trigger component must be a component id string (inline components are not supported by lumen-host)"))?
                    .to_string();
                let route = match &t.route {
                    toml::Value::String(s) => {
                        if !s.starts_with('/') {
                            bail!("route {s:?} of component {component:?} must start with '/'");
                        }
                        Route::Path(s.clone())
                    }
                    toml::Value::Table(tb) if tb.len() == 1 && tb.get("private") == Some(&toml::Value::Boolean(true)) => Route::Private,
                    other => bail!("route {other} of component {component:?} is not supported; use a path or {{ private = true }}"),
                };
                triggers.push(HttpTrigger { route, component });
            }
        }

        let mut components = BTreeMap::new();
        for (id, c) in raw.component {
            if !is_kebab_id(&id) {
                bail!("component id {id:?} must be kebab-case (lowercase letters, digits, '-')");
            }
            let at = |what: &str| format!("component {id:?}: {what}");
            let source = match &c.source {
                toml::Value::String(s) => dir.join(s),
                _ => bail!("{}", at("only a local file `source = \"path.wasm\"` is supported by lumen-host (not url or registry sources)")),
            };
            for (field, empty) in [
                ("exclude_files", c.exclude_files.is_empty()),
                ("allowed_http_hosts", c.allowed_http_hosts.is_empty()),
                ("sqlite_databases", c.sqlite_databases.is_empty()),
                ("ai_models", c.ai_models.is_empty()),
                (
                    "dependencies",
                    c.dependencies.as_ref().is_none_or(toml::Table::is_empty),
                ),
            ] {
                if !empty {
                    bail!(
                        "{}",
                        at(&format!("`{field}` is not supported by lumen-host"))
                    );
                }
            }
            let _ = (
                &c.description,
                &c.build,
                &c.dependencies_inherit_configuration,
                &c.tool,
            );
            let mut files = Vec::new();
            for f in &c.files {
                let (src, dst) = match f {
                    toml::Value::Table(t) => {
                        let unknown: Vec<_> = t.keys().filter(|k| *k != "source" && *k != "destination").collect();
                        if !unknown.is_empty() {
                            bail!("{}", at(&format!("unknown keys {unknown:?} in a files entry; expected source and destination")));
                        }
                        match (t.get("source").and_then(toml::Value::as_str), t.get("destination").and_then(toml::Value::as_str)) {
                            (Some(s), Some(d)) => (s.to_string(), d.to_string()),
                            _ => bail!("{}", at("a files entry needs string `source` and `destination`")),
                        }
                    }
                    toml::Value::String(s) => bail!("{}", at(&format!("file pattern {s:?} is not supported by lumen-host; mount a directory with {{ source = \"dir\", destination = \"/dir\" }}"))),
                    other => bail!("{}", at(&format!("invalid files entry {other}"))),
                };
                let source = dir.join(&src);
                if !source.is_dir() {
                    bail!("{}", at(&format!("files source {src:?} must be an existing directory (lumen-host mounts directories)")));
                }
                if !dst.starts_with('/') {
                    bail!(
                        "{}",
                        at(&format!(
                            "files destination {dst:?} must be an absolute guest path"
                        ))
                    );
                }
                files.push(Mount {
                    source,
                    destination: dst,
                });
            }
            for v in c.variables.keys() {
                if !is_spin_name(v) {
                    bail!("{}", at(&format!("variable name {v:?} is invalid")));
                }
            }
            components.insert(
                id.clone(),
                Component {
                    id,
                    source,
                    files,
                    key_value_stores: c.key_value_stores,
                    allowed_outbound_hosts: c.allowed_outbound_hosts,
                    variables: c.variables,
                    environment: c.environment,
                },
            );
        }
        for t in &triggers {
            if !components.contains_key(&t.component) {
                bail!(
                    "trigger refers to unknown component {:?}; components: {}",
                    t.component,
                    components.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        Ok(Manifest {
            dir: dir.to_path_buf(),
            name: raw.application.name,
            variables: raw.variables,
            triggers,
            components,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn reads_the_project_manifest() {
        let m = Manifest::load(&dir().join("spin.toml")).unwrap();
        assert_eq!(m.name, "lumen");
        assert_eq!(m.components.len(), 2);
        let public: Vec<_> = m
            .triggers
            .iter()
            .filter(|t| t.route != Route::Private)
            .map(|t| t.component.as_str())
            .collect();
        assert_eq!(public, vec!["gateway", "dashboard"]);
        assert!(m.variables["admin_token"].secret);
        assert_eq!(m.components["gateway"].files[0].destination, "/config");
    }

    #[test]
    fn unsupported_and_unknown_keys_are_named() {
        let base = "spin_manifest_version = 2\n[application]\nname = \"x\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\n";
        Manifest::parse(base, &dir()).unwrap();
        let e = Manifest::parse(&format!("{base}colour = \"red\"\n"), &dir())
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let e = Manifest::parse(&format!("{base}sqlite_databases = [\"default\"]\n"), &dir())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sqlite_databases") && e.contains("not supported"),
            "{e}"
        );
        let e = Manifest::parse(
            &base.replace("component = \"a\"", "component = \"b\""),
            &dir(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown component \"b\""), "{e}");
        let e = Manifest::parse(&base.replace("= 2", "= 1"), &dir())
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be 2"), "{e}");
        let e = Manifest::parse(&format!("{base}files = [\"*.txt\"]\n"), &dir())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not supported"), "{e}");
        let e = Manifest::parse(
            &base.replace("[[trigger.http]]", "[[trigger.redis]]"),
            &dir(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("redis"), "{e}");
    }
}
