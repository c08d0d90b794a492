//! Waiting for a [`CancellationToken`] inside a `select!` that every I/O event of a
//! connection wakes.
//!
//! `token.cancelled()` re-registers its waker on each poll, taking the token's waiter lock
//! every time: a few hundred instructions per wake of a busy relay or keep-alive
//! connection, for a signal that fires once in the connection's life. [`cancelled`]
//! registers once, on its first poll, and afterwards only asks `is_cancelled` (which takes
//! the token's node lock, but registers nothing): the waker it registered belongs to the
//! task that polls it, which is woken when the token fires whichever branch of its
//! `select!` it happens to be in. (Noting the wake in a waker of its own, to skip even that
//! lock, saved 24–73 instructions per request and nothing on the wall clock for one token;
//! an L4 relay polls two on every wake, and [`first_of`] does this for them.)

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Completes when `token` is cancelled. Must be polled from one task for its whole life
/// (as a `select!` branch is): the waker of its first poll is the one woken.
pub fn cancelled(token: &CancellationToken) -> Cancelled<'_> {
    Cancelled {
        token,
        wait: token.cancelled(),
        registered: false,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`cancelled`]. The waiter lives inside it, not in a box of its own: a
    /// parked connection waits on a token for as long as it is open, and an allocation per
    /// waiter would cost more than the waiter's own 72 bytes.
    pub struct Cancelled<'a> {
        token: &'a CancellationToken,
        #[pin]
        wait: WaitForCancellationFuture<'a>,
        registered: bool,
    }
}

impl Future for Cancelled<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.token.is_cancelled() {
            return Poll::Ready(());
        }
        if !*this.registered {
            *this.registered = true;
            return this.wait.poll(cx);
        }
        Poll::Pending
    }
}

/// Which of [`first_of`]'s two tokens fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// The first.
    First,
    /// The second.
    Second,
}

/// Completes when either token is cancelled, with which one (the first when both are).
/// Must be polled from one task for its whole life, as [`cancelled`].
///
/// For a relay, whose every wake polls both of its stops: [`cancelled`] would take each
/// token's node lock on every poll (`is_cancelled`), two locks per wake and about 150
/// instructions of a small L4 request's 3.2k. This registers a waker of its own with both
/// tokens on its first poll; a token that fires marks it and wakes the task, and every other
/// poll reads that mark, one atomic load. Its cost is one allocation per relay.
pub fn first_of<'a>(first: &'a CancellationToken, second: &'a CancellationToken) -> FirstOf<'a> {
    FirstOf {
        first,
        second,
        first_wait: first.cancelled(),
        second_wait: second.cancelled(),
        mark: None,
    }
}

/// A mark that a waker of its own sets, and the task that waker then wakes: how a future
/// polled on every wake of its task learns, with one atomic load, that one particular
/// source woke it (a token that fired, a client socket that stirred).
#[derive(Default)]
pub(crate) struct Mark {
    set: AtomicBool,
    task: AtomicWaker,
}

impl Mark {
    /// The task a wake of the mark wakes.
    pub(crate) fn register(&self, task: &Waker) {
        self.task.register(task);
    }

    /// Whether the mark was set since it was last taken; clears it. A load first, which is
    /// all an unmarked poll pays; then a swap, so a wake from another thread that lands in
    /// between is not lost.
    pub(crate) fn take(&self) -> bool {
        self.set.load(Ordering::Acquire) && self.set.swap(false, Ordering::AcqRel)
    }
}

impl Wake for Mark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.set.store(true, Ordering::Release);
        self.task.wake();
    }
}

pin_project_lite::pin_project! {
    /// The future of [`first_of`].
    pub struct FirstOf<'a> {
        first: &'a CancellationToken,
        second: &'a CancellationToken,
        #[pin]
        first_wait: WaitForCancellationFuture<'a>,
        #[pin]
        second_wait: WaitForCancellationFuture<'a>,
        mark: Option<(Arc<Mark>, Waker)>,
    }
}

impl FirstOf<'_> {
    /// The token that has fired, if one has (takes each token's lock).
    fn fired(&self) -> Option<Which> {
        if self.first.is_cancelled() {
            Some(Which::First)
        } else if self.second.is_cancelled() {
            Some(Which::Second)
        } else {
            None
        }
    }
}

impl Future for FirstOf<'_> {
    type Output = Which;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Which> {
        if let Some((mark, _)) = &self.mark {
            if !mark.take() {
                return Poll::Pending;
            }
        } else {
            let mark = Arc::new(Mark::default());
            mark.register(cx.waker());
            let waker = Waker::from(mark.clone());
            *self.as_mut().project().mark = Some((mark, waker));
        }
        if let Some(which) = self.fired() {
            return Poll::Ready(which);
        }
        // First poll, or a wake without a token cancelled (none is expected): (re)register
        // the mark's waker with both tokens.
        let this = self.project();
        let waker = &this.mark.as_ref().expect("set above").1;
        let mut own = Context::from_waker(waker);
        if this.first_wait.poll(&mut own).is_ready() {
            return Poll::Ready(Which::First);
        }
        if this.second_wait.poll(&mut own).is_ready() {
            return Poll::Ready(Which::Second);
        }
        Poll::Pending
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

    /// Woken flag for polling by hand.
    struct Noted(AtomicBool);

    impl Wake for Noted {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// Polls `first_of(a, b)` by hand with a waker of the test's own, cancels one of them,
    /// and checks that the task's waker was woken and the future then says which.
    fn fire_one(which: Which) {
        let (a, b) = (CancellationToken::new(), CancellationToken::new());
        let noted = Arc::new(Noted(AtomicBool::new(false)));
        let waker = Waker::from(noted.clone());
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(first_of(&a, &b));
        assert!(f.as_mut().poll(&mut cx).is_pending());
        // Polls without a firing stay pending, and wake nothing.
        assert!(f.as_mut().poll(&mut cx).is_pending());
        assert!(!noted.0.load(Ordering::SeqCst));
        match which {
            Which::First => a.cancel(),
            Which::Second => b.cancel(),
        }
        assert!(noted.0.load(Ordering::SeqCst), "the task was not woken");
        assert_eq!(f.as_mut().poll(&mut cx), Poll::Ready(which));
    }

    #[test]
    fn first_of_wakes_the_task_and_says_which_token_fired() {
        fire_one(Which::First);
        fire_one(Which::Second);
    }

    #[tokio::test]
    async fn first_of_is_ready_at_once_for_a_cancelled_token_and_takes_one_token_twice() {
        // A lost wake-up fails the test rather than hanging it.
        let within = |f| tokio::time::timeout(std::time::Duration::from_secs(30), f);
        let (a, b) = (CancellationToken::new(), CancellationToken::new());
        b.cancel();
        assert_eq!(within(first_of(&a, &b)).await, Ok(Which::Second));
        a.cancel();
        assert_eq!(within(first_of(&a, &b)).await, Ok(Which::First));

        let t = CancellationToken::new();
        let c = t.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            c.cancel();
        });
        assert_eq!(within(first_of(&t, &t)).await, Ok(Which::First));
    }
}
