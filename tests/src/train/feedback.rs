//! Exported feedback labels for retraining the scorer (`lumen-train --feedback FILE`).
//!
//! One JSON object per line:
//!
//! ```json
//! {"prompt": "What is 2+2?", "model": "meta-llama/llama-3.1-8b-instruct", "score": 1}
//! {"messages": [{"role": "user", "content": "…"}], "model": "gpt-4o-mini", "label": "bad"}
//! ```
//!
//! - `prompt` (a string) or `messages` (a chat completion's messages, scored like a request);
//! - `model`: the catalog model (id or alias) that answered; it needs a `quality`;
//! - `score`: how good the answer was, in [0, 1], or `label`: `good` / `up` / `kept` (1) or
//!   `bad` / `down` / `escalated` (0) — a cascade that escalated is a label that the cheap answer
//!   fell short;
//! - `weight` (optional, > 0, default 1): how much the line counts.
//!
//! A line becomes an example for the gap model: the answering model against the catalog's
//! strongest model, target `P(falls short) = 1 − score`. Lines about the strongest model itself
//! carry no gap and are skipped (counted in the report).

use super::{fnv32, Example};
use anyhow::{bail, Context as _};
use lumen_shared::domain::catalog::Catalog;
use lumen_shared::domain::scorer::{body_text, featurize, Structure};
use serde_json::Value;
use std::path::Path;

/// Feedback read from a file.
pub struct Feedback {
    /// Examples for training.
    pub train: Vec<Example>,
    /// Examples held out for the before/after comparison (a fixed 20 %, by hash of the line).
    pub held_out: Vec<Example>,
    /// Lines skipped (about the strongest model).
    pub skipped: usize,
}

/// Reads a feedback JSONL file against the catalog.
pub fn load(path: &Path, catalog: &Catalog) -> anyhow::Result<Feedback> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let top = catalog
        .models
        .values()
        .filter_map(|m| m.quality)
        .fold(f64::NEG_INFINITY, f64::max);
    if !top.is_finite() {
        bail!("the catalog has no model with a quality; feedback needs one");
    }
    let mut out = Feedback {
        train: Vec::new(),
        held_out: Vec::new(),
        skipped: 0,
    };
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), n + 1);
        let v: Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let (text, structure) = match (v.get("prompt"), v.get("messages")) {
            (Some(Value::String(p)), None) => (
                p.clone(),
                Structure {
                    turns: 1,
                    ..Structure::default()
                },
            ),
            (None, Some(Value::Array(_))) => body_text(v.as_object().context("object")?),
            _ => bail!(
                "{}: needs exactly one of \"prompt\" (a string) or \"messages\" (an array)",
                at()
            ),
        };
        let model = v["model"]
            .as_str()
            .with_context(|| format!("{}: \"model\" must be a string", at()))?;
        let quality = catalog
            .lookup(model)
            .and_then(|(_, m)| m.quality)
            .with_context(|| {
                format!(
                    "{}: model \"{model}\" is not a catalog model with a quality",
                    at()
                )
            })?;
        let score = match (v.get("score"), v.get("label").and_then(Value::as_str)) {
            (Some(s), None) => match s.as_f64() {
                Some(x) if (0.0..=1.0).contains(&x) => x,
                _ => bail!("{}: \"score\" must be a number in [0, 1], got {s}", at()),
            },
            (None, Some("good" | "up" | "kept")) => 1.0,
            (None, Some("bad" | "down" | "escalated")) => 0.0,
            (None, Some(l)) => bail!(
                "{}: unknown label \"{l}\"; known: good, up, kept, bad, down, escalated",
                at()
            ),
            _ => bail!("{}: needs exactly one of \"score\" or \"label\"", at()),
        };
        let weight = match v.get("weight") {
            None => 1.0,
            Some(w) => match w.as_f64() {
                Some(x) if x > 0.0 && x.is_finite() => x,
                _ => bail!("{}: \"weight\" must be a positive number, got {w}", at()),
            },
        };
        if quality >= top {
            out.skipped += 1;
            continue;
        }
        let ex = Example {
            features: featurize(&text, &structure),
            theta_cheap: quality,
            theta_strong: top,
            target: 1.0 - score,
            weight,
        };
        if fnv32(line).is_multiple_of(5) {
            out.held_out.push(ex);
        } else {
            out.train.push(ex);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> anyhow::Result<Feedback> {
        let cat =
            Catalog::from_toml(include_str!("../../../config/catalog.toml"), "catalog").unwrap();
        let path = std::env::temp_dir().join(format!(
            "lumen-feedback-{}-{}.jsonl",
            std::process::id(),
            fnv32(text)
        ));
        std::fs::write(&path, text).unwrap();
        let r = load(&path, &cat);
        let _ = std::fs::remove_file(&path);
        r
    }

    #[test]
    fn lines_become_examples_against_the_strongest_model() {
        let mut text = String::new();
        for i in 0..50 {
            text.push_str(&format!(
                "{{\"prompt\": \"question {i}\", \"model\": \"meta-llama/llama-3.1-8b-instruct\", \"score\": 0.25}}\n"
            ));
        }
        text.push_str("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"model\": \"gpt-4o-mini\", \"label\": \"escalated\", \"weight\": 2}\n");
        text.push_str("{\"prompt\": \"x\", \"model\": \"gpt-4o\", \"label\": \"good\"}\n\n");
        let f = load_text(&text).unwrap();
        assert_eq!(f.train.len() + f.held_out.len(), 51);
        assert_eq!(f.skipped, 1, "the strongest model has no gap");
        assert!(!f.held_out.is_empty() && f.held_out.len() < 25);
        let all: Vec<&Example> = f.train.iter().chain(&f.held_out).collect();
        assert!(all
            .iter()
            .any(|e| e.target == 1.0 && e.weight == 2.0 && e.theta_cheap == 1.2));
        assert!(all.iter().all(|e| e.theta_strong == 1.7));
        assert!(all.iter().filter(|e| e.target == 0.75).count() == 50);
    }

    #[test]
    fn bad_lines_are_refused_with_their_line_number() {
        let err = |t: &str| format!("{:#}", load_text(t).err().unwrap());
        assert!(
            err("{\"prompt\": \"x\", \"model\": \"nope\", \"score\": 1}")
                .contains(":1: model \"nope\"")
        );
        assert!(
            err("\n{\"prompt\": \"x\", \"model\": \"gpt-4o-mini\", \"score\": 2}")
                .contains(":2: \"score\" must be")
        );
        assert!(
            err("{\"prompt\": \"x\", \"model\": \"gpt-4o-mini\", \"label\": \"meh\"}")
                .contains("unknown label")
        );
        assert!(
            err("{\"model\": \"gpt-4o-mini\", \"score\": 1}").contains("exactly one of \"prompt\"")
        );
        assert!(err("{\"prompt\": \"x\", \"model\": \"gpt-4o-mini\"}")
            .contains("exactly one of \"score\""));
    }
}
