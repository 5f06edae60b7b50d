//! Shadow experiments in the store, all on `increment`: a concurrency cap (calls running, counted
//! in the minute they started), a daily budget (the most a call can cost held before it, the
//! difference to the actual cost given back after), and the samples: one `increment` hands each
//! sample a number, one `set` writes it in ring slot `n mod` [`RING`], so the newest samples
//! are kept and `GET /admin/shadow/{name}` reads them in batches.

use crate::domain::shadow::{self, Report, Sample, ShadowPlan};
use crate::store::{self as kv, Kv, KvError, ShadowInflight, ShadowSample, ShadowSeq, ShadowSpent};

/// Samples kept per experiment (the newest).
pub const RING: u64 = 1024;

/// A shadow call let through: what to give back after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Minute the call was counted in.
    pub minute: u64,
    /// Day the budget was held in, and how much (none without a budget).
    pub held: Option<(String, i64)>,
}

/// Why a shadow call was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// Too many calls running.
    Concurrency,
    /// The daily budget cannot hold another call.
    Budget,
}

/// Takes a seat under the concurrency cap and, with a budget, holds `max_cost_nanos`.
pub fn admit(
    store: &dyn Kv,
    plan: &ShadowPlan,
    max_cost_nanos: i64,
    now_ms: u64,
) -> Result<Result<Admission, Skipped>, KvError> {
    let minute = now_ms / 60_000 * 60;
    let seat = ShadowInflight {
        name: &plan.name,
        minute,
    };
    if kv::incr(store, &seat, 1)? > i64::from(plan.max_concurrent) {
        kv::incr(store, &seat, -1)?;
        return Ok(Err(Skipped::Concurrency));
    }
    let Some(budget) = plan.daily_budget_nanos else {
        return Ok(Ok(Admission { minute, held: None }));
    };
    let day = crate::time::utc_day(now_ms);
    let spent = ShadowSpent {
        name: &plan.name,
        day: &day,
    };
    if kv::incr(store, &spent, max_cost_nanos)? > budget {
        kv::incr(store, &spent, -max_cost_nanos)?;
        kv::incr(store, &seat, -1)?;
        return Ok(Err(Skipped::Budget));
    }
    Ok(Ok(Admission {
        minute,
        held: Some((day, max_cost_nanos)),
    }))
}

/// Gives the seat back and settles the hold to `cost_nanos`.
pub fn release(store: &dyn Kv, name: &str, a: &Admission, cost_nanos: i64) -> Result<(), KvError> {
    kv::incr(
        store,
        &ShadowInflight {
            name,
            minute: a.minute,
        },
        -1,
    )?;
    if let Some((day, held)) = &a.held {
        if cost_nanos != *held {
            kv::incr(store, &ShadowSpent { name, day }, cost_nanos - held)?;
        }
    }
    Ok(())
}

/// Records one sample; returns its number.
pub fn record(store: &dyn Kv, name: &str, sample: &Sample) -> Result<u64, KvError> {
    let n = kv::incr(store, &ShadowSeq(name), 1)?.max(1) as u64;
    kv::store(
        store,
        &ShadowSample {
            name,
            slot: n % RING,
        },
        sample,
    )?;
    Ok(n)
}

/// The report over the newest samples (at most [`RING`]): one read of the count, then the
/// samples in batches of 64.
pub fn report(store: &dyn Kv, name: &str) -> Result<Report, KvError> {
    let recorded = kv::read_counter(store, &ShadowSeq(name))?.max(0) as u64;
    let first = recorded.saturating_sub(RING) + 1;
    let slots: Vec<ShadowSample> = (first..=recorded)
        .map(|n| ShadowSample {
            name,
            slot: n % RING,
        })
        .collect();
    let mut samples = Vec::with_capacity(slots.len());
    for chunk in slots.chunks(64) {
        samples.extend(kv::load_many(store, chunk)?.into_iter().flatten());
    }
    samples.sort_by_key(|s: &Sample| s.time_ms);
    Ok(shadow::report(name, recorded, &samples))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::shadow::Side;
    use crate::store::MemKv;

    const NOW: u64 = 1_800_000_000_000;

    fn plan(max: u32, budget: Option<i64>) -> ShadowPlan {
        ShadowPlan {
            name: "s".into(),
            candidates: vec![],
            judge: vec![],
            max_concurrent: max,
            daily_budget_nanos: budget,
            retain_answers: false,
        }
    }

    #[test]
    fn concurrency_and_budget_are_capped_by_increments() {
        let kv = MemKv::default();
        let p = plan(2, Some(100));
        let a = admit(&kv, &p, 40, NOW).unwrap().unwrap();
        let b = admit(&kv, &p, 40, NOW).unwrap().unwrap();
        assert_eq!(admit(&kv, &p, 40, NOW).unwrap(), Err(Skipped::Concurrency));
        release(&kv, "s", &a, 10).unwrap();
        // 10 spent + 40 held; another 40 fits, a third would not.
        let c = admit(&kv, &p, 40, NOW).unwrap().unwrap();
        release(&kv, "s", &b, 40).unwrap();
        assert_eq!(admit(&kv, &p, 40, NOW).unwrap(), Err(Skipped::Budget));
        release(&kv, "s", &c, 0).unwrap();
        assert!(admit(&kv, &p, 40, NOW).unwrap().is_ok());
        // Without a budget a call costs two increments in all.
        let free = plan(9, None);
        let before = kv.ops();
        let a = admit(&kv, &free, 1 << 40, NOW).unwrap().unwrap();
        release(&kv, "s", &a, 5).unwrap();
        assert_eq!((kv.ops().0 - before.0, kv.ops().1 - before.1), (0, 2));
    }

    #[test]
    fn samples_ring_and_report() {
        let kv = MemKv::default();
        let side = |ok| Side {
            model: "m".into(),
            provider: "p".into(),
            ok,
            ttft_ms: 1.0,
            total_ms: 2.0,
            cost_nanos: 3,
            error: None,
        };
        for i in 0..(RING + 10) {
            let s = Sample {
                time_ms: NOW + i,
                primary: side(true),
                candidate: side(i % 2 == 0),
                ..Sample::default()
            };
            record(&kv, "s", &s).unwrap();
        }
        let r = report(&kv, "s").unwrap();
        assert_eq!((r.recorded, r.samples), (RING + 10, RING));
        assert_eq!(r.candidate.failed, RING / 2);
        assert_eq!(report(&kv, "none").unwrap().samples, 0);
    }
}
