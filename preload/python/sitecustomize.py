"""spantrack: run at every Python start-up when libspanhook.so put this directory first on
PYTHONPATH (it does so for Python processes). Arms spantrack_hook when the library is
active, then runs the `sitecustomize` this file shadows, if there is one, so that the
interpreter behaves as it would without spantrack."""


def _spantrack_start():
    import sys
    try:
        import spantrack_hook
        spantrack_hook.install()
    except Exception as e:  # the application must start whatever happens here
        print(f"spantrack_hook: not armed: {e!r}", file=sys.stderr)


def _run_shadowed_sitecustomize():
    import importlib.machinery
    import importlib.util
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in __import__("sys").path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    if spec.origin and os.path.abspath(spec.origin) == os.path.abspath(__file__):
        return
    # A fresh module object: replacing ours in sys.modules during site's import breaks it.
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_spantrack_start()
_run_shadowed_sitecustomize()
del _spantrack_start, _run_shadowed_sitecustomize
