//! The Spin-facing HTTP layer: [`Reply`] (a whole response, always sent with `content-length`),
//! streamed responses, bounded body reads, header reads and internal JSON calls between
//! components (`http://<component>.spin.internal/...`).

use crate::util::{api_error_from_wire, parse_retry_after};
use futures::{Sink, SinkExt, Stream, StreamExt};
use lumen_shared::ApiError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use spin_sdk::http::conversions::TryIntoOutgoingRequest;
use spin_sdk::http::{
    Fields, IncomingRequest, IncomingResponse, Method, OutgoingResponse, Request, Response,
    ResponseOutparam, SendError,
};

/// A whole (non-streamed) response.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers (lowercase names); `content-length` is added when sent.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    /// A reply with a content type.
    pub fn new(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body,
        }
    }

    /// A JSON reply from bytes that already are JSON.
    pub fn json_bytes(status: u16, body: Vec<u8>) -> Reply {
        Reply::new(status, "application/json", body)
    }

    /// A JSON reply from a value.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => Reply::json_bytes(status, body),
            Err(e) => Reply::error(&ApiError::internal(format!(
                "could not serialise the response: {e}"
            ))),
        }
    }

    /// An error reply: the OpenAI envelope, plus `retry-after` when the error has one.
    pub fn error(e: &ApiError) -> Reply {
        let mut r = Reply::json_bytes(e.status, e.body());
        if let Some(secs) = e.retry_after {
            r.headers.push(("retry-after".into(), secs.to_string()));
        }
        r
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.set_header(name, value);
        self
    }

    /// Sets a header, replacing any with the same name.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_ascii_lowercase(), value.into()));
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The headers as sent: everything but `content-length`, then the real `content-length`.
    pub fn wire_headers(&self) -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = self
            .headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("content-length"))
            .cloned()
            .collect();
        h.push(("content-length".into(), self.body.len().to_string()));
        h
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Reply {
        Reply::error(&e)
    }
}

/// Builds header fields, skipping any name or value the host refuses.
pub fn fields(headers: &[(String, String)]) -> Fields {
    let f = Fields::new();
    for (name, value) in headers {
        if let Err(e) = f.append(name, value.as_bytes()) {
            eprintln!("lumen: dropping response header {name}: {e:?}");
        }
    }
    f
}

/// Bodies up to this size are written into the body stream *before* the head is handed to the
/// host, so the host's HTTP stack can send head and body in one write. Written after the head,
/// a small body leaves in a second packet that Nagle's algorithm holds until the peer's delayed
/// ACK (~40 ms) on hosts that do not set `TCP_NODELAY` — stock Spin sets it on neither its
/// inbound nor its outbound sockets. The host buffers a little of a body whose head it does not
/// have yet (wasmtime: two chunks); larger bodies go after the head as before.
pub const ONE_WRITE_LIMIT: usize = 64 * 1024;

/// Sends a whole reply (with `content-length`) and ends the response: head and body in one
/// write when the body is small (see [`ONE_WRITE_LIMIT`]).
pub async fn respond(out: ResponseOutparam, reply: Reply) {
    let response = OutgoingResponse::new(fields(&reply.wire_headers()));
    // Only out-of-range codes are refused; every status used here is valid.
    let _ = response.set_status_code(reply.status);
    if reply.body.len() <= ONE_WRITE_LIMIT {
        let mut body = response.take_body();
        if !reply.body.is_empty() {
            // A failure here means the caller went away; there is no one left to tell.
            let _ = body.send(reply.body).await;
        }
        // Dropping the sink finishes the body; then the head goes, with the body behind it.
        drop(body);
        out.set(response);
    } else {
        let _ = out.set_with_body(response, reply.body).await;
    }
}

/// Starts a streamed response with its first bytes (the first event): they are written before
/// the head is handed over, so head and first event leave in one write (see
/// [`ONE_WRITE_LIMIT`]). Returns the body sink; dropping it ends the response.
pub async fn start_stream(
    out: ResponseOutparam,
    status: u16,
    headers: &[(String, String)],
    first: Vec<u8>,
) -> ResponseSink {
    let response = OutgoingResponse::new(fields(headers));
    let _ = response.set_status_code(status);
    let mut body = response.take_body();
    if first.is_empty() {
        out.set(response);
    } else if first.len() <= ONE_WRITE_LIMIT {
        let _ = body.send(first).await;
        out.set(response);
    } else {
        out.set(response);
        let _ = body.send(first).await;
    }
    Box::pin(body)
}

/// The body of a streamed response; dropping it ends the response.
pub type ResponseSink =
    std::pin::Pin<Box<dyn Sink<Vec<u8>, Error = wasi::io::streams::StreamError>>>;

/// The first value of a header, as text.
pub fn header(fields: &Fields, name: &str) -> Option<String> {
    fields
        .get(name)
        .into_iter()
        .next()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// A header of an incoming request.
pub fn request_header(req: &IncomingRequest, name: &str) -> Option<String> {
    header(&req.headers(), name)
}

/// A header of an incoming response.
pub fn response_header(resp: &IncomingResponse, name: &str) -> Option<String> {
    header(&resp.headers(), name)
}

/// Why [`collect_limited`] stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum CollectError<E> {
    /// More than the limit arrived.
    TooLarge,
    /// The stream failed.
    Failed(E),
}

/// Reads a byte stream to its end, failing as soon as more than `limit` bytes arrived.
pub async fn collect_limited<S, E>(stream: S, limit: usize) -> Result<Vec<u8>, CollectError<E>>
where
    S: Stream<Item = Result<Vec<u8>, E>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(CollectError::Failed)?;
        if out.len() + chunk.len() > limit {
            return Err(CollectError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Reads a request body of at most `limit` bytes (413 beyond).
pub async fn read_request_body(req: IncomingRequest, limit: usize) -> Result<Vec<u8>, ApiError> {
    match collect_limited(req.into_body_stream(), limit).await {
        Ok(body) => Ok(body),
        Err(CollectError::TooLarge) => Err(ApiError::payload_too_large(limit)),
        Err(CollectError::Failed(e)) => Err(ApiError::invalid_request(
            format!("could not read the request body: {e:?}"),
            None,
            "invalid_body",
        )),
    }
}

/// Reads a response body of at most `limit` bytes; the error is text for a message.
pub async fn read_response_body(resp: &IncomingResponse, limit: usize) -> Result<Vec<u8>, String> {
    match collect_limited(resp.take_body_stream(), limit).await {
        Ok(body) => Ok(body),
        Err(CollectError::TooLarge) => Err(format!("the response is larger than {limit} bytes")),
        Err(CollectError::Failed(e)) => Err(format!(
            "the connection failed while reading the response ({e:?})"
        )),
    }
}

/// A JSON `POST` request with `content-length` set.
pub fn json_post(url: &str, body: Vec<u8>) -> Request {
    let mut req = Request::new(Method::Post, url);
    req.set_header("content-type", "application/json");
    req.set_header("content-length", body.len().to_string());
    *req.body_mut() = body;
    req
}

/// Sends a request and returns the streaming answer. The body is written while the response is
/// awaited, so a refused request reports the host's error code (e.g. `HttpRequestDenied`)
/// instead of the closed body stream that `spin_sdk::http::send` reports when it writes a
/// buffered body before looking at the response.
pub async fn send_request(req: Request) -> Result<IncomingResponse, SendError> {
    let (outgoing, body) = req
        .try_into_outgoing_request()
        .map_err(|e| SendError::RequestConversion(e.into()))?;
    let mut sink = outgoing.take_body();
    // A small body is written and finished before the request is handed to the host, so head
    // and body leave in one write (see [`ONE_WRITE_LIMIT`]); the host holds it until it sends.
    if body.as_ref().is_none_or(|b| b.len() <= ONE_WRITE_LIMIT) {
        let written = match body {
            Some(bytes) if !bytes.is_empty() => sink.send(bytes).await,
            _ => Ok(()),
        };
        drop(sink);
        return match (
            spin_sdk::http::send::<_, IncomingResponse>(outgoing).await,
            written,
        ) {
            (Ok(resp), _) => Ok(resp),
            (Err(SendError::Io(_)), Err(e)) => Err(SendError::Io(e)),
            (Err(e), _) => Err(e),
        };
    }
    let response = spin_sdk::http::send::<_, IncomingResponse>(outgoing);
    let write = async move {
        let written = match body {
            Some(bytes) if !bytes.is_empty() => sink.send(bytes).await,
            _ => Ok(()),
        };
        // Dropping the sink finishes the body.
        drop(sink);
        written
    };
    let (response, written) = futures::join!(response, write);
    match (response, written) {
        (Ok(resp), _) => Ok(resp),
        (Err(SendError::Io(_)), Err(e)) => Err(SendError::Io(e)),
        (Err(e), _) => Err(e),
    }
}

/// `POST`s a JSON body to an internal route and returns the streaming answer.
pub async fn post_streaming(
    what: &str,
    url: &str,
    body: Vec<u8>,
) -> Result<IncomingResponse, ApiError> {
    send_request(json_post(url, body))
        .await
        .map_err(|e| unreachable_component(what, &e))
}

fn unreachable_component(what: &str, e: &dyn std::fmt::Display) -> ApiError {
    let mut err = ApiError::internal(format!("could not reach the {what} component: {e}"));
    err.status = 502;
    err
}

/// Calls an internal route and decodes its JSON answer, or its error envelope into an
/// [`ApiError`] with the same status.
pub async fn call_json<R: DeserializeOwned>(
    what: &str,
    method: Method,
    url: &str,
    body: Option<Vec<u8>>,
) -> Result<R, ApiError> {
    let req = match body {
        Some(body) => json_post(url, body),
        None => Request::new(method, url),
    };
    let resp: Response = spin_sdk::http::send(req)
        .await
        .map_err(|e| unreachable_component(what, &e))?;
    let status = *resp.status();
    if (200..300).contains(&status) {
        return serde_json::from_slice(resp.body()).map_err(|e| {
            ApiError::internal(format!(
                "the {what} component answered with an unexpected body: {e}"
            ))
        });
    }
    let retry_after = resp
        .header("retry-after")
        .and_then(|v| v.as_str())
        .and_then(parse_retry_after);
    Err(api_error_from_wire(
        &format!("the {what} component"),
        status,
        resp.body(),
        retry_after,
    ))
}

/// `POST`s a value as JSON to an internal route and decodes the JSON answer.
pub async fn post_json<T: Serialize + ?Sized, R: DeserializeOwned>(
    what: &str,
    url: &str,
    value: &T,
) -> Result<R, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| {
        ApiError::internal(format!(
            "could not serialise a request to the {what} component: {e}"
        ))
    })?;
    call_json(what, Method::Post, url, Some(body)).await
}

/// `GET`s an internal route and decodes the JSON answer.
pub async fn get_json<R: DeserializeOwned>(what: &str, url: &str) -> Result<R, ApiError> {
    call_json(what, Method::Get, url, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_carry_content_length_and_retry_after() {
        let r = Reply::error(&ApiError::rate_limited("slow", 12)).with_header("X-Lumen-Model", "m");
        let h = r.wire_headers();
        assert!(h.contains(&("content-type".into(), "application/json".into())));
        assert!(h.contains(&("retry-after".into(), "12".into())));
        assert!(h.contains(&("x-lumen-model".into(), "m".into())));
        assert_eq!(
            h.last().unwrap(),
            &("content-length".to_string(), r.body.len().to_string())
        );
        let mut r =
            Reply::json(200, &serde_json::json!({"a": 1})).with_header("content-length", "999");
        r.set_header("x-a", "1");
        r.set_header("X-A", "2");
        assert_eq!(r.header("x-a"), Some("2"));
        let lens: Vec<_> = r
            .wire_headers()
            .into_iter()
            .filter(|(n, _)| n == "content-length")
            .collect();
        assert_eq!(lens, vec![("content-length".to_string(), "7".to_string())]);
    }

    #[test]
    fn collect_respects_the_limit() {
        let ok = futures::stream::iter(vec![Ok::<_, ()>(vec![1, 2]), Ok(vec![3])]);
        assert_eq!(
            futures::executor::block_on(collect_limited(ok, 3)),
            Ok(vec![1, 2, 3])
        );
        let big = futures::stream::iter(vec![Ok::<_, ()>(vec![1, 2]), Ok(vec![3, 4])]);
        assert_eq!(
            futures::executor::block_on(collect_limited(big, 3)),
            Err(CollectError::TooLarge)
        );
        let bad = futures::stream::iter(vec![Ok(vec![1]), Err("boom")]);
        assert_eq!(
            futures::executor::block_on(collect_limited(bad, 3)),
            Err(CollectError::Failed("boom"))
        );
    }
}
