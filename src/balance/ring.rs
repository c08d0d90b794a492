//! A hash ring of virtual nodes with an O(1) lookup index, shared by `consistent_hash` and
//! `ip_hash`.
//!
//! Each member owns `points_per_weight × weight` points placed at positions derived only from
//! its `id_hash` and the point's ordinal, so a member keeps the same points whatever the rest of
//! the tier looks like: removing a member moves only the keys it owned, adding one moves only
//! the keys it takes, and a rebuild of an identical member list is identical. Raising a weight
//! appends points and leaves the old ones in place. Everything is computed in `build`; `locate`
//! reads three arrays and never allocates. No I/O, no clocks.

use super::hash::mix64;
use super::Member;

/// Total points above which every member's points are scaled down together, to bound memory
/// (about 16 bytes a point, 32 MiB at the cap) and build time. 64 servers of weight 256 at
/// 100 points, or 1000 servers of weight 20, stay below it. Scaling changes every member's
/// point count, so while a pool sits above the cap a change to it moves more keys than the
/// ideal.
const MAX_POINTS: u64 = 1 << 21;

/// The sorted ring plus a bucket index over the top bits of the hash.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    /// Point positions, ascending.
    points: Vec<u64>,
    /// `owners[i]` is the member position owning `points[i]`.
    owners: Vec<u32>,
    /// `starts[b]` is the first point whose top bits are >= `b`; one more entry than buckets,
    /// so that bucket `b` spans `starts[b]..starts[b + 1]`. There are about as many buckets as
    /// points, which makes a lookup a couple of loads instead of a binary search over the whole
    /// ring (whose lower levels would miss the cache at 100k points).
    starts: Vec<u32>,
    /// `64 - log2(buckets)`: the top bits of a hash select its bucket.
    shift: u32,
}

impl Ring {
    /// Builds the ring over `members`, `points_per_weight` points per unit of weight.
    pub(crate) fn build(members: &[Member], points_per_weight: u32) -> Ring {
        if members.is_empty() {
            return Ring::default();
        }
        let total_weight: u64 = members.iter().map(|m| u64::from(m.weight.max(1))).sum();
        let wanted = u64::from(points_per_weight.max(1)).saturating_mul(total_weight);
        let per_weight = if wanted > MAX_POINTS {
            (MAX_POINTS / total_weight).max(1)
        } else {
            u64::from(points_per_weight.max(1))
        };

        let mut ring: Vec<(u64, u32)> = Vec::with_capacity((per_weight * total_weight) as usize);
        for (pos, m) in members.iter().enumerate() {
            for i in 0..per_weight * u64::from(m.weight.max(1)) {
                ring.push((point(m.id_hash, i), pos as u32));
            }
        }
        // Sorting by owner too makes two members colliding on one point resolve the same way in
        // every build.
        ring.sort_unstable();

        let bits = ring.len().next_power_of_two().trailing_zeros().max(1);
        let buckets = 1usize << bits;
        let shift = 64 - bits;
        let mut starts = Vec::with_capacity(buckets + 1);
        let mut i = 0;
        for b in 0..buckets as u64 {
            while i < ring.len() && ring[i].0 >> shift < b {
                i += 1;
            }
            starts.push(i as u32);
        }
        starts.push(ring.len() as u32);

        Ring {
            points: ring.iter().map(|p| p.0).collect(),
            owners: ring.iter().map(|p| p.1).collect(),
            starts,
            shift,
        }
    }

    /// Number of points on the ring.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.points.len()
    }

    /// Index of the first point clockwise from `hash` (at or after it, wrapping past the top).
    /// The ring must not be empty.
    #[inline]
    pub(crate) fn locate(&self, hash: u64) -> usize {
        let b = (hash >> self.shift) as usize;
        let lo = self.starts[b] as usize;
        let hi = self.starts[b + 1] as usize;
        // Points of later buckets are all above `hash`, so if this bucket has none at or after
        // it, the answer is the first point of the next non-empty bucket, which is `hi`.
        let i = lo + self.points[lo..hi].partition_point(|&p| p < hash);
        if i == self.points.len() {
            0
        } else {
            i
        }
    }

    /// The member position owning point `i`.
    #[inline]
    pub(crate) fn owner(&self, i: usize) -> usize {
        self.owners[i] as usize
    }
}

/// Where the `i`-th point of the member with `id_hash` sits: a function of those two only.
#[inline]
fn point(id_hash: u64, i: u64) -> u64 {
    mix64(id_hash ^ mix64(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::members;

    /// The owner by a plain scan, for checking the index.
    fn owner_by_scan(ring: &Ring, hash: u64) -> usize {
        let i = ring.points.iter().position(|&p| p >= hash).unwrap_or(0);
        ring.owner(i)
    }

    #[test]
    fn points_scale_with_weight() {
        let ring = Ring::build(&members(&[1, 3]), 10);
        assert_eq!(ring.len(), 40, "10 points per unit of weight");
        let second = ring.owners.iter().filter(|&&o| o == 1).count();
        assert_eq!(second, 30, "weight 3 owns three times the points");
    }

    #[test]
    fn index_agrees_with_a_scan() {
        let ring = Ring::build(&members(&[1, 2, 5, 1]), 7);
        let probes = (0..10_000u64)
            .map(mix64)
            .chain([0, u64::MAX, ring.points[0]]);
        for h in probes {
            assert_eq!(
                ring.owner(ring.locate(h)),
                owner_by_scan(&ring, h),
                "hash {h:#x}"
            );
        }
    }

    #[test]
    fn wraps_past_the_last_point() {
        let ring = Ring::build(&members(&[1]), 1);
        assert_eq!(ring.locate(u64::MAX), 0);
        assert_eq!(ring.locate(0), 0);
    }

    #[test]
    fn huge_rings_are_capped() {
        let ring = Ring::build(&members(&[256; 64]), 1000);
        assert!(ring.len() as u64 <= MAX_POINTS, "{} points", ring.len());
        assert!(ring.len() >= 64 * 256, "every unit of weight keeps a point");
    }
}
