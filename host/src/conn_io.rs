//! The client connection's socket as hyper sees it, with the timeouts hyper's HTTP/1 server does
//! not have and one repair it cannot be asked for:
//!
//! * idle keep-alive and request-head timeouts on reads (hyper's `header_read_timeout` is one
//!   timer for both, started the moment it waits for a head);
//! * a write timeout: a write that makes no progress for that long fails the connection, so a
//!   client that stopped reading a stream cannot hold it (and the component's instance) open;
//! * hyper answers unparsable requests itself with a bare `400`/`431`/`414` (no body, no
//!   `x-request-id`) and offers no hook for it. Every response the host serves carries
//!   `x-request-id` (the server adds one when a component did not), so this layer follows the
//!   framing of the responses it writes and replaces any error head without one — hyper's — by
//!   an OpenAI-shaped JSON answer with an `x-request-id`.

use crate::reply;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The read and write timeouts of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnTimeouts {
    /// Request head, from its first byte (from the accept for the first request).
    pub header: Duration,
    /// No request in progress.
    pub idle: Duration,
    /// A write without progress.
    pub write: Duration,
}

#[derive(Debug)]
struct Phase {
    /// Holds of the request in progress (its response, its unfinished body).
    busy: usize,
    /// Requests started on this connection.
    started: u64,
    /// When the connection last became idle (or was accepted).
    idle_since: Instant,
    /// Methods of requests whose response head has not been written yet (a `HEAD` answer has
    /// no body whatever its `content-length` says).
    methods: VecDeque<http::Method>,
}

/// State shared between a connection's socket layer and the requests served on it.
#[derive(Debug)]
pub struct ConnShared {
    phase: Mutex<Phase>,
}

impl ConnShared {
    /// A connection accepted now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            phase: Mutex::new(Phase {
                busy: 0,
                started: 0,
                idle_since: Instant::now(),
                methods: VecDeque::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request head was parsed and is being served; the guard holds the connection busy
    /// until its response has been written (drop it then).
    pub fn begin(self: &Arc<Self>, method: http::Method) -> BusyGuard {
        let mut p = self.lock();
        p.busy += 1;
        p.started += 1;
        p.methods.push_back(method);
        BusyGuard(Some(self.clone()))
    }

    /// Another hold on the request in progress (its body while it is still arriving).
    pub fn hold(self: &Arc<Self>) -> BusyGuard {
        self.lock().busy += 1;
        BusyGuard(Some(self.clone()))
    }
}

/// Keeps the connection's request in progress; released on drop.
#[derive(Debug)]
pub struct BusyGuard(Option<Arc<ConnShared>>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            let mut p = shared.lock();
            p.busy = p.busy.saturating_sub(1);
            if p.busy == 0 {
                p.idle_since = Instant::now();
            }
        }
    }
}

/// Where the write side is in the response byte stream.
#[derive(Debug)]
enum Framing {
    /// Accumulating a response head.
    Head(Vec<u8>),
    /// This many body bytes left (`content-length`).
    Fixed(u64),
    /// A chunked body.
    Chunked(Chunked),
    /// Bytes pass untouched from here on (after a replaced error, an upgrade, a body delimited
    /// by the close, or anything this layer does not understand).
    Through,
}

/// Heads longer than this are passed through uninspected.
const MAX_HEAD: usize = 64 * 1024;
/// Body bytes that may join a held head in one write.
const COALESCE_MAX: usize = 16 * 1024;

/// A chunked body's decoder state (hyper writes `{size:X}\r\n{data}\r\n` … `0\r\n\r\n`, trailers
/// possibly before the last empty line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    Size(u64),
    Ext(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    LineStart,
    Line,
    LineLf,
    LastLf,
}

/// What [`Chunked::advance`] found.
#[derive(Debug, PartialEq, Eq)]
enum Advance {
    /// All bytes belong to the body, which goes on.
    More,
    /// The body ends after this many bytes.
    End(usize),
    /// Not chunked framing as expected.
    Invalid,
}

impl Chunked {
    fn advance(&mut self, bytes: &[u8]) -> Advance {
        let mut i = 0;
        while i < bytes.len() {
            if let Chunked::Data(n) = *self {
                let take = (bytes.len() - i).min(usize::try_from(n).unwrap_or(usize::MAX));
                i += take;
                let left = n - take as u64;
                *self = if left == 0 {
                    Chunked::DataCr
                } else {
                    Chunked::Data(left)
                };
                continue;
            }
            let b = bytes[i];
            i += 1;
            *self = match (*self, b) {
                (Chunked::Size(n), b'\r') => Chunked::SizeLf(n),
                (Chunked::Size(n), b';') => Chunked::Ext(n),
                (Chunked::Size(n), d) if d.is_ascii_hexdigit() && n >> 58 == 0 => {
                    let v = (d as char).to_digit(16).unwrap_or(0);
                    Chunked::Size(n * 16 + u64::from(v))
                }
                (Chunked::Ext(n), b'\r') => Chunked::SizeLf(n),
                (Chunked::Ext(n), _) => Chunked::Ext(n),
                (Chunked::SizeLf(0), b'\n') => Chunked::LineStart,
                (Chunked::SizeLf(n), b'\n') => Chunked::Data(n),
                (Chunked::DataCr, b'\r') => Chunked::DataLf,
                (Chunked::DataLf, b'\n') => Chunked::Size(0),
                (Chunked::LineStart, b'\r') => Chunked::LastLf,
                (Chunked::Line, b'\r') => Chunked::LineLf,
                (Chunked::LineStart | Chunked::Line, _) => Chunked::Line,
                (Chunked::LineLf, b'\n') => Chunked::LineStart,
                (Chunked::LastLf, b'\n') => return Advance::End(i),
                _ => return Advance::Invalid,
            };
        }
        Advance::More
    }
}

/// What a complete response head means for the bytes after it.
fn classify_head(head: &[u8], shared: &ConnShared) -> (Option<Vec<u8>>, Framing) {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = resp.parse(head) else {
        return (None, Framing::Through);
    };
    let status = resp.code.unwrap_or(0);
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if status >= 400 && header("x-request-id").is_none() {
        // Not from the host's service (which gives every answer an id): hyper's own answer to
        // a request it could not parse. It closes the connection after it.
        let (code, message) = match status {
            431 => (
                "request_headers_too_large",
                "the request's headers are too large (at most 100 headers and about 400 KiB)",
            ),
            414 => ("uri_too_long", "the request's URI is too long"),
            _ => (
                "malformed_request",
                "malformed HTTP request: its request line or a header could not be parsed",
            ),
        };
        return (
            Some(reply::raw_response(status, code, message, None)),
            Framing::Through,
        );
    }
    if (100..200).contains(&status) {
        // Interim (100 Continue): no body, and the final answer follows.
        return (
            None,
            if status == 101 {
                Framing::Through
            } else {
                Framing::Head(Vec::new())
            },
        );
    }
    let method = shared.lock().methods.pop_front();
    if method == Some(http::Method::HEAD) || status == 204 || status == 304 {
        return (None, Framing::Head(Vec::new()));
    }
    let chunked = header("transfer-encoding").is_some_and(|v| {
        v.split(|&c| c == b',')
            .next_back()
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
    });
    if chunked {
        return (None, Framing::Chunked(Chunked::Size(0)));
    }
    match header("content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(0) => (None, Framing::Head(Vec::new())),
        Some(n) => (None, Framing::Fixed(n)),
        None => (None, Framing::Through),
    }
}

/// A client socket with read and write timeouts and hyper's bare error answers replaced.
pub struct GuardedIo {
    io: TcpStream,
    shared: Arc<ConnShared>,
    timeouts: ConnTimeouts,
    /// `(requests started, when)` of the first byte of a head read while idle.
    head_mark: Option<(u64, Instant)>,
    read_sleep: Pin<Box<Sleep>>,
    write_sleep: Pin<Box<Sleep>>,
    write_armed: bool,
    framing: Framing,
    /// Bytes taken from hyper but not yet on the socket (a held head, or its replacement).
    out: Vec<u8>,
    out_pos: usize,
}

impl GuardedIo {
    /// Wraps an accepted socket.
    pub fn new(io: TcpStream, shared: Arc<ConnShared>, timeouts: ConnTimeouts) -> Self {
        let far = Instant::now() + Duration::from_secs(86_400);
        Self {
            io,
            shared,
            timeouts,
            head_mark: None,
            read_sleep: Box::pin(tokio::time::sleep_until(far)),
            write_sleep: Box::pin(tokio::time::sleep_until(far)),
            write_armed: false,
            framing: Framing::Head(Vec::new()),
            out: Vec::new(),
            out_pos: 0,
        }
    }

    /// The read deadline now, and whether a request head has begun.
    fn read_deadline(&self) -> Option<(Instant, bool)> {
        let p = self.shared.lock();
        if p.busy > 0 {
            return None;
        }
        let in_head = self
            .head_mark
            .is_some_and(|(started, _)| started == p.started);
        match self.head_mark {
            // The first request's head is timed from the accept.
            _ if p.started == 0 => Some((p.idle_since + self.timeouts.header, in_head)),
            Some((_, at)) if in_head => Some((at + self.timeouts.header, true)),
            _ => Some((p.idle_since + self.timeouts.idle, false)),
        }
    }

    fn note_read(&mut self) {
        let p = self.shared.lock();
        if p.busy == 0
            && self
                .head_mark
                .is_none_or(|(started, _)| started != p.started)
        {
            self.head_mark = Some((p.started, Instant::now()));
        }
    }

    /// Writes to the socket, failing when no progress was made for the write timeout.
    fn poll_socket_write(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, bytes) {
            Poll::Ready(Ok(n)) => {
                self.write_armed = false;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_write_stall(cx).map(|r| r.map(|()| 0)),
        }
    }

    /// Called when a write is pending: arms the write timer, or fails once it has run out.
    fn poll_write_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write_armed {
            self.write_armed = true;
            let deadline = Instant::now() + self.timeouts.write;
            self.write_sleep.as_mut().reset(deadline);
        }
        ready!(self.write_sleep.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing for the write timeout",
        )))
    }

    /// Writes body bytes: while a head is still held (not yet on the socket), up to
    /// [`COALESCE_MAX`] of them join it so that a head and a small body leave in one write (two
    /// writes would cost a second segment, and Nagle's delay where the peer acks late);
    /// otherwise what is held leaves first, then the bytes go straight to the socket.
    fn poll_body_write(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        if self.out_pos < self.out.len() && self.out.len() < COALESCE_MAX {
            let take = bytes.len().min(COALESCE_MAX - self.out.len());
            self.out.extend_from_slice(&bytes[..take]);
            // Send what the socket takes now; the rest goes on the next write or the flush.
            if let Poll::Ready(Err(e)) = self.poll_out(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(take));
        }
        ready!(self.poll_out(cx))?;
        self.poll_socket_write(cx, bytes)
    }

    /// Puts the held bytes on the socket.
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let out = std::mem::take(&mut self.out);
            let r = self.poll_socket_write(cx, &out[self.out_pos..]);
            self.out = out;
            match ready!(r)? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => self.out_pos += n,
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// A read timed out: an idle connection ends quietly; a half-sent head gets a `408`.
    fn read_timed_out(&mut self, cx: &mut Context<'_>, in_head: bool) -> Poll<io::Result<()>> {
        if !in_head {
            return Poll::Ready(Ok(()));
        }
        if matches!(&self.framing, Framing::Head(h) if h.is_empty()) && self.out.is_empty() {
            let raw = reply::raw_response(
                408,
                "request_timeout",
                &format!(
                    "the request head did not arrive within {} s",
                    self.timeouts.header.as_secs_f64()
                ),
                None,
            );
            // Best effort: a fresh socket buffer takes these few hundred bytes at once.
            let _ = Pin::new(&mut self.io).poll_write(cx, &raw);
            let _ = Pin::new(&mut self.io).poll_shutdown(cx);
        }
        self.framing = Framing::Through;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "request head timeout",
        )))
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.note_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some((deadline, in_head)) = this.read_deadline() else {
                    return Poll::Pending;
                };
                if this.read_sleep.deadline() != deadline {
                    this.read_sleep.as_mut().reset(deadline);
                }
                ready!(this.read_sleep.as_mut().poll(cx));
                this.read_timed_out(cx, in_head)
            }
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            ready!(this.poll_out(cx))?;
            return Poll::Ready(Ok(0));
        }
        match &mut this.framing {
            Framing::Through => this.poll_body_write(cx, buf),
            Framing::Fixed(left) => {
                let end = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = ready!(this.poll_body_write(cx, &buf[..end]))?;
                if let Framing::Fixed(left) = &mut this.framing {
                    *left -= n as u64;
                    if *left == 0 {
                        this.framing = Framing::Head(Vec::new());
                    }
                }
                Poll::Ready(Ok(n))
            }
            Framing::Chunked(state) => {
                let mut probe = *state;
                let end = match probe.advance(buf) {
                    Advance::More => buf.len(),
                    Advance::End(end) => end,
                    Advance::Invalid => {
                        this.framing = Framing::Through;
                        return this.poll_body_write(cx, buf);
                    }
                };
                let n = ready!(this.poll_body_write(cx, &buf[..end]))?;
                if let Framing::Chunked(state) = &mut this.framing {
                    if let Advance::End(_) = state.advance(&buf[..n]) {
                        this.framing = Framing::Head(Vec::new());
                    }
                }
                Poll::Ready(Ok(n))
            }
            Framing::Head(_) => {
                // What is still held of the last answer leaves before a new head is parsed.
                ready!(this.poll_out(cx))?;
                let Framing::Head(head) = &mut this.framing else {
                    unreachable!("the framing was Head a moment ago")
                };
                let start = head.len().saturating_sub(3);
                let taken = buf.len().min(MAX_HEAD + 4 - head.len().min(MAX_HEAD));
                head.extend_from_slice(&buf[..taken]);
                let end = head[start..]
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|p| start + p + 4);
                let (consumed, next) = match end {
                    Some(end) => {
                        let consumed = taken - (head.len() - end);
                        head.truncate(end);
                        let (replacement, next) = classify_head(head, &this.shared);
                        this.out = replacement.unwrap_or_else(|| std::mem::take(head));
                        (consumed, next)
                    }
                    None if head.len() > MAX_HEAD => {
                        this.out = std::mem::take(head);
                        (taken, Framing::Through)
                    }
                    None => return Poll::Ready(Ok(taken)),
                };
                this.out_pos = 0;
                this.framing = next;
                // The head is held: the body's first bytes (hyper hands them over next when
                // it has them) join it in one write, or the flush sends it alone (a stream).
                Poll::Ready(Ok(consumed))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_out(cx))?;
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.poll_write_stall(cx),
            done => done,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head and its small body leave in one write: nothing reaches the peer until the body
    /// joins the held head, then both arrive together (before, the head left alone first).
    #[tokio::test]
    async fn a_head_and_a_small_body_leave_in_one_write() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let shared = ConnShared::new();
        let busy = shared.begin(http::Method::POST);
        let timeouts = ConnTimeouts {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(10),
            write: Duration::from_secs(10),
        };
        let mut io = GuardedIo::new(server, shared.clone(), timeouts);
        let head = b"HTTP/1.1 200 OK\r\nx-request-id: r\r\ncontent-length: 5\r\n\r\n";
        let mut all = head.to_vec();
        all.extend_from_slice(b"hello");
        // hyper hands over head and body in one buffer: the head is taken and held.
        let n = io.write(&all).await.unwrap();
        assert_eq!(n, head.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = [0u8; 256];
        assert!(
            matches!(peer.try_read(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "the head left before its body"
        );
        // The body joins it: both arrive in one read.
        io.write_all(&all[n..]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = peer.try_read(&mut buf).unwrap();
        assert_eq!(&buf[..got], &all[..]);
        // A head alone (a stream whose first event is not ready) leaves on flush.
        drop(busy);
        let _busy = shared.begin(http::Method::POST);
        let head = b"HTTP/1.1 200 OK\r\nx-request-id: r\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(io.write(head).await.unwrap(), head.len());
        io.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = peer.try_read(&mut buf).unwrap();
        assert_eq!(&buf[..got], &head[..]);
    }

    #[test]
    fn chunked_framing_finds_the_end_of_a_body() {
        let body = b"5\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\nHTTP/1.1";
        let mut c = Chunked::Size(0);
        assert_eq!(c.advance(body), Advance::End(body.len() - 8));
        // Byte by byte reaches the same end.
        let mut c = Chunked::Size(0);
        let end = (0..body.len())
            .find(|&i| c.advance(&body[i..=i]) == Advance::End(1))
            .map(|i| i + 1);
        assert_eq!(end, Some(body.len() - 8));
        // Trailers before the final empty line.
        let mut c = Chunked::Size(0);
        assert_eq!(c.advance(b"0\r\nx-trailer: 1\r\n\r\n"), Advance::End(19));
        let mut c = Chunked::Size(0);
        assert_eq!(c.advance(b"zz\r\n"), Advance::Invalid);
    }

    fn classify(head: &str, methods: &[http::Method]) -> (Option<Vec<u8>>, Framing) {
        let shared = ConnShared::new();
        for m in methods {
            let _ = shared.begin(m.clone());
        }
        classify_head(head.as_bytes(), &shared)
    }

    #[test]
    fn heads_without_a_request_id_are_hyper_errors_and_get_replaced() {
        let (replacement, next) = classify(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
            &[],
        );
        let raw = String::from_utf8(replacement.expect("replaced")).unwrap();
        assert!(raw.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{raw}");
        assert!(raw.contains("\r\nx-request-id: req_"), "{raw}");
        assert!(raw.contains(r#""code":"malformed_request""#), "{raw}");
        assert!(matches!(next, Framing::Through));
        let (replacement, _) = classify(
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n",
            &[],
        );
        assert!(String::from_utf8(replacement.unwrap())
            .unwrap()
            .contains("request_headers_too_large"));
    }

    #[test]
    fn the_hosts_own_answers_pass_with_their_framing() {
        let ok = "HTTP/1.1 400 Bad Request\r\nx-request-id: req_1\r\ncontent-length: 12\r\n\r\n";
        let (replacement, next) = classify(ok, &[http::Method::POST]);
        assert!(replacement.is_none());
        assert!(matches!(next, Framing::Fixed(12)));
        let (_, next) = classify(
            "HTTP/1.1 200 OK\r\nx-request-id: r\r\ntransfer-encoding: chunked\r\n\r\n",
            &[http::Method::POST],
        );
        assert!(matches!(next, Framing::Chunked(Chunked::Size(0))));
        let (_, next) = classify(
            "HTTP/1.1 200 OK\r\nx-request-id: r\r\ncontent-length: 9\r\n\r\n",
            &[http::Method::HEAD],
        );
        assert!(matches!(next, Framing::Head(_)));
        let (_, next) = classify("HTTP/1.1 100 Continue\r\n\r\n", &[]);
        assert!(matches!(next, Framing::Head(_)));
    }
}
