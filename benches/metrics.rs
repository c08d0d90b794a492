//! Cost of one latency observation when two workers observe into the same series at once,
//! as the request path does with two workers (the listener's request duration, the server's
//! response time): `prometheus::Histogram` (one set of atomics for every thread) against
//! fulcrum's per-worker `ShardedHistogram`. Each iteration is one observation on *each*
//! of the two workers, running together on their own threads; the figure is the wall time
//! of the pair. On one core the two cost the same; what this shows is the cache lines
//! moving between cores.

use std::hint::black_box;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use fulcrum::metrics::HistogramFamily;
use prometheus::{Histogram, HistogramOpts, Registry};

/// Runs `observe` `iters` times on each of the two workers at once; the wall time of both.
fn on_both_workers(iters: u64, observe: impl Fn() + Clone + Send + 'static) -> Duration {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    for w in fulcrum::workers::handles() {
        let (tx, observe) = (tx.clone(), observe.clone());
        w.spawn(async move {
            for _ in 0..iters {
                observe();
            }
            let _ = tx.send(());
        });
    }
    drop(tx);
    for _ in 0..fulcrum::workers::count() {
        rx.recv().unwrap();
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    fulcrum::workers::start(2).unwrap();
    let mut g = c.benchmark_group("observe_on_two_workers");
    let shared = Histogram::with_opts(HistogramOpts::new("p_seconds", "Help.")).unwrap();
    g.bench_function("prometheus_histogram", |b| {
        b.iter_custom(|iters| {
            let h = shared.clone();
            on_both_workers(iters, move || h.observe(black_box(0.0012)))
        })
    });
    let family = HistogramFamily::register(&Registry::new(), "s_seconds", "Help.", &["l"]);
    let sharded = family.with_label_values(&["x"]);
    g.bench_function("sharded_histogram", |b| {
        b.iter_custom(|iters| {
            let h = sharded.clone();
            on_both_workers(iters, move || h.observe(black_box(0.0012)))
        })
    });
    // For scale: one shared counter, the other kind of write the request path makes.
    let counter = prometheus::IntCounter::new("c_total", "Help.").unwrap();
    g.bench_function("prometheus_counter", |b| {
        b.iter_custom(|iters| {
            let c = counter.clone();
            on_both_workers(iters, move || c.inc())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
