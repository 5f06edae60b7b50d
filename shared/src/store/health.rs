//! Provider health in the store: reading the [`Snapshot`] of every candidate of a plan in one
//! batch, claiming a half-open probe with one increment, and applying the writes an observed
//! call calls for ([`crate::domain::health`] decides which; on the healthy path, none).

use crate::domain::health::{Availability, Observation, Policy, Record, Snapshot};
use crate::store::{
    self as kv, decode, decode_counter, Counter, Family, HealthCount, HealthKey, HealthProbe, Kv,
    KvError, Tally, Target,
};

/// Keys read per target: the record, then failures and successes of the current and previous
/// slot.
const PER_TARGET: usize = 5;

/// Raw values as a batch read returns them, in the order of the keys asked for.
pub type Values = Vec<Option<Vec<u8>>>;

/// The snapshots of `targets` at `now`, in one round trip.
pub fn snapshots(
    store: &dyn Kv,
    p: &Policy,
    targets: &[Target<'_>],
    now: u64,
) -> Result<Vec<Snapshot>, KvError> {
    snapshots_and(store, p, targets, now, &[]).map(|(s, _)| s)
}

/// The snapshots of `targets` at `now` and the raw values of `extra` keys, in one round trip.
pub fn snapshots_and(
    store: &dyn Kv,
    p: &Policy,
    targets: &[Target<'_>],
    now: u64,
    extra: &[String],
) -> Result<(Vec<Snapshot>, Values), KvError> {
    let slot = p.slot(now);
    let prev = slot.saturating_sub(p.slot_ms);
    let mut keys = Vec::with_capacity(targets.len() * PER_TARGET);
    for &t in targets {
        keys.push(HealthKey(t).key());
        for (tally, s) in [
            (Tally::Fail, slot),
            (Tally::Fail, prev),
            (Tally::Ok, slot),
            (Tally::Ok, prev),
        ] {
            keys.push(
                HealthCount {
                    tally,
                    target: t,
                    slot_ms: s,
                }
                .key(),
            );
        }
    }
    keys.extend_from_slice(extra);
    let mut raw = if keys.is_empty() {
        Vec::new()
    } else {
        store.get_many(&keys)?
    };
    let extra_values = raw.split_off(raw.len().saturating_sub(extra.len()));
    let mut out = Vec::with_capacity(targets.len());
    for (i, chunk) in raw.chunks(PER_TARGET).enumerate() {
        let record: Option<Record> = match &chunk[0] {
            // An unreadable record (an older layout) counts as none: health is advisory.
            Some(b) => decode(&keys[i * PER_TARGET], b).ok(),
            None => None,
        };
        let n = |j: usize| decode_counter(chunk[j].as_deref());
        out.push(Snapshot {
            record,
            slot_ms: slot,
            fails: [n(1), n(2)],
            oks: [n(3), n(4)],
        });
    }
    Ok((out, extra_values))
}

/// How the router may use a target now: a due probe is claimed with one increment, so one
/// request (across every instance and replica) gets it and the rest see the target as down.
pub fn availability(
    store: &dyn Kv,
    p: &Policy,
    target: Target<'_>,
    snap: &Snapshot,
    now: u64,
) -> Result<Availability, KvError> {
    match snap.availability(p, now) {
        Availability::Probe { since_ms, period } => {
            let claim = HealthProbe {
                target,
                since_ms,
                period,
            };
            Ok(if kv::incr(store, &claim, 1)? == 1 {
                Availability::Probe { since_ms, period }
            } else {
                Availability::Down {
                    until_ms: snap.probe_busy_until(p, since_ms, period),
                }
            })
        }
        other => Ok(other),
    }
}

/// Records what one call showed of a target, given the snapshot its plan was made with.
pub fn observe(
    store: &dyn Kv,
    p: &Policy,
    target: Target<'_>,
    snap: &Snapshot,
    now: u64,
    what: Observation,
) -> Result<(), KvError> {
    let mut w = snap.observe(p, now, what, None);
    if let Some(slot_ms) = w.count_failure {
        let counted = kv::incr(
            store,
            &HealthCount {
                tally: Tally::Fail,
                target,
                slot_ms,
            },
            1,
        )?;
        w = snap.observe(p, now, what, Some(counted));
    }
    if let Some(slot_ms) = w.count_success {
        kv::incr(
            store,
            &HealthCount {
                tally: Tally::Ok,
                target,
                slot_ms,
            },
            1,
        )?;
    }
    if let Some(r) = &w.record {
        kv::store(store, &HealthKey(target), r)?;
    }
    Ok(())
}

/// The stored record of a target, for `GET /admin/health`.
pub fn record(store: &dyn Kv, target: Target<'_>) -> Result<Option<Record>, KvError> {
    kv::load(store, &HealthKey(target))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::health::Failure;
    use crate::store::MemKv;

    const T: Target<'static> = Target {
        provider: "openai",
        model: "gpt-4o",
    };

    fn ok() -> Observation {
        Observation::Success {
            ttft_ms: 50.0,
            tokens: 3,
            total_ms: 70.0,
        }
    }

    #[test]
    fn extra_keys_come_back_from_the_same_batch_after_the_snapshots() {
        let kv = MemKv::default();
        let p = Policy::default();
        let now = 1_000_000;
        let s = snapshots(&kv, &p, &[T], now).unwrap().remove(0);
        observe(&kv, &p, T, &s, now, ok()).unwrap();
        kv.set("other/a", b"1").unwrap();
        let before = kv.ops();
        let extra = ["other/a".to_string(), "other/missing".to_string()];
        let (snaps, values) = snapshots_and(&kv, &p, &[T, T], now, &extra).unwrap();
        assert_eq!(
            kv.ops(),
            (before.0 + 1, before.1),
            "one batch read, no write"
        );
        assert_eq!(snaps.len(), 2);
        assert!(snaps.iter().all(|s| s.record.is_some()), "{snaps:?}");
        assert_eq!(values, vec![Some(b"1".to_vec()), None]);
        // No target: the extra keys alone.
        let (snaps, values) = snapshots_and(&kv, &p, &[], now, &extra[..1]).unwrap();
        assert!(snaps.is_empty());
        assert_eq!(values, vec![Some(b"1".to_vec())]);
    }

    #[test]
    fn a_healthy_target_is_one_read_per_plan_and_no_write_per_call() {
        let kv = MemKv::default();
        let p = Policy::default();
        let now = 1_000_000;
        // First call: the record is written once.
        let s = snapshots(&kv, &p, &[T], now).unwrap().remove(0);
        observe(&kv, &p, T, &s, now, ok()).unwrap();
        let before = kv.ops();
        for i in 1..100 {
            let s = snapshots(&kv, &p, &[T, T], now + i).unwrap();
            assert_eq!(
                availability(&kv, &p, T, &s[0], now + i).unwrap(),
                Availability::Up
            );
            observe(&kv, &p, T, &s[0], now + i, ok()).unwrap();
        }
        let after = kv.ops();
        assert_eq!(after.0 - before.0, 99, "one batch read per plan");
        assert_eq!(after.1 - before.1, 0, "no write while healthy and fresh");
    }

    #[test]
    fn a_dead_target_opens_after_five_failures_and_one_probe_is_claimed() {
        let kv = MemKv::default();
        let p = Policy::default();
        let now = 1_000_000;
        for i in 0..5 {
            let s = snapshots(&kv, &p, &[T], now + i).unwrap().remove(0);
            assert_eq!(s.availability(&p, now + i), Availability::Up, "call {i}");
            observe(
                &kv,
                &p,
                T,
                &s,
                now + i,
                Observation::Failure(Failure::Error),
            )
            .unwrap();
        }
        let s = snapshots(&kv, &p, &[T], now + 10).unwrap().remove(0);
        assert!(matches!(
            s.availability(&p, now + 10),
            Availability::Down { .. }
        ));
        let later = now + 4 + p.cooldown_ms + 1;
        let s = snapshots(&kv, &p, &[T], later).unwrap().remove(0);
        let first = availability(&kv, &p, T, &s, later).unwrap();
        assert!(matches!(first, Availability::Probe { .. }));
        let second = availability(&kv, &p, T, &s, later).unwrap();
        assert!(matches!(second, Availability::Down { .. }), "{second:?}");
        // The probe succeeds: closed for everyone.
        observe(&kv, &p, T, &s, later, ok()).unwrap();
        let s = snapshots(&kv, &p, &[T], later + 1).unwrap().remove(0);
        assert_eq!(s.availability(&p, later + 1), Availability::Up);
    }

    #[test]
    fn counters_written_by_redis_read_back() {
        // Spin's Redis store keeps counters as decimal text.
        let kv = MemKv::default();
        let p = Policy::default();
        let now = 1_000_000;
        let key = HealthCount {
            tally: Tally::Fail,
            target: T,
            slot_ms: p.slot(now),
        }
        .key();
        kv.set(&key, b"4").unwrap();
        let s = snapshots(&kv, &p, &[T], now).unwrap().remove(0);
        assert_eq!(s.fails, [4, 0]);
    }
}
