//! Refused begin/end writes, spans dropped by thread exit and by expiry.

use super::{expect_errno, wait_stat, Failures, MS};
use crate::checks::ensure;
use crate::span::{self, new_key, run_ops, run_ops_open, Fds, Key, Op, LINE_LEN};
use crate::sys::{self, errno_name, ioctl_info, ioctl_plain};
use crate::sysfs::{self, Stats, TunableGuard};
use crate::Ctx;
use spantrack_uapi as uapi;

/// Case 6. Every refused write (malformed line, unknown span, duplicate, too deep, untracked
/// thread) returns its errno and changes no span counter; accepted variants (no newline,
/// upper-case hex) work.
pub fn span_errors(ctx: &mut Ctx) -> Result<(), String> {
    let _g = TunableGuard::save()?;
    // No span of this case may produce a record, whatever the VM's speed.
    sysfs::set(sysfs::THRESHOLD, "10000000000")?;
    let fds = ctx.fds;
    let s0 = Stats::read()?;
    let mut f = Failures::default();
    let mut open: Vec<Key> = Vec::new();
    let mut begun: i128 = 0;
    let mut ended: i128 = 0;
    // Span counters (and the open-spans gauge, if the module has one) after each step.
    let counters = |begun: i128, ended: i128, when: &str| -> Result<(), String> {
        let s = Stats::read()?;
        s.expect_deltas(
            &s0,
            &[
                (sysfs::SPANS_BEGUN, begun),
                (sysfs::SPANS_ENDED, ended),
                (sysfs::SPANS_SLOW, 0),
            ],
        )
        .map_err(|e| format!("after {when}: {e}"))?;
        if let (Some((name, was)), Some((_, now))) = (s0.open_gauge(), s.open_gauge()) {
            let want = i128::from(was) + begun - ended;
            ensure!(
                i128::from(now) == want,
                "after {when}: {name} is {now}, expected {want}"
            );
        }
        Ok(())
    };

    // Malformed lines, on begin and on end.
    let line = new_key().line();
    let with = |pos: usize, b: u8| {
        let mut l = line.to_vec();
        l[pos] = b;
        l
    };
    let cat = |a: &[u8], b: &[u8]| [a, b].concat();
    let zero_trace = cat(&[b'0'; 32], &line[32..]);
    let zero_span = cat(&line[..33], b"0000000000000000\n");
    let zero_both = b"00000000000000000000000000000000 0000000000000000\n".to_vec();
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("\"abc\\n\"", b"abc\n".to_vec()),
        ("48 characters", line[..48].to_vec()),
        ("bad hex in the trace id", with(5, b'g')),
        ("bad hex in the span id", with(40, b'z')),
        ("tab separator", with(32, b'\t')),
        ("no separator", cat(&line[..32], &line[33..])),
        ("all-zero trace id", zero_trace),
        ("all-zero span id", zero_span),
        ("all-zero ids", zero_both),
        ("extra byte after the newline", cat(&line, b"x")),
        ("two newlines", cat(&line, b"\n")),
        ("extra byte before the newline", cat(&line[..49], b" \n")),
        ("CRLF", cat(&line[..49], b"\r\n")),
        ("leading space", cat(b" ", &line[..49])),
        ("NUL after the newline", cat(&line, b"\0")),
        ("100 bytes", vec![b'a'; 100]),
    ];
    for (what, bytes) in &malformed {
        for (fd, which) in [(fds.begin, "begin"), (fds.end, "end")] {
            let r = span::write_line(fd, bytes);
            if r.is_ok() && which == "begin" {
                // Accepted by mistake: end it again (as the module parsed it).
                if let Some(k) = Key::parse(bytes) {
                    span::end_all(fds, &[k]);
                }
            }
            f.check(expect_errno(&format!("{which} with {what}"), r, uapi::ERR_MALFORMED));
        }
    }
    f.check(counters(0, 0, "the malformed lines"));

    // The span files are streams, without a file position: lseek and pwrite give ESPIPE
    // and begin nothing. (A regular file's writes take its f_pos_lock, a mutex, whenever a
    // multi-threaded process shares the descriptor: every thread's begin and end would
    // queue on it. Issue 16.)
    for (fd, which) in [(fds.begin, "begin"), (fds.end, "end")] {
        // SAFETY: plain system call on our own descriptor.
        let r = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
        let e = std::io::Error::last_os_error().raw_os_error();
        if r != -1 || e != Some(libc::ESPIPE) {
            f.push(format!("lseek on {which}: {r} (errno {e:?}), expected ESPIPE: not a stream"));
        }
        let l = new_key().line();
        // SAFETY: `l` is a valid buffer of `l.len()` bytes.
        let r = unsafe { libc::pwrite(fd, l.as_ptr().cast(), l.len(), 0) };
        let e = std::io::Error::last_os_error().raw_os_error();
        if r != -1 || e != Some(libc::ESPIPE) {
            f.push(format!("pwrite on {which}: {r} (errno {e:?}), expected ESPIPE"));
        }
    }
    f.check(counters(0, 0, "lseek and pwrite"));

    // Accepted forms: no newline; upper-case hex (the same span as its lower-case form).
    let k = new_key();
    match span::write_line(fds.begin, &k.line()[..LINE_LEN - 1]) {
        Ok(n) if n == LINE_LEN - 1 => {
            begun += 1;
            match span::write_line(fds.end, &k.line()[..LINE_LEN - 1]) {
                Ok(_) => ended += 1,
                Err(e) => f.push(format!("end without newline: {}", errno_name(e))),
            }
        }
        other => f.push(format!("begin without newline: {other:?}, expected {}", LINE_LEN - 1)),
    }
    let k = new_key();
    match span::write_line(fds.begin, &k.line().to_ascii_uppercase()) {
        Ok(_) => {
            begun += 1;
            match span::write_line(fds.end, &k.line()) {
                Ok(_) => ended += 1,
                Err(e) => {
                    f.push(format!("lower-case end of an upper-case begin: {}", errno_name(e)));
                    span::end_all(fds, &[k]);
                }
            }
        }
        Err(e) => f.push(format!("begin in upper-case hex: {}", errno_name(e))),
    }
    f.check(counters(begun, ended, "the accepted forms"));

    // End of a span never begun.
    f.check(expect_errno(
        "end of an unknown span",
        span::write_line(fds.end, &new_key().line()),
        uapi::ERR_UNKNOWN_SPAN,
    ));
    f.check(counters(begun, ended, "end of an unknown span"));

    // Duplicate begin.
    let k = new_key();
    if span::write_line(fds.begin, &k.line()).is_ok() {
        begun += 1;
        f.check(expect_errno(
            "second begin of an open span",
            span::write_line(fds.begin, &k.line()),
            uapi::ERR_DUPLICATE,
        ));
        f.check(counters(begun, ended, "a duplicate begin"));
        match span::write_line(fds.end, &k.line()) {
            Ok(_) => ended += 1,
            Err(e) => f.push(format!("end after a duplicate begin: {}", errno_name(e))),
        }
        f.check(expect_errno(
            "second end",
            span::write_line(fds.end, &k.line()),
            uapi::ERR_UNKNOWN_SPAN,
        ));
    } else {
        f.push("begin for the duplicate test failed".into());
    }
    f.check(counters(begun, ended, "the duplicate test"));

    // Nesting: MAX_DEPTH spans open, one more is refused.
    let s_deep = Stats::read()?;
    for i in 0..uapi::MAX_DEPTH {
        let k = new_key();
        match span::write_line(fds.begin, &k.line()) {
            Ok(_) => {
                begun += 1;
                open.push(k);
            }
            Err(e) => {
                f.push(format!("nested begin #{} refused: {}", i + 1, errno_name(e)));
                break;
            }
        }
    }
    let extra = new_key();
    let r = span::write_line(fds.begin, &extra.line());
    if r.is_ok() {
        open.push(extra);
        begun += 1;
    }
    f.check(expect_errno(
        &format!("begin #{} (nesting)", uapi::MAX_DEPTH + 1),
        r,
        uapi::ERR_TOO_DEEP,
    ));
    f.check(counters(begun, ended, "the refused deep begin"));
    // A counter for refused deep begins, if the module names one.
    if let Ok(s) = Stats::read() {
        for name in s.map.keys().filter(|n| n.contains("deep")) {
            if let Ok(d) = s.delta(&s_deep, name) {
                if d != 1 {
                    f.push(format!("{name} changed by {d} for one refused deep begin"));
                }
            }
        }
    }
    while let Some(k) = open.pop() {
        match span::write_line(fds.end, &k.line()) {
            Ok(_) => ended += 1,
            Err(e) => f.push(format!(
                "end of nested span {} (depth {}): {}",
                k.short(),
                open.len(),
                errno_name(e)
            )),
        }
    }
    f.check(expect_errno(
        "end of the refused deep span",
        span::write_line(fds.end, &extra.line()),
        uapi::ERR_UNKNOWN_SPAN,
    ));
    f.check(counters(begun, ended, "the nesting test"));

    // A thread that stopped its own tracking.
    let control = ctx.control.raw();
    let thread = std::thread::scope(|s| {
        s.spawn(|| {
            let unreg = ioctl_plain(control, uapi::IOCTL_UNREGISTER_THREAD);
            let k = new_key();
            let begin = span::write_line(fds.begin, &k.line());
            if begin.is_ok() {
                span::end_all(fds, &[k]);
            }
            let again = ioctl_plain(control, uapi::IOCTL_UNREGISTER_THREAD);
            let info = ioctl_info(control);
            (unreg, begin, again, info)
        })
        .join()
    });
    match thread {
        Ok((unreg, begin, again, info)) => {
            if let Err(e) = unreg {
                f.push(format!("UNREGISTER_THREAD: {}", errno_name(e)));
            }
            f.check(expect_errno(
                "begin from an unregistered thread",
                begin,
                uapi::ERR_UNTRACKED,
            ));
            f.check(expect_errno("second UNREGISTER_THREAD", again, libc::ENOENT));
            match info {
                Ok(i) if i.registered == 1 => {}
                other => f.push(format!(
                    "INFO from the unregistered thread: {other:?}, expected registered 1"
                )),
            }
        }
        Err(_) => f.push("unregistering thread panicked".into()),
    }
    // The other threads stay tracked.
    let k = new_key();
    let ops = [Op::begin(&k), Op::end(&k)];
    let run = run_ops(fds, &ops);
    match run.check(&ops, |_, _| Some(0)) {
        Ok(()) => {
            begun += 1;
            ended += 1;
        }
        Err(e) => {
            span::end_all(fds, &[k]);
            f.push(format!("main thread after another's UNREGISTER_THREAD: {e}"));
        }
    }
    f.check(Stats::read()?.expect_deltas(
        &s0,
        &[
            (sysfs::SPANS_BEGUN, begun),
            (sysfs::SPANS_ENDED, ended),
            (sysfs::SPANS_SLOW, 0),
            (sysfs::SPANS_EXPIRED, 0),
            (sysfs::SPANS_ABANDONED, 0),
            (sysfs::RECORDS_WRITTEN, 0),
        ],
    ));
    f.check(ctx.relay()?.expect_none());
    f.into_result()
}

/// Case 7. A thread exits with an open (slow) span: abandoned, no record, end gives ENOENT.
pub fn thread_exit(ctx: &mut Ctx) -> Result<(), String> {
    let _g = TunableGuard::save()?;
    sysfs::set(sysfs::THRESHOLD, "1000000")?;
    let fds: Fds = ctx.fds;
    let pid = i64::from(ctx.pid);
    let s0 = Stats::read()?;
    let k = new_key();
    let ops = [Op::begin(&k), Op::Getpid, Op::Sleep(2 * MS)];
    let run = std::thread::spawn(move || run_ops_open(fds, &ops))
        .join()
        .map_err(|_| "thread panicked".to_string())?;
    if let Err(e) = run.check(&ops, |i, _| Some(if i == 1 { pid } else { 0 })) {
        span::end_all(fds, &[k]);
        return Err(e);
    }
    let s1 = wait_stat(&s0, sysfs::SPANS_ABANDONED, 1)?;
    let mut f = Failures::default();
    f.check(expect_errno(
        "end of the exited thread's span",
        span::write_line(fds.end, &k.line()),
        uapi::ERR_UNKNOWN_SPAN,
    ));
    f.check(ctx.relay()?.expect_none());
    f.check(s1.expect_deltas(
        &s0,
        &[
            (sysfs::SPANS_BEGUN, 1),
            (sysfs::SPANS_ABANDONED, 1),
            (sysfs::SPANS_ENDED, 0),
            (sysfs::SPANS_SLOW, 0),
            (sysfs::SPANS_EXPIRED, 0),
            (sysfs::RECORDS_WRITTEN, 0),
        ],
    ));
    f.into_result()
}

/// Case 8. timeout_ns 200 ms: a span still open after 600 ms (its thread asleep inside it)
/// is expired: no record, end gives ENOENT.
pub fn expiry(ctx: &mut Ctx) -> Result<(), String> {
    let _g = TunableGuard::save()?;
    sysfs::set(sysfs::THRESHOLD, "1000000")?;
    sysfs::set(sysfs::TIMEOUT, "200000000")?;
    let s0 = Stats::read()?;
    let k = new_key();
    let ops = [Op::begin(&k), Op::Sleep(600 * MS), Op::end(&k)];
    let run = run_ops(ctx.fds, &ops);
    ensure!(
        run.rets[0] == 0 && run.rets[1] == 0,
        "begin / nanosleep returned {} / {}",
        sys::ret_name(run.rets[0]),
        sys::ret_name(run.rets[1])
    );
    let mut f = Failures::default();
    if run.rets[2] != -i64::from(uapi::ERR_UNKNOWN_SPAN) {
        f.push(format!(
            "end after 600 ms with timeout_ns 200 ms returned {}, expected ENOENT (span not expired)",
            if run.rets[2] == 0 {
                "ok".into()
            } else {
                sys::ret_name(run.rets[2])
            }
        ));
    }
    let s1 = wait_stat(&s0, sysfs::SPANS_EXPIRED, 1)?;
    f.check(ctx.relay()?.expect_none());
    f.check(s1.expect_deltas(
        &s0,
        &[
            (sysfs::SPANS_BEGUN, 1),
            (sysfs::SPANS_EXPIRED, 1),
            (sysfs::SPANS_ENDED, 0),
            (sysfs::SPANS_SLOW, 0),
            (sysfs::SPANS_ABANDONED, 0),
            (sysfs::RECORDS_WRITTEN, 0),
        ],
    ));
    f.into_result()
}
