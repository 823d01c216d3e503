"""spantrack's Python hook: puts SpantrackSpanProcessor at the head of every OpenTelemetry SDK
TracerProvider of the process, with no change to the application.

libspanhook.so (LD_PRELOAD) puts this directory first on PYTHONPATH; sitecustomize.py calls
install(). Nothing happens unless the library is in the process and registered with
spantrack.ko (`spanhook_active() == 1`). The SDK is not imported here: the provider class
is patched when the application imports `opentelemetry.sdk.trace`, so a Python program that
does not use OpenTelemetry pays only for this check.

Environment: SPANTRACK_PYTHON_HOOK=0 disables the hook; SPANTRACK_HOOK_DEBUG=1 reports on
stderr what it did.
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
            _debug("libspanhook.so (ABI 1) is not in the process: doing nothing")
            return False
        if lib.active() != 1:
            _debug("libspanhook.so is inactive (no module?): doing nothing")
            return False
    _lib = lib
    _installed = True
    module = sys.modules.get(TARGET_MODULE)
    if module is not None:
        _patch(module)
    else:
        sys.meta_path.insert(0, _PatchOnImport())
    _debug("armed")
    return True


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
    """Finds `opentelemetry.sdk.trace` through the other finders and patches it once its
    code has run; then leaves sys.meta_path."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET_MODULE:
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
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        spec.loader = _PatchingLoader(spec.loader)
        return spec


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):  # get_resource_reader, get_data, ... of the real loader
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            _patch(module)
        except Exception as e:  # never break the application's import
            print(f"spantrack_hook: could not patch {TARGET_MODULE}: {e!r}", file=sys.stderr)
