//! Latency histograms written by every worker thread, each worker on cache lines of its own.
//!
//! A `prometheus::Histogram` is one set of atomics that every thread observing it writes:
//! four read-modify-writes per observation (its hot-shard count, the bucket, the sum, the
//! count). The request path observes two per request (the listener's request duration and
//! the server's response time); with two workers on two cores, each of those writes finds
//! its cache line last written by the other core and waits for it to come over. Leaving
//! them out of the request path cut CPU per request by about 4 % with two workers
//! unpinned, and by nothing measurable with one.
//!
//! Here each series keeps one [`Shard`] per worker (a thread that is not a worker, such as
//! a test's, uses a shard of its own), so an observation is two read-modify-writes on a
//! line only its worker writes. A scrape sums the shards. The count is the sum of the
//! buckets, the last of which counts what falls above every bound, so a scrape that races
//! an observation never shows a count below its buckets; only the sum may lag one
//! observation behind, as it may in Prometheus' own client.
//!
//! The families export exactly what a `HistogramVec` with the same name, help, labels and
//! bounds would.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::Registry;

use crate::workers::Padded;

use super::LATENCY_BUCKETS;

/// Shards per series: index 0 for threads that are not workers, then one per worker (a
/// process with more workers than that shares shards, which stays correct).
const SHARDS: usize = 8;
/// Buckets per shard: one per bound, and one for what falls above them all.
const BUCKETS: usize = LATENCY_BUCKETS.len() + 1;

/// The shard of the thread that is worker `worker` (`None`: not a worker).
#[inline]
fn shard_of(worker: Option<usize>) -> usize {
    match worker {
        Some(w) => 1 + w % (SHARDS - 1),
        None => 0,
    }
}

/// One thread's part of a series.
struct Shard {
    /// Non-cumulative: `buckets[i]` counts the observations in (bound i-1, bound i].
    buckets: [AtomicU64; BUCKETS],
    /// The sum of the observations, an `f64`'s bits.
    sum: AtomicU64,
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0.0f64.to_bits()),
        }
    }
}

/// One labelled series: a handle the request path keeps and observes into.
#[derive(Clone)]
pub struct ShardedHistogram(Arc<[Padded<Shard>]>);

/// A series' totals at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations at or below it)` for every finite bound, ascending.
    pub cumulative: Vec<(f64, u64)>,
    /// All observations, including those above the last bound.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
}

impl ShardedHistogram {
    fn new() -> Self {
        ShardedHistogram((0..SHARDS).map(|_| Padded(Shard::default())).collect())
    }

    /// Records one observation (seconds, for these families).
    #[inline]
    pub fn observe(&self, v: f64) {
        self.observe_on(shard_of(crate::workers::current()), v);
    }

    /// Records `v` in shard `shard`.
    #[inline]
    fn observe_on(&self, shard: usize, v: f64) {
        let s = &self.0[shard];
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(BUCKETS - 1);
        s.buckets[i].fetch_add(1, Ordering::Relaxed);
        // Only this worker writes its shard, so the exchange succeeds at the first try
        // unless threads that are not workers share shard 0.
        let mut cur = s.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(cur) + v).to_bits();
            match s
                .sum
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
    }

    /// The series' totals: every shard summed.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut counts = [0u64; BUCKETS];
        let mut sum = 0.0;
        for s in self.0.iter() {
            for (c, b) in counts.iter_mut().zip(&s.buckets) {
                *c += b.load(Ordering::Relaxed);
            }
            sum += f64::from_bits(s.sum.load(Ordering::Relaxed));
        }
        let mut running = 0;
        let cumulative = LATENCY_BUCKETS
            .iter()
            .zip(counts)
            .map(|(bound, c)| {
                running += c;
                (*bound, running)
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            count: counts.iter().sum(),
            sum,
        }
    }

    /// Observations so far.
    pub fn get_sample_count(&self) -> u64 {
        self.snapshot().count
    }
}

/// A histogram family: its series by label values, exported by a collector registered with
/// the family.
#[derive(Clone)]
pub struct HistogramFamily(Arc<Family>);

struct Family {
    desc: Desc,
    labels: Vec<String>,
    /// Taken when a series is made or dropped (configuration loads) and at scrapes; never
    /// on the request path, which keeps its series' handles.
    series: Mutex<BTreeMap<Vec<String>, ShardedHistogram>>,
}

impl HistogramFamily {
    /// A family with `LATENCY_BUCKETS` bounds, registered in `r`.
    pub fn register(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Self {
        let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        let desc = Desc::new(name.into(), help.into(), labels.clone(), Default::default())
            .expect("metric definition is valid");
        let f = HistogramFamily(Arc::new(Family {
            desc,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }));
        r.register(Box::new(f.clone()))
            .expect("metric names are unique");
        f
    }

    fn series(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<String>, ShardedHistogram>> {
        self.0.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The series with these label values (in the family's label order), made if new.
    pub fn with_label_values(&self, values: &[&str]) -> ShardedHistogram {
        assert_eq!(values.len(), self.0.labels.len(), "one value per label");
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        self.series()
            .entry(key)
            .or_insert_with(ShardedHistogram::new)
            .clone()
    }

    /// Stops exporting the series with these label values; whether there was one.
    pub fn remove_label_values(&self, values: &[&str]) -> bool {
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        self.series().remove(&key).is_some()
    }
}

impl Collector for HistogramFamily {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut mf = MetricFamily::default();
        mf.set_name(self.0.desc.fq_name.clone());
        mf.set_help(self.0.desc.help.clone());
        mf.set_field_type(MetricType::HISTOGRAM);
        for (values, series) in self.series().iter() {
            let snap = series.snapshot();
            let mut h = proto::Histogram::default();
            h.set_sample_count(snap.count);
            h.set_sample_sum(snap.sum);
            h.set_bucket(
                snap.cumulative
                    .into_iter()
                    .map(|(bound, count)| {
                        let mut b = proto::Bucket::default();
                        b.set_upper_bound(bound);
                        b.set_cumulative_count(count);
                        b
                    })
                    .collect(),
            );
            // Label pairs sorted by name, as the client's own vectors make them.
            let mut pairs: Vec<proto::LabelPair> = self
                .0
                .labels
                .iter()
                .zip(values)
                .map(|(n, v)| {
                    let mut p = proto::LabelPair::default();
                    p.set_name(n.clone());
                    p.set_value(v.clone());
                    p
                })
                .collect();
            pairs.sort_by(|a, b| a.get_name().cmp(b.get_name()));
            let mut m = proto::Metric::default();
            m.set_label(pairs);
            m.set_histogram(h);
            mf.mut_metric().push(m);
        }
        vec![mf]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, HistogramOpts, HistogramVec, TextEncoder};

    fn text(r: &Registry) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&r.gather(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn exports_what_a_histogram_vec_would() {
        let (ours, theirs) = (Registry::new(), Registry::new());
        let f = HistogramFamily::register(&ours, "t_seconds", "Help.", &["pool", "server"]);
        let v = HistogramVec::new(
            HistogramOpts::new("t_seconds", "Help.").buckets(LATENCY_BUCKETS.to_vec()),
            &["pool", "server"],
        )
        .unwrap();
        theirs.register(Box::new(v.clone())).unwrap();
        // On a bound, between bounds, above them all, and in two series.
        for (labels, x) in [
            (["b", "s1"], 0.0005),
            (["b", "s1"], 0.003),
            (["b", "s1"], 45.0),
            (["a", "s2"], 0.2),
        ] {
            f.with_label_values(&labels).observe(x);
            v.with_label_values(&labels).observe(x);
        }
        assert_eq!(text(&ours), text(&theirs));
        // A dropped series is no longer exported; the family goes when it is empty.
        assert!(f.remove_label_values(&["a", "s2"]));
        assert!(v.remove_label_values(&["a", "s2"]).is_ok());
        assert_eq!(text(&ours), text(&theirs));
        assert!(!f.remove_label_values(&["a", "s2"]));
        f.remove_label_values(&["b", "s1"]);
        assert_eq!(text(&ours), "");
    }

    #[test]
    fn a_scrape_sums_every_workers_shard() {
        // Each worker has a shard of its own; workers past the shards share them.
        assert_eq!(shard_of(None), 0);
        assert_eq!((shard_of(Some(0)), shard_of(Some(1))), (1, 2));
        assert_eq!(shard_of(Some(SHARDS - 1)), shard_of(Some(0)));
        let r = Registry::new();
        let f = HistogramFamily::register(&r, "w_seconds", "Help.", &["listener"]);
        let h = f.with_label_values(&["web"]);
        // 0.001 on every shard, 0.2 on two, 45 (above every bound) on one.
        for shard in 0..SHARDS {
            h.observe_on(shard, 0.001);
        }
        h.observe_on(1, 0.2);
        h.observe_on(5, 0.2);
        h.observe_on(7, 45.0);
        let snap = h.snapshot();
        assert_eq!(snap.count, SHARDS as u64 + 3);
        let want = SHARDS as f64 * 0.001 + 0.4 + 45.0;
        assert!(
            (snap.sum - want).abs() < 1e-9,
            "{} against {want}",
            snap.sum
        );
        let at = |bound: f64| snap.cumulative.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(at(0.0005), 0);
        assert_eq!(at(0.001), SHARDS as u64);
        assert_eq!(at(0.25), SHARDS as u64 + 2);
        assert_eq!(at(30.0), SHARDS as u64 + 2, "45 s only in the count");
        // And the exposition says the same.
        let t = text(&r);
        assert!(
            t.contains(&format!(
                "w_seconds_count{{listener=\"web\"}} {}",
                SHARDS + 3
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "w_seconds_bucket{{listener=\"web\",le=\"+Inf\"}} {}",
                SHARDS + 3
            )),
            "{t}"
        );
    }

    #[test]
    fn sums_what_every_thread_observed() {
        let r = Registry::new();
        let f = HistogramFamily::register(&r, "u_seconds", "Help.", &["listener"]);
        let h = f.with_label_values(&["web"]);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let h = h.clone();
                s.spawn(move || {
                    for _ in 0..1000 {
                        h.observe(0.004);
                    }
                });
            }
        });
        let snap = f.with_label_values(&["web"]).snapshot();
        assert_eq!(snap.count, 4000);
        assert!((snap.sum - 16.0).abs() < 1e-6, "{}", snap.sum);
        // All in the (2.5 ms, 5 ms] bucket.
        let at = |bound: f64| snap.cumulative.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!((at(0.0025), at(0.005), at(30.0)), (0, 4000, 4000));
    }
}
