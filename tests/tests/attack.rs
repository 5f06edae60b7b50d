//! Issue 13, D1/D6: 1,000 slowloris and 1,000 slow-body connections, key-less, must not take
//! the gateway from a client with a key. The attackers connect from 127.0.0.2–127.0.0.21
//! (Linux routes all of 127.0.0.0/8 to loopback), 100 connections per address, so the per-IP
//! caps apply to them and not to the keyed client on 127.0.0.1; the global cap on
//! unauthenticated requests in flight bounds them together. Each attacker reconnects one
//! second after being cut or refused, so the attack is held for the whole measurement.
//!
//! The test process holds both ends of ~2,000 sockets: it raises its own `RLIMIT_NOFILE` soft
//! limit (to the hard limit, at most 16,384) and fails with a clear message if that is too low.

mod common;

use common::raw::{connect_from, raise_fd_limit};
use common::{chat_body, Gateway, UPSTREAM_KEY};
use lumen_tests::mock::MockConfig;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PER_KIND: usize = 1000;
const ADDRESSES: u8 = 20;

#[derive(Default)]
struct Tally {
    open: AtomicUsize,
    /// Slowloris attackers connected now (a share of `open`).
    slowloris_open: AtomicUsize,
    /// Answers the attackers got, by status.
    s401: AtomicUsize,
    s408: AtomicUsize,
    s429: AtomicUsize,
    s503: AtomicUsize,
    other: AtomicUsize,
    closed_silently: AtomicUsize,
}

impl Tally {
    fn record(&self, head: &[u8]) {
        let status = std::str::from_utf8(head)
            .ok()
            .and_then(|h| h.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok());
        match status {
            Some(401) => &self.s401,
            Some(408) => &self.s408,
            Some(429) => &self.s429,
            Some(503) => &self.s503,
            Some(_) => &self.other,
            None => &self.closed_silently,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

/// What one attacker sends: an opening, then one byte a second.
#[derive(Clone, Copy)]
struct Style {
    opening: &'static [u8],
    drip: u8,
    /// A head that never ends (counted in [`Tally::slowloris_open`]).
    slowloris: bool,
}

/// A head that never ends.
const SLOWLORIS: Style = Style {
    opening: b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nX-a: ",
    drip: b'a',
    slowloris: true,
};

/// A whole head, then a byte a second of 60,000 (under the tests' 64 KiB body limit).
const SLOW_BODY: Style = Style {
    opening: b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{",
    drip: b' ',
    slowloris: false,
};

/// One attacker: connect, send `opening`, then drip one byte a second until the gateway
/// answers or closes; record what it said; wait about a second (0.5 to 1.5 s, varied by `seed`
/// so that a thousand attackers answered at once do not all come back in the same millisecond,
/// which no real crowd does); again, until `stop`.
async fn attacker(
    source: Ipv4Addr,
    addr: std::net::SocketAddr,
    style: Style,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let Style {
        opening,
        drip,
        slowloris,
    } = style;
    // xorshift64: a different pause each round and each attacker, no dependency.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut pause = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        Duration::from_millis(500 + x % 1000)
    };
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = connect_from(source, addr).await else {
            tokio::time::sleep(pause()).await;
            continue;
        };
        tally.open.fetch_add(1, Ordering::Relaxed);
        if slowloris {
            tally.slowloris_open.fetch_add(1, Ordering::Relaxed);
        }
        let mut buf = [0u8; 512];
        let mut got = Vec::new();
        if s.write_all(opening).await.is_ok() {
            loop {
                tokio::select! {
                    r = s.read(&mut buf) => {
                        match r {
                            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                            _ => break,
                        }
                        if got.windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if stop.load(Ordering::Relaxed) || s.write_all(&[drip]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
        tally.open.fetch_sub(1, Ordering::Relaxed);
        if slowloris {
            tally.slowloris_open.fetch_sub(1, Ordering::Relaxed);
        }
        if !stop.load(Ordering::Relaxed) {
            tally.record(&got);
        }
        drop(s);
        tokio::time::sleep(pause()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_slow_bodies_do_not_starve_a_keyed_client() {
    let fds = raise_fd_limit(16_384);
    assert!(
        fds >= 8_192,
        "RLIMIT_NOFILE is {fds}: this test needs about 4,500 descriptors (raise the hard limit, e.g. `ulimit -Hn 65536`)"
    );
    // The default limits: 10 s header and body timeouts, 256 unauthenticated requests in
    // flight in all, 64 per address.
    let gw = Gateway::start_with(
        MockConfig {
            api_key: Some(UPSTREAM_KEY.into()),
            ..MockConfig::default()
        },
        |o| o.limits = lumen_host::Limits::default(),
    )
    .await;
    let (key, _) = gw.create_key(100_000, &[]).await;
    let body = chat_body("gpt-4o-mini", "hello");
    // Warm up, and let the host see the key accepted.
    for _ in 0..20 {
        assert_eq!(gw.chat(&key, body.clone()).await.status, 200);
    }

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // The attackers' 10 s timeouts count from here: the measurement must end before them.
    let attack_start = Instant::now();
    for i in 0..PER_KIND * 2 {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % usize::from(ADDRESSES)) as u8);
        let style = if i % 2 == 0 { SLOWLORIS } else { SLOW_BODY };
        tasks.push(tokio::spawn(attacker(
            source,
            gw.addr(),
            style,
            tally.clone(),
            stop.clone(),
            i as u64,
        )));
    }
    // Let the attack build up: every slowloris held, slow bodies held up to the cap on
    // unauthenticated requests in flight, the rest refused (and coming back about a second later).
    // Slow bodies that auth answers from their headers (401) come and go, so 200 of them may not
    // be held at once: after 3 s the slowloris alone suffice. (Waiting longer once let the
    // measurement run into the timeouts below and fail.) Every slowloris attacker must have
    // connected too, which the host's count alone does not say: 2,000 connects at once can
    // overflow the listen backlog, and a dropped SYN is sent again a second later. (One CI run
    // held only 993 during the measurement; attackers still connecting is the likely cause.)
    let open = || gw.host().expect("lumen-host").open_connections();
    let all_slowloris = || tally.slowloris_open.load(Ordering::Relaxed) >= PER_KIND;
    while ((open() < PER_KIND + 200 || !all_slowloris())
        && attack_start.elapsed() < Duration::from_secs(3))
        || ((open() < PER_KIND || !all_slowloris())
            && attack_start.elapsed() < Duration::from_secs(6))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held_at_start = open();

    // The keyed client: a call every 20 ms for up to 4 s (at most 1,000 calls), while the attack
    // is held — ending a second before the attackers' 10 s timeouts fire.
    let mut latencies = Vec::new();
    let mut statuses = std::collections::BTreeMap::new();
    let mut min_held = usize::MAX;
    let window =
        (Instant::now() + Duration::from_secs(4)).min(attack_start + Duration::from_secs(9));
    while Instant::now() < window && latencies.len() < 1000 {
        let t = Instant::now();
        let r = gw.chat(&key, body.clone()).await;
        latencies.push(t.elapsed());
        *statuses.entry(r.status).or_insert(0) += 1;
        min_held = min_held.min(open());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = latencies.len();
    latencies.sort();
    let p50 = latencies[calls / 2];
    let p99 = latencies[calls * 99 / 100];

    // Then the timeouts cut the held attackers: each gets a 408.
    let deadline = Instant::now() + Duration::from_secs(20);
    while tally.s408.load(Ordering::Relaxed) < PER_KIND && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attack_open = tally.open.load(Ordering::Relaxed);

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    eprintln!(
        "attack: {held_at_start} connections held when the keyed client started, at least {min_held} while it ran, {attack_open} attacker sockets open at the end; \
         keyed client: {statuses:?}, p50 {p50:?}, p99 {p99:?}; attackers were answered 401 ×{}, 408 ×{}, 429 ×{}, 503 ×{}, other ×{}, closed without answer ×{}",
        tally.s401.load(Ordering::Relaxed),
        tally.s408.load(Ordering::Relaxed),
        tally.s429.load(Ordering::Relaxed),
        tally.s503.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed),
        tally.closed_silently.load(Ordering::Relaxed),
    );
    assert!(calls >= 50, "only {calls} calls in the window");
    assert_eq!(
        statuses.get(&200),
        Some(&calls),
        "keyed client: {statuses:?}"
    );
    assert!(
        p99 < Duration::from_millis(100),
        "keyed client's p99 {p99:?} under attack (p50 {p50:?})"
    );
    // The attack really was held: at least the 1,000 slowloris connections stayed open (accepted,
    // not refused) for the whole measurement.
    assert!(
        min_held >= PER_KIND,
        "only {min_held} connections held during the measurement ({held_at_start} at its start)"
    );
    // The header timeout cut the slowloris attackers and the body timeout the held slow bodies
    // (408). The other slow bodies were refused by the caps (429/503) or — where auth answers
    // from the headers before reading a body — with a 401.
    assert!(
        tally.s408.load(Ordering::Relaxed) >= PER_KIND,
        "only {} attackers got a 408 within 20 s of the timeouts",
        tally.s408.load(Ordering::Relaxed)
    );
    assert!(
        tally.s401.load(Ordering::Relaxed)
            + tally.s429.load(Ordering::Relaxed)
            + tally.s503.load(Ordering::Relaxed)
            > 0,
        "no slow body was refused"
    );
    assert_eq!(
        tally.other.load(Ordering::Relaxed),
        0,
        "an attacker got something other than 401/408/429/503 (a 500 is the pool running dry)"
    );
    // Once the attackers are gone, their connections are too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.host().expect("lumen-host").open_connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.host().expect("lumen-host").open_connections(), 0);
}
