//! The public listener: accepts connections under the connection caps, serves HTTP/1.1 on each
//! through [`GuardedIo`] (read, idle and write timeouts; hyper's bare errors made OpenAI-shaped),
//! admits each request under the request caps, reads its body under [`GuardedBody`] (slow
//! bodies get `408`, unread ones are drained so the client reads the answer) and hands it to the
//! [`App`]. Every answer leaves with an `x-request-id`.

use crate::app::{error_response, App, HostResponse};
use crate::body::{BodyLimits, GuardedBody};
use crate::conn_io::{BusyGuard, ConnShared, ConnTimeouts, GuardedIo};
use crate::limits::{credential_of, Admission, ConnectionPermit, Limits, Refusal, RequestPermit};
use crate::reply;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

/// Requests in flight (to their last response byte) and requests served, process-wide per host.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    served: AtomicU64,
}

impl Activity {
    /// Requests whose response has not been fully sent.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Requests started since the host started.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.served.fetch_add(1, Ordering::Relaxed);
        ActivityGuard(self.clone())
    }
}

struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Connections refused with a written answer that may still be lingering (reading what the
/// client sends so that it can read the answer); more are closed without one.
const MAX_LINGERING: usize = 512;

/// Everything one connection task needs.
#[derive(Clone)]
pub struct Served {
    app: Arc<App>,
    admission: Admission,
    activity: Arc<Activity>,
    local: SocketAddr,
}

impl Served {
    /// What the workers of one host share: the app, the caps, the activity count and the
    /// listener's address.
    pub fn new(
        app: Arc<App>,
        admission: Admission,
        activity: Arc<Activity>,
        local: SocketAddr,
    ) -> Self {
        Self {
            app,
            admission,
            activity,
            local,
        }
    }

    /// Requests in flight and served, across every worker.
    pub fn activity(&self) -> &Activity {
        &self.activity
    }
}

/// A connection accepted by the listening worker and handed to another.
pub struct Handed {
    sock: std::net::TcpStream,
    client: SocketAddr,
    permit: ConnectionPermit,
}

/// How connections reach one serving worker, and how many it has open (the listening worker
/// hands each new connection to the worker with the fewest).
#[derive(Clone, Default)]
pub struct Door {
    open: Arc<AtomicUsize>,
    handoff: Option<mpsc::UnboundedSender<Handed>>,
}

impl Door {
    /// The door of a worker on another thread, and what that worker receives from.
    pub fn remote() -> (Door, mpsc::UnboundedReceiver<Handed>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let door = Door {
            open: Arc::default(),
            handoff: Some(tx),
        };
        (door, rx)
    }

    /// The count of this worker's open connections.
    pub fn open(&self) -> Arc<AtomicUsize> {
        self.open.clone()
    }
}

/// Counts a worker's open connection until dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `sock` on this thread's runtime, counted in `open` (already incremented).
fn spawn_connection(
    sock: TcpStream,
    client: SocketAddr,
    permit: ConnectionPermit,
    served: &Served,
    stop: &watch::Receiver<bool>,
    open: &Arc<AtomicUsize>,
) {
    let guard = OpenGuard(open.clone());
    let (served, stop) = (served.clone(), stop.clone());
    tokio::spawn(async move {
        connection(sock, client, served, stop).await;
        drop(permit);
        drop(guard);
    });
}

/// Accepts and serves until `stop` turns true, then lets each connection finish the request in
/// progress. Each admitted connection goes to the worker with the fewest open, `here` (this
/// thread) on a tie; a connection and its requests then stay on that worker's thread.
pub async fn serve(
    listener: TcpListener,
    served: Served,
    here: Door,
    others: Vec<Door>,
    mut stop: watch::Receiver<bool>,
) {
    let lingering = Arc::new(Semaphore::new(MAX_LINGERING));
    loop {
        let (sock, client) = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    static LOG: AtomicU64 = AtomicU64::new(0);
                    reply::log_throttled(&LOG, || format!("lumen-host: accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = sock.set_nodelay(true);
        match served.admission.connect(client.ip()) {
            Ok(permit) => {
                let door = others.iter().fold(&here, |best, d| {
                    if d.open.load(Ordering::Relaxed) < best.open.load(Ordering::Relaxed) {
                        d
                    } else {
                        best
                    }
                });
                door.open.fetch_add(1, Ordering::Relaxed);
                let Some(tx) = &door.handoff else {
                    spawn_connection(sock, client, permit, &served, &stop, &here.open);
                    continue;
                };
                let sock = match sock.into_std() {
                    Ok(sock) => sock,
                    Err(e) => {
                        eprintln!("lumen-host: cannot hand over a connection: {e}");
                        door.open.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    }
                };
                if let Err(mpsc::error::SendError(h)) = tx.send(Handed {
                    sock,
                    client,
                    permit,
                }) {
                    // That worker's thread has ended: serve the connection here.
                    door.open.fetch_sub(1, Ordering::Relaxed);
                    match TcpStream::from_std(h.sock) {
                        Ok(sock) => {
                            here.open.fetch_add(1, Ordering::Relaxed);
                            spawn_connection(sock, client, h.permit, &served, &stop, &here.open);
                        }
                        Err(e) => eprintln!("lumen-host: cannot serve a connection: {e}"),
                    }
                }
            }
            Err(refusal) => {
                static LOG: AtomicU64 = AtomicU64::new(0);
                reply::log_throttled(&LOG, || {
                    format!(
                        "lumen-host: refused a connection from {client}: {}",
                        refusal.code()
                    )
                });
                if let Ok(slot) = lingering.clone().try_acquire_owned() {
                    let raw = reply::raw_response(
                        refusal.status(),
                        refusal.code(),
                        &refusal.message(served.admission.limits()),
                        Some(1),
                    );
                    tokio::spawn(async move {
                        refuse_connection(sock, raw).await;
                        drop(slot);
                    });
                }
            }
        }
    }
}

/// Serves the connections the listening worker hands to this one until `stop` turns true.
pub async fn serve_handed(
    mut handed: mpsc::UnboundedReceiver<Handed>,
    served: Served,
    open: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let h = tokio::select! {
            _ = stop.changed() => break,
            h = handed.recv() => match h {
                Some(h) => h,
                None => break,
            },
        };
        match TcpStream::from_std(h.sock) {
            Ok(sock) => spawn_connection(sock, h.client, h.permit, &served, &stop, &open),
            Err(e) => {
                eprintln!("lumen-host: cannot serve a handed connection: {e}");
                open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// Answers a refused connection without reading its request: write the answer, stop writing,
/// then read and discard for a moment so that closing does not reset the connection before the
/// client has read it.
async fn refuse_connection(mut sock: TcpStream, raw: Vec<u8>) {
    let linger = async {
        sock.write_all(&raw).await?;
        sock.shutdown().await?;
        let mut buf = [0u8; 4096];
        let mut read = 0usize;
        while read < 64 * 1024 {
            match sock.read(&mut buf).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), linger).await;
}

async fn connection(
    sock: TcpStream,
    client: SocketAddr,
    served: Served,
    mut stop: watch::Receiver<bool>,
) {
    let limits = served.admission.limits().clone();
    let shared = ConnShared::new();
    let io = GuardedIo::new(
        sock,
        shared.clone(),
        ConnTimeouts {
            header: limits.header_timeout,
            idle: limits.idle_timeout,
            write: limits.write_timeout,
        },
    );
    let body_limits = BodyLimits::of(&limits);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let served = served.clone();
        let shared = shared.clone();
        async move {
            Ok::<_, std::convert::Infallible>(
                handle(req, client, &served, &shared, body_limits).await,
            )
        }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .writev(false)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // On shutdown, finish the request in progress and close the connection.
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        use std::io::ErrorKind as K;
        let socket_gone = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| {
                matches!(
                    io.kind(),
                    K::TimedOut
                        | K::BrokenPipe
                        | K::ConnectionReset
                        | K::ConnectionAborted
                        | K::UnexpectedEof
                )
            });
        // Clients that leave, send garbage or time out are routine; log the rest.
        let routine = e.is_incomplete_message()
            || e.is_parse()
            || e.is_parse_too_large()
            || e.is_body_write_aborted()
            || e.is_canceled()
            || e.is_closed()
            || socket_gone;
        if !routine {
            static LOG: AtomicU64 = AtomicU64::new(0);
            reply::log_throttled(&LOG, || {
                format!("lumen-host: connection from {client}: {e}")
            });
        }
    }
}

/// Serves one request: admission, the guarded body, the app, and the answer's bookkeeping.
async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
    client: SocketAddr,
    served: &Served,
    shared: &Arc<ConnShared>,
    body_limits: BodyLimits,
) -> http::Response<TrackedBody> {
    let activity = served.activity.begin();
    let busy = shared.begin(req.method().clone());
    let credential = credential_of(req.headers());
    let expect_continue = req
        .headers()
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, incoming) = req.into_parts();
    let body_busy = (!incoming.is_end_stream()).then(|| shared.hold());
    let (body, outcome) = GuardedBody::new(incoming, body_limits, body_busy, expect_continue);
    let permit = match served.admission.request(client.ip(), credential) {
        Ok(p) => p,
        Err(refusal) => {
            // The unread body is drained when `body` drops here.
            drop(body);
            static LOG: AtomicU64 = AtomicU64::new(0);
            reply::log_throttled(&LOG, || {
                format!(
                    "lumen-host: refused a request from {client}: {}",
                    refusal.code()
                )
            });
            let resp = refusal_response(refusal, served.admission.limits());
            return TrackedBody::wrap(resp, None, busy, activity);
        }
    };
    let req = http::Request::from_parts(parts, body);
    let mut resp = served.app.handle_public(req, client, served.local).await;
    if outcome.timed_out() {
        resp = error_response(
            408,
            "request_timeout",
            &format!(
                "the request body arrived too slowly (it must arrive within {} s plus one second per {} bytes)",
                body_limits.timeout.as_secs_f64(),
                body_limits.min_rate
            ),
        );
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    served
        .admission
        .observe(permit.credential(), resp.status().as_u16());
    if !resp.headers().contains_key("x-request-id") {
        if let Ok(id) = http::HeaderValue::from_str(&reply::request_id()) {
            resp.headers_mut().insert("x-request-id", id);
        }
    }
    TrackedBody::wrap(resp, Some(permit), busy, activity)
}

/// The answer to a request refused by a cap.
fn refusal_response(refusal: Refusal, limits: &Limits) -> HostResponse {
    let mut resp = error_response(refusal.status(), refusal.code(), &refusal.message(limits));
    resp.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    resp
}

/// A response body that holds its request's permit, the connection's busy mark and the
/// activity count until its last frame (or until hyper drops it).
pub struct TrackedBody {
    inner: crate::app::HostBody,
    guards: Option<(Option<RequestPermit>, BusyGuard, ActivityGuard)>,
}

impl TrackedBody {
    fn wrap(
        resp: HostResponse,
        permit: Option<RequestPermit>,
        busy: BusyGuard,
        activity: ActivityGuard,
    ) -> http::Response<TrackedBody> {
        resp.map(|inner| TrackedBody {
            inner,
            guards: Some((permit, busy, activity)),
        })
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guards = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Gives freed heap back to the kernel once the host has gone quiet after serving requests:
/// glibc keeps freed memory in its arenas, which after a burst of large bodies left the host
/// at 2× its idle RSS for good (issue 13, D16). See [`Trimmer`] for when.
pub fn spawn_memory_trimmer(activity: Arc<Activity>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut trimmer = Trimmer::new(activity.served(), std::time::Instant::now());
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(TRIM_TICK) => {}
            }
            let now = std::time::Instant::now();
            if trimmer.tick(activity.served(), activity.in_flight(), now) {
                let _ = tokio::task::spawn_blocking(crate::sys::trim).await;
            }
        }
    });
}

/// How often the trimmer looks.
const TRIM_TICK: Duration = Duration::from_secs(1);

/// Under steady traffic that never leaves a quiet tick (a health probe every second), trims at
/// most this often.
const TRIM_WHILE_BUSY: Duration = Duration::from_secs(30);

/// When to trim: after a tick in which no request arrived, once requests were served since the
/// last trim (a burst has ended); while requests keep arriving, between two of them at most every
/// [`TRIM_WHILE_BUSY`]. It used to trim at every tick that found no request in flight, which
/// at a steady 10 requests a second is every second: `malloc_trim` hands back the free chunks of
/// every arena (17 `madvise` calls measured, each of which may flush the other core's TLB), and the
/// next requests fault the same pages back in.
#[derive(Debug)]
pub struct Trimmer {
    trimmed_at: u64,
    last_seen: u64,
    last_trim: std::time::Instant,
}

impl Trimmer {
    /// A trimmer that has seen `served` requests at `now`.
    pub fn new(served: u64, now: std::time::Instant) -> Trimmer {
        Trimmer {
            trimmed_at: served,
            last_seen: served,
            last_trim: now,
        }
    }

    /// One tick: whether to trim now, given requests served so far and in flight.
    pub fn tick(&mut self, served: u64, in_flight: usize, now: std::time::Instant) -> bool {
        let quiet = served == self.last_seen;
        self.last_seen = served;
        let due = quiet || now.duration_since(self.last_trim) >= TRIM_WHILE_BUSY;
        if served != self.trimmed_at && in_flight == 0 && due {
            self.trimmed_at = served;
            self.last_trim = now;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trimmer_waits_for_a_quiet_tick_or_half_a_minute() {
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut t = Trimmer::new(0, t0);
        assert!(!t.tick(0, 0, at(1)), "nothing served: nothing to trim");
        // Steady low traffic (10 requests a second, none in flight at the ticks): no trim for
        // 29 seconds, then one.
        let trims: Vec<u64> = (2..=61).filter(|&s| t.tick(s * 10, 0, at(s))).collect();
        assert_eq!(trims, vec![30, 60]);
        // The burst ends: the first quiet tick trims, later ones have nothing new.
        assert!(t.tick(610, 0, at(62)));
        assert!(!t.tick(610, 0, at(63)));
        // A quiet tick with a request still in flight waits for the next.
        assert!(!t.tick(615, 0, at(64)));
        assert!(!t.tick(615, 1, at(65)));
        assert!(t.tick(615, 0, at(66)));
    }
}
