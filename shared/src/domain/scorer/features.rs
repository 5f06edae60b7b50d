//! The scorer's featurizer: one pass over the first bytes of a request's text gives hashed word
//! unigrams and bigrams plus dense structural features (length, math, code, reasoning steps,
//! constraints, proofs, …), the same code in the trainer and in the wasm router.

/// Hashed feature space: `2^HASH_BITS` buckets.
pub const HASH_BITS: u32 = 14;
/// Number of hashed buckets.
pub const HASHED: usize = 1 << HASH_BITS;
/// Only the first this many bytes of text are scanned (n-grams and structural features; the
/// length feature counts the whole text), which bounds the scorer's time per request.
pub const MAX_SCAN: usize = 3 * 1024;

/// Dense (structural) features, in weight order after the hashed buckets.
pub const DENSE: &[&str] = &[
    "log_chars",
    "digit_share",
    "math_share",
    "latex",
    "lines",
    "non_ascii_share",
    "code",
    "code_tests",
    "turns",
    "tools",
    "json_format",
    "steps",
    "numbers",
    "sentences",
    "questions",
    "proof",
    "constraints",
    "systems",
    "long_words",
    "code_task",
    "small_talk",
    "transform",
    "open_length",
    "open_steps",
    "open_constraints",
    "open_long_words",
    "open_asks",
    "open_brief",
    "open_parts",
];

/// Index of a dense feature by name (a compile-time constant where it is used).
pub const fn dense(name: &str) -> usize {
    let mut i = 0;
    while i < DENSE.len() {
        if eq(DENSE[i].as_bytes(), name.as_bytes()) {
            return i;
        }
        i += 1;
    }
    panic!("unknown dense feature")
}

const fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The structure of a request that is not in its text.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Structure {
    /// Number of messages.
    pub turns: usize,
    /// The request declares tools.
    pub tools: bool,
    /// The request asks for JSON output (`response_format`).
    pub json_format: bool,
}

/// A sparse feature vector: (index, value), indexes may repeat.
pub type Features = Vec<(u32, f32)>;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a of a lowercase ASCII word, as the scan computes it (usable in `const`).
const fn word_hash(w: &str) -> u64 {
    let b = w.as_bytes();
    let mut h = FNV_OFFSET ^ 1;
    let mut i = 0;
    while i < b.len() {
        h ^= b[i] as u64;
        h = h.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    h
}

fn bucket(h: u64) -> u32 {
    // Fold the high bits in: FNV's low bits alone mix poorly.
    ((h ^ (h >> 29) ^ (h >> 47)) as u32) & (HASHED as u32 - 1)
}

/// Word classes the dense features count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Step,
    Proof,
    Constraint,
    Systems,
    CodeTask,
    Test,
    SmallTalk,
    Transform,
    Ask,
    /// A reasoning step that also asks for an analysis ("evaluate", "compare", …): counts as both.
    StepAsk,
}

/// Keyword table: (hash, class), sorted by hash at compile time for a binary search.
const KEYWORDS: [(u64, Class); KEYWORD_COUNT] = sort_keywords([
    // Reasoning steps.
    (word_hash("step"), Class::Step),
    (word_hash("steps"), Class::Step),
    (word_hash("then"), Class::Step),
    (word_hash("finally"), Class::Step),
    (word_hash("compute"), Class::Step),
    (word_hash("calculate"), Class::Step),
    (word_hash("derive"), Class::StepAsk),
    (word_hash("determine"), Class::Step),
    (word_hash("evaluate"), Class::StepAsk),
    (word_hash("solve"), Class::Step),
    (word_hash("simplify"), Class::Step),
    (word_hash("integral"), Class::Step),
    (word_hash("derivative"), Class::Step),
    (word_hash("estimate"), Class::Step),
    (word_hash("analyze"), Class::StepAsk),
    (word_hash("analyse"), Class::StepAsk),
    (word_hash("compare"), Class::StepAsk),
    (word_hash("design"), Class::StepAsk),
    (word_hash("tradeoffs"), Class::Step),
    (word_hash("trade"), Class::Step),
    // Proofs.
    (word_hash("prove"), Class::Proof),
    (word_hash("proof"), Class::Proof),
    (word_hash("proves"), Class::Proof),
    (word_hash("theorem"), Class::Proof),
    (word_hash("lemma"), Class::Proof),
    (word_hash("rigorous"), Class::Proof),
    (word_hash("rigorously"), Class::Proof),
    (word_hash("induction"), Class::Proof),
    (word_hash("infinitely"), Class::Proof),
    (word_hash("irrational"), Class::Proof),
    (word_hash("contradiction"), Class::Proof),
    (word_hash("formally"), Class::Proof),
    // Constraints on the answer.
    (word_hash("must"), Class::Constraint),
    (word_hash("without"), Class::Constraint),
    (word_hash("exactly"), Class::Constraint),
    (word_hash("ensure"), Class::Constraint),
    (word_hash("constraint"), Class::Constraint),
    (word_hash("constraints"), Class::Constraint),
    (word_hash("require"), Class::Constraint),
    (word_hash("requirements"), Class::Constraint),
    (word_hash("complexity"), Class::Constraint),
    (word_hash("efficient"), Class::Constraint),
    (word_hash("optimal"), Class::Constraint),
    (word_hash("guarantee"), Class::Constraint),
    (word_hash("handle"), Class::Constraint),
    (word_hash("edge"), Class::Constraint),
    (word_hash("never"), Class::Constraint),
    (word_hash("preserve"), Class::Constraint),
    (word_hash("preserving"), Class::Constraint),
    (word_hash("keeping"), Class::Constraint),
    (word_hash("avoid"), Class::Constraint),
    (word_hash("avoiding"), Class::Constraint),
    // Systems and concurrency.
    (word_hash("lock"), Class::Systems),
    (word_hash("concurrent"), Class::Systems),
    (word_hash("concurrency"), Class::Systems),
    (word_hash("thread"), Class::Systems),
    (word_hash("threads"), Class::Systems),
    (word_hash("atomic"), Class::Systems),
    (word_hash("atomics"), Class::Systems),
    (word_hash("mutex"), Class::Systems),
    (word_hash("distributed"), Class::Systems),
    (word_hash("consensus"), Class::Systems),
    (word_hash("async"), Class::Systems),
    (word_hash("parallel"), Class::Systems),
    (word_hash("kernel"), Class::Systems),
    (word_hash("compiler"), Class::Systems),
    (word_hash("allocator"), Class::Systems),
    (word_hash("producer"), Class::Systems),
    (word_hash("consumer"), Class::Systems),
    (word_hash("scheduler"), Class::Systems),
    // Asking for code.
    (word_hash("implement"), Class::CodeTask),
    (word_hash("function"), Class::CodeTask),
    (word_hash("rust"), Class::CodeTask),
    (word_hash("python"), Class::CodeTask),
    (word_hash("javascript"), Class::CodeTask),
    (word_hash("typescript"), Class::CodeTask),
    (word_hash("sql"), Class::CodeTask),
    (word_hash("regex"), Class::CodeTask),
    (word_hash("code"), Class::CodeTask),
    (word_hash("refactor"), Class::CodeTask),
    (word_hash("debug"), Class::CodeTask),
    (word_hash("bug"), Class::CodeTask),
    // Tests.
    (word_hash("test"), Class::Test),
    (word_hash("tests"), Class::Test),
    (word_hash("assert"), Class::Test),
    (word_hash("unittest"), Class::Test),
    (word_hash("pytest"), Class::Test),
    // Small talk.
    (word_hash("hello"), Class::SmallTalk),
    (word_hash("hi"), Class::SmallTalk),
    (word_hash("hey"), Class::SmallTalk),
    (word_hash("thanks"), Class::SmallTalk),
    (word_hash("thank"), Class::SmallTalk),
    // Light transformations of given text.
    (word_hash("translate"), Class::Transform),
    (word_hash("summarize"), Class::Transform),
    (word_hash("summarise"), Class::Transform),
    (word_hash("extract"), Class::Transform),
    (word_hash("rewrite"), Class::Transform),
    (word_hash("spell"), Class::Transform),
    // Asking for an analysis or an explanation (several languages: a request is rarely
    // translated before it is routed). Words of Chinese and Japanese, written without spaces,
    // are found by `ASK_WIDE` instead.
    (word_hash("explain"), Class::Ask),
    (word_hash("explaining"), Class::Ask),
    (word_hash("contrast"), Class::Ask),
    (word_hash("discuss"), Class::Ask),
    (word_hash("argue"), Class::Ask),
    (word_hash("justify"), Class::Ask),
    (word_hash("distinguish"), Class::Ask),
    (word_hash("distinguishing"), Class::Ask),
    (word_hash("critique"), Class::Ask),
    (word_hash("assess"), Class::Ask),
    (word_hash("interpret"), Class::Ask),
    (word_hash("reconcile"), Class::Ask),
    (word_hash("implications"), Class::Ask),
    (word_hash("trace"), Class::Ask),
    (word_hash("walk"), Class::Ask),
    (word_hash("explique"), Class::Ask),
    (word_hash("expliquez"), Class::Ask),
    (word_hash("analysant"), Class::Ask),
    (word_hash("comparez"), Class::Ask),
    (word_hash("démontrez"), Class::Ask),
    (word_hash("démontre"), Class::Ask),
    (word_hash("explica"), Class::Ask),
    (word_hash("compara"), Class::Ask),
    (word_hash("analiza"), Class::Ask),
    (word_hash("demuestra"), Class::Ask),
    (word_hash("erkläre"), Class::Ask),
    (word_hash("erklären"), Class::Ask),
    (word_hash("vergleiche"), Class::Ask),
    (word_hash("beweise"), Class::Ask),
    (word_hash("leite"), Class::Ask),
    (word_hash("spiega"), Class::Ask),
    (word_hash("dimostra"), Class::Ask),
    (word_hash("confronta"), Class::Ask),
    (word_hash("объясните"), Class::Ask),
    (word_hash("объясни"), Class::Ask),
    (word_hash("докажите"), Class::Ask),
    (word_hash("сравните"), Class::Ask),
    (word_hash("различая"), Class::Ask),
    // Sentence-initial capitals: the scan lowercases ASCII letters only.
    (word_hash("Объясните"), Class::Ask),
    (word_hash("Объясни"), Class::Ask),
    (word_hash("Докажите"), Class::Ask),
    (word_hash("Сравните"), Class::Ask),
]);

/// Entries of [`KEYWORDS`].
const KEYWORD_COUNT: usize = 140;

/// Words asking for an analysis, an explanation or a proof in Chinese and Japanese (prove,
/// explain, discuss, compare, analyse, derive), found as substrings: these scripts put no
/// spaces between words.
const ASK_WIDE: &[&str] = &[
    "证明", "証明", "解释", "説明", "说明", "論じ", "论述", "比较", "比較", "分析", "推导", "導出",
];

const fn sort_keywords<const N: usize>(mut k: [(u64, Class); N]) -> [(u64, Class); N] {
    let mut i = 1;
    while i < N {
        let mut j = i;
        while j > 0 && k[j - 1].0 > k[j].0 {
            let t = k[j - 1];
            k[j - 1] = k[j];
            k[j] = t;
            j -= 1;
        }
        i += 1;
    }
    k
}

/// "show that" counts as proof wording.
const SHOW_THAT: (u64, u64) = (word_hash("show"), word_hash("that"));

fn class_of(h: u64) -> Option<Class> {
    KEYWORDS
        .binary_search_by(|(k, _)| k.cmp(&h))
        .ok()
        .map(|i| KEYWORDS[i].1)
}

fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn is_math(b: u8) -> bool {
    matches!(b, b'=' | b'+' | b'*' | b'/' | b'^' | b'<' | b'>')
}

/// Counters of one scan.
#[derive(Default)]
struct Scan {
    chars: usize,
    digits: usize,
    math: usize,
    lines: usize,
    non_ascii: usize,
    numbers: usize,
    sentences: usize,
    questions: usize,
    words: usize,
    long_words: usize,
    /// Characters of scripts written without spaces (CJK ideographs, kana, their punctuation).
    wide: usize,
    classes: [usize; 10],
    /// Commas and semicolons: the parts of a many-part request.
    commas: usize,
}

/// Features of a text with its structure.
pub fn featurize(text: &str, s: &Structure) -> Features {
    let scan = cut(text, MAX_SCAN);
    let bytes = scan.as_bytes();
    let mut out: Features = Vec::with_capacity(bytes.len() / 3 + 32);
    let mut c = Scan::default();
    let (mut h, mut len, mut prev) = (FNV_OFFSET ^ 1, 0usize, 0u64);
    // Whether the current word is all ASCII (scripts without spaces make one long "word").
    let mut ascii = true;
    let mut in_number = false;
    let mut end_word =
        |h: &mut u64, len: &mut usize, ascii: &mut bool, c: &mut Scan, out: &mut Features| {
            if *len == 0 {
                return;
            }
            out.push((bucket(*h), 1.0));
            if prev != 0 {
                out.push((bucket(h.rotate_left(17) ^ prev.wrapping_mul(31)), 1.0));
            }
            c.words += 1;
            if *len >= 10 && *ascii {
                c.long_words += 1;
            }
            *ascii = true;
            // Keywords are at most 18 bytes (Cyrillic takes two a letter).
            if *len <= 18 {
                if let Some(k) = class_of(*h) {
                    c.classes[k as usize] += 1;
                }
                if *h == SHOW_THAT.1 && prev == SHOW_THAT.0 {
                    c.classes[Class::Proof as usize] += 1;
                }
            }
            prev = *h;
            *h = FNV_OFFSET ^ 1;
            *len = 0;
        };
    for (i, &b) in bytes.iter().enumerate() {
        if b & 0xc0 != 0x80 {
            c.chars += 1;
        }
        if b.is_ascii_alphanumeric() || b >= 0x80 {
            let l = b.to_ascii_lowercase();
            h ^= u64::from(l);
            h = h.wrapping_mul(FNV_PRIME);
            len += 1;
            if b.is_ascii_digit() {
                c.digits += 1;
                if !in_number {
                    c.numbers += 1;
                    in_number = true;
                }
            } else {
                in_number = false;
                if b >= 0x80 {
                    ascii = false;
                }
                if b >= 0xc0 {
                    c.non_ascii += 1;
                }
                // Lead bytes of U+3000..U+9FFF (CJK punctuation, kana, ideographs).
                if (0xe3..=0xe9).contains(&b) {
                    c.wide += 1;
                }
            }
            continue;
        }
        in_number = in_number && (b == b'.' || b == b',');
        end_word(&mut h, &mut len, &mut ascii, &mut c, &mut out);
        match b {
            b'\n' => c.lines += 1,
            b'?' => {
                c.questions += 1;
                c.sentences += 1;
            }
            b'.' | b'!' if bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace()) => {
                c.sentences += 1
            }
            b',' | b';' => c.commas += 1,
            _ if is_math(b) => c.math += 1,
            _ => {}
        }
    }
    end_word(&mut h, &mut len, &mut ascii, &mut c, &mut out);
    if !out.is_empty() {
        let norm = 1.0 / (out.len() as f32).sqrt();
        for f in &mut out {
            f.1 = norm;
        }
    }

    // A CJK character carries about what three letters of English do (a word is ~2 of them
    // against ~6 letters), so length counts it three times.
    let total_chars = if text.len() == scan.len() {
        c.chars + 2 * c.wide
    } else {
        c.chars + 2 * c.wide + (text.len() - scan.len())
    };
    let share = |n: usize| n as f32 / c.chars.max(1) as f32;
    let class = |k: Class| c.classes[k as usize];
    let has = |needle: &str| scan.contains(needle);
    let fenced = has("```");
    let code = fenced
        || has("def ")
        || has("fn ")
        || has("function ")
        || has("#include")
        || has("};")
        || has("return ");
    let code_task = class(Class::CodeTask) > 0 || code;
    let tests = code_task && class(Class::Test) > 0;
    let steps = class(Class::Step) + class(Class::StepAsk);
    let proof = class(Class::Proof);
    let asks = class(Class::Ask)
        + class(Class::StepAsk)
        + if c.wide > 0 {
            ASK_WIDE.iter().filter(|w| has(w)).count()
        } else {
            0
        };
    // Multiple choice (the training data's form): the open_* features are zero for it.
    let open = !(has("Options:") || has("\n(A)") || has("\nA)") || has("\nA."));
    let when_open = |v: f32| if open { v } else { 0.0 };
    let long_share = c.long_words as f32 / c.words.max(1) as f32 * 4.0;
    let log_len = ((1 + total_chars) as f32).ln() / 8.0;
    // A light transformation of text the request gives (quoted, after a colon, on lines of its
    // own); "summarize this 40-page decision" without it is not light.
    let transform = class(Class::Transform) > 0
        && (c.lines > s.turns.max(1) || has(":") || has(" '") || has("\"") || has("“") || has("«"));
    // A short open request with nothing that makes it hard (greetings, one-fact lookups,
    // small conversions): the training data has none, its level sits at the questions'.
    let brief = c.words <= 8
        && c.wide < 16
        && proof == 0
        && steps == 0
        && asks == 0
        && !code_task
        && class(Class::Systems) == 0
        && c.math == 0;
    let latex = has("\\frac") || has("$$") || has("\\(") || has("\\int") || has("\\sum");
    let dense = [
        log_len,
        share(c.digits) * 5.0,
        share(c.math) * 10.0,
        f32::from(u8::from(latex)),
        ((1 + c.lines) as f32).ln() / 4.0,
        share(c.non_ascii),
        f32::from(u8::from(code)),
        f32::from(u8::from(tests)),
        (s.turns.saturating_sub(1) as f32 / 4.0).min(1.0),
        f32::from(u8::from(s.tools)),
        f32::from(u8::from(s.json_format)),
        (steps as f32 / 3.0).min(1.0),
        ((1 + c.numbers) as f32).ln() / 3.0,
        ((1 + c.sentences) as f32).ln() / 3.0,
        (c.questions as f32 / 4.0).min(1.0),
        // An open request with one "prove" already asks for a proof; in a multiple-choice
        // question a single "theorem" says less (it would be over-confident there).
        if open {
            f32::from(u8::from(proof > 0))
        } else {
            (proof as f32 / 2.0).min(1.0)
        },
        (class(Class::Constraint) as f32 / 4.0).min(1.0),
        (class(Class::Systems) as f32 / 3.0).min(1.0),
        long_share,
        f32::from(u8::from(code_task)),
        f32::from(u8::from(class(Class::SmallTalk) > 0 && c.words <= 12)),
        f32::from(u8::from(transform)),
        when_open((log_len - 0.5).max(0.0)),
        when_open((steps as f32 / 3.0).min(1.0)),
        when_open((class(Class::Constraint) as f32 / 4.0).min(1.0)),
        when_open(long_share),
        when_open((asks as f32 / 2.0).min(1.0)),
        when_open(f32::from(u8::from(brief))),
        when_open(if code {
            0.0
        } else {
            (c.commas as f32 / 4.0).min(1.0)
        }),
    ];
    for (i, v) in dense.iter().enumerate() {
        if *v != 0.0 {
            out.push(((HASHED + i) as u32, *v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense feature `name` of `text` (0 when absent).
    fn value(text: &str, s: &Structure, name: &str) -> f32 {
        featurize(text, s)
            .iter()
            .find(|(i, _)| *i as usize == HASHED + dense(name))
            .map_or(0.0, |f| f.1)
    }

    #[test]
    fn keyword_table_is_sorted_and_unique() {
        assert!(KEYWORDS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(class_of(word_hash("prove")), Some(Class::Proof));
        assert_eq!(class_of(word_hash("proven")), None);
    }

    #[test]
    fn dense_features_read_what_they_say() {
        let s = Structure::default();
        let get = |text: &str, name: &str| value(text, &s, name);
        assert_eq!(
            get("Prove that there are infinitely many primes.", "proof"),
            1.0
        );
        assert_eq!(get("What is 2+2?", "proof"), 0.0);
        assert_eq!(
            get(
                "Implement a lock-free queue in Rust with tests.",
                "code_tests"
            ),
            1.0
        );
        assert!(get("Implement a lock-free queue in Rust with tests.", "systems") > 0.0);
        assert_eq!(get("hello!", "small_talk"), 1.0);
        assert!(
            get("She has 3 apples and buys 12.5 more, then 7.", "numbers")
                > get("She has apples.", "numbers")
        );
        assert!(get("Как дела? 你好", "non_ascii_share") > 0.3);
    }

    #[test]
    fn open_requests_carry_asks_brevity_parts_and_given_text() {
        let s = Structure {
            turns: 1,
            ..Structure::default()
        };
        let get = |text: &str, name: &str| value(text, &s, name);
        // Asks, in several languages; Chinese and Japanese by substring.
        let asks = [
            "Explain the CAP theorem and contrast it with PACELC.",
            "Explique la différence et comparez les deux.",
            "Erkläre die Architektur und vergleiche sie.",
            "Объясните причины и сравните их.",
            "请证明存在无穷多个素数，并解释原因。",
        ];
        for a in asks {
            assert_eq!(get(a, "open_asks"), 1.0, "{a}");
        }
        assert_eq!(get("Tell me a joke.", "open_asks"), 0.0);
        // Multiple choice carries none of the open features.
        let mcq = "Explain and contrast.\nOptions:\n(A) one\n(B) two";
        assert_eq!(get(mcq, "open_asks"), 0.0);
        // Brief: short, open, nothing that makes it hard.
        assert_eq!(get("What's your name?", "open_brief"), 1.0);
        assert_eq!(get("Prove Fermat's last theorem.", "open_brief"), 0.0);
        assert_eq!(get("What is 7*8?", "open_brief"), 0.0);
        assert_eq!(get("Implement a queue.", "open_brief"), 0.0);
        // Parts count commas outside code only.
        assert_eq!(get("Compare A, B, C, D, E and F.", "open_parts"), 1.0);
        assert_eq!(get("def f(a, b, c, d, e): return a", "open_parts"), 0.0);
        // A transformation is light only when the request gives the text.
        assert_eq!(get("Summarize: 'I went to the shop.'", "transform"), 1.0);
        assert_eq!(
            get(
                "Summarize this 40-page court decision's reasoning",
                "transform"
            ),
            0.0
        );
        // One "prove" in an open request is a proof; a CJK character counts as three letters.
        assert_eq!(get("Prove it.", "proof"), 1.0);
        assert!(
            get("证明这个定理成立并说明原因", "log_chars") > get("prove it please", "log_chars")
        );
    }
}
