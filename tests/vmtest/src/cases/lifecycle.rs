//! Registration, poll, stats consistency over the run, and UNREGISTER.

use super::{expect_errno, wait_until, Failures, MS};
use crate::checks::{check_record, ensure, ensure_eq, Expect};
use crate::relay::{cpu_files, Relay};
use crate::span::{self, new_key, run_ops, run_ops_open, Op};
use crate::sys::{self, errno_name, ioctl_info, ioctl_plain, poll_in, Fd};
use crate::sysfs::{self, Stats, TunableGuard};
use crate::Ctx;
use spantrack_uapi as uapi;
use std::path::Path;
use std::time::{Duration, Instant};

/// Number of possible CPUs (`/sys/devices/system/cpu/possible`, e.g. "0-1").
fn possible_cpus() -> Result<u32, String> {
    let p = "/sys/devices/system/cpu/possible";
    let s = std::fs::read_to_string(p).map_err(|e| format!("read {p}: {e}"))?;
    let mut n = 0;
    for part in s.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (
            a.parse().map_err(|_| format!("{p}: {s:?}"))?,
            b.parse().map_err(|_| format!("{p}: {s:?}"))?,
        );
        n += b - a + 1;
    }
    Ok(n)
}

/// Case 1. INFO before/after REGISTER, begin before REGISTER, REGISTER twice (also from
/// another thread), the relay directory and its files; opens the relay reader.
pub fn registration(ctx: &mut Ctx) -> Result<(), String> {
    let fd = ctx.control.raw();
    let dir = Relay::dir_of(ctx.pid);
    let info0 = ioctl_info(fd).map_err(|e| format!("INFO before REGISTER: {}", errno_name(e)))?;
    ensure_eq!(info0.abi_version, uapi::ABI_VERSION, "INFO abi_version");
    ensure_eq!(info0.registered, 0, "INFO registered before REGISTER");
    ensure!(!Path::new(&dir).exists(), "{dir} exists before REGISTER");

    // Not registered: begin is refused (and nothing is left open).
    let k = new_key();
    let r = span::write_line(ctx.fds.begin, &k.line());
    if r.is_ok() {
        span::end_all(ctx.fds, &[k]);
    }
    expect_errno("begin before REGISTER", r, uapi::ERR_UNTRACKED)?;
    expect_errno(
        "UNREGISTER before REGISTER",
        ioctl_plain(fd, uapi::IOCTL_UNREGISTER),
        libc::ENOENT,
    )?;

    ioctl_plain(fd, uapi::IOCTL_REGISTER).map_err(|e| format!("REGISTER: {}", errno_name(e)))?;
    // The reader first, so that the later cases can run even if a check below fails.
    let relay_err = match Relay::open(ctx.pid) {
        Ok(r) => {
            ctx.relay = Some(r);
            None
        }
        Err(e) => Some(e),
    };
    let info = ioctl_info(fd).map_err(|e| format!("INFO after REGISTER: {}", errno_name(e)))?;
    ensure_eq!(info.registered, 1, "INFO registered after REGISTER");
    ensure_eq!(info.abi_version, uapi::ABI_VERSION, "INFO abi_version after REGISTER");
    ensure_eq!(
        (info.records_written, info.records_dropped),
        (0, 0),
        "INFO records written/dropped after REGISTER"
    );
    ensure!(Path::new(&dir).is_dir(), "relay directory {dir} missing after REGISTER");
    let files = cpu_files(&dir)?;
    ensure_eq!(
        info.relay_files as usize,
        files.len(),
        "INFO relay_files vs cpu* files in {dir}"
    );
    let want: Vec<u32> = (0..info.relay_files).collect();
    let have: Vec<u32> = files.iter().map(|f| f.0).collect();
    ensure_eq!(have, want, "cpu file numbers in {dir}");
    ensure_eq!(info.relay_files, possible_cpus()?, "INFO relay_files vs possible CPUs");
    ensure!(
        info.subbuf_size as usize >= uapi::RECORD_HEADER_SIZE && info.n_subbufs >= 1,
        "INFO subbuf_size {} / n_subbufs {} cannot hold a record",
        info.subbuf_size,
        info.n_subbufs
    );
    let max_calls: u32 = sysfs::read(sysfs::MAX_CALLS)?
        .parse()
        .map_err(|e| format!("max_calls: {e}"))?;
    ensure!(
        info.max_calls_limit >= max_calls,
        "INFO max_calls_limit {} below the current max_calls {max_calls}",
        info.max_calls_limit
    );

    expect_errno("second REGISTER", ioctl_plain(fd, uapi::IOCTL_REGISTER), libc::EALREADY)?;
    let other = std::thread::scope(|s| s.spawn(|| ioctl_plain(fd, uapi::IOCTL_REGISTER)).join())
        .map_err(|_| "thread panicked".to_string())?;
    expect_errno(
        "REGISTER from another thread of the registered process",
        other,
        libc::EALREADY,
    )?;

    if let Some(e) = relay_err {
        return Err(format!("relay reader: {e}"));
    }
    ctx.relay()?.expect_none()
}

/// Case 13. poll() on a control fd: readable exactly while the process has unread records
/// (level-triggered: derived from the relay buffers, no state per descriptor), a blocked
/// poll is woken by a slow span's record, two threads polling one descriptor both see it,
/// level-triggered epoll reports it until it is read, and a poll times out when nothing is
/// unread.
pub fn poll(ctx: &mut Ctx) -> Result<(), String> {
    let _g = TunableGuard::save()?;
    sysfs::set(sysfs::THRESHOLD, "1000000")?;
    let fds = ctx.fds;
    let pid = ctx.pid;
    let main_tid = ctx.main_tid;
    let pfd = Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY)?;
    let raw = pfd.raw();
    let poll0 = || poll_in(raw, 0).map_err(|e| format!("poll: {}", errno_name(e)));
    // Records of the earlier cases are read (kept for them) first: then nothing is unread.
    ctx.relay()?.read_available();
    ensure_eq!(poll0()?, 0, "revents of poll(0) with nothing unread");
    let t = Instant::now();
    let r = poll_in(raw, 200).map_err(|e| format!("poll: {}", errno_name(e)))?;
    let waited = t.elapsed();
    ensure_eq!(r, 0, "revents of poll(200 ms) with nothing unread");
    ensure!(
        waited >= Duration::from_millis(150),
        "poll(200 ms) returned after {waited:?}"
    );
    let ep = Epoll::new(raw)?;
    ensure_eq!(ep.wait(0)?, 0, "level-triggered epoll_wait(0) with nothing unread");

    // A poll blocked in another thread wakes when a slow span's record is written.
    let k = new_key();
    let ops = [Op::begin(&k), Op::Sleep(5 * MS), Op::end(&k)];
    let (polled, run) = std::thread::scope(|s| {
        let h = s.spawn(move || {
            let t = Instant::now();
            let r = poll_in(raw, 5000);
            (r, t.elapsed())
        });
        sys::sleep_ms(100);
        let run = run_ops(fds, &ops);
        (h.join(), run)
    });
    let (polled, elapsed) = polled.map_err(|_| "poller panicked".to_string())?;
    run.check(&ops, |_, _| Some(0))?;
    let revents = polled.map_err(|e| format!("blocking poll: {}", errno_name(e)))?;
    ensure!(
        revents & libc::POLLIN != 0,
        "blocking poll returned revents {revents:#x} after {elapsed:?}, expected POLLIN"
    );
    ensure!(
        elapsed >= Duration::from_millis(80) && elapsed < Duration::from_millis(4000),
        "blocking poll returned POLLIN after {elapsed:?}: expected it to wait for the span (~100 ms)"
    );
    // Unread, so still readable: for this descriptor again, for two threads polling it at
    // once, and for level-triggered epoll, twice.
    ensure!(poll0()? & libc::POLLIN != 0, "poll(0) again before the record is read: not readable");
    let both: Vec<Result<i16, i32>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2).map(|_| s.spawn(move || poll_in(raw, 2000))).collect();
        hs.into_iter().map(|h| h.join().unwrap_or(Err(0))).collect()
    });
    ensure!(
        both.iter().all(|r| matches!(r, Ok(v) if v & libc::POLLIN != 0)),
        "two threads polling one descriptor with a record unread: {both:?} (expected POLLIN for both)"
    );
    ensure_eq!(ep.wait(0)?, 1, "level-triggered epoll_wait(0) with a record unread");
    ensure_eq!(ep.wait(0)?, 1, "level-triggered epoll_wait(0) again, the record still unread");
    let relay = ctx.relay()?;
    let recs = relay.wait_for(&[k])?;
    check_record(
        &recs[0],
        &Expect {
            key: &k,
            tid: main_tid,
            tgid: pid,
            depth: 0,
            flags: 0,
            calls: &[(sys::NR_NANOSLEEP, Some(0))],
            total_calls: 1,
            run: Some(&run),
        },
    )?;
    // Read: nothing unread now.
    ensure_eq!(poll0()?, 0, "revents of poll(0) after the record was read");
    ensure_eq!(ep.wait(0)?, 0, "level-triggered epoll_wait(0) after the record was read");
    // A fast span (no record) is nothing new either.
    let k2 = new_key();
    let ops2 = [Op::begin(&k2), Op::Getpid, Op::end(&k2)];
    let run2 = run_ops(fds, &ops2);
    run2.check(&ops2, |_, _| Some(i64::from(pid)))?;
    if run2.t1_mono - run2.t0_mono < 900_000 {
        relay.expect_none()?;
        let r = poll_in(raw, 100).map_err(|e| format!("poll: {}", errno_name(e)))?;
        ensure_eq!(r, 0, "revents of poll(100 ms) after a fast span");
    } else {
        // Too slow a VM to tell: accept its record if it really was slow.
        if let Some(rec) = relay.take_optional(&k2)? {
            ensure!(
                rec.duration() >= 1_000_000,
                "record of a {} ns span: {}",
                rec.duration(),
                rec.describe()
            );
        }
        ensure_eq!(poll0()?, 0, "revents of poll(0) after every record was read");
    }
    Ok(())
}

/// A level-triggered epoll instance watching one descriptor for EPOLLIN.
struct Epoll(Fd);

impl Epoll {
    fn new(watched: i32) -> Result<Epoll, String> {
        // SAFETY: plain system call.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(format!("epoll_create1: {}", errno_name(sys::errno())));
        }
        let ep = Fd::from_raw(ep);
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 1 };
        // SAFETY: `ev` is a valid event for the duration of the call.
        if unsafe { libc::epoll_ctl(ep.raw(), libc::EPOLL_CTL_ADD, watched, &mut ev) } < 0 {
            return Err(format!("epoll_ctl ADD: {}", errno_name(sys::errno())));
        }
        Ok(Epoll(ep))
    }

    /// Number of ready descriptors after at most `timeout_ms`.
    fn wait(&self, timeout_ms: i32) -> Result<i32, String> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: room for one event.
        let n = unsafe { libc::epoll_wait(self.0.raw(), &mut ev, 1, timeout_ms) };
        if n < 0 {
            return Err(format!("epoll_wait: {}", errno_name(sys::errno())));
        }
        Ok(n)
    }
}

/// Case 14. Over the whole run: records written + dropped == slow spans; the records this
/// process read == records written (INFO and stats); begun == ended + expired + abandoned.
pub fn stats_consistency(ctx: &mut Ctx) -> Result<(), String> {
    let s0 = ctx.stats_at_start.clone().ok_or("stats could not be read at start")?;
    let s1 = Stats::read()?;
    let info = ioctl_info(ctx.control.raw()).map_err(|e| format!("INFO: {}", errno_name(e)))?;
    let read_total = ctx.relay()?.total_records;
    let d = |n: &str| s1.delta(&s0, n);
    let written = d(sysfs::RECORDS_WRITTEN)?;
    let dropped = d(sysfs::RECORDS_DROPPED)?;
    let slow = d(sysfs::SPANS_SLOW)?;
    let begun = d(sysfs::SPANS_BEGUN)?;
    let ended = d(sysfs::SPANS_ENDED)?;
    let expired = d(sysfs::SPANS_EXPIRED)?;
    let abandoned = d(sysfs::SPANS_ABANDONED)?;
    let dump = || {
        format!(
            "stats at start: [{}] now: [{}]",
            sysfs::one_line(&s0.text),
            sysfs::one_line(&s1.text)
        )
    };
    let mut f = Failures::default();
    if written + dropped != slow {
        f.push(format!(
            "records_written +{written} + records_dropped +{dropped} != spans_slow +{slow}"
        ));
    }
    if dropped != 0 || info.records_dropped != 0 {
        f.push(format!(
            "records dropped: stats +{dropped}, INFO {}",
            info.records_dropped
        ));
    }
    if info.records_written != read_total || written != i128::from(read_total) {
        f.push(format!(
            "records read from relay {read_total}, INFO records_written {}, stats records_written +{written}",
            info.records_written
        ));
    }
    if begun != ended + expired + abandoned {
        f.push(format!(
            "spans_begun +{begun} != spans_ended +{ended} + spans_expired +{expired} + spans_abandoned +{abandoned}"
        ));
    }
    if let (Some((n, a)), Some((_, b))) = (s0.open_gauge(), s1.open_gauge()) {
        if a != b {
            f.push(format!("{n} {b} now, {a} at start"));
        }
    }
    f.into_result().map_err(|e| format!("{e}; {}", dump()))
}

/// Case 15. UNREGISTER with a span open: the span is dropped (no record), the relay
/// directory goes away, begin is refused, a second UNREGISTER is ENOENT.
pub fn unregister(ctx: &mut Ctx) -> Result<(), String> {
    let _g = TunableGuard::save()?;
    sysfs::set(sysfs::THRESHOLD, "1000000")?;
    let fd = ctx.control.raw();
    let dir = Relay::dir_of(ctx.pid);
    let s0 = Stats::read()?;
    let k = new_key();
    let ops = [Op::begin(&k), Op::Getpid, Op::Sleep(2 * MS)];
    let run = run_ops_open(ctx.fds, &ops);
    if let Err(e) = run.check(&ops, |i, _| Some(if i == 1 { i64::from(ctx.pid) } else { 0 })) {
        span::end_all(ctx.fds, &[k]);
        return Err(e);
    }
    // Close the relay files first: once the module removes them, debugfs fails their reads
    // (EIO). That no record is written for the dropped span is checked on the stats.
    let mut relay = ctx.relay.take().ok_or("no relay reader")?;
    let mut f = Failures::default();
    f.check(relay.expect_none());
    drop(relay);
    // UNREGISTER itself is a call of the open span's thread.
    let r = ioctl_plain(fd, uapi::IOCTL_UNREGISTER);
    if let Err(e) = r {
        span::end_all(ctx.fds, &[k]);
        return Err(format!("UNREGISTER: {}", errno_name(e)));
    }
    match ioctl_info(fd) {
        Ok(info) => {
            if info.registered != 0 {
                f.push(format!("INFO registered {} after UNREGISTER", info.registered));
            }
        }
        Err(e) => f.push(format!("INFO after UNREGISTER: {}", errno_name(e))),
    }
    if !wait_until(Duration::from_secs(1), || !Path::new(&dir).exists()) {
        f.push(format!("{dir} still exists 1 s after UNREGISTER"));
    }
    let k2 = new_key();
    let r = span::write_line(ctx.fds.begin, &k2.line());
    if r.is_ok() {
        span::end_all(ctx.fds, &[k2]);
    }
    f.check(expect_errno("begin after UNREGISTER", r, uapi::ERR_UNTRACKED));
    // The dropped span cannot be ended: the thread is untracked (EPERM) or, if the module
    // checks the span first, it is unknown (ENOENT).
    match span::write_line(ctx.fds.end, &k.line()) {
        Err(e) if e == uapi::ERR_UNTRACKED || e == uapi::ERR_UNKNOWN_SPAN => {}
        other => f.push(format!(
            "end of the dropped span after UNREGISTER: {other:?}, expected EPERM or ENOENT"
        )),
    }
    f.check(expect_errno(
        "second UNREGISTER",
        ioctl_plain(fd, uapi::IOCTL_UNREGISTER),
        libc::ENOENT,
    ));
    f.check(expect_errno(
        "UNREGISTER_THREAD after UNREGISTER",
        ioctl_plain(fd, uapi::IOCTL_UNREGISTER_THREAD),
        libc::ENOENT,
    ));
    let s1 = Stats::read()?;
    f.check(s1.expect_deltas(
        &s0,
        &[
            (sysfs::SPANS_BEGUN, 1),
            (sysfs::SPANS_ENDED, 0),
            (sysfs::SPANS_SLOW, 0),
            (sysfs::RECORDS_WRITTEN, 0),
            (sysfs::SPANS_EXPIRED, 0),
        ],
    ));
    f.into_result()
}
