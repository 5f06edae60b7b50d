//! Deadlines for a single-request component: a [`Sleep`] future on `wasi:clocks/monotonic-clock`
//! (the WASI 0.2.0 bindings and executor spin-sdk itself uses), so waiting on an upstream body
//! can race a timer in spin-sdk's executor ([`within`]).

use futures::future::{select, Either};
use spin_executor::CancelOnDropToken;
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use wasi::clocks::monotonic_clock;

/// Nanoseconds on the monotonic clock.
pub fn now_ns() -> u64 {
    monotonic_clock::now()
}

/// The monotonic instant `ms` from now.
pub fn after_ms(ms: u64) -> u64 {
    now_ns().saturating_add(ms.saturating_mul(1_000_000))
}

/// Resolves at a monotonic instant.
pub struct Sleep {
    until_ns: u64,
    token: Option<CancelOnDropToken>,
}

/// A future that resolves at `until_ns` (see [`after_ms`]).
pub fn sleep_until(until_ns: u64) -> Sleep {
    Sleep {
        until_ns,
        token: None,
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if monotonic_clock::now() >= self.until_ns {
            self.token = None;
            return Poll::Ready(());
        }
        let pollable = monotonic_clock::subscribe_instant(self.until_ns);
        // Replacing the token cancels the previous registration.
        self.token =
            Some(spin_executor::push_waker_and_get_token(pollable, cx.waker().clone()).into());
        Poll::Pending
    }
}

/// `f`'s output, or `None` when the monotonic instant `until_ns` comes first (`f` is dropped).
pub async fn within<F: Future>(until_ns: u64, f: F) -> Option<F::Output> {
    let f = pin!(f);
    let timer = pin!(sleep_until(until_ns));
    match select(f, timer).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}
