//! The bounded store of records read from relay and not yet taken: keyed by (trace id,
//! span id), limited in record count and in bytes; when full, the oldest record is evicted
//! and counted. Used under one mutex held only for these map operations.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};

/// The map's hasher: std's SipHash-1-3, keyed at random for each store. The ids are not all
/// the service's own: trace ids arrive in requests' `traceparent` headers, chosen by whoever
/// sends them. With an unkeyed hash (the FxHash step used before) a sender could pick ids that
/// all collide and make every insert and take of this process walk one long chain; with a
/// secret key it cannot. SipHash costs more per key than that multiply, a small price next to
/// the record's copy (a record is hashed ~4 times between relay and the worker).
pub type IdHashState = RandomState;

/// (trace id, span id) of a span, as the W3C bytes.
pub type SpanIds = ([u8; 16], [u8; 8]);

/// Default capacity in records.
pub const DEFAULT_MAX_RECORDS: usize = 4096;
/// Default capacity in bytes (records are at most 256 KiB; typical ones are < 10 KiB).
pub const DEFAULT_MAX_BYTES: usize = 16 * 1024 * 1024;

struct Held {
    seq: u64,
    bytes: Vec<u8>,
}

/// Records waiting to be taken, oldest evicted first.
pub struct RecordStore {
    map: HashMap<SpanIds, Held, IdHashState>,
    /// Insertion order; entries whose `seq` no longer matches the map were taken or
    /// replaced and are skipped (and compacted away when they pile up).
    order: VecDeque<(u64, SpanIds)>,
    next_seq: u64,
    bytes: usize,
    max_records: usize,
    max_bytes: usize,
    /// Spans whose record nobody will take ([`RecordStore::forget`]) and whose record has
    /// not arrived yet: it is dropped on arrival instead of being stored, where it would push
    /// out records that are still wanted. At most `max_records`, oldest dropped first.
    forgotten: HashMap<SpanIds, u64, IdHashState>,
    forgotten_order: VecDeque<(u64, SpanIds)>,
    /// Records dropped because their span was forgotten (held, or on arrival).
    forgotten_records: u64,
}

/// What taking a record found.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// The record, removed from the store.
    Taken(Vec<u8>),
    /// There is a record of `.0` bytes but the caller's buffer is smaller: kept.
    TooSmall(usize),
    /// No record for these ids.
    Absent,
}

impl RecordStore {
    pub fn new(max_records: usize, max_bytes: usize) -> Self {
        RecordStore {
            map: HashMap::with_hasher(IdHashState::new()),
            order: VecDeque::new(),
            next_seq: 0,
            bytes: 0,
            max_records: max_records.max(1),
            max_bytes: max_bytes.max(1),
            forgotten: HashMap::with_hasher(IdHashState::new()),
            forgotten_order: VecDeque::new(),
            forgotten_records: 0,
        }
    }

    /// Records dropped so far because their span was forgotten.
    pub fn forgotten_records(&self) -> u64 {
        self.forgotten_records
    }

    /// Spans forgotten whose record has not arrived (bounded by the record capacity).
    pub fn forgotten_pending(&self) -> usize {
        self.forgotten.len()
    }

    /// Nobody will take the record of `ids` (the tracer passed its span on without waiting
    /// for it, e.g. its queue was full): drops the record if it is held, or else drops it
    /// when it arrives. Returns true if a held record was dropped.
    pub fn forget(&mut self, ids: SpanIds) -> bool {
        if let Some(h) = self.map.remove(&ids) {
            self.bytes -= h.bytes.len();
            self.forgotten_records += 1;
            return true;
        }
        if self.forgotten.contains_key(&ids) {
            return false;
        }
        while self.forgotten.len() >= self.max_records {
            match self.forgotten_order.pop_front() {
                Some((seq, old)) => {
                    if self.forgotten.get(&old) == Some(&seq) {
                        self.forgotten.remove(&old);
                    }
                }
                None => break,
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.forgotten.insert(ids, seq);
        self.forgotten_order.push_back((seq, ids));
        if self.forgotten_order.len() > 2 * self.forgotten.len() + 64 {
            let f = &self.forgotten;
            self.forgotten_order.retain(|(seq, ids)| f.get(ids) == Some(seq));
        }
        false
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Stores `record` under `ids`; returns how many records were evicted to make room
    /// (a record already stored under the same ids counts as evicted: it was never taken).
    /// The record of a forgotten span is dropped instead (counted in
    /// [`RecordStore::forgotten_records`], not as evicted).
    pub fn insert(&mut self, ids: SpanIds, record: Vec<u8>) -> u64 {
        if self.forgotten.remove(&ids).is_some() {
            self.forgotten_records += 1;
            return 0;
        }
        let mut evicted = 0;
        if let Some(old) = self.map.remove(&ids) {
            self.bytes -= old.bytes.len();
            evicted += 1;
        }
        while !self.map.is_empty()
            && (self.map.len() + 1 > self.max_records || self.bytes + record.len() > self.max_bytes)
        {
            if self.evict_oldest() {
                evicted += 1;
            } else {
                break;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += record.len();
        self.map.insert(ids, Held { seq, bytes: record });
        self.order.push_back((seq, ids));
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(seq, ids)| map.get(ids).is_some_and(|h| h.seq == *seq));
        }
        evicted
    }

    fn evict_oldest(&mut self) -> bool {
        while let Some((seq, ids)) = self.order.pop_front() {
            if self.map.get(&ids).is_some_and(|h| h.seq == seq) {
                if let Some(h) = self.map.remove(&ids) {
                    self.bytes -= h.bytes.len();
                }
                return true;
            }
        }
        false
    }

    /// Removes and returns the record of `ids` if it fits in `max_len` bytes.
    pub fn take(&mut self, ids: &SpanIds, max_len: usize) -> Take {
        match self.map.get(ids) {
            None => Take::Absent,
            Some(h) if h.bytes.len() > max_len => Take::TooSmall(h.bytes.len()),
            Some(_) => match self.map.remove(ids) {
                Some(h) => {
                    self.bytes -= h.bytes.len();
                    Take::Taken(h.bytes)
                }
                None => Take::Absent,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u8) -> SpanIds {
        ([n; 16], [n; 8])
    }

    #[test]
    fn ids_are_hashed_with_a_key_of_each_store() {
        use std::hash::BuildHasher;
        // Two stores hash the same ids differently: what collides in one does not in another,
        // and no other process can compute either.
        let (a, b) = (RecordStore::new(1, 1), RecordStore::new(1, 1));
        let base: SpanIds = ([7; 16], [9; 8]);
        assert_ne!(a.map.hasher().hash_one(base), b.map.hasher().hash_one(base));
        let mut seen = std::collections::HashSet::new();
        assert!(seen.insert(a.map.hasher().hash_one(base)));
        for i in 0..24 {
            let mut x = base;
            if i < 16 { x.0[i] ^= 1 } else { x.1[i - 16] ^= 1 }
            assert!(seen.insert(a.map.hasher().hash_one(x)), "byte {i}");
        }
        // Many sequential ids still store and come back.
        let mut st = RecordStore::new(100_000, usize::MAX);
        for n in 0..5000u32 {
            let mut id: SpanIds = ([0; 16], [0; 8]);
            id.1[..4].copy_from_slice(&n.to_le_bytes());
            st.insert(id, vec![1]);
        }
        for n in (0..5000u32).rev() {
            let mut id: SpanIds = ([0; 16], [0; 8]);
            id.1[..4].copy_from_slice(&n.to_le_bytes());
            assert_eq!(st.take(&id, 10), Take::Taken(vec![1]));
        }
        assert!(st.is_empty());
    }

    #[test]
    fn take_moves_out_and_respects_len() {
        let mut s = RecordStore::new(4, 1 << 20);
        assert_eq!(s.insert(ids(1), vec![1; 10]), 0);
        assert_eq!(s.take(&ids(2), 100), Take::Absent);
        assert_eq!(s.take(&ids(1), 9), Take::TooSmall(10));
        assert_eq!(s.len(), 1);
        assert_eq!(s.take(&ids(1), 10), Take::Taken(vec![1; 10]));
        assert_eq!(s.take(&ids(1), 10), Take::Absent);
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn evicts_oldest_by_count_and_bytes() {
        let mut s = RecordStore::new(3, 100);
        for i in 1..=3 {
            assert_eq!(s.insert(ids(i), vec![i; 10]), 0);
        }
        // Taking the middle one leaves a stale order entry that eviction skips.
        assert_eq!(s.take(&ids(2), 100), Take::Taken(vec![2; 10]));
        assert_eq!(s.insert(ids(4), vec![4; 10]), 0);
        assert_eq!(s.insert(ids(5), vec![5; 10]), 1); // evicts 1
        assert_eq!(s.take(&ids(1), 100), Take::Absent);
        assert_eq!(s.len(), 3);
        // Count: 3 held, a fourth evicts the oldest (3); 100 bytes held then.
        assert_eq!(s.insert(ids(6), vec![6; 80]), 1);
        assert_eq!(s.take(&ids(3), 100), Take::Absent);
        assert_eq!(s.bytes(), 100);
        // Bytes: a 15-byte record evicts 4 (count) and 5 (bytes), not 6.
        assert_eq!(s.insert(ids(8), vec![8; 15]), 2);
        assert_eq!(s.take(&ids(4), 100), Take::Absent);
        assert_eq!(s.take(&ids(5), 100), Take::Absent);
        assert_eq!(s.bytes(), 95);
        assert_eq!(s.len(), 2);
        // A record larger than the byte budget still goes in (alone).
        assert_eq!(s.insert(ids(7), vec![7; 200]), 2);
        assert_eq!(s.len(), 1);
        assert_eq!(s.take(&ids(7), 1000), Take::Taken(vec![7; 200]));
    }

    #[test]
    fn same_ids_replace_and_count() {
        let mut s = RecordStore::new(8, 1 << 20);
        s.insert(ids(1), vec![1; 4]);
        assert_eq!(s.insert(ids(1), vec![9; 6]), 1);
        assert_eq!(s.len(), 1);
        assert_eq!(s.bytes(), 6);
        assert_eq!(s.take(&ids(1), 100), Take::Taken(vec![9; 6]));
    }

    #[test]
    fn order_queue_stays_bounded() {
        let mut s = RecordStore::new(16, 1 << 20);
        for i in 0..10_000u32 {
            let mut k = ids(0);
            k.1 = u64::from(i).to_le_bytes();
            s.insert(k, vec![0; 8]);
            assert_eq!(s.take(&k, 8), Take::Taken(vec![0; 8]));
        }
        assert!(s.order.len() <= 2 * s.map.len() + 65);
    }

    #[test]
    fn forget_drops_a_held_record_or_the_one_to_come() {
        let mut s = RecordStore::new(4, 1 << 20);
        s.insert(ids(1), vec![1; 10]);
        assert!(s.forget(ids(1)));
        assert_eq!((s.len(), s.bytes(), s.forgotten_records()), (0, 0, 1));
        // Not arrived yet: dropped on arrival, neither stored nor counted as evicted.
        assert!(!s.forget(ids(2)));
        assert!(!s.forget(ids(2)));
        assert_eq!(s.forgotten_pending(), 1);
        assert_eq!(s.insert(ids(2), vec![2; 10]), 0);
        assert_eq!((s.len(), s.forgotten_records(), s.forgotten_pending()), (0, 2, 0));
        assert_eq!(s.take(&ids(2), 100), Take::Absent);
        // Only once: a later record under the same ids is stored.
        assert_eq!(s.insert(ids(2), vec![3; 10]), 0);
        assert_eq!(s.take(&ids(2), 100), Take::Taken(vec![3; 10]));
    }

    /// Why forget exists: records of spans passed on unannotated (a full queue) used to stay
    /// until evicted, and pushed out records still wanted: those spans then said `no_record`.
    #[test]
    fn forgotten_spans_do_not_evict_wanted_records() {
        let mut s = RecordStore::new(4, 1 << 20);
        for i in 1..=4 {
            s.insert(ids(i), vec![i; 10]); // wanted
        }
        for i in 10..=40 {
            s.forget(ids(i)); // passed on unannotated, record still on its way
            assert_eq!(s.insert(ids(i), vec![i; 10]), 0);
        }
        for i in 1..=4 {
            assert_eq!(s.take(&ids(i), 100), Take::Taken(vec![i; 10]));
        }
        assert_eq!(s.forgotten_records(), 31);
    }

    #[test]
    fn forgotten_ids_stay_bounded() {
        let mut s = RecordStore::new(8, 1 << 20);
        for i in 0..10_000u32 {
            let mut k = ids(0);
            k.1 = u64::from(i).to_le_bytes();
            s.forget(k);
            assert!(s.forgotten_pending() <= 8);
        }
        assert!(s.forgotten_order.len() <= 2 * 8 + 65);
        // The newest are still remembered, the oldest are not.
        let mut last = ids(0);
        last.1 = 9_999u64.to_le_bytes();
        assert_eq!(s.insert(last, vec![1]), 0);
        assert!(s.is_empty());
        let mut first = ids(0);
        first.1 = 0u64.to_le_bytes();
        s.insert(first, vec![1]);
        assert_eq!(s.len(), 1);
    }
}
