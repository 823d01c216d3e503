//! A bulk reader of one process's relay files: reads what is available (optionally in
//! small, odd-sized pieces), keeps each file's partial tail, decodes whole records and
//! hands them to a callback. Stream errors are collected, not fatal.

use crate::relay::cpu_files;
use spantrack_uapi::{self as uapi, RecordHeader, SyscallEntry};
use std::fs::File;
use std::io::Read;

/// A decoded record and the CPU file it came from.
#[derive(Clone, Debug)]
pub struct Rec {
    pub h: RecordHeader,
    pub entries: Vec<SyscallEntry>,
    pub cpu: u32,
}

struct F {
    cpu: u32,
    file: File,
    tail: Vec<u8>,
}

pub struct BulkReader {
    files: Vec<F>,
    pub errors: Vec<String>,
    pub records: u64,
    pub bytes: u64,
    /// Read errors by errno (after an unload, a vanished channel...).
    pub read_errnos: super::Hist,
    buf: Vec<u8>,
}

impl BulkReader {
    pub fn open(tgid: u32) -> Result<BulkReader, String> {
        Self::open_dir(&crate::relay::Relay::dir_of(tgid))
    }

    /// The calling process's own buffers, through `IOCTL_RELAY_FDS` on `control` (no
    /// access to debugfs needed).
    pub fn from_control(control: i32) -> Result<BulkReader, String> {
        use std::os::fd::FromRawFd;
        let fds = relay_fds(control).map_err(|e| format!("ioctl RELAY_FDS: {}", crate::sys::errno_name(e)))?;
        let files: Vec<F> = fds
            .fds
            .iter()
            .take(fds.count as usize)
            .enumerate()
            .filter(|(_, &fd)| fd >= 0)
            // SAFETY: descriptors the kernel just installed for us; owned from here on.
            .map(|(cpu, &fd)| F { cpu: cpu as u32, file: unsafe { File::from_raw_fd(fd) }, tail: Vec::new() })
            .collect();
        if files.is_empty() {
            return Err("RELAY_FDS gave no descriptor".into());
        }
        Ok(Self::with_files(files))
    }

    fn with_files(files: Vec<F>) -> BulkReader {
        BulkReader {
            files,
            errors: Vec::new(),
            records: 0,
            bytes: 0,
            read_errnos: super::Hist::default(),
            buf: vec![0u8; 256 * 1024],
        }
    }

    pub fn open_dir(dir: &str) -> Result<BulkReader, String> {
        let mut files = Vec::new();
        for (cpu, path) in cpu_files(dir)? {
            let file = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
            files.push(F {
                cpu,
                file,
                tail: Vec::new(),
            });
        }
        if files.is_empty() {
            return Err(format!("no cpu* files in {dir}"));
        }
        Ok(Self::with_files(files))
    }

    /// Reads everything available; `piece` limits each read() (0: 256 KiB, else a
    /// pseudo-random size in 1..=piece drawn from `rng`). Calls `f` for each whole record.
    /// Returns the bytes read.
    pub fn poll(&mut self, piece: usize, rng: &mut super::Rng, mut f: impl FnMut(Rec)) -> u64 {
        let mut got = 0u64;
        for fi in 0..self.files.len() {
            // Bounded: a file cannot deliver more than its buffer between two calls, but a
            // writer may keep it busy; stop after 64 MiB per call.
            let mut budget: u64 = 64 << 20;
            loop {
                let want = if piece == 0 {
                    self.buf.len()
                } else {
                    rng.range(1, piece as u64) as usize
                };
                let file = &mut self.files[fi];
                match file.file.read(&mut self.buf[..want]) {
                    Ok(0) => break,
                    Ok(n) => {
                        file.tail.extend_from_slice(&self.buf[..n]);
                        got += n as u64;
                        self.bytes += n as u64;
                        budget = budget.saturating_sub(n as u64);
                        if budget == 0 {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.read_errnos.add(e.raw_os_error().unwrap_or(-1));
                        break;
                    }
                }
                // Decode as we go (keeps the tail short).
                self.decode(fi, &mut f);
            }
            self.decode(fi, &mut f);
        }
        got
    }

    fn decode(&mut self, fi: usize, f: &mut impl FnMut(Rec)) {
        let file = &mut self.files[fi];
        let mut off = 0;
        while off < file.tail.len() {
            match uapi::decode_record(&file.tail[off..]) {
                Ok((h, entries, used)) => {
                    // These tests check the calls; the scheduler part (its flags included) is
                    // checked by t_sched.sh. Its flags would otherwise turn up in every comparison.
                    let h = uapi::without_sched_flags(h);
                    f(Rec {
                        h,
                        entries: entries.collect(),
                        cpu: file.cpu,
                    });
                    self.records += 1;
                    off += used;
                }
                Err(uapi::DecodeError::Incomplete { .. }) => break,
                Err(e) => {
                    self.errors.push(format!(
                        "cpu{}: undecodable stream ({e:?}) with {} bytes left",
                        file.cpu,
                        file.tail.len() - off
                    ));
                    off = file.tail.len();
                }
            }
        }
        file.tail.drain(..off);
    }

    /// Bytes held as partial records.
    pub fn partial_bytes(&self) -> usize {
        self.files.iter().map(|f| f.tail.len()).sum()
    }
}

/// `IOCTL_RELAY_FDS` on `control`: the answer or the errno.
pub use spantrack_sys::relay_fds_answer as relay_fds;

/// Structural checks every record passes: sizes, entry order and times inside the span,
/// totals consistent, reserved fields zero.
pub fn check_structure(r: &Rec) -> Result<(), String> {
    let h = &r.h;
    let mut bad = Vec::new();
    if h.n_entries as usize != r.entries.len() {
        bad.push(format!("n_entries {} but {} decoded", h.n_entries, r.entries.len()));
    }
    if h.begin_mono_ns > h.end_mono_ns {
        bad.push("begin after end".into());
    }
    if h.total_calls != u64::from(h.n_entries) + h.unitemised_calls {
        bad.push(format!(
            "total_calls {} != n_entries {} + unitemised {}",
            h.total_calls, h.n_entries, h.unitemised_calls
        ));
    }
    let mut prev = h.begin_mono_ns;
    let mut sum: u128 = 0;
    for (i, e) in r.entries.iter().enumerate() {
        if e.start_mono_ns > e.end_mono_ns || e.start_mono_ns < prev || e.end_mono_ns > h.end_mono_ns {
            bad.push(format!(
                "entry {i} [{}, {}] out of order or outside the span [{}, {}]",
                e.start_mono_ns, e.end_mono_ns, h.begin_mono_ns, h.end_mono_ns
            ));
            break;
        }
        if e.tid != h.tid {
            bad.push(format!("entry {i} made by thread {}, not the span's {}", e.tid, h.tid));
        }
        prev = e.end_mono_ns;
        sum += u128::from(e.end_mono_ns - e.start_mono_ns);
    }
    if u128::from(h.total_call_ns) != sum + u128::from(h.unitemised_ns) {
        bad.push(format!(
            "total_call_ns {} != itemised {} + unitemised_ns {}",
            h.total_call_ns, sum, h.unitemised_ns
        ));
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join(", "))
    }
}
