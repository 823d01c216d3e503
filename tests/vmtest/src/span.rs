//! Span ids, begin/end lines, and the exact code paths run inside spans.
//!
//! Everything a span measures is a list of [`Op`]s executed by [`run_ops`]: one raw system
//! call per op, no allocation, no clock reads, no std I/O, so that the module sees exactly
//! the calls the test expects (the begin/end writes themselves are not recorded).

use crate::sys;
use spantrack_logic::key::{format_span_line, parse_span_line, SpanKey};
use std::sync::atomic::{AtomicU64, Ordering};

/// Length of a begin/end line without a threshold, newline included.
pub const LINE_LEN: usize = spantrack_logic::key::SPAN_LINE_LEN;

/// The W3C ids of one span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

fn hex(bytes: &[u8], out: &mut Vec<u8>) {
    const D: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(D[usize::from(b >> 4)]);
        out.push(D[usize::from(b & 15)]);
    }
}

impl Key {
    /// `"<32 hex> <16 hex>\n"`, lower case (the module's own formatter).
    pub fn line(&self) -> [u8; LINE_LEN] {
        let k = SpanKey {
            trace_id: self.trace_id,
            span_id: self.span_id,
        };
        let mut out = [0u8; LINE_LEN];
        format_span_line(&k, &mut out);
        out
    }

    /// The key of a line the module's parser accepts.
    pub fn parse(line: &[u8]) -> Option<Key> {
        parse_span_line(line).ok().map(|k| Key {
            trace_id: k.trace_id,
            span_id: k.span_id,
        })
    }

    /// The span id in hex (for messages).
    pub fn short(&self) -> String {
        let mut v = Vec::new();
        hex(&self.span_id, &mut v);
        String::from_utf8(v).unwrap_or_default()
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = self.line();
        f.write_str(std::str::from_utf8(&l[..LINE_LEN - 1]).unwrap_or("?"))
    }
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh key: a counter mixed with the pid and the time; neither id is ever zero.
pub fn new_key() -> Key {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut s = (u64::from(sys::getpid()) << 40) ^ sys::real_ns() ^ n.wrapping_mul(0xd6e8_feb8_6659_fd93);
    let mut k = Key {
        trace_id: [0; 16],
        span_id: [0; 8],
    };
    k.trace_id[..8].copy_from_slice(&splitmix(&mut s).to_be_bytes());
    k.trace_id[8..].copy_from_slice(&splitmix(&mut s).to_be_bytes());
    k.span_id.copy_from_slice(&splitmix(&mut s).to_be_bytes());
    // Never all zero (W3C-invalid ids are refused): force one bit in each.
    k.trace_id[15] |= 1;
    k.span_id[7] |= 1;
    k
}

/// The pre-opened `/proc/spantrack/{begin,end}` descriptors.
#[derive(Clone, Copy, Debug)]
pub struct Fds {
    pub begin: i32,
    pub end: i32,
}

/// Bytes written by [`Op::Write`].
pub static WRITE_BUF: [u8; 4096] = [0x5a; 4096];

/// One step of a measured code path.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// write(begin_fd, line): 0 or -errno.
    Begin([u8; LINE_LEN]),
    /// write(end_fd, line): 0 or -errno.
    End([u8; LINE_LEN]),
    /// syscall(SYS_getpid): the pid.
    Getpid,
    /// syscall(SYS_nanosleep, ns): 0 or -errno.
    Sleep(u64),
    /// write(fd, WRITE_BUF[..len]): bytes written or -errno.
    Write { fd: i32, len: usize },
    /// fsync(fd): 0 or -errno.
    Fsync(i32),
}

impl Op {
    pub fn begin(k: &Key) -> Op {
        Op::Begin(k.line())
    }
    pub fn end(k: &Key) -> Op {
        Op::End(k.line())
    }
}

/// Result of [`run_ops`]: the value of each op, and the clocks read just before the first
/// op and just after the last one (outside the span when the list is `Begin .. End`).
#[derive(Clone, Debug)]
pub struct Run {
    pub rets: Vec<i64>,
    pub t0_mono: u64,
    pub t0_real: u64,
    pub t1_mono: u64,
    pub t1_real: u64,
}

#[inline(always)]
fn neg_errno(r: i64) -> i64 {
    if r < 0 {
        -i64::from(sys::errno())
    } else {
        r
    }
}

/// Executes one op: exactly one system call.
#[inline(always)]
fn exec(fds: Fds, op: &Op) -> i64 {
    // SAFETY: every call gets valid pointers to live buffers of the stated lengths.
    unsafe {
        match op {
            Op::Begin(line) | Op::End(line) => {
                let fd = if matches!(op, Op::Begin(_)) { fds.begin } else { fds.end };
                let r = neg_errno(libc::write(fd, line.as_ptr().cast(), LINE_LEN) as i64);
                if r == LINE_LEN as i64 {
                    0
                } else if r >= 0 {
                    // A short write is a failure too: report it as a distinct positive value.
                    1000 + r
                } else {
                    r
                }
            }
            Op::Getpid => neg_errno(libc::syscall(libc::SYS_getpid)),
            Op::Sleep(ns) => {
                let ts = libc::timespec {
                    tv_sec: (ns / 1_000_000_000) as libc::time_t,
                    tv_nsec: (ns % 1_000_000_000) as libc::c_long,
                };
                neg_errno(libc::syscall(
                    libc::SYS_nanosleep,
                    &ts as *const libc::timespec,
                    std::ptr::null_mut::<libc::timespec>(),
                ))
            }
            Op::Write { fd, len } => {
                let len = (*len).min(WRITE_BUF.len());
                neg_errno(libc::write(*fd, WRITE_BUF.as_ptr().cast(), len) as i64)
            }
            Op::Fsync(fd) => neg_errno(i64::from(libc::fsync(*fd))),
        }
    }
}

/// Runs `ops` in order on the calling thread. The result vector is allocated before the
/// first op; between the first and the last op nothing but the ops' own calls is made.
pub fn run_ops(fds: Fds, ops: &[Op]) -> Run {
    run_ops_inner(fds, ops, true)
}

/// [`run_ops`] for a list that leaves a span open: no clock read after the last op (a clock
/// read can be a system call, which would land in the open span); `t1_*` are 0.
pub fn run_ops_open(fds: Fds, ops: &[Op]) -> Run {
    run_ops_inner(fds, ops, false)
}

fn run_ops_inner(fds: Fds, ops: &[Op], clocks_after: bool) -> Run {
    let mut rets = vec![0i64; ops.len()];
    // Touch the pages now (no fault-time surprises later; faults are not calls anyway).
    for r in rets.iter_mut() {
        *r = -1;
    }
    let t0_mono = sys::mono_ns();
    let t0_real = sys::real_ns();
    for (op, r) in ops.iter().zip(rets.iter_mut()) {
        *r = exec(fds, op);
    }
    let (t1_real, t1_mono) = if clocks_after {
        (sys::real_ns(), sys::mono_ns())
    } else {
        (0, 0)
    };
    Run {
        rets,
        t0_mono,
        t0_real,
        t1_mono,
        t1_real,
    }
}

impl Run {
    /// Every Begin/End op succeeded and every other op returned what `expect` says
    /// (`None`: any non-negative value).
    pub fn check(&self, ops: &[Op], expect: impl Fn(usize, &Op) -> Option<i64>) -> Result<(), String> {
        let mut bad = Vec::new();
        for (i, (op, &r)) in ops.iter().zip(&self.rets).enumerate() {
            let want = match op {
                Op::Begin(_) | Op::End(_) => Some(0),
                _ => expect(i, op),
            };
            let ok = match want {
                Some(w) => r == w,
                None => r >= 0,
            };
            if !ok {
                bad.push(format!(
                    "op {i} ({}) returned {}{}",
                    op_name(op),
                    if matches!(op, Op::Begin(_) | Op::End(_)) && r == 0 {
                        "ok".into()
                    } else {
                        sys::ret_name(r)
                    },
                    want.map(|w| format!(", expected {}", sys::ret_name(w)))
                        .unwrap_or_default()
                ));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("; "))
        }
    }
}

pub fn op_name(op: &Op) -> String {
    match op {
        Op::Begin(l) => format!("begin {}", String::from_utf8_lossy(&l[33..49])),
        Op::End(l) => format!("end {}", String::from_utf8_lossy(&l[33..49])),
        Op::Getpid => "getpid".into(),
        Op::Sleep(ns) => format!("nanosleep {ns} ns"),
        Op::Write { len, .. } => format!("write {len}"),
        Op::Fsync(_) => "fsync".into(),
    }
}

/// A begin or end write of arbitrary bytes (for malformed lines), outside the measured
/// paths: `Ok(bytes written)` or the errno.
pub fn write_line(fd: i32, bytes: &[u8]) -> Result<usize, i32> {
    sys::write_once(fd, bytes)
}

/// Ends each of `keys` from the calling thread, ignoring errors (cleanup after a failure,
/// so that no case leaves spans open).
pub fn end_all(fds: Fds, keys: &[Key]) {
    for k in keys.iter().rev() {
        let _ = write_line(fds.end, &k.line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_keys() {
        let a = new_key();
        let b = new_key();
        assert_ne!(a, b);
        assert!(a.trace_id != [0; 16] && a.span_id != [0; 8]);
        let l = a.line();
        assert_eq!(l.len(), 50);
        assert_eq!((l[32], l[49]), (b' ', b'\n'));
        assert!(l[..32]
            .iter()
            .chain(&l[33..49])
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(a.to_string().as_bytes(), &l[..49]);
        assert_eq!(a.short().as_bytes(), &l[33..49]);
        assert_eq!(Key::parse(&l), Some(a));
        assert_eq!(Key::parse(&l[..49]), Some(a));
        assert_eq!(Key::parse(&l[..48]), None);
        let names: Vec<String> = [sys::NR_GETPID, sys::NR_NANOSLEEP, sys::NR_WRITE, sys::NR_FSYNC, 9999]
            .iter()
            .map(|&n| sys::syscall_name(n))
            .collect();
        assert_eq!(names, ["getpid", "nanosleep", "write", "fsync", "syscall#9999"]);
    }

    #[test]
    fn ops_return_values() {
        // Begin/end on /dev/null "succeed"; the other ops make their real calls.
        let null = sys::Fd::open("/dev/null", libc::O_WRONLY).unwrap();
        let fds = Fds {
            begin: null.raw(),
            end: null.raw(),
        };
        let k = new_key();
        let ops = [
            Op::begin(&k),
            Op::Getpid,
            Op::Sleep(1000),
            Op::Write {
                fd: null.raw(),
                len: 4096,
            },
            Op::Fsync(-1),
            Op::end(&k),
        ];
        let run = run_ops(fds, &ops);
        assert_eq!(
            run.rets,
            vec![0, i64::from(sys::getpid()), 0, 4096, -i64::from(libc::EBADF), 0]
        );
        assert!(run.t0_mono <= run.t1_mono && run.t0_real <= run.t1_real);
        let err = run
            .check(&ops, |_, op| if matches!(op, Op::Fsync(_)) { Some(0) } else { None })
            .unwrap_err();
        assert!(err.contains("op 4 (fsync) returned EBADF, expected 0"), "{err}");
    }
}
