//! A compressed prefix tree (radix tree) over bytes: the prefix structure for paths and, over
//! reversed names, the suffix table for wildcard hosts.
//!
//! Built once per table; a walk visits, in order of length, every node whose key is a prefix
//! of the input, comparing whole edge labels at once. It never allocates.

/// A radix tree whose nodes carry a `T`.
#[derive(Clone, Debug)]
pub(crate) struct Radix<T> {
    /// `nodes[0]` is the root, whose key is empty.
    nodes: Vec<Node<T>>,
}

#[derive(Clone, Debug)]
struct Node<T> {
    /// The bytes from the parent to this node.
    label: Box<[u8]>,
    /// Children by the first byte of their label, sorted.
    children: Vec<(u8, u32)>,
    value: T,
}

impl<T: Default> Radix<T> {
    /// An empty tree.
    pub(crate) fn new() -> Self {
        Radix {
            nodes: vec![Node {
                label: Box::default(),
                children: Vec::new(),
                value: T::default(),
            }],
        }
    }

    /// The value at `key`, created (with `T::default()`) when absent.
    pub(crate) fn entry(&mut self, key: &[u8]) -> &mut T {
        let mut n = 0usize;
        let mut rest = key;
        loop {
            let Some(&first) = rest.first() else {
                return &mut self.nodes[n].value;
            };
            let slot = self.nodes[n].children.binary_search_by_key(&first, |c| c.0);
            let c = match slot {
                Err(at) => {
                    let id = self.push(rest, Vec::new());
                    self.nodes[n].children.insert(at, (first, id));
                    return &mut self.nodes[id as usize].value;
                }
                Ok(at) => self.nodes[n].children[at].1 as usize,
            };
            let label = &self.nodes[c].label;
            let common = label.iter().zip(rest).take_while(|(a, b)| a == b).count();
            if common == label.len() {
                n = c;
                rest = &rest[common..];
                continue;
            }
            // Split the edge: a new node for the shared part, the old child below it.
            let (head, tail) = label.split_at(common);
            let (head, tail): (Box<[u8]>, Box<[u8]>) = (head.into(), tail.into());
            let mid = self.push(&head, vec![(tail[0], c as u32)]);
            self.nodes[c].label = tail;
            let at = slot.unwrap_or_else(|at| at);
            self.nodes[n].children[at].1 = mid;
            n = mid as usize;
            rest = &rest[common..];
        }
    }

    fn push(&mut self, label: &[u8], children: Vec<(u8, u32)>) -> u32 {
        self.nodes.push(Node {
            label: label.into(),
            children,
            value: T::default(),
        });
        u32::try_from(self.nodes.len() - 1).expect("fewer than 2^32 radix nodes")
    }
}

impl<T> Radix<T> {
    /// Calls `f(value, exact)` for each node whose key is a prefix of `key`, shortest first;
    /// `exact` is true for the node whose key is `key` itself.
    #[inline]
    pub(crate) fn walk(&self, key: &[u8], mut f: impl FnMut(&T, bool)) {
        let mut node = &self.nodes[0];
        let mut rest = key;
        loop {
            f(&node.value, rest.is_empty());
            let Some(&first) = rest.first() else { return };
            let Ok(at) = node.children.binary_search_by_key(&first, |c| c.0) else {
                return;
            };
            let child = &self.nodes[node.children[at].1 as usize];
            match rest.strip_prefix(&*child.label) {
                Some(r) => {
                    rest = r;
                    node = child;
                }
                None => return,
            }
        }
    }

    /// [`Radix::walk`] over `key` read backwards (the tree's keys are stored reversed): the
    /// suffix table of wildcard hosts, without copying the host.
    #[inline]
    pub(crate) fn walk_rev(&self, key: &[u8], mut f: impl FnMut(&T, bool)) {
        let mut node = &self.nodes[0];
        let mut rest = key;
        loop {
            f(&node.value, rest.is_empty());
            let Some(&first) = rest.last() else { return };
            let Ok(at) = node.children.binary_search_by_key(&first, |c| c.0) else {
                return;
            };
            let child = &self.nodes[node.children[at].1 as usize];
            let n = child.label.len();
            if n > rest.len() || !child.label.iter().eq(rest[rest.len() - n..].iter().rev()) {
                return;
            }
            rest = &rest[..rest.len() - n];
            node = child;
        }
    }

    /// Number of nodes, the root included.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn visited(t: &Radix<Vec<u32>>, key: &[u8]) -> Vec<(u32, bool)> {
        let mut out = Vec::new();
        t.walk(key, |v, exact| out.extend(v.iter().map(|&i| (i, exact))));
        out
    }

    #[test]
    fn walks_prefixes_shortest_first() {
        let mut t: Radix<Vec<u32>> = Radix::new();
        for (i, k) in ["/a/b", "/", "/a", "/ab", "/a/"].iter().enumerate() {
            t.entry(k.as_bytes()).push(i as u32);
        }
        assert_eq!(
            visited(&t, b"/a/b/c"),
            vec![(1, false), (2, false), (4, false), (0, false)]
        );
        assert_eq!(visited(&t, b"/a"), vec![(1, false), (2, true)]);
        assert_eq!(
            visited(&t, b"/abc"),
            vec![(1, false), (2, false), (3, false)]
        );
        assert_eq!(visited(&t, b"x"), vec![]);
        assert!(t.len() < 10, "edges are compressed");
    }

    #[test]
    fn walks_reversed_keys_from_the_end() {
        let mut t: Radix<Vec<u32>> = Radix::new();
        for (i, suffix) in [".example.com", ".a.example.com", ".org"]
            .iter()
            .enumerate()
        {
            let key: Vec<u8> = suffix.bytes().rev().collect();
            t.entry(&key).push(i as u32);
        }
        let mut got = Vec::new();
        t.walk_rev(b"x.a.example.com", |v, exact| {
            got.extend(v.iter().map(|&i| (i, exact)))
        });
        assert_eq!(got, vec![(0, false), (1, false)]);
        got.clear();
        t.walk_rev(b".example.com", |v, exact| {
            got.extend(v.iter().map(|&i| (i, exact)))
        });
        assert_eq!(got, vec![(0, true)]);
    }

    proptest! {
        /// The walk visits exactly the inserted keys that prefix the input.
        #[test]
        fn walk_finds_every_prefix(
            keys in proptest::collection::vec("[ab/]{0,6}", 0..20),
            probe in "[ab/]{0,8}",
        ) {
            let mut t: Radix<Vec<u32>> = Radix::new();
            for (i, k) in keys.iter().enumerate() {
                t.entry(k.as_bytes()).push(i as u32);
            }
            let mut got: Vec<(u32, bool)> = visited(&t, probe.as_bytes());
            got.sort_unstable();
            let mut want: Vec<(u32, bool)> = keys
                .iter()
                .enumerate()
                .filter(|(_, k)| probe.starts_with(k.as_str()))
                .map(|(i, k)| (i as u32, k.len() == probe.len()))
                .collect();
            want.sort_unstable();
            prop_assert_eq!(got, want);
        }
    }
}
