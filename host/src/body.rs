//! Request bodies as the host hands them to components: read within a time budget that grows
//! with the bytes received (slow-body clients get `408`), and, when a component answered without
//! reading the whole body (a 413, a 401, a refusal), drained in the background within bounds so
//! that a client that does not send `Expect: 100-continue` can finish writing and read the
//! answer instead of a broken pipe.

use crate::conn_io::BusyGuard;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The bounds a body is read and drained within.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Grace before the minimum rate applies.
    pub timeout: Duration,
    /// Bytes per second the body must average beyond `timeout`.
    pub min_rate: u64,
    /// Most bytes discarded when draining an unread body.
    pub drain_max_bytes: u64,
    /// Longest drain.
    pub drain_timeout: Duration,
}

impl BodyLimits {
    /// The limits of `limits`.
    pub fn of(limits: &crate::limits::Limits) -> Self {
        Self {
            timeout: limits.body_timeout,
            min_rate: limits.body_min_rate.max(1),
            drain_max_bytes: limits.drain_max_bytes,
            drain_timeout: limits.drain_timeout,
        }
    }

    /// When a body that started at `start` and has delivered `received` bytes is late.
    fn deadline(&self, start: Instant, received: u64) -> Instant {
        let earned = Duration::from_secs_f64(received as f64 / self.min_rate as f64);
        start + self.timeout + earned.min(Duration::from_secs(86_400))
    }
}

/// What the server learns from a request's body after the component is done with it.
#[derive(Debug, Default)]
pub struct BodyOutcome {
    timed_out: AtomicBool,
}

impl BodyOutcome {
    /// The client sent the body too slowly and the component was told so.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Acquire)
    }
}

/// A request body read under [`BodyLimits`]; drained on drop when left unread.
pub struct GuardedBody {
    inner: Option<Incoming>,
    limits: BodyLimits,
    start: Instant,
    received: u64,
    done: bool,
    sleep: Option<Pin<Box<Sleep>>>,
    outcome: Arc<BodyOutcome>,
    /// Keeps the connection's request in progress while the body is still arriving.
    busy: Option<BusyGuard>,
    /// The client waits for `100 Continue` before sending the body; hyper sends it on the
    /// first read, so a body nobody read is not drained (that would ask for it).
    expect_continue: bool,
    polled: bool,
}

impl GuardedBody {
    /// Wraps `inner`, whose head arrived now; `busy` is released when the body is done.
    pub fn new(
        inner: Incoming,
        limits: BodyLimits,
        busy: Option<BusyGuard>,
        expect_continue: bool,
    ) -> (Self, Arc<BodyOutcome>) {
        let outcome = Arc::new(BodyOutcome::default());
        (
            Self {
                inner: Some(inner),
                limits,
                start: Instant::now(),
                received: 0,
                done: false,
                sleep: None,
                outcome: outcome.clone(),
                busy,
                expect_continue,
                polled: false,
            },
            outcome,
        )
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        this.polled = true;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                this.busy = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.done = true;
                this.busy = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                // Only a body we are waiting for can be late.
                let deadline = this.limits.deadline(this.start, this.received);
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // Too slow: stop reading (hyper closes the connection after the answer, which
                // the server turns into a 408) and tell the component.
                this.outcome.timed_out.store(true, Ordering::Release);
                this.inner = None;
                this.done = true;
                this.busy = None;
                Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let never_asked_for = self.expect_continue && !self.polled;
            if !self.done && !never_asked_for && !inner.is_end_stream() {
                drain_in_background(inner, self.limits, self.busy.take());
            }
        }
    }
}

/// Drains `body` in the background within `limits`: read and discard up to
/// `drain_max_bytes` for up to `drain_timeout`, then drop it (hyper then closes the
/// connection if the body is still unfinished).
pub fn drain_in_background<B>(body: B, limits: BodyLimits, busy: Option<BusyGuard>)
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
{
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        use http_body_util::BodyExt;
        let mut body = body;
        let mut drained = 0u64;
        let _ = tokio::time::timeout(limits.drain_timeout, async {
            while drained <= limits.drain_max_bytes {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        drained += frame.data_ref().map_or(0, |d| d.len() as u64);
                    }
                    _ => break,
                }
            }
        })
        .await;
        drop(busy);
    });
}
