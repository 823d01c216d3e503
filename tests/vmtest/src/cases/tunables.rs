//! The tunables: threshold, max_calls, filter, and refused values.

use super::{Failures, MS};
use crate::checks::{check_record, ensure, entry_at_least, Expect};
use crate::span::{self, new_key, run_ops, Op};
use crate::sys::{errno_name, ioctl_info, NR_GETPID, NR_NANOSLEEP};
use crate::sysfs::{self, Stats, TunableGuard};
use crate::Ctx;
use spantrack_uapi as uapi;

/// Runs `begin; ops...; end` on the main thread; on a failed op ends the span and fails.
fn run_span(ctx: &Ctx, k: &span::Key, inner: &[Op]) -> Result<span::Run, String> {
    let mut ops = vec![Op::begin(k)];
    ops.extend_from_slice(inner);
    ops.push(Op::end(k));
    let pid = i64::from(ctx.pid);
    let run = run_ops(ctx.fds, &ops);
    if let Err(e) = run.check(&ops, |_, op| Some(if matches!(op, Op::Getpid) { pid } else { 0 })) {
        span::end_all(ctx.fds, &[*k]);
        return Err(e);
    }
    Ok(run)
}

/// Case 9. The same 5 ms span: no record with threshold 1 s, a record with 1 ms.
pub fn threshold(ctx: &mut Ctx) -> Result<(), String> {
    let _g = TunableGuard::save()?;
    sysfs::set(sysfs::THRESHOLD, "1000000000")?;
    let s0 = Stats::read()?;
    let k1 = new_key();
    run_span(ctx, &k1, &[Op::Sleep(5 * MS)])?;
    ctx.relay()?.expect_none().map_err(|e| format!("threshold 1 s: {e}"))?;
    Stats::read()?
        .expect_deltas(&s0, &[(sysfs::SPANS_ENDED, 1), (sysfs::SPANS_SLOW, 0)])
        .map_err(|e| format!("threshold 1 s: {e}"))?;
    sysfs::set(sysfs::THRESHOLD, "1000000")?;
    let k2 = new_key();
    let run = run_span(ctx, &k2, &[Op::Sleep(5 * MS)])?;
    let rec = ctx.relay()?.wait_for(&[k2])?.remove(0);
    check_record(
        &rec,
        &Expect {
            key: &k2,
            tid: ctx.main_tid,
            tgid: ctx.pid,
            depth: 0,
            flags: 0,
            calls: &[(NR_NANOSLEEP, Some(0))],
            total_calls: 1,
            run: Some(&run),
        },
    )?;
    entry_at_least(&rec, 0, 5 * MS)?;
    Stats::read()?.expect_deltas(
        &s0,
        &[
            (sysfs::SPANS_BEGUN, 2),
            (sysfs::SPANS_ENDED, 2),
            (sysfs::SPANS_SLOW, 1),
            (sysfs::RECORDS_WRITTEN, 1),
        ],
    )
}

/// Case 10. max_calls 10, 50 getpids + a 2 ms nanosleep: 10 itemised, 41 counted only.
pub fn max_calls(ctx: &mut Ctx) -> Result<(), String> {
    let _g = TunableGuard::save()?;
    sysfs::set(sysfs::THRESHOLD, "1000000")?;
    sysfs::set(sysfs::MAX_CALLS, "10")?;
    let k = new_key();
    let mut inner = vec![Op::Getpid; 50];
    inner.push(Op::Sleep(2 * MS));
    let run = run_span(ctx, &k, &inner)?;
    let rec = ctx.relay()?.wait_for(&[k])?.remove(0);
    let calls = [(NR_GETPID, Some(i64::from(ctx.pid))); 10];
    check_record(
        &rec,
        &Expect {
            key: &k,
            tid: ctx.main_tid,
            tgid: ctx.pid,
            depth: 0,
            flags: uapi::REC_CALLS_TRUNCATED,
            calls: &calls,
            total_calls: 51,
            run: Some(&run),
        },
    )?;
    ensure!(
        rec.h.unitemised_calls == 41 && rec.h.unitemised_ns >= 2 * MS,
        "unitemised {} calls / {} ns, expected 41 calls and >= 2 ms (the nanosleep); {}",
        rec.h.unitemised_calls,
        rec.h.unitemised_ns,
        rec.describe()
    );
    Ok(())
}

/// Case 11. filter "deny getpid": only the nanosleep is itemised or counted.
pub fn filter(ctx: &mut Ctx) -> Result<(), String> {
    let _g = TunableGuard::save()?;
    sysfs::set(sysfs::THRESHOLD, "1000000")?;
    sysfs::set(sysfs::FILTER, "deny getpid")?;
    let k = new_key();
    let res = run_span(ctx, &k, &[Op::Getpid, Op::Getpid, Op::Getpid, Op::Sleep(2 * MS)]);
    let restored = sysfs::set(sysfs::FILTER, "all");
    let run = res?;
    restored?;
    let rec = ctx.relay()?.wait_for(&[k])?.remove(0);
    check_record(
        &rec,
        &Expect {
            key: &k,
            tid: ctx.main_tid,
            tgid: ctx.pid,
            depth: 0,
            flags: 0,
            calls: &[(NR_NANOSLEEP, Some(0))],
            total_calls: 1,
            run: Some(&run),
        },
    )?;
    entry_at_least(&rec, 0, 2 * MS)
}

/// Case 12. Refused writes keep the old value; boundary values are accepted.
pub fn bad_values(ctx: &mut Ctx) -> Result<(), String> {
    let _g = TunableGuard::save()?;
    let info = ioctl_info(ctx.control.raw()).map_err(|e| format!("INFO: {}", errno_name(e)))?;
    let limit = info.max_calls_limit;
    let mut f = Failures::default();
    let too_many = format!("{}", u64::from(limit) + 1);
    let bad: &[(&str, &[&str])] = &[
        (
            sysfs::THRESHOLD,
            &[
                "abc",
                "-5",
                "",
                "\n",
                "1 2",
                "18446744073709551616",
                "99999999999999999999999",
                "0x10",
                "+5",
                "1.5",
            ],
        ),
        (sysfs::TIMEOUT, &["abc", "-1", "", "1 2", "18446744073709551616"]),
        (sysfs::MAX_CALLS, &["abc", "-1", "", "1 2", too_many.as_str()]),
        (
            sysfs::FILTER,
            &[
                "allow nosuchcall",
                "deny 9999",
                "bogus",
                "",
                "\n",
                "allow read,,write",
                "deny  getpid",
                "allow getpid ",
            ],
        ),
    ];
    for (attr, values) in bad {
        for v in values.iter() {
            let before = sysfs::read(attr)?;
            let r = sysfs::write_raw(attr, v.as_bytes());
            let after = sysfs::read(attr)?;
            match r {
                Err(e) if e == libc::EINVAL || e == libc::ERANGE => {}
                // sysfs itself completes an empty write without calling the module.
                Ok(0) if v.is_empty() => {}
                Ok(n) => f.push(format!("{attr} <- {v:?}: accepted ({n} bytes)")),
                Err(e) => f.push(format!("{attr} <- {v:?}: {}, expected EINVAL or ERANGE", errno_name(e))),
            }
            if after != before {
                f.push(format!(
                    "{attr} <- {v:?} changed the value from {before:?} to {after:?}"
                ));
            }
        }
    }
    // Accepted: a newline-terminated number, the largest max_calls, a filter list.
    match sysfs::write_raw(sysfs::THRESHOLD, b"2500000\n") {
        Ok(8) => f.check(sysfs::read(sysfs::THRESHOLD).and_then(|v| {
            if v == "2500000" {
                Ok(())
            } else {
                Err(format!("threshold_ns reads {v:?} after \"2500000\\n\""))
            }
        })),
        other => f.push(format!("threshold_ns <- \"2500000\\n\": {other:?}")),
    }
    f.check(sysfs::set(sysfs::MAX_CALLS, &format!("{limit}")));
    match sysfs::write_raw(sysfs::FILTER, b"allow getpid,nanosleep") {
        Ok(_) => match sysfs::read(sysfs::FILTER) {
            Ok(v) if v.starts_with("allow ") && v.contains("getpid") && v.contains("nanosleep") => {}
            other => f.push(format!("filter reads {other:?} after \"allow getpid,nanosleep\"")),
        },
        Err(e) => f.push(format!("filter <- \"allow getpid,nanosleep\": {}", errno_name(e))),
    }
    f.into_result()
}
