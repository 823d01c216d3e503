//! spantrack-vmtest: end-to-end test of `spantrack.ko` against a real kernel.
//!
//! Runs as root inside the test VM with the module loaded (the module is a shared global
//! state: run one instance at a time, with no other registered process). Prints one
//! `ok - <name>` / `not ok - <name>: <reason>` line per case and closes with
//! `# spantrack-vmtest: N passed, M failed`; exits 1 if any case failed.
//!
//! Usage: `spantrack-vmtest [WORD]` runs the cases whose name contains WORD (plus the
//! registration they depend on).

mod checks;
mod relay;
mod span;
mod sys;
mod sysfs;

mod cases;

use relay::Relay;
use span::Fds;
use spantrack_uapi as uapi;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A thread that runs jobs sent to it. The test's "thread created before REGISTER" is one.
pub struct Worker {
    tx: Option<mpsc::Sender<Job>>,
    handle: Option<JoinHandle<()>>,
    pub tid: u32,
}

impl Worker {
    pub fn spawn(name: &str) -> Result<Worker, String> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (tid_tx, tid_rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _ = tid_tx.send(sys::gettid());
                for job in rx {
                    job();
                }
            })
            .map_err(|e| format!("spawn {name}: {e}"))?;
        let tid = tid_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|e| format!("{name} did not start: {e}"))?;
        Ok(Worker {
            tx: Some(tx),
            handle: Some(handle),
            tid,
        })
    }

    /// Starts `f` on the worker; the receiver yields its result.
    pub fn start<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<mpsc::Receiver<T>, String> {
        let (rtx, rrx) = mpsc::channel();
        let tx = self.tx.as_ref().ok_or("worker stopped")?;
        tx.send(Box::new(move || {
            let _ = rtx.send(f());
        }))
        .map_err(|_| "worker gone".to_string())?;
        Ok(rrx)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// State shared by the cases.
pub struct Ctx {
    pub pid: u32,
    pub main_tid: u32,
    pub fds: Fds,
    _begin: sys::Fd,
    _end: sys::Fd,
    /// The control file, opened once at start.
    pub control: sys::Fd,
    /// The relay reader, opened by the registration case.
    pub relay: Option<Relay>,
    /// A thread spawned before REGISTER, parked until the threads case uses it.
    pub pre_worker: Option<Worker>,
    /// Stats when the run started (for the consistency case).
    pub stats_at_start: Option<sysfs::Stats>,
}

impl Ctx {
    pub fn relay(&mut self) -> Result<&mut Relay, String> {
        self.relay
            .as_mut()
            .ok_or_else(|| "process not registered (the registration case failed)".to_string())
    }
}

type CaseFn = fn(&mut Ctx) -> Result<(), String>;

struct Runner {
    passed: u32,
    failed: u32,
    filter: Option<String>,
}

impl Runner {
    fn report(&mut self, name: &str, res: Result<(), String>) {
        match res {
            Ok(()) => {
                self.passed += 1;
                println!("ok - {name}");
            }
            Err(e) => {
                self.failed += 1;
                println!("not ok - {name}: {}", e.replace('\n', " | "));
            }
        }
    }

    fn run(&mut self, ctx: &mut Ctx, name: &str, always: bool, f: CaseFn) {
        if !always {
            if let Some(w) = &self.filter {
                if !name.contains(w.as_str()) {
                    return;
                }
            }
        }
        let tunables = sysfs::snapshot();
        let stats = sysfs::Stats::read().ok();
        if let Some(r) = ctx.relay.as_mut() {
            r.discard_pending();
        }
        let res = panic::catch_unwind(AssertUnwindSafe(|| f(ctx))).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "?".into());
            Err(format!("panicked: {msg}"))
        });
        let mut reasons: Vec<String> = res.err().into_iter().collect();
        // No record may arrive that the case did not claim.
        if let Some(r) = ctx.relay.as_mut() {
            if reasons.is_empty() {
                if let Err(e) = r.expect_none() {
                    reasons.push(format!("after the case: {e}"));
                }
                if r.partial_bytes() != 0 {
                    reasons.push(format!(
                        "after the case: {} bytes of a partial record in the relay files",
                        r.partial_bytes()
                    ));
                }
            }
            r.discard_pending();
        }
        // Tunables as they were.
        match tunables {
            Ok(saved) => match sysfs::restore(&saved) {
                Ok(changed) if changed.is_empty() => {}
                Ok(changed) => reasons.push(format!("case left tunables changed ({})", changed.join(", "))),
                Err(e) => reasons.push(format!("restoring tunables: {e}")),
            },
            Err(e) => reasons.push(format!("reading tunables: {e}")),
        }
        // No span left open, when the module says how many are.
        if let (Some(before), Ok(after)) = (stats, sysfs::Stats::read()) {
            if let (Some((n, b)), Some((_, a))) = (before.open_gauge(), after.open_gauge()) {
                if a != b && reasons.is_empty() {
                    reasons.push(format!("{n} is {a} after the case, {b} before"));
                }
            }
        }
        let res = if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        };
        self.report(name, res);
    }

    fn finish(&self) -> ! {
        println!("# spantrack-vmtest: {} passed, {} failed", self.passed, self.failed);
        std::process::exit(if self.failed == 0 { 0 } else { 1 });
    }
}

/// The module's files are there (else nothing else can run).
fn module_present() -> Result<(), String> {
    let mut missing = Vec::new();
    for p in [
        uapi::PROC_CONTROL.to_string(),
        uapi::PROC_BEGIN.to_string(),
        uapi::PROC_END.to_string(),
        uapi::PROC_STATS.to_string(),
        uapi::RELAY_DIR.to_string(),
    ] {
        if !std::path::Path::new(&p).exists() {
            missing.push(p);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing {} (is spantrack.ko loaded, debugfs mounted?)",
            missing.join(", ")
        ))
    }
}

fn setup() -> Result<Ctx, String> {
    // SAFETY: plain query.
    let euid = unsafe { libc::geteuid() };
    checks::ensure!(
        euid == 0,
        "must run as root (euid {euid}): the tunables and relay files are root-only"
    );
    let begin = sys::Fd::open(uapi::PROC_BEGIN, libc::O_WRONLY)?;
    let end = sys::Fd::open(uapi::PROC_END, libc::O_WRONLY)?;
    let control = sys::Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY)?;
    Ok(Ctx {
        pid: sys::getpid(),
        main_tid: sys::gettid(),
        fds: Fds {
            begin: begin.raw(),
            end: end.raw(),
        },
        _begin: begin,
        _end: end,
        control,
        relay: None,
        pre_worker: None,
        stats_at_start: None,
    })
}

fn main() {
    panic::set_hook(Box::new(|info| println!("# panic: {info}")));
    let mut runner = Runner {
        passed: 0,
        failed: 0,
        filter: std::env::args().nth(1),
    };
    let present = module_present();
    let ok = present.is_ok();
    runner.report("module present", present);
    if !ok {
        runner.finish();
    }
    let mut ctx = match setup() {
        Ok(c) => c,
        Err(e) => {
            runner.report("setup", Err(e));
            runner.finish();
        }
    };
    // A thread that exists before REGISTER: parked on its job channel until the threads case.
    match Worker::spawn("pre-register") {
        Ok(w) => ctx.pre_worker = Some(w),
        Err(e) => runner.report("spawn a thread before REGISTER", Err(e)),
    }
    ctx.stats_at_start = sysfs::Stats::read().ok();

    runner.run(&mut ctx, "registration", true, cases::lifecycle::registration);
    runner.run(&mut ctx, "nested spans on the main thread", false, cases::spans::nested);
    runner.run(&mut ctx, "fast span gives no record", false, cases::spans::fast_span);
    runner.run(
        &mut ctx,
        "threads created before and after REGISTER",
        false,
        cases::spans::threads,
    );
    runner.run(
        &mut ctx,
        "end from another thread",
        false,
        cases::spans::ended_elsewhere,
    );
    runner.run(
        &mut ctx,
        "own end write never blocks in the span",
        false,
        cases::spans::own_end_never_blocks,
    );
    runner.run(&mut ctx, "begin/end errors", false, cases::errors::span_errors);
    runner.run(
        &mut ctx,
        "thread exits with an open span",
        false,
        cases::errors::thread_exit,
    );
    runner.run(&mut ctx, "span expired by timeout_ns", false, cases::errors::expiry);
    runner.run(
        &mut ctx,
        "threshold changed at run time",
        false,
        cases::tunables::threshold,
    );
    runner.run(&mut ctx, "max_calls truncates", false, cases::tunables::max_calls);
    runner.run(&mut ctx, "filter deny getpid", false, cases::tunables::filter);
    runner.run(&mut ctx, "sysfs refuses bad values", false, cases::tunables::bad_values);
    runner.run(&mut ctx, "poll on the control file", false, cases::lifecycle::poll);
    runner.run(
        &mut ctx,
        "stats consistency",
        false,
        cases::lifecycle::stats_consistency,
    );
    runner.run(&mut ctx, "UNREGISTER", true, cases::lifecycle::unregister);

    ctx.pre_worker.take();
    runner.finish();
}
