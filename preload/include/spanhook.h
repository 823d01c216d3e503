/* SPDX-License-Identifier: GPL-2.0 */
/*
 * spanhook.h: the C ABI of libspanhook.so, the LD_PRELOAD side of spantrack.
 *
 *   insmod spantrack.ko
 *   LD_PRELOAD=/path/to/libspanhook.so ./service
 *
 * At load time the library registers the process with spantrack.ko (every thread, existing
 * and future, is tracked), opens /proc/spantrack/{begin,end,control} and starts one reader
 * thread (untracked) that moves the records of slow spans from the process's relay channel
 * (/sys/kernel/debug/spantrack/<tgid>/cpu<N>) into a bounded store keyed by span ids
 * (4096 records / 16 MiB by default: SPANHOOK_MAX_RECORDS, SPANHOOK_MAX_BYTES; the oldest
 * unclaimed record is evicted and counted when full). It re-reads
 * /sys/kernel/spantrack/threshold_ns about once a second.
 *
 * In a Python process (executable named python*), once active, it also puts the Python hook
 * (preload/python: sitecustomize.py + spantrack_hook) first on PYTHONPATH before the
 * interpreter starts, so LD_PRELOAD alone instruments a Python service. The directory is
 * $SPANHOOK_PYTHON_DIR if set (empty: don't), else <libdir>/python or
 * <libdir>/../../preload/python (the library in this repository's target/<profile>/).
 *
 * Without the module, with an incompatible one, or with SPANHOOK_DISABLE=1, it writes one
 * line "spanhook: inactive (<reason>)" to stderr (not with SPANHOOK_QUIET=1) and does
 * nothing else: every function below then reports "inactive". A forked child is not
 * registered: the library is inactive there (quietly). SPANHOOK_DEBUG=1 logs more.
 *
 * Tracers find these symbols at run time: dlsym(RTLD_DEFAULT, "spanhook_abi_version") and
 * so on (Rust: crate spantrack-otel), or ctypes.CDLL(None) in Python. Check
 * spanhook_abi_version() == SPANHOOK_ABI_VERSION before using anything else.
 *
 * Ids are the W3C trace context ids as bytes, most significant first: the 16 (8) bytes
 * whose lower-case hex is the 32 (16) digit trace (span) id of a traceparent header.
 * All-zero ids are invalid (-EINVAL from the module).
 *
 * Thread safety: every function may be called from any thread. spanhook_span_begin/end are
 * one write(2) each on a pre-opened descriptor and never wait for the reader;
 * spanhook_take_record waits (on a condition variable) only up to its timeout.
 */
#ifndef SPANHOOK_H
#define SPANHOOK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this ABI. */
#define SPANHOOK_ABI_VERSION 5u

/* No record is larger than this (header + entries; the module's relay sub-buffer). */
#define SPANHOOK_RECORD_MAX (256u * 1024u)

/* Size of a record's header (uapi RECORD_HEADER_SIZE): its entries start here. */
#define SPANHOOK_RECORD_HEADER_SIZE 1544u

/* Returns SPANHOOK_ABI_VERSION (5; 5 changed the records: a 1544-byte header). */
uint32_t spanhook_abi_version(void);

/* 1 when the process is registered with the module, else 0. */
int spanhook_active(void);

/*
 * Opens the span on the calling thread: the module attributes the thread's system calls to
 * it (to the innermost open span; spans nest 16 deep) until it ends. Returns 0 or -errno:
 * -ENODEV inactive, -EINVAL null pointer or malformed ids, -EPERM thread not tracked
 * (e.g. after spanhook_unregister_thread), -EEXIST already open, -ENOSPC span table full,
 * -EOVERFLOW 16 spans already open on the thread. Errors are counted (SPANHOOK_STAT_...).
 */
int spanhook_span_begin(const uint8_t trace_id[16], const uint8_t span_id[8]);

/*
 * spanhook_span_begin with the span's own threshold (ABI 4): the module reports the span
 * when it lasts at least threshold_ns (clamped to 1 hour), whatever its sysfs threshold_ns
 * (which applies to spans begun without one). UINT64_MAX: none of its own. Same returns.
 */
int spanhook_span_begin_threshold(const uint8_t trace_id[16], const uint8_t span_id[8],
                                  uint64_t threshold_ns);

/*
 * Closes the span; may be called from any thread of the process (the record then has
 * REC_ENDED_ELSEWHERE). The write itself is not part of the span. Returns 0 or -errno
 * (-ENODEV inactive, -ENOENT no such open span, ...). If the span lasted at least the
 * threshold, its record arrives in the store shortly after.
 */
int spanhook_span_end(const uint8_t trace_id[16], const uint8_t span_id[8]);

/* The module's current threshold in ns; UINT64_MAX when inactive. */
uint64_t spanhook_threshold_ns(void);

/*
 * Attribution by activation (async runtimes). Returns the calling thread's active-span
 * slot, registered with the module at the thread's first call (one ioctl), or NULL
 * (inactive, or a thread the module does not track). At every switch -- a task resumed or
 * suspended, a context attached or detached -- store the id of the span whose code the
 * thread runs from now on, as the integer whose big-endian bytes are the W3C span id, or
 * 0 when it runs none. One plain store, no system call: the module reads the slot at each
 * system call of the thread and charges the call to that span (an id it does not know,
 * e.g. an unsampled span, charges none). Once a thread has a slot, its spans belong to the
 * process: they may be active on any thread, any number at once, and end anywhere.
 * Threads that never ask keep the default: calls go to the innermost span begun on them.
 */
uint64_t *spanhook_active_slot(void);

/*
 * Waits up to timeout_ms for the kernel's record of that span and moves it out of the
 * store into buf: raw uapi bytes (uapi/src/lib.rs), a 1544-byte RecordHeader (128 bytes of
 * span and call figures, then the 1416-byte SchedPart, its waits with their stacks) followed
 * by n_entries 32-byte SyscallEntry at header.header_size, little-endian, header.total_size
 * bytes in all.
 * Returns its size; 0 if no record arrived in time (the kernel judged the span fast);
 * -ENOSPC if len is too small (the record is kept; SPANHOOK_RECORD_MAX always suffices);
 * -ENODEV when inactive; -EINVAL for null pointers.
 * Call it from a thread that is not inside a span (a tracer's own worker thread, after
 * spanhook_unregister_thread()).
 */
long spanhook_take_record(const uint8_t trace_id[16], const uint8_t span_id[8],
                          uint8_t *buf, size_t len, uint32_t timeout_ms);

/*
 * Nobody will take the record of that span (the tracer passed the span on without waiting
 * for it, e.g. its queue was full): the record is dropped now if it is held, or when it
 * arrives, instead of pushing wanted records out of the bounded store. Counted in
 * SPANHOOK_STAT_FORGOTTEN. 0, -ENODEV when inactive, -EINVAL for null pointers. Added after
 * ABI version 5 without a bump: look it up with dlsym and treat its absence as a no-op.
 */
int spanhook_forget(const uint8_t trace_id[16], const uint8_t span_id[8]);

/* The calling thread is no longer traced: 0 or -errno (-ENOENT it was not, -ENODEV). */
int spanhook_unregister_thread(void);

/* Indices of spanhook_stats() values. */
#define SPANHOOK_STAT_RECEIVED      0 /* records read from the relay channel */
#define SPANHOOK_STAT_EVICTED       1 /* records evicted from the store unclaimed */
#define SPANHOOK_STAT_TAKEN         2 /* records moved out by spanhook_take_record */
#define SPANHOOK_STAT_BEGIN_ERRORS  3 /* failed spanhook_span_begin writes */
#define SPANHOOK_STAT_END_ERRORS    4 /* failed spanhook_span_end writes */
#define SPANHOOK_STAT_STREAM_ERRORS 5 /* relay read errors / undecodable bytes dropped */
#define SPANHOOK_STAT_TAKE_TIMEOUTS 6 /* spanhook_take_record calls with timeout_ms > 0 that returned 0 */
#define SPANHOOK_STAT_STORED        7 /* records held in the store now (a gauge) */
#define SPANHOOK_STAT_SLOTS         8 /* threads whose active-span slot was registered */
#define SPANHOOK_STAT_FORGOTTEN     9 /* records dropped by spanhook_forget, held or on arrival */
#define SPANHOOK_STAT_COUNT         10

/* Writes the first min(n, SPANHOOK_STAT_COUNT) counters to out; returns how many. */
size_t spanhook_stats(uint64_t *out, size_t n);

#ifdef __cplusplus
}
#endif

#endif /* SPANHOOK_H */
