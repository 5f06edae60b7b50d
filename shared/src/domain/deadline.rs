//! Deadlines of one upstream call: connect, time to first token, stall between tokens, total.
//!
//! On by default ([`Deadlines::default`]: 10 s to the first token, 300 s for cold-start
//! backends); the catalog (per model), the key and the request may each override any of them
//! with [`Overrides`], applied in that order, so the most specific one wins. A breach counts as
//! a failure of the provider. A stream's first token is its first content chunk; a whole answer
//! shows none before its last, so its wait is [`Deadlines::whole_answer_ms`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Deadlines in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Deadlines {
    /// Until the upstream's response headers arrive.
    pub connect_ms: u64,
    /// Until the first token (the first content-bearing chunk, or the whole answer).
    pub first_token_ms: u64,
    /// Longest silence between two chunks of a stream.
    pub stall_ms: u64,
    /// The whole call.
    pub total_ms: u64,
}

impl Default for Deadlines {
    fn default() -> Deadlines {
        Deadlines {
            connect_ms: 10_000,
            first_token_ms: DEFAULT_FIRST_TOKEN_MS,
            stall_ms: 30_000,
            total_ms: 600_000,
        }
    }
}

/// Default time to first token for a backend that is not cold-start: a route that has not
/// started answering by then moves to the next candidate (catalog and request may change it).
pub const DEFAULT_FIRST_TOKEN_MS: u64 = 10_000;

/// What a whole (non-stream) answer may take per output token on top of the first-token
/// deadline: its headers arrive with its last token, so the wait for them grows with the output
/// it may produce (50 ms a token is 20 tokens a second, slower than any served model).
pub const WHOLE_ANSWER_MS_PER_TOKEN: u64 = 50;

/// Deadlines for a backend that may be cold (scaled to zero): the first token may take minutes.
pub const COLD_START_FIRST_TOKEN_MS: u64 = 300_000;

/// Some deadlines, as configured or asked for; absent ones keep the value below them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// See [`Deadlines::connect_ms`].
    pub connect_ms: Option<u64>,
    /// See [`Deadlines::first_token_ms`].
    pub first_token_ms: Option<u64>,
    /// See [`Deadlines::stall_ms`].
    pub stall_ms: Option<u64>,
    /// See [`Deadlines::total_ms`].
    pub total_ms: Option<u64>,
}

/// The largest deadline accepted anywhere: one hour.
pub const MAX_MS: u64 = 3_600_000;

impl Overrides {
    /// Checks every value is between 1 ms and [`MAX_MS`]; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("connect_ms", self.connect_ms),
            ("first_token_ms", self.first_token_ms),
            ("stall_ms", self.stall_ms),
            ("total_ms", self.total_ms),
        ] {
            if let Some(v) = v {
                if v == 0 || v > MAX_MS {
                    return Err(format!(
                        "{name} must be between 1 and {MAX_MS} milliseconds, got {v}"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Deadlines {
    /// The deadlines for a backend marked cold-start: a longer first token.
    pub fn cold_start(self) -> Deadlines {
        Deadlines {
            first_token_ms: self.first_token_ms.max(COLD_START_FIRST_TOKEN_MS),
            total_ms: self.total_ms.max(COLD_START_FIRST_TOKEN_MS),
            ..self
        }
    }

    /// The wait for a whole answer of at most `output_tokens`: the first-token deadline plus
    /// [`WHOLE_ANSWER_MS_PER_TOKEN`] per token, within the total deadline.
    pub fn whole_answer_ms(&self, output_tokens: u64) -> u64 {
        self.first_token_ms
            .saturating_add(output_tokens.saturating_mul(WHOLE_ANSWER_MS_PER_TOKEN))
            .min(self.total_ms)
    }

    /// These deadlines with `o`'s values where it has them.
    pub fn with(self, o: &Overrides) -> Deadlines {
        Deadlines {
            connect_ms: o.connect_ms.unwrap_or(self.connect_ms),
            first_token_ms: o.first_token_ms.unwrap_or(self.first_token_ms),
            stall_ms: o.stall_ms.unwrap_or(self.stall_ms),
            total_ms: o.total_ms.unwrap_or(self.total_ms),
        }
    }

    /// Applies the layers in order: catalog model, key, request.
    pub fn layered<'a>(self, layers: impl IntoIterator<Item = &'a Overrides>) -> Deadlines {
        layers.into_iter().fold(self, Deadlines::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_layer_wins_per_field() {
        let model = Overrides {
            first_token_ms: Some(20_000),
            stall_ms: Some(5_000),
            ..Overrides::default()
        };
        let key = Overrides {
            stall_ms: Some(4_000),
            ..Overrides::default()
        };
        let request = Overrides {
            first_token_ms: Some(1_500),
            ..Overrides::default()
        };
        let d = Deadlines::default().layered([&model, &key, &request]);
        assert_eq!(
            d,
            Deadlines {
                connect_ms: 10_000,
                first_token_ms: 1_500,
                stall_ms: 4_000,
                total_ms: 600_000,
            }
        );
    }

    #[test]
    fn cold_start_lengthens_only_the_first_token_and_total() {
        let d = Deadlines::default().cold_start();
        assert_eq!(d.first_token_ms, COLD_START_FIRST_TOKEN_MS);
        assert_eq!(d.stall_ms, Deadlines::default().stall_ms);
    }

    #[test]
    fn a_whole_answer_waits_for_its_output_within_the_total() {
        let d = Deadlines::default();
        assert_eq!(d.first_token_ms, 10_000);
        assert_eq!(d.whole_answer_ms(0), 10_000);
        assert_eq!(d.whole_answer_ms(200), 20_000);
        assert_eq!(d.whole_answer_ms(u64::MAX), d.total_ms);
    }

    #[test]
    fn bad_values_are_named() {
        let o = Overrides {
            stall_ms: Some(0),
            ..Overrides::default()
        };
        assert_eq!(
            o.check().unwrap_err(),
            "stall_ms must be between 1 and 3600000 milliseconds, got 0"
        );
        let o: Result<Overrides, _> = serde_json::from_str(r#"{"stal_ms": 5}"#);
        assert!(o
            .unwrap_err()
            .to_string()
            .contains("unknown field `stal_ms`"));
    }
}
