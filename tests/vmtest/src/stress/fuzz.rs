//! Bad input to every entry point, with a seeded PRNG and an independent model of what
//! each input must do (written from the README/uapi specification, not from the module's
//! parsers):
//! - random, mutated, partial, oversized and multi-iovec writes to `begin`/`end` from a
//!   registered thread (the model tracks its open spans) and from an unregistered one;
//! - writes from bad user pointers (NULL, unmapped, PROT_NONE, straddling into an unmapped
//!   page, kernel and non-canonical addresses);
//! - every ioctl number of type 0xB9 with every direction and several sizes, random
//!   command values with random arguments, INFO with bad pointers; unsupported operations
//!   (write to `control`, reads of the span files, mmap, ioctl on the span files);
//! - invalid and valid values for every tunable, huge `filter` lists, writes of 4096 bytes
//!   and more, a write to `stats`.
//! Each gets its exact errno; the counters move exactly as the model says and nothing else
//! changes (stats and tunables compared periodically and at the end).

use super::{ioctl0, Hist, Report, Rng};
use crate::fig;
use crate::sys::{self, errno_name, Fd};
use crate::sysfs::{self, Stats, TunableGuard};
use spantrack_logic::syscalls::{syscall_name, syscall_nr_bytes, FILTER_BITS};
use spantrack_uapi as uapi;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

const LINE_MAX_GLUE: usize = 64;
const PAGE: usize = 4096;

// ---------------------------------------------------------------------------------------
// The specification, independently: span lines
// ---------------------------------------------------------------------------------------

fn hexv(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `"<32 hex> <16 hex>"` plus an optional `'\n'`, either case, neither id all zero: the
/// 24 id bytes.
fn spec_line(b: &[u8]) -> Option<[u8; 24]> {
    let l = b.strip_suffix(b"\n").unwrap_or(b);
    if l.len() != 49 || l[32] != b' ' {
        return None;
    }
    let mut id = [0u8; 24];
    let digits: Vec<u8> = l[..32].iter().chain(&l[33..]).copied().collect();
    for (i, pair) in digits.chunks(2).enumerate() {
        id[i] = (hexv(pair[0])? << 4) | hexv(pair[1])?;
    }
    if id[..16].iter().all(|&x| x == 0) || id[16..].iter().all(|&x| x == 0) {
        return None;
    }
    Some(id)
}

/// What the main (registered) thread's spans are, and the counters the model expects.
#[derive(Default)]
struct Model {
    stack: Vec<[u8; 24]>,
    lines: HashMap<[u8; 24], Vec<u8>>,
    d: BTreeMap<&'static str, i128>,
}

impl Model {
    fn bump(&mut self, name: &'static str) {
        *self.d.entry(name).or_default() += 1;
    }

    /// The result of one write of `b` (the byte count or the errno), and its effect.
    fn write(&mut self, is_end: bool, b: &[u8], tracked: bool) -> Result<usize, i32> {
        if b.is_empty() || b.len() > LINE_MAX_GLUE {
            return Err(libc::EINVAL);
        }
        // ABI 4: a begin line may end in " <1-13 digits>" (its threshold, at most 1 hour:
        // ERANGE above).
        let (ids, threshold) = match b.strip_suffix(b"\n").unwrap_or(b) {
            l if !is_end && l.len() > 50 && l[49] == b' ' => (&l[..49], Some(&l[50..])),
            _ => (b, None),
        };
        let Some(id) = spec_line(ids) else {
            self.bump(if is_end { "ends_malformed" } else { "begins_malformed" });
            return Err(libc::EINVAL);
        };
        if let Some(t) = threshold {
            if t.is_empty() || t.len() > 13 || !t.iter().all(u8::is_ascii_digit) {
                self.bump("begins_malformed");
                return Err(libc::EINVAL);
            }
            let v: u64 = std::str::from_utf8(t).ok().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
            if v > 3_600_000_000_000 {
                self.bump("begins_malformed");
                return Err(libc::ERANGE);
            }
        }
        if !tracked {
            self.bump(if is_end { "ends_untracked" } else { "begins_untracked" });
            return Err(libc::EPERM);
        }
        if is_end {
            match self.stack.iter().position(|x| *x == id) {
                Some(p) => {
                    self.stack.remove(p);
                    self.bump("spans_ended");
                    Ok(b.len())
                }
                None => {
                    self.bump("ends_unknown");
                    Err(libc::ENOENT)
                }
            }
        } else if self.stack.contains(&id) {
            // (This thread has no active-span slot: the same span id under another trace
            // id is another span.)
            self.bump("begins_duplicate");
            Err(libc::EEXIST)
        } else if self.stack.len() >= uapi::MAX_DEPTH {
            self.bump("begins_too_deep");
            Err(libc::EOVERFLOW)
        } else {
            self.stack.push(id);
            self.lines.insert(id, b.to_vec());
            self.bump("spans_begun");
            Ok(b.len())
        }
    }
}

/// ABI 4: gives a valid begin line a threshold sometimes: valid ones of 50 to 60 minutes (no
/// fuzzed span lasts that long: the model writes no records), some too large or too long.
/// Only on unmutated lines, so that no mutation can leave a short valid threshold.
fn add_threshold(rng: &mut Rng, l: &mut Vec<u8>) {
    if !rng.chance(150) {
        return;
    }
    let nl = l.last() == Some(&b'\n');
    if nl {
        l.pop();
    }
    let v = match rng.below(3) {
        0 => 3_000_000_000_000 + rng.below(600_000_000_001),
        1 => 3_600_000_000_000 + rng.below(10),
        _ => 10_000_000_000_000 + rng.next_u64() % 90_000_000_000_000, // 14 digits
    };
    l.extend_from_slice(format!(" {v}").as_bytes());
    if nl {
        l.push(b'\n');
    }
}

/// Lines: valid ones over a small pool of ids (so that duplicates and ends of open spans
/// happen), mutations, partial lines, zero ids, random and oversized bytes.
fn gen_line(rng: &mut Rng, pool: &[[u8; 50]]) -> Vec<u8> {
    let base = *rng.pick(pool);
    let valid = |rng: &mut Rng| -> Vec<u8> {
        let mut l = base.to_vec();
        if rng.chance(200) {
            l.make_ascii_uppercase();
        }
        if rng.chance(200) {
            l.pop();
        }
        l
    };
    match rng.below(100) {
        0..=39 => {
            let mut l = valid(rng);
            add_threshold(rng, &mut l);
            l
        }
        40..=59 => {
            let mut l = valid(rng);
            match rng.below(6) {
                0 => {
                    let p = rng.below(l.len() as u64) as usize;
                    l[p] = rng.next_u64() as u8;
                }
                1 => {
                    let p = rng.below(l.len() as u64 + 1) as usize;
                    l.insert(p, rng.next_u64() as u8);
                }
                2 => {
                    let p = rng.below(l.len() as u64) as usize;
                    l.remove(p);
                }
                3 => l.truncate(rng.below(l.len() as u64) as usize),
                4 => {
                    for _ in 0..rng.range(1, 20) {
                        l.push(rng.next_u64() as u8);
                    }
                }
                _ => {
                    let p = rng.below(l.len() as u64) as usize;
                    l[p] = *rng.pick(b"gG \t\n\0xX-");
                }
            }
            l
        }
        60..=67 => {
            let mut l = base.to_vec();
            let (a, b) = if rng.chance(500) { (0, 32) } else { (33, 49) };
            for c in &mut l[a..b] {
                *c = b'0';
            }
            l
        }
        68..=77 => (0..rng.below(100)).map(|_| rng.next_u64() as u8).collect(),
        78..=85 => {
            let n = rng.range(65, 5000) as usize;
            let mut l = base.to_vec();
            l.resize(n, *rng.pick(b"0a\n "));
            l
        }
        86..=89 => Vec::new(),
        _ => {
            // Right shape, random hex (rarely zero).
            let mut l = Vec::with_capacity(50);
            for i in 0..49 {
                l.push(if i == 32 { b' ' } else { *rng.pick(b"0123456789abcdef000") });
            }
            l.push(b'\n');
            l
        }
    }
}

// ---------------------------------------------------------------------------------------
// The specification of the tunables
// ---------------------------------------------------------------------------------------

/// What kernfs hands the module: at most a page; an empty write never reaches it.
fn sysfs_view(b: &[u8]) -> &[u8] {
    &b[..b.len().min(PAGE)]
}

/// Unsigned decimal, one optional trailing `'\n'`, in `min..=max`.
fn spec_u64(b: &[u8], min: u64, max: u64) -> Result<u64, i32> {
    let l = b.strip_suffix(b"\n").unwrap_or(b);
    if l.is_empty() || !l.iter().all(u8::is_ascii_digit) {
        return Err(libc::EINVAL);
    }
    let mut v: u64 = 0;
    for &c in l {
        v = v.checked_mul(10).and_then(|v| v.checked_add(u64::from(c - b'0'))).ok_or(libc::EINVAL)?;
    }
    if v < min || v > max {
        return Err(libc::ERANGE);
    }
    Ok(v)
}

/// A filter as a set: allowed numbers below FILTER_BITS, and whether the others are.
type FilterSet = (Vec<bool>, bool);

/// `all` | `allow[ <list>]` | `deny[ <list>]`, list = comma-separated names, numbers
/// `< 512` or ranges `a-b` (a <= b), one optional trailing `'\n'`.
fn spec_filter(b: &[u8]) -> Result<FilterSet, i32> {
    let n = FILTER_BITS as usize;
    let l = b.strip_suffix(b"\n").unwrap_or(b);
    if l == b"all" {
        return Ok((vec![true; n], true));
    }
    let (allow, rest) = if let Some(r) = l.strip_prefix(b"allow") {
        (true, r)
    } else if let Some(r) = l.strip_prefix(b"deny") {
        (false, r)
    } else {
        return Err(libc::EINVAL);
    };
    let items: &[u8] = match rest {
        [] => &[],
        [b' ', x @ ..] if !x.is_empty() => x,
        _ => return Err(libc::EINVAL),
    };
    let mut set = vec![!allow; n];
    let num = |d: &[u8]| -> Option<usize> {
        if d.is_empty() || !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut v: u64 = 0;
        for &c in d {
            v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        }
        (v < n as u64).then_some(v as usize)
    };
    if !items.is_empty() {
        for it in items.split(|&c| c == b',') {
            let (a, z) = if it.first().is_some_and(u8::is_ascii_digit) {
                match it.iter().position(|&c| c == b'-') {
                    Some(p) => {
                        let (a, z) = (num(&it[..p]).ok_or(libc::EINVAL)?, num(&it[p + 1..]).ok_or(libc::EINVAL)?);
                        if a > z {
                            return Err(libc::EINVAL);
                        }
                        (a, z)
                    }
                    None => {
                        let a = num(it).ok_or(libc::EINVAL)?;
                        (a, a)
                    }
                }
            } else {
                let nr = syscall_nr_bytes(it).ok_or(libc::EINVAL)? as usize;
                (nr, nr)
            };
            for x in &mut set[a..=z] {
                *x = allow;
            }
        }
    }
    Ok((set, !allow))
}

fn gen_number(rng: &mut Rng, max: u64) -> Vec<u8> {
    let digits = |rng: &mut Rng, n: u64| -> Vec<u8> { (0..n).map(|_| b'0' + rng.below(10) as u8).collect() };
    let mut v: Vec<u8> = match rng.below(16) {
        0 => format!("{}", rng.below(max.saturating_add(1))).into_bytes(),
        1 => format!("{}", max.saturating_add(1 + rng.below(1000))).into_bytes(),
        2 => {
            let n = rng.range(1, 25);
            digits(rng, n)
        }
        3 => [b"-".as_slice(), &digits(rng, 3)].concat(),
        4 => [b"+".as_slice(), &digits(rng, 3)].concat(),
        5 => format!("0x{:x}", rng.below(1 << 20)).into_bytes(),
        6 => format!(" {}", rng.below(1000)).into_bytes(),
        7 => format!("{} ", rng.below(1000)).into_bytes(),
        8 => format!("{}.{}", rng.below(10), rng.below(10)).into_bytes(),
        9 => b"18446744073709551616".to_vec(),
        10 => {
            // Up to a page and beyond of leading zeros, then a small number.
            let n = rng.range(1, 4200);
            let mut z = vec![b'0'; n as usize];
            z.extend_from_slice(format!("{}", rng.below(1000)).as_bytes());
            z
        }
        11 => vec![b'9'; rng.range(20, 4200) as usize],
        12 => (0..rng.range(1, 40)).map(|_| rng.next_u64() as u8).collect(),
        13 => Vec::new(),
        14 => b"\n".to_vec(),
        _ => format!("{}\0", rng.below(1000)).into_bytes(),
    };
    match rng.below(10) {
        0..=3 => v.push(b'\n'),
        4 => v.extend_from_slice(b"\n\n"),
        _ => {}
    }
    v
}

fn gen_filter(rng: &mut Rng) -> Vec<u8> {
    let names: Vec<&str> = (0..FILTER_BITS).filter_map(syscall_name).collect();
    let mut v: Vec<u8> = match rng.below(20) {
        0..=1 => b"all".to_vec(),
        2..=8 => b"allow".to_vec(),
        9..=15 => b"deny".to_vec(),
        16 => b"ALLOW".to_vec(),
        17 => b" deny".to_vec(),
        18 => b"al".to_vec(),
        _ => (0..rng.range(1, 8)).map(|_| rng.next_u64() as u8).collect(),
    };
    let huge = rng.chance(150);
    let n_items = if huge { 100_000 } else { rng.below(8) };
    if n_items > 0 || rng.chance(100) {
        v.extend_from_slice(match rng.below(20) {
            0 => b"  ",
            1 => b"\t",
            _ => b" ",
        });
    }
    let target = if huge { rng.range(3900, 4300) as usize } else { usize::MAX };
    for i in 0..n_items {
        if v.len() >= target {
            break;
        }
        if i > 0 {
            v.extend_from_slice(match rng.below(50) {
                0 => b", ",
                1 => b";",
                _ => b",",
            });
        }
        let item: Vec<u8> = match rng.below(100) {
            0..=44 => rng.pick(&names).as_bytes().to_vec(),
            45..=64 => format!("{}", rng.below(600)).into_bytes(),
            65..=79 => format!("{}-{}", rng.below(560), rng.below(600)).into_bytes(),
            80..=84 => b"nosuchcall".to_vec(),
            85..=87 => b"READ".to_vec(),
            88..=90 => Vec::new(),
            91..=93 => format!("0{}", rng.below(600)).into_bytes(),
            _ => (0..rng.range(1, 6)).map(|_| rng.next_u64() as u8).collect(),
        };
        v.extend_from_slice(&item);
    }
    match rng.below(10) {
        0..=3 => v.push(b'\n'),
        4 => v.extend_from_slice(b"\n\n"),
        5 => v.push(b' '),
        _ => {}
    }
    v
}

// ---------------------------------------------------------------------------------------
// Bad memory
// ---------------------------------------------------------------------------------------

/// Three pages: RW, unmapped (a hole), PROT_NONE.
struct BadMem {
    base: usize,
}

impl BadMem {
    fn new() -> Result<BadMem, String> {
        // SAFETY: anonymous mapping; then we punch a hole and protect a page.
        unsafe {
            let p = libc::mmap(std::ptr::null_mut(), 4 * PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
            if p == libc::MAP_FAILED {
                return Err("mmap".into());
            }
            let base = p as usize;
            libc::munmap((base + PAGE) as *mut libc::c_void, PAGE);
            libc::mprotect((base + 2 * PAGE) as *mut libc::c_void, PAGE, libc::PROT_NONE);
            libc::mprotect((base + 3 * PAGE) as *mut libc::c_void, PAGE, libc::PROT_READ);
            Ok(BadMem { base })
        }
    }
    fn rw(&self) -> usize {
        self.base
    }
    fn hole(&self) -> usize {
        self.base + PAGE
    }
    fn none(&self) -> usize {
        self.base + 2 * PAGE
    }
    fn ro(&self) -> usize {
        self.base + 3 * PAGE
    }
}

const KERNEL_PTR: usize = 0xffff_ffff_8100_0000;
const NONCANONICAL_PTR: usize = 0x8000_0000_0000_1000;

fn raw_write(fd: i32, ptr: usize, len: usize) -> Result<usize, i32> {
    // SAFETY: deliberately bad pointers: the kernel must refuse them (EFAULT), never
    // touch this process's memory wrongly.
    let r = unsafe { libc::syscall(libc::SYS_write, fd, ptr, len) };
    if r < 0 {
        Err(sys::errno())
    } else {
        Ok(r as usize)
    }
}

fn raw_ioctl(fd: i32, cmd: u32, arg: usize) -> i32 {
    // SAFETY: deliberately random commands and arguments.
    let r = unsafe { libc::syscall(libc::SYS_ioctl, fd, cmd as libc::c_ulong, arg) };
    if r < 0 {
        sys::errno()
    } else {
        0
    }
}

/// Commands the VFS handles itself on any file (do_vfs_ioctl, file_ioctl): not the
/// module's to answer.
fn vfs_cmd(cmd: u32) -> bool {
    let ty = (cmd >> 8) & 0xff;
    cmd <= 2 || matches!(ty, 0x54 | 0x66 | 0x58 | 0x94 | 0x15)
}

const KNOWN: [u32; 6] = [
    uapi::IOCTL_REGISTER,
    uapi::IOCTL_UNREGISTER_THREAD,
    uapi::IOCTL_UNREGISTER,
    uapi::IOCTL_INFO,
    uapi::IOCTL_RELAY_FDS,
    uapi::IOCTL_SET_ACTIVE_SLOT,
];

// ---------------------------------------------------------------------------------------

struct Fails {
    n: u64,
    first: Vec<String>,
    by_kind: BTreeMap<&'static str, u64>,
}

impl Fails {
    fn new() -> Fails {
        Fails {
            n: 0,
            first: Vec::new(),
            by_kind: BTreeMap::new(),
        }
    }
    fn push(&mut self, kind: &'static str, msg: String) {
        self.n += 1;
        *self.by_kind.entry(kind).or_default() += 1;
        if self.first.len() < 12 {
            self.first.push(format!("[{kind}] {msg}"));
        }
    }
    fn result(&self) -> Result<(), String> {
        if self.n == 0 {
            Ok(())
        } else {
            Err(format!("{} mismatches {:?}; first: {}", self.n, self.by_kind, self.first.join("; ")))
        }
    }
}

fn show(b: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(&b[..b.len().min(60)]).escape_debug().to_string();
    if b.len() > 60 {
        s.push_str(&format!("...({} bytes)", b.len()));
    }
    s
}

fn res_name(r: Result<usize, i32>) -> String {
    match r {
        Ok(n) => format!("ok({n})"),
        Err(e) => errno_name(e),
    }
}

pub fn run(rep: &mut Report, seed: Option<u64>, iters: Option<u64>) {
    if let Err(e) = run_inner(rep, seed, iters) {
        rep.check("fuzz: setup", Err(e));
    }
}

fn run_inner(rep: &mut Report, seed: Option<u64>, iters: Option<u64>) -> Result<(), String> {
    let seed = seed.unwrap_or_else(super::clock_seed);
    let iters = iters.unwrap_or_else(|| super::scaled(20_000, 2_000));
    fig!("fuzz: seed {seed}, {iters} iterations (repeat with: spantrack-stress fuzz {seed} {iters})");
    let mut rng = Rng::new(seed);
    let _g = TunableGuard::save()?;
    // No record from the fuzz's spans, and no expiry of the spans it keeps open.
    sysfs::set(sysfs::THRESHOLD, "3600000000000")?;
    sysfs::set(sysfs::TIMEOUT, "86400000000000")?;
    let pid = sys::getpid();
    let control = Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY)?;
    let control_w = Fd::open(uapi::PROC_CONTROL, libc::O_WRONLY)?;
    let begin = Fd::open(uapi::PROC_BEGIN, libc::O_WRONLY)?;
    let end = Fd::open(uapi::PROC_END, libc::O_WRONLY)?;
    let begin_r = Fd::open(uapi::PROC_BEGIN, libc::O_RDONLY)?;
    let end_rw = Fd::open(uapi::PROC_END, libc::O_RDWR)?;
    let mem = BadMem::new()?;
    let pool: Vec<[u8; 50]> = (0..24).map(|i| super::key3(seed, 99, i).line()).collect();
    let mut model = Model::default();
    let t_orig = sysfs::snapshot()?;
    let s0 = Stats::read()?;
    let mut fails = Fails::new();
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let t0 = Instant::now();

    // Phase 1: an unregistered thread writes random lines while this (unregistered) thread
    // sweeps every 0xB9 ioctl. Then this thread registers.
    let helper_seed = rng.next_u64();
    let helper_n = iters / 5;
    let helper_pool = pool.clone();
    let (hb, he) = (begin.raw(), end.raw());
    let helper = std::thread::spawn(move || {
        let mut rng = Rng::new(helper_seed);
        let mut m = Model::default();
        let mut bad = Vec::new();
        for _ in 0..helper_n {
            let l = gen_line(&mut rng, &helper_pool);
            let is_end = rng.chance(500);
            let want = m.write(is_end, &l, false);
            let got = sys::write_once(if is_end { he } else { hb }, &l);
            if got != want {
                bad.push(format!("unregistered {} {}: {} expected {}", if is_end { "end" } else { "begin" }, show(&l), res_name(got), res_name(want)));
            }
        }
        (m.d, bad)
    });
    let mut sweep = Hist::default();
    for fd in [control.raw(), begin.raw()] {
        for nr in 0..=255u32 {
            for dir in 0..4u32 {
                for size in [0u32, 8, 40, 64, 255, 16383] {
                    let cmd = (dir << 30) | (size << 16) | (uapi::IOCTL_TYPE << 8) | nr;
                    if fd == control.raw() && KNOWN.contains(&cmd) {
                        continue;
                    }
                    let arg = match nr % 3 {
                        0 => 0,
                        1 => mem.rw(),
                        _ => KERNEL_PTR,
                    };
                    let r = raw_ioctl(fd, cmd, arg);
                    sweep.add(r);
                    if r != libc::ENOTTY {
                        fails.push("ioctl sweep", format!("fd {} cmd {cmd:#010x} arg {arg:#x}: {} expected ENOTTY", if fd == control.raw() { "control" } else { "begin" }, errno_name(r)));
                    }
                }
            }
        }
    }
    // The known commands on the span files: no ioctl there.
    for cmd in KNOWN {
        let r = raw_ioctl(begin.raw(), cmd, mem.rw());
        sweep.add(r);
        if r != libc::ENOTTY {
            fails.push("ioctl sweep", format!("begin fd known cmd {cmd:#x}: {}", errno_name(r)));
        }
    }
    // Unregistered: the process-wide ones say ENOENT.
    for cmd in [uapi::IOCTL_UNREGISTER, uapi::IOCTL_UNREGISTER_THREAD, uapi::IOCTL_RELAY_FDS] {
        let r = raw_ioctl(control.raw(), cmd, KERNEL_PTR);
        if r != libc::ENOENT {
            fails.push("ioctl", format!("cmd {cmd:#x} unregistered: {} expected ENOENT", errno_name(r)));
        }
    }
    // An untracked thread has no slot to set, whatever the address.
    for arg in [0, mem.rw(), KERNEL_PTR, mem.rw() + 1] {
        let r = raw_ioctl(control.raw(), uapi::IOCTL_SET_ACTIVE_SLOT, arg);
        if r != libc::EPERM {
            fails.push("ioctl", format!("SET_ACTIVE_SLOT {arg:#x} unregistered: {} expected EPERM", errno_name(r)));
        }
    }
    let (hd, hbad) = helper.join().map_err(|_| "helper panicked".to_string())?;
    for (k, v) in hd {
        *model.d.entry(k).or_default() += v;
    }
    for b in &hbad {
        fails.push("untracked write", b.clone());
    }
    *counts.entry("untracked writes").or_default() += helper_n;
    *counts.entry("0xB9 ioctls swept").or_default() += sweep.total();
    // Register with garbage arguments.
    let r = raw_ioctl(control.raw(), uapi::IOCTL_REGISTER, KERNEL_PTR);
    if r != 0 {
        return Err(format!("REGISTER with a garbage argument: {}", errno_name(r)));
    }
    // SET_ACTIVE_SLOT, registered: a slot that cannot be read gets EFAULT, a misaligned one
    // EINVAL, and neither changes anything (the thread keeps its stack of spans).
    for (what, ptr, want) in [
        ("unmapped", mem.hole(), libc::EFAULT),
        ("PROT_NONE", mem.none(), libc::EFAULT),
        ("kernel", KERNEL_PTR, libc::EFAULT),
        ("misaligned", mem.rw() + 4, libc::EINVAL),
        ("odd", 1, libc::EINVAL),
    ] {
        let r = raw_ioctl(control.raw(), uapi::IOCTL_SET_ACTIVE_SLOT, ptr);
        if r != want {
            fails.push("SET_ACTIVE_SLOT", format!("{what} {ptr:#x}: {} expected {}", errno_name(r), errno_name(want)));
        }
    }
    // RELAY_FDS, registered: a bad buffer gets EFAULT and leaves no descriptor behind; a
    // good one gets one readable descriptor per possible CPU.
    {
        let open_fds = || std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
        let n0 = open_fds();
        for (what, ptr) in [("NULL", 0usize), ("unmapped", mem.hole()), ("PROT_NONE", mem.none()), ("read-only", mem.ro()), ("straddling", mem.hole() - 8), ("kernel", KERNEL_PTR)] {
            let r = raw_ioctl(control.raw(), uapi::IOCTL_RELAY_FDS, ptr);
            if r != libc::EFAULT {
                fails.push("RELAY_FDS", format!("{what} {ptr:#x}: {} expected EFAULT", errno_name(r)));
            }
            if open_fds() != n0 {
                fails.push("RELAY_FDS", format!("{what}: {} descriptors open, {n0} before", open_fds()));
            }
        }
        match super::reader::relay_fds(control.raw()) {
            Ok(f) => {
                let fds: Vec<i32> = f.fds.iter().copied().filter(|&fd| fd >= 0).collect();
                let cpus = std::fs::read_dir(crate::relay::Relay::dir_of(sys::getpid())).map(|d| d.count()).unwrap_or(0);
                if fds.len() != cpus || f.count as usize != cpus || open_fds() != n0 + cpus {
                    fails.push("RELAY_FDS", format!("count {} fds {fds:?}, {cpus} relay files, {} descriptors open ({n0} before)", f.count, open_fds()));
                }
                let mut buf = [0u8; 64];
                for fd in fds {
                    // SAFETY: descriptors the kernel gave us; closed here.
                    unsafe {
                        let r = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                        let w = libc::write(fd, buf.as_ptr().cast(), 1);
                        if r != 0 || w != -1 {
                            fails.push("RELAY_FDS", format!("fd {fd}: read {r} (expected 0, nothing written yet), write {w} (expected -1)"));
                        }
                        libc::close(fd);
                    }
                }
            }
            Err(e) => fails.push("RELAY_FDS", format!("valid buffer: {}", errno_name(e))),
        }
        *counts.entry("RELAY_FDS calls").or_default() += 7;
    }
    let s_phase1 = Stats::read()?;
    let check_stats = |model: &Model, s: &Stats, when: &str, fails: &mut Fails| {
        let exp: Vec<(&str, i128)> = model
            .d
            .iter()
            .map(|(k, v)| (*k, *v))
            .chain([
                ("open_spans", model.stack.len() as i128),
                ("processes", 1),
                ("processes_registered", 1),
                ("threads", 1),
                ("threads_added", 1),
            ])
            .collect();
        if let Err(e) = super::expect_all_deltas(&s0, s, &exp, &[&super::NOISY[..], &["spans_high_water"]].concat()) {
            fails.push("stats", format!("{when}: {e}"));
        }
    };
    check_stats(&model, &s_phase1, "after the ioctl sweep and the unregistered writes", &mut fails);

    // Phase 2: the random loop.
    let attrs: [(&str, u64, u64); 3] = [
        (sysfs::THRESHOLD, 0, 3_600_000_000_000),
        (sysfs::TIMEOUT, 1_000_000, 86_400_000_000_000),
        (sysfs::MAX_CALLS, 0, u64::from(spantrack_logic::record::MAX_CALLS_LIMIT)),
    ];
    let mut skipped_valid_timeouts = 0u64;
    for it in 0..iters {
        let pick = rng.below(100);
        let kind: &'static str = match pick {
            0..=41 => {
                let l = gen_line(&mut rng, &pool);
                let is_end = rng.chance(450);
                let fd = if is_end { if rng.chance(100) { end_rw.raw() } else { end.raw() } } else { begin.raw() };
                let want = model.write(is_end, &l, true);
                let got = sys::write_once(fd, &l);
                if got != want {
                    fails.push("span write", format!("{} {}: {} expected {}", if is_end { "end" } else { "begin" }, show(&l), res_name(got), res_name(want)));
                }
                "span writes"
            }
            42..=45 => {
                // writev: each iovec is one write, in order, up to the first error.
                let n = rng.range(1, 4) as usize;
                let ls: Vec<Vec<u8>> = (0..n).map(|_| {
                    let mut l = gen_line(&mut rng, &pool);
                    if l.is_empty() {
                        l.push(b'x');
                    }
                    l
                }).collect();
                let is_end = rng.chance(400);
                let mut want: Result<usize, i32> = Ok(0);
                for l in &ls {
                    match model.write(is_end, l, true) {
                        Ok(k) => want = Ok(want.unwrap_or(0) + k),
                        Err(e) => {
                            if want == Ok(0) {
                                want = Err(e);
                            }
                            break;
                        }
                    }
                }
                let iov: Vec<libc::iovec> = ls.iter().map(|l| libc::iovec { iov_base: l.as_ptr() as *mut libc::c_void, iov_len: l.len() }).collect();
                // SAFETY: valid iovecs.
                let r = unsafe { libc::writev(if is_end { end.raw() } else { begin.raw() }, iov.as_ptr(), iov.len() as i32) };
                let got = if r < 0 { Err(sys::errno()) } else { Ok(r as usize) };
                if got != want {
                    fails.push("writev", format!("{} x{n} [{}]: {} expected {}", if is_end { "end" } else { "begin" }, ls.iter().map(|l| show(l)).collect::<Vec<_>>().join(" | "), res_name(got), res_name(want)));
                }
                "writev"
            }
            46..=53 => {
                // Bad pointers.
                let mut len = rng.range(1, 200) as usize;
                let (what, ptr, user) = match rng.below(7) {
                    0 => ("NULL", 0usize, true),
                    1 => ("unmapped", mem.hole() + rng.below(PAGE as u64 - 200) as usize, true),
                    2 => ("PROT_NONE", mem.none() + rng.below(64) as usize, true),
                    3 => {
                        // Readable start, unreadable end.
                        len = len.max(2);
                        ("straddling", mem.hole() - rng.range(1, len as u64 - 1) as usize, true)
                    }
                    4 => ("kernel", KERNEL_PTR, false),
                    5 => ("non-canonical", NONCANONICAL_PTR, false),
                    _ => ("small", rng.range(1, 4095) as usize, true),
                };
                let fd = *rng.pick(&[begin.raw(), end.raw()]);
                let want = if !user {
                    Err(libc::EFAULT)
                } else if len > LINE_MAX_GLUE {
                    Err(libc::EINVAL)
                } else {
                    Err(libc::EFAULT)
                };
                let got = raw_write(fd, ptr, len);
                if got != want {
                    fails.push("bad pointer", format!("{what} {ptr:#x} len {len}: {} expected {}", res_name(got), res_name(want)));
                }
                "bad-pointer writes"
            }
            54..=58 => {
                // Unsupported operations.
                let mut buf = [0u8; 64];
                match rng.below(6) {
                    0 => {
                        let l = gen_line(&mut rng, &pool);
                        let got = sys::write_once(control_w.raw(), if l.is_empty() { b"x" } else { &l });
                        if got != Err(libc::EIO) {
                            fails.push("misuse", format!("write to control: {} expected EIO", res_name(got)));
                        }
                    }
                    1 | 2 => {
                        let fd = [begin_r.raw(), end_rw.raw(), control.raw()][rng.below(3) as usize];
                        // SAFETY: valid buffer.
                        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                        if r != -1 || sys::errno() != libc::EIO {
                            fails.push("misuse", format!("read of a proc file: {r} {}", errno_name(sys::errno())));
                        }
                    }
                    3 => {
                        // SAFETY: mapping a file without mmap support: must fail.
                        let p = unsafe { libc::mmap(std::ptr::null_mut(), PAGE, libc::PROT_READ, libc::MAP_SHARED, begin_r.raw(), 0) };
                        if p != libc::MAP_FAILED {
                            // SAFETY: unmapping what was (wrongly) mapped.
                            unsafe { libc::munmap(p, PAGE) };
                            fails.push("misuse", "mmap of begin succeeded".into());
                        } else if sys::errno() != libc::EIO {
                            fails.push("misuse", format!("mmap of begin: {} expected EIO", errno_name(sys::errno())));
                        }
                    }
                    4 => {
                        let r = raw_ioctl(begin.raw(), rng.next_u64() as u32, rng.next_u64() as usize);
                        if r != libc::ENOTTY {
                            // A random command may be one the VFS answers itself.
                        }
                    }
                    _ => {
                        // SAFETY: poll of a file without a poll method.
                        let mut p = libc::pollfd { fd: end.raw(), events: libc::POLLIN | libc::POLLOUT, revents: 0 };
                        unsafe { libc::poll(&mut p, 1, 0) };
                    }
                }
                "unsupported operations"
            }
            59..=68 => {
                // Random ioctl commands and arguments on control.
                let mut cmd = rng.next_u64() as u32;
                if rng.chance(300) {
                    cmd = (cmd & !0xff00) | (uapi::IOCTL_TYPE << 8);
                }
                if vfs_cmd(cmd) || KNOWN.contains(&cmd) {
                    cmd = (uapi::IOCTL_TYPE << 8) | 0xff;
                }
                let arg = match rng.below(6) {
                    0 => 0,
                    1 => rng.next_u64() as usize,
                    2 => KERNEL_PTR,
                    3 => mem.hole(),
                    4 => mem.rw(),
                    _ => rng.below(4096) as usize,
                };
                let r = raw_ioctl(control.raw(), cmd, arg);
                if r != libc::ENOTTY {
                    fails.push("random ioctl", format!("cmd {cmd:#010x} arg {arg:#x}: {} expected ENOTTY", errno_name(r)));
                }
                "random ioctls"
            }
            69..=72 => {
                // INFO with bad and good pointers; REGISTER again.
                let (what, ptr) = match rng.below(8) {
                    0 => ("NULL", 0usize),
                    1 => ("unmapped", mem.hole()),
                    2 => ("PROT_NONE", mem.none()),
                    3 => ("read-only", mem.ro()),
                    4 => ("straddling", mem.hole() - 8),
                    5 => ("kernel", KERNEL_PTR),
                    6 => ("small", rng.range(1, 4095) as usize),
                    _ => ("valid", mem.rw()),
                };
                let r = raw_ioctl(control.raw(), uapi::IOCTL_INFO, ptr);
                if what == "valid" {
                    // SAFETY: the kernel wrote an Info there (or the check below fails).
                    let info: uapi::Info = unsafe { std::ptr::read_unaligned(ptr as *const uapi::Info) };
                    if r != 0 || info.registered != 1 || info.abi_version != uapi::ABI_VERSION {
                        fails.push("INFO", format!("valid buffer: {} {info:?}", errno_name(r)));
                    }
                } else if r != libc::EFAULT {
                    fails.push("INFO", format!("{what} {ptr:#x}: {} expected EFAULT", errno_name(r)));
                }
                let r = ioctl0(control.raw(), uapi::IOCTL_REGISTER);
                if r != libc::EALREADY {
                    fails.push("REGISTER", format!("again: {} expected EALREADY", errno_name(r)));
                }
                "INFO/REGISTER"
            }
            _ => {
                // Tunables.
                let which = rng.below(11);
                if which == 10 {
                    // The counters cannot be written (root may open the file for writing;
                    // the write fails).
                    let written = match Fd::open_errno(uapi::PROC_STATS, libc::O_WRONLY) {
                        Err(_) => None,
                        // SAFETY: two bytes from a static buffer to an open descriptor.
                        Ok(f) => Some(unsafe { libc::write(f.raw(), b"0\n".as_ptr() as *const libc::c_void, 2) }),
                    };
                    if matches!(written, Some(n) if n >= 0) {
                        fails.push("sysfs", format!("{}: a write succeeded", uapi::PROC_STATS));
                    }
                    "sysfs writes"
                } else if which >= 6 {
                    let v = gen_filter(&mut rng);
                    let before = sysfs::read(sysfs::FILTER)?;
                    let want = if v.is_empty() { Ok(None) } else { spec_filter(sysfs_view(&v)).map(Some) };
                    let got = sysfs::write_raw(sysfs::FILTER, &v);
                    let after = sysfs::read(sysfs::FILTER)?;
                    match (&want, got) {
                        (Ok(None), Ok(0)) => {
                            if after != before {
                                fails.push("filter", format!("empty write changed {before:?} to {after:?}"));
                            }
                        }
                        (Ok(Some(set)), Ok(n)) if n == v.len().min(PAGE) => {
                            match spec_filter(after.as_bytes()) {
                                Ok(now) if now == *set => {}
                                other => fails.push("filter", format!("{} accepted but reads back {:?} ({:?})", show(&v), show(after.as_bytes()), other.map(|_| "another set"))),
                            }
                            sysfs::set(sysfs::FILTER, &before)?;
                        }
                        (Err(e), Err(g)) if *e == g => {
                            if after != before {
                                fails.push("filter", format!("refused {} changed {before:?} to {after:?}", show(&v)));
                            }
                        }
                        (w, g) => {
                            fails.push("filter", format!("{}: {} expected {:?}", show(&v), res_name(g), w.as_ref().map(|_| "ok").map_err(|e| errno_name(*e))));
                            let _ = sysfs::set(sysfs::FILTER, &before);
                        }
                    }
                    "sysfs writes"
                } else {
                    let (attr, min, max) = attrs[(which % 3) as usize];
                    let v = gen_number(&mut rng, max);
                    let before = sysfs::read(attr)?;
                    let want = if v.is_empty() { Ok(None) } else { spec_u64(sysfs_view(&v), min, max).map(Some) };
                    if attr == sysfs::TIMEOUT && matches!(want, Ok(Some(t)) if t < 3_600_000_000_000) {
                        // A short timeout would expire the model's open spans.
                        skipped_valid_timeouts += 1;
                    } else {
                        let got = sysfs::write_raw(attr, &v);
                        let after = sysfs::read(attr)?;
                        match (&want, got) {
                            (Ok(None), Ok(0)) => {}
                            (Ok(Some(x)), Ok(n)) if n == v.len().min(PAGE) => {
                                if after != x.to_string() {
                                    fails.push("number", format!("{attr} <- {}: reads {after:?}, expected {x}", show(&v)));
                                }
                                sysfs::set(attr, &before)?;
                            }
                            (Err(e), Err(g)) if *e == g => {}
                            (w, g) => {
                                fails.push("number", format!("{attr} <- {}: {} expected {:?}", show(&v), res_name(g), w.as_ref().map(|_| "ok").map_err(|e| errno_name(*e))));
                                let _ = sysfs::set(attr, &before);
                            }
                        }
                        let now = sysfs::read(attr)?;
                        if now != before {
                            fails.push("number", format!("{attr} is {now:?} after {}, was {before:?}", show(&v)));
                        }
                    }
                    "sysfs writes"
                }
            }
        };
        *counts.entry(kind).or_default() += 1;
        if it % 500 == 499 {
            let s = Stats::read()?;
            check_stats(&model, &s, &format!("after iteration {it}"), &mut fails);
            if sysfs::snapshot()? != t_orig_fuzz(&t_orig) {
                fails.push("tunables", format!("after iteration {it}: {:?}", sysfs::snapshot()?));
            }
            if fails.n > 200 {
                break;
            }
        }
    }
    // End what the model has open; then everything must be as the model says.
    let open: Vec<[u8; 24]> = model.stack.clone();
    for id in open.iter().rev() {
        let l = model.lines.get(id).cloned().unwrap_or_default();
        let want = model.write(true, &l, true);
        let got = sys::write_once(end.raw(), &l);
        if got != want {
            fails.push("final end", format!("{}: {} expected {}", show(&l), res_name(got), res_name(want)));
        }
    }
    let s1 = Stats::read()?;
    check_stats(&model, &s1, "at the end", &mut fails);
    let elapsed = t0.elapsed();
    // The relay stayed empty: no span was slow.
    let mut relay = super::reader::BulkReader::open(pid)?;
    let mut recs = 0;
    relay.poll(0, &mut rng, |_| recs += 1);
    let ur = ioctl0(control.raw(), uapi::IOCTL_UNREGISTER);
    let ur2 = ioctl0(control.raw(), uapi::IOCTL_UNREGISTER);
    fig!(
        "fuzz: {} operations in {:.1} s: {}; 0xB9 sweep {}; {skipped_valid_timeouts} valid short timeouts not written",
        counts.values().sum::<u64>(),
        elapsed.as_secs_f64(),
        counts.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
        sweep.describe()
    );
    fig!(
        "fuzz: counters moved: {}",
        model.d.iter().map(|(k, v)| format!("{k} +{v}")).collect::<Vec<_>>().join(", ")
    );
    rep.check(
        "fuzz: every bad input got its exact errno (span writes, writev, bad pointers, ioctls, INFO, unsupported operations, tunables), and the counters moved exactly as modelled",
        fails.result(),
    );
    rep.check(
        "fuzz: afterwards the tunables are as before, no record was written, UNREGISTER works once",
        (|| {
            let t = sysfs::snapshot()?;
            let mut bad = Vec::new();
            if t != t_orig_fuzz(&t_orig) {
                bad.push(format!("tunables {t:?}, expected {:?}", t_orig_fuzz(&t_orig)));
            }
            if recs != 0 || s1.delta(&s0, "spans_slow")? != 0 {
                bad.push(format!("{recs} records"));
            }
            if ur != 0 || ur2 != libc::ENOENT {
                bad.push(format!("UNREGISTER {} then {}", errno_name(ur), errno_name(ur2)));
            }
            if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) }
        })(),
    );
    let _ = Duration::ZERO;
    Ok(())
}

/// The tunables as the fuzz sets them (threshold and timeout at their maximum).
fn t_orig_fuzz(t: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    t.iter()
        .map(|(k, v)| {
            let v = match *k {
                sysfs::THRESHOLD => "3600000000000".to_string(),
                sysfs::TIMEOUT => "86400000000000".to_string(),
                _ => v.clone(),
            };
            (*k, v)
        })
        .collect()
}
