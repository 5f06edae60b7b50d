//! Spin variables: application variables (manifest defaults, `required`, `SPIN_VARIABLE_*`
//! overrides) and component variables, which are templates over them (`"{{ name }}"`).

use crate::manifest::Manifest;
use std::collections::{BTreeMap, HashMap};
use wasmtime::{bail, Result};

/// Defaults this host gives variables the app declares, ahead of the manifest's (an override
/// still wins): `stream_burst_gap_us` holds a stream's events until the provider pauses, for
/// hosts whose sockets leave Nagle's algorithm on (stock Spin); this host sets `TCP_NODELAY` on
/// its sockets, so a small write leaves at once and holding would only delay the first token.
pub const HOST_DEFAULTS: &[(&str, &str)] = &[("stream_burst_gap_us", "0")];

/// Resolved application variables.
#[derive(Debug, Clone, Default)]
pub struct AppVariables {
    values: HashMap<String, String>,
}

impl AppVariables {
    /// Resolves every declared variable; `overrides` win over defaults (the host passes
    /// `SPIN_VARIABLE_*` here). A required variable without a value is an error.
    pub fn resolve(manifest: &Manifest, overrides: &HashMap<String, String>) -> Result<Self> {
        let mut values = HashMap::new();
        for (name, var) in &manifest.variables {
            let host_default = HOST_DEFAULTS
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_string());
            match overrides
                .get(name)
                .cloned()
                .or(host_default)
                .or(var.default.clone())
            {
                Some(v) => {
                    values.insert(name.clone(), v);
                }
                None if var.required => bail!(
                    "variable {name:?} is required: set SPIN_VARIABLE_{} in the environment",
                    name.to_ascii_uppercase()
                ),
                None => bail!("variable {name:?} needs a `default` or `required = true`"),
            }
        }
        Ok(Self { values })
    }

    /// Expands `{{ name }}` templates in `text`.
    pub fn expand(&self, text: &str) -> Result<String> {
        self.expand_over(None, text)
    }

    /// Expands `{{ name }}` templates, looking names up in `first` (a component's variables)
    /// before the application's.
    pub fn expand_over(
        &self,
        first: Option<&HashMap<String, String>>,
        text: &str,
    ) -> Result<String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                bail!("unterminated template in {text:?}")
            };
            let name = after[..end].trim();
            match first.and_then(|f| f.get(name)).or_else(|| self.values.get(name)) {
                Some(v) => out.push_str(v),
                None => bail!("template {text:?} refers to undeclared variable {name:?}; declare it under [variables]"),
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// A component's variables, resolved.
    pub fn for_component(
        &self,
        templates: &BTreeMap<String, String>,
    ) -> Result<HashMap<String, String>> {
        templates
            .iter()
            .map(|(k, t)| Ok((k.clone(), self.expand(t)?)))
            .collect()
    }
}

/// `SPIN_VARIABLE_FOO_BAR=x` → `foo_bar = x`. The standard OpenTelemetry variable
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL) sets `otel_exporter_otlp_endpoint` and, from its
/// origin, `otel_allowed_host`, unless `SPIN_VARIABLE_*` sets them.
pub fn from_env(env: impl Iterator<Item = (String, String)>) -> HashMap<String, String> {
    let mut otel = None;
    let mut vars: HashMap<String, String> = env
        .filter_map(|(k, v)| {
            if k == "OTEL_EXPORTER_OTLP_ENDPOINT" && !v.trim().is_empty() {
                otel = Some(v.trim().to_string());
            }
            k.strip_prefix("SPIN_VARIABLE_")
                .map(|n| (n.to_ascii_lowercase(), v))
        })
        .collect();
    if let Some(url) = otel {
        if let Some(origin) = origin_of(&url) {
            vars.entry("otel_allowed_host".into()).or_insert(origin);
        }
        vars.entry("otel_exporter_otlp_endpoint".into())
            .or_insert(url);
    }
    vars
}

/// `scheme://host[:port]` of a URL (Spin's allowed outbound hosts take no path).
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    (!host.is_empty()).then(|| format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    fn manifest() -> Manifest {
        let text = "spin_manifest_version = 2\n[application]\nname = \"x\"\n[variables]\na = { default = \"1\" }\nb = { required = true, secret = true }\n";
        Manifest::parse(text, std::path::Path::new(".")).unwrap()
    }

    /// A host default names a variable of the shipped app: renamed there, it would no longer apply.
    #[test]
    fn the_host_defaults_name_variables_of_the_shipped_manifest() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join("spin.toml")).unwrap();
        let m = Manifest::parse(&text, &root).unwrap();
        for (name, _) in HOST_DEFAULTS {
            assert!(
                m.variables.contains_key(*name),
                "spin.toml declares no variable {name:?}"
            );
        }
    }

    #[test]
    fn the_host_defaults_come_before_the_manifests_and_after_overrides() {
        let text = "spin_manifest_version = 2\n[application]\nname = \"x\"\n[variables]\nstream_burst_gap_us = { default = \"1000\" }\n";
        let m = Manifest::parse(text, std::path::Path::new(".")).unwrap();
        let vars = AppVariables::resolve(&m, &HashMap::new()).unwrap();
        assert_eq!(vars.expand("{{ stream_burst_gap_us }}").unwrap(), "0");
        let set = HashMap::from([("stream_burst_gap_us".to_string(), "500".to_string())]);
        let vars = AppVariables::resolve(&m, &set).unwrap();
        assert_eq!(vars.expand("{{ stream_burst_gap_us }}").unwrap(), "500");
    }

    #[test]
    fn overrides_defaults_and_required() {
        let m = manifest();
        let e = AppVariables::resolve(&m, &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("SPIN_VARIABLE_B"), "{e}");
        let env = from_env(
            vec![
                ("SPIN_VARIABLE_B".to_string(), "two".to_string()),
                ("PATH".into(), "/bin".into()),
            ]
            .into_iter(),
        );
        let vars = AppVariables::resolve(&m, &env).unwrap();
        assert_eq!(vars.expand("x{{ a }}-{{b}}y").unwrap(), "x1-twoy");
        let otel = from_env(
            vec![(
                "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
                "http://collector:4318/base".to_string(),
            )]
            .into_iter(),
        );
        assert_eq!(
            otel["otel_exporter_otlp_endpoint"],
            "http://collector:4318/base"
        );
        assert_eq!(otel["otel_allowed_host"], "http://collector:4318");
        assert!(vars
            .expand("{{ c }}")
            .unwrap_err()
            .to_string()
            .contains("undeclared variable \"c\""));
    }
}
