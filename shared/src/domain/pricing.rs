//! Pricing: the cost of a usage at catalog prices (US dollars per million tokens), and the
//! `lumen` cost object every response carries. The meter and the provider both price through
//! [`cost_nanos`], so what a client is shown is what is recorded.
//!
//! | usage field            | priced at                    |
//! |------------------------|------------------------------|
//! | fresh prompt tokens    | `input`                      |
//! | `cached_tokens`        | `cached_input` (or `input`)  |
//! | `cache_write_tokens`   | `cache_write` (or `input`)   |
//! | non-reasoning output   | `output`                     |
//! | `reasoning_tokens`     | `reasoning` (or `output`)    |
//!
//! `prompt_tokens` includes cached and cache-write tokens and `completion_tokens` includes
//! reasoning tokens (OpenAI's convention; the dialect adapters normalise to it).

use crate::domain::catalog::Price;
use crate::wire::openai::Usage;
use serde_json::{json, Value};

/// Nano-dollars per dollar: costs are summed as integers so aggregates never drift.
pub const NANOS_PER_USD: f64 = 1e9;

/// Cost in US dollars.
pub fn cost_usd(usage: &Usage, price: &Price) -> f64 {
    let cached = usage.cached_tokens.min(usage.prompt_tokens);
    let written = usage.cache_write_tokens.min(usage.prompt_tokens - cached);
    let fresh = usage.prompt_tokens - cached - written;
    let reasoning = usage.reasoning_tokens.min(usage.completion_tokens);
    let output = usage.completion_tokens - reasoning;
    (fresh as f64 * price.input
        + cached as f64 * price.cached_input.unwrap_or(price.input)
        + written as f64 * price.cache_write.unwrap_or(price.input)
        + output as f64 * price.output
        + reasoning as f64 * price.reasoning.unwrap_or(price.output))
        / 1e6
}

/// Cost in whole nano-dollars.
pub fn cost_nanos(usage: &Usage, price: &Price) -> i64 {
    (cost_usd(usage, price) * NANOS_PER_USD).round() as i64
}

/// The `lumen` object of a response: `cost` (US dollars, from the rounded nano-dollars the meter
/// records), `cost_per_1k` (dollars per thousand tokens, prompt and completion together),
/// `model` and `provider`.
pub fn lumen_object(usage: &Usage, price: &Price, model: &str, provider: &str) -> Value {
    let nanos = cost_nanos(usage, price);
    let cost = nanos as f64 / NANOS_PER_USD;
    let total = usage.prompt_tokens + usage.completion_tokens;
    // Whole nano-dollars per thousand tokens, so the number prints short and parses back exactly.
    let per_1k = if total == 0 {
        0.0
    } else {
        (nanos as f64 * 1000.0 / total as f64).round() / NANOS_PER_USD
    };
    json!({
        "cost": cost,
        "cost_per_1k": per_1k,
        "currency": "USD",
        "model": model,
        "provider": provider,
    })
}

/// The `x-lumen-cost` header value: dollars with nine decimals (exact nano-dollars).
pub fn cost_header(usage: &Usage, price: &Price) -> String {
    let nanos = cost_nanos(usage, price);
    format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price() -> Price {
        Price {
            input: 0.15,
            output: 0.6,
            cached_input: Some(0.075),
            cache_write: None,
            reasoning: None,
            source: "s".into(),
            as_of: "d".into(),
        }
    }

    fn usage(p: u64, c: u64, cached: u64, write: u64, reasoning: u64) -> Usage {
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
            cached_tokens: cached,
            cache_write_tokens: write,
            reasoning_tokens: reasoning,
        }
    }

    #[test]
    fn golden_arithmetic() {
        let u = usage(1_000_000, 1_000_000, 0, 0, 0);
        assert!((cost_usd(&u, &price()) - 0.75).abs() < 1e-12);
        let u = usage(1000, 500, 400, 0, 0);
        // 600 fresh × 0.15 + 400 cached × 0.075 + 500 × 0.6 = 90 + 30 + 300 = 420 per 1e6
        assert_eq!(cost_nanos(&u, &price()), 420_000);
        let mut p = price();
        p.cached_input = None;
        assert_eq!(cost_nanos(&u, &p), 450_000);
    }

    #[test]
    fn cache_writes_and_reasoning_are_priced_apart() {
        // Claude Sonnet-like prices: 3 in, 15 out, 0.30 cache read, 3.75 cache write.
        let p = Price {
            input: 3.0,
            output: 15.0,
            cached_input: Some(0.3),
            cache_write: Some(3.75),
            reasoning: None,
            source: "s".into(),
            as_of: "d".into(),
        };
        // 100 fresh × 3 + 2000 read × 0.3 + 1000 written × 3.75 + 50 out × 15
        // = 300 + 600 + 3750 + 750 = 5400 per 1e6 → 5_400_000 nano-dollars.
        let u = usage(3100, 50, 2000, 1000, 0);
        assert_eq!(cost_nanos(&u, &p), 5_400_000);
        assert_eq!(cost_header(&u, &p), "0.005400000");
        // Reasoning at its own price: 40 reasoning × 20 + 10 × 15 = 950 per 1e6.
        let p = Price {
            reasoning: Some(20.0),
            ..p
        };
        assert_eq!(cost_nanos(&usage(0, 50, 0, 0, 40), &p), 950_000);
        let obj = lumen_object(
            &u,
            &Price {
                reasoning: None,
                ..p
            },
            "m",
            "prov",
        );
        assert_eq!(obj["cost"], 0.0054);
        // 5_400_000 nano-dollars × 1000 / 3150 tokens = 1_714_285.7 → 1_714_286.
        assert_eq!(obj["cost_per_1k"], 0.001714286);
        assert_eq!(
            (obj["model"].as_str(), obj["provider"].as_str()),
            (Some("m"), Some("prov"))
        );
        assert_eq!(
            lumen_object(&Usage::default(), &price(), "m", "p")["cost_per_1k"],
            0.0
        );
    }

    #[test]
    fn counts_that_do_not_add_up_are_clamped() {
        // More cached than prompt: all prompt tokens are cached, none fresh.
        assert_eq!(cost_nanos(&usage(10, 0, 50, 50, 0), &price()), 750);
        assert_eq!(
            cost_header(&usage(10, 0, 50, 50, 0), &price()),
            "0.000000750"
        );
    }
}
