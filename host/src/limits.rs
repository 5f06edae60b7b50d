//! The server's limits (timeouts and caps, with their defaults) and the admission ledger that
//! enforces the caps: connections in all and per client IP, requests in flight before the
//! gateway has accepted a credential (in all and per IP), and requests in flight per credential.
//!
//! The host cannot validate API keys — only the auth component can. It keys the per-credential
//! cap by the sha256 of the `Authorization` / `x-api-key` header value, and it counts a request
//! as "unauthenticated" unless its credential recently got a 2xx answer from the gateway (a 401
//! or 403 forgets it again). So a stranger, with or without a made-up key, is bounded per IP and
//! in all, while callers with working keys are bounded per key and never by their neighbours.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Timeouts and caps of the public listener. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open client connections in all; more get `503` and are closed.
    pub max_connections: usize,
    /// Open connections from one client IP (IPv6: one /64); more get `429` and are closed.
    pub max_connections_per_ip: usize,
    /// Requests in flight whose credential the gateway has not accepted yet, in all (`503`).
    pub max_unauthenticated_requests: usize,
    /// The same, from one client IP (`429`).
    pub max_unauthenticated_requests_per_ip: usize,
    /// Requests in flight carrying one credential (`429`).
    pub max_requests_per_credential: usize,
    /// A request head must arrive within this long of its first byte (of the connection's
    /// opening, for its first request); else `408` and the connection is closed.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after this long.
    pub idle_timeout: Duration,
    /// The request body must arrive within this long plus one second per
    /// [`Limits::body_min_rate`] bytes received; else `408` and the connection is closed.
    pub body_timeout: Duration,
    /// Minimum average body rate in bytes per second beyond [`Limits::body_timeout`].
    pub body_min_rate: u64,
    /// A response write that makes no progress for this long closes the connection (a client
    /// that stopped reading a stream); the component's next write fails and it settles.
    pub write_timeout: Duration,
    /// After an answer that left the request body unread (413, 401, a refusal), up to this many
    /// bytes of it are read and discarded so the client can finish sending and read the answer.
    pub drain_max_bytes: u64,
    /// ... for at most this long; beyond either bound the connection is closed.
    pub drain_timeout: Duration,
    /// Component instances alive at once (the pooling allocator's size, like Spin's
    /// `SPIN_MAX_INSTANCE_COUNT`); a request that finds none free gets `503`.
    pub max_instances: u32,
    /// KiB of each freed instance's linear memory kept resident (zeroed in place) for the next
    /// request instead of returned to the kernel; tables keep half as much. 0 gives every
    /// page back at once (least memory after a burst, ~0.2 ms more CPU per request).
    pub instance_keep_kib: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_ip: 256,
            max_unauthenticated_requests: 256,
            max_unauthenticated_requests_per_ip: 64,
            max_requests_per_credential: 128,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(10),
            body_min_rate: 8 * 1024,
            write_timeout: Duration::from_secs(30),
            drain_max_bytes: 16 << 20,
            drain_timeout: Duration::from_secs(10),
            max_instances: 1000,
            instance_keep_kib: crate::engine::KEEP_RESIDENT_KIB,
        }
    }
}

/// Parses `10s`, `500ms`, `2m` or a bare number of seconds (`10`, `0.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 10s, 500ms, 2m"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        other => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {other:?} (use ms, s or m)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Why the server refused a connection or a request; rendered by [`crate::server`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// [`Limits::max_connections`].
    Connections,
    /// [`Limits::max_connections_per_ip`].
    ConnectionsPerIp,
    /// [`Limits::max_unauthenticated_requests`].
    Unauthenticated,
    /// [`Limits::max_unauthenticated_requests_per_ip`].
    UnauthenticatedPerIp,
    /// [`Limits::max_requests_per_credential`].
    PerCredential,
}

impl Refusal {
    /// HTTP status: 503 when the gateway as a whole is full, 429 when this client is.
    pub fn status(self) -> u16 {
        match self {
            Refusal::Connections | Refusal::Unauthenticated => 503,
            _ => 429,
        }
    }

    /// The OpenAI-shaped error's `code`.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Connections => "too_many_connections",
            Refusal::ConnectionsPerIp => "too_many_connections_from_client",
            Refusal::Unauthenticated => "server_busy",
            Refusal::UnauthenticatedPerIp => "too_many_requests_from_client",
            Refusal::PerCredential => "too_many_requests_for_key",
        }
    }

    /// The error message, naming the limit that was hit.
    pub fn message(self, limits: &Limits) -> String {
        match self {
            Refusal::Connections => format!(
                "the gateway has {} connections open, its limit (max_connections); retry shortly",
                limits.max_connections
            ),
            Refusal::ConnectionsPerIp => format!(
                "your address has {} connections open, the limit per client (max_connections_per_ip); reuse connections or retry shortly",
                limits.max_connections_per_ip
            ),
            Refusal::Unauthenticated => format!(
                "the gateway has {} requests in flight from callers it has not authenticated yet (max_unauthenticated_requests); retry shortly",
                limits.max_unauthenticated_requests
            ),
            Refusal::UnauthenticatedPerIp => format!(
                "your address has {} requests in flight before authentication, the limit per client (max_unauthenticated_requests_per_ip); retry shortly",
                limits.max_unauthenticated_requests_per_ip
            ),
            Refusal::PerCredential => format!(
                "this API key has {} requests in flight, the limit per key (max_requests_per_credential); retry when one finishes",
                limits.max_requests_per_credential
            ),
        }
    }
}

/// A client address as the caps count it: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64,
/// since one IPv6 client usually holds a whole /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// The key for `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    ClientKey(IpAddr::V6(std::net::Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }
}

/// sha256 of a credential header value.
pub type CredentialHash = [u8; 32];

/// The credential of a request: the `Authorization` header, else `x-api-key`, hashed.
pub fn credential_of(headers: &http::HeaderMap) -> Option<CredentialHash> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .or_else(|| headers.get("x-api-key"))?;
    Some(Sha256::digest(value.as_bytes()).into())
}

/// How long a credential stays "accepted" after its last 2xx.
const CONFIRMED_TTL: Duration = Duration::from_secs(600);
/// Accepted credentials remembered at once (a bounded map: beyond it new ones are not
/// remembered and stay counted as unauthenticated).
const CONFIRMED_MAX: usize = 100_000;

#[derive(Default)]
struct ClientCounts {
    connections: usize,
    unauthenticated: usize,
}

#[derive(Default)]
struct Ledger {
    connections: usize,
    unauthenticated: usize,
    clients: HashMap<ClientKey, ClientCounts>,
    credentials: HashMap<CredentialHash, usize>,
    confirmed: HashMap<CredentialHash, Instant>,
}

impl Ledger {
    fn client(&mut self, key: ClientKey) -> &mut ClientCounts {
        self.clients.entry(key).or_default()
    }

    fn forget_client_if_idle(&mut self, key: ClientKey) {
        if let Some(c) = self.clients.get(&key) {
            if c.connections == 0 && c.unauthenticated == 0 {
                self.clients.remove(&key);
            }
        }
    }
}

/// The shared admission ledger; cheap to clone.
#[derive(Clone)]
pub struct Admission {
    limits: Arc<Limits>,
    ledger: Arc<Mutex<Ledger>>,
}

impl Admission {
    /// An empty ledger for `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits: Arc::new(limits),
            ledger: Arc::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // The ledger holds plain counters: a panic elsewhere cannot leave it half-updated.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection from `ip`, or says why not.
    pub fn connect(&self, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let key = ClientKey::of(ip);
        let mut l = self.lock();
        if l.connections >= self.limits.max_connections {
            return Err(Refusal::Connections);
        }
        if l.client(key).connections >= self.limits.max_connections_per_ip {
            l.forget_client_if_idle(key);
            return Err(Refusal::ConnectionsPerIp);
        }
        l.connections += 1;
        l.client(key).connections += 1;
        Ok(ConnectionPermit {
            admission: self.clone(),
            key,
        })
    }

    /// Admits a request from `ip` carrying `credential`, or says why not. The permit is held
    /// until the response has been sent (a stream: its end).
    pub fn request(
        &self,
        ip: IpAddr,
        credential: Option<CredentialHash>,
    ) -> Result<RequestPermit, Refusal> {
        let key = ClientKey::of(ip);
        let now = Instant::now();
        let mut l = self.lock();
        let confirmed =
            credential.is_some_and(|c| l.confirmed.get(&c).is_some_and(|&expires| expires > now));
        if let Some(c) = credential {
            if l.credentials.get(&c).copied().unwrap_or(0)
                >= self.limits.max_requests_per_credential
            {
                return Err(Refusal::PerCredential);
            }
        }
        if !confirmed {
            if l.unauthenticated >= self.limits.max_unauthenticated_requests {
                return Err(Refusal::Unauthenticated);
            }
            if l.client(key).unauthenticated >= self.limits.max_unauthenticated_requests_per_ip {
                l.forget_client_if_idle(key);
                return Err(Refusal::UnauthenticatedPerIp);
            }
            l.unauthenticated += 1;
            l.client(key).unauthenticated += 1;
        }
        if let Some(c) = credential {
            *l.credentials.entry(c).or_insert(0) += 1;
        }
        Ok(RequestPermit {
            admission: self.clone(),
            key,
            credential,
            unauthenticated: !confirmed,
        })
    }

    /// Learns from an answer: a 2xx means the gateway accepted `credential`, a 401 or 403
    /// that it did not (any more).
    pub fn observe(&self, credential: Option<CredentialHash>, status: u16) {
        let Some(c) = credential else { return };
        let mut l = self.lock();
        if (200..300).contains(&status) {
            let now = Instant::now();
            if l.confirmed.len() >= CONFIRMED_MAX && !l.confirmed.contains_key(&c) {
                l.confirmed.retain(|_, expires| *expires > now);
                if l.confirmed.len() >= CONFIRMED_MAX {
                    return;
                }
            }
            l.confirmed.insert(c, now + CONFIRMED_TTL);
        } else if status == 401 || status == 403 {
            l.confirmed.remove(&c);
        }
    }

    /// Open connections (for tests and diagnostics).
    pub fn connections(&self) -> usize {
        self.lock().connections
    }
}

/// An admitted connection; released on drop.
pub struct ConnectionPermit {
    admission: Admission,
    key: ClientKey,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut l = self.admission.lock();
        l.connections = l.connections.saturating_sub(1);
        let c = l.client(self.key);
        c.connections = c.connections.saturating_sub(1);
        l.forget_client_if_idle(self.key);
    }
}

/// An admitted request; released on drop.
pub struct RequestPermit {
    admission: Admission,
    key: ClientKey,
    credential: Option<CredentialHash>,
    unauthenticated: bool,
}

impl RequestPermit {
    /// The request's credential hash, if it carried one.
    pub fn credential(&self) -> Option<CredentialHash> {
        self.credential
    }
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        let mut l = self.admission.lock();
        if self.unauthenticated {
            l.unauthenticated = l.unauthenticated.saturating_sub(1);
            let c = l.client(self.key);
            c.unauthenticated = c.unauthenticated.saturating_sub(1);
            l.forget_client_if_idle(self.key);
        }
        if let Some(cred) = self.credential {
            if let Some(n) = l.credentials.get_mut(&cred) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    l.credentials.remove(&cred);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            ClientKey::of(ip("::ffff:10.0.0.1")),
            ClientKey::of(ip("10.0.0.1"))
        );
    }

    #[test]
    fn connection_caps_hold_and_release() {
        let a = Admission::new(Limits {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..Limits::default()
        });
        let c1 = a.connect(ip("10.0.0.1")).unwrap();
        let _c2 = a.connect(ip("10.0.0.1")).unwrap();
        assert_eq!(
            a.connect(ip("10.0.0.1")).err(),
            Some(Refusal::ConnectionsPerIp)
        );
        let _c3 = a.connect(ip("10.0.0.2")).unwrap();
        assert_eq!(a.connect(ip("10.0.0.3")).err(), Some(Refusal::Connections));
        drop(c1);
        let _c4 = a.connect(ip("10.0.0.1")).unwrap();
        assert_eq!(a.connections(), 3);
    }

    #[test]
    fn accepted_credentials_leave_the_unauthenticated_caps() {
        let a = Admission::new(Limits {
            max_unauthenticated_requests: 10,
            max_unauthenticated_requests_per_ip: 1,
            max_requests_per_credential: 2,
            ..Limits::default()
        });
        let key: CredentialHash = Sha256::digest(b"Bearer lm_good").into();
        let stranger: CredentialHash = Sha256::digest(b"Bearer made-up").into();
        let first = a.request(ip("10.0.0.1"), Some(key)).unwrap();
        // One unauthenticated request per IP: a made-up key from the same address waits.
        assert_eq!(
            a.request(ip("10.0.0.1"), Some(stranger)).err(),
            Some(Refusal::UnauthenticatedPerIp)
        );
        a.observe(Some(key), 200);
        drop(first);
        // Accepted: counted per key only, up to its own cap.
        let k1 = a.request(ip("10.0.0.1"), Some(key)).unwrap();
        let k2 = a.request(ip("10.0.0.1"), Some(key)).unwrap();
        assert_eq!(
            a.request(ip("10.0.0.1"), Some(key)).err(),
            Some(Refusal::PerCredential)
        );
        let s = a.request(ip("10.0.0.1"), Some(stranger)).unwrap();
        assert_eq!(
            a.request(ip("10.0.0.1"), None).err(),
            Some(Refusal::UnauthenticatedPerIp)
        );
        drop((k1, k2, s));
        // A 401 forgets the key again.
        a.observe(Some(key), 401);
        let _k = a.request(ip("10.0.0.1"), Some(key)).unwrap();
        assert_eq!(
            a.request(ip("10.0.0.1"), Some(key)).err(),
            Some(Refusal::UnauthenticatedPerIp)
        );
    }

    #[test]
    fn the_global_unauthenticated_cap_spans_addresses() {
        let a = Admission::new(Limits {
            max_unauthenticated_requests: 2,
            ..Limits::default()
        });
        let _r1 = a.request(ip("10.0.0.1"), None).unwrap();
        let _r2 = a.request(ip("10.0.0.2"), None).unwrap();
        assert_eq!(
            a.request(ip("10.0.0.3"), None).err(),
            Some(Refusal::Unauthenticated)
        );
    }
}
