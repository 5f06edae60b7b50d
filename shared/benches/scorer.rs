//! The difficulty scorer's latency natively: featurize + score a request body (what the router
//! does per request, from the file's bytes in place: `Packed`), and taking the weights file
//! (once per router instance) as `Packed` or decoded into `Weights` (training, evaluation).

use criterion::{criterion_group, criterion_main, Criterion};
use lumen_shared::domain::scorer::{Packed, Weights};
use serde_json::json;
use std::hint::black_box;

const WEIGHTS: &[u8] = include_bytes!("../../config/router-weights.bin");

fn bench(c: &mut Criterion) {
    let w = Packed::from_bytes(WEIGHTS.to_vec()).unwrap();
    let short = json!({"messages":[{"role":"user","content":"What is the capital of France?"}]});
    let mmlu = json!({"messages":[{"role":"user","content":"The stock of the CCC Corporation is currently valued at $12 and is assumed to possess all the properties of geometric Brownian motion. It has an expected annual return of 15%, an annual volatility of 20%, and the annual risk-free is 10%. Using a binomial lattice, determine the price of a call option on CCC stock maturing in 10 monthes time with a strike price of $14 (Let the distance between nodes on your tree be 1 month in length).\nOptions: ['50.0', '60.0', '55.0', '44.0', '48.0', '53.0', '42.0', '46.0', '51.0', '45.0']"}]});
    let long = json!({"messages":[{"role":"system","content":"You are a careful assistant."},
                                  {"role":"user","content":"Summarise this text. ".repeat(2000)}]});
    // Chinese past the 3 KiB scan cap: the substring search for asks runs on every byte scanned.
    let cjk = json!({"messages":[{"role":"user","content":"请证明存在无穷多个素数，并解释狄利克雷定理如何推广这一结果到算术级数。".repeat(40)}]});
    for (name, body) in [
        ("score_short", &short),
        ("score_mmlu_question", &mmlu),
        ("score_40k_chars", &long),
        ("score_cjk_3k", &cjk),
    ] {
        let b = body.as_object().unwrap().clone();
        c.bench_function(name, |bench| bench.iter(|| w.score_body(black_box(&b))));
    }
    c.bench_function("decode_weights", |bench| {
        bench.iter(|| Weights::from_bytes(black_box(WEIGHTS)).unwrap())
    });
    c.bench_function("packed_weights", |bench| {
        bench.iter(|| Packed::from_bytes(black_box(WEIGHTS).to_vec()).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
