//! Bounded top-k selection, optionally keeping only the best entry of each group (product).

use std::collections::HashMap;

/// One candidate: its rank key (smaller is better), position in the gallery, group and score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Entry {
    pub key: u32,
    pub pos: usize,
    pub group: u32,
    pub score: f32,
}

impl Entry {
    #[inline(always)]
    fn rank(&self) -> (u32, usize) {
        (self.key, self.pos)
    }
}

/// Keeps the k best entries by `(key, position)` in a max-heap whose root is the worst kept.
///
/// With grouping, at most one entry per group is kept: the group's best. This equals "sort
/// everything by (key, position), then keep the first entry of each group, then take k",
/// because an entry that cannot beat the current k-th group cannot be its group's best among
/// the final k (see `offer`).
pub(crate) struct TopK {
    k: usize,
    heap: Vec<Entry>,
    slot_of_group: Option<HashMap<u32, usize>>,
}

impl TopK {
    pub fn new(k: usize, grouped: bool) -> Self {
        TopK {
            k,
            heap: Vec::with_capacity(k.min(1 << 16)),
            slot_of_group: grouped.then(HashMap::new),
        }
    }

    /// Whether an entry of this rank could enter the selection.
    #[inline(always)]
    pub fn admits(&self, key: u32, pos: usize) -> bool {
        if self.heap.len() < self.k {
            return true;
        }
        match self.heap.first() {
            Some(worst) => (key, pos) < worst.rank(),
            None => false,
        }
    }

    /// The worst key kept once full (anything with a larger key is rejected).
    #[inline(always)]
    pub fn key_bound(&self) -> u32 {
        if self.heap.len() < self.k {
            u32::MAX
        } else {
            self.heap.first().map_or(0, |e| e.key)
        }
    }

    #[inline]
    pub fn offer(&mut self, entry: Entry) {
        if !self.admits(entry.key, entry.pos) {
            return;
        }
        if let Some(slots) = &self.slot_of_group {
            if let Some(&slot) = slots.get(&entry.group) {
                // Same group already kept: keep the better of the two. A better rank moves
                // the entry away from the root of the max-heap.
                if entry.rank() < self.heap[slot].rank() {
                    self.heap[slot] = entry;
                    self.sift_down(slot);
                }
                return;
            }
        }
        if self.heap.len() < self.k {
            self.heap.push(entry);
            let last = self.heap.len() - 1;
            if let Some(slots) = &mut self.slot_of_group {
                slots.insert(entry.group, last);
            }
            self.sift_up(last);
        } else {
            // An evicted group may come back later only with a better entry than the one
            // evicted (the bound only tightens), so its group-best stays exact.
            if let Some(slots) = &mut self.slot_of_group {
                slots.remove(&self.heap[0].group);
                slots.insert(entry.group, 0);
            }
            self.heap[0] = entry;
            self.sift_down(0);
        }
    }

    /// Offers every entry of another selection (used to merge per-thread partial results).
    pub fn merge(&mut self, other: TopK) {
        for entry in other.heap {
            self.offer(entry);
        }
    }

    /// The kept entries, best first.
    pub fn into_sorted(self) -> Vec<Entry> {
        let mut entries = self.heap;
        entries.sort_unstable_by_key(|e| e.rank());
        entries
    }

    fn swap(&mut self, i: usize, j: usize) {
        self.heap.swap(i, j);
        if let Some(slots) = &mut self.slot_of_group {
            slots.insert(self.heap[i].group, i);
            slots.insert(self.heap[j].group, j);
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i].rank() > self.heap[parent].rank() {
                self.swap(i, parent);
                i = parent;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let (left, right) = (2 * i + 1, 2 * i + 2);
            let mut largest = i;
            if left < n && self.heap[left].rank() > self.heap[largest].rank() {
                largest = left;
            }
            if right < n && self.heap[right].rank() > self.heap[largest].rank() {
                largest = right;
            }
            if largest == i {
                break;
            }
            self.swap(i, largest);
            i = largest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(keys: &[u32], groups: &[u32]) -> Vec<Entry> {
        keys.iter()
            .zip(groups)
            .enumerate()
            .map(|(pos, (&key, &group))| Entry {
                key,
                pos,
                group,
                score: key as f32,
            })
            .collect()
    }

    fn reference(all: &[Entry], k: usize, grouped: bool) -> Vec<Entry> {
        let mut sorted = all.to_vec();
        sorted.sort_by_key(|e| (e.key, e.pos));
        let mut seen = std::collections::HashSet::new();
        sorted
            .into_iter()
            .filter(|e| !grouped || seen.insert(e.group))
            .take(k)
            .collect()
    }

    #[test]
    fn equals_full_sort_with_ties_and_groups() {
        let keys = [5, 3, 3, 9, 1, 3, 7, 1, 5, 0, 9, 3];
        let groups = [0, 1, 0, 2, 3, 1, 2, 0, 4, 4, 5, 6];
        let all = entries(&keys, &groups);
        for grouped in [false, true] {
            for k in 0..15 {
                let mut top = TopK::new(k, grouped);
                all.iter().for_each(|e| top.offer(*e));
                assert_eq!(top.into_sorted(), reference(&all, k, grouped), "k={k}");
            }
        }
    }

    #[test]
    fn merge_of_halves_equals_whole() {
        let keys: Vec<u32> = (0..200).map(|i| (i * 7919 % 31) as u32).collect();
        let groups: Vec<u32> = (0..200).map(|i| (i * 31 % 23) as u32).collect();
        let all = entries(&keys, &groups);
        let mut left = TopK::new(10, true);
        let mut right = TopK::new(10, true);
        all[..90].iter().for_each(|e| left.offer(*e));
        all[90..].iter().for_each(|e| right.offer(*e));
        right.merge(left);
        assert_eq!(right.into_sorted(), reference(&all, 10, true));
    }
}
