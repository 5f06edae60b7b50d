//! `allowed_outbound_hosts` as Spin documents it: `scheme://host[:port]` with `*` wildcards for
//! scheme, host, subdomains (`*.example.com`) and port, port ranges (`8000..8010`), default
//! ports by scheme, no paths, and `http://<id>.spin.internal` for service chaining.

use wasmtime::{bail, format_err, Result};

/// One parsed rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: Option<String>,
    host: HostRule,
    port: PortRule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    Any,
    Suffix(String),
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortRule {
    Any,
    Range(u16, u16),
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        "redis" => Some(6379),
        "postgres" => Some(5432),
        "mysql" => Some(3306),
        "mqtt" => Some(1883),
        _ => None,
    }
}

impl AllowedHost {
    /// Parses one resolved rule.
    pub fn parse(rule: &str) -> Result<Self> {
        let rule = rule.trim();
        if rule == "insecure:allow-all" {
            bail!(
                "'insecure:allow-all' is not allowed; use '*://*:*' to allow all outbound traffic"
            );
        }
        let (scheme, rest) = rule
            .split_once("://")
            .ok_or_else(|| format_err!("{rule:?} does not contain a scheme (e.g. 'https://')"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            bail!("{rule:?} has a path but is not allowed to; use scheme://host[:port]");
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (h, Some(p)),
            _ => (rest, None),
        };
        let scheme = match scheme {
            "*" => None,
            s if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphabetic()) => Some(s.to_string()),
            s => bail!("{rule:?}: scheme {s:?} is invalid"),
        };
        let host = match host {
            "*" => HostRule::Any,
            h if h.starts_with("*.") && !h[2..].contains('*') => {
                HostRule::Suffix(h[1..].to_ascii_lowercase())
            }
            h if h.is_empty() || h.contains('*') => {
                bail!("{rule:?}: wildcards are only allowed as a whole host or a '*.' prefix")
            }
            h => HostRule::Exact(h.to_ascii_lowercase()),
        };
        let port = match port {
            None => {
                let p = scheme.as_deref().and_then(default_port).ok_or_else(|| {
                    format_err!("{rule:?}: no port given and the scheme has no default port")
                })?;
                PortRule::Range(p, p)
            }
            Some("*") => PortRule::Any,
            Some(p) => match p.split_once("..") {
                Some((a, b)) => {
                    let (a, b): (u16, u16) = (
                        a.parse()
                            .map_err(|_| format_err!("{rule:?}: bad port {a:?}"))?,
                        b.parse()
                            .map_err(|_| format_err!("{rule:?}: bad port {b:?}"))?,
                    );
                    PortRule::Range(a, b.saturating_sub(1))
                }
                None => {
                    let p: u16 = p
                        .parse()
                        .map_err(|_| format_err!("{rule:?}: port {p:?} is not a number"))?;
                    PortRule::Range(p, p)
                }
            },
        };
        Ok(Self { scheme, host, port })
    }

    /// Whether a request to `scheme://host[:port]` is allowed by this rule.
    pub fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let host = host.to_ascii_lowercase();
        let scheme_ok = self.scheme.as_deref().is_none_or(|s| s == scheme);
        let host_ok = match &self.host {
            HostRule::Any => true,
            HostRule::Suffix(sfx) => host.ends_with(sfx.as_str()),
            HostRule::Exact(h) => *h == host,
        };
        let port_ok = match (&self.port, port.or_else(|| default_port(scheme))) {
            (PortRule::Any, _) => true,
            (PortRule::Range(a, b), Some(p)) => *a <= p && p <= *b,
            (PortRule::Range(..), None) => false,
        };
        scheme_ok && host_ok && port_ok
    }
}

/// The service-chaining target of a host, if it is `<id>.spin.internal`.
pub fn chaining_target(host: &str) -> Option<&str> {
    host.strip_suffix(".spin.internal")
        .filter(|id| !id.is_empty() && !id.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_like_spin() {
        let r = AllowedHost::parse("https://api.openai.com").unwrap();
        assert!(r.allows("https", "api.openai.com", None));
        assert!(r.allows("https", "API.openai.com", Some(443)));
        assert!(!r.allows("http", "api.openai.com", None));
        assert!(!r.allows("https", "api.openai.com", Some(8443)));
        let r = AllowedHost::parse("http://127.0.0.1:9000").unwrap();
        assert!(r.allows("http", "127.0.0.1", Some(9000)));
        assert!(!r.allows("http", "127.0.0.1", Some(9001)));
        let r = AllowedHost::parse("*://*.spin.internal:*").unwrap();
        assert!(r.allows("http", "router.spin.internal", None));
        let r = AllowedHost::parse("http://localhost:8000..8002").unwrap();
        assert!(
            r.allows("http", "localhost", Some(8001)) && !r.allows("http", "localhost", Some(8002))
        );
        assert!(AllowedHost::parse("https://api.openai.com/").is_ok());
    }

    #[test]
    fn bad_rules_are_errors() {
        for (rule, needle) in [
            ("https://api.openai.com/v1", "has a path"),
            ("api.openai.com", "scheme"),
            ("insecure:allow-all", "not allowed"),
            ("https://api.*.com", "wildcards"),
            ("foo://bar", "default port"),
        ] {
            let e = AllowedHost::parse(rule).unwrap_err().to_string();
            assert!(e.contains(needle), "{rule}: {e}");
        }
    }

    #[test]
    fn chaining_targets() {
        assert_eq!(chaining_target("router.spin.internal"), Some("router"));
        assert_eq!(chaining_target("spin.internal"), None);
        assert_eq!(chaining_target("a.b.spin.internal"), None);
    }
}
