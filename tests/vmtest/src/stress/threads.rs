//! 64 threads x thousands of nested spans each (depth up to 8), some around real system
//! calls; some threads create a thread and exit in the middle of a span (their open spans
//! are abandoned, the new thread is tracked at once); every thread finally leaves two spans
//! open that the main thread ends (records flagged "ended elsewhere"). With threshold 0
//! every ended span produces a record, read concurrently by a reader thread; each record is
//! matched to its span and checked field by field, the system calls of most spans exactly.

use super::reader::{check_structure, BulkReader, Rec};
use super::{key3, key_id, raw_getpid, raw_nanosleep, scaled, span_write, wait_until, Report, Rng};
use crate::fig;
use crate::span::{Fds, LINE_LEN};
use crate::sys::{self, errno_name, ioctl_info, Fd};
use crate::sysfs::{self, Stats, TunableGuard};
use spantrack_uapi as uapi;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const NR_WRITE: u32 = libc::SYS_write as u32;
const NR_GETPID: u32 = libc::SYS_getpid as u32;
const NR_NANOSLEEP: u32 = libc::SYS_nanosleep as u32;
/// Result slot of a begin/end that did not run.
const NOT_RUN: i32 = i32::MIN;

static NULL_BUF: [u8; 64] = [0x33; 64];

#[derive(Clone, Copy, Debug)]
enum Step {
    Begin(u32),
    End(u32),
    Getpid,
    Null(u16),
    Sleep(u32),
    /// Spawn the plan's child thread and exit with the spans open.
    SpawnExit,
    /// Begin the two park spans, wait until the main thread has ended them.
    Park,
}

#[derive(Clone, Debug)]
struct SpanPlan {
    line: [u8; LINE_LEN],
    depth: u32,
    /// The calls the span itemises, in order, when they are known exactly.
    calls: Vec<(u32, i64)>,
    exact: bool,
}

#[derive(Debug)]
struct Plan {
    id: u32,
    steps: Vec<Step>,
    spans: Vec<SpanPlan>,
    /// Spans open when the thread spawns its child and exits.
    abandoned: Vec<u32>,
    child: Option<Box<Plan>>,
    park: Option<[u32; 2]>,
}

struct Gen<'a> {
    rng: &'a mut Rng,
    seed: u64,
    pid: i64,
    next_id: &'a mut u32,
}

impl Gen<'_> {
    fn plan(&mut self, target: usize, spawn_gen: u32) -> Plan {
        let id = *self.next_id;
        *self.next_id += 1;
        let mut p = Plan {
            id,
            steps: Vec::new(),
            spans: Vec::new(),
            abandoned: Vec::new(),
            child: None,
            park: None,
        };
        let spawn_at = if spawn_gen > 0 {
            Some(target / 4 + self.rng.below(target as u64 / 2) as usize)
        } else {
            None
        };
        let mut stack = Vec::new();
        let mut spawned = false;
        while p.spans.len() < target && !spawned {
            let maxd = self.rng.range(1, 8) as u32;
            self.span(&mut p, &mut stack, 0, maxd, spawn_at, &mut spawned);
        }
        if spawned {
            p.abandoned = stack.clone();
            let left = target.saturating_sub(p.spans.len()).max(target / 4);
            let next = if spawn_gen > 1 && self.rng.chance(500) { spawn_gen - 1 } else { 0 };
            p.child = Some(Box::new(self.plan(left, next)));
        } else {
            let o = self.new_span(&mut p, 0, false);
            let i = self.new_span(&mut p, 1, false);
            p.park = Some([o, i]);
            p.steps.push(Step::Park);
        }
        p
    }

    fn new_span(&mut self, p: &mut Plan, depth: u32, exact: bool) -> u32 {
        let idx = p.spans.len() as u32;
        let k = key3(self.seed, u64::from(p.id), u64::from(idx));
        p.spans.push(SpanPlan {
            line: k.line(),
            depth,
            calls: Vec::new(),
            exact,
        });
        idx
    }

    fn ops(&mut self, p: &mut Plan, top: u32) {
        for _ in 0..self.rng.below(3) {
            let r = self.rng.below(100);
            let (step, call) = if r < 60 {
                (Step::Getpid, (NR_GETPID, self.pid))
            } else if r < 97 {
                let len = self.rng.range(1, 64) as u16;
                (Step::Null(len), (NR_WRITE, i64::from(len)))
            } else {
                (Step::Sleep(20), (NR_NANOSLEEP, 0))
            };
            p.steps.push(step);
            p.spans[top as usize].calls.push(call);
        }
    }

    fn span(
        &mut self,
        p: &mut Plan,
        stack: &mut Vec<u32>,
        depth: u32,
        maxd: u32,
        spawn_at: Option<usize>,
        spawned: &mut bool,
    ) {
        let idx = self.new_span(p, depth, true);
        p.steps.push(Step::Begin(idx));
        stack.push(idx);
        let children = if depth + 1 < maxd && (depth == 0 || self.rng.chance(750)) {
            1 + u32::from(self.rng.chance(200))
        } else {
            0
        };
        self.ops(p, idx);
        for _ in 0..children {
            if let Some(at) = spawn_at {
                if !*spawned && p.spans.len() >= at && stack.len() >= 2 {
                    p.steps.push(Step::SpawnExit);
                    *spawned = true;
                    return;
                }
            }
            self.span(p, stack, depth + 1, maxd, spawn_at, spawned);
            if *spawned {
                return;
            }
            self.ops(p, idx);
        }
        p.steps.push(Step::End(idx));
        stack.pop();
    }
}

struct ParkInfo {
    worker: u32,
    lines: [[u8; LINE_LEN]; 2],
    idx: [u32; 2],
}

struct Shared {
    fds: Fds,
    devnull: i32,
    parked: AtomicU32,
    release: AtomicBool,
    abort: AtomicBool,
    park_list: Mutex<Vec<ParkInfo>>,
    handles: Mutex<Vec<JoinHandle<Outcome>>>,
    spawn_errors: Mutex<Vec<String>>,
}

struct Outcome {
    plan: Plan,
    tid: u32,
    begin: Vec<i32>,
    end: Vec<i32>,
}

fn spawn_worker(plan: Plan, sh: Arc<Shared>) -> std::io::Result<JoinHandle<Outcome>> {
    std::thread::Builder::new()
        .name(format!("w{}", plan.id))
        .stack_size(256 * 1024)
        .spawn(move || run_plan(plan, sh))
}

/// Runs a plan: between the first begin and the last end, only the plan's own system
/// calls (no allocation, no clock, no lock) except at SpawnExit and Park.
fn run_plan(mut plan: Plan, sh: Arc<Shared>) -> Outcome {
    let tid = sys::gettid();
    let n = plan.spans.len();
    let mut begin = vec![NOT_RUN; n];
    let mut end = vec![NOT_RUN; n];
    let fds = sh.fds;
    for i in 0..plan.steps.len() {
        match plan.steps[i] {
            Step::Begin(s) => begin[s as usize] = span_write(fds.begin, &plan.spans[s as usize].line),
            Step::End(s) => end[s as usize] = span_write(fds.end, &plan.spans[s as usize].line),
            Step::Getpid => {
                raw_getpid();
            }
            Step::Null(len) => {
                // SAFETY: NULL_BUF holds 64 bytes, len <= 64.
                unsafe { libc::write(sh.devnull, NULL_BUF.as_ptr().cast(), usize::from(len)) };
            }
            Step::Sleep(us) => raw_nanosleep(u64::from(us) * 1000),
            Step::SpawnExit => {
                if let Some(child) = plan.child.take() {
                    let id = child.id;
                    match spawn_worker(*child, sh.clone()) {
                        Ok(h) => sh.handles.lock().unwrap().push(h),
                        Err(e) => sh.spawn_errors.lock().unwrap().push(format!("child of w{}: {e}", id)),
                    }
                }
                return Outcome { plan, tid, begin, end };
            }
            Step::Park => {
                let [o, inner] = plan.park.unwrap_or([0, 0]);
                sh.park_list.lock().unwrap().push(ParkInfo {
                    worker: plan.id,
                    lines: [plan.spans[o as usize].line, plan.spans[inner as usize].line],
                    idx: [o, inner],
                });
                begin[o as usize] = span_write(fds.begin, &plan.spans[o as usize].line);
                begin[inner as usize] = span_write(fds.begin, &plan.spans[inner as usize].line);
                sh.parked.fetch_add(1, Ordering::SeqCst);
                // Bounded by the main thread's deadline (it sets abort).
                while !sh.release.load(Ordering::SeqCst) && !sh.abort.load(Ordering::SeqCst) {
                    raw_nanosleep(1_000_000);
                }
            }
        }
    }
    Outcome { plan, tid, begin, end }
}

fn count_plans(p: &Plan, plans: &mut usize, parkers: &mut usize, spans: &mut usize) {
    *plans += 1;
    *spans += p.spans.len();
    if p.park.is_some() {
        *parkers += 1;
    }
    if let Some(c) = &p.child {
        count_plans(c, plans, parkers, spans);
    }
}

pub fn run(rep: &mut Report) {
    if let Err(e) = run_inner(rep) {
        rep.check("threads: setup", Err(e));
    }
}

fn run_inner(rep: &mut Report) -> Result<(), String> {
    let n_workers: u32 = std::env::var("STRESS_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let per_worker = scaled(2000, 100) as usize;
    let seed = super::clock_seed();
    fig!("threads: {n_workers} workers x {per_worker} spans, seed {seed}");
    let _g = TunableGuard::save()?;
    sysfs::set(sysfs::THRESHOLD, "0")?;
    // Spans stay open for the whole run (parked, held): a run stretched past timeout_ns's
    // 60 s by a busy host (the debug kernel took 106 s) would see them expire.
    sysfs::set(sysfs::TIMEOUT, "86400000000000")?;
    let pid = sys::getpid();
    let control = Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY)?;
    let begin = Fd::open(uapi::PROC_BEGIN, libc::O_WRONLY)?;
    let end = Fd::open(uapi::PROC_END, libc::O_WRONLY)?;
    let devnull = Fd::open("/dev/null", libc::O_WRONLY)?;
    sys::ioctl_plain(control.raw(), uapi::IOCTL_REGISTER).map_err(|e| format!("REGISTER: {}", errno_name(e)))?;
    let s0 = Stats::read()?;

    // Plans (generated before any span opens).
    let mut rng = Rng::new(seed);
    let mut next_id = 0u32;
    let mut plans = Vec::new();
    {
        let mut g = Gen {
            rng: &mut rng,
            seed,
            pid: i64::from(pid),
            next_id: &mut next_id,
        };
        for w in 0..n_workers {
            let spawn_gen = if w % 8 == 7 { 2 } else { 0 };
            plans.push(g.plan(per_worker, spawn_gen));
        }
    }
    let (mut n_plans, mut n_parkers, mut n_spans) = (0, 0, 0);
    for p in &plans {
        count_plans(p, &mut n_plans, &mut n_parkers, &mut n_spans);
    }
    fig!("threads: {n_plans} threads planned ({} born mid-span), {n_spans} spans", n_plans - n_workers as usize);

    // The reader.
    let stop = Arc::new(AtomicBool::new(false));
    let mut relay = BulkReader::open(pid)?;
    let stop_r = stop.clone();
    let reader = std::thread::Builder::new()
        .name("reader".into())
        .spawn(move || {
            super::set_nice(-10);
            let mut recs: Vec<Rec> = Vec::new();
            let mut rng = Rng::new(1);
            let deadline = Instant::now() + Duration::from_secs(900);
            while !stop_r.load(Ordering::SeqCst) && Instant::now() < deadline {
                if relay.poll(0, &mut rng, |r| recs.push(r)) == 0 {
                    sys::sleep_ms(2);
                }
            }
            // Drain: until two polls in a row find nothing.
            let mut idle = 0;
            for _ in 0..1000 {
                if relay.poll(0, &mut rng, |r| recs.push(r)) == 0 {
                    idle += 1;
                    if idle == 2 {
                        break;
                    }
                    sys::sleep_ms(20);
                } else {
                    idle = 0;
                }
            }
            (recs, relay)
        })
        .map_err(|e| format!("spawn reader: {e}"))?;

    let sh = Arc::new(Shared {
        fds: Fds {
            begin: begin.raw(),
            end: end.raw(),
        },
        devnull: devnull.raw(),
        parked: AtomicU32::new(0),
        release: AtomicBool::new(false),
        abort: AtomicBool::new(false),
        park_list: Mutex::new(Vec::new()),
        handles: Mutex::new(Vec::new()),
        spawn_errors: Mutex::new(Vec::new()),
    });
    let t0 = Instant::now();
    for p in plans {
        let id = p.id;
        let h = spawn_worker(p, sh.clone()).map_err(|e| format!("spawn w{id}: {e}"))?;
        sh.handles.lock().unwrap().push(h);
    }
    // Wait for every thread that parks (bounded).
    let limit = Duration::from_secs(if super::is_debug_kernel() { 420 } else { 150 });
    let all_parked = wait_until(limit, || sh.parked.load(Ordering::SeqCst) as usize == n_parkers);
    let t_run = t0.elapsed();
    // The main thread ends every parked span (either order), from another thread.
    let main_tid = sys::gettid();
    let mut main_ends: HashMap<(u32, u32), i32> = HashMap::new();
    {
        let list = sh.park_list.lock().unwrap();
        for (i, pk) in list.iter().enumerate() {
            let order: [usize; 2] = if i % 2 == 0 { [1, 0] } else { [0, 1] };
            for j in order {
                let r = span_write(sh.fds.end, &pk.lines[j]);
                main_ends.insert((pk.worker, pk.idx[j]), r);
            }
        }
    }
    if !all_parked {
        sh.abort.store(true, Ordering::SeqCst);
    }
    sh.release.store(true, Ordering::SeqCst);
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut join_errors = Vec::new();
    for _ in 0..10_000 {
        let h = sh.handles.lock().unwrap().pop();
        match h {
            Some(h) => match h.join() {
                Ok(o) => outcomes.push(o),
                Err(_) => join_errors.push("a worker panicked".to_string()),
            },
            None => break,
        }
    }
    let t_all = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (recs, relay) = reader.join().map_err(|_| "reader panicked".to_string())?;
    let info = ioctl_info(control.raw()).map_err(|e| format!("INFO: {}", errno_name(e)))?;
    // Exited threads leave the tracker in their exit path: wait for the gauge.
    let mut s1 = Stats::read()?;
    wait_until(Duration::from_secs(10), || {
        s1 = Stats::read().unwrap_or(s1.clone());
        s1.get("threads").ok() == s0.get("threads").ok()
    });

    rep.check(
        "threads: every worker ran to its end (parked within the time limit, no panic, no spawn error)",
        (|| {
            let se = sh.spawn_errors.lock().unwrap();
            let mut bad = Vec::new();
            if !all_parked {
                bad.push(format!(
                    "only {} of {n_parkers} threads parked within {limit:?}",
                    sh.parked.load(Ordering::SeqCst)
                ));
            }
            bad.extend(join_errors.iter().cloned());
            bad.extend(se.iter().cloned());
            if outcomes.len() != n_plans {
                bad.push(format!("{} of {n_plans} threads returned", outcomes.len()));
            }
            if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) }
        })(),
    );

    // What each span should have produced.
    struct SpanRef<'a> {
        o: &'a Outcome,
        s: u32,
        ended_by: u32,
    }
    let mut ended: HashMap<[u8; 24], SpanRef<'_>> = HashMap::new();
    let mut abandoned: HashMap<[u8; 24], ()> = HashMap::new();
    let (mut begins_ok, mut ends_ok, mut n_abandoned) = (0i128, 0i128, 0i128);
    let mut op_errors: Vec<String> = Vec::new();
    let mut op_hist = super::Hist::default();
    for o in &outcomes {
        for (s, sp) in o.plan.spans.iter().enumerate() {
            let id = key_id(&crate::span::Key::parse(&sp.line).unwrap_or_else(|| super::key3(0, 0, 0)));
            let b = o.begin[s];
            if b == NOT_RUN {
                op_errors.push(format!("w{} span {s}: begin not run", o.plan.id));
                continue;
            }
            op_hist.add(b);
            if b != 0 {
                op_errors.push(format!("w{} span {s} depth {}: begin {}", o.plan.id, sp.depth, errno_name(b)));
                continue;
            }
            begins_ok += 1;
            let by_main = main_ends.get(&(o.plan.id, s as u32)).copied();
            let e = by_main.unwrap_or(o.end[s]);
            if o.plan.abandoned.contains(&(s as u32)) {
                n_abandoned += 1;
                abandoned.insert(id, ());
                continue;
            }
            if e == NOT_RUN {
                op_errors.push(format!("w{} span {s}: end not run", o.plan.id));
                continue;
            }
            op_hist.add(e);
            if e != 0 {
                op_errors.push(format!("w{} span {s} depth {}: end {}", o.plan.id, sp.depth, errno_name(e)));
                continue;
            }
            ends_ok += 1;
            ended.insert(
                id,
                SpanRef {
                    o,
                    s: s as u32,
                    ended_by: if by_main.is_some() { main_tid } else { o.tid },
                },
            );
        }
    }
    fig!(
        "threads: {} threads ran {begins_ok} begins, {ends_ok} ends ({abandoned} spans abandoned by threads that exited mid-span), {:.1} s to park, {:.1} s in all, {:.0} spans/s",
        outcomes.len(),
        t_run.as_secs_f64(),
        t_all.as_secs_f64(),
        begins_ok as f64 / t_all.as_secs_f64().max(0.001),
        abandoned = n_abandoned
    );
    rep.check(
        "threads: every begin and end succeeded",
        if op_errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} failed ({}); first: {}",
                op_errors.len(),
                op_hist.describe(),
                op_errors.iter().take(10).cloned().collect::<Vec<_>>().join("; ")
            ))
        },
    );

    // Records.
    let mut seen: HashMap<[u8; 24], u32> = HashMap::new();
    let mut rec_errors: Vec<String> = Vec::new();
    let (mut exact_checked, mut entries_checked) = (0u64, 0u64);
    for r in &recs {
        let k = crate::span::Key {
            trace_id: r.h.trace_id,
            span_id: r.h.span_id,
        };
        let id = key_id(&k);
        *seen.entry(id).or_default() += 1;
        let desc = || format!("record of {} (tid {} depth {} flags {:#x} n_entries {})", k.short(), r.h.tid, r.h.depth, r.h.flags, r.h.n_entries);
        if let Err(e) = check_structure(r) {
            rec_errors.push(format!("{}: {e}", desc()));
        }
        let Some(sr) = ended.get(&id) else {
            rec_errors.push(format!(
                "{}: {}",
                desc(),
                if abandoned.contains_key(&id) { "span was abandoned" } else { "unknown span" }
            ));
            continue;
        };
        let sp = &sr.o.plan.spans[sr.s as usize];
        let mut bad = Vec::new();
        if r.h.tgid != pid {
            bad.push(format!("tgid {}", r.h.tgid));
        }
        if r.h.tid != sr.o.tid {
            bad.push(format!("tid {} expected {}", r.h.tid, sr.o.tid));
        }
        if u32::from(r.h.depth) != sp.depth {
            bad.push(format!("depth {} expected {}", r.h.depth, sp.depth));
        }
        let elsewhere = if sr.ended_by != sr.o.tid { uapi::REC_ENDED_ELSEWHERE } else { 0 };
        let flags_ok = if sp.exact {
            r.h.flags == elsewhere
        } else {
            r.h.flags & !uapi::REC_CALLS_TRUNCATED == elsewhere
        };
        if !flags_ok {
            bad.push(format!("flags {:#x} expected {elsewhere:#x}", r.h.flags));
        }
        if sp.exact {
            exact_checked += 1;
            let got: Vec<(u32, i64)> = r.entries.iter().map(|e| (e.nr, e.ret)).collect();
            entries_checked += got.len() as u64;
            if got != sp.calls || r.h.total_calls != sp.calls.len() as u64 {
                bad.push(format!(
                    "calls {:?} (total {}), expected {:?}",
                    got, r.h.total_calls, sp.calls
                ));
            }
        } else if let Some(e) = r.entries.iter().find(|e| e.nr != NR_NANOSLEEP) {
            bad.push(format!("park span itemised call nr {}", e.nr));
        }
        if !bad.is_empty() {
            rec_errors.push(format!("{}: {}", desc(), bad.join(", ")));
        }
    }
    let dups = seen.values().filter(|&&n| n > 1).count();
    if dups > 0 {
        rec_errors.push(format!("{dups} spans have more than one record"));
    }
    let missing = ended.keys().filter(|id| !seen.contains_key(*id)).count() as u64;
    fig!(
        "threads: {} records read ({} MiB), {} dropped by the module, {missing} ended spans without a record; {exact_checked} records with their calls checked exactly ({entries_checked} calls)",
        recs.len(),
        relay.bytes >> 20,
        info.records_dropped
    );
    rep.check(
        "threads: every record is whole, valid and matches its span (ids, tid, depth, flags, exact calls)",
        if rec_errors.is_empty() && relay.errors.is_empty() && relay.partial_bytes() == 0 {
            Ok(())
        } else {
            Err(format!(
                "{} bad records; stream errors {:?}; {} partial bytes; first: {}",
                rec_errors.len(),
                relay.errors,
                relay.partial_bytes(),
                rec_errors.iter().take(8).cloned().collect::<Vec<_>>().join("; ")
            ))
        },
    );
    rep.check(
        "threads: records read + dropped == spans ended; INFO agrees with what was read",
        (|| {
            let mut bad = Vec::new();
            if recs.len() as u64 != info.records_written {
                bad.push(format!("read {} records, INFO.records_written {}", recs.len(), info.records_written));
            }
            if missing != info.records_dropped {
                bad.push(format!("{missing} ended spans without a record, INFO.records_dropped {}", info.records_dropped));
            }
            if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) }
        })(),
    );
    let n_threads = n_plans as i128 + 1; // workers and their children, and the reader
    rep.check(
        "threads: stats counted exactly what was done (begun, ended, slow, abandoned, threads added, records), nothing else moved",
        super::expect_all_deltas(
            &s0,
            &s1,
            &[
                ("spans_begun", begins_ok),
                ("spans_ended", ends_ok),
                ("spans_slow", ends_ok),
                ("spans_abandoned", n_abandoned),
                ("threads_added", n_threads),
                ("records_written", i128::from(info.records_written)),
                ("records_dropped", i128::from(info.records_dropped)),
            ],
            &[&super::NOISY[..], &["spans_high_water"]].concat(),
        )
        .and_then(|()| super::conservation(&s0, &s1)),
    );
    fig!(
        "threads: stats after: spans_high_water {} chunks_high_water {} calls_attributed +{}",
        s1.get("spans_high_water").unwrap_or(0),
        s1.get("chunks_high_water").unwrap_or(0),
        s1.delta(&s0, "calls_attributed").unwrap_or(0)
    );
    let _ = sys::ioctl_plain(control.raw(), uapi::IOCTL_UNREGISTER);
    Ok(())
}
