//! Plain-text output of `lumen`: aligned tables, key/value blocks, dates and dollars.

use serde_json::Value;

/// Column alignment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A table with a header row; columns are as wide as their widest cell.
pub struct Table {
    headers: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(headers: &[(&'static str, Align)]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are blank).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as lines of text.
    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut width: Vec<usize> = self.headers.iter().map(|(h, _)| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(n) {
                width[i] = width[i].max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let pad = width[i].saturating_sub(cell.chars().count());
                let last = i + 1 == n;
                match self.headers[i].1 {
                    Align::Right => {
                        out.push_str(&" ".repeat(pad));
                        out.push_str(cell);
                    }
                    Align::Left => {
                        out.push_str(cell);
                        if !last {
                            out.push_str(&" ".repeat(pad));
                        }
                    }
                }
                if !last {
                    out.push_str("  ");
                }
            }
            out.trim_end().to_string() + "\n"
        };
        let mut out = line(self.headers.iter().map(|(h, _)| *h).collect());
        for row in &self.rows {
            out.push_str(&line(
                (0..n)
                    .map(|i| row.get(i).map(String::as_str).unwrap_or(""))
                    .collect(),
            ));
        }
        out
    }
}

/// `label  value` lines with the labels aligned.
pub fn pairs(items: &[(&str, String)]) -> String {
    let w = items.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    items
        .iter()
        .map(|(k, v)| format!("{k:<w$}  {v}\n"))
        .collect()
}

/// A JSON string, number or bool as text; null and absent as `-`.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Dollars with up to six decimals (`$0.000003`, `$5.00`); null as `-`.
pub fn usd(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(x) if x != 0.0 && x.abs() < 0.01 => {
            let s = format!("{x:.6}");
            format!("${}", s.trim_end_matches('0'))
        }
        Some(x) => format!("${x:.2}"),
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM UTC`; null as `never` (for expiries) or `-`.
pub fn unix_time(v: &Value, null: &str) -> String {
    match v.as_i64() {
        None => null.into(),
        Some(secs) => {
            let days = secs.div_euclid(86_400);
            let rem = secs.rem_euclid(86_400);
            let (y, m, d) = civil_from_days(days);
            format!(
                "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
                rem / 3600,
                rem % 3600 / 60
            )
        }
    }
}

/// Unix milliseconds, as [`unix_time`] with seconds.
pub fn unix_ms(v: &Value) -> String {
    match v.as_i64() {
        None => "-".into(),
        Some(ms) => {
            let secs = ms.div_euclid(1000);
            let base = unix_time(&Value::from(secs), "-");
            let s = secs.rem_euclid(60);
            base.replace(" UTC", &format!(":{s:02} UTC"))
        }
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_text_left_and_numbers_right() {
        let mut t = Table::new(&[
            ("ID", Align::Left),
            ("RPM", Align::Right),
            ("NAME", Align::Left),
        ]);
        t.row(vec!["key_1".into(), "600".into(), "me".into()]);
        t.row(vec!["k".into(), "5".into()]);
        assert_eq!(t.render(), "ID     RPM  NAME\nkey_1  600  me\nk        5\n");
    }

    #[test]
    fn dates_dollars_and_values() {
        assert_eq!(unix_time(&json!(0), "-"), "1970-01-01 00:00 UTC");
        assert_eq!(
            unix_time(&json!(1_796_269_847), "-"),
            "2026-12-03 03:50 UTC"
        );
        assert_eq!(unix_time(&json!(null), "never"), "never");
        assert_eq!(
            unix_ms(&json!(1_796_269_847_327_i64)),
            "2026-12-03 03:50:47 UTC"
        );
        assert_eq!(usd(&json!(2.7e-6)), "$0.000003");
        assert_eq!(usd(&json!(5.0)), "$5.00");
        assert_eq!(usd(&json!(0.0)), "$0.00");
        assert_eq!(usd(&json!(null)), "-");
        assert_eq!(text(&json!(["a", "b"])), "a,b");
        assert_eq!(text(&json!([])), "-");
        assert_eq!(
            pairs(&[("id", "k".into()), ("tenant", "t".into())]),
            "id      k\ntenant  t\n"
        );
    }
}
