//! Tests of the tracker (a child module of `tracker`, compiled only under `cfg(test)`):
//! unit tests of each behaviour, and a property test that runs random operation sequences
//! against the tracker and a reference model written with std collections.

use super::*;
use crate::hot::{HotExit, HOT_RING};
use crate::key::{format_span_line, parse_span_line};
use crate::record::record_size;
use crate::uapi::{
    decode_record, ERR_DUPLICATE, ERR_TABLE_FULL, ERR_TOO_DEEP, ERR_UNKNOWN_SPAN, ERR_UNTRACKED,
};
use proptest::prelude::*;
use std::boxed::Box;
use std::collections::{HashMap, HashSet};
use std::vec;
use std::vec::Vec;

// ---------------------------------------------------------------------------------------
// Storage for tests
// ---------------------------------------------------------------------------------------

struct Mem {
    processes: Vec<ProcessSlot>,
    threads: Vec<ThreadSlot>,
    thread_free: Vec<u32>,
    thread_index: Vec<TableSlot<u32>>,
    spans: Vec<SpanSlot>,
    span_free: Vec<u32>,
    span_index: Vec<TableSlot<OpenSpanKey>>,
    active_index: Vec<TableSlot<ActiveKey>>,
    chunks: Vec<EntryChunk>,
    chunk_free: Vec<u32>,
    tracked: Vec<AtomicU64>,
    active: Vec<AtomicU64>,
    active_slot: Vec<AtomicU64>,
    skip_exit: Vec<AtomicU64>,
    registered: Vec<AtomicU64>,
    slot_hints: Vec<SlotHint>,
    thread_sched: Vec<ThreadSched>,
    span_sched: Vec<SchedPart>,
    hot: Vec<HotThread>,
    hot_hints: Vec<AtomicU32>,
}

#[derive(Clone, Copy, Debug)]
struct Caps {
    procs: usize,
    threads: usize,
    spans: usize,
    chunks: usize,
    /// Tids below this can be tracked (a multiple of 64).
    tid_limit: usize,
}

const CAPS: Caps = Caps {
    procs: 4,
    threads: 16,
    spans: 32,
    chunks: 16,
    tid_limit: 4096,
};

impl Mem {
    fn new(c: Caps) -> Self {
        // Garbage-but-valid contents: `Tracker::new` must initialise everything.
        let junk_thread = ThreadSlot {
            tid: 7,
            proc: 3,
            depth: 99,
            slot_addr: 0x40,
            ..ThreadSlot::EMPTY
        };
        let junk_span = SpanSlot {
            open: 1,
            n_entries: 5,
            ..SpanSlot::EMPTY
        };
        Mem {
            processes: vec![
                ProcessSlot {
                    in_use: 1,
                    tgid: 5,
                    ..ProcessSlot::EMPTY
                };
                c.procs
            ],
            threads: vec![junk_thread; c.threads],
            thread_free: vec![7; c.threads],
            thread_index: vec![
                TableSlot {
                    key: 3,
                    hash: 1,
                    value_plus_one: 9
                };
                (2 * c.threads).next_power_of_two()
            ],
            spans: vec![junk_span; c.spans],
            span_free: vec![1; c.spans],
            span_index: vec![TableSlot::EMPTY; (2 * c.spans).next_power_of_two()],
            active_index: vec![TableSlot::EMPTY; (2 * c.spans).next_power_of_two()],
            chunks: vec![
                EntryChunk {
                    next: 3,
                    ..EntryChunk::EMPTY
                };
                c.chunks
            ],
            chunk_free: vec![0; c.chunks],
            tracked: (0..c.tid_limit / 64)
                .map(|_| AtomicU64::new(u64::MAX))
                .collect(),
            active: (0..c.tid_limit / 64)
                .map(|_| AtomicU64::new(u64::MAX))
                .collect(),
            active_slot: (0..c.tid_limit / 64)
                .map(|_| AtomicU64::new(u64::MAX))
                .collect(),
            skip_exit: (0..c.tid_limit / 64)
                .map(|_| AtomicU64::new(u64::MAX))
                .collect(),
            registered: (0..c.tid_limit / 64)
                .map(|_| AtomicU64::new(u64::MAX))
                .collect(),
            slot_hints: (0..SLOT_HINTS)
                .map(|i| SlotHint {
                    tid: AtomicU64::new(i as u64 + 1),
                    addr: AtomicU64::new(8),
                })
                .collect(),
            thread_sched: vec![ThreadSched { run_since: 5, off_span: 1, ..ThreadSched::EMPTY }; c.threads],
            span_sched: vec![SchedPart { on_cpu_ns: 9, n_waits: 3, ..SchedPart::default() }; c.spans],
            hot: (0..c.threads).map(|_| HotThread::EMPTY).collect(),
            hot_hints: (0..HOT_HINTS).map(|i| AtomicU32::new(i as u32 + 7)).collect(),
        }
    }

    fn tracker(&mut self) -> Tracker<'_> {
        Tracker::new(
            Storage {
                processes: &mut self.processes,
                threads: &mut self.threads,
                thread_free: &mut self.thread_free,
                thread_index: &mut self.thread_index,
                spans: &mut self.spans,
                span_free: &mut self.span_free,
                span_index: &mut self.span_index,
                active_index: &mut self.active_index,
                chunks: &mut self.chunks,
                chunk_free: &mut self.chunk_free,
                tracked: &self.tracked,
                active: &self.active,
                active_slot: &self.active_slot,
                skip_exit: &self.skip_exit,
                registered: &self.registered,
                slot_hints: &self.slot_hints,
                thread_sched: &mut self.thread_sched,
                span_sched: &mut self.span_sched,
                hot: &self.hot,
                hot_hints: &self.hot_hints,
            },
            0x1234_5678,
        )
    }
}

fn key(i: u64) -> SpanKey {
    // Spans 3k, 3k+1, 3k+2 share a trace id.
    SpanKey {
        trace_id: (u128::from(i / 3 + 1) << 64 | 0xabcd).to_be_bytes(),
        span_id: (i + 1).to_be_bytes(),
    }
}

const BIG: usize = record_size(MAX_CALLS_LIMIT);

/// Decodes a record produced by `end`.
fn decode(out: &[u8], outcome: EndOutcome) -> (RecordHeader, Vec<SyscallEntry>) {
    let EndOutcome::Slow { len, .. } = outcome else {
        panic!("expected a slow span, got {outcome:?}");
    };
    let (h, it, used) = decode_record(&out[..len]).expect("valid record");
    assert_eq!(used, len);
    (h, it.collect())
}

/// Should the system-call probes run for thread `t`: spans on its stack, or a slot and
/// spans open in its process.
fn probes_on(tr: &Tracker<'_>, t: &ThreadSlot) -> bool {
    t.depth > 0 || (t.slot_addr != 0 && tr.processes[t.proc as usize].open_spans > 0)
}

/// The ids whose bits are set in `set`.
fn set_bits(set: &TrackedSet<'_>) -> Vec<u32> {
    let mut out = Vec::new();
    for (w, word) in set.words.iter().enumerate() {
        let v = word.load(Ordering::Relaxed);
        out.extend((0..64).filter(|b| v >> b & 1 != 0).map(|b| (w * 64 + b) as u32));
    }
    out
}

/// Checks every structural invariant of the tracker.
fn check_invariants(tr: &Tracker<'_>) {
    // Processes: a tgid's bit in `registered` iff it has a slot in use.
    let registered: Vec<u32> = tr.processes.iter().filter(|p| p.in_use != 0).map(|p| p.tgid).collect();
    let bits = set_bits(&tr.registered);
    for t in &bits {
        assert!(registered.contains(t), "stray process bit {t}");
    }
    assert_eq!(bits.len(), registered.iter().filter(|&&t| u64::from(t) < tr.registered.limit()).count());
    // Threads: index <-> slots <-> bitmap <-> pool.
    let mut index: HashMap<u32, u32> = HashMap::new();
    tr.thread_index.for_each(|tid, ti| {
        assert!(index.insert(*tid, ti).is_none());
    });
    assert_eq!(index.len() as u32, tr.thread_pool.in_use());
    let bits = set_bits(&tr.tracked);
    for t in &bits {
        assert!(index.contains_key(t), "stray bit {t}");
    }
    assert_eq!(bits.len(), index.len());
    let used_threads: HashSet<u32> = index.values().copied().collect();
    assert_eq!(used_threads.len(), index.len());
    for (&tid, &ti) in &index {
        let t = &tr.threads[ti as usize];
        assert_eq!(t.tid, tid);
        assert!(tr.is_tracked(tid));
        assert!(tr.processes[t.proc as usize].in_use != 0);
        assert!(t.depth as usize <= MAX_DEPTH);
        assert!(t.slot_addr == 0 || t.depth == 0, "a thread with a slot stacks no span");
        assert_eq!(tr.active.contains(tid), probes_on(tr, t), "active bit of {tid}");
        assert_eq!(
            tr.active_slot.contains(tid),
            probes_on(tr, t) && t.slot_addr != 0,
            "active-slot bit of {tid}"
        );
    }
    let mut active_bits = 0;
    for word in tr.active.words.iter() {
        active_bits += word.load(Ordering::Relaxed).count_ones();
    }
    let with_spans = index
        .values()
        .filter(|&&ti| probes_on(tr, &tr.threads[ti as usize]))
        .count();
    assert_eq!(active_bits as usize, with_spans, "active bits without an open span");
    // The lock-free path: a slot in use is owned by its tid, a free one by nobody, with
    // nothing pending.
    for ti in 0..tr.threads.len() as u32 {
        let h = tr.hot.slot(ti).unwrap();
        let owner = h.owner.load(Ordering::Relaxed);
        if used_threads.contains(&ti) {
            assert_eq!(owner, tr.threads[ti as usize].tid, "owner of hot slot {ti}");
        } else {
            assert_eq!((owner, h.pending()), (0, 0), "free hot slot {ti}");
        }
    }
    // Processes: thread lists.
    let mut listed = 0;
    for (pi, p) in tr.processes.iter().enumerate() {
        if p.in_use == 0 {
            assert_eq!(*p, ProcessSlot::EMPTY);
            continue;
        }
        let mut n = 0;
        let mut prev = NIL;
        let mut cur = p.first_thread;
        while cur != NIL {
            assert!(used_threads.contains(&cur));
            let t = &tr.threads[cur as usize];
            assert_eq!(t.proc as usize, pi);
            assert_eq!(t.prev, prev);
            prev = cur;
            cur = t.next;
            n += 1;
            assert!(n <= tr.threads.len());
        }
        assert_eq!(n as u32, p.n_threads);
        let open_here = tr
            .spans
            .iter()
            .filter(|s| s.open != 0 && s.proc as usize == pi)
            .count();
        assert_eq!(p.open_spans as usize, open_here, "open spans of process {pi}");
        listed += n;
        assert_eq!(
            tr.processes
                .iter()
                .filter(|q| q.in_use != 0 && q.tgid == p.tgid)
                .count(),
            1
        );
    }
    assert_eq!(listed, index.len());
    // Spans: index <-> slots <-> stacks <-> pool.
    let mut span_index: HashMap<OpenSpanKey, u32> = HashMap::new();
    tr.span_index.for_each(|k, si| {
        assert!(span_index.insert(*k, si).is_none());
    });
    assert_eq!(span_index.len() as u32, tr.span_pool.in_use());
    let open: Vec<u32> = (0..tr.spans.len() as u32)
        .filter(|&i| tr.spans[i as usize].open != 0)
        .collect();
    assert_eq!(open.len(), span_index.len());
    let mut chunks_used = HashSet::new();
    for (k, &si) in &span_index {
        let s = &tr.spans[si as usize];
        assert!(s.open != 0);
        assert_eq!((s.key, s.proc), (k.key, k.proc));
        if s.open == OPEN_INDEXED {
            assert_eq!(tr.active_index.get(&ActiveKey::of(&s.key, s.proc)), Some(si));
        }
        assert!(s.n_threads as usize <= uapi::MAX_SPAN_THREADS);
        if s.thread == NIL {
            // The process's: on no stack.
            assert!(used_threads
                .iter()
                .all(|&ti| !tr.threads[ti as usize].stack[..tr.threads[ti as usize].depth as usize]
                    .contains(&si)));
        } else {
            assert!(used_threads.contains(&s.thread));
            let t = &tr.threads[s.thread as usize];
            assert_eq!((t.tid, t.proc), (s.tid, s.proc));
            let stack = &t.stack[..t.depth as usize];
            assert_eq!(stack.iter().filter(|&&x| x == si).count(), 1);
            let pos = stack.iter().position(|&x| x == si).unwrap();
            assert!(pos as u32 <= s.depth);
        }
        assert_eq!(s.total_calls, u64::from(s.n_entries) + s.unitemised_calls);
        let mut c = s.first_chunk;
        for _ in 0..s.n_entries.div_ceil(CHUNK_ENTRIES as u32) {
            assert!((c as usize) < tr.chunks.len());
            assert!(chunks_used.insert(c), "chunk {c} shared");
            let next = tr.chunks[c as usize].next;
            c = next;
        }
        if s.n_entries > 0 {
            assert_eq!(c, NIL, "the last chunk ends the list");
        }
    }
    for &ti in &used_threads {
        let t = &tr.threads[ti as usize];
        for &si in &t.stack[..t.depth as usize] {
            assert_eq!(tr.spans[si as usize].thread, ti);
            assert!(span_index.values().any(|&x| x == si));
        }
    }
    assert_eq!(chunks_used.len() as u32, tr.chunk_pool.in_use());
    // The probes' slot table: every entry is a tracked thread's current slot.
    for h in tr.slot_hints {
        let tid = h.tid.load(Ordering::Relaxed) as u32;
        if tid != 0 {
            let ti = index.get(&tid).copied().expect("a hinted thread is tracked");
            assert_eq!(tr.threads[ti as usize].slot_addr, h.addr.load(Ordering::Relaxed));
        }
    }
    // The activation index: exactly the spans marked indexed; a process with slot threads
    // has all its open spans indexed (unless a conflict was counted).
    let mut n_active_keys = 0;
    tr.active_index.for_each(|k, si| {
        let s = &tr.spans[si as usize];
        assert_eq!(s.open, OPEN_INDEXED);
        assert_eq!(*k, ActiveKey::of(&s.key, s.proc));
        n_active_keys += 1;
    });
    let n_indexed = tr.spans.iter().filter(|s| s.open == OPEN_INDEXED).count();
    assert_eq!(n_active_keys, n_indexed);
    for (pi, p) in tr.processes.iter().enumerate() {
        let with_slot = index
            .values()
            .filter(|&&ti| tr.threads[ti as usize].proc as usize == pi && tr.threads[ti as usize].slot_addr != 0)
            .count();
        assert_eq!(p.slot_threads as usize, with_slot, "slot threads of process {pi}");
        if with_slot > 0 && tr.stats.slot_index_conflicts == 0 {
            assert!(tr.spans.iter().all(|s| s.open != OPEN || s.proc as usize != pi));
        }
    }
    let st = tr.stats();
    assert!(st.spans_high_water >= st.open_spans);
    assert!(st.chunks_high_water >= st.chunks_in_use);
}

fn assert_empty(tr: &Tracker<'_>) {
    check_invariants(tr);
    let st = tr.stats();
    assert_eq!(
        (st.processes, st.threads, st.open_spans, st.chunks_in_use),
        (0, 0, 0, 0)
    );
    assert_eq!(tr.thread_pool.free_count(), tr.thread_pool.capacity());
    assert_eq!(tr.span_pool.free_count(), tr.span_pool.capacity());
    assert_eq!(tr.chunk_pool.free_count(), tr.chunk_pool.capacity());
    assert!(tr.thread_index.is_empty() && tr.span_index.is_empty());
    assert!(tr
        .tracked
        .words
        .iter()
        .all(|w| w.load(Ordering::Relaxed) == 0));
}

// ---------------------------------------------------------------------------------------
// Unit tests
// ---------------------------------------------------------------------------------------

#[test]
fn new_initialises_garbage_storage() {
    let mut mem = Mem::new(CAPS);
    let tr = mem.tracker();
    assert_empty(&tr);
    let st = tr.stats();
    assert_eq!(
        (
            st.process_capacity,
            st.thread_capacity,
            st.span_capacity,
            st.chunk_capacity,
            st.max_calls
        ),
        (4, 16, 32, 16, 256)
    );
}

#[test]
fn one_user_cannot_take_the_process_table() {
    let mut mem = Mem::new(Caps { procs: 6, ..CAPS });
    let mut tr = mem.tracker();
    assert_eq!(tr.set_max_procs_per_uid(0), Err(ERANGE));
    assert_eq!(tr.set_max_procs_per_uid(7), Err(ERANGE), "above the table");
    assert_eq!(tr.max_procs_per_uid(), DEFAULT_MAX_PROCS_PER_UID, "a refused value changes nothing");
    tr.set_max_procs_per_uid(2).unwrap();
    assert_eq!(tr.register_process(10, 1000), Ok(ProcIdx(0)));
    assert_eq!(tr.register_process(11, 1000), Ok(ProcIdx(1)));
    assert_eq!(tr.register_process(12, 1000), Err(EDQUOT), "user 1000 at its limit");
    assert_eq!(tr.register_process(10, 1000), Err(EALREADY), "already registered says so first");
    assert_eq!(tr.register_process(20, 1001), Ok(ProcIdx(2)), "another user is not starved");
    assert_eq!(tr.register_process(30, ROOT_UID), Ok(ProcIdx(3)));
    assert_eq!(tr.register_process(31, ROOT_UID), Ok(ProcIdx(4)));
    assert_eq!(tr.register_process(32, ROOT_UID), Ok(ProcIdx(5)), "root is exempt");
    let st = tr.stats();
    assert_eq!((st.processes_refused_uid, st.processes_refused, st.max_procs_per_uid), (1, 0, 2));
    assert_eq!(tr.process_info(20).map(|p| p.uid), Some(1001));
    tr.unregister_process(10).unwrap();
    assert_eq!(tr.register_process(12, 1000), Ok(ProcIdx(0)), "a slot of its own freed");
}

#[test]
fn processes_register_and_unregister() {
    let mut mem = Mem::new(Caps { procs: 2, ..CAPS });
    let mut tr = mem.tracker();
    assert!(!tr.registered.contains(10), "the bitmap starts clear");
    assert_eq!(tr.register_process(10, 0), Ok(ProcIdx(0)));
    assert!(tr.registered.contains(10), "the thread-creation probe's bit");
    assert_eq!(tr.register_process(10, 0), Err(EALREADY));
    assert_eq!(tr.register_process(11, 0), Ok(ProcIdx(1)));
    assert_eq!(tr.register_process(12, 0), Err(ENOSPC));
    assert!(!tr.registered.contains(12), "a refused process has no bit");
    assert_eq!(tr.stats().processes_refused, 1);
    assert_eq!(tr.process_of(11), Some(ProcIdx(1)));
    assert_eq!(tr.process_of(12), None);
    assert_eq!(tr.unregister_process(10), Ok(()));
    assert!(!tr.registered.contains(10) && tr.registered.contains(11));
    assert_eq!(tr.unregister_process(10), Err(ENOENT));
    assert_eq!(tr.register_process(12, 0), Ok(ProcIdx(0)), "slot reused");
    assert_eq!(tr.stats().processes, 2);
    assert_eq!(tr.stats().processes_registered, 3);
    check_invariants(&tr);
}

#[test]
fn threads_add_and_remove() {
    let mut mem = Mem::new(Caps {
        threads: 3,
        tid_limit: 128,
        ..CAPS
    });
    let mut tr = mem.tracker();
    assert_eq!(tr.add_thread(10, 100), Err(ENOENT));
    tr.register_process(10, 0).unwrap();
    tr.register_process(20, 0).unwrap();
    assert!(!tr.is_tracked(100));
    assert_eq!(tr.add_thread(10, 100), Ok(()));
    assert_eq!(tr.add_thread(10, 100), Ok(()), "idempotent");
    assert!(tr.is_tracked(100) && !tr.is_tracked(101) && !tr.is_tracked(99));
    assert_eq!(tr.add_thread(10, 128), Err(ERANGE), "beyond the bitmap");
    assert_eq!(tr.add_thread(10, 101), Ok(()));
    assert_eq!(
        tr.add_thread(20, 0),
        Ok(()),
        "tid 0 is an ordinary tid here"
    );
    assert_eq!(tr.add_thread(20, 102), Err(ENOSPC));
    assert_eq!(tr.stats().threads_refused, 2);
    assert_eq!(tr.thread_tgid(101), Some(10));
    assert_eq!(tr.thread_tgid(0), Some(20));
    check_invariants(&tr);
    // A tid seen again under another process moves there (its old entry was stale).
    assert_eq!(tr.add_thread(20, 101), Ok(()));
    assert_eq!(tr.thread_tgid(101), Some(20));
    assert_eq!(tr.process_info(10).unwrap().threads, 1);
    assert_eq!(tr.process_info(20).unwrap().threads, 2);
    check_invariants(&tr);
    assert!(!tr.remove_thread(55), "untracked tid: no-op");
    assert!(!tr.remove_thread(u32::MAX));
    assert!(!tr.remove_thread(0), "process 20 still has 101");
    assert!(tr.remove_thread(101), "process 20 now empty");
    assert!(!tr.is_tracked(101));
    assert!(tr.remove_thread(100), "process 10 now empty");
    assert_eq!(tr.stats().threads, 0);
    assert_eq!(tr.process_info(20).unwrap().threads, 0, "still registered");
    tr.unregister_process(10).unwrap();
    tr.unregister_process(20).unwrap();
    assert_empty(&tr);
}

#[test]
fn exec_keeps_the_thread_under_its_new_tid_and_drops_its_spans() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    let mut out = vec![0u8; BIG];
    tr.register_process(10, 0).unwrap();
    for tid in [10, 11, 12] {
        tr.add_thread(10, tid).unwrap();
    }
    tr.begin(10, key(0), 1, 0).unwrap();
    tr.begin(12, key(1), 1, 0).unwrap();
    tr.begin(12, key(2), 2, 0).unwrap();
    assert!(!tr.exec_thread(55, 10), "untracked thread: nothing");
    // Thread 12 execs: the leader and 11 exit first (de_thread), then 12 becomes 10.
    assert!(!tr.remove_thread(10));
    assert!(!tr.remove_thread(11));
    assert_eq!(tr.stats().spans_abandoned, 1);
    assert!(!tr.exec_thread(12, 10));
    assert!(tr.is_tracked(10) && !tr.is_tracked(12) && !tr.is_tracked(11));
    assert_eq!(tr.thread_tgid(10), Some(10));
    assert_eq!(tr.process_info(10).unwrap().threads, 1);
    let s = tr.stats();
    assert_eq!((s.spans_abandoned, s.open_spans), (3, 0));
    assert_eq!(tr.end(10, key(1), 5, 0, 0, &mut out), Err(ERR_UNKNOWN_SPAN));
    // The new image's spans work; an exec from the main thread keeps its tid.
    tr.begin(10, key(3), 6, 0).unwrap();
    assert!(!tr.exec_thread(10, 10));
    assert!(tr.is_tracked(10));
    assert_eq!(tr.stats().spans_abandoned, 4);
    tr.begin(10, key(4), 7, 0).unwrap();
    assert!(tr.end(10, key(4), 8, 0, 0, &mut out).is_ok());
    check_invariants(&tr);
    assert!(tr.remove_thread(10), "the process's last thread");
    tr.unregister_process(10).unwrap();
    assert_empty(&tr);
}

#[test]
fn tracked_set_works_without_the_tracker() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    let set = tr.tracked_set();
    assert_eq!(set.limit(), 4096);
    tr.register_process(1, 0).unwrap();
    std::thread::scope(|sc| {
        // A reader on another thread polls the bitmap while the tracker changes it.
        let reader = sc.spawn(move || {
            let mut seen = false;
            for _ in 0..1_000_000 {
                seen |= set.contains(4000);
                assert!(!set.contains(4001) && !set.contains(1 << 30));
                if seen {
                    break;
                }
                std::thread::yield_now();
            }
            seen
        });
        tr.add_thread(1, 4000).unwrap();
        assert!(reader.join().unwrap());
    });
    tr.remove_thread(4000);
    assert!(!set.contains(4000));
}

#[test]
fn begin_end_records_the_calls_in_between() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    let k = key(1);
    let mut out = vec![0u8; BIG];
    // A call before the span: not recorded.
    tr.sys_enter(100, 0, 10);
    tr.sys_exit(100, 5, 20);
    // begin is written inside write(): that write is excluded.
    tr.sys_enter(100, 1, 100);
    assert_eq!(tr.begin(100, k, 110, 1_000_110), Ok(()));
    tr.sys_exit(100, 50, 120);
    for i in 0..3u64 {
        tr.sys_enter(100, 39, 200 + i * 10);
        tr.sys_exit(100, -(i as i64), 205 + i * 10);
    }
    // Calls of another thread are not this span's.
    tr.add_thread(10, 101).unwrap();
    tr.sys_enter(101, 0, 230);
    tr.sys_exit(101, 0, 240);
    tr.sys_enter(100, 1, 300);
    let r = tr.end(100, k, 310, 1_000_310, 100, &mut out).unwrap();
    tr.sys_exit(100, 50, 320);
    assert_eq!(
        r,
        EndOutcome::Slow {
            len: RECORD_HEADER_SIZE + 3 * 32,
            tgid: 10
        }
    );
    let (h, e) = decode(&out, r);
    assert_eq!(
        (h.trace_id, h.span_id, h.tid, h.tgid),
        (k.trace_id, k.span_id, 100, 10)
    );
    assert_eq!(
        (
            h.begin_mono_ns,
            h.end_mono_ns,
            h.begin_real_ns,
            h.end_real_ns
        ),
        (110, 310, 1_000_110, 1_000_310)
    );
    assert_eq!(
        (h.depth, h.flags, h.total_calls, h.total_call_ns),
        (0, 0, 3, 15)
    );
    assert_eq!(
        (
            h.unitemised_calls,
            h.unitemised_ns,
            h.records_dropped_before
        ),
        (0, 0, 0)
    );
    assert_eq!(
        e,
        (0..3u64)
            .map(|i| SyscallEntry {
                nr: 39,
                tid: 100,
                ret: -(i as i64),
                start_mono_ns: 200 + i * 10,
                end_mono_ns: 205 + i * 10
            })
            .collect::<Vec<_>>()
    );
    let st = tr.stats();
    assert_eq!(
        (
            st.spans_begun,
            st.spans_ended,
            st.spans_slow,
            st.calls_attributed
        ),
        (1, 1, 1, 3)
    );
    // A fast span produces nothing; the threshold is inclusive.
    tr.begin(100, k, 1000, 0).unwrap();
    assert_eq!(tr.end(100, k, 1099, 0, 100, &mut out), Ok(EndOutcome::Fast));
    tr.begin(100, k, 1000, 0).unwrap();
    assert!(matches!(
        tr.end(100, k, 1100, 0, 100, &mut out),
        Ok(EndOutcome::Slow { .. })
    ));
    tr.unregister_process(10).unwrap();
    assert_empty(&tr);
}

#[test]
fn thread_hints_never_misattribute() {
    // Tids 100 and 164 share a hint; 100 leaves and a new thread takes its slot.
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    tr.add_thread(10, 164).unwrap();
    let (ka, kb, kc) = (key(1), key(2), key(3));
    let mut out = vec![0u8; BIG];
    tr.begin(100, ka, 0, 0).unwrap();
    tr.begin(164, kb, 0, 0).unwrap();
    for i in 0..3u64 {
        tr.sys_enter(100, 1, 10 * i);
        tr.sys_enter(164, 2, 10 * i + 1);
        tr.sys_exit(100, 0, 10 * i + 2);
        tr.sys_exit(164, 0, 10 * i + 3);
    }
    let r = tr.end(100, ka, 100, 0, 1, &mut out).unwrap();
    let (ha, ea) = decode(&out, r);
    assert_eq!((ha.tid, ea.len()), (100, 3));
    assert!(ea.iter().all(|e| e.nr == 1));
    assert!(!tr.remove_thread(100)); // false: 164 is left
    // The hint for 100 now points at a free slot, then at 228's slot: both refused.
    tr.sys_enter(100, 9, 200);
    tr.sys_exit(100, 0, 201);
    tr.add_thread(10, 228).unwrap();
    tr.begin(228, kc, 300, 0).unwrap();
    tr.sys_enter(100, 9, 310);
    tr.sys_exit(100, 0, 311);
    tr.sys_enter(228, 3, 320);
    tr.sys_exit(228, 0, 321);
    let r = tr.end(228, kc, 400, 0, 1, &mut out).unwrap();
    let (hc, ec) = decode(&out, r);
    assert_eq!((hc.tid, hc.total_calls), (228, 1));
    assert_eq!((ec[0].nr, ec[0].start_mono_ns), (3, 320));
    let r = tr.end(164, kb, 500, 0, 1, &mut out).unwrap();
    let (hb, eb) = decode(&out, r);
    assert_eq!((hb.tid, eb.len()), (164, 3));
    assert!(eb.iter().all(|e| e.nr == 2));
    tr.unregister_process(10).unwrap();
    assert_empty(&tr);
}

#[test]
fn errors_are_counted() {
    let mut mem = Mem::new(Caps { spans: 2, ..CAPS });
    let mut tr = mem.tracker();
    let mut out = vec![0u8; BIG];
    assert_eq!(tr.begin(100, key(0), 0, 0), Err(ERR_UNTRACKED));
    assert_eq!(tr.end(100, key(0), 0, 0, 0, &mut out), Err(ERR_UNTRACKED));
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    tr.begin(100, key(0), 0, 0).unwrap();
    assert_eq!(tr.begin(100, key(0), 0, 0), Err(ERR_DUPLICATE));
    tr.begin(100, key(1), 0, 0).unwrap();
    assert_eq!(tr.begin(100, key(2), 0, 0), Err(ERR_TABLE_FULL));
    assert_eq!(
        tr.end(100, key(2), 0, 0, 0, &mut out),
        Err(ERR_UNKNOWN_SPAN)
    );
    assert_eq!(
        tr.begin_line(100, b"nonsense\n", 0, 0),
        Err(uapi::ERR_MALFORMED)
    );
    assert_eq!(
        tr.end_line(100, b"", 0, 0, 0, &mut out),
        Err(uapi::ERR_MALFORMED)
    );
    let st = tr.stats();
    assert_eq!(
        (
            st.begins_untracked,
            st.begins_duplicate,
            st.begins_table_full,
            st.begins_too_deep,
            st.begins_malformed
        ),
        (1, 1, 1, 0, 1)
    );
    assert_eq!(
        (st.ends_untracked, st.ends_unknown, st.ends_malformed),
        (1, 1, 1)
    );
    assert_eq!(
        (st.spans_begun, st.open_spans, st.spans_high_water),
        (2, 2, 2)
    );
}

#[test]
fn lines_are_parsed() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    let mut line = [0u8; 50];
    let l = format_span_line(&key(4), &mut line).to_vec();
    tr.begin_line(100, &l, 0, 0).unwrap();
    let mut out = vec![0u8; BIG];
    let r = tr
        .end_line(100, &l.to_ascii_uppercase(), 5, 0, 0, &mut out)
        .unwrap();
    let (h, _) = decode(&out, r);
    assert_eq!(
        parse_span_line(&l),
        Ok(SpanKey {
            trace_id: h.trace_id,
            span_id: h.span_id
        })
    );
}

#[test]
fn depth_is_limited() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    for i in 0..MAX_DEPTH as u64 {
        tr.begin(100, key(i), i, 0).unwrap();
    }
    assert_eq!(tr.begin(100, key(99), 0, 0), Err(ERR_TOO_DEEP));
    assert_eq!(tr.stats().begins_too_deep, 1);
    // Another thread still can.
    tr.add_thread(10, 101).unwrap();
    tr.begin(101, key(99), 0, 0).unwrap();
    check_invariants(&tr);
    // Depth recorded is the depth at begin.
    let mut out = vec![0u8; BIG];
    let r = tr.end(100, key(15), 100, 0, 0, &mut out).unwrap();
    assert_eq!(decode(&out, r).0.depth, 15);
    tr.begin(100, key(50), 0, 0).unwrap();
    assert_eq!(tr.begin(100, key(51), 0, 0), Err(ERR_TOO_DEEP));
    assert!(!tr.remove_thread(100));
    assert_eq!(tr.stats().spans_abandoned, 16);
    check_invariants(&tr);
}

#[test]
fn end_from_another_thread_and_out_of_order() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    let mut out = vec![0u8; BIG];
    tr.register_process(10, 0).unwrap();
    tr.register_process(20, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    tr.add_thread(10, 101).unwrap();
    tr.add_thread(20, 200).unwrap();
    // 100: a (depth 0) > b (depth 1) > c (depth 2)
    for (i, k) in [key(0), key(1), key(2)].into_iter().enumerate() {
        tr.begin(100, k, i as u64, 0).unwrap();
    }
    // The same ids in another process are a different span.
    tr.begin(200, key(1), 0, 0).unwrap();
    assert_eq!(
        tr.end(200, key(0), 10, 0, 0, &mut out),
        Err(ERR_UNKNOWN_SPAN),
        "other process"
    );
    // End b (the middle) from thread 101.
    let r = tr.end(101, key(1), 10, 0, 0, &mut out).unwrap();
    let (h, _) = decode(&out, r);
    assert_eq!(
        (h.tid, h.depth, h.flags),
        (100, 1, uapi::REC_ENDED_ELSEWHERE)
    );
    check_invariants(&tr);
    // c is innermost still: calls go to it.
    tr.sys_enter(100, 3, 20);
    tr.sys_exit(100, 0, 21);
    let r = tr.end(100, key(2), 30, 0, 0, &mut out).unwrap();
    let (h, e) = decode(&out, r);
    assert_eq!((h.depth, h.flags, e.len()), (2, 0, 1));
    // Now a.
    tr.sys_enter(100, 4, 40);
    tr.sys_exit(100, 0, 41);
    let r = tr.end(100, key(0), 50, 0, 0, &mut out).unwrap();
    let (h, e) = decode(&out, r);
    assert_eq!((h.depth, e.len(), e[0].nr), (0, 1, 4));
    // Process 20's span is intact.
    let r = tr.end(200, key(1), 50, 0, 0, &mut out).unwrap();
    assert_eq!(decode(&out, r).0.tgid, 20);
    tr.unregister_process(10).unwrap();
    tr.unregister_process(20).unwrap();
    assert_empty(&tr);
}

#[test]
fn calls_without_enter_filtered_or_outside_spans_are_skipped() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    let mut out = vec![0u8; BIG];
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    tr.begin(100, key(0), 0, 0).unwrap();
    // The exit of the write() that carried the begin line: excluded, not counted.
    tr.sys_exit(100, 0, 4);
    assert_eq!(tr.stats().calls_without_enter, 0);
    // An exit without enter (e.g. the thread was added mid-call).
    tr.sys_exit(100, 0, 5);
    assert_eq!(tr.stats().calls_without_enter, 1);
    let mut f = SyscallFilter::ALLOW_ALL;
    f.set(202, false);
    tr.set_filter(f);
    tr.sys_enter(100, 202, 10);
    tr.sys_exit(100, 0, 11);
    tr.sys_enter(100, 0, 12);
    tr.sys_exit(100, 0, 13);
    // A double exit counts once.
    tr.sys_exit(100, 0, 14);
    // Untracked threads cost nothing and change nothing.
    tr.sys_enter(999, 0, 15);
    tr.sys_exit(999, 0, 16);
    let r = tr.end(100, key(0), 20, 0, 0, &mut out).unwrap();
    let (h, e) = decode(&out, r);
    assert_eq!((h.total_calls, e.len(), e[0].nr), (1, 1, 0));
    let st = tr.stats();
    assert_eq!(
        (
            st.calls_filtered,
            st.calls_without_enter,
            st.calls_attributed
        ),
        (1, 2, 1)
    );
    // No span open: nothing attributed, nothing counted.
    tr.sys_enter(100, 0, 30);
    tr.sys_exit(100, 0, 31);
    assert_eq!(tr.stats().calls_attributed, 1);
}

#[test]
fn calls_fill_chunks_then_hit_limits() {
    let mut mem = Mem::new(Caps { chunks: 3, ..CAPS });
    let mut tr = mem.tracker();
    let mut out = vec![0u8; BIG];
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    tr.add_thread(10, 101).unwrap();
    tr.set_max_calls(70).unwrap();
    assert_eq!(tr.set_max_calls(MAX_CALLS_LIMIT + 1), Err(ERANGE));
    tr.begin(100, key(0), 0, 0).unwrap();
    tr.begin(101, key(1), 0, 0).unwrap();
    let call = |tr: &mut Tracker<'_>, tid: u32, i: u64| {
        tr.sys_enter(tid, i as u32 % 400, 1000 + 10 * i);
        tr.sys_exit(tid, i as i64, 1000 + 10 * i + 3);
    };
    // 64 calls fill exactly two chunks; the 65th needs a third.
    for i in 0..65 {
        call(&mut tr, 100, i);
    }
    assert_eq!(tr.stats().chunks_in_use, 3);
    check_invariants(&tr);
    // Pool empty: thread 101's first call is not itemised.
    call(&mut tr, 101, 0);
    // Thread 100 goes on to its limit of 70, then is truncated.
    for i in 65..80 {
        call(&mut tr, 100, i);
    }
    let st = tr.stats();
    assert_eq!(
        (
            st.calls_unitemised_pool,
            st.calls_unitemised_limit,
            st.calls_attributed
        ),
        (1, 10, 81)
    );
    let r = tr.end(100, key(0), 5000, 0, 0, &mut out).unwrap();
    let (h, e) = decode(&out, r);
    assert_eq!((h.total_calls, h.total_call_ns, h.n_entries), (80, 240, 70));
    assert_eq!(
        (h.unitemised_calls, h.unitemised_ns, h.flags),
        (10, 30, uapi::REC_CALLS_TRUNCATED)
    );
    assert!(e
        .iter()
        .enumerate()
        .all(|(i, e)| e.ret == i as i64 && e.start_mono_ns == 1000 + 10 * i as u64));
    // The chunks are back: 101 can itemise again.
    call(&mut tr, 101, 1);
    let r = tr.end(101, key(1), 5000, 0, 0, &mut out).unwrap();
    let (h, e) = decode(&out, r);
    assert_eq!(
        (h.total_calls, h.n_entries, h.unitemised_calls, h.flags),
        (2, 1, 1, uapi::REC_POOL_EXHAUSTED)
    );
    assert_eq!(e[0].ret, 1);
    assert_eq!(tr.stats().chunks_high_water, 3);
    // max_calls 0: nothing itemised at all.
    tr.set_max_calls(0).unwrap();
    tr.begin(100, key(0), 0, 0).unwrap();
    call(&mut tr, 100, 0);
    let r = tr.end(100, key(0), 5000, 0, 0, &mut out).unwrap();
    assert_eq!(decode(&out, r).0.n_entries, 0);
    tr.unregister_process(10).unwrap();
    assert_empty(&tr);
}

#[test]
fn small_output_buffers_truncate() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    for (len, fit) in [(RECORD_HEADER_SIZE + 2 * 32 + 31, 2usize), (RECORD_HEADER_SIZE, 0), (RECORD_HEADER_SIZE + 40 * 32, 40)] {
        tr.begin(100, key(0), 0, 0).unwrap();
        for i in 0..40u64 {
            tr.sys_enter(100, 0, i * 10);
            tr.sys_exit(100, 0, i * 10 + 1 + i);
        }
        let mut out = vec![0u8; len];
        let r = tr.end(100, key(0), 1000, 0, 0, &mut out).unwrap();
        let (h, e) = decode(&out, r);
        assert_eq!(e.len(), fit);
        assert_eq!(h.total_calls, 40);
        assert_eq!(h.unitemised_calls, 40 - fit as u64);
        assert_eq!(
            h.unitemised_ns,
            (fit as u64..40).map(|i| 1 + i).sum::<u64>()
        );
        let truncated = if fit < 40 {
            uapi::REC_CALLS_TRUNCATED
        } else {
            0
        };
        assert_eq!(h.flags, truncated);
    }
    tr.begin(100, key(0), 0, 0).unwrap();
    let mut out = vec![0u8; 100];
    assert_eq!(
        tr.end(100, key(0), 10, 0, 0, &mut out),
        Ok(EndOutcome::Slow { len: 0, tgid: 10 })
    );
    assert_eq!(tr.stats().records_truncated, 3);
    assert_empty(&{
        tr.unregister_process(10).unwrap();
        tr
    });
}

#[test]
fn expire_drops_old_spans() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    tr.begin(100, key(0), 0, 0).unwrap();
    tr.begin(100, key(1), 50, 0).unwrap();
    tr.begin(100, key(2), 100, 0).unwrap();
    tr.sys_enter(100, 0, 101);
    tr.sys_exit(100, 0, 102);
    assert_eq!(tr.expire(100, 100), 0, "exactly the timeout: kept");
    assert_eq!(tr.expire(101, 100), 1);
    assert_eq!(tr.expire(200, 100), 1);
    check_invariants(&tr);
    assert_eq!(tr.stats().open_spans, 1);
    assert_eq!(tr.expire(1000, 100), 1);
    assert_eq!(tr.stats().spans_expired, 3);
    assert_eq!(tr.stats().chunks_in_use, 0);
    let mut out = vec![0u8; BIG];
    assert_eq!(
        tr.end(100, key(2), 0, 0, 0, &mut out),
        Err(ERR_UNKNOWN_SPAN)
    );
    // Time going backwards never expires anything.
    tr.begin(100, key(0), 500, 0).unwrap();
    assert_eq!(tr.expire(0, 0), 0);
}

#[test]
fn dropped_records_are_reported_in_later_records() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    let mut out = vec![0u8; BIG];
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    tr.note_record_dropped(10);
    tr.note_record_dropped(10);
    tr.note_record_written(10);
    tr.note_record_dropped(77);
    tr.begin(100, key(0), 0, 0).unwrap();
    let r = tr.end(100, key(0), 10, 0, 0, &mut out).unwrap();
    assert_eq!(decode(&out, r).0.records_dropped_before, 2);
    let info = tr.process_info(10).unwrap();
    assert_eq!(
        (info.records_written, info.records_dropped, info.idx),
        (1, 2, ProcIdx(0))
    );
    let st = tr.stats();
    assert_eq!((st.records_written, st.records_dropped), (1, 3));
}

#[test]
fn unregister_drops_everything() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    tr.register_process(10, 0).unwrap();
    tr.register_process(20, 0).unwrap();
    for tid in 100..110 {
        tr.add_thread(10 * (1 + tid % 2), tid).unwrap();
        for k in 0..2 {
            tr.begin(tid, key(u64::from(tid) * 2 + k), 0, 0).unwrap();
            tr.sys_enter(tid, 0, 0);
            tr.sys_exit(tid, 0, 0);
        }
    }
    check_invariants(&tr);
    assert_eq!(tr.unregister_process(10), Ok(()));
    check_invariants(&tr);
    assert_eq!(tr.stats().spans_abandoned, 10);
    assert!((100..110).all(|t| tr.is_tracked(t) == (t % 2 == 1)));
    tr.unregister_process(20).unwrap();
    assert_empty(&tr);
}

#[test]
fn stats_text() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    let mut buf = [0u8; 4096];
    let n = tr.format_stats(&mut buf);
    let text = std::str::from_utf8(&buf[..n]).unwrap();
    assert!(n < 2048, "{n}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), Stats::NAMES.len());
    assert!(text.contains("\nthreads 1\n") && text.contains("\nthread_capacity 16\n"));
    assert!(text.starts_with("processes 1\n") && text.ends_with("sched_wakeups 0\n"));
    let names: HashSet<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(names.len(), lines.len());
    // A short buffer gets whole lines only.
    let mut small = [0u8; 30];
    let n = tr.format_stats(&mut small);
    assert_eq!(
        &small[..n],
        b"processes 1\nprocess_capacity 4\n"[..n].as_ref()
    );
    assert!(small[..n].ends_with(b"\n"));
    assert_eq!(tr.format_stats(&mut [0u8; 5]), 0);
}

#[test]
fn default_storage_sizes() {
    use core::mem::size_of;
    assert_eq!(size_of::<ProcessSlot>(), 48);
    assert_eq!(size_of::<ThreadSlot>(), 112);
    assert_eq!(size_of::<ThreadSched>(), 384);
    assert_eq!(size_of::<SpanSlot>(), 160);
    assert_eq!(size_of::<EntryChunk>(), 1032);
    assert_eq!(size_of::<TableSlot<u32>>(), 12);
    assert_eq!(size_of::<TableSlot<OpenSpanKey>>(), 36);
    assert_eq!(size_of::<HotThread>(), 704);
    let total = size_of::<DefaultStorage>();
    std::println!("DefaultStorage: {total} bytes");
    assert!(total < 23 << 20);
    // All-zero bytes are a valid DefaultStorage, and the tracker runs on it.
    // SAFETY: every field is an integer, an array of integers, an atomic integer or (the
    // hot ring) an `UnsafeCell` of integers, for which all-zero bytes are valid.
    let mut block: Box<DefaultStorage> =
        unsafe { Box::<DefaultStorage>::new_zeroed().assume_init() };
    let mut tr = Tracker::new(block.storage(), 7);
    let st = tr.stats();
    assert_eq!(
        (
            st.process_capacity,
            st.thread_capacity,
            st.span_capacity,
            st.chunk_capacity
        ),
        (64, 4096, 4096, 8192)
    );
    assert_eq!(tr.tracked_set().limit(), PID_MAX_LIMIT as u64);
    tr.register_process(1, 0).unwrap();
    tr.add_thread(1, PID_MAX_LIMIT as u32 - 1).unwrap();
    assert_eq!(tr.add_thread(1, PID_MAX_LIMIT as u32), Err(ERANGE));
    // Fill the thread and span tables completely: the hash tables have room.
    for tid in 0..4095 {
        tr.add_thread(1, tid).unwrap();
    }
    assert_eq!(tr.add_thread(1, 5000), Err(ENOSPC));
    for i in 0..4096u64 {
        tr.begin((i / 16) as u32, key(i), 0, 0).unwrap();
    }
    assert_eq!(tr.begin(300, key(5000), 0, 0), Err(ERR_TABLE_FULL));
    tr.unregister_process(1).unwrap();
    assert_eq!(tr.stats().spans_abandoned, 4096);
    assert_empty(&tr);
}

// ---------------------------------------------------------------------------------------
// Reference model
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum MCall {
    None,
    Active(u32, u64),
    Excluded,
}

#[derive(Clone, Debug)]
struct MThread {
    tgid: u32,
    /// Open spans, innermost last.
    stack: Vec<SpanKey>,
    call: MCall,
}

#[derive(Clone, Debug)]
struct MSpan {
    tid: u32,
    depth: u32,
    begin_mono: u64,
    begin_real: u64,
    entries: Vec<SyscallEntry>,
    total_calls: u64,
    total_ns: u64,
    unit_calls: u64,
    unit_ns: u64,
    flags: u32,
    threads: Vec<u32>,
}

#[derive(Clone, Debug, Default)]
struct MProc {
    written: u64,
    dropped: u64,
}

struct Model {
    caps: Caps,
    proc_slots: Vec<Option<u32>>,
    procs: HashMap<u32, MProc>,
    threads: HashMap<u32, MThread>,
    spans: HashMap<(u32, SpanKey), MSpan>,
    filter: SyscallFilter,
    max_calls: u32,
    st: Stats,
}

impl Model {
    fn new(caps: Caps) -> Self {
        Model {
            caps,
            proc_slots: vec![None; caps.procs],
            procs: HashMap::new(),
            threads: HashMap::new(),
            spans: HashMap::new(),
            filter: SyscallFilter::ALLOW_ALL,
            max_calls: DEFAULT_MAX_CALLS,
            st: Stats::default(),
        }
    }

    fn chunks_in_use(&self) -> usize {
        self.spans
            .values()
            .map(|s| s.entries.len().div_ceil(CHUNK_ENTRIES))
            .sum()
    }

    fn stats(&self) -> Stats {
        let mut s = self.st;
        s.processes = self.procs.len() as u64;
        s.process_capacity = self.caps.procs as u64;
        s.threads = self.threads.len() as u64;
        s.thread_capacity = self.caps.threads as u64;
        s.open_spans = self.spans.len() as u64;
        s.span_capacity = self.caps.spans as u64;
        s.chunks_in_use = self.chunks_in_use() as u64;
        s.chunk_capacity = self.caps.chunks as u64;
        s.max_calls = u64::from(self.max_calls);
        s.max_procs_per_uid = u64::from(DEFAULT_MAX_PROCS_PER_UID);
        s
    }

    fn register(&mut self, tgid: u32) -> Result<ProcIdx, i32> {
        if self.procs.contains_key(&tgid) {
            return Err(EALREADY);
        }
        let Some(i) = self.proc_slots.iter().position(Option::is_none) else {
            self.st.processes_refused += 1;
            return Err(ENOSPC);
        };
        self.proc_slots[i] = Some(tgid);
        self.procs.insert(tgid, MProc::default());
        self.st.processes_registered += 1;
        Ok(ProcIdx(i as u32))
    }

    fn drop_thread(&mut self, tid: u32) {
        let t = self.threads.remove(&tid).unwrap();
        for k in t.stack {
            self.spans.remove(&(t.tgid, k)).unwrap();
            self.st.spans_abandoned += 1;
        }
    }

    fn unregister(&mut self, tgid: u32) -> Result<(), i32> {
        if self.procs.remove(&tgid).is_none() {
            return Err(ENOENT);
        }
        let tids: Vec<u32> = self
            .threads
            .iter()
            .filter(|(_, t)| t.tgid == tgid)
            .map(|(&tid, _)| tid)
            .collect();
        for tid in tids {
            self.drop_thread(tid);
        }
        *self
            .proc_slots
            .iter_mut()
            .find(|s| **s == Some(tgid))
            .unwrap() = None;
        Ok(())
    }

    fn add_thread(&mut self, tgid: u32, tid: u32) -> Result<(), i32> {
        if !self.procs.contains_key(&tgid) {
            return Err(ENOENT);
        }
        if let Some(t) = self.threads.get(&tid) {
            if t.tgid == tgid {
                return Ok(());
            }
            self.remove_thread(tid);
        }
        if tid as usize >= self.caps.tid_limit {
            self.st.threads_refused += 1;
            return Err(ERANGE);
        }
        if self.threads.len() >= self.caps.threads {
            self.st.threads_refused += 1;
            return Err(ENOSPC);
        }
        self.threads.insert(
            tid,
            MThread {
                tgid,
                stack: Vec::new(),
                call: MCall::None,
            },
        );
        self.st.threads_added += 1;
        Ok(())
    }

    fn remove_thread(&mut self, tid: u32) -> bool {
        let Some(t) = self.threads.get(&tid) else {
            return false;
        };
        let tgid = t.tgid;
        self.drop_thread(tid);
        !self.threads.values().any(|t| t.tgid == tgid)
    }

    fn begin(&mut self, tid: u32, key: SpanKey, mono: u64, real: u64) -> Result<(), i32> {
        let Some(t) = self.threads.get_mut(&tid) else {
            self.st.begins_untracked += 1;
            return Err(ERR_UNTRACKED);
        };
        t.call = MCall::Excluded;
        let tgid = t.tgid;
        if self.spans.contains_key(&(tgid, key)) {
            self.st.begins_duplicate += 1;
            return Err(ERR_DUPLICATE);
        }
        if t.stack.len() >= MAX_DEPTH {
            self.st.begins_too_deep += 1;
            return Err(ERR_TOO_DEEP);
        }
        if self.spans.len() >= self.caps.spans {
            self.st.begins_table_full += 1;
            return Err(ERR_TABLE_FULL);
        }
        let depth = t.stack.len() as u32;
        t.stack.push(key);
        self.spans.insert(
            (tgid, key),
            MSpan {
                tid,
                depth,
                begin_mono: mono,
                begin_real: real,
                entries: Vec::new(),
                total_calls: 0,
                total_ns: 0,
                unit_calls: 0,
                unit_ns: 0,
                flags: 0,
                threads: Vec::new(),
            },
        );
        self.st.spans_begun += 1;
        self.st.spans_high_water = self.st.spans_high_water.max(self.spans.len() as u64);
        Ok(())
    }

    /// Expected result of `end`: the outcome and, for a slow span with a header, the
    /// decoded record.
    #[allow(clippy::type_complexity)]
    fn end(
        &mut self,
        wtid: u32,
        key: SpanKey,
        mono: u64,
        real: u64,
        threshold: u64,
        out_len: usize,
    ) -> Result<(EndOutcome, Option<(RecordHeader, Vec<SyscallEntry>)>), i32> {
        let Some(w) = self.threads.get_mut(&wtid) else {
            self.st.ends_untracked += 1;
            return Err(ERR_UNTRACKED);
        };
        w.call = MCall::Excluded;
        let tgid = w.tgid;
        let Some(mut s) = self.spans.remove(&(tgid, key)) else {
            self.st.ends_unknown += 1;
            return Err(ERR_UNKNOWN_SPAN);
        };
        let owner = self.threads.get_mut(&s.tid).unwrap();
        let pos = owner.stack.iter().position(|k| *k == key).unwrap();
        owner.stack.remove(pos);
        self.st.spans_ended += 1;
        if mono.saturating_sub(s.begin_mono) < threshold {
            return Ok((EndOutcome::Fast, None));
        }
        self.st.spans_slow += 1;
        if wtid != s.tid {
            s.flags |= uapi::REC_ENDED_ELSEWHERE;
        }
        if out_len < RECORD_HEADER_SIZE {
            self.st.records_truncated += 1;
            return Ok((EndOutcome::Slow { len: 0, tgid }, None));
        }
        let fit = ((out_len - RECORD_HEADER_SIZE) / SYSCALL_ENTRY_SIZE).min(s.entries.len());
        if fit < s.entries.len() {
            self.st.records_truncated += 1;
            s.flags |= uapi::REC_CALLS_TRUNCATED;
            for e in &s.entries[fit..] {
                s.unit_calls += 1;
                s.unit_ns += e.end_mono_ns - e.start_mono_ns;
            }
            s.entries.truncate(fit);
        }
        let h = RecordHeader {
            magic: uapi::RECORD_MAGIC,
            version: uapi::ABI_VERSION as u16,
            header_size: RECORD_HEADER_SIZE as u16,
            total_size: record_size(fit as u32) as u32,
            n_entries: fit as u32,
            trace_id: key.trace_id,
            span_id: key.span_id,
            tid: s.tid,
            tgid,
            begin_mono_ns: s.begin_mono,
            end_mono_ns: mono,
            begin_real_ns: s.begin_real,
            end_real_ns: real,
            depth: s.depth as u16,
            n_threads: s.threads.len().min(uapi::MAX_SPAN_THREADS) as u16,
            flags: s.flags,
            total_calls: s.total_calls,
            total_call_ns: s.total_ns,
            unitemised_calls: s.unit_calls,
            unitemised_ns: s.unit_ns,
            records_dropped_before: self.procs[&tgid].dropped,
            sched: Default::default(),
        };
        Ok((
            EndOutcome::Slow {
                len: record_size(fit as u32),
                tgid,
            },
            Some((h, s.entries)),
        ))
    }

    fn sys_enter(&mut self, tid: u32, nr: u32, now: u64) {
        if let Some(t) = self.threads.get_mut(&tid) {
            t.call = MCall::Active(nr, now);
        }
    }

    fn sys_exit(&mut self, tid: u32, ret: i64, now: u64) {
        let chunks_in_use = self.chunks_in_use();
        let Some(t) = self.threads.get_mut(&tid) else {
            return;
        };
        let (nr, start) = match core::mem::replace(&mut t.call, MCall::None) {
            MCall::None => {
                self.st.calls_without_enter += 1;
                return;
            }
            MCall::Excluded => return,
            MCall::Active(nr, start) => (nr, start),
        };
        let Some(&top) = t.stack.last() else {
            return;
        };
        if !self.filter.allows(nr) {
            self.st.calls_filtered += 1;
            return;
        }
        let s = self.spans.get_mut(&(t.tgid, top)).unwrap();
        if !s.threads.contains(&tid) {
            s.threads.push(tid);
        }
        let dur = now - start;
        s.total_calls += 1;
        s.total_ns += dur;
        self.st.calls_attributed += 1;
        if s.entries.len() >= self.max_calls as usize {
            s.unit_calls += 1;
            s.unit_ns += dur;
            s.flags |= uapi::REC_CALLS_TRUNCATED;
            self.st.calls_unitemised_limit += 1;
        } else if s.entries.len().is_multiple_of(CHUNK_ENTRIES) && chunks_in_use >= self.caps.chunks
        {
            s.unit_calls += 1;
            s.unit_ns += dur;
            s.flags |= uapi::REC_POOL_EXHAUSTED;
            self.st.calls_unitemised_pool += 1;
        } else {
            s.entries.push(SyscallEntry {
                nr,
                tid,
                ret,
                start_mono_ns: start,
                end_mono_ns: now,
            });
            let used = self.chunks_in_use() as u64;
            self.st.chunks_high_water = self.st.chunks_high_water.max(used);
        }
    }

    fn expire(&mut self, now: u64, timeout: u64) -> u32 {
        let old: Vec<(u32, SpanKey)> = self
            .spans
            .iter()
            .filter(|(_, s)| now.saturating_sub(s.begin_mono) > timeout)
            .map(|(k, _)| *k)
            .collect();
        for k in &old {
            let s = self.spans.remove(k).unwrap();
            let t = self.threads.get_mut(&s.tid).unwrap();
            t.stack.retain(|x| *x != k.1);
            self.st.spans_expired += 1;
        }
        old.len() as u32
    }

    fn note(&mut self, tgid: u32, written: bool) {
        let p = self.procs.get_mut(&tgid);
        if written {
            self.st.records_written += 1;
            if let Some(p) = p {
                p.written += 1;
            }
        } else {
            self.st.records_dropped += 1;
            if let Some(p) = p {
                p.dropped += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Property test: tracker == model
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Register(u8),
    Unregister(u8),
    AddThread(u8, u8),
    RemoveThread(u8),
    Begin {
        t: u8,
        k: u8,
        in_call: bool,
    },
    End {
        t: u8,
        k: u8,
        in_call: bool,
        threshold: u8,
        out: u8,
    },
    Calls {
        t: u8,
        nr: u8,
        n: u8,
        dur: u16,
    },
    Enter(u8, u8),
    Exit(u8),
    Advance(u16),
    Expire(u8),
    SetMaxCalls(u8),
    SetFilter(u8),
    Note(u8, bool),
}

const TGIDS: [u32; 3] = [1000, 1001, 1002];
/// The last tid is beyond the test bitmap.
const TIDS: [u32; 8] = [1, 2, 3, 64, 65, 1000, 4095, 4096];
const NRS: [u32; 6] = [0, 1, 39, 202, 600, u32::MAX];

/// Mostly the threads the prologue of `run` adds.
fn tid() -> impl Strategy<Value = u8> {
    prop_oneof![4 => 0..4u8, 1 => 0..8u8]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..3u8).prop_map(Op::Register),
        1 => (0..3u8).prop_map(Op::Unregister),
        2 => (0..3u8, 0..8u8).prop_map(|(p, t)| Op::AddThread(p, t)),
        1 => (0..8u8).prop_map(Op::RemoveThread),
        8 => (tid(), 0..8u8, any::<bool>()).prop_map(|(t, k, in_call)| Op::Begin { t, k, in_call }),
        8 => (tid(), 0..8u8, any::<bool>(), 0..3u8, 0..4u8)
            .prop_map(|(t, k, in_call, threshold, out)| Op::End { t, k, in_call, threshold, out }),
        8 => (tid(), 0..6u8, 1..40u8, 0..100u16).prop_map(|(t, nr, n, dur)| Op::Calls { t, nr, n, dur }),
        1 => (0..8u8, 0..6u8).prop_map(|(t, nr)| Op::Enter(t, nr)),
        1 => (0..8u8).prop_map(Op::Exit),
        2 => (0..2000u16).prop_map(Op::Advance),
        1 => (0..3u8).prop_map(Op::Expire),
        1 => (0..80u8).prop_map(Op::SetMaxCalls),
        1 => (0..6u8).prop_map(Op::SetFilter),
        1 => (0..3u8, any::<bool>()).prop_map(|(p, w)| Op::Note(p, w)),
    ]
}

fn caps() -> impl Strategy<Value = Caps> {
    (
        1..4usize,
        2..7usize,
        prop_oneof![Just(3usize), Just(20)],
        1..5usize,
    )
        .prop_map(|(procs, threads, spans, chunks)| Caps {
            procs,
            threads,
            spans,
            chunks,
            tid_limit: 4096,
        })
}

/// A call enters: through the lock-free path (`hot`, as the kernel's probes do for a thread
/// stacking its spans) when it finds the thread, else the locked one.
fn enter(tr: &mut Tracker<'_>, hot: bool, tid: u32, nr: u32, now: u64) {
    if !(hot && tr.hot_path().sys_enter(tid, nr, now)) {
        tr.sys_enter(tid, nr, now);
    }
}

/// A call exits (see [`enter`]).
fn exit(tr: &mut Tracker<'_>, hot: bool, tid: u32, ret: i64, now: u64) {
    if !hot || tr.hot_path().sys_exit(tid, ret, now) != HotExit::Done {
        tr.sys_exit(tid, ret, now);
    }
}

/// Counters that lag while the lock-free path holds calls not yet charged (equal again
/// once they are), and the chunk high-water mark, which a later charge may leave lower.
fn mask_pending(mut s: Stats, pending: bool) -> Stats {
    s.chunks_high_water = 0;
    if pending {
        s.calls_attributed = 0;
        s.calls_unitemised_limit = 0;
        s.calls_unitemised_pool = 0;
        s.calls_filtered = 0;
        s.chunks_in_use = 0;
    }
    s
}

fn run(caps: Caps, ops: Vec<Op>) -> Result<(), TestCaseError> {
    run_with(caps, ops, false)
}

/// Runs `ops` on the tracker and on the model. With `hot`, the calls go through the
/// lock-free path and are charged only when their thread's stack next changes: the records
/// must be the model's, which charges every call at once (the chunk pool must then be large
/// enough never to run out: a late charge may find chunks an early one would not).
fn run_with(caps: Caps, mut ops: Vec<Op>, hot: bool) -> Result<(), TestCaseError> {
    // Every case starts with two processes of two threads each (capacity permitting).
    let prologue = [
        Op::Register(0),
        Op::Register(1),
        Op::AddThread(0, 0),
        Op::AddThread(0, 1),
        Op::AddThread(1, 2),
        Op::AddThread(1, 3),
    ];
    ops.splice(0..0, prologue);
    let mut mem = Mem::new(caps);
    let mut tr = mem.tracker();
    let mut m = Model::new(caps);
    let mut now: u64 = 1_000_000;
    let real_offset: u64 = 1_700_000_000_000_000_000;
    let mut out = vec![0u8; BIG];
    let mut seq: i64 = 0;
    for op in ops {
        match op {
            Op::Register(p) => {
                let tgid = TGIDS[p as usize];
                prop_assert_eq!(tr.register_process(tgid, 0), m.register(tgid));
            }
            Op::Unregister(p) => {
                let tgid = TGIDS[p as usize];
                prop_assert_eq!(tr.unregister_process(tgid), m.unregister(tgid));
            }
            Op::AddThread(p, t) => {
                let (tgid, tid) = (TGIDS[p as usize], TIDS[t as usize]);
                prop_assert_eq!(tr.add_thread(tgid, tid), m.add_thread(tgid, tid));
            }
            Op::RemoveThread(t) => {
                let tid = TIDS[t as usize];
                prop_assert_eq!(tr.remove_thread(tid), m.remove_thread(tid));
            }
            Op::Begin { t, k, in_call } => {
                let tid = TIDS[t as usize];
                if in_call {
                    enter(&mut tr, hot, tid, 1, now);
                    m.sys_enter(tid, 1, now);
                }
                now += 1;
                let k = key(u64::from(k));
                prop_assert_eq!(
                    tr.begin(tid, k, now, now + real_offset),
                    m.begin(tid, k, now, now + real_offset)
                );
                now += 1;
                if in_call {
                    exit(&mut tr, hot, tid, 50, now);
                    m.sys_exit(tid, 50, now);
                }
            }
            Op::End {
                t,
                k,
                in_call,
                threshold,
                out: out_sel,
            } => {
                let tid = TIDS[t as usize];
                if in_call {
                    enter(&mut tr, hot, tid, 1, now);
                    m.sys_enter(tid, 1, now);
                }
                now += 1;
                let k = key(u64::from(k));
                let threshold = [0, 500, u64::MAX][threshold as usize];
                let out_len = [BIG, RECORD_HEADER_SIZE + 5 * 32, RECORD_HEADER_SIZE + 40 * 32 + 7, 64][out_sel as usize];
                out.fill(0xee);
                let got = tr.end(
                    tid,
                    k,
                    now,
                    now + real_offset,
                    threshold,
                    &mut out[..out_len],
                );
                let want = m.end(tid, k, now, now + real_offset, threshold, out_len);
                match (got, want) {
                    (Ok(g), Ok((w, rec))) => {
                        prop_assert_eq!(g, w);
                        if let EndOutcome::Slow { len, .. } = g {
                            prop_assert!(
                                out[len..].iter().all(|&b| b == 0xee),
                                "wrote past the record"
                            );
                        }
                        if let Some((wh, we)) = rec {
                            let (h, e) = decode(&out, g);
                            prop_assert_eq!(h, wh);
                            prop_assert_eq!(e, we);
                        }
                    }
                    (g, w) => prop_assert_eq!(g, w.map(|x| x.0)),
                }
                now += 1;
                if in_call {
                    exit(&mut tr, hot, tid, 50, now);
                    m.sys_exit(tid, 50, now);
                }
            }
            Op::Calls { t, nr, n, dur } => {
                let tid = TIDS[t as usize];
                for i in 0..u64::from(n) {
                    seq += 1;
                    enter(&mut tr, hot, tid, NRS[nr as usize], now);
                    m.sys_enter(tid, NRS[nr as usize], now);
                    now += u64::from(dur) + i;
                    exit(&mut tr, hot, tid, seq, now);
                    m.sys_exit(tid, seq, now);
                    now += 1;
                }
            }
            Op::Enter(t, nr) => {
                let tid = TIDS[t as usize];
                enter(&mut tr, hot, tid, NRS[nr as usize], now);
                m.sys_enter(tid, NRS[nr as usize], now);
                now += 1;
            }
            Op::Exit(t) => {
                let tid = TIDS[t as usize];
                seq += 1;
                exit(&mut tr, hot, tid, seq, now);
                m.sys_exit(tid, seq, now);
                now += 1;
            }
            Op::Advance(dt) => now += u64::from(dt),
            Op::Expire(sel) => {
                let timeout = [500, 20_000, 1_000_000][sel as usize];
                prop_assert_eq!(tr.expire(now, timeout), m.expire(now, timeout));
            }
            Op::SetMaxCalls(n) => {
                tr.set_max_calls(u32::from(n)).unwrap();
                m.max_calls = u32::from(n);
            }
            Op::SetFilter(nr) => {
                let mut f = SyscallFilter::ALLOW_ALL;
                if nr < 5 {
                    f.set(NRS[nr as usize], false);
                    f.set_others(nr % 2 == 0);
                }
                tr.set_filter(f);
                m.filter = f;
            }
            Op::Note(p, written) => {
                let tgid = TGIDS[p as usize];
                if written {
                    tr.note_record_written(tgid);
                } else {
                    tr.note_record_dropped(tgid);
                }
                m.note(tgid, written);
            }
        }
        check_invariants(&tr);
        if hot {
            let pending = tr.pending_calls() != 0;
            prop_assert_eq!(mask_pending(tr.stats(), pending), mask_pending(m.stats(), pending));
        } else {
            prop_assert_eq!(tr.stats(), m.stats());
        }
        for tid in TIDS {
            prop_assert_eq!(tr.is_tracked(tid), m.threads.contains_key(&tid));
            prop_assert_eq!(tr.thread_tgid(tid), m.threads.get(&tid).map(|t| t.tgid));
        }
        for tgid in TGIDS {
            let info = tr
                .process_info(tgid)
                .map(|i| (i.records_written, i.records_dropped));
            prop_assert_eq!(info, m.procs.get(&tgid).map(|p| (p.written, p.dropped)));
        }
    }
    // Tear down: nothing leaks.
    for tgid in TGIDS {
        prop_assert_eq!(tr.unregister_process(tgid), m.unregister(tgid));
    }
    prop_assert_eq!(mask_pending(tr.stats(), false), mask_pending(m.stats(), false));
    if !hot {
        prop_assert_eq!(tr.stats(), m.stats());
    }
    assert_empty(&tr);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn tracker_matches_model(caps in caps(), ops in proptest::collection::vec(op(), 1..120)) {
        run(caps, ops)?;
    }

    /// The same, with the calls on the lock-free path (issue 16): charged late, to the
    /// same spans, with the same records.
    #[test]
    fn hot_path_matches_model(caps in caps(), ops in proptest::collection::vec(op(), 1..120)) {
        run_with(Caps { chunks: 256, ..caps }, ops, true)?;
    }

    /// Random raw inputs (any tid, key, time, buffer size) never panic and keep the
    /// structure consistent.
    #[test]
    fn raw_inputs_never_panic(
        events in proptest::collection::vec(
            (0..9u8, any::<u32>(), any::<u64>(), any::<u64>(), 0..300usize),
            1..200,
        )
    ) {
        let mut mem = Mem::new(Caps { procs: 2, threads: 4, spans: 4, chunks: 2, tid_limit: 128 });
        let mut tr = mem.tracker();
        let mut out = vec![0u8; 300];
        for (kind, a, b, c, len) in events {
            let tid = a % 130;
            let k = SpanKey { trace_id: u128::from(b % 5).to_be_bytes(), span_id: (c % 3).to_be_bytes() };
            match kind {
                0 => { let _ = tr.register_process(a % 3, 0); }
                1 => { let _ = tr.unregister_process(a % 3); }
                2 => { let _ = tr.add_thread(a % 3, (b % 130) as u32); }
                3 => { tr.remove_thread(tid); }
                4 => { let _ = tr.begin(tid, k, b, c); }
                5 => { let _ = tr.end(tid, k, b, c, c, &mut out[..len]); }
                6 => tr.sys_enter(tid, b as u32, c),
                7 => tr.sys_exit(tid, b as i64, c),
                _ => { tr.expire(b, c); }
            }
            check_invariants(&tr);
        }
        for tgid in 0..3 {
            let _ = tr.unregister_process(tgid);
        }
        assert_empty(&tr);
    }
}

// ---------------------------------------------------------------------------------------
// Attribution by activation (active-span slots)
// ---------------------------------------------------------------------------------------

/// The slot value of span `key(i)`.
fn sv(i: u64) -> u64 {
    uapi::slot_value(&key(i).span_id)
}

/// One call of `tid` with its slot holding `slot` (`None`: unreadable).
fn call_with(tr: &mut Tracker<'_>, tid: u32, slot: Option<u64>, nr: u32, at: u64) {
    tr.sys_enter_with(tid, nr, at, |_| slot);
    tr.sys_exit(tid, 0, at + 1);
}

#[test]
fn activation_charges_the_span_in_the_slot() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    let mut out = vec![0u8; BIG];
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap(); // the event loop
    tr.add_thread(10, 101).unwrap(); // a pool thread
    assert_eq!(tr.set_active_slot(100, 0x1001), Err(EINVAL));
    assert_eq!(tr.set_active_slot(555, 0x1000), Err(ERR_UNTRACKED));
    tr.set_active_slot(100, 0x1000).unwrap();
    tr.set_active_slot(101, 0x2000).unwrap();
    assert_eq!(tr.active_slot(100), Some(0x1000));
    // No span open in the process: the probes stay off for both threads.
    assert!(!tr.active_slot_set().contains(100) && !tr.active_slot_set().contains(101));
    // Two requests begun on the loop thread; neither is on its stack.
    tr.begin(100, key(0), 10, 10).unwrap();
    tr.begin(100, key(1), 11, 11).unwrap();
    assert!(tr.active_slot_set().contains(100) && tr.active_slot_set().contains(101));
    check_invariants(&tr);
    // Request 0 runs, then request 1, then 0 again; then the loop idles (slot 0).
    call_with(&mut tr, 100, Some(sv(0)), 1, 20);
    call_with(&mut tr, 100, Some(sv(1)), 2, 30);
    call_with(&mut tr, 100, Some(sv(1)), 2, 40);
    call_with(&mut tr, 100, Some(sv(0)), 3, 50);
    call_with(&mut tr, 100, Some(0), 4, 60);
    // Request 0 moved to a pool thread (to_thread): its calls there are its own.
    call_with(&mut tr, 101, Some(sv(0)), 5, 70);
    // Unknown ids (an unsampled span) and unreadable slots charge no span.
    call_with(&mut tr, 100, Some(sv(9)), 6, 80);
    call_with(&mut tr, 101, None, 7, 90);
    let st = tr.stats();
    assert_eq!(
        (
            st.calls_attributed,
            st.calls_no_active_span,
            st.calls_unknown_active_span,
            st.slot_faults,
            st.calls_without_enter
        ),
        (5, 1, 1, 1, 0)
    );
    check_invariants(&tr);
    // Ended by the pool thread: only its own calls, from both threads.
    let r = tr.end(101, key(0), 100, 100, 1, &mut out).unwrap();
    let (h, e) = decode(&out, r);
    assert_eq!(
        e.iter().map(|e| (e.nr, e.tid)).collect::<Vec<_>>(),
        vec![(1, 100), (3, 100), (5, 101)]
    );
    assert_eq!((h.tid, h.n_threads, h.depth), (100, 2, 0));
    assert_eq!(
        h.flags,
        uapi::REC_ACTIVATION | uapi::REC_ENDED_ELSEWHERE
    );
    let r = tr.end(100, key(1), 100, 100, 1, &mut out).unwrap();
    let (h, e) = decode(&out, r);
    assert_eq!(e.iter().map(|e| e.nr).collect::<Vec<_>>(), vec![2, 2]);
    assert_eq!((h.n_threads, h.flags), (1, uapi::REC_ACTIVATION));
    // The last span closed: the probes are off again.
    assert!(!tr.active_slot_set().contains(100) && !tr.active_slot_set().contains(101));
    check_invariants(&tr);
}

#[test]
fn activation_index_only_for_processes_with_slots() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    tr.add_thread(10, 101).unwrap();
    // No slot in the process: nothing indexed, and one span id may be open in two traces.
    let mut other = key(1);
    other.trace_id[0] ^= 0xff;
    tr.begin(100, key(1), 1, 1).unwrap();
    tr.begin(100, other, 1, 1).unwrap();
    tr.begin(100, key(2), 1, 1).unwrap();
    assert_eq!(tr.active_index.len(), 0);
    check_invariants(&tr);
    // The first slot indexes the process's open spans; the second span id 1 conflicts.
    tr.set_active_slot(101, 0x1000).unwrap();
    assert_eq!(tr.stats().slot_index_conflicts, 1);
    check_invariants(&tr);
    call_with(&mut tr, 101, Some(sv(2)), 7, 10);
    let mut out = vec![0u8; BIG];
    let r = tr.end(100, key(2), 20, 20, 1, &mut out).unwrap();
    assert_eq!(decode(&out, r).1.len(), 1);
    // The last slot gone: new spans are not indexed (old ones leave it as they end).
    tr.set_active_slot(101, 0).unwrap();
    tr.begin(100, key(3), 30, 30).unwrap();
    check_invariants(&tr);
    tr.unregister_process(10).unwrap();
    assert_empty(&tr);
}

#[test]
fn activation_has_no_depth_limit_and_survives_its_threads() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    let mut out = vec![0u8; BIG];
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    tr.add_thread(10, 101).unwrap();
    tr.set_active_slot(100, 0x1000).unwrap();
    // More concurrent requests than a thread can stack.
    for i in 0..(MAX_DEPTH as u64 + 4) {
        tr.begin(100, key(i), i, i).unwrap();
    }
    check_invariants(&tr);
    assert_eq!(tr.hinted_slot(100), Some(0x1000));
    // The thread that began them exits: they stay open, another thread ends them.
    tr.remove_thread(100);
    assert_eq!(tr.hinted_slot(100), None);
    check_invariants(&tr);
    call_with(&mut tr, 101, None, 1, 50); // no slot on 101: stack mode, nothing open there
    for i in 0..(MAX_DEPTH as u64 + 4) {
        assert!(tr.end(101, key(i), 100, 100, 1_000, &mut out).is_ok(), "span {i}");
    }
    assert_eq!(tr.stats().open_spans, 0);
    // Unregistering drops the process's spans.
    tr.add_thread(10, 102).unwrap();
    tr.set_active_slot(102, 0x3000).unwrap();
    tr.begin(102, key(40), 1, 1).unwrap();
    tr.begin(102, key(41), 1, 1).unwrap();
    tr.unregister_process(10).unwrap();
    assert_eq!(tr.stats().spans_abandoned, 2);
    assert_empty(&tr);
}

#[test]
fn activation_converts_stacks_and_checks_spans_at_exit() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    let mut out = vec![0u8; BIG];
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    tr.add_thread(10, 101).unwrap();
    // Begun while the thread had no slot: on its stack; the slot makes it the process's.
    tr.begin(100, key(0), 1, 1).unwrap();
    tr.set_active_slot(100, 0x1000).unwrap();
    check_invariants(&tr);
    assert!(tr.active_slot_set().contains(100) && tr.active_set().contains(100));
    call_with(&mut tr, 100, Some(sv(0)), 1, 10);
    // A call in progress when its span ends is charged to no span.
    tr.sys_enter_with(100, 2, 20, |_| Some(sv(0)));
    let r = tr.end(101, key(0), 30, 30, 1, &mut out).unwrap();
    tr.sys_exit(100, 0, 40);
    let (h, e) = decode(&out, r);
    assert_eq!((e.len(), h.flags & uapi::REC_ACTIVATION), (1, uapi::REC_ACTIVATION));
    assert_eq!(tr.stats().calls_span_ended, 1);
    // A span id the slot held before its begin is found once it is begun.
    tr.begin(101, key(5), 50, 50).unwrap(); // keeps the probes on
    call_with(&mut tr, 100, Some(sv(6)), 3, 60);
    tr.begin(101, key(6), 70, 70).unwrap();
    call_with(&mut tr, 100, Some(sv(6)), 4, 80);
    let r = tr.end(101, key(6), 90, 90, 1, &mut out).unwrap();
    let (_, e) = decode(&out, r);
    assert_eq!(e.iter().map(|e| e.nr).collect::<Vec<_>>(), vec![4]);
    // The same span id in another trace of the process is refused.
    let mut other = key(5);
    other.trace_id[0] ^= 0xff;
    assert_eq!(tr.begin(101, other, 95, 95), Err(ERR_DUPLICATE));
    // Clearing the slot puts the thread back on its (empty) stack.
    tr.set_active_slot(100, 0).unwrap();
    assert!(!tr.active_slot_set().contains(100) && !tr.active_set().contains(100));
    // More than MAX_SPAN_THREADS threads: counted up to the limit and flagged.
    tr.begin(101, key(7), 100, 100).unwrap();
    for tid in 200..(200 + uapi::MAX_SPAN_THREADS as u32 + 2) {
        tr.add_thread(10, tid).unwrap_or(());
        if tr.set_active_slot(tid, 0x8000).is_ok() {
            call_with(&mut tr, tid, Some(sv(7)), 9, 110);
        }
    }
    check_invariants(&tr);
    let r = tr.end(101, key(7), 120, 120, 1, &mut out).unwrap();
    let (h, _) = decode(&out, r);
    assert_eq!(h.n_threads as usize, uapi::MAX_SPAN_THREADS);
    assert_ne!(h.flags & uapi::REC_MANY_THREADS, 0);
}

/// One step of [`slots_never_misattribute`].
#[derive(Clone, Debug)]
enum SlotOp {
    /// Add thread `t` (of process 10 if `t` is even, else 11).
    Add(u8),
    /// Remove thread `t`.
    Remove(u8),
    /// Give thread `t` a slot, or clear it.
    Slot(u8, bool),
    /// Thread `t` begins span `k`.
    Begin(u8, u8),
    /// Thread `t` ends span `k`.
    End(u8, u8),
    /// Thread `t` makes a call with its slot holding span `k`'s id (`None`: 0), and span
    /// `e` ends in the middle of it (from another thread) when `Some`.
    Call(u8, Option<u8>, Option<u8>),
}

fn slot_op() -> impl Strategy<Value = SlotOp> {
    let t = 0..6u8;
    let k = 0..5u8;
    prop_oneof![
        1 => t.clone().prop_map(SlotOp::Add),
        1 => t.clone().prop_map(SlotOp::Remove),
        1 => (t.clone(), any::<bool>()).prop_map(|(t, on)| SlotOp::Slot(t, on)),
        2 => (t.clone(), k.clone()).prop_map(|(t, k)| SlotOp::Begin(t, k)),
        2 => (t.clone(), k.clone()).prop_map(|(t, k)| SlotOp::End(t, k)),
        5 => (t, proptest::option::of(k.clone()), proptest::option::weighted(0.1, k))
            .prop_map(|(t, k, e)| SlotOp::Call(t, k, e)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    /// Random threads, slots, spans and calls: the structure stays consistent, and a call
    /// of a thread with a slot is charged to exactly the open span its slot names (of its
    /// own process), or to none; never to another span.
    #[test]
    fn slots_never_misattribute(ops in proptest::collection::vec(slot_op(), 1..150)) {
        let mut mem = Mem::new(CAPS);
        let mut tr = mem.tracker();
        let mut out = vec![0u8; BIG];
        tr.register_process(10, 0).unwrap();
        tr.register_process(11, 0).unwrap();
        let tid = |t: u8| 100 + u32::from(t);
        let tgid = |t: u8| if t % 2 == 0 { 10 } else { 11 };
        let mut now = 1u64;
        for op in ops {
            now += 10;
            match op {
                SlotOp::Add(t) => { let _ = tr.add_thread(tgid(t), tid(t)); }
                SlotOp::Remove(t) => { tr.remove_thread(tid(t)); }
                SlotOp::Slot(t, on) => { let _ = tr.set_active_slot(tid(t), if on { 0x1000 } else { 0 }); }
                SlotOp::Begin(t, k) => { let _ = tr.begin(tid(t), key(u64::from(k)), now, now); }
                SlotOp::End(t, k) => { let _ = tr.end(tid(t), key(u64::from(k)), now, now, u64::MAX, &mut out); }
                SlotOp::Call(t, k, e) => {
                    let v = k.map_or(0, |k| sv(u64::from(k)));
                    let before: Vec<(SpanKey, u32, u64)> = tr.spans.iter()
                        .filter(|s| s.open != 0).map(|s| (s.key, s.proc, s.total_calls)).collect();
                    let slotted = tr.active_slot(tid(t)).is_some_and(|a| a != 0);
                    let proc = tr.process_of(tgid(t)).map(|p| p.0);
                    tr.sys_enter_with(tid(t), 39, now, |_| Some(v));
                    let mut ended = None;
                    if let Some(e) = e {
                        // Ended by another thread of the process (a writer's own call is
                        // excluded, so the end cannot come from `t` itself).
                        let other = tid((t + 2) % 6);
                        if tr.end(other, key(u64::from(e)), now + 1, now + 1, u64::MAX, &mut out).is_ok() {
                            ended = Some(key(u64::from(e)));
                        }
                    }
                    tr.sys_exit(tid(t), 0, now + 2);
                    if slotted {
                        for (k0, p0, calls0) in before {
                            let Some(s) = tr.spans.iter().find(|s| s.open != 0 && s.key == k0 && s.proc == p0) else {
                                continue; // ended during the call
                            };
                            let named = v != 0 && uapi::slot_value(&k0.span_id) == v && Some(p0) == proc
                                && ended != Some(k0);
                            let want = calls0 + u64::from(named);
                            prop_assert_eq!(s.total_calls, want, "span {:?} of proc {}", k0.span_id, p0);
                        }
                    }
                }
            }
            check_invariants(&tr);
        }
    }
}

/// ABI 4: a begin line may carry the span's own threshold, used at its end instead of the
/// default (the sysfs `threshold_ns`); old lines get the default; a bad threshold changes
/// nothing.
#[test]
fn begin_line_thresholds() {
    use crate::key::{format_begin_line, BEGIN_LINE_MAX};
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    let mut out = vec![0u8; BIG];
    let line = |k: u64, t: Option<u64>| {
        let mut b = [0u8; BEGIN_LINE_MAX];
        format_begin_line(&key(k), t, &mut b).to_vec()
    };
    let end = |tr: &mut Tracker<'_>, k: u64, at: u64, default: u64, out: &mut [u8]| {
        let mut b = [0u8; 50];
        let l = format_span_line(&key(k), &mut b).to_vec();
        tr.end_line(100, &l, at, 0, default, out).unwrap()
    };
    // Own threshold 10: a 20 ns span is slow although the default is 1000...
    tr.begin_line(100, &line(1, Some(10)), 0, 0).unwrap();
    assert!(matches!(end(&mut tr, 1, 20, 1000, &mut out), EndOutcome::Slow { .. }));
    // ... and a 500 ns span with its own 1000 is fast although the default is 1.
    tr.begin_line(100, &line(2, Some(1000)), 0, 0).unwrap();
    assert_eq!(end(&mut tr, 2, 500, 1, &mut out), EndOutcome::Fast);
    // Without one: the default at the end.
    tr.begin_line(100, &line(3, None), 0, 0).unwrap();
    assert!(matches!(end(&mut tr, 3, 500, 100, &mut out), EndOutcome::Slow { .. }));
    // Nested spans keep their own.
    tr.begin_line(100, &line(4, Some(100)), 0, 0).unwrap();
    tr.begin_line(100, &line(5, Some(10_000)), 0, 0).unwrap();
    assert_eq!(end(&mut tr, 5, 5000, 0, &mut out), EndOutcome::Fast);
    assert!(matches!(end(&mut tr, 4, 5000, 1_000_000, &mut out), EndOutcome::Slow { .. }));
    // Malformed or out of range: refused, counted, nothing opened.
    let before = tr.stats();
    let mut bad = line(6, Some(5));
    bad.insert(50, b'x');
    assert_eq!(tr.begin_line(100, &bad, 0, 0), Err(crate::uapi::ERR_MALFORMED));
    let mut big = line(6, None);
    big.truncate(49);
    big.extend_from_slice(b" 3600000000001\n");
    assert_eq!(tr.begin_line(100, &big, 0, 0), Err(crate::uapi::ERR_THRESHOLD_RANGE));
    let after = tr.stats();
    assert_eq!(after.begins_malformed, before.begins_malformed + 2);
    assert_eq!(after.spans_begun, before.spans_begun);
    assert_eq!(tr.end_line(100, &line(6, None), 1, 0, 0, &mut out), Err(ERR_UNKNOWN_SPAN));
    check_invariants(&tr);
}

// ---- scheduler accounting (issue 12) -------------------------------------------------

fn waker(tid: u32) -> Waker {
    Waker {
        ctx: uapi::CTX_TASK,
        softirq: uapi::SOFTIRQ_NONE,
        flags: 0,
        tid,
        tgid: 10,
        comm: *b"refresh\0\0\0\0\0\0\0\0\0",
        nr: 202,
        on_cpu_ns: 58,
    }
}

#[test]
fn sched_parts_of_a_thread_per_request_span() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    tr.add_thread(10, 101).unwrap();
    tr.set_sched(true);
    tr.set_kernel_addrs(10, true);
    let mut out = vec![0u8; BIG];
    // Thread 101 runs span key(9) and wakes 100 from it.
    tr.begin(101, key(9), 0, 0).unwrap();
    tr.sched_in(100, 0, 500); // on CPU before its span: not charged
    tr.begin(100, key(0), 1000, 0).unwrap();
    tr.sys_enter(100, 202, 1100);
    tr.sched_out(100, 0, false, 1, false, None, 1200, &[0xffff_1, 0xffff_2], &[0x4000]); // 200 on CPU, blocks in futex
    tr.sched_waking(100, 61_200, &waker(101), None);
    tr.sched_in(100, 1, 63_200); // 60_000 blocked, 2_000 waiting for a CPU, migrated
    tr.sys_exit(100, 0, 63_300);
    tr.sched_out(100, 1, true, 0, false, None, 64_000, &[], &[]); // preempted after 800 on CPU
    tr.sched_in(100, 1, 65_000);
    // A child span: its time is its own.
    tr.begin(100, key(1), 65_500, 0).unwrap();
    tr.end(100, key(1), 66_000, 0, u64::MAX, &mut out).unwrap();
    let r = tr.end(100, key(0), 70_000, 0, 0, &mut out).unwrap();
    let (h, _) = decode(&out, r);
    let p = h.sched;
    assert_eq!(h.flags & (uapi::REC_SCHED | uapi::REC_SCHED_PARTIAL), uapi::REC_SCHED);
    assert_eq!(p.on_cpu_ns, 200 + 800 + 500 + 4000);
    assert_eq!(p.blocked_ns[uapi::CAUSE_LOCK as usize], 60_000);
    assert_eq!((p.runq_wakeup_ns, p.runq_preempt_ns), (2_000, 1_000));
    assert_eq!((p.blocks, p.preemptions, p.migrations, p.wakeups), (1, 1, 1, 1));
    assert_eq!(p.n_waits, 2);
    let w = p.waits[0];
    assert_eq!((w.cause, w.blocked_ns, w.runq_ns, w.tid, w.nr), (uapi::CAUSE_LOCK, 60_000, 2_000, 100, 202));
    assert_eq!((w.waker_tid, w.waker_nr, w.waker_on_cpu_ns, &w.waker_comm[..7]), (101, 202, 58, &b"refresh"[..]));
    assert_eq!(w.flags & uapi::WAIT_WAKER_IN_SPAN, uapi::WAIT_WAKER_IN_SPAN);
    assert_eq!((w.waker_trace_id, w.waker_span_id), (key(9).trace_id, key(9).span_id));
    assert_eq!((w.n_kstack, &w.kstack[..2], w.n_ustack, w.ustack[0]), (2, &[0xffff_1, 0xffff_2][..], 1, 0x4000));
    assert_eq!(p.waits[1].cause, uapi::CAUSE_PREEMPTED);
    assert_eq!((p.waits[1].n_kstack, p.waits[1].n_ustack), (0, 0));
    // The parts and the child's 500 sum to the span's duration.
    assert_eq!(crate::sched::charged(&p) + 500, 70_000 - 1000);
    // A process that may not see kernel addresses gets its waits without kernel stacks.
    tr.set_kernel_addrs(10, false);
    tr.begin(100, key(2), 80_000, 0).unwrap();
    tr.sched_out(100, 0, false, 1, false, None, 80_100, &[0xffff_1], &[0x4000]);
    tr.sched_in(100, 0, 90_000);
    let r = tr.end(100, key(2), 91_000, 0, 0, &mut out).unwrap();
    let (h, _) = decode(&out, r);
    let w = h.sched.waits[0];
    assert_eq!((w.n_kstack, w.kstack[0], w.n_ustack, w.ustack[0]), (0, 0, 1, 0x4000));
    assert_eq!(tr.stats().sched_stretches, 3);
}

#[test]
fn sched_off_is_free_and_a_switch_marks_open_spans_partial() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    let mut out = vec![0u8; BIG];
    tr.begin(100, key(0), 1000, 0).unwrap();
    tr.sched_out(100, 0, false, 1, false, None, 1200, &[], &[]);
    tr.sched_in(100, 0, 2200);
    let r = tr.end(100, key(0), 3000, 0, 0, &mut out).unwrap();
    let (h, _) = decode(&out, r);
    assert_eq!((h.flags & (uapi::REC_SCHED | uapi::REC_SCHED_PARTIAL), h.sched), (0, SchedPart::default()));
    tr.begin(100, key(0), 4000, 0).unwrap();
    tr.set_sched(true);
    tr.sched_out(100, 0, false, 1, false, None, 4200, &[], &[]);
    tr.sched_in(100, 0, 5200);
    let r = tr.end(100, key(0), 6000, 0, 0, &mut out).unwrap();
    let (h, _) = decode(&out, r);
    assert_eq!(h.flags & (uapi::REC_SCHED | uapi::REC_SCHED_PARTIAL), uapi::REC_SCHED_PARTIAL);
    assert_eq!(h.sched.blocked_ns[uapi::CAUSE_OTHER as usize], 1000);
}

#[test]
fn sched_of_a_span_ended_elsewhere_while_its_thread_sleeps() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    tr.add_thread(10, 101).unwrap();
    tr.set_sched(true);
    let mut out = vec![0u8; BIG];
    tr.begin(100, key(0), 1000, 0).unwrap();
    tr.sched_out(100, 0, false, 1, false, None, 2000, &[], &[]);
    let r = tr.end(101, key(0), 9000, 0, 0, &mut out).unwrap();
    let (h, _) = decode(&out, r);
    assert_eq!(h.sched.blocked_ns[uapi::CAUSE_OTHER as usize], 7000);
    assert_eq!(h.flags & uapi::REC_ENDED_ELSEWHERE, uapi::REC_ENDED_ELSEWHERE);
    tr.sched_in(100, 0, 20_000); // nothing left to charge, nothing unattributed
    assert_eq!((tr.stats().sched_stretches, tr.stats().sched_unattributed), (1, 0));
}

#[test]
fn sched_of_an_activated_span_follows_the_slot() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    tr.add_thread(10, 101).unwrap();
    tr.set_active_slot(100, 0x1000).unwrap();
    tr.set_active_slot(101, 0x2000).unwrap();
    tr.set_sched(true);
    let mut out = vec![0u8; BIG];
    let (a, b) = (key(1), key(2));
    let (va, vb) = (uapi::slot_value(&a.span_id), uapi::slot_value(&b.span_id));
    tr.begin(100, a, 1000, 0).unwrap();
    tr.begin(100, b, 1000, 0).unwrap();
    tr.sched_in(100, 0, 1000);
    // Thread 100 runs a (its runtime updates charge a), blocks in it; then runs b on 101.
    tr.sched_runtime(100, 500, true, Some(va));
    tr.sched_runtime(100, 300, false, None); // from another CPU: the span last seen
    tr.sys_enter_with(100, 0, 1500, |_| Some(va));
    tr.sched_runtime(100, 200, true, Some(va));
    tr.sched_out(100, 0, false, 1, false, Some(va), 2000, &[], &[]);
    tr.sched_in(100, 0, 12_000);
    tr.sched_runtime(100, 100, true, Some(0)); // no span active: charged to none
    tr.sched_in(101, 1, 12_000);
    tr.sched_runtime(101, 1000, true, Some(vb));
    tr.sched_out(101, 1, false, 1, false, Some(vb), 13_000, &[], &[]);
    tr.sched_in(101, 1, 14_000);
    let r = tr.end(100, a, 20_000, 0, 0, &mut out).unwrap();
    let (h, _) = decode(&out, r);
    assert_eq!(h.sched.on_cpu_ns, 1000);
    assert_eq!(h.sched.blocked_ns[uapi::CAUSE_OTHER as usize], 10_000);
    let r = tr.end(100, b, 20_000, 0, 0, &mut out).unwrap();
    let (h, _) = decode(&out, r);
    assert_eq!(h.sched.on_cpu_ns, 1000);
    assert_eq!(h.sched.blocked_ns[uapi::CAUSE_OTHER as usize], 1000);
    assert_eq!(h.sched.waits[0].tid, 101);
}

// ---- the lock-free system-call path (hot.rs, issue 16) --------------------------------

/// A tracker with process 10 registered and its thread 100 tracked.
fn one_thread(mem: &mut Mem) -> Tracker<'_> {
    let mut tr = mem.tracker();
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    tr
}

/// The (number, tid) of each call of the record `end` produced.
fn calls_of(out: &[u8], r: EndOutcome) -> Vec<(u32, u32)> {
    decode(out, r).1.iter().map(|e| (e.nr, e.tid)).collect()
}

/// Calls on the lock-free path, as the kernel makes them (falling back to the lock).
fn hot_call(tr: &mut Tracker<'_>, tid: u32, nr: u32, ret: i64, start: u64, end: u64) {
    enter(tr, true, tid, nr, start);
    exit(tr, true, tid, ret, end);
}

#[test]
fn hot_calls_go_to_the_span_innermost_when_made() {
    let mut mem = Mem::new(CAPS);
    let mut tr = one_thread(&mut mem);
    let (ka, kb) = (key(1), key(2));
    let mut out = vec![0u8; BIG];
    tr.begin(100, ka, 10, 0).unwrap();
    hot_call(&mut tr, 100, 1, 0, 20, 21);
    assert_eq!((tr.pending_calls(), tr.stats().calls_attributed), (1, 0), "noted, not charged");
    // The begin of the inner span folds first: call 1 is the outer span's.
    tr.begin(100, kb, 30, 0).unwrap();
    assert_eq!((tr.pending_calls(), tr.stats().calls_attributed), (0, 1));
    hot_call(&mut tr, 100, 2, 0, 40, 41);
    hot_call(&mut tr, 100, 3, 0, 42, 43);
    let r = tr.end(100, kb, 50, 0, 1, &mut out).unwrap();
    let (_, eb) = decode(&out, r);
    assert_eq!(eb.iter().map(|e| e.nr).collect::<Vec<_>>(), [2, 3]);
    hot_call(&mut tr, 100, 4, 0, 60, 61);
    let r = tr.end(100, ka, 70, 0, 1, &mut out).unwrap();
    let (ha, ea) = decode(&out, r);
    assert_eq!(ea.iter().map(|e| e.nr).collect::<Vec<_>>(), [1, 4]);
    assert_eq!(ha.total_calls, 2);
    // Outside any span: noted by the probe, never charged.
    hot_call(&mut tr, 100, 5, 0, 80, 81);
    tr.begin(100, ka, 90, 0).unwrap();
    let r = tr.end(100, ka, 100, 0, 1, &mut out).unwrap();
    assert_eq!(decode(&out, r).1, []);
    assert_eq!(tr.stats().calls_attributed, 4);
    tr.unregister_process(10).unwrap();
    assert_empty(&tr);
}

#[test]
fn hot_ring_full_takes_the_lock_and_keeps_the_order() {
    let mut mem = Mem::new(CAPS);
    let mut tr = one_thread(&mut mem);
    let k = key(1);
    let mut out = vec![0u8; BIG];
    tr.begin(100, k, 10, 0).unwrap();
    let hp = tr.hot_path();
    let mut full = 0;
    for i in 0..(2 * HOT_RING as u32 + 3) {
        assert!(hp.sys_enter(100, i, 100 + u64::from(i)));
        match hp.sys_exit(100, i64::from(i), 200 + u64::from(i)) {
            HotExit::Done => {}
            HotExit::Full => {
                full += 1;
                tr.sys_exit(100, i64::from(i), 200 + u64::from(i));
            }
            HotExit::Miss => panic!("the hint names the thread"),
        }
    }
    assert_eq!(full, 2, "one fold per HOT_RING calls");
    let r = tr.end(100, k, 1000, 0, 1, &mut out).unwrap();
    let (h, e) = decode(&out, r);
    assert_eq!(h.total_calls, 2 * HOT_RING as u64 + 3);
    assert!(e.iter().enumerate().all(|(i, e)| e.nr == i as u32 && e.start_mono_ns == 100 + i as u64));
    tr.unregister_process(10).unwrap();
    assert_empty(&tr);
}

#[test]
fn hot_hint_misses_and_reuse_never_misattribute() {
    let mut mem = Mem::new(Caps { tid_limit: 2 * HOT_HINTS, ..CAPS });
    let mut tr = mem.tracker();
    tr.register_process(10, 0).unwrap();
    // Same hint: the later thread takes it; the earlier one misses and uses the lock.
    let (a, b) = (100, 100 + HOT_HINTS as u32);
    tr.add_thread(10, a).unwrap();
    tr.add_thread(10, b).unwrap();
    let (ka, kb) = (key(1), key(2));
    let mut out = vec![0u8; BIG];
    tr.begin(a, ka, 0, 0).unwrap();
    tr.begin(b, kb, 0, 0).unwrap();
    let hp = tr.hot_path();
    assert!(!hp.sys_enter(a, 1, 10), "a's hint was taken by b");
    tr.sys_enter(a, 1, 10); // (points the hint back at a)
    assert!(!hp.sys_enter(b, 2, 11));
    tr.sys_enter(b, 2, 11);
    exit(&mut tr, true, a, 0, 12);
    exit(&mut tr, true, b, 0, 13);
    let r = tr.end(a, ka, 20, 0, 1, &mut out).unwrap();
    assert_eq!(calls_of(&out, r), [(1, a)]);
    // A call of a noted in a's old slot after the slot went to c (a racing producer) is
    // counted as stale and charged to nobody.
    let ti = tr.thread_index.get(&a).unwrap();
    tr.begin(a, ka, 30, 0).unwrap();
    hot_call(&mut tr, a, 7, 0, 31, 32);
    assert!(!tr.remove_thread(a));
    assert_eq!(tr.stats().spans_abandoned, 1);
    let c = 300;
    tr.add_thread(10, c).unwrap();
    assert_eq!(tr.thread_index.get(&c), Some(ti), "c reuses a's slot");
    let kc = key(3);
    tr.begin(c, kc, 40, 0).unwrap();
    let stale = SyscallEntry { nr: 8, tid: a, ret: 0, start_mono_ns: 41, end_mono_ns: 42 };
    assert!(tr.hot.slot(ti).unwrap().push(stale, 0));
    hot_call(&mut tr, c, 9, 0, 43, 44);
    let r = tr.end(c, kc, 50, 0, 1, &mut out).unwrap();
    assert_eq!(calls_of(&out, r), [(9, c)]);
    assert_eq!(tr.stats().calls_stale, 1);
    let r = tr.end(b, kb, 60, 0, 1, &mut out).unwrap();
    assert_eq!(calls_of(&out, r), [(2, b)]);
    tr.unregister_process(10).unwrap();
    assert_empty(&tr);
}

#[test]
fn hot_call_state_is_read_by_the_scheduler_and_excluded_by_spantrack() {
    let mut mem = Mem::new(CAPS);
    let mut tr = one_thread(&mut mem);
    let k = key(1);
    let mut out = vec![0u8; BIG];
    // The end write enters on the lock-free path; the end (under the lock) excludes it.
    tr.begin(100, k, 0, 0).unwrap();
    assert!(tr.hot_path().sys_enter(100, 1, 10));
    let ti = tr.thread_index.get(&100).unwrap();
    assert_eq!(tr.hot.slot(ti).unwrap().call_in_progress(), Some(1));
    tr.end(100, k, 20, 0, 1, &mut out).unwrap();
    assert_eq!(tr.hot_path().sys_exit(100, 50, 21), HotExit::Done);
    tr.begin(100, k, 30, 0).unwrap();
    let r = tr.end(100, k, 40, 0, 1, &mut out).unwrap();
    assert_eq!(decode(&out, r).1, [], "the end write of the first span is no call of the second");
    assert_eq!(tr.hot_path().sys_exit(100, 50, 41), HotExit::Done);
    assert_eq!(tr.stats().calls_without_enter, 0);
    // An exit without an enter is counted, on the slot, and kept when the thread goes.
    assert_eq!(tr.hot_path().sys_exit(100, 0, 50), HotExit::Done);
    assert_eq!(tr.stats().calls_without_enter, 1);
    assert!(tr.remove_thread(100));
    assert_eq!(tr.stats().calls_without_enter, 1);
    tr.unregister_process(10).unwrap();
    assert_empty(&tr);
}

/// Real threads on the lock-free path while others take the lock (begin, end, expiry,
/// stats): every call lands in its own thread's span, in order, none lost or doubled.
#[test]
fn hot_path_under_concurrency() {
    use std::sync::Mutex;
    const THREADS: u32 = 6;
    const SPANS: u64 = 300;
    let mut mem = Mem::new(Caps { procs: 2, threads: 16, spans: 64, chunks: 512, tid_limit: 4096 });
    let tr = Mutex::new(mem.tracker());
    {
        let mut t = tr.lock().unwrap();
        t.register_process(10, 0).unwrap();
        t.set_max_calls(MAX_CALLS_LIMIT).unwrap();
        for i in 0..THREADS {
            t.add_thread(10, 100 + i).unwrap();
        }
    }
    let hp = tr.lock().unwrap().hot_path();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        // A reader of the stats and the expiry timer (nothing expires), under the lock.
        sc.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let mut t = tr.lock().unwrap();
                t.expire(0, u64::MAX);
                let _ = t.stats();
            }
        });
        let mut workers = Vec::new();
        for i in 0..THREADS {
            let (tr, hp) = (&tr, hp);
            workers.push(sc.spawn(move || {
                let tid = 100 + i;
                let mut out = vec![0u8; BIG];
                let mut total = 0u64;
                for n in 0..SPANS {
                    let k = key(u64::from(i) * 1_000_000 + n);
                    tr.lock().unwrap().begin(tid, k, 0, 0).unwrap();
                    let calls = (n % 40) as u32;
                    for c in 0..calls {
                        let nr = (n as u32) << 8 | c;
                        if !hp.sys_enter(tid, nr, 1) {
                            tr.lock().unwrap().sys_enter(tid, nr, 1);
                        }
                        if hp.sys_exit(tid, i64::from(c), 2) != HotExit::Done {
                            tr.lock().unwrap().sys_exit(tid, i64::from(c), 2);
                        }
                    }
                    let r = tr.lock().unwrap().end(tid, k, 3, 0, 0, &mut out).unwrap();
                    let (h, e) = decode(&out, r);
                    assert_eq!(h.total_calls, u64::from(calls));
                    let want: Vec<(u32, u32)> = (0..calls).map(|c| ((n as u32) << 8 | c, tid)).collect();
                    assert_eq!(e.iter().map(|e| (e.nr, e.tid)).collect::<Vec<_>>(), want);
                    total += u64::from(calls);
                }
                total
            }));
        }
        let total: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
        stop.store(true, Ordering::Relaxed);
        let t = tr.lock().unwrap();
        let st = t.stats();
        assert_eq!((st.calls_attributed, st.calls_stale, st.calls_without_enter), (total, 0, 0));
    });
    let mut t = tr.into_inner().unwrap();
    t.unregister_process(10).unwrap();
    assert_empty(&t);
}

#[test]
fn hot_call_ending_after_a_span_end_written_elsewhere_goes_to_the_parent() {
    let mut mem = Mem::new(CAPS);
    let mut tr = one_thread(&mut mem);
    tr.add_thread(10, 101).unwrap();
    let (ka, kb) = (key(1), key(2));
    let mut out = vec![0u8; BIG];
    tr.begin(100, ka, 0, 0).unwrap();
    tr.begin(100, kb, 10, 0).unwrap();
    // Thread 100's calls: one ended before 101 ends kb (at 50), one after (its exit was
    // noted before the end took the lock: the two raced).
    hot_call(&mut tr, 100, 1, 0, 20, 30);
    hot_call(&mut tr, 100, 2, 0, 40, 60);
    let r = tr.end(101, kb, 50, 0, 1, &mut out).unwrap();
    let (h, e) = decode(&out, r);
    assert_eq!(e.iter().map(|e| e.nr).collect::<Vec<_>>(), [1]);
    assert!(e.iter().all(|e| e.end_mono_ns <= h.end_mono_ns));
    let r = tr.end(100, ka, 70, 0, 1, &mut out).unwrap();
    assert_eq!(decode(&out, r).1.iter().map(|e| e.nr).collect::<Vec<_>>(), [2]);
    tr.unregister_process(10).unwrap();
    assert_empty(&tr);
}

// ---- the lock-free path of threads with an active-span slot (issue 16) ----------------

/// One call of `tid` with its slot holding `v` (not 0) on the lock-free path, as the
/// kernel's probes make it (falling back to the lock when the hint misses or the ring is
/// full).
fn slot_call(tr: &mut Tracker<'_>, tid: u32, v: u64, nr: u32, start: u64, end: u64) {
    slot_enter(tr, tid, v, nr, start);
    slot_exit(tr, tid, 0, end);
}

fn slot_enter(tr: &mut Tracker<'_>, tid: u32, v: u64, nr: u32, at: u64) {
    if !tr.hot_path().sys_enter_slot(tid, nr, at, v) {
        tr.sys_enter_with(tid, nr, at, |_| Some(v));
    }
}

fn slot_exit(tr: &mut Tracker<'_>, tid: u32, ret: i64, at: u64) {
    if tr.hot_path().sys_exit_slot(tid, ret, at) != HotExit::Done {
        tr.sys_exit(tid, ret, at);
    }
}

/// A process (10) whose threads 100, 101 and 102 have active-span slots.
fn slotted(mem: &mut Mem) -> Tracker<'_> {
    let mut tr = mem.tracker();
    tr.register_process(10, 0).unwrap();
    for (i, tid) in [100u32, 101, 102].into_iter().enumerate() {
        tr.add_thread(10, tid).unwrap();
        tr.set_active_slot(tid, 0x1000 + 8 * i as u64).unwrap();
    }
    tr
}

#[test]
fn slot_calls_take_no_lock_and_are_itemised_in_the_order_they_ended() {
    let mut mem = Mem::new(CAPS);
    let mut tr = slotted(&mut mem);
    let mut out = vec![0u8; BIG];
    tr.begin(100, key(0), 10, 10).unwrap();
    tr.begin(100, key(1), 11, 11).unwrap();
    // Request 0 on 100, then on 101 (it moved), then on 100 again; request 1 in between.
    slot_call(&mut tr, 100, sv(0), 1, 20, 21);
    slot_call(&mut tr, 101, sv(0), 2, 22, 23);
    slot_call(&mut tr, 102, sv(1), 3, 24, 25);
    slot_call(&mut tr, 100, sv(0), 4, 26, 27);
    assert_eq!((tr.pending_calls(), tr.stats().calls_attributed), (4, 0), "noted, not charged");
    // A begin does not charge them (its span's calls are checked against its begin).
    tr.begin(102, key(2), 28, 28).unwrap();
    assert_eq!(tr.pending_calls(), 4);
    let r = tr.end(101, key(0), 30, 30, 1, &mut out).unwrap();
    let (_, e) = decode(&out, r);
    assert_eq!(
        e.iter().map(|e| (e.nr, e.tid, e.start_mono_ns)).collect::<Vec<_>>(),
        vec![(1, 100, 20), (2, 101, 22), (4, 100, 26)]
    );
    // The end charged request 1's call too, to request 1.
    assert_eq!((tr.pending_calls(), tr.stats().calls_attributed), (0, 4));
    let r = tr.end(102, key(1), 40, 40, 1, &mut out).unwrap();
    let (h, e) = decode(&out, r);
    assert_eq!((e.len(), e[0].nr, h.flags & uapi::REC_ACTIVATION), (1, 3, uapi::REC_ACTIVATION));
    check_invariants(&tr);
}

#[test]
fn slot_calls_before_their_span_began_or_after_it_ended_go_nowhere() {
    let mut mem = Mem::new(CAPS);
    let mut tr = slotted(&mut mem);
    let mut out = vec![0u8; BIG];
    tr.begin(101, key(5), 1, 1).unwrap(); // keeps the probes on
    // The slot named span 0 before it was begun (the runtime set it first).
    slot_call(&mut tr, 100, sv(0), 1, 5, 6);
    tr.begin(100, key(0), 10, 10).unwrap();
    slot_call(&mut tr, 100, sv(0), 2, 12, 13);
    // A call in progress when its span ends (this thread had found the span before), and
    // one made after it (the span was not open at its enter: unknown, as before).
    slot_enter(&mut tr, 100, sv(0), 3, 14);
    let r = tr.end(101, key(0), 20, 20, 1, &mut out).unwrap();
    slot_exit(&mut tr, 100, 0, 21);
    slot_call(&mut tr, 100, sv(0), 4, 22, 23);
    // An id the module never saw (an unsampled span).
    slot_call(&mut tr, 101, sv(9), 5, 24, 25);
    let (_, e) = decode(&out, r);
    assert_eq!(e.iter().map(|e| e.nr).collect::<Vec<_>>(), vec![2]);
    tr.end(101, key(5), 30, 30, 1, &mut out).unwrap();
    let st = tr.stats();
    assert_eq!(
        (st.calls_attributed, st.calls_unknown_active_span, st.calls_span_ended, st.calls_without_enter),
        (1, 3, 1, 0)
    );
    check_invariants(&tr);
}

#[test]
fn slot_ring_full_takes_the_lock_and_keeps_the_order() {
    let mut mem = Mem::new(CAPS);
    let mut tr = slotted(&mut mem);
    let mut out = vec![0u8; BIG];
    tr.set_max_calls(1000).unwrap();
    tr.begin(100, key(0), 1, 1).unwrap();
    let mut t = 10;
    let mut want = Vec::new();
    // Two threads take turns; each fills its ring more than twice.
    for i in 0..(3 * HOT_RING as u32) {
        let tid = if i % 3 == 2 { 101 } else { 100 };
        slot_call(&mut tr, tid, sv(0), i, t, t + 1);
        want.push((i, tid));
        t += 2;
    }
    assert!(tr.pending_calls() <= 2 * HOT_RING as u64);
    let r = tr.end(102, key(0), t, t, 1, &mut out).unwrap();
    let (h, e) = decode(&out, r);
    assert_eq!(e.iter().map(|e| (e.nr, e.tid)).collect::<Vec<_>>(), want);
    assert_eq!((h.total_calls, h.n_threads), (want.len() as u64, 2));
    check_invariants(&tr);
}

#[test]
fn slot_thread_exit_and_slot_change_charge_its_calls() {
    let mut mem = Mem::new(CAPS);
    let mut tr = slotted(&mut mem);
    let mut out = vec![0u8; BIG];
    tr.begin(100, key(0), 1, 1).unwrap();
    slot_call(&mut tr, 101, sv(0), 1, 10, 11);
    // Thread 101 exits: its call is charged before its slot is freed.
    tr.remove_thread(101);
    slot_call(&mut tr, 102, sv(0), 2, 12, 13);
    // Thread 102 drops its slot: its calls so far are charged, then it stacks.
    tr.set_active_slot(102, 0).unwrap();
    assert_eq!(tr.pending_calls(), 0);
    let r = tr.end(100, key(0), 20, 20, 1, &mut out).unwrap();
    let (_, e) = decode(&out, r);
    assert_eq!(e.iter().map(|e| (e.nr, e.tid)).collect::<Vec<_>>(), vec![(1, 101), (2, 102)]);
    check_invariants(&tr);
}

/// Operations on process 10's three threads with active-span slots.
#[derive(Clone, Debug)]
enum HotSlotOp {
    Begin { t: u8, k: u8 },
    End { t: u8, k: u8 },
    /// A call of thread `t` with its slot on span `k` (8: an id never begun), `dur` long.
    Call { t: u8, k: u8, dur: u8, n: u8 },
    Enter { t: u8, k: u8 },
    Exit { t: u8 },
    Expire,
    RemoveAdd { t: u8 },
}

fn hot_slot_op() -> impl Strategy<Value = HotSlotOp> {
    prop_oneof![
        3 => (0..3u8, 0..6u8).prop_map(|(t, k)| HotSlotOp::Begin { t, k }),
        3 => (0..3u8, 0..6u8).prop_map(|(t, k)| HotSlotOp::End { t, k }),
        8 => (0..3u8, 0..9u8, 0..30u8, 1..25u8).prop_map(|(t, k, dur, n)| HotSlotOp::Call { t, k, dur, n }),
        2 => (0..3u8, 0..9u8).prop_map(|(t, k)| HotSlotOp::Enter { t, k }),
        2 => (0..3u8).prop_map(|t| HotSlotOp::Exit { t }),
        1 => Just(HotSlotOp::Expire),
        1 => (0..3u8).prop_map(|t| HotSlotOp::RemoveAdd { t }),
    ]
}

/// The reference: a call is charged at its exit to the span its slot named at its enter,
/// if that span was open at the enter and still is (what the locked path did before the
/// lock-free one).
#[derive(Default)]
struct HotSlotModel {
    /// Open spans: key index → (instance, begin, calls).
    open: HashMap<u8, (u32, u64, Vec<(u32, u32, u64, u64)>)>,
    instance: u32,
    /// Per thread: the call in progress (span key index, instance open at enter, nr, start).
    in_call: [Option<(u8, Option<u32>, u32, u64)>; 3],
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// The lock-free slot path itemises exactly what charging each call at its exit would.
    #[test]
    fn slot_path_matches_charging_at_exit(ops in proptest::collection::vec(hot_slot_op(), 1..80)) {
        let mut mem = Mem::new(Caps { procs: 2, threads: 8, spans: 16, chunks: 64, tid_limit: 4096 });
        let mut tr = slotted(&mut mem);
        tr.set_max_calls(1000).unwrap();
        let mut m = HotSlotModel::default();
        let mut out = vec![0u8; BIG];
        let tids = [100u32, 101, 102];
        let mut now: u64 = 1000;
        for op in ops {
            match op {
                // (A thread in a call is not writing a begin or an end: that write is its
                // call, excluded.)
                HotSlotOp::Begin { t, k } if m.in_call[t as usize].is_none() => {
                    now += 1;
                    let got = tr.begin(tids[t as usize], key(u64::from(k)), now, now);
                    prop_assert_eq!(got.is_ok(), !m.open.contains_key(&k));
                    if got.is_ok() {
                        m.instance += 1;
                        m.open.insert(k, (m.instance, now, Vec::new()));
                    }
                }
                HotSlotOp::End { t, k } if m.in_call[t as usize].is_none() => {
                    now += 1;
                    let got = tr.end(tids[t as usize], key(u64::from(k)), now, now, 0, &mut out);
                    match m.open.remove(&k) {
                        None => prop_assert!(got.is_err()),
                        Some((_, _, calls)) => {
                            let (h, e) = decode(&out, got.unwrap());
                            prop_assert_eq!(h.total_calls, calls.len() as u64);
                            let e: Vec<_> = e.iter().map(|e| (e.nr, e.tid, e.start_mono_ns, e.end_mono_ns)).collect();
                            prop_assert_eq!(e, calls);
                        }
                    }
                }
                HotSlotOp::Begin { .. } | HotSlotOp::End { .. } => {}
                HotSlotOp::Call { t, k, dur, n } => {
                    // Not while the thread is in a call (a thread makes one call at a time).
                    if m.in_call[t as usize].is_some() {
                        continue;
                    }
                    for i in 0..u32::from(n) {
                        let (start, end) = (now, now + u64::from(dur));
                        let nr = 1000 + i;
                        slot_call(&mut tr, tids[t as usize], sv(u64::from(k)), nr, start, end);
                        if let Some((_, begin, calls)) = m.open.get_mut(&k) {
                            if *begin <= start {
                                calls.push((nr, tids[t as usize], start, end));
                            }
                        }
                        now = end + 1;
                    }
                }
                HotSlotOp::Enter { t, k } => {
                    if m.in_call[t as usize].is_some() {
                        continue;
                    }
                    now += 1;
                    slot_enter(&mut tr, tids[t as usize], sv(u64::from(k)), 7, now);
                    let inst = m.open.get(&k).map(|x| x.0);
                    m.in_call[t as usize] = Some((k, inst, 7, now));
                }
                HotSlotOp::Exit { t } => {
                    let Some((k, inst, nr, start)) = m.in_call[t as usize].take() else {
                        continue;
                    };
                    now += 1;
                    slot_exit(&mut tr, tids[t as usize], 0, now);
                    if let Some((i, _, calls)) = m.open.get_mut(&k) {
                        if Some(*i) == inst {
                            calls.push((nr, tids[t as usize], start, now));
                        }
                    }
                }
                HotSlotOp::Expire => {
                    now += 1;
                    // Every span open for more than 50 ns.
                    let n = tr.expire(now, 50);
                    let before = m.open.len();
                    m.open.retain(|_, (_, b, _)| now.saturating_sub(*b) <= 50);
                    prop_assert_eq!(n as usize, before - m.open.len());
                }
                HotSlotOp::RemoveAdd { t } => {
                    // A thread exits (its call in progress is lost) and a new one starts.
                    if m.in_call[t as usize].take().is_some() {
                        // (The model's call is dropped: it never exits.)
                    }
                    let tid = tids[t as usize];
                    tr.remove_thread(tid);
                    tr.add_thread(10, tid).unwrap();
                    tr.set_active_slot(tid, 0x1000 + 8 * u64::from(t)).unwrap();
                }
            }
            check_invariants(&tr);
        }
        // Whatever is still open ends with exactly the model's calls.
        let keys: Vec<u8> = m.open.keys().copied().collect();
        for k in keys {
            // End any call in progress first, as the model would at its exit.
            for t in 0..3 {
                if let Some((kk, inst, nr, start)) = m.in_call[t].take() {
                    now += 1;
                    slot_exit(&mut tr, tids[t], 0, now);
                    if let Some((i, _, calls)) = m.open.get_mut(&kk) {
                        if Some(*i) == inst {
                            calls.push((nr, tids[t], start, now));
                        }
                    }
                }
            }
            now += 1;
            let got = tr.end(100, key(u64::from(k)), now, now, 0, &mut out).unwrap();
            let (_, e) = decode(&out, got);
            let e: Vec<_> = e.iter().map(|e| (e.nr, e.tid, e.start_mono_ns, e.end_mono_ns)).collect();
            prop_assert_eq!(e, m.open.remove(&k).unwrap().2);
        }
        prop_assert_eq!(tr.stats().calls_without_enter, 0);
    }
}

std::thread_local! {
    static TRACE_NEEDED: core::cell::RefCell<Vec<u32>> = const { core::cell::RefCell::new(Vec::new()) };
}

fn note_trace_needed(tid: u32) {
    TRACE_NEEDED.with(|v| v.borrow_mut().push(tid));
}

fn take_trace_needed() -> Vec<u32> {
    let mut v = TRACE_NEEDED.with(|v| core::mem::take(&mut *v.borrow_mut()));
    v.sort_unstable();
    v
}

/// The kernel drops the traced system-call path of a thread outside any span (glue.c), so
/// every thread that enters the open-span set must be named to the hook, at once: its own
/// begin, a slot thread when its process's first span opens (whichever thread began it),
/// and a thread that sets its slot while its process has a span open.
#[test]
fn every_thread_the_probes_must_see_is_named_to_the_trace_hook() {
    let mut mem = Mem::new(CAPS);
    let mut tr = mem.tracker();
    let mut out = vec![0u8; BIG];
    tr.set_trace_hook(note_trace_needed);
    take_trace_needed();
    // A thread-per-request process: the begin names its own thread, a nested one again.
    tr.register_process(20, 0).unwrap();
    tr.add_thread(20, 200).unwrap();
    tr.add_thread(20, 201).unwrap();
    assert_eq!(take_trace_needed(), Vec::<u32>::new(), "registration alone needs nothing");
    tr.begin(200, key(0), 10, 10).unwrap();
    assert_eq!(take_trace_needed(), vec![200]);
    tr.begin(200, key(1), 11, 11).unwrap();
    tr.end(200, key(1), 12, 12, 1, &mut out).unwrap();
    tr.end(200, key(0), 13, 13, 1, &mut out).unwrap();
    assert!(!tr.active_set().contains(200));
    // An async process: the first span names every slot thread, the second none.
    tr.register_process(10, 0).unwrap();
    tr.add_thread(10, 100).unwrap();
    tr.add_thread(10, 101).unwrap();
    tr.add_thread(10, 102).unwrap();
    tr.set_active_slot(100, 0x1000).unwrap();
    tr.set_active_slot(101, 0x2000).unwrap();
    take_trace_needed();
    tr.begin(102, key(2), 20, 20).unwrap();
    assert_eq!(take_trace_needed(), vec![100, 101, 102]);
    tr.begin(100, key(3), 21, 21).unwrap();
    // 102 sets its slot while spans are open: its spans become the process's, and it is
    // named again (its probes stay on).
    tr.set_active_slot(102, 0x3000).unwrap();
    let named = take_trace_needed();
    assert!(named.contains(&102), "{named:?}");
    // Every thread in the open-span set was named since it last entered it.
    for tid in [100, 101, 102] {
        assert!(tr.active_set().contains(tid), "{tid}");
    }
    tr.end(100, key(2), 30, 30, 1, &mut out).unwrap();
    tr.end(100, key(3), 31, 31, 1, &mut out).unwrap();
    assert!(!tr.active_set().contains(100) && !tr.active_set().contains(101));
    tr.begin(101, key(4), 40, 40).unwrap();
    assert_eq!(take_trace_needed(), vec![100, 101, 102]);
    check_invariants(&tr);
}
