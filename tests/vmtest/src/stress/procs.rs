//! Registered processes killed with SIGKILL in the middle of spans: forked children that
//! register themselves, run several threads that always have a span open, and die while
//! their relay files are held open (and read) by the parent. Everything they had is
//! dropped and counted; their relay directories go away; the books balance.

use super::reader::{check_structure, BulkReader};
use super::{ioctl0, key3, raw_getpid, raw_nanosleep, scaled, span_write, wait_until, Hist, Report, Rng};
use crate::fig;
use crate::sys::{self, errno_name, Fd};
use crate::sysfs::{self, Stats, TunableGuard};
use spantrack_uapi as uapi;
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Threads of a child that open spans (the main thread too).
const CHILD_THREADS: u32 = 3;

/// Runs in a forked child (the parent was single-threaded at fork). Never returns.
fn child_main(wfd: i32, seed: u64) -> ! {
    // SAFETY: plain prctl: die with the parent.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let say = |b: &[u8]| {
        // SAFETY: valid buffer.
        unsafe { libc::write(wfd, b.as_ptr().cast(), b.len()) };
    };
    let r = (|| -> Result<(), String> {
        let control = Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY)?;
        let begin = Fd::open(uapi::PROC_BEGIN, libc::O_WRONLY)?;
        let end = Fd::open(uapi::PROC_END, libc::O_WRONLY)?;
        sys::ioctl_plain(control.raw(), uapi::IOCTL_REGISTER).map_err(|e| format!("REGISTER {}", errno_name(e)))?;
        let (b, e) = (begin.raw(), end.raw());
        let ready = Arc::new(AtomicU32::new(0));
        // A safety net only: the parent kills every child (PR_SET_PDEATHSIG if the parent
        // dies). 60 s was too short on the debug kernel, where reading the children's
        // records before the kill can take longer, and the children exited on their own.
        let deadline = Instant::now() + Duration::from_secs(600);
        let work = move |t: u64, ready: Arc<AtomicU32>| {
            let pid = u64::from(sys::getpid());
            let mut rng = Rng::new(seed ^ t);
            let outer = key3(pid, t, 0).line();
            if span_write(b, &outer) == 0 {
                ready.fetch_add(1, Ordering::SeqCst);
            }
            let mut n = 1u64;
            let mut lines = Vec::with_capacity(8);
            while Instant::now() < deadline {
                lines.clear();
                for _ in 0..rng.range(1, 6) {
                    n += 1;
                    lines.push(key3(pid, t, n).line());
                }
                for l in &lines {
                    span_write(b, l);
                    raw_getpid();
                }
                // Inside the spans (a kill may land in a system call), and leaves CPU
                // time to the parent.
                raw_nanosleep(if rng.chance(100) { 1_000_000 } else { 100_000 });
                for l in lines.iter().rev() {
                    span_write(e, l);
                }
            }
        };
        let mut hs = Vec::new();
        for t in 1..CHILD_THREADS {
            let rd = ready.clone();
            hs.push(std::thread::spawn(move || work(u64::from(t), rd)));
        }
        // Wait for the others (bounded), then open the main thread's span and tell the parent.
        let t0 = Instant::now();
        while ready.load(Ordering::SeqCst) < CHILD_THREADS - 1 && t0.elapsed() < Duration::from_secs(20) {
            sys::sleep_ms(1);
        }
        // The main thread's own outer span, then ready.
        let pid = u64::from(sys::getpid());
        let outer = key3(pid, 0, 0).line();
        if span_write(b, &outer) == 0 && ready.load(Ordering::SeqCst) == CHILD_THREADS - 1 {
            say(b"R");
        } else {
            return Err("threads did not open their spans".into());
        }
        work(100, ready);
        for h in hs {
            let _ = h.join();
        }
        Ok(())
    })();
    if let Err(e) = r {
        say(format!("E{e}").as_bytes());
        // SAFETY: plain exit.
        unsafe { libc::_exit(3) };
    }
    // SAFETY: plain exit.
    unsafe { libc::_exit(0) }
}

struct Child {
    pid: i32,
    rfd: i32,
    ready: bool,
    relay: Option<BulkReader>,
}

fn read_ready(rfd: i32, timeout_ms: i32) -> Result<(), String> {
    let mut p = libc::pollfd {
        fd: rfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if n <= 0 {
        return Err("no ready signal within the time limit".into());
    }
    let mut buf = [0u8; 256];
    // SAFETY: valid buffer.
    let r = unsafe { libc::read(rfd, buf.as_mut_ptr().cast(), buf.len()) };
    if r >= 1 && buf[0] == b'R' {
        Ok(())
    } else {
        Err(format!("child said {:?}", String::from_utf8_lossy(&buf[..r.max(0) as usize])))
    }
}

pub fn run(rep: &mut Report) {
    if let Err(e) = run_inner(rep) {
        rep.check("procs: setup", Err(e));
    }
    // Still single-threaded: the race test forks too.
    if let Err(e) = register_races(rep) {
        rep.check("procs: register races setup", Err(e));
    }
}

/// Child of the race test: threads are created and exit continuously while the main
/// thread registers. Each short-lived thread that starts after REGISTER returned must be
/// tracked (its begin succeeds). Reports `<missed threads> <ok begins>` on the pipe.
fn race_child(wfd: i32) -> ! {
    // SAFETY: die with the parent.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let r = (|| -> Result<String, String> {
        let control = Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY)?;
        let begin = Fd::open(uapi::PROC_BEGIN, libc::O_WRONLY)?;
        let end = Fd::open(uapi::PROC_END, libc::O_WRONLY)?;
        let (b, e) = (begin.raw(), end.raw());
        let registered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let missed = Arc::new(AtomicU32::new(0));
        let ok = Arc::new(AtomicU32::new(0));
        let mut churners = Vec::new();
        for c in 0..4u64 {
            let (registered, stop, missed, ok) = (registered.clone(), stop.clone(), missed.clone(), ok.clone());
            churners.push(std::thread::spawn(move || {
                let pid = u64::from(sys::getpid());
                let t0 = Instant::now();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(20) {
                    i += 1;
                    let (registered, missed, ok) = (registered.clone(), missed.clone(), ok.clone());
                    let h = std::thread::Builder::new().stack_size(64 * 1024).spawn(move || {
                        if registered.load(Ordering::SeqCst) {
                            let l = key3(pid, 1000 + c, i).line();
                            match span_write(b, &l) {
                                0 => {
                                    span_write(e, &l);
                                    ok.fetch_add(1, Ordering::SeqCst);
                                }
                                _ => {
                                    missed.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        }
                    });
                    if let Ok(h) = h {
                        let _ = h.join();
                    }
                }
            }));
        }
        sys::sleep_ms(20);
        let reg = ioctl0(control.raw(), uapi::IOCTL_REGISTER);
        registered.store(reg == 0, Ordering::SeqCst);
        sys::sleep_ms(20);
        stop.store(true, Ordering::SeqCst);
        for h in churners {
            let _ = h.join();
        }
        Ok(format!("{} {} {}", reg, missed.load(Ordering::SeqCst), ok.load(Ordering::SeqCst)))
    })();
    let msg = match r {
        Ok(m) => m,
        Err(e) => format!("E {e}"),
    };
    // SAFETY: valid buffer.
    unsafe {
        libc::write(wfd, msg.as_ptr().cast(), msg.len());
        libc::_exit(0)
    }
}

/// REGISTER while threads of the process are being created and are exiting: REGISTER
/// succeeds, no thread running after REGISTER returned is left untracked, and when the
/// process exits nothing of it is left (no exiting thread kept in the tracker, no relay
/// channel left behind).
fn register_races(rep: &mut Report) -> Result<(), String> {
    let attempts = scaled(40, 12);
    let s0 = Stats::read()?;
    let mut missed_total = 0u64;
    let mut ok_total = 0u64;
    let mut reg = Hist::default();
    let mut leaked: Vec<String> = Vec::new();
    let mut dirs_left: Vec<String> = Vec::new();
    let mut errors = Vec::new();
    let t0 = Instant::now();
    let mut done = 0;
    for a in 0..attempts {
        let _ = std::io::stdout().flush();
        let mut fds = [0i32; 2];
        // SAFETY: valid array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err("pipe".into());
        }
        // SAFETY: single-threaded parent.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: our copy of the read end.
            unsafe { libc::close(fds[0]) };
            race_child(fds[1]);
        }
        // SAFETY: our fd.
        unsafe { libc::close(fds[1]) };
        let mut buf = [0u8; 256];
        let mut p = libc::pollfd { fd: fds[0], events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd, valid buffer, our child.
        let msg = unsafe {
            let n = if libc::poll(&mut p, 1, 60_000) > 0 { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) } else { -1 };
            libc::close(fds[0]);
            if n <= 0 {
                libc::kill(pid, libc::SIGKILL);
            }
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned()
        };
        done += 1;
        let v: Vec<i64> = msg.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        match v.as_slice() {
            [r, m, o] => {
                reg.add(*r as i32);
                missed_total += *m as u64;
                ok_total += *o as u64;
            }
            _ => errors.push(format!("attempt {a}: child said {msg:?}")),
        }
        // The child is gone: so must be its registration, threads and relay channel.
        let dir = crate::relay::Relay::dir_of(pid as u32);
        let mut s = Stats::read()?;
        let back = wait_until(Duration::from_secs(3), || {
            s = Stats::read().unwrap_or(s.clone());
            s.get("processes").ok() == s0.get("processes").ok() && s.get("threads").ok() == s0.get("threads").ok()
        });
        let gone = wait_until(Duration::from_secs(1), || !std::path::Path::new(&dir).exists());
        if !back {
            fig!(
                "procs: race: attempt {a} (REGISTER {}): the exited child {pid} is still registered: processes {} threads {} (before {} {})",
                v.first().map(|&r| if r == 0 { "ok".to_string() } else { errno_name(r as i32) }).unwrap_or_default(),
                s.get("processes")?,
                s.get("threads")?,
                s0.get("processes")?,
                s0.get("threads")?
            );
            leaked.push(format!("attempt {a}"));
            // Its slot stays taken: compare with what is left now.
            break;
        }
        if !gone {
            fig!(
                "procs: race: attempt {a} (REGISTER {}): the exited child {pid} is forgotten but its relay directory {dir} is left",
                v.first().map(|&r| if r == 0 { "ok".to_string() } else { errno_name(r as i32) }).unwrap_or_default()
            );
            dirs_left.push(dir);
        }
        if reg.total() != reg.get(0) && missed_total > 0 && !dirs_left.is_empty() {
            break;
        }
    }
    fig!(
        "procs: race: {done} children registered while creating and ending threads ({:.1} s): REGISTER {}; {ok_total} threads running after REGISTER returned tracked, {missed_total} not; {} exited processes left registered, {} relay directories left",
        t0.elapsed().as_secs_f64(),
        reg.describe(),
        leaked.len(),
        dirs_left.len()
    );
    rep.check(
        "procs: REGISTER succeeds while the process's threads are being created and are exiting",
        if reg.get(0) == reg.total() && errors.is_empty() {
            Ok(())
        } else {
            Err(format!("REGISTER results {} (ENOENT is not even a documented REGISTER error); {}", reg.describe(), errors.join("; ")))
        },
    );
    rep.check(
        "procs: REGISTER while threads are being created: every thread running after REGISTER returned is tracked",
        if missed_total == 0 {
            Ok(())
        } else {
            Err(format!("{missed_total} threads running after REGISTER returned were not tracked (begin failed)"))
        },
    );
    rep.check(
        "procs: REGISTER while threads are exiting: nothing of the process is left when it exits (process slot, threads, relay channel)",
        if leaked.is_empty() && dirs_left.is_empty() {
            Ok(())
        } else {
            Err(format!("still registered after exit: {leaked:?}; relay directories left: {dirs_left:?}"))
        },
    );
    Ok(())
}

fn run_inner(rep: &mut Report) -> Result<(), String> {
    let rounds = scaled(3, 2);
    let per_round = scaled(10, 4).min(60);
    let seed = super::clock_seed();
    fig!("procs: {rounds} rounds x {per_round} registered children x {CHILD_THREADS} threads, killed mid-span; seed {seed}");
    let _g = TunableGuard::save()?;
    sysfs::set(sysfs::THRESHOLD, "0")?;
    // Spans stay open for the whole run (parked, held): a run stretched past timeout_ns's
    // 60 s by a busy host (the debug kernel took 106 s) would see them expire.
    sysfs::set(sysfs::TIMEOUT, "86400000000000")?;
    let mut rng = Rng::new(seed);
    let s0 = Stats::read()?;
    let mut failures: Vec<String> = Vec::new();
    let mut killed = 0u64;
    let mut recs = 0u64;
    let mut rec_errors: Vec<String> = Vec::new();
    let mut after_kill = Hist::default();
    let mut gone_before_read = 0u64;
    let t0 = Instant::now();
    for round in 0..rounds {
        let mut children: Vec<Child> = Vec::new();
        let _ = std::io::stdout().flush();
        for c in 0..per_round {
            let mut fds = [0i32; 2];
            // SAFETY: valid array.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                failures.push(format!("pipe: {}", errno_name(sys::errno())));
                break;
            }
            // SAFETY: this process is single-threaded here (no thread was started yet in
            // this mode), so the child may allocate and spawn threads.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: closing our copy of the read end.
                unsafe { libc::close(fds[0]) };
                child_main(fds[1], seed ^ (round << 32) ^ c);
            }
            // SAFETY: closing the parent's copy of the write end.
            unsafe { libc::close(fds[1]) };
            if pid < 0 {
                failures.push(format!("fork: {}", errno_name(sys::errno())));
                // SAFETY: our fd.
                unsafe { libc::close(fds[0]) };
                break;
            }
            children.push(Child {
                pid,
                rfd: fds[0],
                ready: false,
                relay: None,
            });
        }
        for ch in children.iter_mut() {
            match read_ready(ch.rfd, 30_000) {
                Ok(()) => ch.ready = true,
                Err(e) => failures.push(format!("round {round} child {}: {e}", ch.pid)),
            }
            if ch.ready {
                match BulkReader::open(ch.pid as u32) {
                    Ok(r) => ch.relay = Some(r),
                    Err(e) => failures.push(format!("child {} relay: {e}", ch.pid)),
                }
            }
        }
        // Read a little of each child's records, let them run, kill them in random order.
        for ch in children.iter_mut() {
            if let Some(r) = ch.relay.as_mut() {
                let pid = ch.pid as u32;
                r.poll(4096, &mut rng, |rec| {
                    recs += 1;
                    if rec.h.tgid != pid {
                        rec_errors.push(format!("record of child {pid} has tgid {}", rec.h.tgid));
                    }
                    if let Err(e) = check_structure(&rec) {
                        rec_errors.push(e);
                    }
                });
            }
        }
        sys::sleep_ms(rng.below(20));
        let mut order: Vec<usize> = (0..children.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for &i in &order {
            // SAFETY: our child.
            unsafe { libc::kill(children[i].pid, libc::SIGKILL) };
            if rng.chance(300) {
                sys::sleep_ms(rng.below(3));
            }
        }
        for ch in children.iter_mut() {
            let mut st = 0;
            // SAFETY: our child; SIGKILL was sent, so this returns.
            let r = unsafe { libc::waitpid(ch.pid, &mut st, 0) };
            if r != ch.pid || !libc::WIFSIGNALED(st) || libc::WTERMSIG(st) != libc::SIGKILL {
                failures.push(format!("child {}: waitpid {r} status {st:#x}, expected death by SIGKILL", ch.pid));
            } else {
                killed += 1;
            }
            // SAFETY: our fd.
            unsafe { libc::close(ch.rfd) };
            // The channel of a dead process: reads give what was left or fail cleanly.
            if let Some(mut r) = ch.relay.take() {
                if !std::path::Path::new(&crate::relay::Relay::dir_of(ch.pid as u32)).exists() {
                    gone_before_read += 1;
                }
                let pid = ch.pid as u32;
                for _ in 0..3 {
                    r.poll(0, &mut rng, |rec| {
                        recs += 1;
                        if rec.h.tgid != pid {
                            rec_errors.push(format!("record of child {pid} has tgid {}", rec.h.tgid));
                        }
                        if let Err(e) = check_structure(&rec) {
                            rec_errors.push(e);
                        }
                    });
                }
                after_kill.merge(&r.read_errnos);
                rec_errors.extend(r.errors.iter().cloned());
            }
        }
    }
    let elapsed = t0.elapsed();
    // The reap work closes the channels: wait for the books to settle.
    let mut s1 = Stats::read()?;
    let settled = wait_until(Duration::from_secs(15), || {
        s1 = Stats::read().unwrap_or(s1.clone());
        s1.get("processes").ok() == s0.get("processes").ok() && s1.get("threads").ok() == s0.get("threads").ok()
    });
    let leftover_dirs: Vec<String> = std::fs::read_dir(uapi::RELAY_DIR)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let d = |n: &str| s1.delta(&s0, n).unwrap_or(-1);
    fig!(
        "procs: {killed} children ({} threads) killed in {:.1} s; spans begun +{} ended +{} abandoned +{} expired +{}; records written +{} dropped +{}; {recs} records read from the victims; reads after the kill: {} ({gone_before_read} dirs already gone)",
        killed * u64::from(CHILD_THREADS),
        elapsed.as_secs_f64(),
        d("spans_begun"),
        d("spans_ended"),
        d("spans_abandoned"),
        d("spans_expired"),
        d("records_written"),
        d("records_dropped"),
        after_kill.describe()
    );
    rep.check(
        "procs: every child registered, opened spans on all its threads and died by SIGKILL",
        if failures.is_empty() && killed == rounds * per_round {
            Ok(())
        } else {
            Err(format!("{killed} of {} killed; {}", rounds * per_round, failures.join("; ")))
        },
    );
    rep.check(
        "procs: the victims are forgotten: processes, threads and open spans back to their values, relay directories removed",
        (|| {
            let mut bad = Vec::new();
            if !settled {
                bad.push(format!(
                    "processes {} threads {} (before {} {})",
                    s1.get("processes")?, s1.get("threads")?, s0.get("processes")?, s0.get("threads")?
                ));
            }
            if s1.get("open_spans")? != s0.get("open_spans")? {
                bad.push(format!("open_spans {} (before {})", s1.get("open_spans")?, s0.get("open_spans")?));
            }
            if !leftover_dirs.is_empty() {
                bad.push(format!("left in {}: {:?}", uapi::RELAY_DIR, leftover_dirs));
            }
            if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) }
        })(),
    );
    rep.check(
        "procs: every span open at the kill is counted abandoned (at least one per thread) and the books balance",
        (|| {
            let n = i128::from(killed);
            let mut bad = Vec::new();
            if d("spans_abandoned") < n * i128::from(CHILD_THREADS) {
                bad.push(format!("spans_abandoned +{} < {} killed threads", d("spans_abandoned"), n * i128::from(CHILD_THREADS)));
            }
            if d("processes_registered") != n {
                bad.push(format!("processes_registered +{} for {n} children", d("processes_registered")));
            }
            if d("threads_added") != n * i128::from(CHILD_THREADS) {
                bad.push(format!("threads_added +{} for {} threads", d("threads_added"), n * i128::from(CHILD_THREADS)));
            }
            for name in ["begins_untracked", "begins_duplicate", "begins_too_deep", "begins_table_full", "ends_unknown", "ends_untracked", "begins_malformed", "ends_malformed", "processes_refused", "threads_refused"] {
                if d(name) != 0 {
                    bad.push(format!("{name} +{}", d(name)));
                }
            }
            if let Err(e) = super::conservation(&s0, &s1) {
                bad.push(e);
            }
            if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) }
        })(),
    );
    rep.check(
        "procs: records read from the victims' relay files (also after the kill) are whole and valid; reads of a vanished channel fail cleanly",
        (|| {
            let unexpected: Vec<String> = after_kill
                .0
                .keys()
                .filter(|&&e| e != libc::EIO && e != libc::ENOENT)
                .map(|&e| errno_name(e))
                .collect();
            if rec_errors.is_empty() && unexpected.is_empty() {
                Ok(())
            } else {
                Err(format!("{} bad: {:?}; unexpected read errors {:?}", rec_errors.len(), rec_errors.iter().take(5).collect::<Vec<_>>(), unexpected))
            }
        })(),
    );
    Ok(())
}
