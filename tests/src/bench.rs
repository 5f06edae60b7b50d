//! Pure helpers for the `lumen-bench` driver: latency statistics, SSE scanning, markdown output
//! and host facts (`/proc`), kept here so they are unit-tested with the library.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

/// Latency distribution of one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Summary {
    /// Number of successful samples.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest sample.
    pub max: Duration,
    /// Arithmetic mean.
    pub mean: Duration,
}

impl Summary {
    /// Summarises `samples` (any order); `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let total: Duration = sorted.iter().sum();
        Some(Self {
            count: sorted.len(),
            p50: percentile(&sorted, 50.0)?,
            p90: percentile(&sorted, 90.0)?,
            p99: percentile(&sorted, 99.0)?,
            max: *sorted.last()?,
            mean: total / sorted.len() as u32,
        })
    }
}

/// Nearest-rank percentile of an ascending slice: the smallest sample with at least `p`% of the
/// samples at or below it. `None` for an empty slice.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Milliseconds with two decimals, e.g. `1.25`.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// Signed difference `gateway - direct` in milliseconds, e.g. `+0.84`.
pub fn added_ms(gateway: Duration, direct: Duration) -> String {
    let delta = gateway.as_secs_f64() - direct.as_secs_f64();
    format!("{:+.2}", delta * 1000.0)
}

/// Incremental scanner of an SSE response body that notices the first chunk carrying
/// non-empty `choices[0].delta.content` and the terminating `data: [DONE]`.
#[derive(Debug, Default)]
pub struct SseScanner {
    pending: Vec<u8>,
    saw_content: bool,
    saw_done: bool,
    events: usize,
}

impl SseScanner {
    /// Feeds body bytes; returns `true` when this call completed the first content event.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        let had_content = self.saw_content;
        self.pending
            .extend(bytes.iter().copied().filter(|&b| b != b'\r'));
        while let Some(end) = find(&self.pending, b"\n\n") {
            let event: Vec<u8> = self.pending.drain(..end + 2).collect();
            self.events += 1;
            self.event(&event[..end]);
        }
        !had_content && self.saw_content
    }

    fn event(&mut self, event: &[u8]) {
        let Ok(text) = std::str::from_utf8(event) else {
            return;
        };
        let data: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if data.is_empty() {
            return;
        }
        let payload = data.join("\n");
        if payload == "[DONE]" {
            self.saw_done = true;
        } else if !self.saw_content {
            let content = serde_json::from_str::<Value>(&payload).ok().and_then(|v| {
                v.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
                    .map(|s| !s.is_empty())
            });
            self.saw_content = content == Some(true);
        }
    }

    /// Whether a content chunk has been seen.
    pub fn saw_content(&self) -> bool {
        self.saw_content
    }

    /// Whether `data: [DONE]` has been seen.
    pub fn saw_done(&self) -> bool {
        self.saw_done
    }

    /// Number of complete events seen.
    pub fn events(&self) -> usize {
        self.events
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Formats unix seconds as `YYYY-MM-DD HH:MM:SS UTC` (proleptic Gregorian calendar).
pub fn utc_timestamp(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Converts days since 1970-01-01 to a (year, month, day) date, counting in 400-year eras of
/// 146097 days with years that start on March 1st so the leap day falls at the end.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A `kB` field (e.g. `VmRSS`, `VmHWM`) of `/proc/<pid>/status`, in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, field)
}

/// Extracts `field:   1234 kB` from the text of a `/proc/<pid>/status` file.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The first `model name` in `/proc/cpuinfo`, or `unknown`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// One row of the results table: a metric measured against both targets.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured, e.g. `non-stream c=1 p50 (ms)`.
    pub metric: String,
    /// Value against the mock directly.
    pub direct: String,
    /// Value through the gateway.
    pub gateway: String,
    /// Gateway minus direct (or a ratio for throughput).
    pub added: String,
}

impl Row {
    /// A latency row: values in ms and the added latency.
    pub fn latency(
        metric: impl Into<String>,
        direct: Option<Duration>,
        gateway: Option<Duration>,
    ) -> Self {
        let added = match (direct, gateway) {
            (Some(d), Some(g)) => added_ms(g, d),
            _ => "n/a".to_owned(),
        };
        Self {
            metric: metric.into(),
            direct: direct.map_or_else(|| "n/a".to_owned(), ms),
            gateway: gateway.map_or_else(|| "n/a".to_owned(), ms),
            added,
        }
    }
}

/// Renders rows as a GitHub markdown table.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| metric | direct (mock) | gateway (lumen) | added |\n|---|---:|---:|---:|\n",
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            row.metric, row.direct, row.gateway, row.added
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_list(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted = ms_list(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&sorted, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&sorted, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&sorted, 100.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&sorted, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 50.0), None);
        let s = Summary::of(&ms_list(&[5, 1, 3])).unwrap();
        assert_eq!(
            (s.count, s.p50, s.max, s.mean),
            (
                3,
                Duration::from_millis(3),
                Duration::from_millis(5),
                Duration::from_millis(3)
            )
        );
    }

    #[test]
    fn formats_ms() {
        assert_eq!(ms(Duration::from_micros(1250)), "1.25");
        assert_eq!(
            added_ms(Duration::from_millis(3), Duration::from_millis(1)),
            "+2.00"
        );
        assert_eq!(
            added_ms(Duration::from_millis(1), Duration::from_millis(3)),
            "-2.00"
        );
    }

    #[test]
    fn sse_scanner_finds_first_content_across_splits() {
        let role = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
        let tok = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok0 \"}}]}\r\n\r\n";
        let mut scanner = SseScanner::default();
        assert!(
            !scanner.feed(role.as_bytes()),
            "empty role chunk is not content"
        );
        let (a, b) = tok.as_bytes().split_at(20);
        assert!(!scanner.feed(a));
        assert!(scanner.feed(b));
        assert!(
            !scanner.feed(tok.as_bytes()),
            "only the first content event reports true"
        );
        assert!(!scanner.saw_done());
        scanner.feed(b"data: [DONE]\n\n");
        assert!(scanner.saw_done());
        assert_eq!(scanner.events(), 4);
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_timestamp(1_709_251_199), "2024-02-29 23:59:59 UTC");
        assert_eq!(utc_timestamp(4_102_444_800), "2100-01-01 00:00:00 UTC");
    }

    #[test]
    fn proc_status_parsing() {
        let status = "Name:\tlumen-host\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        assert!(proc_status_kib(std::process::id(), "VmRSS").is_some());
    }

    #[test]
    fn table_rendering() {
        let rows = [Row::latency(
            "p50 (ms)",
            Some(Duration::from_millis(1)),
            Some(Duration::from_millis(2)),
        )];
        let table = markdown_table(&rows);
        assert!(
            table.contains("| p50 (ms) | 1.00 | 2.00 | +1.00 |"),
            "{table}"
        );
    }
}
