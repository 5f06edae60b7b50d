//! Retries of one candidate before the next, per failure class. A 5xx, a 429 or a connection
//! that failed are worth another try on the same route; a route that stays silent past its
//! first-token deadline, or stalls, is not: by default the next candidate starts at once, so a
//! silent route costs one first-token deadline, never `retries` of them.
//!
//! Layered like deadlines: [`Retries::default`] → the catalog model's `retries` → the request's
//! `lumen.retries`. Each layer is a number (the 5xx, 429 and connect retries: timeouts are
//! retried on the same route only when named) or a table per class
//! `{"5xx", "429", "connect", "first_token", "stall"}`, each 0 to [`MAX_RETRIES`].

use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Most retries of one candidate for one class.
pub const MAX_RETRIES: u32 = 5;

/// Why one try of one candidate failed, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The upstream answered 5xx or 408, or its answer broke off before the client saw a byte.
    Server,
    /// The upstream answered 429.
    RateLimited,
    /// No answer at all: connection refused or reset, DNS, TLS.
    Connect,
    /// No first token (no headers, or no content) within the first-token deadline.
    FirstToken,
    /// The answer started, then went silent past the stall (or total) deadline.
    Stall,
    /// This route cannot serve anyone: misconfigured, credentials refused, outbound host not
    /// allowed. The next candidate is tried at once, never this one again.
    Misconfigured,
    /// This route's dialect cannot honour the request (`unsupported_parameter`): the next
    /// candidate is tried at once; not a failure of the provider.
    Unsupported,
    /// The prompt does not fit: only a model with a larger context window is tried.
    ContextLength,
    /// The request would fail anywhere (invalid, filtered): answered at once.
    Request,
}

impl FailureClass {
    /// Whether the failure counts against the provider's health.
    pub fn is_provider_fault(self) -> bool {
        matches!(
            self,
            FailureClass::Server
                | FailureClass::RateLimited
                | FailureClass::Connect
                | FailureClass::FirstToken
                | FailureClass::Stall
                | FailureClass::Misconfigured
        )
    }

    /// Whether another candidate may serve the request.
    pub fn falls_back(self) -> bool {
        self != FailureClass::Request
    }
}

/// Retries per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Retries {
    /// After a 5xx or 408.
    pub server: u32,
    /// After a 429 (waiting its `Retry-After` when that is short).
    pub rate_limited: u32,
    /// After a connection failure.
    pub connect: u32,
    /// After a first-token deadline.
    pub first_token: u32,
    /// After a stall.
    pub stall: u32,
}

impl Default for Retries {
    /// One retry for a 5xx, a 429 or a failed connection; none for a silent or stalled route.
    fn default() -> Retries {
        Retries {
            server: 1,
            rate_limited: 1,
            connect: 1,
            first_token: 0,
            stall: 0,
        }
    }
}

impl Retries {
    /// The retries for one class (none for classes that are never retried on the same route).
    pub fn of(&self, class: FailureClass) -> u32 {
        match class {
            FailureClass::Server => self.server,
            FailureClass::RateLimited => self.rate_limited,
            FailureClass::Connect => self.connect,
            FailureClass::FirstToken => self.first_token,
            FailureClass::Stall => self.stall,
            FailureClass::Misconfigured
            | FailureClass::Unsupported
            | FailureClass::ContextLength
            | FailureClass::Request => 0,
        }
    }

    /// These retries with `o`'s values where it has them.
    pub fn with(self, o: &RetryOverrides) -> Retries {
        match *o {
            RetryOverrides::All(n) => Retries {
                server: n,
                rate_limited: n,
                connect: n,
                ..self
            },
            RetryOverrides::PerClass(c) => Retries {
                server: c.server.unwrap_or(self.server),
                rate_limited: c.rate_limited.unwrap_or(self.rate_limited),
                connect: c.connect.unwrap_or(self.connect),
                first_token: c.first_token.unwrap_or(self.first_token),
                stall: c.stall.unwrap_or(self.stall),
            },
        }
    }

    /// Applies the layers in order: catalog model, request.
    pub fn layered<'a>(self, layers: impl IntoIterator<Item = &'a RetryOverrides>) -> Retries {
        layers.into_iter().fold(self, Retries::with)
    }
}

/// Retries per class as configured; absent classes keep the value below them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassRetries {
    /// After a 5xx or 408.
    #[serde(rename = "5xx", default, skip_serializing_if = "Option::is_none")]
    pub server: Option<u32>,
    /// After a 429.
    #[serde(rename = "429", default, skip_serializing_if = "Option::is_none")]
    pub rate_limited: Option<u32>,
    /// After a connection failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<u32>,
    /// After a first-token deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token: Option<u32>,
    /// After a stall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall: Option<u32>,
}

/// `retries` as the catalog or a request gives it: a number, or a table per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RetryOverrides {
    /// The 5xx, 429 and connect retries (timeouts keep theirs).
    All(u32),
    /// Per class.
    PerClass(ClassRetries),
}

impl RetryOverrides {
    /// Checks every value is at most [`MAX_RETRIES`]; the error names the class.
    pub fn check(&self) -> Result<(), String> {
        let values = match *self {
            RetryOverrides::All(n) => vec![("retries", Some(n))],
            RetryOverrides::PerClass(c) => vec![
                ("5xx", c.server),
                ("429", c.rate_limited),
                ("connect", c.connect),
                ("first_token", c.first_token),
                ("stall", c.stall),
            ],
        };
        for (name, v) in values {
            if let Some(v) = v.filter(|v| *v > MAX_RETRIES) {
                return Err(format!("{name} must be 0 to {MAX_RETRIES}, got {v}"));
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for RetryOverrides {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RetryOverrides, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RetryOverrides;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "an integer from 0 to 5, or a table of them per failure class (5xx, 429, connect, first_token, stall)",
                )
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RetryOverrides, E> {
                u32::try_from(n)
                    .map(RetryOverrides::All)
                    .map_err(|_| E::custom(format!("retries must be 0 to {MAX_RETRIES}, got {n}")))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<RetryOverrides, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom(format!("retries must be 0 to {MAX_RETRIES}, got {n}")))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<RetryOverrides, A::Error> {
                ClassRetries::deserialize(de::value::MapAccessDeserializer::new(m))
                    .map(RetryOverrides::PerClass)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_routes_are_not_retried_by_default() {
        let r = Retries::default();
        assert_eq!(
            [
                r.of(FailureClass::Server),
                r.of(FailureClass::RateLimited),
                r.of(FailureClass::Connect),
                r.of(FailureClass::FirstToken),
                r.of(FailureClass::Stall),
                r.of(FailureClass::Misconfigured),
                r.of(FailureClass::Unsupported),
            ],
            [1, 1, 1, 0, 0, 0, 0]
        );
    }

    #[test]
    fn a_number_sets_the_retryable_classes_and_a_table_each_class() {
        let n: RetryOverrides = serde_json::from_str("3").unwrap();
        let r = Retries::default().with(&n);
        assert_eq!((r.server, r.connect, r.first_token, r.stall), (3, 3, 0, 0));
        let t: RetryOverrides =
            serde_json::from_str(r#"{"5xx": 2, "first_token": 1, "stall": 0}"#).unwrap();
        let r = Retries::default().layered([&n, &t]);
        assert_eq!((r.server, r.rate_limited, r.first_token), (2, 3, 1));
        let toml: RetryOverrides = toml::from_str::<
            std::collections::BTreeMap<String, RetryOverrides>,
        >("r = { 429 = 0, connect = 2 }")
        .unwrap()["r"];
        assert_eq!(
            Retries::default().with(&toml),
            Retries {
                rate_limited: 0,
                connect: 2,
                ..Retries::default()
            }
        );
    }

    #[test]
    fn bad_values_are_named() {
        let e = serde_json::from_str::<RetryOverrides>(r#"{"timeout": 1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `timeout`"), "{e}");
        assert!(serde_json::from_str::<RetryOverrides>("-1").is_err());
        assert!(serde_json::from_str::<RetryOverrides>("\"x\"").is_err());
        let t: RetryOverrides = serde_json::from_str(r#"{"stall": 9}"#).unwrap();
        assert_eq!(t.check().unwrap_err(), "stall must be 0 to 5, got 9");
        assert!(RetryOverrides::All(6).check().is_err());
        assert!(RetryOverrides::All(5).check().is_ok());
    }
}
