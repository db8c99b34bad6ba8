"""Runs one of our workloads in a loop, for a profiler (the data of benches/compare.py).

    RAYON_NUM_THREADS=2 perf record -g -o perf.data python benches/profile_ours.py lloyd 20
    perf report -i perf.data --no-children --sort dso,symbol

Workloads: ``lloyd`` (n=1e6, d=10, k=3, to convergence), ``hamerly`` (the same with
``algorithm="hamerly"``), ``kpp`` (k-means++ on the same data),
``gadv`` (group_advantages, N=1e7), ``fair`` (FairAdvantage("robust"), N=1e7, 4x8 groups),
``gadv-out`` / ``fair-out`` (the same writing into one reused output buffer, ``out=``),
``refit`` / ``incremental`` (the implicit-group step of 1000 prompts on a 1e6-prompt history).
Prints the median time per call and the CPU time / wall time (how many cores were busy).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fairgrpo
from compare import make_blobs, make_history, make_rollouts


def workload(what: str, n: int) -> Any:
    if what in ("lloyd", "hamerly", "kpp"):
        x = make_blobs(1_000_000, 10, 3, seed=1003, spread=0.5)
        c = x[:3].astype(np.float64)
        if what in ("lloyd", "hamerly"):
            return lambda: fairgrpo.kmeans(x, 3, init=c, max_iter=50, tol=0, algorithm=what)
        return lambda: fairgrpo.kmeans_plusplus(x, 3, seed=0)
    if what in ("gadv", "fair", "gadv-out", "fair-out"):
        r, s, g = make_rollouts(1_000_000, 10, 4, 8, seed=7)
        out = np.empty_like(r) if what.endswith("-out") else None  # reused output buffer
        if what.startswith("gadv"):
            return lambda: fairgrpo.group_advantages(r, 10, out=out)
        fa = fairgrpo.FairAdvantage("robust")
        return lambda: fa(r, 10, sources=s, groups=g, out=out)
    if what in ("refit", "incremental"):
        b = 1000
        pool = make_history(1_000_000 + b * (n + 2), 8, seed=11)
        fa = fairgrpo.FairAdvantage("robust", cluster_update=what)
        zeros = np.zeros(b, np.int64)
        fa(pool[: 1_000_000 - 4 * b].ravel(), 8, sources=np.zeros(1_000_000 - 4 * b, np.int64))
        pos = [1_000_000 - 4 * b]
        for _ in range(4):
            fa(pool[pos[0] : pos[0] + b].ravel(), 8, sources=zeros)
            pos[0] += b

        def step() -> Any:
            out = fa(pool[pos[0] : pos[0] + b].ravel(), 8, sources=zeros)
            pos[0] += b
            return out

        return step
    raise SystemExit(f"unknown workload {what!r}; see the docstring")


def main() -> None:
    what, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10
    f = workload(what, n)
    f()
    ts, cs = [], []
    for _ in range(n):
        c0, t0 = time.process_time(), time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    print(
        f"{what}: median {np.median(ts) * 1e3:.2f} ms per call, "
        f"cores busy {np.median(cs) / np.median(ts):.2f} "
        f"(RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset')})"
    )


if __name__ == "__main__":
    main()
