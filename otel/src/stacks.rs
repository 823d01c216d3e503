//! Where a wait blocked: the kernel and user stacks the module keeps with each of a record's
//! longest waits (`uapi::WaitEntry::kstack`, `ustack`) → the frames of the wait event's
//! `spantrack.wait.kernel_stack` and `spantrack.wait.user_stack` (README, "What a slow span
//! carries"). The Python hook's `spantrack_hook/stacks.py` writes the same strings from the
//! same symbol sources; the golden records check both with fixed ones
//! (`tests/golden/kallsyms.txt`, `maps.txt`).
//!
//! - Kernel: `function+0xOFF` from the text symbols of `/proc/kallsyms` (kernel and modules),
//!   read once, in the background ([`HostSymbolizer`]); `0x<hex>` when it hides its
//!   addresses (not root, `kptr_restrict`) or is not loaded yet. The scheduler's and the
//!   probe's own frames are dropped.
//! - User: the function and, where debug information has it, ` (file:line)`, resolved in
//!   this process with the `backtrace` crate (the standard library's own symboliser); where
//!   no function is found, `<file name of the mapping>+0x<offset>` from `/proc/self/maps`;
//!   else `0x<hex>`.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::{Array, StringValue, Value};
use spantrack_uapi::RecordHeader;

/// Attribute keys on a `spantrack.wait` event.
pub mod attr {
    /// Kernel frames at the blocking switch, innermost first, without the scheduler's own.
    pub const KERNEL_STACK: &str = "spantrack.wait.kernel_stack";
    /// User frames of the blocking system call, innermost first.
    pub const USER_STACK: &str = "spantrack.wait.user_stack";
}

/// Leading kernel frames that say only "the scheduler switched": dropped.
pub fn is_scheduler_frame(name: &str, module: bool) -> bool {
    matches!(name, "__schedule" | "schedule" | "schedule_preempt_disabled")
        || name.starts_with("__traceiter_")
        // Linux 7.x calls a tracepoint's probes from an out-of-line __do_trace_<event>.
        || name.starts_with("__do_trace_")
        || (module && name.starts_with("st_probe_"))
}

/// `0x<hex>`: an address without a name.
pub fn raw(addr: u64) -> String {
    let mut s = String::with_capacity(hex_len(addr));
    push_hex(&mut s, addr);
    s
}

/// Lower-case hex digits.
pub(crate) const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `v` as `format!("{v:#x}")` spells it (`0x` and lower-case digits, no leading
/// zeros): the worker names every frame with an offset, and `core::fmt` costs ~700
/// instructions per number.
pub fn push_hex(out: &mut String, v: u64) {
    let mut buf = [0u8; 18];
    let (mut i, mut x) = (buf.len(), v);
    loop {
        i -= 1;
        buf[i] = HEX_DIGITS[(x & 0xf) as usize];
        x >>= 4;
        if x == 0 {
            break;
        }
    }
    buf[i - 2] = b'0';
    buf[i - 1] = b'x';
    out.push_str(std::str::from_utf8(&buf[i - 2..]).unwrap_or("0x?"));
}

/// The length of [`push_hex`]'s text: exact, so that the attribute value (a boxed `str`)
/// takes the string without reallocating it.
fn hex_len(v: u64) -> usize {
    2 + ((64 - v.leading_zeros()).max(1)).div_ceil(4) as usize
}

/// `<name>+0x<off>`.
fn name_plus(name: &str, off: u64) -> String {
    let mut s = String::with_capacity(name.len() + 1 + hex_len(off));
    s.push_str(name);
    s.push('+');
    push_hex(&mut s, off);
    s
}

/// The text symbols of a `/proc/kallsyms` text (types `t`, `T`, `w`, `W`; the kernel's and
/// the modules'), sorted by address; of several at one address, the first listed.
#[derive(Debug, Default)]
pub struct KernelSymbols {
    /// (address, name's start in `names`, name's length, a module's symbol).
    syms: Vec<(u64, u32, u32, bool)>,
    names: String,
}

impl KernelSymbols {
    /// The symbols of `text`; `None` when no text symbol has a non-zero address (the file
    /// hides them: not root, `kptr_restrict`).
    pub fn parse(text: &str) -> Option<KernelSymbols> {
        let mut k = KernelSymbols::default();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else { continue };
            let module = f.next().is_some_and(|m| m.starts_with('['));
            let (Ok(start), Ok(len)) = (u32::try_from(k.names.len()), u32::try_from(name.len())) else {
                break;
            };
            k.names.push_str(name);
            k.syms.push((addr, start, len, module));
        }
        if !k.syms.iter().any(|s| s.0 != 0) {
            return None;
        }
        k.syms.sort_by_key(|s| s.0); // stable: the first listed stays first
        k.syms.dedup_by_key(|s| s.0);
        Some(k)
    }

    /// Symbols kept.
    pub fn len(&self) -> usize {
        self.syms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// The function a kernel return address belongs to: the symbol at or below `addr - 1`
    /// (the call before it), with `addr`'s offset from it and whether it is a module's.
    pub fn lookup(&self, addr: u64) -> Option<(&str, u64, bool)> {
        let key = addr.checked_sub(1)?;
        let i = self.syms.partition_point(|s| s.0 <= key).checked_sub(1)?;
        let (a, start, len, module) = self.syms[i];
        Some((&self.names[start as usize..(start + len) as usize], addr - a, module))
    }
}

/// The kernel frames of `addrs` (innermost first): `function+0xOFF`, the leading scheduler
/// and probe frames ([`is_scheduler_frame`]) dropped; without symbols every address as
/// `0x<hex>`, none dropped.
pub fn kernel_frames(syms: Option<&KernelSymbols>, addrs: &[u64]) -> Vec<String> {
    let mut out = Vec::with_capacity(addrs.len());
    let mut leading = true;
    for &a in addrs {
        let hit = syms.and_then(|s| s.lookup(a));
        if leading && hit.is_some_and(|(name, _, module)| is_scheduler_frame(name, module)) {
            continue;
        }
        leading = false;
        out.push(match hit {
            Some((name, off, _)) => name_plus(name, off),
            None => raw(a),
        });
    }
    out
}

/// The mappings of a `/proc/<pid>/maps` text.
#[derive(Clone, Debug, Default)]
pub struct ProcessMaps {
    /// (start, end, file offset, the path's last component; `None`: anonymous), by start.
    maps: Vec<(u64, u64, u64, Option<String>)>,
}

impl ProcessMaps {
    pub fn parse(text: &str) -> ProcessMaps {
        let mut maps = Vec::new();
        for line in text.lines() {
            // start-end perms offset dev inode [path]: the path is the rest (it may hold
            // spaces), trimmed.
            let mut rest = line;
            let mut f: [&str; 5] = [""; 5];
            for slot in &mut f {
                rest = rest.trim_start();
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                *slot = &rest[..end];
                rest = &rest[end..];
            }
            let path = rest.trim();
            if f[4].is_empty() {
                continue;
            }
            let Some((s, e)) = f[0].split_once('-') else { continue };
            let (Ok(s), Ok(e), Ok(off)) =
                (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16), u64::from_str_radix(f[2], 16))
            else {
                continue;
            };
            let name = (!path.is_empty()).then(|| path.rsplit('/').next().unwrap_or(path).to_string());
            maps.push((s, e, off, name));
        }
        maps.sort_by_key(|m| m.0);
        ProcessMaps { maps }
    }

    /// The mapping that holds `addr`: its name (`None`: anonymous) and `addr`'s file offset.
    pub fn mapping(&self, addr: u64) -> Option<(Option<&str>, u64)> {
        let i = self.maps.partition_point(|m| m.0 <= addr).checked_sub(1)?;
        let (s, e, off, name) = &self.maps[i];
        (addr < *e).then(|| (name.as_deref(), addr - s + off))
    }

    /// `<file name>+0x<offset>` (`libc.so.6+0xe8f3a`); `None` outside any mapping or in an
    /// anonymous one.
    pub fn lookup(&self, addr: u64) -> Option<String> {
        match self.mapping(addr)? {
            (Some(name), off) => Some(name_plus(name, off)),
            (None, _) => None,
        }
    }
}

/// The user frames of `addrs` from the mappings alone: `<file name>+0x<offset>`, else
/// `0x<hex>` (the Python hook's user stacks).
pub fn user_frames_from_maps(maps: &ProcessMaps, addrs: &[u64]) -> Vec<String> {
    addrs.iter().map(|&a| maps.lookup(a).unwrap_or_else(|| raw(a))).collect()
}

/// What turns a wait's addresses into frames.
pub trait Symbolizer: Send + Sync {
    /// [`attr::KERNEL_STACK`]'s frames.
    fn kernel_stack(&self, addrs: &[u64]) -> Vec<String>;
    /// [`attr::USER_STACK`]'s frames.
    fn user_stack(&self, addrs: &[u64]) -> Vec<String>;
}

/// Fixed symbol sources (tests, golden records): kallsyms and maps texts, no debug
/// information; the frames the Python hook writes from the same texts.
#[derive(Debug, Default)]
pub struct Symbols {
    pub kallsyms: Option<KernelSymbols>,
    pub maps: ProcessMaps,
}

impl Symbols {
    /// From a kallsyms text (`None`: unreadable) and a maps text (`None`: none).
    pub fn from_texts(kallsyms: Option<&str>, maps: Option<&str>) -> Symbols {
        Symbols {
            kallsyms: kallsyms.and_then(KernelSymbols::parse),
            maps: maps.map(ProcessMaps::parse).unwrap_or_default(),
        }
    }
}

impl Symbolizer for Symbols {
    fn kernel_stack(&self, addrs: &[u64]) -> Vec<String> {
        kernel_frames(self.kallsyms.as_ref(), addrs)
    }

    fn user_stack(&self, addrs: &[u64]) -> Vec<String> {
        user_frames_from_maps(&self.maps, addrs)
    }
}

/// The functions at a user address in this process, from its debug information (inlined
/// calls first, innermost first): `name` or `name (file:line)`; empty when none is found.
/// `addr` is a return address (or the address after the `syscall` instruction): the call
/// before it is looked up.
pub fn debug_info_frames(addr: u64) -> Vec<String> {
    let mut out = Vec::new();
    if addr == 0 {
        return out;
    }
    // `resolve` looks up `addr - 1` itself, and only reads this process's mapped files.
    backtrace::resolve(addr as usize as *mut c_void, |sym| {
        let Some(name) = sym.name() else { return };
        let mut s = format!("{name:#}");
        if let (Some(file), Some(line)) = (sym.filename(), sym.lineno()) {
            s += &format!(" ({}:{line})", file.display());
        }
        out.push(s);
    });
    out
}

/// How often a user stack with an address outside every known mapping may re-read
/// `/proc/self/maps` (a library loaded since; or a wrong frame pointer, which stays unknown).
const MAPS_REREAD: Duration = Duration::from_secs(1);

/// User addresses whose debug-information frames [`HostSymbolizer`] remembers (then it
/// forgets them all).
const DEBUG_CACHE: usize = 4096;

/// This process's symbols: `/proc/kallsyms`, its own debug information (each library's
/// loaded once, by the `backtrace` crate; the frames of the last [`DEBUG_CACHE`] addresses
/// remembered), `/proc/self/maps` (re-read when an address is in no known mapping).
///
/// Loading kallsyms or a library's debug information takes seconds on a slow machine (a
/// 20 MB Rust binary under emulation: more than the SDK's 5 s flush timeout), so it is
/// never done on the annotator's thread: a loader thread of its own ([`set_thread_init`]
/// makes it untracked) does it in the background, and until a source is loaded the stacks
/// that need it say less (kernel `0x<hex>`, user `<file>+0x<offset>`) instead of holding up
/// every span behind them. The processor asks for the kernel's symbols and its own
/// executable's debug information when it starts ([`HostSymbolizer::warm_up`]).
pub struct HostSymbolizer {
    kallsyms: OnceLock<Option<KernelSymbols>>,
    maps: Mutex<(Option<Arc<ProcessMaps>>, Option<Instant>)>,
    debug: Mutex<BTreeMap<u64, Vec<String>>>,
    loader: Mutex<Loader>,
}

/// The background loader's state.
struct Loader {
    /// Where to send work, and the process that started the thread (a forked child starts
    /// its own).
    tx: Option<(std::sync::mpsc::Sender<Load>, u32)>,
    /// Kernel symbols asked for.
    kernel: bool,
    /// Mapped files whose debug information was asked for (with the address that loads
    /// it), and those loaded.
    asked: BTreeMap<String, u64>,
    loaded: std::collections::BTreeSet<String>,
}

enum Load {
    Kernel,
    /// A file's debug information, loaded by resolving one of its addresses.
    Debug(String, u64),
}

/// What the loader thread runs first (the processor makes it untracked by the module).
static THREAD_INIT: OnceLock<Box<dyn Fn() + Send + Sync>> = OnceLock::new();

/// Sets what the symbol loader's thread runs when it starts (once per process).
pub fn set_thread_init(f: impl Fn() + Send + Sync + 'static) {
    let _ = THREAD_INIT.set(Box::new(f));
}

impl HostSymbolizer {
    pub const fn new() -> HostSymbolizer {
        HostSymbolizer {
            kallsyms: OnceLock::new(),
            maps: Mutex::new((None, None)),
            debug: Mutex::new(BTreeMap::new()),
            loader: Mutex::new(Loader {
                tx: None,
                kernel: false,
                asked: BTreeMap::new(),
                loaded: std::collections::BTreeSet::new(),
            }),
        }
    }

    /// Asks the loader for what the stacks of `h`'s waits need (never waits for it).
    pub fn prepare(&'static self, h: &RecordHeader) {
        for w in crate::sched::waits(h) {
            let (kstack, ustack) = crate::sched::wait_stacks(w);
            if !kstack.is_empty() {
                self.ask(None);
            }
            if !ustack.is_empty() {
                let maps = self.maps_for(ustack);
                for &a in ustack {
                    if let Some((Some(file), _)) = maps.mapping(a) {
                        self.ask(Some((file, a)));
                    }
                }
            }
        }
    }

    /// Asks for the kernel's symbols and this executable's debug information now, before a
    /// stack needs them.
    pub fn warm_up(&'static self) {
        self.ask(None);
        let here = debug_info_frames as *const () as usize as u64;
        let maps = self.maps_for(&[here]);
        if let Some((Some(file), _)) = maps.mapping(here) {
            self.ask(Some((file, here)));
        }
    }

    /// Whether everything asked for so far is loaded (read from what is loaded, not from a
    /// count of requests: a forked child inherits the parent's state but not its loader).
    pub fn ready(&self) -> bool {
        let l = self.loader.lock().unwrap_or_else(|e| e.into_inner());
        (!l.kernel || self.kallsyms.get().is_some()) && l.asked.keys().all(|f| l.loaded.contains(f))
    }

    /// Sends a request to the loader (started on first use), once per source.
    fn ask(&'static self, what: Option<(&str, u64)>) {
        let mut l = self.loader.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        if l.tx.as_ref().is_some_and(|t| t.1 != pid) {
            // A forked child: the parent's loader thread and its queue stayed behind. What the
            // parent had asked for and not loaded yet is asked again, from a loader of ours.
            l.tx = None;
            let mut redo: Vec<Load> = Vec::new();
            if l.kernel && self.kallsyms.get().is_none() {
                redo.push(Load::Kernel);
            }
            redo.extend(l.asked.iter().filter(|(f, _)| !l.loaded.contains(*f)).map(|(f, a)| Load::Debug(f.clone(), *a)));
            for load in redo {
                self.send(&mut l, load);
            }
        }
        let load = match what {
            None if l.kernel => return,
            None => {
                l.kernel = true;
                Load::Kernel
            }
            Some((file, _)) if l.asked.contains_key(file) => return,
            Some((file, addr)) => {
                l.asked.insert(file.to_string(), addr);
                Load::Debug(file.to_string(), addr)
            }
        };
        self.send(&mut l, load);
    }

    /// Hands `load` to this process's loader thread, started on first use.
    fn send(&'static self, l: &mut Loader, load: Load) {
        let pid = std::process::id();
        if l.tx.as_ref().is_none_or(|t| t.1 != pid) {
            let (tx, rx) = std::sync::mpsc::channel::<Load>();
            let started = std::thread::Builder::new().name("spantrack-syms".into()).spawn(move || {
                if let Some(init) = THREAD_INIT.get() {
                    init();
                }
                let host = self;
                while let Ok(load) = rx.recv() {
                    match load {
                        Load::Kernel => {
                            host.kallsyms.get_or_init(|| {
                                std::fs::read_to_string("/proc/kallsyms").ok().and_then(|t| KernelSymbols::parse(&t))
                            });
                        }
                        Load::Debug(file, addr) => {
                            let _ = debug_info_frames(addr);
                            host.loader.lock().unwrap_or_else(|e| e.into_inner()).loaded.insert(file);
                        }
                    }
                }
            });
            match started {
                Ok(_) => l.tx = Some((tx, pid)),
                // No thread: the stacks stay unnamed (never loaded on the annotator's thread).
                Err(_) => return,
            }
        }
        if let Some((tx, _)) = &l.tx {
            let _ = tx.send(load);
        }
    }

    /// [`debug_info_frames`], remembered; empty while the file's debug information is not
    /// loaded, and (for an address not remembered) while the loader loads any file's: the
    /// `backtrace` crate resolves under one process-wide lock, which the loader holds for
    /// the whole of a file's debug information (seconds on an emulated CPU), and the
    /// annotator never waits for the loader.
    fn debug_frames(&self, file: Option<&str>, addr: u64) -> Vec<String> {
        let Some(file) = file else { return Vec::new() };
        let idle = {
            let l = self.loader.lock().unwrap_or_else(|e| e.into_inner());
            if !l.loaded.contains(file) {
                return Vec::new();
            }
            l.asked.keys().all(|f| l.loaded.contains(f))
        };
        if let Some(f) = self.debug.lock().unwrap_or_else(|e| e.into_inner()).get(&addr) {
            return f.clone();
        }
        if !idle {
            return Vec::new();
        }
        let f = debug_info_frames(addr);
        let mut cache = self.debug.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= DEBUG_CACHE {
            cache.clear();
        }
        cache.insert(addr, f.clone());
        f
    }

    /// The kernel's symbols, once loaded.
    fn kernel_symbols(&self) -> Option<&KernelSymbols> {
        self.kallsyms.get().and_then(Option::as_ref)
    }

    /// The mappings, read again when one of `addrs` is in none of them (at most once per
    /// [`MAPS_REREAD`]).
    fn maps_for(&self, addrs: &[u64]) -> Arc<ProcessMaps> {
        let mut m = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let unknown = addrs.iter().any(|&a| m.0.as_ref().is_none_or(|p| p.mapping(a).is_none()));
        if unknown && m.1.is_none_or(|t| t.elapsed() >= MAPS_REREAD) {
            if let Ok(t) = std::fs::read_to_string("/proc/self/maps") {
                m.0 = Some(Arc::new(ProcessMaps::parse(&t)));
            }
            m.1 = Some(Instant::now());
        }
        // Shared, not copied: a copy was a string per mapping for every wait.
        Arc::clone(m.0.get_or_insert_with(|| Arc::new(ProcessMaps::default())))
    }
}

impl Default for HostSymbolizer {
    fn default() -> Self {
        HostSymbolizer::new()
    }
}

impl Symbolizer for HostSymbolizer {
    fn kernel_stack(&self, addrs: &[u64]) -> Vec<String> {
        kernel_frames(self.kernel_symbols(), addrs)
    }

    fn user_stack(&self, addrs: &[u64]) -> Vec<String> {
        let maps = self.maps_for(addrs);
        let mut out = Vec::with_capacity(addrs.len());
        for &a in addrs {
            let named = self.debug_frames(maps.mapping(a).and_then(|m| m.0), a);
            if named.is_empty() {
                out.push(maps.lookup(a).unwrap_or_else(|| raw(a)));
            } else {
                out.extend(named);
            }
        }
        out
    }
}

/// The process's [`HostSymbolizer`].
pub fn host() -> &'static HostSymbolizer {
    static HOST: HostSymbolizer = HostSymbolizer::new();
    &HOST
}

/// A string-array attribute value.
pub fn string_array(frames: Vec<String>) -> Value {
    Value::Array(Array::String(frames.into_iter().map(StringValue::from).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KALLSYMS: &str = "\
ffffffff81c5ea70 T schedule
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81c5e1a0 t __schedule
ffffffff810c4a40 T __traceiter_sched_switch
ffffffff82a01000 D jiffies
ffffffff81c63f20 t do_nanosleep
ffffffff811e0000 T hrtimer_nanosleep
ffffffff81c5ec00 T io_schedule
ffffffff81001000 W arch_cpu_idle_dead
ffffffffc0a10000 t st_probe_sched_switch\t[spantrack]
ffffffffc0a20000 t st_probe_other\t[other]
ffffffff81c64000 t st_probe_lookalike
";

    #[test]
    fn hex_is_core_fmts() {
        let mut v = 1u64;
        for x in [0, 1, 9, 10, 15, 16, 0xff, 0x100, 0xdead_beef, u64::MAX, 0xffff_ffff_8100_0000] {
            assert_eq!(raw(x), format!("{x:#x}"));
        }
        for _ in 0..64 {
            assert_eq!(name_plus("f", v), format!("f+{v:#x}"));
            v = v.wrapping_mul(3) ^ (v << 1);
        }
    }

    #[test]
    fn kallsyms_are_sorted_text_symbols_first_listed_wins() {
        let k = KernelSymbols::parse(KALLSYMS).unwrap();
        assert_eq!(k.len(), 11, "jiffies is data; _text is _stext's alias");
        assert_eq!(k.lookup(0xffffffff81000010), Some(("_stext", 0x10, false)));
        assert_eq!(k.lookup(0xffffffff81c5ea97), Some(("schedule", 0x27, false)));
        // A return address at a symbol's start belongs to the call before it.
        assert_eq!(k.lookup(0xffffffff81c5ec00), Some(("schedule", 0x190, false)));
        assert_eq!(k.lookup(0xffffffff81c5ec01), Some(("io_schedule", 1, false)));
        assert_eq!(k.lookup(0xffffffff81000000), None, "below the first symbol");
        assert_eq!(k.lookup(0), None);
        assert_eq!(k.lookup(0xffffffffc0a1005a), Some(("st_probe_sched_switch", 0x5a, true)));
        assert_eq!(k.lookup(0xffffffff81001008), Some(("arch_cpu_idle_dead", 8, false)));
        // Hidden addresses: unusable.
        let hidden = KALLSYMS
            .lines()
            .map(|l| format!("0000000000000000{}\n", &l[16..]))
            .collect::<String>();
        assert!(KernelSymbols::parse(&hidden).is_none());
        assert!(KernelSymbols::parse("").is_none());
    }

    #[test]
    fn leading_scheduler_frames_are_dropped() {
        let k = KernelSymbols::parse(KALLSYMS).unwrap();
        let stack = [
            0xffffffffc0a1005a, // st_probe_sched_switch [spantrack]
            0xffffffff810c4a7c, // __traceiter_sched_switch
            0xffffffff81c5e591, // __schedule
            0xffffffff81c5ea97, // schedule
            0xffffffff81c5ec46, // io_schedule
            0xffffffff81c5ea97, // schedule again: not leading, kept
            0xffffffff811e00b4, // hrtimer_nanosleep
            0xffffffff80000010, // below every symbol
        ];
        assert_eq!(
            kernel_frames(Some(&k), &stack),
            ["io_schedule+0x46", "schedule+0x27", "hrtimer_nanosleep+0xb4", "0xffffffff80000010"]
        );
        // 7.x: the tracepoint's out-of-line caller is the scheduler's too.
        assert!(is_scheduler_frame("__do_trace_sched_switch", false));
        assert!(!is_scheduler_frame("do_trace_sched_switch", false));
        // Only a module's st_probe_ is the probe.
        assert_eq!(
            kernel_frames(Some(&k), &[0xffffffff81c64010, 0xffffffffc0a20010]),
            ["st_probe_lookalike+0x10", "st_probe_other+0x10"]
        );
        assert_eq!(kernel_frames(Some(&k), &[0xffffffffc0a20010, 0xffffffff81c5ea97]), Vec::<String>::new());
        // Nothing but scheduler frames: nothing left.
        assert!(kernel_frames(Some(&k), &stack[..4]).is_empty());
        // Without symbols: every address, none dropped.
        assert_eq!(kernel_frames(None, &stack[..2]), ["0xffffffffc0a1005a", "0xffffffff810c4a7c"]);
    }

    const MAPS: &str = "\
55d0c0a4c000-55d0c0c3e000 r-xp 0004c000 fe:01 1311                       /usr/local/bin/catalog-svc
55d0c0a00000-55d0c0a4c000 r--p 00000000 fe:01 1311                       /usr/local/bin/catalog-svc
7f2a90000000-7f2a90021000 rw-p 00000000 00:00 0 
7f2a93a26000-7f2a93b7b000 r-xp 00026000 fe:01 2201                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f2a93c00000-7f2a93c40000 r-xp 00001000 fe:01 3301                       /opt/my plugins/libplug in.so
7ffd8e5f6000-7ffd8e5f8000 r-xp 00000000 00:00 0                          [vdso]
";

    #[test]
    fn user_frames_from_the_mappings() {
        let m = ProcessMaps::parse(MAPS);
        let addrs = [0x7f2a93ae8f3a, 0x55d0c0b12345, 0x55d0c0a00010, 0x7f2a93c01234, 0x7ffd8e5f6a10, 0x7f2a90000100, 0x1234, 0x7f2a93b7b000];
        assert_eq!(
            user_frames_from_maps(&m, &addrs),
            [
                "libc.so.6+0xe8f3a",
                "catalog-svc+0x112345",
                "catalog-svc+0x10",
                "libplug in.so+0x2234",
                "[vdso]+0xa10",
                "0x7f2a90000100",
                "0x1234",
                "0x7f2a93b7b000",
            ]
        );
        assert_eq!(m.mapping(0x7f2a90000100), Some((None, 0x100)));
        assert!(ProcessMaps::parse("garbage\n\n").maps.is_empty());
    }

    #[inline(never)]
    fn a_function_with_a_name() -> u64 {
        std::hint::black_box(7)
    }

    /// A symboliser of the test's own, its loader done.
    fn loaded(h: &RecordHeader) -> &'static HostSymbolizer {
        let s: &'static HostSymbolizer = Box::leak(Box::new(HostSymbolizer::new()));
        s.prepare(h);
        let t0 = Instant::now();
        while !s.ready() {
            assert!(t0.elapsed() < Duration::from_secs(60), "the loader never finished");
            std::thread::sleep(Duration::from_millis(5));
        }
        s
    }

    fn header_with(ustack: &[u64], kstack: &[u64]) -> RecordHeader {
        let mut h = RecordHeader { flags: spantrack_uapi::REC_SCHED, ..RecordHeader::default() };
        h.sched.n_waits = 1;
        h.sched.waits[0].ustack[..ustack.len()].copy_from_slice(ustack);
        h.sched.waits[0].n_ustack = ustack.len() as _;
        h.sched.waits[0].kstack[..kstack.len()].copy_from_slice(kstack);
        h.sched.waits[0].n_kstack = kstack.len() as _;
        h
    }

    #[test]
    fn this_process_resolves_its_own_functions() {
        // The address just after the function's start, as a return address into it would be.
        let addr = a_function_with_a_name as *const () as usize as u64 + 1;
        let f = debug_info_frames(addr);
        assert!(f.iter().any(|s| s.contains("a_function_with_a_name")), "{f:?}");
        assert!(f.iter().any(|s| s.contains("stacks.rs:")), "debug information gives the file and line: {f:?}");
        let getpid = libc::getpid as *const () as usize as u64 + 1;
        let h = loaded(&header_with(&[addr, getpid], &[]));
        let u = h.user_stack(&[addr, 0x10]);
        assert!(u[0].contains("a_function_with_a_name"), "{u:?}");
        assert_eq!(u.last().map(String::as_str), Some("0x10"));
        // libc's own functions: from its symbol table (no file), else its mapping.
        let g = h.user_stack(&[getpid]);
        assert!(g.len() == 1 && (g[0].contains("getpid") || g[0].contains("libc.so")), "{g:?}");
    }

    #[test]
    fn until_its_debug_information_is_loaded_a_frame_is_its_file_and_offset() {
        let addr = a_function_with_a_name as *const () as usize as u64 + 1;
        let s: &'static HostSymbolizer = Box::leak(Box::new(HostSymbolizer::new()));
        // Nothing asked for: the annotator never loads on its own thread.
        let u = s.user_stack(&[addr]);
        assert!(u.len() == 1 && u[0].contains("+0x") && !u[0].contains("a_function_with_a_name"), "{u:?}");
        assert_eq!(s.kernel_stack(&[0xffffffff81000010]), ["0xffffffff81000010"]);
        assert!(s.ready());
    }

    #[test]
    fn prepare_loads_what_a_records_stacks_need_in_the_background() {
        let addr = a_function_with_a_name as *const () as usize as u64 + 1;
        let s = loaded(&header_with(&[addr], &[]));
        assert_eq!(s.loader.lock().unwrap().loaded.len(), 1, "the test binary's debug information");
        assert!(s.maps.lock().unwrap().1.is_some(), "the mappings were read");
        assert!(s.kallsyms.get().is_none(), "no kernel stack: /proc/kallsyms is not read");
        s.prepare(&header_with(&[addr], &[0xffffffff81000010]));
        let t0 = Instant::now();
        while !s.ready() && t0.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(s.kallsyms.get().is_some());
        // No scheduler part: nothing.
        let t: &'static HostSymbolizer = Box::leak(Box::new(HostSymbolizer::new()));
        t.prepare(&RecordHeader { flags: 0, ..header_with(&[addr], &[1]) });
        assert!(t.kallsyms.get().is_none() && !t.loader.lock().unwrap().kernel && t.ready());
    }

    #[test]
    fn a_forked_child_asks_again_what_the_parent_had_not_loaded() {
        // The state a child inherits from a parent whose loader had a file in its queue: the
        // loader belongs to another process, the file is asked for and not loaded.
        let addr = a_function_with_a_name as *const () as usize as u64 + 1;
        let s: &'static HostSymbolizer = Box::leak(Box::new(HostSymbolizer::new()));
        let file = {
            let maps = s.maps_for(&[addr]);
            match maps.mapping(addr) {
                Some((Some(f), _)) => f.to_string(),
                other => panic!("no mapping for the test binary: {other:?}"),
            }
        };
        {
            let (tx, _rx) = std::sync::mpsc::channel();
            let mut l = s.loader.lock().unwrap();
            l.tx = Some((tx, std::process::id().wrapping_add(1)));
            l.asked.insert(file.clone(), addr);
        }
        assert!(!s.ready(), "asked for and not loaded");
        // The child's next request (of anything) starts its own loader, which loads both.
        s.prepare(&header_with(&[], &[0xffffffff81000010]));
        let t0 = Instant::now();
        while !s.ready() {
            assert!(t0.elapsed() < Duration::from_secs(60), "the child's loader never finished");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(s.loader.lock().unwrap().loaded.contains(&file));
        assert!(s.kallsyms.get().is_some());
        assert!(s.user_stack(&[addr])[0].contains("a_function_with_a_name"));
    }
}
