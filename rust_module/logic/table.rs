//! Fixed-capacity containers over caller-provided memory: an open-addressing hash table
//! (linear probing, deletion by backward shift, no tombstones) mapping a key to a `u32`
//! slot index, and a free-list pool of `u32` slot indices.
//!
//! Neither allocates nor locks; every storage element is valid as all-zero bytes (that is
//! the "empty" state), so storage may come straight from a zeroing allocator.

use crate::key::SpanKey;

/// A key the [`HashTable`] can store. `ZERO` is the all-zero value of the type (what zeroed
/// storage holds); it is a legal key like any other (emptiness is kept separately).
pub trait TableKey: Copy + Eq {
    /// The all-zero value (what zeroed storage holds).
    const ZERO: Self;
    /// Hash with a per-table seed. Only the low bits are used (masked by capacity - 1).
    fn table_hash(&self, seed: u64) -> u32;
}

impl TableKey for u32 {
    const ZERO: Self = 0;
    #[inline]
    fn table_hash(&self, seed: u64) -> u32 {
        // murmur3 fmix32 over the key and the seed.
        let mut h = *self ^ (seed as u32) ^ ((seed >> 32) as u32);
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }
}

impl TableKey for SpanKey {
    const ZERO: Self = SpanKey::EMPTY;
    #[inline]
    fn table_hash(&self, seed: u64) -> u32 {
        self.hash_seeded(seed)
    }
}

/// One bucket of a [`HashTable`]. All-zero is an empty bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSlot<K> {
    /// The key (meaningless when the bucket is empty).
    pub key: K,
    /// `table_hash` of `key` (saves rehashing on probe and shift).
    pub hash: u32,
    /// 0: empty; else the stored value + 1.
    pub value_plus_one: u32,
}

impl<K: TableKey> TableSlot<K> {
    /// An empty bucket (all zero).
    pub const EMPTY: Self = TableSlot {
        key: K::ZERO,
        hash: 0,
        value_plus_one: 0,
    };

    #[inline]
    fn is_empty(&self) -> bool {
        self.value_plus_one == 0
    }
}

/// Why [`HashTable::insert`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertError {
    /// The key is already present (the table is unchanged).
    Exists,
    /// The table is at its maximum load (or has no buckets, or the value is `u32::MAX`).
    Full,
}

/// Open-addressing hash table from `K` to `u32` over a caller-provided slice.
///
/// # Invariants
/// - `mask + 1` is a power of two `<= slots.len()` (or `slots` is unused when
///   `max_len == 0`); only `slots[..=mask]` is used.
/// - Every stored key is reachable from its home bucket `hash & mask` by a probe sequence
///   with no empty bucket in between (maintained by backward-shift deletion).
/// - `len <= max_len < mask + 1`, so at least one bucket is empty and probes terminate.
pub struct HashTable<'a, K> {
    slots: &'a mut [TableSlot<K>],
    mask: usize,
    len: u32,
    max_len: u32,
    seed: u64,
}

impl<'a, K: TableKey> HashTable<'a, K> {
    /// Takes the largest power-of-two prefix of `slots` (and empties it). The table accepts
    /// at most 7/8 of its buckets, so give it about twice the number of entries expected.
    pub fn new(slots: &'a mut [TableSlot<K>], seed: u64) -> Self {
        let n = slots.len().min(1 << 30);
        let cap = if n == 0 {
            0
        } else {
            1usize << (usize::BITS - 1 - n.leading_zeros())
        };
        for s in slots.iter_mut() {
            *s = TableSlot::EMPTY;
        }
        let max_len = if cap < 2 { 0 } else { cap - cap / 8 };
        HashTable {
            slots,
            mask: cap.saturating_sub(1),
            len: 0,
            max_len: max_len as u32,
            seed,
        }
    }

    /// Number of buckets in use (a power of two, or 0).
    pub fn buckets(&self) -> usize {
        if self.max_len == 0 {
            0
        } else {
            self.mask.wrapping_add(1)
        }
    }

    /// Most entries the table accepts.
    pub fn max_len(&self) -> u32 {
        self.max_len
    }

    /// Number of entries.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bucket holding `key`, if present.
    #[inline]
    fn find(&self, key: &K, hash: u32) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mut i = (hash as usize) & self.mask;
        // At most `buckets` probes: there is always an empty bucket, this is only a bound.
        for _ in 0..=self.mask {
            let s = self.slots.get(i)?;
            if s.is_empty() {
                return None;
            }
            if s.hash == hash && s.key == *key {
                return Some(i);
            }
            i = i.wrapping_add(1) & self.mask;
        }
        None
    }

    /// Value stored for `key`.
    #[inline]
    pub fn get(&self, key: &K) -> Option<u32> {
        let i = self.find(key, key.table_hash(self.seed))?;
        self.slots.get(i).map(|s| s.value_plus_one.wrapping_sub(1))
    }

    /// True if `key` is present.
    pub fn contains(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Inserts `key -> value` (`value < u32::MAX`).
    pub fn insert(&mut self, key: K, value: u32) -> Result<(), InsertError> {
        let hash = key.table_hash(self.seed);
        if self.find(&key, hash).is_some() {
            return Err(InsertError::Exists);
        }
        if self.len >= self.max_len || value == u32::MAX {
            return Err(InsertError::Full);
        }
        let mut i = (hash as usize) & self.mask;
        for _ in 0..=self.mask {
            let Some(s) = self.slots.get_mut(i) else {
                return Err(InsertError::Full);
            };
            if s.is_empty() {
                *s = TableSlot {
                    key,
                    hash,
                    value_plus_one: value.wrapping_add(1),
                };
                self.len = self.len.wrapping_add(1);
                return Ok(());
            }
            i = i.wrapping_add(1) & self.mask;
        }
        Err(InsertError::Full)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &K) -> Option<u32> {
        let hash = key.table_hash(self.seed);
        let mut hole = self.find(key, hash)?;
        let value = self.slots.get(hole)?.value_plus_one.wrapping_sub(1);
        // Backward shift: pull later entries of the probe run into the hole when the hole
        // lies on their probe path (between their home bucket and their bucket, cyclically).
        let mut j = hole;
        for _ in 0..=self.mask {
            j = j.wrapping_add(1) & self.mask;
            let Some(&next) = self.slots.get(j) else {
                break;
            };
            if next.is_empty() {
                break;
            }
            let home = (next.hash as usize) & self.mask;
            // Distance from home to j, and from home to the hole, both cyclic.
            let d_j = j.wrapping_sub(home) & self.mask;
            let d_hole = hole.wrapping_sub(home) & self.mask;
            if d_hole <= d_j {
                if let Some(h) = self.slots.get_mut(hole) {
                    *h = next;
                }
                hole = j;
            }
        }
        if let Some(h) = self.slots.get_mut(hole) {
            *h = TableSlot::EMPTY;
        }
        self.len = self.len.wrapping_sub(1);
        Some(value)
    }

    /// Calls `f(key, value)` for every entry (order unspecified). O(buckets).
    pub fn for_each(&self, mut f: impl FnMut(&K, u32)) {
        if let Some(used) = self.slots.get(..self.buckets()) {
            for s in used.iter().filter(|s| !s.is_empty()) {
                f(&s.key, s.value_plus_one.wrapping_sub(1));
            }
        }
    }
}

/// A pool of slot indices `0..capacity` over a caller-provided `&mut [u32]` (a stack of the
/// free ones). The pool does not know which indices are out: pushing one that is already
/// free is a caller bug it can only partly detect (when the stack would overflow).
pub struct IndexPool<'a> {
    free: &'a mut [u32],
    n_free: u32,
    capacity: u32,
    high_water: u32,
}

impl<'a> IndexPool<'a> {
    /// A full pool of `min(capacity, free.len(), u32::MAX - 1)` indices (`u32::MAX` stays
    /// free for use as a "none" marker); `pop` hands out 0, 1, 2, ...
    pub fn new(free: &'a mut [u32], capacity: usize) -> Self {
        let cap = capacity.min(free.len()).min((u32::MAX - 1) as usize) as u32;
        let mut pool = IndexPool {
            free,
            n_free: 0,
            capacity: cap,
            high_water: 0,
        };
        pool.reset();
        pool
    }

    /// Puts every index back (and clears the high-water mark).
    pub fn reset(&mut self) {
        let cap = self.capacity;
        for (k, f) in self.free.iter_mut().take(cap as usize).enumerate() {
            *f = cap.wrapping_sub(1).wrapping_sub(k as u32);
        }
        self.n_free = cap;
        self.high_water = 0;
    }

    /// Takes a free index.
    #[inline]
    pub fn pop(&mut self) -> Option<u32> {
        let top = self.n_free.checked_sub(1)?;
        let idx = *self.free.get(top as usize)?;
        self.n_free = top;
        let used = self.capacity.wrapping_sub(top);
        if used > self.high_water {
            self.high_water = used;
        }
        Some(idx)
    }

    /// Returns `idx` to the pool. False (and nothing changes) if `idx` is out of range or the
    /// pool is already full.
    #[inline]
    pub fn push(&mut self, idx: u32) -> bool {
        if idx >= self.capacity {
            return false;
        }
        match self.free.get_mut(self.n_free as usize) {
            Some(f) if self.n_free < self.capacity => {
                *f = idx;
                self.n_free = self.n_free.wrapping_add(1);
                true
            }
            _ => false,
        }
    }

    /// Number of indices the pool manages (`0..capacity`).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Indices available to `pop`.
    pub fn free_count(&self) -> u32 {
        self.n_free
    }

    /// Indices handed out and not yet pushed back.
    pub fn in_use(&self) -> u32 {
        self.capacity.wrapping_sub(self.n_free)
    }

    /// Most indices ever out at once since creation/reset.
    pub fn high_water(&self) -> u32 {
        self.high_water
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};
    use std::vec;
    use std::vec::Vec;

    /// A key whose hash is chosen by the test, to force collisions and wrap-around.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    struct Forced {
        id: u32,
        hash: u32,
    }
    impl TableKey for Forced {
        const ZERO: Self = Forced { id: 0, hash: 0 };
        fn table_hash(&self, _seed: u64) -> u32 {
            self.hash
        }
    }

    fn check_invariants<K: TableKey + std::fmt::Debug>(t: &HashTable<'_, K>) {
        let mut n = 0;
        let cap = t.buckets();
        for i in 0..cap {
            let s = &t.slots[i];
            if s.is_empty() {
                assert_eq!(*s, TableSlot::EMPTY, "empty slots are zeroed");
                continue;
            }
            n += 1;
            // No empty bucket between home and i.
            let home = s.hash as usize & t.mask;
            let mut k = home;
            while k != i {
                assert!(!t.slots[k].is_empty(), "hole in probe path of {:?}", s.key);
                k = (k + 1) & t.mask;
            }
            assert_eq!(t.get(&s.key), Some(s.value_plus_one - 1));
        }
        assert_eq!(n, t.len as usize);
    }

    #[test]
    fn capacity_rounds_down_to_power_of_two() {
        for (n, cap, max) in [
            (0, 0, 0),
            (1, 0, 0),
            (2, 2, 2),
            (3, 2, 2),
            (8, 8, 7),
            (100, 64, 56),
            (8192, 8192, 7168),
        ] {
            let mut v = vec![TableSlot::<u32>::EMPTY; n];
            let t = HashTable::new(&mut v, 1);
            assert_eq!(t.buckets(), cap, "n={n}");
            assert_eq!(t.max_len(), max, "n={n}");
        }
        let mut v = vec![TableSlot::<u32>::EMPTY; 1];
        let mut t = HashTable::new(&mut v, 1);
        assert_eq!(t.insert(5, 1), Err(InsertError::Full));
        assert_eq!(t.get(&5), None);
        assert_eq!(t.remove(&5), None);
    }

    #[test]
    fn insert_get_remove_basic() {
        let mut v = vec![TableSlot::<u32>::EMPTY; 16];
        let mut t = HashTable::new(&mut v, 42);
        assert!(t.is_empty());
        assert_eq!(t.insert(0, 7), Ok(()), "key 0 is an ordinary key");
        assert_eq!(t.insert(0, 8), Err(InsertError::Exists));
        assert_eq!(t.insert(1, u32::MAX), Err(InsertError::Full));
        for k in 1..14u32 {
            assert_eq!(t.insert(k, k * 10), Ok(()));
        }
        assert_eq!(t.len(), 14);
        assert_eq!(t.insert(99, 1), Err(InsertError::Full), "7/8 load limit");
        assert_eq!(t.get(&0), Some(7));
        assert_eq!(t.get(&13), Some(130));
        check_invariants(&t);
        for k in (0..14u32).step_by(2) {
            assert!(t.remove(&k).is_some());
            check_invariants(&t);
        }
        assert_eq!(t.remove(&0), None);
        let mut seen = Vec::new();
        t.for_each(|k, v| seen.push((*k, v)));
        seen.sort();
        assert_eq!(
            seen,
            (1..14).step_by(2).map(|k| (k, k * 10)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn backward_shift_across_wrap_around() {
        let mut v = vec![TableSlot::<Forced>::EMPTY; 8];
        let mut t = HashTable::new(&mut v, 0);
        // Three keys homed at 6, two at 7, one at 0: the run wraps to the start.
        let keys = [(1, 6), (2, 6), (3, 7), (4, 6), (5, 0), (6, 7)];
        for (id, h) in keys {
            t.insert(Forced { id, hash: h }, id).unwrap();
        }
        check_invariants(&t);
        t.remove(&Forced { id: 1, hash: 6 }).unwrap();
        check_invariants(&t);
        t.remove(&Forced { id: 3, hash: 7 }).unwrap();
        check_invariants(&t);
        for (id, h) in [(2, 6), (4, 6), (5, 0), (6, 7)] {
            assert_eq!(t.get(&Forced { id, hash: h }), Some(id));
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32, u8),
        Remove(u32, u8),
        Get(u32, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few distinct ids and hashes => many collisions and long runs.
        prop_oneof![
            (0..40u32, 0..16u8).prop_map(|(a, b)| Op::Insert(a, b)),
            (0..40u32, 0..16u8).prop_map(|(a, b)| Op::Remove(a, b)),
            (0..40u32, 0..16u8).prop_map(|(a, b)| Op::Get(a, b)),
        ]
    }

    proptest! {
        #[test]
        fn table_matches_hashmap(ops in proptest::collection::vec(op(), 0..300), size in 0usize..40) {
            let mut v = vec![TableSlot::<Forced>::EMPTY; size];
            let mut t = HashTable::new(&mut v, 0);
            let mut model: HashMap<Forced, u32> = HashMap::new();
            let max = t.max_len() as usize;
            for (n, op) in ops.into_iter().enumerate() {
                let n = n as u32;
                match op {
                    Op::Insert(id, h) => {
                        let k = Forced { id, hash: u32::from(h) * 0x1000_0001 };
                        let expect = if model.contains_key(&k) {
                            Err(InsertError::Exists)
                        } else if model.len() >= max {
                            Err(InsertError::Full)
                        } else {
                            model.insert(k, n);
                            Ok(())
                        };
                        prop_assert_eq!(t.insert(k, n), expect);
                    }
                    Op::Remove(id, h) => {
                        let k = Forced { id, hash: u32::from(h) * 0x1000_0001 };
                        prop_assert_eq!(t.remove(&k), model.remove(&k));
                    }
                    Op::Get(id, h) => {
                        let k = Forced { id, hash: u32::from(h) * 0x1000_0001 };
                        prop_assert_eq!(t.get(&k), model.get(&k).copied());
                    }
                }
                prop_assert_eq!(t.len() as usize, model.len());
            }
            check_invariants(&t);
        }

        #[test]
        fn real_hashes_fill_to_max(seed in any::<u64>(), keys in proptest::collection::hash_set(any::<u32>(), 0..=56)) {
            let mut v = vec![TableSlot::<u32>::EMPTY; 64];
            let mut t = HashTable::new(&mut v, seed);
            for (i, k) in keys.iter().enumerate() {
                prop_assert_eq!(t.insert(*k, i as u32), Ok(()));
            }
            check_invariants(&t);
            for k in &keys {
                prop_assert!(t.remove(k).is_some());
            }
            prop_assert!(t.is_empty());
            prop_assert!(v.iter().all(|s| *s == TableSlot::EMPTY));
        }

        #[test]
        fn pool_hands_out_each_index_once(ops in proptest::collection::vec(any::<bool>(), 0..200), cap in 0usize..20, extra in 0usize..4) {
            let mut store = vec![0u32; cap + extra];
            let mut pool = IndexPool::new(&mut store, cap);
            prop_assert_eq!(pool.capacity() as usize, cap);
            let mut out: Vec<u32> = Vec::new();
            let mut hw = 0;
            for pop in ops {
                if pop {
                    match pool.pop() {
                        Some(i) => {
                            prop_assert!((i as usize) < cap);
                            prop_assert!(!out.contains(&i));
                            out.push(i);
                        }
                        None => prop_assert_eq!(out.len(), cap),
                    }
                } else if let Some(i) = out.pop() {
                    prop_assert!(pool.push(i));
                }
                hw = hw.max(out.len());
                prop_assert_eq!(pool.in_use() as usize, out.len());
                prop_assert_eq!(pool.high_water() as usize, hw);
            }
            for i in out.drain(..) {
                prop_assert!(pool.push(i));
            }
            prop_assert_eq!(pool.free_count() as usize, cap);
            prop_assert!(!pool.push(0), "full pool refuses");
            let all: HashSet<u32> = (0..cap).map(|_| pool.pop().unwrap()).collect();
            prop_assert_eq!(all.len(), cap);
            prop_assert_eq!(pool.pop(), None);
        }
    }

    #[test]
    fn pool_pops_ascending_and_rejects_bad_push() {
        let mut store = vec![0u32; 4];
        let mut pool = IndexPool::new(&mut store, 10);
        assert_eq!(pool.capacity(), 4);
        assert_eq!((pool.pop(), pool.pop()), (Some(0), Some(1)));
        assert!(!pool.push(4), "out of range");
        assert!(pool.push(1));
        assert!(pool.push(0));
        assert!(!pool.push(0), "double free detected when full");
        assert_eq!(pool.high_water(), 2);
    }
}
