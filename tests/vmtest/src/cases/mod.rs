//! The test cases, each `fn(&mut Ctx) -> Result<(), String>`. A case restores the tunables
//! it changes (a `TunableGuard`), ends every span it began, and claims every record it
//! causes (the runner fails it if another record arrives).

pub mod errors;
pub mod lifecycle;
pub mod spans;
pub mod tunables;

use crate::checks::ensure;
use crate::sys::{self, errno_name};
use crate::sysfs::Stats;
use std::time::{Duration, Instant};

/// 1 ms, the threshold most cases use.
pub const MS: u64 = 1_000_000;

/// `Ok(())` when `r` is `Err(want)`.
pub fn expect_errno<T: std::fmt::Debug>(what: &str, r: Result<T, i32>, want: i32) -> Result<(), String> {
    match r {
        Err(e) if e == want => Ok(()),
        Err(e) => Err(format!("{what}: got {}, expected {}", errno_name(e), errno_name(want))),
        Ok(v) => Err(format!("{what}: succeeded ({v:?}), expected {}", errno_name(want))),
    }
}

/// Reads `stats` until `name` has moved by `want` from `before` (up to 1 s); returns the
/// last snapshot either way.
pub fn wait_stat(before: &Stats, name: &str, want: i128) -> Result<Stats, String> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let s = Stats::read()?;
        if s.delta(before, name)? == want || Instant::now() >= deadline {
            return Ok(s);
        }
        sys::sleep_ms(10);
    }
}

/// Waits until `cond` holds (up to `timeout`).
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

/// Collects failures of independent checks so that a case reports all of them.
#[derive(Default)]
pub struct Failures(Vec<String>);

impl Failures {
    pub fn check(&mut self, r: Result<(), String>) {
        if let Err(e) = r {
            self.0.push(e);
        }
    }

    pub fn push(&mut self, e: String) {
        self.0.push(e);
    }

    pub fn into_result(self) -> Result<(), String> {
        ensure!(self.0.is_empty(), "{}", self.0.join("; "));
        Ok(())
    }
}
