//! A tournament tree of `u64` keys: each inner entry holds the smallest key below it, so the
//! overall minimum is at the top and the first position holding it, counting cyclically from
//! any start, is found in O(log n).
//!
//! The tree is 8-ary and each group of 8 siblings is one 64-byte block: a step up or down
//! reads one cache line, and 1000 keys take four levels rather than the ten of a binary tree,
//! which measured about twice as fast once the tree is written between searches.
//!
//! Entries are atomics so that readers never lock. One writer at a time (the caller's rule;
//! `least_conn` holds a try-flag while it writes): a reader racing the writer may see a path
//! half updated, in which case a search returns a position whose key was the minimum a moment
//! ago, or `None` when the entries it read disagree; it never returns a position out of range.

use std::sync::atomic::{AtomicU64, Ordering};

/// Children per entry.
const FAN: usize = 8;

/// Eight sibling entries, on one cache line.
#[derive(Debug)]
#[repr(align(64))]
struct Block([AtomicU64; FAN]);

impl Block {
    /// Bit `j` set when entry `j` is at most `bound`. Reads all eight, without branching.
    #[inline]
    fn at_most(&self, bound: u64) -> u32 {
        let mut mask = 0;
        for (j, e) in self.0.iter().enumerate() {
            mask |= u32::from(e.load(Ordering::Relaxed) <= bound) << j;
        }
        mask
    }

    /// The smallest entry.
    #[inline]
    fn min(&self) -> u64 {
        let v = self.0.each_ref().map(|e| e.load(Ordering::Relaxed));
        v[0].min(v[1])
            .min(v[2].min(v[3]))
            .min(v[4].min(v[5]).min(v[6].min(v[7])))
    }
}

/// Keys of positions `0..len`.
#[derive(Debug)]
pub(crate) struct MinTree {
    /// `levels[0]` holds the keys, padded with `u64::MAX` to whole blocks; entry `b` of
    /// `levels[k + 1]` is the minimum of block `b` of `levels[k]`. The last level is one block.
    levels: Box<[Box<[Block]>]>,
    len: usize,
}

impl MinTree {
    /// A tree over `keys`.
    pub(crate) fn new(keys: impl ExactSizeIterator<Item = u64>) -> Self {
        let len = keys.len();
        let mut level: Vec<u64> = keys.collect();
        let mut levels = Vec::new();
        loop {
            level.resize(level.len().max(1).next_multiple_of(FAN), u64::MAX);
            let blocks: Box<[Block]> = level
                .chunks_exact(FAN)
                .map(|c| Block(std::array::from_fn(|j| AtomicU64::new(c[j]))))
                .collect();
            let above: Vec<u64> = blocks.iter().map(Block::min).collect();
            levels.push(blocks);
            if above.len() == 1 {
                break;
            }
            level = above;
        }
        MinTree {
            levels: levels.into(),
            len,
        }
    }

    /// Entry `i` of level `k`.
    #[inline]
    fn entry(&self, k: usize, i: usize) -> &AtomicU64 {
        &self.levels[k][i / FAN].0[i % FAN]
    }

    /// Sets position `pos`'s key and the minima above it. Single writer only.
    pub(crate) fn set(&self, pos: usize, key: u64) {
        debug_assert!(pos < self.len);
        self.entry(0, pos).store(key, Ordering::Relaxed);
        let mut i = pos;
        for k in 0..self.levels.len() - 1 {
            let b = i / FAN;
            let min = self.levels[k][b].min();
            let parent = self.entry(k + 1, b);
            // The tree was consistent before this write, so an unchanged entry means
            // unchanged ones above it.
            if parent.load(Ordering::Relaxed) == min {
                break;
            }
            parent.store(min, Ordering::Relaxed);
            i = b;
        }
    }

    /// The first position, counting from `start` and wrapping past the end, that holds the
    /// smallest key. `None` if the tree is empty, or a concurrent write got in the way.
    #[inline]
    pub(crate) fn first_min_from(&self, start: usize) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let top = self.levels.len() - 1;
        let min = self.levels[top][0].min();
        let (k, i) = self
            .first_at_most_from(start.min(self.len - 1), min)
            .or_else(|| {
                let mask = self.levels[top][0].at_most(min);
                (mask != 0).then(|| (top, mask.trailing_zeros() as usize))
            })?;
        let pos = self.leftmost_at_most(k, i, min)?;
        (pos < self.len).then_some(pos)
    }

    /// The first entry at or after key position `start` whose value is at most `bound`, as
    /// (level, index): the rest of `start`'s block, then the rest of its parent's block, and
    /// so on up; `None` when the top block has nothing further right.
    #[inline]
    fn first_at_most_from(&self, start: usize, bound: u64) -> Option<(usize, usize)> {
        let mut i = start;
        for (k, level) in self.levels.iter().enumerate() {
            // `i` is past the level's end only after the last block of the level below.
            if let Some(block) = level.get(i / FAN) {
                let mask = block.at_most(bound) & (!0 << (i % FAN));
                if mask != 0 {
                    return Some((k, i - i % FAN + mask.trailing_zeros() as usize));
                }
            }
            i = i / FAN + 1;
        }
        None
    }

    /// The leftmost key position under entry `i` of level `k` whose key is at most `bound`,
    /// given that entry is.
    #[inline]
    fn leftmost_at_most(&self, mut k: usize, mut i: usize, bound: u64) -> Option<usize> {
        while k > 0 {
            k -= 1;
            let mask = self.levels[k].get(i)?.at_most(bound);
            if mask == 0 {
                // Only a concurrent write can lead the descent to a block above the bound.
                return None;
            }
            i = i * FAN + mask.trailing_zeros() as usize;
        }
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn reference(keys: &[u64], start: usize) -> Option<usize> {
        let n = keys.len();
        let min = *keys.iter().min()?;
        (0..n).map(|j| (start + j) % n).find(|&p| keys[p] == min)
    }

    #[test]
    fn empty_has_no_minimum() {
        assert_eq!(MinTree::new([].into_iter()).first_min_from(0), None);
    }

    #[test]
    fn one_key() {
        let t = MinTree::new([7].into_iter());
        assert_eq!(t.first_min_from(0), Some(0));
        t.set(0, 3);
        assert_eq!(t.first_min_from(0), Some(0));
    }

    #[test]
    fn ties_are_found_from_the_start_wrapping_around() {
        let t = MinTree::new([2, 1, 5, 1, 1, 9].into_iter());
        let from: Vec<_> = (0..6).map(|s| t.first_min_from(s).unwrap()).collect();
        assert_eq!(from, [1, 1, 3, 3, 4, 1]);
    }

    #[test]
    fn level_boundaries() {
        // One block, one full level of blocks, and one past it: the climb steps off the end
        // of a level exactly when its last block is full.
        for n in [8, 9, 64, 65, 512, 513] {
            let keys: Vec<u64> = (0..n as u64).map(|k| 9 - k % 7).collect();
            let t = MinTree::new(keys.iter().copied());
            for start in 0..n {
                assert_eq!(
                    t.first_min_from(start),
                    reference(&keys, start),
                    "{n} from {start}"
                );
            }
            t.set(n - 1, 0);
            assert_eq!(t.first_min_from(0), Some(n - 1), "{n}");
        }
    }

    proptest! {
        #[test]
        fn matches_a_scan_after_updates(
            keys in prop::collection::vec(0u64..8, 1..600),
            updates in prop::collection::vec((any::<prop::sample::Index>(), 0u64..8), 0..50),
        ) {
            let mut keys = keys;
            let t = MinTree::new(keys.iter().copied());
            for (step, (at, key)) in updates.into_iter().enumerate() {
                let pos = at.index(keys.len());
                keys[pos] = key;
                t.set(pos, key);
                let start = step * 7 % keys.len();
                prop_assert_eq!(t.first_min_from(start), reference(&keys, start), "start {}", start);
            }
            for start in 0..keys.len() {
                prop_assert_eq!(t.first_min_from(start), reference(&keys, start));
            }
        }
    }
}
