//! Provider health as every instance sees it: latency averages, a sliding error window, recent
//! 429s and a circuit breaker, kept per provider and model in the KV store.
//!
//! The provider records the outcome of every call ([`Health::success`], [`Health::failure`]);
//! the router reads [`Health::availability`] to order a plan. Everything takes `now` in
//! milliseconds, so the state machine is tested without a clock.
//!
//! Breaker: **closed** until [`Policy::open_after`] consecutive failures, or an error rate of at
//! least [`Policy::open_rate`] over the window with [`Policy::min_calls`] calls in it; then
//! **open** for [`Policy::cooldown_ms`]; then one **half-open** probe is let through (another
//! after [`Policy::probe_timeout_ms`] if it never reports). A probe's success closes the breaker,
//! its failure opens it again.

use crate::kv::{self, Family, Kv, KvError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Thresholds of the breaker and the averages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Consecutive failures that open the breaker.
    pub open_after: u32,
    /// Error rate over the window that opens the breaker.
    pub open_rate: f64,
    /// Calls the window must hold before its error rate counts.
    pub min_calls: u32,
    /// How long an open breaker stays open before a probe.
    pub cooldown_ms: u64,
    /// How long a half-open probe may stay unanswered before another is let through.
    pub probe_timeout_ms: u64,
    /// Weight of the newest observation in the moving averages.
    pub alpha: f64,
    /// Width of one window slot.
    pub slot_ms: u64,
    /// Slots in the window.
    pub slots: usize,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            open_after: 5,
            open_rate: 0.5,
            min_calls: 10,
            cooldown_ms: 30_000,
            probe_timeout_ms: 60_000,
            alpha: 0.2,
            slot_ms: 10_000,
            slots: 6,
        }
    }
}

/// Calls and failures that started within one slot of the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Slot {
    /// Start of the slot, ms since the epoch (a multiple of the slot width).
    pub start_ms: u64,
    /// Successful calls.
    pub ok: u32,
    /// Failed calls.
    pub err: u32,
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Breaker {
    /// Calls flow.
    #[default]
    Closed,
    /// Calls are refused until the cooldown ends.
    Open {
        /// When it opened, ms since the epoch.
        since_ms: u64,
    },
    /// One probe is in flight.
    HalfOpen {
        /// When the probe was let through, ms since the epoch.
        probe_ms: u64,
    },
}

/// Why a call failed, as far as health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 429: the provider asked us to wait this long (0 when it did not say).
    RateLimited {
        /// The provider's `Retry-After`, in ms.
        retry_after_ms: u64,
    },
    /// Any other failure of the provider: connect error, 5xx, deadline breach, cut stream.
    Error,
}

/// Whether a provider should be tried now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Healthy: try it in its normal place.
    Up,
    /// Open, but its cooldown is over: one probe may go (claim it with [`Health::claim_probe`]).
    Probe,
    /// Do not try it first; it becomes available again at `until_ms`.
    Down {
        /// When it may be tried again, ms since the epoch.
        until_ms: u64,
    },
}

/// The stored health of one provider and model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    /// Moving average of time to first byte, ms.
    pub ttft_ms: Option<f64>,
    /// Moving average of time per output token after the first, ms.
    pub ms_per_token: Option<f64>,
    /// Moving average of the extra first-byte time seen on a cold start, ms.
    pub cold_start_ms: Option<f64>,
    /// The sliding window, oldest first.
    pub window: Vec<Slot>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// A 429's `Retry-After` asks us to stay away until then, ms since the epoch.
    pub retry_after_until_ms: u64,
    /// The circuit breaker.
    pub breaker: Breaker,
    /// Last update, ms since the epoch.
    pub updated_ms: u64,
}

fn ewma(old: Option<f64>, new: f64, alpha: f64) -> Option<f64> {
    Some(old.map_or(new, |o| o + alpha * (new - o)))
}

impl Health {
    /// Records a successful call: time to first byte, output tokens and total time.
    pub fn success(&mut self, p: &Policy, now: u64, ttft_ms: f64, tokens: u64, total_ms: f64) {
        self.ttft_ms = ewma(self.ttft_ms, ttft_ms, p.alpha);
        if tokens > 1 && total_ms > ttft_ms {
            let per = (total_ms - ttft_ms) / (tokens - 1) as f64;
            self.ms_per_token = ewma(self.ms_per_token, per, p.alpha);
        }
        self.slot(p, now).ok += 1;
        self.consecutive_failures = 0;
        self.breaker = Breaker::Closed;
        self.updated_ms = now;
    }

    /// Records a cold start that added `extra_ms` before the first byte.
    pub fn cold_start(&mut self, p: &Policy, now: u64, extra_ms: f64) {
        self.cold_start_ms = ewma(self.cold_start_ms, extra_ms, p.alpha);
        self.updated_ms = now;
    }

    /// Records a failed call.
    pub fn failure(&mut self, p: &Policy, now: u64, why: Failure) {
        self.slot(p, now).err += 1;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if let Failure::RateLimited { retry_after_ms } = why {
            self.retry_after_until_ms = self.retry_after_until_ms.max(now + retry_after_ms);
        }
        let (calls, errs) = self.counts(p, now);
        let too_many = self.consecutive_failures >= p.open_after
            || (calls >= p.min_calls && f64::from(errs) >= p.open_rate * f64::from(calls));
        self.breaker = match self.breaker {
            Breaker::HalfOpen { .. } => Breaker::Open { since_ms: now },
            Breaker::Closed if too_many => Breaker::Open { since_ms: now },
            other => other,
        };
        self.updated_ms = now;
    }

    /// Whether to try this provider now.
    pub fn availability(&self, p: &Policy, now: u64) -> Availability {
        let breaker = match self.breaker {
            Breaker::Closed => Availability::Up,
            Breaker::Open { since_ms } if now >= since_ms + p.cooldown_ms => Availability::Probe,
            Breaker::Open { since_ms } => Availability::Down {
                until_ms: since_ms + p.cooldown_ms,
            },
            Breaker::HalfOpen { probe_ms } if now >= probe_ms + p.probe_timeout_ms => {
                Availability::Probe
            }
            Breaker::HalfOpen { probe_ms } => Availability::Down {
                until_ms: probe_ms + p.probe_timeout_ms,
            },
        };
        match breaker {
            Availability::Up | Availability::Probe if now < self.retry_after_until_ms => {
                Availability::Down {
                    until_ms: self.retry_after_until_ms,
                }
            }
            other => other,
        }
    }

    /// Takes the half-open probe; false when another instance took it first.
    pub fn claim_probe(&mut self, p: &Policy, now: u64) -> bool {
        if self.availability(p, now) != Availability::Probe {
            return false;
        }
        self.breaker = Breaker::HalfOpen { probe_ms: now };
        self.updated_ms = now;
        true
    }

    /// Calls and failures in the window at `now`.
    pub fn counts(&self, p: &Policy, now: u64) -> (u32, u32) {
        let oldest = Self::slot_start(p, now).saturating_sub(p.slot_ms * (p.slots as u64 - 1));
        self.window
            .iter()
            .filter(|s| s.start_ms >= oldest)
            .fold((0, 0), |(c, e), s| (c + s.ok + s.err, e + s.err))
    }

    fn slot_start(p: &Policy, now: u64) -> u64 {
        now - now % p.slot_ms.max(1)
    }

    fn slot(&mut self, p: &Policy, now: u64) -> &mut Slot {
        let start = Self::slot_start(p, now);
        let oldest = start.saturating_sub(p.slot_ms * (p.slots as u64 - 1));
        self.window.retain(|s| s.start_ms >= oldest);
        if self.window.last().map(|s| s.start_ms) != Some(start) {
            self.window.push(Slot {
                start_ms: start,
                ..Slot::default()
            });
        }
        let last = self.window.len() - 1;
        &mut self.window[last]
    }
}

/// `v1/health/{provider}/{model}` → [`Health`] of one catalog model on one provider.
pub struct HealthKey<'a> {
    /// Provider name.
    pub provider: &'a str,
    /// Catalog model id.
    pub model: &'a str,
}
impl Family for HealthKey<'_> {
    type Value = Health;
    fn key(&self) -> String {
        format!("v1/health/{}/{}", self.provider, self.model)
    }
}

/// `v1/health/index` → every `provider/model` with a health record (for `GET /admin/health`).
pub struct HealthIndex;
impl Family for HealthIndex {
    type Value = Vec<String>;
    fn key(&self) -> String {
        "v1/health/index".into()
    }
}

/// What one call showed of a provider.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Observation {
    /// It answered: time to first token, tokens, total time.
    Success {
        /// ms to the first token (or the answer's headers).
        ttft_ms: f64,
        /// Completion tokens.
        tokens: u64,
        /// ms to the end.
        total_ms: f64,
    },
    /// It failed.
    Failure(Failure),
}

/// Applies `change` to a record with compare-and-swap (a few tries, then last writer wins), so
/// instances and replicas writing at once do not lose each other's observations.
fn update(
    store: &dyn Kv,
    key: &HealthKey<'_>,
    mut change: impl FnMut(&mut Health) -> bool,
) -> Result<(Health, bool), KvError> {
    let k = key.key();
    for _ in 0..5 {
        let raw = store.get(&k)?;
        let mut h: Health = raw
            .as_deref()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default();
        if !change(&mut h) {
            return Ok((h, false));
        }
        let new = serde_json::to_vec(&h).map_err(|e| KvError(e.to_string()))?;
        if store.compare_and_swap(&k, raw.as_deref(), &new)? {
            return Ok((h, true));
        }
    }
    let mut h = kv::load(store, key)?.unwrap_or_default();
    let changed = change(&mut h);
    if changed {
        kv::store(store, key, &h)?;
    }
    Ok((h, changed))
}

/// Records one observation of `provider`/`model` (the provider writes these after each call).
pub fn observe(
    store: &dyn Kv,
    p: &Policy,
    provider: &str,
    model: &str,
    now: u64,
    what: Observation,
) -> Result<Health, KvError> {
    let key = HealthKey { provider, model };
    let first = store.get(&key.key())?.is_none();
    let (h, _) = update(store, &key, |h| {
        match what {
            Observation::Success {
                ttft_ms,
                tokens,
                total_ms,
            } => h.success(p, now, ttft_ms, tokens, total_ms),
            Observation::Failure(f) => h.failure(p, now, f),
        }
        true
    })?;
    if first {
        let name = format!("{provider}/{model}");
        let mut index = kv::load(store, &HealthIndex)?.unwrap_or_default();
        if !index.contains(&name) {
            index.push(name);
            kv::store(store, &HealthIndex, &index)?;
        }
    }
    Ok(h)
}

/// How the router may use `provider`/`model` now; a due probe is claimed atomically, so one
/// request (across every instance) gets it and the rest see the provider as down.
pub fn check(
    store: &dyn Kv,
    p: &Policy,
    provider: &str,
    model: &str,
    now: u64,
) -> Result<Availability, KvError> {
    let key = HealthKey { provider, model };
    let Some(h) = kv::load(store, &key)? else {
        return Ok(Availability::Up);
    };
    match h.availability(p, now) {
        Availability::Probe => {
            let (h, claimed) = update(store, &key, |h| h.claim_probe(p, now))?;
            Ok(if claimed {
                Availability::Probe
            } else {
                match h.availability(p, now) {
                    Availability::Up => Availability::Up,
                    _ => Availability::Down {
                        until_ms: now + p.probe_timeout_ms,
                    },
                }
            })
        }
        other => Ok(other),
    }
}

/// Every health record, by `provider/model`.
pub fn all(store: &dyn Kv) -> Result<Vec<(String, Health)>, KvError> {
    let mut out = Vec::new();
    for name in kv::load(store, &HealthIndex)?.unwrap_or_default() {
        if let Some((provider, model)) = name.split_once('/') {
            if let Some(h) = kv::load(store, &HealthKey { provider, model })? {
                out.push((name.clone(), h));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn observations_go_to_kv_and_one_probe_is_claimed() {
        let store = crate::kv::MemKv::default();
        let p = Policy::default();
        for i in 0..p.open_after as u64 {
            observe(
                &store,
                &p,
                "openai",
                "m",
                T0 + i,
                Observation::Failure(Failure::Error),
            )
            .unwrap();
        }
        assert_eq!(
            check(&store, &p, "openai", "m", T0 + 10).unwrap(),
            Availability::Down {
                until_ms: T0 + 4 + p.cooldown_ms
            }
        );
        assert_eq!(
            check(&store, &p, "azure", "m", T0).unwrap(),
            Availability::Up
        );
        let later = T0 + 4 + p.cooldown_ms;
        assert_eq!(
            check(&store, &p, "openai", "m", later).unwrap(),
            Availability::Probe
        );
        assert!(
            matches!(
                check(&store, &p, "openai", "m", later + 1).unwrap(),
                Availability::Down { .. }
            ),
            "the probe was already claimed"
        );
        observe(
            &store,
            &p,
            "openai",
            "m",
            later + 50,
            Observation::Success {
                ttft_ms: 40.0,
                tokens: 5,
                total_ms: 80.0,
            },
        )
        .unwrap();
        assert_eq!(
            check(&store, &p, "openai", "m", later + 60).unwrap(),
            Availability::Up
        );
        let every = all(&store).unwrap();
        assert_eq!(every.len(), 1);
        assert_eq!(every[0].0, "openai/m");
        assert_eq!(every[0].1.ttft_ms, Some(40.0));
        assert_eq!(
            HealthKey {
                provider: "a",
                model: "b"
            }
            .key(),
            "v1/health/a/b"
        );
    }

    #[test]
    fn consecutive_failures_open_then_a_probe_closes() {
        let p = Policy::default();
        let mut h = Health::default();
        for i in 0..4 {
            h.failure(&p, T0 + i, Failure::Error);
            assert_eq!(h.availability(&p, T0 + i), Availability::Up);
        }
        h.failure(&p, T0 + 4, Failure::Error);
        assert_eq!(
            h.availability(&p, T0 + 5),
            Availability::Down {
                until_ms: T0 + 4 + p.cooldown_ms
            }
        );
        let later = T0 + 4 + p.cooldown_ms;
        assert_eq!(h.availability(&p, later), Availability::Probe);
        assert!(h.claim_probe(&p, later));
        assert!(!h.claim_probe(&p, later + 1), "one probe at a time");
        h.success(&p, later + 100, 120.0, 10, 300.0);
        assert_eq!(h.breaker, Breaker::Closed);
        assert_eq!(h.availability(&p, later + 101), Availability::Up);
    }

    #[test]
    fn a_failed_probe_reopens_and_an_unanswered_one_is_retried() {
        let p = Policy::default();
        let mut h = Health {
            breaker: Breaker::Open { since_ms: T0 },
            ..Health::default()
        };
        let t = T0 + p.cooldown_ms;
        assert!(h.claim_probe(&p, t));
        h.failure(&p, t + 10, Failure::Error);
        assert_eq!(h.breaker, Breaker::Open { since_ms: t + 10 });

        let t2 = t + 10 + p.cooldown_ms;
        assert!(h.claim_probe(&p, t2));
        assert!(!h.claim_probe(&p, t2 + p.probe_timeout_ms - 1));
        assert!(h.claim_probe(&p, t2 + p.probe_timeout_ms));
    }

    #[test]
    fn the_error_rate_opens_only_with_enough_calls_in_the_window() {
        let p = Policy::default();
        let mut h = Health::default();
        // Alternating: never five in a row, but half the calls fail.
        for i in 0..9 {
            if i % 2 == 0 {
                h.failure(&p, T0 + i, Failure::Error);
            } else {
                h.success(&p, T0 + i, 10.0, 1, 10.0);
            }
        }
        assert_eq!(h.counts(&p, T0 + 9), (9, 5));
        assert_eq!(h.breaker, Breaker::Closed, "nine calls are below min_calls");
        h.failure(&p, T0 + 9, Failure::Error);
        assert!(matches!(h.breaker, Breaker::Open { .. }));
    }

    #[test]
    fn old_slots_leave_the_window() {
        let p = Policy::default();
        let mut h = Health::default();
        h.failure(&p, T0, Failure::Error);
        h.success(&p, T0 + 15_000, 5.0, 1, 5.0);
        assert_eq!(h.counts(&p, T0 + 15_000), (2, 1));
        let far = T0 + 15_000 + p.slot_ms * p.slots as u64;
        assert_eq!(h.counts(&p, far), (0, 0));
        h.success(&p, far, 5.0, 1, 5.0);
        assert!(h.window.len() <= p.slots);
    }

    #[test]
    fn retry_after_keeps_a_provider_down_until_then() {
        let p = Policy::default();
        let mut h = Health::default();
        h.failure(
            &p,
            T0,
            Failure::RateLimited {
                retry_after_ms: 2_000,
            },
        );
        assert_eq!(
            h.availability(&p, T0 + 1),
            Availability::Down {
                until_ms: T0 + 2_000
            }
        );
        assert_eq!(h.availability(&p, T0 + 2_000), Availability::Up);
    }

    #[test]
    fn averages_move_toward_new_observations() {
        let p = Policy::default();
        let mut h = Health::default();
        h.success(&p, T0, 100.0, 11, 600.0);
        assert_eq!(h.ttft_ms, Some(100.0));
        assert_eq!(h.ms_per_token, Some(50.0));
        h.success(&p, T0 + 1, 200.0, 1, 200.0);
        assert_eq!(h.ttft_ms, Some(120.0));
        assert_eq!(
            h.ms_per_token,
            Some(50.0),
            "one token says nothing of the rate"
        );
        h.cold_start(&p, T0 + 2, 8_000.0);
        assert_eq!(h.cold_start_ms, Some(8_000.0));
    }
}
