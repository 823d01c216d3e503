//! fork and exec of tracked processes:
//! - a fork of a registered process (with a span open) is not tracked, even through the
//!   inherited descriptors, until it registers itself; the parent's span records the fork;
//! - an untracked fork that execs: the new image registers and works;
//! - a registered process that execs from its main thread: the registration carries over
//!   (REGISTER says EALREADY, as libspanhook expects), spans work, every span of the old
//!   image is abandoned (the other threads' at their exit, the exec'ing thread's own at the
//!   exec: the new image cannot end them, ENOENT), and the process is forgotten when it
//!   exits;
//! - the same exec from a non-main thread: the kernel gives the exec'ing thread the
//!   leader's pid, and the module tracks it under that pid (`sched_process_exec`).

use super::child::parse_result;
use super::reader::BulkReader;
use super::{ioctl0, key3, raw_getpid, span_write, wait_until, Report, Rng};
use crate::fig;
use crate::sys::{self, errno_name, Fd};
use crate::sysfs::{self, Stats, TunableGuard};
use spantrack_uapi as uapi;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Forks; the child runs `f(write_fd)` and exits with its value. The parent gets the pid
/// and the read end of a pipe the child may write to (its stdout after `exec_self`).
fn fork_child(f: impl FnOnce(i32) -> i32) -> Result<(i32, i32), String> {
    let _ = std::io::stdout().flush();
    let mut fds = [0i32; 2];
    // SAFETY: valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", errno_name(sys::errno())));
    }
    // SAFETY: the parent is single-threaded in this mode.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: prctl, close of our fd; the child exits through _exit.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::close(fds[0]);
            let code = f(fds[1]);
            libc::_exit(code)
        }
    }
    // SAFETY: our fd.
    unsafe { libc::close(fds[1]) };
    if pid < 0 {
        // SAFETY: our fd.
        unsafe { libc::close(fds[0]) };
        return Err(format!("fork: {}", errno_name(sys::errno())));
    }
    Ok((pid, fds[0]))
}

/// Reads the child's output until EOF (bounded) and reaps it: (status, output).
fn collect(pid: i32, rfd: i32, limit: Duration) -> Result<(i32, String), String> {
    let t0 = Instant::now();
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(t0.elapsed()).as_millis() as i32;
        let mut p = libc::pollfd {
            fd: rfd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd.
        let n = unsafe { libc::poll(&mut p, 1, left.max(1)) };
        if n <= 0 {
            // SAFETY: our child and fd.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
                libc::close(rfd);
            }
            return Err(format!("child {pid} silent after {limit:?}; said {:?}", String::from_utf8_lossy(&text)));
        }
        // SAFETY: valid buffer.
        let r = unsafe { libc::read(rfd, buf.as_mut_ptr().cast(), buf.len()) };
        if r <= 0 {
            break;
        }
        text.extend_from_slice(&buf[..r as usize]);
    }
    // SAFETY: our fd and child.
    let mut st = 0;
    unsafe {
        libc::close(rfd);
        libc::waitpid(pid, &mut st, 0);
    }
    Ok((st, String::from_utf8_lossy(&text).into_owned()))
}

/// Replaces the process image with this program in `args` mode, stdout to `out_fd`.
fn exec_self(args: &[&str], out_fd: i32) -> i32 {
    let prog = std::ffi::CString::new("/proc/self/exe").unwrap_or_default();
    let mut cargs: Vec<std::ffi::CString> = vec![std::ffi::CString::new("spantrack-stress").unwrap_or_default()];
    cargs.extend(args.iter().map(|a| std::ffi::CString::new(*a).unwrap_or_default()));
    let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: valid C strings and a NULL-terminated argv.
    unsafe {
        libc::dup2(out_fd, 1);
        libc::execv(prog.as_ptr(), argv.as_ptr());
    }
    127
}

fn write_fd(fd: i32, s: &str) {
    // SAFETY: valid buffer.
    unsafe { libc::write(fd, s.as_ptr().cast(), s.len()) };
}

/// Waits for the process gauge to come back to `s0`'s and the relay directory of `pid` to
/// go; the stats then.
fn settle(s0: &Stats, pid: i32) -> (bool, bool, Stats) {
    let mut s1 = Stats::read().unwrap_or_else(|_| s0.clone());
    let procs = wait_until(Duration::from_secs(5), || {
        s1 = Stats::read().unwrap_or(s1.clone());
        s1.get("processes").ok() == s0.get("processes").ok()
    });
    let dir = crate::relay::Relay::dir_of(pid as u32);
    let gone = wait_until(Duration::from_secs(2), || !std::path::Path::new(&dir).exists());
    (procs, gone, s1)
}

fn expect_kv(r: &BTreeMap<String, String>, want: &[(&str, &str)]) -> Vec<String> {
    want.iter()
        .filter(|(k, v)| r.get(*k).map(String::as_str) != Some(*v))
        .map(|(k, v)| format!("{k}={} (expected {v})", r.get(*k).map(String::as_str).unwrap_or("?")))
        .collect()
}

pub fn run(rep: &mut Report) {
    if let Err(e) = run_inner(rep) {
        rep.check("forkexec: setup", Err(e));
    }
}

fn run_inner(rep: &mut Report) -> Result<(), String> {
    let _g = TunableGuard::save()?;
    sysfs::set(sysfs::THRESHOLD, "0")?;
    // Spans stay open for the whole run (parked, held): a run stretched past timeout_ns's
    // 60 s by a busy host (the debug kernel took 106 s) would see them expire.
    sysfs::set(sysfs::TIMEOUT, "86400000000000")?;
    let pid = sys::getpid();
    let control = Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY)?;
    let begin = Fd::open(uapi::PROC_BEGIN, libc::O_WRONLY)?;
    let end = Fd::open(uapi::PROC_END, libc::O_WRONLY)?;
    let (cfd, bfd, efd) = (control.raw(), begin.raw(), end.raw());

    // A: fork of a registered process with a span open.
    sys::ioctl_plain(cfd, uapi::IOCTL_REGISTER).map_err(|e| format!("REGISTER: {}", errno_name(e)))?;
    let mut relay = BulkReader::open(pid)?;
    let s0 = Stats::read()?;
    let s_line = key3(u64::from(pid), 1, 1).line();
    let rb = span_write(bfd, &s_line);
    let forked = fork_child(|w| {
        let mut bad = Vec::new();
        let info = sys::ioctl_info(cfd);
        if !matches!(info, Ok(i) if i.registered == 0) {
            bad.push(format!("INFO {info:?}, expected registered 0"));
        }
        let k = key3(u64::from(sys::getpid()), 2, 2).line();
        let chk = |bad: &mut Vec<String>, what: &str, got: i32, want: i32| {
            if got != want {
                bad.push(format!("{what}: {} expected {}", errno_or_ok(got), errno_or_ok(want)));
            }
        };
        chk(&mut bad, "begin through the inherited fd", span_write(bfd, &k), libc::EPERM);
        chk(&mut bad, "end of the parent's open span", span_write(efd, &s_line), libc::EPERM);
        chk(&mut bad, "UNREGISTER", ioctl0(cfd, uapi::IOCTL_UNREGISTER), libc::ENOENT);
        chk(&mut bad, "UNREGISTER_THREAD", ioctl0(cfd, uapi::IOCTL_UNREGISTER_THREAD), libc::ENOENT);
        chk(&mut bad, "REGISTER", ioctl0(cfd, uapi::IOCTL_REGISTER), 0);
        chk(&mut bad, "begin after REGISTER", span_write(bfd, &k), 0);
        raw_getpid();
        chk(&mut bad, "end after REGISTER", span_write(efd, &k), 0);
        match sys::ioctl_info(cfd) {
            Ok(i) if i.registered == 1 && i.records_written == 1 => {}
            other => bad.push(format!("INFO after REGISTER and a span: {other:?}")),
        }
        chk(&mut bad, "UNREGISTER", ioctl0(cfd, uapi::IOCTL_UNREGISTER), 0);
        write_fd(w, &if bad.is_empty() { "ok".to_string() } else { bad.join("; ") });
        0
    });
    let child_said = match forked {
        Ok((cpid, rfd)) => collect(cpid, rfd, Duration::from_secs(30)).map(|(st, t)| (cpid, st, t)),
        Err(e) => Err(e),
    };
    let re = span_write(efd, &s_line);
    let mut recs = Vec::new();
    let mut rng = Rng::new(1);
    let t0 = Instant::now();
    while recs.is_empty() && t0.elapsed() < Duration::from_secs(1) {
        relay.poll(0, &mut rng, |r| recs.push(r));
        sys::sleep_ms(5);
    }
    sys::sleep_ms(50);
    relay.poll(0, &mut rng, |r| recs.push(r));
    rep.check(
        "forkexec: the fork of a registered process is not tracked (EPERM through inherited fds, ENOENT to UNREGISTER) until it registers itself",
        match &child_said {
            Ok((_, st, t)) if *st == 0 && t == "ok" => Ok(()),
            Ok((_, st, t)) => Err(format!("child status {st:#x}: {t}")),
            Err(e) => Err(e.clone()),
        },
    );
    rep.check(
        "forkexec: the parent's span records its fork (clone returning the child's pid) and nothing of the child",
        (|| {
            if rb != 0 || re != 0 {
                return Err(format!("parent begin {} end {}", errno_or_ok(rb), errno_or_ok(re)));
            }
            let cpid = child_said.as_ref().map(|c| c.0).unwrap_or(-1);
            let k = crate::span::Key::parse(&s_line).ok_or("key")?;
            if recs.len() != 1 || recs[0].h.span_id != k.span_id || recs[0].h.tgid != pid {
                return Err(format!("{} records: {:?}", recs.len(), recs.iter().map(|r| (r.h.tgid, r.h.tid, r.h.n_entries)).collect::<Vec<_>>()));
            }
            let clone = recs[0].entries.iter().find(|e| e.nr == libc::SYS_clone as u32 || e.nr == libc::SYS_clone3 as u32);
            match clone {
                Some(e) if e.ret == i64::from(cpid) => Ok(()),
                other => Err(format!("no clone entry returning {cpid}: {other:?}; calls {:?}", recs[0].entries.iter().map(|e| (e.nr, e.ret)).collect::<Vec<_>>())),
            }
        })(),
    );
    let (procs_back, _, s1) = settle(&s0, -1);
    rep.check(
        "forkexec: the child's registration and span were counted and forgotten",
        (|| {
            if !procs_back {
                return Err(format!("processes {} (before {})", s1.get("processes")?, s0.get("processes")?));
            }
            s1.expect_deltas(
                &s0,
                &[
                    ("processes_registered", 1),
                    ("begins_untracked", 1),
                    ("ends_untracked", 1),
                    ("spans_begun", 2),
                    ("spans_ended", 2),
                    ("records_written", 2),
                ],
            )
        })(),
    );
    sys::ioctl_plain(cfd, uapi::IOCTL_UNREGISTER).map_err(|e| format!("UNREGISTER: {}", errno_name(e)))?;
    drop(relay);

    // B: an untracked fork execs; the new image registers.
    let s0 = Stats::read()?;
    let r = fork_child(|w| exec_self(&["child-exec-image", "-"], w))
        .and_then(|(cpid, rfd)| collect(cpid, rfd, Duration::from_secs(30)).map(|x| (cpid, x)));
    let (procs_back, gone, _) = settle(&s0, r.as_ref().map(|x| x.0).unwrap_or(-1));
    rep.check(
        "forkexec: an untracked fork that execs registers in its new image, its span gives an exact record, and it is forgotten at exit",
        match &r {
            Err(e) => Err(e.clone()),
            Ok((_, (st, text))) => match parse_result(text) {
                None => Err(format!("status {st:#x}, no result: {text:?}")),
                Some(kv) => {
                    let mut bad = expect_kv(
                        &kv,
                        &[("registered", "0"), ("register", "ok"), ("registered_after", "1"), ("begin", "ok"), ("end", "ok"), ("record", "exact"), ("rec_depth", "0")],
                    );
                    if !procs_back || !gone {
                        bad.push(format!("after exit: processes back {procs_back}, relay dir gone {gone}"));
                    }
                    if bad.is_empty() { Ok(()) } else { Err(bad.join(", ")) }
                }
            },
        },
    );

    // C and D: a registered process execs, from its main thread and from another thread.
    for from_thread in [false, true] {
        let what = if from_thread { "a non-main thread" } else { "its main thread" };
        let s0 = Stats::read()?;
        let r = fork_child(|w| {
            let Ok(c) = Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY) else { return 2 };
            if ioctl0(c.raw(), uapi::IOCTL_REGISTER) != 0 {
                return 3;
            }
            let me = u64::from(sys::getpid());
            let opened = Arc::new(AtomicU32::new(0));
            // Two threads with a span open each; the exec ends them.
            for t in 0..2u64 {
                let o = opened.clone();
                std::thread::spawn(move || {
                    if span_write(bfd, &key3(me, 10 + t, 1).line()) == 0 {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    loop {
                        sys::sleep_ms(100);
                    }
                });
            }
            let t0 = Instant::now();
            while opened.load(Ordering::SeqCst) < 2 && t0.elapsed() < Duration::from_secs(10) {
                sys::sleep_ms(1);
            }
            let x = key3(me, 20, 1);
            let xline = x.line();
            if span_write(bfd, &xline) != 0 {
                return 4;
            }
            let xs = String::from_utf8_lossy(&xline[..xline.len() - 1]).into_owned();
            if from_thread {
                let h = std::thread::spawn(move || exec_self(&["child-exec-image", &xs], w));
                let _ = h.join();
                5
            } else {
                exec_self(&["child-exec-image", &xs], w)
            }
        })
        .and_then(|(cpid, rfd)| collect(cpid, rfd, Duration::from_secs(30)).map(|x| (cpid, x)));
        let cpid = r.as_ref().map(|x| x.0).unwrap_or(-1);
        let (procs_back, gone, s1) = settle(&s0, cpid);
        let d = |n: &str| s1.delta(&s0, n).unwrap_or(-1);
        let kv = r.as_ref().ok().and_then(|(_, (_, t))| parse_result(t));
        fig!(
            "forkexec: exec from {what}: image says {}; after exit: processes {:+}, threads {:+}, open_spans {:+}, relay dir {}; spans abandoned +{} expired +{}",
            kv.as_ref().map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")).unwrap_or_else(|| format!("{r:?}")),
            d("processes"),
            d("threads"),
            d("open_spans"),
            if gone { "removed" } else { "STILL THERE" },
            d("spans_abandoned"),
            d("spans_expired")
        );
        let name = format!(
            "forkexec: a registered process that execs from {what}: the new image is still registered (REGISTER EALREADY), its spans work, the old image's 3 spans are abandoned"
        );
        rep.check(
            &name,
            match (&r, &kv) {
                (Err(e), _) => Err(e.clone()),
                (Ok((_, (st, t))), None) => Err(format!("status {st:#x}, no result: {t:?}")),
                (Ok(_), Some(kv)) => {
                    let mut bad = expect_kv(
                        kv,
                        &[("registered", "1"), ("register", "EALREADY"), ("begin", "ok"), ("end", "ok"), ("record", "exact"), ("old_end", "ENOENT")],
                    );
                    if d("spans_abandoned") != 3 {
                        bad.push(format!("spans_abandoned +{} for the 3 spans of the old image (expected +3)", d("spans_abandoned")));
                    }
                    if bad.is_empty() { Ok(()) } else { Err(bad.join(", ")) }
                }
            },
        );
        rep.check(
            &format!("forkexec: a registered process that exec'd from {what} is forgotten when it exits (process slot, threads, spans, relay directory)"),
            (|| {
                let mut bad = Vec::new();
                if !procs_back {
                    bad.push(format!("processes {:+} after the exit", d("processes")));
                }
                if d("threads") != 0 {
                    bad.push(format!("threads {:+}", d("threads")));
                }
                if d("open_spans") != 0 {
                    bad.push(format!("open_spans {:+}", d("open_spans")));
                }
                if !gone {
                    bad.push(format!("{} still exists", crate::relay::Relay::dir_of(cpid as u32)));
                }
                if bad.is_empty() { Ok(()) } else { Err(bad.join(", ")) }
            })(),
        );
    }
    Ok(())
}

fn errno_or_ok(e: i32) -> String {
    if e == 0 {
        "ok".into()
    } else {
        errno_name(e)
    }
}
