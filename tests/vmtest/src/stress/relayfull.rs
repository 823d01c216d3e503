//! A reader that stops reading: with threshold 0 and the writer pinned to one CPU, spans
//! end until that CPU's relay buffer (n_subbufs x subbuf_size) is full. Whole records are
//! then dropped and counted (stats, INFO, and `records_dropped_before` of the next record
//! written once reading resumes); what is read back is whole, valid, and exactly the
//! records of the first spans, in order. The writer's begin+end latency is measured with
//! and without a full buffer.

use super::reader::{check_structure, BulkReader, Rec};
use super::{key3, percentile, span_write, Report, Rng};
use crate::fig;
use crate::span::LINE_LEN;
use crate::sys::{self, errno_name, ioctl_info, Fd};
use crate::sysfs::{self, Stats, TunableGuard};
use spantrack_uapi as uapi;
use std::time::{Duration, Instant};

pub fn run(rep: &mut Report) {
    if let Err(e) = run_inner(rep) {
        rep.check("relayfull: setup", Err(e));
    }
}

/// Latencies (ns) of one phase: each begin+end pair, and beside each an `IOCTL_INFO` on the
/// control file, a call of similar weight that the buffer's state cannot affect. On an
/// emulated guest the host's load changes every latency; the ratio of the two medians does
/// not.
#[derive(Default)]
struct Lat {
    pair: Vec<u64>,
    base: Vec<u64>,
}

impl Lat {
    /// Median pair latency over median baseline latency.
    fn ratio(&mut self) -> f64 {
        self.pair.sort_unstable();
        self.base.sort_unstable();
        percentile(&self.pair, 0.5) as f64 / percentile(&self.base, 0.5).max(1) as f64
    }
}

/// `n` begin+end pairs of keys `from..from+n`, timed (with the baseline call) into `lat`;
/// the number that failed.
fn pairs(fds: (i32, i32), control: i32, seed: u64, from: u64, n: u64, lat: &mut Lat) -> u64 {
    let mut failed = 0;
    for i in from..from + n {
        let l: [u8; LINE_LEN] = key3(seed, 7, i).line();
        let t0 = sys::mono_ns();
        let b = span_write(fds.0, &l);
        let e = span_write(fds.1, &l);
        let t1 = sys::mono_ns();
        let _ = ioctl_info(control);
        let t2 = sys::mono_ns();
        lat.pair.push(t1 - t0);
        lat.base.push(t2 - t1);
        if b != 0 || e != 0 {
            failed += 1;
        }
    }
    failed
}

fn run_inner(rep: &mut Report) -> Result<(), String> {
    let _g = TunableGuard::save()?;
    sysfs::set(sysfs::THRESHOLD, "0")?;
    // Spans stay open for the whole run (parked, held): a run stretched past timeout_ns's
    // 60 s by a busy host (the debug kernel took 106 s) would see them expire.
    sysfs::set(sysfs::TIMEOUT, "86400000000000")?;
    super::pin_to_cpu(0)?;
    let pid = sys::getpid();
    let control = Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY)?;
    let begin = Fd::open(uapi::PROC_BEGIN, libc::O_WRONLY)?;
    let end = Fd::open(uapi::PROC_END, libc::O_WRONLY)?;
    let fds = (begin.raw(), end.raw());
    sys::ioctl_plain(control.raw(), uapi::IOCTL_REGISTER).map_err(|e| format!("REGISTER: {}", errno_name(e)))?;
    // Opened now, read only later.
    let mut relay = BulkReader::open(pid)?;
    let info0 = ioctl_info(control.raw()).map_err(|e| format!("INFO: {}", errno_name(e)))?;
    let per_cpu = u64::from(info0.n_subbufs) * u64::from(info0.subbuf_size);
    let cap = per_cpu / uapi::RECORD_HEADER_SIZE as u64;
    let seed = super::clock_seed();
    let measured = super::scaled(2000, 500);
    fig!(
        "relayfull: relay buffer {} x {} KiB per CPU = {cap} records of {} bytes; writer pinned to cpu{}; {measured} pairs measured per phase",
        info0.n_subbufs,
        info0.subbuf_size / 1024,
        uapi::RECORD_HEADER_SIZE,
        super::current_cpu()
    );
    let s0 = Stats::read()?;
    let t0 = Instant::now();
    // Phase A: buffer far from full.
    let mut lat_a = Lat::default();
    let mut failed = pairs(fds, control.raw(), seed, 0, measured, &mut lat_a);
    let mut next = measured;
    // Fill until records are dropped (bounded: twice the capacity).
    let mut lat_fill = Lat::default();
    let mut first_drop_at = None;
    while next < 2 * cap + measured {
        failed += pairs(fds, control.raw(), seed, next, 256, &mut lat_fill);
        next += 256;
        let i = ioctl_info(control.raw()).map_err(|e| format!("INFO: {}", errno_name(e)))?;
        if i.records_dropped > 0 {
            first_drop_at = Some(i.records_written);
            break;
        }
    }
    // Phase B: buffer full, every record dropped.
    let info_full = ioctl_info(control.raw()).map_err(|e| format!("INFO: {}", errno_name(e)))?;
    let mut lat_b = Lat::default();
    failed += pairs(fds, control.raw(), seed, next, measured, &mut lat_b);
    next += measured;
    let n_spans = next;
    let info = ioctl_info(control.raw()).map_err(|e| format!("INFO: {}", errno_name(e)))?;
    let s1 = Stats::read()?;
    let t_write = t0.elapsed();
    let (w, d) = (info.records_written, info.records_dropped);
    fig!(
        "relayfull: {n_spans} spans ended in {:.1} s ({failed} failed); records written {w}, dropped {d} (first drop after {:?} written); cpu now {}",
        t_write.as_secs_f64(),
        first_drop_at,
        super::current_cpu()
    );
    rep.check(
        "relayfull: with nobody reading, the buffer fills and further records are dropped and counted: written + dropped == spans ended, stats and INFO agree",
        (|| {
            let mut bad = Vec::new();
            if failed != 0 {
                bad.push(format!("{failed} begin/end pairs failed"));
            }
            if first_drop_at.is_none() || d == 0 {
                bad.push("no record was dropped".into());
            }
            if w + d != n_spans {
                bad.push(format!("written {w} + dropped {d} != {n_spans} spans"));
            }
            if info_full.records_written != w || d - info_full.records_dropped != measured {
                bad.push(format!(
                    "with the buffer full, {} more written and {} more dropped for {measured} spans",
                    w - info_full.records_written,
                    d - info_full.records_dropped
                ));
            }
            if w > cap {
                bad.push(format!("{w} records written to a buffer of {cap}"));
            }
            if let Err(e) = super::expect_all_deltas(
                &s0,
                &s1,
                &[
                    ("spans_begun", n_spans as i128),
                    ("spans_ended", n_spans as i128),
                    ("spans_slow", n_spans as i128),
                    ("records_written", w as i128),
                    ("records_dropped", d as i128),
                ],
                &super::NOISY,
            ) {
                bad.push(e);
            }
            if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) }
        })(),
    );

    // Latency with and without a full buffer, each relative to the baseline call timed
    // beside it (the phases are seconds apart, and the host's load may change meanwhile).
    let (ra, rb) = (lat_a.ratio(), lat_b.ratio());
    let (a50, a99, b50, b99) = (
        percentile(&lat_a.pair, 0.5),
        percentile(&lat_a.pair, 0.99),
        percentile(&lat_b.pair, 0.5),
        percentile(&lat_b.pair, 0.99),
    );
    let (ab, bb) = (percentile(&lat_a.base, 0.5), percentile(&lat_b.base, 0.5));
    fig!(
        "relayfull: begin+end pair latency (ns): buffer not full p50 {a50} p99 {a99}; buffer full (all dropped) p50 {b50} p99 {b99}; baseline INFO ioctl p50 {ab} / {bb}"
    );
    rep.check(
        "relayfull: the writer is not slowed by the full buffer (p50 of begin+end over p50 of an INFO ioctl timed beside it: full <= 1.5 x not full)",
        if rb <= 1.5 * ra {
            Ok(())
        } else {
            Err(format!(
                "with a full buffer p50 {b50} ns = {rb:.2} x the baseline's {bb} ns; without, {a50} ns = {ra:.2} x {ab} ns"
            ))
        },
    );

    // Reading resumes: exactly the first `w` records, whole, in order.
    let mut recs: Vec<Rec> = Vec::new();
    let mut rng = Rng::new(seed);
    for _ in 0..50 {
        if relay.poll(0, &mut rng, |r| recs.push(r)) == 0 {
            break;
        }
    }
    rep.check(
        "relayfull: the records read back are whole and valid, and are exactly those of the first spans, in order",
        (|| {
            let mut bad = Vec::new();
            if !relay.errors.is_empty() || relay.partial_bytes() != 0 {
                bad.push(format!("stream errors {:?}, {} partial bytes", relay.errors, relay.partial_bytes()));
            }
            if recs.len() as u64 != w {
                bad.push(format!("{} records read, {w} written", recs.len()));
            }
            for (i, r) in recs.iter().enumerate() {
                let k = key3(seed, 7, i as u64);
                let mut e = Vec::new();
                if r.h.trace_id != k.trace_id || r.h.span_id != k.span_id {
                    e.push("not the span expected at this position".to_string());
                }
                if r.h.tgid != pid || r.h.depth != 0 || r.h.n_entries != 0 || r.h.flags != 0 || r.h.records_dropped_before != 0 || r.cpu != 0 {
                    e.push(format!(
                        "tgid {} depth {} n_entries {} flags {:#x} dropped_before {} cpu{}",
                        r.h.tgid, r.h.depth, r.h.n_entries, r.h.flags, r.h.records_dropped_before, r.cpu
                    ));
                }
                if let Err(x) = check_structure(r) {
                    e.push(x);
                }
                if !e.is_empty() {
                    bad.push(format!("record {i}: {}", e.join(", ")));
                    if bad.len() > 5 {
                        break;
                    }
                }
            }
            if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) }
        })(),
    );

    // The next record says how many were dropped before it.
    let l = key3(seed, 8, 0).line();
    let rb = span_write(fds.0, &l);
    let re = span_write(fds.1, &l);
    let mut after: Vec<Rec> = Vec::new();
    let t1 = Instant::now();
    while after.is_empty() && t1.elapsed() < Duration::from_secs(2) {
        relay.poll(0, &mut rng, |r| after.push(r));
        sys::sleep_ms(5);
    }
    let info2 = ioctl_info(control.raw()).map_err(|e| format!("INFO: {}", errno_name(e)))?;
    rep.check(
        "relayfull: after reading resumes, the next record is written and carries records_dropped_before == the drops",
        (|| {
            if rb != 0 || re != 0 {
                return Err(format!("begin {rb} end {re}"));
            }
            if after.len() != 1 {
                return Err(format!("{} records", after.len()));
            }
            let h = &after[0].h;
            if h.records_dropped_before != d {
                return Err(format!("records_dropped_before {} expected {d}", h.records_dropped_before));
            }
            if info2.records_written != w + 1 || info2.records_dropped != d {
                return Err(format!("INFO written {} dropped {}", info2.records_written, info2.records_dropped));
            }
            Ok(())
        })(),
    );
    let s2 = Stats::read()?;
    rep.check("relayfull: the books balance", super::conservation(&s0, &s2));
    let _ = sys::ioctl_plain(control.raw(), uapi::IOCTL_UNREGISTER);
    Ok(())
}
