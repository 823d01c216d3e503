"""The C ABI of libspanhook.so (version 5), reached through ctypes.CDLL(None): when the
library is LD_PRELOADed its symbols are global in the process.

ctypes releases the GIL around each call, so a worker waiting in take_record never holds
up the service's threads."""

import ctypes
import errno

from .record import RECORD_MAX_SIZE

ABI_VERSION = 5
U64_MAX = (1 << 64) - 1


class SpanHookLibrary:
    """Typed handles on the library's exported functions. Ids are the W3C bytes (16 and 8)."""

    def __init__(self, lib):
        def fn(name, restype, *argtypes):
            f = getattr(lib, name)
            f.restype = restype
            f.argtypes = list(argtypes)
            return f

        p = ctypes.c_char_p
        self.abi_version = fn("spanhook_abi_version", ctypes.c_uint32)
        self.active = fn("spanhook_active", ctypes.c_int)
        self.span_begin = fn("spanhook_span_begin", ctypes.c_int, p, p)
        # (trace id, span id, threshold ns; U64_MAX: the module's threshold_ns)
        self.span_begin_threshold = fn("spanhook_span_begin_threshold", ctypes.c_int, p, p,
                                       ctypes.c_uint64)
        self.span_end = fn("spanhook_span_end", ctypes.c_int, p, p)
        self.threshold_ns = fn("spanhook_threshold_ns", ctypes.c_uint64)
        self._take_record = fn("spanhook_take_record", ctypes.c_long, p, p,
                               ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32)
        self.unregister_thread = fn("spanhook_unregister_thread", ctypes.c_int)
        # The calling thread's active-span slot (a uint64_t address), or None.
        self.active_slot = fn("spanhook_active_slot", ctypes.c_void_p)
        self._stats = fn("spanhook_stats", ctypes.c_size_t,
                         ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t)
        # Added to ABI 5 later: a library without it keeps such records until evicted.
        self._forget = fn("spanhook_forget", ctypes.c_int, p, p) \
            if hasattr(lib, "spanhook_forget") else None
        self._buf = None

    def forget(self, trace_id: bytes, span_id: bytes) -> None:
        """Nobody will take the span's record (it went on without it): the library drops
        it, held or when it arrives, instead of letting it push wanted records out of its
        store. Never blocks on the kernel."""
        if self._forget is not None:
            self._forget(trace_id, span_id)

    def take_record(self, trace_id: bytes, span_id: bytes, timeout_ms: int):
        """The record of a slow span as bytes, None when there is none within timeout_ms.
        Raises OSError for other errors. Not thread-safe (one buffer): one caller thread."""
        if self._buf is None:
            self._buf = ctypes.create_string_buffer(RECORD_MAX_SIZE)
        while True:
            n = self._take_record(trace_id, span_id, self._buf, len(self._buf), timeout_ms)
            if n > 0:
                return self._buf.raw[:n]
            if n == 0:
                return None
            if n == -errno.ENOSPC and len(self._buf) < 16 * 1024 * 1024:
                self._buf = ctypes.create_string_buffer(len(self._buf) * 4)
                continue
            raise OSError(-n, f"spanhook_take_record: {errno.errorcode.get(-n, -n)}")

    def stats(self, n: int = 32):
        out = (ctypes.c_uint64 * n)()
        got = self._stats(out, n)
        return list(out[:min(got, n)])


def load():
    """The library's handles when it is in the process with ABI 4, else None."""
    try:
        lib = SpanHookLibrary(ctypes.CDLL(None))
    except (OSError, AttributeError):
        return None
    if lib.abi_version() != ABI_VERSION:
        return None
    return lib
