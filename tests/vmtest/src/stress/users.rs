//! Other users (run by `tests/vm/t_users.sh`, as two unprivileged uids):
//! - `child-users-service`: an unprivileged process registers, reads its relay buffers
//!   through the descriptors of `IOCTL_RELAY_FDS` (debugfs is closed to it), opens a span,
//!   says `ready pid=.. line=.. fd=..` and waits for a line on stdin (while another user
//!   tries to get in), then ends the span and checks its record;
//! - `child-users-intruder PID LINE FD`: another uid tries everything against that
//!   process: end its span, read its relay buffers (debugfs, /proc/PID/fd, pidfd_getfd,
//!   RELAY_FDS), unregister it, change tunables; registers itself and shows that it only
//!   ever reaches its own spans and records.
//!
//! Each prints one `result k=v ...` line; the script compares the values with the expected
//! errnos.

use super::reader::{relay_fds, BulkReader, Rec};
use super::{ioctl0, key3, raw_getpid, raw_nanosleep, span_write, Rng};
use crate::sys::{self, errno_name, Fd};
use crate::sysfs;
use spantrack_uapi as uapi;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

/// The control, begin and end files, or None if one does not open.
fn open_proc_files() -> Option<(Fd, Fd, Fd)> {
    Some((
        Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY).ok()?,
        Fd::open(uapi::PROC_BEGIN, libc::O_WRONLY).ok()?,
        Fd::open(uapi::PROC_END, libc::O_WRONLY).ok()?,
    ))
}

fn res(e: i32) -> String {
    if e == 0 {
        "ok".into()
    } else {
        errno_name(e)
    }
}

fn open_res(path: &str, flags: i32) -> String {
    match Fd::open_errno(path, flags) {
        Ok(_) => "ok".into(),
        Err(e) => errno_name(e),
    }
}

/// Reads `r` until a record of `want` (trace id, span id) shows up (1 s at most); every
/// record seen goes to `seen`.
fn find(r: &mut BulkReader, want: &crate::span::Key, seen: &mut Vec<Rec>) -> Option<Rec> {
    let mut rng = Rng::new(1);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(1) {
        r.poll(0, &mut rng, |rec| seen.push(rec));
        if let Some(x) = seen.iter().find(|x| x.h.trace_id == want.trace_id && x.h.span_id == want.span_id) {
            return Some(x.clone());
        }
        sys::sleep_ms(5);
    }
    None
}

pub fn service(_args: &[String]) -> i32 {
    let pid = sys::getpid();
    let tid = sys::gettid();
    // SAFETY: plain query.
    let mut out = vec![format!("uid={}", unsafe { libc::getuid() })];
    let Some((control, b, e)) = open_proc_files() else {
        println!("result error=open_proc_files");
        return 1;
    };
    out.push(format!("register={}", res(ioctl0(control.raw(), uapi::IOCTL_REGISTER))));
    // Debugfs is root's: the descriptors are the way in.
    out.push(format!("debugfs={}", open_res(&format!("{}/{pid}/cpu0", uapi::RELAY_DIR), libc::O_RDONLY)));
    let mut relay = match BulkReader::from_control(control.raw()) {
        Ok(r) => r,
        Err(e) => {
            println!("result {} relay_fds=failed:{}", out.join(" "), e.replace(' ', "_"));
            return 1;
        }
    };
    // The lowest relay descriptor, for the intruder to aim at.
    let fd = (3..1024).find(|&fd| {
        std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok_and(|p| p.to_string_lossy().contains("spantrack-relay"))
    });
    let k = key3(u64::from(pid), 0x5e_u64, sys::real_ns());
    let line = k.line();
    out.push(format!("begin={}", res(span_write(b.raw(), &line))));
    println!(
        "ready pid={pid} line={} fd={}",
        String::from_utf8_lossy(&line[..line.len() - 1]).replace(' ', ","),
        fd.unwrap_or(-1)
    );
    let _ = std::io::stdout().flush();
    let mut go = String::new();
    let _ = std::io::stdin().lock().read_line(&mut go);
    let gp = raw_getpid();
    raw_nanosleep(5_000_000);
    out.push(format!("end={}", res(span_write(e.raw(), &line))));
    let mut seen = Vec::new();
    let rec = find(&mut relay, &k, &mut seen);
    out.push(format!(
        "record={}",
        match &rec {
            None => "missing".to_string(),
            Some(r) => {
                let calls: Vec<(u32, i64)> = r.entries.iter().map(|e| (e.nr, e.ret)).collect();
                let tail_ok = calls.ends_with(&[(libc::SYS_getpid as u32, gp), (libc::SYS_nanosleep as u32, 0)]);
                let long = r.h.end_mono_ns - r.h.begin_mono_ns >= 5_000_000;
                if r.h.tgid == pid && r.h.tid == tid && tail_ok && long && r.h.flags == 0 {
                    "exact".to_string()
                } else {
                    format!("inexact:tgid{}:tid{}:flags{}:calls{:?}", r.h.tgid, r.h.tid, r.h.flags, calls).replace(' ', "")
                }
            }
        }
    ));
    out.push(format!("records_seen={}", seen.len()));
    out.push(format!("foreign={}", seen.iter().filter(|r| r.h.tgid != pid).count()));
    match sys::ioctl_info(control.raw()) {
        Ok(i) => out.push(format!("info_registered={} info_written={}", i.registered, i.records_written)),
        Err(e) => out.push(format!("info={}", errno_name(e))),
    }
    out.push(format!("unregister={}", res(ioctl0(control.raw(), uapi::IOCTL_UNREGISTER))));
    // The channel is closed: its descriptors stay open (the process closes them) but read
    // EIO, as the debugfs files do (no module code runs for a closed channel).
    let mut rng = Rng::new(2);
    relay.poll(0, &mut rng, |_| {});
    let errs = &relay.read_errnos.0;
    let eio = !errs.is_empty() && errs.keys().all(|&e| e == libc::EIO);
    out.push(format!("read_after_unregister={}", if eio { "EIO" } else { "other" }));
    println!("result {}", out.join(" "));
    0
}

pub fn intruder(args: &[String]) -> i32 {
    let (Some(pid), Some(line), Some(fd)) = (
        args.first().and_then(|s| s.parse::<i32>().ok()),
        args.get(1).map(|s| format!("{}\n", s.replace(',', " ")).into_bytes()),
        args.get(2).and_then(|s| s.parse::<i32>().ok()),
    ) else {
        println!("result error=usage:PID_LINE_FD");
        return 2;
    };
    let me = sys::getpid();
    // SAFETY: plain query.
    let mut out = vec![format!("uid={}", unsafe { libc::getuid() })];
    let Some((control, b, e)) = open_proc_files() else {
        println!("result error=open_proc_files");
        return 1;
    };
    // Unregistered.
    out.push(format!("end_unregistered={}", res(span_write(e.raw(), &line))));
    out.push(format!("debugfs_dir={}", open_res(&format!("{}/{pid}", uapi::RELAY_DIR), libc::O_RDONLY | libc::O_DIRECTORY)));
    out.push(format!("debugfs_file={}", open_res(&format!("{}/{pid}/cpu0", uapi::RELAY_DIR), libc::O_RDONLY)));
    out.push(format!("proc_fd={}", open_res(&format!("/proc/{pid}/fd/{fd}"), libc::O_RDONLY)));
    // SAFETY: plain system calls; the descriptors are closed below.
    let getfd = unsafe {
        let pfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        if pfd < 0 {
            format!("pidfd_open:{}", errno_name(sys::errno()))
        } else {
            let r = libc::syscall(libc::SYS_pidfd_getfd, pfd, fd, 0) as i32;
            let s = if r < 0 { errno_name(sys::errno()) } else { libc::close(r); "ok".into() };
            libc::close(pfd);
            s
        }
    };
    out.push(format!("pidfd_getfd={getfd}"));
    out.push(format!("relay_fds_unregistered={}", res(relay_fds(control.raw()).err().unwrap_or(0))));
    out.push(format!("unregister={}", res(ioctl0(control.raw(), uapi::IOCTL_UNREGISTER))));
    out.push(format!("unregister_thread={}", res(ioctl0(control.raw(), uapi::IOCTL_UNREGISTER_THREAD))));
    let sysfs_res: Vec<String> = sysfs::TUNABLES
        .iter()
        .map(|t| open_res(&sysfs::path(t), libc::O_WRONLY))
        .collect();
    out.push(format!("sysfs_write={}", sysfs_res.join(",")));
    out.push(format!("sysfs_read={}", open_res(&sysfs::path(sysfs::THRESHOLD), libc::O_RDONLY)));
    // Registered: REGISTER registers the caller only; spans are matched within the
    // caller's process; RELAY_FDS gives the caller's own buffers.
    out.push(format!("register={}", res(ioctl0(control.raw(), uapi::IOCTL_REGISTER))));
    match sys::ioctl_info(control.raw()) {
        Ok(i) => out.push(format!("info_registered={} info_written={}", i.registered, i.records_written)),
        Err(e) => out.push(format!("info={}", errno_name(e))),
    }
    out.push(format!("end_registered={}", res(span_write(e.raw(), &line))));
    let mut relay = match BulkReader::from_control(control.raw()) {
        Ok(r) => r,
        Err(x) => {
            println!("result {} relay_fds=failed:{}", out.join(" "), x.replace(' ', "_"));
            return 1;
        }
    };
    out.push(format!("begin_same_ids={}", res(span_write(b.raw(), &line))));
    raw_nanosleep(2_000_000);
    out.push(format!("end_same_ids={}", res(span_write(e.raw(), &line))));
    let k = crate::span::Key::parse(&line).unwrap_or(key3(0, 0, 1));
    let mut seen = Vec::new();
    let own = find(&mut relay, &k, &mut seen);
    out.push(format!("own_record={}", if own.is_some_and(|r| r.h.tgid == me) { "found" } else { "missing" }));
    out.push(format!("foreign={}", seen.iter().filter(|r| r.h.tgid != me).count()));
    out.push(format!("unregister_self={}", res(ioctl0(control.raw(), uapi::IOCTL_UNREGISTER))));
    println!("result {}", out.join(" "));
    0
}

/// `child-users-pin [hold]`: registers, takes its relay descriptors and unregisters,
/// keeping the descriptors, until REGISTER is refused (each round pins a closed channel's
/// buffers); with `hold`, prints `held rounds=N refused=E` and waits for a line on stdin
/// still holding them; then closes them all and registers again. Reports the rounds and
/// the errno.
pub fn pin(args: &[String]) -> i32 {
    let Ok(control) = Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY) else {
        println!("result error=open_control");
        return 1;
    };
    let mut held = Vec::new();
    let mut refused = "never".to_string();
    for _ in 0..200 {
        let r = ioctl0(control.raw(), uapi::IOCTL_REGISTER);
        if r != 0 {
            refused = errno_name(r);
            break;
        }
        match BulkReader::from_control(control.raw()) {
            Ok(b) => held.push(b),
            Err(e) => {
                println!("result error=relay_fds:{}", e.replace(' ', "_"));
                return 1;
            }
        }
        let u = ioctl0(control.raw(), uapi::IOCTL_UNREGISTER);
        if u != 0 {
            println!("result error=unregister:{}", errno_name(u));
            return 1;
        }
    }
    let rounds = held.len();
    if args.iter().any(|a| a == "hold") {
        use std::io::{BufRead, Write};
        println!("held rounds={rounds} refused={refused}");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    }
    drop(held);
    let again = ioctl0(control.raw(), uapi::IOCTL_REGISTER);
    let un = ioctl0(control.raw(), uapi::IOCTL_UNREGISTER);
    println!("result pinned_rounds={rounds} refused={refused} register_after_close={} unregister={}", res(again), res(un));
    0
}
