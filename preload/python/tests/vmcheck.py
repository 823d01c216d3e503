"""The checks of the in-VM Python workloads (vm_*.py): each prints "ok - name" or
"not ok - name: why", as tests/vm/lib.sh's do, and the runner counts them."""

results = []


def check(name, cond, why=""):
    results.append(bool(cond))
    print(f"ok - {name}" if cond else f"not ok - {name}{': ' + str(why) if why else ''}",
          flush=True)
