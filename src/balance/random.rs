//! Weighted random: each pick chooses a member with probability `weight / total_weight`.
//!
//! `build` lays the weights out as an alias table (Walker; Vose's construction), in integers so
//! the probabilities are exact: `n` columns of height `W = sum(weights)`, column `i` kept for
//! member `i` up to `keep[i]` and given to `alias[i]` above it. A pick is then two bounded draws
//! from `fastrand`'s thread-local generator (which neither locks nor allocates) and one compare:
//! O(1) whatever the size of the tier. Nothing here is shared mutable state.

use super::Member;

/// One column of the alias table.
#[derive(Debug, Clone, Copy)]
struct Column {
    /// Draws below this height pick the column's own member.
    keep: u64,
    /// The member owning the rest of the column.
    alias: u32,
}

/// The alias table and the column height.
#[derive(Debug, Default)]
pub(crate) struct Random {
    columns: Vec<Column>,
    total_weight: u64,
}

impl Random {
    pub(crate) fn build(members: &[Member]) -> Self {
        let n = members.len() as u64;
        let total_weight: u64 = members.iter().map(|m| u64::from(m.weight.max(1))).sum();
        // Member i brings `w_i × n` of mass to n columns of `W` each: the totals agree, so
        // every column fills exactly.
        let mut mass: Vec<u64> = members
            .iter()
            .map(|m| u64::from(m.weight.max(1)) * n)
            .collect();
        let mut columns: Vec<Column> = (0..members.len())
            .map(|i| Column {
                keep: total_weight,
                alias: i as u32,
            })
            .collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..members.len()).partition(|&i| mass[i] < total_weight);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            columns[s] = Column {
                keep: mass[s],
                alias: l as u32,
            };
            mass[l] -= total_weight - mass[s];
            if mass[l] < total_weight {
                large.pop();
                small.push(l);
            }
        }
        // Whatever remains has exactly `W` of mass (integer arithmetic leaves no residue) and
        // keeps its own column whole, as initialised.
        Random {
            columns,
            total_weight,
        }
    }

    #[inline]
    pub(crate) fn pick(&self, _members: &[Member]) -> Option<usize> {
        if self.columns.is_empty() {
            return None;
        }
        let i = fastrand::usize(..self.columns.len());
        let c = self.columns[i];
        Some(if fastrand::u64(..self.total_weight) < c.keep {
            i
        } else {
            c.alias as usize
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::balance::test_support::members;

    /// Each member's exact probability, times `n × W`, read back from the table.
    fn masses(t: &Random) -> Vec<u64> {
        let mut mass = vec![0; t.columns.len()];
        for (i, c) in t.columns.iter().enumerate() {
            mass[i] += c.keep;
            mass[c.alias as usize] += t.total_weight - c.keep;
        }
        mass
    }

    #[test]
    fn empty_is_none() {
        assert_eq!(Random::build(&[]).pick(&[]), None);
    }

    #[test]
    fn draws_follow_weights() {
        let m = members(&[1, 2, 7]);
        let t = Random::build(&m);
        fastrand::seed(7);
        let mut counts = [0u32; 3];
        for _ in 0..100_000 {
            counts[t.pick(&m).unwrap()] += 1;
        }
        for (c, ideal) in counts.iter().zip([10_000, 20_000, 70_000]) {
            assert!(
                c.abs_diff(ideal) < 1_500,
                "counts {counts:?} for weights 1:2:7"
            );
        }
    }

    proptest! {
        #[test]
        fn table_is_exactly_the_weights(weights in prop::collection::vec(1u32..=256, 1..=64)) {
            let t = Random::build(&members(&weights));
            let n = weights.len() as u64;
            let expected: Vec<u64> = weights.iter().map(|&w| u64::from(w) * n).collect();
            prop_assert_eq!(masses(&t), expected);
        }
    }
}
