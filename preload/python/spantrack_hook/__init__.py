"""spantrack's Python hook: puts SpantrackSpanProcessor at the head of every OpenTelemetry SDK
TracerProvider of the process, with no change to the application.

libspanhook.so (LD_PRELOAD) puts this directory first on PYTHONPATH; sitecustomize.py calls
install(). Nothing happens unless the library is in the process and registered with
spantrack.ko (`spanhook_active() == 1`). The SDK is not imported here: the provider class
is patched when the application imports `opentelemetry.sdk.trace`, so a Python program that
does not use OpenTelemetry pays only for this check.

It also turns on attribution by activation (activation.py): the modules whose code
switches between spans (asyncio's event loop and thread hand-offs, anyio's, OpenTelemetry's
context) are patched as they are imported.

Environment: SPANTRACK_PYTHON_HOOK=0 disables the hook; SPANTRACK_ACTIVATION=0 keeps the
kernel's default attribution (innermost span begun on the thread: right for thread-per-
request services only); SPANTRACK_HOOK_DEBUG=1 reports on stderr what it did.
"""

import functools
import importlib.abc
import os
import sys

TARGET_MODULE = "opentelemetry.sdk.trace"

_lib = None
_installed = False


def _debug(msg: str) -> None:
    if os.environ.get("SPANTRACK_HOOK_DEBUG") == "1":
        print(f"spantrack_hook[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def install(lib=None) -> bool:
    """Arms the hook when the library is active (or with `lib`, a stand-in for tests).
    Returns whether it is armed."""
    global _lib, _installed
    if _installed:
        return True
    if os.environ.get("SPANTRACK_PYTHON_HOOK", "1") == "0":
        _debug("disabled by SPANTRACK_PYTHON_HOOK=0")
        return False
    if lib is None:
        from . import abi
        lib = abi.load()
        if lib is None:
            _debug("libspanhook.so (ABI 4) is not in the process: doing nothing")
            return False
        if lib.active() != 1:
            _debug("libspanhook.so is inactive (no module?): doing nothing")
            return False
    _lib = lib
    _installed = True
    patches = {TARGET_MODULE: _patch}
    if os.environ.get("SPANTRACK_ACTIVATION", "1") != "0":
        from . import activation
        if activation.enable(lib):
            patches.update({
                "opentelemetry.context": activation.patch_context,
                "asyncio.events": activation.patch_events,
                "asyncio.threads": activation.patch_threads,
                "anyio.to_thread": activation.patch_anyio,
                "uvloop": activation.note_uvloop,
            })
    waiting = {}
    for name, patch in patches.items():
        module = sys.modules.get(name)
        if module is not None:
            _safely(patch, module)
        else:
            waiting[name] = patch
    if waiting:
        sys.meta_path.insert(0, _PatchOnImport(waiting))
    _debug(f"armed (patching on import: {', '.join(sorted(waiting)) or 'nothing'})")
    return True


def _safely(patch, module) -> None:
    try:
        patch(module)
    except Exception as e:  # never break the application's import
        print(f"spantrack_hook: could not patch {module.__name__}: {e!r}", file=sys.stderr)


def _patch(module) -> None:
    provider_cls = module.TracerProvider
    if getattr(provider_cls.__init__, "_spantrack_wrapped", False):
        return
    from .processor import SpantrackSpanProcessor
    original_init = provider_cls.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        inner = getattr(self, "_active_span_processor", None)
        if inner is not None and not isinstance(inner, SpantrackSpanProcessor):
            self._active_span_processor = SpantrackSpanProcessor(_lib, inner)
            _debug(f"head processor in front of {type(inner).__name__}")

    __init__._spantrack_wrapped = True
    provider_cls.__init__ = __init__
    _debug(f"patched {TARGET_MODULE}.TracerProvider")


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds each module of `patches` (name -> patch function) through the other finders
    and patches it once its code has run; leaves sys.meta_path when all are done."""

    def __init__(self, patches):
        self._patches = dict(patches)

    def find_spec(self, fullname, path, target=None):
        patch = self._patches.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        del self._patches[fullname]
        if not self._patches:
            try:
                sys.meta_path.remove(self)
            except ValueError:
                pass
        spec.loader = _PatchingLoader(spec.loader, patch)
        return spec


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader, patch):
        self._loader = loader
        self._patch = patch

    def __getattr__(self, name):  # get_resource_reader, get_data, ... of the real loader
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _safely(self._patch, module)
