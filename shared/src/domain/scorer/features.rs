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
}

/// Keyword table: (hash, class), sorted by hash at compile time for a binary search.
const KEYWORDS: [(u64, Class); 96] = sort_keywords([
    // Reasoning steps.
    (word_hash("step"), Class::Step),
    (word_hash("steps"), Class::Step),
    (word_hash("then"), Class::Step),
    (word_hash("finally"), Class::Step),
    (word_hash("compute"), Class::Step),
    (word_hash("calculate"), Class::Step),
    (word_hash("derive"), Class::Step),
    (word_hash("determine"), Class::Step),
    (word_hash("evaluate"), Class::Step),
    (word_hash("solve"), Class::Step),
    (word_hash("simplify"), Class::Step),
    (word_hash("integral"), Class::Step),
    (word_hash("derivative"), Class::Step),
    (word_hash("estimate"), Class::Step),
    (word_hash("analyze"), Class::Step),
    (word_hash("analyse"), Class::Step),
    (word_hash("compare"), Class::Step),
    (word_hash("design"), Class::Step),
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
    (word_hash("list"), Class::Transform),
    (word_hash("spell"), Class::Transform),
    (word_hash("capital"), Class::Transform),
]);

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
    classes: [usize; 8],
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
            if *len <= 12 {
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

    let total_chars = if text.len() == scan.len() {
        c.chars
    } else {
        c.chars + (text.len() - scan.len())
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
    let steps = class(Class::Step);
    let proof = class(Class::Proof);
    // Multiple choice (the training data's form): the open_* features are zero for it.
    let open = !(has("Options:") || has("\n(A)") || has("\nA)") || has("\nA."));
    let when_open = |v: f32| if open { v } else { 0.0 };
    let long_share = c.long_words as f32 / c.words.max(1) as f32 * 4.0;
    let log_len = ((1 + total_chars) as f32).ln() / 8.0;
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
        (proof as f32 / 2.0).min(1.0),
        (class(Class::Constraint) as f32 / 4.0).min(1.0),
        (class(Class::Systems) as f32 / 3.0).min(1.0),
        long_share,
        f32::from(u8::from(code_task)),
        f32::from(u8::from(class(Class::SmallTalk) > 0 && c.words <= 12)),
        f32::from(u8::from(class(Class::Transform) > 0)),
        when_open((log_len - 0.5).max(0.0)),
        when_open((steps as f32 / 3.0).min(1.0)),
        when_open((class(Class::Constraint) as f32 / 4.0).min(1.0)),
        when_open(long_share),
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

    #[test]
    fn keyword_table_is_sorted_and_unique() {
        assert!(KEYWORDS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(class_of(word_hash("prove")), Some(Class::Proof));
        assert_eq!(class_of(word_hash("proven")), None);
    }

    #[test]
    fn dense_features_read_what_they_say() {
        let s = Structure::default();
        let get = |text: &str, name: &str| {
            featurize(text, &s)
                .iter()
                .find(|(i, _)| *i as usize == HASHED + dense(name))
                .map_or(0.0, |f| f.1)
        };
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
}
