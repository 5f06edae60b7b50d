//! The scorer behind `model: "auto"`: how likely a cheaper model's answer falls short of a
//! stronger one's for this request, a calibrated probability. A featurizer ([`features`]) and a
//! logistic model over it, trained offline by `lumen-train` (`scripts/train-router.sh`) and shipped
//! as `config/router-weights.bin`.
//!
//! The target is the *gap* between two models, not absolute difficulty: for a pair of abilities
//! (θ_cheap < θ_strong, the catalog's `quality`), the model predicts
//! `P(cheap falls short) = P(cheap fails ∧ strong succeeds)`, learned across many pairs of the 29
//! models in the training data:
//!
//! ```text
//! logit = bias + gap·Δ + ln_gap·ln Δ + level·L + w·x + L·(u·x)
//! Δ = θ_strong − θ_cheap,  L = (θ_cheap + θ_strong)/2 − centre
//! ```
//!
//! `w` says which requests open a gap between models in general, `u` how that shifts with the
//! pair's level (what separates 8B from 70B models is not what separates two frontier models).
//! The same code featurizes in the trainer and in the router component, so training and serving
//! features cannot drift.

pub mod features;

pub use features::{dense, featurize, Features, Structure, DENSE, HASHED, HASH_BITS, MAX_SCAN};
use serde_json::{Map, Value};

/// Total number of weights per head.
pub const DIM: usize = HASHED + DENSE.len();
/// Magic bytes of the weights file.
pub const MAGIC: &[u8; 8] = b"LUMENRW2";
/// Smallest ability gap the model is evaluated at (the pair term has `ln Δ`).
pub const MIN_GAP: f32 = 0.05;
/// Fixed prior weights (logit units, in `w`) of dense features the training data cannot teach
/// or teaches the wrong way for open-ended requests. MMLU-Pro and GSM8K hold no code, tests,
/// tools, JSON mode, multi-turn chats, proofs, systems programming, small talk or text
/// transformations; and within multiple-choice questions a longer, more technical question is
/// more often one that *every* model fails (so the fit gives length, step and constraint
/// wording negative weights that do not carry over to open-ended prompts: the `open_*` features,
/// zero for multiple-choice text, carry the open-ended prior instead). The trainer holds
/// these fixed (not learned); they are a stated assumption, not a measured result
/// (`bench/ROUTER.md`), checked by the probe suite (`tests/tests/router_probes.rs`).
pub const PRIOR: &[(&str, f32)] = &[
    ("code", 0.4),
    ("code_tests", 0.5),
    ("turns", 0.3),
    ("tools", 0.3),
    ("json_format", 0.1),
    ("proof", 2.0),
    ("systems", 1.2),
    ("code_task", 0.3),
    ("small_talk", -1.0),
    ("transform", -0.3),
    ("open_length", 3.0),
    ("open_steps", 1.5),
    ("open_constraints", 0.8),
    ("open_long_words", 0.5),
    ("open_asks", 1.2),
    ("open_brief", -0.8),
    ("open_parts", 0.5),
];

/// Prior weight of dense feature `i`, if it has one.
pub fn prior(i: usize) -> Option<f32> {
    let name = DENSE.get(i).copied()?;
    PRIOR.iter().find(|(n, _)| *n == name).map(|(_, w)| *w)
}

/// The two dot products of a request's features with the weights: all the per-request work;
/// each candidate pair then costs a few flops ([`Weights::short_prob`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scored {
    /// `w·x`.
    pub base: f32,
    /// `u·x`.
    pub level: f32,
}

/// The pair term of the logit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PairTerm {
    /// Intercept.
    pub bias: f32,
    /// Coefficient of `Δ`.
    pub gap: f32,
    /// Coefficient of `ln Δ`.
    pub ln_gap: f32,
    /// Coefficient of the pair's level `L`.
    pub level: f32,
    /// The ability the level is centred on.
    pub centre: f32,
}

impl PairTerm {
    /// Logit of `P(cheap falls short of strong)` for abilities `cheap < strong`.
    pub fn short_logit(&self, s: &Scored, cheap: f64, strong: f64) -> f32 {
        let gap = ((strong - cheap) as f32).max(MIN_GAP);
        let level = ((cheap + strong) / 2.0) as f32 - self.centre;
        self.bias
            + self.gap * gap
            + self.ln_gap * gap.ln()
            + self.level * level
            + s.base
            + level * s.level
    }

    /// `P(cheap falls short of strong)`; 0 when `cheap` is not weaker.
    pub fn short_prob(&self, s: &Scored, cheap: f64, strong: f64) -> f64 {
        if cheap >= strong {
            return 0.0;
        }
        f64::from(sigmoid(self.short_logit(s, cheap, strong)))
    }
}

/// Trained weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// Pair term.
    pub pair: PairTerm,
    /// `DIM` base weights `w` (priors included).
    pub w: Vec<f32>,
    /// `DIM` level weights `u`.
    pub u: Vec<f32>,
}

impl Weights {
    /// All-zero weights (every pair gets `σ(0) = 0.5`), for tests.
    pub fn zero() -> Weights {
        Weights {
            pair: PairTerm::default(),
            w: vec![0.0; DIM],
            u: vec![0.0; DIM],
        }
    }

    /// The dot products of a feature vector.
    pub fn prepare(&self, f: &Features) -> Scored {
        let mut s = Scored::default();
        for (i, v) in f {
            let i = *i as usize;
            if let (Some(w), Some(u)) = (self.w.get(i), self.u.get(i)) {
                s.base += w * v;
                s.level += u * v;
            }
        }
        s
    }

    /// Logit of `P(cheap falls short of strong)` for abilities `cheap < strong`.
    pub fn short_logit(&self, s: &Scored, cheap: f64, strong: f64) -> f32 {
        self.pair.short_logit(s, cheap, strong)
    }

    /// `P(cheap falls short of strong)`: the probability that a model of ability `cheap` fails a
    /// request a model of ability `strong` gets right. 0 when `cheap` is not weaker.
    pub fn short_prob(&self, s: &Scored, cheap: f64, strong: f64) -> f64 {
        self.pair.short_prob(s, cheap, strong)
    }

    /// The dot products of a chat completion body.
    pub fn score_body(&self, body: &Map<String, Value>) -> Scored {
        let (text, s) = body_text(body);
        self.prepare(&featurize(&text, &s))
    }

    /// The compact file (all little-endian): magic, `HASH_BITS` (u32), dense count (u32), the
    /// pair term (bias, gap, ln_gap, level, centre: f32), the scales of `w` and `u` (f32), then
    /// `DIM` i16 of `w` and `DIM` i16 of `u`; weight = i16 × scale.
    pub fn to_bytes(&self) -> Vec<u8> {
        let scale = |v: &[f32]| {
            let max = v.iter().fold(0f32, |m, w| m.max(w.abs()));
            if max > 0.0 {
                max / 32767.0
            } else {
                1.0
            }
        };
        let (sw, su) = (scale(&self.w), scale(&self.u));
        let mut out = Vec::with_capacity(HEADER + 4 * DIM);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&HASH_BITS.to_le_bytes());
        out.extend_from_slice(&(DENSE.len() as u32).to_le_bytes());
        let p = &self.pair;
        for f in [p.bias, p.gap, p.ln_gap, p.level, p.centre, sw, su] {
            out.extend_from_slice(&f.to_le_bytes());
        }
        for (v, s) in [(&self.w, sw), (&self.u, su)] {
            for w in v {
                out.extend_from_slice(&((w / s).round() as i16).to_le_bytes());
            }
        }
        out
    }

    /// Reads the compact file, refusing one made for other features.
    pub fn from_bytes(b: &[u8]) -> Result<Weights, String> {
        let (pair, sw, su) = header(b)?;
        let read = |from: usize, s: f32| -> Vec<f32> {
            b[from..from + 2 * DIM]
                .chunks_exact(2)
                .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) * s)
                .collect()
        };
        Ok(Weights {
            pair,
            w: read(HEADER, sw),
            u: read(HEADER + 2 * DIM, su),
        })
    }
}

/// Checks a compact weights file and reads its header: the pair term and the scales of `w`
/// and `u`.
fn header(b: &[u8]) -> Result<(PairTerm, f32, f32), String> {
    let u32_at = |i: usize| -> u32 { u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) };
    let f32_at = |i: usize| f32::from_bits(u32_at(i));
    if b.len() < HEADER || &b[..8] != MAGIC {
        return Err("not a Lumen router weights file of this version (bad magic); retrain with scripts/train-router.sh".into());
    }
    let (bits, dense) = (u32_at(8), u32_at(12));
    if bits != HASH_BITS || dense as usize != DENSE.len() {
        return Err(format!(
            "weights were trained for {bits} hash bits and {dense} structural features; this build uses {HASH_BITS} and {}; retrain with scripts/train-router.sh",
            DENSE.len()
        ));
    }
    if b.len() != HEADER + 4 * DIM {
        return Err(format!(
            "weights file has {} bytes, expected {}",
            b.len(),
            HEADER + 4 * DIM
        ));
    }
    let pair = PairTerm {
        bias: f32_at(16),
        gap: f32_at(20),
        ln_gap: f32_at(24),
        level: f32_at(28),
        centre: f32_at(32),
    };
    Ok((pair, f32_at(36), f32_at(40)))
}

/// The compact weights file used where it lies: what the router scores with. An instance lives
/// for one request, so decoding all `DIM` pairs of weights into 128 KiB of floats (as
/// [`Weights::from_bytes`] does, for training and evaluation) would be paid on every request for
/// the few dozen features a request has; here each feature's two weights are read from the
/// file's bytes with the same arithmetic, so scores are bit for bit those of [`Weights`].
#[derive(Debug, Clone)]
pub struct Packed {
    bytes: Vec<u8>,
    pair: PairTerm,
    sw: f32,
    su: f32,
}

impl Packed {
    /// Takes a compact weights file, refusing one made for other features.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Packed, String> {
        let (pair, sw, su) = header(&bytes)?;
        Ok(Packed {
            bytes,
            pair,
            sw,
            su,
        })
    }

    /// The pair term.
    pub fn pair(&self) -> &PairTerm {
        &self.pair
    }

    fn weight(&self, from: usize, i: usize, scale: f32) -> f32 {
        let at = from + 2 * i;
        f32::from(i16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])) * scale
    }

    /// The dot products of a feature vector ([`Weights::prepare`]).
    pub fn prepare(&self, f: &Features) -> Scored {
        let mut s = Scored::default();
        for (i, v) in f {
            let i = *i as usize;
            if i < DIM {
                s.base += self.weight(HEADER, i, self.sw) * v;
                s.level += self.weight(HEADER + 2 * DIM, i, self.su) * v;
            }
        }
        s
    }

    /// The dot products of a chat completion body.
    pub fn score_body(&self, body: &Map<String, Value>) -> Scored {
        let (text, s) = body_text(body);
        self.prepare(&featurize(&text, &s))
    }

    /// `P(cheap falls short of strong)` ([`Weights::short_prob`]).
    pub fn short_prob(&self, s: &Scored, cheap: f64, strong: f64) -> f64 {
        self.pair.short_prob(s, cheap, strong)
    }
}

/// Bytes before the weights in the file.
const HEADER: usize = 16 + 7 * 4;

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

/// The logistic function.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
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
        let mut wt = Weights::zero();
        wt.w[3] = 0.5;
        wt.w[HASHED + 1] = -1.25;
        wt.u[7] = 0.25;
        wt.pair = PairTerm {
            bias: -1.0,
            gap: 0.5,
            ln_gap: 0.25,
            level: -0.125,
            centre: 0.5,
        };
        let back = Weights::from_bytes(&wt.to_bytes()).unwrap();
        assert_eq!(back.pair, wt.pair);
        assert!((back.w[3] - 0.5).abs() < 1e-4 && (back.w[HASHED + 1] + 1.25).abs() < 1e-4);
        assert!((back.u[7] - 0.25).abs() < 1e-4);
        assert!(Weights::from_bytes(b"nonsense").is_err());
        let mut bytes = wt.to_bytes();
        bytes[8] = 9;
        assert!(Weights::from_bytes(&bytes).unwrap_err().contains("retrain"));
        // logit = -1 + 0.5·1 + 0.25·ln 1 - 0.125·0.5 + (0.5·2) + 0.5·(0.25·2) for x = {3: 2, 7: 2}.
        let s = back.prepare(&vec![(3u32, 2.0f32), (7, 2.0)]);
        let l = back.short_logit(&s, 0.5, 1.5);
        assert!((l - (-1.0 + 0.5 - 0.0625 + 1.0 + 0.25)).abs() < 1e-3, "{l}");
        assert_eq!(back.short_prob(&s, 1.5, 1.5), 0.0, "never short of itself");
        assert!((back.short_prob(&s, 0.5, 1.5) - f64::from(sigmoid(l))).abs() < 1e-6);
    }

    #[test]
    fn packed_weights_score_bit_for_bit_as_decoded_ones() {
        let file = include_bytes!("../../../../config/router-weights.bin");
        let (w, p) = (
            Weights::from_bytes(file).unwrap(),
            Packed::from_bytes(file.to_vec()).unwrap(),
        );
        assert_eq!(p.pair(), &w.pair);
        let bodies = [
            json!({"messages":[{"role":"user","content":"What is the capital of France?"}]}),
            json!({"messages":[{"role":"system","content":"Answer in JSON."},{"role":"user","content":"Prove that there are infinitely many primes, then write a Rust function that lists the first n of them.\n```rust\nfn primes(n: usize) -> Vec<u64> { todo!() }\n```"}],"tools":[{"type":"function"}]}),
            json!({"messages":[{"role":"user","content":"请解释并比较快速排序和归并排序的时间复杂度。"}]}),
        ];
        for b in &bodies {
            let (a, c) = (
                w.score_body(b.as_object().unwrap()),
                p.score_body(b.as_object().unwrap()),
            );
            assert_eq!(
                (a.base.to_bits(), a.level.to_bits()),
                (c.base.to_bits(), c.level.to_bits())
            );
            assert_eq!(w.short_prob(&a, 0.32, 1.7), p.short_prob(&c, 0.32, 1.7));
        }
        // Every index reads the weight the decoded vectors hold; past the end counts nothing.
        for i in (0..DIM).step_by(97).chain([DIM - 1]) {
            let s = p.prepare(&vec![(i as u32, 1.0)]);
            assert_eq!((s.base, s.level), (w.w[i], w.u[i]), "index {i}");
        }
        assert_eq!(p.prepare(&vec![(DIM as u32, 1.0)]), Scored::default());
        assert!(Packed::from_bytes(b"nonsense".to_vec()).is_err());
    }

    #[test]
    fn shipped_weights_load_and_rank_hard_above_easy() {
        let w =
            Weights::from_bytes(include_bytes!("../../../../config/router-weights.bin")).unwrap();
        let easy = json!({"messages":[{"role":"user","content":"What is the capital of France?"}]});
        let hard = json!({"messages":[{"role":"user","content":"Let f(x) = x^3 - 6x^2 + 11x - 6. Find all roots, then compute the integral of f from 0 to 4, derive the second derivative, determine the inflection point, and prove that f has exactly three real roots. Finally evaluate the limit of f(x)/x^3 as x approaches infinity. Show every step."}]});
        let p = |b: &Value| {
            let s = w.score_body(b.as_object().unwrap());
            w.short_prob(&s, 0.32, 1.70)
        };
        let (e, h) = (p(&easy), p(&hard));
        assert!((0.0..1.0).contains(&e) && (0.0..1.0).contains(&h));
        assert!(h > e + 0.2, "hard {h} vs easy {e}");
        // A wider gap between the models: more chance the cheap one falls short.
        let s = w.score_body(hard.as_object().unwrap());
        assert!(w.short_prob(&s, 0.32, 1.70) > w.short_prob(&s, 1.2, 1.70));
    }
}
