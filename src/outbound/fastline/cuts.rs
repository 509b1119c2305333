//! Bookkeeping for the one-pass check: which byte ranges are cut so what remains is still
//! valid JSON, and the keys seen in one object (duplicates refused).
use smallvec::SmallVec;
use std::collections::HashSet;

/// Cuts removed elements of a list or object together with one neighbouring comma each, so
/// what remains is still valid JSON.
#[derive(Default)]
pub(super) struct Elements {
    /// Where the last kept element ended (a later removed one is cut from there: `, <it>`).
    prev_end: Option<usize>,
    /// Where a removed run at the start began (cut up to the next kept element: `<it>, `).
    cut_first: Option<usize>,
}

impl Elements {
    /// One element read from `start` to `end`; `removed` when it is to be cut.
    pub(super) fn element(&mut self, start: usize, end: usize, removed: bool, cuts: &mut Vec<(usize, usize)>) {
        match (removed, self.prev_end) {
            (true, Some(p)) => cuts.push((p, end)),
            (true, None) => {
                self.cut_first.get_or_insert(start);
            }
            (false, _) => {
                if let Some(s) = self.cut_first.take() {
                    cuts.push((s, start));
                }
                self.prev_end = Some(end);
            }
        }
    }

    /// The list ends after its last element (which ended at `end`): a removed run with nothing
    /// kept after it is cut alone (its list or object goes whole, or is left empty).
    pub(super) fn close(&mut self, end: usize, cuts: &mut Vec<(usize, usize)>) {
        if let Some(s) = self.cut_first.take() {
            cuts.push((s, end));
        }
    }
}

/// Keys seen in one object. Most FHIR objects have a few keys: they live inline (no
/// allocation, no initialisation), a one-word prefilter spares most compares, and past 64 keys
/// a set takes over (no quadratic blow-up on hostile lines).
#[derive(Default)]
pub(super) struct Keys<'a> {
    list: SmallVec<[&'a [u8]; 16]>,
    /// One bit per (length, last byte) class seen.
    seen: u64,
    many: Option<HashSet<&'a [u8]>>,
}

impl<'a> Keys<'a> {
    #[inline]
    pub(super) fn insert(&mut self, k: &'a [u8]) -> bool {
        if let Some(set) = &mut self.many {
            return set.insert(k);
        }
        let bit = 1u64 << ((k.len() as u64 * 31 + k.last().copied().unwrap_or(0) as u64) % 64);
        let maybe_seen = self.seen & bit != 0;
        self.seen |= bit;
        if maybe_seen && self.list.contains(&k) {
            return false;
        }
        if self.list.len() < 64 {
            self.list.push(k);
        } else {
            let mut set: HashSet<&[u8]> = self.list.drain(..).collect();
            set.insert(k);
            self.many = Some(set);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_found_in_objects_of_any_size() {
        let names: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
        for size in [1, 8, 9, 64, 65, 200] {
            let mut keys = Keys::default();
            for n in &names[..size] {
                assert!(keys.insert(n.as_bytes()), "{n} is new");
            }
            for n in &names[..size] {
                assert!(!keys.insert(n.as_bytes()), "{n} is a duplicate (size {size})");
            }
        }
    }
}
