//! The threads that serve connections.
//!
//! `fulcrum run` serves traffic on `runtime.worker_threads` threads, each driving a
//! single-threaded tokio runtime of its own: its own epoll, timer wheel and run queue. Every
//! listener runs one accept loop per worker, on a duplicate of its socket, and whichever
//! worker accepts a connection keeps it, with every task the connection spawns (its upstream
//! connections, tunnels) and, through per-worker idle pools, the HTTP/1.1 upstream
//! connections it reuses. An HTTP/1.1 or L4 request never moves between threads: no work
//! stealing, no wake-ups across cores, no run queue shared by the workers. (An h2 upstream is
//! one connection per server, shared by every worker; its requests do cross.) The control plane (admin API, health
//! checks, discovery, reloads) runs on the main thread's own runtime.
//!
//! A work-stealing runtime with two workers served fewer requests than one worker did on
//! the same two cores (HAProxy with two threads served 15 % more than with one): tasks of one
//! request hopped between the workers, each hop a cross-core wake-up. This is the model
//! HAProxy's threads and Envoy's workers follow.
//!
//! The workers share one accept queue per listener, and the kernel wakes whichever is
//! waiting: an idle worker tends to win the race while the connections are made, so one
//! worker could end up serving two or three times the connections of the other, and the
//! whole process ran at the pace of the busier one. Each worker's open connections are
//! counted here ([`Occupancy`]); an accept loop that finds another worker with at least two
//! fewer hands the new connection to that worker ([`pick`]), once, before its first byte
//! is read. HAProxy balances its threads' accepts the same way.
//!
//! Without [`start`] (the demo, tests that run a proxy in-process), listeners accept on the
//! runtime they were started from, as before.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::runtime::Handle;

static WORKERS: OnceLock<Vec<Handle>> = OnceLock::new();

/// Open connections per worker, each counter on its own cache line.
static LOAD: OnceLock<Box<[Padded<AtomicUsize>]>> = OnceLock::new();

/// One worker's entry of a per-worker array, alone on its cache lines: unpadded, two
/// workers' entries would share a line, and each write by one would take the line from the
/// other's core (false sharing). 128 bytes: x86 cores fetch lines in adjacent pairs.
#[repr(align(128))]
#[derive(Default, Debug)]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Starts `n` worker threads (at least one). Only the first call starts any; later calls
/// return at once.
pub fn start(n: usize) -> io::Result<()> {
    if WORKERS.get().is_some() {
        return Ok(());
    }
    let mut handles = Vec::with_capacity(n.max(1));
    for i in 0..n.max(1) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("fulcrum-worker-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                INDEX.with(|c| c.set(Some(i)));
                let _ = tx.send(Ok(rt.handle().clone()));
                // Runs the tasks spawned onto this worker for the life of the process.
                rt.block_on(std::future::pending::<()>());
            })?;
        let handle = rx
            .recv()
            .map_err(|_| io::Error::other("a worker thread ended while starting"))??;
        handles.push(handle);
    }
    let _ = LOAD.set((0..handles.len()).map(|_| Padded::default()).collect());
    let _ = WORKERS.set(handles);
    Ok(())
}

/// The workers' runtimes; empty when [`start`] was never called.
pub fn handles() -> &'static [Handle] {
    WORKERS.get().map_or(&[], Vec::as_slice)
}

/// How many workers run (0 without [`start`]).
pub fn count() -> usize {
    handles().len()
}

/// The index of the worker this thread is, if it is one.
#[inline]
pub fn current() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// The worker a connection accepted on worker `here` should be served by (see [`choose`]).
pub fn pick(here: usize) -> usize {
    match LOAD.get() {
        Some(load) => choose(here, load.iter().map(|c| c.load(Ordering::Relaxed))),
        None => here,
    }
}

/// Open connections on each worker, in worker order (nothing without workers): read when
/// metrics are scraped.
pub fn loads() -> impl Iterator<Item = usize> {
    LOAD.get()
        .map_or(&[][..], |l| &l[..])
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
}

/// Of workers with `loads` open connections, the one with the fewest if it has at least two
/// fewer than `here`, else `here`. The margin keeps a connection where it landed when the
/// difference is noise: a hand-off costs a deregistration, a registration and a wake-up of
/// the other thread.
fn choose(here: usize, loads: impl Iterator<Item = usize>) -> usize {
    let mut own = None;
    let mut best = (here, usize::MAX);
    for (i, n) in loads.enumerate() {
        if i == here {
            own = Some(n);
        }
        if n < best.1 {
            best = (i, n);
        }
    }
    match own {
        Some(own) if best.1 + 2 <= own => best.0,
        _ => here,
    }
}

/// One open connection counted against a worker, from the moment its worker is chosen until
/// it ends.
#[derive(Debug)]
pub struct Occupancy(usize);

impl Occupancy {
    /// Counts a connection against worker `index` (nothing without workers).
    pub fn on(index: usize) -> Occupancy {
        if let Some(c) = LOAD.get().and_then(|l| l.get(index)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        Occupancy(index)
    }
}

impl Drop for Occupancy {
    fn drop(&mut self) {
        if let Some(c) = LOAD.get().and_then(|l| l.get(self.0)) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::choose;

    #[test]
    fn a_connection_moves_only_to_a_worker_with_two_fewer() {
        let pick = |here, loads: &[usize]| choose(here, loads.iter().copied());
        assert_eq!(pick(0, &[0, 0]), 0, "even: stays");
        assert_eq!(pick(0, &[1, 0]), 0, "one more: stays");
        assert_eq!(pick(0, &[2, 0]), 1, "two more: moves");
        assert_eq!(pick(1, &[3, 9]), 0, "from the busier one");
        assert_eq!(pick(2, &[5, 1, 6, 2]), 1, "to the least loaded of several");
        assert_eq!(pick(1, &[5, 4, 6]), 1, "already the least loaded");
        assert_eq!(pick(3, &[0, 0]), 3, "an unknown worker keeps its own");
    }
}
