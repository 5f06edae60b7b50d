//! Raw-socket clients for the server-hardening tests: connections from a chosen loopback source
//! address (so per-IP caps can tell attackers from the keyed client), hand-written requests,
//! and a minimal HTTP/1.1 response reader.

use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connects to `addr` from `source` (any 127.0.0.0/8 address works on Linux loopback).
pub async fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = s.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects from `source` with a small receive buffer (a client that stops reading fills it
/// quickly).
pub async fn connect_small_rcvbuf(
    source: Ipv4Addr,
    addr: SocketAddr,
    rcvbuf: u32,
) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.set_recv_buffer_size(rcvbuf)?;
    s.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    s.connect(addr).await
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts an OpenAI-shaped error with an `x-request-id` and returns the error object.
    pub fn openai_error(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "{:?} {}",
            self.headers,
            String::from_utf8_lossy(&self.body)
        );
        let id = self.header("x-request-id").expect("x-request-id");
        let hex = id.strip_prefix("req_").expect("req_ id");
        assert!(
            hex.len() == 24 && hex.bytes().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        let v: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)));
        let e = v["error"].clone();
        for field in ["message", "type", "param", "code"] {
            assert!(e.get(field).is_some(), "error lacks {field}: {v}");
        }
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        e
    }
}

/// Reads one response (head, then a `content-length` body) within `within`.
pub async fn read_response(
    stream: &mut TcpStream,
    within: Duration,
) -> std::io::Result<RawResponse> {
    tokio::time::timeout(within, read_response_inner(stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no response in time"))?
}

async fn read_response_inner(stream: &mut TcpStream) -> std::io::Result<RawResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed before a response head ({} bytes: {:?})",
                    buf.len(),
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

/// Reads until the peer closes (or errors); `Ok(bytes)` on a clean close.
pub async fn read_to_close(
    stream: &mut TcpStream,
    within: Duration,
) -> Option<std::io::Result<Vec<u8>>> {
    let mut all = Vec::new();
    let r = tokio::time::timeout(within, stream.read_to_end(&mut all))
        .await
        .ok()?;
    Some(r.map(|_| all))
}

/// `POST path` head with `content-length` and an optional bearer key.
pub fn post_head(path: &str, content_length: usize, bearer: Option<&str>) -> String {
    let auth = bearer
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n{auth}Content-Length: {content_length}\r\n\r\n"
    )
}

/// Writes all of `bytes`.
pub async fn write_all(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await
}

/// Raises this process's soft `RLIMIT_NOFILE` to at least `want` (up to the hard limit) and
/// returns the soft limit now in force. The attack test holds thousands of sockets on both
/// ends in one process, beyond the usual soft limit of 1,024.
pub fn raise_fd_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass, which lives on our
    // stack for the duration of the calls.
    #[expect(
        unsafe_code,
        reason = "libc's rlimit calls have no safe wrapper in std"
    )]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}
