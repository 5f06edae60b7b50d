//! Pricing: the cost of a usage at catalog prices (US dollars per million tokens).

use crate::catalog::Price;
use crate::openai::Usage;

/// Nano-dollars per dollar: costs are summed as integers so aggregates never drift.
pub const NANOS_PER_USD: f64 = 1e9;

/// Cost in US dollars. Cached prompt tokens are priced at `cached_input` (default `input`).
pub fn cost_usd(usage: &Usage, price: &Price) -> f64 {
    let cached = usage.cached_tokens.min(usage.prompt_tokens);
    let fresh = usage.prompt_tokens - cached;
    (fresh as f64 * price.input
        + cached as f64 * price.cached_input.unwrap_or(price.input)
        + usage.completion_tokens as f64 * price.output)
        / 1e6
}

/// Cost in whole nano-dollars.
pub fn cost_nanos(usage: &Usage, price: &Price) -> i64 {
    (cost_usd(usage, price) * NANOS_PER_USD).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price() -> Price {
        Price {
            input: 0.15,
            output: 0.6,
            cached_input: Some(0.075),
            source: "s".into(),
            as_of: "d".into(),
        }
    }

    #[test]
    fn golden_arithmetic() {
        let u = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 1_000_000,
            cached_tokens: 0,
        };
        assert!((cost_usd(&u, &price()) - 0.75).abs() < 1e-12);
        let u = Usage {
            prompt_tokens: 1000,
            completion_tokens: 500,
            cached_tokens: 400,
        };
        // 600 fresh × 0.15 + 400 cached × 0.075 + 500 × 0.6 = 90 + 30 + 300 = 420 per 1e6
        assert_eq!(cost_nanos(&u, &price()), 420_000);
        let mut p = price();
        p.cached_input = None;
        assert_eq!(cost_nanos(&u, &p), 450_000);
    }
}
