"""How many rows each bound scheme must read per Lloyd iteration, in exact (float64) arithmetic.

    python benches/hamerly_rows.py            # compare.py's Lloyd data: 10^6 x 10, k = 3
    python benches/hamerly_rows.py --n 200000

Runs Lloyd from the first k rows as centres and, every iteration, counts the rows that each
test cannot skip (the rows a bounded pass must read):

- ``one-margin``: ours (``rust/hamerly.rs``): a row's (second - own distance) when measured,
  against the cumulative sum of the two largest centre moves;
- ``+ s/2``: also skip a row whose upper bound on its own distance is at most half the
  distance from its centre to the nearest other centre (Hamerly's second test);
- ``per-centre``: Hamerly's bound with the own centre's move plus the largest other move;
- ``Elkan``: one lower bound per centre (k + 1 numbers per row instead of one).

Rows are re-measured when any scheme needs them, so all four follow the same labels. No
rounding slack is modelled (the Rust bounds add a little), so the counts are lower bounds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare


def dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.sqrt(((x[:, None, :] - c[None]) ** 2).sum(-1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=float, default=1e6, help="rows (default 1e6)")
    ap.add_argument("--d", type=int, default=10, help="features (default 10)")
    ap.add_argument("--k", type=int, default=3, help="centres (default 3)")
    args = ap.parse_args()
    n, d, k = int(args.n), args.d, args.k
    x = compare.make_blobs(n, d, k, seed=1003, spread=0.5).astype(np.float64)
    rows = np.arange(n)
    c = x[:k].copy()
    dist = dists(x, c)
    lab = dist.argmin(1)
    two = np.sort(dist, 1)
    margin = two[:, 1] - two[:, 0]  # one-margin, offset by the cumulative drift g
    g = 0.0
    pc_margin, pc = margin.copy(), np.zeros(k)  # per-centre cumulative drift
    cum = np.zeros(k)  # cumulative move of each centre
    u_off = two[:, 0].copy()  # own distance minus the own centre's cumulative move
    l_off = dist.copy()  # distances plus each centre's cumulative move
    names = ("one-margin", "+ s/2", "per-centre", "Elkan")
    total = dict.fromkeys(names, 0)
    print(f"n={n} d={d} k={k}: fraction of rows each test must read")
    print("iter   moved  " + "  ".join(f"{m:>10s}" for m in names))
    for it in range(1, 300):
        new = np.array([x[lab == j].mean(0) if (lab == j).any() else c[j] for j in range(k)])
        mv = np.sqrt(((new - c) ** 2).sum(1))
        c = new
        top = np.sort(mv)[::-1]
        g += top[0] + (top[1] if k > 1 else 0.0)
        for a in range(k):
            pc[a] += mv[a] + (max(np.delete(mv, a)) if k > 1 else 0.0)
        cum += mv
        cc = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1))
        np.fill_diagonal(cc, np.inf)
        half = cc.min(1) / 2
        ub = u_off + cum[lab]
        lb = l_off - cum[None, :]
        lb[rows, lab] = np.inf
        need = {
            "one-margin": margin <= g,
            "+ s/2": (margin <= g) & (ub > half[lab]),
            "per-centre": pc_margin <= pc[lab],
            "Elkan": ub > lb.min(1),
        }
        dist = dists(x, c)
        new_lab = dist.argmin(1)
        for m, v in need.items():
            if (new_lab[~v] != lab[~v]).any():
                raise AssertionError(f"{m} skipped a row whose label changed")
            total[m] += int(v.sum())
        measured = np.logical_or.reduce(list(need.values()))
        moved = int((new_lab != lab).sum())
        lab = new_lab
        two = np.sort(dist[measured], 1)
        margin[measured] = two[:, 1] - two[:, 0] + g
        pc_margin[measured] = two[:, 1] - two[:, 0] + pc[lab[measured]]
        u_off[measured] = two[:, 0] - cum[lab[measured]]
        l_off[measured] = dist[measured] + cum[None, :]
        print(f"{it:4d} {moved:7d}  " + "  ".join(f"{need[m].mean():10.3f}" for m in names))
        if moved == 0:
            break
    print("rows read over the fit, in full passes: " + ", ".join(f"{m} {total[m] / n:.2f}" for m in names))


if __name__ == "__main__":
    main()
