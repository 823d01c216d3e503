//! Reading this process's relay files `RELAY_DIR/<tgid>/cpu<N>`: plain `read()`s, a
//! partial-record tail kept per file, whole records decoded with `uapi::decode_record`.

use crate::span::Key;
use crate::sys;
use spantrack_uapi::{self as uapi, RecordHeader, SyscallEntry};
use std::fs::File;
use std::io::Read;
use std::time::{Duration, Instant};

/// How long a case waits for records it expects.
pub const RECORD_WAIT: Duration = Duration::from_secs(1);
/// How long the reader waits for stragglers before saying "no (other) record arrived".
pub const SETTLE: Duration = Duration::from_millis(50);

/// One decoded record and the file it came from.
#[derive(Clone, Debug)]
pub struct Record {
    pub h: RecordHeader,
    pub entries: Vec<SyscallEntry>,
    pub cpu: u32,
}

impl Record {
    pub fn is(&self, k: &Key) -> bool {
        self.h.trace_id == k.trace_id && self.h.span_id == k.span_id
    }

    pub fn key(&self) -> Key {
        Key {
            trace_id: self.h.trace_id,
            span_id: self.h.span_id,
        }
    }

    pub fn duration(&self) -> i128 {
        i128::from(self.h.end_mono_ns) - i128::from(self.h.begin_mono_ns)
    }

    /// One-line summary for failure messages.
    pub fn describe(&self) -> String {
        let h = &self.h;
        let entries: Vec<String> = self
            .entries
            .iter()
            .map(|e| {
                format!(
                    "{}={} ({} ns{})",
                    sys::syscall_name(e.nr),
                    e.ret,
                    i128::from(e.end_mono_ns) - i128::from(e.start_mono_ns),
                    if e.tid != 0 {
                        format!(", tid {}", e.tid)
                    } else {
                        String::new()
                    }
                )
            })
            .collect();
        format!(
            "record{{span {} tid {} tgid {} cpu{} depth {} flags {:#x} dur {} ns n_entries {} total_calls {} \
             total_call_ns {} unitemised {}/{} ns dropped_before {} entries [{}]}}",
            self.key().short(),
            h.tid,
            h.tgid,
            self.cpu,
            h.depth,
            h.flags,
            self.duration(),
            h.n_entries,
            h.total_calls,
            h.total_call_ns,
            h.unitemised_calls,
            h.unitemised_ns,
            h.records_dropped_before,
            entries.join(", ")
        )
    }
}

struct RelayFile {
    cpu: u32,
    file: File,
    tail: Vec<u8>,
}

/// The reader of one process's relay channel.
pub struct Relay {
    pub dir: String,
    files: Vec<RelayFile>,
    /// Records read and not yet claimed by a case.
    pending: Vec<Record>,
    /// Stream errors seen (bad magic, read errors): reported by the next check.
    errors: Vec<String>,
    /// Every record read since the reader was opened.
    pub total_records: u64,
}

/// The `cpu<N>` files of a relay directory, sorted by N.
pub fn cpu_files(dir: &str) -> Result<Vec<(u32, String)>, String> {
    spantrack_sys::cpu_files(dir).map_err(|e| format!("read_dir {dir}: {e}"))
}

impl Relay {
    pub fn dir_of(tgid: u32) -> String {
        format!("{}/{}", uapi::RELAY_DIR, tgid)
    }

    pub fn open(tgid: u32) -> Result<Relay, String> {
        Self::open_dir(&Self::dir_of(tgid))
    }

    pub fn open_dir(dir: &str) -> Result<Relay, String> {
        let dir = dir.to_string();
        let mut files = Vec::new();
        for (cpu, path) in cpu_files(&dir)? {
            let file = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
            files.push(RelayFile {
                cpu,
                file,
                tail: Vec::new(),
            });
        }
        if files.is_empty() {
            return Err(format!("no {}* files in {dir}", uapi::RELAY_FILE_BASE));
        }
        Ok(Relay {
            dir,
            files,
            pending: Vec::new(),
            errors: Vec::new(),
            total_records: 0,
        })
    }

    /// Reads everything available from every file and decodes the whole records.
    pub fn read_available(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        for f in &mut self.files {
            loop {
                match f.file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => f.tail.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.errors.push(format!("read cpu{}: {e}", f.cpu));
                        break;
                    }
                }
            }
            let mut off = 0;
            while off < f.tail.len() {
                match uapi::decode_record(&f.tail[off..]) {
                    Ok((h, entries, used)) => {
                        // These tests check the calls; the scheduler part (its flags included) is
                        // checked by t_sched.sh. Its flags would otherwise turn up in every comparison.
                        let h = uapi::without_sched_flags(h);
                        self.pending.push(Record {
                            h,
                            entries: entries.collect(),
                            cpu: f.cpu,
                        });
                        self.total_records += 1;
                        off += used;
                    }
                    Err(uapi::DecodeError::Incomplete { .. }) => break,
                    Err(e) => {
                        self.errors.push(format!(
                            "cpu{}: undecodable stream ({e:?}) with {} bytes left; dropped them",
                            f.cpu,
                            f.tail.len() - off
                        ));
                        off = f.tail.len();
                    }
                }
            }
            f.tail.drain(..off);
        }
    }

    fn take_errors(&mut self) -> Result<(), String> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(format!("relay: {}", std::mem::take(&mut self.errors).join("; ")))
        }
    }

    fn describe_pending(&self) -> String {
        self.pending.iter().map(Record::describe).collect::<Vec<_>>().join("; ")
    }

    /// Waits up to [`RECORD_WAIT`] for one record of each key, then [`SETTLE`] for
    /// stragglers. Fails when a key has no record or more than one, when any other record
    /// arrived, or when the stream is corrupt. Returns the records in the order of `keys`.
    pub fn wait_for(&mut self, keys: &[Key]) -> Result<Vec<Record>, String> {
        let deadline = Instant::now() + RECORD_WAIT;
        loop {
            self.read_available();
            if keys.iter().all(|k| self.pending.iter().any(|r| r.is(k))) || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(SETTLE);
        self.read_available();
        self.take_errors()?;
        let mut problems = Vec::new();
        let mut out = Vec::new();
        for k in keys {
            let n = self.pending.iter().filter(|r| r.is(k)).count();
            match n {
                0 => problems.push(format!("no record for span {} within {:?}", k.short(), RECORD_WAIT)),
                1 => {
                    let i = self.pending.iter().position(|r| r.is(k)).unwrap_or(0);
                    out.push(self.pending.remove(i));
                }
                n => {
                    let dups: Vec<String> = self.pending.iter().filter(|r| r.is(k)).map(Record::describe).collect();
                    problems.push(format!("{n} records for span {}: {}", k.short(), dups.join("; ")));
                    self.pending.retain(|r| !r.is(k));
                }
            }
        }
        if !self.pending.is_empty() {
            problems.push(format!("unexpected record(s): {}", self.describe_pending()));
            self.pending.clear();
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems.join("; "))
        }
    }

    /// Waits [`SETTLE`] and returns the record of `k` if there is exactly one; fails on
    /// several, on any other record, or on a stream error.
    pub fn take_optional(&mut self, k: &Key) -> Result<Option<Record>, String> {
        std::thread::sleep(SETTLE);
        self.read_available();
        self.take_errors()?;
        let mine: Vec<Record> = self.pending.iter().filter(|r| r.is(k)).cloned().collect();
        self.pending.retain(|r| !r.is(k));
        if !self.pending.is_empty() {
            let d = self.describe_pending();
            self.pending.clear();
            return Err(format!("unexpected record(s): {d}"));
        }
        match mine.len() {
            0 => Ok(None),
            1 => Ok(mine.into_iter().next()),
            n => Err(format!(
                "{n} records for span {}: {}",
                k.short(),
                mine.iter().map(Record::describe).collect::<Vec<_>>().join("; ")
            )),
        }
    }

    /// Waits [`SETTLE`], reads, and fails if any record (or stream error) arrived.
    pub fn expect_none(&mut self) -> Result<(), String> {
        std::thread::sleep(SETTLE);
        self.read_available();
        self.take_errors()?;
        if self.pending.is_empty() {
            Ok(())
        } else {
            let d = self.describe_pending();
            self.pending.clear();
            Err(format!("unexpected record(s): {d}"))
        }
    }

    /// Forgets records read but not claimed (after a failed case has reported them).
    pub fn discard_pending(&mut self) {
        self.read_available();
        self.pending.clear();
        self.errors.clear();
    }

    /// Bytes held as partial records (should be zero between cases).
    pub fn partial_bytes(&self) -> usize {
        self.files.iter().map(|f| f.tail.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::new_key;
    use std::io::Write;

    /// Bytes of a record of `k` with `n` getpid entries (the uapi layout, little-endian).
    fn record_bytes(k: &Key, n: u32) -> Vec<u8> {
        let mut b = vec![0u8; uapi::RECORD_HEADER_SIZE + n as usize * uapi::SYSCALL_ENTRY_SIZE];
        b[0..4].copy_from_slice(b"SPTR");
        b[4..6].copy_from_slice(&(uapi::ABI_VERSION as u16).to_le_bytes());
        b[6..8].copy_from_slice(&(uapi::RECORD_HEADER_SIZE as u16).to_le_bytes());
        let total = b.len() as u32;
        b[8..12].copy_from_slice(&total.to_le_bytes());
        b[12..16].copy_from_slice(&n.to_le_bytes());
        b[16..32].copy_from_slice(&k.trace_id);
        b[32..40].copy_from_slice(&k.span_id);
        for i in 0..n as usize {
            let o = uapi::RECORD_HEADER_SIZE + i * uapi::SYSCALL_ENTRY_SIZE;
            b[o..o + 4].copy_from_slice(&sys::NR_GETPID.to_le_bytes());
        }
        b
    }

    #[test]
    fn partial_records_are_completed_by_later_reads() {
        let dir = std::env::temp_dir().join(format!("spantrack-vmtest-relay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (k1, k2, k3) = (new_key(), new_key(), new_key());
        let (r1, r2, r3) = (record_bytes(&k1, 2), record_bytes(&k2, 0), record_bytes(&k3, 3));
        let mut cpu0 = std::fs::File::create(dir.join("cpu0")).unwrap();
        let mut cpu1 = std::fs::File::create(dir.join("cpu1")).unwrap();
        std::fs::File::create(dir.join("other")).unwrap();
        // cpu0: one whole record and the first 100 bytes of the next.
        cpu0.write_all(&r1).unwrap();
        cpu0.write_all(&r2[..100]).unwrap();
        let mut relay = Relay::open_dir(dir.to_str().unwrap()).unwrap();
        assert_eq!(relay.files.len(), 2);
        relay.read_available();
        assert_eq!(relay.pending.len(), 1);
        assert!(relay.pending[0].is(&k1));
        assert_eq!(relay.pending[0].entries.len(), 2);
        assert_eq!(relay.partial_bytes(), 100);
        cpu0.write_all(&r2[100..]).unwrap();
        cpu1.write_all(&r3).unwrap();
        let got = relay.wait_for(&[k3, k2, k1]).unwrap();
        assert!(got[0].is(&k3) && got[1].is(&k2) && got[2].is(&k1));
        assert_eq!((got[0].cpu, got[1].cpu), (1, 0));
        assert_eq!(relay.partial_bytes(), 0);
        assert_eq!(relay.total_records, 3);
        // A record nobody waits for is reported; so is a missing one.
        cpu1.write_all(&r1).unwrap();
        assert!(relay.expect_none().unwrap_err().contains("unexpected"));
        assert!(relay.wait_for(&[k2]).unwrap_err().contains("no record"));
        // Garbage is reported, not looped on.
        cpu0.write_all(b"garbage!").unwrap();
        assert!(relay.expect_none().unwrap_err().contains("undecodable"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
