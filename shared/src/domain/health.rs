//! Provider health as a pure state machine over what one request read of the store (a
//! [`Snapshot`]): whether a provider+model should be tried now, and which writes an observed
//! call calls for. [`crate::store::health`] does the reading and writing.
//!
//! The design writes nothing on the healthy path and never needs compare-and-swap:
//! - failures are counted with atomic `increment` per time slot (`fail`), and successes are
//!   counted (`ok`) only while failures are in the window — enough for an error rate, at no
//!   cost while a provider is healthy;
//! - the [`Record`] (averages, breaker, `Retry-After`) is a plain value, last writer wins; it is
//!   written when the breaker changes, on a 429 with `Retry-After`, and otherwise at most every
//!   [`Policy::refresh_ms`] to move the averages;
//! - one half-open probe per cool-down is claimed with `increment` (the first to reach 1 has it).
//!
//! Breaker: **closed** until the window holds [`Policy::open_after`] failures with no success
//! counted among them, or [`Policy::min_calls`] counted calls of which at least
//! [`Policy::open_rate`] failed (a provider that fails every call opens after 5; one that fails
//! every other call after about 10; one that fails 1 % of a busy stream never); then **open** for
//! [`Policy::cooldown_ms`]; then one probe per [`Policy::probe_timeout_ms`]. A probe's success
//! closes the breaker (and the window restarts: slots that began before the close are not
//! counted), its failure opens it again. Everything takes `now` in milliseconds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Thresholds of the breaker and the averages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Failures in the window, with no success counted between them, that open the breaker.
    pub open_after: i64,
    /// Share of the counted calls that opens the breaker once [`Policy::min_calls`] are counted.
    pub open_rate: f64,
    /// Calls the window must count before its error rate opens the breaker.
    pub min_calls: i64,
    /// How long an open breaker stays open before a probe.
    pub cooldown_ms: u64,
    /// How long a probe may stay unanswered before another is let through.
    pub probe_timeout_ms: u64,
    /// Weight of the newest observation in the moving averages.
    pub alpha: f64,
    /// Width of a counting slot; the window is the current slot and the one before.
    pub slot_ms: u64,
    /// The averages are written at most this often per provider+model.
    pub refresh_ms: u64,
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
            slot_ms: 30_000,
            refresh_ms: 5_000,
        }
    }
}

impl Policy {
    /// Start of the slot `now` falls in.
    pub fn slot(&self, now: u64) -> u64 {
        now - now % self.slot_ms.max(1)
    }
}

/// The stored record of one provider+model (plain value, last writer wins).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Moving average of time to first byte, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Moving average of time per output token after the first, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms_per_token: Option<f64>,
    /// Moving average of the extra first-byte time of a cold start, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_ms: Option<f64>,
    /// A 429's `Retry-After` asks us to stay away until then (ms since the epoch; 0 = no).
    #[serde(default)]
    pub retry_after_until_ms: u64,
    /// The breaker opened then (ms since the epoch); `None` = closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_since_ms: Option<u64>,
    /// The breaker last closed then: failures counted in slots that began earlier are ignored.
    #[serde(default)]
    pub closed_ms: u64,
    /// Last write, ms since the epoch.
    #[serde(default)]
    pub updated_ms: u64,
}

/// What a request read of one provider+model: the record and the counters of the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// The record, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<Record>,
    /// Start of the current slot when read.
    pub slot_ms: u64,
    /// Failures in the current and the previous slot.
    pub fails: [i64; 2],
    /// Successes counted in the current and the previous slot.
    pub oks: [i64; 2],
}

/// Whether a provider should be tried now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Healthy: try it in its normal place.
    Up,
    /// Open, cooled down: one probe may go; claim it first (`claim` names the claim epoch).
    Probe {
        /// The open breaker's `open_since_ms`.
        since_ms: u64,
        /// Which probe period this is (a new one after each unanswered probe timeout).
        period: u64,
    },
    /// Do not try it first; it may be tried again at `until_ms`.
    Down {
        /// When it may be tried again, ms since the epoch.
        until_ms: u64,
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
    /// A cold start added this much before the first byte (ms).
    ColdStart(f64),
}

/// The writes one observation calls for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Writes {
    /// Add one to the failure counter of this slot.
    pub count_failure: Option<u64>,
    /// Add one to the success counter of this slot.
    pub count_success: Option<u64>,
    /// Write this record.
    pub record: Option<Record>,
}

fn ewma(old: Option<f64>, new: f64, alpha: f64) -> Option<f64> {
    Some(old.map_or(new, |o| o + alpha * (new - o)))
}

impl Snapshot {
    /// Failures and counted successes in the window at `now`, ignoring slots that began before
    /// the breaker last closed. `extra_fail` adds a failure just counted.
    pub fn window(&self, p: &Policy, now: u64) -> (i64, i64) {
        let cur = p.slot(now);
        let closed = self.record.as_ref().map_or(0, |r| r.closed_ms);
        let mut fails = 0;
        let mut oks = 0;
        // Slot i of the snapshot began at slot_ms - i * slot width.
        for i in 0..2u64 {
            let Some(start) = self.slot_ms.checked_sub(i * p.slot_ms) else {
                continue;
            };
            let in_window = start + p.slot_ms >= cur && start <= cur;
            if in_window && start >= closed {
                fails += self.fails[i as usize];
                oks += self.oks[i as usize];
            }
        }
        (fails, oks)
    }

    /// Whether to try this provider now.
    pub fn availability(&self, p: &Policy, now: u64) -> Availability {
        let Some(r) = &self.record else {
            return Availability::Up;
        };
        let breaker = match r.open_since_ms {
            None => Availability::Up,
            Some(since) if now < since + p.cooldown_ms => Availability::Down {
                until_ms: since + p.cooldown_ms,
            },
            Some(since) => Availability::Probe {
                since_ms: since,
                period: (now - since - p.cooldown_ms) / p.probe_timeout_ms.max(1),
            },
        };
        match breaker {
            Availability::Up | Availability::Probe { .. } if now < r.retry_after_until_ms => {
                Availability::Down {
                    until_ms: r.retry_after_until_ms,
                }
            }
            other => other,
        }
    }

    /// When a claimed probe period ends (for a provider whose probe someone else holds).
    pub fn probe_busy_until(&self, p: &Policy, since_ms: u64, period: u64) -> u64 {
        since_ms + p.cooldown_ms + (period + 1) * p.probe_timeout_ms
    }

    /// The writes for one observation at `now`; `failures_now` is the failure counter of the
    /// current slot after this failure was counted (only for failures; see
    /// [`crate::store::health::observe`], which counts first and then asks).
    pub fn observe(
        &self,
        p: &Policy,
        now: u64,
        what: Observation,
        failures_now: Option<i64>,
    ) -> Writes {
        let rec = self.record.clone().unwrap_or_default();
        let open = rec.open_since_ms.is_some();
        let stale = self.record.is_none() || now >= rec.updated_ms + p.refresh_ms;
        let (fails, _) = self.window(p, now);
        let mut w = Writes::default();
        match what {
            Observation::Success {
                ttft_ms,
                tokens,
                total_ms,
            } => {
                if fails > 0 && !open {
                    w.count_success = Some(p.slot(now));
                }
                if open || stale {
                    let mut r = rec;
                    r.ttft_ms = ewma(r.ttft_ms, ttft_ms, p.alpha);
                    if tokens > 1 && total_ms > ttft_ms {
                        let per = (total_ms - ttft_ms) / (tokens - 1) as f64;
                        r.ms_per_token = ewma(r.ms_per_token, per, p.alpha);
                    }
                    if open {
                        // The probe answered: close, and restart the window.
                        r.open_since_ms = None;
                        r.closed_ms = now;
                    }
                    r.updated_ms = now;
                    w.record = Some(r);
                }
            }
            Observation::ColdStart(extra_ms) => {
                let mut r = rec;
                r.cold_start_ms = ewma(r.cold_start_ms, extra_ms, p.alpha);
                r.updated_ms = now;
                w.record = Some(r);
            }
            Observation::Failure(why) => {
                let mut r = rec;
                let mut changed = false;
                if let Failure::RateLimited { retry_after_ms } = why {
                    if retry_after_ms > 0 && now + retry_after_ms > r.retry_after_until_ms {
                        r.retry_after_until_ms = now + retry_after_ms;
                        changed = true;
                    }
                }
                match failures_now {
                    None => w.count_failure = Some(p.slot(now)),
                    Some(counted) => {
                        if open {
                            // A probe failed: open again from now. (A call that was already
                            // running when the breaker opened changes nothing.)
                            if now >= rec_until(&r, p) {
                                r.open_since_ms = Some(now);
                                changed = true;
                            }
                        } else {
                            let snapshot_cur = if self.slot_ms == p.slot(now) {
                                self.fails[0]
                            } else {
                                0
                            };
                            let fails = fails - snapshot_cur + counted;
                            let (_, oks) = self.window(p, now);
                            let calls = fails + oks;
                            let in_a_row = fails >= p.open_after && oks == 0;
                            let rate =
                                calls >= p.min_calls && fails as f64 >= p.open_rate * calls as f64;
                            if in_a_row || rate {
                                r.open_since_ms = Some(now);
                                changed = true;
                            }
                        }
                    }
                }
                if changed {
                    r.updated_ms = now;
                    w.record = Some(r);
                }
            }
        }
        w
    }
}

/// When an open record's cool-down ends.
fn rec_until(r: &Record, p: &Policy) -> u64 {
    r.open_since_ms.map_or(0, |s| s + p.cooldown_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy {
        open_after: 5,
        open_rate: 0.5,
        min_calls: 10,
        cooldown_ms: 30_000,
        probe_timeout_ms: 60_000,
        alpha: 0.2,
        slot_ms: 30_000,
        refresh_ms: 5_000,
    };

    fn snap(now: u64, rec: Option<Record>, fails: [i64; 2], oks: [i64; 2]) -> Snapshot {
        Snapshot {
            record: rec,
            slot_ms: P.slot(now),
            fails,
            oks,
        }
    }

    fn ok() -> Observation {
        Observation::Success {
            ttft_ms: 100.0,
            tokens: 11,
            total_ms: 600.0,
        }
    }

    #[test]
    fn a_healthy_provider_costs_no_write_until_its_averages_are_stale() {
        let now = 1_000_000;
        let fresh = Record {
            ttft_ms: Some(90.0),
            updated_ms: now - 1_000,
            ..Record::default()
        };
        let w = snap(now, Some(fresh.clone()), [0, 0], [0, 0]).observe(&P, now, ok(), None);
        assert_eq!(w, Writes::default());
        // Stale: one record write with the moved average, no counter.
        let stale = Record {
            updated_ms: now - 6_000,
            ..fresh
        };
        let w = snap(now, Some(stale), [0, 0], [0, 0]).observe(&P, now, ok(), None);
        let r = w.record.unwrap();
        assert!((r.ttft_ms.unwrap() - 92.0).abs() < 1e-9);
        assert!((r.ms_per_token.unwrap() - 50.0).abs() < 1e-9);
        assert_eq!((w.count_success, w.count_failure), (None, None));
        // No record yet: the first success writes one.
        let w = snap(now, None, [0, 0], [0, 0]).observe(&P, now, ok(), None);
        assert_eq!(w.record.unwrap().ttft_ms, Some(100.0));
    }

    #[test]
    fn successes_are_counted_only_while_failures_are_in_the_window() {
        let now = 1_000_000;
        let rec = Record {
            updated_ms: now,
            ..Record::default()
        };
        let w = snap(now, Some(rec), [1, 0], [0, 0]).observe(&P, now, ok(), None);
        assert_eq!(w.count_success, Some(P.slot(now)));
        assert_eq!(w.record, None);
    }

    #[test]
    fn five_failures_that_are_most_of_the_calls_open_the_breaker() {
        let now = 1_000_000;
        let s = snap(now, None, [3, 1], [0, 0]);
        // First pass: count the failure.
        let w = s.observe(&P, now, Observation::Failure(Failure::Error), None);
        assert_eq!(w.count_failure, Some(P.slot(now)));
        assert_eq!(w.record, None);
        // The counter came back 4 (this failure): with the previous slot's 1, five.
        let w = s.observe(&P, now, Observation::Failure(Failure::Error), Some(4));
        assert_eq!(w.record.unwrap().open_since_ms, Some(now));
        // Four failures are not enough.
        let w = s.observe(&P, now, Observation::Failure(Failure::Error), Some(3));
        assert_eq!(w.record, None);
        // Five failures among many successes are a low error rate: stay closed.
        let busy = snap(now, None, [3, 1], [40, 60]);
        let w = busy.observe(&P, now, Observation::Failure(Failure::Error), Some(4));
        assert_eq!(w.record, None);
        // Every other call failing: not five in a row, but half of ten calls.
        let flapping = snap(now, None, [4, 0], [4, 0]);
        let w = flapping.observe(&P, now, Observation::Failure(Failure::Error), Some(5));
        assert_eq!(w.record, None, "5 of 9 calls: not enough calls yet");
        let flapping = snap(now, None, [5, 0], [5, 0]);
        let w = flapping.observe(&P, now, Observation::Failure(Failure::Error), Some(6));
        assert_eq!(w.record.unwrap().open_since_ms, Some(now), "6 of 11 calls");
    }

    #[test]
    fn open_then_probe_then_closed_and_the_window_restarts() {
        let t = 1_000_000;
        let open = Record {
            open_since_ms: Some(t),
            updated_ms: t,
            ..Record::default()
        };
        let s = snap(t + 1_000, Some(open.clone()), [5, 0], [0, 0]);
        assert_eq!(
            s.availability(&P, t + 1_000),
            Availability::Down {
                until_ms: t + 30_000
            }
        );
        let later = t + 31_000;
        let s = snap(later, Some(open.clone()), [5, 0], [0, 0]);
        assert_eq!(
            s.availability(&P, later),
            Availability::Probe {
                since_ms: t,
                period: 0
            }
        );
        // An unanswered probe: another may go after the probe timeout.
        assert_eq!(
            s.availability(&P, t + 30_000 + 60_001),
            Availability::Probe {
                since_ms: t,
                period: 1
            }
        );
        // The probe answers: closed, window restarts at the close.
        let w = s.observe(&P, later, ok(), None);
        let r = w.record.unwrap();
        assert_eq!((r.open_since_ms, r.closed_ms), (None, later));
        assert_eq!(w.count_success, None);
        let closed = snap(later + 1, Some(r), [5, 0], [0, 0]);
        assert_eq!(closed.window(&P, later + 1), (0, 0));
        assert_eq!(closed.availability(&P, later + 1), Availability::Up);
    }

    #[test]
    fn a_failed_probe_opens_again() {
        let t = 1_000_000;
        let open = Record {
            open_since_ms: Some(t),
            ..Record::default()
        };
        let later = t + 31_000;
        let s = snap(later, Some(open), [5, 0], [0, 0]);
        let w = s.observe(&P, later, Observation::Failure(Failure::Error), Some(1));
        assert_eq!(w.record.unwrap().open_since_ms, Some(later));
    }

    #[test]
    fn retry_after_keeps_a_provider_down_until_then() {
        let now = 1_000_000;
        let s = snap(now, None, [0, 0], [0, 0]);
        let why = Failure::RateLimited {
            retry_after_ms: 7_000,
        };
        let w = s.observe(&P, now, Observation::Failure(why), Some(1));
        let r = w.record.unwrap();
        assert_eq!(r.retry_after_until_ms, now + 7_000);
        let s = snap(now + 1, Some(r), [1, 0], [0, 0]);
        assert_eq!(
            s.availability(&P, now + 1),
            Availability::Down {
                until_ms: now + 7_000
            }
        );
        assert_eq!(s.availability(&P, now + 7_000), Availability::Up);
    }

    #[test]
    fn old_slots_leave_the_window() {
        let now = 1_000_000;
        let s = snap(now, None, [2, 3], [1, 1]);
        assert_eq!(s.window(&P, now), (5, 2));
        // Read one slot ago: its "current" is now the previous slot, its previous is gone.
        assert_eq!(s.window(&P, now + P.slot_ms), (2, 1));
        assert_eq!(s.window(&P, now + 2 * P.slot_ms), (0, 0));
    }
}
