"""Attribution by activation for Python: keeps each thread's active-span slot (a uint64_t
that libspanhook.so registered with spantrack.ko, `spanhook_active_slot`) equal to the id
of the span whose code the thread runs now, so that the kernel charges every system call
to that span and to no other.

The slot is written at every switch:
- `asyncio.events.Handle._run`: every step of every task (and every callback) of the
  standard event loop runs in its own `contextvars.Context`; the slot holds that context's
  span for the step, and the previous value after it;
- OpenTelemetry's runtime context `attach`/`detach` (`start_as_current_span`, `use_span`,
  instrumentations): a span made current inside a step or on a plain thread;
- `asyncio.to_thread` and `anyio.to_thread.run_sync` (Starlette/FastAPI sync endpoints):
  the pool thread runs the caller's span while it runs the function;
- spantrack's own work on a service thread (the processor's on_start/on_end) runs with
  the slot at 0: it is never charged to the application's spans.

A thread gets its slot at its first switch. A thread that never makes a span current
(`start_span` without `use_span`) has none and keeps the module's default: its calls go to
the innermost span begun on it (thread-per-request behaviour).

uvloop's event loop cannot be hooked (its `Handle` is a compiled class whose `_run` cannot
be replaced). When uvloop is imported, the slots stay at 0: calls on its loop are charged
to no span, rather than to whichever span ran last; a warning says so once.

Each write is a few hundred nanoseconds of interpreter time (measured in
`tools/bench_activation.py`); the kernel's part of a switch is the slot read at the next
system call.
"""

import ctypes
import functools
import sys
import threading

_lib = None
_local = threading.local()
_uvloop = False
_CURRENT = None  # opentelemetry.context's ContextVar (the OTel Context of this context)
_SPAN_KEY = None  # the key of the current span in an OTel Context


def enable(lib) -> bool:
    """Turns activation on with the library's handles; False when the library has no
    slots for us (then nothing here does anything)."""
    global _lib
    if getattr(lib, "active_slot", None) is None:
        return False
    _lib = lib
    return True


def enabled() -> bool:
    return _lib is not None


def slot():
    """This thread's slot (a ctypes c_uint64 over the library's memory), registering it
    with the module at the thread's first call; None when there is none."""
    try:
        return _local.slot
    except AttributeError:
        s = None
        if _lib is not None:
            addr = _lib.active_slot()
            if addr:
                s = ctypes.c_uint64.from_address(addr)
        _local.slot = s
        return s


def reset_after_fork():
    """A forked child is not registered: forget the parent's slot."""
    global _local
    _local = threading.local()


def span_id_in(otel_ctx) -> int:
    """The slot value of an OpenTelemetry Context (a dict): its span's id, 0 if none."""
    if otel_ctx is None or _SPAN_KEY is None:
        return 0
    span = otel_ctx.get(_SPAN_KEY)
    if span is None:
        return 0
    return span.get_span_context().span_id


def current_span_id() -> int:
    """The slot value of the calling thread's current OpenTelemetry context."""
    if _CURRENT is None:
        return 0
    return span_id_in(_CURRENT.get(None))


def _value(v: int) -> int:
    return 0 if _uvloop else v


class suspended:
    """Context manager: spantrack's own work on a service thread, charged to no span."""
    __slots__ = ("s", "prev")

    def __enter__(self):
        # Only a thread that already has a slot: one whose spans are never made current
        # keeps the module's default (innermost span begun on it), our begin/end writes
        # being left out by the module itself.
        s = self.s = getattr(_local, "slot", None)
        if s is not None:
            self.prev = s.value
            s.value = 0
        return self

    def __exit__(self, *exc):
        s = self.s
        if s is not None:
            s.value = self.prev
        return False


# --- the patches (applied when each module is imported; see spantrack_hook.install) -----

def patch_context(module):
    """opentelemetry.context: slot follows attach/detach of the runtime context."""
    global _CURRENT, _SPAN_KEY
    rc = module._RUNTIME_CONTEXT
    if getattr(rc, "_spantrack_wrapped", False):
        return
    var = getattr(rc, "_current_context", None)
    if var is None:  # another runtime context (OTEL_PYTHON_CONTEXT): no fast read
        return
    from opentelemetry.trace.propagation import _SPAN_KEY as key
    _CURRENT, _SPAN_KEY = var, key
    attach, detach = rc.attach, rc.detach

    def attach_hook(context):
        token = attach(context)
        s = slot()
        if s is not None:
            s.value = _value(span_id_in(context))
        return token

    def detach_hook(token):
        detach(token)
        s = slot()
        if s is not None:
            s.value = _value(span_id_in(var.get(None)))

    rc.attach, rc.detach = attach_hook, detach_hook
    rc._spantrack_wrapped = True


def patch_events(module):
    """asyncio.events: every step of the standard loop runs its context's span."""
    handle = module.Handle
    run = handle._run
    if getattr(run, "_spantrack_wrapped", False):
        return

    @functools.wraps(run)
    def _run(self):
        s = slot()
        if s is None or _CURRENT is None:
            return run(self)
        prev = s.value
        s.value = _value(span_id_in(self._context.get(_CURRENT)))
        try:
            return run(self)
        finally:
            s.value = prev

    _run._spantrack_wrapped = True
    handle._run = _run


def _activating(func):
    """`func`, running the span current where it runs (inside the copied context)."""
    @functools.wraps(func)
    def run(*args, **kwargs):
        s = slot()
        if s is None:
            return func(*args, **kwargs)
        prev = s.value
        s.value = _value(current_span_id())
        try:
            return func(*args, **kwargs)
        finally:
            s.value = prev
    return run


def patch_threads(module):
    """asyncio.threads: to_thread runs the caller's span on the pool thread."""
    to_thread = module.to_thread
    if getattr(to_thread, "_spantrack_wrapped", False):
        return

    @functools.wraps(to_thread)
    async def _to_thread(func, /, *args, **kwargs):
        return await to_thread(_activating(func), *args, **kwargs)

    _to_thread._spantrack_wrapped = True
    module.to_thread = _to_thread
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and getattr(asyncio, "to_thread", None) is to_thread:
        asyncio.to_thread = _to_thread


def patch_anyio(module):
    """anyio.to_thread: run_sync (Starlette's run_in_threadpool) likewise."""
    run_sync = module.run_sync
    if getattr(run_sync, "_spantrack_wrapped", False):
        return

    @functools.wraps(run_sync)
    async def _run_sync(func, *args, **kwargs):
        return await run_sync(_activating(func), *args, **kwargs)

    _run_sync._spantrack_wrapped = True
    module.run_sync = _run_sync


def note_uvloop(module):
    """uvloop cannot be hooked: keep every slot at 0 (no call charged to a wrong span)."""
    global _uvloop
    if _uvloop:
        return
    _uvloop = True
    s = slot()
    if s is not None:
        s.value = 0
    print("spantrack_hook: uvloop is loaded and its event loop cannot be hooked: system "
          "calls in asyncio tasks are charged to no span. Use the standard loop "
          "(uvicorn --loop asyncio) for per-request system calls.", file=sys.stderr)
