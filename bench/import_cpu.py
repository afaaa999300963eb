"""CPU time of an import, per top-level package: ``python -X importtime`` in CPU seconds.

``-X importtime`` reports wall time, which on a loaded machine is mostly time spent waiting
for a CPU (docs/benchmarks.md, "Start and stop"). This runs the import in a fresh
interpreter with a meta path hook that times each module's execution in process CPU time,
its submodules' time excluded, and sums it per top-level package (``gossipmgr`` per
subpackage). The module bodies only: finding and unmarshalling the ``.pyc`` is not counted.

    .venv/bin/python bench/import_cpu.py [--runs 3] [--top 20] [--gc-off] [--by-module] [MODULE]

MODULE defaults to gossipmgr.daemon; ``--gc-off`` imports it with the cyclic GC off, as
``gossipmgr agent`` does (gossipmgr.cli.main).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import collections, importlib, json, sys, time
excl = collections.Counter()
stack = []

class Timed:
    def __init__(self, loader, name):
        self.loader, self.name = loader, name
    def __getattr__(self, attr):
        return getattr(self.loader, attr)
    def create_module(self, spec):
        return self.loader.create_module(spec)
    def exec_module(self, module):
        t0 = time.process_time()
        stack.append(0.0)
        try:
            self.loader.exec_module(module)
        finally:
            dt = time.process_time() - t0
            excl[self.name] += dt - stack.pop()
            if stack:
                stack[-1] += dt

class Finder:
    def find_spec(self, name, path=None, target=None):
        for f in sys.meta_path:
            if f is self or not hasattr(f, "find_spec"):
                continue
            spec = f.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = Timed(spec.loader, name)
                return spec
        return None

sys.meta_path.insert(0, Finder())
if sys.argv[2] == "off":
    import gc
    gc.disable()  # as gossipmgr.cli.main does while the command's module loads
t0 = time.process_time()
importlib.import_module(sys.argv[1])
total = time.process_time() - t0
print(json.dumps({"total": total, "modules": len(excl), "by_module": excl}))
"""


def group(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "gossipmgr" else parts[0]


def one(module: str, gc_off: bool, by_module: bool = False) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, module, "off" if gc_off else "on"],
        capture_output=True,
        text=True,
        check=True,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    sums: dict[str, float] = {"(total)": res["total"], "(modules)": res["modules"]}
    for name, cpu in res["by_module"].items():
        g = name if by_module else group(name)
        sums[g] = sums.get(g, 0.0) + cpu
    return sums


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("module", nargs="?", default="gossipmgr.daemon")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument(
        "--gc-off", action="store_true", help="import with the cyclic GC off, as the CLI does"
    )
    ap.add_argument("--by-module", action="store_true", help="each module, not per package")
    args = ap.parse_args()
    runs = [one(args.module, args.gc_off, args.by_module) for _ in range(args.runs)]
    keys = {k for r in runs for k in r}
    med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}
    print(f"import {args.module}: median of {args.runs} fresh interpreters")
    print(f"{med['(total)'] * 1000:8.1f} ms CPU in all ({med['(modules)']:.0f} modules)")
    ranked = sorted((k for k in keys if not k.startswith("(")), key=lambda k: -med[k])
    for k in ranked[: args.top]:
        print(f"{med[k] * 1000:8.1f} ms  {k}")


if __name__ == "__main__":
    main()
