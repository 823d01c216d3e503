//! More open spans than the matcher holds: threads open 16 spans each until the span table
//! is full; the excess begins fail with ENOSPC and are counted exactly; duplicate begins
//! (EEXIST), ends of unknown spans (ENOENT) and too-deep begins (EOVERFLOW) are counted
//! exactly too, with the table full; then every span ends and a normal span afterwards
//! produces its exact record.

use super::reader::BulkReader;
use super::{key3, span_write, Report, Rng};
use crate::checks::{check_record, Expect};
use crate::fig;
use crate::relay::Record;
use crate::span::{run_ops, Fds, Key, Op, LINE_LEN};
use crate::sys::{self, errno_name, Fd};
use crate::sysfs::{self, Stats, TunableGuard};
use spantrack_uapi as uapi;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A worker thread that runs closures on request (so that spans are begun, duplicated
/// and ended by the thread that owns them).
struct W {
    tx: mpsc::Sender<Box<dyn FnOnce() + Send>>,
    h: Option<std::thread::JoinHandle<()>>,
}

impl W {
    fn spawn() -> Result<W, String> {
        let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let h = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                for f in rx {
                    f();
                }
            })
            .map_err(|e| format!("spawn: {e}"))?;
        Ok(W { tx, h: Some(h) })
    }

    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
        let (rtx, rrx) = mpsc::channel();
        let _ = self.tx.send(Box::new(move || {
            let _ = rtx.send(f());
        }));
        rrx
    }
}

impl Drop for W {
    fn drop(&mut self) {
        let (tx, _) = mpsc::channel();
        let _ = std::mem::replace(&mut self.tx, tx);
        if let Some(h) = self.h.take() {
            let _ = h.join();
        }
    }
}

fn wait<T>(r: mpsc::Receiver<T>) -> Result<T, String> {
    r.recv_timeout(Duration::from_secs(120)).map_err(|e| format!("worker: {e}"))
}

pub fn run(rep: &mut Report) {
    if let Err(e) = run_inner(rep) {
        rep.check("tables: setup", Err(e));
    }
}

fn run_inner(rep: &mut Report) -> Result<(), String> {
    let _g = TunableGuard::save()?;
    // No record while the table is filled (whatever the VM's speed).
    sysfs::set(sysfs::THRESHOLD, "3600000000000")?;
    let pid = sys::getpid();
    let control = Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY)?;
    let begin = Fd::open(uapi::PROC_BEGIN, libc::O_WRONLY)?;
    let end = Fd::open(uapi::PROC_END, libc::O_WRONLY)?;
    let fds = Fds {
        begin: begin.raw(),
        end: end.raw(),
    };
    sys::ioctl_plain(control.raw(), uapi::IOCTL_REGISTER).map_err(|e| format!("REGISTER: {}", errno_name(e)))?;
    let mut relay = BulkReader::open(pid)?;
    let seed = super::clock_seed();
    let mut rng = Rng::new(seed);
    let s0 = Stats::read()?;
    let cap = s0.get("span_capacity")? as usize;
    let open0 = s0.get("open_spans")? as usize;
    let excess = 100usize;
    let attempts = cap - open0 + excess;
    let depth = uapi::MAX_DEPTH;
    let n_threads = attempts.div_ceil(depth);
    fig!("tables: span capacity {cap}, {open0} open; {n_threads} threads x {depth} begins = {attempts} (excess {excess}); seed {seed}");
    let t0 = Instant::now();
    let mut ws = Vec::new();
    for _ in 0..n_threads {
        ws.push(W::spawn()?);
    }
    let s_spawned = Stats::read()?;
    // Every thread begins its share (all at once): 0 or the errno of each.
    let mut lines: Vec<Vec<[u8; LINE_LEN]>> = Vec::new();
    let mut pending = Vec::new();
    for (t, w) in ws.iter().enumerate() {
        let n = depth.min(attempts - t * depth);
        let ls: Vec<[u8; LINE_LEN]> = (0..n).map(|i| key3(seed, t as u64, i as u64).line()).collect();
        lines.push(ls.clone());
        pending.push(w.run(move || ls.iter().map(|l| span_write(fds.begin, l)).collect::<Vec<i32>>()));
    }
    let mut rets: Vec<Vec<i32>> = Vec::new();
    for p in pending {
        rets.push(wait(p)?);
    }
    let mut hist = super::Hist::default();
    rets.iter().flatten().for_each(|&r| hist.add(r));
    let s_full = Stats::read()?;
    fig!("tables: begins: {} in {:.1} s", hist.describe(), t0.elapsed().as_secs_f64());
    rep.check(
        "tables: the span table fills to its capacity; each excess begin fails with ENOSPC and is counted in begins_table_full",
        (|| {
            let ok = hist.get(0) as usize;
            let full = hist.get(libc::ENOSPC) as usize;
            let mut bad = Vec::new();
            if ok != cap - open0 || full != excess || hist.total() as usize != attempts {
                bad.push(format!("{} (expected ok:{} ENOSPC:{excess})", hist.describe(), cap - open0));
            }
            if let Err(e) = s_full.expect_deltas(
                &s_spawned,
                &[("begins_table_full", excess as i128), ("spans_begun", (cap - open0) as i128), ("spans_ended", 0)],
            ) {
                bad.push(e);
            }
            if s_full.get("open_spans")? as usize != cap {
                bad.push(format!("open_spans {} (capacity {cap})", s_full.get("open_spans")?));
            }
            if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) }
        })(),
    );

    // With the table full: duplicates (EEXIST), unknown ends (ENOENT), too deep (EOVERFLOW).
    let mut dup_n = 0i128;
    let mut unknown_n = 0i128;
    let mut deep_n = 0i128;
    let mut errs = Vec::new();
    for (t, w) in ws.iter().enumerate() {
        let ok_lines: Vec<[u8; LINE_LEN]> = lines[t].iter().zip(&rets[t]).filter(|(_, &r)| r == 0).map(|(l, _)| *l).collect();
        let refused: Vec<[u8; LINE_LEN]> = lines[t].iter().zip(&rets[t]).filter(|(_, &r)| r != 0).map(|(l, _)| *l).collect();
        let full_depth = ok_lines.len() == depth;
        let fresh = key3(seed ^ 0xdead, t as u64, 0).line();
        let other_line = ok_lines.first().copied();
        let r = wait(w.run(move || {
            let mut v = Vec::new();
            // A duplicate of its own innermost and outermost span.
            if let (Some(a), Some(b)) = (ok_lines.last(), ok_lines.first()) {
                v.push(("dup", span_write(fds.begin, a), libc::EEXIST));
                v.push(("dup", span_write(fds.begin, b), libc::EEXIST));
            }
            // End of a span never begun, and of each refused one.
            v.push(("unknown", span_write(fds.end, &fresh), libc::ENOENT));
            for l in &refused {
                v.push(("unknown", span_write(fds.end, l), libc::ENOENT));
            }
            // One more begin on a full stack.
            if full_depth {
                v.push(("deep", span_write(fds.begin, &fresh), libc::EOVERFLOW));
            }
            v
        }))?;
        for (what, got, want) in r {
            match what {
                "dup" => dup_n += 1,
                "unknown" => unknown_n += 1,
                _ => deep_n += 1,
            }
            if got != want {
                errs.push(format!("thread {t} {what}: {} expected {}", errno_or_ok(got), errno_name(want)));
            }
        }
        // The main thread begins a span open on another thread of the process: EEXIST too.
        if t % 64 == 0 {
            if let Some(l) = other_line {
                dup_n += 1;
                let got = span_write(fds.begin, &l);
                if got != libc::EEXIST {
                    errs.push(format!("main thread begin of thread {t}'s span: {} expected EEXIST", errno_or_ok(got)));
                }
            }
        }
    }
    // The main thread, with no span, begins a new one: the table is full.
    let extra = key3(seed ^ 0xbeef, 0, 0).line();
    let got = span_write(fds.begin, &extra);
    if got != libc::ENOSPC {
        errs.push(format!("main thread begin with the table full: {} expected ENOSPC", errno_or_ok(got)));
        if got == 0 {
            span_write(fds.end, &extra);
        }
    }
    let s_err = Stats::read()?;
    fig!("tables: with the table full: {dup_n} duplicate begins, {unknown_n} unknown ends, {deep_n} too-deep begins, 1 more begin");
    rep.check(
        "tables: with the table full, duplicates fail with EEXIST, unknown ends with ENOENT, too-deep begins with EOVERFLOW, each counted exactly and nothing else moves",
        (|| {
            let mut bad = errs.clone();
            if let Err(e) = super::expect_all_deltas(
                &s_full,
                &s_err,
                &[
                    ("begins_duplicate", dup_n),
                    ("ends_unknown", unknown_n),
                    ("begins_too_deep", deep_n),
                    ("begins_table_full", 1),
                ],
                &super::NOISY,
            ) {
                bad.push(e);
            }
            if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) }
        })(),
    );

    // End everything, from the owning threads, innermost first.
    let mut end_hist = super::Hist::default();
    let mut pending = Vec::new();
    for (t, w) in ws.iter().enumerate() {
        let ok_lines: Vec<[u8; LINE_LEN]> = lines[t].iter().zip(&rets[t]).filter(|(_, &r)| r == 0).map(|(l, _)| *l).collect();
        pending.push(w.run(move || ok_lines.iter().rev().map(|l| span_write(fds.end, l)).collect::<Vec<i32>>()));
    }
    for p in pending {
        wait(p)?.into_iter().for_each(|r| end_hist.add(r));
    }
    drop(ws);
    let s_end = Stats::read()?;
    rep.check(
        "tables: every span that was begun ends; the table is empty again; no span was abandoned or expired",
        (|| {
            let mut bad = Vec::new();
            if end_hist.get(0) as usize != cap - open0 || end_hist.total() != end_hist.get(0) {
                bad.push(format!("ends: {}", end_hist.describe()));
            }
            if s_end.get("open_spans")? as usize != open0 {
                bad.push(format!("open_spans {}", s_end.get("open_spans")?));
            }
            if let Err(e) = super::expect_all_deltas(
                &s_err,
                &s_end,
                &[("spans_ended", (cap - open0) as i128), ("open_spans", -((cap - open0) as i128))],
                &[&super::NOISY[..], &["threads"]].concat(),
            ) {
                bad.push(e);
            }
            if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) }
        })(),
    );

    // A normal span afterwards: its exact record.
    sysfs::set(sysfs::THRESHOLD, "0")?;
    let k: Key = key3(seed ^ 0x5a5a, 1, 1);
    let ops = [Op::begin(&k), Op::Getpid, Op::end(&k)];
    let run = run_ops(fds, &ops);
    let mut got: Vec<Record> = Vec::new();
    let t1 = Instant::now();
    while got.is_empty() && t1.elapsed() < Duration::from_secs(2) {
        relay.poll(0, &mut rng, |r| {
            got.push(Record {
                h: r.h,
                entries: r.entries,
                cpu: r.cpu,
            })
        });
        sys::sleep_ms(5);
    }
    sys::sleep_ms(50);
    relay.poll(0, &mut rng, |r| {
        got.push(Record {
            h: r.h,
            entries: r.entries,
            cpu: r.cpu,
        })
    });
    rep.check(
        "tables: a normal span afterwards produces exactly its record (one getpid, depth 0, no flags)",
        (|| {
            run.check(&ops, |_, _| Some(i64::from(pid)))?;
            if got.len() != 1 {
                return Err(format!("{} records", got.len()));
            }
            check_record(
                &got[0],
                &Expect {
                    key: &k,
                    tid: sys::gettid(),
                    tgid: pid,
                    depth: 0,
                    flags: 0,
                    calls: &[(sys::NR_GETPID, Some(i64::from(pid)))],
                    total_calls: 1,
                    run: Some(&run),
                },
            )
        })(),
    );
    let s_last = Stats::read()?;
    rep.check(
        "tables: over the whole test, the books balance",
        super::conservation(&s0, &s_last),
    );
    let _ = sys::ioctl_plain(control.raw(), uapi::IOCTL_UNREGISTER);
    Ok(())
}

fn errno_or_ok(e: i32) -> String {
    if e == 0 {
        "ok".into()
    } else {
        errno_name(e)
    }
}
