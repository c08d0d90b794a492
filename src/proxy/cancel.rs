//! Waiting for a [`CancellationToken`] inside a `select!` that every I/O event of a
//! connection wakes.
//!
//! `token.cancelled()` re-registers its waker on each poll, taking the token's waiter lock
//! every time: a few hundred instructions per wake of a busy relay or keep-alive
//! connection, for a signal that fires once in the connection's life. Even
//! `token.is_cancelled()` takes the token's lock. [`cancelled`] registers once, on its first
//! poll, with a waker of its own that notes that the token woke it before it wakes the task;
//! afterwards a poll reads that note, one atomic load, and looks at the token only once
//! the token has woken it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Completes when `token` is cancelled. Must be polled from one task for its whole life
/// (as a `select!` branch is): the waker of its first poll is the one woken.
pub fn cancelled(token: &CancellationToken) -> Cancelled<'_> {
    Cancelled {
        token,
        wait: token.cancelled(),
        woken: None,
    }
}

/// The waker registered with the token: notes the wake, then wakes the task.
struct Noted {
    woken: AtomicBool,
    task: Waker,
}

impl Wake for Noted {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

pin_project_lite::pin_project! {
    /// The future of [`cancelled`]. The token's waiter lives inside it, not in a box of its
    /// own: a parked connection waits on a token for as long as it is open.
    pub struct Cancelled<'a> {
        token: &'a CancellationToken,
        #[pin]
        wait: WaitForCancellationFuture<'a>,
        // Set on the first poll: the waker the token wakes.
        woken: Option<Arc<Noted>>,
    }
}

impl Future for Cancelled<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let noted = match this.woken {
            // The token only ever wakes its waiters to say it was cancelled.
            Some(n) if !n.woken.load(Ordering::Acquire) => return Poll::Pending,
            Some(n) => {
                // Polled again below, which registers this waker anew if it is not over.
                n.woken.store(false, Ordering::Relaxed);
                n
            }
            None => this.woken.insert(Arc::new(Noted {
                woken: AtomicBool::new(false),
                task: cx.waker().clone(),
            })),
        };
        let waker = Waker::from(noted.clone());
        this.wait.poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn fires_after_registering_once_while_other_branches_keep_waking() {
        let token = CancellationToken::new();
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            t.cancel();
        });
        let wait = cancelled(&token);
        tokio::pin!(wait);
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                _ = &mut wait => break,
                _ = tokio::time::sleep(Duration::from_millis(1)) => ticks += 1,
            }
            assert!(ticks < 10_000, "never fired");
        }
        assert!(token.is_cancelled());
    }

    #[tokio::test]
    async fn an_already_cancelled_token_is_ready_at_once() {
        let token = CancellationToken::new();
        token.cancel();
        cancelled(&token).await;
    }
}
