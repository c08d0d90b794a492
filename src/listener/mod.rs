//! Listeners: binding sockets, accept loops, connection limits, and handing each connection
//! to its proxy (TLS handshakes will sit here too).
//!
//! A listener's route (settings + pool) sits behind an arc-swap that a reload replaces; the
//! socket and its accept loop stay, so a reload never closes a listening socket that it
//! keeps. Stopping is two-phase: `drain` stops accepting and asks every connection to finish
//! (HTTP/1.1 gets `Connection: close`, h2 a GOAWAY), then `hard_stop` ends what is left.
//!
//! Every connection is bounded before it is served: a process-wide cap
//! (`runtime.max_connections`) and the listener's cap make further connections wait in the
//! kernel backlog; a client over `max_connections_per_client` is closed at accept. HTTP
//! connections are served in [`http_conn`] under the deadlines of [`watch`].

mod clients;
mod http_conn;
pub mod watch;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::{Either, FutureExt};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use crate::config::ListenerSettings;
use crate::proxy::cancel::Signal;
use crate::proxy::http::HttpRoute;
use crate::proxy::tcp::TcpRoute;
use crate::proxy::Rejection;

pub use clients::ClientCounts;

/// First and longest pause of the accept loop after an accept error (EMFILE and friends).
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// A listener's swappable route.
#[derive(Clone)]
pub enum Route {
    /// L7.
    Http(Arc<ArcSwap<HttpRoute>>),
    /// L4.
    Tcp(Arc<ArcSwap<TcpRoute>>),
}

impl Route {
    /// Runs `f` on the listener's current metrics (read where they are used: a copy of
    /// them is some twenty counter handles to clone).
    fn with_metrics<R>(&self, f: impl FnOnce(&crate::metrics::ListenerMetrics) -> R) -> R {
        match self {
            Route::Http(r) => f(&r.load().metrics),
            Route::Tcp(r) => f(&r.load().metrics),
        }
    }

    /// The listener's admission, and its cap on connections per client.
    fn admission(&self) -> (Arc<crate::admission::Admission>, u32) {
        match self {
            Route::Http(r) => {
                let r = r.load();
                let max = r.listener.limits.max_connections_per_client;
                (r.admission.clone(), max)
            }
            Route::Tcp(r) => {
                let r = r.load();
                let max = r.listener.limits.max_connections_per_client;
                (r.admission.clone(), max)
            }
        }
    }
}

/// Binds `addr` with SO_REUSEADDR and a deep backlog; synchronous, so a reload can bind
/// every new socket before it changes anything.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// Whether the kernel hands a connection on to `accept` only once the client has sent
/// something (`TCP_DEFER_ACCEPT`, up to [`DEFER_ACCEPT_SECS`]; after that, it is handed on
/// anyway). On for HTTP listeners, whose clients speak first (a request, a TLS ClientHello
/// or a PROXY header): the first read of every connection then finds its bytes, where
/// otherwise it often ran before they came, found nothing, and cost a system call and a
/// turn of the event loop. Off for L4 listeners, where the server may speak first (SMTP,
/// MySQL, SSH). Set at each start, so a reload that turns a listener from one protocol to
/// the other on the same socket gets it right. Best effort: without it, connections are
/// served as before.
fn defer_accept(listener: &TcpListener, on: bool) {
    #[cfg(target_os = "linux")]
    crate::proxy::set_tcp_option(
        std::os::fd::AsRawFd::as_raw_fd(listener),
        libc::TCP_DEFER_ACCEPT,
        if on { DEFER_ACCEPT_SECS } else { 0 },
    );
    #[cfg(not(target_os = "linux"))]
    let _ = (listener, on);
}

/// How long the kernel holds a silent new connection back from `accept` on an HTTP
/// listener. Short: a client that connects and says nothing is still accepted after about
/// this long (at the first SYN-ACK resend), and then meets the listener's own timeouts.
const DEFER_ACCEPT_SECS: libc::c_int = 1;

/// A running listener.
pub struct Listener {
    /// Settings it was started with (the route holds the current ones).
    pub settings: ListenerSettings,
    /// The bound address (the real port when the config said 0).
    pub local_addr: SocketAddr,
    /// Its route.
    pub route: Route,
    /// The signals of each worker's connections (one, without workers).
    ctls: Arc<[Control]>,
    tracker: TaskTracker,
}

impl Listener {
    /// Starts accepting on `listener` with `route`; `process` is the process-wide connection
    /// cap every listener shares. Cannot fail: everything fallible happened while binding.
    pub fn start(
        settings: ListenerSettings,
        listener: TcpListener,
        route: Route,
        process: Arc<Semaphore>,
    ) -> Listener {
        defer_accept(&listener, matches!(route, Route::Http(_)));
        // A socket bound by this process always has an address; 0 would only mislabel logs.
        let local_addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let tracker = TaskTracker::new();
        let limit = Arc::new(Semaphore::new(settings.max_connections));
        let clients = Arc::new(ClientCounts::default());
        let acceptor = |listener, ctls| Acceptor {
            listener,
            route: route.clone(),
            limit: limit.clone(),
            process: process.clone(),
            clients: clients.clone(),
            ctls,
            name: settings.name.clone(),
        };
        let ctl = || {
            Control(Arc::new(Signals {
                drain: Signal::default(),
                hard_stop: Signal::default(),
                tracker: tracker.clone(),
            }))
        };
        let ctls = match on_workers(listener) {
            // One accept loop per worker thread, each on its own duplicate of the socket,
            // registered with that worker's runtime: a connection stays where it was
            // accepted (see crate::workers).
            Ok(per_worker) => {
                // Each worker's connections wait on signals of their own: a connection
                // registers with its signals' waiter lists when it starts and leaves them
                // when it ends, and one list would be a lock the workers pass between their
                // cores.
                let ctls: Arc<[Control]> =
                    crate::workers::handles().iter().map(|_| ctl()).collect();
                for (worker, listener) in per_worker {
                    worker.spawn(tracker.track_future(acceptor(listener, ctls.clone()).run()));
                }
                ctls
            }
            Err(listener) => {
                let ctls: Arc<[Control]> = Arc::new([ctl()]);
                tracker.spawn(acceptor(listener, ctls.clone()).run());
                ctls
            }
        };
        tracing::info!(listener = %settings.name, addr = %local_addr, protocol = ?settings.protocol, "listening");
        Listener {
            settings,
            local_addr,
            route,
            ctls,
            tracker,
        }
    }

    /// Stops accepting and asks open connections to finish; waits up to `grace`, then
    /// closes what is left. Returns whether everything finished in time.
    pub async fn stop(&self, grace: Duration) -> bool {
        self.begin_drain();
        self.tracker.close();
        let clean = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        if !clean {
            for c in self.ctls.iter() {
                c.hard_stop.fire();
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.tracker.wait()).await;
        }
        clean
    }

    /// Stops accepting and asks open connections to finish, without waiting: `stop`
    /// completes the job. A reload calls this before another accept loop takes the socket.
    pub fn begin_drain(&self) {
        for c in self.ctls.iter() {
            c.drain.fire();
        }
    }
}

/// A listening socket as an accept loop holds it: registered with the runtime it accepts
/// on, and asked for readiness apart from accepting (see [`Acceptor::run`]).
type Listening = AsyncFd<std::net::TcpListener>;

/// Registers `l` with the current runtime's reactor, for readiness to read (a connection
/// waiting).
fn listening(l: std::net::TcpListener) -> io::Result<Listening> {
    // SAFETY: a std listener owns its descriptor until it is dropped, and `as_raw_fd`
    // always returns that one; the `AsyncFd` owns the listener and never swaps it.
    Ok(unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }?)
}

/// Accepts a waiting connection, non-blocking and closed on exec as tokio's own accept
/// makes it, but not yet registered with a reactor: that is done by the worker that serves
/// it, so one handed to another worker is registered once, not registered here and
/// deregistered again.
fn accept(listener: &std::net::TcpListener) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    use rustix::net::SocketFlags;
    let (fd, peer) =
        rustix::net::acceptfrom_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
    let peer = peer
        .and_then(|p| SocketAddr::try_from(p).ok())
        .ok_or_else(|| io::Error::other("an accepted connection without an IP peer address"))?;
    Ok((std::net::TcpStream::from(fd), peer))
}

/// The listening socket duplicated for each worker thread and registered with its runtime
/// (`Ok`); the socket back, to accept where we are, when no workers run or none could take
/// it (`Err`). `Ok` with no worker means the socket itself was lost; that is logged.
fn on_workers(
    listener: TcpListener,
) -> Result<Vec<(&'static tokio::runtime::Handle, Listening)>, Listening> {
    let workers = crate::workers::handles();
    let addr = listener.local_addr().ok();
    // Off tokio's own registration (which can only accept) and still non-blocking.
    let std = match listener.into_std() {
        Ok(s) => s,
        Err(e) => {
            // into_std only fails if the socket is already gone; nothing could accept on it.
            tracing::error!(addr = ?addr, error = %e, "cannot hand a listening socket to the workers");
            return Ok(Vec::new());
        }
    };
    let mut out = Vec::with_capacity(workers.len());
    for w in workers {
        let registered = std.try_clone().and_then(|dup| {
            let _in_worker = w.enter();
            listening(dup)
        });
        match registered {
            Ok(l) => out.push((w, l)),
            // A worker that cannot take a duplicate (EMFILE) leaves accepting to the others.
            Err(e) => {
                tracing::warn!(addr = ?addr, error = %e, "a worker cannot accept on a listener")
            }
        }
    }
    if !out.is_empty() {
        return Ok(out);
    }
    // No workers, or none could take it: accept where we are.
    match listening(std) {
        Ok(l) => Err(l),
        Err(e) => {
            tracing::error!(addr = ?addr, error = %e, "cannot accept on a listener");
            Ok(Vec::new())
        }
    }
}

/// What a connection task needs to know of its listener's life: a handle to the
/// [`Signals`] of the worker it runs on.
///
/// Shared, not copied: a clone is one reference count. (The cancellation tokens this used
/// to copy took their lock for each clone and each drop, ten times per HTTP connection.)
#[derive(Clone)]
pub(crate) struct Control(Arc<Signals>);

/// The signals a listener gives the connections of one worker.
pub(crate) struct Signals {
    /// Fires when the listener drains (reload or shutdown).
    pub drain: Signal,
    /// Fires when the grace period is over.
    pub hard_stop: Signal,
    /// Tracks connection tasks, so stopping waits for them.
    pub tracker: TaskTracker,
}

impl std::ops::Deref for Control {
    type Target = Signals;

    fn deref(&self) -> &Signals {
        &self.0
    }
}

/// An accepted connection: registered with this thread's runtime, or handed over from
/// another worker's accept loop and registered where its task runs.
enum Incoming {
    Here(TcpStream),
    Moved(std::net::TcpStream),
}

struct Acceptor {
    listener: Listening,
    route: Route,
    limit: Arc<Semaphore>,
    process: Arc<Semaphore>,
    clients: Arc<ClientCounts>,
    /// Per worker, in worker order (one, without workers).
    ctls: Arc<[Control]>,
    name: Arc<str>,
}

impl Acceptor {
    /// The control of the connections served on worker `w` (the only one, without workers).
    fn ctl(&self, w: Option<usize>) -> &Control {
        &self.ctls[w.unwrap_or(0) % self.ctls.len()]
    }

    /// Accepts until the listener drains. A connection is accepted only with room for it,
    /// in the process and in this listener; until then it waits in the kernel's backlog.
    ///
    /// The loop asks for room only once a connection is waiting, and gives it back when the
    /// accept finds none (another worker's loop took it). The caps are semaphores that hand
    /// room out in the order it was asked for: a loop that asked while nothing was waiting
    /// for it would stand in that queue, or hold the room it got, ahead of the clients of
    /// every other listener. With the process's cap reached, an idle listener's loop held
    /// the last slot while a busy one's clients waited behind it, and a cap lowered by a
    /// reload let a connection in before it took effect.
    async fn run(self) {
        // One wait for the whole loop, registered with the signal on its first poll: a
        // `drain.cancelled()` in each select registered and unregistered a waiter (a lock,
        // twice) twice for every connection accepted.
        let stop = crate::proxy::cancel::cancelled(&self.ctl(crate::workers::current()).drain);
        tokio::pin!(stop);
        let mut backoff = ACCEPT_BACKOFF.0;
        let mut failing = false;
        loop {
            // A connection waiting: known without a system call while connections keep
            // coming. Each wait spends the task's cooperative budget when it finds one
            // (as tokio's own accept does), so a steady stream of connections cannot keep
            // this worker's other tasks waiting.
            tokio::select! {
                // Drain first: once a reload has handed this socket to a new accept loop,
                // no further connection may land on this one.
                biased;
                _ = &mut stop => break,
                r = self.listener.readable() => if let Err(e) = r {
                    // The registration is gone (the runtime is shutting down).
                    tracing::error!(listener = %self.name, error = %e, "cannot wait for connections");
                    break;
                },
            }
            // Then room in the process and in this listener: an atomic each when there is
            // room, a wait otherwise.
            let permits = match self.try_permits() {
                Some(p) => p,
                None => tokio::select! {
                    biased;
                    _ = &mut stop => break,
                    p = async {
                        let process = self.process.clone().acquire_owned().await.ok()?;
                        let listener = self.limit.clone().acquire_owned().await.ok()?;
                        Some((process, listener))
                    } => match p {
                        Some(p) => p,
                        None => break,
                    },
                },
            };
            match self.listener.try_io(Interest::READABLE, accept) {
                Ok((stream, peer)) => {
                    if failing {
                        failing = false;
                        backoff = ACCEPT_BACKOFF.0;
                        tracing::info!(listener = %self.name, "accepting again");
                    }
                    // The permits go into the connection's future rather than a wrapper
                    // around it: an async block that awaits a captured future holds it
                    // twice (rustc keeps the capture and the awaited value apart).
                    self.dispatch(stream, peer, permits);
                }
                // Taken by another worker's loop meanwhile: the room goes back, and the
                // readiness was cleared, so the next wait is for the next connection.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    // EMFILE and friends: back off (doubling, capped) instead of spinning,
                    // and never end the loop. Logged once per episode, counted every time.
                    drop(permits);
                    self.metrics_local_error(&e);
                    if !failing {
                        failing = true;
                        tracing::warn!(listener = %self.name, error = %e, "accept failed; backing off until it succeeds again");
                    }
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                }
            }
        }
        tracing::debug!(listener = %self.name, "accept loop stopped");
    }

    /// Both permits a connection needs, if both are free now. The process's is given back
    /// when the listener's is not.
    fn try_permits(&self) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let process = self.process.clone().try_acquire_owned().ok()?;
        let listener = self.limit.clone().try_acquire_owned().ok()?;
        Some((process, listener))
    }

    /// Starts serving an accepted connection: here, or on the worker with the fewest open
    /// connections when this one has clearly more (see crate::workers).
    ///
    /// The connection's future (632 bytes for HTTP) is built in a box of its own, and the
    /// task holds the box: spawned inline, it was copied into the task whole, and the task's
    /// stage rewritten whole three times (when it ends, its output is stored and then
    /// taken), about 600 instructions of `memcpy` a connection against one allocation.
    fn dispatch<P: Send + 'static>(
        &self,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        permits: P,
    ) {
        let here = crate::workers::current();
        let to = here.map(crate::workers::pick);
        let keep = (permits, to.map(crate::workers::Occupancy::on));
        let elsewhere = to
            .filter(|&t| Some(t) != here)
            .and_then(|t| crate::workers::handles().get(t));
        let Some(worker) = elsewhere else {
            // Registered with this worker's reactor here, as tokio's own accept did (one
            // handed to another worker is registered where its task runs). Either way the
            // runtime learns of bytes already waiting only at its next turn, so the first
            // reads ask the socket itself (`sock::recv_now`).
            let stream = match TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    self.metrics_local_error(&e);
                    tracing::debug!(client = %peer, error = %e, "an accepted connection could not be registered");
                    return;
                }
            };
            let ctl = self.ctl(here);
            ctl.tracker.spawn(pinned_in_place(|| {
                self.connection(Incoming::Here(stream), peer, keep, ctl)
            }));
            return;
        };
        // Registered with the other worker's reactor when its task first runs.
        let ctl = self.ctl(to);
        let conn = pinned_in_place(|| {
            ctl.tracker
                .track_future(self.connection(Incoming::Moved(stream), peer, keep, ctl))
        });
        worker.spawn(conn);
    }

    fn metrics_local_error(&self, e: &io::Error) {
        self.route.with_metrics(|m| m.local_error(e));
    }

    /// Serves one accepted connection; `permits` (the process's and the listener's room)
    /// are held until it ends.
    ///
    /// Two futures, one after the other, rather than one `async` block: a task keeps room
    /// for every local its future holds across an await until the local's scope ends,
    /// moved-from or not, and for everything the future captured. Admission's state goes
    /// when admission ends, so a parked connection's task does not carry it.
    ///
    /// Each is built in a box of its own, and the connection's future holds only the two
    /// boxes. Inline, admission's output (the serving future, 600 bytes for HTTP) was
    /// copied four times on its way into the second stage (out of admission, through the
    /// combinators' states: about 350 instructions of `memcpy` a connection), and every
    /// poll of the combined future paid for its larger frame. Boxed: per connection −216
    /// instructions on L7 and −355 on L4 for one allocation more, −50 and −70 per
    /// keep-alive request; an idle HTTP/1 connection holds about 0.27 KiB more (the
    /// allocator's rounding of two blocks in place of one), an idle relay 0.5 KiB less.
    fn connection<P: Send + 'static>(
        &self,
        incoming: Incoming,
        peer: SocketAddr,
        permits: P,
        ctl: &Control,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let route = self.route.clone();
        let ctl = ctl.clone();
        let clients = self.clients.clone();
        let admit = pinned_in_place(|| async move {
            let mut stream = match incoming {
                Incoming::Here(s) => s,
                Incoming::Moved(s) => match TcpStream::from_std(s) {
                    Ok(s) => s,
                    Err(e) => {
                        route.with_metrics(|m| m.local_error(&e));
                        tracing::debug!(client = %peer, error = %e, "a handed-over connection could not be registered");
                        return None;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let (admission, max) = route.admission();
            // Who the client is (a trusted peer's PROXY header says), and whether it may in.
            // Without a PROXY header to read there is nothing to wait for; with one, the
            // reading is boxed so that its state does not size the task for the
            // connection's whole life.
            let accepted = if admission.reads_proxy_header() {
                Box::pin(admission.accept(&mut stream, peer)).await
            } else {
                admission.accept_direct(peer)
            };
            let client = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Counted by admission.
                    tracing::debug!(client = %peer, error = %e, "connection refused at accept");
                    return None;
                }
            };
            // The per-client cap, on the client the connection speaks for; a trusted proxy's
            // connection carries many clients and is not capped as one.
            let hold = if admission.settings().trusted_proxies.matches(client.ip()) {
                None
            } else {
                match clients.try_open(client.ip(), max) {
                    Some(h) => Some(h),
                    None => {
                        route.with_metrics(|m| m.rejected(Rejection::ClientConnections));
                        tracing::debug!(client = %client.addr, max, "client over max_connections_per_client; closed");
                        return None;
                    }
                }
            };
            // The permits and the client's hold go with the serving, and are released
            // when it ends.
            let keep = (hold, permits);
            Some(match route {
                // Boxed: its state is 3.4 KiB, and inline it would size every
                // connection's task.
                Route::Tcp(r) => {
                    let r = r.load_full();
                    r.metrics.connections.inc();
                    r.metrics.active.inc();
                    let active = r.metrics.active.clone();
                    let relay =
                        pinned_in_place(|| crate::proxy::tcp::serve(stream, client, r, ctl));
                    Either::Left(relay.map(move |()| {
                        active.dec();
                        drop(keep);
                    }))
                }
                // HTTP boxes each burst's serving itself and keeps in this box only what a
                // parked connection holds (see http_conn::run).
                Route::Http(r) => Either::Right(pinned_in_place(|| {
                    http_conn::run(stream, client, r, ctl, keep)
                })),
            })
        });
        crate::backend::PerPoll::new(Stages::Admit(admit))
    }
}

/// A connection's two stages: admission (`A`, whose output is the serving or nothing),
/// then the serving (`S`). One match a poll, where `admit.then(OptionFuture::from)` took a
/// `Flatten` over a `Map` and an `OptionFuture`: about 35 instructions a poll of every
/// connection against 45 (three polls an L4 request). Each stage is a box, so this holds
/// two pointers.
enum Stages<A, S> {
    Admit(A),
    Serve(S),
    Done,
}

impl<A, S> Future for Stages<A, S>
where
    A: Future<Output = Option<S>> + Unpin,
    S: Future<Output = ()> + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let this = self.get_mut();
        if let Stages::Admit(admit) = this {
            // Admission's state goes as soon as it has ended.
            *this = match std::task::ready!(Pin::new(admit).poll(cx)) {
                Some(serve) => Stages::Serve(serve),
                None => Stages::Done,
            };
        }
        if let Stages::Serve(serve) = this {
            std::task::ready!(Pin::new(serve).poll(cx));
            *this = Stages::Done;
        }
        std::task::Poll::Ready(())
    }
}

/// Boxes the value `make` returns, built inside the allocation. `Box::new(v)` evaluates `v`
/// first, so a large value (a connection's or a request's future: 1–3.4 KiB) is built on
/// the stack and then copied into the box whole, a `memcpy` of its full size; allocating
/// first lets the compiler write the few fields it initialises straight into the box.
pub(crate) fn boxed_in_place<T>(make: impl FnOnce() -> T) -> Box<T> {
    let mut b = Box::<T>::new_uninit();
    b.write(make());
    // SAFETY: `write` initialised the contents.
    unsafe { b.assume_init() }
}

/// [`boxed_in_place`], pinned: for a future that is polled where it was built.
pub(crate) fn pinned_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(boxed_in_place(make))
}
