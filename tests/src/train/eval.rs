//! Held-out evaluation of the scorer: RouteLLM's metrics (PGR, APGR, CPT) per held-out group with
//! bootstrap intervals, the random and prompt-length baselines, and the reliability table of the
//! calibrated score.
//!
//! For a cheap/strong pair, a router sends the share `s` of the group's questions it ranks
//! highest to the strong model. PGR(s) = (quality(s) − quality(cheap)) / (quality(strong) −
//! quality(cheap)); APGR is the mean PGR over s = 0, 10 %, …, 100 % (trapezoid); CPT(x) the
//! smallest strong share whose PGR reaches x.

use super::{Data, Item, Pair};
use lumen_shared::domain::scorer::{Scored, Weights};

/// RouteLLM metrics of one ordering.
#[derive(Debug, Clone, PartialEq)]
pub struct PairEval {
    /// Questions evaluated (both models have an outcome).
    pub n: usize,
    /// Accuracy of the cheap model alone.
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

/// Evaluates routing by `order` (indexes, first = sent to the strong model first).
pub fn eval_order(cheap: &[bool], strong: &[bool], order: &[usize]) -> PairEval {
    let n = order.len();
    let count = |v: &[bool]| order.iter().filter(|i| v[**i]).count() as f64;
    let (qc, qs) = (
        count(cheap) / n.max(1) as f64,
        count(strong) / n.max(1) as f64,
    );
    let gap = qs - qc;
    // correct(k) = questions right when the first k of `order` go to the strong model.
    let mut correct = Vec::with_capacity(n + 1);
    let mut c = count(cheap);
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

/// A fixed-seed xorshift generator (deterministic intervals).
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    /// The next number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// A metric with its bootstrap 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// APGR on the group.
    pub apgr: f64,
    /// 2.5th percentile of the bootstrap.
    pub lo: f64,
    /// 97.5th percentile of the bootstrap.
    pub hi: f64,
    /// CPT(50 %).
    pub cpt50: f64,
    /// CPT(80 %).
    pub cpt80: f64,
}

/// Bootstrap resamples per interval.
pub const BOOTSTRAP: usize = 300;

/// One question of a group for one pair: router key (higher = strong first), outcomes.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// The router's key.
    pub key: f64,
    /// Cheap model right.
    pub cheap: bool,
    /// Strong model right.
    pub strong: bool,
}

fn order_by_key(rows: &[Row], idx: &[usize]) -> Vec<usize> {
    let mut o: Vec<usize> = (0..idx.len()).collect();
    o.sort_by(|a, b| {
        rows[idx[*b]]
            .key
            .total_cmp(&rows[idx[*a]].key)
            .then(a.cmp(b))
    });
    o
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// APGR/CPT of ordering by `key` (or at random when `random`), with a bootstrap interval over
/// the questions (and, for the random router, over its shuffles too). Resamples whose cheap and
/// strong accuracies are equal (PGR undefined) are skipped.
pub fn stat(rows: &[Row], random: bool, seed: u64) -> Stat {
    let mut rng = Rng::new(seed);
    let cheap: Vec<bool> = rows.iter().map(|r| r.cheap).collect();
    let strong: Vec<bool> = rows.iter().map(|r| r.strong).collect();
    let shuffled = |idx: &[usize], rng: &mut Rng| {
        let mut o: Vec<usize> = (0..idx.len()).collect();
        for i in (1..o.len()).rev() {
            o.swap(i, rng.below(i + 1));
        }
        o
    };
    let all: Vec<usize> = (0..rows.len()).collect();
    let eval = |idx: &[usize], order: Vec<usize>| {
        let c: Vec<bool> = idx.iter().map(|i| cheap[*i]).collect();
        let s: Vec<bool> = idx.iter().map(|i| strong[*i]).collect();
        eval_order(&c, &s, &order)
    };
    let (mut apgr, mut cpt50, mut cpt80) = (0.0, 0.0, 0.0);
    let point_runs = if random { BOOTSTRAP } else { 1 };
    for _ in 0..point_runs {
        let o = if random {
            shuffled(&all, &mut rng)
        } else {
            order_by_key(rows, &all)
        };
        let e = eval(&all, o);
        apgr += e.apgr;
        cpt50 += e.cpt50;
        cpt80 += e.cpt80;
    }
    let k = point_runs as f64;
    let mut boot = Vec::with_capacity(BOOTSTRAP);
    for _ in 0..BOOTSTRAP {
        let idx: Vec<usize> = (0..rows.len()).map(|_| rng.below(rows.len())).collect();
        let (qc, qs) = (
            idx.iter().filter(|i| cheap[**i]).count(),
            idx.iter().filter(|i| strong[**i]).count(),
        );
        if qc == qs {
            continue;
        }
        let o = if random {
            shuffled(&idx, &mut rng)
        } else {
            order_by_key(rows, &idx)
        };
        boot.push(eval(&idx, o).apgr);
    }
    boot.sort_by(f64::total_cmp);
    Stat {
        apgr: apgr / k,
        lo: percentile(&boot, 0.025),
        hi: percentile(&boot, 0.975),
        cpt50: cpt50 / k,
        cpt80: cpt80 / k,
    }
}

/// The routers compared on a group for one pair.
#[derive(Debug, Clone)]
pub struct Compared {
    /// Questions (both models answered).
    pub n: usize,
    /// Accuracy of cheap and strong alone.
    pub acc: (f64, f64),
    /// The scorer.
    pub scorer: Stat,
    /// Longest prompt first.
    pub length: Stat,
    /// Random.
    pub random: Stat,
}

/// Compares the scorer, prompt length and random on `items` for `pair`.
pub fn compare(
    items: &[&Item],
    weights: &Weights,
    scored: &[Scored],
    pair: &Pair,
    seed: u64,
) -> Compared {
    let mut rows = Vec::new();
    let mut len_rows = Vec::new();
    for (it, s) in items.iter().zip(scored) {
        let (Some(c), Some(st)) = (it.y[pair.cheap], it.y[pair.strong]) else {
            continue;
        };
        let key = f64::from(weights.short_logit(s, pair.theta_cheap, pair.theta_strong));
        rows.push(Row {
            key,
            cheap: c,
            strong: st,
        });
        len_rows.push(Row {
            key: it.chars as f64,
            cheap: c,
            strong: st,
        });
    }
    let n = rows.len().max(1) as f64;
    Compared {
        n: rows.len(),
        acc: (
            rows.iter().filter(|r| r.cheap).count() as f64 / n,
            rows.iter().filter(|r| r.strong).count() as f64 / n,
        ),
        scorer: stat(&rows, false, seed),
        length: stat(&len_rows, false, seed ^ 0x5bd1_e995),
        random: stat(&rows, true, seed ^ 0x2545_f491),
    }
}

/// Bins of the reliability table.
pub const BINS: usize = 10;

/// Reliability table of predicted probabilities against outcomes: per bin (count, mean
/// prediction, observed rate), and the expected calibration error.
pub fn reliability(preds: &[(f64, bool)]) -> (Vec<(usize, f64, f64)>, f64) {
    let mut bins = vec![(0usize, 0.0f64, 0.0f64); BINS];
    for (p, y) in preds {
        let b = ((p * BINS as f64) as usize).min(BINS - 1);
        bins[b].0 += 1;
        bins[b].1 += p;
        bins[b].2 += f64::from(u8::from(*y));
    }
    let total = preds.len().max(1) as f64;
    let mut ece = 0.0;
    for b in &mut bins {
        if b.0 > 0 {
            b.1 /= b.0 as f64;
            b.2 /= b.0 as f64;
            ece += b.0 as f64 / total * (b.1 - b.2).abs();
        }
    }
    (bins, ece)
}

/// Area under the ROC curve of `key` for a binary label (ties count half).
pub fn auc(rows: &[(f64, bool)]) -> f64 {
    let mut v: Vec<(f64, bool)> = rows.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut pos) = (0.0, 0.0);
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let mid = (i + j + 1) as f64 / 2.0;
        for r in &v[i..j] {
            if r.1 {
                rank_sum += mid;
                pos += 1.0;
            }
        }
        i = j;
    }
    let neg = v.len() as f64 - pos;
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg).max(1.0)
}

/// The held-out groups: every subject (MMLU-Pro category) and every question style (source), in
/// sorted order: `(kind, name)`.
pub fn groups(data: &Data) -> Vec<(&'static str, String)> {
    let mut subjects: Vec<String> = data.items.iter().map(|i| i.category.clone()).collect();
    subjects.sort();
    subjects.dedup();
    let mut styles: Vec<String> = data.items.iter().map(|i| i.style.clone()).collect();
    styles.sort();
    styles.dedup();
    subjects
        .into_iter()
        .map(|s| ("subject", s))
        .chain(styles.into_iter().map(|s| ("style", s)))
        .collect()
}

/// Whether an item belongs to a group.
pub fn in_group(item: &Item, kind: &str, name: &str) -> bool {
    match kind {
        "subject" => item.category == name,
        _ => item.style == name,
    }
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
    fn random_is_near_half_and_a_perfect_key_beats_it() {
        let rows: Vec<Row> = (0..400)
            .map(|i| Row {
                key: f64::from(u8::from(i % 3 == 0)),
                cheap: i % 3 != 0 && i % 2 == 0,
                strong: i % 3 == 0 || i % 2 == 0,
            })
            .collect();
        let r = stat(&rows, true, 7);
        assert!(
            (r.apgr - 0.5).abs() < 0.03 && r.lo < 0.5 && r.hi > 0.5,
            "{r:?}"
        );
        let s = stat(&rows, false, 7);
        assert!(s.apgr > 0.8 && s.lo > r.hi, "{s:?} vs {r:?}");
        assert_eq!(stat(&rows, false, 7), s, "deterministic");
    }

    #[test]
    fn calibration_and_auc() {
        let preds: Vec<(f64, bool)> = (0..1000).map(|i| (0.25, i % 4 == 0)).collect();
        let (bins, ece) = reliability(&preds);
        assert!(ece < 1e-9 && bins[2].0 == 1000);
        let (_, bad) = reliability(&(0..100).map(|_| (0.9, false)).collect::<Vec<_>>());
        assert!((bad - 0.9).abs() < 1e-9);
        assert_eq!(auc(&[(1.0, false), (2.0, true)]), 1.0);
        assert_eq!(auc(&[(1.0, true), (2.0, false)]), 0.0);
        assert_eq!(auc(&[(1.0, true), (1.0, false)]), 0.5);
    }
}
