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
//! Without [`start`] (the demo, tests that run a proxy in-process), listeners accept on the
//! runtime they were started from, as before.

use std::cell::Cell;
use std::io;
use std::sync::OnceLock;

use tokio::runtime::Handle;

static WORKERS: OnceLock<Vec<Handle>> = OnceLock::new();

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
