"""Where a wait blocked: the kernel and user stacks the module keeps with each of a record's
longest waits (WaitEntry.kstack, .ustack) -> the frames of the wait event's
`spantrack.wait.kernel_stack` and `spantrack.wait.user_stack` (README, "What a slow span
carries"). The Rust processor's otel/src/stacks.rs writes the same strings from the same symbol
sources; the golden records check both with fixed ones (tests/golden/kallsyms.txt, maps.txt).

- Kernel: `function+0xOFF` from the text symbols of /proc/kallsyms (kernel and modules),
  read once, when the first stack needs it; `0x<hex>` when it hides its addresses (not root,
  kptr_restrict). The scheduler's and the probe's own leading frames are dropped.
- User: `<file name of the mapping>+0x<offset>` from /proc/self/maps, else `0x<hex>` (Python
  reads no native debug information: the Rust side names functions where it can, and Python
  services get their Python frames from pystacks.py instead).
"""

import bisect
import os
import threading
import time
from array import array
from typing import List, Optional, Tuple

KERNEL_STACK = "spantrack.wait.kernel_stack"
USER_STACK = "spantrack.wait.user_stack"
PYTHON_STACK = "spantrack.wait.python_stack"

_SCHED_FRAMES = frozenset(("__schedule", "schedule", "schedule_preempt_disabled"))
_TEXT_TYPES = frozenset(("t", "T", "w", "W"))


def is_scheduler_frame(name: str, module: bool) -> bool:
    """Leading kernel frames that say only "the scheduler switched": dropped."""
    # Linux 7.x calls a tracepoint's probes from an out-of-line __do_trace_<event>.
    return (name in _SCHED_FRAMES or name.startswith("__traceiter_")
            or name.startswith("__do_trace_")
            or (module and name.startswith("st_probe_")))


def raw(addr: int) -> str:
    """`0x<hex>`: an address without a name."""
    return f"{addr:#x}"


class KernelSymbols:
    """The text symbols of a /proc/kallsyms text (types t, T, w, W; the kernel's and the
    modules'), sorted by address; of several at one address, the first listed."""

    def __init__(self, addrs, names, modules):
        self.addrs = addrs
        self.names = names
        self.modules = modules

    @classmethod
    def parse(cls, text: str) -> Optional["KernelSymbols"]:
        """The symbols of `text`; None when no text symbol has a non-zero address (the file
        hides them: not root, kptr_restrict)."""
        syms = []
        for line in text.splitlines():
            f = line.split()
            if len(f) < 3 or f[1] not in _TEXT_TYPES:
                continue
            try:
                addr = int(f[0], 16)
            except ValueError:
                continue
            if not 0 <= addr < 1 << 64:
                continue
            syms.append((addr, f[2], len(f) > 3 and f[3].startswith("[")))
        if not any(s[0] for s in syms):
            return None
        syms.sort(key=lambda s: s[0])  # stable: the first listed stays first
        addrs, names, modules = array("Q"), [], []
        for addr, name, module in syms:
            if addrs and addrs[-1] == addr:
                continue
            addrs.append(addr)
            names.append(name)
            modules.append(module)
        return cls(addrs, names, modules)

    def __len__(self) -> int:
        return len(self.addrs)

    def lookup(self, addr: int) -> Optional[Tuple[str, int, bool]]:
        """The function a kernel return address belongs to: the symbol at or below addr - 1
        (the call before it), with addr's offset from it and whether it is a module's."""
        if addr <= 0:
            return None
        i = bisect.bisect_right(self.addrs, addr - 1) - 1
        if i < 0:
            return None
        return self.names[i], addr - self.addrs[i], self.modules[i]


def kernel_frames(syms: Optional[KernelSymbols], addrs) -> List[str]:
    """The kernel frames of `addrs` (innermost first): `function+0xOFF`, the leading
    scheduler and probe frames dropped; without symbols every address as `0x<hex>`, none
    dropped."""
    out = []
    leading = True
    for a in addrs:
        hit = syms.lookup(a) if syms is not None else None
        if leading and hit is not None and is_scheduler_frame(hit[0], hit[2]):
            continue
        leading = False
        out.append(f"{hit[0]}+{hit[1]:#x}" if hit is not None else raw(a))
    return out


class ProcessMaps:
    """The mappings of a /proc/<pid>/maps text."""

    def __init__(self, maps=()):
        self._maps = sorted(maps)  # (start, end, file offset, last path component or None)
        self._starts = [m[0] for m in self._maps]

    @classmethod
    def parse(cls, text: str) -> "ProcessMaps":
        maps = []
        for line in text.splitlines():
            # start-end perms offset dev inode [path]: the path is the rest (it may hold
            # spaces), trimmed.
            f = line.split(None, 5)
            if len(f) < 5 or "-" not in f[0]:
                continue
            try:
                start, end = (int(x, 16) for x in f[0].split("-", 1))
                offset = int(f[2], 16)
            except ValueError:
                continue
            if not (0 <= start < 1 << 64 and 0 <= end < 1 << 64 and 0 <= offset < 1 << 64):
                continue
            path = f[5].strip() if len(f) > 5 else ""
            maps.append((start, end, offset, path.rsplit("/", 1)[-1] if path else None))
        return cls(maps)

    def mapping(self, addr: int):
        """(name or None for an anonymous mapping, addr's file offset); None outside any."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0:
            return None
        start, end, offset, name = self._maps[i]
        if addr >= end:
            return None
        return name, addr - start + offset

    def lookup(self, addr: int) -> Optional[str]:
        """`<file name>+0x<offset>` (`libc.so.6+0xe8f3a`); None outside any mapping or in an
        anonymous one."""
        m = self.mapping(addr)
        if m is None or m[0] is None:
            return None
        return f"{m[0]}+{m[1]:#x}"


def user_frames(maps: ProcessMaps, addrs) -> List[str]:
    """`<file name>+0x<offset>` for each address, else `0x<hex>`."""
    out = []
    for a in addrs:
        s = maps.lookup(a)
        out.append(s if s is not None else raw(a))
    return out


class Symbols:
    """Fixed symbol sources (tests, golden records): a kallsyms text (None: unreadable) and
    a maps text (None: none); no Python frames."""

    def __init__(self, kallsyms: Optional[str] = None, maps: Optional[str] = None):
        self.kallsyms = KernelSymbols.parse(kallsyms) if kallsyms is not None else None
        self.maps = ProcessMaps.parse(maps) if maps is not None else ProcessMaps()

    def kernel_stack(self, addrs) -> List[str]:
        return kernel_frames(self.kallsyms, addrs)

    def user_stack(self, addrs) -> List[str]:
        return user_frames(self.maps, addrs)

    def python_stack(self, tid: int, start_ns: int, end_ns: int):
        return None


class HostSymbols:
    """This process's symbols: /proc/kallsyms (read once), /proc/self/maps (read again when
    an address is in no known mapping, at most once per MAPS_REREAD_S), and the Python
    frames the sampler saw (pystacks.py).

    /proc/kallsyms is read and parsed at the first use, on the annotator's thread. Parsing
    holds the GIL wherever it runs: in a thread of its own (as the Rust library loads its
    symbols) it overlapped the service's next spans, which then showed the futex calls of
    waiting for the GIL (t_python); on the annotator's thread it runs while the first slow
    span is annotated, which a flush waits for."""

    MAPS_REREAD_S = 1.0

    def __init__(self, kallsyms_path="/proc/kallsyms", maps_path="/proc/self/maps"):
        self._kallsyms_path = kallsyms_path
        self._maps_path = maps_path
        self._kallsyms = None
        self._kallsyms_read = False
        self._loading_pid = None  # the process whose loader thread is at work
        self._maps = ProcessMaps()
        self._maps_read_at = None
        self._lock = threading.Lock()

    def _read(self, path: str) -> Optional[str]:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return None

    def _load_kallsyms(self) -> None:
        text = self._read(self._kallsyms_path)
        syms = KernelSymbols.parse(text) if text is not None else None
        with self._lock:
            self._kallsyms, self._kallsyms_read, self._loading_pid = syms, True, None

    def ask_kernel(self) -> None:
        """Loads the kernel's symbols, once."""
        pid = os.getpid()
        with self._lock:
            if self._kallsyms_read or self._loading_pid == pid:
                return
            self._loading_pid = pid
        self._load_kallsyms()

    def ready(self) -> bool:
        """Whether nothing asked for is still loading."""
        with self._lock:
            return self._loading_pid is None

    def kernel_symbols(self) -> Optional[KernelSymbols]:
        """The kernel's symbols (loaded at the first use); None when unreadable."""
        self.ask_kernel()
        with self._lock:
            return self._kallsyms

    def prepare(self, rec) -> None:
        """Loads what the stacks of `rec`'s waits need: the kernel's symbols, the mappings."""
        from .annotate import wait_stacks, waits
        for w in waits(rec):
            kstack, ustack = wait_stacks(w)
            if kstack:
                self.ask_kernel()
            if ustack:
                self._maps_for(ustack)

    def kernel_stack(self, addrs) -> List[str]:
        return kernel_frames(self.kernel_symbols(), addrs)

    def user_stack(self, addrs) -> List[str]:
        return user_frames(self._maps_for(addrs), addrs)

    def _maps_for(self, addrs) -> ProcessMaps:
        """The mappings, read again when one of `addrs` is in none of them (at most once per
        MAPS_REREAD_S)."""
        with self._lock:
            maps = self._maps
            if any(maps.mapping(a) is None for a in addrs):
                now = time.monotonic()
                if self._maps_read_at is None or now - self._maps_read_at >= self.MAPS_REREAD_S:
                    text = self._read(self._maps_path)
                    if text is not None:
                        maps = self._maps = ProcessMaps.parse(text)
                    self._maps_read_at = now
        return maps

    def python_stack(self, tid: int, start_ns: int, end_ns: int):
        from . import pystacks
        return pystacks.python_stack(tid, start_ns, end_ns)


_HOST = None


def host() -> HostSymbols:
    """The process's HostSymbols."""
    global _HOST
    if _HOST is None:
        _HOST = HostSymbols()
    return _HOST
