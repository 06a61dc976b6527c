//! [`StatTable`]: stat cache entries by path, compactly.

use super::{StatEntry, key_hash as hash};

/// Stat cache entries by path: the entries in one vector, found through a
/// table of their positions. A build of a million targets sees two million
/// files; as a map of `String` to entry that was a table of four million
/// 96-byte slots, 400 MB of its peak, against 180 MB here.
#[derive(Debug, Default, Clone)]
pub struct StatTable {
    entries: Vec<(Box<str>, StatEntry)>,
    /// Positions in `entries`, hashed by path.
    index: hashbrown::HashTable<u32>,
}

impl StatTable {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, path: &str) -> Option<usize> {
        let same = |&i: &u32| &*self.entries[i as usize].0 == path;
        self.index.find(hash(path), same).map(|&i| i as usize)
    }

    pub fn get(&self, path: &str) -> Option<&StatEntry> {
        self.position(path).map(|i| &self.entries[i].1)
    }

    pub fn contains(&self, path: &str) -> bool {
        self.position(path).is_some()
    }

    /// Sets `path`'s entry, replacing any it had.
    pub fn insert(&mut self, path: &str, entry: StatEntry) {
        if let Some(i) = self.position(path) {
            self.entries[i].1 = entry;
            return;
        }
        let entries = &self.entries;
        let rehash = |&i: &u32| hash(&entries[i as usize].0);
        let at = u32::try_from(entries.len()).expect("fewer than 4 billion files");
        self.index.insert_unique(hash(path), at, rehash);
        self.entries.push((path.into(), entry));
    }

    /// Drops `path`'s entry, if it has one (the last entry takes its place).
    pub fn remove(&mut self, path: &str) {
        let Some(i) = self.position(path) else {
            return;
        };
        let entries = &self.entries;
        let same = |&j: &u32| j as usize == i;
        if let Ok(slot) = self.index.find_entry(hash(&entries[i].0), same) {
            slot.remove();
        }
        let last = self.entries.len() - 1;
        if i != last {
            let moved = hash(&self.entries[last].0);
            if let Some(j) = self.index.find_mut(moved, |&j| j as usize == last) {
                *j = i as u32;
            }
        }
        self.entries.swap_remove(i);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &StatEntry)> + '_ {
        self.entries.iter().map(|(p, e)| (&**p, e))
    }

    /// Every entry, to change in place (the paths stay).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut StatEntry)> + '_ {
        self.entries.iter_mut().map(|(p, e)| (&**p, e))
    }
}

impl StatTable {
    /// Every entry, owned.
    pub fn into_entries(self) -> impl Iterator<Item = (String, StatEntry)> {
        self.entries.into_iter().map(|(p, e)| (p.into_string(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Digest;
    use crate::state::FileStat;

    fn entry(size: u64) -> StatEntry {
        let stat = FileStat {
            size,
            mtime_ns: 1,
            ctime_ns: 2,
            ino: 3,
        };
        StatEntry::new(stat, Digest::of(&size.to_le_bytes()), 0)
    }

    #[test]
    fn entries_are_found_replaced_and_removed_by_path() {
        let mut t = StatTable::default();
        let paths: Vec<String> = (0..100).map(|i| format!("docs/{i}.txt")).collect();
        for (i, p) in paths.iter().enumerate() {
            t.insert(p, entry(i as u64));
        }
        t.insert("docs/7.txt", entry(700));
        assert_eq!(t.len(), 100);
        assert_eq!(t.get("docs/7.txt"), Some(&entry(700)));
        for p in ["docs/0.txt", "docs/50.txt", "docs/99.txt", "nope"] {
            t.remove(p);
        }
        assert_eq!(t.len(), 97);
        for (i, p) in paths.iter().enumerate() {
            let want = match i {
                0 | 50 | 99 => None,
                7 => Some(entry(700)),
                _ => Some(entry(i as u64)),
            };
            assert_eq!(t.get(p).copied(), want, "{p}");
        }
        for (_, e) in t.iter_mut() {
            e.racy = false;
        }
        assert!(t.iter().all(|(p, e)| !e.racy && t.contains(p)));
        assert_eq!(t.into_entries().count(), 97);
    }
}
