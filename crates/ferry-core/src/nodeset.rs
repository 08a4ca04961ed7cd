//! A set of node positions as a bitmap: a cycle files nodes by what they have free in these, and walks them in
//! position order. Against an ordered tree of positions it costs a bit per node instead of a tree node, moving a node
//! between groups is two bit flips, and the walk can skip the nodes a job's constraint rules out 64 at a time, by
//! masking with the constraint's row (`bits_of`).

/// Node positions, walked in ascending order.
#[derive(Clone, Debug, Default)]
pub(crate) struct NodeSet {
    words: Vec<u64>,
    len: usize,
}

impl NodeSet {
    /// Adds position `i`; whether it was not there.
    pub(crate) fn insert(&mut self, i: usize) -> bool {
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        let absent = self.words[word] & bit == 0;
        self.words[word] |= bit;
        self.len += usize::from(absent);
        absent
    }

    /// Takes position `i` out; whether it was there.
    pub(crate) fn remove(&mut self, i: usize) -> bool {
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        let present = self.words.get(word).is_some_and(|w| w & bit != 0);
        if present {
            self.words[word] &= !bit;
            self.len -= 1;
        }
        present
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The positions, ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.masked(None, usize::MAX)
    }

    /// The positions below `end` that `mask` (a bitmap of positions, see `bits_of`) also holds, ascending; every
    /// position below `end` where there is no mask.
    pub(crate) fn masked<'a>(&'a self, mask: Option<&'a [u64]>, end: usize) -> impl Iterator<Item = usize> + 'a {
        let words = self.words.len().min(end.div_ceil(64));
        (0..words).flat_map(move |w| {
            let mut bits = self.words[w] & mask.map_or(u64::MAX, |m| m.get(w).copied().unwrap_or(0));
            if (w + 1) * 64 > end {
                bits &= (1u64 << (end % 64)).wrapping_sub(1);
            }
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let i = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(w * 64 + i)
            })
        })
    }
}

/// A row of booleans by position as a bitmap, to mask a `NodeSet` with.
pub(crate) fn bits_of(row: &[bool]) -> Vec<u64> {
    let mut words = vec![0u64; row.len().div_ceil(64)];
    for (i, _) in row.iter().enumerate().filter(|(_, allowed)| **allowed) {
        words[i / 64] |= 1 << (i % 64);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_in_order_below_an_end_and_under_a_mask() {
        let mut set = NodeSet::default();
        for i in [3, 64, 65, 130, 0] {
            assert!(set.insert(i));
        }
        assert!(!set.insert(64));
        assert_eq!(set.len(), 5);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 3, 64, 65, 130]);
        assert_eq!(set.masked(None, 65).collect::<Vec<_>>(), vec![0, 3, 64]);
        assert_eq!(set.masked(None, 64).collect::<Vec<_>>(), vec![0, 3]);
        assert_eq!(set.masked(None, 0).count(), 0);
        let mut row = vec![false; 131];
        row[3] = true;
        row[65] = true;
        row[130] = true;
        let mask = bits_of(&row);
        assert_eq!(set.masked(Some(&mask), usize::MAX).collect::<Vec<_>>(), vec![3, 65, 130]);
        assert_eq!(set.masked(Some(&mask), 130).collect::<Vec<_>>(), vec![3, 65]);
        assert!(set.remove(65) && !set.remove(65) && !set.remove(1000));
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 3, 64, 130]);
        for i in [0, 3, 64, 130] {
            set.remove(i);
        }
        assert!(set.is_empty());
    }
}
