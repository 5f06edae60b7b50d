//! Request ids (`x-request-id`, the log entry's subject): `req_` + 24 lowercase hex characters,
//! the first 12 the arrival in unix milliseconds and the last 12 random. The arrival lets
//! `POST /v1/feedback` stop looking for a request in the log once it reaches entries written
//! before the request arrived, without an index written per request.

/// Hex characters after `req_`.
const HEX: usize = 24;

/// A request id for a request arriving at `now_ms`, with 6 random bytes.
pub fn new(now_ms: u64, random: [u8; 6]) -> String {
    format!(
        "req_{:012x}{}",
        now_ms & 0xffff_ffff_ffff,
        hex::encode(random)
    )
}

/// Whether `id` has the shape of a request id (`req_` + 24 lowercase hex characters).
pub fn is_valid(id: &str) -> bool {
    id.strip_prefix("req_").is_some_and(|h| {
        h.len() == HEX
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The arrival a request id carries, unix ms (none for a malformed id). Ids made before the
/// arrival was embedded were all random: their "arrival" is usually far in the future, and
/// callers treat an arrival after `now` as unknown.
pub fn issued_ms(id: &str) -> Option<u64> {
    if !is_valid(id) {
        return None;
    }
    u64::from_str_radix(&id[4..16], 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_arrival() {
        let id = new(1_800_000_000_123, [0xab, 0, 1, 2, 3, 0xff]);
        assert_eq!(id, "req_01a3185c507bab00010203ff");
        assert!(is_valid(&id));
        assert_eq!(issued_ms(&id), Some(1_800_000_000_123));
        for bad in [
            "req_01A3185C507Bab00010203ff",
            "req_1",
            "xyz_01a3185c507bab00010203ff",
            "",
        ] {
            assert!(!is_valid(bad), "{bad}");
            assert_eq!(issued_ms(bad), None);
        }
    }
}
