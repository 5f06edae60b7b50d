//! Training and held-out evaluation of the difficulty scorer ([`lumen_shared::domain::scorer`]), used by
//! `lumen-train` (`scripts/train-router.sh`).
//!
//! Data: per-question correctness of many models on MMLU-Pro. Model: item response theory,
//! `P(model m answers question q) = σ(θ_m − z_q)` with `z_q = b + w·features(q)`; `w`, `b` and
//! the abilities `θ_m` are fitted together by full-batch Adam on the log loss with L2 on `w`.
//! Full batch, fixed iteration count, sequential sums: the result is the same on every run.
//!
//! Evaluation follows RouteLLM: for a cheap/strong pair, route the hardest share `s` of held-out
//! questions to the strong model; PGR(s) = (quality(s) − quality(cheap)) / (quality(strong) −
//! quality(cheap)); APGR is the mean PGR over s = 0, 10 %, …, 100 % (trapezoid); CPT(x) is the
//! smallest strong share whose PGR reaches x.

use anyhow::{bail, Context as _};
use lumen_shared::domain::scorer::{
    featurize, prior, sigmoid, Features, Structure, Weights, DIM, HASHED,
};
use std::io::Read as _;
use std::path::Path;

/// One question: features and per-model outcomes (`None` = not evaluated).
pub struct Item {
    /// MMLU-Pro question id.
    pub id: String,
    /// Features of question + options.
    pub features: Features,
    /// Outcome per model, in [`Data::models`] order.
    pub y: Vec<Option<bool>>,
}

/// The data set.
pub struct Data {
    /// Model names (the outcome columns).
    pub models: Vec<String>,
    /// Questions, in file order.
    pub items: Vec<Item>,
}

/// Whether a question is held out for evaluation (a fixed 20 % by hash of its id).
pub fn held_out(id: &str) -> bool {
    let mut h: u32 = 2_166_136_261;
    for b in id.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(16_777_619);
    }
    h.is_multiple_of(5)
}

/// The text a question is scored on: the question and its options, as a user would send it.
pub fn question_text(question: &str, options: &str) -> String {
    format!("{question}\nOptions: {options}")
}

/// Reads `mmlu-pro-outcomes.csv.gz`.
pub fn load(path: &Path) -> anyhow::Result<Data> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .with_context(|| format!("gunzip {}", path.display()))?;
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = r.headers()?.iter().map(str::to_string).collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("column {name} missing"))
    };
    let (qid, q, opts) = (col("question_id")?, col("question")?, col("options")?);
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
        items.push(Item {
            id: rec.get(qid).unwrap_or("").to_string(),
            features: featurize(
                &text,
                &Structure {
                    turns: 1,
                    ..Structure::default()
                },
            ),
            y,
        });
    }
    if items.is_empty() {
        bail!("{} has no rows", path.display());
    }
    Ok(Data { models, items })
}

/// Hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Adam iterations (full batch).
    pub iterations: usize,
    /// Learning rate.
    pub lr: f64,
    /// L2 penalty on the feature weights.
    pub l2: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            iterations: 400,
            lr: 0.05,
            l2: 2e-4,
        }
    }
}

/// A fitted model: weights and per-model abilities.
pub struct Fit {
    /// Scorer weights.
    pub weights: Weights,
    /// Ability θ per model, in [`Data::models`] order.
    pub abilities: Vec<f64>,
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

fn logistic(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Fits the model on the items `train` selects.
pub fn fit(data: &Data, train: &dyn Fn(&Item) -> bool, p: Params) -> Fit {
    let items: Vec<&Item> = data.items.iter().filter(|i| train(i)).collect();
    let n_models = data.models.len();
    // Parameters: w (DIM), b, θ (n_models).
    let n = DIM + 1 + n_models;
    let mut x = vec![0.0f64; n];
    let mut adam = Adam::new(n);
    let observed: f64 = items
        .iter()
        .map(|i| i.y.iter().filter(|y| y.is_some()).count() as f64)
        .sum();
    let mut g = vec![0.0f64; n];
    for _ in 0..p.iterations {
        g.iter_mut().for_each(|v| *v = 0.0);
        for it in &items {
            let mut z = x[DIM];
            for (j, v) in &it.features {
                let j = *j as usize;
                let w = x[j]
                    + if j >= HASHED {
                        f64::from(prior(j - HASHED))
                    } else {
                        0.0
                    };
                z += w * f64::from(*v);
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
        // Features with a hand-set prior are not learned (the data cannot teach them).
        for (i, gj) in g[HASHED..DIM].iter_mut().enumerate() {
            if prior(i) != 0.0 {
                *gj = 0.0;
            }
        }
        // Pin the shared offset of b and θ: a tiny pull of θ towards 0.
        for m in 0..n_models {
            g[DIM + 1 + m] += 1e-4 * x[DIM + 1 + m];
        }
        adam.step(&mut x, &g, p.lr);
    }
    Fit {
        weights: Weights {
            bias: x[DIM] as f32,
            w: x[..DIM].iter().map(|v| *v as f32).collect(),
        },
        abilities: x[DIM + 1..].to_vec(),
    }
}

/// RouteLLM metrics of one cheap/strong pair on the items `eval` selects.
#[derive(Debug, Clone, PartialEq)]
pub struct PairEval {
    /// Questions evaluated (both models have an outcome).
    pub n: usize,
    /// Accuracy of the cheap and the strong model alone.
    pub cheap_acc: f64,
    /// Accuracy of the strong model alone.
    pub strong_acc: f64,
    /// PGR at strong shares 0, 10 %, …, 100 %.
    pub pgr: Vec<f64>,
    /// APGR.
    pub apgr: f64,
    /// CPT(50 %), as a strong share.
    pub cpt50: f64,
    /// CPT(80 %), as a strong share.
    pub cpt80: f64,
}

/// Evaluates routing by `order` (question indexes, hardest first) for a pair.
fn eval_order(cheap: &[bool], strong: &[bool], order: &[usize]) -> PairEval {
    let n = order.len();
    let acc = |v: &[bool]| v.iter().filter(|b| **b).count() as f64 / n.max(1) as f64;
    let (qc, qs) = (acc(cheap), acc(strong));
    let gap = qs - qc;
    // correct(k) = questions right when the first k of `order` go to the strong model.
    let mut correct = Vec::with_capacity(n + 1);
    let mut c = cheap.iter().filter(|b| **b).count() as f64;
    correct.push(c);
    for &q in order {
        c += f64::from(u8::from(strong[q])) - f64::from(u8::from(cheap[q]));
        correct.push(c);
    }
    let pgr_at = |k: usize| (correct[k] / n as f64 - qc) / gap;
    let pgr: Vec<f64> = (0..=10)
        .map(|i| pgr_at(((i as f64 / 10.0) * n as f64).round() as usize))
        .collect();
    let apgr = (pgr.iter().sum::<f64>() - (pgr[0] + pgr[10]) / 2.0) / 10.0;
    let cpt = |x: f64| {
        (0..=n)
            .find(|k| pgr_at(*k) >= x)
            .map_or(1.0, |k| k as f64 / n as f64)
    };
    PairEval {
        n,
        cheap_acc: qc,
        strong_acc: qs,
        pgr,
        apgr,
        cpt50: cpt(0.5),
        cpt80: cpt(0.8),
    }
}

/// Evaluates the scorer (hardest first by difficulty, ties by id) and the random router (mean of
/// `random_runs` fixed-seed shuffles) for a pair on held-out items.
pub fn evaluate_pair(
    data: &Data,
    weights: &Weights,
    cheap: &str,
    strong: &str,
    random_runs: usize,
) -> anyhow::Result<(PairEval, PairEval)> {
    let idx = |name: &str| {
        data.models
            .iter()
            .position(|m| m == name)
            .with_context(|| format!("model {name} is not in the data"))
    };
    let (ci, si) = (idx(cheap)?, idx(strong)?);
    let mut rows: Vec<(f32, &str, bool, bool)> = data
        .items
        .iter()
        .filter(|i| held_out(&i.id))
        .filter_map(|i| {
            Some((
                weights.difficulty(&i.features),
                i.id.as_str(),
                i.y[ci]?,
                i.y[si]?,
            ))
        })
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let cheap_v: Vec<bool> = rows.iter().map(|r| r.2).collect();
    let strong_v: Vec<bool> = rows.iter().map(|r| r.3).collect();
    let order: Vec<usize> = (0..rows.len()).collect();
    let scored = eval_order(&cheap_v, &strong_v, &order);
    // Random router: average of seeded shuffles.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut acc: Option<PairEval> = None;
    for _ in 0..random_runs {
        let mut o = order.clone();
        for i in (1..o.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            o.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        let e = eval_order(&cheap_v, &strong_v, &o);
        acc = Some(match acc {
            None => e,
            Some(mut a) => {
                for (x, y) in a.pgr.iter_mut().zip(&e.pgr) {
                    *x += y;
                }
                a.apgr += e.apgr;
                a.cpt50 += e.cpt50;
                a.cpt80 += e.cpt80;
                a
            }
        });
    }
    let mut random = acc.context("random_runs must be at least 1")?;
    let k = random_runs as f64;
    random.pgr.iter_mut().for_each(|x| *x /= k);
    random.apgr /= k;
    random.cpt50 /= k;
    random.cpt80 /= k;
    Ok((scored, random))
}

/// Held-out mean log loss of the fitted model (all models), for the report.
pub fn held_out_log_loss(data: &Data, fit: &Fit) -> f64 {
    let (mut sum, mut n) = (0.0, 0.0);
    for it in data.items.iter().filter(|i| held_out(&i.id)) {
        let z = fit.weights.difficulty(&it.features);
        for (m, y) in it.y.iter().enumerate() {
            let Some(y) = y else { continue };
            let p = f64::from(sigmoid(fit.abilities[m] as f32 - z)).clamp(1e-6, 1.0 - 1e-6);
            sum -= if *y { p.ln() } else { (1.0 - p).ln() };
            n += 1.0;
        }
    }
    sum / n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_and_inverted_orders() {
        // cheap right on 0,1; strong right on 0,1,2,3: routing 2,3 first recovers the gap at 50 %.
        let cheap = [true, true, false, false];
        let strong = [true, true, true, true];
        let best = eval_order(&cheap, &strong, &[2, 3, 0, 1]);
        assert_eq!(best.cpt50, 0.25);
        assert_eq!(best.cpt80, 0.5);
        assert!((best.pgr[5] - 1.0).abs() < 1e-9);
        let worst = eval_order(&cheap, &strong, &[0, 1, 2, 3]);
        assert_eq!(worst.cpt80, 1.0);
        assert!(
            best.apgr > 0.7 && worst.apgr < 0.3,
            "{} {}",
            best.apgr,
            worst.apgr
        );
    }

    #[test]
    fn split_is_stable() {
        assert_eq!(held_out("86"), held_out("86"));
        let share = (0..10_000).filter(|i| held_out(&i.to_string())).count();
        assert!((1_600..2_400).contains(&share), "{share}");
    }
}
