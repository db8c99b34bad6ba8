"""Two-thread work right after an idle spell, against the same work back to back.

    python benches/idle_wake.py            # 10^7 and 10^6 values, 11 calls per mode
    python benches/idle_wake.py --n 1e6 --pause 0.2 --calls 21

For each of torch's two-thread elementwise multiply (``torch.mul(r, 2, out=buf)``; its caller
waits at a barrier for the second thread) and ours ``group_advantages`` (graded rewards; our
pool does not wait for a late helper), prints the median call time and how many cores were
busy (process CPU time / wall time), back to back and after ``--pause`` seconds of sleep. On
a virtual machine whose idle vCPU is slow to come back, the second thread arrives late after
the sleep: this is the state every worker of ``compare.py`` starts its timed call in.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable

import numpy as np


def measure(f: Callable[[], object], pause: float, calls: int) -> tuple[float, float]:
    """Median wall time (s) of ``calls`` calls, each after ``pause`` s of sleep, and cores busy."""
    f()
    wall, cpu = [], []
    for _ in range(calls):
        if pause > 0:
            time.sleep(pause)
        c0, t0 = time.process_time(), time.perf_counter()
        out = f()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        del out
    return float(np.median(wall)), float(np.median(cpu) / np.median(wall))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=float, action="append", help="values per call (repeatable; default 1e7, 1e6)")
    ap.add_argument("--pause", type=float, default=0.2, help="seconds of sleep before each call")
    ap.add_argument("--calls", type=int, default=11, help="timed calls per mode (default 11)")
    ap.add_argument("--threads", type=int, default=2, help="threads for torch and ours (default 2)")
    args = ap.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    import torch

    import fairgrpo

    torch.set_num_threads(args.threads)
    for n in [int(v) for v in (args.n or [1e7, 1e6])]:
        r = np.random.default_rng(0).random(n, dtype=np.float32)
        rt, buf = torch.from_numpy(r), torch.empty(n, dtype=torch.float32)
        cases: dict[str, Callable[[], object]] = {
            "torch mul": functools.partial(torch.mul, rt, 2.0, out=buf),
            "ours group_advantages": functools.partial(
                fairgrpo.group_advantages, r, 10, n_threads=args.threads
            ),
        }
        for name, f in cases.items():
            b2b = measure(f, 0.0, args.calls)
            idle = measure(f, args.pause, args.calls)
            print(
                f"{name:22s} n={n:.0e} {args.threads} threads: back to back {1e3 * b2b[0]:7.3f} ms "
                f"(cores busy {b2b[1]:.2f}); after {args.pause:g} s of sleep {1e3 * idle[0]:7.3f} ms "
                f"(cores busy {idle[1]:.2f})"
            )


if __name__ == "__main__":
    main()
