//! An answer handed from one component to another in the same instance graph: the producer
//! (the provider's call) writes a head and body pieces into an [`Out`]; the consumer (auth)
//! holds an [`Answer`] and pulls them. The producer is a future the answer drives only while the
//! consumer asks for the next piece, so a slow client slows the upstream read down (the channel
//! holds a few pieces) and nothing is buffered whole.
//!
//! The pulling is synchronous (a component call), so the answer drives its producer with a
//! blocking runner: `spin_executor::run` in the component, `futures::executor::block_on` in
//! native unit tests.

use crate::http::Reply;
use futures::channel::{mpsc, oneshot};
use futures::future::{self, Either, LocalBoxFuture};
use futures::{FutureExt, SinkExt, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Body pieces buffered between producer and consumer before the producer waits.
const BUFFERED_PIECES: usize = 4;

/// Status and headers of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// HTTP status.
    pub status: u16,
    /// Headers, lowercase names.
    pub headers: Vec<(String, String)>,
}

/// The producer's end.
pub struct Out {
    head: oneshot::Sender<Head>,
    body: mpsc::Sender<Vec<u8>>,
}

/// The producer's body sink; dropping it ends the body. Sending fails once the consumer is gone.
pub type BodySink = mpsc::Sender<Vec<u8>>;

impl Out {
    /// An `Out` whose head and body another future of the same instance reads, to pass the
    /// answer on changed (fusion adds its report to the synthesizer's answer this way).
    pub fn channel() -> (Out, oneshot::Receiver<Head>, mpsc::Receiver<Vec<u8>>) {
        let (head_tx, head_rx) = oneshot::channel();
        let (body_tx, body_rx) = mpsc::channel(BUFFERED_PIECES);
        (
            Out {
                head: head_tx,
                body: body_tx,
            },
            head_rx,
            body_rx,
        )
    }

    /// Sends a whole reply (with `content-length`) and ends the body.
    pub async fn respond(self, reply: Reply) {
        let headers = reply.wire_headers();
        let mut sink = self.start_stream(reply.status, &headers);
        if !reply.body.is_empty() {
            // A failure means the consumer went away; there is no one left to tell.
            let _ = sink.send(reply.body).await;
        }
    }

    /// Sends status and headers and returns the body sink.
    pub fn start_stream(self, status: u16, headers: &[(String, String)]) -> BodySink {
        let head = Head {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                .collect(),
        };
        let _ = self.head.send(head);
        self.body
    }
}

/// A blocking runner: drives a future to completion.
pub type Runner = fn(LocalBoxFuture<'_, ()>);

/// What [`Answer::poll_piece`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Polled {
    /// The next piece.
    Piece(Vec<u8>),
    /// Nothing without waiting.
    Pending,
    /// The body has ended.
    End,
}

/// The consumer's end.
pub struct Answer {
    head: Head,
    body: Option<mpsc::Receiver<Vec<u8>>>,
    producer: Option<LocalBoxFuture<'static, ()>>,
    run: Runner,
}

/// Polls the receiver first, then the producer, so a piece the producer just sent is taken at
/// once and the producer only runs when nothing is waiting.
struct NextPiece<'a> {
    body: &'a mut mpsc::Receiver<Vec<u8>>,
    producer: &'a mut Option<LocalBoxFuture<'static, ()>>,
}

impl Future for NextPiece<'_> {
    type Output = Option<Vec<u8>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
        loop {
            if let Poll::Ready(piece) = self.body.poll_next_unpin(cx) {
                // `None`: every sender is gone, the body has ended.
                return Poll::Ready(piece);
            }
            match self.producer.as_mut() {
                None => return Poll::Ready(None),
                Some(p) => match p.poll_unpin(cx) {
                    Poll::Ready(()) => *self.producer = None,
                    Poll::Pending => {
                        return match self.body.poll_next_unpin(cx) {
                            Poll::Ready(piece) => Poll::Ready(piece),
                            Poll::Pending => Poll::Pending,
                        }
                    }
                },
            }
        }
    }
}

impl Answer {
    /// Starts `produce` and drives it until it has sent its head. A producer that ends without
    /// a head answers 500 naming `what`.
    pub fn start<F, Fut>(what: &str, run: Runner, produce: F) -> Answer
    where
        F: FnOnce(Out) -> Fut,
        Fut: Future<Output = ()> + 'static,
    {
        let (head_tx, mut head_rx) = oneshot::channel();
        let (body_tx, body_rx) = mpsc::channel(BUFFERED_PIECES);
        let mut producer: Option<LocalBoxFuture<'static, ()>> = Some(
            produce(Out {
                head: head_tx,
                body: body_tx,
            })
            .boxed_local(),
        );
        let mut head = None;
        run(futures::future::poll_fn(|cx| loop {
            if let Poll::Ready(h) = head_rx.poll_unpin(cx) {
                head = h.ok();
                return Poll::Ready(());
            }
            match producer.as_mut() {
                None => return Poll::Ready(()),
                Some(p) => match p.poll_unpin(cx) {
                    Poll::Ready(()) => producer = None,
                    Poll::Pending => {
                        if let Poll::Ready(h) = head_rx.poll_unpin(cx) {
                            head = h.ok();
                            return Poll::Ready(());
                        }
                        return Poll::Pending;
                    }
                },
            }
        })
        .boxed_local());
        let head = head.unwrap_or_else(|| {
            let reply = Reply::error(&lumen_shared::ApiError::internal(format!(
                "the {what} component ended without an answer"
            )));
            Head {
                status: reply.status,
                headers: reply.wire_headers(),
            }
        });
        Answer {
            head,
            body: Some(body_rx),
            producer,
            run,
        }
    }

    /// The head.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// The next body piece, or `None` at the end.
    pub fn next_piece(&mut self) -> Option<Vec<u8>> {
        match self.poll_piece(future::pending()) {
            Polled::Piece(piece) => Some(piece),
            // A deadline that never comes: only the end stops the wait.
            Polled::Pending | Polled::End => None,
        }
    }

    /// The next body piece if it comes before `deadline` resolves; a deadline that is already
    /// due takes only what the producer has at once (it runs until it would wait).
    pub fn poll_piece<D: Future<Output = ()>>(&mut self, deadline: D) -> Polled {
        let Some(body) = self.body.as_mut() else {
            return Polled::End;
        };
        let mut got = None;
        let producer = &mut self.producer;
        (self.run)(
            async {
                let next = NextPiece { body, producer };
                let deadline = std::pin::pin!(deadline);
                if let Either::Left((piece, _)) = future::select(next, deadline).await {
                    got = Some(piece);
                }
            }
            .boxed_local(),
        );
        match got {
            Some(Some(piece)) => Polled::Piece(piece),
            Some(None) => {
                self.body = None;
                Polled::End
            }
            None => Polled::Pending,
        }
    }

    /// Stops taking pieces and lets the producer finish what it does after its answer (it sees
    /// its sink closed).
    pub fn finish(&mut self) {
        if let Some(mut body) = self.body.take() {
            body.close();
        }
        if let Some(p) = self.producer.take() {
            (self.run)(p);
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The runner inside a component: spin-sdk's executor, which polls the host's pollables.
#[cfg(target_arch = "wasm32")]
pub fn spin_runner(f: LocalBoxFuture<'_, ()>) {
    spin_executor::run(f)
}

/// Natively — the components' unit tests — there is no host to poll: block on the future.
#[cfg(not(target_arch = "wasm32"))]
pub fn spin_runner(f: LocalBoxFuture<'_, ()>) {
    futures::executor::block_on(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn block(f: LocalBoxFuture<'_, ()>) {
        futures::executor::block_on(f);
    }

    #[test]
    fn head_then_pieces_then_end() {
        let mut a = Answer::start("provider", block, |out: Out| async move {
            let mut sink = out.start_stream(200, &[("Content-Type".into(), "text/x".into())]);
            for i in 0..10u8 {
                sink.send(vec![i]).await.unwrap();
            }
        });
        assert_eq!(a.head().status, 200);
        assert_eq!(
            a.head().headers,
            vec![("content-type".to_string(), "text/x".to_string())]
        );
        let mut got = Vec::new();
        while let Some(p) = a.next_piece() {
            got.extend(p);
        }
        assert_eq!(got, (0..10).collect::<Vec<u8>>());
        assert_eq!(a.next_piece(), None);
    }

    #[test]
    fn polling_takes_what_is_there_and_never_waits() {
        let (go, wait) = oneshot::channel::<()>();
        let mut a = Answer::start("provider", block, move |out: Out| async move {
            let mut sink = out.start_stream(200, &[]);
            // More than the channel holds: the producer runs again as pieces are taken.
            for i in 0..10u8 {
                sink.send(vec![i]).await.unwrap();
            }
            let _ = wait.await;
            sink.send(vec![10]).await.unwrap();
        });
        for i in 0..10u8 {
            assert_eq!(a.poll_piece(future::ready(())), Polled::Piece(vec![i]));
        }
        assert_eq!(a.poll_piece(future::ready(())), Polled::Pending);
        assert_eq!(a.poll_piece(future::ready(())), Polled::Pending);
        go.send(()).unwrap();
        assert_eq!(a.poll_piece(future::ready(())), Polled::Piece(vec![10]));
        assert_eq!(a.poll_piece(future::ready(())), Polled::End);
        assert_eq!(a.poll_piece(future::ready(())), Polled::End);
        assert_eq!(a.next_piece(), None);
    }

    #[test]
    fn waiting_after_polling_gets_the_rest() {
        let (go, wait) = oneshot::channel::<()>();
        let mut a = Answer::start("provider", block, move |out: Out| async move {
            let mut sink = out.start_stream(200, &[]);
            sink.send(vec![0]).await.unwrap();
            let _ = wait.await;
            sink.send(vec![1]).await.unwrap();
        });
        assert_eq!(a.poll_piece(future::ready(())), Polled::Piece(vec![0]));
        assert_eq!(a.poll_piece(future::ready(())), Polled::Pending);
        go.send(()).unwrap();
        assert_eq!(a.next_piece(), Some(vec![1]));
        assert_eq!(a.next_piece(), None);
    }

    #[test]
    fn a_whole_reply_carries_its_length() {
        let mut a = Answer::start("provider", block, |out: Out| async move {
            out.respond(Reply::json_bytes(201, b"{}".to_vec())).await;
        });
        assert_eq!(a.head().status, 201);
        assert!(a
            .head()
            .headers
            .contains(&("content-length".to_string(), "2".to_string())));
        assert_eq!(a.next_piece(), Some(b"{}".to_vec()));
        assert_eq!(a.next_piece(), None);
    }

    #[test]
    fn a_producer_without_a_head_is_a_500() {
        let mut a = Answer::start("provider", block, |_out: Out| async move {});
        assert_eq!(a.head().status, 500);
        assert_eq!(a.next_piece(), None);
    }

    #[test]
    fn dropping_the_answer_lets_the_producer_finish_with_a_closed_sink() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let l = log.clone();
        let a = Answer::start("provider", block, move |out: Out| async move {
            let mut sink = out.start_stream(200, &[]);
            let mut sent = 0;
            for i in 0..100u8 {
                if sink.send(vec![i]).await.is_err() {
                    break;
                }
                sent += 1;
            }
            l.borrow_mut()
                .push(format!("sent {sent}, then recorded health"));
        });
        drop(a);
        let log = log.borrow();
        assert_eq!(log.len(), 1);
        assert!(log[0].ends_with("then recorded health"), "{}", log[0]);
        // The channel holds a few pieces; the rest were refused.
        let sent: usize = log[0]
            .split_whitespace()
            .nth(1)
            .unwrap()
            .trim_end_matches(',')
            .parse()
            .unwrap();
        assert!(sent < 100, "{sent}");
    }
}
