//! The difficulty scorer behind `model: "auto"`: a featurizer (hashed word unigrams and bigrams
//! plus a few structural features) and a logistic model over it, trained offline by `lumen-train`
//! (`scripts/train-router.sh`) and shipped as `config/router-weights.bin`.
//!
//! The same code featurizes in the trainer and in the router component, so training and serving
//! features cannot drift. The model is item-response style: a request has a difficulty `z` (a
//! logit), a model has an ability `θ` (the catalog's `quality`), and the predicted chance that the
//! model answers well is `σ(θ − z)`.

use serde_json::{Map, Value};

/// Hashed feature space: `2^HASH_BITS` buckets.
pub const HASH_BITS: u32 = 12;
/// Number of hashed buckets.
pub const HASHED: usize = 1 << HASH_BITS;
/// Structural (dense) features, in weight order after the hashed buckets.
pub const DENSE: &[&str] = &[
    "log_chars",
    "digit_share",
    "math_share",
    "latex",
    "lines",
    "non_ascii_share",
    "code",
    "code_tests",
    "turns",
    "tools",
    "json_format",
    "multi_step",
];
/// Fixed prior weights of structural features the training data cannot teach (MMLU-Pro has no
/// code with tests, tools, JSON output or multi-turn chats): used as these features' weights in
/// training (fixed, not learned) and in serving alike. Values: difficulty logits, set by hand.
pub const PRIOR: &[(&str, f32)] = &[
    ("code", 0.3),
    ("code_tests", 0.6),
    ("turns", 0.3),
    ("tools", 0.3),
    ("json_format", 0.1),
];

/// Prior weight of dense feature `i` (0 when none).
pub fn prior(i: usize) -> f32 {
    let name = DENSE.get(i).copied().unwrap_or("");
    PRIOR
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0.0, |(_, w)| *w)
}

/// Total number of weights.
pub const DIM: usize = HASHED + DENSE.len();
/// Only the first this many bytes of text are scanned (n-grams and structural features; the
/// length feature counts the whole text), which bounds the scorer's time per request.
pub const MAX_SCAN: usize = 4 * 1024;
/// Magic bytes of the weights file.
pub const MAGIC: &[u8; 8] = b"LUMENRW1";

/// The structure of a request that is not in its text.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Structure {
    /// Number of messages.
    pub turns: usize,
    /// The request declares tools.
    pub tools: bool,
    /// The request asks for JSON output (`response_format`).
    pub json_format: bool,
}

/// A sparse feature vector: (index, value), indexes may repeat.
pub type Features = Vec<(u32, f32)>;

fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn bucket(h: u64) -> u32 {
    // Fold the high bits in: FNV's low bits alone mix poorly.
    ((h ^ (h >> 29) ^ (h >> 47)) as u32) & (HASHED as u32 - 1)
}

fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn is_math(c: char) -> bool {
    matches!(
        c,
        '=' | '+' | '*' | '/' | '^' | '<' | '>' | '√' | '∑' | '∫' | 'π' | '≤' | '≥' | '×' | '÷'
    )
}

/// Features of a text with its structure.
pub fn featurize(text: &str, s: &Structure) -> Features {
    let mut out: Features = Vec::with_capacity(256);
    let scan = cut(text, MAX_SCAN);
    let mut word = String::with_capacity(32);
    let mut prev: u64 = 0;
    let push_word = |word: &mut String, prev: &mut u64, out: &mut Features| {
        if word.is_empty() {
            return;
        }
        let h = fnv1a(1, word.as_bytes());
        out.push((bucket(h), 1.0));
        if *prev != 0 {
            out.push((bucket(h.rotate_left(17) ^ prev.wrapping_mul(31)), 1.0));
        }
        *prev = h;
        word.clear();
    };
    for c in scan.chars() {
        if c.is_ascii() {
            // Fast path, same result as the Unicode one below for ASCII.
            if c.is_ascii_alphanumeric() {
                word.push(c.to_ascii_lowercase());
            } else {
                push_word(&mut word, &mut prev, &mut out);
            }
        } else if c.is_alphanumeric() {
            for l in c.to_lowercase() {
                word.push(l);
            }
        } else {
            push_word(&mut word, &mut prev, &mut out);
        }
    }
    push_word(&mut word, &mut prev, &mut out);
    if !out.is_empty() {
        let norm = 1.0 / (out.len() as f32).sqrt();
        for f in &mut out {
            f.1 = norm;
        }
    }

    let (mut chars, mut digits, mut math, mut non_ascii, mut lines) = (0usize, 0, 0, 0, 0);
    for c in scan.chars() {
        chars += 1;
        if c.is_ascii_digit() {
            digits += 1;
        } else if is_math(c) {
            math += 1;
        } else if c == '\n' {
            lines += 1;
        } else if !c.is_ascii() {
            non_ascii += 1;
        }
    }
    let share = |n: usize| n as f32 / chars.max(1) as f32;
    let total_chars = if text.len() == scan.len() {
        chars
    } else {
        text.chars().count()
    };
    let code = scan.contains("```")
        || scan.contains("def ")
        || scan.contains("fn ")
        || scan.contains("function ")
        || scan.contains("#include");
    let lower = scan.to_lowercase();
    let lower_has = |needles: &[&str]| needles.iter().filter(|n| lower.contains(*n)).count();
    let tests = code && lower_has(&["assert", "test", "unittest", "#[test]"]) > 0;
    let steps = lower_has(&[
        "step by step",
        "prove",
        "derive",
        "show that",
        "then ",
        "finally",
        "compute",
    ]);
    let dense = [
        ((1 + total_chars) as f32).ln() / 8.0,
        share(digits) * 5.0,
        share(math) * 10.0,
        if scan.contains("\\frac") || scan.contains("$$") || scan.contains("\\(") {
            1.0
        } else {
            0.0
        },
        ((1 + lines) as f32).ln() / 4.0,
        share(non_ascii),
        if code { 1.0 } else { 0.0 },
        if tests { 1.0 } else { 0.0 },
        (s.turns.saturating_sub(1) as f32 / 4.0).min(1.0),
        if s.tools { 1.0 } else { 0.0 },
        if s.json_format { 1.0 } else { 0.0 },
        (steps as f32 / 3.0).min(1.0),
    ];
    for (i, v) in dense.iter().enumerate() {
        if *v != 0.0 {
            out.push(((HASHED + i) as u32, *v));
        }
    }
    out
}

/// The text and structure of a chat completion body: the text of every message (string content
/// or the `text` of content parts), in order.
pub fn body_text(body: &Map<String, Value>) -> (String, Structure) {
    let mut text = String::new();
    let msgs = body.get("messages").and_then(Value::as_array);
    for m in msgs.into_iter().flatten() {
        match m.get("content") {
            Some(Value::String(s)) => text.push_str(s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        text.push_str(t);
                        text.push('\n');
                    }
                }
            }
            _ => {}
        }
        text.push('\n');
    }
    let s = Structure {
        turns: msgs.map_or(0, Vec::len),
        tools: body
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty()),
        json_format: body
            .get("response_format")
            .and_then(|r| r.get("type"))
            .and_then(Value::as_str)
            .is_some_and(|t| t == "json_object" || t == "json_schema"),
    };
    (text, s)
}

/// Trained weights: one per feature, plus a bias.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// Bias (the difficulty of an empty request).
    pub bias: f32,
    /// `DIM` weights.
    pub w: Vec<f32>,
}

impl Weights {
    /// Difficulty logit of a feature vector (learned weights plus [`PRIOR`]).
    pub fn difficulty(&self, f: &Features) -> f32 {
        let mut z = self.bias;
        for (i, v) in f {
            let i = *i as usize;
            let mut w = self.w.get(i).copied().unwrap_or(0.0);
            if i >= HASHED {
                w += prior(i - HASHED);
            }
            z += w * v;
        }
        z
    }

    /// Difficulty logit of a chat completion body.
    pub fn score_body(&self, body: &Map<String, Value>) -> f32 {
        let (text, s) = body_text(body);
        self.difficulty(&featurize(&text, &s))
    }

    /// The compact file: magic, `HASH_BITS` (u32), dense count (u32), scale (f32), bias (f32),
    /// then `DIM` weights as i16 (all little-endian), weight = i16 × scale.
    pub fn to_bytes(&self) -> Vec<u8> {
        let max = self.w.iter().fold(0f32, |m, w| m.max(w.abs()));
        let scale = if max > 0.0 { max / 32767.0 } else { 1.0 };
        let mut out = Vec::with_capacity(24 + 2 * DIM);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&HASH_BITS.to_le_bytes());
        out.extend_from_slice(&(DENSE.len() as u32).to_le_bytes());
        out.extend_from_slice(&scale.to_le_bytes());
        out.extend_from_slice(&self.bias.to_le_bytes());
        for w in &self.w {
            out.extend_from_slice(&((w / scale).round() as i16).to_le_bytes());
        }
        out
    }

    /// Reads the compact file, refusing one made for other features.
    pub fn from_bytes(b: &[u8]) -> Result<Weights, String> {
        let u32_at = |i: usize| -> u32 { u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) };
        if b.len() < 24 || &b[..8] != MAGIC {
            return Err("not a Lumen router weights file (bad magic)".into());
        }
        let (bits, dense) = (u32_at(8), u32_at(12));
        if bits != HASH_BITS || dense as usize != DENSE.len() {
            return Err(format!(
                "weights were trained for {bits} hash bits and {dense} structural features; this build uses {HASH_BITS} and {}; retrain with scripts/train-router.sh",
                DENSE.len()
            ));
        }
        if b.len() != 24 + 2 * DIM {
            return Err(format!(
                "weights file has {} bytes, expected {}",
                b.len(),
                24 + 2 * DIM
            ));
        }
        let scale = f32::from_bits(u32_at(16));
        let bias = f32::from_bits(u32_at(20));
        let w = b[24..]
            .chunks_exact(2)
            .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) * scale)
            .collect();
        Ok(Weights { bias, w })
    }
}

/// The logistic function.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Predicted chance that a model of ability `quality` answers a request of difficulty `z` well.
pub fn predicted_quality(quality: f64, z: f32) -> f64 {
    f64::from(sigmoid(quality as f32 - z))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn featurize_is_deterministic_and_bounded() {
        let s = Structure::default();
        let a = featurize("What is 2+2? Explain step by step.", &s);
        assert_eq!(a, featurize("What is 2+2? Explain step by step.", &s));
        assert!(a.iter().all(|(i, _)| (*i as usize) < DIM));
        // Case does not matter for n-grams.
        let b = featurize("WHAT IS 2+2? EXPLAIN STEP BY STEP.", &s);
        assert_eq!(a, b);
        assert!(featurize("", &s).iter().all(|(i, _)| *i as usize >= HASHED));
        let long = "x ".repeat(100_000);
        assert!(featurize(&long, &s).len() <= MAX_SCAN + DENSE.len());
    }

    #[test]
    fn structure_comes_from_the_body() {
        let b = json!({"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hello"}]}],
                       "tools":[{"type":"function"}],"response_format":{"type":"json_object"}});
        let (text, s) = body_text(b.as_object().unwrap());
        assert!(text.contains("be brief") && text.contains("hello"));
        assert_eq!(
            s,
            Structure {
                turns: 2,
                tools: true,
                json_format: true
            }
        );
    }

    #[test]
    fn weights_round_trip_and_wrong_files_are_refused() {
        let mut w = vec![0f32; DIM];
        w[3] = 0.5;
        w[HASHED + 1] = -1.25;
        let wt = Weights { bias: 0.3, w };
        let back = Weights::from_bytes(&wt.to_bytes()).unwrap();
        assert_eq!(back.bias, 0.3);
        assert!((back.w[3] - 0.5).abs() < 1e-4 && (back.w[HASHED + 1] + 1.25).abs() < 1e-4);
        assert!(Weights::from_bytes(b"nonsense").is_err());
        let mut bytes = wt.to_bytes();
        bytes[8] = 9;
        assert!(Weights::from_bytes(&bytes).unwrap_err().contains("retrain"));
        let f = vec![(3u32, 2.0f32)];
        assert!((back.difficulty(&f) - 1.3).abs() < 1e-3);
    }

    #[test]
    fn shipped_weights_load_and_rank_hard_above_easy() {
        let w = Weights::from_bytes(include_bytes!("../../../config/router-weights.bin")).unwrap();
        let easy = json!({"messages":[{"role":"user","content":"What is the capital of France?"}]});
        let hard = json!({"messages":[{"role":"user","content":"Let f(x) = x^3 - 6x^2 + 11x - 6. Find all roots, then compute the integral of f from 0 to 4, derive the second derivative, determine the inflection point, and prove that f has exactly three real roots. Finally evaluate the limit of f(x)/x^3 as x approaches infinity. Show every step."}]});
        let (e, h) = (
            w.score_body(easy.as_object().unwrap()),
            w.score_body(hard.as_object().unwrap()),
        );
        assert!(h > e + 1.0, "hard {h} vs easy {e}");
    }
}
