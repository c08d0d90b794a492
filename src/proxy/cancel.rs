//! Waiting for a stop (a [`CancellationToken`] or a [`Signal`]) inside a `select!` that
//! every I/O event of a connection wakes.
//!
//! `token.cancelled()` re-registers its waker on each poll, taking the token's waiter lock
//! every time: a few hundred instructions per wake of a busy relay or keep-alive
//! connection, for a signal that fires once in the connection's life. [`cancelled`]
//! registers once, on its first poll, and afterwards only asks whether the stop has fired:
//! the waker it registered belongs to the task that polls it, which is woken when the stop
//! fires whichever branch of its `select!` it happens to be in. (Noting the wake in a waker
//! of its own, to skip even that question, saved 24–73 instructions per request and nothing
//! on the wall clock for one token; an L4 relay polls two on every wake, and [`first_of`]
//! does this for them.)
//!
//! A listener's drain and hard stop are [`Signal`]s, which every connection asks on every
//! wake: asking a token takes its lock, asking a signal is one atomic load.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Something a task can wait on to stop: it fires once and stays fired.
pub trait Stop {
    /// The future of [`Stop::wait`].
    type Wait<'a>: Future<Output = ()>
    where
        Self: 'a;
    /// Whether it has fired.
    fn fired(&self) -> bool;
    /// Completes once it has fired: at once if it already has, else when it fires, as
    /// long as the future was built before that (polled or not).
    fn wait(&self) -> Self::Wait<'_>;
}

impl Stop for CancellationToken {
    type Wait<'a> = WaitForCancellationFuture<'a>;

    fn fired(&self) -> bool {
        self.is_cancelled()
    }

    fn wait(&self) -> WaitForCancellationFuture<'_> {
        self.cancelled()
    }
}

/// A stop fired once, from any thread, and waited on by many tasks: a listener's drain or
/// hard stop for the connections of one worker.
///
/// What a connection does with its listener's stops is share them, ask them on every wake,
/// and wait on them once; a [`CancellationToken`] takes its lock for each of the three (and
/// keeps a tree of children this does not need). Here sharing is the owner's reference
/// count, asking is one atomic load, and only the wait takes a lock: that of the
/// [`Notify`] its waiters register with.
#[derive(Default)]
pub struct Signal {
    fired: AtomicBool,
    waiters: Notify,
}

impl Signal {
    /// Fires the signal and wakes every task waiting on it; a second call does nothing.
    pub fn fire(&self) {
        // Set before the waiters are woken, so a woken task finds it set; a wait built
        // after `notify_waiters` finds it set instead of waiting for a second call.
        if !self.fired.swap(true, Ordering::SeqCst) {
            self.waiters.notify_waiters();
        }
    }
}

impl Stop for Signal {
    type Wait<'a> = SignalWait<'a>;

    fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    fn wait(&self) -> SignalWait<'_> {
        SignalWait {
            signal: self,
            notified: self.waiters.notified(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Signal`]'s [`Stop::wait`].
    pub struct SignalWait<'a> {
        signal: &'a Signal,
        // Built with the future: `notify_waiters` wakes it from then on, polled or not.
        #[pin]
        notified: Notified<'a>,
    }
}

impl Future for SignalWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.signal.fired() {
            return Poll::Ready(());
        }
        this.notified.poll(cx)
    }
}

/// Completes when `stop` fires. Must be polled from one task for its whole life (as a
/// `select!` branch is): the waker of its first poll is the one woken.
pub fn cancelled<S: Stop>(stop: &S) -> Cancelled<'_, S> {
    Cancelled {
        stop,
        wait: stop.wait(),
        registered: false,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`cancelled`]. The waiter lives inside it, not in a box of its own: a
    /// parked connection waits on a stop for as long as it is open, and an allocation per
    /// waiter would cost more than the waiter itself.
    pub struct Cancelled<'a, S: Stop> {
        stop: &'a S,
        #[pin]
        wait: S::Wait<'a>,
        registered: bool,
    }
}

impl<S: Stop> Future for Cancelled<'_, S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.stop.fired() {
            return Poll::Ready(());
        }
        if !*this.registered {
            *this.registered = true;
            return this.wait.poll(cx);
        }
        Poll::Pending
    }
}

/// Which of [`first_of`]'s two stops fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// The first.
    First,
    /// The second.
    Second,
}

/// Completes when either stop fires, with which one (the first when both have).
/// Must be polled from one task for its whole life, as [`cancelled`].
///
/// For a relay, whose every wake polls both of its stops, one of them a server's sever
/// token: [`cancelled`] would take the token's lock on every poll (`is_cancelled`), about
/// 75 instructions of a small L4 request's 3.2k. This registers a waker of its own with
/// both stops on its first poll; a stop that fires marks it and wakes the task, and every
/// other poll reads that mark, one atomic load. Its cost is one allocation per relay.
pub fn first_of<'a, A: Stop, B: Stop>(first: &'a A, second: &'a B) -> FirstOf<'a, A, B> {
    FirstOf {
        first,
        second,
        first_wait: first.wait(),
        second_wait: second.wait(),
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
    pub struct FirstOf<'a, A: Stop, B: Stop> {
        first: &'a A,
        second: &'a B,
        #[pin]
        first_wait: A::Wait<'a>,
        #[pin]
        second_wait: B::Wait<'a>,
        mark: Option<(Arc<Mark>, Waker)>,
    }
}

impl<A: Stop, B: Stop> FirstOf<'_, A, B> {
    /// The stop that has fired, if one has (a token's lock, a signal's load).
    fn fired(&self) -> Option<Which> {
        if self.first.fired() {
            Some(Which::First)
        } else if self.second.fired() {
            Some(Which::Second)
        } else {
            None
        }
    }
}

impl<A: Stop, B: Stop> Future for FirstOf<'_, A, B> {
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
        // First poll, or a wake without a stop fired (none is expected): (re)register the
        // mark's waker with both stops.
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

    /// Waits on `stop` through `cancelled` in a `select!` whose other branch, a 1 ms timer,
    /// keeps waking the task, until `fire` (run 50 ms in, on another task) fires it: the
    /// wait registered on its first poll is what ends the loop.
    async fn fires_while_other_branches_keep_waking<S: Stop + Send + Sync + 'static>(
        stop: Arc<S>,
        fire: fn(&S),
    ) {
        let s = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            fire(&s);
        });
        let wait = cancelled(&*stop);
        tokio::pin!(wait);
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                _ = &mut wait => break,
                _ = tokio::time::sleep(Duration::from_millis(1)) => ticks += 1,
            }
            assert!(ticks < 10_000, "never fired");
        }
        assert!(stop.fired());
    }

    #[tokio::test]
    async fn fires_after_registering_once_while_other_branches_keep_waking() {
        let token = Arc::new(CancellationToken::new());
        fires_while_other_branches_keep_waking(token, CancellationToken::cancel).await;
    }

    #[tokio::test]
    async fn a_signal_fires_a_wait_registered_once_while_other_branches_keep_waking() {
        let signal = Arc::new(Signal::default());
        fires_while_other_branches_keep_waking(signal, Signal::fire).await;
    }

    /// A wait polled before the signal fires is woken; one built before but never polled,
    /// and one built after, are ready at their first poll; firing twice is harmless.
    #[test]
    fn a_signal_reaches_every_wait_built_before_or_after_it_fired() {
        let signal = Signal::default();
        let noted = Arc::new(Noted(AtomicBool::new(false)));
        let waker = Waker::from(noted.clone());
        let mut cx = Context::from_waker(&waker);
        let mut polled = std::pin::pin!(cancelled(&signal));
        let mut unpolled = std::pin::pin!(signal.wait());
        assert!(polled.as_mut().poll(&mut cx).is_pending());
        assert!(polled.as_mut().poll(&mut cx).is_pending());
        assert!(!noted.0.load(Ordering::SeqCst));
        signal.fire();
        assert!(
            noted.0.load(Ordering::SeqCst),
            "the waiting task was not woken"
        );
        assert!(polled.as_mut().poll(&mut cx).is_ready());
        assert!(unpolled.as_mut().poll(&mut cx).is_ready());
        signal.fire();
        let mut after = std::pin::pin!(cancelled(&signal));
        assert!(after.as_mut().poll(&mut cx).is_ready());
        let mut late = std::pin::pin!(signal.wait());
        assert!(late.as_mut().poll(&mut cx).is_ready());
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

    /// Polls `first_of(a, b)` by hand with a waker of the test's own, fires one of them (a
    /// relay's two: the listener's hard stop, a signal, and a server's sever token), and
    /// checks that the task's waker was woken and the future then says which.
    fn fire_one(which: Which) {
        let (a, b) = (Signal::default(), CancellationToken::new());
        let noted = Arc::new(Noted(AtomicBool::new(false)));
        let waker = Waker::from(noted.clone());
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(first_of(&a, &b));
        assert!(f.as_mut().poll(&mut cx).is_pending());
        // Polls without a firing stay pending, and wake nothing.
        assert!(f.as_mut().poll(&mut cx).is_pending());
        assert!(!noted.0.load(Ordering::SeqCst));
        match which {
            Which::First => a.fire(),
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
