//! Encoding of slow-span records into the relay byte layout of `uapi::RecordHeader` and
//! `uapi::SyscallEntry` (the `#[repr(C)]` layout of x86_64: little-endian, no padding),
//! field by field, without `unsafe`. User space decodes them with `uapi::decode_record`.

use crate::uapi::{
    RecordHeader, SchedPart, SyscallEntry, WaitEntry, RECORD_HEADER_SIZE, SCHED_PART_SIZE,
    SYSCALL_ENTRY_SIZE, WAIT_ENTRY_SIZE,
};
use core::mem::offset_of;

/// Largest record the module writes (a relay sub-buffer must hold it): a reader's buffer of
/// this size takes any record. The one definition in Rust; the Python hook's
/// (`record.RECORD_MAX_SIZE`) and `spanhook.h`'s (`SPANHOOK_RECORD_MAX`) are checked against
/// it by tests (`otel/tests/golden.rs`, `tests/golden/records.json`).
pub const RECORD_MAX_SIZE: usize = 256 * 1024;

/// Most itemised calls one record can carry within [`RECORD_MAX_SIZE`] (8143).
pub const MAX_CALLS_LIMIT: u32 =
    ((RECORD_MAX_SIZE - RECORD_HEADER_SIZE) / SYSCALL_ENTRY_SIZE) as u32;

/// Bytes of a record with `n_entries` itemised calls (saturating).
pub const fn record_size(n_entries: u32) -> usize {
    (n_entries as usize)
        .saturating_mul(SYSCALL_ENTRY_SIZE)
        .saturating_add(RECORD_HEADER_SIZE)
}

#[inline]
fn put(out: &mut [u8], off: usize, bytes: &[u8]) {
    if let Some(dst) = off
        .checked_add(bytes.len())
        .and_then(|end| out.get_mut(off..end))
    {
        for (d, s) in dst.iter_mut().zip(bytes) {
            *d = *s;
        }
    }
}

/// Writes `h` into `out[..RECORD_HEADER_SIZE]`; false (nothing written) if `out` is shorter.
pub fn encode_header(h: &RecordHeader, out: &mut [u8]) -> bool {
    if !encode_fixed(h, out) {
        return false;
    }
    encode_sched_into(&h.sched, true, out);
    true
}

/// Writes `h`'s fields before its scheduler part into `out`; false (nothing written) if
/// `out` is shorter than [`RECORD_HEADER_SIZE`]. The tracker writes the scheduler part
/// itself with [`encode_sched_into`], from where it was charged.
pub fn encode_fixed(h: &RecordHeader, out: &mut [u8]) -> bool {
    let Some(o) = out.get_mut(..RECORD_HEADER_SIZE) else {
        return false;
    };
    put(o, offset_of!(RecordHeader, magic), &h.magic.to_le_bytes());
    put(
        o,
        offset_of!(RecordHeader, version),
        &h.version.to_le_bytes(),
    );
    put(
        o,
        offset_of!(RecordHeader, header_size),
        &h.header_size.to_le_bytes(),
    );
    put(
        o,
        offset_of!(RecordHeader, total_size),
        &h.total_size.to_le_bytes(),
    );
    put(
        o,
        offset_of!(RecordHeader, n_entries),
        &h.n_entries.to_le_bytes(),
    );
    put(o, offset_of!(RecordHeader, trace_id), &h.trace_id);
    put(o, offset_of!(RecordHeader, span_id), &h.span_id);
    put(o, offset_of!(RecordHeader, tid), &h.tid.to_le_bytes());
    put(o, offset_of!(RecordHeader, tgid), &h.tgid.to_le_bytes());
    put(
        o,
        offset_of!(RecordHeader, begin_mono_ns),
        &h.begin_mono_ns.to_le_bytes(),
    );
    put(
        o,
        offset_of!(RecordHeader, end_mono_ns),
        &h.end_mono_ns.to_le_bytes(),
    );
    put(
        o,
        offset_of!(RecordHeader, begin_real_ns),
        &h.begin_real_ns.to_le_bytes(),
    );
    put(
        o,
        offset_of!(RecordHeader, end_real_ns),
        &h.end_real_ns.to_le_bytes(),
    );
    put(o, offset_of!(RecordHeader, depth), &h.depth.to_le_bytes());
    put(o, offset_of!(RecordHeader, n_threads), &h.n_threads.to_le_bytes());
    put(o, offset_of!(RecordHeader, flags), &h.flags.to_le_bytes());
    put(
        o,
        offset_of!(RecordHeader, total_calls),
        &h.total_calls.to_le_bytes(),
    );
    put(
        o,
        offset_of!(RecordHeader, total_call_ns),
        &h.total_call_ns.to_le_bytes(),
    );
    put(
        o,
        offset_of!(RecordHeader, unitemised_calls),
        &h.unitemised_calls.to_le_bytes(),
    );
    put(
        o,
        offset_of!(RecordHeader, unitemised_ns),
        &h.unitemised_ns.to_le_bytes(),
    );
    put(
        o,
        offset_of!(RecordHeader, records_dropped_before),
        &h.records_dropped_before.to_le_bytes(),
    );
    true
}

/// Writes the scheduler part `p` into its place in the record header at the start of
/// `out` (nothing if `out` is shorter than [`RECORD_HEADER_SIZE`]): the first `n_waits`
/// waits, the rest zero; without `kernel_addrs`, the waits' kernel stacks are left out
/// (`n_kstack` 0, zeros).
pub fn encode_sched_into(p: &SchedPart, kernel_addrs: bool, out: &mut [u8]) {
    let Some(o) = out
        .get_mut(..RECORD_HEADER_SIZE)
        .and_then(|h| h.get_mut(offset_of!(RecordHeader, sched)..))
    else {
        return;
    };
    let Some(o) = o.get_mut(..SCHED_PART_SIZE) else {
        return;
    };
    put(o, offset_of!(SchedPart, on_cpu_ns), &p.on_cpu_ns.to_le_bytes());
    put(o, offset_of!(SchedPart, runq_wakeup_ns), &p.runq_wakeup_ns.to_le_bytes());
    put(o, offset_of!(SchedPart, runq_preempt_ns), &p.runq_preempt_ns.to_le_bytes());
    for (i, v) in p.blocked_ns.iter().enumerate() {
        put(o, offset_of!(SchedPart, blocked_ns) + 8 * i, &v.to_le_bytes());
    }
    put(o, offset_of!(SchedPart, blocks), &p.blocks.to_le_bytes());
    put(o, offset_of!(SchedPart, preemptions), &p.preemptions.to_le_bytes());
    put(o, offset_of!(SchedPart, migrations), &p.migrations.to_le_bytes());
    put(o, offset_of!(SchedPart, wakeups), &p.wakeups.to_le_bytes());
    put(o, offset_of!(SchedPart, wakeup_total_ns), &p.wakeup_total_ns.to_le_bytes());
    put(o, offset_of!(SchedPart, wakeup_max_ns), &p.wakeup_max_ns.to_le_bytes());
    put(o, offset_of!(SchedPart, n_waits), &p.n_waits.to_le_bytes());
    put(o, offset_of!(SchedPart, lost_events), &p.lost_events.to_le_bytes());
    let n = (p.n_waits as usize).min(p.waits.len());
    for (i, w) in p.waits.iter().enumerate() {
        if let Some(wo) = o.get_mut(offset_of!(SchedPart, waits) + WAIT_ENTRY_SIZE * i..) {
            if i < n {
                encode_wait(w, wo);
                if !kernel_addrs {
                    put(wo, offset_of!(WaitEntry, n_kstack), &[0]);
                    if let Some(k) = wo.get_mut(offset_of!(WaitEntry, kstack)..offset_of!(WaitEntry, ustack)) {
                        k.fill(0);
                    }
                }
            } else if let Some(z) = wo.get_mut(..WAIT_ENTRY_SIZE) {
                z.fill(0);
            }
        }
    }
}

/// Writes `w` into `out[..WAIT_ENTRY_SIZE]` (nothing if `out` is shorter).
fn encode_wait(w: &WaitEntry, out: &mut [u8]) {
    let Some(o) = out.get_mut(..WAIT_ENTRY_SIZE) else {
        return;
    };
    put(o, offset_of!(WaitEntry, start_mono_ns), &w.start_mono_ns.to_le_bytes());
    put(o, offset_of!(WaitEntry, blocked_ns), &w.blocked_ns.to_le_bytes());
    put(o, offset_of!(WaitEntry, runq_ns), &w.runq_ns.to_le_bytes());
    put(o, offset_of!(WaitEntry, waker_on_cpu_ns), &w.waker_on_cpu_ns.to_le_bytes());
    put(o, offset_of!(WaitEntry, waker_trace_id), &w.waker_trace_id);
    put(o, offset_of!(WaitEntry, waker_span_id), &w.waker_span_id);
    put(o, offset_of!(WaitEntry, waker_comm), &w.waker_comm);
    put(o, offset_of!(WaitEntry, tid), &w.tid.to_le_bytes());
    put(o, offset_of!(WaitEntry, nr), &w.nr.to_le_bytes());
    put(o, offset_of!(WaitEntry, waker_tid), &w.waker_tid.to_le_bytes());
    put(o, offset_of!(WaitEntry, waker_tgid), &w.waker_tgid.to_le_bytes());
    put(o, offset_of!(WaitEntry, waker_nr), &w.waker_nr.to_le_bytes());
    put(o, offset_of!(WaitEntry, cause), &[w.cause]);
    put(o, offset_of!(WaitEntry, waker_ctx), &[w.waker_ctx]);
    put(o, offset_of!(WaitEntry, softirq), &[w.softirq]);
    put(o, offset_of!(WaitEntry, flags), &[w.flags]);
    for (i, a) in w.kstack.iter().enumerate() {
        put(o, offset_of!(WaitEntry, kstack) + 8 * i, &a.to_le_bytes());
    }
    for (i, a) in w.ustack.iter().enumerate() {
        put(o, offset_of!(WaitEntry, ustack) + 8 * i, &a.to_le_bytes());
    }
    put(o, offset_of!(WaitEntry, n_kstack), &[w.n_kstack]);
    put(o, offset_of!(WaitEntry, n_ustack), &[w.n_ustack]);
}

/// Writes `e` into `out[..SYSCALL_ENTRY_SIZE]`; false (nothing written) if `out` is shorter.
pub fn encode_entry(e: &SyscallEntry, out: &mut [u8]) -> bool {
    let Some(o) = out.get_mut(..SYSCALL_ENTRY_SIZE) else {
        return false;
    };
    put(o, offset_of!(SyscallEntry, nr), &e.nr.to_le_bytes());
    put(o, offset_of!(SyscallEntry, tid), &e.tid.to_le_bytes());
    put(o, offset_of!(SyscallEntry, ret), &e.ret.to_le_bytes());
    put(
        o,
        offset_of!(SyscallEntry, start_mono_ns),
        &e.start_mono_ns.to_le_bytes(),
    );
    put(
        o,
        offset_of!(SyscallEntry, end_mono_ns),
        &e.end_mono_ns.to_le_bytes(),
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uapi::{decode_record, DecodeError, ABI_VERSION, RECORD_MAGIC};
    use proptest::prelude::*;
    use std::vec::Vec;

    /// The in-memory bytes of a `#[repr(C)]` value without padding.
    fn raw_bytes<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: `T` is one of the uapi record structs, `#[repr(C)]` with no padding bytes
        // (their sizes equal the sum of their fields, pinned by the uapi tests), so every
        // byte of `*v` is initialised; the slice lives no longer than the borrow of `v`.
        unsafe {
            core::slice::from_raw_parts((v as *const T).cast::<u8>(), core::mem::size_of::<T>())
                .to_vec()
        }
    }

    fn header() -> impl Strategy<Value = RecordHeader> {
        (
            (
                any::<u32>(),
                any::<u16>(),
                any::<u16>(),
                any::<u32>(),
                any::<u32>(),
            ),
            (
                any::<[u8; 16]>(),
                any::<[u8; 8]>(),
                any::<u32>(),
                any::<u32>(),
            ),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
            ),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
            ),
            // Any bytes, read as a scheduler part: every field and wait gets a value.
            proptest::collection::vec(any::<u8>(), SCHED_PART_SIZE),
        )
            .prop_map(|(a, b, c, d, e)| RecordHeader {
                magic: a.0,
                version: a.1,
                header_size: a.2,
                total_size: a.3,
                n_entries: a.4,
                trace_id: b.0,
                span_id: b.1,
                tid: b.2,
                tgid: b.3,
                begin_mono_ns: c.0,
                end_mono_ns: c.1,
                begin_real_ns: c.2,
                end_real_ns: c.3,
                depth: c.4 as u16,
                n_threads: (c.4 >> 16) as u16,
                flags: c.5,
                total_calls: d.0,
                total_call_ns: d.1,
                unitemised_calls: d.2,
                unitemised_ns: d.3,
                records_dropped_before: d.4,
                sched: SchedPart::from_bytes(&e),
            })
    }

    fn entry() -> impl Strategy<Value = SyscallEntry> {
        (
            any::<u32>(),
            any::<u32>(),
            any::<i64>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(nr, tid, ret, s, e)| SyscallEntry {
                nr,
                tid,
                ret,
                start_mono_ns: s,
                end_mono_ns: e,
            })
    }

    #[test]
    fn limits() {
        assert_eq!(MAX_CALLS_LIMIT, 8143);
        assert!(record_size(MAX_CALLS_LIMIT) <= RECORD_MAX_SIZE);
        assert!(record_size(MAX_CALLS_LIMIT + 1) > RECORD_MAX_SIZE);
        assert_eq!(record_size(u32::MAX), (u32::MAX as usize) * 32 + RECORD_HEADER_SIZE);
    }

    #[test]
    fn only_the_kept_waits_are_written() {
        let mut h = RecordHeader::default();
        h.sched.n_waits = 1;
        for (i, w) in h.sched.waits.iter_mut().enumerate() {
            w.blocked_ns = 100 + i as u64;
            w.kstack[0] = 7;
        }
        let mut b = std::vec![0xaau8; RECORD_HEADER_SIZE];
        assert!(encode_header(&h, &mut b));
        let d = crate::uapi::SchedPart::from_bytes(&b[core::mem::offset_of!(RecordHeader, sched)..]);
        assert_eq!((d.n_waits, d.waits[0].blocked_ns, d.waits[0].kstack[0]), (1, 100, 7));
        assert!(d.waits[1..].iter().all(|w| *w == crate::uapi::WaitEntry::default()));
    }

    #[test]
    fn short_buffers_are_refused() {
        let h = RecordHeader::default();
        let mut b = [0xaau8; RECORD_HEADER_SIZE - 1];
        assert!(!encode_header(&h, &mut b));
        assert!(b.iter().all(|&x| x == 0xaa));
        let mut b = [0u8; 31];
        assert!(!encode_entry(&SyscallEntry::default(), &mut b));
    }

    proptest! {
        /// The field-by-field encoding is exactly the native `#[repr(C)]` layout.
        #[test]
        fn encoding_is_native_layout(h in header(), e in entry()) {
            let mut out = [0u8; RECORD_HEADER_SIZE];
            prop_assert!(encode_header(&h, &mut out));
            prop_assert_eq!(&out[..], &raw_bytes(&h)[..]);
            prop_assert_eq!(RecordHeader::from_bytes(&out), Some(h));
            let mut out = [0u8; SYSCALL_ENTRY_SIZE];
            prop_assert!(encode_entry(&e, &mut out));
            prop_assert_eq!(&out[..], &raw_bytes(&e)[..]);
            prop_assert_eq!(SyscallEntry::from_bytes(&out), Some(e));
        }

        /// What the module encodes, user space decodes (and a stream of records splits
        /// at the right places).
        #[test]
        fn encoder_and_decoder_agree(mut h in header(), entries in proptest::collection::vec(entry(), 0..40), h2 in header()) {
            h.magic = RECORD_MAGIC;
            h.version = ABI_VERSION as u16;
            h.header_size = RECORD_HEADER_SIZE as u16;
            h.n_entries = entries.len() as u32;
            h.total_size = record_size(h.n_entries) as u32;
            let mut buf = std::vec![0u8; h.total_size as usize];
            prop_assert!(encode_header(&h, &mut buf));
            for (i, e) in entries.iter().enumerate() {
                prop_assert!(encode_entry(e, &mut buf[RECORD_HEADER_SIZE + i * SYSCALL_ENTRY_SIZE..]));
            }
            // A second, empty record follows in the stream.
            let mut h2 = h2;
            h2.magic = RECORD_MAGIC;
            h2.version = ABI_VERSION as u16;
            h2.header_size = RECORD_HEADER_SIZE as u16;
            h2.n_entries = 0;
            h2.total_size = RECORD_HEADER_SIZE as u32;
            let mut second = [0u8; RECORD_HEADER_SIZE];
            encode_header(&h2, &mut second);
            buf.extend_from_slice(&second);

            let (dh, it, used) = decode_record(&buf).unwrap();
            prop_assert_eq!(dh, h);
            prop_assert_eq!(used, h.total_size as usize);
            prop_assert_eq!(it.collect::<Vec<_>>(), entries);
            let (dh2, it2, used2) = decode_record(&buf[used..]).unwrap();
            prop_assert_eq!(dh2, h2);
            prop_assert_eq!(it2.len(), 0);
            prop_assert_eq!(used2, RECORD_HEADER_SIZE);
            let incomplete = matches!(decode_record(&buf[..used - 1]), Err(DecodeError::Incomplete { .. }));
            prop_assert!(incomplete);
        }
    }
}
