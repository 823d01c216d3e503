//! Unloading under load.
//! - `unload`: rmmod while processes are registered, threads have spans open, other threads
//!   begin and end spans in a loop and readers read the relay files in a loop (this process
//!   and two children): the unload completes, every later operation fails cleanly (EIO on
//!   the span files and relay files, ENOTTY on ioctls), no file answers again once it failed,
//!   every thread and process carries on, and the module loads again with a clean state.
//! - `reload`: insmod/rmmod cycles while processes keep reopening the files, registering,
//!   beginning and ending spans, reading stats and relay files, tolerating the errors of a
//!   module that comes and goes.

use super::child::parse_result;
use super::reader::BulkReader;
use super::{insmod, ioctl0, key3, raw_getpid, rmmod, span_write, Hist, Report, Rng};
use crate::fig;
use crate::sys::{self, errno_name, Fd};
use crate::sysfs::Stats;
use spantrack_uapi as uapi;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Errors a thread may see while the module goes away (or comes back).
fn tolerated_unload(e: i32) -> bool {
    e == libc::EIO || e == libc::ENOTTY || e == libc::ENOENT
}

// ---------------------------------------------------------------------------------------
// The holder: threads with spans open, a churn thread, a reader thread.
// ---------------------------------------------------------------------------------------

#[derive(Default, Debug)]
pub struct HoldSummary {
    pub hold_begin: Hist,
    pub hold_end: Hist,
    pub churn: Hist,
    pub churn_ok_before: u64,
    /// Operations that succeeded after an earlier one failed.
    pub ok_after_error: u64,
    pub reader_records: u64,
    pub reader_errors: Hist,
    pub reader_bad: u64,
}

impl HoldSummary {
    fn encode(&self) -> String {
        format!(
            "hold_begin={} hold_end={} churn={} churn_ok_before={} ok_after_error={} reader_records={} reader_errors={} reader_bad={}",
            self.hold_begin.encode(),
            self.hold_end.encode(),
            self.churn.encode(),
            self.churn_ok_before,
            self.ok_after_error,
            self.reader_records,
            self.reader_errors.encode(),
            self.reader_bad
        )
    }

    fn decode(kv: &std::collections::BTreeMap<String, String>) -> HoldSummary {
        let h = |k: &str| Hist::decode(kv.get(k).map(String::as_str).unwrap_or(""));
        let n = |k: &str| kv.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        HoldSummary {
            hold_begin: h("hold_begin"),
            hold_end: h("hold_end"),
            churn: h("churn"),
            churn_ok_before: n("churn_ok_before"),
            ok_after_error: n("ok_after_error"),
            reader_records: n("reader_records"),
            reader_errors: h("reader_errors"),
            reader_bad: n("reader_bad"),
        }
    }

    /// What must hold after an unload.
    fn problems(&self, who: &str) -> Vec<String> {
        let mut bad = Vec::new();
        if self.hold_begin.total() == 0 || self.hold_begin.get(0) != self.hold_begin.total() {
            bad.push(format!("{who}: held spans' begins {}", self.hold_begin.describe()));
        }
        if self.hold_end.total() == 0 || self.hold_end.get(libc::EIO) != self.hold_end.total() {
            bad.push(format!("{who}: held spans' ends after the unload {} (expected all EIO)", self.hold_end.describe()));
        }
        if self.churn_ok_before == 0 {
            bad.push(format!("{who}: the churn thread never succeeded before the unload"));
        }
        if self.ok_after_error != 0 {
            bad.push(format!("{who}: {} operations succeeded after a failure", self.ok_after_error));
        }
        let odd: Vec<String> = self.churn.0.keys().filter(|&&e| e != 0 && !tolerated_unload(e)).map(|&e| errno_name(e)).collect();
        if !odd.is_empty() {
            bad.push(format!("{who}: churn errors {}", self.churn.describe()));
        }
        let odd: Vec<String> = self.reader_errors.0.keys().filter(|&&e| e != libc::EIO).map(|&e| errno_name(e)).collect();
        if !odd.is_empty() {
            bad.push(format!("{who}: relay read errors {}", self.reader_errors.describe()));
        }
        if self.reader_bad != 0 {
            bad.push(format!("{who}: {} bad relay records or stream errors", self.reader_bad));
        }
        bad
    }
}

pub struct Holder {
    stop: Arc<AtomicBool>,
    /// Threads blocked in poll() and epoll_wait() on control while the module goes away.
    pollers: Vec<JoinHandle<()>>,
    hold: Vec<JoinHandle<(Hist, Hist)>>,
    churn: Option<JoinHandle<(Hist, u64, u64)>>,
    reader: Option<JoinHandle<(u64, Hist, u64)>>,
}

impl Holder {
    /// Registers the calling process and starts the threads.
    pub fn start(tag: u64) -> Result<Holder, String> {
        let control = Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY)?;
        sys::ioctl_plain(control.raw(), uapi::IOCTL_REGISTER).map_err(|e| format!("REGISTER: {}", errno_name(e)))?;
        let pid = u64::from(sys::getpid());
        let stop = Arc::new(AtomicBool::new(false));
        let mut hold = Vec::new();
        for t in 0..3u64 {
            let st = stop.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            hold.push(std::thread::spawn(move || {
                let mut hb = Hist::default();
                let mut he = Hist::default();
                let (Ok(b), Ok(e)) = (Fd::open(uapi::PROC_BEGIN, libc::O_WRONLY), Fd::open(uapi::PROC_END, libc::O_WRONLY)) else {
                    let _ = tx.send(());
                    return (hb, he);
                };
                let lines: Vec<_> = (0..3).map(|d| key3(pid, tag * 1000 + t, d).line()).collect();
                for l in &lines {
                    hb.add(span_write(b.raw(), l));
                }
                let _ = tx.send(());
                let t0 = Instant::now();
                while !st.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(300) {
                    sys::sleep_ms(5);
                }
                for l in lines.iter().rev() {
                    he.add(span_write(e.raw(), l));
                }
                (hb, he)
            }));
            rx.recv_timeout(Duration::from_secs(20)).map_err(|_| "hold thread did not start".to_string())?;
        }
        let st = stop.clone();
        let churn = std::thread::spawn(move || {
            let mut h = Hist::default();
            let (mut ok_before, mut ok_after) = (0u64, 0u64);
            // Per file: the entries are removed one after the other, so control may still
            // answer after begin failed; but no file answers again once it failed.
            let mut failed = [false; 3];
            let (Ok(c), Ok(b), Ok(e)) = (
                Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY),
                Fd::open(uapi::PROC_BEGIN, libc::O_WRONLY),
                Fd::open(uapi::PROC_END, libc::O_WRONLY),
            ) else {
                h.add(-1);
                return (h, 0, 0);
            };
            let t0 = Instant::now();
            let mut i = 0u64;
            while !st.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(300) {
                i += 1;
                let l = key3(pid, tag * 1000 + 99, i).line();
                let mut rs = vec![(0usize, span_write(b.raw(), &l))];
                raw_getpid();
                rs.push((1, span_write(e.raw(), &l)));
                if i % 16 == 0 {
                    rs.push((2, sys::ioctl_info(c.raw()).err().unwrap_or(0)));
                }
                for (f, r) in rs {
                    h.add(r);
                    if r != 0 {
                        failed[f] = true;
                    } else if failed[f] {
                        ok_after += 1;
                    } else if !failed.iter().any(|&x| x) {
                        ok_before += 1;
                    }
                }
                if failed.iter().any(|&x| x) {
                    sys::sleep_ms(1);
                }
            }
            (h, ok_before, ok_after)
        });
        // Two threads that sit in poll() and in epoll_wait() on control (long timeouts), as
        // libspanhook's reader does: the unload must get them off the module's wait queue.
        let mut pollers = Vec::new();
        for use_epoll in [false, true] {
            let st = stop.clone();
            pollers.push(std::thread::spawn(move || {
                let Ok(c) = Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY) else { return };
                // SAFETY: plain system calls on descriptors owned here.
                unsafe {
                    let ep = if use_epoll { libc::epoll_create1(libc::EPOLL_CLOEXEC) } else { -1 };
                    if use_epoll {
                        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 0 };
                        libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, c.raw(), &mut ev);
                    }
                    let t0 = Instant::now();
                    while !st.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(300) {
                        if use_epoll {
                            let mut ev = libc::epoll_event { events: 0, u64: 0 };
                            libc::epoll_wait(ep, &mut ev, 1, 5000);
                        } else {
                            let mut p = libc::pollfd { fd: c.raw(), events: libc::POLLIN, revents: 0 };
                            libc::poll(&mut p, 1, 5000);
                        }
                        // After the unload both return at once: do not spin.
                        sys::sleep_ms(1);
                    }
                    if ep >= 0 {
                        libc::close(ep);
                    }
                }
            }));
        }
        let st = stop.clone();
        let mut relay = BulkReader::open(pid as u32)?;
        let reader = std::thread::spawn(move || {
            let mut rng = Rng::new(pid);
            let mut n = 0u64;
            let mut bad = 0u64;
            let t0 = Instant::now();
            while !st.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(300) {
                let got = relay.poll(0, &mut rng, |r| {
                    n += 1;
                    if r.h.tgid as u64 != pid || super::reader::check_structure(&r).is_err() {
                        bad += 1;
                    }
                });
                if got == 0 {
                    sys::sleep_ms(1);
                }
            }
            bad += relay.errors.len() as u64;
            (n, relay.read_errnos.clone(), bad)
        });
        Ok(Holder {
            stop,
            pollers,
            hold,
            churn: Some(churn),
            reader: Some(reader),
        })
    }

    pub fn stop(mut self) -> HoldSummary {
        self.stop.store(true, Ordering::SeqCst);
        for p in self.pollers.drain(..) {
            let _ = p.join();
        }
        let mut s = HoldSummary::default();
        for h in self.hold.drain(..) {
            if let Ok((b, e)) = h.join() {
                s.hold_begin.merge(&b);
                s.hold_end.merge(&e);
            }
        }
        if let Some(Ok((h, ok_before, ok_after))) = self.churn.take().map(|h| h.join()) {
            s.churn = h;
            s.churn_ok_before = ok_before;
            s.ok_after_error = ok_after;
        }
        if let Some(Ok((n, errs, bad))) = self.reader.take().map(|h| h.join()) {
            s.reader_records = n;
            s.reader_errors = errs;
            s.reader_bad = bad;
        }
        s
    }
}

/// Waits for a line on stdin or its end (bounded).
fn wait_stdin(limit: Duration) -> Option<String> {
    let mut p = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd.
    let n = unsafe { libc::poll(&mut p, 1, limit.as_millis() as i32) };
    if n <= 0 {
        return None;
    }
    let mut s = String::new();
    let _ = std::io::stdin().read_line(&mut s);
    Some(s)
}

/// Child role: register, hold spans, churn, read; print `ready`; wait for stdin to close;
/// stop and report.
pub fn child_hold(_args: &[String]) -> i32 {
    let h = match Holder::start(u64::from(sys::getpid())) {
        Ok(h) => h,
        Err(e) => {
            println!("result error={}", e.replace(' ', "_"));
            return 1;
        }
    };
    println!("ready");
    let _ = std::io::stdout().flush();
    wait_stdin(Duration::from_secs(300));
    let s = h.stop();
    println!("result {}", s.encode());
    0
}

struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<std::process::ChildStdout>,
}

fn spawn_kid(role: &str) -> Result<Kid, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = Command::new(exe)
        .arg(role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn {role}: {e}"))?;
    let stdin = child.stdin.take();
    let out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    Ok(Kid { child, stdin, out })
}

impl Kid {
    /// Reads lines until one starts with `prefix` (bounded by the child's own limits).
    fn line(&mut self, prefix: &str) -> Result<String, String> {
        let mut all = String::new();
        for _ in 0..1000 {
            let mut l = String::new();
            match self.out.read_line(&mut l) {
                Ok(0) => break,
                Ok(_) => {
                    if l.starts_with(prefix) {
                        return Ok(l);
                    }
                    all.push_str(&l);
                }
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        Err(format!("no {prefix:?} line; said {all:?}"))
    }

    /// Closes stdin, reads the result, reaps.
    fn finish(mut self) -> Result<(String, i32), String> {
        self.stdin.take();
        let r = self.line("result ");
        let st = self.child.wait().map_err(|e| format!("wait: {e}"))?;
        let code = st.code().unwrap_or(-1);
        r.map(|l| (l, code))
    }
}

pub fn run_unload(rep: &mut Report, ko: &str) {
    if let Err(e) = run_unload_inner(rep, ko) {
        rep.check("unload: setup", Err(e));
    }
}

fn run_unload_inner(rep: &mut Report, ko: &str) -> Result<(), String> {
    if ko.is_empty() || !super::module_loaded() {
        return Err("usage: unload KO, with the module loaded".into());
    }
    crate::sysfs::set(crate::sysfs::THRESHOLD, "0")?;
    let mut kids = Vec::new();
    for _ in 0..2 {
        let mut k = spawn_kid("child-hold")?;
        k.line("ready")?;
        kids.push(k);
    }
    let holder = Holder::start(1)?;
    sys::sleep_ms(300);
    let s = Stats::read()?;
    fig!(
        "unload: 3 registered processes, {} threads, {} open spans, churning and reading relay files; rmmod now",
        s.get("threads")?,
        s.get("open_spans")?
    );
    let rm = rmmod();
    let gone: Vec<&str> = [uapi::PROC_DIR, uapi::SYSFS_DIR, uapi::RELAY_DIR]
        .into_iter()
        .filter(|p| std::path::Path::new(p).exists())
        .collect();
    sys::sleep_ms(200);
    let mine = holder.stop();
    let mut results = vec![("this process".to_string(), Ok((mine.encode(), 0)), mine)];
    for (i, k) in kids.into_iter().enumerate() {
        let r = k.finish();
        let s = r
            .as_ref()
            .ok()
            .and_then(|(l, _)| parse_result(l))
            .map(|kv| HoldSummary::decode(&kv))
            .unwrap_or_default();
        results.push((format!("child {i}"), r, s));
    }
    rep.check(
        "unload: rmmod succeeds while processes are registered, spans open and relay files being read; every entry is gone",
        match &rm {
            Ok(t) if gone.is_empty() => {
                fig!("unload: rmmod took {:.0} ms", t.as_secs_f64() * 1000.0);
                Ok(())
            }
            Ok(_) => Err(format!("still there: {gone:?}")),
            Err(e) => Err(e.clone()),
        },
    );
    for (who, r, s) in &results {
        fig!(
            "unload: {who}: held begins {}, their ends after unload {}; churn {} ({} ok before the unload); relay records read {}, read errors {}",
            s.hold_begin.describe(),
            s.hold_end.describe(),
            s.churn.describe(),
            s.churn_ok_before,
            s.reader_records,
            s.reader_errors.describe()
        );
        let mut bad = s.problems(who);
        match r {
            Ok((_, 0)) => {}
            Ok((_, c)) => bad.push(format!("{who} exited {c}")),
            Err(e) => bad.push(format!("{who}: {e}")),
        }
        rep.check(
            &format!("unload: {who} carries on; later span writes fail with EIO, ioctls with ENOTTY, relay reads with EIO; no file answers again once it failed"),
            if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) },
        );
    }
    rep.check(
        "unload: the module loads again with a clean state",
        (|| {
            insmod(ko)?;
            let s = Stats::read()?;
            for n in ["processes", "threads", "open_spans", "spans_begun", "records_written"] {
                if s.get(n)? != 0 {
                    return Err(format!("{n} {} after a fresh load", s.get(n)?));
                }
            }
            let b = Fd::open(uapi::PROC_BEGIN, libc::O_WRONLY)?;
            match span_write(b.raw(), &key3(1, 2, 3).line()) {
                e if e == libc::EPERM => Ok(()),
                e => Err(format!("begin from an unregistered process: {}", errno_name(e))),
            }
        })(),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reload cycles
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Churn {
    h: Hist,
    spans_ok: u64,
    registers_ok: u64,
    reopen: u64,
    relay_records: u64,
}

/// Errors the churn workload tolerates while the module comes and goes.
fn tolerated_reload(e: i32) -> bool {
    matches!(e, 0 | libc::ENOENT | libc::EIO | libc::ENOTTY | libc::EPERM | libc::EALREADY)
}

/// One churn thread: reopen, register, nested spans, INFO, stats and relay reads.
fn churn_thread(stop: Arc<AtomicBool>, tag: u64) -> Churn {
    let mut c = Churn::default();
    let pid = u64::from(sys::getpid());
    let mut fds: Option<(Fd, Fd, Fd)> = None;
    let mut registered = false;
    let mut rng = Rng::new(pid ^ tag);
    let t0 = Instant::now();
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(600) {
        i += 1;
        if fds.is_none() {
            match (
                Fd::open_errno(uapi::PROC_CONTROL, libc::O_RDONLY),
                Fd::open_errno(uapi::PROC_BEGIN, libc::O_WRONLY),
                Fd::open_errno(uapi::PROC_END, libc::O_WRONLY),
            ) {
                (Ok(a), Ok(b), Ok(e)) => {
                    fds = Some((a, b, e));
                    c.reopen += 1;
                    registered = false;
                }
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                    c.h.add(e);
                    sys::sleep_ms(2);
                    continue;
                }
            }
        }
        let Some((ctl, b, e)) = fds.as_ref() else { continue };
        let mut reopen = false;
        let note = |r: i32, c: &mut Churn, reopen: &mut bool, registered: &mut bool| {
            c.h.add(r);
            if r == libc::EIO || r == libc::ENOTTY {
                *reopen = true;
            }
            if r == libc::EPERM {
                *registered = false;
            }
        };
        if !registered {
            let r = ioctl0(ctl.raw(), uapi::IOCTL_REGISTER);
            note(r, &mut c, &mut reopen, &mut registered);
            if r == 0 || r == libc::EALREADY {
                registered = true;
                if r == 0 {
                    c.registers_ok += 1;
                }
            }
        }
        if !reopen {
            let k1 = key3(pid, tag, 2 * i).line();
            let k2 = key3(pid, tag, 2 * i + 1).line();
            let r1 = span_write(b.raw(), &k1);
            raw_getpid();
            let r2 = span_write(b.raw(), &k2);
            raw_getpid();
            let r3 = span_write(e.raw(), &k2);
            let r4 = span_write(e.raw(), &k1);
            for r in [r1, r2, r3, r4] {
                note(r, &mut c, &mut reopen, &mut registered);
            }
            if r1 == 0 && r4 == 0 {
                c.spans_ok += 1;
            }
        }
        if i % 20 == 0 && !reopen {
            let r = sys::ioctl_info(ctl.raw()).err().unwrap_or(0);
            note(r, &mut c, &mut reopen, &mut registered);
            let _ = std::fs::read_to_string(uapi::PROC_STATS);
            if let Ok(mut rd) = BulkReader::open(pid as u32) {
                rd.poll(512, &mut rng, |_| c.relay_records += 1);
                for (&e, &n) in &rd.read_errnos.0 {
                    for _ in 0..n.min(1000) {
                        c.h.add(e);
                    }
                }
            }
        }
        if reopen {
            fds = None;
            sys::sleep_ms(1);
        }
    }
    c
}

pub fn child_churn(_args: &[String]) -> i32 {
    let stop = Arc::new(AtomicBool::new(false));
    let tag = u64::from(sys::getpid());
    let hs: Vec<_> = (0..3u64)
        .map(|t| {
            let s = stop.clone();
            std::thread::spawn(move || churn_thread(s, tag * 10 + t))
        })
        .collect();
    println!("ready");
    let _ = std::io::stdout().flush();
    wait_stdin(Duration::from_secs(600));
    stop.store(true, Ordering::SeqCst);
    let mut all = Churn::default();
    for h in hs {
        if let Ok(c) = h.join() {
            all.h.merge(&c.h);
            all.spans_ok += c.spans_ok;
            all.registers_ok += c.registers_ok;
            all.reopen += c.reopen;
            all.relay_records += c.relay_records;
        }
    }
    println!(
        "result hist={} spans_ok={} registers_ok={} reopen={} relay_records={}",
        all.h.encode(),
        all.spans_ok,
        all.registers_ok,
        all.reopen,
        all.relay_records
    );
    0
}

pub fn run_reload(rep: &mut Report, ko: &str, cycles: u32) {
    if let Err(e) = run_reload_inner(rep, ko, cycles) {
        rep.check("reload: setup", Err(e));
    }
}

fn run_reload_inner(rep: &mut Report, ko: &str, cycles: u32) -> Result<(), String> {
    if ko.is_empty() || super::module_loaded() {
        return Err("usage: reload KO [CYCLES], with the module not loaded".into());
    }
    let seed = super::clock_seed();
    let mut rng = Rng::new(seed);
    let mut kids = Vec::new();
    for _ in 0..2 {
        let mut k = spawn_kid("child-churn")?;
        k.line("ready")?;
        kids.push(k);
    }
    let mut failures = Vec::new();
    let (mut t_in, mut t_out) = (Vec::new(), Vec::new());
    let mut loaded_stats = Vec::new();
    for i in 0..cycles {
        match insmod(ko) {
            Ok(t) => t_in.push(t.as_millis() as u64),
            Err(e) => {
                failures.push(format!("cycle {i}: {e}"));
                break;
            }
        }
        let _ = crate::sysfs::write_raw(crate::sysfs::THRESHOLD, if i % 2 == 0 { b"0" } else { b"1000000" });
        sys::sleep_ms(rng.range(150, 400));
        if let Ok(s) = Stats::read() {
            loaded_stats.push((s.get("processes").unwrap_or(0), s.get("spans_ended").unwrap_or(0)));
        }
        match rmmod() {
            Ok(t) => t_out.push(t.as_millis() as u64),
            Err(e) => {
                failures.push(format!("cycle {i}: {e}"));
                break;
            }
        }
        sys::sleep_ms(rng.range(50, 150));
    }
    let mut kid_results = Vec::new();
    for (i, k) in kids.into_iter().enumerate() {
        kid_results.push((i, k.finish()));
    }
    fig!(
        "reload: {} cycles; insmod ms {:?}; rmmod ms {:?}; (processes, spans ended) seen while loaded {:?}",
        t_out.len(),
        t_in,
        t_out,
        loaded_stats
    );
    rep.check(
        &format!("reload: {cycles} insmod/rmmod cycles under load all succeed"),
        if failures.is_empty() && t_out.len() == cycles as usize { Ok(()) } else { Err(failures.join("; ")) },
    );
    let mut bad = Vec::new();
    let mut spans_total = 0;
    for (i, r) in &kid_results {
        match r {
            Err(e) => bad.push(format!("child {i}: {e}")),
            Ok((line, code)) => {
                let kv = parse_result(line).unwrap_or_default();
                let h = Hist::decode(kv.get("hist").map(String::as_str).unwrap_or(""));
                let n = |k: &str| kv.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                fig!(
                    "reload: child {i}: {} operations ({}); {} span pairs ok, {} registrations, {} reopenings, {} relay records",
                    h.total(),
                    h.describe(),
                    n("spans_ok"),
                    n("registers_ok"),
                    n("reopen"),
                    n("relay_records")
                );
                spans_total += n("spans_ok");
                if *code != 0 {
                    bad.push(format!("child {i} exited {code}"));
                }
                let odd: Vec<String> = h.0.keys().filter(|&&e| !tolerated_reload(e)).map(|&e| errno_name(e)).collect();
                if !odd.is_empty() {
                    bad.push(format!("child {i}: unexpected errors {odd:?}"));
                }
                if n("registers_ok") == 0 || n("spans_ok") == 0 {
                    bad.push(format!("child {i} never registered or never completed a span"));
                }
            }
        }
    }
    rep.check(
        "reload: the workload processes survive, see only the errors of a module that comes and goes (ENOENT, EIO, ENOTTY, EPERM, EALREADY), and work whenever it is loaded",
        if bad.is_empty() && spans_total > 0 { Ok(()) } else { Err(bad.join("; ")) },
    );
    rep.check(
        "reload: afterwards the module loads with a clean state",
        (|| {
            insmod(ko)?;
            let s = Stats::read()?;
            for n in ["processes", "threads", "open_spans", "spans_begun"] {
                if s.get(n)? != 0 {
                    return Err(format!("{n} {}", s.get(n)?));
                }
            }
            Ok(())
        })(),
    );
    Ok(())
}
