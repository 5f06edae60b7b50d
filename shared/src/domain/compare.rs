//! Comparing model answers: what a shadow pair and a fusion panel are judged on. Pure.
//!
//! An [`Answer`] is the text and tool calls of one choice, read from a whole chat completion
//! ([`Answer::from_completion`]) or accumulated from stream chunks ([`Answer::push_chunk`]).
//! [`compare`] gives a pair's exact match, normalised token overlap, JSON validity (when JSON was
//! asked) and tool-call agreement; [`agreement`] summarises a panel of several answers: where
//! they agree and where they conflict.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// One tool call: its function name and arguments (as the model wrote them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ToolCall {
    /// Function name.
    pub name: String,
    /// Arguments, JSON text.
    pub arguments: String,
}

/// The content of one answer (the first choice).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Answer {
    /// Text content.
    pub text: String,
    /// Tool calls, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

impl Answer {
    /// The first choice of a whole chat completion.
    pub fn from_completion(answer: &Value) -> Answer {
        let msg = answer.pointer("/choices/0/message");
        let text = msg
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let tool_calls = msg
            .and_then(|m| m.get("tool_calls"))
            .and_then(Value::as_array)
            .map(|calls| {
                calls
                    .iter()
                    .map(|c| ToolCall {
                        name: str_at(c, "/function/name"),
                        arguments: str_at(c, "/function/arguments"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Answer { text, tool_calls }
    }

    /// Adds one stream chunk (`chat.completion.chunk`) of choice 0.
    pub fn push_chunk(&mut self, chunk: &Map<String, Value>) {
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return;
        };
        for c in choices {
            if c.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                continue;
            }
            let Some(delta) = c.get("delta") else {
                continue;
            };
            if let Some(t) = delta.get("content").and_then(Value::as_str) {
                self.text.push_str(t);
            }
            for tc in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let i = tc.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                while self.tool_calls.len() <= i {
                    self.tool_calls.push(ToolCall::default());
                }
                let slot = &mut self.tool_calls[i];
                slot.name.push_str(&str_at(tc, "/function/name"));
                slot.arguments.push_str(&str_at(tc, "/function/arguments"));
            }
        }
    }
}

fn str_at(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Lowercase word tokens (letters and digits), punctuation and spacing ignored.
pub fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Normalised token overlap of two texts in [0, 1]: the multiset intersection of their word
/// tokens over the larger token count (1 when both are empty).
pub fn overlap(a: &str, b: &str) -> f64 {
    let (ta, tb) = (tokens(a), tokens(b));
    if ta.is_empty() && tb.is_empty() {
        return 1.0;
    }
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for t in &ta {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0usize;
    for t in &tb {
        if let Some(n) = counts.get_mut(t.as_str()) {
            if *n > 0 {
                *n -= 1;
                common += 1;
            }
        }
    }
    common as f64 / ta.len().max(tb.len()) as f64
}

/// Whether a request asked for JSON output (`response_format` `json_object` or `json_schema`).
pub fn wants_json(request: &Map<String, Value>) -> bool {
    matches!(
        request
            .get("response_format")
            .and_then(|r| r.get("type"))
            .and_then(Value::as_str),
        Some("json_object" | "json_schema")
    )
}

/// Whether a request offered tools.
pub fn has_tools(request: &Map<String, Value>) -> bool {
    request
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty())
}

/// Whether `text` parses as JSON (surrounding whitespace and a ```json fence allowed).
pub fn is_json(text: &str) -> bool {
    let t = text.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|s| s.strip_suffix("```"))
        .unwrap_or(t);
    serde_json::from_str::<Value>(t.trim()).is_ok()
}

fn same_arguments(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<Value>(a),
        serde_json::from_str::<Value>(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.trim() == b.trim(),
    }
}

/// Whether two answers call the same tools (names in order) with the same arguments (compared
/// as JSON values).
pub fn tools_agree(a: &Answer, b: &Answer) -> bool {
    a.tool_calls.len() == b.tool_calls.len()
        && a.tool_calls
            .iter()
            .zip(&b.tool_calls)
            .all(|(x, y)| x.name == y.name && same_arguments(&x.arguments, &y.arguments))
}

/// How two answers to one request compare.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Comparison {
    /// Same text (whitespace at the ends ignored) and the same tool calls.
    pub exact: bool,
    /// Normalised token overlap of the texts, in [0, 1].
    pub overlap: f64,
    /// With a JSON request: whether each side's text is valid JSON (first, second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_valid: Option<(bool, bool)>,
    /// With tools offered: whether both call the same tools with the same arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools_agree: Option<bool>,
}

/// Compares two answers to `request`.
pub fn compare(request: &Map<String, Value>, a: &Answer, b: &Answer) -> Comparison {
    Comparison {
        exact: a.text.trim() == b.text.trim() && tools_agree(a, b),
        overlap: overlap(&a.text, &b.text),
        json_valid: wants_json(request).then(|| (is_json(&a.text), is_json(&b.text))),
        tools_agree: has_tools(request).then(|| tools_agree(a, b)),
    }
}

/// Sentences of a text (split at `.`, `!`, `?` and line breaks), trimmed, non-empty.
pub fn sentences(text: &str) -> Vec<String> {
    text.split(['.', '!', '?', '\n'])
        .map(str::trim)
        .filter(|s| tokens(s).len() >= 2)
        .map(str::to_string)
        .collect()
}

/// Two sentences say the same thing when their token overlap is at least this.
pub const SAME_POINT: f64 = 0.6;

/// Agreement of one pair of panel members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PairAgreement {
    /// First member (panel index).
    pub a: usize,
    /// Second member.
    pub b: usize,
    /// Normalised token overlap of their answers.
    pub overlap: f64,
    /// Same text and tool calls.
    pub exact: bool,
}

/// Where a panel's answers agree and where they conflict.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Agreement {
    /// Mean pairwise token overlap, in [0, 1] (1 with fewer than two answers).
    pub mean_overlap: f64,
    /// Every pair.
    pub pairs: Vec<PairAgreement>,
    /// Points (sentences) made by at least two members, at most five, shortened.
    pub agreed: Vec<String>,
    /// Points made by one member only, as `member: point`, at most five, shortened.
    pub conflicts: Vec<String>,
    /// One sentence for people.
    pub summary: String,
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

/// Summarises the answers of panel members named `names`.
pub fn agreement(names: &[String], answers: &[Answer]) -> Agreement {
    let mut pairs = Vec::new();
    for i in 0..answers.len() {
        for j in i + 1..answers.len() {
            pairs.push(PairAgreement {
                a: i,
                b: j,
                overlap: overlap(&answers[i].text, &answers[j].text),
                exact: answers[i].text.trim() == answers[j].text.trim()
                    && tools_agree(&answers[i], &answers[j]),
            });
        }
    }
    let mean_overlap = if pairs.is_empty() {
        1.0
    } else {
        pairs.iter().map(|p| p.overlap).sum::<f64>() / pairs.len() as f64
    };
    let points: Vec<Vec<String>> = answers.iter().map(|a| sentences(&a.text)).collect();
    let mut agreed: Vec<String> = Vec::new();
    let mut conflicts: Vec<String> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for (i, mine) in points.iter().enumerate() {
        for s in mine {
            let shared = points
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .any(|(_, other)| other.iter().any(|o| overlap(s, o) >= SAME_POINT));
            let norm = tokens(s).join(" ");
            if shared {
                if seen.insert(norm) && agreed.len() < 5 {
                    agreed.push(shorten(s, 120));
                }
            } else if conflicts.len() < 5 {
                let who = names.get(i).map_or("?", String::as_str);
                conflicts.push(format!("{who}: {}", shorten(s, 120)));
            }
        }
    }
    let summary = if answers.len() < 2 {
        "one answer only: nothing to compare".to_string()
    } else if pairs.iter().all(|p| p.exact) {
        format!("all {} answers are identical", answers.len())
    } else {
        let lowest = pairs
            .iter()
            .min_by(|x, y| x.overlap.total_cmp(&y.overlap))
            .map(|p| {
                format!(
                    "; {} and {} differ most ({:.0} % overlap)",
                    names.get(p.a).map_or("?", String::as_str),
                    names.get(p.b).map_or("?", String::as_str),
                    p.overlap * 100.0
                )
            })
            .unwrap_or_default();
        format!(
            "{} answers overlap {:.0} % on average{lowest}",
            answers.len(),
            mean_overlap * 100.0
        )
    };
    Agreement {
        mean_overlap,
        pairs,
        agreed,
        conflicts,
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ans(text: &str) -> Answer {
        Answer {
            text: text.into(),
            tool_calls: vec![],
        }
    }

    #[test]
    fn overlap_is_normalised_and_symmetric() {
        assert_eq!(overlap("The cat sat.", "the  CAT sat"), 1.0);
        assert_eq!(overlap("", ""), 1.0);
        assert_eq!(overlap("a b c d", ""), 0.0);
        assert_eq!(overlap("a b c d", "a b x y"), 0.5);
        assert_eq!(overlap("a b x y", "a b c d"), 0.5);
        // Repeated tokens count as often as both sides have them.
        assert_eq!(overlap("a a a b", "a b b b"), 0.5);
    }

    #[test]
    fn answers_from_whole_and_streamed_completions_are_the_same() {
        let whole = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}]});
        let a = Answer::from_completion(&whole);
        let mut b = Answer::default();
        for chunk in [
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi "}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "there"}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{\"a\""}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]}),
            json!({"choices": [{"index": 1, "delta": {"content": "other choice"}}]}),
        ] {
            b.push_chunk(chunk.as_object().unwrap());
        }
        assert_eq!(a, b);
    }

    #[test]
    fn a_pair_is_compared_on_what_the_request_asked() {
        let req =
            json!({"response_format": {"type": "json_object"}, "tools": [{"type": "function"}]});
        let req = req.as_object().unwrap();
        let mut a = ans("{\"x\": 1}");
        let mut b = ans("```json\n{\"x\":1}\n```");
        a.tool_calls = vec![ToolCall {
            name: "f".into(),
            arguments: "{\"a\": 1}".into(),
        }];
        b.tool_calls = vec![ToolCall {
            name: "f".into(),
            arguments: "{\"a\":1}".into(),
        }];
        let c = compare(req, &a, &b);
        assert!(!c.exact);
        assert_eq!(c.json_valid, Some((true, true)));
        assert_eq!(c.tools_agree, Some(true));
        // The fence's `json` is one token more.
        assert!((c.overlap - 2.0 / 3.0).abs() < 1e-9);
        let plain = compare(&Map::new(), &ans("yes"), &ans(" yes "));
        assert!(plain.exact && plain.json_valid.is_none() && plain.tools_agree.is_none());
        assert!(!is_json("not json"));
    }

    #[test]
    fn a_panel_summary_names_agreement_and_conflict() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let g = agreement(
            &names,
            &[
                ans("Paris is the capital of France. It is large."),
                ans("Paris is the capital of France. The Seine runs through it."),
                ans("Lyon is the capital of France."),
            ],
        );
        assert_eq!(g.pairs.len(), 3);
        assert!(g
            .agreed
            .iter()
            .any(|s| s == "Paris is the capital of France"));
        assert!(
            g.conflicts.iter().any(|s| s.starts_with("b: The Seine")),
            "{g:?}"
        );
        assert!(g.summary.contains("differ most"), "{}", g.summary);
        let same = agreement(&names[..2], &[ans("x y"), ans("x y")]);
        assert_eq!(same.summary, "all 2 answers are identical");
        assert_eq!(agreement(&names[..1], &[ans("x")]).mean_overlap, 1.0);
    }
}
