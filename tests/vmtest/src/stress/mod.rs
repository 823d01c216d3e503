//! spantrack-stress: stress, fault and bad-input tests of `spantrack.ko`, run as root inside
//! the test VM (see `tests/vm/t_stress.sh`, `tests/vm/t_fuzz.sh`).
//!
//! Usage: `spantrack-stress MODE [ARGS]`, one mode per fresh module instance (the scripts
//! load the module before and unload it after each mode, except `reload`, which starts with
//! the module unloaded, and `unload`, which unloads it itself):
//!
//! | mode | what |
//! | --- | --- |
//! | `threads` | 64 threads x thousands of nested spans, threads born and exiting mid-span, cross-thread ends, every record checked |
//! | `procs` | registered children killed with SIGKILL mid-span while their relay files are open |
//! | `forkexec` | fork/exec of a registered process, exec from the main and from another thread |
//! | `slots` | threads with active-span slots inside one another's spans, ending them, exiting: every record's calls exact |
//! | `tables` | span table full (ENOSPC), duplicate begins, unknown ends, too deep: exact counts |
//! | `capacity` | process table (64), thread table (4096) and call-chunk pool full: exact counts |
//! | `relayfull` | a reader that stops reading: whole records dropped and counted, writer latency |
//! | `unload KO` | rmmod with processes registered, spans open and relay files being read |
//! | `reload KO [N]` | N insmod/rmmod cycles under a load of processes that tolerate errors |
//! | `fuzz [SEED [ITERS]]` | random and malformed input to every entry point |
//! | `child-users-service`, `child-users-intruder PID LINE FD` | two unprivileged users (`tests/vm/t_users.sh`, see `users.rs`) |
//!
//! Each check prints `ok - name` or `not ok - name: why`; figures are `# ` lines; the last
//! line is `# spantrack-stress MODE: N passed, M failed` and the exit status is 1 on a
//! failure. Counts scale with `STRESS_SCALE` (default 1, 0.1 on the debug kernel, detected
//! by `/sys/kernel/debug/kmemleak`). Every loop is bounded in count and in time.

pub mod capacity;
pub mod child;
pub mod forkexec;
pub mod fuzz;
pub mod procs;
pub mod reader;
pub mod relayfull;
pub mod reload;
pub mod slots;
pub mod tables;
pub mod threads;
pub mod users;

use crate::span::Key;
use crate::sys::{self, errno_name};
use crate::sysfs::Stats;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `ok`/`not ok` lines and their totals.
pub struct Report {
    mode: String,
    pass: u32,
    fail: u32,
}

impl Report {
    pub fn new(mode: &str) -> Report {
        Report {
            mode: mode.to_string(),
            pass: 0,
            fail: 0,
        }
    }

    pub fn check(&mut self, name: &str, r: Result<(), String>) -> bool {
        match r {
            Ok(()) => {
                self.pass += 1;
                println!("ok - {name}");
                true
            }
            Err(e) => {
                self.fail += 1;
                let mut e = e.replace('\n', " | ");
                if e.len() > 3000 {
                    e.truncate(3000);
                    e.push_str(" ...");
                }
                println!("not ok - {name}: {e}");
                false
            }
        }
    }

    pub fn finish(&self) -> i32 {
        println!(
            "# spantrack-stress {}: {} passed, {} failed",
            self.mode, self.pass, self.fail
        );
        if self.fail == 0 {
            0
        } else {
            1
        }
    }
}

/// A figure line.
#[macro_export]
macro_rules! fig {
    ($($arg:tt)+) => { println!("# {}", format!($($arg)+)) };
}

/// splitmix64: a small seeded PRNG (the seed is printed so that a run can be repeated).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in `a..=b`.
    pub fn range(&mut self, a: u64, b: u64) -> u64 {
        a + self.below(b - a + 1)
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// A seed from the clock (printed by the caller).
pub fn clock_seed() -> u64 {
    sys::real_ns() ^ (u64::from(sys::getpid()) << 32)
}

/// The debug kernel (lockdep, KASAN, kmemleak) is about 5x slower: smaller counts.
pub fn is_debug_kernel() -> bool {
    std::path::Path::new("/sys/kernel/debug/kmemleak").exists()
}

/// Factor applied to the counts: `STRESS_SCALE`, else 0.1 on the debug kernel (which runs
/// `make test` too, where `t_stress.sh` + `t_fuzz.sh` must stay within ~8 minutes), else 1.
pub fn scale() -> f64 {
    if let Some(s) = std::env::var("STRESS_SCALE").ok().and_then(|v| v.parse::<f64>().ok()) {
        return s.clamp(0.01, 10.0);
    }
    if is_debug_kernel() {
        0.1
    } else {
        1.0
    }
}

/// `n * scale()`, at least `min`.
pub fn scaled(n: u64, min: u64) -> u64 {
    ((n as f64 * scale()) as u64).max(min)
}

/// A deterministic key from three numbers (no system call: usable inside spans' code
/// paths); both ids non-zero.
pub fn key3(a: u64, b: u64, c: u64) -> Key {
    let mut r = Rng::new(a.wrapping_mul(0x100_0000_01b3) ^ b.rotate_left(21) ^ c.rotate_left(42));
    let mut k = Key {
        trace_id: [0; 16],
        span_id: [0; 8],
    };
    k.trace_id[..8].copy_from_slice(&a.to_be_bytes());
    k.trace_id[8..].copy_from_slice(&(b ^ (r.next_u64() & 0xffff_ffff_0000_0000)).to_be_bytes());
    k.span_id.copy_from_slice(&(c ^ (r.next_u64() << 32)).to_be_bytes());
    k.trace_id[15] |= 1;
    k.span_id[7] |= 1;
    k
}

/// 24 bytes identifying a key (for maps).
pub fn key_id(k: &Key) -> [u8; 24] {
    let mut id = [0u8; 24];
    id[..16].copy_from_slice(&k.trace_id);
    id[16..].copy_from_slice(&k.span_id);
    id
}

/// Sleeps in steps of 5 ms until `cond` holds or `timeout` passes; true if it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sys::sleep_ms(5);
    }
}

/// Counters that depend on what the test threads happen to do inside spans (their
/// system calls, and how the scheduler runs them), or on the rest of the machine (the
/// lazy traced path: any thread's calls, other tracers), excluded from whole-stats
/// comparisons.
pub const NOISY: [&str; 15] = [
    "syscall_trace_lazy",
    "syscall_trace_foreign_probes",
    "syscall_trace_dropped",
    "syscall_trace_restores",
    "sched_stretches",
    "sched_unattributed",
    "sched_wakeups",
    "chunks_in_use",
    "spans_high_water",
    "calls_attributed",
    "calls_unitemised_limit",
    "calls_unitemised_pool",
    "calls_filtered",
    "calls_without_enter",
    "chunks_high_water",
];

/// Compares every counter of `after` with `before` plus the expected deltas (names not
/// listed must not change), ignoring `ignore`. Lists every difference.
pub fn expect_all_deltas(
    before: &Stats,
    after: &Stats,
    expect: &[(&str, i128)],
    ignore: &[&str],
) -> Result<(), String> {
    let want: BTreeMap<&str, i128> = expect.iter().copied().collect();
    let mut bad = Vec::new();
    for (name, &a) in &after.map {
        if ignore.contains(&name.as_str()) {
            continue;
        }
        let b = match before.map.get(name) {
            Some(&b) => b,
            None => {
                bad.push(format!("{name} appeared"));
                continue;
            }
        };
        let d = i128::from(a) - i128::from(b);
        let w = want.get(name.as_str()).copied().unwrap_or(0);
        if d != w {
            bad.push(format!("{name} changed by {d}, expected {w}"));
        }
    }
    for name in want.keys() {
        if !after.map.contains_key(*name) {
            bad.push(format!("stats has no {name}"));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join(", "))
    }
}

/// The span bookkeeping must balance: begun = ended + expired + abandoned + (open now -
/// open before).
pub fn conservation(before: &Stats, after: &Stats) -> Result<(), String> {
    let d = |n: &str| after.delta(before, n);
    let begun = d("spans_begun")?;
    let ended = d("spans_ended")?;
    let expired = d("spans_expired")?;
    let abandoned = d("spans_abandoned")?;
    let open = d("open_spans")?;
    let slow = d("spans_slow")?;
    let written = d("records_written")?;
    let dropped = d("records_dropped")?;
    let mut bad = Vec::new();
    if begun != ended + expired + abandoned + open {
        bad.push(format!(
            "spans_begun +{begun} != spans_ended +{ended} + spans_expired +{expired} + spans_abandoned +{abandoned} + open_spans {open:+}"
        ));
    }
    if written + dropped != slow {
        bad.push(format!(
            "records_written +{written} + records_dropped +{dropped} != spans_slow +{slow}"
        ));
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

/// Runs a command with a time limit; its exit code (or -signal) and its output.
pub fn run_cmd(prog: &str, args: &[&str], limit: Duration) -> Result<(i32, String, Duration), String> {
    let t0 = Instant::now();
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {prog}: {e}"))?;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                let out = child.wait_with_output().map_err(|e| format!("{prog}: {e}"))?;
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let code = st.code().unwrap_or_else(|| {
                    use std::os::unix::process::ExitStatusExt;
                    -st.signal().unwrap_or(0)
                });
                return Ok((code, text.trim().to_string(), t0.elapsed()));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("{prog}: {e}")),
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            return Err(format!("{prog} {} still running after {limit:?}", args.join(" ")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn module_loaded() -> bool {
    std::fs::read_to_string("/proc/modules")
        .map(|m| m.lines().any(|l| l.starts_with("spantrack ")))
        .unwrap_or(false)
}

/// `insmod KO`: its duration.
pub fn insmod(ko: &str) -> Result<Duration, String> {
    let (rc, out, took) = run_cmd("insmod", &[ko], Duration::from_secs(60))?;
    if rc != 0 {
        return Err(format!("insmod {ko}: exit {rc}: {out}"));
    }
    Ok(took)
}

/// `rmmod spantrack`: its duration.
pub fn rmmod() -> Result<Duration, String> {
    let (rc, out, took) = run_cmd("rmmod", &["spantrack"], Duration::from_secs(120))?;
    if rc != 0 {
        return Err(format!("rmmod spantrack: exit {rc}: {out}"));
    }
    Ok(took)
}

/// Histogram of errno values (0 = success).
#[derive(Clone, Debug, Default)]
pub struct Hist(pub BTreeMap<i32, u64>);

impl Hist {
    pub fn add(&mut self, e: i32) {
        *self.0.entry(e).or_default() += 1;
    }

    pub fn merge(&mut self, o: &Hist) {
        for (k, v) in &o.0 {
            *self.0.entry(*k).or_default() += v;
        }
    }

    pub fn get(&self, e: i32) -> u64 {
        self.0.get(&e).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn describe(&self) -> String {
        if self.0.is_empty() {
            return "none".into();
        }
        self.0
            .iter()
            .map(|(e, n)| format!("{}:{n}", if *e == 0 { "ok".to_string() } else { errno_name(*e) }))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Compact text form `e:n,e:n` (for child reports).
    pub fn encode(&self) -> String {
        self.0.iter().map(|(e, n)| format!("{e}:{n}")).collect::<Vec<_>>().join(",")
    }

    pub fn decode(s: &str) -> Hist {
        let mut h = Hist::default();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            if let Some((e, n)) = part.split_once(':') {
                if let (Ok(e), Ok(n)) = (e.parse(), n.parse()) {
                    h.0.insert(e, n);
                }
            }
        }
        h
    }
}

/// Percentile of a sorted slice.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sets the calling thread's nice value (root: negative values raise its priority).
pub fn set_nice(n: i32) {
    // SAFETY: plain system call on the calling thread.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, sys::gettid(), n) };
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!("sched_setaffinity cpu{cpu}: {}", errno_name(sys::errno())));
        }
    }
    Ok(())
}

/// The CPU the calling thread runs on.
pub fn current_cpu() -> i32 {
    // SAFETY: plain call.
    unsafe { libc::sched_getcpu() }
}

/// Raw begin/end write of a line: 0 or the errno (a short write is errno -1).
#[inline(always)]
pub fn span_write(fd: i32, line: &[u8]) -> i32 {
    // SAFETY: `line` is valid for its length.
    let r = unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
    if r < 0 {
        sys::errno()
    } else if r as usize == line.len() {
        0
    } else {
        -1
    }
}

/// Raw getpid (one system call).
#[inline(always)]
pub fn raw_getpid() -> i64 {
    // SAFETY: plain system call.
    unsafe { libc::syscall(libc::SYS_getpid) }
}

/// Raw nanosleep of `ns` (one system call).
#[inline(always)]
pub fn raw_nanosleep(ns: u64) {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: valid timespec.
    unsafe { libc::syscall(libc::SYS_nanosleep, &ts as *const libc::timespec, std::ptr::null_mut::<libc::timespec>()) };
}

/// Argument-less ioctl: 0 or errno.
pub fn ioctl0(fd: i32, cmd: u32) -> i32 {
    match sys::ioctl_plain(fd, cmd) {
        Ok(()) => 0,
        Err(e) => e,
    }
}

pub fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_default();
    let rest: Vec<String> = args.iter().skip(2).cloned().collect();
    // Child roles (re-executed copies of this program) report on stdout themselves.
    if let Some(code) = child::dispatch(&mode, &rest) {
        std::process::exit(code);
    }
    // SAFETY: plain query.
    if unsafe { libc::geteuid() } != 0 {
        println!("not ok - spantrack-stress must run as root");
        std::process::exit(1);
    }
    let mut rep = Report::new(&mode);
    fig!(
        "spantrack-stress {mode}: scale {} ({} kernel), pid {}",
        scale(),
        if is_debug_kernel() { "debug" } else { "release" },
        sys::getpid()
    );
    let t0 = Instant::now();
    match mode.as_str() {
        "threads" => threads::run(&mut rep),
        "procs" => procs::run(&mut rep),
        "forkexec" => forkexec::run(&mut rep),
        "tables" => tables::run(&mut rep),
        "slots" => slots::run(&mut rep),
        "capacity" => capacity::run(&mut rep),
        "relayfull" => relayfull::run(&mut rep),
        "unload" => reload::run_unload(&mut rep, rest.first().map(String::as_str).unwrap_or("")),
        "reload" => reload::run_reload(
            &mut rep,
            rest.first().map(String::as_str).unwrap_or(""),
            rest.get(1).and_then(|s| s.parse().ok()).unwrap_or(10),
        ),
        "fuzz" => fuzz::run(
            &mut rep,
            rest.first().and_then(|s| s.parse().ok()),
            rest.get(1).and_then(|s| s.parse().ok()),
        ),
        _ => {
            rep.check(
                "usage",
                Err(format!(
                    "unknown mode {mode:?}: threads|procs|forkexec|tables|capacity|relayfull|unload KO|reload KO [N]|fuzz [SEED [ITERS]]"
                )),
            );
        }
    }
    fig!("{mode} took {:.1} s", t0.elapsed().as_secs_f64());
    std::process::exit(rep.finish());
}
