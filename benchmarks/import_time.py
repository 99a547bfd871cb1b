"""`import mm2d_integrations` in fresh processes from two source trees, alternated, best of N each.

Usage: python benchmarks/import_time.py BEFORE AFTER [--runs 9]
BEFORE and AFTER are folders holding a `mm2d_integrations` package (a checkout, or
`git archive REV mm2d_integrations | tar -x -C FOLDER`); each run puts one first on PYTHONPATH.
Prints each tree's best time, the ratio AFTER/BEFORE, and whether both import the same modules.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

_TIMED = "import sys, time; t = time.perf_counter(); import mm2d_integrations; print(time.perf_counter() - t); print(*sorted(sys.modules))"


def _import(tree: str) -> tuple[float, list[str]]:
    env = {**os.environ, "PYTHONPATH": tree, "HF_HUB_OFFLINE": "1"}
    seconds, modules = subprocess.run(
        [sys.executable, "-c", _TIMED], cwd=tree, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return float(seconds), modules.split()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    best = {args.before: float("inf"), args.after: float("inf")}
    modules: dict[str, list[str]] = {}
    for _ in range(args.runs):
        for tree in best:
            seconds, modules[tree] = _import(tree)
            best[tree] = min(best[tree], seconds)
    for tree, seconds in best.items():
        print(f"{tree}: best of {args.runs} {seconds:.3f} s, {len(modules[tree])} modules")
    print(f"after/before: {best[args.after] / best[args.before]:.3f}; same modules: {modules[args.before] == modules[args.after]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
