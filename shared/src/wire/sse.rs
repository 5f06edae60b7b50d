//! Incremental Server-Sent Events framing: bytes in as they arrive, whole events out.

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// True for events that carry only comments (keep-alives).
    pub comment_only: bool,
}

/// Splits a byte stream into events; partial events are kept until their blank line arrives.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a boundary (so a long event arriving in small
    /// pieces is scanned once, not once per piece).
    scanned: usize,
}

impl Parser {
    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        // A separator may straddle the previous push: back up by its longest length less one.
        let mut from = self.scanned.saturating_sub(3);
        while let Some((end, sep)) = find_boundary(&self.buf, from) {
            let block: Vec<u8> = self.buf.drain(..end + sep).collect();
            if let Some(ev) = parse_block(&block[..end]) {
                out.push(ev);
            }
            from = 0;
        }
        self.scanned = self.buf.len();
        out
    }

    /// Bytes of an event that never ended.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }
}

fn find_boundary(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    for i in from..buf.len() {
        for sep in [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"] {
            if buf[i..].starts_with(sep) {
                return Some((i, sep.len()));
            }
        }
    }
    None
}

fn parse_block(block: &[u8]) -> Option<Event> {
    let text = String::from_utf8_lossy(block);
    let mut event = None;
    let mut data: Vec<&str> = Vec::new();
    let mut any_field = false;
    for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        if line.starts_with(':') {
            continue;
        }
        any_field = true;
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => event = Some(value.to_string()),
            "data" => data.push(value),
            _ => {}
        }
    }
    if !any_field {
        return (!text.trim().is_empty()).then(|| Event {
            event: None,
            data: String::new(),
            comment_only: true,
        });
    }
    Some(Event {
        event,
        data: data.join("\n"),
        comment_only: false,
    })
}

/// Frames a `data:` event.
pub fn data_event(data: &str) -> Vec<u8> {
    format!("data: {data}\n\n").into_bytes()
}

/// Frames a named event.
pub fn named_event(name: &str, data: &str) -> Vec<u8> {
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_across_chunk_boundaries() {
        let mut p = Parser::default();
        assert!(p.push(b"data: {\"a\"").is_empty());
        let evs = p.push(b":1}\n\ndata: [DONE]\n");
        assert_eq!(
            evs,
            vec![Event {
                event: None,
                data: "{\"a\":1}".into(),
                comment_only: false
            }]
        );
        let evs = p.push(b"\nevent: lumen-usage\r\ndata: x\r\n\r\n: keep-alive\n\n");
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[0].data, "[DONE]");
        assert_eq!(evs[1].event.as_deref(), Some("lumen-usage"));
        assert!(evs[2].comment_only);
        assert!(p.pending().is_empty());
    }

    #[test]
    fn separators_split_across_pushes_and_byte_by_byte_input() {
        let text = b"data: one\r\n\r\ndata: two\n\nevent: x\ndata: three\n\n";
        let mut p = Parser::default();
        let evs: Vec<Event> = text.iter().flat_map(|b| p.push(&[*b])).collect();
        let data: Vec<&str> = evs.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, vec!["one", "two", "three"]);
        assert_eq!(evs[2].event.as_deref(), Some("x"));
        assert!(p.pending().is_empty());
    }

    #[test]
    fn multi_line_data_joins() {
        let mut p = Parser::default();
        let evs = p.push(b"data: a\ndata: b\n\n");
        assert_eq!(evs[0].data, "a\nb");
    }
}
