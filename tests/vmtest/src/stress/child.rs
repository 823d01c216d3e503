//! Roles of re-executed copies of this program (children of the tests). Each prints one
//! `result k=v ...` line on stdout for its parent and exits 0 unless it could not run.

use super::reader::BulkReader;
use super::{key3, raw_getpid, span_write, Rng};
use crate::sys::{self, Fd};
use spantrack_uapi as uapi;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Runs a child role if `mode` names one; its exit code.
pub fn dispatch(mode: &str, args: &[String]) -> Option<i32> {
    match mode {
        "child-exec-image" => Some(exec_image(args)),
        "child-hold" => Some(super::reload::child_hold(args)),
        "child-churn" => Some(super::reload::child_churn(args)),
        "child-users-service" => Some(super::users::service(args)),
        "child-users-intruder" => Some(super::users::intruder(args)),
        "child-users-pin" => Some(super::users::pin(args)),
        _ => None,
    }
}

/// Parses a `result k=v k=v` line.
pub fn parse_result(text: &str) -> Option<BTreeMap<String, String>> {
    let line = text.lines().rev().find(|l| l.starts_with("result "))?;
    Some(
        line.split_whitespace()
            .skip(1)
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect(),
    )
}

fn errno_or_ok(e: i32) -> String {
    if e == 0 {
        "ok".into()
    } else {
        sys::errno_name(e)
    }
}

/// The image a test exec'd: what does the module think of it? Args: `[OLD_SPAN_LINE|-]`.
/// Reports INFO.registered before anything, the REGISTER result, a span with one getpid
/// (begin, end, and its record if the process is registered: found, exact or not), and the
/// end of a span the previous image left open.
fn exec_image(args: &[String]) -> i32 {
    let pid = sys::getpid();
    let tid = sys::gettid();
    let mut out: Vec<String> = vec![format!("pid={pid}"), format!("tid={tid}")];
    let control = match Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY) {
        Ok(f) => f,
        Err(e) => {
            println!("result error=open_control:{}", e.replace(' ', "_"));
            return 1;
        }
    };
    let info = sys::ioctl_info(control.raw());
    out.push(format!(
        "registered={}",
        info.map(|i| i.registered.to_string()).unwrap_or_else(|e| sys::errno_name(e))
    ));
    out.push(format!("register={}", errno_or_ok(super::ioctl0(control.raw(), uapi::IOCTL_REGISTER))));
    let info = sys::ioctl_info(control.raw());
    out.push(format!(
        "registered_after={}",
        info.map(|i| i.registered.to_string()).unwrap_or_else(|e| sys::errno_name(e))
    ));
    let (Ok(b), Ok(e)) = (Fd::open(uapi::PROC_BEGIN, libc::O_WRONLY), Fd::open(uapi::PROC_END, libc::O_WRONLY)) else {
        println!("result error=open_begin_end");
        return 1;
    };
    let k = key3(u64::from(pid), u64::from(tid), sys::real_ns());
    let line = k.line();
    let rb = span_write(b.raw(), &line);
    let gp = raw_getpid();
    let re = span_write(e.raw(), &line);
    out.push(format!("begin={}", errno_or_ok(rb)));
    out.push(format!("end={}", errno_or_ok(re)));
    // Its record, if the relay channel is there.
    let rec = match BulkReader::open(pid) {
        Err(_) => "no_relay".to_string(),
        Ok(mut r) => {
            let mut found = None;
            let mut rng = Rng::new(1);
            let t0 = Instant::now();
            while found.is_none() && t0.elapsed() < Duration::from_secs(1) {
                r.poll(0, &mut rng, |rec| {
                    if rec.h.trace_id == k.trace_id && rec.h.span_id == k.span_id {
                        found = Some(rec);
                    }
                });
                sys::sleep_ms(5);
            }
            match found {
                None => "missing".into(),
                Some(rec) => {
                    let calls: Vec<(u32, i64)> = rec.entries.iter().map(|e| (e.nr, e.ret)).collect();
                    out.push(format!("rec_depth={}", rec.h.depth));
                    if rec.h.tid == tid && calls == [(libc::SYS_getpid as u32, gp)] && rec.h.flags == 0 {
                        "exact".into()
                    } else {
                        format!("inexact:tid{}:flags{}:calls{}", rec.h.tid, rec.h.flags, calls.len())
                    }
                }
            }
        }
    };
    out.push(format!("record={rec}"));
    if let Some(old) = args.first().filter(|a| a.as_str() != "-") {
        let mut l = old.as_bytes().to_vec();
        l.push(b'\n');
        out.push(format!("old_end={}", errno_or_ok(span_write(e.raw(), &l))));
    }
    println!("result {}", out.join(" "));
    0
}
