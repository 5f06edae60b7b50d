//! Outbound HTTP to the network with pooled keep-alive connections (HTTP/1.1, TLS by rustls
//! with the webpki roots), as Spin pools outbound connections. Reusing a connection saves the
//! TCP (and TLS) handshake on every upstream call.

use http_body_util::BodyExt;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// Idle pooled connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// Connect timeout when the guest sets none.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A shared client; cheap to clone.
#[derive(Clone)]
pub struct OutboundHttp {
    client: Client<HttpsConnector<HttpConnector>, WasiBody>,
}

impl OutboundHttp {
    /// A client with an empty pool.
    pub fn new() -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(DEFAULT_CONNECT_TIMEOUT));
        let connector = HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(256)
            .build(connector);
        Self { client }
    }

    /// Sends a request; `first_byte_timeout` from the guest's options bounds the wait for the
    /// response head.
    pub async fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<http::Response<WasiBody>, Error> {
        let fut = self.client.request(request);
        let resp = match options.and_then(|o| o.first_byte_timeout) {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| Error::ConnectionReadTimeout)?,
            None => fut.await,
        }
        .map_err(classify)?;
        Ok(resp.map(|b| b.map_err(Error::from).boxed_unsync()))
    }
}

thread_local! {
    static THIS_THREAD: OutboundHttp = OutboundHttp::new();
}

impl OutboundHttp {
    /// This thread's client. Each serving thread has its own pool, so an upstream connection
    /// is driven by the thread whose requests use it (the connection's task runs on the
    /// runtime that opened it) and a request never waits on another thread to send.
    pub fn this_thread() -> Self {
        THIS_THREAD.with(Clone::clone)
    }
}

impl Default for OutboundHttp {
    fn default() -> Self {
        Self::new()
    }
}

fn classify(e: hyper_util::client::legacy::Error) -> Error {
    if e.is_connect() {
        let text = format!("{e:?}");
        if text.contains("dns error") || text.contains("failed to lookup") {
            return Error::DnsError {
                rcode: Some(text),
                info_code: None,
            };
        }
        return Error::ConnectionRefused;
    }
    eprintln!("lumen-host: outbound request failed: {e:?}");
    Error::HttpProtocolError
}
