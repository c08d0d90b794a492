//! A server's load gauge, and how a balancer table that caches loads hears that one moved.
//!
//! The gauge counts in-flight requests (L7) or open connections (L4). It lives in the server's
//! live state and outlives every table built around it; the proxy moves it (a `LoadGuard` takes
//! and returns one unit per request or connection) and the load-aware algorithms read it.
//!
//! A table that keeps the loads in its own structure (least_conn's min-tree) cannot afford to
//! re-read every gauge per pick, so it *watches* its members' gauges: each gauge then carries
//! the table's [`DirtySet`] and its member's position, and every change to the value sets that
//! position's bit after the value is written. The table folds the marked members back in on its
//! next pick. A gauge reports to one table at a time, the one built last; the table it is taken
//! from is marked orphaned, and goes back to reading every gauge itself (see `least_conn`).
//!
//! No I/O, no lock. A change to a gauge no table ever watched costs what it would on a bare
//! `AtomicU32`, plus the load of a flag on the same cache line; a watched one also loads the
//! watch (an `arc-swap` load) and sets its position's bit (and, in tables of more than 1024
//! members, a summary bit).
//!
//! Why a table misses no change: the watch is installed, then the `watched` flag is stored,
//! then the value is read for the table; a change writes the value, then loads the flag, and
//! only then the watch. All four are SeqCst, so either the change's flag load comes first in
//! their single total order, and then so does its write, before the table's read; or the flag
//! load sees the table's store, which makes the new watch visible to the change.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

/// In-flight requests (L7) or open connections (L4) on one server.
///
/// Reads take an ordering as on an `AtomicU32`. Changes are always SeqCst, as the watch needs
/// (see the module's note; on x86 every atomic read-modify-write is anyway), and each one also
/// tells the table watching the gauge, if any.
#[derive(Default)]
pub struct LoadGauge {
    value: AtomicU32,
    /// Some table has watched the gauge. Never cleared: clearing it while a new table installs
    /// its watch could hide changes from that table, and a stale `true` only costs a load of
    /// an empty watch.
    watched: AtomicBool,
    watch: ArcSwapOption<Watch>,
}

/// Where a watched gauge reports: its member's position in the watching table.
#[derive(Debug)]
struct Watch {
    dirty: Arc<DirtySet>,
    pos: usize,
}

impl LoadGauge {
    /// A gauge reading `value`, watched by no table.
    pub fn new(value: u32) -> Self {
        LoadGauge {
            value: AtomicU32::new(value),
            watched: AtomicBool::new(false),
            watch: ArcSwapOption::empty(),
        }
    }

    /// The current value.
    #[inline]
    pub fn load(&self, order: Ordering) -> u32 {
        self.value.load(order)
    }

    /// Sets the value.
    pub fn store(&self, value: u32) {
        self.value.store(value, Ordering::SeqCst);
        self.changed();
    }

    /// Adds to the value (wrapping), returning the previous one.
    #[inline]
    pub fn fetch_add(&self, n: u32) -> u32 {
        let old = self.value.fetch_add(n, Ordering::SeqCst);
        self.changed();
        old
    }

    /// Subtracts from the value (wrapping), returning the previous one.
    #[inline]
    pub fn fetch_sub(&self, n: u32) -> u32 {
        let old = self.value.fetch_sub(n, Ordering::SeqCst);
        self.changed();
        old
    }

    /// Sets the value to `new` if it is `current` (may fail spuriously, as
    /// `AtomicU32::compare_exchange_weak`); `Err` carries the value found.
    #[inline]
    pub fn compare_exchange_weak(&self, current: u32, new: u32) -> Result<u32, u32> {
        let r = self
            .value
            .compare_exchange_weak(current, new, Ordering::SeqCst, Ordering::SeqCst);
        if r.is_ok() {
            self.changed();
        }
        r
    }

    /// Tells the watching table, if any, that the value moved. Always after the value is
    /// written: the table re-reads the value after it takes the mark, so it sees this change
    /// or a later one.
    #[inline]
    fn changed(&self) {
        if self.watched.load(Ordering::SeqCst) {
            self.tell_watch();
        }
    }

    #[inline(never)]
    fn tell_watch(&self) {
        if let Some(w) = &*self.watch.load() {
            w.dirty.mark(w.pos);
        }
    }

    /// Reports every change from now on to `dirty` as position `pos`, instead of to the table
    /// watching until now, which is marked orphaned: it will no longer hear of this gauge.
    /// Returns the value as of the watch: any later change is reported.
    pub(crate) fn watch(&self, dirty: &Arc<DirtySet>, pos: usize) -> u32 {
        let before = self.watch.swap(Some(Arc::new(Watch {
            dirty: Arc::clone(dirty),
            pos,
        })));
        // Even when `before` is `dirty` itself: the gauge appears twice in one table, and one of
        // the two positions will not hear of it.
        if let Some(before) = before {
            before.dirty.orphan();
        }
        // Stored even when already set: this store is what makes the watch installed above
        // visible to the changes that see it (see the module's note).
        self.watched.store(true, Ordering::SeqCst);
        self.value.load(Ordering::SeqCst)
    }

    /// Stops reporting to `dirty`, if the gauge still does (the table is being dropped).
    pub(crate) fn unwatch(&self, dirty: &Arc<DirtySet>) {
        let current = self.watch.load();
        if current
            .as_ref()
            .is_some_and(|w| Arc::ptr_eq(&w.dirty, dirty))
        {
            // Fails harmlessly if a newer table took the gauge in between.
            self.watch.compare_and_swap(&current, None);
        }
    }
}

#[cfg(test)]
impl LoadGauge {
    /// Whether some table watches the gauge.
    pub(crate) fn is_watched(&self) -> bool {
        self.watch.load().is_some()
    }
}

impl fmt::Debug for LoadGauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadGauge")
            .field("value", &self.value.load(Ordering::Relaxed))
            .field("watched", &self.watch.load().is_some())
            .finish()
    }
}

/// The positions of a table whose gauges changed since the table last looked: one bit per
/// position and, past [`SUMMARY_FROM`] words, a summary word so that a look at a clean set
/// stays one load. Below that, a look reads every word (at most two cache lines), which costs a
/// pick less than a second locked `fetch_or` costs each change.
///
/// Bit `b` of the summary stands for every word `w` with `w % 64 == b`. A mark sets the
/// position's bit, then the summary bit; [`DirtySet::drain`] clears the summary, then the
/// words. So a mark that lands in a word after the drain cleared it also sets the summary
/// after the drain cleared that, and the next drain finds it.
#[derive(Debug)]
pub(crate) struct DirtySet {
    words: Box<[AtomicU64]>,
    summary: Option<AtomicU64>,
    /// Some gauge of the table now reports to another table.
    orphaned: AtomicBool,
}

/// Word count (64 positions each) from which a set keeps a summary.
const SUMMARY_FROM: usize = 17;

impl DirtySet {
    /// A clean set for positions `0..len`.
    pub(crate) fn new(len: usize) -> Self {
        let words = len.div_ceil(64);
        DirtySet {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            summary: (words >= SUMMARY_FROM).then(|| AtomicU64::new(0)),
            orphaned: AtomicBool::new(false),
        }
    }

    /// Position `pos` changed. AcqRel, so that the value written before the mark is visible to
    /// the drain that takes it, and so that a drain's clearing of the word happens before this
    /// summary `fetch_or` whenever it came before this word `fetch_or` (the order argument
    /// above).
    #[inline]
    fn mark(&self, pos: usize) {
        let word = pos / 64;
        let Some(w) = self.words.get(word) else {
            return;
        };
        w.fetch_or(1 << (pos % 64), Ordering::AcqRel);
        if let Some(summary) = &self.summary {
            summary.fetch_or(1 << (word % 64), Ordering::AcqRel);
        }
    }

    /// Whether no position is marked.
    #[inline]
    pub(crate) fn is_clean(&self) -> bool {
        match &self.summary {
            Some(summary) => summary.load(Ordering::Acquire) == 0,
            None => {
                self.words
                    .iter()
                    .fold(0, |any, w| any | w.load(Ordering::Acquire))
                    == 0
            }
        }
    }

    /// Clears the marks, calling `f` with each marked position (once, in no promised order).
    /// Marks made while it runs are either reported now or left for the next drain.
    pub(crate) fn drain(&self, mut f: impl FnMut(usize)) {
        let mut take = |word: usize| {
            let mut bits = self.words[word].swap(0, Ordering::AcqRel);
            while bits != 0 {
                f(word * 64 + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        };
        let Some(summary) = &self.summary else {
            for word in 0..self.words.len() {
                if self.words[word].load(Ordering::Relaxed) != 0 {
                    take(word);
                }
            }
            return;
        };
        let mut summary = summary.swap(0, Ordering::AcqRel);
        while summary != 0 {
            let b = summary.trailing_zeros() as usize;
            summary &= summary - 1;
            for word in (b..self.words.len()).step_by(64) {
                take(word);
            }
        }
    }

    /// Some gauge of the table reports elsewhere now.
    fn orphan(&self) {
        self.orphaned.store(true, Ordering::Release);
    }

    /// Whether some gauge of the table reports elsewhere: its marks no longer tell the table
    /// everything that changed.
    #[inline]
    pub(crate) fn is_orphaned(&self) -> bool {
        self.orphaned.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(d: &DirtySet) -> Vec<usize> {
        let mut v = Vec::new();
        d.drain(|p| v.push(p));
        v.sort_unstable();
        v
    }

    #[test]
    fn a_watched_gauge_marks_its_position() {
        let d = Arc::new(DirtySet::new(200));
        let g = LoadGauge::new(0);
        g.watch(&d, 130);
        assert!(d.is_clean());
        g.fetch_add(1);
        g.fetch_sub(1);
        assert!(!d.is_clean());
        assert_eq!(drained(&d), [130], "two changes, one mark");
        assert!(d.is_clean());
        assert_eq!(drained(&d), [] as [usize; 0]);
    }

    #[test]
    fn every_change_marks_and_a_failed_exchange_does_not() {
        let d = Arc::new(DirtySet::new(3));
        let g = LoadGauge::new(5);
        g.watch(&d, 2);
        assert!(g.compare_exchange_weak(4, 6).is_err());
        assert!(d.is_clean(), "nothing changed");
        g.store(7);
        assert_eq!(drained(&d), [2], "store");
        while g.compare_exchange_weak(7, 8).is_err() {}
        assert_eq!(drained(&d), [2], "exchange");
        assert_eq!(g.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn without_a_summary_every_word_is_looked_at() {
        let d = Arc::new(DirtySet::new(64 * (SUMMARY_FROM - 1)));
        assert!(d.summary.is_none());
        let gauges: Vec<LoadGauge> = (0..2).map(LoadGauge::new).collect();
        for (g, pos) in gauges.iter().zip([5, 64 * (SUMMARY_FROM - 1) - 1]) {
            g.watch(&d, pos);
            g.fetch_add(1);
        }
        assert!(!d.is_clean());
        assert_eq!(drained(&d), [5, 64 * (SUMMARY_FROM - 1) - 1]);
        assert!(d.is_clean());
    }

    #[test]
    fn summary_bits_cover_every_word_past_4096() {
        let d = Arc::new(DirtySet::new(10_000));
        let gauges: Vec<LoadGauge> = (0..3).map(LoadGauge::new).collect();
        // Words 1, 65 and 129 share summary bit 1.
        for (g, pos) in gauges.iter().zip([64, 65 * 64 + 3, 129 * 64 + 63]) {
            g.watch(&d, pos);
            g.fetch_add(1);
        }
        assert_eq!(drained(&d), [64, 4163, 8319]);
    }

    #[test]
    fn a_new_watch_orphans_the_old_and_unwatch_leaves_others_alone() {
        let (old, new) = (Arc::new(DirtySet::new(4)), Arc::new(DirtySet::new(4)));
        let g = LoadGauge::new(0);
        g.watch(&old, 1);
        g.watch(&new, 3);
        assert!(old.is_orphaned() && !new.is_orphaned());
        g.unwatch(&old);
        g.fetch_add(1);
        assert!(old.is_clean());
        assert_eq!(drained(&new), [3], "still reports to the newer table");
        g.unwatch(&new);
        g.fetch_add(1);
        assert!(new.is_clean(), "watched by nobody");
    }
}
