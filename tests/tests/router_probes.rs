//! The router's probe suite: hand-written prompt pairs (`tests/fixtures/router-probes.jsonl`,
//! easy < hard) across chat, code, math, reasoning, extraction, summarisation, multilingual and
//! multi-turn requests, scored natively with the shipped weights and catalog (no network, no
//! wasm). The scorer must order at least 90 % of the pairs right, and `auto` (the router's own
//! `decide`) must send the easy side of every "trivial vs clearly hard" pair to a cheaper model
//! than the hard side. The issue's hand probes are pinned to the model class they must reach.

use lumen_shared::domain::catalog::Catalog;
use lumen_shared::domain::route::{decide, Inputs};
use lumen_shared::domain::scorer::Packed;
use serde_json::{json, Map, Value};

const PROBES: &str = include_str!("../fixtures/router-probes.jsonl");
const CATALOG: &str = include_str!("../../config/catalog.toml");
const WEIGHTS: &[u8] = include_bytes!("../../config/router-weights.bin");

/// A chat body from a prompt (a string) or alternating user/assistant turns (an array).
fn body(side: &Value) -> Map<String, Value> {
    let messages: Vec<Value> = match side {
        Value::String(s) => vec![json!({"role": "user", "content": s})],
        Value::Array(turns) => turns
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let role = if i % 2 == 0 { "user" } else { "assistant" };
                json!({"role": role, "content": t})
            })
            .collect(),
        other => panic!("a probe side must be a string or an array, got {other}"),
    };
    json!({"model": "auto", "messages": messages})
        .as_object()
        .cloned()
        .unwrap()
}

struct Router {
    cat: Catalog,
    weights: Packed,
}

impl Router {
    fn new() -> Router {
        Router {
            cat: Catalog::from_toml(CATALOG, "config/catalog.toml").unwrap(),
            weights: Packed::from_bytes(WEIGHTS.to_vec()).unwrap(),
        }
    }

    /// The plan's winner and its blended price, and the route's score.
    fn auto(&self, b: &Map<String, Value>) -> (String, f64, f64) {
        let plan = decide(
            &self.cat,
            &Inputs {
                model: "auto",
                allowed: &[],
                body: Some(b),
                weights: &|| Some(&self.weights),
                latency: &|_, _| None,
                now_us: &|| 0.0,
                roll: 0,
            },
        )
        .unwrap();
        let route = plan.route.unwrap();
        let m = &self.cat.models[&route.model];
        (
            route.model.clone(),
            m.price.input + m.price.output,
            f64::from(route.score.unwrap()),
        )
    }

    /// Abilities of the cheapest and the strongest rated model: the pair the score is about.
    fn extremes(&self) -> (f64, f64) {
        let rated: Vec<(f64, f64)> = self
            .cat
            .models
            .values()
            .filter_map(|m| Some((m.price.input + m.price.output, m.quality?)))
            .collect();
        let cheapest = rated.iter().min_by(|a, b| a.0.total_cmp(&b.0)).unwrap().1;
        let strongest = rated.iter().map(|r| r.1).fold(f64::MIN, f64::max);
        (cheapest, strongest)
    }

    fn score(&self, b: &Map<String, Value>) -> f64 {
        let (cheap, strong) = self.extremes();
        self.weights
            .short_prob(&self.weights.score_body(b), cheap, strong)
    }
}

fn probes() -> Vec<Value> {
    PROBES
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_suite_is_what_it_claims() {
    let p = probes();
    assert!(p.len() >= 200, "{} pairs", p.len());
    for cat in [
        "chat",
        "code",
        "math",
        "reasoning",
        "extraction",
        "summarisation",
        "multilingual",
        "multi-turn",
    ] {
        let n = p.iter().filter(|x| x["category"] == cat).count();
        assert!(n >= 15, "{cat}: {n} pairs");
    }
    assert!(p.iter().filter(|x| x["trivial"] == true).count() >= 30);
}

#[test]
fn the_scorer_orders_at_least_90_percent_of_the_pairs() {
    let r = Router::new();
    let p = probes();
    let mut wrong = Vec::new();
    for x in &p {
        let (e, h) = (r.score(&body(&x["easy"])), r.score(&body(&x["hard"])));
        assert!((0.0..=1.0).contains(&e) && (0.0..=1.0).contains(&h));
        if e >= h {
            wrong.push(format!(
                "[{}] easy {e:.3} ≥ hard {h:.3}: {}",
                x["category"],
                x["hard"].to_string().chars().take(90).collect::<String>()
            ));
        }
    }
    let right = 1.0 - wrong.len() as f64 / p.len() as f64;
    eprintln!(
        "{:.1} % of {} pairs ordered right; wrong:\n{}",
        100.0 * right,
        p.len(),
        wrong.join("\n")
    );
    assert!(right >= 0.9, "only {:.1} % ordered right", 100.0 * right);
}

#[test]
fn auto_sends_the_trivial_side_to_a_cheaper_model() {
    let r = Router::new();
    let mut bad = Vec::new();
    for x in probes().iter().filter(|x| x["trivial"] == true) {
        let (em, ep, es) = r.auto(&body(&x["easy"]));
        let (hm, hp, hs) = r.auto(&body(&x["hard"]));
        if ep >= hp {
            bad.push(format!(
                "[{}] easy → {em} (score {es:.3}), hard → {hm} (score {hs:.3}): {}",
                x["category"],
                x["hard"].to_string().chars().take(90).collect::<String>()
            ));
        }
    }
    assert!(bad.is_empty(), "{} pairs:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn the_issues_hand_probes_reach_the_right_class_of_model() {
    let r = Router::new();
    let ask = |text: &str| r.auto(&body(&json!(text)));
    let cheapest = "meta-llama/llama-3.1-8b-instruct";
    let strongest = "gpt-4o";
    let (m, _, s) =
        ask("Implement a lock-free multi-producer multi-consumer queue in Rust with tests.");
    assert_ne!(m, cheapest, "lock-free queue (score {s})");
    let (m, _, s) = ask("What is 2+2?");
    assert_eq!(m, cheapest, "2+2 (score {s})");
    let (m, _, s) =
        ask("```python\ndef add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n```");
    assert_ne!(m, strongest, "trivial add with an assert (score {s})");
}

#[test]
fn proofs_reach_the_strongest_model() {
    let r = Router::new();
    for proof in [
        "Prove that every continuous solution of Cauchy's functional equation f(x+y) = f(x) + f(y) is linear.",
        "Prove that there are infinitely many primes of the form 4k+3.",
    ] {
        let (m, _, s) = r.auto(&body(&json!(proof)));
        assert_eq!(m, "gpt-4o", "{proof} (score {s})");
    }
}
