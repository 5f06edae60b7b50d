//! `lumen-train`: trains the router's scorer (the probability that a cheaper model falls short
//! of a stronger one) on MMLU-Pro outcomes, GSM8K step counts and, optionally, exported feedback
//! labels; writes the shipped weights (`config/router-weights.bin`) and the held-out evaluation
//! (`bench/ROUTER-eval.md`). `--check` retrains and fails if either differs from what is
//! committed. Deterministic: fixed splits and seeds, full-batch optimisation, no threads.

use anyhow::{bail, Context as _};
use clap::Parser;
use lumen_shared::domain::catalog::Catalog;
use lumen_shared::domain::scorer::{Scored, Weights};
use lumen_tests::train::eval::{self, Compared};
use lumen_tests::train::{self, feedback, Data, Example, Item, Pair, Params};
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Train Lumen's router scorer")]
struct Args {
    /// MMLU-Pro outcomes (CSV, gzip).
    #[arg(long, default_value = "../shared/data/mmlu-pro-outcomes.csv.gz")]
    data: PathBuf,
    /// GSM8K training split (JSONL, gzip); skipped when absent.
    #[arg(long, default_value = "../shared/data/gsm8k-train.jsonl.gz")]
    gsm8k: PathBuf,
    /// Exported feedback labels (JSONL, see `lumen_tests::train::feedback`) mixed with the data.
    #[arg(long)]
    feedback: Option<PathBuf>,
    /// Prompts for exported feedback lines (JSONL `{"request_id", "prompt" | "messages"}` from
    /// your own logs: `GET /admin/feedback` carries no content), joined by request id.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Weight of the feedback term relative to the MMLU-Pro pairs' mean loss.
    #[arg(long, default_value_t = 0.5)]
    feedback_weight: f64,
    /// The catalog (abilities of the models feedback names).
    #[arg(long, default_value = "config/catalog.toml")]
    catalog: PathBuf,
    /// Where the weights go.
    #[arg(long, default_value = "config/router-weights.bin")]
    out: PathBuf,
    /// Where the evaluation report goes.
    #[arg(long, default_value = "bench/ROUTER-eval.md")]
    report: PathBuf,
    /// Retrain and compare with the files instead of writing them.
    #[arg(long)]
    check: bool,
    /// Experiments: L2 on the text weights instead of the default.
    #[arg(long)]
    l2: Option<f64>,
    /// Experiments: also learn the hashed n-gram weights.
    #[arg(long)]
    ngrams: bool,
    /// Experiments: weight of the GSM8K term instead of the default.
    #[arg(long)]
    gsm_weight: Option<f64>,
}

/// Pairs reported per held-out group (cheap → strong).
const EVAL_PAIRS: &[(&str, &str)] = &[
    ("Meta-Llama-3_1-8B-Instruct", "Meta-Llama-3_1-70B-Instruct"),
    ("gemini-1.5-flash-002", "gemini-1.5-pro-002"),
    ("Mixtral-8x7B-Instruct-v0.1", "Meta-Llama-3_1-70B-Instruct"),
    ("Meta-Llama-3_1-8B-Instruct", "gemini-1.5-pro-002"),
];

/// Groups where the strong model leads the cheap one by less than this (accuracy) are left out
/// of the means: PGR divides by that lead.
const MIN_GROUP_GAP: f64 = 0.05;

fn pct(x: f64) -> String {
    format!("{:.0} %", 100.0 * x)
}

/// Results of one rotation over the held-out groups.
struct Rotation {
    /// Per group: (kind, name, per eval pair).
    groups: Vec<(&'static str, String, Vec<Compared>)>,
    /// Out-of-fold (prediction, label) per eval pair, from the subject folds.
    oof: Vec<Vec<(f64, bool)>>,
    /// Out-of-fold (prediction, label) over every training pair, from the subject folds.
    oof_all: Vec<(f64, bool)>,
    /// GSM8K held-out AUC ("needs ≥ k steps") per subject fold.
    gsm_auc: Vec<f64>,
    /// Feedback held-out log loss per fold (when there is feedback).
    fb_loss: Vec<f64>,
}

fn log_loss(w: &Weights, ex: &[Example]) -> f64 {
    let mut sum = 0.0;
    for e in ex {
        let p = w
            .short_prob(&w.prepare(&e.features), e.theta_cheap, e.theta_strong)
            .clamp(1e-6, 1.0 - 1e-6);
        sum -= e.target * p.ln() + (1.0 - e.target) * (1.0 - p).ln();
    }
    sum / ex.len().max(1) as f64
}

fn rotate(
    data: &Data,
    pairs: &[Pair],
    eval_pairs: &[Pair],
    fb: Option<&feedback::Feedback>,
    fb_weight: f64,
    p: &Params,
) -> Rotation {
    let mut r = Rotation {
        groups: Vec::new(),
        oof: vec![Vec::new(); eval_pairs.len()],
        oof_all: Vec::new(),
        gsm_auc: Vec::new(),
        fb_loss: Vec::new(),
    };
    let extra = fb.map_or(&[][..], |f| &f.train[..]);
    for (gi, (kind, name)) in eval::groups(data).into_iter().enumerate() {
        let w = train::fit_gap(
            data,
            pairs,
            &|i: &Item| !eval::in_group(i, kind, &name),
            &|i| !train::gsm8k_held_out(i),
            extra,
            fb_weight,
            p,
        );
        let items: Vec<&Item> = data
            .items
            .iter()
            .filter(|i| eval::in_group(i, kind, &name))
            .collect();
        let scored: Vec<Scored> = items.iter().map(|i| w.prepare(&i.features)).collect();
        let per_pair = eval_pairs
            .iter()
            .enumerate()
            .map(|(k, pair)| {
                eval::compare(&items, &w, &scored, pair, 0x1234 + (gi * 16 + k) as u64)
            })
            .collect();
        if kind == "subject" {
            for (it, s) in items.iter().zip(&scored) {
                for (k, pair) in eval_pairs.iter().enumerate() {
                    if let (Some(c), Some(st)) = (it.y[pair.cheap], it.y[pair.strong]) {
                        let pr = w.short_prob(s, pair.theta_cheap, pair.theta_strong);
                        r.oof[k].push((pr, !c && st));
                    }
                }
                for pair in pairs {
                    if let (Some(c), Some(st)) = (it.y[pair.cheap], it.y[pair.strong]) {
                        let pr = w.short_prob(s, pair.theta_cheap, pair.theta_strong);
                        r.oof_all.push((pr, !c && st));
                    }
                }
            }
            let rows: Vec<(f64, bool)> = data
                .gsm8k
                .iter()
                .enumerate()
                .filter(|(i, _)| train::gsm8k_held_out(*i))
                .map(|(_, pr)| {
                    let s = w.prepare(&pr.features);
                    (
                        f64::from(w.short_logit(&s, 0.3, 1.7)),
                        pr.steps >= p.gsm_hard_steps,
                    )
                })
                .collect();
            if !rows.is_empty() {
                r.gsm_auc.push(eval::auc(&rows));
            }
        }
        if let Some(f) = fb {
            r.fb_loss.push(log_loss(&w, &f.held_out));
        }
        eprintln!("held out {kind} {name}: done");
        r.groups.push((kind, name, per_pair));
    }
    r
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut n) = (0.0f64, 0.0f64);
    for x in v {
        s += x;
        n += 1.0;
    }
    s / n.max(1.0)
}

fn report(
    data: &Data,
    abilities: &[f64],
    pairs: &[Pair],
    rot: &Rotation,
    p: &Params,
) -> anyhow::Result<String> {
    let mut r = String::new();
    writeln!(
        r,
        "<!-- generated by scripts/train-router.sh (lumen-train); do not edit -->"
    )?;
    writeln!(r, "## Held-out evaluation: whole groups out of training\n")?;
    writeln!(
        r,
        "Data: `mmlu-pro-outcomes.csv.gz`, {} questions, {} models, {} training pairs \
         (θ apart by ≥ {}); GSM8K {} problems (weak label: ≥ {} steps). Each group below is \
         held out in turn: the gap model is trained on every other question (and on GSM8K less \
         a fixed 20 %), then evaluated on the group. Parameters: {p:?}.\n",
        data.items.len(),
        data.models.len(),
        pairs.len(),
        p.min_gap,
        data.gsm8k.len(),
        p.gsm_hard_steps
    )?;
    writeln!(
        r,
        "APGR with its bootstrap 95 % interval ({} resamples of the group's questions); random \
         = mean of {} shuffles; length = longest prompt first. CPT as a share of strong calls.\n",
        eval::BOOTSTRAP,
        eval::BOOTSTRAP
    )?;
    for (k, (cheap, strong)) in EVAL_PAIRS.iter().enumerate() {
        writeln!(r, "### {cheap} → {strong}\n")?;
        writeln!(r, "| held out | n | cheap / strong acc | scorer APGR [95 %] | length APGR [95 %] | random APGR [95 %] | scorer CPT(50 %) / CPT(80 %) | length CPT(50 %) / CPT(80 %) |")?;
        writeln!(r, "|---|---|---|---|---|---|---|---|")?;
        for (kind, name, per) in &rot.groups {
            let c = &per[k];
            let s = |x: &eval::Stat| format!("{:.3} [{:.3}, {:.3}]", x.apgr, x.lo, x.hi);
            writeln!(
                r,
                "| {kind} {name} | {} | {} / {} | {} | {} | {} | {} / {} | {} / {} |",
                c.n,
                pct(c.acc.0),
                pct(c.acc.1),
                s(&c.scorer),
                s(&c.length),
                s(&c.random),
                pct(c.scorer.cpt50),
                pct(c.scorer.cpt80),
                pct(c.length.cpt50),
                pct(c.length.cpt80)
            )?;
        }
        // PGR divides by the gap: groups where the strong model barely leads make it noise.
        let kept: Vec<&Compared> = rot
            .groups
            .iter()
            .map(|g| &g.2[k])
            .filter(|c| c.acc.1 - c.acc.0 >= MIN_GROUP_GAP)
            .collect();
        let m = |f: &dyn Fn(&Compared) -> f64| mean(kept.iter().map(|c| f(c)));
        let below = rot
            .groups
            .iter()
            .filter(|g| g.2[k].scorer.hi < g.2[k].random.apgr)
            .count();
        writeln!(
            r,
            "| **mean of {} groups** (strong leads by ≥ {} points) | | | **{:.3}** | {:.3} | {:.3} | {} / {} | {} / {} |\n",
            kept.len(),
            100.0 * MIN_GROUP_GAP,
            m(&|c| c.scorer.apgr),
            m(&|c| c.length.apgr),
            m(&|c| c.random.apgr),
            pct(m(&|c| c.scorer.cpt50)),
            pct(m(&|c| c.scorer.cpt80)),
            pct(m(&|c| c.length.cpt50)),
            pct(m(&|c| c.length.cpt80)),
        )?;
        writeln!(
            r,
            "Scorer − random: {:+.3}; scorer − length: {:+.3}; groups whose interval lies wholly below random: {below}.\n",
            m(&|c| c.scorer.apgr - c.random.apgr),
            m(&|c| c.scorer.apgr - c.length.apgr),
        )?;
    }
    writeln!(r, "### All four pairs\n")?;
    let all = |f: &dyn Fn(&Compared) -> f64| {
        mean(
            rot.groups
                .iter()
                .flat_map(|g| g.2.iter())
                .filter(|c| c.acc.1 - c.acc.0 >= MIN_GROUP_GAP)
                .map(f),
        )
    };
    writeln!(
        r,
        "Mean APGR over groups and pairs where the strong model leads by ≥ 5 points: scorer {:.3}, length {:.3}, random {:.3} (scorer − random {:+.3}, scorer − length {:+.3}).\n",
        all(&|c| c.scorer.apgr),
        all(&|c| c.length.apgr),
        all(&|c| c.random.apgr),
        all(&|c| c.scorer.apgr - c.random.apgr),
        all(&|c| c.scorer.apgr - c.length.apgr)
    )?;
    writeln!(
        r,
        "## Calibration (out of fold: each subject predicted by the model trained without it)\n"
    )?;
    writeln!(r, "`score` = P(cheap fails ∧ strong succeeds). Reliability table, 10 bins of the predicted probability.\n")?;
    let mut tables = vec![("all training pairs pooled".to_string(), &rot.oof_all)];
    for (k, (c, s)) in EVAL_PAIRS.iter().enumerate() {
        tables.push((format!("{c} → {s}"), &rot.oof[k]));
    }
    for (name, preds) in tables {
        let (bins, ece) = eval::reliability(preds);
        writeln!(r, "**{name}**: n = {}, ECE = **{ece:.4}**\n", preds.len())?;
        writeln!(r, "| predicted | n | mean predicted | observed |")?;
        writeln!(r, "|---|---|---|---|")?;
        for (i, (n, mp, obs)) in bins.iter().enumerate() {
            if *n > 0 {
                writeln!(
                    r,
                    "| {:.1}–{:.1} | {n} | {mp:.3} | {obs:.3} |",
                    i as f64 / 10.0,
                    (i + 1) as f64 / 10.0
                )?;
            }
        }
        writeln!(r)?;
    }
    writeln!(
        r,
        "## GSM8K (weak label)\n\nHeld-out 20 % of GSM8K's training split, scored as 8B-class vs frontier (θ 0.3 → 1.7): AUC of the score for \"the worked solution needs ≥ {} steps\", mean over the subject folds: **{:.3}** (0.5 = no signal).\n",
        p.gsm_hard_steps,
        mean(rot.gsm_auc.iter().copied())
    )?;
    writeln!(r, "## Abilities θ (catalog `quality` scale)\n")?;
    writeln!(r, "| model | θ | accuracy (all questions) |")?;
    writeln!(r, "|---|---|---|")?;
    let mut order: Vec<usize> = (0..data.models.len()).collect();
    order.sort_by(|a, b| abilities[*b].total_cmp(&abilities[*a]).then(a.cmp(b)));
    for m in order {
        let obs: Vec<bool> = data.items.iter().filter_map(|i| i.y[m]).collect();
        let acc = obs.iter().filter(|b| **b).count() as f64 / obs.len().max(1) as f64;
        writeln!(
            r,
            "| {} | {:.2} | {:.1} % |",
            data.models[m],
            abilities[m],
            100.0 * acc
        )?;
    }
    Ok(r)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let data = train::load(&args.data, Some(&args.gsm8k))?;
    let mut p = Params::default();
    if let Some(l2) = args.l2 {
        p.l2 = l2;
    }
    if let Some(g) = args.gsm_weight {
        p.gsm_weight = g;
    }
    p.hashed = args.ngrams;
    let abilities = train::fit_abilities(&data, &|_| true, &p);
    let pairs = train::all_pairs(&abilities, p.min_gap, p.max_pairs);
    let idx = |name: &str| {
        data.models
            .iter()
            .position(|m| m == name)
            .with_context(|| format!("model {name} is not in the data"))
    };
    let eval_pairs = EVAL_PAIRS
        .iter()
        .map(|(c, s)| {
            let (c, s) = (idx(c)?, idx(s)?);
            Ok(Pair {
                cheap: c,
                strong: s,
                theta_cheap: abilities[c],
                theta_strong: abilities[s],
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let fb = match &args.feedback {
        Some(path) => {
            let text = std::fs::read_to_string(&args.catalog)
                .with_context(|| format!("read {}", args.catalog.display()))?;
            let cat = Catalog::from_toml(&text, &args.catalog.display().to_string())
                .map_err(anyhow::Error::msg)?;
            let prompts = args
                .prompts
                .as_deref()
                .map(feedback::load_prompts)
                .transpose()?;
            Some(feedback::load(path, &cat, prompts.as_ref())?)
        }
        None => None,
    };
    let rot = rotate(&data, &pairs, &eval_pairs, None, 0.0, &p);
    let mut r = report(&data, &abilities, &pairs, &rot, &p)?;
    let extra = fb.as_ref().map_or(&[][..], |f| &f.train[..]);
    let weights = train::fit_gap(
        &data,
        &pairs,
        &|_| true,
        &|_| true,
        extra,
        args.feedback_weight,
        &p,
    );
    if let Some(f) = &fb {
        let after = rotate(
            &data,
            &pairs,
            &eval_pairs,
            Some(f),
            args.feedback_weight,
            &p,
        );
        let base = train::fit_gap(&data, &pairs, &|_| true, &|_| true, &[], 0.0, &p);
        writeln!(
            r,
            "\n## Feedback: before / after\n\n{} feedback lines for training, {} held out, {} skipped (about the strongest model), {} without a prompt (no --prompts line for their request id). Weight {}.\n",
            f.train.len(),
            f.held_out.len(),
            f.skipped,
            f.unjoined,
            args.feedback_weight
        )?;
        writeln!(r, "| held out | {} APGR before | after |", EVAL_PAIRS[0].0)?;
        writeln!(r, "|---|---|---|")?;
        for (b, a) in rot.groups.iter().zip(&after.groups) {
            writeln!(
                r,
                "| {} {} | {:.3} | {:.3} |",
                b.0, b.1, b.2[0].scorer.apgr, a.2[0].scorer.apgr
            )?;
        }
        writeln!(
            r,
            "\nHeld-out feedback log loss: before {:.4}, after {:.4}.",
            log_loss(&base, &f.held_out),
            log_loss(&weights, &f.held_out)
        )?;
    }
    let bytes = weights.to_bytes();
    if args.check {
        let mut stale = Vec::new();
        if std::fs::read(&args.out).ok().as_deref() != Some(bytes.as_slice()) {
            stale.push(args.out.display().to_string());
        }
        if std::fs::read_to_string(&args.report).ok().as_deref() != Some(r.as_str()) {
            stale.push(args.report.display().to_string());
        }
        if !stale.is_empty() {
            bail!(
                "retraining does not reproduce {}; run scripts/train-router.sh and commit",
                stale.join(" and ")
            );
        }
        println!(
            "ok: retraining reproduces {} and {}",
            args.out.display(),
            args.report.display()
        );
        return Ok(());
    }
    std::fs::write(&args.out, &bytes).with_context(|| format!("write {}", args.out.display()))?;
    std::fs::write(&args.report, &r).with_context(|| format!("write {}", args.report.display()))?;
    print!("{r}");
    Ok(())
}
