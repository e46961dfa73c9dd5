//! A bounded write-back cache of metadata tables (L2 tables, refcount
//! blocks), each one cluster of raw big-endian bytes keyed by its host
//! offset, with least-recently-used eviction.

use std::collections::HashMap;

#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) data: Box<[u8]>,
    pub(crate) dirty: bool,
    stamp: u64,
}

#[derive(Debug)]
pub(crate) struct TableCache {
    capacity: usize,
    entries: HashMap<u64, Entry>,
    clock: u64,
}

impl TableCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(2),
            entries: HashMap::new(),
            clock: 0,
        }
    }

    pub(crate) fn get(&mut self, offset: u64) -> Option<&mut Entry> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.entries.get_mut(&offset)?;
        entry.stamp = clock;
        Some(entry)
    }

    pub(crate) fn contains(&self, offset: u64) -> bool {
        self.entries.contains_key(&offset)
    }

    /// The entry to evict before inserting another, if the cache is full:
    /// the least recently used clean entry, else the least recently used.
    pub(crate) fn victim(&self) -> Option<u64> {
        if self.entries.len() < self.capacity {
            return None;
        }
        let clean = self
            .entries
            .iter()
            .filter(|(_, e)| !e.dirty)
            .min_by_key(|(_, e)| e.stamp);
        clean
            .or_else(|| self.entries.iter().min_by_key(|(_, e)| e.stamp))
            .map(|(&k, _)| k)
    }

    pub(crate) fn insert(&mut self, offset: u64, data: Box<[u8]>, dirty: bool) {
        self.clock += 1;
        self.entries.insert(
            offset,
            Entry {
                data,
                dirty,
                stamp: self.clock,
            },
        );
    }

    pub(crate) fn remove(&mut self, offset: u64) -> Option<Entry> {
        self.entries.remove(&offset)
    }

    /// Offsets of the dirty entries, ascending (so writes go out in file
    /// order).
    pub(crate) fn dirty(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.dirty)
            .map(|(&k, _)| k)
            .collect();
        v.sort_unstable();
        v
    }

    pub(crate) fn has_dirty(&self) -> bool {
        self.entries.values().any(|e| e.dirty)
    }
}
