//! Reading the process's relay channel: the per-CPU buffer descriptors the module hands
//! out (`IOCTL_RELAY_FDS`, which needs no privilege), or with an older module the debugfs
//! files `RELAY_DIR/<tgid>/cpu<N>` (root only); non-blocking `read()`s of every per-CPU
//! buffer, a partial-record tail kept per buffer, whole records decoded with
//! `uapi::decode_record` and handed out as raw bytes with their span ids.

use std::fs::File;
use std::io::Read;
use std::os::fd::RawFd;
use std::os::unix::fs::OpenOptionsExt;

use spantrack_sys::{cpu_files, relay_fds};
use spantrack_uapi as uapi;

use crate::store::SpanIds;

struct RelayFile {
    cpu: u32,
    file: File,
    tail: Vec<u8>,
}

/// The reader of one relay directory.
pub struct RelayReader {
    files: Vec<RelayFile>,
    buf: Vec<u8>,
}

/// What one pass over the files found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Whole records handed to the sink.
    pub records: u64,
    /// Stream problems (read errors, undecodable bytes dropped).
    pub errors: u64,
    /// Description of the first problem, for a debug log.
    pub first_error: Option<String>,
}

impl RelayReader {
    /// The calling process's relay buffers: the descriptors of `IOCTL_RELAY_FDS` on
    /// `control` (the process must be registered), or, from a module without that ioctl
    /// (`ENOTTY`), the debugfs files of `tgid`.
    pub fn open_own(control: RawFd, tgid: u32) -> Result<RelayReader, String> {
        match relay_fds(control) {
            Ok(files) => {
                // The descriptors are blocking: make them non-blocking as `open_dir` does.
                for (_, f) in &files {
                    use std::os::fd::AsRawFd;
                    // SAFETY: fcntl on a descriptor we own.
                    unsafe {
                        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
                        libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
                    }
                }
                Self::from_files(files)
            }
            Err(libc::ENOTTY) => Self::open_dir(&Self::dir_of(tgid)),
            Err(e) => Err(format!("ioctl RELAY_FDS: {}", std::io::Error::from_raw_os_error(e))),
        }
    }

    /// A reader of already-open per-CPU buffers.
    pub fn from_files(files: Vec<(u32, File)>) -> Result<RelayReader, String> {
        if files.is_empty() {
            return Err("no relay buffers".into());
        }
        Ok(RelayReader {
            files: files.into_iter().map(|(cpu, file)| RelayFile { cpu, file, tail: Vec::new() }).collect(),
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// The relay directory of process `tgid`.
    pub fn dir_of(tgid: u32) -> String {
        format!("{}/{}", uapi::RELAY_DIR, tgid)
    }

    /// Opens every `cpu<N>` file of `dir` (read-only, non-blocking).
    pub fn open_dir(dir: &str) -> Result<RelayReader, String> {
        let mut files = Vec::new();
        for (cpu, path) in cpu_files(dir).map_err(|e| format!("{dir}: {e}"))? {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| format!("{path}: {e}"))?;
            files.push(RelayFile {
                cpu,
                file,
                tail: Vec::new(),
            });
        }
        if files.is_empty() {
            return Err(format!("no {}* files in {dir}", uapi::RELAY_FILE_BASE));
        }
        Ok(RelayReader {
            files,
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// Number of files read.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Bytes held as partial records.
    pub fn partial_bytes(&self) -> usize {
        self.files.iter().map(|f| f.tail.len()).sum()
    }

    /// Reads everything available from every file and gives each whole record to `sink`
    /// (its span ids and its raw bytes, header and entries).
    pub fn read_available(&mut self, mut sink: impl FnMut(SpanIds, Vec<u8>)) -> Pass {
        let mut pass = Pass::default();
        let note = |pass: &mut Pass, msg: String| {
            pass.errors += 1;
            if pass.first_error.is_none() {
                pass.first_error = Some(msg);
            }
        };
        for f in &mut self.files {
            loop {
                match f.file.read(&mut self.buf) {
                    Ok(0) => break,
                    Ok(n) => f.tail.extend_from_slice(&self.buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        note(&mut pass, format!("read cpu{}: {e}", f.cpu));
                        break;
                    }
                }
            }
            let mut off = 0;
            while off < f.tail.len() {
                match uapi::decode_record(&f.tail[off..]) {
                    Ok((h, _, used)) => {
                        sink((h.trace_id, h.span_id), f.tail[off..off + used].to_vec());
                        pass.records += 1;
                        off += used;
                    }
                    Err(uapi::DecodeError::Incomplete { .. }) => break,
                    Err(e) => {
                        note(
                            &mut pass,
                            format!(
                                "cpu{}: undecodable stream ({e:?}), dropped {} bytes",
                                f.cpu,
                                f.tail.len() - off
                            ),
                        );
                        off = f.tail.len();
                    }
                }
            }
            f.tail.drain(..off);
        }
        pass
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Bytes of a record of `ids` with `n` getpid entries (the uapi layout, little-endian).
    pub fn record_bytes(ids: SpanIds, n: u32) -> Vec<u8> {
        let mut b = vec![0u8; uapi::RECORD_HEADER_SIZE + n as usize * uapi::SYSCALL_ENTRY_SIZE];
        b[0..4].copy_from_slice(b"SPTR");
        b[4..6].copy_from_slice(&(uapi::ABI_VERSION as u16).to_le_bytes());
        b[6..8].copy_from_slice(&(uapi::RECORD_HEADER_SIZE as u16).to_le_bytes());
        let total = b.len() as u32;
        b[8..12].copy_from_slice(&total.to_le_bytes());
        b[12..16].copy_from_slice(&n.to_le_bytes());
        b[16..32].copy_from_slice(&ids.0);
        b[32..40].copy_from_slice(&ids.1);
        for i in 0..n as usize {
            let o = uapi::RECORD_HEADER_SIZE + i * uapi::SYSCALL_ENTRY_SIZE;
            b[o..o + 4].copy_from_slice(&39u32.to_le_bytes());
        }
        b
    }

    #[test]
    fn already_open_files_are_read_like_the_directory() {
        let dir = std::env::temp_dir().join(format!("spanhook-relayfd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let k = ([7; 16], [7; 8]);
        let r = record_bytes(k, 1);
        std::fs::write(dir.join("a"), &r).unwrap();
        let f = std::fs::File::open(dir.join("a")).unwrap();
        assert!(RelayReader::from_files(Vec::new()).is_err());
        let mut relay = RelayReader::from_files(vec![(3, f)]).unwrap();
        let mut got = Vec::new();
        let p = relay.read_available(|ids, b| got.push((ids, b)));
        assert_eq!((p.records, p.errors), (1, 0));
        assert_eq!(got, vec![(k, r)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn partial_records_are_completed_by_later_reads() {
        let dir = std::env::temp_dir().join(format!("spanhook-relay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (k1, k2, k3) = (([1; 16], [1; 8]), ([2; 16], [2; 8]), ([3; 16], [3; 8]));
        let (r1, r2, r3) = (record_bytes(k1, 2), record_bytes(k2, 0), record_bytes(k3, 3));
        let mut cpu0 = std::fs::File::create(dir.join("cpu0")).unwrap();
        let mut cpu1 = std::fs::File::create(dir.join("cpu1")).unwrap();
        std::fs::File::create(dir.join("other")).unwrap();
        cpu0.write_all(&r1).unwrap();
        cpu0.write_all(&r2[..100]).unwrap();
        let mut relay = RelayReader::open_dir(dir.to_str().unwrap()).unwrap();
        assert_eq!(relay.file_count(), 2);
        let mut got = Vec::new();
        let p = relay.read_available(|ids, b| got.push((ids, b)));
        assert_eq!((p.records, p.errors), (1, 0));
        assert_eq!(got, vec![(k1, r1.clone())]);
        assert_eq!(relay.partial_bytes(), 100);
        cpu0.write_all(&r2[100..]).unwrap();
        cpu1.write_all(&r3).unwrap();
        got.clear();
        let p = relay.read_available(|ids, b| got.push((ids, b)));
        assert_eq!((p.records, p.errors), (2, 0));
        assert_eq!(got, vec![(k2, r2), (k3, r3)]);
        assert_eq!(relay.partial_bytes(), 0);
        // Garbage is dropped and counted, not looped on; the stream resumes afterwards.
        cpu0.write_all(b"garbage!").unwrap();
        let p = relay.read_available(|_, _| panic!("no record expected"));
        assert_eq!((p.records, p.errors), (0, 1));
        assert!(p.first_error.unwrap().contains("undecodable"));
        cpu0.write_all(&r1).unwrap();
        let p = relay.read_available(|_, _| {});
        assert_eq!((p.records, p.errors), (1, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
