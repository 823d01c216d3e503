//! `/sys/kernel/spantrack`: tunables (read, write, restore) and the `stats` counters.

use crate::sys::{self, errno_name, Fd};
use spantrack_uapi as uapi;
use std::collections::BTreeMap;

pub const THRESHOLD: &str = "threshold_ns";
pub const TIMEOUT: &str = "timeout_ns";
pub const MAX_CALLS: &str = "max_calls";
pub const FILTER: &str = "filter";
pub const MAX_PROCS_PER_UID: &str = "max_procs_per_uid";
/// The tunables a case may change (and must restore).
pub const TUNABLES: [&str; 5] = [THRESHOLD, TIMEOUT, MAX_CALLS, FILTER, MAX_PROCS_PER_UID];

pub fn path(name: &str) -> String {
    format!("{}/{}", uapi::SYSFS_DIR, name)
}

/// The value of a sysfs file without its trailing newline.
pub fn read(name: &str) -> Result<String, String> {
    let p = path(name);
    let s = std::fs::read_to_string(&p).map_err(|e| format!("read {p}: {e}"))?;
    Ok(s.strip_suffix('\n').unwrap_or(&s).to_string())
}

/// One `write(2)` of exactly `bytes` to a sysfs file: the count or the errno.
pub fn write_raw(name: &str, bytes: &[u8]) -> Result<usize, i32> {
    let fd = Fd::open_errno(&path(name), libc::O_WRONLY)?;
    sys::write_once(fd.raw(), bytes)
}

/// Writes `value` and checks that it reads back.
pub fn set(name: &str, value: &str) -> Result<(), String> {
    match write_raw(name, value.as_bytes()) {
        Ok(n) if n == value.len() => {}
        Ok(n) => return Err(format!("write {value:?} to {name}: short write {n}")),
        Err(e) => return Err(format!("write {value:?} to {name}: {}", errno_name(e))),
    }
    let got = read(name)?;
    if got != value {
        return Err(format!("{name} reads {got:?} after writing {value:?}"));
    }
    Ok(())
}

/// Values of every tunable.
pub fn snapshot() -> Result<Vec<(&'static str, String)>, String> {
    TUNABLES.iter().map(|&n| read(n).map(|v| (n, v))).collect()
}

/// Writes back every tunable whose value differs from `saved`; lists what it restored.
pub fn restore(saved: &[(&'static str, String)]) -> Result<Vec<String>, String> {
    let mut changed = Vec::new();
    let mut errors = Vec::new();
    for (name, value) in saved {
        match read(name) {
            Ok(now) if &now == value => {}
            Ok(now) => {
                changed.push(format!("{name} was {now:?}, restored {value:?}"));
                if let Err(e) = set(name, value) {
                    errors.push(e);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(changed)
    } else {
        Err(errors.join("; "))
    }
}

/// Restores the tunables saved at creation when dropped (each case that changes one holds
/// one, so that early returns restore too).
pub struct TunableGuard {
    saved: Vec<(&'static str, String)>,
}

impl TunableGuard {
    pub fn save() -> Result<TunableGuard, String> {
        Ok(TunableGuard { saved: snapshot()? })
    }
}

impl Drop for TunableGuard {
    fn drop(&mut self) {
        if let Err(e) = restore(&self.saved) {
            println!("# warning: restoring tunables: {e}");
        }
    }
}

/// The `stats` file: `name value` lines.
#[derive(Clone, Debug)]
pub struct Stats {
    pub map: BTreeMap<String, u64>,
    pub text: String,
}

pub const SPANS_BEGUN: &str = "spans_begun";
pub const SPANS_ENDED: &str = "spans_ended";
pub const SPANS_SLOW: &str = "spans_slow";
pub const SPANS_EXPIRED: &str = "spans_expired";
pub const SPANS_ABANDONED: &str = "spans_abandoned";
pub const RECORDS_WRITTEN: &str = "records_written";
pub const RECORDS_DROPPED: &str = "records_dropped";
/// Names a gauge of currently open spans may have (optional in the interface).
pub const OPEN_GAUGES: [&str; 2] = ["spans_open", "open_spans"];

impl Stats {
    pub fn read() -> Result<Stats, String> {
        let p = uapi::PROC_STATS;
        let text = std::fs::read_to_string(&p).map_err(|e| format!("read {p}: {e}"))?;
        let mut map = BTreeMap::new();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            if let (Some(name), Some(v), None) = (it.next(), it.next(), it.next()) {
                if let Ok(v) = v.parse::<u64>() {
                    map.insert(name.to_string(), v);
                }
            }
        }
        Ok(Stats { map, text })
    }

    pub fn get(&self, name: &str) -> Result<u64, String> {
        self.map
            .get(name)
            .copied()
            .ok_or_else(|| format!("stats has no {name:?}; stats:\n{}", self.text.trim_end()))
    }

    /// The value of the open-spans gauge, if the module has one.
    pub fn open_gauge(&self) -> Option<(&'static str, u64)> {
        OPEN_GAUGES.iter().find_map(|&n| self.map.get(n).map(|&v| (n, v)))
    }

    /// `self[name] - before[name]`.
    pub fn delta(&self, before: &Stats, name: &str) -> Result<i128, String> {
        Ok(i128::from(self.get(name)?) - i128::from(before.get(name)?))
    }

    /// Checks each `(name, expected delta)` against `before`; on mismatch lists all of them
    /// and prints both snapshots.
    pub fn expect_deltas(&self, before: &Stats, expect: &[(&str, i128)]) -> Result<(), String> {
        let mut bad = Vec::new();
        for &(name, want) in expect {
            let d = self.delta(before, name)?;
            if d != want {
                bad.push(format!("{name} changed by {d}, expected {want}"));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{}; stats before: [{}] after: [{}]",
                bad.join(", "),
                one_line(&before.text),
                one_line(&self.text)
            ))
        }
    }
}

pub fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}
