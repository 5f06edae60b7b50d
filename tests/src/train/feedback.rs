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
//! `GET /admin/feedback` exports lines in this format without the prompt, which Lumen never
//! stores: each carries the `request_id` instead. `--prompts FILE` (JSONL lines
//! `{"request_id", "prompt" | "messages"}`, from the operator's own logs) fills the prompt in by
//! request id; exported lines whose request id it lacks are counted and left out. Other fields
//! of an export line (`source`, `tier`, `route_score`, `feedback_label`, …) are ignored.
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
    /// Lines left out because `--prompts` had no prompt for their request id.
    pub unjoined: usize,
}

/// Prompts by request id (`--prompts FILE`): each line `{"request_id", "prompt" | "messages"}`.
pub fn load_prompts(path: &Path) -> anyhow::Result<std::collections::HashMap<String, Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut out = std::collections::HashMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), n + 1);
        let v: Value = serde_json::from_str(line).with_context(|| format!("{at}: not JSON"))?;
        let id = v["request_id"]
            .as_str()
            .with_context(|| format!("{at}: \"request_id\" must be a string"))?;
        if v.get("prompt").is_none() && v.get("messages").is_none() {
            bail!("{at}: needs \"prompt\" or \"messages\"");
        }
        out.insert(id.to_string(), v);
    }
    Ok(out)
}

/// Reads a feedback JSONL file against the catalog; `prompts` (request id → a line with
/// `prompt` or `messages`) fills in the prompt of lines that have none.
pub fn load(
    path: &Path,
    catalog: &Catalog,
    prompts: Option<&std::collections::HashMap<String, Value>>,
) -> anyhow::Result<Feedback> {
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
        unjoined: 0,
    };
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), n + 1);
        let mut v: Value =
            serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        if v.get("prompt").is_none() && v.get("messages").is_none() {
            if let Some(prompts) = prompts {
                match v["request_id"].as_str().and_then(|id| prompts.get(id)) {
                    Some(p) => {
                        for k in ["prompt", "messages"] {
                            if let Some(x) = p.get(k) {
                                v[k] = x.clone();
                            }
                        }
                    }
                    None => {
                        out.unjoined += 1;
                        continue;
                    }
                }
            }
        }
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
                "{}: needs exactly one of \"prompt\" (a string) or \"messages\" (an array); Lumen's export carries none (it stores no content): pass --prompts FILE to join them by request_id",
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
        let r = load(&path, &cat, None);
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
    fn exported_lines_get_their_prompts_by_request_id() {
        let cat =
            Catalog::from_toml(include_str!("../../../config/catalog.toml"), "catalog").unwrap();
        let dir = std::env::temp_dir().join(format!("lumen-fb-join-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let export = dir.join("export.jsonl");
        std::fs::write(
            &export,
            concat!(
                r#"{"source":"feedback","request_id":"req_a","model":"gpt-4o-mini","score":0.0,"tier":"lumen/auto","feedback_label":"wrong"}"#,
                "\n",
                r#"{"source":"cascade","request_id":"req_b","model":"meta-llama/llama-3.1-8b-instruct","label":"escalated"}"#,
                "\n",
                r#"{"source":"feedback","request_id":"req_c","model":"gpt-4o-mini","score":1.0}"#,
                "\n"
            ),
        )
        .unwrap();
        let prompts = dir.join("prompts.jsonl");
        std::fs::write(
            &prompts,
            "{\"request_id\":\"req_a\",\"prompt\":\"prove it\"}\n{\"request_id\":\"req_b\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}\n",
        )
        .unwrap();
        let joined = load_prompts(&prompts).unwrap();
        let f = load(&export, &cat, Some(&joined)).unwrap();
        assert_eq!((f.train.len() + f.held_out.len(), f.unjoined), (2, 1));
        assert!(f.train.iter().chain(&f.held_out).all(|e| e.target == 1.0));
        // Without --prompts, an exported line is refused with the hint.
        let e = format!("{:#}", load(&export, &cat, None).err().unwrap());
        assert!(e.contains("--prompts"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
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
