//! Training of the router's scorer ([`lumen_shared::domain::scorer`]), used by `lumen-train`
//! (`scripts/train-router.sh`): data loading, the two fits, and (in [`eval`]) the held-out
//! evaluation by rotating whole subject groups and question styles out of training.
//!
//! Data: per-question correctness of 29 models on MMLU-Pro; GSM8K's training split (the number of
//! worked-solution steps is a weak label for math); optionally exported feedback labels
//! ([`feedback`]).
//!
//! 1. **Abilities** (the catalog's `quality` scale): item response theory,
//!    `P(model m answers q) = σ(θ_m − z_q)`, `z_q = b + v·features(q)`, fitted jointly by
//!    full-batch Adam. Only the θ are kept.
//! 2. **The gap model**: for every pair of models (cheap, strong) at least [`Params::min_gap`]
//!    apart in θ and every question both answered, the label is "cheap fails ∧ strong succeeds";
//!    a logistic model over the features and the pair's abilities ([`lumen_shared::domain::scorer`]'s
//!    logit) is fitted by full-batch Adam on the mean log loss (each pair weighted equally), plus a
//!    weak-label term on GSM8K ("needs at least [`Params::gsm_hard_steps`] steps") and, when
//!    given, feedback labels.
//!
//! Full batch, fixed iteration counts, sequential sums in file order, no threads, no hash-map
//! iteration: the result is the same bits on every run.

pub mod eval;
pub mod feedback;

use anyhow::{bail, Context as _};
use lumen_shared::domain::scorer::{
    featurize, prior, Features, PairTerm, Structure, Weights, DENSE, DIM, HASHED, MIN_GAP,
};
use std::io::Read as _;
use std::path::Path;

/// One MMLU-Pro question.
pub struct Item {
    /// MMLU-Pro question id.
    pub id: String,
    /// Subject group (MMLU-Pro `category`).
    pub category: String,
    /// Question style: the source the question came from (`stemez`, `theoremQA`, `scibench`).
    pub style: String,
    /// Characters of the text (the prompt-length baseline).
    pub chars: usize,
    /// Features of question + options.
    pub features: Features,
    /// Outcome per model, in [`Data::models`] order (`None` = not evaluated).
    pub y: Vec<Option<bool>>,
}

/// One GSM8K problem: features and the number of calculator steps of its worked solution.
pub struct Problem {
    /// Features of the question.
    pub features: Features,
    /// Steps (`<<…>>` annotations) in the reference solution.
    pub steps: usize,
}

/// The data set.
pub struct Data {
    /// Model names (the outcome columns).
    pub models: Vec<String>,
    /// MMLU-Pro questions, in file order.
    pub items: Vec<Item>,
    /// GSM8K problems, in file order (empty when the file is absent).
    pub gsm8k: Vec<Problem>,
}

/// FNV-1a (32 bit): the fixed splits.
pub fn fnv32(s: &str) -> u32 {
    let mut h: u32 = 2_166_136_261;
    for b in s.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(16_777_619);
    }
    h
}

/// The text a question is scored on: the question and its options, as a user would send it.
pub fn question_text(question: &str, options: &str) -> String {
    format!("{question}\nOptions: {options}")
}

fn one_turn() -> Structure {
    Structure {
        turns: 1,
        ..Structure::default()
    }
}

fn gunzip(path: &Path) -> anyhow::Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .with_context(|| format!("gunzip {}", path.display()))?;
    Ok(text)
}

/// Reads `mmlu-pro-outcomes.csv.gz` and, when `gsm8k` exists, `gsm8k-train.jsonl.gz`.
pub fn load(mmlu: &Path, gsm8k: Option<&Path>) -> anyhow::Result<Data> {
    let text = gunzip(mmlu)?;
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = r.headers()?.iter().map(str::to_string).collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("column {name} missing in {}", mmlu.display()))
    };
    let (qid, q, opts) = (col("question_id")?, col("question")?, col("options")?);
    let (cat, src) = (col("category")?, col("src")?);
    let model_cols: Vec<usize> = (col("answer")? + 1..header.len())
        .filter(|i| !header[*i].contains('|'))
        .collect();
    let models = model_cols.iter().map(|i| header[*i].clone()).collect();
    let mut items = Vec::new();
    for rec in r.records() {
        let rec = rec?;
        let y = model_cols
            .iter()
            .map(|i| match rec.get(*i).unwrap_or("") {
                "1" | "1.0" | "True" => Some(true),
                "0" | "0.0" | "False" => Some(false),
                _ => None,
            })
            .collect();
        let text = question_text(rec.get(q).unwrap_or(""), rec.get(opts).unwrap_or(""));
        let src = rec.get(src).unwrap_or("");
        items.push(Item {
            id: rec.get(qid).unwrap_or("").to_string(),
            category: rec.get(cat).unwrap_or("").to_string(),
            style: src.split('-').next().unwrap_or(src).to_string(),
            chars: text.chars().count(),
            features: featurize(&text, &one_turn()),
            y,
        });
    }
    if items.is_empty() {
        bail!("{} has no rows", mmlu.display());
    }
    let mut problems = Vec::new();
    if let Some(path) = gsm8k.filter(|p| p.exists()) {
        for (n, line) in gunzip(path)?.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not JSON", path.display(), n + 1))?;
            let (Some(question), Some(answer)) = (v["question"].as_str(), v["answer"].as_str())
            else {
                bail!("{}:{}: needs question and answer", path.display(), n + 1);
            };
            problems.push(Problem {
                features: featurize(question, &one_turn()),
                steps: answer.matches("<<").count().max(1),
            });
        }
    }
    Ok(Data {
        models,
        items,
        gsm8k: problems,
    })
}

/// Whether GSM8K problem `i` is held out of every evaluation fit (a fixed 20 %).
pub fn gsm8k_held_out(i: usize) -> bool {
    fnv32(&i.to_string()).is_multiple_of(5)
}

/// Hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Adam iterations of the ability fit.
    pub ability_iterations: usize,
    /// Adam iterations of the gap fit.
    pub iterations: usize,
    /// Learning rate.
    pub lr: f64,
    /// L2 penalty on `w`.
    pub l2: f64,
    /// L2 penalty on `u`.
    pub l2_level: f64,
    /// Smallest ability difference of a training pair.
    pub min_gap: f64,
    /// Weight of the GSM8K weak-label term (relative to the MMLU-Pro pairs' mean loss).
    pub gsm_weight: f64,
    /// GSM8K problems needing at least this many steps are "hard".
    pub gsm_hard_steps: usize,
    /// The level the pair term is centred on.
    pub centre: f32,
    /// Learn the hashed n-gram weights in `w` (else only the dense features). Off in the shipped
    /// scorer: held out by whole subject, n-grams bought +0.008 APGR on the Llama pair and lost
    /// 0.05 on the Gemini pair (`bench/ROUTER.md`).
    pub hashed: bool,
    /// Most training pairs.
    pub max_pairs: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            ability_iterations: 400,
            iterations: 300,
            lr: 0.05,
            l2: 2e-4,
            l2_level: 1e-3,
            min_gap: 0.2,
            gsm_weight: 0.3,
            gsm_hard_steps: 4,
            centre: 0.8,
            hashed: false,
            max_pairs: 64,
        }
    }
}

struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Adam {
    fn new(n: usize) -> Adam {
        Adam {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }
    fn step(&mut self, x: &mut [f64], g: &[f64], lr: f64) {
        self.t += 1;
        let (b1, b2) = (0.9f64, 0.999f64);
        let (c1, c2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
        for i in 0..x.len() {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g[i] * g[i];
            x[i] -= lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + 1e-8);
        }
    }
}

/// The logistic function in f64.
pub fn logistic(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Fits the abilities θ (catalog `quality` scale) of all models on the items `train` selects.
pub fn fit_abilities(data: &Data, train: &dyn Fn(&Item) -> bool, p: &Params) -> Vec<f64> {
    let items: Vec<&Item> = data.items.iter().filter(|i| train(i)).collect();
    let n_models = data.models.len();
    // Parameters: v (DIM), b, θ (n_models).
    let n = DIM + 1 + n_models;
    let mut x = vec![0.0f64; n];
    let mut adam = Adam::new(n);
    let observed: f64 = items
        .iter()
        .map(|i| i.y.iter().filter(|y| y.is_some()).count() as f64)
        .sum();
    let mut g = vec![0.0f64; n];
    for _ in 0..p.ability_iterations {
        g.iter_mut().for_each(|v| *v = 0.0);
        for it in &items {
            let mut z = x[DIM];
            for (j, v) in &it.features {
                z += x[*j as usize] * f64::from(*v);
            }
            let mut gz = 0.0;
            for (m, y) in it.y.iter().enumerate() {
                let Some(y) = y else { continue };
                let pr = logistic(x[DIM + 1 + m] - z);
                let r = (pr - if *y { 1.0 } else { 0.0 }) / observed;
                g[DIM + 1 + m] += r;
                gz -= r;
            }
            g[DIM] += gz;
            for (j, v) in &it.features {
                g[*j as usize] += gz * f64::from(*v);
            }
        }
        for j in 0..DIM {
            g[j] += p.l2 * x[j];
        }
        // Pin the shared offset of b and θ: a tiny pull of θ towards 0.
        for m in 0..n_models {
            g[DIM + 1 + m] += 1e-4 * x[DIM + 1 + m];
        }
        adam.step(&mut x, &g, p.lr);
    }
    x[DIM + 1..].to_vec()
}

/// A (cheap, strong) pair of model indexes with its abilities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    /// Cheap (weaker) model.
    pub cheap: usize,
    /// Strong model.
    pub strong: usize,
    /// θ of the cheap model.
    pub theta_cheap: f64,
    /// θ of the strong model.
    pub theta_strong: f64,
}

/// Pairs of models at least `min_gap` apart in θ: every one in model order, thinned to at most
/// `max` by an even stride (training cost grows with the pairs; neighbours carry much the same
/// signal).
pub fn all_pairs(abilities: &[f64], min_gap: f64, max: usize) -> Vec<Pair> {
    let mut out = Vec::new();
    for (c, tc) in abilities.iter().enumerate() {
        for (s, ts) in abilities.iter().enumerate() {
            if ts - tc >= min_gap {
                out.push(Pair {
                    cheap: c,
                    strong: s,
                    theta_cheap: *tc,
                    theta_strong: *ts,
                });
            }
        }
    }
    let stride = out.len().div_ceil(max.max(1)).max(1);
    out.into_iter().step_by(stride).collect()
}

/// A labelled example for the gap model besides MMLU-Pro: features, the abilities of the cheap
/// and strong side, a target probability that the cheap side falls short, and a weight.
pub struct Example {
    /// Features of the request.
    pub features: Features,
    /// θ of the model that answered.
    pub theta_cheap: f64,
    /// θ of the model it is measured against.
    pub theta_strong: f64,
    /// Target `P(falls short)` in [0, 1].
    pub target: f64,
    /// Weight (relative: the examples' mean loss is weighted by their total weight).
    pub weight: f64,
}

/// The pair term's inputs: (1, Δ, ln Δ, L).
fn pair_inputs(tc: f64, ts: f64, centre: f32) -> [f64; 4] {
    let gap = (ts - tc).max(f64::from(MIN_GAP));
    let level = (tc + ts) / 2.0 - f64::from(centre);
    [1.0, gap, gap.ln(), level]
}

/// Fits the gap model.
///
/// `train` selects the MMLU-Pro items, `gsm` the GSM8K problems used; `extra` are further
/// examples (feedback) weighted by `extra_weight` relative to the MMLU-Pro pairs' mean loss.
pub fn fit_gap(
    data: &Data,
    pairs: &[Pair],
    train: &dyn Fn(&Item) -> bool,
    gsm: &dyn Fn(usize) -> bool,
    extra: &[Example],
    extra_weight: f64,
    p: &Params,
) -> Weights {
    let items: Vec<&Item> = data.items.iter().filter(|i| train(i)).collect();
    // Per pair: its inputs and the count of its labelled items (each pair weighs the same).
    let inputs: Vec<[f64; 4]> = pairs
        .iter()
        .map(|q| pair_inputs(q.theta_cheap, q.theta_strong, p.centre))
        .collect();
    let per_pair: Vec<f64> = pairs
        .iter()
        .map(|q| {
            items
                .iter()
                .filter(|i| i.y[q.cheap].is_some() && i.y[q.strong].is_some())
                .count()
                .max(1) as f64
        })
        .collect();
    let n_pairs = pairs.len().max(1) as f64;
    let problems: Vec<&Problem> = data
        .gsm8k
        .iter()
        .enumerate()
        .filter(|(i, _)| gsm(*i))
        .map(|(_, p)| p)
        .collect();
    // GSM8K is measured as for the catalog's cheapest pair level: 8B vs a frontier model.
    let gsm_in = pair_inputs(0.3, 1.7, p.centre);
    let extra_total: f64 = extra.iter().map(|e| e.weight).sum::<f64>().max(1e-12);
    let extra_in: Vec<[f64; 4]> = extra
        .iter()
        .map(|e| pair_inputs(e.theta_cheap, e.theta_strong, p.centre))
        .collect();
    // Parameters: w (DIM), u (DIM), pair term (4), GSM8K offset (1).
    let (u0, t0, gi) = (DIM, 2 * DIM, 2 * DIM + 4);
    let n = 2 * DIM + 5;
    let mut x = vec![0.0f64; n];
    let fixed: Vec<usize> = (0..DENSE.len())
        .filter_map(|i| prior(i).map(|_| HASHED + i))
        .collect();
    for &j in &fixed {
        x[j] = f64::from(prior(j - HASHED).unwrap_or(0.0));
    }
    let mut adam = Adam::new(n);
    let mut g = vec![0.0f64; n];
    let dots = |x: &[f64], f: &Features| {
        let (mut a, mut b) = (0.0, 0.0);
        for (j, v) in f {
            let (j, v) = (*j as usize, f64::from(*v));
            a += x[j] * v;
            b += x[u0 + j] * v;
        }
        (a, b)
    };
    for _ in 0..p.iterations {
        g.iter_mut().for_each(|v| *v = 0.0);
        let term: Vec<f64> = inputs
            .iter()
            .map(|i| (0..4).map(|k| x[t0 + k] * i[k]).sum())
            .collect();
        for it in &items {
            let (a, b) = dots(&x, &it.features);
            let (mut ga, mut gb) = (0.0, 0.0);
            for (k, q) in pairs.iter().enumerate() {
                let (Some(yc), Some(ys)) = (it.y[q.cheap], it.y[q.strong]) else {
                    continue;
                };
                let y = if !yc && ys { 1.0 } else { 0.0 };
                let level = inputs[k][3];
                let r = (logistic(term[k] + a + level * b) - y) / (per_pair[k] * n_pairs);
                ga += r;
                gb += r * level;
                for (m, v) in inputs[k].iter().enumerate() {
                    g[t0 + m] += r * v;
                }
            }
            for (j, v) in &it.features {
                let (j, v) = (*j as usize, f64::from(*v));
                g[j] += ga * v;
                g[u0 + j] += gb * v;
            }
        }
        let gsm_term: f64 = (0..4).map(|k| x[t0 + k] * gsm_in[k]).sum::<f64>() + x[gi];
        let n_gsm = problems.len().max(1) as f64;
        for pr in &problems {
            let (a, b) = dots(&x, &pr.features);
            let y = if pr.steps >= p.gsm_hard_steps {
                1.0
            } else {
                0.0
            };
            let r = p.gsm_weight * (logistic(gsm_term + a + gsm_in[3] * b) - y) / n_gsm;
            g[gi] += r;
            for (j, v) in &pr.features {
                let (j, v) = (*j as usize, f64::from(*v));
                g[j] += r * v;
                g[u0 + j] += r * gsm_in[3] * v;
            }
        }
        for (e, inp) in extra.iter().zip(&extra_in) {
            let (a, b) = dots(&x, &e.features);
            let term: f64 = (0..4).map(|k| x[t0 + k] * inp[k]).sum();
            let r = extra_weight * e.weight * (logistic(term + a + inp[3] * b) - e.target)
                / extra_total;
            for (m, v) in inp.iter().enumerate() {
                g[t0 + m] += r * v;
            }
            for (j, v) in &e.features {
                let (j, v) = (*j as usize, f64::from(*v));
                g[j] += r * v;
                g[u0 + j] += r * inp[3] * v;
            }
        }
        for j in 0..DIM {
            g[j] += p.l2 * x[j];
            g[u0 + j] += p.l2_level * x[u0 + j];
        }
        // Features with a hand-set prior are not learned (the data cannot teach them).
        for &j in &fixed {
            g[j] = 0.0;
            g[u0 + j] = 0.0;
        }
        // The level head reads the dense features only (per-word level shifts overfit).
        g[u0..u0 + HASHED].iter_mut().for_each(|v| *v = 0.0);
        if !p.hashed {
            g[..HASHED].iter_mut().for_each(|v| *v = 0.0);
        }
        adam.step(&mut x, &g, p.lr);
    }
    Weights {
        pair: PairTerm {
            bias: x[t0] as f32,
            gap: x[t0 + 1] as f32,
            ln_gap: x[t0 + 2] as f32,
            level: x[t0 + 3] as f32,
            centre: p.centre,
        },
        w: x[..DIM].iter().map(|v| *v as f32).collect(),
        u: x[u0..t0].iter().map(|v| *v as f32).collect(),
    }
}
